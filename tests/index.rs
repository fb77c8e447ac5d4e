//! The ring index: exactness against an f32 reference, bounds, binding to the model,
//! concurrent readers, corruption and truncation, and a SIGKILL crash harness.

mod common;
use common::tempdir;
use moonlens::host::crash::{embedding_for, thumb_for, DIM};
use moonlens::index::search::{Filter, K_MAX};
use moonlens::index::{Index, HEADER_SIZE};
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const BUNDLE: [u8; 32] = [7u8; 32];

fn filled(name: &str, capacity: u64, n: u64) -> (Index, std::path::PathBuf) {
    let d = tempdir(name);
    let mut idx = Index::open_or_create(&d, DIM, capacity, BUNDLE).unwrap();
    idx.set_durable(false);
    for seq in 1..=n {
        let src = if seq % 3 == 0 { "cam1" } else { "cam0" };
        idx.append(
            seq as i64 * 1000,
            src,
            &format!("f{seq}"),
            &embedding_for(seq),
            &thumb_for(seq),
        )
        .unwrap();
    }
    (idx, d)
}

#[test]
fn rankings_equal_an_f32_reference_on_the_dequantized_vectors() {
    let (idx, _) = filled("exact", 3000, 3000);
    for qseed in 0..20u64 {
        let q = embedding_for(1_000_000 + qseed);
        let hits = idx.search(&q, 10, &Filter::default());
        // reference: f64 dot products over every dequantized entry
        let mut all: Vec<(f64, u64)> = (1..=3000u64)
            .map(|s| {
                let e = idx.get(s).unwrap().dequantized();
                (
                    q.iter().zip(&e).map(|(a, b)| *a as f64 * *b as f64).sum(),
                    s,
                )
            })
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        assert_eq!(hits.len(), 10);
        for (h, r) in hits.iter().zip(&all) {
            assert!(
                (h.score as f64 - r.0).abs() < 1e-4,
                "score {} vs {}",
                h.score,
                r.0
            );
            if h.seq != r.1 {
                // only a tie may reorder
                let own = all.iter().find(|x| x.1 == h.seq).unwrap().0;
                assert!(
                    (own - r.0).abs() < 1e-4,
                    "rank differs beyond a tie: {h:?} vs {r:?}"
                );
            }
        }
        // quantization keeps the cosine close to f32 on the original vectors
        let best = idx.get(hits[0].seq).unwrap();
        let f32cos: f32 = q
            .iter()
            .zip(embedding_for(best.seq))
            .map(|(a, b)| a * b)
            .sum();
        assert!((f32cos - hits[0].score).abs() < 5e-3);
    }
}

#[test]
fn the_ring_overwrites_the_oldest_and_stays_bounded() {
    let (idx, d) = filled("ring", 50, 120);
    assert_eq!(idx.len(), 50);
    assert!(idx.get(70).is_none() && idx.get(1).is_none());
    assert_eq!(idx.get(71).unwrap().label, "f71");
    let size = std::fs::metadata(d.join("index.ml")).unwrap().len();
    assert_eq!(
        size,
        (HEADER_SIZE + 50 * moonlens::index::slot::size(DIM)) as u64
    );
    let hits = idx.search(&embedding_for(5), K_MAX + 50, &Filter::default());
    assert_eq!(hits.len(), 50.min(K_MAX));
    assert!(hits.iter().all(|h| h.seq > 70));
    drop(idx);
    let idx = Index::open(&d).unwrap();
    assert_eq!((idx.len(), idx.head(), idx.report().corrupt), (50, 120, 0));
    let (_, thumb) = idx.get_with_thumb(100).unwrap();
    assert_eq!(thumb.unwrap(), thumb_for(100));
}

