//! moonlensd: the board daemon. Ingests camera frames into the ring index and answers text
//! queries on a Unix socket, a serial line and the terminal. See `docs/protocol.md`.
use clap::Parser;
use moonlens::daemon::cli::{Cli, Cmd};
use moonlens::daemon::config::Config;
use moonlens::Result;
use std::io::{BufRead, BufReader, IsTerminal, Write};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // --help, --version and bad options: clap prints and exits (0 for help, 2 for errors)
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("moonlensd: {e}");
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Some(Cmd::Verify { index }) => {
            let r = moonlens::index::Index::verify(&index)?;
            println!("{}", serde_json::to_string(&r).expect("plain struct"));
            // damage found now, or found and quarantined by an earlier start
            Ok(if r.corrupt > 0 || r.quarantined > 0 {
                2
            } else {
                0
            })
        }
        Some(Cmd::Query {
            text,
            json,
            k,
            socket,
        }) => query(&text.join(" "), json, k, &socket),
        None => daemon(Config::resolve(cli.cfg)?),
    }
}

fn daemon(cfg: Config) -> Result<i32> {
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
fn query(text: &str, json: bool, k: usize, path: &std::path::Path) -> Result<i32> {
    if text.trim().is_empty() {
        moonlens::bail!("query needs some text, e.g. moonlensd query a rabbit");
    }
    let shown = path.display();
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        moonlens::Error::new(format!(
            "cannot connect to {shown}: {e}; is moonlensd running (see README)?"
        ))
    })?;
    let line = if json {
        serde_json::json!({"id": 1, "cmd": "search", "text": text, "k": k}).to_string()
    } else {
        format!("search {text} k={k}")
    };
    writeln!(s, "{line}").map_err(|e| moonlens::Error::new(format!("writing to {shown}: {e}")))?;
    let mut ok = true;
    for l in BufReader::new(s).lines() {
        let l = l.map_err(|e| moonlens::Error::new(format!("reading from {shown}: {e}")))?;
        // a watch may push a match to every client at any moment: not this query's answer
        if is_push(&l) {
            continue;
        }
        println!("{l}");
        if json {
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
