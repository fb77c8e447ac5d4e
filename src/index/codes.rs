//! Projection codes for the first stage of a two-stage search: each entry's embedding
//! projected onto the [`K`] directions along which the ring's embeddings vary most (their
//! principal components), as int8 with a scale: 96 bytes + 4 here for an entry of 752 in
//! its slot. The first stage scores every code against the query's projection (the same
//! i16 × i8 dot as the exact scan, 96 values instead of 640); the best candidates are then
//! scored exactly.
//!
//! Why a learned projection and not sign bits (what stop 6 used): on near-duplicate camera
//! frames the exact top 10 sits among thousands of copies of a few views, and the first
//! stage must order the views, not only find the scene. Sign bits of 640 coordinates rank
//! them poorly (recall@10 0.74 at a million entries with 8,192 candidates); 96 principal
//! components keep the directions the views differ in and return the exact top 10 (recall
//! 1.00) from 16,384 candidates in 9 ms (`bench search` on real embeddings; README.md).
//!
//! Kept in memory only: the directions are learned from up to [`SAMPLE`] entries spread over
//! the ring when the index is opened (or when an empty ring first holds [`LEARN_FROM`]
//! entries, or after a re-projection), every entry is projected then, and each append
//! projects its own. So the file format does not change and a crash loses nothing the next
//! open does not rebuild. Until the directions exist, a two-stage search is an exact one.
//! Cost: 100 bytes an entry (10 MB for a 100k ring, 100 MB at a million), and at open the
//! projection of every entry (all cores; `bench search` prints the time).

use super::search::{dot_i16_i8, Query};
use super::slot::SlotView;
use super::Header;

/// Directions kept (a multiple of 16: the dot product's lane count).
pub const K: usize = 96;
/// Entries the directions are learned from, at most.
pub const SAMPLE: usize = 1024;
/// A ring with fewer valid entries has no directions yet (and needs none: its exact scan
/// takes well under a millisecond).
pub const LEARN_FROM: u64 = 4096;
/// Slots a block of codes interleaves.
const BLOCK: usize = 16;
/// Iterations of the orthogonal (subspace) iteration that finds the directions.
const ITERATIONS: usize = 16;

pub struct Codes {
    dim: usize,
    /// The directions (K rows of `dim`, orthonormal), as f32 for queries and as i16 rows for
    /// projecting the stored int8 embeddings exactly.
    basis: Option<(Vec<f32>, Vec<Query>)>,
    /// K int8 values a slot, in blocks of [`BLOCK`] slots: within a block, for each pair of
    /// directions, each slot's two values side by side (`[s0d0, s0d1, s1d0, s1d1, …]`), so
    /// the first stage multiplies a pair of query values into 16 slots at once and never
    /// sums across lanes (`score_block`).
    values: Vec<i8>,
    /// A slot's code scale; 0 marks a slot without a code (empty, cleared, not yet projected).
    scales: Vec<f32>,
}

impl Codes {
    /// No directions yet; `capacity` slots without codes.
    pub fn new(dim: usize, capacity: usize) -> Codes {
        Codes {
            dim,
            basis: None,
            values: vec![0; K * capacity.div_ceil(BLOCK) * BLOCK],
            scales: vec![0.0; capacity],
        }
    }

    /// Whether the directions exist (a two-stage search can use the codes).
    pub fn ready(&self) -> bool {
        self.basis.is_some()
    }

    /// Learns the directions from the valid slots of `slots` and projects every one of them;
    /// with fewer than [`LEARN_FROM`] valid slots, leaves the codes without directions.
    pub fn build(slots: &[u8], h: &Header) -> Codes {
        let (dim, ss, cap) = (h.dim as usize, h.slot_size as usize, h.capacity as usize);
        let mut codes = Codes::new(dim, cap);
        let valid: Vec<usize> = (0..cap)
            .filter(|&i| SlotView::new(&slots[i * ss..(i + 1) * ss], dim).seq() != 0)
            .collect();
        if (valid.len() as u64) < LEARN_FROM || dim < K {
            return codes;
        }
        let step = valid.len() as f64 / SAMPLE.min(valid.len()) as f64;
        let samples: Vec<Vec<f32>> = (0..SAMPLE.min(valid.len()))
            .map(|j| {
                let i = valid[(j as f64 * step) as usize];
                let v = SlotView::new(&slots[i * ss..(i + 1) * ss], dim);
                v.embedding()
                    .iter()
                    .map(|&x| x as f32 * v.scale())
                    .collect()
            })
            .collect();
        let basis = principal_directions(&samples, dim);
        let rows: Vec<Query> = basis.chunks_exact(dim).map(Query::new).collect();
        codes.basis = Some((basis, rows));
        // every slot's code, whole blocks split among the cores
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = cap.div_ceil(threads).div_ceil(BLOCK).max(1) * BLOCK;
        let rows = &codes.basis.as_ref().expect("just set").1;
        std::thread::scope(|s| {
            for ((values, scales), part) in codes
                .values
                .chunks_mut(K * per)
                .zip(codes.scales.chunks_mut(per))
                .zip(slots.chunks(ss * per))
            {
                s.spawn(move || {
                    let mut code = [0i8; K];
                    for (i, (scale, bytes)) in
                        scales.iter_mut().zip(part.chunks_exact(ss)).enumerate()
                    {
                        let v = SlotView::new(bytes, dim);
                        if v.seq() != 0 {
                            *scale = project(rows, v.embedding(), v.scale(), &mut code);
                            place(values, i, &code);
                        }
                    }
                });
            }
        });
        codes
    }

