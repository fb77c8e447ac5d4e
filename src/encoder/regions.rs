//! Region embeddings: the bundle's training-free embedding (the bridge) of every cell of the
//! backbone's last feature map, so a small subject of a cluttered frame can be matched on
//! its own (models/README.md, "Region scoring").
//!
//! The backbone pools its last feature map (`[1, C, H, W]`, 7×7 for EfficientNet-Lite at
//! 224 px) into the `features` the heads read; the bridge turns pooled features into an
//! embedding in the text tower's space. Each cell of the map is a feature vector of the same
//! width, so the bridge applied to the `H·W` cells as one batch gives one embedding per
//! region. The bridge is cut from the bundle's own `image.onnx` at load, as
//! [`super::reproject`] cuts the head: no extra file, the numbers of the frame's own tower.
//! The image plan returns the feature map beside the embedding (one backbone run a frame).
//!
//! A frame's score is then `global + λ · best region`, where a region's match is its cosine
//! with the query's part in the same space ([`query_part`]); never the best region alone,
//! which loses whole-frame subjects (measured in models/README.md).

use super::rewrite::{prune, value_info};
use super::{onnx_model_edited, Plan};
use crate::bundle::Bundle;
use crate::error::{Error, Result};
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::dims;

/// The embedding of one cell of the feature map, with the bridge's confidence in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Which cell of the feature map, row by row (see [`cell_box`] for where it is).
    pub cell: usize,
    /// L2-normalized, in the space of the bundle's base (bridge) embedding.
    pub embedding: Vec<f32>,
    /// The largest class probability the bridge gave the cell (0 when it has no softmax).
    pub confidence: f32,
}

/// The bridge applied to every cell of a feature map.
pub struct RegionTower {
    plan: Plan,
    /// Name of the feature map tensor in `image.onnx` (the pooling's input).
    pub fmap: String,
    /// Channels of the map (the width of the pooled features).
    pub channels: usize,
    /// Cells of the map (`H·W`): the batch of the plan.
    pub cells: usize,
    /// The map's rows and columns (`H`, `W`).
    pub grid: (usize, usize),
    /// Width of a region embedding.
    pub width: usize,
    has_confidence: bool,
}

/// The feature map under `features`: walks back from the tensor through Flatten, Reshape or
/// Squeeze to a GlobalAveragePool and returns the pool's input.
pub fn feature_map(g: &pb::GraphProto, features: &str) -> Option<String> {
    let mut name = features.to_string();
    for _ in 0..4 {
        let node = g.node.iter().find(|n| n.output.contains(&name))?;
        match node.op_type.as_str() {
            "GlobalAveragePool" => return node.input.first().cloned(),
            "Flatten" | "Reshape" | "Squeeze" => name = node.input.first()?.clone(),
            _ => return None,
        }
    }
    None
}

impl RegionTower {
    /// The bridge of `bundle`'s image tower, for a feature map of `channels × cells` (as the
    /// image plan declares it). Errors name what the bundle lacks: pooled `features`, a
    /// base embedding computed from them.
    pub fn load(bundle: &Bundle, channels: usize, grid: (usize, usize)) -> Result<RegionTower> {
        let cells = grid.0 * grid.1;
        let m = &bundle.manifest;
        let path = bundle.path(&m.image.file);
        let Some(features) = m.image.features.clone() else {
            crate::bail!(
                "{}: region embeddings need the backbone's pooled features ([image] features)",
                bundle.dir.display()
            );
        };
        let base = m.image.base().to_string();
        let mut has_confidence = false;
        let mut fmap = None;
        let model = onnx_model_edited(&path, |g| {
            fmap = feature_map(g, &features);
            if fmap.is_none() {
                crate::bail!(
                    "{}: {features:?} is not a global average pool of a feature map",
                    path.display()
                );
            }
            g.node.retain(|n| !n.output.contains(&features));
            g.input = vec![value_info(&features, Some(channels))];
            g.output.retain(|o| o.name == base);
            if g.output.is_empty() {
                g.output.push(value_info(&base, None));
            }
            prune(g);
            if !g.node.iter().any(|n| n.input.contains(&features)) {
                crate::bail!(
                    "{}: the base embedding {base:?} is not computed from {features:?}",
                    path.display()
                );
            }
            // the bridge's class probabilities (one Softmax): how sure it is of a cell
            let soft: Vec<&pb::NodeProto> =
                g.node.iter().filter(|n| n.op_type == "Softmax").collect();
            if let [s] = soft.as_slice() {
                let name = s.output[0].clone();
                g.output.push(value_info(&name, None));
                has_confidence = true;
            }
            Ok(())
        })?;
        let plan = model
            .with_input_names([features.as_str()])
            .and_then(|x| x.with_input_fact(0, f32::fact(dims!(cells, channels)).into()))
            .and_then(|x| x.into_optimized())
            .and_then(|x| x.into_runnable())
            .map_err(|e| {
                Error::new(format!(
                    "{}: the bridge over the feature map's cells: {e:#}",
                    path.display()
                ))
            })?;
        let width = plan
            .model()
            .output_fact(0)
            .ok()
            .and_then(|f| f.shape.last().and_then(|d| d.to_i64().ok()))
            .filter(|&d| d > 0)
            .ok_or_else(|| {
                Error::new(format!("{}: the bridge has no fixed width", path.display()))
            })? as usize;
        Ok(RegionTower {
            plan,
            fmap: fmap.expect("checked in the edit"),
            channels,
            cells,
            grid,
            width,
            has_confidence,
        })
    }

