//! The two towers as tract plans: `embed_image` and `embed_text` return L2-normalized f32
//! embeddings of the bundle's dimension.
//!
//! Model (the ONNX file) → plan (optimized for fixed input shapes, built once at load) →
//! state (per call). The image plan runs one image at a time: with tract 0.23.9 a plan
//! for 4 images costs 1.15-2x more per image than 4 runs of the one-image plan on every
//! bundle measured (the default 59 vs 30 ms an image, MobileCLIP2-S0 139 vs 98, ViT-B-32
//! 123 vs 108), so the daemon uses its cores by encoding frames side by side instead
//! ([`crate::daemon::ingest`]). The text plan keeps the sequence length symbolic so a
//! 3-token query does not pay for 128.

pub mod char_bag;
pub mod language;
pub mod preprocess;
pub mod regions;
pub mod reproject;
pub mod rewrite;

use crate::bundle::Bundle;
use crate::error::{Context, Error, Result};
use crate::index::Kept;
use image::DynamicImage;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::dims;

pub type Plan = Arc<TypedRunnableModel>;

/// Which embedding the towers compute: the bundle's `output` (what the daemon indexes) or
/// the training-free `base_output` under trained heads (what training and the reference
/// parity tests read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    Final,
    Base,
}

pub struct Encoder {
    bundle: Bundle,
    dim: usize,
    image_one: Plan,
    /// What the image plan computes beside the embedding, for the index to keep (its
    /// outputs 1 and 2 when their widths are not 0).
    layout: crate::index::Layout,
    /// The bridge over the feature map's cells, when loaded [`Encoder::load_with_regions`]
    /// (the feature map is then the image plan's last output).
    regions: Option<regions::RegionTower>,
    text: TextEncoder,
    /// The bundle's `[multilingual]` text tower, for queries [`Encoder::text_tower`] sends
    /// there, and its router.
    multilingual: Option<(TextEncoder, Option<language::Router>)>,
    /// Wall time of [`Encoder::load`]: all towers parsed, optimized and ready.
    pub load_time: Duration,
    /// What each tower took on its own thread (the load is the slowest of them).
    pub load_parts: LoadTimes,
}

/// Per-tower load times (parse, type, optimize; a text tower's include its tokenizer).
#[derive(Debug, Clone, Copy)]
pub struct LoadTimes {
    pub image: Duration,
    pub text: Duration,
    pub multilingual: Option<Duration>,
}

fn onnx_model(path: &std::path::Path) -> Result<InferenceModel> {
    onnx_model_edited(path, |_| Ok(()))
}

/// The model at `path` after `edit` changed its graph (see [`reproject`]).
fn onnx_model_edited(
    path: &std::path::Path,
    edit: impl FnOnce(&mut tract_onnx::pb::GraphProto) -> Result<()>,
) -> Result<InferenceModel> {
    let onnx = tract_onnx::onnx().with_ignore_value_info(true);
    let not_loadable = |e: TractError| {
        Error::new(format!(
            "{}: not a loadable ONNX model: {e:#}",
            path.display()
        ))
    };
    let mut proto = onnx.proto_model_for_path(path).map_err(not_loadable)?;
    if let Some(g) = proto.graph.as_mut() {
        let folded = rewrite::fold_q4(g);
        if folded > 0 {
            log::debug!(
                "{}: {folded} 4-bit matrices unpacked at load",
                path.display()
            );
        }
        edit(g)?;
    }
    onnx.model_for_proto_model(&proto).map_err(not_loadable)
}

/// A tower that tract cannot type or optimize. An operator tract lacks (a model converted from
/// elsewhere may bring one) is named up front, with what the user can do about it.
fn tower_error(path: &std::path::Path, e: TractError) -> Error {
    let text = format!("{e:#}");
    match text
        .split("Unimplemented(")
        .nth(1)
        .and_then(|t| t.split(')').next())
    {
        Some(op) => Error::new(format!(
            "{}: the ONNX operator {op} is not implemented in this build's tract: export the \
             model without it (another opset or model variant) and convert again ({text})",
            path.display(),
        )),
        None => Error::new(format!("{}: {text}", path.display())),
    }
}

/// The bundle's image tower as a typed model with a symbolic batch `N`, computing `outputs`
/// (tensor names of the ONNX graph).
pub fn image_model(bundle: &Bundle, outputs: &[&str]) -> Result<TypedModel> {
    let m = &bundle.manifest;
    let [c, h, w] = m.image.shape;
    let image_path = bundle.path(&m.image.file);
    onnx_model(&image_path)?
        .with_input_names([m.image.input.as_str()])
        .and_then(|x| x.with_outputs_by_name(outputs.iter().copied()))
        .and_then(|x| {
            let n = x.sym("N");
            x.with_input_fact(0, f32::fact(dims!(n, c, h, w)).into())
        })
        .and_then(|x| x.into_typed())
        .map_err(|e| tower_error(&image_path, e))
}

