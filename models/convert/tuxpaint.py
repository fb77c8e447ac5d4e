"""Tux Paint stamps -> image/caption pairs files with a fixed train/val/test split by stamp.

Usage: tuxpaint.py STAMPS_DIR OUT_DIR
Writes OUT_DIR/{train,val,test}.jsonl (English first lines) and OUT_DIR/{train,val,test}_<locale>.jsonl
for the locales in LOCALES (e.g. `zh_CN.utf8=` lines) with lines {"image": "<path relative to
OUT_DIR>", "text": "..."},
and OUT_DIR/{train,val,test}_parallel.jsonl: every translation of every caption (~100 languages)
beside its English line, {"source": "<English>", "text": "<translation>", "lang": "<locale>"}
(what `moonlens-host distill` reads).
Only stamps with a PNG image are used (SVG-only stamps would need a rasterizer). The split is
a hash of the stamp's path, so it never changes when stamps are added or removed.
"""
import hashlib
import json
import os
import sys

# per-language pairs files (evaluation of multilingual bundles; zh_CN also trains the heads)
LOCALES = ("zh_CN", "zh_TW", "ja", "ko", "ru", "ar", "fr", "de", "es")


def split_of(rel):
    h = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 70 else ("val" if h < 85 else "test")


def main(stamps, out):
    os.makedirs(out, exist_ok=True)
    files = {f"{split}{kind}": [] for split in ("train", "val", "test")
             for kind in ("", "_parallel") + tuple("_" + loc for loc in LOCALES)}
    skipped = 0
    for root, _, names in sorted(os.walk(stamps)):
        for n in sorted(names):
            if not n.endswith(".txt"):
                continue
            png = os.path.join(root, n[:-4] + ".png")
            if not os.path.exists(png):
                skipped += 1
                continue
            lines = open(os.path.join(root, n), encoding="utf-8", errors="replace").read().splitlines()
            if not lines or not lines[0].strip():
                skipped += 1
                continue
            image = os.path.relpath(png, out)
            split = split_of(os.path.relpath(png, stamps))
            files[split].append({"image": image, "text": lines[0].strip()})
            for loc in LOCALES:
                tr = [l.split("=", 1)[1].strip() for l in lines if "=" in l and l.split("=", 1)[0].split(".")[0] == loc]
                if tr and tr[0]:
                    files[f"{split}_{loc}"].append({"image": image, "text": tr[0]})
            english = lines[0].strip()
            for line in lines[1:]:
                locale, eq, text = line.partition("=")
                if eq and text.strip():
                    files[f"{split}_parallel"].append(
                        {"source": english, "text": text.strip(), "lang": locale.split(".")[0]})
    for name, rows in files.items():
        with open(os.path.join(out, name + ".jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(json.dumps({k: len(v) for k, v in files.items()} | {"skipped_no_png": skipped}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