#[test]
fn filters_by_time_and_source() {
    let (idx, _) = filled("filter", 100, 100);
    let q = embedding_for(3);
    let f = Filter {
        since_ms: Some(50_000),
        until_ms: Some(80_000),
        source: None,
    };
    let hits = idx.search(&q, 100, &f);
    assert_eq!(hits.len(), 31);
    assert!(hits.iter().all(|h| (50..=80).contains(&h.seq)));
    let f = Filter {
        source: Some("cam1".into()),
        ..Default::default()
    };
    let hits = idx.search(&q, 100, &f);
    assert_eq!(hits.len(), 33);
    assert!(hits.iter().all(|h| h.seq % 3 == 0));
    assert_eq!(hits[0].seq, 3, "the query's own vector ranks first");
}

#[test]
fn an_index_of_another_bundle_is_refused_with_what_to_do() {
    let (idx, d) = filled("bound", 10, 3);
    drop(idx);
    let e = Index::open_or_create(&d, DIM, 10, [8u8; 32]).err().unwrap();
    assert_eq!(e.kind(), moonlens::ErrorKind::BundleMismatch, "{e}");
    let e = e.to_string();
    assert!(
        e.contains("another model bundle") && e.contains("re-index"),
        "{e}"
    );
    let e = Index::open_or_create(&d, 512, 10, BUNDLE)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("384"), "{e}");
}

#[test]
fn readers_never_see_a_torn_entry_while_the_writer_appends() {
    let d = tempdir("threads");
    let mut idx = Index::open_or_create(&d, DIM, 500, BUNDLE).unwrap();
    idx.set_durable(false);
    let idx = Arc::new(idx);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (idx, stop) = (idx.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut checked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let q = embedding_for(10_000 + r);
                    for h in idx.search(&q, 20, &Filter::default()) {
                        // a hit whose entry is still there must be exactly what was written
                        if let Some(e) = idx.get(h.seq) {
                            let (want, _) = moonlens::index::quantize(&embedding_for(h.seq));
                            assert_eq!(e.embedding, want, "torn entry {}", h.seq);
                            assert_eq!(e.label, format!("f{}", h.seq));
                            checked += 1;
                        }
                    }
                }
                checked
            })
        })
        .collect();
    for seq in 1..=3000u64 {
        idx.append(
            seq as i64,
            "cam0",
            &format!("f{seq}"),
            &embedding_for(seq),
            &thumb_for(seq),
        )
        .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let checked: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(checked > 100, "readers checked only {checked} hits");
}