/// `model` optimized for one image per run (the only plan: see the module doc).
pub fn image_plan(model: &TypedModel) -> Result<Plan> {
    let sym = model.symbols.sym("N");
    let concrete = model
        .set_symbols(&[(sym, TDim::Val(1))].into_iter().collect())
        .map_err(|e| Error::new(format!("image tower: {e:#}")))?;
    concrete
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| Error::new(format!("image tower: {e:#}")))
}

impl Encoder {
    /// Both towers computing the bundle's `output` embeddings.
    pub fn load(bundle: &Bundle) -> Result<Encoder> {
        Encoder::load_outputs(bundle, Outputs::Final)
    }

    /// The towers load in parallel (one thread each): parsing, typing and optimizing a
    /// graph is single-threaded in tract, and a tokenizer.json parse is too, so the first
    /// answer comes after the slowest tower instead of after all of them in turn.
    pub fn load_outputs(bundle: &Bundle, which: Outputs) -> Result<Encoder> {
        Encoder::load_inner(bundle, which, false)
    }

    /// Both towers computing the bundle's `output` embeddings, and the image tower also the
    /// embeddings of its feature map's cells ([`Encoder::encode_regions`]).
    pub fn load_with_regions(bundle: &Bundle) -> Result<Encoder> {
        Encoder::load_inner(bundle, Outputs::Final, true)
    }

