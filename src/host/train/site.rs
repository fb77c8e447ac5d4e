//! `moonlens-host train --from-index DIR`: a new image head for the deployed bundle, trained
//! on the operator's tags (`tags.ml`, with the backbone outputs each tagged frame had when it
//! was stored) beside the base training pairs, so the appliance learns the site's things
//! without forgetting the rest.
//!
//! Only the image head is trained. The text towers stay byte for byte: their head defines the
//! space every query lands in, and the multilingual tower was distilled into exactly that
//! space, so retraining the text side would silently break every non-English query. The image
//! head learns to put the site's frames where their tags' queries already land (soft-target
//! contrastive loss against the fixed text embeddings). The result is exported as a bundle
//! with the same backbone (`features_from`), which an index's kept outputs re-project into.
//!
//! Tags are split by frame: for each tag, its frames in id order, every third (the 3rd, 6th,
//! …) is held out with all its tags. The held-out frames are the gallery of the before/after
//! figure: each held-out (frame, tag) is a query, a hit when a frame carrying that tag ranks
//! within k. "Before" scores the embeddings the daemon stored; "after" the new head's.

use super::epochs::{self, Fit};
use super::head::Head;
use super::linalg::Rng;
use super::{adamw, loss, Config, Epoch, Split};
use crate::bundle::Bundle;
use crate::encoder::Encoder;
use crate::error::{Context, Error, Result};
use crate::host::eval::{self, Recall};
use crate::host::features::{self, VIEWS};
use crate::index::tags::{TagStore, Tagged};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `train --from-index` reads and writes.
pub struct Options<'a> {
    /// the index directory (copied off the board, or in place: only read)
    pub index: &'a Path,
    /// the bundle that wrote the index (its embeddings, its text space)
    pub bundle: &'a Bundle,
    /// the base training pairs, and their validation pairs
    pub pairs: &'a [PathBuf],
    pub val: &'a [PathBuf],
    pub cache: Option<&'a Path>,
    pub out: &'a Path,
    pub cfg: Config,
    /// each site training pair counts this many times (a site has tens of tags beside
    /// thousands of base pairs)
    pub repeat: usize,
}

/// The figures of one run, written to `OUT/site-training.json` and printed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub tagged_frames: usize,
    /// tagged frames stored before the index kept backbone outputs (not used)
    pub without_outputs: usize,
    pub site_train_pairs: usize,
    pub site_val_pairs: usize,
    /// held-out tags, ranked among the held-out frames: stored embeddings vs the new head
    pub site_before: Recall,
    pub site_after: Recall,
    /// the base validation pairs: the deployed image tower vs the new head
    pub base_before: Recall,
    pub base_after: Recall,
    pub best_epoch: usize,
    pub history: Vec<Epoch>,
}

/// How the deployed bundle mixes its embeddings (`export --mix`): the first `base_dim` values
/// are √w·bridge, the rest √(1-w)·head.
struct Mix {
    w: f64,
    base_dim: usize,
    head_dim: usize,
    blocks: usize,
}

impl Mix {
    fn of(bundle: &Bundle) -> Result<Mix> {
        let m = &bundle.manifest;
        let heads = m.heads.as_ref().ok_or_else(|| {
            Error::new(format!(
                "{} has no trained heads; train --from-index retrains the image head of a bundle \
                 that has one (e.g. models/default)",
                bundle.dir.display()
            ))
        })?;
        let int = |k: &str| {
            heads
                .get(k)
                .and_then(|v| v.as_integer())
                .map(|v| v as usize)
        };
        if heads.get("image_input").and_then(|v| v.as_str()) != Some("raw") {
            crate::bail!(
                "{}: its image head reads the bridge, not the backbone features: only a head on \
                 the features can learn what the bridge's classes miss",
                bundle.dir.display()
            );
        }
        let head_dim = int("dim").ok_or_else(|| Error::new("bundle.toml [heads] has no dim"))?;
        let w = heads.get("mix").and_then(|v| v.as_float()).unwrap_or(0.0);
        Ok(Mix {
            w,
            base_dim: m.dim - head_dim,
            head_dim,
            blocks: int("blocks").unwrap_or(1),
        })
    }

