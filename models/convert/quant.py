"""The int8 recipe, chosen because it is what tract 0.23 runs correctly (see models/README.md).

- Conv / MatMul weights of both towers and the bridge matrix: weight-only int8, symmetric,
  one scale per output channel, stored as an int8 initializer followed by Cast and Mul. tract
  folds these constants when it loads the model, so compute is f32 and exact to the int8
  weights; nothing of QDQ's fragile activation quantization is involved.
- Depthwise convolutions stay f32 (2% of the image weights): quantized, they alone moved the
  bridge embeddings of near-tie images to cosine 0.95 (measured on the validation split).
- Word-embedding table of the text tower: int8 rows with a per-row scale; Gather picks the int8
  rows and their scales at run time (the 30522 x 384 table stays int8 in memory).
- Not used: onnxruntime's dynamic quantization of the text MatMuls (MatMulInteger, per-tensor)
  gave a text-tower cosine of 0.92 against f32 on real captions.
"""
import numpy as np


def _q(w, axis):
    """Symmetric int8 with one scale per slice along `axis`."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def weight_only(g, w, hint):
    """Conv weights [O, I, kh, kw]: axis 0; MatMul weights [in, out]: axis 1 (per column)."""
    if w.ndim == 4 and w.shape[1] == 1:  # depthwise: stays f32, see above
        return g.const(w, hint)
    axis = 0 if w.ndim == 4 else 1
    q, scale = _q(w, axis)
    return g.op("Mul", [g.op("Cast", [g.const(q, hint + "_q")], to=1), g.const(scale, hint + "_s")])


# tract folds a constant subgraph only while its f32 result stays within 4 MiB
# (tract-core 0.23 `CONST_FOLD_MEM_BUDGET`); a larger Cast*Mul is re-run on every inference.
FOLD_BUDGET = 4 << 20


def matmul(g, x, w, hint, weight_hook):
    """x @ w with `w` [in, out] through `weight_hook` (or f32). A matrix whose f32 form would
    exceed tract's fold budget is split into column blocks that each fold at load, and the
    block products are concatenated: the EfficientNet classifier (1280 x 1000, 5.1 MB f32)
    otherwise cost 2.5 ms of dequantization per frame (measured with `bench profile`)."""
    if weight_hook is None:
        return g.op("MatMul", [x, g.const(w, hint)])
    blocks = -(-(w.size * 4) // FOLD_BUDGET)
    if blocks == 1:
        return g.op("MatMul", [x, weight_hook(g, w, hint)])
    cols = np.array_split(np.arange(w.shape[1]), blocks)
    parts = [g.op("MatMul", [x, weight_hook(g, np.ascontiguousarray(w[:, c]), f"{hint}{i}")])
             for i, c in enumerate(cols)]
    return g.op("Concat", parts, axis=-1)


def matrix_rows(g, w, hint):
    q, scale = _q(w, 0)
    return g.op("Mul", [g.op("Cast", [g.const(q, hint + "_q")], to=1), g.const(scale, hint + "_s")])


def embedding_rows(g, table, ids):
    """Gather int8 rows and their scales, then dequantize only the picked rows."""
    q, scale = _q(table, 0)
    rows = g.op("Gather", [g.const(q, "word_q"), ids], axis=0)
    scales = g.op("Gather", [g.const(scale, "word_s"), ids], axis=0)
    return g.op("Mul", [g.op("Cast", [rows], to=1), scales])
