//! `moonlens-host distill`: a text head that carries a second text encoder (the student, e.g.
//! multilingual-e5-small) into the embedding space of a bundle's own text tower (the
//! teacher), so that either can answer queries against the same index of image embeddings.
//!
//! Why not a multilingual bundle trained from scratch: measured on the Tux Paint test split
//! (models/README.md), E5 with its own bridge and heads reads Chinese well but English worse
//! than MiniLM, and a distilled E5 alone is worse again in English. A bundle with both towers
//! keeps MiniLM's English exactly and gives other languages the distilled E5
//! ([`crate::encoder::needs_multilingual`] picks the tower per query).
//!
//! Data: parallel text (`{split}_parallel.jsonl`): captions in ~100 languages beside their
//! English source. Each line is a training row (the student reads the translation), and so
//! is each distinct English source (the student reads the English). The target of a row is
//! the teacher's final text embedding of its English source; the loss is the cosine
//! distance ([`super::loss::cosine_distance`]); the head is `train`'s [`Head`] (Dense,
//! GELU, Dense, Dropout, residual, LayerNorm) with the teacher's width. Validation: the loss
//! on the validation lines and the recall of sources (for each validation line, the rank of
//! its own source's teacher embedding among all validation sources' by cosine with the
//! student's embedding), with early stopping and learning-rate reduction as in `train`.

use super::head::Head;
use super::linalg::{Mat, Rng};
use super::store::{self, HeadsInfo, Teacher};
use super::{adamw, embed, epochs, loss, Config, Epoch};
use crate::bundle::Bundle;
use crate::encoder::char_bag::CharBag;
use crate::encoder::{Encoder, Outputs};
use crate::error::Result;
use crate::host::pairs::{self, Parallel};
use crate::host::progress::Progress;
use crate::host::sentences::embed_cached;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Rows of one split: student inputs and, per row, the index of its target.
pub struct Rows {
    pub inputs: Vec<Vec<f32>>,
    pub target_of: Vec<usize>,
    /// the teacher's embeddings of the distinct sources (unit length)
    pub targets: Vec<Vec<f32>>,
}

/// The texts the student reads (each line's text unless it is the source itself, then each
/// distinct source) and, per text,
/// its source's index; and the distinct sources in first-seen order.
pub fn texts_of(lines: &[Parallel]) -> (Vec<String>, Vec<usize>, Vec<String>) {
    let mut sources: Vec<String> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut texts = Vec::with_capacity(lines.len());
    let mut target_of = Vec::with_capacity(lines.len());
    for l in lines {
        let i = *index.entry(l.source.as_str()).or_insert_with(|| {
            sources.push(l.source.clone());
            sources.len() - 1
        });
        if l.text != l.source {
            // an English line is its source's own row, added below
            texts.push(l.text.clone());
            target_of.push(i);
        }
    }
    for (i, s) in sources.iter().enumerate() {
        texts.push(s.clone());
        target_of.push(i);
    }
    (texts, target_of, sources)
}

pub struct Distilled {
    pub head: Head,
    pub history: Vec<Epoch>,
    pub best_epoch: usize,
}

fn batch(rows: &Rows, idx: &[usize]) -> (Mat, Mat) {
    let x: Vec<&[f32]> = idx.iter().map(|&i| rows.inputs[i].as_slice()).collect();
    let t: Vec<&[f32]> = idx
        .iter()
        .map(|&i| rows.targets[rows.target_of[i]].as_slice())
        .collect();
    (Mat::from_rows(&x), Mat::from_rows(&t))
}

/// Mean cosine distance over a split (no dropout) and its recall of sources.
fn evaluate(head: &Head, rows: &Rows, cfg: &Config) -> (f64, [f64; 3]) {
    let idx: Vec<usize> = (0..rows.inputs.len()).collect();
    let mut total = 0.0;
    for chunk in idx.chunks(cfg.batch.max(256)) {
        let (x, t) = batch(rows, chunk);
        let (out, _) = head.forward(&x, None);
        total += loss::cosine_distance(&out, &t).0 * chunk.len() as f64;
    }
    let student = embed(head, &rows.inputs);
    let r = crate::host::eval::recall(&crate::host::eval::ranks(
        &student,
        &rows.targets,
        &rows.target_of,
    ));
    (total / idx.len() as f64, [r.r1, r.r5, r.r10])
}

