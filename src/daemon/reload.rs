//! `reload <dir>` (and SIGHUP with a changed `bundle` in the config): another bundle over the
//! same backbone takes over without re-encoding a frame. Every stored entry is re-projected
//! from the backbone outputs the index kept (`features.ml`) through the new bundle's head
//! ([`crate::encoder::reproject`]); entries stored before the index kept them are re-encoded
//! from their thumbnails (a 160-px JPEG: lower quality, counted).
//!
//! `reload <dir> from=thumbnails` is the explicit way into a bundle over another backbone
//! (whose head cannot read the kept outputs): every entry is re-encoded from its thumbnail
//! through the new tower. That costs quality (a 160-px JPEG instead of the frame: cosine
//! 0.93-0.97 to the frame's embedding on the samples, tests/reload.rs) and time (the whole
//! tower per entry), and `features.ml` starts afresh for the new backbone (new frames keep
//! outputs again); `regions.ml` keeps none until the next start makes it for the new
//! bundle's bridge. A reload over the same backbone keeps the regions: same bridge.
//!
//! The new embeddings go to `index.ml.next` while queries keep answering from the old ones.
//! The commit, under the ingest thread's turn and the model's write lock: what was appended
//! meanwhile is re-projected too, the file is synced and renamed over `index.ml`, the new
//! model and the watches re-encoded with it take over. A query holds the model from its
//! encoding to the end of its scan, so no answer mixes the two spaces. A crash before the
//! rename leaves the old index (the next open removes `index.ml.next`); after it, the index
//! is the new bundle's, and `reloaded.json` (written before the rename) tells the next start
//! where that bundle is, whatever the config still says (FORMAT.md, "Re-projection").

use super::Shared;
use crate::bundle::{hex, Bundle};
use crate::encoder::reproject::Reprojector;
use crate::encoder::Encoder;
use crate::error::{Context, Result};
use crate::index::Pending;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Beside the index: the last bundle a reload committed, `{"bundle": path, "id": hex}`.
pub const RECORD: &str = "reloaded.json";

