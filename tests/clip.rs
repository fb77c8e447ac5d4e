//! A bundle converted from OpenCLIP (`models/convert/from-openclip.sh moonlens-tiny`: a 2-layer
//! ViT with CLIP's full tokenizer, random weights, int8) against the converter's reference
//! outputs, then used as the daemon, `eval` and `train` use any bundle.

mod common;
use common::*;
use moonlens::bundle::Bundle;
use moonlens::encoder::Encoder;
use serde_json::{json, Value};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    root().join("tests/fixtures/clip-tiny")
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap()
}

fn encoder() -> Encoder {
    Encoder::load(&Bundle::open(fixture()).unwrap()).unwrap()
}

/// The bundle's tokenizer.json gives open_clip's own ids (its SimpleTokenizer, ftfy and all)
/// on English, Chinese, Japanese, Korean, emoji, full-width forms, curly quotes, and inputs
/// longer than the 77-token context (truncated with the end token kept); tract on the
/// exported towers gives onnxruntime's outputs on the same files (tract runs the graph
/// right), moonlens's bicubic preprocessing is the converter's tensor, and the int8 towers
/// stay close to torch's f32 model.
#[test]
fn tract_reproduces_the_converter() {
    let enc = encoder();
    let r = moonlens::host::parity::check(&enc, &root()).unwrap();
    eprintln!("{r:?}");
    assert!(r.tokens_checked >= 15, "{r:?}");
    assert!(r.ok(), "{r:?}");
    assert!(
        r.image_vs_torch >= 0.999 && r.text_vs_torch >= 0.999,
        "{r:?}"
    );
    // the parity set exercises truncation at the context length
    let long = reference()["token_ids"]
        .as_object()
        .unwrap()
        .values()
        .filter(|ids| ids.as_array().unwrap().len() == 77)
        .count();
    assert!(long >= 2, "{long}");
}

/// The checks can fail: a tokenizer that differs from open_clip's in one rule (no
/// lower-casing) is caught.
#[test]
fn a_wrong_tokenizer_is_caught() {
    let d = tempdir("clip-wrong-tokenizer");
    for f in ["bundle.toml", "image.onnx", "text.onnx", "reference.json"] {
        std::fs::copy(fixture().join(f), d.join(f)).unwrap();
    }
    let mut tok: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("tokenizer.json")).unwrap()).unwrap();
    let rules = tok["normalizer"]["normalizers"].as_array_mut().unwrap();
    rules.retain(|n| n["type"] != "Lowercase");
    let bytes = serde_json::to_vec(&tok).unwrap();
    std::fs::write(d.join("tokenizer.json"), &bytes).unwrap();
    rehash(&d, "tokenizer.json");
    let enc = Encoder::load(&Bundle::open(&d).unwrap()).unwrap();
    let r = moonlens::host::parity::check(&enc, &root()).unwrap();
    assert!(!r.ok() && !r.token_mismatches.is_empty(), "{r:?}");
    assert!(
        r.token_mismatches.iter().any(|t| t.contains("TWO")),
        "{r:?}"
    );
}

/// Point `bundle.toml`'s hash of `file` at its current bytes.
fn rehash(dir: &std::path::Path, file: &str) {
    use sha2::{Digest, Sha256};
    let hex = |h: &[u8]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let old = hex(&Sha256::digest(
        std::fs::read(fixture().join(file)).unwrap(),
    ));
    let new = hex(&Sha256::digest(std::fs::read(dir.join(file)).unwrap()));
    let toml = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    std::fs::write(dir.join("bundle.toml"), toml.replace(&old, &new)).unwrap();
}

