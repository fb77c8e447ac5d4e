//! `tags.ml`: what the operator said frames show (`tag 17 delivery van`), with each tagged
//! frame's backbone outputs, embedding and thumbnail copied in at its first tag, so the
//! training data outlives the ring (FORMAT.md, "tags.ml").
//!
//! An append-only log of checksummed records, each synced before the request is answered;
//! replayed at open, where a torn last record (a crash mid-write) is cut off. When the log
//! holds more than twice what is live it is rewritten (temporary name, synced, renamed).
//! Bounded: [`MAX_FRAMES`] tagged frames, [`MAX_TAGS`] tags a frame, [`TAG_MAX`] bytes a tag.

use super::{crc32, quantize, Entry, Kept};
use crate::error::{Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"MLTG";
pub const MAX_FRAMES: usize = 1000;
pub const MAX_TAGS: usize = 8;
pub const TAG_MAX: usize = 64;
/// A record's payload is at most this long (a thumbnail slot, outputs, strings).
const PAYLOAD_MAX: usize = 64 * 1024;

const FRAME: u8 = 1;
const TAG: u8 = 2;
const UNTAG: u8 = 3;

/// One tagged frame as the store holds it in memory (its thumbnail stays on disk).
#[derive(Debug, Clone, PartialEq)]
pub struct Tagged {
    pub entry: Entry,
    pub kept: Option<Kept>,
    pub tags: Vec<String>,
    /// offset and length of the thumbnail bytes in the file
    thumb: (u64, u32),
}

/// What a tag request needs of a frame that the store does not hold yet.
pub struct FrameCopy {
    pub entry: Entry,
    pub kept: Option<Kept>,
    pub thumb: Vec<u8>,
}

pub struct TagStore {
    path: PathBuf,
    file: File,
    len: u64,
    frames: BTreeMap<u64, Tagged>,
}

/// A tag as stored: trimmed, inner whitespace collapsed; 1..=[`TAG_MAX`] bytes, no control
/// characters.
pub fn clean_tag(text: &str) -> std::result::Result<String, String> {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.is_empty() {
        return Err("a tag needs some text, e.g. tag 17 delivery van".into());
    }
    if t.len() > TAG_MAX {
        return Err(format!(
            "a tag is at most {TAG_MAX} bytes ({} given)",
            t.len()
        ));
    }
    if t.chars().any(char::is_control) {
        return Err("a tag cannot hold control characters".into());
    }
    Ok(t)
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn str8(&mut self, s: &str) {
        let s = super::slot::fit(s, 255);
        self.u8(s.len() as u8);
        self.bytes(s.as_bytes());
    }
    fn i8s(&mut self, v: &[f32]) {
        let (q, scale) = quantize(v);
        self.q8(&q, scale);
    }
    /// int8 values as they are stored (an entry's embedding: no second quantization)
    fn q8(&mut self, q: &[i8], scale: f32) {
        self.bytes(&(q.len() as u32).to_le_bytes());
        self.bytes(&scale.to_le_bytes());
        self.bytes(&q.iter().map(|&x| x as u8).collect::<Vec<_>>());
    }
}

/// Reads a payload; every read checks its length (the bytes passed a CRC, but were written
/// by whatever wrote the file).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
    fn f32(&mut self) -> Option<f32> {
        self.u32().map(f32::from_bits).filter(|x| x.is_finite())
    }
    fn str8(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// int8 values with their scale: (int8 values, scale)
    fn i8s(&mut self) -> Option<(Vec<i8>, f32)> {
        let n = self.u32()? as usize;
        let scale = self.f32()?;
        Some((self.take(n)?.iter().map(|&x| x as i8).collect(), scale))
    }
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(payload.len() + 13);
    r.extend_from_slice(MAGIC);
    r.push(kind);
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(payload);
    let crc = crc32(&r);
    r.extend_from_slice(&crc.to_le_bytes());
    r
}

fn frame_payload(f: &FrameCopy) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.bytes(&f.entry.seq.to_le_bytes());
    w.bytes(&f.entry.ts_ms.to_le_bytes());
    w.str8(&f.entry.source);
    w.str8(&f.entry.label);
    w.q8(&f.entry.embedding, f.entry.scale);
    match &f.kept {
        Some(k) => {
            w.u8(1);
            w.i8s(&k.features);
            w.i8s(&k.base);
        }
        None => w.u8(0),
    }
    w.bytes(&(f.thumb.len() as u32).to_le_bytes());
    w.bytes(&f.thumb);
    w.0
}

fn tag_payload(seq: u64, text: &str) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    w.bytes(&seq.to_le_bytes());
    w.str8(text);
    w.0
}

