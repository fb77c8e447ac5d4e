//! The little dense linear algebra training needs: row-major f64 matrices, three matmul
//! shapes, erf, and a seeded random generator. Sizes are small (batch ≤ 512, width ≤ 1280),
//! so plain loops in cache-friendly order are fast enough (a full epoch on the Tux Paint
//! training split takes well under a second) and keep every step inspectable.

/// Row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn from_rows(rows: &[&[f32]]) -> Mat {
        let cols = rows.first().map_or(0, |r| r.len());
        let mut m = Mat::zeros(rows.len(), cols);
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.len(), cols, "ragged rows");
            for (d, s) in m.row_mut(i).iter_mut().zip(r.iter()) {
                *d = f64::from(*s);
            }
        }
        m
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// self · other
    pub fn matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.rows);
        let mut out = Mat::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            let o = &mut out.data[i * other.cols..(i + 1) * other.cols];
            for (k, &a) in self.row(i).iter().enumerate() {
                if a != 0.0 {
                    for (x, &b) in o.iter_mut().zip(other.row(k)) {
                        *x += a * b;
                    }
                }
            }
        }
        out
    }

    /// selfᵀ · other
    pub fn t_matmul(&self, other: &Mat) -> Mat {
        assert_eq!(self.rows, other.rows);
        let mut out = Mat::zeros(self.cols, other.cols);
        for r in 0..self.rows {
            let b = other.row(r);
            for (i, &a) in self.row(r).iter().enumerate() {
                if a != 0.0 {
                    for (x, &y) in out.row_mut(i).iter_mut().zip(b) {
                        *x += a * y;
                    }
                }
            }
        }
        out
    }

    /// self · otherᵀ
    pub fn matmul_t(&self, other: &Mat) -> Mat {
        assert_eq!(self.cols, other.cols);
        let mut out = Mat::zeros(self.rows, other.rows);
        for i in 0..self.rows {
            let a = self.row(i);
            for j in 0..other.rows {
                out.data[i * other.rows + j] = dot(a, other.row(j));
            }
        }
        out
    }

    pub fn transpose(&self) -> Mat {
        let mut out = Mat::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        out
    }
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The error function to ~1e-14: Taylor series near 0, continued fraction for erfc beyond.
/// (GELU needs erf; Rust's std has none, and the exported graph uses ONNX `Erf`.)
pub fn erf(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = ax;
        let mut sum = ax;
        let x2 = ax * ax;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if ax > 6.0 {
        1.0
    } else {
        // erfc(x) = e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …)))))
        let mut f = ax;
        for k in (1..80).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        1.0 - (-ax * ax).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    r.copysign(x)
}

/// GELU, exact (erf) form, as Keras' `gelu(approximate=False)`.
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// d GELU / dx = Φ(x) + x φ(x)
pub fn gelu_grad(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    cdf + x * pdf
}

/// SplitMix64: tiny, seedable, and good enough for initialization, shuffling and dropout.
/// Training must be reproducible for a given seed, on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6d6f_6f6e_6c65_6e73)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // values from Abramowitz & Stegun table 7.1
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265_0),
            (2.5, 0.999_593_047_98),
            (3.0, 0.999_977_909_5),
            (-1.0, -0.842_700_792_9),
        ] {
            assert!(
                (erf(x) - want).abs() < 1e-9,
                "erf({x}) = {} not {want}",
                erf(x)
            );
        }
        // continuous across the switch between series and continued fraction
        assert!((erf(2.499_999_999) - erf(2.500_000_001)).abs() < 1e-9);
    }

    #[test]
    fn gelu_grad_is_the_derivative() {
        for x in [-4.0, -1.3, -0.2, 0.0, 0.7, 2.49, 2.51, 5.0] {
            let h = 1e-6;
            let num = (gelu(x + h) - gelu(x - h)) / (2.0 * h);
            assert!((num - gelu_grad(x)).abs() < 1e-7, "x={x}");
        }
    }

    #[test]
    fn matmul_shapes_agree() {
        let a = Mat {
            rows: 2,
            cols: 3,
            data: vec![1., 2., 3., 4., 5., 6.],
        };
        let b = Mat {
            rows: 3,
            cols: 2,
            data: vec![1., 0., 0., 1., 1., 1.],
        };
        assert_eq!(a.matmul(&b).data, vec![4., 5., 10., 11.]);
        assert_eq!(a.transpose().t_matmul(&b).data, a.matmul(&b).data);
        assert_eq!(a.matmul_t(&b.transpose()).data, a.matmul(&b).data);
    }
}
