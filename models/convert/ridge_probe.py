"""A linear proxy for what more parallel text is worth to the distilled multilingual tower
(models/README.md, "Dictionaries for the other languages"): ridge maps from the student's
sentence embedding (+ a CJK character bag) to the teacher's embedding, one per set of training
files, scored like `moonlens-host eval` on the Tux Paint validation translations. Minutes,
where a trained head takes an hour; it reads the sentence caches `distill` wrote (run the
distillation once with the lines in question, `--epochs 1` is enough, to fill them).

    .venv/bin/python models/convert/ridge_probe.py [--buckets 1024]
        [--variant NAME=FILE,FILE ...]

The gallery's image embeddings come from score_probes.py's reference pipeline (onnxruntime on
models/default, which reproduces `eval`)."""
import argparse
import hashlib
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import score_probes as sp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
PAIRS = os.path.join(ROOT, "data", "pairs")
STUDENT = os.path.join(ROOT, "models", "build", "bridge-e5-pruned-int8")
TEACHER = os.path.join(ROOT, "models", "build", "heads-oc-pp-mix0.8-int8")
DEFAULT_LINES = "train_parallel.jsonl,things_parallel_train.jsonl,dict_parallel_train.jsonl"


def cache_rows(bundle, output):
    """{sha256(text)[:16]: embedding} of `src/host/sentences.rs`'s cache for a tower."""
    bundle_id = hashlib.sha256(open(os.path.join(bundle, "bundle.toml"), "rb").read()).hexdigest()
    name = hashlib.sha256(f"{bundle_id} {output}".encode()).hexdigest()[:24]
    b = open(os.path.join(PAIRS, "feature-cache", name + ".rows"), "rb").read()
    if b[:8] != b"MLTEXTS2":
        sys.exit(f"{name}.rows: not a sentence cache")
    n, d = int.from_bytes(b[40:44], "little"), int.from_bytes(b[44:48], "little")
    r = 16 + 4 * d
    return {b[48 + i * r:64 + i * r]: np.frombuffer(b[64 + i * r:48 + (i + 1) * r], np.float32)
            for i in range(n)}


def text_hash(t):
    return hashlib.sha256(t.encode()).digest()[:16]


def is_cjk(c):
    return "\u3040" <= c <= "\u30ff" or "\u3400" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" \
        or "\uf900" <= c <= "\ufaff"


def fnv1a(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def cjk_bag(text, n):
    """The CJK part of `encoder::char_bag` (characters and adjacent pairs of each run)."""
    v, run, grams = np.zeros(n, np.float32), "", []
    for c in text + " ":
        if is_cjk(c):
            run += c
        else:
            grams += list(run) + [run[i:i + 2] for i in range(len(run) - 1)]
            run = ""
    for g in grams:
        v[fnv1a(g) % n] += 1
    norm = np.linalg.norm(v)
    return v / norm if norm else v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--buckets", type=int, default=1024)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=FILE,FILE (pairs files under data/pairs)")
    a = ap.parse_args()
    variants = dict(v.split("=", 1) for v in a.variant) or {
        "default lines": DEFAULT_LINES,
        "+ freedict": DEFAULT_LINES + ",freedict_parallel_train.jsonl",
        "+ freedict + phrases": DEFAULT_LINES + ",freedict_parallel_train.jsonl,dict_phrases_train.jsonl",
    }
    student, teacher = cache_rows(STUDENT, "base"), cache_rows(TEACHER, "final")

    def feats(texts):
        return np.hstack([np.stack([student[text_hash(t)] for t in texts]),
                          np.ones((len(texts), 1), np.float32),
                          np.stack([cjk_bag(t, a.buckets) for t in texts])])

    maps = {}
    for name, files in variants.items():
        lines = []
        for f in files.split(","):
            lines += [(j["source"], j["text"]) for j in map(json.loads, open(os.path.join(PAIRS, f)))]
        lines += [(s, s) for s in sorted({s for s, _ in lines})]  # distill reads the sources too
        lines = [(s, t) for s, t in lines if text_hash(t) in student and text_hash(s) in teacher]
        x, y = feats([t for _, t in lines]), np.stack([teacher[text_hash(s)] for s, _ in lines])
        gram = x.T @ x
        gram[np.diag_indices_from(gram)] += 1.0
        maps[name] = np.linalg.solve(gram, x.T @ y)
        print(f"{name}: {len(lines)} lines", file=sys.stderr)
    towers = sp.Towers(os.path.join("/tmp", "moonlens-ridge-probe"))
    for lang in ["zh_CN", "zh_TW", "ja", "ko", "ru", "ar", "fr", "de", "es"]:
        pairs = sp.read(f"val_{lang}.jsonl")
        imgs = sorted({p for p, _ in pairs})
        pos = {p: i for i, p in enumerate(imgs)}
        truth = np.array([pos[p] for p, _ in pairs])
        g = np.stack([towers.image_parts(p)[0] for p in imgs])
        texts = [t for _, t in pairs]
        if any(text_hash(t) not in student for t in texts):
            print(f"val_{lang}: queries missing from the student's cache (distill on val_parallel first)")
            continue
        q = feats(texts)
        print(f"val_{lang}: " + " | ".join(f"{name} {sp.recall(sp.l2n(q @ w) @ g.T, truth)}"
                                          for name, w in maps.items()), flush=True)
    towers.save()


if __name__ == "__main__":
    main()
