//! Top-k search over the ring: cosine of an f32 query against every live int8 entry, exact
//! ([`top_k`]), or in two stages for large rings ([`top_k_two_stage`]: the projection codes
//! of every entry, [`super::codes`], pick [`CANDIDATES`], which the exact score ranks).
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
/// Entries the first stage hands to the exact second (`bench search --candidates N` prints
/// the recall@10 against the exact scan for any count).
pub const CANDIDATES: usize = 16_384;
/// From this many live entries on, [`Mode::Auto`] searches in two stages: below it the exact
/// scan is already fast (200k entries: p50 ~8 ms on one core) and the first stage would not
/// pay for itself.
pub const TWO_STAGE_FROM: u64 = 250_000;

/// How a search ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Two stages on rings of [`TWO_STAGE_FROM`] entries or more whose codes are ready,
    /// exact otherwise: on near-duplicate camera frames the two stages return the exact top
    /// 10 (recall@10 1.00) at a million entries in a fifth of the time (`bench search`).
    #[default]
    Auto,
    Exact,
    /// Two stages whatever the size (exact while the codes have no directions yet).
    TwoStage,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only entries with `ts_ms >= since_ms`.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only entries of this source.
    pub source: Option<String>,
}

/// What a search adds to the global score of each of the global ranking's best
/// [`K_MAX`] candidates: `lambda` × the best cosine of `part` (the query's part in the
/// regions' space, unit length: `encoder::regions::query_part`) with the candidate's kept
/// regions; for an entry stored without regions, with the same part of its own embedding
/// (its whole frame as its one region). The hits are then ranked by that sum.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionQuery {
    pub part: Vec<f32>,
    pub lambda: f32,
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
    pub(super) q: Vec<i16>,
    pub(super) scale: f32,
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
        push(heap, Scored(score, seq), k);
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
    ranked(heap)
}

/// Two stages: the first-stage score of every entry's code (entries the filter refuses are
/// left out here already), the best `candidates` kept, then the exact score of those alone.
/// Without codes (no directions learned yet) this is the exact scan.
pub fn top_k_two_stage(
    slots: &[u8],
    header: &Header,
    codes: &super::codes::Codes,
    query: &[f32],
    k: usize,
    filter: &Filter,
    candidates: usize,
) -> Vec<Hit> {
    if !codes.ready() {
        return top_k(slots, header, query, k, filter);
    }
    let k = k.clamp(1, K_MAX);
    let (dim, ss) = (header.dim as usize, header.slot_size as usize);
    let mut first = Vec::with_capacity(header.capacity as usize);
    codes.scores(query, &mut first);
    if filter != &Filter::default() {
        let source = filter
            .source
            .as_deref()
            .map(|s| super::slot::fit(s, super::SOURCE_MAX).as_bytes());
        for (d, bytes) in first.iter_mut().zip(slots.chunks_exact(ss)) {
            let slot = SlotView::new(bytes, dim);
            if slot.seq() == 0 || !passes(&slot, filter, source) {
                *d = f32::NEG_INFINITY;
            }
        }
    }
    let chosen = best(&first, candidates.max(k));
    let query = Query::new(query);
    let mut heap: Heap = BinaryHeap::new();
    for (n, &i) in chosen.iter().enumerate() {
        // the candidates are scattered over the ring: ask for a later one's bytes now, so
        // the memory's latency overlaps this one's arithmetic
        if let Some(&ahead) = chosen.get(n + PREFETCH_AHEAD) {
            prefetch(&slots[ahead * ss..(ahead + 1) * ss]);
        }
        let slot = SlotView::new(&slots[i * ss..(i + 1) * ss], dim);
        let seq = slot.seq();
        if seq == 0 {
            continue;
        }
        let score = dot_i16_i8(&query.q, slot.embedding()) as f32 * (slot.scale() * query.scale);
        push(&mut heap, Scored(score, seq), k);
    }
    ranked(heap)
}

/// Candidates ahead whose slot the exact stage asks the memory for.
const PREFETCH_AHEAD: usize = 4;

/// A hint to load `bytes` into the cache (x86-64; elsewhere nothing).
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is a hint that never faults; the pointer is inside `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// The indices of the `n` best finite scores (all of them when fewer), in slot order (the
/// exact stage then reads the ring forwards). A threshold from a sample of the scores finds
/// them in two passes without sorting a million values; ties at the boundary are cut in
/// slot order.
fn best(scores: &[f32], n: usize) -> Vec<usize> {
    // a threshold a little below the n-th best, from every step-th score; lowered until n
    // pass it (down to -inf: every finite score, for rings with fewer than n codes)
    let step = (scores.len() / 16_384).max(1);
    let mut sample: Vec<f32> = scores
        .iter()
        .step_by(step)
        .copied()
        .filter(|s| s.is_finite())
        .collect();
    sample.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut want = (n / step) * 5 / 4 + 1;
    loop {
        let t = sample.get(want).copied().unwrap_or(f32::NEG_INFINITY);
        let mut above: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] > t).collect();
        if above.len() >= n || t == f32::NEG_INFINITY {
            if above.len() > n {
                // keep the n best of them (ties: the earlier slot)
                above.select_nth_unstable_by(n - 1, |&a, &b| {
                    scores[b].total_cmp(&scores[a]).then(a.cmp(&b))
                });
                above.truncate(n);
            }
            above.sort_unstable();
            return above;
        }
        want = want * 2 + 1;
    }
}

fn push(heap: &mut Heap, item: Scored, k: usize) {
    if heap.len() < k {
        let _ = heap.push(item);
    } else if heap.peek().is_some_and(|m| item > *m) {
        let _ = heap.pop();
        let _ = heap.push(item);
    }
}

fn ranked(heap: Heap) -> Vec<Hit> {
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
    /// The best `k` (at most [`K_MAX`]) live entries for an L2-normalized query, exactly.
    pub fn search(&self, query: &[f32], k: usize, filter: &Filter) -> Vec<Hit> {
        self.search_mode(query, k, filter, Mode::Exact)
    }

    /// Whether two-stage searches use their codes (the ring has held
    /// [`super::codes::LEARN_FROM`] entries since it was opened or re-projected).
    pub fn two_stage_ready(&self) -> bool {
        self.with_slots_and_codes(|_, _, codes| codes.ready())
    }

    /// [`Index::search_mode`], then the best [`K_MAX`] of the global ranking re-scored by
    /// their regions ([`RegionQuery`]) and the best `k` of those returned.
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
        mode: Mode,
        regions: Option<&RegionQuery>,
    ) -> Vec<Hit> {
        let Some(rq) = regions.filter(|r| r.lambda != 0.0 && !r.part.is_empty()) else {
            return self.search_mode(query, k, filter, mode);
        };
        let mut hits = self.search_mode(query, K_MAX, filter, mode);
        self.add_region_scores(&mut hits, rq);
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.seq.cmp(&a.seq)));
        hits.truncate(k.clamp(1, K_MAX));
        hits
    }

    pub fn search_mode(&self, query: &[f32], k: usize, filter: &Filter, mode: Mode) -> Vec<Hit> {
        let two = match mode {
            Mode::Auto => self.len() >= TWO_STAGE_FROM,
            Mode::Exact => false,
            Mode::TwoStage => true,
        };
        self.with_slots_and_codes(|slots, h, codes| {
            if two {
                top_k_two_stage(slots, h, codes, query, k, filter, CANDIDATES)
            } else {
                top_k(slots, h, query, k, filter)
            }
        })
    }
}
