//! The soft-target contrastive loss of the original design, on L2-normalized outputs.
//!
//! ```text
//! u, v    = rows of the text and image head outputs, L2-normalized
//! logits  = u·vᵀ / τ
//! targets = softmax_rows((u·uᵀ + v·vᵀ) / 2τ)
//! loss    = ½ [ CE(targets, logits) + CE(targetsᵀ, logitsᵀ) ],  CE(y, z) = -mean_r Σ_c y_rc log softmax(z_r)_c
//! ```
//!
//! Why normalized: the daemon ranks by cosine, so training sees exactly what search sees.
//! Like the Keras original, the gradient also flows through the targets (they are a function
//! of the outputs there too); the gradient check below covers both paths.

use super::linalg::{dot, Mat};

pub struct LossGrad {
    pub loss: f64,
    pub d_text: Mat,
    pub d_image: Mat,
}

fn normalize(x: &Mat) -> (Mat, Vec<f64>) {
    let mut u = x.clone();
    let mut norms = Vec::with_capacity(x.rows);
    for i in 0..x.rows {
        let r = u.row_mut(i);
        let n = dot(r, r).sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= n);
        norms.push(n);
    }
    (u, norms)
}

/// Row-wise log-softmax.
fn log_softmax(z: &Mat) -> Mat {
    let mut out = z.clone();
    for i in 0..z.rows {
        let r = out.row_mut(i);
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        r.iter_mut().for_each(|v| *v -= lse);
    }
    out
}

/// d/dx of x/|x| applied to du, per row.
fn normalize_backward(u: &Mat, norms: &[f64], du: &Mat) -> Mat {
    let mut dx = du.clone();
    for (i, norm) in norms.iter().enumerate() {
        let ur = u.row(i);
        let proj = dot(ur, du.row(i));
        for (d, uv) in dx.row_mut(i).iter_mut().zip(ur) {
            *d = (*d - uv * proj) / norm;
        }
    }
    dx
}

/// Distillation loss: mean over rows of 1 − cos(out_r, target_r), with `target` rows of unit
/// length (the teacher's embeddings). Returns the loss and its gradient with respect to `out`.
/// Cosine rather than a squared error on raw outputs because search only ever sees the
/// direction of an embedding.
pub fn cosine_distance(out: &Mat, target: &Mat) -> (f64, Mat) {
    assert_eq!((out.rows, out.cols), (target.rows, target.cols));
    let (u, norms) = normalize(out);
    let n = out.rows as f64;
    let mut loss = 0.0;
    let mut du = Mat::zeros(out.rows, out.cols);
    for r in 0..out.rows {
        loss += 1.0 - dot(u.row(r), target.row(r));
        for (d, t) in du.row_mut(r).iter_mut().zip(target.row(r)) {
            *d = -t / n;
        }
    }
    (loss / n, normalize_backward(&u, &norms, &du))
}

/// Distillation's ranking term: each student row should pick out its own teacher row among
/// the batch's, as a query picks its image. Soft targets like [`contrastive`]'s, from the
/// teacher alone (constant): `y = softmax_rows(t·tᵀ/τ)`, `loss = CE(y, û·tᵀ/τ)`, so rows that
/// share a source (a caption's translations) or near-synonyms share the target mass instead
/// of being pushed apart. Why beside [`cosine_distance`]: the cosine pulls each row towards
/// its target but says nothing about which way the remaining error points; search ranks, and
/// an error towards another caption's target costs a rank where one elsewhere costs none.
/// `target` rows are of unit length. Returns the loss and its gradient with respect to `out`.
pub fn soft_ranking(out: &Mat, target: &Mat, tau: f64) -> (f64, Mat) {
    assert_eq!((out.rows, out.cols), (target.rows, target.cols));
    let b = out.rows as f64;
    let (u, norms) = normalize(out);
    let mut logits = u.matmul_t(target);
    logits.data.iter_mut().for_each(|x| *x /= tau);
    let mut y = target.matmul_t(target);
    y.data.iter_mut().for_each(|x| *x /= tau);
    let mut y = log_softmax(&y);
    y.data.iter_mut().for_each(|x| *x = x.exp());
    let logp = log_softmax(&logits);
    let loss = -y
        .data
        .iter()
        .zip(&logp.data)
        .map(|(a, c)| a * c)
        .sum::<f64>()
        / b;
    // rows of y sum to 1: d/dz of -Σ y log softmax(z) is softmax(z) - y
    let mut d_logits = Mat::zeros(y.rows, y.cols);
    for ((d, yv), l) in d_logits.data.iter_mut().zip(&y.data).zip(&logp.data) {
        *d = (l.exp() - yv) / (b * tau);
    }
    let du = d_logits.matmul(target);
    (loss, normalize_backward(&u, &norms, &du))
}

