//! Sign codes for the first stage of a two-stage search: one bit per embedding value (set
//! when the value is positive), 64 values a word, so an entry of 640 int8 values is 80 bytes
//! here instead of 752 in its slot.
//!
//! Kept in memory only, beside the maps: set for each valid slot by the open-time recovery's
//! pass over the slots, set on every append, rebuilt after a re-projection. So
//! the file format does not change and the codes can never disagree with the slots on disk:
//! a crash loses nothing that the next open does not rebuild. Cost: 80 bytes an entry (8 MB
//! for the board's 100k ring, 80 MB at a million).
//!
//! Why signs: for unit vectors the angle between two vectors is estimated by the share of
//! coordinates whose signs differ (random-hyperplane hashing; here the hyperplanes are the
//! coordinate axes, which is good enough for embeddings whose values are spread), and a
//! Hamming distance is an XOR and a popcount per 64 values.

use super::slot::SlotView;
use super::Header;

pub struct Codes {
    words: usize,
    bits: Vec<u64>,
}

/// The sign bits of `v` (any values that compare with zero), `words` words long.
fn pack<T: Copy + PartialOrd + Default>(v: &[T], out: &mut [u64]) {
    out.fill(0);
    for (i, x) in v.iter().enumerate() {
        if *x > T::default() {
            out[i / 64] |= 1 << (i % 64);
        }
    }
}

impl Codes {
    /// All-zero codes for `capacity` slots of `dim` values (what an empty slot has).
    pub fn new(dim: usize, capacity: usize) -> Codes {
        let words = dim.div_ceil(64);
        Codes {
            words,
            bits: vec![0; words * capacity],
        }
    }

    /// Codes of every slot of `slots` (empty ones read as all zeros).
    pub fn build(slots: &[u8], h: &Header) -> Codes {
        let dim = h.dim as usize;
        let mut codes = Codes::new(dim, h.capacity as usize);
        let ss = h.slot_size as usize;
        for (i, bytes) in slots.chunks_exact(ss).take(h.capacity as usize).enumerate() {
            let v = SlotView::new(bytes, dim);
            if v.seq() != 0 {
                codes.set(i, v.embedding());
            }
        }
        codes
    }

    pub fn set(&mut self, slot: usize, embedding: &[i8]) {
        let w = self.words;
        pack(embedding, &mut self.bits[slot * w..(slot + 1) * w]);
    }

    pub fn clear(&mut self, slot: usize) {
        let w = self.words;
        self.bits[slot * w..(slot + 1) * w].fill(0);
    }

    /// The query's code.
    pub fn query(&self, q: &[f32]) -> Vec<u64> {
        let mut out = vec![0; self.words];
        pack(q, &mut out);
        out
    }

    /// Hamming distance of every slot's code to `q` into `out` (one value a slot).
    pub fn distances(&self, q: &[u64], out: &mut Vec<u16>) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("popcnt") {
                // SAFETY: the CPU was just checked for POPCNT.
                return unsafe { distances_popcnt(self, q, out) };
            }
        }
        distances_portable(self, q, out)
    }
}

#[inline(always)]
fn distances_portable(c: &Codes, q: &[u64], out: &mut Vec<u16>) {
    out.clear();
    out.extend(c.bits.chunks_exact(c.words).map(|code| {
        code.iter()
            .zip(q)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum::<u32>() as u16
    }));
}

/// The same loop with the POPCNT instruction (baseline x86-64 counts bits in ~10 ALU ops).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn distances_popcnt(c: &Codes, q: &[u64], out: &mut Vec<u16>) {
    distances_portable(c, q, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_count_the_signs_that_differ() {
        let mut c = Codes {
            words: 2,
            bits: vec![0; 6],
        };
        let e: Vec<i8> = (0..100).map(|i| if i % 3 == 0 { 5 } else { -5 }).collect();
        c.set(0, &e);
        let flipped: Vec<i8> = e
            .iter()
            .enumerate()
            .map(|(i, x)| if i < 10 { -x } else { *x })
            .collect();
        c.set(1, &flipped);
        let q: Vec<f32> = e.iter().map(|&x| x as f32).collect();
        let mut d = Vec::new();
        c.distances(&c.query(&q), &mut d);
        // slot 2 is empty: every positive query value differs from its zero code
        let positives = e.iter().filter(|&&x| x > 0).count() as u16;
        assert_eq!(d, vec![0, 10, positives]);
        c.clear(1);
        c.distances(&c.query(&q), &mut d);
        assert_eq!(d[1], positives);
    }
}
