//! `moonlens-host bench fleet --db URL`: the fleet database against the board, same run,
//! same entries (real embeddings of the samples and noisy near-duplicates, as `bench
//! search`): sync throughput (entries/s: the sync's batches, from a ring in memory), the HNSW
//! build, and search latency of the database's HNSW walk and exact scan beside the board's
//! own exact scan, with the HNSW walk's recall@10 against the board. Works in a database of
//! its own, dropped at the end.

use crate::encoder::Encoder;
use crate::error::Result;
use crate::fleet::{search, sync, Db};
use crate::host::bench::{percentile, real_embeddings, PHRASES};
use crate::index::search::{top_k, Filter};
use crate::index::snapshot::Read;
use crate::index::{quantize, slot, Entry, Header};
use std::path::Path;
use std::time::Instant;

/// The `hnsw.ef_search` values measured.
const EFS: [usize; 4] = [40, 100, 400, 1000];

/// What the HNSW walk at one ef_search measured, a value a query.
#[derive(Clone, Default)]
struct Walk {
    ms: Vec<f64>,
    /// recall@10 against the board's exact top 10
    recall: Vec<f64>,
    /// the share of hits that are views of a scene in the exact top 10 (on near-duplicates,
    /// what a person looking at the frames sees)
    scene: Vec<f64>,
    /// exact 10th score minus the walk's 10th
    gap: Vec<f64>,
}

pub struct Options<'a> {
    pub url: &'a str,
    pub images: &'a Path,
    pub entries: u64,
    pub queries: usize,
    /// Build the HNSW index and time its searches (hours at 10 million rows on two cores).
    pub hnsw: bool,
    pub json: bool,
    /// The graph's build settings.
    pub graph: sync::Hnsw,
    /// Leave the benchmark's database behind (its name on stderr).
    pub keep: bool,
}

pub fn run(enc: &Encoder, o: &Options) -> Result<()> {
    let mut cfg = crate::fleet::config(o.url)?;
    let name = format!("moonlens_bench_{}", std::process::id());
    let mut admin = Db::connect_config(&cfg)?;
    admin
        .client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .map_err(|e| admin.error("creating the benchmark's database", &e))?;
    cfg.dbname(&name);
    let r = measure(enc, o, &cfg);
    if o.keep {
        eprintln!("kept the database {name} for inspection");
        return r;
    }
    admin
        .client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .map_err(|e| admin.error("dropping the benchmark's database", &e))?;
    r
}