    fn load_inner(bundle: &Bundle, which: Outputs, with_regions: bool) -> Result<Encoder> {
        let t0 = Instant::now();
        let m = &bundle.manifest;
        let (image_out, text_out) = match which {
            Outputs::Final => (m.image.output.as_str(), m.text.output.as_str()),
            Outputs::Base => (m.image.base(), m.text.base()),
        };
        let (image, text, multilingual) = std::thread::scope(|s| {
            let image = s.spawn(|| {
                let t = Instant::now();
                // the frozen backbone's outputs come out of the same run, for features.ml
                let kept: Vec<&str> = match which {
                    Outputs::Final => [m.image.features.as_deref(), m.image.base_output.as_deref()]
                        .into_iter()
                        .flatten()
                        .filter(|o| *o != image_out)
                        .collect(),
                    Outputs::Base => vec![],
                };
                let mut outputs = vec![image_out];
                outputs.extend(&kept);
                let fmap = with_regions
                    .then(|| regions::feature_map_name(bundle))
                    .transpose()?;
                outputs.extend(fmap.as_deref());
                let model = image_model(bundle, &outputs)?;
                let region_tower = match &fmap {
                    Some(_) => {
                        let fact = model
                            .output_fact(outputs.len() - 1)
                            .map_err(|e| Error::new(format!("feature map: {e:#}")))?;
                        // [N, C, H, W] with N symbolic: C, H, W are fixed by the input size
                        let chw: Vec<i64> = (fact.shape.iter().skip(1))
                            .map(|d| d.to_i64().unwrap_or(0))
                            .collect();
                        let &[c, h, w] = &chw[..] else {
                            crate::bail!("feature map shape {:?} is not [N, C, H, W]", fact.shape);
                        };
                        if c <= 0 || h <= 0 || w <= 0 {
                            crate::bail!("feature map shape {:?} is not [N, C, H, W]", fact.shape);
                        }
                        Some(regions::RegionTower::load(
                            bundle,
                            c as usize,
                            (h as usize, w as usize),
                        )?)
                    }
                    None => None,
                };
                let width = |name: Option<&str>| -> Result<u32> {
                    let at = |n| outputs.iter().skip(1).position(|o| *o == n).map(|i| i + 1);
                    let Some(i) = name.and_then(at) else {
                        return Ok(0);
                    };
                    let fact = model
                        .output_fact(i)
                        .map_err(|e| Error::new(format!("image tower output {i}: {e:#}")))?;
                    fact.shape
                        .last()
                        .and_then(|d| d.to_i64().ok())
                        .filter(|&d| d > 0 && d <= crate::index::features::PART_MAX as i64)
                        .map(|d| d as u32)
                        .ok_or_else(|| {
                            Error::new(format!(
                                "image tower output {} has no fixed width",
                                outputs[i]
                            ))
                        })
                };
                let layout = crate::index::Layout {
                    features: width(m.image.features.as_deref())?,
                    base: width(m.image.base_output.as_deref())?,
                    backbone_id: bundle.backbone_id(),
                };
                let plan = image_plan(&model)?;
                Ok::<_, Error>((plan, layout, region_tower, t.elapsed()))
            });
            let text = s.spawn(|| {
                let t = Instant::now();
                TextEncoder::load(bundle, &m.text, text_out, which == Outputs::Final)
                    .map(|e| (e, t.elapsed()))
            });
            // the second text tower only computes final embeddings (training reads the
            // first's base)
            let multilingual = s.spawn(|| match (&m.multilingual, which) {
                (Some(spec), Outputs::Final) => {
                    let t = Instant::now();
                    let route = (spec.route.as_ref())
                        .map(|f| language::Router::load(&bundle.path(f)))
                        .transpose()?;
                    TextEncoder::load(bundle, spec, &spec.output, true)
                        .map(|e| Some(((e, route), t.elapsed())))
                }
                _ => Ok(None),
            });
            let panicked = "a tower-loading thread panicked";
            (
                image.join().expect(panicked),
                text.join().expect(panicked),
                multilingual.join().expect(panicked),
            )
        });
        let (image_one, layout, regions, image_ms) = image?;
        let (text, text_ms) = text?;
        let multilingual = multilingual?;
        let load_parts = LoadTimes {
            image: image_ms,
            text: text_ms,
            multilingual: multilingual.as_ref().map(|(_, t)| *t),
        };
        Ok(Encoder {
            bundle: bundle.clone(),
            dim: text.dim,
            image_one,
            layout,
            regions,
            text,
            multilingual: multilingual.map(|(e, _)| e),
            load_time: t0.elapsed(),
            load_parts,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The optimized batch-1 image plan and the text plan (for profiling).
    pub fn plans(&self) -> (&Plan, &Plan) {
        (&self.image_one, &self.text.plan)
    }

    /// The text tower that answers `query`: the `[multilingual]` one when the bundle has it
    /// and [`needs_multilingual`] says so or the bundle's router ([`language`]) finds the
    /// query is not English, the `[text]` one otherwise.
    pub fn text_tower(&self, query: &str) -> &TextEncoder {
        match &self.multilingual {
            Some((m, route)) => {
                let other = needs_multilingual(query)
                    || route.as_ref().is_some_and(|r| !r.is_english(query));
                if other {
                    m
                } else {
                    &self.text
                }
            }
            None => &self.text,
        }
    }

    /// The bundle's router for unaccented Latin-script queries, when it has one.
    pub fn router(&self) -> Option<&language::Router> {
        self.multilingual.as_ref().and_then(|(_, r)| r.as_ref())
    }

    /// The `[text]` tower (what the index was trained against), whatever the query.
    pub fn primary_text(&self) -> &TextEncoder {
        &self.text
    }

    /// The `[multilingual]` text tower, when the bundle has one.
    pub fn multilingual(&self) -> Option<&TextEncoder> {
        self.multilingual.as_ref().map(|(m, _)| m)
    }

    /// What [`Encoder::encode_images`] returns beside each embedding.
    pub fn layout(&self) -> &crate::index::Layout {
        &self.layout
    }

    /// Width of the embeddings this encoder returns.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The network input of one image (CHW f32), as the Python reference computes it.
    pub fn preprocess(&self, img: &DynamicImage) -> Vec<f32> {
        preprocess::preprocess(img, &self.bundle.manifest.image)
    }

    pub fn embed_image(&self, img: &DynamicImage) -> Result<Vec<f32>> {
        let mut v = self.run_images(&self.image_one, &[self.preprocess(img)])?;
        Ok(v.remove(0).0)
    }

    /// Embeds many images, one plan run each (see the module doc for why not batched).
    pub fn embed_images(&self, imgs: &[DynamicImage]) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .encode_images(imgs)?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// Embeds many images and returns, beside each embedding, the backbone outputs it was
    /// computed from ([`Encoder::layout`]; empty parts for a bundle that has none).
    pub fn encode_images(&self, imgs: &[DynamicImage]) -> Result<Vec<(Vec<f32>, Kept)>> {
        let mut out = Vec::with_capacity(imgs.len());
        for img in imgs {
            out.extend(self.run_images(&self.image_one, &[self.preprocess(img)])?);
        }
        Ok(out)
    }

    /// One embedding, its backbone outputs and the regions of its feature map, from one run
    /// of the image plan (an encoder made by [`Encoder::load_with_regions`]; all `H·W`
    /// cells, in cell order).
    pub fn encode_regions(
        &self,
        img: &DynamicImage,
    ) -> Result<(Vec<f32>, Kept, Vec<regions::Region>)> {
        let Some(tower) = &self.regions else {
            crate::bail!("this encoder was loaded without region embeddings");
        };
        let out = self.run_raw(&self.image_one, &[self.preprocess(img)])?;
        let (embedding, kept) = self.parse(&out, 1)?.remove(0);
        let fmap = out[out.len() - 1]
            .to_plain_array_view::<f32>()
            .map_err(|e| Error::new(format!("feature map is not f32: {e:#}")))?;
        let fmap: Vec<f32> = fmap.iter().copied().collect();
        Ok((embedding, kept, tower.regions(&fmap)?))
    }

    /// The region tower of an encoder made by [`Encoder::load_with_regions`].
    pub fn region_tower(&self) -> Option<&regions::RegionTower> {
        self.regions.as_ref()
    }

    fn run_raw(&self, plan: &Plan, inputs: &[Vec<f32>]) -> Result<TVec<TValue>> {
        let [c, h, w] = self.bundle.manifest.image.shape;
        let flat: Vec<f32> = inputs.concat();
        let t = Tensor::from_shape(&[inputs.len(), c, h, w], &flat)
            .map_err(|e| Error::new(format!("image tensor: {e:#}")))?;
        plan.run(tvec![t.into_tvalue()])
            .map_err(|e| Error::new(format!("image tower failed: {e:#}")))
    }

    fn run_images(&self, plan: &Plan, inputs: &[Vec<f32>]) -> Result<Vec<(Vec<f32>, Kept)>> {
        let out = self.run_raw(plan, inputs)?;
        self.parse(&out, inputs.len())
    }

    /// The embeddings and kept outputs of `n` images from the image plan's outputs.
    fn parse(&self, out: &[TValue], n: usize) -> Result<Vec<(Vec<f32>, Kept)>> {
        let embeddings = self.rows(&out[0], n)?;
        let (f, b) = (self.layout.features as usize, self.layout.base as usize);
        let part = |k: usize, width: usize| -> Result<Vec<Vec<f32>>> {
            if width == 0 {
                return Ok(vec![vec![]; n]);
            }
            plain_rows(&out[k], n, width)
        };
        let features = part(1, f)?;
        let base = part(if f > 0 { 2 } else { 1 }, b)?;
        Ok(embeddings
            .into_iter()
            .zip(features.into_iter().zip(base))
            .map(|(e, (features, base))| (e, Kept { features, base }))
            .collect())
    }

    /// Token ids of `text` as the tower that answers it tokenizes it (prefix added, truncated).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.text_tower(text).tokenize(text)
    }

    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>> {
        self.text_tower(text).embed(text)
    }

    fn rows(&self, t: &TValue, n: usize) -> Result<Vec<Vec<f32>>> {
        rows(t, n, self.dim)
    }
}

/// Whether a query goes to the multilingual tower: it has a non-ASCII letter or digit, or a
/// character from U+3000 up (CJK, kana, hangul, emoji, full-width forms). English text with
/// typographic quotes, dashes or currency signs stays with the English tower; so does a
/// Latin-script language written without accents, the known limit of a rule without a
/// language model.
pub fn needs_multilingual(query: &str) -> bool {
    query
        .chars()
        .any(|c| !c.is_ascii() && (c.is_alphanumeric() || c as u32 >= 0x3000))
}

/// One text tower: its spec, plan and tokenizer.
pub struct TextEncoder {
    spec: crate::bundle::TextTower,
    plan: Plan,
    tokenizer: Tokenizer,
    dim: usize,
}

impl TextEncoder {
    /// `output`: the tensor to compute; `check_dim`: it must have the bundle's `dim`.
    fn load(
        bundle: &Bundle,
        spec: &crate::bundle::TextTower,
        output: &str,
        check_dim: bool,
    ) -> Result<TextEncoder> {
        let m = &bundle.manifest;
        let text_path = bundle.path(&spec.file);
        let mut names = vec![spec.input_ids.as_str()];
        names.extend(spec.attention_mask.as_deref());
        let token_inputs = names.len();
        names.extend(spec.char_bag.as_ref().map(|b| b.input.as_str()));
        let plan = onnx_model(&text_path)?
            .with_input_names(names)
            .and_then(|mut x| {
                // a fixed-length tower gets a concrete shape: tract optimizes it once for all
                let len = match spec.pad_to {
                    Some(n) => TDim::Val(n as i64),
                    None => x.sym("S").into(),
                };
                for input in 0..token_inputs {
                    x = x.with_input_fact(input, i64::fact(dims!(1, len.clone())).into())?;
                }
                if let Some(b) = &spec.char_bag {
                    x =
                        x.with_input_fact(token_inputs, f32::fact([1, b.shape().width()]).into())?;
                }
                Ok(x)
            })
            .and_then(|x| x.with_outputs_by_name([output]))
            .and_then(|x| x.into_optimized())
            .and_then(|x| x.into_runnable())
            .map_err(|e| tower_error(&text_path, e))?;
        // the embedding width as the graph declares it; the daemon's must match bundle.toml
        let dim = plan
            .model()
            .output_fact(0)
            .ok()
            .and_then(|f| f.shape.last().and_then(|d| d.to_i64().ok()))
            .map(|d| d as usize)
            .unwrap_or(m.dim);
        if check_dim && dim != m.dim {
            crate::bail!(
                "{}: the text tower outputs {dim} values, bundle.toml says dim = {}",
                text_path.display(),
                m.dim
            );
        }
        let tok_path = bundle.path(&spec.tokenizer);
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| {
            Error::new(format!("{}: not a tokenizer.json: {e}", tok_path.display()))
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: spec.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::new(format!("{}: {e}", tok_path.display())))?;
        Ok(TextEncoder {
            spec: spec.clone(),
            plan,
            tokenizer,
            dim,
        })
    }

    /// Token ids of `text` as this tower's tokenizer makes them (prefix added, truncated).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let mut s = format!("{}{}", self.spec.prefix, text);
        if self.spec.lowercase {
            s = s.to_lowercase();
        }
        let enc = self
            .tokenizer
            .encode(s, true)
            .map_err(|e| Error::new(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let mut ids: Vec<i64> = self.tokenize(text)?.into_iter().map(i64::from).collect();
        let n = ids.len();
        if let Some(len) = self.spec.pad_to {
            ids.resize(len, i64::from(self.spec.pad_id));
        }
        let mut inputs = tvec![Tensor::from_shape(&[1, ids.len()], &ids)
            .context("token tensor")?
            .into_tvalue()];
        if self.spec.attention_mask.is_some() {
            let mut mask = vec![1i64; n];
            mask.resize(ids.len(), 0);
            inputs.push(
                Tensor::from_shape(&[1, ids.len()], &mask)
                    .context("mask tensor")?
                    .into_tvalue(),
            );
        }
        if let Some(b) = &self.spec.char_bag {
            let bag = b.shape().bag(text);
            inputs.push(
                Tensor::from_shape(&[1, bag.len()], &bag)
                    .context("character bag tensor")?
                    .into_tvalue(),
            );
        }
        let out = self
            .plan
            .run(inputs)
            .map_err(|e| Error::new(format!("text tower failed: {e:#}")))?;
        Ok(rows(&out[0], 1, self.dim)?.remove(0))
    }
}

/// `n` rows of `dim` values from a tower output, as they are.
fn plain_rows(t: &TValue, n: usize, dim: usize) -> Result<Vec<Vec<f32>>> {
    let view = t
        .to_plain_array_view::<f32>()
        .map_err(|e| Error::new(format!("tower output is not f32: {e:#}")))?;
    if view.len() != n * dim {
        crate::bail!(
            "tower output has {} values, expected {n} x {dim}: does bundle.toml's dim match the model?",
            view.len()
        );
    }
    let flat: Vec<f32> = view.iter().copied().collect();
    Ok(flat.chunks(dim).map(|r| r.to_vec()).collect())
}

/// `n` L2-normalized embeddings of `dim` values from a tower output (checked).
fn rows(t: &TValue, n: usize, dim: usize) -> Result<Vec<Vec<f32>>> {
    let rows = plain_rows(t, n, dim)?;
    for r in &rows {
        let norm: f32 = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || (norm - 1.0).abs() > 1e-2 {
            crate::bail!("tower output is not an L2-normalized embedding (norm {norm})");
        }
    }
    Ok(rows)
}

/// Cosine similarity of two vectors (1.0 for identical directions).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

#[cfg(test)]
mod tests {
    use super::needs_multilingual;

    #[test]
    fn queries_route_by_script() {
        for q in [
            "兔子",
            "月饼 and tea",
            "うさぎ",
            "토끼",
            "кролик",
            "ארנב",
            "lapin à la lune",
            "🐰",
            "Ｆｕｌｌ",
        ] {
            assert!(needs_multilingual(q), "{q:?}");
        }
        // English, including typographic punctuation and currency; unaccented Latin too
        for q in [
            "a rabbit",
            "A “Granny Smith” apple",
            "Venus—the second planet…",
            "2 €",
            "un lapin",
            "",
        ] {
            assert!(!needs_multilingual(q), "{q:?}");
        }
    }
}