    /// The head part of a final text embedding, unit length: what the image head aims at.
    fn target(&self, text: &[f32]) -> Vec<f32> {
        unit(&text[self.base_dim..])
    }

    /// The final image embedding from the bridge and a head output (as the exported tower).
    fn embedding(&self, bridge: &[f32], head_out: &[f32]) -> Vec<f32> {
        let h = unit(head_out);
        if self.base_dim == 0 {
            return h;
        }
        let (a, b) = (self.w.sqrt() as f32, (1.0 - self.w).sqrt() as f32);
        let b_unit = unit(bridge);
        b_unit
            .iter()
            .map(|x| x * a)
            .chain(h.iter().map(|x| x * b))
            .collect()
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

/// The image head alone against fixed text targets.
struct ImageHead<'a> {
    tr: &'a Split,
    va: &'a Split,
    cfg: &'a Config,
}

impl Fit for ImageHead<'_> {
    type Model = Head;

    fn rows(&self) -> usize {
        self.tr.texts.len()
    }

    fn step(
        &self,
        head: &mut Head,
        chunk: &[usize],
        rng: &mut Rng,
        opt: &mut adamw::AdamW,
    ) -> Option<f64> {
        if chunk.len() < 2 {
            return None;
        }
        let views: Vec<usize> = chunk.iter().map(|_| rng.below(VIEWS)).collect();
        let (t, i) = self.tr.batch(chunk, &views);
        let (oi, tape) = head.forward(&i, Some((self.cfg.dropout, &mut *rng)));
        let g = loss::contrastive(&t, &oi, self.cfg.temperature);
        if !g.loss.is_finite() {
            return Some(g.loss);
        }
        let gi = head.backward(&tape, &g.d_image);
        opt.step(&mut [head], &[&gi]);
        Some(g.loss)
    }

    fn heads<'m>(&self, head: &'m Head) -> Vec<&'m Head> {
        vec![head]
    }

    fn evaluate(&self, head: &Head) -> (f64, [f64; 3]) {
        super::evaluate(None, head, self.va, self.cfg)
    }

    fn diverged_hint(&self, lr: f64) -> String {
        format!("try a lower --lr (now {lr}); no bundle was written")
    }
}

/// Held-out recall of tags: query `q` hits when a gallery frame carrying its tag ranks
/// within k (pessimistic ties, as `eval`).
fn tag_recall(queries: &[(Vec<f32>, String)], gallery: &[(Vec<f32>, &Tagged)]) -> Recall {
    let ranks: Vec<usize> = queries
        .iter()
        .map(|(q, tag)| {
            let score = |e: &Vec<f32>| q.iter().zip(e).map(|(a, b)| a * b).sum::<f32>();
            let best_own = gallery
                .iter()
                .filter(|(_, f)| f.tags.contains(tag))
                .map(|(e, _)| score(e))
                .fold(f32::NEG_INFINITY, f32::max);
            gallery.iter().filter(|(e, _)| score(e) >= best_own).count()
        })
        .collect();
    eval::recall(&ranks)
}

/// Whether the frame at position `k` (0-based, id order) among a tag's frames is held out.
fn held_out(k: usize) -> bool {
    k % 3 == 2
}

