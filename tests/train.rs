//! Training end to end on a slice of the real Tux Paint data: train → export (f32, int8,
//! mixed) → the exported towers against the training forward pass → the daemon loads the
//! bundle and finds the right frame. Plus the bad inputs `train` must refuse.

mod common;
use common::*;
use moonlens::bundle::Bundle;
use moonlens::encoder::Encoder;
use moonlens::host::features;
use moonlens::host::train::{self, command, store, Config};
use std::io::Write;
use std::path::Path;

fn small_config() -> Config {
    Config {
        dim: 64,
        max_epochs: 6,
        batch: 32,
        ..Config::default()
    }
}

#[test]
fn train_export_load_search() {
    let d = tempdir("train-e2e");
    let (tr, va) = (pairs_slice("train", 80, &d), pairs_slice("val", 24, &d));
    let bundle = default_bundle();
    let cfg = small_config();
    let heads_dir = d.join("heads");
    let cache = d.join("cache");
    let (tr, va) = (vec![tr], vec![va]);
    let t = command::run(&bundle, &tr, &va, &heads_dir, Some(&cache), &cfg).unwrap();
    assert!(!t.history.is_empty() && t.best_epoch >= 1);
    assert!(heads_dir.join("curve.png").exists());
    let first = &t.history[0];
    assert!(
        first.train_loss.is_finite() && first.val_loss.is_finite(),
        "{first:?}"
    );

    // the cache is reused on a second run with unchanged inputs, and training is deterministic
    let again = command::run(&bundle, &tr, &va, &d.join("heads2"), Some(&cache), &cfg).unwrap();
    assert_eq!(
        std::fs::read(heads_dir.join("heads.bin")).unwrap(),
        std::fs::read(d.join("heads2/heads.bin")).unwrap(),
        "same seed, same inputs: same heads"
    );
    assert_eq!(again.history.len(), t.history.len());
    let vf = features::load_or_compute(
        &bundle,
        &moonlens::host::pairs::read(&va[0]).unwrap(),
        &cache,
    )
    .unwrap();
    assert!(vf.reused, "the second run must map the cached features");

    // export f32 and int8 heads (no mix) and the mixed int8 bundle
    let heads = store::load(&heads_dir).unwrap();
    let f32_dir = d.join("bundle-f32");
    let int8_dir = d.join("bundle-int8");
    let mix_dir = d.join("bundle-mix");
    moonlens::host::export::export(&heads, &bundle, &f32_dir, false, 0.0).unwrap();
    moonlens::host::export::export(&heads, &bundle, &int8_dir, true, 0.0).unwrap();
    moonlens::host::export::export(&heads, &bundle, &mix_dir, true, 0.8).unwrap();
    // the base's multilingual tower points into the base's space: not carried over
    assert!(Bundle::open(&f32_dir)
        .unwrap()
        .manifest
        .multilingual
        .is_none());
    let f32_enc = Encoder::load(&Bundle::open(&f32_dir).unwrap()).unwrap();
    let int8_enc = Encoder::load(&Bundle::open(&int8_dir).unwrap()).unwrap();
    assert_eq!(f32_enc.dim(), 64);

    // exported f32 towers = the training forward pass on the cached features
    let want_img = train::embed(
        heads.image.as_ref().unwrap(),
        &(0..vf.images).map(|i| vf.raw(i, 0)).collect::<Vec<_>>(),
    );
    let want_txt = train::embed(
        &heads.text,
        &(0..vf.texts).map(|i| vf.text(i)).collect::<Vec<_>>(),
    );
    let imgs: Vec<_> = vf
        .image_paths
        .iter()
        .map(|p| image::open(p).unwrap())
        .collect();
    let (mut worst_f32, mut worst_int8) = (1f32, 1f32);
    for (img, want) in imgs.iter().zip(&want_img) {
        let a = f32_enc.embed_image(img).unwrap();
        let b = int8_enc.embed_image(img).unwrap();
        worst_f32 = worst_f32.min(cosine(&a, want));
        worst_int8 = worst_int8.min(cosine(&a, &b));
    }
    for (text, want) in vf.captions.iter().zip(&want_txt) {
        let a = f32_enc.embed_text(text).unwrap();
        let b = int8_enc.embed_text(text).unwrap();
        worst_f32 = worst_f32.min(cosine(&a, want));
        worst_int8 = worst_int8.min(cosine(&a, &b));
    }
    eprintln!("exported f32 vs training forward: worst cosine {worst_f32:.6}; int8 vs f32: {worst_int8:.6}");
    assert!(worst_f32 >= 0.999, "{worst_f32}");
    assert!(worst_int8 >= 0.995, "{worst_int8}");

    // int8 recall within one point of f32 on the whole test split
    let test = data_dir().join("pairs/test.jsonl");
    let rf = moonlens::host::eval::eval(&f32_enc, &test).unwrap().overall;
    let ri = moonlens::host::eval::eval(&int8_enc, &test)
        .unwrap()
        .overall;
    eprintln!("test recall f32 {rf:?}\n            int8 {ri:?}");
    for (a, b) in [(rf.r1, ri.r1), (rf.r5, ri.r5), (rf.r10, ri.r10)] {
        assert!((a - b).abs() <= 0.01, "f32 {rf:?} int8 {ri:?}");
    }

    // the daemon loads the mixed bundle unchanged and finds the rabbit among its first hits
    // (heads from 80 pairs and 6 epochs are a smoke test of the path, not of quality: with
    // the default's query wording the squirrel and the rabbit come within 0.03)
    let daemon = start("train-e2e-daemon", &["--bundle", mix_dir.to_str().unwrap()]);
    let answer = ask_json(
        &daemon.socket,
        &serde_json::json!({"id": 2, "cmd": "search", "text": "a rabbit", "k": 3}),
    )
    .unwrap();
    let labels = hit_labels(&answer);
    assert!(labels.contains(&"rabbit.png"), "{answer}");
}