fn flip(path: &std::path::Path, offset: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[offset] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

/// `moonlensd verify --index DIR`: exit code and JSON report.
fn verify_cli(d: &std::path::Path) -> (Option<i32>, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moonlensd"))
        .args(["verify", "--index"])
        .arg(d)
        .output()
        .unwrap();
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

#[test]
fn bit_flips_are_detected_reported_and_never_served() {
    let (idx, d) = filled("flips", 64, 64);
    drop(idx);
    let ss = moonlens::index::slot::size(DIM);
    let bad = [3usize, 17, 40];
    for (i, &slot) in bad.iter().enumerate() {
        flip(
            &d.join("index.ml"),
            HEADER_SIZE + slot * ss + [5, 60, 200][i],
        );
    }
    let r = Index::verify(&d).unwrap();
    assert_eq!((r.entries, r.corrupt, r.capacity), (61, 3, 64));
    assert_eq!(r.corrupt_slots, vec![3, 17, 40]);
    let (code, v) = verify_cli(&d);
    assert_eq!(code, Some(2), "verify must exit non-zero on corruption");
    assert_eq!(
        (
            v["entries"].as_u64(),
            v["corrupt"].as_u64(),
            v["capacity"].as_u64()
        ),
        (Some(61), Some(3), Some(64))
    );

    let idx = Index::open(&d).unwrap();
    assert_eq!(idx.report().corrupt, 3);
    // issue 14, fault 3: recovery cleared the slots on disk and the report vanished; the
    // damaged bytes are now kept first, and every later verify and open still says so
    let after = Index::verify(&d).unwrap();
    assert_eq!(
        (after.entries, after.corrupt, after.quarantined),
        (61, 0, 3)
    );
    let q = std::fs::read(d.join(moonlens::index::quarantine::FILE)).unwrap();
    assert_eq!(
        q.len(),
        3 * (24 + ss + 4),
        "three records of the raw slot bytes"
    );
    assert_eq!(moonlens::index::quarantine::slots(&d), vec![3, 17, 40]);
    let (code, v) = verify_cli(&d);
    assert_eq!(code, Some(2), "quarantined damage is still reported");
    assert_eq!(v["quarantined"].as_u64(), Some(3));
    for s in [4u64, 18, 41] {
        assert!(idx.get(s).is_none());
        assert!(idx
            .search(&embedding_for(s), 5, &Filter::default())
            .iter()
            .all(|h| h.seq != s));
    }
    assert_eq!(
        idx.search(&embedding_for(5), 1, &Filter::default())[0].seq,
        5,
        "the rest is served"
    );

    // a flipped thumbnail: the entry is served without it
    drop(idx);
    // a second open finds nothing new and keeps the record as it was
    assert_eq!(Index::open(&d).unwrap().report().corrupt, 0);
    assert_eq!(moonlens::index::quarantine::slots(&d), vec![3, 17, 40]);
    flip(&d.join("thumbs.ml"), 9 * moonlens::index::THUMB_SLOT);
    let idx = Index::open(&d).unwrap();
    let (e, thumb) = idx.get_with_thumb(10).unwrap();
    assert_eq!(e.label, "f10");
    assert!(thumb.is_none());
}

#[test]
fn truncation_and_bad_headers_are_clear() {
    let (idx, d) = filled("trunc", 64, 64);
    drop(idx);
    let ss = moonlens::index::slot::size(DIM);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("index.ml"))
        .unwrap();
    f.set_len((HEADER_SIZE + 20 * ss + ss / 2) as u64).unwrap();
    drop(f);
    let r = Index::verify(&d).unwrap();
    assert_eq!((r.entries, r.corrupt), (20, 44));
    let idx = Index::open(&d).unwrap();
    assert_eq!(idx.len(), 20);
    assert_eq!(
        idx.search(&embedding_for(7), 1, &Filter::default())[0].seq,
        7
    );
    drop(idx);

    flip(&d.join("index.ml"), 13);
    let e = Index::open(&d).err().unwrap().to_string();
    assert!(
        e.contains("header checksum") && e.contains("re-index"),
        "{e}"
    );
    std::fs::write(d.join("index.ml"), b"hello").unwrap();
    let e = Index::open(&d).err().unwrap().to_string();
    assert!(e.contains("not an index or truncated"), "{e}");
    std::fs::write(d.join("index.ml"), vec![0x41u8; 8192]).unwrap();
    let e = Index::open(&d).err().unwrap().to_string();
    assert!(e.contains("not a moonlens index"), "{e}");
}

/// Regions read back equal the harness's for `seq`, up to int8 storage.
fn same_regions(got: &[Vec<f32>], seq: u64) -> bool {
    let want = moonlens::host::crash::regions_for(seq);
    got.len() == want.len()
        && got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1.0 / 127.0))
}

