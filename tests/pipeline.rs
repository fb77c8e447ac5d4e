//! The ingest pipeline in-process: a fault-injecting source, queries during an outage, and
//! a watch that fires on the right frame.

mod common;
use common::*;
use moonlens::daemon::{ingest, Shared};
use moonlens::encoder::Encoder;
use moonlens::index::Index;
use moonlens::source::dir::DirSource;
use moonlens::source::fault::{FaultSource, Faults};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn shared(name: &str) -> Arc<Shared> {
    let bundle = default_bundle();
    let enc = Encoder::load(&bundle).unwrap();
    let idx = Index::open_or_create(&tempdir(name), enc.dim(), 500, bundle.id).unwrap();
    Arc::new(Shared::new(enc, idx, "dir", Duration::from_secs(60)))
}

fn samples(looping: bool, interval_ms: u64) -> DirSource {
    DirSource::open(
        root().join("models/samples").to_str().unwrap(),
        Duration::from_millis(interval_ms),
        looping,
    )
    .unwrap()
}

fn wait_done(s: &Shared) {
    let t0 = Instant::now();
    while !s.source_done() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "ingest did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failing_source_recovers_and_queries_keep_working() {
    let s = shared("fault");
    // frames 3..=8 fail as a vanished camera, every 7th is corrupt, every 5th dropped
    let faults = Faults {
        outage: Some((3, 8)),
        corrupt_every: 7,
        drop_every: 5,
        stall_every: 4,
        stall: Duration::from_millis(30),
    };
    let src = FaultSource::new(samples(false, 5), faults);
    ingest::start(s.clone(), Box::new(src), ingest::Gates::OFF, 2);
    // queries during ingest are answered
    let mut answered = 0;
    while !s.source_done() {
        let (reply, _) = s.answer(b"status");
        assert!(reply.contains("+STATUS"), "{reply}");
        let (reply, _) = s.answer(b"search a rabbit k=3");
        assert!(reply.ends_with(" ms\n") && reply.contains("OK"), "{reply}");
        answered += 1;
    }
    wait_done(&s);
    assert!(answered > 0);
    let st = s.status();
    // Calls 3..=8 are the outage (no file consumed), so call n >= 9 reads file n - 6 of the
    // 22 sorted samples. Dropped: calls 10, 15, 20, 25 (beaver, elephant, lemon, pizza);
    // corrupt: calls 14, 21, 28 (duck, mantis, strawberry2).
    assert_eq!(
        (st.ingested, st.source_errors, st.frames),
        (15, 6 + 3, 15),
        "{st:?}"
    );
    let (reply, _) = s.answer(br#"{"id":1,"cmd":"search","text":"an animal","k":100}"#);
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    let labels = hit_labels(&v);
    assert_eq!(labels.len(), 15);
    for lost in [
        "beaver.png",
        "elephant.png",
        "lemon.png",
        "pizza.png",
        "duck.png",
        "mantis.png",
        "strawberry2.png",
    ] {
        assert!(
            !labels.contains(&lost),
            "{lost} should have been lost: {labels:?}"
        );
    }
    let (reply, _) = s.answer(b"search a rabbit k=1");
    assert!(
        reply.lines().next().unwrap().ends_with("rabbit.png"),
        "{reply}"
    );
}

#[test]
fn a_watch_fires_on_the_right_frame() {
    let s = shared("watch");
    let (reply, _) = s.answer(b"watch add a rabbit");
    assert_eq!(reply, "OK watch 1\n");
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    s.subscribe(Arc::new(std::sync::atomic::AtomicBool::new(false)), tx);
    ingest::start(
        s.clone(),
        Box::new(samples(false, 1)),
        ingest::Gates::OFF,
        2,
    );
    wait_done(&s);
    let pushes: Vec<String> = rx.try_iter().collect();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert!(
        pushes[0].starts_with("+MATCH 1 ") && pushes[0].trim_end().ends_with("rabbit.png"),
        "{pushes:?}"
    );
    let (list, _) = s.answer(b"watch list");
    assert_eq!(list, "+WATCH 1 a rabbit\nOK\n");
    assert_eq!(s.answer(b"watch del 1").0, "OK\n");
    assert!(s.answer(b"watch del 1").0.starts_with("ERROR"));
}

/// Issue 17: encode workers run side by side, but the index holds frames in the source's
/// order, with the embeddings one worker would have stored.
#[test]
fn every_worker_count_stores_frames_in_source_order() {
    let mut sorted: Vec<String> = std::fs::read_dir(root().join("models/samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png") || n.ends_with(".jpg"))
        .collect();
    sorted.sort();
    let mut runs = Vec::new();
    for workers in [1, 3] {
        let s = shared(&format!("order{workers}"));
        ingest::start(
            s.clone(),
            Box::new(samples(false, 0)),
            ingest::Gates::OFF,
            workers,
        );
        wait_done(&s);
        let idx = s.index();
        let entries: Vec<_> = (idx.head() + 1 - idx.len()..=idx.head())
            .map(|seq| idx.get(seq).unwrap())
            .collect();
        let labels: Vec<&str> = entries.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, sorted, "{workers} worker(s)");
        runs.push(entries);
    }
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        let cos = cosine(&a.dequantized(), &b.dequantized());
        assert!(cos > 0.999, "{}: {cos}", a.label);
    }
}