fn measure(enc: &Encoder, o: &Options, cfg: &postgres::Config) -> Result<()> {
    // the board's ring in memory (a million entries' files would reserve 16 GB of
    // thumbnail slots): its slots for the board's own scan, decoded per batch for the sync
    let base = real_embeddings(enc, o.images)?;
    let dim = enc.dim();
    let header = Header {
        version: crate::index::VERSION,
        dim: dim as u32,
        capacity: o.entries,
        slot_size: slot::size(dim) as u32,
        thumb_slot: crate::index::THUMB_SLOT as u32,
        bundle_id: enc.bundle().id,
        created_ms: 1_790_000_000_000,
    };
    let ss = slot::size(dim);
    let mut slots = vec![0u8; o.entries as usize * ss];
    let mut rng = crate::host::train::linalg::Rng::new(5);
    let sigma = 0.25 / (dim as f64).sqrt();
    for (i, s) in slots.chunks_exact_mut(ss).enumerate() {
        let b = &base[i % base.len()];
        let noisy: Vec<f32> = b
            .iter()
            .map(|x| {
                let g: f64 = (0..4).map(|_| rng.uniform() - 0.5).sum::<f64>() * 3f64.sqrt();
                x + (g * sigma) as f32
            })
            .collect();
        let n = noisy.iter().map(|x| x * x).sum::<f32>().sqrt();
        let unit: Vec<f32> = noisy.iter().map(|x| x / n).collect();
        let (q, scale) = quantize(&unit);
        let e = Entry {
            seq: i as u64 + 1,
            ts_ms: 1_790_000_000_000 + i as i64 * 100,
            source: ["cam-a", "cam-b", "cam-c"][i % 3].into(),
            label: "bench".into(),
            scale,
            embedding: q,
        };
        slot::encode(&e, 0, 0, s);
    }
    let mut db = Db::connect_config(cfg)?;
    let board = sync::Board {
        name: "bench",
        bundle_name: Some(&enc.bundle().manifest.name),
        thumbs: false,
        ann_index: None,
    };
    let t = Instant::now();
    let target = sync::Target::new(&mut db, &header, &board)?;
    let mut progress = crate::host::progress::Progress::new("sync", o.entries as usize);
    let mut sent = 0;
    for batch in slots.chunks(sync::BATCH * ss) {
        let reads: Vec<Read> = batch
            .chunks_exact(ss)
            .filter_map(|b| match slot::decode(b, dim) {
                slot::Slot::Valid { entry, .. } => Some(Read { entry, thumb: None }),
                _ => None,
            })
            .collect();
        sent += target.send(&mut db, &reads)?;
        progress.inc(reads.len());
    }
    let load_s = t.elapsed().as_secs_f64();
    let sync_eps = sent as f64 / load_s;
    let t = Instant::now();
    if o.hnsw {
        target.ensure_ann_index(&mut db, o.graph)?;
    }
    let build_s = t.elapsed().as_secs_f64();
    let qs: Vec<(String, Vec<f32>)> = (0..o.queries.max(3))
        .map(|i| {
            let t = PHRASES[i % PHRASES.len()];
            enc.embed_text(t).map(|v| (t.to_string(), v))
        })
        .collect::<Result<_>>()?;
    // the board's exact scan, the database's exact scan and its HNSW walk at each ef, in
    // turn for every query, so all see the same machine state
    let efs: &[usize] = if o.hnsw { &EFS } else { &[] };
    let (mut board_ms, mut exact_ms) = (vec![], vec![]);
    // per ef: latencies, recall@10 against the board, score gap at 10 to the exact scan
    let mut walk: Vec<Walk> = vec![Walk::default(); efs.len()];
    let mut exact_agree = vec![];
    for (i, (text, v)) in qs.iter().enumerate() {
        let t = Instant::now();
        let truth = top_k(&slots, &header, v, 10, &Filter::default());
        let b = t.elapsed().as_secs_f64() * 1e3;
        let q = |exact, ef| search::Query {
            text,
            k: 10,
            exact,
            ef,
            ..Default::default()
        };
        let ex = search::search(&mut db, enc, &q(true, None))?;
        let overlap = |hits: &[search::Hit], of: &[u64]| {
            of.iter()
                .filter(|s| hits.iter().any(|x| x.id == **s))
                .count() as f64
                / of.len().max(1) as f64
        };
        let truth_ids: Vec<u64> = truth.iter().map(|h| h.seq).collect();
        // the database's own time: the answer's, less the query's encoding
        if i >= 2 {
            board_ms.push(b);
            exact_ms.push(ex.ms - ex.encode_ms);
            exact_agree.push(overlap(&ex.hits, &truth_ids));
        }
        for (j, &ef) in efs.iter().enumerate() {
            let h = search::search(&mut db, enc, &q(false, Some(ef)))?;
            if i >= 2 {
                let w = &mut walk[j];
                w.ms.push(h.ms - h.encode_ms);
                w.recall.push(overlap(&h.hits, &truth_ids));
                // the scene (sample view) each hit is a noisy copy of: entry i copies
                // base[i % base.len()]
                let scene = |id: u64| (id - 1) % base.len() as u64;
                let scenes: Vec<u64> = truth.iter().map(|t| scene(t.seq)).collect();
                let same = h
                    .hits
                    .iter()
                    .filter(|x| scenes.contains(&scene(x.id)))
                    .count();
                w.scene.push(same as f64 / h.hits.len().max(1) as f64);
                // how much worse the walk's 10th hit scores than the exact 10th: near-
                // duplicate frames differ in the third decimal, so a low recall with a tiny
                // gap means equally good frames
                let tenth = |hits: &[search::Hit]| hits.last().map_or(0.0, |x| x.score as f64);
                w.gap.push(tenth(&ex.hits) - tenth(&h.hits));
            }
        }
    }
    board_ms.sort_by(f64::total_cmp);
    exact_ms.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let board_p50 = percentile(&board_ms, 0.5);
    let exact_p50 = percentile(&exact_ms, 0.5);
    let mut out = serde_json::json!({"entries": o.entries, "dim": enc.dim(),
        "hnsw_m": o.graph.m, "hnsw_ef_construction": o.graph.ef_construction,
        "sync_entries_per_s": sync_eps, "sync_s": load_s, "hnsw_build_s": build_s,
        "board_exact_p50_ms": board_p50, "db_exact_p50_ms": exact_p50,
        "db_exact_vs_board": exact_p50 / board_p50});
    if !o.json {
        eprintln!(
            "{} entries: sync {sync_eps:.0} entries/s ({load_s:.1} s), HNSW build {:.1} s; \
             search p50: board exact {board_p50:.2} ms, database exact {exact_p50:.2} ms ({:.1}x \
             the board; same top 10 as the board: {:.3})",
            o.entries,
            build_s,
            exact_p50 / board_p50,
            mean(&exact_agree),
        );
    }
    let mut rows = vec![];
    out["db_exact_recall_at_10"] = mean(&exact_agree).into();
    for (&ef, w) in efs.iter().zip(walk.iter_mut()) {
        let ms = &mut w.ms;
        ms.sort_by(f64::total_cmp);
        let p50 = percentile(ms, 0.5);
        let (recall, gap, scene) = (mean(&w.recall), mean(&w.gap), mean(&w.scene));
        rows.push(
            serde_json::json!({"ef": ef, "p50_ms": p50, "p99_ms": percentile(ms, 0.99),
            "vs_board": p50 / board_p50, "recall_at_10": recall, "scene_recall_at_10": scene, "score_gap_at_10": gap}),
        );
        if !o.json {
            eprintln!(
                "  HNSW ef_search {ef}: p50 {p50:.2} ms ({:.2}x the board), recall@10 {recall:.3}, \
                 hits of the exact top 10's scenes {scene:.3}, 10th hit's score {gap:.4} below the \
                 exact 10th",
                p50 / board_p50
            );
        }
    }
    if o.hnsw {
        out["db_hnsw"] = rows.into();
        let plan = search::explain(&mut db, &sync::hex(&enc.bundle().id), enc.dim(), 10, false)?;
        out["db_hnsw_used"] = plan.contains("moonlens_hnsw_").into();
    }
    println!("{out}");
    Ok(())
}
