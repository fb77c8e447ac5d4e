//! `moonlens-host fuzz TARGET --seconds N`: mutation fuzzing on the stable toolchain, no
//! extra crates. Each target starts from real, valid inputs (seeds), mutates them (byte
//! flips, inserts, deletes, splices, truncations, runs of 0x00 / 0xff) with a seeded
//! xorshift generator, and runs them through the real code; a panic is a crash, its input is
//! written to `CRASH_DIR/<target>-<n>` and counted. Targets:
//!
//! - `protocol`: a line → `protocol::parse` → the daemon's request handler (the default
//!   bundle's encoder over a small real index) → a rendered reply, which must end in `\n`.
//! - `index`: index and thumbnail files → `Index::open` (recovery) → `append` → `search`,
//!   `get`, `verify`; errors are fine, panics are not, and an opened index must serve.
//!
//! The tests/fuzz cargo-fuzz targets (nightly) remain for longer, coverage-guided runs.

use crate::daemon::Shared;
use crate::encoder::Encoder;
use crate::error::{Context, Result};
use crate::host::crash::{embedding_for, thumb_for};
use crate::index::search::Filter;
use crate::index::Index;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub seconds: f64,
    pub executions: u64,
    pub crashes: u64,
    pub errors: u64,
}

impl Report {
    /// Counts one execution's outcome: `Ok(true)` an error answer, `Err` a panic (a crash,
    /// whose input is saved).
    fn count(&mut self, out: std::thread::Result<bool>, crash_dir: &Path, input: &[u8]) {
        self.executions += 1;
        match out {
            Ok(err) => self.errors += err as u64,
            Err(_) => {
                self.crashes += 1;
                save_crash(crash_dir, &self.target, self.crashes, input);
            }
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            2 => b.insert(at, rng.next() as u8),
            3 if at < b.len() => {
                b.remove(at);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len());
                let n = rng.below(other.len() - from + 1).min(64);
                b.splice(at..at, other[from..from + n].iter().copied());
            }
            5 => b.truncate(at),
            _ => {
                let fill = if rng.below(2) == 0 { 0 } else { 0xff };
                let n = rng.below(32);
                let end = (at + n).min(b.len());
                b[at..end].fill(fill);
            }
        }
    }
    b.truncate(max_len);
    b
}

fn save_crash(dir: &Path, target: &str, n: u64, input: &[u8]) {
    let _ = std::fs::create_dir_all(dir);
    let p = dir.join(format!("{target}-{n}"));
    if std::fs::write(&p, input).is_ok() {
        log::error!("crash input written to {}", p.display());
    }
}

/// Runs `target` for `seconds` from `seed`; crashes are saved under `crash_dir`.
pub fn run(target: &str, seconds: f64, seed: u64, crash_dir: &Path) -> Result<Report> {
    match target {
        "protocol" => protocol(seconds, seed, crash_dir),
        "index" => index(seconds, seed, crash_dir),
        other => Err(crate::error::Error::new(format!(
            "unknown fuzz target {other:?}: use protocol or index"
        ))),
    }
}

/// While alive, a panic is reported by the run's count, not printed once per input.
struct QuietPanics;

impl QuietPanics {
    fn new() -> QuietPanics {
        std::panic::set_hook(Box::new(|_| {}));
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        let _ = std::panic::take_hook();
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("moonlens-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn protocol(seconds: f64, seed: u64, crash_dir: &Path) -> Result<Report> {
    let bundle = crate::bundle::Bundle::open("models/default")?;
    let encoder = Encoder::load(&bundle)?;
    let dir = scratch("protocol");
    let index = Index::open_or_create(&dir, encoder.dim(), 64, bundle.id)?;
    for seq in 1..=8u64 {
        let mut e = embedding_for(seq);
        e.resize(encoder.dim(), 0.01);
        index.append(seq as i64, "cam0", &format!("f{seq}"), &e, &thumb_for(seq))?;
    }
    let shared = std::sync::Arc::new(Shared::new(encoder, index, "cam0", Duration::from_secs(60)));
    let seeds: Vec<Vec<u8>> = [
        "search a rabbit k=3",
        "search 兔子 since=10m source=cam0",
        "similar 3 k=2",
        "thumb 4",
        "status",
        "help",
        "watch add the moon",
        "watch list",
        "watch del 1",
        r#"{"id":7,"cmd":"search","text":"a duck","k":2,"since":"1h"}"#,
        r#"{"id":1,"cmd":"similar","frame":2}"#,
        r#"{"cmd":"thumb","frame":5}"#,
        r#"{"id":3,"cmd":"watch_add","text":"月亮"}"#,
        r#"{"cmd":"watch_del","watch":1}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut rng = Rng(seed | 1);
    let mut rep = Report {
        target: "protocol".into(),
        ..Default::default()
    };
    let _quiet = QuietPanics::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds {
        let line = mutate(&mut rng, &seeds, crate::protocol::MAX_LINE);
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (reply, _) = shared.answer(&line);
            assert!(
                reply.ends_with('\n'),
                "reply without its newline: {reply:?}"
            );
            reply.starts_with("ERROR") || reply.contains("\"ok\":false")
        }));
        rep.count(out, crash_dir, &line);
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rep)
}

