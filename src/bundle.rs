//! A model bundle: a directory holding `bundle.toml`, two tower ONNX files and a tokenizer.
//!
//! This module reads and verifies a bundle (every file's sha256 against the manifest) and
//! knows nothing of tract: [`crate::encoder`] turns a verified [`Bundle`] into runnable plans.
//! The format is documented field by field in `models/README.md`.

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The only manifest format this build reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub dim: usize,
    #[serde(default)]
    pub description: String,
    pub image: ImageTower,
    pub text: TextTower,
    /// Optional second text tower into the same embedding space, for queries the `[text]`
    /// tower cannot read (see `encoder::needs_multilingual`): e.g. multilingual-e5-small with
    /// a head distilled from the `[text]` tower (`moonlens-host distill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multilingual: Option<TextTower>,
    /// Free-form tables (how the bundle was made); kept, not interpreted.
    #[serde(default)]
    pub bridge: Option<toml::Table>,
    #[serde(default)]
    pub provenance: Option<toml::Table>,
    /// How trained projection heads were made (`moonlens-host export` writes it).
    #[serde(default)]
    pub heads: Option<toml::Table>,
    /// file name (relative to the bundle) -> lowercase hex sha256
    pub sha256: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTower {
    pub file: String,
    pub input: String,
    pub output: String,
    /// Tensor holding the backbone's pooled features, which `moonlens-host train` reads;
    /// the daemon never does. Absent in bundles nobody trains heads on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
    /// In a bundle with trained heads: the training-free embedding under the head (the
    /// bridge), kept as an extra output so heads can be retrained from this very bundle.
    /// Absent means `output` is that embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_output: Option<String>,
    /// C, H, W of one image.
    pub shape: [usize; 3],
    pub channel_order: ChannelOrder,
    /// Short side after resizing.
    pub resize: u32,
    /// The resize filter: `triangle` (default) or `bicubic` (CLIP models were trained so).
    #[serde(default, skip_serializing_if = "Resample::is_triangle")]
    pub resample: Resample,
    /// Side of the centre crop.
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub background: [u8; 3],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    #[default]
    Triangle,
    Bicubic,
}

impl Resample {
    fn is_triangle(&self) -> bool {
        *self == Resample::Triangle
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TextTower {
    pub file: String,
    pub tokenizer: String,
    pub input_ids: String,
    /// Absent for towers without a mask input (CLIP's: they read a fixed-length row and pool
    /// at the end-of-text token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<String>,
    pub output: String,
    pub max_tokens: usize,
    /// The tower takes exactly this many tokens, padded with `pad_id` (CLIP: 77 and 0;
    /// padding changes a CLIP text embedding, trimming does too). Absent: any length up to
    /// `max_tokens`, no padding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_to: Option<usize>,
    #[serde(default)]
    pub pad_id: u32,
    #[serde(default)]
    pub lowercase: bool,
    /// Prepended to every query (E5-style models want `"query: "`).
    #[serde(default)]
    pub prefix: String,
    /// As [`ImageTower::base_output`]: the sentence embedding under a trained head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_output: Option<String>,
    /// `[multilingual]` only: a file of the bundle holding the classifier that sends
    /// unaccented Latin-script queries that are not English to this tower
    /// ([`crate::encoder::language`], written by `moonlens-host route`). Absent: the script
    /// rule alone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// A second input: the query's character bag ([`crate::encoder::char_bag`]), read by a
    /// distilled head beside the sentence embedding (`distill --char-buckets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub char_bag: Option<CharBagInput>,
}

/// `[multilingual.char_bag]`: the graph input that takes the bag, and its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharBagInput {
    pub input: String,
    /// slots for CJK characters and pairs
    pub buckets: usize,
    /// slots after those for every other word's character trigrams (0: none)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub trigram_buckets: usize,
}

/// serde's `skip_serializing_if` for counts whose 0 means "absent" (bundle.toml, heads.json).
pub(crate) fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl CharBagInput {
    pub fn shape(&self) -> crate::encoder::char_bag::CharBag {
        crate::encoder::char_bag::CharBag {
            buckets: self.buckets,
            trigram_buckets: self.trigram_buckets,
        }
    }
}

impl ImageTower {
    /// The training-free embedding tensor (see `base_output`).
    pub fn base(&self) -> &str {
        self.base_output.as_deref().unwrap_or(&self.output)
    }
}

impl TextTower {
    /// The sentence-embedding tensor under any head (see `base_output`).
    pub fn base(&self) -> &str {
        self.base_output.as_deref().unwrap_or(&self.output)
    }
}

/// A bundle whose manifest parsed, whose fields make sense and whose files match their hashes.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// sha256 of `bundle.toml` itself: it names every file's hash, so it identifies the
    /// whole bundle. The index stores it to refuse mixing embeddings of two models.
    pub id: [u8; 32],
}

