//! moonlens-host: the workstation companion (training, export, evaluation, benchmarks). The
//! command line is defined in the library (`moonlens::host::cli`); this file only runs it.
use clap::Parser;
use moonlens::bundle::Bundle;
use moonlens::encoder::Encoder;
#[cfg(feature = "fleet")]
use moonlens::host::cli::AnnKind;
use moonlens::host::cli::{Bench, Cli, Cmd, Train};
use moonlens::host::eval;
use moonlens::host::train::{self, Config};
use moonlens::Result;
use std::path::Path;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run(Cli::parse().cmd) {
        eprintln!("moonlens-host: {e}");
        std::process::exit(1);
    }
}

fn encoder(bundle: &Path) -> Result<Encoder> {
    Encoder::load(&Bundle::open(bundle)?)
}

/// The last stdout line of `train` and `distill`.
fn print_run(out: &Path, history: &[train::Epoch], best_epoch: usize) {
    let best = history.iter().find(|e| e.epoch == best_epoch);
    println!(
        "{}",
        serde_json::json!({"heads": out, "best_epoch": best_epoch, "epochs": history.len(),
            "best": best, "curve": out.join("curve.png")})
    );
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Eval {
            bundle,
            pairs,
            regions,
            region_cells,
        } if !regions.is_empty() => {
            let enc = Encoder::load_with_regions(&Bundle::open(&bundle)?)?;
            let settings: Vec<_> = regions
                .iter()
                .map(|&lambda| eval::RegionScoring {
                    lambda,
                    cells: region_cells,
                })
                .collect();
            for (s, r) in eval::eval_regions(&enc, &pairs, &settings)? {
                println!("{}", serde_json::json!({"regions": s, "recall": r}));
            }
        }
        Cmd::Eval { bundle, pairs, .. } => {
            let r = moonlens::host::eval::eval(&encoder(&bundle)?, &pairs)?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
        }
        Cmd::Parity { bundle } => {
            let r = moonlens::host::parity::check(&encoder(&bundle)?, Path::new("."))?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
            if !r.ok() {
                moonlens::bail!(
                    "tract does not reproduce the converter's outputs on this bundle (bars: \
                     cosine >= {} vs onnxruntime, identical tokens, preprocessing within 1e-3)",
                    moonlens::host::parity::SAME_FILE_COS
                );
            }
        }
        Cmd::Train(t) => train(t)?,
        Cmd::Distill {
            teacher,
            student,
            char_buckets,
            char_trigram_buckets,
            ranking,
            ranking_temperature,
            training,
        } => {
            if !(0.0..=10.0).contains(&ranking) || ranking_temperature <= 0.0 {
                moonlens::bail!(
                    "--ranking takes a weight from 0 to 10 and --ranking-temperature a value \
                     above 0 (got {ranking}, {ranking_temperature})"
                );
            }
            let cfg = train::Config {
                ranking,
                temperature: ranking_temperature,
                ..training.config()
            };
            let t = train::distill::run(
                &Bundle::open(teacher)?,
                train::distill::Student {
                    bundle: &Bundle::open(student)?,
                    char_bag: moonlens::encoder::char_bag::CharBag {
                        buckets: char_buckets,
                        trigram_buckets: char_trigram_buckets,
                    },
                },
                &training.pairs,
                &training.val,
                &training.out,
                training.cache.as_deref(),
                &cfg,
            )?;
            print_run(&training.out, &t.history, t.best_epoch);
        }
        Cmd::Route {
            bundle,
            english,
            parallel,
            val_english,
            val_parallel,
            max_misroute,
            buckets,
            epochs,
        } => {
            use moonlens::encoder::language::MAX_BUCKETS;
            use moonlens::host::route;
            if !(0.0..1.0).contains(&max_misroute) || buckets == 0 || buckets > MAX_BUCKETS {
                moonlens::bail!(
                    "--max-misroute takes a share from 0 up to (not including) 1 and --buckets \
                     1 to {MAX_BUCKETS} (got {max_misroute}, {buckets})"
                );
            }
            let opt = route::Options {
                buckets,
                epochs,
                max_misroute,
                seed: 1,
            };
            let train = route::texts(&english, &parallel)?;
            let val = route::texts(&val_english, &val_parallel)?;
            let (out, report) = route::run(&bundle, &train, &val, &opt)?;
            println!(
                "{}",
                serde_json::json!({"bundle": out.dir, "id": out.id_hex(), "report": report})
            );
        }
        Cmd::Export {
            heads,
            out,
            bundle,
            int8,
            mix,
            teacher,
        } => {
            let heads = train::store::load(&heads)?;
            let base =
                Bundle::open(bundle.unwrap_or_else(|| heads.info.base_bundle.clone().into()))?;
            let out = match teacher {
                Some(teacher) => moonlens::host::export::export_multilingual(
                    &heads,
                    &base,
                    &Bundle::open(teacher)?,
                    &out,
                    int8,
                )?,
                None => moonlens::host::export::export(&heads, &base, &out, int8, mix)?,
            };
            // the daemon's own loader must accept it
            Encoder::load(&out)?;
            println!(
                "{}",
                serde_json::json!({"bundle": out.dir, "id": out.id_hex(), "name": out.manifest.name})
            );
        }
        Cmd::Sheet {
            bundle,
            pairs,
            query,
            out,
            k,
            regions,
        } => {
            let hits = if regions > 0.0 {
                let enc = Encoder::load_with_regions(&Bundle::open(&bundle)?)?;
                moonlens::host::sheet::sheet_with_regions(&enc, &pairs, &query, k, &out, regions)?
            } else {
                moonlens::host::sheet::sheet(&encoder(&bundle)?, &pairs, &query, k, &out)?
            };
            for (path, score) in &hits {
                eprintln!("{score:.4}  {path}");
            }
            println!("{}", serde_json::json!({"sheet": out, "hits": hits.len()}));
        }
        Cmd::Bench(b) => bench(b)?,
        Cmd::Completions { out } => {
            for f in moonlens::host::completions::write(&out)? {
                println!("{}", f.display());
            }
        }
        Cmd::Fuzz {
            target,
            seconds,
            seed,
            crashes,
        } => {
            let r = moonlens::host::fuzz::run(target.name(), seconds, seed, &crashes)?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
            if r.crashes > 0 {
                moonlens::bail!("{} crash(es); inputs in {}", r.crashes, crashes.display());
            }
        }
        #[cfg(feature = "fleet")]
        Cmd::Fleet(f) => fleet(f)?,
        Cmd::IndexWriter {
            index,
            capacity,
            count,
        } => moonlens::host::crash::writer(&index, capacity, count)?,
    }
    Ok(())
}

