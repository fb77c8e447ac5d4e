#!/usr/bin/env bash
# Rebuild the committed default bundle: bridge bundles (build.sh), then projection heads
# trained on the backbone features of the Tux Paint training split (validation split for
# early stopping), exported int8 and mixed with the bridge (see models/README.md), plus the
# f32 twin and the other variants of the table in models/README.md under models/build/.
# Usage: models/convert/train-default.sh     (about 4 minutes on 2 cores after downloads)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ -f models/build/bridge-int8/bundle.toml ] && [ -f models/build/bridge-f32/bundle.toml ] \
  || models/convert/build.sh
models/convert/fetch-data.sh
cargo build --release --locked --bin moonlens-host
host=target/release/moonlens-host
pairs=data/pairs
# the default's heads: raw backbone features, English and Chinese captions of the training
# stamps (Chinese through the same English MiniLM; early stopping on English validation)
$host train --bundle models/build/bridge-int8 --pairs $pairs/train.jsonl,$pairs/train_zh_CN.jsonl \
  --val $pairs/val.jsonl --out models/build/heads-raw-en-zh --image-input raw --seed 1
# English only: on raw backbone features and on the bridge embedding
$host train --bundle models/build/bridge-int8 --pairs $pairs/train.jsonl --val $pairs/val.jsonl \
  --out models/build/heads-raw --image-input raw --seed 1
$host train --bundle models/build/bridge-int8 --pairs $pairs/train.jsonl --val $pairs/val.jsonl \
  --out models/build/heads-bridge --image-input bridge --seed 1
# mix weight 0.8: the best validation recall that keeps photos within one query of the bridge
$host export --heads models/build/heads-raw-en-zh --bundle models/build/bridge-int8 --int8 --mix 0.8 \
  --out models/default
$host export --heads models/build/heads-raw-en-zh --bundle models/build/bridge-f32 --mix 0.8 \
  --out models/build/heads-raw-en-zh-mix-f32
for w in int8 f32; do
  $host export --heads models/build/heads-raw --bundle models/build/bridge-$w --mix 0.8 \
    $([ $w = int8 ] && echo --int8) --out models/build/heads-raw-mix-$w
done
for kind in raw bridge; do
  $host export --heads models/build/heads-$kind --bundle models/build/bridge-int8 --int8 \
    --out models/build/heads-$kind-int8
  $host export --heads models/build/heads-$kind --bundle models/build/bridge-f32 \
    --out models/build/heads-$kind-f32
done
cp models/build/heads-raw-en-zh/curve.png models/default-training-curve.png
echo "models/default rebuilt; evaluate with: $host eval --bundle models/default --pairs $pairs/test.jsonl"