pub fn run(o: &Options) -> Result<(Bundle, Report)> {
    let bundle = o.bundle;
    let mix = Mix::of(bundle)?;
    let ipath = o.index.join("index.ml");
    let page = std::fs::read(&ipath).context(format_args!(
        "cannot read {} (is {} an index directory?)",
        ipath.display(),
        o.index.display()
    ))?;
    let header =
        crate::index::Header::decode(&page).context(format_args!("{}", ipath.display()))?;
    if header.bundle_id != bundle.id {
        crate::bail!(
            "{} was written by bundle {}…, not by {} ({}…): pass the bundle the daemon runs \
             (`status` names it) with --bundle",
            o.index.display(),
            &crate::bundle::hex(&header.bundle_id)[..12],
            bundle.dir.display(),
            &bundle.id_hex()[..12]
        );
    }
    let store = TagStore::read(o.index)?;
    let enc = Encoder::load(bundle)?;
    let layout = *enc.layout();
    let (with, without): (Vec<&Tagged>, Vec<&Tagged>) = store.frames().partition(|f| {
        f.kept.as_ref().is_some_and(|k| {
            k.features.len() == layout.features as usize && k.base.len() == layout.base as usize
        })
    });
    if !without.is_empty() {
        log::warn!(
            "{} tagged frame(s) have no backbone outputs of this bundle (stored before the index \
             kept them): left out",
            without.len()
        );
    }
    if with.is_empty() {
        crate::bail!(
            "{} has no tagged frames with backbone outputs: tag frames first (`tag <id> <text>` \
             on the daemon's socket)",
            o.index.display()
        );
    }
    // split by frame, per tag in id order
    let mut by_tag: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for f in &with {
        for t in &f.tags {
            by_tag.entry(t).or_default().push(f.entry.seq);
        }
    }
    let mut val_frames = std::collections::BTreeSet::new();
    for frames in by_tag.values_mut() {
        frames.sort_unstable();
        for (k, &seq) in frames.iter().enumerate() {
            if held_out(k) {
                val_frames.insert(seq);
            }
        }
    }
    // the text side: final embeddings as the daemon computes queries (tags through the tower
    // that answers them; base captions through the [text] tower, as the heads were trained)
    let mut tag_emb: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for t in by_tag.keys() {
        tag_emb.insert(t.to_string(), enc.embed_text(t)?);
    }
    let site_views =
        |f: &Tagged| vec![f.kept.as_ref().expect("with outputs").features.clone(); VIEWS];
    // per image its VIEWS rows of backbone features; per pair its fixed text target
    let (mut tr, mut va) = (Split::default(), Split::default());
    let (mut site_train, mut site_val) = (0, 0);
    for f in &with {
        let held = val_frames.contains(&f.entry.seq);
        let rows = if held { &mut va } else { &mut tr };
        rows.images.push(site_views(f));
        let i = rows.images.len() - 1;
        for t in &f.tags {
            let target = mix.target(&tag_emb[t]);
            for _ in 0..if held { 1 } else { o.repeat.max(1) } {
                rows.texts.push(target.clone());
                rows.truth.push(i);
            }
            *(if held { &mut site_val } else { &mut site_train }) += 1;
        }
    }
    // the base pairs, so the head keeps what it knew
    let train_pairs = super::command::read_all(o.pairs)?;
    let val_pairs = super::command::read_all(o.val)?;
    super::command::check_disjoint(&train_pairs, &val_pairs)?;
    let default_cache = o.pairs[0]
        .parent()
        .unwrap_or(Path::new("."))
        .join("feature-cache");
    let cache = o.cache.unwrap_or(&default_cache);
    let tf = features::load_or_compute(bundle, &train_pairs, cache)?;
    let vf = features::load_or_compute(bundle, &val_pairs, cache)?;
    let text = enc.primary_text();
    let mut base_val_queries = Vec::new();
    for (f, pairs, rows, is_val) in [
        (&tf, &train_pairs, &mut tr, false),
        (&vf, &val_pairs, &mut va, true),
    ] {
        let offset = rows.images.len();
        for i in 0..f.images {
            rows.images.push((0..VIEWS).map(|v| f.raw(i, v)).collect());
        }
        let mut bar = crate::host::progress::Progress::new("captions", pairs.len());
        for (p, &img) in pairs.iter().zip(&f.truth) {
            let e = text.embed(&p.text)?;
            rows.texts.push(mix.target(&e));
            rows.truth.push(offset + img);
            if is_val {
                base_val_queries.push(e);
            }
            bar.inc(1);
        }
    }
    log::info!(
        "site: {} tagged frames ({} held out), {site_train} training pairs x{} and {site_val} \
         validation pairs; base: {} and {} pairs",
        with.len(),
        val_frames.len(),
        o.repeat,
        train_pairs.len(),
        val_pairs.len()
    );
    let cfg = Config {
        dim: mix.head_dim,
        blocks: mix.blocks,
        ..o.cfg.clone()
    };
    let mut rng = Rng::new(cfg.seed);
    let head = Head::new(layout.features as usize, cfg.dim, cfg.blocks, &mut rng);
    let task = ImageHead {
        tr: &tr,
        va: &va,
        cfg: &cfg,
    };
    let mut bar = crate::host::progress::Progress::new("training epochs", cfg.max_epochs);
    let fitted = epochs::fit(&task, head, &cfg, &mut rng, |e| {
        bar.inc(1);
        e.log("site+base");
    })?;
    let head = fitted.model;
    // before / after on the held-out tags
    let held: Vec<&Tagged> = with
        .iter()
        .copied()
        .filter(|f| val_frames.contains(&f.entry.seq))
        .collect();
    let queries: Vec<(Vec<f32>, String)> = held
        .iter()
        .flat_map(|f| f.tags.iter().map(|t| (tag_emb[t].clone(), t.clone())))
        .collect();
    let before: Vec<(Vec<f32>, &Tagged)> =
        held.iter().map(|f| (f.entry.dequantized(), *f)).collect();
    let feats: Vec<Vec<f32>> = held
        .iter()
        .map(|f| f.kept.as_ref().expect("kept").features.clone())
        .collect();
    let outs = super::embed(&head, &feats);
    let after: Vec<(Vec<f32>, &Tagged)> = held
        .iter()
        .zip(&outs)
        .map(|(f, h)| (mix.embedding(&f.kept.as_ref().expect("kept").base, h), *f))
        .collect();
    // the base validation pairs: the deployed image tower vs the new head on the same images
    let images: Vec<image::DynamicImage> = vf
        .image_paths
        .iter()
        .map(|p| eval::load_image(p))
        .collect::<Result<_>>()?;
    let old = enc.embed_images(&images)?;
    let raw0: Vec<Vec<f32>> = (0..vf.images).map(|i| vf.raw(i, 0)).collect();
    let new_heads = super::embed(&head, &raw0);
    let new: Vec<Vec<f32>> = (0..vf.images)
        .map(|i| mix.embedding(&vf.bridge(i, 0), &new_heads[i]))
        .collect();
    let report = Report {
        tagged_frames: with.len(),
        without_outputs: without.len(),
        site_train_pairs: site_train,
        site_val_pairs: site_val,
        site_before: tag_recall(&queries, &before),
        site_after: tag_recall(&queries, &after),
        base_before: eval::recall(&eval::ranks(&base_val_queries, &old, &vf.truth)),
        base_after: eval::recall(&eval::ranks(&base_val_queries, &new, &vf.truth)),
        best_epoch: fitted.best_epoch,
        history: fitted.history,
    };
    let mut site = toml::Table::new();
    site.insert("tagged_frames".into(), (report.tagged_frames as i64).into());
    site.insert("tags".into(), (by_tag.len() as i64).into());
    site.insert("train_pairs".into(), (site_train as i64).into());
    site.insert("held_out_pairs".into(), (site_val as i64).into());
    site.insert("repeat".into(), (o.repeat as i64).into());
    site.insert("base_train_pairs".into(), (train_pairs.len() as i64).into());
    site.insert("best_epoch".into(), (report.best_epoch as i64).into());
    site.insert("held_out_r1_before".into(), report.site_before.r1.into());
    site.insert("held_out_r1_after".into(), report.site_after.r1.into());
    let out = crate::host::export::export_site_image_head(bundle, &head, o.out, site)?;
    std::fs::write(
        o.out.join("site-training.json"),
        serde_json::to_string_pretty(&report).expect("plain struct"),
    )
    .context("writing site-training.json")?;
    crate::host::plot::training_curve(
        &report.history,
        report.best_epoch,
        &o.out.join("site-curve.png"),
    )?;
    Ok((out, report))
}
