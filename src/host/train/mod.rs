//! `moonlens-host train`: projection heads on frozen features, the original dual-encoder way.
//!
//! Model → [`head::Head`] (one per tower); loss → [`loss::contrastive`]; optimizer →
//! [`adamw::AdamW`]; data → [`crate::host::features`] (computed once, memory-mapped).
//!
//! Why hand-written gradients and not a framework: the whole model is two small MLP heads
//! (Dense, GELU, Dense, Dropout, residual, LayerNorm) and one loss. Their backward passes are
//! ~150 lines, checked against central differences in f64 (`head` and `loss` tests), run
//! deterministically on one thread, and add no dependency to the workspace. candle would
//! bring a large dependency tree (gemm, half, safetensors, zip …) for what is a few small
//! matmuls per step; an epoch here takes well under a second either way.
//!
//! Training is deterministic for a given seed: one thread, a seeded generator for
//! initialization, shuffling, view choice and dropout.

pub mod adamw;
pub mod command;
pub mod distill;
mod epochs;
pub mod head;
pub mod linalg;
pub mod loss;
pub mod site;
pub mod store;

use super::features::{Features, VIEWS};
use crate::error::Result;
use head::Head;
use linalg::{Mat, Rng};

/// Which image features the image head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageInput {
    /// The backbone's pooled features (1280-d for EfficientNet-Lite0).
    Raw,
    /// The training-free bridge embedding (ImageNet classes mixed into text space).
    Bridge,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Config {
    pub image_input: ImageInput,
    /// Projection dimension (the bundle's `dim`).
    pub dim: usize,
    /// Number of GELU/Dense/Dropout/residual/LayerNorm blocks after the first Dense.
    pub blocks: usize,
    pub dropout: f64,
    pub temperature: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch: usize,
    pub max_epochs: usize,
    /// Early stopping: epochs without a better validation loss before stopping.
    pub patience: usize,
    /// Learning-rate reduction: epochs without improvement before multiplying by `lr_factor`.
    pub lr_patience: usize,
    pub lr_factor: f64,
    pub seed: u64,
    /// `distill` only: weight of the ranking term ([`loss::soft_ranking`], at `temperature`)
    /// beside the cosine distance (0: the cosine alone; absent from older heads.json)
    #[serde(default)]
    pub ranking: f64,
}

