"""Debian's openclipart-png (public-domain drawings named by file) -> image/caption pairs.

    python3 openclipart.py <openclipart png dir> <wordnet dir> <out dir>

writes <out>/openclipart_{train,val,test}.jsonl and prints what each rule kept and dropped.
Only the file name and its folder carry meaning here, so the caption is built from the name
by these rules, in order (see models/README.md, "Drawings"):

0. Images over 16 megapixels (20 files, up to 21k x 30k pixels) are skipped: decoding them
   would take gigabytes, over the image decoder's memory limit.
1. Folders whose files are not pictures of a thing are skipped whole: star polygons, jigsaw
   pieces, flowchart shapes, fill patterns, gradients, desktop icon themes (named by the
   action they stand for: "text_underline", "folder_personal"), playing cards, semaphore
   flags, LED digits.
2. The name is split into words at `_`, `-`, `.`, spaces and lower-to-upper case changes,
   lower-cased; words with digits are dropped ("01", "95pt06step", "bw2").
3. Author signatures: Openclipart names end in the author's name, truncated
   ("saturn_dan_gerhards_01", "scrub_brush_michael_moor_"). A name ending (one or two words)
   that ends the names of at least 3 files whose other words differ is a signature, and is cut.
4. Only English words stay: a word must be a WordNet 3.0 lemma (any part of speech, plural
   forms through WordNet's exception lists and plain -s/-es) or one of a few function words.
   This drops most remaining author names and the Italian, German and Esperanto names; so do
   two more checks: a word whose every WordNet noun sense is a person ("Daniel", "Joel") is a
   name, and single letters other than "a" say nothing.
5. The caption must keep a WordNet noun and be at most 8 words; one-letter words alone are
   dropped. At most 4 files keep the same caption (there are hundreds of "star" files).

The split is by a hash of the caption: every file of a concept is in the same split, so the
validation and test splits hold concepts that training never saw (80 / 10 / 10).
"""
import collections
import hashlib
import json
import os
import re
import struct
import sys

SKIP_DIRS = (
    "shapes/stars", "shapes/jigsaw", "shapes/flowchart", "special/patterns",
    "special/gradients", "computer/icons", "recreation/games/cards",
    "signs_and_symbols/flags/semaphore", "signs_and_symbols/led",
)
FUNCTION_WORDS = {"a", "an", "the", "of", "and", "with", "on", "in", "at", "for", "to", "by"}
PER_CAPTION = 4
MAX_PIXELS = 16_000_000


def pixels(path):
    with open(path, "rb") as f:
        header = f.read(24)
    w, h = struct.unpack(">II", header[16:24])
    return w * h


def split_of(caption):
    h = int(hashlib.sha256(caption.encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 80 else "val" if h < 90 else "test"


def wordnet(wn_dir):
    """All WordNet lemmas (single words), the noun lemmas, and inflected forms -> lemma."""
    words, nouns = set(), set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(os.path.join(wn_dir, f"index.{pos}"), encoding="utf-8"):
            if line.startswith(" "):
                continue
            lemma = line.split(" ", 1)[0]
            if "_" in lemma:
                continue
            words.add(lemma)
            if pos == "noun":
                nouns.add(lemma)
    # words whose every noun sense is a person's name ("Daniel", "Joel"): author first names
    senses = collections.defaultdict(set)
    for line in open(os.path.join(wn_dir, "data.noun"), encoding="utf-8"):
        if line.startswith(" "):
            continue
        f = line.split(" ")
        lex, count = int(f[1]), int(f[3], 16)
        for i in range(count):
            w = f[4 + 2 * i]
            if "_" not in w:
                senses[w.lower()].add(lex if w[0].isupper() else -1)
    people = {w for w, s in senses.items() if s == {18}}
    words -= people
    nouns -= people
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(os.path.join(wn_dir, f"{pos}.exc"), encoding="utf-8"):
            parts = line.split()
            if len(parts) >= 2 and parts[1] in words:
                words.add(parts[0])
                if pos == "noun":
                    nouns.add(parts[0])
    return words, nouns


def english(word, words):
    if word in words or word in FUNCTION_WORDS:
        return True
    for suffix in ("s", "es"):
        if word.endswith(suffix) and word[: -len(suffix)] in words:
            return True
    return False


def is_noun(word, nouns):
    return word in nouns or (word.endswith("s") and word[:-1] in nouns)


def split_words(stem):
    stem = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    raw = [w for w in re.split(r"[_\-.\s]+", stem.lower()) if w]
    return [w for w in raw if w.isalpha() and w.isascii()]


def main(png_dir, wn_dir, out):
    words, nouns = wordnet(wn_dir)
    stats = collections.Counter()
    files = []
    for root, _, names in os.walk(png_dir):
        rel_dir = os.path.relpath(root, png_dir)
        for n in sorted(names):
            if not n.endswith(".png"):
                continue
            if pixels(os.path.join(root, n)) > MAX_PIXELS:
                stats["rule 0: too large"] += 1
                continue
            if rel_dir.startswith(SKIP_DIRS):
                stats["rule 1: folder skipped"] += 1
                continue
            files.append((os.path.join(rel_dir, n), split_words(n[:-4])))
    files.sort()
    # rule 3: name endings shared by >= 3 files with different other words are signatures
    endings = collections.defaultdict(set)
    for _, ws in files:
        for k in (1, 2):
            if len(ws) > k:
                endings[tuple(ws[-k:])].add(tuple(ws[:-k]))
    signatures = {e for e, rests in endings.items() if len(rests) >= 3}
    per_caption = collections.Counter()
    out_lines = {s: [] for s in ("train", "val", "test")}
    for rel, ws in files:
        for k in (2, 1):
            if len(ws) > k and tuple(ws[-k:]) in signatures:
                ws = ws[:-k]
                stats["rule 3: signature cut"] += 1
                break
        kept = [w for w in ws if english(w, words) and (len(w) > 1 or w == "a")]
        stats["rule 4: words dropped"] += len(ws) - len(kept)
        while kept and kept[-1] in FUNCTION_WORDS:
            kept.pop()
        while kept and kept[0] in FUNCTION_WORDS - {"a", "an", "the"}:
            kept.pop(0)
        content = [w for w in kept if w not in FUNCTION_WORDS]
        if not any(is_noun(w, nouns) and len(w) > 1 for w in content) or len(kept) > 8:
            stats["rule 5: no noun / too long"] += 1
            continue
        caption = " ".join(kept)
        if per_caption[caption] >= PER_CAPTION:
            stats["rule 5: caption already has 4 files"] += 1
            continue
        per_caption[caption] += 1
        image = os.path.relpath(os.path.join(png_dir, rel), out)
        out_lines[split_of(caption)].append({"image": image, "text": caption})
    os.makedirs(out, exist_ok=True)
    for s, lines in out_lines.items():
        with open(os.path.join(out, f"openclipart_{s}.jsonl"), "w", encoding="utf-8") as f:
            for l in lines:
                f.write(json.dumps(l, ensure_ascii=False) + "\n")
    stats.update({f"kept {s}": len(l) for s, l in out_lines.items()})
    stats["signatures"] = len(signatures)
    stats["distinct captions"] = len(per_caption)
    print(json.dumps(dict(stats)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