/// SIGKILL a writer process at random moments, 200 times; every acknowledged entry must be
/// present and exact on reopen, and nothing invalid may be returned.
#[test]
fn every_acknowledged_entry_survives_sigkill() {
    let d = tempdir("crash");
    let bin = env!("CARGO_BIN_EXE_moonlens-host");
    let capacity = 64u64;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut max_acked = 0u64;
    for _ in 0..200 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait_lines = rng % 12; // kill after 0..11 acknowledgements, mid-append
        let mut child = std::process::Command::new(bin)
            .args(["index-writer", "--capacity", "64", "--index"])
            .arg(&d)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..wait_lines {
            match lines.next() {
                Some(Ok(l)) => {
                    max_acked = max_acked.max(l.trim_start_matches("acked ").parse().unwrap())
                }
                _ => break,
            }
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        // drain what it acknowledged before dying
        for l in lines.map_while(Result::ok) {
            max_acked = max_acked.max(l.trim_start_matches("acked ").parse().unwrap());
        }
        let idx = Index::open(&d).unwrap();
        assert!(
            idx.head() >= max_acked,
            "head {} < acknowledged {max_acked}",
            idx.head()
        );
        // The ring keeps the last `capacity` entries; an append cut short by the kill may
        // already have begun overwriting the oldest of them (its eviction was intended).
        let first_guaranteed = (idx.head() + 2).saturating_sub(capacity).max(1);
        for seq in first_guaranteed..=max_acked {
            let e = idx
                .get(seq)
                .unwrap_or_else(|| panic!("acknowledged entry {seq} lost"));
            let (want, _) = moonlens::index::quantize(&embedding_for(seq));
            assert_eq!(e.embedding, want);
            assert_eq!(e.label, format!("frame-{seq}"));
            // its regions were flushed before the entry: present and its own
            let regions = idx
                .regions(seq)
                .unwrap_or_else(|| panic!("acknowledged entry {seq} lost its regions"));
            assert!(
                same_regions(&regions, seq),
                "entry {seq}: another's regions"
            );
        }
        // whatever else reads back is the entry's own (a torn regions slot reads as none)
        for seq in idx.head().saturating_sub(capacity) + 1..=idx.head() {
            if let Some(r) = idx.regions(seq) {
                assert!(same_regions(&r, seq), "entry {seq}: another's regions");
            }
        }
        for h in idx.search(&embedding_for(max_acked), K_MAX, &Filter::default()) {
            let e = idx
                .get(h.seq)
                .expect("search returned an entry that does not read back");
            assert_eq!(
                e.embedding,
                moonlens::index::quantize(&embedding_for(h.seq)).0
            );
        }
        assert!(
            idx.report().corrupt <= 1,
            "more than the one slot being written is torn"
        );
    }
    assert!(
        max_acked > 200,
        "the writer made too little progress ({max_acked})"
    );
}

/// Issue 14, fault 2: two daemons on one index both acknowledged the same ids for different
/// frames. The second writer is now refused, naming the holder, until the first closes.
#[test]
fn a_second_writer_is_refused_with_the_holders_pid() {
    let (idx, d) = filled("twowriters", 10, 3);
    for e in [
        Index::open(&d).err().unwrap(),
        Index::open_or_create(&d, DIM, 10, BUNDLE).err().unwrap(),
    ] {
        assert_eq!(e.kind(), moonlens::ErrorKind::IndexLocked, "{e}");
        let e = e.to_string();
        let pid = std::process::id().to_string();
        assert!(e.contains("another process") && e.contains(&pid), "{e}");
    }
    // readers do not need the lock
    assert_eq!(Index::verify(&d).unwrap().entries, 3);
    drop(idx);
    assert_eq!(Index::open(&d).unwrap().len(), 3);
}

fn allocated_bytes(p: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.len(), m.blocks() * 512)
}

/// Issue 14, fault 1: sparse ring files met a full disk as SIGBUS under the mapping. Every
/// byte of both files now has its block from the start, with the files' explicit mode.
#[test]
fn ring_files_have_their_blocks_reserved_and_an_explicit_mode() {
    let (idx, d) = filled("reserved", 64, 1);
    for f in ["index.ml", "thumbs.ml"] {
        let (len, allocated) = allocated_bytes(&d.join(f));
        assert!(
            allocated >= len,
            "{f}: {allocated} of {len} bytes allocated"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "{f}: {mode:o}");
    }
    drop(idx);
}