/// A frame record's payload, read back; `at` is the payload's offset in the file.
fn read_frame(p: &[u8], at: u64) -> Option<Tagged> {
    let mut r = Reader(p);
    let seq = r.u64()?;
    let ts_ms = r.u64()? as i64;
    let source = r.str8()?;
    let label = r.str8()?;
    let (embedding, scale) = r.i8s()?;
    let kept = match r.u8()? {
        0 => None,
        1 => {
            let deq = |(q, s): (Vec<i8>, f32)| q.iter().map(|&x| x as f32 * s).collect();
            Some(Kept {
                features: deq(r.i8s()?),
                base: deq(r.i8s()?),
            })
        }
        _ => return None,
    };
    let n = r.u32()?;
    let thumb_at = at + (p.len() - r.0.len()) as u64;
    r.take(n as usize)?;
    Some(Tagged {
        entry: Entry {
            seq,
            ts_ms,
            source,
            label,
            scale,
            embedding,
        },
        kept,
        tags: Vec::new(),
        thumb: (thumb_at, n),
    })
}

impl TagStore {
    /// Opens (or starts) `dir/tags.ml`: replays it, cuts a torn tail, compacts it when more
    /// than half of it is dead.
    pub fn open(dir: &Path) -> Result<TagStore> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("tags.ml");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(super::disk::FILE_MODE)
            .open(&path)
            .context(format_args!("cannot open {}", path.display()))?;
        Self::replay(path, file, true)
    }

    /// Reads `dir/tags.ml` without changing it (training reads an index a daemon may be
    /// writing): a torn tail is skipped, not cut; tag requests on it fail. No file: no tags.
    pub fn read(dir: &Path) -> Result<TagStore> {
        let path = dir.join("tags.ml");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                File::open("/dev/null").context("opening /dev/null")?
            }
            Err(e) => return Err(e).context(format_args!("cannot read {}", path.display())),
        };
        Self::replay(path, file, false)
    }

    fn replay(path: PathBuf, file: File, writable: bool) -> Result<TagStore> {
        let mut bytes = Vec::new();
        use std::io::Read;
        (&file)
            .read_to_end(&mut bytes)
            .context(format_args!("reading {}", path.display()))?;
        let mut frames: BTreeMap<u64, Tagged> = BTreeMap::new();
        let mut good = 0usize;
        while let Some((kind, payload, next)) = next_record(&bytes, good) {
            let at = (good + 9) as u64;
            match kind {
                FRAME => {
                    if let Some(t) = read_frame(payload, at) {
                        frames.entry(t.entry.seq).or_insert(t);
                    }
                }
                TAG | UNTAG => {
                    let mut r = Reader(payload);
                    if let (Some(seq), Some(text)) = (r.u64(), r.str8()) {
                        if let Some(f) = frames.get_mut(&seq) {
                            f.tags.retain(|t| {
                                !(t.eq_ignore_ascii_case(&text)
                                    || (kind == UNTAG && text.is_empty()))
                            });
                            if kind == TAG {
                                f.tags.push(text);
                            }
                        }
                    }
                }
                _ => {}
            }
            good = next;
        }
        if good < bytes.len() && writable {
            log::warn!(
                "{}: {} bytes after the last whole record cut off (a write torn by a crash)",
                path.display(),
                bytes.len() - good
            );
            file.set_len(good as u64)
                .context(format_args!("truncating {}", path.display()))?;
        }
        frames.retain(|_, f| !f.tags.is_empty());
        let mut store = TagStore {
            path,
            file,
            len: good as u64,
            frames,
        };
        if writable && store.len > 2 * store.live_bytes() + (1 << 20) {
            store.compact()?;
        }
        Ok(store)
    }

    /// Bytes the live records would take in a fresh log (an estimate for compaction).
    fn live_bytes(&self) -> u64 {
        self.frames
            .values()
            .map(|f| 2048 + f.thumb.1 as u64 + 80 * f.tags.len() as u64)
            .sum()
    }

    fn append(&mut self, kind: u8, payload: &[u8]) -> Result<u64> {
        let rec = record(kind, payload);
        let at = self.len + 9;
        let written = self
            .file
            .write_all(&rec)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // nothing half-written may stay before the next record
            let _ = self.file.set_len(self.len);
            return Err(e).context(format_args!("writing {}", self.path.display()));
        }
        self.len += rec.len() as u64;
        Ok(at)
    }

    /// Tags frame `seq` with `text`; `copy` supplies the frame the first time (None: the frame
    /// is not in the ring). Returns the frame's tags.
    pub fn tag(
        &mut self,
        seq: u64,
        text: &str,
        copy: impl FnOnce() -> Option<FrameCopy>,
    ) -> std::result::Result<Vec<String>, String> {
        let text = clean_tag(text)?;
        if let Some(f) = self.frames.get(&seq) {
            if f.tags.iter().any(|t| t.eq_ignore_ascii_case(&text)) {
                return Ok(f.tags.clone());
            }
            if f.tags.len() >= MAX_TAGS {
                return Err(format!(
                    "frame {seq} has {MAX_TAGS} tags already: untag one first"
                ));
            }
        } else {
            if self.frames.len() >= MAX_FRAMES {
                return Err(format!(
                    "the tag store holds {MAX_FRAMES} tagged frames, its limit: untag some first"
                ));
            }
            let Some(copy) = copy() else {
                return Err(format!("no frame {seq} (it may have left the ring)"));
            };
            if copy.thumb.len() > super::THUMB_SLOT {
                return Err(format!("frame {seq}'s thumbnail is too large to keep"));
            }
            let payload = frame_payload(&copy);
            debug_assert!(payload.len() <= PAYLOAD_MAX);
            let at = self.append(FRAME, &payload).map_err(|e| e.to_string())?;
            let t = read_frame(&payload, at).expect("a payload just written reads back");
            self.frames.insert(seq, t);
        }
        self.append(TAG, &tag_payload(seq, &text))
            .map_err(|e| e.to_string())?;
        let f = self.frames.get_mut(&seq).expect("present");
        f.tags.push(text);
        let tags = f.tags.clone();
        self.maybe_compact();
        Ok(tags)
    }

    /// Removes `text` from frame `seq`'s tags, or all of them when `text` is None. Returns
    /// the tags left (a frame without tags leaves the store at the next compaction).
    pub fn untag(
        &mut self,
        seq: u64,
        text: Option<&str>,
    ) -> std::result::Result<Vec<String>, String> {
        let text = match text {
            Some(t) => clean_tag(t)?,
            None => String::new(),
        };
        let Some(f) = self.frames.get(&seq) else {
            return Err(format!("frame {seq} has no tags"));
        };
        if !text.is_empty() && !f.tags.iter().any(|t| t.eq_ignore_ascii_case(&text)) {
            return Err(format!("frame {seq} has no tag {text:?}"));
        }
        self.append(UNTAG, &tag_payload(seq, &text))
            .map_err(|e| e.to_string())?;
        let f = self.frames.get_mut(&seq).expect("present");
        f.tags
            .retain(|t| !(text.is_empty() || t.eq_ignore_ascii_case(&text)));
        let left = f.tags.clone();
        if left.is_empty() {
            self.frames.remove(&seq);
        }
        self.maybe_compact();
        Ok(left)
    }

    /// Every tagged frame, oldest first.
    pub fn frames(&self) -> impl Iterator<Item = &Tagged> {
        self.frames.values()
    }

    pub fn get(&self, seq: u64) -> Option<&Tagged> {
        self.frames.get(&seq)
    }

    /// The JPEG thumbnail kept with a tagged frame.
    pub fn thumb(&self, seq: u64) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let (at, n) = self.frames.get(&seq)?.thumb;
        let mut b = vec![0u8; n as usize];
        self.file.read_exact_at(&mut b, at).ok()?;
        Some(b)
    }

    /// Keeps the log within twice what is live (plus 1 MiB): a failed compaction is logged,
    /// the log stays as it was and valid.
    fn maybe_compact(&mut self) {
        if self.len > 2 * self.live_bytes() + (1 << 20) {
            if let Err(e) = self.compact() {
                log::warn!("{}: not compacted: {e}", self.path.display());
            }
        }
    }

    /// Rewrites the log with only what is live, under a temporary name, synced, renamed.
    fn compact(&mut self) -> Result<()> {
        let tmp = self.path.with_extension("ml.tmp");
        let mut out = Vec::new();
        let mut frames = BTreeMap::new();
        for (&seq, f) in &self.frames {
            let copy = FrameCopy {
                entry: f.entry.clone(),
                kept: f.kept.clone(),
                thumb: self.thumb(seq).unwrap_or_default(),
            };
            let payload = frame_payload(&copy);
            let at = (out.len() + 9) as u64;
            out.extend(record(FRAME, &payload));
            let mut t = read_frame(&payload, at).expect("a payload just made reads back");
            for tag in &f.tags {
                out.extend(record(TAG, &tag_payload(seq, tag)));
                t.tags.push(tag.clone());
            }
            frames.insert(seq, t);
        }
        {
            let mut f = File::create(&tmp).context("creating tags.ml.tmp")?;
            f.write_all(&out)
                .and_then(|_| f.sync_all())
                .context("writing tags.ml.tmp")?;
        }
        std::fs::rename(&tmp, &self.path).context("renaming tags.ml.tmp")?;
        if let Some(dir) = self.path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .context("reopening tags.ml")?;
        log::info!(
            "{}: compacted from {} to {} bytes",
            self.path.display(),
            self.len,
            out.len()
        );
        self.len = out.len() as u64;
        self.frames = frames;
        Ok(())
    }
}

/// The record starting at `at`: (kind, payload, offset after it), or None at the end or at
/// a record that is torn or damaged (everything from there on is dropped).
fn next_record(b: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let head = b.get(at..at + 9)?;
    if &head[..4] != MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(head[5..9].try_into().expect("4")) as usize;
    if n > PAYLOAD_MAX {
        return None;
    }
    let end = at + 9 + n;
    let crc = u32::from_le_bytes(b.get(end..end + 4)?.try_into().expect("4"));
    (crc == crc32(&b[at..end])).then(|| (head[4], &b[at + 9..end], end + 4))
}