fn train(t: Train) -> Result<()> {
    let bundle = Bundle::open(&t.bundle)?;
    let cfg = Config {
        temperature: t.temperature,
        ..t.training.config()
    };
    let Some(index) = t.from_index else {
        let cfg = Config {
            image_input: t.image_input.into(),
            dim: t.dim,
            ..cfg
        };
        let r = train::command::run(
            &bundle,
            &t.training.pairs,
            &t.training.val,
            &t.training.out,
            t.training.cache.as_deref(),
            &cfg,
        )?;
        print_run(&t.training.out, &r.history, r.best_epoch);
        return Ok(());
    };
    let out = &t.training.out;
    let (exported, r) = train::site::run(&train::site::Options {
        index: &index,
        bundle: &bundle,
        pairs: &t.training.pairs,
        val: &t.training.val,
        cache: t.training.cache.as_deref(),
        out,
        cfg,
        repeat: t.repeat,
    })?;
    let rec = |x: &moonlens::host::eval::Recall| serde_json::json!([x.r1, x.r5, x.r10]);
    println!(
        "{}",
        serde_json::json!({"bundle": out, "model": exported.manifest.name,
            "tagged_frames": r.tagged_frames, "held_out_pairs": r.site_val_pairs,
            "held_out_r1_r5_r10_before": rec(&r.site_before), "held_out_r1_r5_r10_after": rec(&r.site_after),
            "base_val_r1_r5_r10_before": rec(&r.base_before), "base_val_r1_r5_r10_after": rec(&r.base_after),
            "best_epoch": r.best_epoch, "report": out.join("site-training.json"), "curve": out.join("site-curve.png")})
    );
    Ok(())
}

