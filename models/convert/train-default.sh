#!/usr/bin/env bash
# Rebuild the committed default bundle: bridge bundles (build.sh), then projection heads
# trained on the backbone features of the Tux Paint training split (validation split for
# early stopping), exported int8 and mixed with the bridge (the English bundle,
# models/build/heads-raw-en-zh-mix-int8), then the multilingual tower: multilingual-e5-small
# (e5-build.sh) with a head distilled from the English text tower on the training captions'
# ~100 translations, added as the bundle's [multilingual] tower -> models/default (see
# models/README.md). Plus the f32 twin and the other variants of the tables in
# models/README.md under models/build/.
# Usage: models/convert/train-default.sh     (about 45 minutes on 2 cores after downloads)
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
  --out models/build/heads-raw-en-zh-mix-int8
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
# the multilingual tower, distilled from the English bundle's text tower
[ -f models/build/bridge-e5-pruned-int8/bundle.toml ] || models/convert/e5-build.sh
english=models/build/heads-raw-en-zh-mix-int8
# two blocks: lower validation loss than one (0.371 vs 0.400) and better R@1 in 8 of 9 languages
$host distill --teacher $english --student models/build/bridge-e5-pruned-int8 --blocks 2 \
  --pairs $pairs/train_parallel.jsonl --val $pairs/val_parallel.jsonl --out models/build/distill-e5 --seed 1
rm -rf models/default
$host export --heads models/build/distill-e5 --teacher $english \
  --bundle models/build/bridge-e5-pruned-int8 --int8 --out models/default
cp models/build/heads-raw-en-zh/curve.png models/default-training-curve.png
cp models/build/distill-e5/curve.png models/default-distillation-curve.png
echo "models/default rebuilt; evaluate with: $host eval --bundle models/default --pairs $pairs/test.jsonl"
