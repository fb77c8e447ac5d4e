//! Frozen features of a pairs file, computed once and kept in a memory-mapped cache file.
//!
//! Training never runs the backbones inside its loop: every image goes through the bundle's
//! image tower once per view (its backbone features and its training-free bridge embedding,
//! also from a bundle that already has trained heads) (as is, and mirrored left-right: the one augmentation,
//! see [`VIEWS`]) and every caption through the text tower once. The cache file is named by
//! a key over everything the numbers depend on, so a second run on unchanged inputs maps the
//! file instead of recomputing, and any change (bundle, image bytes, captions) misses.
//!
//! File layout (all integers u32 little-endian, all values f32 little-endian):
//!
//! ```text
//! 0   8   magic "MLFEATS1"
//! 8   32  key: sha256 of the bundle id, each image path and content sha256, each caption
//! 40  4   images          52  4  raw_dim (backbone features, 1280 for EfficientNet-Lite0)
//! 44  4   texts           56  4  bridge_dim (the bridge embedding)
//! 48  4   views           60  4  text_dim
//! 64      raw[images][views][raw_dim], bridge[images][views][bridge_dim], text[texts][text_dim]
//! ```
//!
//! Written to a temporary name and renamed, so a crash never leaves a half file under the
//! final name; a file whose size or header disagrees is recomputed.

use super::eval::load_image;
use super::pairs::{self, Pair};
use super::progress::Progress;
use crate::bundle::{sha256_file, Bundle};
use crate::encoder::{self, Encoder, Outputs};
use crate::error::{Context, Error, Result};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

const MAGIC: &[u8; 8] = b"MLFEATS1";
const HEADER: usize = 64;
/// View 0 is the image as is, view 1 mirrored left-right. Stamps, clip art and camera frames
/// mean the same mirrored, and the extra view doubles the image side of a small training set
/// for the price of one more backbone pass at caching time (none per epoch).
pub const VIEWS: usize = 2;

pub struct Features {
    map: Mmap,
    pub images: usize,
    pub texts: usize,
    pub raw_dim: usize,
    pub bridge_dim: usize,
    pub text_dim: usize,
    /// For each text (pair), the index of its image.
    pub truth: Vec<usize>,
    pub image_paths: Vec<PathBuf>,
    pub captions: Vec<String>,
    pub path: PathBuf,
    /// True when the file was already there and valid.
    pub reused: bool,
}

impl Features {
    fn floats(&self, offset: usize, len: usize) -> Vec<f32> {
        self.map[offset..offset + 4 * len]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Backbone features of image `i`, view `v`.
    pub fn raw(&self, i: usize, v: usize) -> Vec<f32> {
        let off = HEADER + 4 * (i * VIEWS + v) * self.raw_dim;
        self.floats(off, self.raw_dim)
    }

    /// Bridge embedding of image `i`, view `v`.
    pub fn bridge(&self, i: usize, v: usize) -> Vec<f32> {
        let base = HEADER + 4 * self.images * VIEWS * self.raw_dim;
        self.floats(
            base + 4 * (i * VIEWS + v) * self.bridge_dim,
            self.bridge_dim,
        )
    }

    /// Text tower embedding of caption `t`.
    pub fn text(&self, t: usize) -> Vec<f32> {
        let base = HEADER + 4 * self.images * VIEWS * (self.raw_dim + self.bridge_dim);
        self.floats(base + 4 * t * self.text_dim, self.text_dim)
    }
}

fn cache_key(bundle: &Bundle, images: &[PathBuf], captions: &[String]) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(bundle.id);
    for p in images {
        h.update(p.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(sha256_file(p)?.as_bytes());
    }
    for c in captions {
        h.update(c.as_bytes());
        h.update([0]);
    }
    Ok(h.finalize().into())
}

/// Features of `pairs` through `bundle`, from `cache_dir` when there, computed otherwise.
pub fn load_or_compute(bundle: &Bundle, pairs: &[Pair], cache_dir: &Path) -> Result<Features> {
    for p in pairs {
        if !p.image.exists() {
            crate::bail!(
                "image {} does not exist (paths in pairs files are relative to the file)",
                p.image.display()
            );
        }
    }
    let (image_paths, truth) = pairs::gallery(pairs);
    let captions: Vec<String> = pairs.iter().map(|p| p.text.clone()).collect();
    let key = cache_key(bundle, &image_paths, &captions)?;
    std::fs::create_dir_all(cache_dir)
        .context(format_args!("cannot create {}", cache_dir.display()))?;
    let path = cache_dir.join(format!("{}.feats", crate::bundle::hex(&key[..12])));
    let mut reused = true;
    if !valid(&path, &key, image_paths.len(), captions.len()) {
        reused = false;
        compute(bundle, &image_paths, &captions, &key, &path)?;
    }
    let file = std::fs::File::open(&path).context(format_args!("{}", path.display()))?;
    // SAFETY: the cache file is private to this tool and only ever replaced by rename, never
    // modified in place, so the mapping cannot change under us.
    let map = unsafe { Mmap::map(&file) }.context(format_args!("mapping {}", path.display()))?;
    let u = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().expect("4 bytes")) as usize;
    let f = Features {
        images: u(40),
        texts: u(44),
        raw_dim: u(52),
        bridge_dim: u(56),
        text_dim: u(60),
        map,
        truth,
        image_paths,
        captions,
        path,
        reused,
    };
    Ok(f)
}