/// What `status` says about reloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum State {
    #[default]
    None,
    Running {
        done: u64,
        of: u64,
    },
    Done(Done),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Done {
    pub model: String,
    /// entries re-projected from their kept backbone outputs
    pub reprojected: u64,
    /// entries re-encoded from their thumbnails (no kept outputs)
    pub from_thumbnails: u64,
    /// entries with neither, left out of the new index
    pub left_out: u64,
    pub ms: u64,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::None => write!(f, "none"),
            State::Running { done, of } => write!(f, "running {done}/{of}"),
            State::Done(d) => write!(
                f,
                "done {} reprojected={} from_thumbnails={} left_out={} ms={}",
                d.model, d.reprojected, d.from_thumbnails, d.left_out, d.ms
            ),
            State::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Starts a reload of `dir` on its own thread (from the thumbnails alone with
/// `from_thumbnails`); an error when one is already running.
pub fn start(
    shared: &Arc<Shared>,
    dir: PathBuf,
    from_thumbnails: bool,
) -> std::result::Result<(), String> {
    {
        let mut st = shared.reload.lock().expect("reload");
        if matches!(*st, State::Running { .. }) {
            return Err("a reload is already running (status shows how far)".into());
        }
        *st = State::Running {
            done: 0,
            of: shared.index.len(),
        };
    }
    let s = shared.clone();
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            let result = run(&s, &dir, from_thumbnails);
            let next = match result {
                Ok(d) => {
                    log::info!(
                        "reload of {} done: {}",
                        dir.display(),
                        State::Done(d.clone())
                    );
                    State::Done(d)
                }
                Err(e) => {
                    log::error!("reload of {} failed: {e}", dir.display());
                    let _ = std::fs::remove_file(s.index.dir().join(crate::index::NEXT));
                    State::Failed(e.to_string())
                }
            };
            *s.reload.lock().expect("reload") = next;
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the reload thread: {e}"))
}

/// Whether `bundle` can take over `shared`'s index: same width, and the same backbone unless
/// every entry comes from its thumbnail.
fn check(shared: &Shared, bundle: &Bundle, enc: &Encoder, from_thumbnails: bool) -> Result<()> {
    let index = &shared.index;
    if bundle.id == index.bundle_id() {
        crate::bail!(
            "{} is the bundle the index already holds",
            bundle.dir.display()
        );
    }
    if enc.dim() != index.header().dim as usize {
        crate::bail!(
            "{} makes {}-d embeddings, the index holds {}-d: a bundle of another width needs a \
             new index (move the index directory away)",
            bundle.dir.display(),
            enc.dim(),
            index.header().dim
        );
    }
    let (have, want) = (index.layout(), enc.layout());
    if from_thumbnails {
        return Ok(());
    }
    if !same_backbone(&have, want) {
        crate::bail!(
            "{} has another backbone ({}…, the index kept outputs of {}…): its head cannot read \
             them, so nothing can be re-projected. `reload <dir> from=thumbnails` re-encodes \
             every entry from its 160-px thumbnail instead: lower quality (a small JPEG, not the \
             frame) and the whole image tower per entry; or move the index directory away to \
             start anew with that bundle",
            bundle.dir.display(),
            &hex(&want.backbone_id)[..12],
            &hex(&have.backbone_id)[..12]
        );
    }
    Ok(())
}

fn run(shared: &Shared, dir: &Path, from_thumbnails: bool) -> Result<Done> {
    let t0 = Instant::now();
    let bundle = Bundle::open(dir)?;
    // regions as before the reload (the index keeps them in the base bundle's space, which a
    // bundle over the same backbone shares)
    let regions = shared.model().region_tower().is_some();
    let enc = super::load_encoder(&bundle, regions)?;
    check(shared, &bundle, &enc, from_thumbnails)?;
    let index = &shared.index;
    let head = if from_thumbnails {
        None
    } else {
        Some(Reprojector::load(&bundle, &index.layout())?)
    };
    let mut counts = Counts::default();
    let of = index.len();
    let mut project = |batch: &[Pending]| -> Result<Vec<Option<Vec<f32>>>> {
        let out = project(head.as_ref(), &enc, batch, &mut counts)?;
        let done = counts.reprojected + counts.from_thumbnails;
        *shared.reload.lock().expect("reload") = State::Running { done, of };
        Ok(out)
    };
    let mut next = index.begin_next(bundle.id, from_thumbnails.then(|| *enc.layout()))?;
    index.fill_next(&mut next, &mut project)?;
    // the commit: nothing is appended, no query runs, while the index changes hands
    let _turn = shared.ingest_turn.lock().unwrap_or_else(|p| p.into_inner());
    index.fill_next(&mut next, &mut project)?;
    write_record(index.dir(), &bundle)?;
    let mut model = shared.encoder.write().unwrap_or_else(|p| p.into_inner());
    let left_out = next.left_out;
    index.commit_next(next)?;
    {
        let mut watches = shared.watches.lock().expect("watches");
        for w in watches.list.iter_mut() {
            match enc.embed_text(&w.text) {
                Ok(e) => w.embedding = e,
                Err(e) => log::error!("watch {} ({}) not re-encoded: {e}", w.n, w.text),
            }
        }
    }
    let name = bundle.manifest.name.clone();
    *model = Arc::new(enc);
    drop(model);
    // the search codes of the new space (searches answer exactly meanwhile)
    index.learn_codes();
    Ok(Done {
        model: name,
        reprojected: counts.reprojected,
        from_thumbnails: counts.from_thumbnails,
        left_out,
        ms: t0.elapsed().as_millis() as u64,
    })
}

/// Whether a head of the bundle with layout `want` reads the outputs an index of layout
/// `have` kept.
fn same_backbone(have: &crate::index::Layout, want: &crate::index::Layout) -> bool {
    have.backbone_id == want.backbone_id && have.features == want.features && have.base == want.base
}

#[derive(Default)]
struct Counts {
    reprojected: u64,
    from_thumbnails: u64,
}

/// One batch's new embeddings: from the kept outputs through `head` where the entry has
/// them, else from its thumbnail through the whole new tower (the lossy way back).
fn project(
    head: Option<&Reprojector>,
    enc: &Encoder,
    batch: &[Pending],
    counts: &mut Counts,
) -> Result<Vec<Option<Vec<f32>>>> {
    let kept: Vec<&crate::index::Kept> = batch.iter().filter_map(|p| p.kept.as_ref()).collect();
    let mut projected = match head {
        Some(h) => h.project(&kept)?.into_iter(),
        None => Vec::new().into_iter(),
    };
    let mut out = Vec::with_capacity(batch.len());
    for p in batch {
        if p.kept.is_some() {
            counts.reprojected += 1;
            out.push(projected.next());
            continue;
        }
        let from_thumb = p
            .thumb
            .as_deref()
            .and_then(|t| image::load_from_memory(t).ok())
            .and_then(|img| enc.embed_image(&img).ok());
        counts.from_thumbnails += u64::from(from_thumb.is_some());
        out.push(from_thumb);
    }
    Ok(out)
}

/// At start, before the index is opened for serving: an index another bundle wrote over
/// the same backbone (a package upgrade replaced the default bundle; the config names a
/// retrained one) is re-projected into `bundle` as `reload` would do it, instead of being
/// refused with the advice to move it away and lose every frame. Nothing serves yet, so
/// it runs in one pass, before the socket answers (43,900 entries/s: a 100k ring in about
/// 2.3 s; entries without kept outputs come from their thumbnails). Returns None when there
/// is nothing to adopt: no index yet, the same bundle, or another backbone or width (the
/// open that follows refuses those with what to do). A crash midway leaves the old index
/// (the next open removes `index.ml.next`) and the next start tries again.
pub fn adopt_at_start(dir: &Path, bundle: &Bundle, enc: &Encoder) -> Result<Option<Done>> {
    let t0 = Instant::now();
    let Some(h) = read_header(dir) else {
        return Ok(None);
    };
    if h.bundle_id == bundle.id || h.dim as usize != enc.dim() {
        return Ok(None);
    }
    let index = crate::index::Index::open(dir)?;
    let have = index.layout();
    if !same_backbone(&have, enc.layout()) {
        return Ok(None);
    }
    log::warn!(
        "index {} was written by bundle {}…; re-projecting its {} entries into {} ({}…) before \
         serving",
        dir.display(),
        &hex(&h.bundle_id)[..12],
        index.len(),
        bundle.dir.display(),
        &bundle.id_hex()[..12]
    );
    let head = Reprojector::load(bundle, &have)?;
    let mut counts = Counts::default();
    let mut next = index.begin_next(bundle.id, None)?;
    index.fill_next(&mut next, &mut |batch: &[Pending]| {
        project(Some(&head), enc, batch, &mut counts)
    })?;
    // no reloaded.json: the config already names the bundle the index now holds
    let left_out = next.left_out;
    index.commit_next(next)?;
    Ok(Some(Done {
        model: bundle.manifest.name.clone(),
        reprojected: counts.reprojected,
        from_thumbnails: counts.from_thumbnails,
        left_out,
        ms: t0.elapsed().as_millis() as u64,
    }))
}

/// The index header on disk, if there is a readable one (no lock taken: a read-only look).
fn read_header(index_dir: &Path) -> Option<crate::index::Header> {
    let f = std::fs::File::open(index_dir.join("index.ml")).ok()?;
    use std::os::unix::fs::FileExt;
    let mut page = vec![0u8; crate::index::HEADER_SIZE];
    f.read_exact_at(&mut page, 0).ok()?;
    crate::index::Header::decode(&page).ok()
}

/// Records where the index's next bundle is, before the commit (temporary name, synced,
/// renamed): after the commit the index names that bundle, and the next start finds it here.
fn write_record(dir: &Path, bundle: &Bundle) -> Result<()> {
    let path = std::fs::canonicalize(&bundle.dir).unwrap_or_else(|_| bundle.dir.clone());
    let text = serde_json::json!({"bundle": path, "id": bundle.id_hex()}).to_string();
    let tmp = dir.join(format!("{RECORD}.tmp"));
    (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(RECORD))?;
        std::fs::File::open(dir)?.sync_all()
    })()
    .context(format_args!("writing {}", dir.join(RECORD).display()))
}

/// The bundle to start with: `configured`, unless the index in `index_dir` was re-projected
/// by a reload into the bundle that `reloaded.json` names (then that one, with a warning
/// saying to update the config).
pub fn bundle_to_start(configured: &Path, index_dir: &Path) -> PathBuf {
    let header = read_header(index_dir);
    let record: Option<serde_json::Value> = std::fs::read(index_dir.join(RECORD))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (Some(h), Some(r)) = (header, record) else {
        return configured.to_path_buf();
    };
    let (Some(id), Some(path)) = (r["id"].as_str(), r["bundle"].as_str()) else {
        return configured.to_path_buf();
    };
    if id != hex(&h.bundle_id) {
        return configured.to_path_buf();
    }
    match Bundle::open(configured) {
        Ok(b) if b.id == h.bundle_id => configured.to_path_buf(),
        _ => {
            log::warn!(
                "the index was re-projected into {path} by a reload; starting with it (set \
                 bundle = \"{path}\" in the config, or pass --bundle {path})"
            );
            PathBuf::from(path)
        }
    }
}