/// Trains the head; `on_epoch` sees each finished epoch.
pub fn distill(
    train: &Rows,
    val: &Rows,
    cfg: &Config,
    on_epoch: impl FnMut(&Epoch),
) -> Result<Distilled> {
    if train.inputs.is_empty() || val.inputs.is_empty() {
        crate::bail!("need training and validation lines");
    }
    let mut rng = Rng::new(cfg.seed);
    let dim = train.targets[0].len();
    let head = Head::new(train.inputs[0].len(), dim, cfg.blocks, &mut rng);
    let task = Towards { train, val, cfg };
    let fitted = epochs::fit(&task, head, cfg, &mut rng, on_epoch)?;
    Ok(Distilled {
        head: fitted.model,
        history: fitted.history,
        best_epoch: fitted.best_epoch,
    })
}

/// One head pulled towards the teacher's embeddings by cosine distance.
struct Towards<'a> {
    train: &'a Rows,
    val: &'a Rows,
    cfg: &'a Config,
}

impl epochs::Fit for Towards<'_> {
    type Model = Head;

    fn rows(&self) -> usize {
        self.train.inputs.len()
    }

    fn step(
        &self,
        head: &mut Head,
        chunk: &[usize],
        rng: &mut Rng,
        opt: &mut adamw::AdamW,
    ) -> Option<f64> {
        let (x, t) = batch(self.train, chunk);
        let (out, tape) = head.forward(&x, Some((self.cfg.dropout, rng)));
        let (mut l, mut d_out) = loss::cosine_distance(&out, &t);
        if self.cfg.ranking > 0.0 {
            let (r, d_r) = loss::soft_ranking(&out, &t, self.cfg.temperature);
            l += self.cfg.ranking * r;
            for (d, e) in d_out.data.iter_mut().zip(&d_r.data) {
                *d += self.cfg.ranking * e;
            }
        }
        if l.is_finite() {
            let g = head.backward(&tape, &d_out);
            opt.step(&mut [head], &[&g]);
        }
        Some(l)
    }

    fn heads<'m>(&self, head: &'m Head) -> Vec<&'m Head> {
        vec![head]
    }

    fn evaluate(&self, head: &Head) -> (f64, [f64; 3]) {
        evaluate(head, self.val, self.cfg)
    }

    fn diverged_hint(&self, lr: f64) -> String {
        format!("try a lower --lr (now {lr}); no head was written")
    }
}

/// What the student reads: its bundle's sentence embedding, then (when its width is not 0)
/// the text's character bag ([`crate::encoder::char_bag`]).
pub struct Student<'a> {
    pub bundle: &'a Bundle,
    pub char_bag: CharBag,
}