fn index(seconds: f64, seed: u64, crash_dir: &Path) -> Result<Report> {
    const DIM: usize = 16;
    let base = scratch("index-base");
    let regions = crate::index::RegionLayout {
        count: 2,
        width: 4,
        space_id: [4u8; 32],
    };
    {
        let expect = crate::index::Expect {
            dim: DIM,
            bundle_id: [3u8; 32],
            layout: crate::index::Layout::NONE,
            regions,
        };
        let idx = Index::open_or_create_with(&base, 24, &expect)?;
        for seq in 1..=30u64 {
            let mut e = embedding_for(seq);
            e.truncate(DIM);
            let r: Vec<Vec<f32>> = e.chunks(4).take(2).map(|c| c.to_vec()).collect();
            let t = thumb_for(seq);
            idx.append_frame(
                seq as i64,
                "cam0",
                &format!("f{seq}"),
                &e,
                &t,
                None,
                Some(&r),
            )?;
        }
    }
    let seed_index = std::fs::read(base.join("index.ml")).context("fuzz scratch files")?;
    let seed_thumbs = std::fs::read(base.join("thumbs.ml")).context("fuzz scratch files")?;
    let seed_regions = std::fs::read(base.join("regions.ml")).context("fuzz scratch files")?;
    let work = scratch("index");
    std::fs::create_dir_all(&work).context("fuzz scratch files")?;
    let mut rng = Rng(seed | 1);
    let mut rep = Report {
        target: "index".into(),
        ..Default::default()
    };
    let query: Vec<f32> = embedding_for(5).into_iter().take(DIM).collect();
    let rq = crate::index::search::RegionQuery {
        part: query[..4].to_vec(),
        lambda: 0.5,
    };
    let _quiet = QuietPanics::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < seconds {
        let ib = mutate(&mut rng, std::slice::from_ref(&seed_index), 1 << 20);
        let tb = if rng.below(4) == 0 {
            mutate(&mut rng, std::slice::from_ref(&seed_thumbs), 1 << 20)
        } else {
            seed_thumbs.clone()
        };
        let rb = if rng.below(4) == 0 {
            mutate(&mut rng, std::slice::from_ref(&seed_regions), 1 << 20)
        } else {
            seed_regions.clone()
        };
        let _ = std::fs::remove_file(work.join("quarantine.ml"));
        std::fs::write(work.join("index.ml"), &ib).context("fuzz scratch files")?;
        std::fs::write(work.join("thumbs.ml"), &tb).context("fuzz scratch files")?;
        std::fs::write(work.join("regions.ml"), &rb).context("fuzz scratch files")?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = Index::verify(&work);
            let Ok(idx) = Index::open(&work) else {
                return true;
            };
            let hits = idx.search(&query, 10, &Filter::default());
            for h in &hits {
                assert!(idx.get(h.seq).is_some(), "a hit must be a valid entry");
            }
            // regions read from damaged bytes: the entry's own or none, never garbage
            let mode = crate::index::search::Mode::Exact;
            for h in idx.search_with(&query, 10, &Filter::default(), mode, Some(&rq)) {
                assert!(h.score.is_finite(), "a region score must be a number");
                if let Some(r) = idx.regions(h.seq) {
                    assert!(r.len() <= 2 && r.iter().all(|v| v.iter().all(|x| x.is_finite())));
                }
            }
            let next = idx.append(99, "cam1", "new", &query, b"jpeg");
            if let Ok(seq) = next {
                assert_eq!(idx.get(seq).map(|e| e.label), Some("new".to_string()));
            }
            next.is_err()
        }));
        rep.count(out, crash_dir, &ib);
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&base);
    Ok(rep)
}
