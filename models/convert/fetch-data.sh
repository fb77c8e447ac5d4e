#!/usr/bin/env bash
# Fetch the evaluation and training images (not committed) into data/ and write the pairs files:
# - Debian's tuxpaint-stamps-default (GPL-2): data/pairs/{train,val,test}{,_parallel,_<locale>}.jsonl,
#   a fixed split by stamp (tuxpaint.py);
# - Debian's openclipart-png (public domain drawings) with wordnet-base (WordNet 3.0, the English
#   word list their captions are filtered by): data/pairs/openclipart_{train,val,test}.jsonl,
#   a split by concept (openclipart.py).
# Needs apt-get (Debian/Ubuntu) and python3 (standard library only).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
data="$root/data"
mkdir -p "$data/deb"
if [ ! -f "$data/pairs/train_parallel.jsonl" ] || [ ! -f "$data/pairs/test_es.jsonl" ]; then
  (cd "$data/deb" && { ls tuxpaint-stamps-default_*.deb >/dev/null 2>&1 || apt-get download tuxpaint-stamps-default; })
  rm -rf "$data/x" && dpkg -x "$data"/deb/tuxpaint-stamps-default_*.deb "$data/x"
  ln -sfn x/usr/share/tuxpaint/stamps "$data/tuxpaint-stamps"
  python3 "$root/models/convert/tuxpaint.py" "$data/tuxpaint-stamps" "$data/pairs"
fi
if [ ! -f "$data/pairs/openclipart_test.jsonl" ]; then
  for p in openclipart-png wordnet-base; do
    (cd "$data/deb" && { ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download "$p"; })
    dpkg -x "$data"/deb/"${p}"_*.deb "$data/x"
  done
  python3 "$root/models/convert/openclipart.py" "$data/x/usr/share/openclipart/png" \
    "$data/x/usr/share/wordnet" "$data/pairs"
fi
