#!/usr/bin/env python3
"""Encoder speed: tract (through `moonlens-host bench encode`) against onnxruntime on the very
same ONNX files, measured in the same run, printed as ratios.

Usage (from the repository root, with the venv models/convert/build.sh makes):
    .venv/bin/python benches/encode_vs_onnxruntime.py [--int8 models/default]
        [--f32 models/build/heads-raw-en-zh-mix-f32] [--runs 20]
Any bundle pair works, e.g. a converted CLIP model (models/convert/from-openclip.sh):
    --int8 models/build/clip/MobileCLIP2-S0-int8 --f32 models/build/clip/MobileCLIP2-S0-f32

The f32 twin of the default is written by models/convert/train-default.sh. Inputs are the
ones `bench encode` uses: a 640x480 synthetic frame through the bundle's preprocessing and the
query "a rabbit next to the full moon". Medians of `--runs` runs after 3 warm-up runs, one
thread and all cores. Last stdout line: a JSON object with every figure and ratio.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import tomllib

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models", "convert"))
import imgprep  # noqa: E402

QUERY = "a rabbit next to the full moon"


def tract(host, bundle, runs):
    out = subprocess.run([host, "bench", "encode", "--bundle", bundle, "--runs", str(runs), "--json"],
                         check=True, capture_output=True, text=True).stdout
    j = json.loads(out.strip().splitlines()[-1])
    return {"image": j["image"]["median_ms"], "text": j["text"]["median_ms"],
            "image_all": j["all_cores"]["image"]["median_ms"], "text_all": j["all_cores"]["text"]["median_ms"],
            "load": j["image"]["load_ms"], "rss_mb": j.get("memory", {}).get("rss_mb")}


def median_ms(f, runs):
    for _ in range(3):
        f()
    v = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        v.append((time.perf_counter() - t) * 1e3)
    return statistics.median(v)


def onnxruntime(bundle, runs):
    """The bundle's towers as bundle.toml describes them (preprocessing, prefix, padding)."""
    m = tomllib.load(open(os.path.join(bundle, "bundle.toml"), "rb"))
    im, tx = m["image"], m["text"]
    x, y = np.meshgrid(np.arange(640), np.arange(480))
    frame = np.stack([x % 256, y % 256, (x * y) % 256], -1).astype(np.float32)
    pixels = imgprep.preprocess(frame, im["resize"], im["crop"], im["mean"], im["std"],
                                im.get("resample", "triangle"))
    tok = Tokenizer.from_file(os.path.join(bundle, tx["tokenizer"]))
    ids = tok.encode(tx.get("prefix", "") + QUERY).ids
    n = len(ids)
    ids += [tx.get("pad_id", 0)] * (tx.get("pad_to", n) - n)
    ids = np.array([ids], np.int64)
    feeds_t = {tx["input_ids"]: ids}
    if "attention_mask" in tx:
        feeds_t[tx["attention_mask"]] = (np.arange(ids.shape[1]) < n).astype(np.int64)[None]
    res = {}
    for threads, suffix in ((1, ""), (os.cpu_count() or 1, "_all")):
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        t0 = time.perf_counter()
        si = ort.InferenceSession(os.path.join(bundle, "image.onnx"), o, providers=["CPUExecutionProvider"])
        st = ort.InferenceSession(os.path.join(bundle, "text.onnx"), o, providers=["CPUExecutionProvider"])
        if threads == 1:
            res["load"] = (time.perf_counter() - t0) * 1e3
        res["image" + suffix] = median_ms(lambda: si.run([im["output"]], {im["input"]: pixels}), runs)
        res["text" + suffix] = median_ms(lambda: st.run([tx["output"]], feeds_t), runs)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--int8", default=os.path.join(ROOT, "models", "default"))
    ap.add_argument("--f32", default=os.path.join(ROOT, "models", "build", "heads-raw-en-zh-mix-f32"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--host", default=os.path.join(ROOT, "target", "release", "moonlens-host"))
    a = ap.parse_args()
    for b in (a.int8, a.f32):
        if not os.path.exists(os.path.join(b, "bundle.toml")):
            sys.exit(f"{b}: no bundle there (models/convert/train-default.sh writes the f32 twin)")
    if not os.path.exists(a.host):
        sys.exit(f"{a.host}: build it first: cargo build --release --bin moonlens-host")
    fig = {"tract_int8": tract(a.host, a.int8, a.runs), "tract_f32": tract(a.host, a.f32, a.runs),
           "ort_int8": onnxruntime(a.int8, a.runs), "ort_f32": onnxruntime(a.f32, a.runs)}
    print(f"{'ms (median)':24} {'image 1t':>9} {'text 1t':>8} {'image all':>10} {'text all':>9} {'load':>7} {'RSS MB':>7}")
    for k, v in fig.items():
        print(f"{k:24} {v['image']:9.2f} {v['text']:8.2f} {v['image_all']:10.2f} {v['text_all']:9.2f} {v['load']:7.0f} {v.get('rss_mb') or float('nan'):7.0f}")
    ratios = {}
    for tower in ("image", "text", "image_all", "text_all"):
        ratios[tower] = {
            "tract_int8/tract_f32": fig["tract_int8"][tower] / fig["tract_f32"][tower],
            "tract_int8/ort_int8": fig["tract_int8"][tower] / fig["ort_int8"][tower],
            "ort_int8/ort_f32": fig["ort_int8"][tower] / fig["ort_f32"][tower],
        }
    for tower, r in ratios.items():
        print(f"{tower:10} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
    print(json.dumps({"figures_ms": fig, "ratios": ratios}))


if __name__ == "__main__":
    main()
