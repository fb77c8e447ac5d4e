//! The operator's tags (issue 16, part 2): the store on its own (durable, bounded, a torn
//! tail cut, compaction), and through the protocol of a daemon whose ring forgets the frame.

mod common;
use common::*;
use moonlens::daemon::{ingest, Shared};
use moonlens::encoder::Encoder;
use moonlens::host::crash::{embedding_for, DIM};
use moonlens::index::tags::{FrameCopy, TagStore, MAX_FRAMES, MAX_TAGS, TAG_MAX};
use moonlens::index::{quantize, Entry, Expect, Index, Kept};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn copy_of(seq: u64) -> FrameCopy {
    let (embedding, scale) = quantize(&embedding_for(seq));
    FrameCopy {
        entry: Entry {
            seq,
            ts_ms: seq as i64 * 1000,
            source: "cam0".into(),
            label: format!("f{seq}"),
            scale,
            embedding,
        },
        kept: Some(Kept {
            features: (0..20).map(|j| (j + seq) as f32 / 7.0).collect(),
            base: embedding_for(seq + 99)[..12].to_vec(),
        }),
        thumb: format!("jpeg of {seq}").into_bytes(),
    }
}

#[test]
fn tags_survive_a_restart_and_keep_their_frame() {
    let d = tempdir("tags-store");
    {
        let mut s = TagStore::open(&d).unwrap();
        assert_eq!(
            s.tag(3, "  delivery   van ", || Some(copy_of(3))).unwrap(),
            ["delivery van"]
        );
        assert_eq!(
            s.tag(3, "red", || panic!("copied once")).unwrap(),
            ["delivery van", "red"]
        );
        assert_eq!(
            s.tag(3, "RED", || None).unwrap(),
            ["delivery van", "red"],
            "no duplicates"
        );
        s.tag(5, "our cat", || Some(copy_of(5))).unwrap();
        s.tag(7, "兔子", || Some(copy_of(7))).unwrap();
        assert_eq!(s.untag(5, None).unwrap(), Vec::<String>::new());
        assert_eq!(s.untag(3, Some("red")).unwrap(), ["delivery van"]);
    }
    let s = TagStore::open(&d).unwrap();
    let frames: Vec<(u64, Vec<String>)> =
        s.frames().map(|f| (f.entry.seq, f.tags.clone())).collect();
    assert_eq!(
        frames,
        [
            (3, vec!["delivery van".to_string()]),
            (7, vec!["兔子".to_string()])
        ]
    );
    let f = s.get(3).unwrap();
    assert_eq!(f.entry.label, "f3");
    let want = copy_of(3);
    assert_eq!(f.entry.embedding, want.entry.embedding);
    let (kept, want_kept) = (f.kept.as_ref().unwrap(), want.kept.unwrap());
    assert!(cosine(&kept.features, &want_kept.features) > 0.999);
    assert!(cosine(&kept.base, &want_kept.base) > 0.999);
    assert_eq!(s.thumb(3).unwrap(), b"jpeg of 3");
    assert_eq!(s.get(5), None, "untagged frames are not kept");
}

#[test]
fn bad_tags_and_full_stores_are_refused_with_what_to_do() {
    let d = tempdir("tags-bounds");
    let mut s = TagStore::open(&d).unwrap();
    assert!(s
        .tag(1, "   ", || Some(copy_of(1)))
        .unwrap_err()
        .contains("needs some text"));
    let long = "x".repeat(TAG_MAX + 1);
    assert!(s
        .tag(1, &long, || Some(copy_of(1)))
        .unwrap_err()
        .contains("at most"));
    assert!(s
        .tag(9, "gone", || None)
        .unwrap_err()
        .contains("left the ring"));
    for i in 0..MAX_TAGS {
        s.tag(1, &format!("t{i}"), || Some(copy_of(1))).unwrap();
    }
    assert!(s
        .tag(1, "one more", || None)
        .unwrap_err()
        .contains("untag one first"));
    assert!(s.untag(2, None).unwrap_err().contains("no tags"));
    assert!(s.untag(1, Some("nope")).unwrap_err().contains("no tag"));
    for seq in 2..=MAX_FRAMES as u64 {
        s.tag(seq, "x", || Some(copy_of(seq))).unwrap();
    }
    let e = s.tag(5000, "x", || Some(copy_of(5000))).unwrap_err();
    assert!(e.contains("limit") && e.contains("untag"), "{e}");
    // compaction keeps the log bounded however often tags come and go
    for round in 0..200 {
        s.untag(2, None).unwrap();
        s.tag(2, &format!("r{round}"), || Some(copy_of(2))).unwrap();
    }
    drop(s);
    let len = std::fs::metadata(d.join("tags.ml")).unwrap().len();
    let s = TagStore::open(&d).unwrap();
    assert_eq!(s.frames().count(), MAX_FRAMES);
    assert_eq!(s.get(2).unwrap().tags, ["r199"]);
    assert_eq!(s.thumb(2).unwrap(), b"jpeg of 2");
    assert!(len < 3 * 1024 * 1024, "log of {len} bytes for ~0.3 MB live");
}

