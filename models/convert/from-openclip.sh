#!/usr/bin/env bash
# Convert an OpenCLIP model to a moonlens bundle (f32 and int8), checked against torch.
# Usage: models/convert/from-openclip.sh MODEL [PRETRAINED] [--out DIR]
#   models/convert/from-openclip.sh MobileCLIP2-S0 dfndr2b      # downloads the weights
#   models/convert/from-openclip.sh ViT-B-32                     # random weights (tests, timing)
#   models/convert/from-openclip.sh moonlens-tiny     # rebuilds tests/fixtures/clip-tiny
# The venv (torch, timm, open-clip-torch; pinned in requirements-clip.txt) is made on first
# use: ~4 minutes and ~5.6 GB (torch's CUDA libraries are most of it). Writes DIR-f32/ and
# DIR-int8/ (default DIR: models/build/clip/MODEL[-PRETRAINED]).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$root/models/build/clip-venv"
if [ $# -lt 1 ]; then sed -n 2,9p "$0"; exit 2; fi
model=$1; shift
pretrained=""
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then pretrained=$1; shift; fi
out="$root/models/build/clip/$model${pretrained:+-$pretrained}"
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/pip" install -q -r "$here/requirements-clip.txt"
tiny=()
if [ "$model" = moonlens-tiny ]; then tiny=(--tiny); fi
mkdir -p "$(dirname "$out")"
"$venv/bin/python" "$here/from_openclip.py" "$model" ${pretrained:+"$pretrained"} --out "$out" \
  ${tiny[@]+"${tiny[@]}"} ${extra[@]+"${extra[@]}"}
# tract (this build) against the converter's torch and onnxruntime outputs, when it is built
host="$root/target/release/moonlens-host"
if [ -x "$host" ]; then
  for b in "$out-f32" "$out-int8"; do
    (cd "$root" && "$host" parity --bundle "$b")
  done
else
  echo "not checked against tract: build it (cargo build --release) and run moonlens-host parity --bundle $out-int8"
fi
if [ "$model" = moonlens-tiny ]; then
  # the test fixture: the int8 bundle with its reference outputs (tests/clip.rs)
  rm -rf "$root/tests/fixtures/clip-tiny"
  cp -r "$out-int8" "$root/tests/fixtures/clip-tiny"
  echo "tests/fixtures/clip-tiny rebuilt"
fi
