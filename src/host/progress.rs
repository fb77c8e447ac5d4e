//! Progress of long host work on stderr: an `indicatif` bar (rate, ETA) when stderr is a
//! terminal; otherwise (CI logs, files) one plain line per 10%.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    what: String,
    total: usize,
    done: usize,
    start: Instant,
    /// the terminal's bar; None writes the plain lines
    bar: Option<ProgressBar>,
    last_decile: usize,
}

impl Progress {
    pub fn new(what: &str, total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style =
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                    .expect("a valid template")
                    .progress_chars("#>-");
            ProgressBar::new(total as u64)
                .with_style(style)
                .with_message(what.to_string())
        });
        Progress {
            what: what.to_string(),
            total,
            done: 0,
            start: Instant::now(),
            bar,
            last_decile: 0,
        }
    }

    pub fn inc(&mut self, n: usize) {
        self.done = (self.done + n).min(self.total);
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.done as u64);
                if self.done == self.total {
                    bar.finish();
                }
            }
            None => {
                let decile = 10 * self.done / self.total.max(1);
                if decile > self.last_decile || self.done == self.total {
                    self.last_decile = decile;
                    let rate = self.done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
                    eprintln!(
                        "{}: {}/{} ({:.1}/s)",
                        self.what, self.done, self.total, rate
                    );
                }
            }
        }
    }
}
