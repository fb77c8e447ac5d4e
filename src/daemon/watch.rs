//! Standing queries. Raw text-image cosines do not transfer between queries (one query's
//! 0.3 is a strong match, another's is noise), so a fixed threshold is unstable. Instead each
//! watch keeps the scores of the last [`HISTORY`] stored frames *for that query* and fires
//! when a frame scores above the 99.5th percentile of that history, above an absolute floor,
//! after at least [`MIN_HISTORY`] frames, and not within the cooldown of its last match.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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
