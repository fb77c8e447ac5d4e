//! `reload` (issue 16, part 4) at its edges: refusals, entries without kept outputs, a crash
//! before the commit, a restart after it.

mod common;
use common::*;
use moonlens::bundle::Bundle;
use moonlens::daemon::Shared;
use moonlens::encoder::Encoder;
use moonlens::index::search::Filter;
use moonlens::index::{Expect, Index};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The default bundle under another id (a comment added to bundle.toml): the same towers, so
/// re-projecting into it must give back the embeddings the index holds.
fn twin(dir: &Path) -> PathBuf {
    twin_named(dir, "twin", None)
}

/// [`twin`], optionally claiming another backbone (`[heads] features_from`).
fn twin_named(dir: &Path, name: &str, backbone: Option<&str>) -> PathBuf {
    let src = root().join("models/default");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
    }
    let toml = std::fs::read_to_string(out.join("bundle.toml")).unwrap();
    let mut toml = toml.replacen("\nname = \"", &format!("\nname = \"{name}-"), 1);
    if let Some(b) = backbone {
        let at = toml.find("features_from = \"").unwrap() + "features_from = \"".len();
        toml.replace_range(at..at + 64, b);
    }
    std::fs::write(
        out.join("bundle.toml"),
        format!("# a twin for tests/reload.rs\n{toml}"),
    )
    .unwrap();
    out
}

fn shared(dir: &Path) -> Arc<Shared> {
    let bundle = default_bundle();
    let enc = Encoder::load(&bundle).unwrap();
    let expect = Expect {
        dim: enc.dim(),
        bundle_id: bundle.id,
        layout: *enc.layout(),
        regions: moonlens::index::RegionLayout::NONE,
    };
    let idx = Index::open_or_create_with(dir, 64, &expect).unwrap();
    Arc::new(Shared::new(enc, idx, "cam0", Duration::from_secs(60)))
}

const SAMPLES: [&str; 6] = [
    "badger.png",
    "banana.png",
    "bee.png",
    "duck.png",
    "pear.png",
    "rabbit.png",
];

/// Stores the samples: the first `with_kept` with their backbone outputs, the rest as a
/// format-1 daemon stored them (embedding and thumbnail only).
fn store(s: &Shared, with_kept: usize) {
    let enc = s.encoder();
    for (i, name) in SAMPLES.iter().enumerate() {
        let img = image::open(root().join("models/samples").join(name)).unwrap();
        let (emb, kept) = enc
            .encode_images(std::slice::from_ref(&img))
            .unwrap()
            .remove(0);
        let thumb = moonlens::daemon::ingest::thumbnail(&img);
        let kept = (i < with_kept).then_some(&kept);
        s.index()
            .append_kept(i as i64, "cam0", name, &emb, &thumb, kept)
            .unwrap();
    }
}

/// `moonlensd` on the index `dir` (with `bundle`, else the config's default), replaying one
/// sample frame from `d/frames`, answering on `d/d.sock`.
fn start_daemon(d: &Path, dir: &Path, bundle: Option<&Path>) -> (std::process::Child, PathBuf) {
    let frames = d.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::copy(
        root().join("models/samples/lemon.png"),
        frames.join("lemon.png"),
    )
    .unwrap();
    let sock = d.join("d.sock");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_moonlensd"));
    cmd.current_dir(root());
    if let Some(b) = bundle {
        cmd.arg("--bundle").arg(b);
    }
    let child = cmd
        .arg("--source")
        .arg(format!("dir:{}", frames.display()))
        .args(["--no-console", "--index"])
        .arg(dir)
        .arg("--socket")
        .arg(&sock)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (child, sock)
}

