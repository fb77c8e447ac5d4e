//! The `train` command end to end: pairs files → checks → cached features → training →
//! heads directory with `heads.json`, `heads.bin` and `curve.png`.

use super::store::{self, HeadsInfo};
use super::{Config, Trained};
use crate::bundle::Bundle;
use crate::error::{Context, Result};
use crate::host::features;
use crate::host::pairs::{self, Pair};
use crate::host::progress::Progress;
use std::path::{Path, PathBuf};

/// Refuses validation pairs whose image is also a training image: the validation loss
/// would reward memorizing and early stopping would stop late.
pub fn check_disjoint(train: &[Pair], val: &[Pair]) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let train_images: std::collections::HashSet<PathBuf> =
        train.iter().map(|p| canon(&p.image)).collect();
    let shared: Vec<&Pair> = val
        .iter()
        .filter(|p| train_images.contains(&canon(&p.image)))
        .collect();
    if let Some(first) = shared.first() {
        crate::bail!(
            "{} validation pair(s) use training images (first: {}); the validation split must \
             not overlap training",
            shared.len(),
            first.image.display()
        );
    }
    Ok(())
}

/// The pairs of several files, one after the other (e.g. English and Chinese captions of
/// the same images).
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Pair>> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(pairs::read(p)?);
    }
    Ok(all)
}

pub fn run(
    bundle: &Bundle,
    train_paths: &[PathBuf],
    val_paths: &[PathBuf],
    out: &Path,
    cache_dir: Option<&Path>,
    cfg: &Config,
) -> Result<Trained> {
    let train_pairs = read_all(train_paths)?;
    let val_pairs = read_all(val_paths)?;
    check_disjoint(&train_pairs, &val_pairs)?;
    let train_path = &train_paths[0];
    let val_path = &val_paths[0];
    let default_cache = train_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("feature-cache");
    let cache = cache_dir.unwrap_or(&default_cache);
    let tf = features::load_or_compute(bundle, &train_pairs, cache)
        .context(format_args!("features of {}", train_path.display()))?;
    let vf = features::load_or_compute(bundle, &val_pairs, cache)
        .context(format_args!("features of {}", val_path.display()))?;
    for f in [&tf, &vf] {
        log::info!(
            "features {} ({}; {} images x {} views, {} captions)",
            f.path.display(),
            if f.reused { "reused" } else { "computed" },
            f.images,
            features::VIEWS,
            f.texts
        );
    }
    let mut bar = Progress::new("training epochs", cfg.max_epochs);
    let trained = super::train(&tf, &vf, cfg, |e| {
        bar.inc(1);
        e.log("image");
    })?;
    let info = HeadsInfo {
        format: 1,
        base_bundle_id: bundle.id_hex(),
        base_bundle: bundle.dir.display().to_string(),
        text_input: trained.text.input(),
        image_input: trained.image.input(),
        config: cfg.clone(),
        best_epoch: trained.best_epoch,
        history: trained.history.clone(),
        train_pairs: train_pairs.len(),
        val_pairs: val_pairs.len(),
        teacher: None,
        char_buckets: 0,
        char_trigram_buckets: 0,
    };
    store::save(out, &info, &[&trained.text, &trained.image])?;
    crate::host::plot::training_curve(
        &trained.history,
        trained.best_epoch,
        &out.join("curve.png"),
    )?;
    Ok(trained)
}
