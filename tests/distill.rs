//! Distillation end to end on a slice of the real Tux Paint parallel captions: distill →
//! export as a `[multilingual]` tower → the encoder routes per query → the exported tower
//! computes what the training forward pass computes. Plus the exports it must refuse.
//!
//! The student here is the default bundle's own sentence embedding (what CI has without the
//! multilingual wheel); the mechanics are the same for multilingual-e5-small
//! (models/convert/e5-build.sh builds that one).

mod common;
use common::*;
use moonlens::bundle::Bundle;
use moonlens::encoder::char_bag::CharBag;
use moonlens::encoder::{Encoder, Outputs};
use moonlens::host::train::{distill, embed, store, Config};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Lines of `data/pairs/<split>_parallel.jsonl` in the given languages, the first `n`.
fn slice(split: &str, langs: &[&str], n: usize, dir: &Path) -> PathBuf {
    let src = data_dir()
        .join("pairs")
        .join(format!("{split}_parallel.jsonl"));
    let body = std::fs::read_to_string(&src).unwrap();
    let out = dir.join(format!("{split}_parallel.jsonl"));
    let mut f = std::fs::File::create(&out).unwrap();
    let picked = body.lines().filter(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        langs.contains(&v["lang"].as_str().unwrap())
    });
    for line in picked.take(n) {
        writeln!(f, "{line}").unwrap();
    }
    out
}

/// A copy of `bundle` under another name: same files, another bundle id.
fn renamed_copy(bundle: &Bundle, dir: &Path) -> Bundle {
    std::fs::create_dir_all(dir).unwrap();
    for f in bundle.manifest.sha256.keys() {
        std::fs::copy(bundle.path(f), dir.join(f)).unwrap();
    }
    let toml = std::fs::read_to_string(bundle.path("bundle.toml")).unwrap();
    let toml = toml.replacen(
        &format!("name = {:?}", bundle.manifest.name),
        "name = \"another\"",
        1,
    );
    std::fs::write(dir.join("bundle.toml"), toml).unwrap();
    Bundle::open(dir).unwrap()
}

#[test]
fn distill_export_route() {
    distill_export_route_with(CharBag::default());
}

/// The same with the character bag as a second input: the exported graph takes it as
/// `char_bag`, the encoder computes it per query, and the result is still the training
/// forward pass (on the sentence embedding followed by the bag).
#[test]
fn distill_export_route_with_a_character_bag() {
    distill_export_route_with(CharBag {
        buckets: 512,
        trigram_buckets: 0,
    });
}

/// The same with the bag also holding other words' character trigrams in slots of their
/// own ("Un lapin." below).
#[test]
fn distill_export_route_with_a_bag_of_trigrams() {
    distill_export_route_with(CharBag {
        buckets: 512,
        trigram_buckets: 256,
    });
}