impl Bundle {
    /// Read `DIR/bundle.toml`, check it and the sha256 of every file it lists.
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join("bundle.toml");
        let text = std::fs::read(&manifest_path).context(format_args!(
            "cannot read {} (is {} a model bundle? models/README.md says what one holds)",
            manifest_path.display(),
            dir.display()
        ))?;
        let id: [u8; 32] = Sha256::digest(&text).into();
        let text = String::from_utf8(text)
            .map_err(|_| Error::new(format!("{}: not UTF-8", manifest_path.display())))?;
        let manifest: Manifest =
            toml::from_str(&text).context(format_args!("{}", manifest_path.display()))?;
        manifest
            .validate()
            .context(format_args!("{}", manifest_path.display()))?;
        for (file, want) in &manifest.sha256 {
            let path = dir.join(file);
            let got = sha256_file(&path)?;
            if !got.eq_ignore_ascii_case(want) {
                return Err(Error::new(format!(
                    "{}: sha256 mismatch (manifest {want}, file {got}); the file is corrupt or \
                     was replaced: restore it or rebuild the bundle (models/convert/build.sh)",
                    path.display()
                )));
            }
        }
        Ok(Bundle { dir, manifest, id })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// Which frozen image backbone computes this bundle's `features` and base embedding: the
    /// bundle the heads were trained on (`[heads] features_from`) or, for a bundle without
    /// heads, this one. Bundles with the same backbone id read each other's kept outputs
    /// (`features.ml`), so a new head can re-project an index without its frames.
    pub fn backbone_id(&self) -> [u8; 32] {
        let from = self
            .manifest
            .heads
            .as_ref()
            .and_then(|h| h.get("features_from"));
        match from.and_then(|v| v.as_str()).and_then(unhex) {
            Some(id) => id,
            None => self.id,
        }
    }
}

impl Manifest {
    fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            crate::bail!(
                "bundle format {} is not supported (this build reads {FORMAT})",
                self.format
            );
        }
        if self.dim == 0 || self.dim > 4096 {
            crate::bail!("dim = {} is out of range 1..=4096", self.dim);
        }
        let i = &self.image;
        if i.shape[0] != 3 || i.shape[1] != i.crop as usize || i.shape[2] != i.crop as usize {
            crate::bail!(
                "image.shape {:?} must be [3, crop, crop] with crop = {}",
                i.shape,
                i.crop
            );
        }
        if i.crop == 0 || i.resize < i.crop || i.resize > 4096 {
            crate::bail!(
                "image.resize ({}) must be >= image.crop ({}) > 0",
                i.resize,
                i.crop
            );
        }
        if i.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || i.mean.iter().any(|m| !m.is_finite())
        {
            crate::bail!("image.mean and image.std must be finite and std non-zero");
        }
        let mut files = vec![&self.image.file];
        for (section, t) in std::iter::once(("text", &self.text))
            .chain(self.multilingual.iter().map(|t| ("multilingual", t)))
        {
            if t.max_tokens < 2 || t.max_tokens > 4096 {
                crate::bail!(
                    "{section}.max_tokens = {} is out of range 2..=4096",
                    t.max_tokens
                );
            }
            if let Some(n) = t.pad_to {
                if n < t.max_tokens {
                    crate::bail!(
                        "{section}.pad_to = {n} is shorter than max_tokens = {}",
                        t.max_tokens
                    );
                }
            }
            files.extend([&t.file, &t.tokenizer]);
            files.extend(&t.route);
        }
        if self.text.route.is_some() {
            crate::bail!(
                "text.route: the route decides which queries leave the [text] tower; it belongs \
                 in [multilingual]"
            );
        }
        for f in files {
            if !self.sha256.contains_key(f) {
                crate::bail!("[sha256] has no entry for {f}: every file of the bundle needs one");
            }
        }
        for f in self.sha256.keys() {
            if f.contains("..") || f.starts_with('/') {
                crate::bail!("[sha256] names {f:?}, which is outside the bundle directory");
            }
        }
        Ok(())
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).context(format_args!(
        "cannot open {} (named in bundle.toml): restore it or rebuild the bundle",
        path.display()
    ))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .context(format_args!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// 32 bytes from 64 hex digits.
pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::{CharBagInput, Manifest};

    #[test]
    fn a_route_is_a_file_of_the_multilingual_tower_only() {
        let m: Manifest = toml::from_str(include_str!("../models/default/bundle.toml")).unwrap();
        assert_eq!(
            m.multilingual.as_ref().unwrap().route.as_deref(),
            Some("route.bin")
        );
        m.validate().unwrap();
        let mut unlisted = m.clone();
        unlisted.sha256.remove("route.bin");
        let e = unlisted.validate().unwrap_err().to_string();
        assert!(e.contains("route.bin"), "{e}");
        let mut on_text = m.clone();
        on_text.text.route = Some("route.bin".into());
        let e = on_text.validate().unwrap_err().to_string();
        assert!(e.contains("[multilingual]"), "{e}");
    }

    #[test]
    fn a_char_bag_reads_its_slots_and_refuses_the_shared_trigram_layout() {
        let bag: CharBagInput =
            toml::from_str("input = \"char_bag\"\nbuckets = 4096\ntrigram_buckets = 1024").unwrap();
        assert_eq!((bag.shape().buckets, bag.shape().width()), (4096, 5120));
        let cjk: CharBagInput = toml::from_str("input = \"char_bag\"\nbuckets = 64").unwrap();
        assert_eq!(cjk.shape().width(), 64);
        // stop 9's experiment: trigrams in the CJK slots; its graphs expect another bag
        let e = toml::from_str::<CharBagInput>("input = \"c\"\nbuckets = 64\ntrigrams = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("trigrams"), "{e}");
    }
}