impl Default for Config {
    fn default() -> Config {
        // The original's settings (projection 256, one block, dropout 0.1, AdamW 1e-3/1e-3,
        // plateau ×0.2), with temperature and batch chosen on the validation split.
        Config {
            image_input: ImageInput::Raw,
            dim: 256,
            blocks: 1,
            dropout: 0.1,
            temperature: 0.1,
            lr: 1e-3,
            weight_decay: 1e-3,
            batch: 64,
            max_epochs: 100,
            patience: 3,
            lr_patience: 2,
            lr_factor: 0.2,
            seed: 1,
            ranking: 0.0,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Epoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub lr: f64,
    pub val_r1: f64,
    pub val_r5: f64,
    pub val_r10: f64,
}

pub struct Trained {
    pub text: Head,
    pub image: Head,
    pub history: Vec<Epoch>,
    /// 1-based epoch whose weights were kept (the best validation loss).
    pub best_epoch: usize,
}

/// Rows of the features a head reads: image features of image `i`, view `v`.
fn image_row(f: &Features, input: ImageInput, i: usize, v: usize) -> Vec<f32> {
    match input {
        ImageInput::Raw => f.raw(i, v),
        ImageInput::Bridge => f.bridge(i, v),
    }
}

/// All rows of one split in memory as f64 (a few MB for the Tux Paint splits). `texts` are
/// what the text side gives: sentence embeddings for a text head, or fixed targets when only
/// an image head is trained (`site`).
#[derive(Default)]
struct Split {
    /// [image][view] rows
    images: Vec<Vec<Vec<f32>>>,
    texts: Vec<Vec<f32>>,
    truth: Vec<usize>,
}

impl Split {
    fn new(f: &Features, input: ImageInput) -> Split {
        Split {
            images: (0..f.images)
                .map(|i| (0..VIEWS).map(|v| image_row(f, input, i, v)).collect())
                .collect(),
            texts: (0..f.texts).map(|t| f.text(t)).collect(),
            truth: f.truth.clone(),
        }
    }

    /// Pairs `idx` as (text rows, image rows), each image in view `views[k]`.
    fn batch(&self, idx: &[usize], views: &[usize]) -> (Mat, Mat) {
        let t: Vec<&[f32]> = idx.iter().map(|&p| self.texts[p].as_slice()).collect();
        let i: Vec<&[f32]> = idx
            .iter()
            .zip(views)
            .map(|(&p, &v)| self.images[self.truth[p]][v].as_slice())
            .collect();
        (Mat::from_rows(&t), Mat::from_rows(&i))
    }
}

/// Mean loss over fixed batches of a split (no dropout, view 0) and its text→image recall;
/// without a text head the split's texts are the text side as they are.
fn evaluate(text: Option<&Head>, image: &Head, s: &Split, cfg: &Config) -> (f64, [f64; 3]) {
    let idx: Vec<usize> = (0..s.texts.len()).collect();
    let mut total = 0.0;
    let mut n = 0.0;
    for chunk in idx.chunks(cfg.batch) {
        let (t, i) = s.batch(chunk, &vec![0; chunk.len()]);
        let ot = match text {
            Some(h) => h.forward(&t, None).0,
            None => t,
        };
        let (oi, _) = image.forward(&i, None);
        total += loss::contrastive(&ot, &oi, cfg.temperature).loss * chunk.len() as f64;
        n += chunk.len() as f64;
    }
    let texts = match text {
        Some(h) => embed(h, &s.texts),
        None => s.texts.clone(),
    };
    let gallery: Vec<Vec<f32>> = s.images.iter().map(|v| v[0].clone()).collect();
    let images = embed(image, &gallery);
    let r = super::eval::recall(&super::eval::ranks(&texts, &images, &s.truth));
    (total / n, [r.r1, r.r5, r.r10])
}

/// L2-normalized head outputs of `rows` (what the exported tower computes).
pub fn embed(head: &Head, rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let (out, _) = head.forward(&Mat::from_rows(&refs), None);
    (0..out.rows)
        .map(|r| {
            let row = out.row(r);
            let n = linalg::dot(row, row).sqrt().max(1e-12);
            row.iter().map(|v| (v / n) as f32).collect()
        })
        .collect()
}

impl Epoch {
    fn new(epoch: usize, train_loss: f64, val_loss: f64, lr: f64, r: [f64; 3]) -> Epoch {
        Epoch {
            epoch,
            train_loss,
            val_loss,
            lr,
            val_r1: r[0],
            val_r5: r[1],
            val_r10: r[2],
        }
    }

    /// One log line; `recall` names what the validation recall counts.
    pub fn log(&self, recall: &str) {
        log::info!(
            "epoch {:3}: train loss {:.4}  val loss {:.4}  val {recall} R@1/5/10 {:.3}/{:.3}/{:.3}  lr {:.1e}",
            self.epoch,
            self.train_loss,
            self.val_loss,
            self.val_r1,
            self.val_r5,
            self.val_r10,
            self.lr
        );
    }
}

/// Train both heads; `on_epoch` sees each finished epoch (progress output).
pub fn train(
    train: &Features,
    val: &Features,
    cfg: &Config,
    on_epoch: impl FnMut(&Epoch),
) -> Result<Trained> {
    if train.texts < 2 || val.texts < 2 {
        crate::bail!("need at least 2 training and 2 validation pairs");
    }
    train_split(
        &Split::new(train, cfg.image_input),
        &Split::new(val, cfg.image_input),
        cfg,
        on_epoch,
    )
}

/// [`train`] on rows in memory.
fn train_split(
    tr: &Split,
    va: &Split,
    cfg: &Config,
    on_epoch: impl FnMut(&Epoch),
) -> Result<Trained> {
    if cfg.batch < 2 {
        crate::bail!("--batch must be at least 2 (the loss contrasts pairs within a batch)");
    }
    let mut rng = Rng::new(cfg.seed);
    let text = Head::new(tr.texts[0].len(), cfg.dim, cfg.blocks, &mut rng);
    let image = Head::new(tr.images[0][0].len(), cfg.dim, cfg.blocks, &mut rng);
    let task = Contrastive { tr, va, cfg };
    let fitted = epochs::fit(&task, (text, image), cfg, &mut rng, on_epoch)?;
    let (text, image) = fitted.model;
    Ok(Trained {
        text,
        image,
        history: fitted.history,
        best_epoch: fitted.best_epoch,
    })
}

/// Both heads against each other with the soft-target contrastive loss.
struct Contrastive<'a> {
    tr: &'a Split,
    va: &'a Split,
    cfg: &'a Config,
}

impl epochs::Fit for Contrastive<'_> {
    /// (text head, image head)
    type Model = (Head, Head);

