"""An OpenCLIP model as a moonlens bundle: image and text towers in ONNX, a tokenizer.json for
the `tokenizers` crate, bundle.toml. Run through from-openclip.sh (it owns the pinned venv).

Usage: from_openclip.py MODEL [PRETRAINED] --out DIR [--tiny]

- MODEL: an OpenCLIP model name (`MobileCLIP2-S0`, `MobileCLIP-S2`, `ViT-B-32`, ...), or
  `moonlens-tiny`, a 2-layer ViT of the ViT-B-32 family with the full CLIP vocabulary, which
  is what the test fixture is made of (tests/fixtures/clip-tiny).
- PRETRAINED: an OpenCLIP pretrained tag (`openai`, `dfndr2b`, ...); open_clip downloads the
  weights (internet needed). Without it the exact architecture gets random weights: speed and
  the correctness of the conversion do not depend on the weights.

Writes DIR-f32/ and DIR-int8/ (complete bundles) and prints the checks as JSON lines:
onnxruntime vs torch (f32, cosine per row), int8 vs f32 (worst cosine), tokenizer parity
against open_clip's own tokenizer on PARITY. Each bundle also gets reference.json (inputs,
torch and onnxruntime outputs, open_clip's token ids) that `moonlens-host parity` (and
tests/clip.rs on the fixture) compares tract with.

What the bundle says (models/README.md, "Use a CLIP model"):
- image: input `image` [N,3,S,S] f32, outputs `embedding` (L2-normalized) and `features`
  (the same vector before normalization: what `moonlens-host train` puts a head on);
  preprocessing from the model's own config (size, mean, std; resize the short side, centre
  crop). moonlens resizes with an antialiased triangle filter where OpenCLIP uses bicubic:
  the cosine between the two on real photos is printed (`preprocess_cos`).
- text: input `input_ids` [1,77] int64 and no mask, output `embedding` (L2-normalized). CLIP
  pools at the end-of-text token with no attention mask, so the row is always the context
  length, zero-padded (`pad_to = 77`); trimmed rows give a different vector.
- int8: weight-only, the project's recipe (quant.py): MatMul/Gemm/Conv weights int8 per output
  channel with Cast*Mul (folded by tract at load), depthwise convs f32, the token table int8
  rows with per-row scales gathered at run time. Nothing here quantizes activations.
"""
import argparse
import gzip
import json
import os
import shutil
import sys
import time

import numpy as np
import onnx
from onnx import numpy_helper, helper, TensorProto

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import imgprep  # noqa: E402
import quant  # noqa: E402
from convert import cos_rows as cos, session, sha256  # noqa: E402

# Tokenizer parity set: plain English, case, punctuation, contractions, numbers, Chinese,
# Japanese, emoji, full-width forms and curly quotes (ftfy's rewrites), runs of spaces, and
# inputs longer than the context (truncated to 77 with the end token kept).
PARITY = [
    "a rabbit next to the full moon",
    "A Photo of TWO dogs!!",
    "it's the cat's toy, isn't it?",
    "red paper lantern 2024, 3.5 kg",
    "兔子", "满月旁边的兔子", "月饼和灯笼", "うさぎと月", "토끼",
    "🐇 and 🌕", "a 🚲 near the 🏠", "full\u3000width　ｆｕｌｌ，ｗｉｄｔｈ！", "“curly” ‘quotes’",
    "  spaces   and\ttabs\n", "naïve café résumé", "x" * 300,
    " ".join(["a long caption about a rabbit and the moon"] * 20),
    "moon cake " * 60,
]

TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

LICENCES = {
    "MobileCLIP": "Apple sample code licence (weights: Apple ML research licence); see apple/ml-mobileclip",
    "ViT": "OpenCLIP code MIT; weights per their tag's model card (OpenAI CLIP: MIT)",
}