fn distill_export_route_with(bag: CharBag) {
    let d = tempdir(&format!(
        "distill-e2e-{}-{}",
        bag.buckets, bag.trigram_buckets
    ));
    let langs = ["fr", "de", "es", "zh_CN"];
    let tr = slice("train", &langs, 240, &d);
    let va = slice("val", &langs, 60, &d);
    let teacher = default_bundle();
    let cfg = Config {
        max_epochs: 8,
        batch: 32,
        ..Config::default()
    };
    let heads_dir = d.join("heads");
    let t = distill::run(
        &teacher,
        distill::Student {
            bundle: &teacher,
            char_bag: bag,
        },
        &[tr],
        &[va],
        &heads_dir,
        Some(&d.join("cache")),
        &cfg,
    )
    .unwrap();
    assert!(heads_dir.join("curve.png").exists());
    let best = &t.history[t.best_epoch - 1];
    // an untrained head points anywhere (cosine distance ~1); the English rows are an exact
    // function of the student's input here, the translations are not
    assert!(best.val_loss < 0.5, "{best:?}");
    let n_sources = 60 / langs.len(); // at most; chance R@10 is below 10 / n_sources
    assert!(best.val_r10 > 0.5, "{best:?} with <= {n_sources} sources");

    let heads = store::load(&heads_dir).unwrap();
    assert!(heads.image.is_none() && heads.info.teacher.is_some());
    assert_eq!(heads.info.char_bag(), bag);
    assert_eq!(heads.text.input(), 384 + bag.width());
    let err = moonlens::host::export::export(&heads, &teacher, &d.join("x"), true, 0.0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--teacher"), "{err}");
    let other = renamed_copy(&teacher, &d.join("other"));
    let err =
        moonlens::host::export::export_multilingual(&heads, &teacher, &other, &d.join("x"), true)
            .err()
            .unwrap()
            .to_string();
    assert!(err.contains("distill again"), "{err}");

    if bag.width() > 0 {
        // heads.json whose bag is as wide as the whole input: refused, nothing written
        let mut damaged = store::load(&heads_dir).unwrap();
        damaged.info.char_buckets = damaged.info.text_input;
        let out = d.join("damaged-out");
        let err =
            moonlens::host::export::export_multilingual(&damaged, &teacher, &teacher, &out, true)
                .err()
                .unwrap()
                .to_string();
        assert!(err.contains("damaged") && !out.exists(), "{err}");
        // a heads.json field this build does not know (stop 9's trigrams in the CJK slots)
        // is refused, not ignored: the weights would be read with the wrong bag
        let stale = d.join("stale-heads");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::copy(heads_dir.join("heads.bin"), stale.join("heads.bin")).unwrap();
        let json = std::fs::read_to_string(heads_dir.join("heads.json")).unwrap();
        let json = json.replacen('{', "{\"char_trigrams\": true, ", 1);
        std::fs::write(stale.join("heads.json"), json).unwrap();
        let err = store::load(&stale).err().unwrap().to_string();
        assert!(
            err.contains("char_trigrams") && err.contains("again"),
            "{err}"
        );
    }
    let student = Encoder::load_outputs(&teacher, Outputs::Base).unwrap();
    let teacher_enc = Encoder::load(&teacher).unwrap();
    for (int8, min_cos) in [(false, 0.9999), (true, 0.999)] {
        let out = d.join(if int8 { "bundle-int8" } else { "bundle-f32" });
        let b = moonlens::host::export::export_multilingual(&heads, &teacher, &teacher, &out, int8)
            .unwrap();
        let tower = b
            .manifest
            .multilingual
            .as_ref()
            .expect("a [multilingual] tower");
        assert_eq!(
            tower.char_bag.as_ref().map(|c| c.shape()),
            (bag.width() > 0).then_some(bag)
        );
        // the manifest says it in words a reader (and an older build) sees
        let written = std::fs::read_to_string(b.path("bundle.toml")).unwrap();
        assert_eq!(written.contains("[multilingual.char_bag]"), bag.width() > 0);
        let enc = Encoder::load(&b).unwrap();
        let multi = enc.multilingual().expect("a multilingual tower");
        // routing: Chinese and accented Latin go to the distilled tower, English stays
        for q in ["兔子", "月饼 and tea", "un lapin à côté de la lune", "🐰"] {
            assert!(std::ptr::eq(enc.text_tower(q), multi), "{q:?}");
        }
        for q in ["a rabbit", "A “Granny Smith” apple — 2 €"] {
            assert!(std::ptr::eq(enc.text_tower(q), enc.primary_text()), "{q:?}");
            // English queries get exactly the teacher's embedding
            assert_eq!(
                enc.embed_text(q).unwrap(),
                teacher_enc.embed_text(q).unwrap()
            );
        }
        // the exported tower = the training forward pass on the student's embedding
        for q in ["兔子", "Un lapin.", "月亮和灯笼"] {
            let mut input = student.embed_text(q).unwrap();
            input.extend(bag.bag(q));
            let want = embed(&heads.text, &[input]).remove(0);
            let got = multi.embed(q).unwrap();
            assert_eq!(got.len(), teacher.manifest.dim);
            let c = cosine(&got, &want);
            assert!(c >= min_cos, "{q:?}: cos {c} (int8 {int8})");
        }
    }
}

#[test]
fn a_multilingual_tower_without_a_hash_is_refused() {
    let d = tempdir("distill-manifest");
    let b = renamed_copy(&default_bundle(), &d);
    let mut m = b.manifest.clone();
    m.multilingual = Some(moonlens::bundle::TextTower {
        file: "multilingual.onnx".into(),
        ..m.text.clone()
    });
    m.sha256.remove("multilingual.onnx");
    std::fs::write(b.path("bundle.toml"), toml::to_string(&m).unwrap()).unwrap();
    let err = Bundle::open(&d).err().unwrap().to_string();
    assert!(err.contains("no entry for multilingual.onnx"), "{err}");
}

/// The sentence cache is per tower and per text: a longer list computes only its new texts,
/// and what comes back is what the tower says, in the order asked.
#[test]
fn the_sentence_cache_grows_by_the_new_texts_only() {
    use moonlens::host::sentences::embed_cached;
    let d = tempdir("sentence-cache");
    let b = default_bundle();
    let enc = Encoder::load(&b).unwrap();
    let tower = enc.primary_text();
    let texts: Vec<String> = ["a rabbit", "the full moon", "a rabbit"]
        .map(String::from)
        .to_vec();
    let first = embed_cached(tower, "t", &texts, &d, "test").unwrap();
    for (t, row) in texts.iter().zip(&first) {
        assert_eq!(row, &tower.embed(t).unwrap(), "{t}");
    }
    let files = || -> Vec<PathBuf> {
        std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let [file] = files().try_into().unwrap();
    let size = std::fs::metadata(&file).unwrap().len();
    // two distinct texts: header 48 + 2 x (16 + 4 x dim)
    assert_eq!(size, 48 + 2 * (16 + 4 * first[0].len() as u64));
    let more: Vec<String> = ["a lantern", "the full moon", "a rabbit"]
        .map(String::from)
        .to_vec();
    let second = embed_cached(tower, "t", &more, &d, "test").unwrap();
    assert_eq!(second[1], first[1]);
    assert_eq!(second[2], first[0]);
    assert_eq!(second[0], tower.embed("a lantern").unwrap());
    let [same] = files().try_into().unwrap();
    assert_eq!(same, file);
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        48 + 3 * (16 + 4 * first[0].len() as u64)
    );
    // another tag: another file, nothing shared
    embed_cached(tower, "u", &texts[..1], &d, "test").unwrap();
    assert_eq!(files().len(), 2);
}
