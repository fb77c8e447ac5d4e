"""all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from safetensors into an f32 ONNX encoder.

Inputs `input_ids`, `attention_mask` (int64, N x S); output `embedding` (N x 384), the
attention-masked mean of the last hidden states (sentence-transformers' pooling; the L2 norm
is added by the tower). Also holds an independent numpy forward pass used to prove the graph.
"""
import json
import struct

import numpy as np

from onnx_util import Graph, f32_input, i64_input

HIDDEN, HEADS, LAYERS, LN_EPS = 384, 12, 6, 1e-12
HEAD_DIM = HIDDEN // HEADS


def load_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
    return out


def _key(sd, name):
    # The package's safetensors may or may not carry the "bert." prefix.
    return sd[name] if name in sd else sd["bert." + name]


def _layer_norm(g, x, gamma, beta):
    mean = g.op("ReduceMean", [x], axes=[-1])
    d = g.op("Sub", [x, mean])
    var = g.op("ReduceMean", [g.op("Mul", [d, d])], axes=[-1])
    std = g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(LN_EPS))])])
    return g.op("Add", [g.op("Mul", [g.op("Div", [d, std]), g.const(gamma)]), g.const(beta)])


def _dense(g, x, sd, prefix, weight_hook):
    w = np.ascontiguousarray(_key(sd, prefix + ".weight").T)  # [in, out]
    wn = weight_hook(g, w, prefix) if weight_hook else g.const(w, "w")
    return g.op("Add", [g.op("MatMul", [x, wn]), g.const(_key(sd, prefix + ".bias"), "b")])


def _gelu(g, x):
    e = g.op("Erf", [g.op("Mul", [x, g.const(np.float32(1 / np.sqrt(2)))])])
    return g.op("Mul", [g.op("Mul", [x, g.const(np.float32(0.5))]),
                        g.op("Add", [e, g.const(np.float32(1.0))])])


def build(source, weight_hook=None, embedding_hook=None):
    """Returns (Graph, embedding name). `source`: a safetensors path or a dict of BERT-named
    arrays (e5.py hands multilingual-e5-small over that way; the architecture is the same,
    only the depth differs). Hooks let the int8 recipe replace weight constants."""
    sd = load_safetensors(source) if isinstance(source, str) else source
    layers = len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")}) or LAYERS
    g = Graph()
    word = _key(sd, "embeddings.word_embeddings.weight")
    if embedding_hook:
        tok = embedding_hook(g, word, "input_ids")
    else:
        tok = g.op("Gather", [g.const(word, "word"), "input_ids"], axis=0)
    # positions 0..S-1 taken from the sequence length of input_ids
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.int64(1))], axis=0)
    pos_ids = g.op("Range", [g.const(np.int64(0)), seq, g.const(np.int64(1))])
    pos = g.op("Gather", [g.const(_key(sd, "embeddings.position_embeddings.weight"), "pos"),
                          pos_ids], axis=0)
    typ = _key(sd, "embeddings.token_type_embeddings.weight")[0]  # all token types are 0
    x = g.op("Add", [g.op("Add", [tok, pos]), g.const(typ, "type")])
    x = _layer_norm(g, x, _key(sd, "embeddings.LayerNorm.weight"), _key(sd, "embeddings.LayerNorm.bias"))

    maskf = g.op("Cast", ["attention_mask"], to=1)  # N x S float
    bias = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0)), maskf]), g.const(np.float32(-10000.0))])
    bias = g.op("Unsqueeze", [bias, g.const(np.array([1, 2], np.int64))])  # N x 1 x 1 x S
    split = g.const(np.array([0, -1, HEADS, HEAD_DIM], np.int64))
    merge = g.const(np.array([0, -1, HIDDEN], np.int64))
    for i in range(layers):
        p = f"encoder.layer.{i}"
        heads = []
        for part in ("query", "key", "value"):
            t = _dense(g, x, sd, f"{p}.attention.self.{part}", weight_hook)
            heads.append(g.op("Transpose", [g.op("Reshape", [t, split])], perm=[0, 2, 1, 3]))
        q, k, v = heads
        scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = g.op("Add", [g.op("Mul", [scores, g.const(np.float32(1 / np.sqrt(HEAD_DIM)))]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge])
        att = _dense(g, ctx, sd, f"{p}.attention.output.dense", weight_hook)
        x = _layer_norm(g, g.op("Add", [att, x]), _key(sd, f"{p}.attention.output.LayerNorm.weight"),
                        _key(sd, f"{p}.attention.output.LayerNorm.bias"))
        h = _gelu(g, _dense(g, x, sd, f"{p}.intermediate.dense", weight_hook))
        h = _dense(g, h, sd, f"{p}.output.dense", weight_hook)
        x = _layer_norm(g, g.op("Add", [h, x]), _key(sd, f"{p}.output.LayerNorm.weight"),
                        _key(sd, f"{p}.output.LayerNorm.bias"))
    m3 = g.op("Unsqueeze", [maskf, g.const(np.array([2], np.int64))])  # N x S x 1
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), g.const(np.array([1], np.int64))], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [maskf, g.const(np.array([1], np.int64))], keepdims=1),
                         g.const(np.float32(1e-9))])
    return g, g.op("Div", [summed, count])


def text_inputs():
    return [i64_input("input_ids", ["N", "S"]), i64_input("attention_mask", ["N", "S"])]


def backbone_model(safetensors_path):
    g, emb = build(safetensors_path)
    g.rename(emb, "embedding")
    return g.model(text_inputs(), [f32_input("embedding", ["N", HIDDEN])],
                   "all-MiniLM-L6-v2 mean-pooled sentence embedding (f32), converted by moonlens")


def reference_forward(sd, ids, mask):
    """Independent numpy BERT forward (float64) -> mean-pooled embedding, for one sequence."""
    k = lambda n: _key(sd, n).astype(np.float64)

    def ln(x, p):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + LN_EPS) * k(p + ".weight") + k(p + ".bias")

    def lin(x, p):
        return x @ k(p + ".weight").T + k(p + ".bias")

    from math import erf
    verf = np.vectorize(erf)
    s = len(ids)
    x = k("embeddings.word_embeddings.weight")[ids] + k("embeddings.position_embeddings.weight")[:s] \
        + k("embeddings.token_type_embeddings.weight")[0]
    x = ln(x, "embeddings.LayerNorm")
    mask = np.asarray(mask, np.float64)
    layers = len({n.split(".")[2] for n in sd if n.startswith("encoder.layer.")}) or LAYERS
    for i in range(layers):
        p = f"encoder.layer.{i}"
        q, kk, v = (lin(x, f"{p}.attention.self.{n}").reshape(s, HEADS, HEAD_DIM).transpose(1, 0, 2)
                    for n in ("query", "key", "value"))
        a = q @ kk.transpose(0, 2, 1) / np.sqrt(HEAD_DIM) + (1 - mask) * -10000.0
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(1, 0, 2).reshape(s, HIDDEN)
        x = ln(lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = lin(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1 + verf(h / np.sqrt(2)))
        x = ln(lin(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    return (x * mask[:, None]).sum(0) / max(mask.sum(), 1e-9)
