//! The epoch loop `train` and `distill` share: shuffle, batches, divergence checks, plateau
//! (learning-rate cuts, early stop), the best epoch's weights kept. What differs between
//! them (the heads, the loss, the validation) is a [`Fit`].

use super::head::Head;
use super::linalg::Rng;
use super::{adamw, Config, Epoch};
use crate::error::Result;

/// Largest parameter magnitude a run may reach before it counts as diverged.
const MAX_WEIGHT: f64 = 1e4;

/// One training task over rows in memory.
pub(super) trait Fit {
    /// The weights being trained (one head, or a pair).
    type Model: Clone;
    /// How many training rows; the loop shuffles their indices into batches.
    fn rows(&self) -> usize;
    /// Train on the rows `chunk`: their mean loss, or None for a batch that is skipped. A
    /// non-finite loss stops the run (with [`Fit::diverged_hint`]).
    fn step(
        &self,
        model: &mut Self::Model,
        chunk: &[usize],
        rng: &mut Rng,
        opt: &mut adamw::AdamW,
    ) -> Option<f64>;
    /// The heads of `model` (checked for runaway weights after every epoch).
    fn heads<'m>(&self, model: &'m Self::Model) -> Vec<&'m Head>;
    /// Validation loss and recall at 1, 5, 10.
    fn evaluate(&self, model: &Self::Model) -> (f64, [f64; 3]);
    /// What to tell the user when the loss diverged.
    fn diverged_hint(&self, lr: f64) -> String;
}

pub(super) struct Fitted<M> {
    pub model: M,
    pub history: Vec<Epoch>,
    /// 1-based epoch whose weights `model` holds (the best validation loss)
    pub best_epoch: usize,
}

/// Train `model` on `task` for up to `cfg.max_epochs`; `on_epoch` sees each finished epoch.
pub(super) fn fit<F: Fit>(
    task: &F,
    mut model: F::Model,
    cfg: &Config,
    rng: &mut Rng,
    mut on_epoch: impl FnMut(&Epoch),
) -> Result<Fitted<F::Model>> {
    let mut opt = adamw::AdamW::new(cfg.lr, cfg.weight_decay);
    let (first_val, _) = task.evaluate(&model);
    let mut best = Fitted {
        model: model.clone(),
        history: Vec::new(),
        best_epoch: 0,
    };
    let mut plateau = Plateau::new();
    let mut order: Vec<usize> = (0..task.rows()).collect();
    for epoch in 1..=cfg.max_epochs {
        rng.shuffle(&mut order);
        let (mut sum, mut count) = (0.0, 0.0);
        for chunk in order.chunks(cfg.batch.max(1)) {
            let Some(l) = task.step(&mut model, chunk, rng, &mut opt) else {
                continue;
            };
            if !l.is_finite() {
                crate::bail!(
                    "training diverged in epoch {epoch}: the loss is {l}; {}",
                    task.diverged_hint(opt.lr)
                );
            }
            sum += l * chunk.len() as f64;
            count += chunk.len() as f64;
        }
        check_weights(&task.heads(&model), epoch, opt.lr)?;
        let (val_loss, r) = task.evaluate(&model);
        check_val_loss(val_loss, first_val, epoch, opt.lr)?;
        let e = Epoch::new(epoch, sum / count.max(1.0), val_loss, opt.lr, r);
        on_epoch(&e);
        best.history.push(e);
        match plateau.observe(val_loss, epoch, cfg, &mut opt) {
            Verdict::Best => {
                best.model = model.clone();
                best.best_epoch = epoch;
            }
            Verdict::Worse => {}
            Verdict::Stop => break,
        }
    }
    Ok(best)
}

/// Early stopping and learning-rate reduction on the validation loss (`train`, `distill`).
struct Plateau {
    best: f64,
    since_best: usize,
    since_lr: usize,
}

enum Verdict {
    /// the best validation loss so far: keep these weights
    Best,
    Worse,
    /// `patience` epochs without a better one
    Stop,
}

impl Plateau {
    fn new() -> Plateau {
        Plateau {
            best: f64::INFINITY,
            since_best: 0,
            since_lr: 0,
        }
    }

    fn observe(
        &mut self,
        val_loss: f64,
        epoch: usize,
        cfg: &Config,
        opt: &mut adamw::AdamW,
    ) -> Verdict {
        if val_loss < self.best - 1e-6 {
            *self = Plateau {
                best: val_loss,
                since_best: 0,
                since_lr: 0,
            };
            return Verdict::Best;
        }
        self.since_best += 1;
        self.since_lr += 1;
        if self.since_best >= cfg.patience {
            log::info!(
                "early stop after epoch {epoch}: no better validation loss for {} epochs",
                self.since_best
            );
            return Verdict::Stop;
        }
        if self.since_lr >= cfg.lr_patience {
            opt.lr *= cfg.lr_factor;
            self.since_lr = 0;
            log::info!(
                "validation loss on a plateau: learning rate now {:.2e}",
                opt.lr
            );
        }
        Verdict::Worse
    }
}

/// Refuses a run whose weights ran away: healthy heads keep weights of order one, and
/// runaway steps blow them up long before the (normalized, bounded) loss shows it.
fn check_weights(heads: &[&Head], epoch: usize, lr: f64) -> Result<()> {
    let mut largest = 0f64;
    for h in heads {
        h.visit(&mut |p| {
            largest = p.iter().fold(largest, |m, v| {
                if v.is_finite() {
                    m.max(v.abs())
                } else {
                    f64::INFINITY
                }
            })
        });
    }
    if largest > MAX_WEIGHT {
        crate::bail!(
            "training diverged in epoch {epoch}: a weight reached {largest:.3e}; try a lower \
             --lr (now {lr}); no heads were written"
        );
    }
    Ok(())
}

fn check_val_loss(val_loss: f64, first_val: f64, epoch: usize, lr: f64) -> Result<()> {
    if !val_loss.is_finite() || val_loss > 10.0 * first_val {
        crate::bail!(
            "training diverged in epoch {epoch}: validation loss {val_loss:.4} (it started \
             at {first_val:.4}); try a lower --lr (now {lr}); no heads were written"
        );
    }
    Ok(())
}
