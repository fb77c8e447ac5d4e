"""The training-free bridge between the two towers, and the tower graphs around the backbones.

Image tower: backbone logits -> softmax(logits / T) -> the k largest class probabilities,
renormalized -> their weighted sum of L2-normalized class-name text embeddings (a constant
1000 x 384 matrix in the graph) -> L2 norm. Text tower: MiniLM mean pooling -> L2 norm.
"""
import numpy as np

from onnx_util import f32_input

TEMPLATES = ["{}", "a {}.", "a photo of a {}.", "a picture of a {}."]


def l2n(x, axis=-1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def bridge_numpy(logits, class_emb, temperature, k):
    z = logits / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    idx = np.argsort(-p, axis=-1)[:, :k]
    w = np.take_along_axis(p, idx, -1)
    w /= w.sum(-1, keepdims=True)
    return l2n(np.einsum("nk,nkd->nd", w, class_emb[idx]))


def recall(text_emb, image_emb, truth, ks=(1, 5, 10)):
    """truth[i] = gallery index of query i; ties counted pessimistically."""
    s = text_emb @ image_emb.T
    own = s[np.arange(len(truth)), truth]
    rank = (s >= own[:, None]).sum(1)  # 1 = first; ties push the own item down
    return {f"r{k}": float((rank <= k).mean()) for k in ks} | {"median_rank": float(np.median(rank))}


def _l2_norm(g, x):
    ss = g.op("ReduceSum", [g.op("Mul", [x, x]), g.const(np.array([-1], np.int64))], keepdims=1)
    return g.op("Div", [x, g.op("Sqrt", [g.op("Max", [ss, g.const(np.float32(1e-24))])])])


def image_tower(g, logits, class_emb, temperature, k, matrix_hook=None):
    probs = g.op("Softmax", [g.op("Div", [logits, g.const(np.float32(temperature))])], axis=-1)
    vals, idx = g.op("TopK", [probs, g.const(np.array([k], np.int64))], axis=-1, outputs=2)
    w = g.op("Div", [vals, g.op("ReduceSum", [vals, g.const(np.array([-1], np.int64))], keepdims=1)])
    e = matrix_hook(g, class_emb.astype(np.float32), "class_emb") if matrix_hook \
        else g.const(class_emb.astype(np.float32), "class_emb")
    picked = g.op("Gather", [e, idx], axis=0)  # N x k x D
    mixed = g.op("MatMul", [g.op("Unsqueeze", [w, g.const(np.array([1], np.int64))]), picked])
    mixed = g.op("Squeeze", [mixed, g.const(np.array([1], np.int64))])
    out = _l2_norm(g, mixed)
    g.rename(out, "embedding")
    return [f32_input("embedding", ["N", class_emb.shape[1]])]


def text_tower(g, emb):
    out = _l2_norm(g, emb)
    g.rename(out, "embedding")
    return [f32_input("embedding", ["N", 384])]