/// A file system too small for the ring: a clear error at creation naming the bytes needed
/// and free, no half-made files left; a ring that fits works. Needs a tmpfs of its own
/// (root), and says so when it cannot have one.
#[test]
fn a_disk_too_small_for_the_ring_fails_at_creation_with_the_sizes() {
    let mnt = tempdir("smalldisk");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: cannot mount a 1 MiB tmpfs here (needs root); not tested");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let d = mnt.join("index");
    // 100 thumbnail slots of 16 KiB = 1.6 MB > 1 MiB
    let e = Index::open_or_create(&d, DIM, 100, BUNDLE)
        .err()
        .expect("a 1.6 MB ring on a 1 MiB disk must be refused");
    assert_eq!(e.kind(), moonlens::ErrorKind::NoSpace, "{e}");
    let e = e.to_string();
    assert!(
        e.contains("1638400 bytes") && e.contains("free") && e.contains("--capacity"),
        "{e}"
    );
    assert!(!d.join("index.ml").exists() && !d.join("thumbs.ml").exists());
    // 20 slots fit: appends go through, and the files are not sparse
    let idx = Index::open_or_create(&d, DIM, 20, BUNDLE).unwrap();
    for seq in 1..=25u64 {
        idx.append(
            seq as i64,
            "cam0",
            "f",
            &embedding_for(seq),
            &thumb_for(seq),
        )
        .unwrap();
    }
    assert_eq!(idx.len(), 20);
    let (len, allocated) = allocated_bytes(&d.join("thumbs.ml"));
    assert!(allocated >= len);
    drop(idx);
    // a disk filled by someone else after creation cannot touch the reserved ring
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 1 << 20]);
    let idx = Index::open(&d).unwrap();
    assert_eq!((idx.len(), idx.head()), (20, 25));
}

/// Issue 14, fault 8: a valid slot whose seq is u64::MAX made the next id wrap to 0 (a
/// never-written slot's marker). The append is refused instead, and the rest still serves.
#[test]
fn ids_never_wrap() {
    let (idx, d) = filled("wrap", 64, 3);
    drop(idx);
    let seq = u64::MAX;
    let pos = ((seq - 1) % 64) as usize;
    let e = moonlens::index::Entry {
        seq,
        ts_ms: 1,
        source: "cam0".into(),
        label: "last".into(),
        scale: 1.0 / 127.0,
        embedding: vec![1; DIM],
    };
    let ss = moonlens::index::slot::size(DIM);
    let mut slot = vec![0u8; ss];
    moonlens::index::slot::encode(&e, 0, 0, &mut slot);
    let mut bytes = std::fs::read(d.join("index.ml")).unwrap();
    bytes[HEADER_SIZE + pos * ss..HEADER_SIZE + (pos + 1) * ss].copy_from_slice(&slot);
    std::fs::write(d.join("index.ml"), bytes).unwrap();
    let idx = Index::open(&d).unwrap();
    assert_eq!((idx.head(), idx.len()), (u64::MAX, 4));
    let err = idx
        .append(2, "cam0", "next", &embedding_for(9), &thumb_for(9))
        .expect_err("no id after u64::MAX");
    assert_eq!(err.kind(), moonlens::ErrorKind::IdsExhausted, "{err}");
    assert!(err.to_string().contains("every id"), "{err}");
    assert_eq!(idx.len(), 4);
    assert_eq!(idx.get(2).unwrap().label, "f2");
}

/// Issue 14, fault 8: an append whose flush failed left its entry visible and handed its id
/// out again. Now the failed entry is not served and its id stays spent.
#[test]
fn a_failed_flush_is_neither_served_nor_reused() {
    use moonlens::index::FlushFault;
    let (mut idx, _d) = filled("failflush", 16, 5);
    idx.set_durable(true);
    idx.inject_flush_fault(FlushFault::Fail);
    let e = idx
        .append(6, "cam0", "f6", &embedding_for(6), &thumb_for(6))
        .expect_err("the injected failure must reach the caller")
        .to_string();
    assert!(e.contains("flushing entry 6"), "{e}");
    assert!(idx.get(6).is_none());
    assert!(idx
        .search(&embedding_for(6), 16, &Filter::default())
        .iter()
        .all(|h| h.seq != 6));
    assert_eq!(idx.len(), 5);
    let next = idx
        .append(7, "cam0", "f7", &embedding_for(7), &thumb_for(7))
        .unwrap();
    assert_eq!(next, 7, "id 6 is spent");
    assert_eq!((idx.len(), idx.get(7).unwrap().label.as_str()), (6, "f7"));
}