/// The `distill` command: parallel files → teacher targets and student inputs (cached) →
/// head → heads directory (`heads.json` with `teacher`, `heads.bin`, `curve.png`).
pub fn run(
    teacher: &Bundle,
    student: Student,
    train_paths: &[PathBuf],
    val_paths: &[PathBuf],
    out: &Path,
    cache_dir: Option<&Path>,
    cfg: &Config,
) -> Result<Distilled> {
    let Student {
        bundle: student,
        char_bag,
    } = student;
    let read = |paths: &[PathBuf]| -> Result<Vec<Parallel>> {
        let mut all = Vec::new();
        for p in paths {
            all.extend(pairs::read_parallel(p)?);
        }
        Ok(all)
    };
    let (train_lines, val_lines) = (read(train_paths)?, read(val_paths)?);
    let train_sources: std::collections::HashSet<&str> =
        train_lines.iter().map(|l| l.source.as_str()).collect();
    if let Some(l) = val_lines
        .iter()
        .find(|l| train_sources.contains(l.source.as_str()))
    {
        log::warn!(
            "validation source {:?} is also a training source: validation recall will flatter",
            l.source
        );
    }
    let default_cache = train_paths[0]
        .parent()
        .unwrap_or(Path::new("."))
        .join("feature-cache");
    let cache = cache_dir.unwrap_or(&default_cache);
    let t_enc = Encoder::load(teacher)?;
    let s_enc = Encoder::load_outputs(student, Outputs::Base)?;
    let rows = |lines: &[Parallel], split: &str| -> Result<Rows> {
        let (texts, target_of, sources) = texts_of(lines);
        let targets = embed_cached(
            t_enc.primary_text(),
            &format!("{} final", teacher.id_hex()),
            &sources,
            cache,
            &format!("teacher: {split} sources"),
        )?;
        let mut inputs = embed_cached(
            s_enc.primary_text(),
            &format!("{} base", student.id_hex()),
            &texts,
            cache,
            &format!("student: {split} texts"),
        )?;
        if char_bag.width() > 0 {
            // the exported graph concatenates in the same order: sentence embedding, bag
            for (row, text) in inputs.iter_mut().zip(&texts) {
                row.extend(char_bag.bag(text));
            }
        }
        Ok(Rows {
            inputs,
            target_of,
            targets,
        })
    };
    let (tr, va) = (rows(&train_lines, "train")?, rows(&val_lines, "val")?);
    let cfg = Config {
        dim: tr.targets[0].len(),
        ..cfg.clone()
    };
    let mut bar = Progress::new("distillation epochs", cfg.max_epochs);
    let d = distill(&tr, &va, &cfg, |e| {
        bar.inc(1);
        e.log("source");
    })?;
    let info = HeadsInfo {
        format: 1,
        base_bundle_id: student.id_hex(),
        base_bundle: student.dir.display().to_string(),
        text_input: d.head.input(),
        image_input: 0,
        config: cfg,
        best_epoch: d.best_epoch,
        history: d.history.clone(),
        train_pairs: tr.inputs.len(),
        val_pairs: va.inputs.len(),
        teacher: Some(Teacher {
            bundle_id: teacher.id_hex(),
            bundle: teacher.dir.display().to_string(),
        }),
        char_buckets: char_bag.buckets,
        char_trigram_buckets: char_bag.trigram_buckets,
    };
    store::save(out, &info, &[&d.head])?;
    crate::host::plot::training_curve(&d.history, d.best_epoch, &out.join("curve.png"))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_is_a_row_of_its_own() {
        let line = |s: &str, t: &str| Parallel {
            source: s.into(),
            text: t.into(),
            lang: String::new(),
        };
        let (texts, target_of, sources) = texts_of(&[
            line("A rabbit.", "兔子"),
            line("A moon.", "月亮"),
            line("A rabbit.", "Un lapin."),
            line("A moon.", "A moon."),
        ]);
        assert_eq!(sources, ["A rabbit.", "A moon."]);
        assert_eq!(texts, ["兔子", "月亮", "Un lapin.", "A rabbit.", "A moon."]);
        assert_eq!(target_of, [0, 1, 0, 0, 1]);
    }

    /// The student's features are a fixed random linear view of a latent, the teacher's
    /// targets another (normalized): distillation must learn the map, i.e. validation
    /// recall of sources far above chance and the loss well down.
    #[test]
    fn learns_a_synthetic_map_between_spaces() {
        let mut rng = Rng::new(5);
        let mut mat = |r: usize, c: usize| -> Vec<Vec<f64>> {
            (0..r)
                .map(|_| (0..c).map(|_| rng.uniform() * 2.0 - 1.0).collect())
                .collect()
        };
        let (to_student, to_teacher) = (mat(12, 6), mat(10, 6));
        let latents = mat(160, 6);
        let apply = |m: &Vec<Vec<f64>>, z: &Vec<f64>| -> Vec<f32> {
            let v: Vec<f64> = m.iter().map(|r| super::super::linalg::dot(r, z)).collect();
            let n = super::super::linalg::dot(&v, &v).sqrt();
            v.iter().map(|x| (x / n) as f32).collect()
        };
        let split = |zs: &[Vec<f64>]| Rows {
            inputs: zs.iter().map(|z| apply(&to_student, z)).collect(),
            target_of: (0..zs.len()).collect(),
            targets: zs.iter().map(|z| apply(&to_teacher, z)).collect(),
        };
        let (tr, va) = (split(&latents[..120]), split(&latents[120..]));
        let cfg = Config {
            dim: 10,
            batch: 16,
            lr: 3e-3,
            max_epochs: 60,
            patience: 60,
            ..Config::default()
        };
        let head = Head::new(12, 10, 1, &mut Rng::new(1));
        let (before, _) = evaluate(&head, &va, &cfg);
        // the cosine alone, and with the ranking term beside it (`distill --ranking`)
        for ranking in [0.0, 0.5] {
            let cfg = Config {
                ranking,
                temperature: 0.05,
                ..cfg.clone()
            };
            let d = distill(&tr, &va, &cfg, |_| {}).unwrap();
            let (after, r) = evaluate(&d.head, &va, &cfg);
            assert!(
                after < before * 0.3,
                "ranking {ranking}: val loss {before} -> {after}"
            );
            // chance R@1 among 40 sources is 0.025
            assert!(r[0] > 0.5, "ranking {ranking}: {r:?}");
        }
    }
}