/// The command line as a user types it: options reach the trainer (`--dim`, `--epochs`,
/// several comma-separated pairs files), the run prints its JSON line, and a typo or a mix of
/// the two forms of `train` exits 2 naming the option before any work is done.
#[test]
fn train_runs_from_the_command_line() {
    let d = tempdir("train-cli");
    let (tr, va) = (pairs_slice("train", 40, &d), pairs_slice("val", 12, &d));
    std::fs::copy(&tr, d.join("more.jsonl")).unwrap();
    let host = || std::process::Command::new(env!("CARGO_BIN_EXE_moonlens-host"));
    let out = d.join("heads");
    let pairs = format!("{},{}", tr.display(), d.join("more.jsonl").display());
    let run = host()
        .arg("train")
        .args(["--pairs", &pairs, "--val"])
        .arg(&va)
        .arg("--out")
        .arg(&out)
        .args(["--dim", "32", "--epochs", "2", "--batch", "16", "--bundle"])
        .arg(root().join("models/default"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let last: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&run.stdout).lines().last().unwrap()).unwrap();
    assert!(last["epochs"].as_u64().unwrap() <= 2, "{last}");
    let heads = store::load(&out).unwrap();
    assert_eq!(
        (heads.info.config.dim, heads.info.config.max_epochs),
        (32, 2)
    );
    assert_eq!(heads.info.train_pairs, 80, "both files of --pairs are read");
    for (args, named) in [
        (
            &[
                "train", "--pairs", "a", "--val", "b", "--out", "c", "--epoch", "2",
            ][..],
            "--epochs",
        ),
        (
            &[
                "train",
                "--pairs",
                "a",
                "--val",
                "b",
                "--out",
                "c",
                "--from-index",
                "i",
                "--dim",
                "8",
            ],
            "--dim",
        ),
    ] {
        let r = host().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{err}");
        assert!(err.contains(named), "{err}");
    }
    let help = host().args(["train", "--help"]).output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("[default: 3]"));
}

