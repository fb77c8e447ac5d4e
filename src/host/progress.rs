//! A progress bar on stderr for long host work (only when stderr is a terminal or
//! `MOONLENS_PROGRESS=1`; CI logs get one line per 10%).

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    what: String,
    total: usize,
    done: usize,
    start: Instant,
    tty: bool,
    last_decile: usize,
}

impl Progress {
    pub fn new(what: &str, total: usize) -> Progress {
        let tty =
            std::io::stderr().is_terminal() || std::env::var_os("MOONLENS_PROGRESS").is_some();
        Progress {
            what: what.to_string(),
            total,
            done: 0,
            start: Instant::now(),
            tty,
            last_decile: 0,
        }
    }

    pub fn inc(&mut self, n: usize) {
        self.done = (self.done + n).min(self.total);
        let secs = self.start.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(1e-9);
        let eta = (self.total - self.done) as f64 / rate.max(1e-9);
        if self.tty {
            let width = 30;
            let filled = width * self.done / self.total.max(1);
            eprint!(
                "\r{} [{}{}] {}/{} {:.1}/s eta {:.0}s ",
                self.what,
                "#".repeat(filled),
                "-".repeat(width - filled),
                self.done,
                self.total,
                rate,
                eta
            );
            let _ = std::io::stderr().flush();
            if self.done == self.total {
                eprintln!();
            }
        } else {
            let decile = 10 * self.done / self.total.max(1);
            if decile > self.last_decile || self.done == self.total {
                self.last_decile = decile;
                eprintln!(
                    "{}: {}/{} ({:.1}/s)",
                    self.what, self.done, self.total, rate
                );
            }
        }
    }
}