    /// The regions of one frame from its feature map (`channels × cells` values, channel
    /// major, as the backbone writes `[1, C, H, W]`), in cell order (row by row).
    pub fn regions(&self, fmap: &[f32]) -> Result<Vec<Region>> {
        let (c, n) = (self.channels, self.cells);
        if fmap.len() != c * n {
            crate::bail!("feature map of {} values, expected {c} x {n}", fmap.len());
        }
        // [C, H·W] → [H·W, C]: one row of pooled-feature width per cell
        let mut cells = vec![0f32; n * c];
        for ch in 0..c {
            for (cell, &v) in fmap[ch * n..(ch + 1) * n].iter().enumerate() {
                cells[cell * c + ch] = v;
            }
        }
        let t = Tensor::from_shape(&[n, c], &cells)
            .map_err(|e| Error::new(format!("feature map cells: {e:#}")))?;
        let out = self
            .plan
            .run(tvec![t.into_tvalue()])
            .map_err(|e| Error::new(format!("the bridge over cells failed: {e:#}")))?;
        let embeddings = super::rows(&out[0], n, self.width)?;
        let confidence: Vec<f32> = if self.has_confidence {
            let view = out[1]
                .to_plain_array_view::<f32>()
                .map_err(|e| Error::new(format!("class probabilities: {e:#}")))?;
            let flat: Vec<f32> = view.iter().copied().collect();
            let classes = flat.len() / n;
            flat.chunks(classes.max(1))
                .map(|p| p.iter().copied().fold(0.0, f32::max))
                .collect()
        } else {
            vec![0.0; n]
        };
        Ok(embeddings
            .into_iter()
            .zip(confidence)
            .enumerate()
            .map(|(cell, (embedding, confidence))| Region {
                cell,
                embedding,
                confidence,
            })
            .collect())
    }
}

/// The feature map tensor of `bundle`'s image tower (see [`feature_map`]).
pub fn feature_map_name(bundle: &Bundle) -> Result<String> {
    let m = &bundle.manifest;
    let path = bundle.path(&m.image.file);
    let features = m.image.features.as_deref().ok_or_else(|| {
        Error::new(format!(
            "{}: region embeddings need the backbone's pooled features ([image] features)",
            bundle.dir.display()
        ))
    })?;
    let mut found = None;
    onnx_model_edited(&path, |g| {
        found = feature_map(g, features);
        Ok(())
    })?;
    found.ok_or_else(|| {
        Error::new(format!(
            "{}: {features:?} is not a global average pool of a feature map",
            path.display()
        ))
    })
}

/// The part of a query embedding that lives in the regions' space: the whole embedding when
/// the bundle's output is its base embedding; the first `width` values of a mixed bundle
/// (`export --mix w` writes `[√w·base, √(1-w)·head]`), renormalized; None otherwise (heads
/// alone: no base part to compare regions with).
pub fn query_part(bundle: &Bundle, query: &[f32], width: usize) -> Option<Vec<f32>> {
    let m = &bundle.manifest;
    let mixed = m
        .heads
        .as_ref()
        .and_then(|h| h.get("mix"))
        .and_then(|v| v.as_float())
        .is_some_and(|w| w > 0.0);
    let part = if m.image.output == m.image.base() && query.len() == width {
        query
    } else if mixed && query.len() > width {
        &query[..width]
    } else {
        return None;
    };
    let norm = part.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0).then(|| part.iter().map(|x| x / norm).collect())
}