fn valid(path: &Path, key: &[u8; 32], images: usize, texts: usize) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC || &bytes[8..40] != key {
        return false;
    }
    let u = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes")) as usize;
    let (n_img, n_txt, views) = (u(40), u(44), u(48));
    let (raw, bridge, text) = (u(52), u(56), u(60));
    n_img == images
        && n_txt == texts
        && views == VIEWS
        && bytes.len() == HEADER + 4 * (n_img * views * (raw + bridge) + n_txt * text)
}

fn compute(
    bundle: &Bundle,
    images: &[PathBuf],
    captions: &[String],
    key: &[u8; 32],
    path: &Path,
) -> Result<()> {
    let m = &bundle.manifest;
    let Some(feat_name) = m.image.features.as_deref() else {
        crate::bail!(
            "bundle {} does not expose backbone features ([image] features in bundle.toml); \
             rebuild it with models/convert/build.sh",
            bundle.dir.display()
        );
    };
    // the training-free embeddings under any heads the bundle already has
    let model = encoder::image_model(bundle, &[m.image.base(), feat_name])?;
    let plan = encoder::image_plan(&model)?;
    let enc = Encoder::load_outputs(bundle, Outputs::Base)?;
    let n = images.len();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let bar = std::sync::Mutex::new(Progress::new("features: images", n));
    // per image: (bridge views, raw views)
    type Row = (Vec<Vec<f32>>, Vec<Vec<f32>>);
    let results: Vec<Result<Row>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (plan, enc, bar) = (&plan, &enc, &bar);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in (t..n).step_by(threads) {
                        let r = (|| -> Result<Row> {
                            let img = load_image(&images[i])?;
                            let mut row: Row = (Vec::new(), Vec::new());
                            for view in [img.clone(), img.fliph()] {
                                let x = enc.preprocess(&view);
                                let [c, h, w] = enc.bundle().manifest.image.shape;
                                let t = Tensor::from_shape(&[1, c, h, w], &x)
                                    .context("image tensor")?;
                                let outs = plan.run(tvec![t.into_tvalue()]).map_err(|e| {
                                    Error::new(format!("image tower failed: {e:#}"))
                                })?;
                                let flat = |k: usize| -> Result<Vec<f32>> {
                                    Ok(outs[k]
                                        .to_plain_array_view::<f32>()
                                        .map_err(|e| Error::new(format!("{e:#}")))?
                                        .iter()
                                        .copied()
                                        .collect())
                                };
                                row.0.push(flat(0)?);
                                row.1.push(flat(1)?);
                            }
                            Ok(row)
                        })()
                        .context(format_args!("{}", images[i].display()));
                        out.push((i, r));
                        bar.lock().expect("progress lock").inc(1);
                    }
                    out
                })
            })
            .collect();
        let mut all: Vec<(usize, Result<Row>)> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("feature thread panicked"))
            .collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    });
    let rows = results.into_iter().collect::<Result<Vec<Row>>>()?;
    let mut bar = Progress::new("features: captions", captions.len());
    let mut texts = Vec::with_capacity(captions.len());
    for c in captions {
        texts.push(enc.embed_text(c)?);
        bar.inc(1);
    }
    let raw_dim = rows[0].1[0].len();
    let bridge_dim = rows[0].0[0].len();
    let text_dim = texts[0].len();
    let tmp = path.with_extension("tmp");
    let mut bytes = Vec::with_capacity(HEADER + 4 * n * VIEWS * (raw_dim + bridge_dim));
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(key);
    for v in [n, captions.len(), VIEWS, raw_dim, bridge_dim, text_dim] {
        bytes.extend_from_slice(&(v as u32).to_le_bytes());
    }
    let rows_raw = rows.iter().flat_map(|r| r.1.iter());
    let rows_bridge = rows.iter().flat_map(|r| r.0.iter());
    for v in rows_raw.chain(rows_bridge).chain(texts.iter()) {
        bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    let mut f =
        std::fs::File::create(&tmp).context(format_args!("cannot create {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .context(format_args!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).context(format_args!("{}", path.display()))?;
    Ok(())
}
