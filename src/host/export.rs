//! `moonlens-host export`: trained heads appended to a base bundle's tower graphs, written as
//! a complete bundle the daemon loads unchanged.
//!
//! Each tower keeps its backbone graph; the tensor the head reads (`features` or the bridge
//! embedding for the image tower, the sentence embedding for the text tower) feeds new nodes
//! that compute exactly [`crate::host::train::head::Head::forward`] without dropout, then an L2
//! norm, named `embedding`. GELU is written with `Erf` and LayerNorm as the opset-17
//! `LayerNormalization` node, both of which tract and onnxruntime run. With `--int8` the head
//! matrices are stored as the bundle's other weights are (models/convert/quant.py):
//! symmetric int8 with one scale per output column, dequantized by `Cast` and `Mul`, which
//! tract folds at load.

use super::train::head::{Head, LN_EPS};
use super::train::store::Heads;
use super::train::ImageInput;
use crate::bundle::{sha256_file, Bundle, Manifest};
use crate::encoder::rewrite::value_info;
use crate::error::{Context, Error, Result};
use prost::Message;
use std::path::Path;
use tract_onnx::pb;

const FLOAT: i32 = 1;
const INT8: i32 = 3;
const INT64: i32 = 7;

/// Builder of the nodes and initializers appended to one graph.
struct Appender<'a> {
    g: &'a mut pb::GraphProto,
    prefix: &'static str,
    n: usize,
    /// names already in the graph (a previous head's, pruned only at the end): a new tensor
    /// must not take one, or two nodes would write the same tensor
    taken: std::collections::HashSet<String>,
}

impl<'a> Appender<'a> {
    fn new(g: &'a mut pb::GraphProto, prefix: &'static str) -> Self {
        let taken = g
            .node
            .iter()
            .flat_map(|n| n.output.iter().chain([&n.name]))
            .chain(g.initializer.iter().map(|i| &i.name))
            .chain(g.input.iter().map(|i| &i.name))
            .cloned()
            .collect();
        Appender {
            g,
            prefix,
            n: 0,
            taken,
        }
    }

    fn name(&mut self, hint: &str) -> String {
        loop {
            self.n += 1;
            let name = format!("{}_{hint}_{}", self.prefix, self.n);
            if self.taken.insert(name.clone()) {
                return name;
            }
        }
    }

