//! Standing queries. Raw text-image cosines do not transfer between queries (one query's
//! 0.3 is a strong match, another's is noise), so a fixed threshold is unstable. Instead each
//! watch keeps the scores of the last [`HISTORY`] stored frames *for that query* and fires
//! when a frame scores above the 99.5th percentile of that history, above an absolute floor,
//! after at least [`MIN_HISTORY`] frames, and not within the cooldown of its last match.
//!
//! Watches outlive restarts: every change is written to [`FILE`] beside the index (to a
//! temporary name, synced, renamed), and a start re-encodes the saved texts with its bundle.
//! A watch's score history is not saved: it refills from the next frames.

use crate::error::{Context, Result as CrateResult};
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The saved watches, in the index directory.
pub const FILE: &str = "watches.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    next: u32,
    watches: Vec<SavedWatch>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedWatch {
    n: u32,
    text: String,
}

pub const MAX_WATCHES: usize = 16;
pub const HISTORY: usize = 500;
pub const MIN_HISTORY: usize = 16;
pub const QUANTILE: f64 = 0.995;
pub const FLOOR: f32 = 0.15;

pub struct Watch {
    pub n: u32,
    pub text: String,
    pub embedding: Vec<f32>,
    history: VecDeque<f32>,
    last_fire: Option<Instant>,
}

#[derive(Default)]
pub struct Watches {
    pub list: Vec<Watch>,
    next_n: u32,
    pub cooldown: Duration,
}

impl Watches {
    pub fn new(cooldown: Duration) -> Watches {
        Watches {
            list: Vec::new(),
            next_n: 1,
            cooldown,
        }
    }

    pub fn add(&mut self, text: String, embedding: Vec<f32>) -> Result<u32, String> {
        if self.list.len() >= MAX_WATCHES {
            return Err(format!("at most {MAX_WATCHES} watches; delete one first"));
        }
        let n = self.next_n;
        self.next_n += 1;
        self.list.push(Watch {
            n,
            text,
            embedding,
            history: VecDeque::with_capacity(HISTORY),
            last_fire: None,
        });
        Ok(n)
    }