pub fn contrastive(text: &Mat, image: &Mat, tau: f64) -> LossGrad {
    assert_eq!((text.rows, text.cols), (image.rows, image.cols));
    let b = text.rows as f64;
    let (u, nu) = normalize(text);
    let (v, nv) = normalize(image);
    let mut logits = u.matmul_t(&v);
    logits.data.iter_mut().for_each(|x| *x /= tau);
    let mut sim = u.matmul_t(&u);
    let sim_v = v.matmul_t(&v);
    sim.data
        .iter_mut()
        .zip(&sim_v.data)
        .for_each(|(a, b)| *a = (*a + b) / (2.0 * tau));
    let mut targets = log_softmax(&sim);
    targets.data.iter_mut().for_each(|x| *x = x.exp());
    let targets_t = targets.transpose();
    let logp = log_softmax(&logits); // caption direction
    let logq = log_softmax(&logits.transpose()); // image direction
    let ce = |y: &Mat, lp: &Mat| -> f64 {
        -y.data.iter().zip(&lp.data).map(|(a, b)| a * b).sum::<f64>() / b
    };
    let loss = 0.5 * (ce(&targets, &logp) + ce(&targets_t, &logq));

    // d/dz of -Σ y log softmax(z) is softmax(z)·Σy - y (targetsᵀ rows need not sum to 1)
    let dz = |y: &Mat, lp: &Mat| -> Mat {
        let mut g = Mat::zeros(y.rows, y.cols);
        for i in 0..y.rows {
            let ysum: f64 = y.row(i).iter().sum();
            for ((d, yv), l) in g.row_mut(i).iter_mut().zip(y.row(i)).zip(lp.row(i)) {
                *d = 0.5 * (l.exp() * ysum - yv) / b;
            }
        }
        g
    };
    let mut d_logits = dz(&targets, &logp);
    let d_logits_t = dz(&targets_t, &logq).transpose();
    d_logits
        .data
        .iter_mut()
        .zip(&d_logits_t.data)
        .for_each(|(a, c)| *a += c);
    // through the targets: dY = -½/B (log P + (log Q)ᵀ), then the row softmax
    let logq_t = logq.transpose();
    let mut d_sim = Mat::zeros(sim.rows, sim.cols);
    for i in 0..sim.rows {
        let dy: Vec<f64> = logp
            .row(i)
            .iter()
            .zip(logq_t.row(i))
            .map(|(p, q)| -0.5 * (p + q) / b)
            .collect();
        let y = targets.row(i);
        let inner = dot(y, &dy);
        for ((d, yv), dyv) in d_sim.row_mut(i).iter_mut().zip(y).zip(&dy) {
            *d = yv * (dyv - inner);
        }
    }
    // S = (uuᵀ + vvᵀ)/2τ → dU = (dS + dSᵀ)·u/2τ; L = u·vᵀ/τ → dU += dL·v/τ, dV += dLᵀ·u/τ
    let mut d_sym = d_sim.clone();
    let d_sim_t = d_sim.transpose();
    d_sym
        .data
        .iter_mut()
        .zip(&d_sim_t.data)
        .for_each(|(a, c)| *a = (*a + c) / (2.0 * tau));
    let mut du = d_sym.matmul(&u);
    let mut dv = d_sym.matmul(&v);
    let dl_v = d_logits.matmul(&v);
    let dl_u = d_logits.t_matmul(&u);
    du.data
        .iter_mut()
        .zip(&dl_v.data)
        .for_each(|(a, c)| *a += c / tau);
    dv.data
        .iter_mut()
        .zip(&dl_u.data)
        .for_each(|(a, c)| *a += c / tau);
    LossGrad {
        loss,
        d_text: normalize_backward(&u, &nu, &du),
        d_image: normalize_backward(&v, &nv, &dv),
    }
}

#[cfg(test)]
mod tests {
    use super::super::linalg::Rng;
    use super::*;

