//! Learning on site (issue 16), end to end: a daemon stores frames of things no model knows
//! by the site's names, the operator tags a few of each over the protocol, `train
//! --from-index` trains a new image head, `reload` re-projects the ring into it; the
//! untagged frames of those things are found by their names, and every frame is still found
//! by the queries that found it before.

mod common;
use common::*;
use image::{DynamicImage, GenericImageView, Rgba, RgbaImage};
use moonlens::daemon::{ingest, Shared};
use moonlens::encoder::Encoder;
use moonlens::host::train::linalg::Rng;
use moonlens::host::train::{site, Config};
use moonlens::index::{Expect, Index};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The site's things: a sample image each, and the name only this site uses for it.
const THINGS: [(&str, &str); 4] = [
    ("hedgehog.png", "zorblax"),
    ("pear.png", "quimble"),
    ("giraffe.png", "the frumious"),
    ("pizza.png", "our bandersnatch"),
];
/// Frames of each thing the camera stores (different crops, sides, light, backgrounds),
/// and how many of them the operator tags.
const VIEWS: usize = 9;
const TAGGED: usize = 3;

/// A camera's view of `img`: a crop of 65-100% at a random place, maybe mirrored, lighter
/// or darker, on a plain background of a random colour, 320x240.
fn camera_view(img: &DynamicImage, rng: &mut Rng) -> DynamicImage {
    let (w, h) = img.dimensions();
    let s = 0.65 + 0.35 * rng.uniform();
    let (cw, ch) = ((w as f64 * s) as u32, (h as f64 * s) as u32);
    let (x, y) = (
        (rng.uniform() * (w - cw) as f64) as u32,
        (rng.uniform() * (h - ch) as f64) as u32,
    );
    let mut part = img.crop_imm(x, y, cw.max(1), ch.max(1));
    if rng.below(2) == 1 {
        part = part.fliph();
    }
    let part = part.brighten((rng.uniform() * 60.0 - 30.0) as i32);
    let part = part
        .resize(200, 200, image::imageops::FilterType::Triangle)
        .to_rgba8();
    let bg = Rgba([
        150 + rng.below(100) as u8,
        150 + rng.below(100) as u8,
        150 + rng.below(100) as u8,
        255,
    ]);
    let mut frame = RgbaImage::from_pixel(320, 240, bg);
    let (ox, oy) = (
        rng.below(320 - part.width() as usize + 1),
        rng.below(240 - part.height() as usize + 1),
    );
    image::imageops::overlay(&mut frame, &part, ox as i64, oy as i64);
    DynamicImage::ImageRgba8(frame)
}

/// The frames folder: VIEWS views of each thing, two of every other sample; file names
/// sort in the order the replay stores them, so frame ids follow from names.
fn frames(dir: &Path) -> Vec<String> {
    let samples = root().join("models/samples");
    let mut rng = Rng::new(7);
    let mut names = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    for f in files {
        let file = f.file_name().unwrap().to_str().unwrap().to_string();
        let img = image::open(&f).unwrap();
        let n = if THINGS.iter().any(|(t, _)| *t == file) {
            VIEWS
        } else {
            2
        };
        for v in 0..n {
            let name = format!("{}-{v}.png", file.trim_end_matches(".png"));
            camera_view(&img, &mut rng).save(dir.join(&name)).unwrap();
            names.push(name);
        }
    }
    names.sort();
    names
}

fn ask(s: &Arc<Shared>, line: &str) -> String {
    s.answer(line.as_bytes()).0
}

/// Labels of the top `k` hits of `query`.
fn top(s: &Arc<Shared>, query: &str, k: usize) -> Vec<String> {
    ask(s, &format!("search {query} k={k}"))
        .lines()
        .filter_map(|l| l.strip_prefix("+HIT "))
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .collect()
}

/// Of the untagged views of each thing, the share found in the top 10 of its name.
fn untagged_recall(s: &Arc<Shared>) -> f64 {
    let mut found = 0;
    for (file, name) in THINGS {
        let stem = file.trim_end_matches(".png");
        let hits = top(s, name, 10);
        found += (TAGGED..VIEWS)
            .filter(|v| hits.contains(&format!("{stem}-{v}.png")))
            .count();
    }
    found as f64 / (THINGS.len() * (VIEWS - TAGGED)) as f64
}