/// Where `cell` of a `grid` feature map lies in an image of `size` (width, height) pixels, as
/// (left, top, right, bottom): the cells tile the centre crop the tower saw (`spec`'s resize
/// and crop, [`super::preprocess::geometry`]), mapped back to the image.
pub fn cell_box(
    spec: &crate::bundle::ImageTower,
    grid: (usize, usize),
    cell: usize,
    size: (u32, u32),
) -> (f32, f32, f32, f32) {
    let (w, h) = (size.0.max(1) as usize, size.1.max(1) as usize);
    let (crop, resize) = (spec.crop as usize, spec.resize as usize);
    let (nh, _, top, left) = super::preprocess::geometry(h, w, resize, crop);
    let scale = h as f32 / nh as f32;
    let (ch, cw) = (crop as f32 / grid.0 as f32, crop as f32 / grid.1 as f32);
    let (r, c) = (cell / grid.1, cell % grid.1);
    let at = |crop_px: f32, offset: usize| (crop_px + offset as f32) * scale;
    (
        at(c as f32 * cw, left),
        at(r as f32 * ch, top),
        at((c + 1) as f32 * cw, left),
        at((r + 1) as f32 * ch, top),
    )
}

/// The `keep` regions a frame keeps: the most confident first (all when `keep` ≥ their count;
/// ties in cell order).
pub fn most_confident(mut regions: Vec<Region>, keep: usize) -> Vec<Region> {
    regions.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    regions.truncate(keep);
    regions
}

/// The best cosine of `query_part` with any of `regions` (−1 when there are none).
pub fn best_match(query_part: &[f32], regions: &[Region]) -> f32 {
    regions
        .iter()
        .map(|r| r.embedding.iter().zip(query_part).map(|(a, b)| a * b).sum())
        .fold(-1.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, input: &str, output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            input: vec![input.into()],
            output: vec![output.into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_feature_map_is_found_through_flatten_and_nowhere_else() {
        let g = pb::GraphProto {
            node: vec![
                node("Clip", "x", "map"),
                node("GlobalAveragePool", "map", "pooled"),
                node("Flatten", "pooled", "features"),
                node("MatMul", "features", "logits"),
            ],
            ..Default::default()
        };
        assert_eq!(feature_map(&g, "features").as_deref(), Some("map"));
        assert_eq!(feature_map(&g, "pooled").as_deref(), Some("map"));
        assert_eq!(feature_map(&g, "logits"), None, "not a pool");
        assert_eq!(feature_map(&g, "nothing"), None);
    }

    #[test]
    fn a_cell_maps_back_to_its_part_of_the_image() {
        let spec: crate::bundle::ImageTower = toml::from_str(
            "file = \"i\"\ninput = \"x\"\noutput = \"y\"\nshape = [3, 224, 224]\n\
             channel_order = \"rgb\"\nresize = 256\ncrop = 224\nmean = [0.0, 0.0, 0.0]\n\
             std = [1.0, 1.0, 1.0]\nbackground = [255, 255, 255]\n",
        )
        .unwrap();
        // 448 x 448 → 256 x 256, crop offset 16: the last cell is crop pixels 192..224, image
        // pixels (16 + 192) * 1.75 = 364 .. (16 + 224) * 1.75 = 420
        let b = cell_box(&spec, (7, 7), 48, (448, 448));
        for (got, want) in [b.0, b.1, b.2, b.3]
            .iter()
            .zip([364.0, 364.0, 420.0, 420.0])
        {
            assert!((got - want).abs() < 0.01, "{b:?}");
        }
        // a 640 x 480 frame → 341 x 256, crop at (58, 16), 1.875 image pixels a tower pixel:
        // cell 0 starts past the cut-off sides, 60 pixels a side
        let (l, t, r, bt) = cell_box(&spec, (7, 7), 0, (640, 480));
        assert!(
            (l - 108.75).abs() < 0.5 && (t - 30.0).abs() < 0.5,
            "{l} {t}"
        );
        assert!(
            (r - l - 60.0).abs() < 0.5 && (bt - t - 60.0).abs() < 0.5,
            "{r} {bt}"
        );
    }

    #[test]
    fn the_most_confident_regions_are_kept_and_the_best_match_wins() {
        let r = |e: [f32; 2], c: f32| Region {
            cell: 0,
            embedding: e.to_vec(),
            confidence: c,
        };
        let kept = most_confident(
            vec![r([1.0, 0.0], 0.1), r([0.0, 1.0], 0.9), r([0.6, 0.8], 0.5)],
            2,
        );
        assert_eq!(
            kept.iter().map(|r| r.confidence).collect::<Vec<_>>(),
            [0.9, 0.5]
        );
        assert!((best_match(&[1.0, 0.0], &kept) - 0.6).abs() < 1e-6);
        assert_eq!(best_match(&[1.0, 0.0], &[]), -1.0);
    }
}
