//! Exact top-k search over the ring: cosine of an f32 query against every live int8 entry.
//!
//! The inner loop converts 16 int8 values to f32 and multiplies into 16 independent
//! accumulators, a shape LLVM vectorizes on x86-64 (SSE2/AVX) and aarch64 (NEON) without
//! `std::arch`. The entry's scale is applied once per entry, and since stored embeddings are
//! L2-normalized before quantization the score is the cosine up to int8 rounding.
//! The best k are kept in a fixed-capacity heap (`heapless`): memory does not grow with k
//! requests or the index size.

use super::{Header, Index, SLOT_FIXED};
use core::cmp::Ordering;
use heapless::binary_heap::{BinaryHeap, Min};

/// The most hits one query may ask for.
pub const K_MAX: usize = 100;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only entries with `ts_ms >= since_ms`.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only entries of this source.
    pub source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub seq: u64,
    pub score: f32,
}

#[derive(PartialEq)]
struct Scored(f32, u64);
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        // by score, then newer first among equals
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Σ q[i] * e[i] with e as int8.
#[inline]
pub fn dot_i8(q: &[f32], e: &[i8]) -> f32 {
    let mut acc = [0f32; 16];
    let (qc, qr) = q.as_chunks::<16>();
    let (ec, er) = e.as_chunks::<16>();
    for (qq, ee) in qc.iter().zip(ec) {
        for j in 0..16 {
            acc[j] += qq[j] * ee[j] as f32;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in qr.iter().zip(er) {
        s += a * *b as f32;
    }
    s
}

/// Top-k over raw slot bytes (shared by the live index and the benchmark).
pub fn top_k(slots: &[u8], header: &Header, query: &[f32], k: usize, filter: &Filter) -> Vec<Hit> {
    let k = k.clamp(1, K_MAX);
    let dim = header.dim as usize;
    let ss = header.slot_size as usize;
    let mut heap: BinaryHeap<Scored, Min, K_MAX> = BinaryHeap::new();
    let filtered = filter != &Filter::default();
    for slot in slots.chunks_exact(ss).take(header.capacity as usize) {
        let seq = u64::from_le_bytes(slot[0..8].try_into().expect("8"));
        if seq == 0 {
            continue;
        }
        if filtered && !passes(slot, filter) {
            continue;
        }
        let scale = f32::from_le_bytes(slot[16..20].try_into().expect("4"));
        // SAFETY-free reinterpretation: i8 and u8 have the same layout; bytemuck-style cast.
        let emb: &[i8] = unsafe_free_cast(&slot[SLOT_FIXED..SLOT_FIXED + dim]);
        let score = dot_i8(query, emb) * scale;
        let item = Scored(score, seq);
        if heap.len() < k {
            let _ = heap.push(item);
        } else if heap.peek().is_some_and(|m| item > *m) {
            let _ = heap.pop();
            let _ = heap.push(item);
        }
    }
    let mut hits: Vec<Hit> = heap
        .into_vec()
        .into_iter()
        .map(|Scored(score, seq)| Hit { seq, score })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.seq.cmp(&a.seq)));
    hits
}

fn unsafe_free_cast(b: &[u8]) -> &[i8] {
    // `[u8]` and `[i8]` share size and alignment; this is the one cast the scan needs.
    let ptr = b.as_ptr() as *const i8;
    // SAFETY: same length, same alignment (1), lifetime tied to `b`.
    unsafe { std::slice::from_raw_parts(ptr, b.len()) }
}

fn passes(slot: &[u8], f: &Filter) -> bool {
    let ts = i64::from_le_bytes(slot[8..16].try_into().expect("8"));
    if f.since_ms.is_some_and(|s| ts < s) || f.until_ms.is_some_and(|u| ts > u) {
        return false;
    }
    if let Some(src) = &f.source {
        let n = (slot[28] as usize).min(super::SOURCE_MAX);
        if &slot[32..32 + n] != src.as_bytes() {
            return false;
        }
    }
    true
}

impl Index {
    /// The best `k` (at most [`K_MAX`]) live entries for an L2-normalized query.
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter) -> Vec<Hit> {
        self.with_slots(|slots, h| top_k(slots, h, query, k, filter))
    }
}
