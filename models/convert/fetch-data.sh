#!/usr/bin/env bash
# Fetch Debian's tuxpaint-stamps-default (GPL-2, not committed) into data/ and write the pairs
# files with a fixed split by stamp: data/pairs/{train,val,test}{,_parallel,_<locale>}.jsonl (see tuxpaint.py).
# Needs apt-get (Debian/Ubuntu) and python3 (standard library only).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
data="$root/data"
if [ ! -f "$data/pairs/train_parallel.jsonl" ] || [ ! -f "$data/pairs/test_es.jsonl" ]; then
  mkdir -p "$data/deb"
  (cd "$data/deb" && { ls tuxpaint-stamps-default_*.deb >/dev/null 2>&1 || apt-get download tuxpaint-stamps-default; })
  rm -rf "$data/x" && dpkg -x "$data"/deb/tuxpaint-stamps-default_*.deb "$data/x"
  ln -sfn x/usr/share/tuxpaint/stamps "$data/tuxpaint-stamps"
  python3 "$root/models/convert/tuxpaint.py" "$data/tuxpaint-stamps" "$data/pairs"
fi