#[test]
fn the_appliance_learns_the_sites_names_and_keeps_the_rest() {
    let work = tempdir("learn");
    let frames_dir = work.join("frames");
    std::fs::create_dir_all(&frames_dir).unwrap();
    let names = frames(&frames_dir);
    let bundle = default_bundle();
    let index_dir = work.join("index");
    let enc = Encoder::load(&bundle).unwrap();
    let expect = Expect {
        dim: enc.dim(),
        bundle_id: bundle.id,
        layout: *enc.layout(),
        regions: moonlens::index::RegionLayout::NONE,
    };
    let idx = Index::open_or_create_with(&index_dir, 500, &expect).unwrap();
    let s = Arc::new(Shared::new(enc, idx, "cam0", Duration::from_secs(60)));
    let src = moonlens::source::dir::DirSource::open(
        frames_dir.to_str().unwrap(),
        Duration::from_millis(1),
        false,
    )
    .unwrap();
    ingest::start(s.clone(), Box::new(src), ingest::Gates::OFF, 1);
    let t0 = Instant::now();
    while !s.source_done() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "ingest did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.index().len() as usize, names.len());
    // what each old query found first, before anything was learned
    let old_queries = [
        "a rabbit",
        "a banana",
        "an elephant",
        "a bee",
        "a duck",
        "a strawberry",
    ];
    let before_old: Vec<String> = old_queries
        .iter()
        .map(|q| top(&s, q, 1)[0].clone())
        .collect();
    let before = untagged_recall(&s);
    // the operator tags the first TAGGED views of each thing
    for (file, name) in THINGS {
        let stem = file.trim_end_matches(".png");
        for v in 0..TAGGED {
            let id = names
                .iter()
                .position(|n| *n == format!("{stem}-{v}.png"))
                .unwrap()
                + 1;
            let r = ask(&s, &format!("tag {id} {name}"));
            assert!(r.starts_with("+TAG"), "{r}");
        }
    }
    // retrain from the index in place (read only), beside a slice of the base pairs
    let pairs = pairs_slice("train", 600, &work);
    let val = pairs_slice("val", 150, &work);
    let out = work.join("site-bundle");
    let (_, report) = site::run(&site::Options {
        index: &index_dir,
        bundle: &bundle,
        pairs: &[pairs],
        val: &[val],
        cache: Some(&work.join("cache")),
        out: &out,
        cfg: Config::default(),
        repeat: 8,
    })
    .unwrap();
    eprintln!(
        "train --from-index: held-out tags R@1 {:.3} -> {:.3}; base val R@1 {:.3} -> {:.3}, R@5 {:.3} -> {:.3}",
        report.site_before.r1, report.site_after.r1, report.base_before.r1, report.base_after.r1, report.base_before.r5, report.base_after.r5
    );
    assert!(report.site_after.r1 > report.site_before.r1, "{report:?}");
    assert!(
        report.base_after.r5 >= report.base_before.r5 - 0.05,
        "{report:?}"
    );
    // reload: queries are answered all along, and the ring moves into the new space; every
    // answer is wholly the old model's or wholly the new one's, never a mix
    let hits = |s: &Arc<Shared>| -> String {
        ask(s, "search zorblax k=5")
            .lines()
            .filter(|l| l.starts_with("+HIT"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let old_answer = hits(&s);
    let r = ask(&s, &format!("reload {}", out.display()));
    assert_eq!(r, "OK\n");
    let t0 = Instant::now();
    let mut answered = 0;
    let mut during = Vec::new();
    let status = loop {
        during.push(hits(&s));
        answered += 1;
        let st = ask(&s, "status");
        if !st.contains("reload=running") {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "reload did not finish"
        );
    };
    assert!(
        status.contains("reload=done") && status.contains("+site"),
        "{status}"
    );
    assert!(
        status.contains(&format!("reprojected={}", names.len())),
        "{status}"
    );
    assert!(status.contains("from_thumbnails=0 left_out=0"), "{status}");
    let new_answer = hits(&s);
    assert_ne!(old_answer, new_answer);
    for a in &during {
        assert!(
            *a == old_answer || *a == new_answer,
            "a mixed answer during the reload:\n{a}"
        );
    }
    let after = untagged_recall(&s);
    let after_old: Vec<String> = old_queries
        .iter()
        .map(|q| top(&s, q, 1)[0].clone())
        .collect();
    eprintln!(
        "untagged views in the top 10 of their name: {before:.3} -> {after:.3}; old queries' first hits {before_old:?} -> {after_old:?}; {answered} queries answered during the reload"
    );
    assert!(after >= before + 0.5, "{before} -> {after}");
    // every frame an old query found first is still found first (or another view of it)
    for (b, a) in before_old.iter().zip(&after_old) {
        assert_eq!(
            b.split('-').next(),
            a.split('-').next(),
            "{before_old:?} -> {after_old:?}"
        );
    }
    // a restart with the config still naming the old bundle comes back in the new space
    drop(s);
    let started = moonlens::daemon::reload::bundle_to_start(&bundle.dir, &index_dir);
    assert_eq!(
        std::fs::canonicalize(started).unwrap(),
        std::fs::canonicalize(&out).unwrap()
    );
}
