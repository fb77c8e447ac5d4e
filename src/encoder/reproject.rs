//! The image tower above its frozen backbone: what turns the outputs an index keeps
//! (`features.ml`: pooled features and the bridge embedding) into the bundle's embedding.
//!
//! Cut from the bundle's own `image.onnx` at load (no extra file in the bundle): the nodes
//! that compute the kept tensors are dropped, the tensors become graph inputs, and everything
//! no longer needed (the whole backbone) is pruned. What is left is exactly the head, the mix
//! and the L2 norm the tower runs on a frame, so a re-projected entry equals the embedding
//! the new bundle would have computed from the frame (up to the int8 storage of the outputs,
//! measured in tests/reload.rs).

use super::rewrite::{prune, value_info};
use super::{onnx_model_edited, rows};
use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::index::{Kept, Layout};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::dims;

/// Entries re-projected per run of the head plan.
pub const BATCH: usize = 64;

pub struct Reprojector {
    plan: super::Plan,
    layout: Layout,
    dim: usize,
}

impl Reprojector {
    /// The head of `bundle`'s image tower, reading the outputs `layout` keeps.
    pub fn load(bundle: &Bundle, layout: &Layout) -> Result<Reprojector> {
        let m = &bundle.manifest;
        let path = bundle.path(&m.image.file);
        let mut names: Vec<(&str, u32)> = Vec::new();
        if let Some(f) = m.image.features.as_deref().filter(|_| layout.features > 0) {
            names.push((f, layout.features));
        }
        if let Some(b) = m.image.base_output.as_deref().filter(|_| layout.base > 0) {
            names.push((b, layout.base));
        }
        if names.is_empty() {
            crate::bail!(
                "{}: the index keeps no backbone outputs this bundle's tower reads",
                bundle.dir.display()
            );
        }
        let embedding = m.image.output.clone();
        let model = onnx_model_edited(&path, |g| {
            for (name, _) in &names {
                if !g.node.iter().any(|n| n.output.iter().any(|o| o == name)) {
                    crate::bail!("{}: no tensor {name:?} to re-project from", path.display());
                }
            }
            // the kept tensors' producers go (their outputs become inputs), then all above them
            g.node
                .retain(|n| !n.output.iter().any(|o| names.iter().any(|(k, _)| k == o)));
            g.input = names
                .iter()
                .map(|(n, w)| value_info(n, Some(*w as usize)))
                .collect();
            g.output.retain(|o| o.name == embedding);
            prune(g);
            Ok(())
        })?;
        let (plan, dim) = model
            .with_input_names(names.iter().map(|(n, _)| *n))
            .and_then(|mut x| {
                for (i, (_, w)) in names.iter().enumerate() {
                    x = x.with_input_fact(i, f32::fact(dims!(BATCH, *w as usize)).into())?;
                }
                Ok(x)
            })
            .and_then(|x| x.with_outputs_by_name([embedding.as_str()]))
            .and_then(|x| x.into_optimized())
            .and_then(|x| {
                let dim = x.output_fact(0)?.shape.last().and_then(|d| d.to_i64().ok());
                Ok((x.into_runnable()?, dim))
            })
            .map_err(|e| {
                Error::new(format!(
                    "{}: the head above the backbone: {e:#}",
                    path.display()
                ))
            })?;
        if dim != Some(m.dim as i64) {
            crate::bail!(
                "{}: the head outputs {dim:?} values, bundle.toml says {}",
                path.display(),
                m.dim
            );
        }
        Ok(Reprojector {
            plan,
            layout: *layout,
            dim: m.dim,
        })
    }

    /// The bundle's embeddings of entries whose kept outputs are `kept` (any number).
    pub fn project(&self, kept: &[&Kept]) -> Result<Vec<Vec<f32>>> {
        let (f, b) = (self.layout.features as usize, self.layout.base as usize);
        let mut out = Vec::with_capacity(kept.len());
        for chunk in kept.chunks(BATCH) {
            // a short last batch is padded with zeros (the plan has a fixed batch)
            let mut inputs = TVec::new();
            for (width, part) in [(f, 0), (b, 1)] {
                if width == 0 {
                    continue;
                }
                let mut flat = vec![0f32; BATCH * width];
                for (row, k) in flat.chunks_mut(width).zip(chunk) {
                    row.copy_from_slice(if part == 0 { &k.features } else { &k.base });
                }
                let t = Tensor::from_shape(&[BATCH, width], &flat)
                    .map_err(|e| Error::new(format!("kept outputs: {e:#}")))?;
                inputs.push(t.into_tvalue());
            }
            let res = self
                .plan
                .run(inputs)
                .map_err(|e| Error::new(format!("re-projection failed: {e:#}")))?;
            let view = res[0]
                .to_plain_array_view::<f32>()
                .map_err(|e| Error::new(format!("head output is not f32: {e:#}")))?;
            let all: Vec<f32> = view.iter().copied().collect();
            let t = Tensor::from_shape(&[chunk.len(), self.dim], &all[..chunk.len() * self.dim])
                .map_err(|e| Error::new(format!("head output: {e:#}")))?;
            out.extend(rows(&t.into_tvalue(), chunk.len(), self.dim)?);
        }
        Ok(out)
    }
}
