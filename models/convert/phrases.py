"""Chinese dictionary words in the phrases people type (issue 13): writes
data/pairs/dict_phrases_{train,val}.jsonl from dict_parallel_{train,val}.jsonl.

Why: the dictionary lines are bare words (老虎 -> "tiger"), but queries and photo captions are
phrases (一张老虎的照片, 一只鸵鸟). The distilled tower reads the query's CJK characters, and the
characters of a phrase's frame (一, 张, 的, 照, 片) then reach the head unseen in training.
Each dictionary line is repeated once inside one frame, picked by a hash of the word so the
files are the same on every run, with the same English source: the frame must not move the
target. The frames are generic (no measure word that fits only some nouns), one set per script:

    zh_CN: 一张{}的照片, {}的图片, 一个{}, 这是{}
    zh_TW: 一張{}的照片, {}的圖片, 一個{}, 這是{}

Usage: python3 phrases.py DATA_PAIRS_DIR
"""
import hashlib
import json
import os
import sys

FRAMES = {
    "zh_CN": ["一张{}的照片", "{}的图片", "一个{}", "这是{}"],
    "zh_TW": ["一張{}的照片", "{}的圖片", "一個{}", "這是{}"],
}


def framed(line):
    frames = FRAMES.get(line["lang"])
    if not frames:
        return None
    pick = int(hashlib.sha256(line["text"].encode()).hexdigest(), 16) % len(frames)
    return {"source": line["source"], "text": frames[pick].format(line["text"]), "lang": line["lang"]}


def main(pairs_dir):
    for split in ("train", "val"):
        src = os.path.join(pairs_dir, f"dict_parallel_{split}.jsonl")
        with open(src) as f:
            lines = [framed(json.loads(l)) for l in f]
        lines = [l for l in lines if l]
        dst = os.path.join(pairs_dir, f"dict_phrases_{split}.jsonl")
        with open(dst, "w") as f:
            f.writelines(json.dumps(l, ensure_ascii=False) + "\n" for l in lines)
        print(f"{dst}: {len(lines)} lines", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