/// The daemon's first `status`, once it answers; fails if it exits or takes over a minute.
fn status(child: &mut std::process::Child, sock: &Path) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        if let Ok(st) = ask_json(sock, &serde_json::json!({"cmd": "status"})) {
            return st;
        }
        if let Ok(Some(code)) = child.try_wait() {
            panic!("the daemon exited ({code}) instead of serving the index");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ask(s: &Arc<Shared>, line: &str) -> String {
    s.answer(line.as_bytes()).0
}

/// Waits for the reload to end; its status field.
fn finished(s: &Arc<Shared>) -> String {
    let t0 = Instant::now();
    loop {
        let st = s.status().reload;
        if !st.starts_with("running") {
            return st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "reload did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn refused_bundles_change_nothing_and_say_why() {
    let d = tempdir("reload-refused");
    let s = shared(&d.join("index"));
    store(&s, SAMPLES.len());
    let before = ask(&s, "search a banana k=3");
    let model = s.status().model;
    for (bundle, why) in [
        (root().join("tests/fixtures/clip-tiny"), "new index"),
        (d.join("nowhere"), "cannot read"),
        (root().join("models/default"), "already holds"),
    ] {
        assert_eq!(ask(&s, &format!("reload {}", bundle.display())), "OK\n");
        let st = finished(&s);
        assert!(
            st.starts_with("failed: ") && st.contains(why),
            "{bundle:?}: {st}"
        );
        assert_eq!(s.status().model, model);
        assert_eq!(
            ask(&s, "search a banana k=3").lines().next(),
            before.lines().next()
        );
    }
    assert!(!d.join("index").join(moonlens::index::NEXT).exists());
    assert!(ask(&s, "reload").starts_with("ERROR reload needs a bundle directory"));
}

#[test]
fn a_reload_gives_back_the_same_embeddings_and_recovers_old_entries_from_thumbnails() {
    let d = tempdir("reload-twin");
    let s = shared(&d.join("index"));
    store(&s, 4);
    let before: Vec<Vec<f32>> = (1..=6)
        .map(|id| s.index().get(id).unwrap().dequantized())
        .collect();
    let twin = twin(&d);
    assert_eq!(ask(&s, &format!("reload {}", twin.display())), "OK\n");
    let st = finished(&s);
    assert!(
        st.starts_with("done ") && st.contains("reprojected=4 from_thumbnails=2 left_out=0"),
        "{st}"
    );
    assert_eq!(s.index().bundle_id(), Bundle::open(&twin).unwrap().id);
    assert_eq!(s.encoder().bundle().id, Bundle::open(&twin).unwrap().id);
    for id in 1..=6u64 {
        let after = s.index().get(id).unwrap().dequantized();
        let cos = cosine(&before[id as usize - 1], &after);
        eprintln!("entry {id}: cosine to its embedding before the reload {cos:.5}");
        // re-projected from kept outputs: the same head on int8 copies; from a 160-px JPEG:
        // the same tower on a smaller, lossier picture
        assert!(cos > if id <= 4 { 0.999 } else { 0.8 }, "entry {id}: {cos}");
    }
    let hits = s.index().search(
        &s.encoder().embed_text("a banana").unwrap(),
        1,
        &Filter::default(),
    );
    assert_eq!(s.index().get(hits[0].seq).unwrap().label, "banana.png");
}

#[test]
fn a_crash_before_the_commit_leaves_the_old_index() {
    let d = tempdir("reload-crash");
    let dir = d.join("index");
    let old_id;
    {
        let s = shared(&dir);
        store(&s, SAMPLES.len());
        old_id = s.index().bundle_id();
        // a re-projection that got as far as writing every entry, then the power went
        let mut next = s.index().begin_next([1u8; 32], None).unwrap();
        s.index()
            .fill_next(&mut next, &mut |b| {
                Ok(b.iter().map(|_| Some(vec![0.5f32; 640])).collect())
            })
            .unwrap();
        std::mem::forget(next);
    }
    assert!(dir.join(moonlens::index::NEXT).exists());
    let s = shared(&dir);
    assert!(
        !dir.join(moonlens::index::NEXT).exists(),
        "rolled back at open"
    );
    assert_eq!(s.index().bundle_id(), old_id);
    assert_eq!(s.index().len(), SAMPLES.len() as u64);
    let hits = s.index().search(
        &s.encoder().embed_text("a duck").unwrap(),
        1,
        &Filter::default(),
    );
    assert_eq!(s.index().get(hits[0].seq).unwrap().label, "duck.png");
}

/// After the commit the index names the new bundle; a restart whose config still names the
/// old one starts with the new one (reloaded.json), and the real daemon serves it.
#[test]
fn a_restart_after_the_commit_comes_back_in_the_new_space() {
    let d = tempdir("reload-restart");
    let dir = d.join("index");
    let twin = twin(&d);
    {
        let s = shared(&dir);
        store(&s, SAMPLES.len());
        assert_eq!(ask(&s, &format!("reload {}", twin.display())), "OK\n");
        assert!(finished(&s).starts_with("done"));
    }
    let picked = moonlens::daemon::reload::bundle_to_start(&root().join("models/default"), &dir);
    assert_eq!(
        std::fs::canonicalize(picked).unwrap(),
        std::fs::canonicalize(&twin).unwrap()
    );
    let (mut child, sock) = start_daemon(&d, &dir, None);
    let st = status(&mut child, &sock);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        st["frames"].as_u64().unwrap() >= SAMPLES.len() as u64,
        "{st}"
    );
    assert_eq!(st["model"], Bundle::open(&twin).unwrap().manifest.name);
}

/// A bundle over another backbone: refused by a plain reload (its head cannot read the kept
/// outputs), taken by `from=thumbnails`, which re-encodes every entry from its thumbnail and
/// starts features.ml afresh for the new backbone.
#[test]
fn another_backbone_takes_over_only_from_thumbnails() {
    let d = tempdir("reload-other-backbone");
    let s = shared(&d.join("index"));
    store(&s, SAMPLES.len());
    let other = twin_named(&d, "other", Some(&"ab".repeat(32)));
    assert_eq!(ask(&s, &format!("reload {}", other.display())), "OK\n");
    let st = finished(&s);
    assert!(
        st.contains("another backbone") && st.contains("from=thumbnails"),
        "{st}"
    );
    let r = ask(
        &s,
        &format!(
            r#"{{"id":1,"cmd":"reload","bundle":"{}","from":"thumbnails"}}"#,
            other.display()
        ),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r).unwrap(),
        serde_json::json!({"id": 1, "ok": true})
    );
    let st = finished(&s);
    assert!(
        st.contains("reprojected=0 from_thumbnails=6 left_out=0"),
        "{st}"
    );
    let layout = s.index().layout();
    assert_eq!(moonlens::bundle::hex(&layout.backbone_id), "ab".repeat(32));
    assert_eq!(
        s.index().kept(1),
        None,
        "the old backbone's outputs are gone"
    );
    let hits = s.index().search(
        &s.encoder().embed_text("a pear").unwrap(),
        1,
        &Filter::default(),
    );
    assert_eq!(s.index().get(hits[0].seq).unwrap().label, "pear.png");
    // new frames keep outputs of the new backbone
    let img = image::open(root().join("models/samples/lemon.png")).unwrap();
    let (emb, kept) = s
        .encoder()
        .encode_images(std::slice::from_ref(&img))
        .unwrap()
        .remove(0);
    let id = s
        .index()
        .append_kept(9, "cam0", "lemon.png", &emb, b"", Some(&kept))
        .unwrap();
    assert!(s.index().kept(id).is_some());
}

/// `systemctl reload` (SIGHUP): the daemon re-reads its config file and swaps in the bundle
/// it now names; a config naming the running bundle changes nothing.
#[test]
fn sighup_reloads_the_bundle_the_config_names() {
    let d = tempdir("reload-sighup");
    let twin = twin(&d);
    let config = d.join("moonlensd.toml");
    let write_config = |bundle: &Path| {
        std::fs::write(
            &config,
            format!(
                "bundle = \"{}\"\nsource = \"dir:{}\"\nindex = \"{}\"\nsocket = \"{}\"\ncapacity = 100\n",
                bundle.display(),
                root().join("models/samples").display(),
                d.join("index").display(),
                d.join("d.sock").display()
            ),
        )
        .unwrap()
    };
    write_config(&root().join("models/default"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_moonlensd"))
        .current_dir(root())
        .args(["--no-console", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = d.join("d.sock");
    let status = || ask_json(&sock, &serde_json::json!({"cmd": "status"}));
    let wait = |want: &dyn Fn(&serde_json::Value) -> bool| {
        let t0 = Instant::now();
        loop {
            if let Ok(st) = status() {
                if want(&st) {
                    return st;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "timed out: {:?}",
                status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait(&|st| st["source_done"] == true);
    // SAFETY: signals our own child, by its pid
    let hup = || unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        status().unwrap()["reload"],
        "none",
        "the same bundle: nothing to do"
    );
    write_config(&twin);
    hup();
    let st = wait(&|st| st["reload"].as_str().is_some_and(|r| r.starts_with("done")));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        st["model"],
        Bundle::open(&twin).unwrap().manifest.name,
        "{st}"
    );
    assert!(
        st["reload"].as_str().unwrap().contains("reprojected=22"),
        "{st}"
    );
}

/// A reload into a bundle over the same backbone keeps the regions (their space is the base
/// bundle's bridge), and the new model computes and searches them as the old one did.
#[test]
fn a_reload_over_the_same_backbone_keeps_the_regions() {
    use moonlens::daemon::{region_layout, RegionPolicy};
    let d = tempdir("reload-regions");
    let bundle = default_bundle();
    let enc = moonlens::daemon::load_encoder(&bundle, true).unwrap();
    let expect = Expect {
        dim: enc.dim(),
        bundle_id: bundle.id,
        layout: *enc.layout(),
        regions: region_layout(&enc, RegionPolicy::DEFAULT.keep),
    };
    let idx = Index::open_or_create_with(&d.join("index"), 64, &expect).unwrap();
    let s = Arc::new(Shared::new(enc, idx, "cam0", Duration::from_secs(60)));
    for (i, name) in SAMPLES.iter().enumerate() {
        let img = image::open(root().join("models/samples").join(name)).unwrap();
        let (emb, kept, regions) = s.encoder().encode_regions(&img).unwrap();
        let regions: Vec<Vec<f32>> = moonlens::encoder::regions::most_confident(regions, 16)
            .into_iter()
            .map(|r| r.embedding)
            .collect();
        s.index()
            .append_frame(
                i as i64,
                "cam0",
                name,
                &emb,
                b"",
                Some(&kept),
                Some(&regions),
            )
            .unwrap();
    }
    let twin = twin(&d);
    assert_eq!(ask(&s, &format!("reload {}", twin.display())), "OK\n");
    assert!(finished(&s).starts_with("done "));
    assert!(
        s.encoder().region_tower().is_some(),
        "the new model has regions too"
    );
    for id in 1..=6u64 {
        assert_eq!(
            s.index().regions(id).map(|r| r.len()),
            Some(16),
            "entry {id}"
        );
    }
    let reply = ask(&s, r#"{"cmd":"search","text":"a banana","k":1}"#);
    assert!(reply.contains("banana.png"), "{reply}");
}

/// A package upgrade replaces the default bundle (a new text tower, the same image tower):
/// the daemon used to refuse the index at start ("built with another model bundle … move the
/// directory away"), so an operator lost every frame to an upgrade. Now a start over an
/// index of another bundle over the same backbone re-projects it first, as `reload` does;
/// another backbone is still refused, unchanged.
#[test]
fn a_start_with_an_upgraded_bundle_over_the_same_backbone_adopts_the_index() {
    use moonlens::daemon::reload::adopt_at_start;
    let d = tempdir("reload-adopt");
    let dir = d.join("index");
    let before: Vec<Vec<f32>> = {
        let s = shared(&dir);
        store(&s, 4);
        (1..=6)
            .map(|id| s.index().get(id).unwrap().dequantized())
            .collect()
    };
    // another backbone: nothing adopted, and the open refuses as before
    let other = Bundle::open(twin_named(&d, "other", Some(&"ab".repeat(32)))).unwrap();
    let other_enc = Encoder::load(&other).unwrap();
    assert!(adopt_at_start(&dir, &other, &other_enc).unwrap().is_none());
    let twin = Bundle::open(twin(&d)).unwrap();
    let enc = Encoder::load(&twin).unwrap();
    let done = adopt_at_start(&dir, &twin, &enc).unwrap().expect("adopted");
    assert_eq!(
        (done.reprojected, done.from_thumbnails, done.left_out),
        (4, 2, 0)
    );
    assert!(
        adopt_at_start(&dir, &twin, &enc).unwrap().is_none(),
        "already the bundle's"
    );
    let expect = |b: &Bundle, e: &Encoder| Expect {
        dim: e.dim(),
        bundle_id: b.id,
        layout: *e.layout(),
        regions: moonlens::index::RegionLayout::NONE,
    };
    let Err(e) = Index::open_or_create_with(&dir, 64, &expect(&other, &other_enc)) else {
        panic!("an index of another backbone was opened");
    };
    assert_eq!(e.kind(), moonlens::ErrorKind::BundleMismatch, "{e}");
    let idx = Index::open_or_create_with(&dir, 64, &expect(&twin, &enc)).unwrap();
    assert_eq!(idx.len(), 6);
    for id in 1..=6u64 {
        let cos = cosine(
            &before[id as usize - 1],
            &idx.get(id).unwrap().dequantized(),
        );
        assert!(cos > if id <= 4 { 0.999 } else { 0.8 }, "entry {id}: {cos}");
    }
    drop(idx);

    // and the daemon itself: started on the index with a third bundle, it serves it
    let third = twin_named(&d, "third", None);
    let (mut child, sock) = start_daemon(&d, &dir, Some(&third));
    let st = status(&mut child, &sock);
    let hits = ask_json(
        &sock,
        &serde_json::json!({"cmd": "search", "text": "a banana", "k": 1}),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(st["frames"].as_u64().unwrap() >= 6, "{st}");
    assert_eq!(st["model"], Bundle::open(&third).unwrap().manifest.name);
    let hits = hits.unwrap();
    assert!(hits.to_string().contains("banana.png"), "{hits}");
}