#[test]
fn a_torn_last_record_is_cut_and_the_rest_kept() {
    let d = tempdir("tags-torn");
    {
        let mut s = TagStore::open(&d).unwrap();
        s.tag(1, "a", || Some(copy_of(1))).unwrap();
        s.tag(2, "b", || Some(copy_of(2))).unwrap();
    }
    let path = d.join("tags.ml");
    let whole = std::fs::read(&path).unwrap();
    // every cut inside the last record (the tag "b") loses only that record
    let last_len = 4 + 1 + 4 + 8 + 2 + 4;
    for cut in 1..last_len {
        std::fs::write(&path, &whole[..whole.len() - cut]).unwrap();
        let mut s = TagStore::open(&d).unwrap();
        assert_eq!(s.get(1).unwrap().tags, ["a"], "cut {cut}");
        assert_eq!(s.get(2), None, "cut {cut}: frame 2 has no tag left");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            whole.len() - last_len
        );
        // and appends go on after the cut
        s.tag(2, "b", || Some(copy_of(2))).unwrap();
        drop(s);
        assert_eq!(TagStore::open(&d).unwrap().get(2).unwrap().tags, ["b"]);
    }
    // garbage is not a tag store: it is cut to nothing, not trusted
    std::fs::write(&path, b"\x00\xffnot a log").unwrap();
    assert_eq!(TagStore::open(&d).unwrap().frames().count(), 0);
}

fn ask(s: &Arc<Shared>, line: &str) -> String {
    s.answer(line.as_bytes()).0
}

fn ask_json(s: &Arc<Shared>, req: Value) -> Value {
    serde_json::from_str(&s.answer(req.to_string().as_bytes()).0).unwrap()
}

/// Tags through the protocol, both forms; the tagged frame leaves the ring and its tag,
/// outputs and thumbnail stay; a restart keeps them.
#[test]
fn a_tagged_frame_outlives_the_ring_and_the_daemon() {
    let bundle = default_bundle();
    let dir = tempdir("tags-daemon");
    let open = || {
        let enc = Encoder::load(&bundle).unwrap();
        let expect = Expect {
            dim: enc.dim(),
            bundle_id: bundle.id,
            layout: *enc.layout(),
            regions: moonlens::index::RegionLayout::NONE,
        };
        let idx = Index::open_or_create_with(&dir, 8, &expect).unwrap();
        Arc::new(Shared::new(enc, idx, "dir", Duration::from_secs(60)))
    };
    let s = open();
    let src = moonlens::source::dir::DirSource::open(
        root().join("models/samples").to_str().unwrap(),
        Duration::from_millis(1),
        false,
    )
    .unwrap();
    ingest::start(s.clone(), Box::new(src), ingest::Gates::OFF, 1);
    let t0 = Instant::now();
    while s.index().head() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    let label = s.index().get(2).unwrap().label;
    assert_eq!(
        ask(&s, "tag 2 our badger"),
        "+TAG 2 our badger\nOK 1 tags\n"
    );
    let r = ask_json(&s, json!({"id": 4, "cmd": "tag", "frame": 2, "text": "獾"}));
    assert_eq!(
        r,
        json!({"ok": true, "id": 4, "tags": [{"frame": 2, "text": "our badger"}, {"frame": 2, "text": "獾"}]})
    );
    assert!(ask(&s, "tag 2").starts_with("ERROR tag needs"));
    assert!(ask(&s, "tag x y").starts_with("ERROR \"x\" is not a frame id"));
    assert!(ask(&s, "tag 99999 ghost").contains("left the ring"));
    while !s.source_done() {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(s.index().get(2).is_none(), "the ring of 8 forgot frame 2");
    assert_eq!(
        ask(&s, "tags 2"),
        "+TAG 2 our badger\n+TAG 2 獾\nOK 2 tags\n"
    );
    let r = ask_json(
        &s,
        json!({"id": 5, "cmd": "untag", "frame": 2, "text": "獾"}),
    );
    assert_eq!(r["tags"], json!([{"frame": 2, "text": "our badger"}]));
    drop(s);
    // a restart, with the daemon's ingest thread gone: the store is the one on disk
    std::thread::sleep(Duration::from_millis(100));
    let s = open();
    assert_eq!(ask(&s, "tags"), "+TAG 2 our badger\nOK 1 tags\n");
    let store = TagStore::open(&dir).unwrap();
    let f = store.get(2).unwrap();
    assert_eq!(f.entry.label, label);
    let kept = f.kept.as_ref().expect("the backbone outputs came along");
    assert_eq!((kept.features.len(), kept.base.len()), (1280, 384));
    let thumb = store.thumb(2).unwrap();
    assert!(
        image::load_from_memory(&thumb).is_ok(),
        "the thumbnail came along"
    );
    let _ = DIM;
}
