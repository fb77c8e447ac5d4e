//! A trained-heads directory: `heads.json` (how they were trained, from which bundle, the
//! per-epoch history) and `heads.bin` (every parameter as f32 little-endian: the text head,
//! then the image head, each in [`Head::visit`] order: W0 [in×dim] row-major, b0, then per
//! block W [dim×dim], b, γ, β).

use super::head::Head;
use super::linalg::Rng;
use super::{Config, Epoch, Trained};
use crate::error::{Context, Error, Result};
use std::path::Path;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
}

pub struct Heads {
    /// The heads directory's own name: exported bundles are named after it.
    pub name: String,
    pub info: HeadsInfo,
    pub text: Head,
    pub image: Head,
}

pub fn save(dir: &Path, info: &HeadsInfo, t: &Trained) -> Result<()> {
    std::fs::create_dir_all(dir).context(format_args!("cannot create {}", dir.display()))?;
    let mut bin = Vec::new();
    for h in [&t.text, &t.image] {
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
    let info: HeadsInfo = serde_json::from_str(&text).context(format_args!("{}", jp.display()))?;
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
    let mut image_head = Head::new(info.image_input, c.dim, c.blocks, &mut rng);
    let mut want = 0;
    for h in [&text_head, &image_head] {
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
    for h in [&mut text_head, &mut image_head] {
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
