//! moonlensd: the board daemon. Ingests camera frames into the ring index and answers text
//! queries on a Unix socket, a serial line and the terminal. See `docs/protocol.md`.
use moonlens::cli::Args;
use moonlens::daemon::config::{Config, OPTIONS};
use moonlens::Result;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;

const USAGE: &str = "usage:
  moonlensd [--bundle DIR] [--source v4l:/dev/videoN|dir:PATH] [--index DIR] [--socket PATH]
            [--serial DEV --baud N] [--config FILE] [--capacity N] [--fps N] [--loop]
            [--width N --height N] [--gate-pixels X] [--gate-embedding X]
            [--watch-cooldown-s N] [--workers N] [--mqtt mqtt://HOST[:PORT] [--mqtt-topic T]]
            [--console|--no-console]
  moonlensd query <text> [--json] [--k N] [--socket PATH]
  moonlensd verify --index DIR";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("moonlensd: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<i32> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            Ok(0)
        }
        Some("verify") => {
            let a = Args::parse(argv[1..].to_vec(), &[])?;
            if a.wants_help() {
                println!("{USAGE}");
                return Ok(0);
            }
            a.only(&["index"])?;
            let r = moonlens::index::Index::verify(Path::new(a.require("index")?))?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
            // damage found now, or found and quarantined by an earlier start
            Ok(if r.corrupt > 0 || r.quarantined > 0 {
                2
            } else {
                0
            })
        }
        Some("query") => query(Args::parse(argv[1..].to_vec(), &["json"])?),
        _ => daemon(Args::parse(argv, &["loop", "console", "no-console"])?),
    }
}

fn daemon(a: Args) -> Result<i32> {
    if a.wants_help() {
        println!("{USAGE}");
        return Ok(0);
    }
    a.only(OPTIONS)?;
    if let Some(p) = a.positional.first() {
        moonlens::bail!("unexpected argument {p:?}\n{USAGE}");
    }
    let mut cfg = match a.get("config") {
        Some(p) => Config::from_file(Path::new(p))?,
        None => Config::default(),
    };
    cfg.apply_args(&a)?;
    let (shared, socket) = moonlens::daemon::start(&cfg)?;
    if cfg
        .console
        .unwrap_or_else(|| std::io::stdin().is_terminal())
    {
        eprintln!(
            "moonlens console: type help; queries also on {}",
            cfg.socket().display()
        );
        moonlens::daemon::transport::serve_stdio(shared);
        return Ok(0);
    }
    let _ = socket.join();
    Ok(0)
}

/// An unsolicited `+MATCH` line, in either form (docs/protocol.md).
fn is_push(line: &str) -> bool {
    line.starts_with("+MATCH ")
        || serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|v| v.get("event").is_some() && v.get("id").is_none())
}

/// A socket client: one request, its answer on stdout.
fn query(a: Args) -> Result<i32> {
    if a.wants_help() {
        println!("{USAGE}");
        return Ok(0);
    }
    a.only(&["json", "k", "socket"])?;
    let text = a.positional.join(" ");
    if text.trim().is_empty() {
        moonlens::bail!("query needs some text\n{USAGE}");
    }
    let k: usize = a.number("k", 5)?;
    let path = a.get("socket").unwrap_or("var/moonlens.sock");
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        moonlens::Error::new(format!(
            "cannot connect to {path}: {e}; is moonlensd running (see README)?"
        ))
    })?;
    let line = if a.flag("json") {
        serde_json::json!({"id": 1, "cmd": "search", "text": text, "k": k}).to_string()
    } else {
        format!("search {text} k={k}")
    };
    writeln!(s, "{line}").map_err(|e| moonlens::Error::new(format!("writing to {path}: {e}")))?;
    let mut ok = true;
    for l in BufReader::new(s).lines() {
        let l = l.map_err(|e| moonlens::Error::new(format!("reading from {path}: {e}")))?;
        // a watch may push a match to every client at any moment: not this query's answer
        if is_push(&l) {
            continue;
        }
        println!("{l}");
        if a.flag("json") {
            ok = l.contains("\"ok\":true");
            break;
        }
        if l.starts_with("OK") || l.starts_with("ERROR") {
            ok = l.starts_with("OK");
            break;
        }
    }
    Ok(if ok { 0 } else { 1 })
}
