"""EfficientNet-Lite0/1/2 (ImageNet) from its legacy .pth into an f32 ONNX backbone.

Batch norms are folded into the convolutions (eps 1e-3), activations are ReLU6, padding is
TensorFlow "same" for the variant's input size (224, 240, 260; computed statically,
asymmetric where needed), no squeeze-excitation (the Lite variants drop it). Outputs:
`logits` (N x 1000) and the pooled `features` (N x 1280) in front of the classifier.

The block structure is read from the state dict (kernel from each depthwise weight, output
channels from each projection, expansion from whether an expand conv exists); the variants
differ only in width and depth, and stage i's first block has Lite0's stride (STRIDES), the
stages being the runs of blocks with the same output channels.
"""
import math

import numpy as np

import quant

from onnx_util import Graph, f32_input
from torch_pth import load_state_dict

# stride of each stage's first block (the same in every Lite variant)
STRIDES = [1, 2, 2, 2, 1, 2, 1]
BN_EPS = 1e-3
SIZE = 224
# input size of each variant (the resolution it was trained at)
SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def blocks(sd):
    """(kernel, stride, has expand conv, output channels) of each block, from the weights."""
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    out, stage, prev = [], -1, None
    for i in range(n):
        p = f"_blocks.{i}"
        k = sd[p + "._depthwise_conv.weight"].shape[2]
        cout = sd[p + "._project_conv.weight"].shape[0]
        first = cout != prev
        stage += first
        out.append((k, STRIDES[stage] if first else 1, p + "._expand_conv.weight" in sd, cout))
        prev = cout
    assert stage == len(STRIDES) - 1, f"{stage + 1} stages, expected {len(STRIDES)}"
    return out


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


def build(pth_path, weight_hook=None, size=SIZE):
    """Returns (Graph, logits name, features name); the input is `image` Nx3x{size}x{size}."""
    sd = load_state_dict(pth_path)
    g = Graph()
    x, size = _conv(g, "image", size, sd, "_conv_stem", "_bn0", 3, 2, weight_hook=weight_hook)
    cin = sd["_conv_stem.weight"].shape[0]
    for idx, (k, s, expand, cout) in enumerate(blocks(sd)):
        p = f"_blocks.{idx}"
        inp, h = x, x
        if expand:
            h, _ = _conv(g, h, size, sd, p + "._expand_conv", p + "._bn0", 1, 1,
                         weight_hook=weight_hook)
        hidden = sd[p + "._depthwise_conv.weight"].shape[0]
        h, out = _conv(g, h, size, sd, p + "._depthwise_conv", p + "._bn1", k, s,
                       groups=hidden, weight_hook=weight_hook)
        h, _ = _conv(g, h, out, sd, p + "._project_conv", p + "._bn2", 1, 1, act=False,
                     weight_hook=weight_hook)
        if s == 1 and cin == cout:
            h = g.op("Add", [h, inp])
        x, size, cin = h, out, cout
    x, _ = _conv(g, x, size, sd, "_conv_head", "_bn1", 1, 1, weight_hook=weight_hook)
    pooled = g.op("GlobalAveragePool", [x])
    feats = g.op("Flatten", [pooled], axis=1)
    fc_w = sd["_fc.weight"].T.astype(np.float32)
    logits = g.op("Add", [quant.matmul(g, feats, fc_w, "_fc", weight_hook), g.const(sd["_fc.bias"], "fc_b")])
    return g, logits, feats


def backbone_model(pth_path, size=SIZE):
    g, logits, feats = build(pth_path, size=size)
    g.rename(logits, "logits")
    g.rename(feats, "features")
    return g.model([f32_input("image", ["N", 3, size, size])],
                   [f32_input("logits", ["N", 1000]), f32_input("features", ["N", 1280])],
                   "EfficientNet-Lite0 ImageNet backbone (f32), converted by moonlens")