    /// The code of the entry now in `slot` (nothing before the directions exist).
    pub fn set(&mut self, slot: usize, embedding: &[i8], scale: f32) {
        if let Some((_, rows)) = &self.basis {
            let mut code = [0i8; K];
            self.scales[slot] = project(rows, embedding, scale, &mut code);
            place(&mut self.values, slot, &code);
        }
    }

    pub fn clear(&mut self, slot: usize) {
        self.scales[slot] = 0.0;
    }

    /// The first-stage score of every slot for an L2-normalized `query` into `out` (one a
    /// slot, `-inf` for slots without a code); empty when there are no directions.
    pub fn scores(&self, query: &[f32], out: &mut Vec<f32>) {
        out.clear();
        let Some((basis, _)) = &self.basis else {
            return;
        };
        let z: Vec<f32> = basis
            .chunks_exact(self.dim)
            .map(|row| row.iter().zip(query).map(|(a, b)| a * b).sum())
            .collect();
        score_all(&self.values, &self.scales, &Query::new(&z), out)
    }
}

/// `embedding` (int8 with `scale`) projected onto `rows` into `code`; returns the code's scale
/// (0 for a zero projection, which then reads as "no code": harmless, it could only rank last).
fn project(rows: &[Query], embedding: &[i8], scale: f32, code: &mut [i8]) -> f32 {
    let mut z = [0f32; K];
    for (zj, row) in z.iter_mut().zip(rows) {
        *zj = dot_i16_i8(&row.q, embedding) as f32 * row.scale * scale;
    }
    let amax = z.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        code.fill(0);
        return 0.0;
    }
    let s = amax / 127.0;
    for (c, v) in code.iter_mut().zip(&z) {
        *c = (v / s).round() as i8;
    }
    s
}

/// Writes `code` as slot `slot`'s values in the block layout (see [`Codes`]).
fn place(values: &mut [i8], slot: usize, code: &[i8; K]) {
    let block = &mut values[slot / BLOCK * K * BLOCK..][..K * BLOCK];
    let j = slot % BLOCK;
    for (p, pair) in code.chunks_exact(2).enumerate() {
        let at = p * 2 * BLOCK + 2 * j;
        block[at] = pair[0];
        block[at + 1] = pair[1];
    }
}

/// The i32 dot products of one block's 16 codes with the query's K values.
#[inline(always)]
fn score_block(block: &[i8], zq: &[i16]) -> [i32; BLOCK] {
    let mut acc = [0i32; BLOCK];
    for (pair, q) in block.chunks_exact(2 * BLOCK).zip(zq.chunks_exact(2)) {
        let (q0, q1) = (q[0] as i32, q[1] as i32);
        for (j, a) in acc.iter_mut().enumerate() {
            *a += q0 * pair[2 * j] as i32 + q1 * pair[2 * j + 1] as i32;
        }
    }
    acc
}

/// The same with AVX2: per pair of directions, 16 slots' value pairs widened to i16 and
/// multiplied-and-added against the query pair (`vpmaddwd`), 8 slots an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn score_block_avx2(block: &[i8], zq: &[i16]) -> [i32; BLOCK] {
    use std::arch::x86_64::*;
    assert!(block.len() >= K * BLOCK && zq.len() >= K);
    let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for p in 0..K / 2 {
        // SAFETY: AVX2 is enabled for this function; every load reads 16 bytes inside
        // `block` (p * 32 + 16 + 16 <= K * BLOCK, checked above).
        unsafe {
            let qp = _mm256_set1_epi32((zq[2 * p] as u16 as i32) | ((zq[2 * p + 1] as i32) << 16));
            let base = block.as_ptr().add(p * 2 * BLOCK);
            let a = _mm256_cvtepi8_epi16(_mm_loadu_si128(base as *const __m128i));
            let b = _mm256_cvtepi8_epi16(_mm_loadu_si128(base.add(16) as *const __m128i));
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(a, qp));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(b, qp));
        }
    }
    let mut out = [0i32; BLOCK];
    // SAFETY: out holds 16 i32, two unaligned 256-bit stores fit exactly.
    unsafe {
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, lo);
        _mm256_storeu_si256(out.as_mut_ptr().add(8) as *mut __m256i, hi);
    }
    out
}

fn score_all(values: &[i8], scales: &[f32], zq: &Query, out: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    for (block, s) in values.chunks_exact(K * BLOCK).zip(scales.chunks(BLOCK)) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU was checked for AVX2.
        let dots = if avx2 {
            unsafe { score_block_avx2(block, &zq.q) }
        } else {
            score_block(block, &zq.q)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let dots = score_block(block, &zq.q);
        out.extend(s.iter().zip(dots).map(|(&s, d)| {
            if s == 0.0 {
                f32::NEG_INFINITY
            } else {
                d as f32 * (s * zq.scale)
            }
        }));
    }
}