/// Issue 14, fault 7: the write lock was held across msync, so every search waited on the
/// card's latency. A stalled flush (injected, 1.5 s) no longer holds searches up.
#[test]
fn searches_do_not_wait_on_a_slow_flush() {
    use moonlens::index::FlushFault;
    use std::time::{Duration, Instant};
    let (mut idx, _d) = filled("slowflush", 64, 10);
    idx.set_durable(true);
    let idx = Arc::new(idx);
    idx.inject_flush_fault(FlushFault::Delay(Duration::from_millis(1500)));
    let writer = {
        let idx = idx.clone();
        std::thread::spawn(move || {
            idx.append(11, "cam0", "f11", &embedding_for(11), &thumb_for(11))
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let hits = idx.search(&embedding_for(3), 3, &Filter::default());
    let waited = t0.elapsed();
    assert_eq!(hits[0].seq, 3);
    assert!(
        waited < Duration::from_millis(500),
        "search waited {waited:?}"
    );
    assert_eq!(writer.join().unwrap(), 11);
}

/// Issue 14, fault 8: `verify` read both files whole (1.7 GB at the board's ring). It now
/// streams them, and reports exactly what the in-memory checks report: on a healthy index,
/// with flipped slots and thumbnails, and truncated mid-slot.
#[test]
fn streaming_verify_reports_what_the_in_memory_checks_report() {
    let (idx, d) = filled("streamverify", 64, 80);
    drop(idx);
    let ss = moonlens::index::slot::size(DIM);
    let both = |d: &std::path::Path| {
        let streamed = Index::verify(d).unwrap();
        let whole = moonlens::index::verify_bytes(
            &std::fs::read(d.join("index.ml")).unwrap(),
            &std::fs::read(d.join("thumbs.ml")).unwrap(),
        )
        .unwrap();
        // verify_bytes sees index.ml and thumbs.ml only: everything but the side files agrees
        let without_features = moonlens::index::Report {
            with_features: None,
            with_regions: None,
            ..streamed.clone()
        };
        assert_eq!(without_features, whole);
        streamed
    };
    assert_eq!(both(&d).entries, 64);
    flip(&d.join("index.ml"), HEADER_SIZE + 9 * ss + 30);
    flip(&d.join("thumbs.ml"), 20 * moonlens::index::THUMB_SLOT + 3);
    let r = both(&d);
    assert_eq!((r.entries, r.corrupt, r.bad_thumbs), (63, 1, Some(1)));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("index.ml"))
        .unwrap();
    f.set_len((HEADER_SIZE + 50 * ss + ss / 2) as u64).unwrap();
    let r = both(&d);
    assert_eq!((r.entries, r.corrupt), (49, 15), "{r:?}");
}

/// Power loss, not just process death (issue 14): for an append in flight, any subset of
/// the pages it dirtied (index and thumbnail pages, 4 KiB) may have reached the media, in
/// any order. Every such state, reopened: all entries acknowledged before it are served
/// intact (except the one the append evicts when the ring is full), the in-flight entry is
/// either absent or whole, and nothing else is ever returned.
#[test]
fn power_loss_during_an_append_loses_at_most_that_append() {
    const PAGE: usize = 4096;
    let ss = moonlens::index::slot::size(DIM);
    // an in-flight slot that straddles two pages, and one that evicts the oldest entry
    let straddling = (10..60u64)
        .find(|&b| (HEADER_SIZE + b as usize * ss) % PAGE + ss > PAGE)
        .unwrap();
    for (name, capacity, before) in [("plsparse", 64u64, straddling), ("plwrap", 16, 16)] {
        let (idx, d) = filled(name, capacity, before);
        drop(idx);
        let read = |f: &str| std::fs::read(d.join(f)).unwrap();
        let (old_i, old_t) = (read("index.ml"), read("thumbs.ml"));
        let idx = Index::open(&d).unwrap();
        let seq = before + 1;
        // a thumbnail over three pages
        let big: Vec<u8> = (0..12_000u64).map(|i| (i * 7 + seq) as u8).collect();
        idx.append(
            seq as i64 * 1000,
            "cam0",
            &format!("f{seq}"),
            &embedding_for(seq),
            &big,
        )
        .unwrap();
        drop(idx);
        let (new_i, new_t) = (read("index.ml"), read("thumbs.ml"));
        let dirty = |a: &[u8], b: &[u8]| -> Vec<usize> {
            (0..a.len().div_ceil(PAGE))
                .filter(|p| {
                    a[p * PAGE..((p + 1) * PAGE).min(a.len())]
                        != b[p * PAGE..((p + 1) * PAGE).min(b.len())]
                })
                .collect()
        };
        let (di, dt) = (dirty(&old_i, &new_i), dirty(&old_t, &new_t));
        let pages = di.len() + dt.len();
        assert!((4..=8).contains(&pages), "{di:?} {dt:?}");
        eprintln!(
            "{name}: {pages} dirty pages, {} power-loss states",
            1u32 << pages
        );
        let evicted = (before == capacity).then_some(1u64);
        for mask in 0u32..(1 << pages) {
            let mut i_bytes = old_i.clone();
            let mut t_bytes = old_t.clone();
            for (bit, &p) in di.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    let r = p * PAGE..((p + 1) * PAGE).min(new_i.len());
                    i_bytes[r.clone()].copy_from_slice(&new_i[r]);
                }
            }
            for (bit, &p) in dt.iter().enumerate() {
                if mask & (1 << (di.len() + bit)) != 0 {
                    let r = p * PAGE..((p + 1) * PAGE).min(new_t.len());
                    t_bytes[r.clone()].copy_from_slice(&new_t[r]);
                }
            }
            let state = tempdir(&format!("{name}-{mask}"));
            std::fs::write(state.join("index.ml"), &i_bytes).unwrap();
            std::fs::write(state.join("thumbs.ml"), &t_bytes).unwrap();
            let idx = Index::open(&state).unwrap();
            for s in 1..=before {
                if Some(s) == evicted {
                    continue;
                }
                let (e, thumb) = idx
                    .get_with_thumb(s)
                    .unwrap_or_else(|| panic!("{name} mask {mask}: entry {s} lost"));
                assert_eq!(e.label, format!("f{s}"));
                assert_eq!(
                    thumb.unwrap(),
                    thumb_for(s),
                    "{name} mask {mask}: thumbnail {s}"
                );
            }
            if let Some((e, thumb)) = idx.get_with_thumb(seq) {
                assert_eq!(e.label, format!("f{seq}"), "{name} mask {mask}");
                if let Some(t) = thumb {
                    assert_eq!(t, big, "{name} mask {mask}: a thumbnail is whole or absent");
                }
            }
            // whatever a search returns is a whole entry of its own id
            for h in idx.search(&embedding_for(seq), 100, &Filter::default()) {
                let e = idx.get(h.seq).expect("a hit is a valid entry");
                assert_eq!(e.label, format!("f{}", h.seq), "{name} mask {mask}");
            }
            drop(idx);
            let _ = std::fs::remove_dir_all(&state);
        }
    }
}

