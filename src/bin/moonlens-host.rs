//! moonlens-host: the workstation companion (evaluation and benchmarks).
use moonlens::bundle::Bundle;
use moonlens::cli::Args;
use moonlens::encoder::Encoder;
use moonlens::Result;
use std::path::Path;

const USAGE: &str = "usage:
  moonlens-host eval --bundle DIR --pairs FILE.jsonl
  moonlens-host bench encode --bundle DIR [--runs N] [--json]
  moonlens-host bench search [--entries N] [--queries N] [--json]";

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
    let args = Args::parse(argv, &["json"])?;
    match (cmd.as_str(), args.positional.first().map(String::as_str)) {
        ("eval", None) => {
            args.only(&["bundle", "pairs"])?;
            let enc = Encoder::load(&Bundle::open(args.require("bundle")?)?)?;
            let r = moonlens::host::eval::eval(&enc, Path::new(args.require("pairs")?))?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
            Ok(())
        }
        ("bench", Some("encode")) => {
            args.only(&["bundle", "runs", "json"])?;
            let enc = Encoder::load(&Bundle::open(args.require("bundle")?)?)?;
            moonlens::host::bench::encode(&enc, args.number("runs", 20)?, args.flag("json"))
        }
        ("bench", Some("search")) => {
            args.only(&["entries", "queries", "json"])?;
            moonlens::host::bench::search(
                args.number("entries", 100_000)?,
                args.number("queries", 50)?,
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
