//! The projection head of one tower, as the original design has it:
//!
//! ```text
//! projected = x·W0 + b0                       (Dense to the projection dim)
//! repeat `blocks` times:
//!     h = gelu(projected)·W + b               (GELU, Dense)
//!     h = dropout(h)                          (training only)
//!     projected = LayerNorm(projected + h)    (residual, LayerNorm with γ, β)
//! ```
//!
//! Forward keeps a tape of what backward needs; backward returns the gradient of every
//! parameter for a given gradient of the output (the input is frozen, so no dx).

use super::linalg::{gelu, gelu_grad, Mat, Rng};

/// Keras' `LayerNormalization` default epsilon; the exported ONNX node uses the same.
pub const LN_EPS: f64 = 1e-3;

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub w: Mat,
    pub b: Vec<f64>,
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub w0: Mat,
    pub b0: Vec<f64>,
    pub blocks: Vec<Block>,
}

/// What one forward pass remembers for backward.
pub struct Tape {
    x: Mat,
    steps: Vec<BlockTape>,
}

struct BlockTape {
    /// input of the block (`projected` before it)
    p: Mat,
    /// gelu(p)
    g: Mat,
    /// dropout keep-mask scaled by 1/(1-rate), or None without dropout
    mask: Option<Vec<f64>>,
    /// LayerNorm's normalized input and 1/σ per row
    xhat: Mat,
    inv_std: Vec<f64>,
}

impl Head {
    /// Glorot-uniform matrices, zero biases, γ = 1, β = 0 (Keras' defaults).
    pub fn new(input: usize, dim: usize, blocks: usize, rng: &mut Rng) -> Head {
        let glorot = |rows: usize, cols: usize, rng: &mut Rng| {
            let limit = (6.0 / (rows + cols) as f64).sqrt();
            let mut m = Mat::zeros(rows, cols);
            for v in &mut m.data {
                *v = (rng.uniform() * 2.0 - 1.0) * limit;
            }
            m
        };
        Head {
            w0: glorot(input, dim, rng),
            b0: vec![0.0; dim],
            blocks: (0..blocks)
                .map(|_| Block {
                    w: glorot(dim, dim, rng),
                    b: vec![0.0; dim],
                    gamma: vec![1.0; dim],
                    beta: vec![0.0; dim],
                })
                .collect(),
        }
    }

    pub fn input(&self) -> usize {
        self.w0.rows
    }

    pub fn dim(&self) -> usize {
        self.w0.cols
    }

    /// A head of the same shape with every parameter zero (gradient accumulators).
    pub fn zeros_like(&self) -> Head {
        let mut z = self.clone();
        z.visit_mut(&mut |p| p.iter_mut().for_each(|v| *v = 0.0));
        z
    }

    /// Every parameter tensor, in a fixed order (the optimizer and the file format rely on it).
    pub fn visit_mut(&mut self, f: &mut dyn FnMut(&mut [f64])) {
        f(&mut self.w0.data);
        f(&mut self.b0);
        for b in &mut self.blocks {
            f(&mut b.w.data);
            f(&mut b.b);
            f(&mut b.gamma);
            f(&mut b.beta);
        }
    }

    pub fn visit(&self, f: &mut dyn FnMut(&[f64])) {
        f(&self.w0.data);
        f(&self.b0);
        for b in &self.blocks {
            f(&b.w.data);
            f(&b.b);
            f(&b.gamma);
            f(&b.beta);
        }
    }

