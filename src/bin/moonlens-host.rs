//! moonlens-host: the workstation companion (evaluation and benchmarks).
use moonlens::bundle::Bundle;
use moonlens::cli::Args;
use moonlens::encoder::Encoder;
use moonlens::host::train::{Config, ImageInput};
use moonlens::Result;
use std::path::Path;

const USAGE: &str = "usage:
  moonlens-host eval --bundle DIR --pairs FILE.jsonl
  moonlens-host train --pairs TRAIN.jsonl[,MORE.jsonl] --val VAL.jsonl[,…] --out DIR [--bundle models/default]
        [--image-input raw|bridge] [--dim 256] [--blocks 1] [--dropout 0.1] [--temperature T]
        [--lr 1e-3] [--weight-decay 1e-3] [--batch 64] [--epochs 100] [--patience 3] [--seed 1]
        [--cache DIR]
  moonlens-host train --from-index INDEX_DIR --pairs TRAIN.jsonl[,…] --val VAL.jsonl[,…] --out BUNDLE
        [--bundle models/default] [--repeat 8] [--temperature T] [shared options as above]
        (a new image head for the bundle that wrote the index, from the operator's tags)
  moonlens-host distill --teacher BUNDLE --student BUNDLE --pairs TRAIN_parallel.jsonl --val VAL_parallel.jsonl
        --out DIR [--blocks 1] [--dropout 0.1] [--lr 1e-3] [--weight-decay 1e-3] [--batch 64]
        [--epochs 100] [--patience 3] [--seed 1] [--cache DIR]
  moonlens-host export --heads DIR --out BUNDLE [--bundle BASE] [--int8] [--mix W]
  moonlens-host export --heads DISTILLED --teacher BUNDLE --out BUNDLE [--bundle STUDENT] [--int8]
  moonlens-host sheet --bundle DIR --pairs FILE.jsonl --query TEXT --out FILE.png [--k 12]
  moonlens-host parity --bundle DIR   (a converted bundle's reference.json vs tract)
  moonlens-host bench encode --bundle DIR [--runs N] [--json]
  moonlens-host bench profile --bundle DIR [--runs N]
  moonlens-host completions --out DIR   (moonlensd's bash/zsh/fish completions and man page)
  moonlens-host bench ingest [--bundle models/default] [--images models/samples] [--frames 88] [--json]
  moonlens-host bench reproject [--bundle models/default] [--entries 10000] [--json]
  moonlens-host bench search [--entries N] [--queries N] [--exact] [--candidates N] [--bundle models/default] [--images models/samples] [--json]
  moonlens-host fuzz protocol|index [--seconds 60] [--seed 1] [--crashes DIR]";

/// The options `train` and `distill` share.
const TRAINING_OPTIONS: &[&str] = &[
    "pairs",
    "val",
    "out",
    "blocks",
    "dropout",
    "lr",
    "weight-decay",
    "batch",
    "epochs",
    "patience",
    "seed",
    "cache",
];

/// The defaults with the shared options applied.
fn training_config(args: &Args) -> Result<Config> {
    let d = Config::default();
    Ok(Config {
        blocks: args.number("blocks", d.blocks)?,
        dropout: args.number("dropout", d.dropout)?,
        lr: args.number("lr", d.lr)?,
        weight_decay: args.number("weight-decay", d.weight_decay)?,
        batch: args.number("batch", d.batch)?,
        max_epochs: args.number("epochs", d.max_epochs)?,
        patience: args.number("patience", d.patience)?,
        seed: args.number("seed", d.seed)?,
        ..d
    })
}

/// The last stdout line of `train` and `distill`.
fn print_run(out: &Path, history: &[moonlens::host::train::Epoch], best_epoch: usize) {
    let best = history.iter().find(|e| e.epoch == best_epoch);
    println!(
        "{}",
        serde_json::json!({"heads": out, "best_epoch": best_epoch, "epochs": history.len(),
            "best": best, "curve": out.join("curve.png")})
    );
}

/// Several files, comma-separated: `--pairs train.jsonl,train_zh_CN.jsonl`.
fn files(args: &Args, name: &str) -> Result<Vec<std::path::PathBuf>> {
    Ok(args.require(name)?.split(',').map(Into::into).collect())
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run() {
        eprintln!("moonlens-host: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() || argv[0] == "--help" || argv[0] == "help" {
        println!("{USAGE}");
        return Ok(());
    }
    let cmd = argv.remove(0);
    let args = Args::parse(argv, &["json", "int8"])?;
    if args.wants_help() {
        println!("{USAGE}");
        return Ok(());
    }
    match (cmd.as_str(), args.positional.first().map(String::as_str)) {
        ("eval", None) => {
            args.only(&["bundle", "pairs"])?;
            let enc = Encoder::load(&Bundle::open(args.require("bundle")?)?)?;
            let r = moonlens::host::eval::eval(&enc, Path::new(args.require("pairs")?))?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
            Ok(())
        }
        ("parity", None) => {
            args.only(&["bundle"])?;
            let enc = Encoder::load(&Bundle::open(args.require("bundle")?)?)?;
            let r = moonlens::host::parity::check(&enc, Path::new("."))?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
            if !r.ok() {
                moonlens::bail!(
                    "tract does not reproduce the converter's outputs on this bundle (bars: \
                     cosine >= {} vs onnxruntime, identical tokens, preprocessing within 1e-3)",
                    moonlens::host::parity::SAME_FILE_COS
                );
            }
            Ok(())
        }
        ("train", None) if args.get("from-index").is_some() => {
            args.only(
                &[
                    TRAINING_OPTIONS,
                    &["from-index", "bundle", "repeat", "temperature"],
                ]
                .concat(),
            )?;
            let d = training_config(&args)?;
            let cfg = Config {
                temperature: args.number("temperature", d.temperature)?,
                ..d
            };
            let bundle = Bundle::open(args.get("bundle").unwrap_or("models/default"))?;
            let out = Path::new(args.require("out")?);
            let (exported, r) =
                moonlens::host::train::site::run(&moonlens::host::train::site::Options {
                    index: Path::new(args.require("from-index")?),
                    bundle: &bundle,
                    pairs: &files(&args, "pairs")?,
                    val: &files(&args, "val")?,
                    cache: args.get("cache").map(Path::new),
                    out,
                    cfg,
                    repeat: args.number("repeat", 8)?,
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
        ("train", None) => {
            let extra = ["bundle", "image-input", "dim", "temperature"];
            args.only(&[TRAINING_OPTIONS, &extra].concat())?;
            let d = training_config(&args)?;
            let cfg = Config {
                image_input: match args.get("image-input").unwrap_or("raw") {
                    "raw" => ImageInput::Raw,
                    "bridge" => ImageInput::Bridge,
                    other => {
                        return Err(moonlens::Error::new(format!(
                            "--image-input {other:?}: use raw (backbone features) or bridge"
                        )))
                    }
                },
                dim: args.number("dim", d.dim)?,
                temperature: args.number("temperature", d.temperature)?,
                ..d
            };
            let bundle = Bundle::open(args.get("bundle").unwrap_or("models/default"))?;
            let out = Path::new(args.require("out")?);
            let t = moonlens::host::train::command::run(
                &bundle,
                &files(&args, "pairs")?,
                &files(&args, "val")?,
                out,
                args.get("cache").map(Path::new),
                &cfg,
            )?;
            print_run(out, &t.history, t.best_epoch);
            Ok(())
        }
        ("distill", None) => {
            args.only(&[TRAINING_OPTIONS, &["teacher", "student"]].concat())?;
            let out = Path::new(args.require("out")?);
            let t = moonlens::host::train::distill::run(
                &Bundle::open(args.require("teacher")?)?,
                &Bundle::open(args.require("student")?)?,
                &files(&args, "pairs")?,
                &files(&args, "val")?,
                out,
                args.get("cache").map(Path::new),
                &training_config(&args)?,
            )?;
            print_run(out, &t.history, t.best_epoch);
            Ok(())
        }
        ("export", None) => {
            args.only(&["heads", "out", "bundle", "int8", "mix", "teacher"])?;
            let heads_dir = Path::new(args.require("heads")?);
            let heads = moonlens::host::train::store::load(heads_dir)?;
            let base = Bundle::open(args.get("bundle").unwrap_or(&heads.info.base_bundle))?;
            let out = Path::new(args.require("out")?);
            let out = match args.get("teacher") {
                Some(teacher) => moonlens::host::export::export_multilingual(
                    &heads,
                    &base,
                    &Bundle::open(teacher)?,
                    out,
                    args.flag("int8"),
                )?,
                None => moonlens::host::export::export(
                    &heads,
                    &base,
                    out,
                    args.flag("int8"),
                    args.number("mix", 0.0)?,
                )?,
            };
            // the daemon's own loader must accept it
            Encoder::load(&out)?;
            println!(
                "{}",
                serde_json::json!({"bundle": out.dir, "id": out.id_hex(), "name": out.manifest.name})
            );
            Ok(())
        }
        ("sheet", None) => {
            args.only(&["bundle", "pairs", "query", "out", "k"])?;
            let enc = Encoder::load(&Bundle::open(args.require("bundle")?)?)?;
            let out = Path::new(args.require("out")?);
            let hits = moonlens::host::sheet::sheet(
                &enc,
                Path::new(args.require("pairs")?),
                args.require("query")?,
                args.number("k", 12)?,
                out,
            )?;
            for (path, score) in &hits {
                eprintln!("{score:.4}  {path}");
            }
            println!("{}", serde_json::json!({"sheet": out, "hits": hits.len()}));
            Ok(())
        }
        ("bench", Some("encode")) => {
            args.only(&["bundle", "runs", "json"])?;
            let enc = Encoder::load(&Bundle::open(args.require("bundle")?)?)?;
            moonlens::host::bench::encode(&enc, args.number("runs", 20)?, args.flag("json"))
        }
        ("bench", Some("reproject")) => {
            args.only(&["bundle", "entries", "json"])?;
            let enc = Encoder::load(&Bundle::open(
                args.get("bundle").unwrap_or("models/default"),
            )?)?;
            moonlens::host::bench::reproject(
                &enc,
                args.number("entries", 10_000)?,
                args.flag("json"),
            )
        }
        ("completions", None) => {
            args.only(&["out"])?;
            let out = Path::new(args.require("out")?);
            for f in moonlens::host::completions::write(out)? {
                println!("{}", f.display());
            }
            Ok(())
        }
        ("bench", Some("ingest")) => {
            args.only(&["bundle", "images", "frames", "json"])?;
            moonlens::host::bench::ingest(
                &Bundle::open(args.get("bundle").unwrap_or("models/default"))?,
                Path::new(args.get("images").unwrap_or("models/samples")),
                args.number("frames", 88)?,
                args.flag("json"),
            )
        }
        ("bench", Some("profile")) => {
            args.only(&["bundle", "runs"])?;
            let enc = Encoder::load(&Bundle::open(args.require("bundle")?)?)?;
            moonlens::host::bench::profile(&enc, args.number("runs", 10)?)
        }
        ("fuzz", Some(target)) => {
            args.only(&["seconds", "seed", "crashes"])?;
            let r = moonlens::host::fuzz::run(
                target,
                args.number("seconds", 60.0)?,
                args.number("seed", 1)?,
                Path::new(args.get("crashes").unwrap_or("target/fuzz-crashes")),
            )?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
            if r.crashes > 0 {
                return Err(moonlens::Error::new(format!(
                    "{} crash(es); inputs in {}",
                    r.crashes,
                    args.get("crashes").unwrap_or("target/fuzz-crashes")
                )));
            }
            Ok(())
        }
        ("bench", Some("search")) => {
            args.only(&[
                "bundle",
                "images",
                "entries",
                "queries",
                "exact",
                "candidates",
                "json",
            ])?;
            let enc = Encoder::load(&Bundle::open(
                args.get("bundle").unwrap_or("models/default"),
            )?)?;
            moonlens::host::bench::search(
                &enc,
                Path::new(args.get("images").unwrap_or("models/samples")),
                args.number("entries", 100_000)?,
                args.number("queries", 50)?,
                args.flag("exact"),
                args.number("candidates", moonlens::index::search::CANDIDATES)?,
                args.flag("json"),
            )
        }
        // Test tool for the crash-safety harness (tests/index.rs): appends entries whose
        // embedding is a function of their sequence number and prints each acknowledged seq.
        ("index-writer", None) => {
            args.only(&["index", "capacity", "count"])?;
            moonlens::host::crash::writer(
                Path::new(args.require("index")?),
                args.number("capacity", 64)?,
                args.number("count", u64::MAX)?,
            )
        }
        _ => Err(moonlens::Error::new(format!(
            "unknown command {cmd:?}\n{USAGE}"
        ))),
    }
}
