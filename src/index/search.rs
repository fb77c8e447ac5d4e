//! Exact top-k search over the ring: cosine of an f32 query against every live int8 entry.
//!
//! The query is quantized to i16 once; the inner loop multiplies it with each entry's int8
//! values into 16 independent i32 accumulators, a shape LLVM vectorizes on x86-64 (pmaddwd;
//! an AVX2 copy is chosen at run time) and aarch64 (NEON) without `std::arch` intrinsics.
//! Both scales are applied once per entry; since stored embeddings are L2-normalized before
//! quantization the score is the cosine up to int8 rounding.
//! The best k are kept in a fixed-capacity heap (`heapless`): memory does not grow with k
//! requests or the index size.

use super::slot::SlotView;
use super::{Header, Index};
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

/// The query as i16 with one scale (`q ≈ q16 * scale`): i16 x i8 products summed in i32
/// are exact, and i16 keeps the query's own rounding error near 1e-5 of the score.
pub struct Query {
    q: Vec<i16>,
    scale: f32,
}

impl Query {
    pub fn new(q: &[f32]) -> Query {
        // largest magnitude such that dim * qmax * 127 fits an i32 accumulator
        let qmax = (i32::MAX as f64 / (127.0 * q.len().max(1) as f64)).min(32767.0) as f32;
        let amax = q.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if amax > 0.0 { amax / qmax } else { 1.0 };
        Query {
            q: q.iter().map(|v| (v / scale).round() as i16).collect(),
            scale,
        }
    }
}

/// Σ q[i] * e[i] in i32. Sixteen independent lanes: LLVM turns this into pmaddwd (x86-64)
/// or smlal (aarch64) without `std::arch`.
#[inline(always)]
pub fn dot_i16_i8(q: &[i16], e: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (qc, qr) = q.as_chunks::<16>();
    let (ec, er) = e.as_chunks::<16>();
    for (qq, ee) in qc.iter().zip(ec) {
        for j in 0..16 {
            acc[j] += qq[j] as i32 * ee[j] as i32;
        }
    }
    let mut s: i32 = acc.iter().sum();
    for (a, b) in qr.iter().zip(er) {
        s += *a as i32 * *b as i32;
    }
    s
}

type Heap = BinaryHeap<Scored, Min, K_MAX>;

#[inline(always)]
fn scan(slots: &[u8], header: &Header, query: &Query, k: usize, filter: &Filter, heap: &mut Heap) {
    let dim = header.dim as usize;
    let ss = header.slot_size as usize;
    let filtered = filter != &Filter::default();
    // the source as stored: cut to its field once per query, not once per entry
    let source = filter
        .source
        .as_deref()
        .map(|s| super::slot::fit(s, super::SOURCE_MAX).as_bytes());
    for bytes in slots.chunks_exact(ss).take(header.capacity as usize) {
        let slot = SlotView::new(bytes, dim);
        let seq = slot.seq();
        if seq == 0 || (filtered && !passes(&slot, filter, source)) {
            continue;
        }
        let score = dot_i16_i8(&query.q, slot.embedding()) as f32 * (slot.scale() * query.scale);
        let item = Scored(score, seq);
        if heap.len() < k {
            let _ = heap.push(item);
        } else if heap.peek().is_some_and(|m| item > *m) {
            let _ = heap.pop();
            let _ = heap.push(item);
        }
    }
}

/// The same scan compiled for AVX2 (16 i16 lanes per instruction instead of SSE2's 8),
/// chosen at run time; the portable build stays baseline x86-64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_avx2(
    slots: &[u8],
    header: &Header,
    query: &Query,
    k: usize,
    filter: &Filter,
    heap: &mut Heap,
) {
    scan(slots, header, query, k, filter, heap)
}

/// Top-k over raw slot bytes (shared by the live index and the benchmark).
pub fn top_k(slots: &[u8], header: &Header, query: &[f32], k: usize, filter: &Filter) -> Vec<Hit> {
    let k = k.clamp(1, K_MAX);
    let query = Query::new(query);
    let mut heap: Heap = BinaryHeap::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU was just checked for AVX2.
            unsafe { scan_avx2(slots, header, &query, k, filter, &mut heap) };
        } else {
            scan(slots, header, &query, k, filter, &mut heap);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    scan(slots, header, &query, k, filter, &mut heap);
    let mut hits: Vec<Hit> = heap
        .into_vec()
        .into_iter()
        .map(|Scored(score, seq)| Hit { seq, score })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.seq.cmp(&a.seq)));
    hits
}

/// `source`: the filter's source cut as a slot stores it ([`super::slot::fit`]).
fn passes(slot: &SlotView, f: &Filter, source: Option<&[u8]>) -> bool {
    let ts = slot.ts_ms();
    if f.since_ms.is_some_and(|s| ts < s) || f.until_ms.is_some_and(|u| ts > u) {
        return false;
    }
    source.is_none_or(|src| slot.source_bytes() == src)
}

impl Index {
    /// The best `k` (at most [`K_MAX`]) live entries for an L2-normalized query.
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter) -> Vec<Hit> {
        self.with_slots(|slots, h| top_k(slots, h, query, k, filter))
    }
}
