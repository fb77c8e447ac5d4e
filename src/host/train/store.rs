//! A trained-heads directory: `heads.json` (how they were trained, from which bundle, the
//! per-epoch history) and `heads.bin` (every parameter as f32 little-endian: the text head,
//! then the image head, each in [`Head::visit`] order: W0 [in×dim] row-major, b0, then per
//! block W [dim×dim], b, γ, β). A distilled text head (`distill`, `teacher` set in heads.json)
//! has no image head: `image_input` is 0 and heads.bin holds the text head alone.

use super::head::Head;
use super::linalg::Rng;
use super::{Config, Epoch};
use crate::error::{Context, Error, Result};
use std::path::Path;

/// `heads.json`. Unknown fields are refused: a field this build does not know may change
/// what the weights mean (stop 9's `char_trigrams` put trigrams in the CJK slots), and
/// exporting such heads as if it were absent would give a tower that silently disagrees
/// with its training.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsInfo {
    pub format: u32,
    /// Bundle the features came from: its id (sha256 of bundle.toml) and directory.
    pub base_bundle_id: String,
    pub base_bundle: String,
    pub text_input: usize,
    pub image_input: usize,
    pub config: Config,
    pub best_epoch: usize,
    pub history: Vec<Epoch>,
    pub train_pairs: usize,
    pub val_pairs: usize,
    /// Set for a text head distilled from another bundle's text tower (`distill`): that
    /// bundle. `base_bundle` is then the student whose sentence embeddings the head reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<Teacher>,
    /// A distilled head that also reads the text's character bag
    /// ([`crate::encoder::char_bag`]): its CJK slots and its trigram slots (both 0: no bag,
    /// `text_input` is the sentence embedding alone).
    #[serde(default, skip_serializing_if = "crate::bundle::is_zero")]
    pub char_buckets: usize,
    #[serde(default, skip_serializing_if = "crate::bundle::is_zero")]
    pub char_trigram_buckets: usize,
}

impl HeadsInfo {
    /// The character bag the head reads after the sentence embedding (width 0: none).
    pub fn char_bag(&self) -> crate::encoder::char_bag::CharBag {
        crate::encoder::char_bag::CharBag {
            buckets: self.char_buckets,
            trigram_buckets: self.char_trigram_buckets,
        }
    }

    /// The epoch whose weights were kept.
    pub fn best(&self) -> Option<&super::Epoch> {
        self.history.iter().find(|e| e.epoch == self.best_epoch)
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Teacher {
    pub bundle_id: String,
    pub bundle: String,
}

pub struct Heads {
    /// The heads directory's own name: exported bundles are named after it.
    pub name: String,
    pub info: HeadsInfo,
    pub text: Head,
    /// None for a distilled text head.
    pub image: Option<Head>,
}

/// Writes `heads` (the text head, then the image head if any) and `info`.
pub fn save(dir: &Path, info: &HeadsInfo, heads: &[&Head]) -> Result<()> {
    std::fs::create_dir_all(dir).context(format_args!("cannot create {}", dir.display()))?;
    let mut bin = Vec::new();
    for h in heads {
        h.visit(&mut |p| {
            for v in p {
                bin.extend_from_slice(&(*v as f32).to_le_bytes());
            }
        });
    }
    std::fs::write(dir.join("heads.bin"), bin).context("writing heads.bin")?;
    let json = serde_json::to_string_pretty(info).expect("plain struct");
    std::fs::write(dir.join("heads.json"), json).context("writing heads.json")?;
    Ok(())
}

pub fn load(dir: &Path) -> Result<Heads> {
    let jp = dir.join("heads.json");
    let text = std::fs::read_to_string(&jp).context(format_args!(
        "cannot read {} (is {} a directory written by `moonlens-host train`?)",
        jp.display(),
        dir.display()
    ))?;
    let info: HeadsInfo = serde_json::from_str(&text).context(format_args!(
        "{} (written by another version of moonlens-host? train or distill again)",
        jp.display()
    ))?;
    if info.format != 1 {
        crate::bail!(
            "{}: heads format {} is not supported",
            jp.display(),
            info.format
        );
    }
    let bp = dir.join("heads.bin");
    let bytes = std::fs::read(&bp).context(format_args!("cannot read {}", bp.display()))?;
    let c = &info.config;
    let mut rng = Rng::new(0);
    let mut text_head = Head::new(info.text_input, c.dim, c.blocks, &mut rng);
    let mut image_head =
        (info.image_input > 0).then(|| Head::new(info.image_input, c.dim, c.blocks, &mut rng));
    let mut want = 0;
    for h in std::iter::once(&text_head).chain(image_head.as_ref()) {
        h.visit(&mut |p| want += p.len());
    }
    if bytes.len() != 4 * want {
        return Err(Error::new(format!(
            "{}: {} bytes, but heads.json describes {} parameters ({} bytes): the files do \
             not belong together or one is truncated",
            bp.display(),
            bytes.len(),
            want,
            4 * want
        )));
    }
    let mut values = bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    let mut bad = false;
    for h in std::iter::once(&mut text_head).chain(image_head.as_mut()) {
        h.visit_mut(&mut |p| {
            for v in p.iter_mut() {
                *v = values.next().expect("length checked");
                bad |= !v.is_finite();
            }
        });
    }
    if bad {
        crate::bail!("{}: holds NaN or infinite parameters", bp.display());
    }
    let name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "heads".into());
    Ok(Heads {
        name,
        info,
        text: text_head,
        image: image_head,
    })
}