    /// Forward pass; `dropout` = Some((rate, rng)) while training.
    pub fn forward(&self, x: &Mat, mut dropout: Option<(f64, &mut Rng)>) -> (Mat, Tape) {
        let mut p = x.matmul(&self.w0);
        add_bias(&mut p, &self.b0);
        let mut steps = Vec::with_capacity(self.blocks.len());
        for blk in &self.blocks {
            let mut g = p.clone();
            g.data.iter_mut().for_each(|v| *v = gelu(*v));
            let mut h = g.matmul(&blk.w);
            add_bias(&mut h, &blk.b);
            let mask = dropout.as_mut().map(|(rate, rng)| {
                let keep = 1.0 - *rate;
                let m: Vec<f64> = (0..h.data.len())
                    .map(|_| {
                        if rng.uniform() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        }
                    })
                    .collect();
                h.data.iter_mut().zip(&m).for_each(|(v, k)| *v *= k);
                m
            });
            let mut r = p.clone();
            r.data.iter_mut().zip(&h.data).for_each(|(a, b)| *a += b);
            let (xhat, inv_std) = normalize_rows(&r);
            let mut out = xhat.clone();
            for i in 0..out.rows {
                for ((v, g), b) in out.row_mut(i).iter_mut().zip(&blk.gamma).zip(&blk.beta) {
                    *v = *v * g + b;
                }
            }
            steps.push(BlockTape {
                p,
                g,
                mask,
                xhat,
                inv_std,
            });
            p = out;
        }
        (
            p,
            Tape {
                x: x.clone(),
                steps,
            },
        )
    }

    /// Gradients of all parameters given d(loss)/d(output).
    pub fn backward(&self, tape: &Tape, d_out: &Mat) -> Head {
        let mut grad = self.zeros_like();
        let mut dp = d_out.clone();
        for (i, (blk, t)) in self.blocks.iter().zip(&tape.steps).enumerate().rev() {
            let gb = &mut grad.blocks[i];
            // LayerNorm: y = xhat·γ + β
            let n = dp.cols as f64;
            let mut dr = Mat::zeros(dp.rows, dp.cols);
            for row in 0..dp.rows {
                let dy = dp.row(row);
                let xh = t.xhat.row(row);
                let mut dxhat = vec![0.0; dp.cols];
                for j in 0..dp.cols {
                    gb.gamma[j] += dy[j] * xh[j];
                    gb.beta[j] += dy[j];
                    dxhat[j] = dy[j] * blk.gamma[j];
                }
                let sum: f64 = dxhat.iter().sum();
                let sum_x: f64 = dxhat.iter().zip(xh).map(|(a, b)| a * b).sum();
                for (j, d) in dr.row_mut(row).iter_mut().enumerate() {
                    *d = t.inv_std[row] / n * (n * dxhat[j] - sum - xh[j] * sum_x);
                }
            }
            // residual: r = p + dropout(g·W + b)
            let mut dh = dr.clone();
            if let Some(m) = &t.mask {
                dh.data.iter_mut().zip(m).for_each(|(v, k)| *v *= k);
            }
            gb.w = t.g.t_matmul(&dh);
            for row in 0..dh.rows {
                gb.b.iter_mut().zip(dh.row(row)).for_each(|(a, b)| *a += b);
            }
            let dg = dh.matmul_t(&blk.w);
            dp = dr;
            for ((d, g), p) in dp.data.iter_mut().zip(&dg.data).zip(&t.p.data) {
                *d += g * gelu_grad(*p);
            }
        }
        grad.w0 = tape.x.t_matmul(&dp);
        for row in 0..dp.rows {
            grad.b0
                .iter_mut()
                .zip(dp.row(row))
                .for_each(|(a, b)| *a += b);
        }
        grad
    }
}

fn add_bias(m: &mut Mat, b: &[f64]) {
    for i in 0..m.rows {
        m.row_mut(i).iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

/// (x - mean) / sqrt(var + ε) per row, and 1/sqrt(var + ε).
fn normalize_rows(x: &Mat) -> (Mat, Vec<f64>) {
    let mut out = x.clone();
    let mut inv = Vec::with_capacity(x.rows);
    for i in 0..x.rows {
        let r = out.row_mut(i);
        let n = r.len() as f64;
        let mean = r.iter().sum::<f64>() / n;
        let var = r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let s = 1.0 / (var + LN_EPS).sqrt();
        r.iter_mut().for_each(|v| *v = (*v - mean) * s);
        inv.push(s);
    }
    (out, inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of a scalar function of the head's output against backward, for
    /// every parameter tensor (a sample of entries each), with and without dropout.
    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(7);
        let mut head = Head::new(5, 4, 2, &mut rng);
        // non-trivial γ, β and biases so their gradients are exercised
        head.visit_mut(&mut |p| p.iter_mut().for_each(|v| *v += 0.3 * (rng.uniform() - 0.5)));
        let mut x = Mat::zeros(3, 5);
        x.data
            .iter_mut()
            .for_each(|v| *v = rng.uniform() * 2.0 - 1.0);
        let mut w = Mat::zeros(3, 4);
        w.data
            .iter_mut()
            .for_each(|v| *v = rng.uniform() * 2.0 - 1.0);
        for with_dropout in [false, true] {
            // the loss: Σ w ⊙ out (its gradient w.r.t. out is w); same dropout mask each call
            let loss = |h: &Head| {
                let mut r = Rng::new(99);
                let (out, _) = h.forward(&x, with_dropout.then_some((0.3, &mut r)));
                out.data
                    .iter()
                    .zip(&w.data)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            };
            let mut r = Rng::new(99);
            let (_, tape) = head.forward(&x, with_dropout.then_some((0.3, &mut r)));
            let grad = head.backward(&tape, &w);
            let mut analytic = Vec::new();
            grad.visit(&mut |g| analytic.push(g.to_vec()));
            let mut tensor = 0;
            let mut checked = 0;
            let mut probe = head.clone();
            let n_tensors = analytic.len();
            while tensor < n_tensors {
                let len = analytic[tensor].len();
                for idx in (0..len).step_by(3) {
                    let bump = |h: &mut Head, delta: f64| {
                        let mut t = 0;
                        h.visit_mut(&mut |p| {
                            if t == tensor {
                                p[idx] += delta;
                            }
                            t += 1;
                        });
                    };
                    let eps = 1e-6;
                    bump(&mut probe, eps);
                    let up = loss(&probe);
                    bump(&mut probe, -2.0 * eps);
                    let down = loss(&probe);
                    bump(&mut probe, eps);
                    let num = (up - down) / (2.0 * eps);
                    let ana = analytic[tensor][idx];
                    assert!(
                        (num - ana).abs() <= 1e-6 * (1.0 + num.abs()),
                        "tensor {tensor} entry {idx} dropout={with_dropout}: numeric {num} analytic {ana}"
                    );
                    checked += 1;
                }
                tensor += 1;
            }
            assert!(checked > 20);
        }
    }
}
