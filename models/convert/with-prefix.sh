#!/usr/bin/env bash
# A copy of a bundle whose text tower prefixes every query, named after the copy's directory.
# The default's base: bridge-int8 with "a picture of " in front of queries, the wording of the
# class prompts its image embeddings are made of ("a picture of a {}."); chosen on the
# validation split, photos first (models/README.md, "Query wording").
# Usage: models/convert/with-prefix.sh BASE_DIR OUT_DIR PREFIX
set -euo pipefail
base=$1 out=$2 prefix=$3
rm -rf "$out" && cp -r "$base" "$out"
sed -i "0,/^prefix = .*/s//prefix = \"$prefix\"/; 0,/^name = .*/s//name = \"$(basename "$out")\"/" "$out/bundle.toml"
grep -q "^prefix = \"$prefix\"" "$out/bundle.toml"