fn train_err(tr: &Path, va: &Path, cfg: &Config, out: &Path) -> String {
    let (tr, va) = ([tr.to_path_buf()], [va.to_path_buf()]);
    let r = command::run(
        &default_bundle(),
        &tr,
        &va,
        out,
        Some(&out.join("cache")),
        cfg,
    );
    assert!(
        !out.join("heads.bin").exists(),
        "a failed run must not write heads"
    );
    match r {
        Ok(_) => panic!("training should have failed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_training_input_is_refused_with_a_message() {
    let d = tempdir("train-bad");
    let (tr, va) = (pairs_slice("train", 20, &d), pairs_slice("val", 8, &d));
    let cfg = small_config();
    // overlap between validation and training
    let e = train_err(&tr, &tr, &cfg, &d.join("o1"));
    assert!(e.contains("overlap"), "{e}");
    // empty and malformed pairs files
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    let e = train_err(&d.join("empty.jsonl"), &va, &cfg, &d.join("o2"));
    assert!(e.contains("no pairs"), "{e}");
    std::fs::write(d.join("bad.jsonl"), "{\"image\": 1}\n").unwrap();
    let e = train_err(&d.join("bad.jsonl"), &va, &cfg, &d.join("o3"));
    assert!(e.contains("bad.jsonl:1"), "{e}");
    // a missing image
    std::fs::write(
        d.join("missing.jsonl"),
        "{\"image\": \"/nonexistent/x.png\", \"text\": \"a cat\"}\n{\"image\": \"/nonexistent/y.png\", \"text\": \"a dog\"}\n",
    )
    .unwrap();
    let e = train_err(&d.join("missing.jsonl"), &va, &cfg, &d.join("o4"));
    assert!(e.contains("does not exist"), "{e}");
    // a diverging run stops with a message and writes nothing
    let wild = Config {
        lr: 1e9,
        ..small_config()
    };
    let e = train_err(&tr, &va, &wild, &d.join("o5"));
    assert!(e.contains("diverged"), "{e}");
}

#[test]
fn contact_sheet_shows_the_best_hits_first() {
    let d = tempdir("sheet");
    let pairs = d.join("samples.jsonl");
    let mut f = std::fs::File::create(&pairs).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(root().join("models/samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    names.sort();
    for p in &names {
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        writeln!(f, "{}", serde_json::json!({"image": p, "text": stem})).unwrap();
    }
    drop(f);
    let out = d.join("sheet.png");
    let hits = moonlens::host::sheet::sheet(encoder(), &pairs, "a rabbit", 6, &out).unwrap();
    assert_eq!(hits.len(), 6);
    assert!(hits[0].0.ends_with("rabbit.png"), "{hits:?}");
    assert!(
        hits.windows(2).all(|w| w[0].1 >= w[1].1),
        "scores descend: {hits:?}"
    );
    let img = image::open(&out).unwrap();
    // 4 tiles a row, 2 rows for 6 hits
    assert_eq!((img.width(), img.height()), (4 * 200 + 20, 2 * 236 + 60));
}

/// With regions the sheet ranks as the daemon does and outlines each hit's best region.
#[test]
fn contact_sheet_with_regions_outlines_the_best_region() {
    let d = tempdir("sheet-regions");
    let pairs = d.join("samples.jsonl");
    let mut f = std::fs::File::create(&pairs).unwrap();
    for name in ["rabbit", "pizza", "banana", "duck", "bee"] {
        let p = root().join(format!("models/samples/{name}.png"));
        writeln!(f, "{}", serde_json::json!({"image": p, "text": name})).unwrap();
    }
    drop(f);
    let enc = moonlens::encoder::Encoder::load_with_regions(&default_bundle()).unwrap();
    let out = d.join("sheet.png");
    let hits =
        moonlens::host::sheet::sheet_with_regions(&enc, &pairs, "a banana", 3, &out, 0.1).unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits[0].0.ends_with("banana.png"), "{hits:?}");
    assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1), "{hits:?}");
    let img = image::open(&out).unwrap().to_rgb8();
    let orange = img.pixels().filter(|p| p.0 == [230, 120, 20]).count();
    assert!(orange > 100, "outlines drawn: {orange} orange pixels");
    // without regions: no outline
    let plain = d.join("plain.png");
    moonlens::host::sheet::sheet(encoder(), &pairs, "a banana", 3, &plain).unwrap();
    let img = image::open(&plain).unwrap().to_rgb8();
    assert_eq!(img.pixels().filter(|p| p.0 == [230, 120, 20]).count(), 0);
}