    fn rows(&self) -> usize {
        self.tr.texts.len()
    }

    fn step(
        &self,
        (text, image): &mut (Head, Head),
        chunk: &[usize],
        rng: &mut Rng,
        opt: &mut adamw::AdamW,
    ) -> Option<f64> {
        if chunk.len() < 2 {
            return None; // a batch of one has nothing to contrast
        }
        let views: Vec<usize> = chunk.iter().map(|_| rng.below(VIEWS)).collect();
        let (t, i) = self.tr.batch(chunk, &views);
        let (ot, tape_t) = text.forward(&t, Some((self.cfg.dropout, &mut *rng)));
        let (oi, tape_i) = image.forward(&i, Some((self.cfg.dropout, &mut *rng)));
        let g = loss::contrastive(&ot, &oi, self.cfg.temperature);
        if !g.loss.is_finite() {
            return Some(g.loss);
        }
        let gt = text.backward(&tape_t, &g.d_text);
        let gi = image.backward(&tape_i, &g.d_image);
        opt.step(&mut [text, image], &[&gt, &gi]);
        Some(g.loss)
    }

    fn heads<'m>(&self, (text, image): &'m (Head, Head)) -> Vec<&'m Head> {
        vec![text, image]
    }

    fn evaluate(&self, (text, image): &(Head, Head)) -> (f64, [f64; 3]) {
        evaluate(Some(text), image, self.va, self.cfg)
    }

    fn diverged_hint(&self, lr: f64) -> String {
        format!(
            "try a lower --lr (now {lr}) or a higher --temperature (now {}); no heads were written",
            self.cfg.temperature
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synthetic task: text and image features are two different random linear views of the
    /// same latent. The heads must learn to align them: validation recall far above chance.
    #[test]
    fn heads_learn_a_synthetic_alignment() {
        let mut rng = Rng::new(11);
        let latent = |n: usize, rng: &mut Rng| -> Vec<Vec<f64>> {
            (0..n)
                .map(|_| (0..8).map(|_| rng.uniform() * 2.0 - 1.0).collect())
                .collect()
        };
        let proj = |d: usize, rng: &mut Rng| -> Vec<Vec<f64>> {
            (0..d)
                .map(|_| (0..8).map(|_| rng.uniform() * 2.0 - 1.0).collect())
                .collect()
        };
        let (pt, pi) = (proj(12, &mut rng), proj(20, &mut rng));
        let apply = |p: &Vec<Vec<f64>>, z: &Vec<f64>| -> Vec<f32> {
            p.iter().map(|r| linalg::dot(r, z) as f32).collect()
        };
        let split = |n: usize, rng: &mut Rng| {
            let z = latent(n, rng);
            Split {
                images: z.iter().map(|z| vec![apply(&pi, z); VIEWS]).collect(),
                texts: z.iter().map(|z| apply(&pt, z)).collect(),
                truth: (0..n).collect(),
            }
        };
        let (tr, va) = (split(200, &mut rng), split(50, &mut rng));
        let cfg = Config {
            dim: 16,
            batch: 32,
            temperature: 0.1,
            lr: 3e-3,
            max_epochs: 40,
            ..Config::default()
        };
        // chance level first: untrained heads of the same shapes
        let mut untrained_rng = Rng::new(cfg.seed);
        let text0 = Head::new(12, 16, 1, &mut untrained_rng);
        let image0 = Head::new(20, 16, 1, &mut untrained_rng);
        let (before, r_before) = evaluate(Some(&text0), &image0, &va, &cfg);
        let t = train_split(&tr, &va, &cfg, |_| {}).unwrap();
        let (text, image) = (t.text, t.image);
        assert!(t.best_epoch >= 1 && t.history.len() >= t.best_epoch);
        let (after, r_after) = evaluate(Some(&text), &image, &va, &cfg);
        assert!(after < before * 0.7, "val loss {before} -> {after}");
        // chance R@1 on 50 items is 0.02
        assert!(
            r_after[0] > 0.4 && r_after[0] > r_before[0],
            "{r_before:?} -> {r_after:?}"
        );
    }
}