fn bench(b: Bench) -> Result<()> {
    use moonlens::host::bench;
    match b {
        Bench::Encode { bundle, runs, json } => bench::encode(&encoder(&bundle)?, runs, json),
        Bench::Profile { bundle, runs } => bench::profile(&encoder(&bundle)?, runs),
        Bench::Regions { bundle, runs, json } => {
            bench::regions(&Bundle::open(&bundle)?, runs, json)
        }
        Bench::Ingest {
            bundle,
            images,
            frames,
            json,
        } => bench::ingest(&Bundle::open(bundle)?, &images, frames, json),
        Bench::Reproject {
            bundle,
            entries,
            json,
        } => bench::reproject(&encoder(&bundle)?, entries, json),
        #[cfg(feature = "fleet")]
        Bench::Fleet {
            db,
            bundle,
            images,
            entries,
            queries,
            ann,
            m,
            ef_construction,
            keep,
            json,
        } => {
            use moonlens::fleet::ann::Ann;
            moonlens::host::fleet_bench::run(
                &encoder(&bundle)?,
                &moonlens::host::fleet_bench::Options {
                    url: &db,
                    images: &images,
                    entries,
                    queries,
                    kinds: ann
                        .iter()
                        .map(|k| match k {
                            AnnKind::Ivfflat => Ann::IvfFlat,
                            AnnKind::Hnsw => Ann::Hnsw { m, ef_construction },
                        })
                        .collect(),
                    json,
                    keep,
                },
            )
        }
        Bench::Search {
            bundle,
            images,
            entries,
            queries,
            exact,
            candidates,
            json,
        } => bench::search(
            &encoder(&bundle)?,
            &images,
            entries,
            queries,
            exact,
            candidates,
            json,
        ),
    }
}

#[cfg(feature = "fleet")]
fn fleet(f: moonlens::host::cli::Fleet) -> Result<()> {
    use moonlens::fleet::ann::{Ann, Policy};
    use moonlens::fleet::{self, Db};
    use moonlens::host::cli::{AnnKind, Fleet};
    match f {
        Fleet::Sync {
            index,
            board,
            db,
            thumbs,
            ann,
            bundle,
        } => {
            fleet::sync::check_board_name(&board)?;
            let mut snap = moonlens::index::snapshot::Snapshot::open(&index)?;
            // the bundle's name is recorded only when it is the one that wrote the index
            let name = Bundle::open(&bundle)
                .ok()
                .filter(|b| b.id == snap.header().bundle_id)
                .map(|b| b.manifest.name.clone());
            let mut db = Db::connect(&db)?;
            let (mut bar, mut last) = (None, 0);
            let r = fleet::sync::run(
                &mut db,
                &mut snap,
                &fleet::sync::Board {
                    name: &board,
                    bundle_name: name.as_deref(),
                    thumbs,
                    ann_index: match ann {
                        None => Policy::Keep,
                        Some(AnnKind::Ivfflat) => Policy::Use(Ann::IvfFlat),
                        Some(AnnKind::Hnsw) => Policy::Use(Ann::HNSW),
                    },
                },
                &mut |done, total| {
                    bar.get_or_insert_with(|| {
                        moonlens::host::progress::Progress::new("sync", total as usize)
                    })
                    .inc((done - last) as usize);
                    last = done;
                },
            )?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
        }
        Fleet::Search {
            text,
            db,
            board,
            since,
            until,
            k,
            bundle,
            exact,
            ef,
            probes,
            json,
        } => {
            let now = moonlens::source::now_ms();
            let when = |name: &str, v: &Option<String>| -> Result<Option<i64>> {
                v.as_deref()
                    .map(|v| {
                        moonlens::protocol::parse::when_rule(name, v)
                            .map(|w| w.to_ms(now))
                            .map_err(|e| moonlens::Error::new(format!("--{e}")))
                    })
                    .transpose()
            };
            let text = text.join(" ");
            let q = fleet::search::Query {
                text: &text,
                board: board.as_deref(),
                since_ms: when("since", &since)?,
                until_ms: when("until", &until)?,
                k,
                exact,
                ef,
                probes,
            };
            let mut db = Db::connect(&db)?;
            let a = fleet::search::search(&mut db, &encoder(&bundle)?, &q)?;
            for other in &a.not_searched {
                log::warn!("not searched: {other} (another bundle; search them with --bundle of that bundle)");
            }
            if json {
                println!("{}", serde_json::to_string(&a).expect("plain struct"));
            } else {
                for h in &a.hits {
                    println!(
                        "{:.4}  {}  #{}  {}  {}  {}",
                        h.score,
                        h.board,
                        h.id,
                        moonlens::protocol::emit::rfc3339(h.ts),
                        h.source,
                        h.label
                    );
                }
                eprintln!(
                    "{} hits of {} in {:.1} ms ({})",
                    a.hits.len(),
                    a.bundle,
                    a.ms,
                    if a.exact { "exact" } else { "HNSW" }
                );
            }
        }
    }
    Ok(())
}
