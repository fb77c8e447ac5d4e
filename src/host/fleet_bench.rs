//! `moonlens-host bench fleet --db URL`: the fleet database against the board, same run,
//! same entries (real embeddings of the samples and noisy near-duplicates, as `bench
//! search`): sync throughput (entries/s: the sync's batches, from a ring in memory); then for
//! each approximate index kind (IVFFlat at four `probes`, HNSW at four `ef_search`) its build
//! and its search latency and recall@10 beside the board's own exact scan and the database's
//! exact scan. Works in a database of its own, dropped at the end.

use crate::encoder::Encoder;
use crate::error::Result;
use crate::fleet::ann::{self, Ann, Policy};
use crate::fleet::{search, sync, Db};
use crate::host::bench::{percentile, real_embeddings, PHRASES};
use crate::index::search::{top_k, Filter};
use crate::index::slot;
use crate::index::snapshot::Read;
use std::path::Path;
use std::time::Instant;

/// The `hnsw.ef_search` values measured.
const EFS: [usize; 4] = [40, 100, 400, 1000];
/// The `ivfflat.probes` values measured, as multiples of the default (sqrt(lists)).
const PROBES_X: [f64; 4] = [0.5, 1.0, 2.0, 4.0];

/// What one setting of an index measured, a value a query.
#[derive(Clone, Default)]
struct Walk {
    ms: Vec<f64>,
    /// recall@10 against the board's exact top 10
    recall: Vec<f64>,
    /// the share of hits that are views of a scene in the exact top 10 (on near-duplicates,
    /// what a person looking at the frames sees)
    scene: Vec<f64>,
    /// exact 10th score minus the index's 10th
    gap: Vec<f64>,
}

/// One query's references: the board's exact top 10 and the database's exact answer.
struct Truth {
    text: String,
    board: Vec<u64>,
    exact: search::Answer,
}

