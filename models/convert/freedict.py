"""Dictionary-scale parallel text for languages other than Chinese (issue 13): FreeDict
bilingual dictionaries from Debian (`dict-freedict-{eng-fra,eng-spa,eng-rus,eng-deu,eng-ara,
jpn-eng}`, GPL / CC BY-SA data, read at build time, never committed) into
data/pairs/freedict_parallel_{train,val}.jsonl, lines {"source", "text", "lang"} as the other
parallel files.

The same rule as the Chinese dictionary lines (parallel.py): an English concept qualifies when
it is a WordNet 3.0 noun lemma with a sense among the things a camera can see, and no
validation or test caption names it (held out in every language); the split is by a hash of
the English source. Per dictionary:

- English -> X (fra, spa, rus, ara): the entries of the English headword (verbs, `<v>`, left
  out), the first translation of each numbered sense, then the others, the entry with the
  shortest pronunciation first (eng-spa files phrases under their first word:
  "house /haustʃɑːdʒ/" servicio beside "house /haus/" casa); at most MAX_PER_CONCEPT
  translations of at most three words.
- English -> German (Ding, 460k entries, technical senses beside everyday ones): only noun
  translations (a gender mark `<masc>`, `<fem>`, `<neut>` or `<pl>`); an entry counts for
  everyday use by its usage examples and cross references, and against it by each editorial
  note and each specialist label ([techn.], [constr.], ...); the best entry with a positive
  score gives up to MAX_PER_CONCEPT nouns.
- Japanese -> English (JMdict data): entries marked common (ichi1, news1, spec1, ...), first
  sense a common noun; each English gloss (parentheticals dropped) gives the entry's first
  written form and its kana reading as two lines (Tux Paint's Japanese is mostly kana), or
  the kana alone when the dictionary says the word is usually written in kana.

Usage: python3 freedict.py DICTD_DIR WORDNET_DIR PAIRS_DIR
"""
import collections
import gzip
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from parallel import held_out, visible_nouns, write_split  # noqa: E402

MAX_PER_CONCEPT = 2
ENGLISH_TO = {"fra": "fr", "spa": "es", "rus": "ru", "ara": "ar"}
SPECIALIST = re.compile(r"\[(techn|constr|mach|electr|mil|med|chem|phys|min|geol|comp|econ|fin|"
                        r"jur|print|textil|naut|aviat|rail|telco|biochem|pharm|ling|mus|sport|"
                        r"hist|relig|humor|coll|slang|vulg|obs|archaic|rare|Am|Br|Austr|Sw|Süddt)\.?\]")
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(s):
    n = 0
    for c in s:
        n = n * 64 + B64.index(c)
    return n


def entries(stem):
    """(headword, entry text) of a dictd database (.index + .dict.dz)."""
    data = gzip.open(stem + ".dict.dz").read()
    for line in open(stem + ".index", encoding="utf-8"):
        head, off, size = line.rstrip("\n").split("\t")[:3]
        if not head.startswith("00"):
            yield head, data[b64(off):b64(off) + b64(size)].decode("utf-8")


def clean(t):
    t = re.sub(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)|\{[^}]*\}", " ", t)
    return " ".join(t.split()).strip(" .;")


def first_sense(lines):
    """The first translation line of an entry's body: numbered '1. x' or the first plain line."""
    for l in lines:
        s = l.strip()
        if not s or s.startswith(("Synonym", "see:", "Note:", '"')):
            continue
        return re.sub(r"^1\.\s*", "", s)
    return ""


def english_entries(stem, keep):
    """(English headword, entry lines, entry text) of an English -> X dictionary, verbs and
    adjectives left out, for the headwords in `keep`."""
    for _, text in entries(stem):
        lines = text.split("\n")
        if "<v" in lines[0] or "<adj" in lines[0]:
            continue
        english = re.sub(r"\s*/.*$", "", lines[0]).strip().lower()
        if english in keep:
            yield english, lines, text