    fn init(&mut self, hint: &str, dims: &[usize], data_type: i32, raw: Vec<u8>) -> String {
        let name = self.name(hint);
        self.g.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    fn f32s(&mut self, hint: &str, dims: &[usize], v: &[f64]) -> String {
        let raw = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
        self.init(hint, dims, FLOAT, raw)
    }

    fn scalar(&mut self, hint: &str, v: f64) -> String {
        self.f32s(hint, &[], &[v])
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.name(&op.to_lowercase());
        self.g.node.push(pb::NodeProto {
            op_type: op.into(),
            name: out.clone(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// A [rows × cols] weight matrix, f32 or weight-only int8 per output column.
    fn matrix(&mut self, hint: &str, rows: usize, cols: usize, w: &[f64], int8: bool) -> String {
        if !int8 {
            return self.f32s(hint, &[rows, cols], w);
        }
        let mut scale = vec![0f64; cols];
        for r in 0..rows {
            for c in 0..cols {
                scale[c] = scale[c].max(w[r * cols + c].abs());
            }
        }
        scale
            .iter_mut()
            .for_each(|s| *s = if *s > 0.0 { *s / 127.0 } else { 1.0 });
        let q: Vec<u8> = (0..rows * cols)
            .map(|i| ((w[i] / scale[i % cols]).round().clamp(-127.0, 127.0) as i8) as u8)
            .collect();
        let qn = self.init(&format!("{hint}_q"), &[rows, cols], INT8, q);
        let sn = self.f32s(&format!("{hint}_s"), &[cols], &scale);
        let cast = self.op("Cast", &[&qn], vec![int_attr("to", FLOAT as i64)]);
        self.op("Mul", &[&cast, &sn], vec![])
    }

    fn dense(&mut self, x: &str, w: &super::train::linalg::Mat, b: &[f64], int8: bool) -> String {
        let wn = self.matrix("w", w.rows, w.cols, &w.data, int8);
        let bn = self.f32s("b", &[b.len()], b);
        let mm = self.op("MatMul", &[x, &wn], vec![]);
        self.op("Add", &[&mm, &bn], vec![])
    }

    /// The head of [`Head::forward`] (inference: no dropout), then the L2 norm.
    fn head(&mut self, x: &str, head: &Head, int8: bool) -> String {
        let mut p = self.dense(x, &head.w0, &head.b0, int8);
        for blk in &head.blocks {
            // gelu(p) = 0.5·p·(1 + erf(p/√2))
            let s2 = self.scalar("sqrt2", std::f64::consts::SQRT_2);
            let half = self.scalar("half", 0.5);
            let one = self.scalar("one", 1.0);
            let d = self.op("Div", &[&p, &s2], vec![]);
            let e = self.op("Erf", &[&d], vec![]);
            let e1 = self.op("Add", &[&e, &one], vec![]);
            let ph = self.op("Mul", &[&p, &half], vec![]);
            let g = self.op("Mul", &[&ph, &e1], vec![]);
            let h = self.dense(&g, &blk.w, &blk.b, int8);
            let r = self.op("Add", &[&p, &h], vec![]);
            let gamma = self.f32s("gamma", &[blk.gamma.len()], &blk.gamma);
            let beta = self.f32s("beta", &[blk.beta.len()], &blk.beta);
            p = self.op(
                "LayerNormalization",
                &[&r, &gamma, &beta],
                vec![int_attr("axis", -1), float_attr("epsilon", LN_EPS as f32)],
            );
        }
        let sq = self.op("Mul", &[&p, &p], vec![]);
        let axes = self.init("axes", &[1], INT64, (-1i64).to_le_bytes().to_vec());
        let ss = self.op("ReduceSum", &[&sq, &axes], vec![int_attr("keepdims", 1)]);
        let eps = self.scalar("eps", 1e-24);
        let mx = self.op("Max", &[&ss, &eps], vec![]);
        let nrm = self.op("Sqrt", &[&mx], vec![]);
        self.op("Div", &[&p, &nrm], vec![])
    }
}

/// How head matrices are stored, for bundle.toml.
fn weights_note(int8: bool) -> &'static str {
    if int8 {
        "int8 per output column (Cast, Mul)"
    } else {
        "f32"
    }
}

fn int_attr(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn float_attr(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// Renames tensor `from` to `to` everywhere in the graph (node inputs/outputs, outputs).
fn rename(g: &mut pb::GraphProto, from: &str, to: &str) {
    for n in &mut g.node {
        for s in n.input.iter_mut().chain(n.output.iter_mut()) {
            if s == from {
                *s = to.to_string();
            }
        }
    }
    for o in &mut g.output {
        if o.name == from {
            o.name = to.to_string();
        }
    }
}

/// One tower to rewrite.
struct Tower<'a> {
    src: &'a Path,
    dst: &'a Path,
    /// the bundle's current output (the bridge itself, or a previous head's output)
    output: &'a str,
    /// the training-free embedding tensor in `src`
    base: &'a str,
    /// its name in the exported graph
    base_new: &'a str,
    /// what the head reads: `base` or another tensor (the backbone features)
    input: &'a str,
    /// extra outputs to keep beside `embedding`, with their widths where known
    keep: Vec<(&'a str, Option<usize>)>,
    /// a new graph input the head reads after `input` (the character bag): name and width
    bag: Option<(&'a str, usize)>,
}

/// Reads the tower, gives the base embedding its exported name, drops any previous head,
/// appends `head` (and the mix, see [`export`]) as output `embedding`, writes it.
fn append_head(t: &Tower, head: &Head, int8: bool, mix: Option<(f64, usize)>) -> Result<()> {
    let src = t.src;
    let bytes = std::fs::read(src).context(format_args!("cannot read {}", src.display()))?;
    let mut model = pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::new(format!("{}: not an ONNX model: {e}", src.display())))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty())
        .map_or(0, |o| o.version);
    if opset < 17 {
        crate::bail!(
            "{}: opset {opset}; exported heads need opset 17 (LayerNormalization)",
            src.display()
        );
    }
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::new(format!("{}: no graph", src.display())))?;
    if t.output != t.base {
        // a previous head: its output loses the name and is pruned below
        rename(g, t.output, "previous_embedding");
    }
    rename(g, t.base, t.base_new);
    let input = if t.input == t.base {
        t.base_new
    } else {
        t.input
    };
    for name in [input, t.base_new] {
        if !g.node.iter().any(|n| n.output.iter().any(|o| o == name)) {
            crate::bail!(
                "{}: no tensor named {name:?} to attach the head to",
                src.display()
            );
        }
    }
    let mut app = Appender::new(&mut *g, "head");
    let bag_input;
    let input = match t.bag {
        Some((name, width)) => {
            app.g.input.push(value_info(name, Some(width)));
            bag_input = app.op("Concat", &[input, name], vec![int_attr("axis", -1)]);
            bag_input.as_str()
        }
        None => input,
    };
    let mut out = app.head(input, head, int8);
    let mut dim = head.dim();
    if let Some((w, base_dim)) = mix {
        // concat(√w·base, √(1-w)·head): unit length, and its cosine is w·cos_base + (1-w)·cos_head
        let sw = app.scalar("mix_base", w.sqrt());
        let sh = app.scalar("mix_head", (1.0 - w).sqrt());
        let a = app.op("Mul", &[t.base_new, &sw], vec![]);
        let b = app.op("Mul", &[&out, &sh], vec![]);
        out = app.op("Concat", &[&a, &b], vec![int_attr("axis", -1)]);
        dim += base_dim;
    }
    rename(g, &out, "embedding");
    g.output = std::iter::once(value_info("embedding", Some(dim)))
        .chain(t.keep.iter().map(|(n, d)| value_info(n, *d)))
        .collect();
    // (for a head on the raw features: the whole bridge, its class matrix is dead weight)
    crate::encoder::rewrite::prune(g);
    model.doc_string = format!(
        "{} + trained projection head ({}), moonlens-host export",
        model.doc_string,
        if int8 { "int8 weights" } else { "f32" }
    );
    let dst = t.dst;
    std::fs::write(dst, model.encode_to_vec()).context(format_args!("writing {}", dst.display()))
}

/// Writes the bundle `out` = `base` towers + `heads`; returns it opened (hashes verified).
///
/// `mix` = w in (0, 1) keeps the base bundle's own embeddings beside the heads': each tower
/// outputs concat(√w·base, √(1-w)·head), so a search scores w·(bridge cosine) + (1-w)·(head
/// cosine). Why: heads trained on a few hundred stamps learn drawings and new concepts but
/// forget part of what the training-free bridge knows about photos (measured in
/// models/README.md); the mixture keeps both. w = 0 exports the heads alone.
pub fn export(heads: &Heads, base: &Bundle, out: &Path, int8: bool, mix: f64) -> Result<Bundle> {
    let Some(image_head) = &heads.image else {
        crate::bail!(
            "{} holds a distilled text head: export it with --teacher BUNDLE (the bundle it \
             was distilled from)",
            heads.name
        );
    };
    if !(0.0..1.0).contains(&mix) {
        crate::bail!("--mix {mix}: must be in [0, 1) (the weight of the base bundle's cosine)");
    }
    // the bridge embedding and the sentence embedding have the text model's width
    let base_dim = heads.info.text_input;
    let mix_arg = (mix > 0.0).then_some((mix, base_dim));
    let m = &base.manifest;
    if base.id_hex() != heads.info.base_bundle_id {
        log::warn!(
            "heads were trained on features of bundle {} ({}), exporting onto {} ({}): fine for \
             its f32/int8 twin, wrong for any other backbone",
            heads.info.base_bundle,
            &heads.info.base_bundle_id[..12],
            base.dir.display(),
            &base.id_hex()[..12]
        );
    }
    std::fs::create_dir_all(out).context(format_args!("cannot create {}", out.display()))?;
    let image_input = match heads.info.config.image_input {
        ImageInput::Raw => m.image.features.clone().ok_or_else(|| {
            Error::new(format!(
                "{} exposes no backbone features; rebuild it with models/convert/build.sh",
                base.dir.display()
            ))
        })?,
        ImageInput::Bridge => m.image.base().to_string(),
    };
    let mut keep = vec![("bridge_embedding", Some(base_dim))];
    if let Some(f) = m.image.features.as_deref() {
        keep.push((f, None));
    }
    append_head(
        &Tower {
            src: &base.path(&m.image.file),
            dst: &out.join("image.onnx"),
            output: &m.image.output,
            base: m.image.base(),
            base_new: "bridge_embedding",
            input: &image_input,
            keep,
            bag: None,
        },
        image_head,
        int8,
        mix_arg,
    )?;
    append_head(
        &Tower {
            src: &base.path(&m.text.file),
            dst: &out.join("text.onnx"),
            output: &m.text.output,
            base: m.text.base(),
            base_new: "sentence_embedding",
            input: m.text.base(),
            keep: vec![("sentence_embedding", Some(base_dim))],
            bag: None,
        },
        &heads.text,
        int8,
        mix_arg,
    )?;
    std::fs::copy(base.path(&m.text.tokenizer), out.join("tokenizer.json"))
        .context("copying tokenizer.json")?;

    let mut manifest = m.clone();
    if manifest.multilingual.take().is_some() {
        // it was distilled into the base's text space, which the new heads replace
        log::warn!(
            "{}'s multilingual text tower is not carried over: it points into the base \
             bundle's space; distill it again against {} (moonlens-host distill --teacher)",
            base.dir.display(),
            out.display()
        );
        if let Some(p) = manifest.provenance.as_mut() {
            p.remove("multilingual_text_backbone");
        }
    }
    let c = &heads.info.config;
    let kind = match c.image_input {
        ImageInput::Raw => "raw",
        ImageInput::Bridge => "bridge",
    };
    // named after the heads directory, so `status` tells trained variants apart
    manifest.name = format!(
        "{}{}-{}",
        heads.name,
        if mix > 0.0 { "-mix" } else { "" },
        if int8 { "int8" } else { "f32" }
    );
    manifest.dim = c.dim + mix_arg.map_or(0, |(_, d)| d);
    manifest.description = format!(
        "trained projection heads on {} image features and {} sentence embeddings, over {}",
        if kind == "raw" {
            backbone(m, "image_backbone")
        } else {
            "bridge".into()
        },
        backbone(m, "text_backbone"),
        m.name
    );
    manifest.image.file = "image.onnx".into();
    manifest.image.output = "embedding".into();
    manifest.image.base_output = Some("bridge_embedding".into());
    manifest.text.base_output = Some("sentence_embedding".into());
    manifest.text.file = "text.onnx".into();
    manifest.text.output = "embedding".into();
    manifest.text.tokenizer = "tokenizer.json".into();
    let best = heads.info.best();
    let mut t = toml::Table::new();
    t.insert("image_input".into(), kind.into());
    t.insert("dim".into(), (c.dim as i64).into());
    t.insert("blocks".into(), (c.blocks as i64).into());
    t.insert("temperature".into(), c.temperature.into());
    t.insert("seed".into(), (c.seed as i64).into());
    t.insert("mix".into(), mix.into());
    t.insert("best_epoch".into(), (heads.info.best_epoch as i64).into());
    if let Some(b) = best {
        t.insert("val_loss".into(), b.val_loss.into());
    }
    t.insert("train_pairs".into(), (heads.info.train_pairs as i64).into());
    t.insert(
        "features_from".into(),
        heads.info.base_bundle_id.clone().into(),
    );
    t.insert("weights".into(), weights_note(int8).into());
    manifest.heads = Some(t);
    manifest.sha256.clear();
    for f in ["image.onnx", "text.onnx", "tokenizer.json"] {
        manifest.sha256.insert(f.into(), sha256_file(&out.join(f))?);
    }
    write_manifest(out, &manifest, "`moonlens-host export`")
}

/// Writes `out/bundle.toml` and opens the bundle (every hash verified).
pub(crate) fn write_manifest(out: &Path, manifest: &Manifest, by: &str) -> Result<Bundle> {
    let text = format!(
        "# moonlens model bundle (format 1), written by {by}.\n\
         # See models/README.md for every field.\n{}",
        toml::to_string(manifest).map_err(|e| Error::new(format!("bundle.toml: {e}")))?
    );
    std::fs::write(out.join("bundle.toml"), text).context("writing bundle.toml")?;
    Bundle::open(out)
}

/// A short name of the base bundle's backbone: its `[provenance]` entry up to the first
/// comma or parenthesis ("EfficientNet-Lite0 ImageNet-1k"), else the model it was converted
/// from, else the bundle's name.
fn backbone(m: &Manifest, key: &str) -> String {
    let p = m.provenance.as_ref();
    match p.and_then(|p| p.get(key).or_else(|| p.get("model"))) {
        Some(toml::Value::String(s)) => s
            .split([',', '('])
            .next()
            .unwrap_or(s.as_str())
            .trim()
            .into(),
        _ => m.name.clone(),
    }
}

/// The graph input of a distilled tower's character bag.
const CHAR_BAG: &str = "char_bag";

/// Writes the bundle `out` = the `teacher` bundle unchanged + a `[multilingual]` text tower:
/// the `student` bundle's text tower with the distilled `heads` (`distill`) appended, so its
/// queries land in the teacher's embedding space. Returns it opened (hashes verified).
pub fn export_multilingual(
    heads: &Heads,
    student: &Bundle,
    teacher: &Bundle,
    out: &Path,
    int8: bool,
) -> Result<Bundle> {
    let Some(t) = &heads.info.teacher else {
        crate::bail!(
            "{} holds heads from `train`, not a distilled text head: export it without --teacher",
            heads.name
        );
    };
    if t.bundle_id != teacher.id_hex() {
        crate::bail!(
            "{} was distilled from bundle {} ({}), not from {}: its outputs would land in \
             another embedding space; distill again against this teacher",
            heads.name,
            t.bundle,
            &t.bundle_id[..12],
            teacher.dir.display()
        );
    }
    if student.id_hex() != heads.info.base_bundle_id {
        log::warn!(
            "the head read the student {} ({}), exporting onto {}: fine for its f32/int8 \
             twin, wrong for any other text encoder",
            heads.info.base_bundle,
            &heads.info.base_bundle_id[..12],
            student.dir.display()
        );
    }
    let bag = heads.info.char_bag();
    if bag.width() >= heads.info.text_input {
        crate::bail!(
            "{}: heads.json says the head reads {} values of which {} are the character bag; \
             the heads are damaged: distill again",
            heads.name,
            heads.info.text_input,
            bag.width()
        );
    }
    let tm = &teacher.manifest;
    if heads.text.dim() != tm.dim {
        crate::bail!(
            "the head outputs {} values, the teacher's embeddings have {}",
            heads.text.dim(),
            tm.dim
        );
    }
    std::fs::create_dir_all(out).context(format_args!("cannot create {}", out.display()))?;
    let (tower_file, tokenizer_file) = ("multilingual.onnx", "multilingual-tokenizer.json");
    let mut manifest = tm.clone();
    manifest.sha256.clear();
    // the teacher's own towers, byte for byte (a previous multilingual tower is replaced)
    let own: Vec<&String> = std::iter::once(&tm.image.file)
        .chain([&tm.text.file, &tm.text.tokenizer])
        .collect();
    for f in own {
        std::fs::copy(teacher.path(f), out.join(f)).context(format_args!("copying {f}"))?;
        manifest
            .sha256
            .insert(f.clone(), sha256_file(&out.join(f))?);
    }
    let sm = &student.manifest.text;
    append_head(
        &Tower {
            src: &student.path(&sm.file),
            dst: &out.join(tower_file),
            output: &sm.output,
            base: sm.base(),
            base_new: "sentence_embedding",
            input: sm.base(),
            keep: vec![(
                "sentence_embedding",
                Some(heads.info.text_input - bag.width()),
            )],
            bag: (bag.width() > 0).then_some((CHAR_BAG, bag.width())),
        },
        &heads.text,
        int8,
        None,
    )?;
    std::fs::copy(student.path(&sm.tokenizer), out.join(tokenizer_file))
        .context("copying the student's tokenizer")?;
    for f in [tower_file, tokenizer_file] {
        manifest.sha256.insert(f.into(), sha256_file(&out.join(f))?);
    }
    manifest.multilingual = Some(crate::bundle::TextTower {
        file: tower_file.into(),
        tokenizer: tokenizer_file.into(),
        output: "embedding".into(),
        base_output: Some("sentence_embedding".into()),
        char_bag: (bag.width() > 0).then(|| crate::bundle::CharBagInput {
            input: CHAR_BAG.into(),
            buckets: bag.buckets,
            trigram_buckets: bag.trigram_buckets,
        }),
        ..sm.clone()
    });
    manifest.name = format!(
        "{}+{}-{}",
        tm.name,
        heads.name,
        if int8 { "int8" } else { "f32" }
    );
    manifest.description = format!(
        "{}; queries in other languages through {} with a head distilled from the English tower{}",
        tm.description,
        student.manifest.name,
        match (bag.buckets > 0, bag.trigram_buckets > 0) {
            (true, true) => ", reading also the query's CJK characters and character trigrams",
            (true, false) => ", reading also the query's CJK characters",
            (false, true) => ", reading also the query's character trigrams",
            (false, false) => "",
        }
    );
    let best = heads.info.best();
    let mut d = toml::Table::new();
    d.insert("student".into(), student.manifest.name.clone().into());
    d.insert(
        "student_features_from".into(),
        heads.info.base_bundle_id.clone().into(),
    );
    d.insert("teacher".into(), t.bundle_id.clone().into());
    d.insert("blocks".into(), (heads.info.config.blocks as i64).into());
    for (key, n) in [
        ("char_buckets", bag.buckets),
        ("char_trigram_buckets", bag.trigram_buckets),
    ] {
        if n > 0 {
            d.insert(key.into(), (n as i64).into());
        }
    }
    d.insert("best_epoch".into(), (heads.info.best_epoch as i64).into());
    if let Some(b) = best {
        d.insert("val_cosine_distance".into(), b.val_loss.into());
        d.insert("val_source_r1".into(), b.val_r1.into());
    }
    d.insert("train_texts".into(), (heads.info.train_pairs as i64).into());
    d.insert("weights".into(), weights_note(int8).into());
    manifest
        .heads
        .get_or_insert_with(toml::Table::new)
        .insert("multilingual".into(), d.into());
    if let Some(p) = student
        .manifest
        .provenance
        .as_ref()
        .and_then(|p| p.get("text_backbone"))
    {
        manifest
            .provenance
            .get_or_insert_with(toml::Table::new)
            .insert("multilingual_text_backbone".into(), p.clone());
    }
    write_manifest(out, &manifest, "`moonlens-host export --teacher`")
}

/// Writes the bundle `out` = `deployed` with its image head replaced by `head` (trained on the
/// site's tags by `train --from-index`): the same backbone (so the same `features_from`, and
/// an index's kept outputs re-project into it), the same mix with the bridge, and the text
/// towers byte for byte (the head was trained into their space, so every query, and the
/// multilingual tower distilled into it, still lands where the new image embeddings are).
/// `site` is recorded as `[heads.site]`.
pub fn export_site_image_head(
    deployed: &Bundle,
    head: &Head,
    out: &Path,
    site: toml::Table,
) -> Result<Bundle> {
    let m = &deployed.manifest;
    let heads = m.heads.as_ref();
    let mix = heads
        .and_then(|h| h.get("mix"))
        .and_then(|v| v.as_float())
        .unwrap_or(0.0);
    let int8 = heads
        .and_then(|h| h.get("weights"))
        .and_then(|v| v.as_str())
        .is_some_and(|w| w.contains("int8"));
    let features = m.image.features.as_deref().ok_or_else(|| {
        Error::new(format!(
            "{} exposes no backbone features: no head can be trained on it",
            deployed.dir.display()
        ))
    })?;
    std::fs::create_dir_all(out).context(format_args!("cannot create {}", out.display()))?;
    let base_dim = m.dim - head.dim();
    let mut manifest = m.clone();
    manifest.sha256.clear();
    for f in m.sha256.keys().filter(|f| **f != m.image.file) {
        std::fs::copy(deployed.path(f), out.join(f)).context(format_args!("copying {f}"))?;
        manifest
            .sha256
            .insert(f.clone(), sha256_file(&out.join(f))?);
    }
    append_head(
        &Tower {
            src: &deployed.path(&m.image.file),
            dst: &out.join("image.onnx"),
            output: &m.image.output,
            base: m.image.base(),
            base_new: "bridge_embedding",
            input: features,
            keep: vec![
                ("bridge_embedding", (mix > 0.0).then_some(base_dim)),
                (features, None),
            ],
            bag: None,
        },
        head,
        int8,
        (mix > 0.0).then_some((mix, base_dim)),
    )?;
    manifest.image.file = "image.onnx".into();
    manifest.image.output = "embedding".into();
    manifest.image.base_output = Some("bridge_embedding".into());
    manifest
        .sha256
        .insert("image.onnx".into(), sha256_file(&out.join("image.onnx"))?);
    let base_name = m.name.split("+site").next().unwrap_or(&m.name);
    manifest.name = format!("{base_name}+site");
    manifest
        .heads
        .get_or_insert_with(toml::Table::new)
        .insert("site".into(), site.into());
    write_manifest(out, &manifest, "`moonlens-host train --from-index`")
}