# --- tokenizer ---------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map, which CLIP's BPE uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer(bpe_gz, context_length):
    """CLIP's BPE (open_clip.SimpleTokenizer) as a `tokenizers` Tokenizer: the same vocabulary
    and merges, lower-cased, split by CLIP's word pattern, byte-level, `</w>` word ends,
    start/end tokens, truncation leaving the end token last. ftfy's rewrites that matter for
    typed queries are normalizer rules (NFC, curly quotes, full-width ASCII); its mojibake and
    HTML-entity repair are not (see models/README.md)."""
    from tokenizers import Tokenizer, Regex, models, normalizers, pre_tokenizers, processors, decoders
    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<start_of_text>", "<end_of_text>"]
    ids = {t: i for i, t in enumerate(vocab)}
    bpe = models.BPE(vocab=ids, merges=merges, end_of_word_suffix="</w>",
                     continuing_subword_prefix="", unk_token=None, fuse_unk=False)
    tok = Tokenizer(bpe)
    width = [normalizers.Replace(chr(c), chr(c - 0xFEE0)) for c in range(0xFF01, 0xFF5F)]
    quotes = [normalizers.Replace(a, b) for a, b in
              [("\u2018", "'"), ("\u2019", "'"), ("\u201c", '"'), ("\u201d", '"')]]
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC()] + width + quotes +
        [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()])
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    sot, eot = ids["<start_of_text>"], ids["<end_of_text>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", sot), ("<end_of_text>", eot)])
    tok.decoder = decoders.ByteLevel()
    tok.enable_truncation(context_length)
    return tok, sot, eot


def tokenizer_parity(tok, oc_tok, context_length):
    """Our tokenizer's ids vs open_clip's (without its zero padding) on PARITY."""
    bad = []
    for s in PARITY:
        want = [int(i) for i in oc_tok([s])[0].tolist()]
        while want and want[-1] == 0:
            want.pop()
        got = tok.encode(s).ids
        if got != want:
            bad.append({"text": s, "open_clip": want[:20], "ours": got[:20]})
    return bad


# --- towers ------------------------------------------------------------------------------

def build(name, pretrained, tiny):
    import torch
    import open_clip
    if tiny:
        torch.manual_seed(0)
        model = open_clip.model.CLIP(**TINY)
        cfg = dict(TINY)
        pre = {"size": 64, "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
    else:
        if name not in open_clip.list_models():
            sys.exit(f"{name}: not an OpenCLIP model name (open_clip.list_models() lists them)")
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=pretrained)
        cfg = open_clip.get_model_config(name)
        pc = open_clip.get_model_preprocess_cfg(model)
        pre = {"size": pc["size"], "mean": pc["mean"], "std": pc["std"],
               "interpolation": pc.get("interpolation"), "resize_mode": pc.get("resize_mode")}
    tcfg = cfg.get("text_cfg", {})
    if tcfg.get("hf_tokenizer_name") or tcfg.get("hf_model_name"):
        sys.exit(f"{name}: its text tower uses a HuggingFace tokenizer/model "
                 f"({tcfg.get('hf_tokenizer_name') or tcfg.get('hf_model_name')}); this converter "
                 "supports models with CLIP's own BPE tokenizer (MobileCLIP, ViT-*, RN* families)")
    try:
        from timm.utils.model import reparameterize_model
        model = reparameterize_model(model)  # MobileCLIP's train-time branches folded
    except ImportError:
        pass
    model.eval()
    size = pre["size"] if isinstance(pre["size"], int) else pre["size"][0]
    if pre.get("resize_mode") not in (None, "shortest"):
        print(json.dumps({"warning": f"{name} resizes with mode {pre['resize_mode']}; moonlens "
                          "resizes the short side and centre-crops"}))
    return model, cfg, size, pre


def export(model, size, context_length, out_dir):
    import torch
    import torch.nn.functional as F

    class Image(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, image):
            f = self.m.encode_image(image)
            return F.normalize(f, dim=-1), f

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return F.normalize(self.m.encode_text(input_ids), dim=-1)

    os.makedirs(out_dir, exist_ok=True)
    # nn.MultiheadAttention's fused inference kernel has no ONNX form; the plain path does
    torch.backends.mha.set_fastpath_enabled(False)
    img = os.path.join(out_dir, "image.onnx")
    txt = os.path.join(out_dir, "text.onnx")
    with torch.no_grad():
        torch.onnx.export(Image(model), (torch.zeros(1, 3, size, size),), img,
                          input_names=["image"], output_names=["embedding", "features"],
                          dynamic_axes={"image": {0: "N"}, "embedding": {0: "N"}, "features": {0: "N"}},
                          opset_version=17, dynamo=False)
        torch.onnx.export(Text(model), (torch.zeros(1, context_length, dtype=torch.int64),), txt,
                          input_names=["input_ids"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "B"}, "embedding": {0: "B"}},
                          opset_version=17, dynamo=False)
    return img, txt


