//! Which text tower reads a query written in Latin letters without accents.
//!
//! The script rule ([`super::needs_multilingual`]) sends anything with a non-ASCII letter to
//! the multilingual tower, but most French, German and Spanish queries have none ("Un
//! cochon.", "Eine Amsel.": three in four of the Tux Paint validation captions), and the
//! English tower reads them as English words it does not know. A bundle may therefore carry
//! a small classifier of its own (`[multilingual] route = "route.bin"`): a logistic
//! regression over hashed character n-grams of the query's words, trained by
//! `moonlens-host route` on English text against the other languages' translations, with a
//! threshold chosen so that almost no English query leaves the English tower (what a
//! misrouted English query costs and what a routed French one gains: models/README.md).
//!
//! `route.bin` (little-endian; its integrity is the bundle's `[sha256]`):
//!
//! ```text
//! 0   8   magic "MLROUTE1"
//! 8   4   buckets (u32, 1 ..= 2^24)
//! 12  4   bias (f32)
//! 16  4   threshold (f32): a query scoring above it is not English
//! 20      weights: f32[buckets]
//! ```

use crate::error::{Context, Result};
use std::path::Path;

const MAGIC: &[u8; 8] = b"MLROUTE1";
const HEADER: usize = 20;
/// The most slots a router may have (64 MB of weights).
pub const MAX_BUCKETS: usize = 1 << 24;

/// The n-gram lengths read from each word (with `^` and `$` marking its ends), beside the
/// whole word itself.
const ORDERS: std::ops::RangeInclusive<usize> = 1..=4;

/// FNV-1a of the tag byte (0: a whole word, n: an n-gram) followed by `bytes`.
fn fnv1a(tag: u8, bytes: &[u8]) -> u64 {
    use super::char_bag::{fnv1a_extend, FNV_BASIS};
    fnv1a_extend(fnv1a_extend(FNV_BASIS, &[tag]), bytes)
}

/// The distinct feature slots of `text`, sorted: each word (a run of ASCII letters and
/// apostrophes, lowercased) whole, and its character n-grams of length 1 to 4 with the
/// word's ends marked. Everything else (digits, punctuation, other scripts) separates words.
pub fn features(text: &str, buckets: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let lower = text.to_ascii_lowercase();
    for word in lower
        .split(|c: char| !(c.is_ascii_alphabetic() || c == '\''))
        .filter(|w| w.chars().any(|c| c.is_ascii_alphabetic()))
    {
        out.push(fnv1a(0, word.as_bytes()));
        let marked = format!("^{word}$");
        let b = marked.as_bytes();
        for n in ORDERS {
            for gram in b.windows(n) {
                if n == 1 && (gram == b"^" || gram == b"$") {
                    continue;
                }
                out.push(fnv1a(n as u8, gram));
            }
        }
    }
    let mut slots: Vec<usize> = out.iter().map(|h| (h % buckets as u64) as usize).collect();
    slots.sort_unstable();
    slots.dedup();
    slots
}

/// A trained router: `score(text) = bias + Σ weights[slot]` over the text's distinct slots;
/// above `threshold` the text is not English.
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    pub weights: Vec<f32>,
    pub bias: f32,
    pub threshold: f32,
}

impl Router {
    pub fn score(&self, text: &str) -> f32 {
        features(text, self.weights.len())
            .iter()
            .map(|&s| self.weights[s])
            .sum::<f32>()
            + self.bias
    }

    /// Whether the English tower should read `text`. Text without a letter (numbers, an
    /// empty query) stays English: there is nothing to tell.
    pub fn is_english(&self, text: &str) -> bool {
        !text.chars().any(|c| c.is_ascii_alphabetic()) || self.score(text) <= self.threshold
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + 4 * self.weights.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(self.weights.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.bias.to_le_bytes());
        b.extend_from_slice(&self.threshold.to_le_bytes());
        for w in &self.weights {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b
    }

    pub fn from_bytes(b: &[u8]) -> std::result::Result<Router, String> {
        if b.len() < HEADER || &b[..8] != MAGIC {
            return Err("not a moonlens router (magic MLROUTE1)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let f32_at = |o: usize| f32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let buckets = u32_at(8) as usize;
        if buckets == 0 || buckets > MAX_BUCKETS {
            return Err(format!("{buckets} buckets (1 to {MAX_BUCKETS})"));
        }
        if b.len() != HEADER + 4 * buckets {
            return Err(format!(
                "{} bytes for {buckets} buckets (expected {})",
                b.len(),
                HEADER + 4 * buckets
            ));
        }
        let r = Router {
            bias: f32_at(12),
            threshold: f32_at(16),
            weights: (0..buckets).map(|i| f32_at(HEADER + 4 * i)).collect(),
        };
        if !(r.bias.is_finite()
            && r.threshold.is_finite()
            && r.weights.iter().all(|w| w.is_finite()))
        {
            return Err("a weight, the bias or the threshold is not a finite number".into());
        }
        Ok(r)
    }

    pub fn load(path: &Path) -> Result<Router> {
        let b = std::fs::read(path).context(format_args!("reading {}", path.display()))?;
        Router::from_bytes(&b).map_err(|e| {
            crate::Error::new(format!(
                "{}: {e}; rebuild it with `moonlens-host route`",
                path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_words_and_their_marked_grams() {
        let f = features("Un cochon.", 1 << 20);
        // "un": whole, u n, ^u un n$, ^un un$, ^un$ (9); "cochon": whole, c o h n, 7 pairs,
        // 6 triples, 5 quadruples (23); "n" and "n$" are in both
        assert_eq!(f.len(), 9 + 23 - 2, "{f:?}");
        assert_eq!(
            f,
            features("UN  COCHON!!", 1 << 20),
            "case and punctuation do not count"
        );
        assert!(features("123 …", 64).is_empty());
        assert!(features("a", 1).iter().all(|&s| s == 0));
        assert!(f.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    }

    #[test]
    fn scores_sum_the_slots_and_round_trip() {
        let mut r = Router {
            weights: vec![0.0; 64],
            bias: -0.5,
            threshold: 0.0,
        };
        assert!(r.is_english("a rabbit"));
        for s in features("cochon", 64) {
            r.weights[s] = 1.0;
        }
        assert!(!r.is_english("un cochon"));
        assert!(r.is_english("42"), "nothing to tell: English");
        let back = Router::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn damaged_files_are_refused() {
        let r = Router {
            weights: vec![0.25; 8],
            bias: 0.0,
            threshold: 0.0,
        };
        let b = r.to_bytes();
        assert!(Router::from_bytes(&b[..b.len() - 1]).is_err(), "truncated");
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(Router::from_bytes(&bad).is_err(), "magic");
        let mut nan = b.clone();
        nan[HEADER..HEADER + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Router::from_bytes(&nan).is_err(), "NaN weight");
        let mut zero = b;
        zero[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(Router::from_bytes(&zero).is_err(), "no buckets");
    }
}