    fn random(rows: usize, cols: usize, rng: &mut Rng) -> Mat {
        let mut m = Mat::zeros(rows, cols);
        m.data
            .iter_mut()
            .for_each(|v| *v = rng.uniform() * 2.0 - 1.0);
        m
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(3);
        let t = random(4, 3, &mut rng);
        let i = random(4, 3, &mut rng);
        let tau = 0.3;
        let g = contrastive(&t, &i, tau);
        for (which, base, ana) in [(0, &t, &g.d_text), (1, &i, &g.d_image)] {
            for k in 0..base.data.len() {
                let eps = 1e-6;
                let at = |delta: f64| {
                    let mut m = base.clone();
                    m.data[k] += delta;
                    if which == 0 {
                        contrastive(&m, &i, tau).loss
                    } else {
                        contrastive(&t, &m, tau).loss
                    }
                };
                let num = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (num - ana.data[k]).abs() < 1e-7,
                    "tower {which} entry {k}: numeric {num} analytic {}",
                    ana.data[k]
                );
            }
        }
    }

    #[test]
    fn cosine_distance_gradient_matches_finite_differences() {
        let mut rng = Rng::new(7);
        let out = random(3, 5, &mut rng);
        let (target, _) = normalize(&random(3, 5, &mut rng));
        let (loss, grad) = cosine_distance(&out, &target);
        assert!(loss > 0.0 && loss < 2.0);
        for k in 0..out.data.len() {
            let eps = 1e-6;
            let at = |delta: f64| {
                let mut m = out.clone();
                m.data[k] += delta;
                cosine_distance(&m, &target).0
            };
            let num = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (num - grad.data[k]).abs() < 1e-8,
                "entry {k}: {num} vs {}",
                grad.data[k]
            );
        }
        // zero exactly when every row points the teacher's way, at any length
        let mut scaled = target.clone();
        scaled.data.iter_mut().for_each(|v| *v *= 3.0);
        assert!(cosine_distance(&scaled, &target).0.abs() < 1e-12);
    }

    #[test]
    fn soft_ranking_gradient_matches_finite_differences() {
        let mut rng = Rng::new(11);
        let out = random(5, 4, &mut rng);
        let (target, _) = normalize(&random(5, 4, &mut rng));
        let (_, grad) = soft_ranking(&out, &target, 0.2);
        for k in 0..out.data.len() {
            let eps = 1e-6;
            let at = |delta: f64| {
                let mut m = out.clone();
                m.data[k] += delta;
                soft_ranking(&m, &target, 0.2).0
            };
            let num = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (num - grad.data[k]).abs() < 1e-7,
                "entry {k}: {num} vs {}",
                grad.data[k]
            );
        }
    }

    #[test]
    fn soft_ranking_prefers_errors_away_from_other_targets() {
        // two students equally far (in angle) from their own target: one leans towards the
        // other row's target, one away from it; only the ranking term tells them apart
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let target = Mat {
            rows: 2,
            cols: 3,
            data: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        };
        let towards = Mat {
            rows: 2,
            cols: 3,
            data: vec![s, s, 0.0, 0.0, 1.0, 0.0],
        };
        let away = Mat {
            rows: 2,
            cols: 3,
            data: vec![s, -s, 0.0, 0.0, 1.0, 0.0],
        };
        let sideways = Mat {
            rows: 2,
            cols: 3,
            data: vec![s, 0.0, s, 0.0, 1.0, 0.0],
        };
        let cos = |m: &Mat| cosine_distance(m, &target).0;
        assert!((cos(&towards) - cos(&away)).abs() < 1e-12);
        assert!((cos(&towards) - cos(&sideways)).abs() < 1e-12);
        let rank = |m: &Mat| soft_ranking(m, &target, 0.1).0;
        assert!(
            rank(&towards) > rank(&sideways),
            "{} vs {}",
            rank(&towards),
            rank(&sideways)
        );
        assert!(
            rank(&sideways) > rank(&away),
            "{} vs {}",
            rank(&sideways),
            rank(&away)
        );
        // rows with the same target share its mass: a student on target is at the minimum
        let twice = Mat {
            rows: 2,
            cols: 3,
            data: vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        };
        let (_, g) = soft_ranking(&twice, &twice, 0.1);
        assert!(g.data.iter().all(|v| v.abs() < 1e-12), "{:?}", g.data);
    }

    #[test]
    fn matched_pairs_have_lower_loss_than_shuffled() {
        let mut rng = Rng::new(5);
        let t = random(8, 6, &mut rng);
        let mut shuffled = t.clone();
        shuffled.data.rotate_left(6); // image row r = text row r+1
        let aligned = contrastive(&t, &t, 0.1).loss;
        let misaligned = contrastive(&t, &shuffled, 0.1).loss;
        assert!(aligned < misaligned, "{aligned} vs {misaligned}");
        assert!(aligned.is_finite() && aligned > 0.0);
    }
}