def quantize(src, dst):
    """The weight-only int8 recipe on an exported graph (see the module doc). A weight whose
    f32 form exceeds tract's constant-folding budget (quant.FOLD_BUDGET) is split into blocks
    of output channels, each product computed apart and concatenated, so that every block
    folds at load instead of being dequantized on every run (ViT-B/32's MLP matrices and
    patch embedding: image tower 203 ms unsplit vs 112 ms f32, measured). Returns how many
    tensors were quantized."""
    m = onnx.load(src)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    users = {}
    for n in g.node:
        for k, x in enumerate(n.input):
            users.setdefault(x, []).append((n, k))
    new_inits, done, count = [], 0, [0]
    before = {}  # id(node) -> nodes to insert in front of it
    removed = set()  # id(node) of products replaced by their blocks

    def fresh(hint):
        count[0] += 1
        return f"{hint}_mlq{count[0]}"

    def const(a, hint):
        name = fresh(hint)
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    def dequant(w, axis, hint, out):
        """Nodes making f32 tensor `out` from int8 `w` with per-slice scales on `axis`."""
        q, scale = quant._q(w, axis)
        f = fresh(hint + "_f")
        return [helper.make_node("Cast", [const(q, hint + "_q")], [f], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f, const(scale, hint + "_s")], [out])]

    def attr(n, key, default):
        return next((helper.get_attribute_value(a) for a in n.attribute if a.name == key), default)

    for name, init in list(inits.items()):
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.size < 4096:
            continue
        uses = users.get(name, [])
        kinds = {(n.op_type, k) for n, k in uses}
        if not uses or len(kinds) != 1:
            continue
        op, k = next(iter(kinds))
        if (op, k) == ("Gather", 0) and w.ndim == 2:
            # the token table: int8 rows and per-row scales, gathered at run time
            q, scale = quant._q(w, 0)
            qn, sn = const(q, name + "_q"), const(scale, name + "_s")
            for n, _ in uses:
                ids, rq, rs, rf = n.input[1], fresh("rows_q"), fresh("rows_s"), fresh("rows_f")
                before.setdefault(id(n), []).extend([
                    helper.make_node("Gather", [qn, ids], [rq], axis=0),
                    helper.make_node("Gather", [sn, ids], [rs], axis=0),
                    helper.make_node("Cast", [rq], [rf], to=TensorProto.FLOAT)])
                n.op_type = "Mul"
                del n.attribute[:]
                n.input[:] = [rf, rs]
        elif (op, k) in (("MatMul", 1), ("Gemm", 1), ("Conv", 1)):
            if op == "Conv" and (w.ndim != 4 or w.shape[1] == 1):
                continue  # depthwise convs stay f32 (quant.py says why)
            if op != "Conv" and w.ndim != 2:
                continue
            trans_b = op == "Gemm" and all(attr(n, "transB", 0) == 1 for n, _ in uses)
            if op == "Gemm" and not trans_b and any(attr(n, "transB", 0) for n, _ in uses):
                continue
            out_axis = 0 if op == "Conv" or trans_b else 1
            blocks = max(1, -(-(w.size * 4) // quant.FOLD_BUDGET))
            parts = np.array_split(np.arange(w.shape[out_axis]), blocks)
            for n, _ in uses:
                nodes = []
                if blocks == 1:
                    nodes += dequant(w, out_axis, name, name + "_deq")
                    n.input[1] = name + "_deq"
                    before.setdefault(id(n), []).extend(nodes)
                    continue
                outs = []
                bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
                b = numpy_helper.to_array(inits[bias]) if bias in inits else None
                for i, idx in enumerate(parts):
                    wi = np.take(w, idx, axis=out_axis)
                    wn, yi = fresh(name + f"_b{i}"), fresh(n.output[0] + f"_b{i}")
                    nodes += dequant(wi, out_axis, name + f"_b{i}", wn)
                    ins = [n.input[0], wn]
                    if b is not None:
                        ins.append(const(b[idx], name + f"_bias{i}"))
                    elif bias:
                        break  # a computed bias: leave this node unsplit
                    nodes.append(helper.make_node(n.op_type, ins, [yi], **{
                        a.name: helper.get_attribute_value(a) for a in n.attribute}))
                    outs.append(yi)
                else:
                    concat_axis = 1 if op == "Conv" else -1
                    nodes.append(helper.make_node("Concat", outs, [n.output[0]], axis=concat_axis))
                    before.setdefault(id(n), []).extend(nodes)
                    removed.add(id(n))
                    continue
                nodes = dequant(w, out_axis, name, name + "_deq")
                n.input[1] = name + "_deq"
                before.setdefault(id(n), []).extend(nodes)
        else:
            continue
        g.initializer.remove(init)
        done += 1
    g.initializer.extend(new_inits)
    nodes = []
    for n in g.node:
        nodes += before.get(id(n), [])
        if id(n) not in removed:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    # biases now split into blocks and used by nothing
    used = {x for n in g.node for x in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    onnx.checker.check_model(m)
    onnx.save(m, dst)
    return done


def sample_photos():
    d = os.path.join(ROOT, "models", "samples")
    return [os.path.join(d, f) for f in sorted(os.listdir(d))
            if f.lower().endswith((".jpg", ".jpeg", ".png"))][:4]


def write_bundle(out, name, dim, size, pre, context_length, desc, prov, quant_note, files):
    mean = [round(m * 255.0, 4) for m in pre["mean"]]
    std = [round(s * 255.0, 4) for s in pre["std"]]
    toml = f'''# moonlens model bundle (format 1), written by models/convert/from-openclip.sh.
# See models/README.md for every field.
format = 1
name = "{name}"
dim = {dim}
description = "{desc}"

[image]
file = "image.onnx"
input = "image"
output = "embedding"
# the image embedding before normalization: trained heads read it
features = "features"
shape = [3, {size}, {size}]
channel_order = "rgb"
resize = {size}
resample = "bicubic"
crop = {size}
mean = {mean}
std = {std}
background = [255, 255, 255]

[text]
file = "text.onnx"
tokenizer = "tokenizer.json"
input_ids = "input_ids"
output = "embedding"
max_tokens = {context_length}
# CLIP reads a full row and pools at the end-of-text token: pad with zeros, no mask
pad_to = {context_length}
pad_id = 0
lowercase = false
prefix = "a photo of "

[provenance]
quantization = "{quant_note}"
'''
    for k, v in prov.items():
        toml += f'{k} = {json.dumps(v)}\n'
    toml += "\n[sha256]\n"
    for f in sorted(files):
        toml += f'"{f}" = "{sha256(os.path.join(out, f))}"\n'
    open(os.path.join(out, "bundle.toml"), "w").write(toml)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("pretrained", nargs="?")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    import torch
    import open_clip
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()
    model, cfg, size, pre = build(a.model, a.pretrained, a.tiny)
    context_length = cfg["text_cfg"].get("context_length", 77)
    dim = cfg["embed_dim"]
    f32_dir, int8_dir = a.out + "-f32", a.out + "-int8"
    for d in (f32_dir, int8_dir):
        shutil.rmtree(d, ignore_errors=True)
    img_path, txt_path = export(model, size, context_length, f32_dir)
    os.makedirs(int8_dir)
    n_img = quantize(img_path, os.path.join(int8_dir, "image.onnx"))
    n_txt = quantize(txt_path, os.path.join(int8_dir, "text.onnx"))

    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    tok, sot, eot = clip_tokenizer(bpe, context_length)
    oc_tok = open_clip.get_tokenizer("ViT-B-32" if a.tiny else a.model)
    bad = tokenizer_parity(tok, oc_tok, context_length)
    print(json.dumps({"check": "tokenizer", "strings": len(PARITY), "mismatches": bad}, ensure_ascii=False))
    for d in (f32_dir, int8_dir):
        tok.save(os.path.join(d, "tokenizer.json"))

    # checks: torch vs onnxruntime f32, int8 vs f32, moonlens preprocessing vs OpenCLIP's
    photos = sample_photos()
    mean255 = [m * 255.0 for m in pre["mean"]]
    std255 = [s * 255.0 for s in pre["std"]]
    ours = np.concatenate([imgprep.preprocess(imgprep.load_rgb(p), size, size, mean255, std255,
                                               "bicubic")
                           for p in photos])
    transform = open_clip.image_transform(size, is_train=False, mean=pre["mean"], std=pre["std"])
    from PIL import Image as PILImage
    # the same pixels into both: transparent stamps composited onto white as moonlens does
    theirs = torch.stack([transform(PILImage.fromarray(imgprep.load_rgb(p).round().astype(np.uint8)))
                          for p in photos])
    texts = ["a photo of " + s for s in PARITY[:8]]
    rows = np.zeros((len(texts), context_length), np.int64)
    for i, s in enumerate(texts):
        ids = tok.encode(s).ids
        rows[i, :len(ids)] = ids
    with torch.no_grad():
        t_img = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(ours)), dim=-1).numpy()
        t_img_oc = torch.nn.functional.normalize(model.encode_image(theirs), dim=-1).numpy()
        t_txt = torch.nn.functional.normalize(model.encode_text(torch.from_numpy(rows)), dim=-1).numpy()
    res = {}
    for tag, d in (("f32", f32_dir), ("int8", int8_dir)):
        si, st = session(os.path.join(d, "image.onnx")), session(os.path.join(d, "text.onnx"))
        o_img = si.run(["embedding"], {"image": ours})[0]
        o_txt = np.concatenate([st.run(["embedding"], {"input_ids": rows[i:i + 1]})[0]
                                for i in range(len(texts))])
        res[tag] = (o_img, o_txt)
        print(json.dumps({"check": f"onnxruntime {tag} vs torch f32",
                          "image_cos_min": float(cos(o_img, t_img).min()),
                          "text_cos_min": float(cos(o_txt, t_txt).min())}))
    print(json.dumps({"check": "int8 vs f32 (onnxruntime)",
                      "image_cos_min": float(cos(res["int8"][0], res["f32"][0]).min()),
                      "text_cos_min": float(cos(res["int8"][1], res["f32"][1]).min())}))
    diff = np.abs(ours - theirs.numpy())
    print(json.dumps({"check": "moonlens preprocessing vs OpenCLIP's",
                      "input_mean_abs_diff": float(diff.mean()), "input_max_abs_diff": float(diff.max()),
                      "embedding_cos_min_torch_f32": float(cos(t_img, t_img_oc).min())}))

    family = "MobileCLIP" if "MobileCLIP" in a.model else "ViT"
    name = a.model if not a.pretrained else f"{a.model}-{a.pretrained}"
    weights = (f"OpenCLIP pretrained tag {a.pretrained}" if a.pretrained
               else "random (torch.manual_seed(0)): for conversion tests and timing only")
    prov = {"model": a.model, "weights": weights, "open_clip": open_clip.__version__,
            "torch": torch.__version__, "licence": LICENCES[family],
            "converter": "models/convert/from-openclip.sh"}
    for tag, d in (("f32", f32_dir), ("int8", int8_dir)):
        files = ["image.onnx", "text.onnx", "tokenizer.json", "reference.json"]
        o_img, o_txt = res[tag]
        ref = {"photos": [os.path.relpath(p, ROOT) for p in photos],
               "image_input": ours[0].ravel().round(6).tolist(),
               "image_torch_f32": t_img.round(6).tolist(),
               "image_onnxruntime": o_img.round(6).tolist(),
               "texts": texts, "text_torch_f32": t_txt.round(6).tolist(),
               "text_onnxruntime": o_txt.round(6).tolist(),
               # as the bundle tokenizes a query: with its prefix
               "token_ids": {s: [int(i) for i in oc_tok(["a photo of " + s])[0].tolist()
                                 if i != 0] for s in PARITY}}
        json.dump(ref, open(os.path.join(d, "reference.json"), "w"), ensure_ascii=False)
        q = ("none (f32)" if tag == "f32" else
             f"weight-only int8 per output channel ({n_img} image, {n_txt} text tensors); "
             "token table int8 rows with per-row scales; depthwise convs f32")
        write_bundle(d, f"{name}-{tag}", dim, size, pre, context_length,
                     f"OpenCLIP {a.model} converted by models/convert/from-openclip.sh", prov, q, files)
    sizes = {tag: sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
             for tag, d in (("f32", f32_dir), ("int8", int8_dir))}
    print(json.dumps({"done": a.out, "seconds": round(time.time() - t0, 1),
                      "bytes": sizes, "dim": dim, "image_size": size}))
    if bad:
        sys.exit("tokenizer parity failed: see the mismatches above")


if __name__ == "__main__":
    main()
