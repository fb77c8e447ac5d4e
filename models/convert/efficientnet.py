"""EfficientNet-Lite0 (ImageNet) from its legacy .pth into an f32 ONNX backbone.

Batch norms are folded into the convolutions (eps 1e-3), activations are ReLU6, padding is
TensorFlow "same" for a 224x224 input (computed statically, asymmetric where needed), no
squeeze-excitation (the Lite variants drop it). Outputs: `logits` (N x 1000) and the pooled
`features` (N x 1280) in front of the classifier.
"""
import math

import numpy as np

import quant

from onnx_util import Graph, f32_input
from torch_pth import load_state_dict

# (repeats, kernel, stride, expand ratio, output channels) per stage of Lite0.
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
BN_EPS = 1e-3
SIZE = 224


def _fold(sd, conv, bn):
    w = sd[conv + ".weight"].astype(np.float64)
    g, b = sd[bn + ".weight"], sd[bn + ".bias"]
    m, v = sd[bn + ".running_mean"], sd[bn + ".running_var"]
    k = g / np.sqrt(v + BN_EPS)
    return (w * k[:, None, None, None]).astype(np.float32), (b - m * k).astype(np.float32)


def _same_pads(size, k, s):
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def _conv(g, x, size, sd, conv, bn, k, s, groups=1, act=True, weight_hook=None):
    w, b = _fold(sd, conv, bn)
    lo, hi, out = _same_pads(size, k, s)
    wname = weight_hook(g, w, conv) if weight_hook else g.const(w, "w")
    y = g.op("Conv", [x, wname, g.const(b, "b")], kernel_shape=[k, k], strides=[s, s],
             pads=[lo, lo, hi, hi], group=groups)
    if act:
        y = g.op("Clip", [y, g.const(np.float32(0.0)), g.const(np.float32(6.0))])
    return y, out


def build(pth_path, weight_hook=None):
    """Returns (Graph, logits name, features name); the input is `image` Nx3x224x224."""
    sd = load_state_dict(pth_path)
    g = Graph()
    x, size = _conv(g, "image", SIZE, sd, "_conv_stem", "_bn0", 3, 2, weight_hook=weight_hook)
    cin, idx = 32, 0
    for repeats, k, stride, expand, cout in STAGES:
        for r in range(repeats):
            s = stride if r == 0 else 1
            p = f"_blocks.{idx}"
            inp, h = x, x
            if expand != 1:
                h, _ = _conv(g, h, size, sd, p + "._expand_conv", p + "._bn0", 1, 1,
                             weight_hook=weight_hook)
            h, out = _conv(g, h, size, sd, p + "._depthwise_conv", p + "._bn1", k, s,
                           groups=cin * expand, weight_hook=weight_hook)
            h, _ = _conv(g, h, out, sd, p + "._project_conv", p + "._bn2", 1, 1, act=False,
                         weight_hook=weight_hook)
            if s == 1 and cin == cout:
                h = g.op("Add", [h, inp])
            x, size, cin, idx = h, out, cout, idx + 1
    x, _ = _conv(g, x, size, sd, "_conv_head", "_bn1", 1, 1, weight_hook=weight_hook)
    pooled = g.op("GlobalAveragePool", [x])
    feats = g.op("Flatten", [pooled], axis=1)
    fc_w = sd["_fc.weight"].T.astype(np.float32)
    logits = g.op("Add", [quant.matmul(g, feats, fc_w, "_fc", weight_hook), g.const(sd["_fc.bias"], "fc_b")])
    return g, logits, feats


def backbone_model(pth_path):
    g, logits, feats = build(pth_path)
    g.rename(logits, "logits")
    g.rename(feats, "features")
    return g.model([f32_input("image", ["N", 3, SIZE, SIZE])],
                   [f32_input("logits", ["N", 1000]), f32_input("features", ["N", 1280])],
                   "EfficientNet-Lite0 ImageNet backbone (f32), converted by moonlens")
