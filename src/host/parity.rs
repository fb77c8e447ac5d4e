//! tract against the converter's own outputs: a converted bundle that ships `reference.json`
//! (`models/convert/from-openclip.sh … --reference`) is run through this build's encoder on
//! the very inputs the converter used, and compared with onnxruntime (same ONNX files: is
//! tract running the graph right?) and torch f32 (the source model: what did int8 cost?).
//!
//! `reference.json`: `token_ids` {query: open_clip ids}, `photos` [paths relative to the
//! repository], `image_input` (the first photo's network input, CHW), `image_onnxruntime`,
//! `image_torch_f32` (one row per photo, the first from `image_input`), `texts` (with the
//! bundle's prefix), `text_onnxruntime`, `text_torch_f32`.

use crate::encoder::{cosine, Encoder};
use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tract_onnx::prelude::*;

#[derive(Deserialize)]
struct Reference {
    token_ids: BTreeMap<String, Vec<u32>>,
    photos: Vec<String>,
    image_input: Vec<f32>,
    image_onnxruntime: Vec<Vec<f32>>,
    image_torch_f32: Vec<Vec<f32>>,
    texts: Vec<String>,
    text_onnxruntime: Vec<Vec<f32>>,
    text_torch_f32: Vec<Vec<f32>>,
}

/// Worst agreements found; [`Report::ok`] says whether tract is correct on this bundle.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tokens_checked: usize,
    /// queries whose ids differ from open_clip's
    pub token_mismatches: Vec<String>,
    /// tract vs onnxruntime on the converter's exact image input
    pub image_vs_onnxruntime: f32,
    /// the same against torch f32 (the int8 recipe's cost, for an int8 bundle)
    pub image_vs_torch: f32,
    /// moonlens's preprocessing against the converter's tensor (max abs, std units)
    pub preprocess_max_abs: f32,
    /// every photo end to end (preprocessing + tower) vs onnxruntime
    pub photos_vs_onnxruntime: f32,
    pub text_vs_onnxruntime: f32,
    pub text_vs_torch: f32,
}

/// The bar for "tract computes what onnxruntime computes on the same file".
pub const SAME_FILE_COS: f32 = 0.9999;

impl Report {
    pub fn ok(&self) -> bool {
        self.token_mismatches.is_empty()
            && self.image_vs_onnxruntime >= SAME_FILE_COS
            && self.photos_vs_onnxruntime >= SAME_FILE_COS
            && self.text_vs_onnxruntime >= SAME_FILE_COS
            && self.preprocess_max_abs < 1e-3
    }
}

/// Run the checks; `repo` is where the reference's photo paths are relative to.
pub fn check(enc: &Encoder, repo: &Path) -> Result<Report> {
    let path = enc.bundle().path("reference.json");
    let bytes = std::fs::read(&path).context(format_args!(
        "{}: no reference outputs (convert with from-openclip.sh --reference)",
        path.display()
    ))?;
    let r: Reference = serde_json::from_slice(&bytes)
        .map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    let mut token_mismatches = Vec::new();
    for (text, ids) in &r.token_ids {
        if &enc.tokenize(text)? != ids {
            token_mismatches.push(text.clone());
        }
    }
    let [c, h, w] = enc.bundle().manifest.image.shape;
    let (image_plan, _) = enc.plans();
    let t = Tensor::from_shape(&[1, c, h, w], &r.image_input).context("reference image input")?;
    let out = image_plan
        .run(tvec![t.into_tvalue()])
        .map_err(|e| Error::new(format!("image tower failed: {e:#}")))?;
    let got: Vec<f32> = out[0]
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::new(format!("{e:#}")))?
        .iter()
        .copied()
        .collect();
    let first = |rows: &[Vec<f32>]| rows.first().cloned().unwrap_or_default();
    let image_vs_onnxruntime = cosine(&got, &first(&r.image_onnxruntime));
    let image_vs_torch = cosine(&got, &first(&r.image_torch_f32));
    let mut preprocess_max_abs = 0f32;
    let mut photos_vs_onnxruntime = 1f32;
    for (i, (photo, want)) in r.photos.iter().zip(&r.image_onnxruntime).enumerate() {
        let img = image::open(repo.join(photo)).context(format_args!("{photo}"))?;
        if i == 0 {
            preprocess_max_abs = enc
                .preprocess(&img)
                .iter()
                .zip(&r.image_input)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
        }
        photos_vs_onnxruntime = photos_vs_onnxruntime.min(cosine(&enc.embed_image(&img)?, want));
    }
    let prefix = &enc.bundle().manifest.text.prefix;
    let (mut text_vs_onnxruntime, mut text_vs_torch) = (1f32, 1f32);
    for ((text, ort), torch) in r
        .texts
        .iter()
        .zip(&r.text_onnxruntime)
        .zip(&r.text_torch_f32)
    {
        let query = text.strip_prefix(prefix.as_str()).unwrap_or(text);
        let e = enc.embed_text(query)?;
        text_vs_onnxruntime = text_vs_onnxruntime.min(cosine(&e, ort));
        text_vs_torch = text_vs_torch.min(cosine(&e, torch));
    }
    Ok(Report {
        tokens_checked: r.token_ids.len(),
        token_mismatches,
        image_vs_onnxruntime,
        image_vs_torch,
        preprocess_max_abs,
        photos_vs_onnxruntime,
        text_vs_onnxruntime,
        text_vs_torch,
    })
}