/// Camera-like embeddings: 40 scenes (distinct directions), each frame a scene plus a little
/// noise (cosine ~0.95 to its scene), so the ring is clusters of near-duplicates.
fn scene_frame(seq: u64) -> Vec<f32> {
    let scene = embedding_for(10_000_000 + seq % 40);
    let noise = embedding_for(seq);
    let v: Vec<f32> = scene.iter().zip(&noise).map(|(s, n)| s + 0.3 * n).collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

/// Issue 17: the two-stage search equals the exact one when it may keep every entry as a
/// candidate, filters included; on clusters of near-duplicates it finds the exact top 10
/// from a tenth of the ring; the codes exist once the ring holds `LEARN_FROM` entries
/// (learned at open, or by the append that reaches it), and every mode is reachable.
#[test]
fn two_stage_search_agrees_with_the_exact_scan() {
    use moonlens::index::codes::{Codes, LEARN_FROM};
    use moonlens::index::search::{top_k, top_k_two_stage, Mode};
    let n = LEARN_FROM + 904; // 5,000
    let d = tempdir("two-stage");
    let mut idx = Index::open_or_create(&d, DIM, n, BUNDLE).unwrap();
    idx.set_durable(false);
    for seq in 1..=n {
        let src = if seq % 3 == 0 { "cam1" } else { "cam0" };
        assert_eq!(
            idx.two_stage_ready(),
            seq > LEARN_FROM,
            "before entry {seq}"
        );
        idx.append(seq as i64 * 1000, src, "f", &scene_frame(seq), b"t")
            .unwrap();
    }
    assert!(idx.two_stage_ready());
    let bytes = std::fs::read(d.join("index.ml")).unwrap();
    let h = *idx.header();
    let slots = &bytes[HEADER_SIZE..];
    let codes = Codes::build(slots, &h);
    assert!(codes.ready());
    // fewer entries than LEARN_FROM: no directions, and the two stages are the exact scan
    let short = Codes::build(
        &slots[..(LEARN_FROM as usize - 1) * h.slot_size as usize],
        &{
            let mut h = h;
            h.capacity = LEARN_FROM - 1;
            h
        },
    );
    assert!(!short.ready());
    let since = Filter {
        since_ms: Some(2_500_000),
        source: Some("cam1".into()),
        ..Filter::default()
    };
    let mut found = 0;
    for qseed in 0..20u64 {
        // a query near one scene, as a text query lands near the frames it describes
        let q = scene_frame(7_000_000 + qseed * 41);
        for f in [Filter::default(), since.clone()] {
            let exact = top_k(slots, &h, &q, 10, &f);
            assert_eq!(
                top_k_two_stage(slots, &h, &codes, &q, 10, &f, n as usize),
                exact
            );
            assert!(exact.iter().all(|x| f.since_ms.is_none() || x.seq >= 2500));
        }
        let exact = top_k(slots, &h, &q, 10, &Filter::default());
        let two = top_k_two_stage(slots, &h, &codes, &q, 10, &Filter::default(), 500);
        found += exact
            .iter()
            .filter(|e| two.iter().any(|t| t.seq == e.seq))
            .count();
        for mode in [Mode::Exact, Mode::Auto] {
            // a ring this small is searched exactly unless asked otherwise
            assert_eq!(idx.search_mode(&q, 10, &Filter::default(), mode), exact);
        }
        assert_eq!(
            idx.search_mode(&q, 10, &Filter::default(), Mode::TwoStage)
                .len(),
            10
        );
    }
    // a tenth of the ring as candidates, 125 near-duplicates a scene
    assert!(found >= 195, "{found} of 200");
    // reopened: no directions until they are learned (the daemon does it on its own thread)
    drop(idx);
    let idx = Index::open_or_create(&d, DIM, n, BUNDLE).unwrap();
    assert!(!idx.two_stage_ready());
    let q = scene_frame(7_000_000);
    let exact = idx.search_mode(&q, 10, &Filter::default(), Mode::Exact);
    assert_eq!(
        idx.search_mode(&q, 10, &Filter::default(), Mode::TwoStage),
        exact
    );
    idx.learn_codes();
    assert!(idx.two_stage_ready());
    assert_eq!(
        idx.search_mode(&q, 10, &Filter::default(), Mode::TwoStage),
        exact
    );
}