pub struct Options<'a> {
    pub url: &'a str,
    pub images: &'a Path,
    pub entries: u64,
    pub queries: usize,
    /// The approximate indexes to build and measure, in turn.
    pub kinds: Vec<Ann>,
    pub json: bool,
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
    let (header, slots) =
        crate::host::bench::near_duplicate_ring(&base, o.entries as usize, enc.bundle().id);
    let ss = slot::size(dim);
    let mut db = Db::connect_config(cfg)?;
    let board = sync::Board {
        name: "bench",
        bundle_name: Some(&enc.bundle().manifest.name),
        thumbs: false,
        ann_index: Policy::Skip,
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
    let qs: Vec<(String, Vec<f32>)> = (0..o.queries.max(3))
        .map(|i| {
            let t = PHRASES[i % PHRASES.len()];
            enc.embed_text(t).map(|v| (t.to_string(), v))
        })
        .collect::<Result<_>>()?;
    // the board's exact scan and the database's exact scan, in turn for every query (the
    // first two warm up)
    let (mut board_ms, mut exact_ms, mut agree) = (vec![], vec![], vec![]);
    let mut truths = Vec::new();
    for (i, (text, v)) in qs.iter().enumerate() {
        let t = Instant::now();
        let board: Vec<u64> = top_k(&slots, &header, v, 10, &Filter::default())
            .iter()
            .map(|h| h.seq)
            .collect();
        let b = t.elapsed().as_secs_f64() * 1e3;
        let exact = search::search(&mut db, enc, &query(text, true, None, None))?;
        if i >= 2 {
            board_ms.push(b);
            // the database's own time: the answer's, less the query's encoding
            exact_ms.push(exact.ms - exact.encode_ms);
            agree.push(overlap(&exact.hits, &board));
            truths.push(Truth {
                text: text.clone(),
                board,
                exact,
            });
        }
    }
    board_ms.sort_by(f64::total_cmp);
    exact_ms.sort_by(f64::total_cmp);
    let board_p50 = percentile(&board_ms, 0.5);
    let exact_p50 = percentile(&exact_ms, 0.5);
    let mut out = serde_json::json!({"entries": o.entries, "dim": dim,
        "sync_entries_per_s": sync_eps, "sync_s": load_s,
        "board_exact_p50_ms": board_p50, "db_exact_p50_ms": exact_p50,
        "db_exact_vs_board": exact_p50 / board_p50, "db_exact_recall_at_10": mean(&agree)});
    if !o.json {
        eprintln!(
            "{} entries: sync {sync_eps:.0} entries/s ({load_s:.1} s); search p50: board exact \
             {board_p50:.2} ms, database exact {exact_p50:.2} ms ({:.1}x the board; same top 10 \
             as the board: {:.3})",
            o.entries,
            exact_p50 / board_p50,
            mean(&agree),
        );
    }
    let bundle = sync::hex(&enc.bundle().id);
    let scenes = base.len() as u64;
    for kind in &o.kinds {
        let t = Instant::now();
        ann::ensure(&mut db, &bundle, dim, Policy::Use(*kind))?;
        let build_s = t.elapsed().as_secs_f64();
        let lists = search::present(&mut db, &search::Query::default())?
            .into_iter()
            .find(|b| b.bundle_id == bundle)
            .and_then(|b| b.ann_lists)
            .unwrap_or(1);
        let settings: Vec<(Option<usize>, Option<usize>)> = match kind {
            Ann::IvfFlat => PROBES_X
                .iter()
                .map(|x| {
                    let p = (ann::probes_for(lists, false) as f64 * x).round().max(1.0);
                    (None, Some(p as usize))
                })
                .collect(),
            Ann::Hnsw { .. } => EFS.iter().map(|&e| (Some(e), None)).collect(),
        };
        let mut walks = vec![Walk::default(); settings.len()];
        for t in &truths {
            for (w, &(ef, probes)) in walks.iter_mut().zip(&settings) {
                let a = search::search(&mut db, enc, &query(&t.text, false, ef, probes))?;
                w.ms.push(a.ms - a.encode_ms);
                w.recall.push(overlap(&a.hits, &t.board));
                // the scene (sample view) each hit copies: entry i copies base[i % scenes]
                let scene = |id: u64| (id - 1) % scenes;
                let want: Vec<u64> = t.board.iter().map(|&s| scene(s)).collect();
                let same = a
                    .hits
                    .iter()
                    .filter(|x| want.contains(&scene(x.id)))
                    .count();
                w.scene.push(same as f64 / a.hits.len().max(1) as f64);
                let tenth = |hits: &[search::Hit]| hits.last().map_or(0.0, |x| x.score as f64);
                w.gap.push(tenth(&t.exact.hits) - tenth(&a.hits));
            }
        }
        let mut rows = vec![];
        for (w, &(ef, probes)) in walks.iter_mut().zip(&settings) {
            w.ms.sort_by(f64::total_cmp);
            let p50 = percentile(&w.ms, 0.5);
            let (recall, scene, gap) = (mean(&w.recall), mean(&w.scene), mean(&w.gap));
            let setting = match (ef, probes) {
                (Some(e), _) => format!("ef_search {e}"),
                (_, Some(p)) => format!("probes {p}"),
                _ => String::new(),
            };
            rows.push(serde_json::json!({"setting": setting, "p50_ms": p50,
                "p99_ms": percentile(&w.ms, 0.99), "vs_board": p50 / board_p50,
                "recall_at_10": recall, "scene_recall_at_10": scene, "score_gap_at_10": gap}));
            if !o.json {
                eprintln!(
                    "  {} {setting}: p50 {p50:.2} ms ({:.2}x the board), recall@10 {recall:.3}, \
                     hits of the exact top 10's scenes {scene:.3}, 10th hit's score {gap:.4} \
                     below the exact 10th",
                    kind.kind(),
                    p50 / board_p50
                );
            }
        }
        let plan = search::explain(&mut db, &bundle, dim, 10, false)?;
        let mut k = serde_json::json!({"build_s": build_s, "settings": rows,
            "used": plan.contains(&format!("moonlens_{}_", kind.kind()))});
        match kind {
            Ann::IvfFlat => k["lists"] = lists.into(),
            Ann::Hnsw { m, ef_construction } => {
                k["m"] = (*m).into();
                k["ef_construction"] = (*ef_construction).into();
            }
        }
        if !o.json {
            eprintln!("  {} built in {build_s:.1} s", kind.kind());
        }
        out[kind.kind()] = k;
    }
    println!("{out}");
    Ok(())
}

fn query(text: &str, exact: bool, ef: Option<usize>, probes: Option<usize>) -> search::Query<'_> {
    search::Query {
        text,
        k: 10,
        exact,
        ef,
        probes,
        ..Default::default()
    }
}

/// The share of `of` among `hits`.
fn overlap(hits: &[search::Hit], of: &[u64]) -> f64 {
    of.iter()
        .filter(|s| hits.iter().any(|x| x.id == **s))
        .count() as f64
        / of.len().max(1) as f64
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}