    /// Writes the watches to `dir/FILE` atomically (temporary file, fsync, rename, fsync of
    /// the directory): a crash leaves the old list or the new one, never half of either.
    pub fn save(&self, dir: &Path) -> CrateResult<()> {
        let saved = Saved {
            next: self.next_n,
            watches: self
                .list
                .iter()
                .map(|w| SavedWatch {
                    n: w.n,
                    text: w.text.clone(),
                })
                .collect(),
        };
        let (path, tmp) = (dir.join(FILE), dir.join(format!("{FILE}.tmp")));
        let body = serde_json::to_vec(&saved).expect("plain struct");
        let mut f = std::fs::File::create(&tmp).context(format_args!("{}", tmp.display()))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .context(format_args!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).context(format_args!("{}", path.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .context(format_args!("syncing {}", dir.display()))
    }

    /// Restores the watches saved in `dir`, encoding each text with `embed`. A file that
    /// cannot be read back is moved aside (`watches.json.bad`, kept for the operator) and
    /// the daemon starts without watches; a text that no longer encodes is skipped. Returns
    /// how many were restored.
    pub fn restore(
        &mut self,
        dir: &Path,
        mut embed: impl FnMut(&str) -> CrateResult<Vec<f32>>,
    ) -> usize {
        let path = dir.join(FILE);
        let Ok(body) = std::fs::read(&path) else {
            return 0;
        };
        let saved: Saved = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => {
                let bad = dir.join(format!("{FILE}.bad"));
                log::warn!(
                    "{}: {e}; moved to {} and starting without watches",
                    path.display(),
                    bad.display()
                );
                let _ = std::fs::rename(&path, bad);
                return 0;
            }
        };
        for w in saved.watches.into_iter().take(MAX_WATCHES) {
            match embed(&w.text) {
                Ok(embedding) => self.list.push(Watch {
                    n: w.n,
                    text: w.text,
                    embedding,
                    history: VecDeque::with_capacity(HISTORY),
                    last_fire: None,
                }),
                Err(e) => log::warn!("watch {} ({:?}) not restored: {e}", w.n, w.text),
            }
        }
        let highest = self.list.iter().map(|w| w.n).max().unwrap_or(0);
        self.next_n = saved.next.max(highest.saturating_add(1)).max(1);
        self.list.len()
    }

    pub fn remove(&mut self, n: u32) -> bool {
        let before = self.list.len();
        self.list.retain(|w| w.n != n);
        self.list.len() != before
    }

    /// Score a stored frame against every watch; returns the (watch, score) pairs that fire.
    pub fn observe(&mut self, embedding: &[f32], now: Instant) -> Vec<(u32, f32)> {
        let cooldown = self.cooldown;
        let mut fired = Vec::new();
        for w in &mut self.list {
            let score: f32 = w.embedding.iter().zip(embedding).map(|(a, b)| a * b).sum();
            if w.unusual(score)
                && w.last_fire
                    .is_none_or(|t| now.duration_since(t) >= cooldown)
            {
                w.last_fire = Some(now);
                fired.push((w.n, score));
            }
            if w.history.len() == HISTORY {
                w.history.pop_front();
            }
            w.history.push_back(score);
        }
        fired
    }
}

impl Watch {
    fn unusual(&self, score: f32) -> bool {
        if self.history.len() < MIN_HISTORY || score < FLOOR {
            return false;
        }
        let mut h: Vec<f32> = self.history.iter().copied().collect();
        h.sort_by(f32::total_cmp);
        let q = h[((h.len() - 1) as f64 * QUANTILE).round() as usize];
        score > q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_on_the_outlier_once_per_cooldown() {
        let mut w = Watches::new(Duration::from_secs(60));
        w.add("x".into(), vec![1.0, 0.0]).unwrap();
        let t = Instant::now();
        for i in 0..40 {
            let s = 0.2 + (i % 5) as f32 * 0.01;
            assert!(
                w.observe(&[s, 0.0], t).is_empty(),
                "ordinary frame {i} fired"
            );
        }
        assert_eq!(w.observe(&[0.5, 0.0], t), vec![(1, 0.5)]);
        assert!(
            w.observe(&[0.9, 0.0], t + Duration::from_secs(1))
                .is_empty(),
            "cooldown"
        );
        assert_eq!(
            w.observe(&[0.95, 0.0], t + Duration::from_secs(61)).len(),
            1
        );
    }

    #[test]
    fn saved_watches_come_back_and_a_damaged_file_is_kept_aside() {
        let dir = std::env::temp_dir().join(format!("moonlens-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = Watches::new(Duration::ZERO);
        w.add("a".into(), vec![1.0]).unwrap();
        w.add("b".into(), vec![1.0]).unwrap();
        assert!(w.remove(1));
        w.save(&dir).unwrap();
        let mut back = Watches::new(Duration::ZERO);
        assert_eq!(back.restore(&dir, |t| Ok(vec![t.len() as f32])), 1);
        assert_eq!((back.list[0].n, back.list[0].text.as_str()), (2, "b"));
        assert_eq!(back.add("c".into(), vec![1.0]).unwrap(), 3);
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        let mut empty = Watches::new(Duration::ZERO);
        assert_eq!(empty.restore(&dir, |_| Ok(vec![1.0])), 0);
        assert_eq!(
            std::fs::read(dir.join(format!("{FILE}.bad"))).unwrap(),
            b"{not json"
        );
        assert!(!dir.join(FILE).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn needs_history_and_the_floor() {
        let mut w = Watches::new(Duration::ZERO);
        w.add("x".into(), vec![1.0]).unwrap();
        let t = Instant::now();
        for _ in 0..MIN_HISTORY - 1 {
            assert!(w.observe(&[0.9], t).is_empty());
        }
        for _ in 0..30 {
            w.observe(&[0.01], t);
        }
        assert!(w.observe(&[0.1], t).is_empty(), "below the floor");
        assert!(w.remove(1) && !w.remove(1));
    }
}
