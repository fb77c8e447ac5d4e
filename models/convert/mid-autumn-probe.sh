#!/usr/bin/env bash
# The seed's Mid-Autumn concepts, queried in English and Chinese through the daemon itself,
# over a gallery of every held-out image (Tux Paint val + test, openclipart val + test
# concepts; 752 images, none seen in training). For each query prints the top-5 file names
# (named after their captions) and whether a picture of the concept is among them.
# Usage: models/convert/mid-autumn-probe.sh [BUNDLE]       (needs fetch-data.sh's data)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${1:-$root/models/default}
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/gallery"
python3 - "$root/data/pairs" "$work/gallery" <<'PY'
import json, os, re, sys
pairs, out = sys.argv[1:3]
seen = set()
for split in ("test", "val", "openclipart_test", "openclipart_val"):
    for line in open(os.path.join(pairs, split + ".jsonl"), encoding="utf-8"):
        p = json.loads(line)
        img = os.path.normpath(os.path.join(pairs, p["image"]))
        if img not in seen:
            seen.add(img)
            cap = re.sub(r"[^a-z0-9]+", "_", p["text"].lower()).strip("_")[:40]
            os.symlink(img, os.path.join(out, f"{len(seen):04d}-{cap}.png"))
PY
d="$root/target/release/moonlensd"
[ -x "$d" ] || (cd "$root" && cargo build --release --bin moonlensd)
"$d" --bundle "$bundle" --source "dir:$work/gallery" --index "$work/index" --socket "$work/s" \
  --capacity 2000 --fps 1000 --gate-pixels 0 --gate-embedding 1 --no-console 2>"$work/log" &
pid=$!
n=$(ls "$work/gallery" | wc -l)
# wait until the replay has been ingested (status says source_done=true)
python3 - "$work/s" <<'PY'
import socket, sys, time
for _ in range(1200):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        s.sendall(b"status\n")
        reply = b""
        while not reply.endswith(b"OK\n"):
            reply += s.recv(4096) or b"OK\n"
        if b"source_done=true" in reply:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit("the daemon did not finish ingesting the gallery")
PY
found=0 total=0
while IFS=';' read -r concept pattern en zh; do
  for q in "$en" "$zh"; do
    hits=$("$d" query "$q" --k 5 --socket "$work/s" | grep '^+HIT' | awk '{print $NF}')
    total=$((total + 1))
    if echo "$hits" | grep -qE "$pattern"; then ok=found; found=$((found + 1)); else ok=missed; fi
    echo "$concept | $q | $ok | $(echo $hits)"
  done
done <<'LIST'
rabbit;rabbit|bunny;a rabbit;兔子
full moon;[0-9]-(full_moon|moon_full|our_moon\.|moon\.);the full moon;满月
crescent moon;crescent;a crescent moon;月牙
LIST
echo "{\"gallery\": $n, \"queries\": $total, \"top5\": $found}"