#[test]
fn gates_skip_a_still_scene() {
    let s = shared("gate");
    // a still scene: six identical frames, then a different one
    let d = tempdir("still");
    let img = root().join("models/samples/rabbit.png");
    for i in 0..6 {
        std::fs::copy(&img, d.join(format!("still{i}.png"))).unwrap();
    }
    std::fs::copy(
        root().join("models/samples/elephant.png"),
        d.join("still9.png"),
    )
    .unwrap();
    let src = DirSource::open(d.to_str().unwrap(), Duration::from_millis(1), false).unwrap();
    ingest::start(
        s.clone(),
        Box::new(src),
        ingest::Gates {
            pixel_diff: 2.0,
            embedding_cos: 0.985,
        },
        2,
    );
    wait_done(&s);
    let st = s.status();
    assert_eq!((st.ingested, st.gated), (2, 5), "{st:?}");
}

/// Issue 14, fault 7: every scan, `similar` included, waits for one of the query slots, so
/// a burst of scans cannot take more cores than [`QUERY_SLOTS`]; status does not wait.
#[test]
fn scans_wait_for_a_query_slot() {
    use moonlens::daemon::QUERY_SLOTS;
    use std::sync::{mpsc, Barrier};
    let s = shared("slots");
    ingest::start(
        s.clone(),
        Box::new(samples(false, 0)),
        ingest::Gates::OFF,
        1,
    );
    wait_done(&s);
    assert!(!s.index().is_empty());
    let first = s.index().head() - 1;
    // hold every slot until told to let go
    let held = Arc::new(Barrier::new(QUERY_SLOTS + 1));
    let (release, released) = mpsc::channel::<()>();
    let released = Arc::new(std::sync::Mutex::new(released));
    let holders: Vec<_> = (0..QUERY_SLOTS)
        .map(|_| {
            let (s, held, released) = (s.clone(), held.clone(), released.clone());
            std::thread::spawn(move || {
                s.with_query_slot(|| {
                    held.wait();
                    released.lock().unwrap().recv().unwrap();
                })
            })
        })
        .collect();
    held.wait();
    let (tx, answers) = mpsc::channel();
    for line in [
        format!("similar {first} k=3"),
        "search a duck k=1".to_string(),
    ] {
        let (s, tx) = (s.clone(), tx.clone());
        std::thread::spawn(move || tx.send(s.answer(line.as_bytes()).0).unwrap());
    }
    assert!(
        answers.recv_timeout(Duration::from_millis(500)).is_err(),
        "a scan ran while every query slot was held"
    );
    assert!(s.answer(b"status").0.contains("+STATUS"));
    for _ in 0..QUERY_SLOTS {
        release.send(()).unwrap();
    }
    for _ in 0..2 {
        let reply = answers.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            reply.starts_with("+HIT ") && reply.contains(" hits "),
            "{reply}"
        );
    }
    for h in holders {
        h.join().unwrap();
    }
}