def english_to(stem, keep):
    by_concept = collections.defaultdict(list)
    for english, lines, _ in english_entries(stem, keep):
        ipa = re.search(r"/([^/]*)/", lines[0])
        senses = [[clean(w) for w in re.split(r"[,;]", re.sub(r"^\d+\.\s*", "", l.strip()))]
                  for l in lines[1:] if l.strip()]
        senses = [[w for w in ws if w and len(w.split()) <= 3] for ws in senses]
        # each sense's first word before the rest (eng-fra's "cat": 1. mégère, ... 2. chat)
        words = [ws[0] for ws in senses if ws] + [w for ws in senses for w in ws[1:]]
        if words:
            by_concept[english].append((len(ipa.group(1)) if ipa else 99, words))
    for english, lists in by_concept.items():
        out = []
        # the shortest pronunciation first: eng-spa files phrases under their first word
        # ("house /haustʃɑːdʒ/" servicio, "house /haus/" casa)
        for _, words in sorted(lists, key=lambda x: x[0]):
            out += [w for w in words if w not in out]
        yield english, out[:MAX_PER_CONCEPT]


def english_to_german(stem, keep):
    best = {}
    for english, lines, text in english_entries(stem, keep):
        sense = first_sense(lines[1:])
        nouns = [clean(w) for w in sense.split(",") if re.search(r"<(masc|fem|neut|pl)>", w)]
        nouns = [w for w in nouns if w and len(w.split()) <= 3]
        if not nouns:
            continue
        examples = sum(1 for l in lines if l.strip().startswith('"'))
        refs = sum(l.count("{") for l in lines if l.strip().startswith("see:"))
        notes = sum(1 for l in lines if l.strip().startswith("Note:"))
        score = examples + refs - 5 * notes - 5 * len(SPECIALIST.findall(text))
        if score > 0 and score > best.get(english, (0, None))[0]:
            best[english] = (score, nouns[:MAX_PER_CONCEPT])
    for english, (_, nouns) in best.items():
        yield english, nouns


KANA = re.compile(r"^[\u3040-\u30ff\u30fc]+$")
COMMON = re.compile(r"\[(ichi1|ichi2|news1|news2|spec1|spec2|gai1)\]")


def japanese_to_english(stem, keep):
    """English concept -> Japanese lines, common nouns only, first-found first."""
    out = collections.defaultdict(list)
    for _, text in entries(stem):
        lines = text.split("\n")
        if not COMMON.search(lines[0]):
            continue
        forms = re.findall(r"([^\s,/\[\]()]+) /[^/]*/", lines[0])
        written = [f for f in forms if not KANA.match(f)]
        kana = [f for f in forms if KANA.match(f) and not re.search(r"[\u30a0-\u30ff]", f)]
        body = lines[1:]
        if not body or "noun (common)" not in body[0]:
            continue
        gloss = ""
        for l in body[1:]:
            s = l.strip()
            if re.match(r"^\d+\.", s):
                break
            if s:
                gloss = s
                break
        kana_alone = "usually written using kana alone" in gloss
        gloss = gloss.replace("Note: word usually written using kana alone", "")
        if "Note:" in gloss:
            continue
        texts = (kana[:1] if kana_alone else written[:1] + kana[:1]) or kana[:1]
        for g in gloss.split(","):
            g = clean(g).lower()
            if g in keep and texts and len(out[g]) < MAX_PER_CONCEPT:
                out[g] += [t for t in texts if t not in out[g]][:MAX_PER_CONCEPT - len(out[g])]
    yield from out.items()


def main(dictd, wn_dir, pairs_dir):
    english_held, chinese_held = held_out(pairs_dir)
    keep = visible_nouns(wn_dir) - english_held
    lines = []
    counts = {}
    for code, lang in ENGLISH_TO.items():
        stem = os.path.join(dictd, f"freedict-eng-{code}")
        got = [(e, ws) for e, ws in english_to(stem, keep)]
        counts[lang] = len(got)
        lines += [{"source": e, "text": w, "lang": lang} for e, ws in got for w in ws]
    got = list(english_to_german(os.path.join(dictd, "freedict-eng-deu"), keep))
    counts["de"] = len(got)
    lines += [{"source": e, "text": w, "lang": "de"} for e, ws in got for w in ws]
    got = list(japanese_to_english(os.path.join(dictd, "freedict-jpn-eng"), keep))
    counts["ja"] = len(got)
    lines += [{"source": e, "text": w, "lang": "ja"} for e, ws in got for w in ws]
    lines.sort(key=lambda l: (l["source"], l["lang"], l["text"]))
    split = write_split(lines, pairs_dir, "freedict_parallel")
    print(f"freedict_parallel: concepts per language {counts}, lines {split}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:4])
