//! AdamW (decoupled weight decay), with Keras' defaults: β1 0.9, β2 0.999, ε 1e-7.

use super::head::Head;

pub struct AdamW {
    pub lr: f64,
    pub weight_decay: f64,
    step: i32,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

const B1: f64 = 0.9;
const B2: f64 = 0.999;
const EPS: f64 = 1e-7;

impl AdamW {
    pub fn new(lr: f64, weight_decay: f64) -> AdamW {
        AdamW {
            lr,
            weight_decay,
            step: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// One update of every parameter of `heads` by the matching gradients.
    pub fn step(&mut self, heads: &mut [&mut Head], grads: &[&Head]) {
        self.step += 1;
        let mut gs: Vec<Vec<f64>> = Vec::new();
        for g in grads {
            g.visit(&mut |t| gs.push(t.to_vec()));
        }
        if self.m.is_empty() {
            self.m = gs.iter().map(|g| vec![0.0; g.len()]).collect();
            self.v = self.m.clone();
        }
        let c1 = 1.0 - B1.powi(self.step);
        let c2 = 1.0 - B2.powi(self.step);
        let (lr, wd) = (self.lr, self.weight_decay);
        let mut k = 0;
        for h in heads.iter_mut() {
            h.visit_mut(&mut |p| {
                let (m, v, g) = (&mut self.m[k], &mut self.v[k], &gs[k]);
                for i in 0..p.len() {
                    m[i] = B1 * m[i] + (1.0 - B1) * g[i];
                    v[i] = B2 * v[i] + (1.0 - B2) * g[i] * g[i];
                    p[i] -= lr * wd * p[i];
                    p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + EPS);
                }
                k += 1;
            });
        }
    }
}