/// The daemon loads the converted bundle unchanged: search, similar, watches and status.
#[test]
fn the_daemon_serves_a_converted_bundle() {
    let d = start("clip-daemon", &["--bundle", fixture().to_str().unwrap()]);
    let st = ask_json(&d.socket, &json!({"id": 1, "cmd": "status"})).unwrap();
    assert_eq!(st["model"], "moonlens-tiny-int8", "{st}");
    let v = ask_json(
        &d.socket,
        &json!({"id": 2, "cmd": "search", "text": "a rabbit next to the full moon", "k": 5}),
    )
    .unwrap();
    assert_eq!(hit_labels(&v).len(), 5, "{v}");
    let v = ask_json(
        &d.socket,
        &json!({"id": 3, "cmd": "search", "text": "满月旁边的兔子", "k": 3}),
    )
    .unwrap();
    assert_eq!(hit_labels(&v).len(), 3, "{v}");
    // similar answers from the stored embeddings, the frame itself left out
    let id = v["hits"][0]["id"].as_u64().unwrap();
    let s = ask_json(
        &d.socket,
        &json!({"id": 4, "cmd": "similar", "frame": id, "k": 2}),
    )
    .unwrap();
    let ids: Vec<u64> = s["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_u64().unwrap())
        .collect();
    assert!(ids.len() == 2 && !ids.contains(&id), "{s}");
    let w = ask_json(
        &d.socket,
        &json!({"id": 5, "cmd": "watch_add", "text": "a lantern"}),
    )
    .unwrap();
    assert_eq!(w["ok"], true, "{w}");
}

/// `eval` and `train` work on a converted bundle: heads on its image and text embeddings,
/// exported as a bundle the encoder loads, with the fixed-length text input carried over.
#[test]
fn heads_train_on_a_converted_bundle() {
    use moonlens::host::train::{command, store, Config};
    let bundle = Bundle::open(fixture()).unwrap();
    let enc = Encoder::load(&bundle).unwrap();
    let test = data_dir().join("pairs/test.jsonl");
    let r = moonlens::host::eval::eval(&enc, &test).unwrap().overall;
    assert!(r.r10 >= r.r1 && r.r10 <= 1.0, "{r:?}");

    let d = tempdir("clip-train");
    let (tr, va) = (pairs_slice("train", 64, &d), pairs_slice("val", 16, &d));
    let cfg = Config {
        dim: 32,
        max_epochs: 2,
        batch: 16,
        ..Config::default()
    };
    let t = command::run(&bundle, &[tr], &[va], &d.join("heads"), None, &cfg).unwrap();
    assert!(t.history[0].train_loss.is_finite(), "{:?}", t.history);
    let heads = store::load(&d.join("heads")).unwrap();
    let out = d.join("bundle");
    moonlens::host::export::export(&heads, &bundle, &out, true, 0.0).unwrap();
    let trained = Bundle::open(&out).unwrap();
    assert_eq!(trained.manifest.text.pad_to, Some(77));
    let enc = Encoder::load(&trained).unwrap();
    assert_eq!(enc.dim(), 32);
    let e = enc.embed_text("a rabbit").unwrap();
    assert!((e.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-3);
}

/// A converted graph with an operator tract does not implement fails at load with an error
/// that names the operator and the file.
#[test]
fn an_unsupported_operator_is_named() {
    let d = tempdir("clip-unsupported");
    for f in [
        "bundle.toml",
        "text.onnx",
        "tokenizer.json",
        "reference.json",
    ] {
        std::fs::copy(fixture().join(f), d.join(f)).unwrap();
    }
    // DeformConv (opset 19, not in tract 0.23) stands for any op a future model may bring
    let onnx = std::fs::read(root().join("tests/fixtures/unsupported-op.onnx")).unwrap();
    std::fs::write(d.join("image.onnx"), &onnx).unwrap();
    // the stand-in graph has one output: the bundle must not promise the backbone features
    let toml = std::fs::read_to_string(d.join("bundle.toml")).unwrap();
    let toml: String = toml
        .lines()
        .filter(|l| !l.starts_with("features ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(d.join("bundle.toml"), toml).unwrap();
    rehash(&d, "image.onnx");
    let e = Encoder::load(&Bundle::open(&d).unwrap())
        .err()
        .unwrap()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains("DeformConv") && e.contains("not implemented") && e.contains("image.onnx"),
        "{e}"
    );
}
