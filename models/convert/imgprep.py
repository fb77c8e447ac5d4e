"""Reference image preprocessing, mirrored exactly by `src/encoder/preprocess.rs`.

Steps (all in f32, no rounding between steps):
1. decode; an alpha channel is composited onto the bundle's background colour;
2. resize so the short side equals `resize` with a separable, antialiased filter, triangle or
   bicubic (support scales with the downscale factor, like PIL's BILINEAR and BICUBIC),
   sampling pixel centres;
3. centre-crop `crop` x `crop` (computed on the fly: only the crop is resampled);
4. (x - mean) / std per RGB channel, NCHW layout.
"""
import math

import numpy as np
from PIL import Image


def load_rgb(path, background=(255, 255, 255)):
    """Decoded image as float32 HxWx3 in 0..255, alpha composited onto `background`."""
    img = Image.open(path)
    img.load()
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        a = rgba[..., 3:4] / 255.0
        bg = np.asarray(background, dtype=np.float32)
        return rgba[..., :3] * a + bg * (1.0 - a)
    return np.asarray(img.convert("RGB"), dtype=np.float32)


def _triangle(x):
    return max(0.0, 1.0 - abs(x))


def _bicubic(x, a=-0.5):
    """Keys' cubic, PIL's BICUBIC."""
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return 0.0


FILTERS = {"triangle": (1.0, _triangle), "bicubic": (2.0, _bicubic)}


def _weights(in_size, out_size, offset, count, resample="triangle"):
    """Rows: output pixels offset..offset+count of a resize in_size -> out_size."""
    scale = in_size / out_size
    radius, kernel = FILTERS[resample]
    stretch = max(scale, 1.0)
    support = radius * stretch
    w = np.zeros((count, in_size), dtype=np.float64)
    for j in range(count):
        centre = (offset + j + 0.5) * scale
        lo = max(int(math.floor(centre - support)), 0)
        hi = min(int(math.ceil(centre + support)), in_size)
        for i in range(lo, hi):
            w[j, i] = kernel((i + 0.5 - centre) / stretch)
        s = w[j].sum()
        if s == 0.0:  # cannot happen for in_size >= 1, kept for safety
            w[j, min(int(centre), in_size - 1)] = 1.0
        else:
            w[j] /= s
    return w.astype(np.float32)


def resize_crop_geometry(h, w, resize, crop):
    s = resize / min(h, w)
    nh, nw = (resize, max(crop, int(math.floor(w * s + 0.5)))) if h <= w else (max(crop, int(math.floor(h * s + 0.5))), resize)
    return nh, nw, (nh - crop) // 2, (nw - crop) // 2


def preprocess(rgb, resize=256, crop=224, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),
               resample="triangle"):
    """HxWx3 float32 (0..255) -> 1x3xcropxcrop float32."""
    h, w, _ = rgb.shape
    nh, nw, top, left = resize_crop_geometry(h, w, resize, crop)
    wy = _weights(h, nh, top, crop, resample)
    wx = _weights(w, nw, left, crop, resample)
    out = np.einsum("yh,hwc,xw->cyx", wy, rgb.astype(np.float32), wx, optimize=True)
    mean = np.asarray(mean, np.float32)[:, None, None]
    std = np.asarray(std, np.float32)[:, None, None]
    return ((out - mean) / std)[None].astype(np.float32)