/// The K leading principal directions of `samples` (rows of `dim`), K × dim row-major,
/// orthonormal: orthogonal iteration on the samples' covariance from a fixed start, so the
/// same ring gives the same directions.
fn principal_directions(samples: &[Vec<f32>], dim: usize) -> Vec<f32> {
    let n = samples.len().max(1) as f32;
    let mut mean = vec![0f32; dim];
    for s in samples {
        for (m, x) in mean.iter_mut().zip(s) {
            *m += x / n;
        }
    }
    // covariance, dim × dim (symmetric; filled by rows, the inner loop over a row vectorizes)
    let mut cov = vec![0f32; dim * dim];
    let mut c = vec![0f32; dim];
    for s in samples {
        for ((ci, x), m) in c.iter_mut().zip(s).zip(&mean) {
            *ci = x - m;
        }
        for (i, row) in cov.chunks_exact_mut(dim).enumerate() {
            let a = c[i];
            for (r, b) in row.iter_mut().zip(&c) {
                *r += a * b;
            }
        }
    }
    // start: a fixed pseudo-random basis (xorshift), then V <- orth(C V)
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut v: Vec<f32> = (0..K * dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    orthonormalize(&mut v, dim);
    // C V computed as (V C)ᵀ = V C (C is symmetric): row k of the product is the sum of C's
    // rows weighted by V's row k, an axpy the compiler vectorizes (a dot product per entry
    // would not: f32 sums keep their order)
    let mut w = vec![0f32; K * dim];
    for _ in 0..ITERATIONS {
        w.fill(0.0);
        for (wr, vr) in w.chunks_exact_mut(dim).zip(v.chunks_exact(dim)) {
            for (&a, crow) in vr.iter().zip(cov.chunks_exact(dim)) {
                for (x, c) in wr.iter_mut().zip(crow) {
                    *x += a * c;
                }
            }
        }
        std::mem::swap(&mut v, &mut w);
        orthonormalize(&mut v, dim);
    }
    v
}

/// Modified Gram-Schmidt on the rows of `v` (K rows of `dim`).
fn orthonormalize(v: &mut [f32], dim: usize) {
    for i in 0..K {
        let (done, rest) = v.split_at_mut(i * dim);
        let row = &mut rest[..dim];
        for prev in done.chunks_exact(dim) {
            let d: f32 = prev.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
            for (r, p) in row.iter_mut().zip(prev) {
                *r -= d * p;
            }
        }
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        for r in row.iter_mut() {
            *r /= norm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block layout and both kernels give each slot's plain dot product.
    #[test]
    fn block_scores_are_plain_dot_products() {
        let slots: usize = 37; // two full blocks and a partial one
        let mut values = vec![0i8; K * slots.div_ceil(BLOCK) * BLOCK];
        let code =
            |i: usize| -> [i8; K] { std::array::from_fn(|d| ((i * 31 + d * 7) % 255) as i8) };
        for i in 0..slots {
            place(&mut values, i, &code(i));
        }
        let zq: Vec<i16> = (0..K).map(|d| (d as i16 * 613) - 29_000).collect();
        for (b, block) in values.chunks_exact(K * BLOCK).enumerate() {
            let portable = score_block(block, &zq);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: checked just above
                assert_eq!(unsafe { score_block_avx2(block, &zq) }, portable);
            }
            for (j, got) in portable
                .iter()
                .enumerate()
                .filter(|(j, _)| b * BLOCK + j < slots)
            {
                let want: i32 = code(b * BLOCK + j)
                    .iter()
                    .zip(&zq)
                    .map(|(&c, &q)| c as i32 * q as i32)
                    .sum();
                assert_eq!(*got, want, "slot {}", b * BLOCK + j);
            }
        }
    }

    /// Samples that vary only in the first K coordinates: the learned directions span them,
    /// so a projection keeps those samples' dot products.
    #[test]
    fn the_directions_span_where_the_samples_vary() {
        let dim = 160;
        let mut state = 7u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let samples: Vec<Vec<f32>> = (0..600)
            .map(|_| (0..dim).map(|i| if i < K { rnd() } else { 0.0 }).collect())
            .collect();
        let basis = principal_directions(&samples, dim);
        for (i, row) in basis.chunks_exact(dim).enumerate() {
            let norm: f32 = row.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-4, "row {i}: norm {norm}");
            let outside: f32 = row[K..].iter().map(|x| x * x).sum();
            assert!(
                outside < 1e-3,
                "row {i} leaves the samples' span: {outside}"
            );
        }
        // a vector inside the span keeps its length through the projection
        let x = &samples[3];
        let len2: f32 = x.iter().map(|a| a * a).sum();
        let proj2: f32 = basis
            .chunks_exact(dim)
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum::<f32>().powi(2))
            .sum();
        assert!((proj2 / len2 - 1.0).abs() < 1e-3, "{proj2} vs {len2}");
    }
}
