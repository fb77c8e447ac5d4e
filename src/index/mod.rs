//! The ring index: a fixed-capacity, memory-mapped ring of int8 embeddings with their
//! metadata, plus three parallel rings: JPEG thumbnails, the frozen backbones' outputs the
//! heads read (`features`), and a few region embeddings of each frame that searches add to
//! the global score (`regions`). The byte layout, the commit protocol
//! and the recovery rules are in `FORMAT.md` beside this file.
//!
//! One writer, many readers, in one process: the maps sit behind an `RwLock`; a search holds
//! the read lock for one scan, an append holds the write lock for one slot copy. Every slot
//! carries a CRC, so a torn write (crash, power loss) is detected on open and the slot is
//! treated as empty and reported, never returned.

pub mod codes;
pub mod disk;
pub mod features;
pub mod quarantine;
pub mod regions;
pub mod search;
pub mod slot;
pub mod snapshot;
pub mod tags;

use crate::error::{Context, Result};
use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub const MAGIC: &[u8; 8] = b"MLINDEX\0";
/// Format 2 added `features.ml`, format 3 `regions.ml`; an older index is upgraded in place
/// by its next writer (FORMAT.md, "Upgrading").
pub const VERSION: u32 = 3;
pub const HEADER_SIZE: usize = 4096;
/// Where a header being rewritten is staged first, inside the header page (FORMAT.md).
pub const HEADER_COPY: usize = 2048;
pub use features::{Kept, Layout};
pub use regions::RegionLayout;
use slot::Slot;
pub use slot::{LABEL_MAX, SOURCE_MAX};
/// Thumbnails live in fixed slots of this many bytes (a 160 px JPEG is 4-10 KiB).
pub const THUMB_SLOT: usize = 16 * 1024;
/// The largest ring the format allows (2^32 entries; a board holds far fewer).
pub const MAX_CAPACITY: u64 = 1 << 32;

/// CRC-32/ISO-HDLC (the zlib and PNG one) of `data`: what every slot, header and quarantine
/// record carries (FORMAT.md).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1 to 3 as read; always written as [`VERSION`].
    pub version: u32,
    pub dim: u32,
    pub capacity: u64,
    pub slot_size: u32,
    pub thumb_slot: u32,
    pub bundle_id: [u8; 32],
    pub created_ms: i64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.dim.to_le_bytes());
        b[16..24].copy_from_slice(&self.capacity.to_le_bytes());
        b[24..28].copy_from_slice(&self.slot_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.thumb_slot.to_le_bytes());
        b[32..64].copy_from_slice(&self.bundle_id);
        b[64..72].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32(&b[0..72]);
        b[72..76].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_SIZE {
            crate::bail!("file is {} bytes, shorter than the {HEADER_SIZE}-byte header: not an index or truncated", b.len());
        }
        if &b[0..8] != MAGIC {
            crate::bail!("bad magic: this file is not a moonlens index");
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version == 0 || version > VERSION {
            crate::bail!("index format version {version}, this build reads 1 to {VERSION}: use the moonlensd that wrote it, or re-index (move the index directory away)");
        }
        if u32_at(72) != crc32(&b[0..72]) {
            crate::bail!(
                "header checksum mismatch: the header is corrupt; move the index away and re-index"
            );
        }
        let h = Header {
            version,
            dim: u32_at(12),
            capacity: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            slot_size: u32_at(24),
            thumb_slot: u32_at(28),
            bundle_id: b[32..64].try_into().expect("32 bytes"),
            created_ms: i64::from_le_bytes(b[64..72].try_into().expect("8 bytes")),
        };
        if h.dim == 0
            || h.dim > 4096
            || h.slot_size as usize != slot::size(h.dim as usize)
            || h.capacity == 0
            || h.capacity > MAX_CAPACITY
            || h.thumb_slot == 0
            || h.thumb_slot > 1 << 20
        {
            crate::bail!(
                "header fields are inconsistent (dim {}, slot size {}, capacity {})",
                h.dim,
                h.slot_size,
                h.capacity
            );
        }
        Ok(h)
    }
}

/// One stored frame, as appended and as returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub ts_ms: i64,
    pub source: String,
    pub label: String,
    pub scale: f32,
    pub embedding: Vec<i8>,
}

impl Entry {
    pub fn dequantized(&self) -> Vec<f32> {
        self.embedding
            .iter()
            .map(|&v| v as f32 * self.scale)
            .collect()
    }
}

/// Symmetric int8 with one scale per vector: `x ≈ q * scale`.
pub fn quantize(x: &[f32]) -> (Vec<i8>, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
    (
        x.iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
            .collect(),
        scale,
    )
}

/// Result of checking every slot (`moonlensd verify`, and every open).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub entries: u64,
    pub corrupt: u64,
    pub capacity: u64,
    /// Slot numbers that failed their checks (first 100).
    pub corrupt_slots: Vec<u64>,
    /// Valid entries whose thumbnail fails its checksum (a crash between the two writes of
    /// an append can leave the entry about to be overwritten without its thumbnail). `None`
    /// where thumbnails were not checked: an open leaves them to the `thumb` request.
    pub bad_thumbs: Option<u64>,
    /// Damaged slots found by earlier opens and kept in `quarantine.ml` before they were
    /// cleared (`verify` only; the evidence of past damage).
    pub quarantined: u64,
    /// Valid entries whose backbone outputs are kept in `features.ml` (`verify` only: `None`
    /// at open, and for a format-1 index, which has no such file yet).
    pub with_features: Option<u64>,
    /// Valid entries whose regions are kept in `regions.ml` (`verify` only: `None` at open,
    /// and for an index older than format 3).
    pub with_regions: Option<u64>,
}

/// What the opener of an existing index expects of it (the daemon: its bundle's).
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub dim: usize,
    pub bundle_id: [u8; 32],
    pub layout: Layout,
    /// the regions it would keep of each frame ([`RegionLayout::NONE`]: none)
    pub regions: RegionLayout,
}

struct Maps {
    index: MmapMut,
    thumbs: MmapMut,
    features: MmapMut,
    /// the bundle whose embeddings `index` holds (changes when a re-projection commits)
    bundle_id: [u8; 32],
    /// what `features` keeps (changes when a re-index from thumbnails commits)
    layout: Layout,
    regions: MmapMut,
    /// what `regions` keeps (none after a re-index into another backbone, until a restart)
    region_layout: RegionLayout,
    /// every slot's projection code, for two-stage searches (memory only; `codes`)
    codes: codes::Codes,
    /// bumped by every re-projection commit (codes learned before it are stale)
    generation: u64,
    /// Sequence number of the newest valid entry (0 when empty).
    head: u64,
    live: u64,
}

pub struct Index {
    dir: PathBuf,
    header: Header,
    maps: RwLock<Maps>,
    /// flush to the media before `append` returns (off only in benchmarks)
    durable: bool,
    opened_report: Report,
    /// the directory's writer lock, released on drop (or by the kernel on any death)
    _lock: disk::WriterLock,
    /// what the next flush does instead of just flushing (tests)
    flush_fault: std::sync::Mutex<FlushFault>,
}

/// A fault injected into the next append's flush, the way smoltcp's fault-injecting device
/// drives its tests: media that fail (an SD card's write error) or stall (its latency).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum FlushFault {
    #[default]
    None,
    Fail,
    Delay(std::time::Duration),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn open_rw(path: &Path, create: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(disk::FILE_MODE)
        .open(path)
        .context(format_args!("cannot open {}", path.display()))
}

/// Where a re-projection writes the index it will become (FORMAT.md, "Re-projection").
pub const NEXT: &str = "index.ml.next";

/// A stored entry on its way into another bundle's space: what a re-projection reads.
pub struct Pending {
    pub entry: Entry,
    /// its backbone outputs, if the index kept them
    pub kept: Option<Kept>,
    /// its thumbnail, read only when there are no kept outputs (the lossy way back)
    pub thumb: Option<Vec<u8>>,
}

/// What a re-projection does with a batch of entries: each one's new embedding, or None
/// (left out of the new index).
pub type Project<'a> = dyn FnMut(&[Pending]) -> Result<Vec<Option<Vec<f32>>>> + 'a;

/// An `index.ml.next` being written: the index's entries re-projected into another bundle's
/// space, swapped in by [`Index::commit_next`].
pub struct Next {
    path: PathBuf,
    file: File,
    header: Header,
    /// entries up to this seq are in the file
    done: u64,
    /// entries written, and left out (no way to re-project them)
    pub written: u64,
    pub left_out: u64,
    /// a re-index from thumbnails into another backbone: what `features.ml` keeps after it
    new_layout: Option<Layout>,
}

/// Creates the side file `name` (`features.ml`, `regions.ml`): `header`, then `len` bytes in
/// all, every slot empty, its blocks reserved; under a temporary name, synced and renamed, so
/// it either exists whole or not at all.
fn create_side(dir: &Path, name: &str, header: &[u8], len: u64) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let made = (|| -> Result<()> {
        let f = open_rw(&tmp, true)?;
        f.set_len(0).context(format_args!("emptying {name}.tmp"))?;
        f.set_len(len).context(format_args!("sizing {name}"))?;
        disk::reserve(&f, len, &path)?;
        use std::os::unix::fs::FileExt;
        f.write_all_at(header, 0)
            .context(format_args!("writing the header of {name}"))?;
        f.sync_all().context(format_args!("syncing {name}"))?;
        std::fs::rename(&tmp, &path).context(format_args!("renaming the new {name}"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .context("syncing the index directory")
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// Creates `features.ml` for `capacity` slots of `layout` (empty slots).
fn create_features(dir: &Path, capacity: u64, layout: &Layout) -> Result<()> {
    let h = features::Header {
        layout: *layout,
        capacity,
    };
    let len = features::HEADER_SIZE as u64 + capacity * layout.slot_size() as u64;
    create_side(dir, "features.ml", &h.encode(), len)
}

/// Creates `regions.ml` for `capacity` slots of `layout` (empty slots).
fn create_regions(dir: &Path, capacity: u64, layout: &RegionLayout) -> Result<()> {
    let h = regions::Header {
        layout: *layout,
        capacity,
    };
    create_side(
        dir,
        "regions.ml",
        &h.encode(),
        regions_len(capacity, layout),
    )
}

fn regions_len(capacity: u64, layout: &RegionLayout) -> u64 {
    regions::HEADER_SIZE as u64 + capacity * layout.slot_size() as u64
}

/// Opens `regions.ml` (sized for `capacity` slots and reserved) with its layout. One that is
/// missing, unreadable, sized for another ring, or not what `want` keeps is made anew for
/// `want` (None: whatever the file says, or no regions): regions are a search aid computed
/// from frames the camera no longer has, so what another layout kept is of no use and
/// entries without regions are simply scored without them.
fn open_regions(
    dir: &Path,
    capacity: u64,
    want: Option<RegionLayout>,
) -> Result<(File, RegionLayout)> {
    let path = dir.join("regions.ml");
    let found = side_header(&path, regions::HEADER_SIZE, |b| {
        regions::Header::decode(b).and_then(|h| same_capacity(h.capacity, capacity).map(|_| h))
    });
    let layout = match (found, want) {
        (Some(Ok(h)), None) => h.layout,
        (Some(Ok(h)), Some(w)) if h.layout == w => w,
        (found, want) => {
            let w = want.unwrap_or(RegionLayout::NONE);
            match found {
                Some(Err(e)) => log::warn!(
                    "{}: {e}; made anew: the regions it kept are lost (those entries are \
                     searched by their whole frame)",
                    path.display()
                ),
                Some(Ok(h)) if !h.layout.is_empty() => log::warn!(
                    "{}: keeps {} regions of {} values in space {}…, {} of {} in {}… are wanted \
                     (--regions, the bundle): made anew (the entries stored before are \
                     searched by their whole frame)",
                    path.display(),
                    h.layout.count,
                    h.layout.width,
                    &crate::bundle::hex(&h.layout.space_id)[..12],
                    w.count,
                    w.width,
                    &crate::bundle::hex(&w.space_id)[..12]
                ),
                _ => {}
            }
            create_regions(dir, capacity, &w)?;
            w
        }
    };
    Ok((open_side(&path, regions_len(capacity, &layout))?, layout))
}

/// The header of the side file `path` (None: there is none) by `decode` from its first
/// `size` bytes.
fn side_header<H>(
    path: &Path,
    size: usize,
    decode: impl FnOnce(&[u8]) -> Result<H>,
) -> Option<Result<H>> {
    let f = std::fs::File::open(path).ok()?;
    Some(header_bytes(&f, size).and_then(|b| decode(&b)))
}

/// The first `size` bytes of a side file.
fn header_bytes(f: &File, size: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; size];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut b, 0)
        .map_err(|e| crate::Error::new(e.to_string()))?;
    Ok(b)
}

/// A side file must have the ring's capacity.
fn same_capacity(found: u64, ring: u64) -> Result<()> {
    if found != ring {
        crate::bail!("capacity {found} where the ring has {ring}");
    }
    Ok(())
}

/// The side file `path` opened for writing, `len` bytes (extended with zeros if truncated:
/// the lost slots read as empty), its blocks reserved.
fn open_side(path: &Path, len: u64) -> Result<File> {
    let f = open_rw(path, false)?;
    if f.metadata()
        .context(format_args!("stat {}", path.display()))?
        .len()
        < len
    {
        f.set_len(len)
            .context(format_args!("extending a truncated {}", path.display()))?;
    }
    disk::reserve(&f, len, path)?;
    Ok(f)
}

/// Opens `features.ml` (sized for `capacity` slots and reserved), creating it when it is
/// missing, unreadable or kept nothing; returns it with its layout. `want` is what the opener
/// would keep (None: whatever the file says).
fn open_features(dir: &Path, capacity: u64, want: Option<Layout>) -> Result<(File, Layout)> {
    let path = dir.join("features.ml");
    let found = side_header(&path, features::HEADER_SIZE, |b| {
        features::Header::decode(b).and_then(|h| same_capacity(h.capacity, capacity).map(|_| h))
    });
    let layout = match (found, want) {
        (Some(Ok(h)), None) => h.layout,
        (Some(Ok(h)), Some(w)) if h.layout == w => w,
        // it kept nothing (made by a tool without a model): nothing is lost by remaking it
        (Some(Ok(h)), Some(w)) if h.layout.is_empty() => {
            create_features(dir, capacity, &w)?;
            w
        }
        // the index's bundle matched (checked first), so these are outputs no head of it can
        // read: left by a re-index from thumbnails cut short between its two renames
        (Some(Ok(h)), Some(w)) => {
            log::warn!(
                "{} keeps outputs of another backbone ({}…: {} + {} values; the bundle's is {}…: \
                 {} + {}): made anew for this one (those outputs were of no use to it)",
                path.display(),
                &crate::bundle::hex(&h.layout.backbone_id)[..12],
                h.layout.features,
                h.layout.base,
                &crate::bundle::hex(&w.backbone_id)[..12],
                w.features,
                w.base
            );
            create_features(dir, capacity, &w)?;
            w
        }
        (found, want) => {
            if let Some(Err(e)) = found {
                log::warn!(
                    "{}: {e}; made anew: the backbone outputs it kept are lost (search is not \
                     affected; a re-projection re-encodes those entries from their thumbnails)",
                    path.display()
                );
            }
            let w = want.unwrap_or(Layout::NONE);
            create_features(dir, capacity, &w)?;
            w
        }
    };
    let len = features::HEADER_SIZE as u64 + capacity * layout.slot_size() as u64;
    Ok((open_side(&path, len)?, layout))
}

/// Rewrites the header page so that a crash at any byte leaves a whole header: staged at
/// [`HEADER_COPY`] and flushed, written at 0 and flushed, then the copy cleared (a stale copy
/// must never outlive the header it stood in for).
fn rewrite_header(index: &mut MmapMut, h: &Header) -> std::io::Result<()> {
    let b = h.encode();
    let n = 76;
    index[HEADER_COPY..HEADER_COPY + n].copy_from_slice(&b[..n]);
    index.flush_range(0, HEADER_SIZE)?;
    index[..n].copy_from_slice(&b[..n]);
    index.flush_range(0, HEADER_SIZE)?;
    index[HEADER_COPY..HEADER_COPY + n].fill(0);
    index.flush_range(0, HEADER_SIZE)
}

impl Index {
    /// Open `dir`, creating an index of `capacity` entries if it has none. Fails when the
    /// existing index was written by another model bundle. Keeps no backbone outputs (see
    /// [`Index::open_or_create_with`]).
    pub fn open_or_create(
        dir: &Path,
        dim: usize,
        capacity: u64,
        bundle_id: [u8; 32],
    ) -> Result<Index> {
        let expect = Expect {
            dim,
            bundle_id,
            layout: Layout::NONE,
            regions: RegionLayout::NONE,
        };
        Self::open_or_create_with(dir, capacity, &expect)
    }

    /// Open `dir`, creating an index of `capacity` entries that keeps `expect.layout`'s
    /// backbone outputs if it has none; an existing index must match `expect` (its bundle,
    /// its width), and a format-1 one is upgraded.
    pub fn open_or_create_with(dir: &Path, capacity: u64, expect: &Expect) -> Result<Index> {
        let (dim, bundle_id) = (expect.dim, expect.bundle_id);
        std::fs::create_dir_all(dir).context(format_args!(
            "cannot create index directory {}",
            dir.display()
        ))?;
        let ipath = dir.join("index.ml");
        // taken once, before creating: a second daemon must not create under the first's feet
        let lock = disk::lock_writer(dir)?;
        if !ipath.exists() {
            if capacity == 0 || capacity > MAX_CAPACITY {
                crate::bail!("index capacity {capacity} is out of range 1..={MAX_CAPACITY}");
            }
            let h = Header {
                version: VERSION,
                dim: dim as u32,
                capacity,
                slot_size: slot::size(dim) as u32,
                thumb_slot: THUMB_SLOT as u32,
                bundle_id,
                created_ms: now_ms(),
            };
            Self::create(dir, &h, &expect.layout, &expect.regions)?;
        }
        Self::open_locked(dir, lock, Some(expect))
    }

    /// Refuses an index that `expect`'s bundle did not write, before anything is changed.
    fn check_expected(dir: &Path, h: &Header, expect: &Expect) -> Result<()> {
        if h.bundle_id != expect.bundle_id {
            return Err(crate::Error::of(
                crate::error::ErrorKind::BundleMismatch,
                format!(
                    "index {} was built with another model bundle ({}…, this one is {}…); its \
                     embeddings cannot be mixed: move the directory away (or pass another \
                     --index) to re-index",
                    dir.display(),
                    &crate::bundle::hex(&h.bundle_id)[..12],
                    &crate::bundle::hex(&expect.bundle_id)[..12]
                ),
            ));
        }
        if h.dim as usize != expect.dim {
            crate::bail!(
                "index {} holds {}-d embeddings, the bundle makes {}-d",
                dir.display(),
                h.dim,
                expect.dim
            );
        }
        Ok(())
    }

    fn create(dir: &Path, h: &Header, layout: &Layout, regions: &RegionLayout) -> Result<()> {
        // Written under temporary names and renamed: a crash leaves no half-made index. Both
        // files get their blocks now, so a disk too small for the ring fails here, at start,
        // and never under the mapping (FORMAT.md, "The media").
        let len = HEADER_SIZE as u64 + h.capacity * h.slot_size as u64;
        let tmp = dir.join("index.ml.tmp");
        let tpath = dir.join("thumbs.ml");
        let made = (|| -> Result<File> {
            let f = open_rw(&tmp, true)?;
            f.set_len(len).context("sizing the index file")?;
            disk::reserve(&f, len, &dir.join("index.ml"))?;
            let t = open_rw(&tpath, true)?;
            t.set_len(0).context("emptying thumbs.ml")?;
            let tlen = h.capacity * h.thumb_slot as u64;
            t.set_len(tlen).context("sizing thumbs.ml")?;
            disk::reserve(&t, tlen, &tpath)?;
            t.sync_all().context("syncing thumbs.ml")?;
            Ok(f)
        })();
        let f = match made {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                let _ = std::fs::remove_file(&tpath);
                return Err(e);
            }
        };
        // before index.ml exists: a format-3 index never lacks its side files
        if let Err(e) = create_features(dir, h.capacity, layout)
            .and_then(|_| create_regions(dir, h.capacity, regions))
        {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&tpath);
            return Err(e);
        }
        use std::os::unix::fs::FileExt;
        f.write_all_at(&h.encode(), 0)
            .context("writing the index header")?;
        f.sync_all().context("syncing the index")?;
        std::fs::rename(&tmp, dir.join("index.ml")).context("renaming the new index")?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .context("syncing the index directory")?;
        Ok(())
    }

    /// Open an existing index for writing; bad slots are counted in [`Index::report`] and
    /// never served. Takes the directory's writer lock first: a second writer is refused
    /// with the holder's pid before it reads or writes anything.
    pub fn open(dir: &Path) -> Result<Index> {
        Self::open_locked(dir, disk::lock_writer(dir)?, None)
    }

    fn open_locked(dir: &Path, lock: disk::WriterLock, expect: Option<&Expect>) -> Result<Index> {
        let ipath = dir.join("index.ml");
        let next = dir.join(NEXT);
        if next.exists() {
            // a re-projection that did not reach its commit (the rename): rolled back
            log::warn!(
                "{}: an interrupted re-projection left {NEXT}; removed (the index stays in its \
                 bundle's space)",
                dir.display()
            );
            std::fs::remove_file(&next).context(format_args!("removing {}", next.display()))?;
        }
        let f = open_rw(&ipath, false)?;
        let len = f.metadata().context("stat index.ml")?.len();
        let mut hb = vec![0u8; HEADER_SIZE.min(len as usize)];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut hb, 0)
            .context(format_args!("reading {}", ipath.display()))?;
        let (mut header, from_copy) = header_page(&hb, &ipath)?;
        if let Some(expect) = expect {
            Self::check_expected(dir, &header, expect)?;
        }
        let want = HEADER_SIZE as u64 + header.capacity * header.slot_size as u64;
        if len < want {
            // Truncated: extend with zeros (lost slots read as empty) rather than refuse to serve.
            log::warn!(
                "{}: {} bytes, expected {want}: truncated; missing slots are treated as empty",
                ipath.display(),
                len
            );
            f.set_len(want).context("extending a truncated index")?;
        }
        let tpath = dir.join("thumbs.ml");
        let t = open_rw(&tpath, true)?;
        let twant = header.capacity * header.thumb_slot as u64;
        if t.metadata().context("stat thumbs.ml")?.len() < twant {
            t.set_len(twant).context("extending thumbs.ml")?;
        }
        // Blocks for every byte the mapping may write (also upgrades an index made sparse by
        // an older moonlensd; allocated ranges cost nothing).
        disk::reserve(&f, want, &ipath)?;
        disk::reserve(&t, twant, &tpath)?;
        let (ff, layout) = open_features(dir, header.capacity, expect.map(|e| e.layout))?;
        let fwant = features::HEADER_SIZE as u64 + header.capacity * layout.slot_size() as u64;
        // SAFETY: the files are ours (one writer process per index directory, see FORMAT.md);
        // their lengths were checked above.
        let index = unsafe { MmapOptions::new().len(want as usize).map_mut(&f) }
            .context("mapping index.ml")?;
        let thumbs = unsafe { MmapOptions::new().len(twant as usize).map_mut(&t) }
            .context("mapping thumbs.ml")?;
        let features = unsafe { MmapOptions::new().len(fwant as usize).map_mut(&ff) }
            .context("mapping features.ml")?;
        let (rf, region_layout) = open_regions(dir, header.capacity, expect.map(|e| e.regions))?;
        let rwant = regions_len(header.capacity, &region_layout);
        let regions = unsafe { MmapOptions::new().len(rwant as usize).map_mut(&rf) }
            .context("mapping regions.ml")?;
        let mut maps = Maps {
            index,
            thumbs,
            features,
            bundle_id: header.bundle_id,
            layout,
            regions,
            region_layout,
            codes: codes::Codes::new(header.dim as usize, header.capacity as usize),
            generation: 0,
            head: 0,
            live: 0,
        };
        let report = Self::scan(dir, &header, &mut maps);
        if report.corrupt > 0 {
            log::warn!(
                "{}: {} corrupt slot(s) ignored: {:?}",
                ipath.display(),
                report.corrupt,
                report.corrupt_slots
            );
        }
        if from_copy && header.version == VERSION {
            rewrite_header(&mut maps.index, &header)
                .context(format_args!("restoring the header of {}", ipath.display()))?;
        }
        if header.version < VERSION {
            // features.ml and regions.ml exist and are synced (open_features, open_regions):
            // now the header says so
            let old = header.version;
            header.version = VERSION;
            rewrite_header(&mut maps.index, &header).context(format_args!(
                "upgrading {} to format {VERSION}",
                ipath.display()
            ))?;
            log::info!(
                "{}: upgraded from format {old} to {VERSION}; entries stored before keep no \
                 backbone outputs (a re-projection re-encodes them from their thumbnails) \
                 and no regions (searched by their whole frame)",
                ipath.display()
            );
        }
        Ok(Index {
            dir: dir.to_path_buf(),
            header,
            maps: RwLock::new(maps),
            durable: true,
            opened_report: report,
            _lock: lock,
            flush_fault: Default::default(),
        })
    }

    /// Open-time recovery: the checks `verify` makes (one loop, [`Report::tally`]), minus
    /// the thumbnails (a CRC of every JPEG would cost seconds of start-up on a board; a bad
    /// one is refused when asked for). Damaged slots are kept in the quarantine file, then
    /// cleared so searches skip them.
    fn scan(dir: &Path, h: &Header, maps: &mut Maps) -> Report {
        let ss = h.slot_size as usize;
        let mut r = Report::new(h.capacity);
        let mut bad = Vec::new();
        for i in 0..h.capacity {
            let off = HEADER_SIZE + i as usize * ss;
            match r.tally(i, &maps.index[off..off + ss], h, None) {
                Seen::Empty => {}
                Seen::Valid(seq) => maps.head = maps.head.max(seq),
                Seen::Corrupt(damage) => {
                    if bad.len() < 5 {
                        log::warn!("{}: slot {i}: {damage}", dir.display());
                    }
                    bad.push(i);
                }
            }
        }
        if !bad.is_empty() {
            // Kept first, then cleared so searches skip them (they are rewritten when the
            // ring comes round). Serving a damaged slot would be worse than losing its
            // evidence, so a quarantine that cannot be written is logged, not fatal.
            let slot = |i: u64| HEADER_SIZE + i as usize * ss..HEADER_SIZE + (i as usize + 1) * ss;
            let kept: Vec<(u64, &[u8])> = bad.iter().map(|&i| (i, &maps.index[slot(i)])).collect();
            if let Err(e) = quarantine::keep(dir, now_ms(), &kept) {
                log::error!("damaged slots not kept: {e}");
            }
            for &i in &bad {
                maps.index[slot(i)].fill(0);
            }
        }
        maps.live = r.entries;
        r
    }

    /// The header as opened (its `bundle_id` may since have changed: [`Index::bundle_id`]).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The bundle whose embeddings the index holds now.
    pub fn bundle_id(&self) -> [u8; 32] {
        self.maps.read().expect("index lock").bundle_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the last open found.
    pub fn report(&self) -> &Report {
        &self.opened_report
    }

    #[doc(hidden)]
    pub fn inject_flush_fault(&self, fault: FlushFault) {
        *self.flush_fault.lock().expect("fault lock") = fault;
    }

    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    pub fn len(&self) -> u64 {
        self.maps.read().expect("index lock").live
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn head(&self) -> u64 {
        self.maps.read().expect("index lock").head
    }

    /// Append one frame without backbone outputs; see [`Index::append_kept`].
    pub fn append(
        &self,
        ts_ms: i64,
        source: &str,
        label: &str,
        embedding: &[f32],
        thumb: &[u8],
    ) -> Result<u64> {
        self.append_kept(ts_ms, source, label, embedding, thumb, None)
    }

    /// Append one frame, and the backbone outputs its embedding came from when the index
    /// keeps them; see [`Index::append_frame`].
    pub fn append_kept(
        &self,
        ts_ms: i64,
        source: &str,
        label: &str,
        embedding: &[f32],
        thumb: &[u8],
        kept: Option<&Kept>,
    ) -> Result<u64> {
        self.append_frame(ts_ms, source, label, embedding, thumb, kept, None)
    }

    /// Append one frame, the backbone outputs its embedding came from and its region
    /// embeddings (the most confident first), each when the index keeps them; returns its
    /// sequence number (its id) once all of it is on the media. Regions of another width than
    /// the index keeps are left out (the entry is searched by its whole frame).
    #[allow(clippy::too_many_arguments)]
    pub fn append_frame(
        &self,
        ts_ms: i64,
        source: &str,
        label: &str,
        embedding: &[f32],
        thumb: &[u8],
        kept: Option<&Kept>,
        regions: Option<&[Vec<f32>]>,
    ) -> Result<u64> {
        let dim = self.header.dim as usize;
        if embedding.len() != dim {
            crate::bail!(
                "embedding has {} values, the index holds {dim}",
                embedding.len()
            );
        }
        if thumb.len() > self.header.thumb_slot as usize {
            crate::bail!(
                "thumbnail of {} bytes exceeds the {}-byte slot",
                thumb.len(),
                self.header.thumb_slot
            );
        }
        let (q, scale) = quantize(embedding);
        let mut maps = self.maps.write().expect("index lock");
        let layout = maps.layout;
        let kept = kept.filter(|_| !layout.is_empty());
        let rl = maps.region_layout;
        let regions = regions.filter(|r| {
            !rl.is_empty() && !r.is_empty() && r.iter().all(|v| v.len() == rl.width as usize)
        });
        if let Some(k) = kept {
            if k.features.len() != layout.features as usize || k.base.len() != layout.base as usize
            {
                crate::bail!(
                    "backbone outputs of {} + {} values, the index keeps {} + {}",
                    k.features.len(),
                    k.base.len(),
                    layout.features,
                    layout.base
                );
            }
        }
        // a slot may carry any valid seq (a copied or crafted file): never wrap to 0
        let Some(seq) = maps.head.checked_add(1) else {
            return Err(crate::Error::of(
                crate::error::ErrorKind::IdsExhausted,
                format!(
                    "index {} has used every id up to {}: re-index into a new directory",
                    self.dir.display(),
                    maps.head
                ),
            ));
        };
        let slot = (seq - 1) % self.header.capacity;
        let entry = Entry {
            seq,
            ts_ms,
            source: source.into(),
            label: label.into(),
            scale,
            embedding: q,
        };
        let mut bytes = vec![0u8; self.header.slot_size as usize];
        slot::encode(&entry, thumb.len() as u32, crc32(thumb), &mut bytes);
        let toff = slot as usize * self.header.thumb_slot as usize;
        maps.thumbs[toff..toff + thumb.len()].copy_from_slice(thumb);
        let fss = layout.slot_size();
        let foff = features::HEADER_SIZE + slot as usize * fss;
        if let Some(k) = kept {
            features::encode(seq, k, &layout, &mut maps.features[foff..foff + fss]);
        }
        let rss = rl.slot_size();
        let roff = regions::HEADER_SIZE + slot as usize * rss;
        if let Some(r) = regions {
            regions::encode(seq, r, &rl, &mut maps.regions[roff..roff + rss]);
        }
        let off = HEADER_SIZE + slot as usize * bytes.len();
        let was_live = maps.index[off..off + 8] != [0u8; 8];
        maps.index[off..off + bytes.len()].copy_from_slice(&bytes);
        maps.codes.set(slot as usize, &entry.embedding, entry.scale);
        // The id is spent whatever happens next: a failed flush must not hand it out again.
        maps.head = seq;
        if !was_live {
            maps.live += 1;
        }
        if !maps.codes.ready() && maps.live == codes::LEARN_FROM {
            // a ring that started empty has enough entries to learn the directions from
            maps.codes = codes::Codes::build(&maps.index[HEADER_SIZE..], &self.header);
        }
        drop(maps);
        if !self.durable {
            return Ok(seq);
        }
        // Commit order (FORMAT.md): thumbnail, features, regions, then slot; each flushed
        // before acknowledging.
        // Under the read lock only: searches go on while the media is slow, and the single
        // writer cannot change these pages before its own flush returns.
        let fault = std::mem::take(&mut *self.flush_fault.lock().expect("fault lock"));
        let maps = self.maps.read().expect("index lock");
        if let FlushFault::Delay(d) = fault {
            std::thread::sleep(d);
        }
        let flushed = if fault == FlushFault::Fail {
            Err(std::io::Error::other("injected flush failure"))
        } else {
            maps.thumbs
                .flush_range(toff, thumb.len().max(1))
                .and_then(|_| match kept {
                    Some(_) => maps.features.flush_range(foff, fss),
                    None => Ok(()),
                })
                .and_then(|_| match regions {
                    Some(_) => maps.regions.flush_range(roff, rss),
                    None => Ok(()),
                })
                .and_then(|_| maps.index.flush_range(off, bytes.len()))
        };
        drop(maps);
        if let Err(e) = flushed {
            // Not acknowledged, so not served either: the slot is cleared (the entry it
            // overwrote is gone already).
            let mut maps = self.maps.write().expect("index lock");
            maps.index[off..off + bytes.len()].fill(0);
            maps.codes.clear(slot as usize);
            maps.live -= 1;
            return Err(e).context(format_args!(
                "flushing entry {seq} to {}",
                self.dir.display()
            ));
        }
        Ok(seq)
    }

    /// What the index keeps of each frame's backbone outputs.
    pub fn layout(&self) -> Layout {
        self.maps.read().expect("index lock").layout
    }

    /// What the index keeps of each frame's regions.
    pub fn region_layout(&self) -> RegionLayout {
        self.maps.read().expect("index lock").region_layout
    }

    /// The regions of entry `seq`, dequantized: None when it left the ring, was stored
    /// without them (before a format upgrade, by a bundle without regions) or they are
    /// damaged.
    pub fn regions(&self, seq: u64) -> Option<Vec<Vec<f32>>> {
        self.valid(seq, |maps, (slot, _, _)| {
            let rss = maps.region_layout.slot_size();
            let off = regions::HEADER_SIZE + slot as usize * rss;
            regions::decode(&maps.regions[off..off + rss], seq, &maps.region_layout)
        })
        .and_then(|(_, r)| r)
    }

    /// The backbone outputs of entry `seq`: None when it left the ring, was stored without
    /// them (before a format upgrade, or by a bundle without features) or they are damaged.
    pub fn kept(&self, seq: u64) -> Option<Kept> {
        self.valid(seq, |maps, (slot, _, _)| {
            let fss = maps.layout.slot_size();
            let off = features::HEADER_SIZE + slot as usize * fss;
            features::decode(&maps.features[off..off + fss], seq, &maps.layout)
        })
        .and_then(|(_, k)| k)
    }

    /// The entry with sequence number `seq`, if still in the ring and valid.
    pub fn get(&self, seq: u64) -> Option<Entry> {
        self.valid(seq, |_, slot| slot).map(|(e, _)| e)
    }

    /// The entry and its thumbnail (None for the thumbnail when it fails its checksum).
    pub fn get_with_thumb(&self, seq: u64) -> Option<(Entry, Option<Vec<u8>>)> {
        let thumb_slot = self.header.thumb_slot as usize;
        self.valid(seq, |maps, (slot, thumb_len, thumb_crc)| {
            let toff = slot as usize * thumb_slot;
            let len = (thumb_len as usize).min(thumb_slot);
            let t = &maps.thumbs[toff..toff + len];
            (crc32(t) == thumb_crc && len > 0).then(|| t.to_vec())
        })
    }

    /// The valid entry `seq` (None when it left the ring or its slot is damaged), and what
    /// `more` reads beside it under the same lock from (slot number, thumbnail length, CRC).
    fn valid<T>(
        &self,
        seq: u64,
        more: impl FnOnce(&Maps, (u64, u32, u32)) -> T,
    ) -> Option<(Entry, T)> {
        if seq == 0 {
            return None;
        }
        let maps = self.maps.read().expect("index lock");
        let slot = (seq - 1) % self.header.capacity;
        let ss = self.header.slot_size as usize;
        let off = HEADER_SIZE + slot as usize * ss;
        match slot::decode(&maps.index[off..off + ss], self.header.dim as usize) {
            Slot::Valid {
                entry,
                thumb_len,
                thumb_crc,
            } if entry.seq == seq => {
                let extra = more(&maps, (slot, thumb_len, thumb_crc));
                Some((entry, extra))
            }
            _ => None,
        }
    }

    /// Re-check every slot on the media (for `verify`) without changing anything. Streams
    /// the slots through a 1 MiB buffer and reads only the thumbnails of valid entries, so
    /// its memory does not grow with the ring (the board's 100k ring is ~1.9 GB of files).
    pub fn verify(dir: &Path) -> Result<Report> {
        use std::os::unix::fs::FileExt;
        let ipath = dir.join("index.ml");
        let f = File::open(&ipath).context(format_args!("cannot read {}", ipath.display()))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, f);
        let mut head = vec![0u8; HEADER_SIZE];
        let got = read_full(&mut reader, &mut head)
            .context(format_args!("reading {}", ipath.display()))?;
        let (h, _) = header_page(&head[..got], &ipath)?;
        let thumbs = File::open(dir.join("thumbs.ml")).ok();
        // format 2: count the entries whose backbone outputs are readable
        let side = |since: u32, name: &str| {
            (h.version >= since)
                .then(|| File::open(dir.join(name)).ok())
                .flatten()
        };
        let feats = side(2, "features.ml").and_then(|f| {
            let fh =
                features::Header::decode(&header_bytes(&f, features::HEADER_SIZE).ok()?).ok()?;
            (fh.capacity == h.capacity).then_some((f, fh.layout))
        });
        let mut fslot = vec![0u8; feats.as_ref().map_or(0, |(_, l)| l.slot_size())];
        // format 3: and those whose regions are
        let regs = side(3, "regions.ml").and_then(|f| {
            let rh = regions::Header::decode(&header_bytes(&f, regions::HEADER_SIZE).ok()?).ok()?;
            (rh.capacity == h.capacity).then_some((f, rh.layout))
        });
        let mut rslot = vec![0u8; regs.as_ref().map_or(0, |(_, l)| l.slot_size())];
        let thumb_crc = |off: u64, len: usize| -> Option<u32> {
            let mut b = vec![0u8; len];
            thumbs.as_ref()?.read_exact_at(&mut b, off).ok()?;
            Some(crc32(&b))
        };
        let mut r = Report::new(h.capacity);
        r.bad_thumbs = Some(0);
        r.with_features = feats.as_ref().map(|_| 0);
        r.with_regions = regs.as_ref().map(|_| 0);
        let mut slot = vec![0u8; h.slot_size as usize];
        for i in 0..h.capacity {
            let n = read_full(&mut reader, &mut slot)
                .context(format_args!("reading {}", ipath.display()))?;
            if n < slot.len() {
                r.truncated_from(i);
                break;
            }
            let Seen::Valid(seq) = r.tally(i, &slot, &h, Some(&thumb_crc)) else {
                continue;
            };
            if let Some((f, layout)) = &feats {
                let off = features::HEADER_SIZE as u64 + i * fslot.len() as u64;
                let ok = f.read_exact_at(&mut fslot, off).is_ok()
                    && features::decode(&fslot, seq, layout).is_some();
                *r.with_features.as_mut().expect("set with feats") += u64::from(ok);
            }
            if let Some((f, layout)) = &regs {
                let off = regions::HEADER_SIZE as u64 + i * rslot.len() as u64;
                let ok = f.read_exact_at(&mut rslot, off).is_ok()
                    && regions::decode(&rslot, seq, layout).is_some();
                *r.with_regions.as_mut().expect("set with regs") += u64::from(ok);
            }
        }
        r.quarantined = quarantine::slots(dir).len() as u64;
        Ok(r)
    }

    /// Starts a re-projection into the bundle `bundle_id` (same width): `index.ml.next`,
    /// sized and reserved like the index, with the new header and no entries yet. With
    /// `new_layout` (a bundle over another backbone), entries come from their thumbnails only
    /// and the commit starts `features.ml` afresh for that backbone.
    pub fn begin_next(&self, bundle_id: [u8; 32], new_layout: Option<Layout>) -> Result<Next> {
        let path = self.dir.join(NEXT);
        let h = Header {
            version: VERSION,
            bundle_id,
            created_ms: now_ms(),
            ..self.header
        };
        let len = HEADER_SIZE as u64 + h.capacity * h.slot_size as u64;
        let file = open_rw(&path, true)?;
        let made = file
            .set_len(0)
            .and_then(|_| file.set_len(len))
            .context(format_args!("sizing {}", path.display()))
            .and_then(|_| disk::reserve(&file, len, &path))
            .and_then(|_| {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&h.encode(), 0)
                    .context(format_args!("writing {}", path.display()))
            });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Next {
            path,
            file,
            header: h,
            done: 0,
            written: 0,
            left_out: 0,
            new_layout,
        })
    }

    /// Re-projects into `next` every valid entry newer than what it holds: `project` gets
    /// them in batches and returns each one's new embedding (None: left out). Holds the read
    /// lock only to copy a batch out, so searches and appends go on; call it again (under the
    /// ingest thread's turn) for what was appended meanwhile, then [`Index::commit_next`].
    pub fn fill_next(&self, next: &mut Next, project: &mut Project) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let (ss, dim, cap) = (
            self.header.slot_size as usize,
            self.header.dim as usize,
            self.header.capacity,
        );
        let from = next.done;
        let head = self.head();
        let mut i = 0u64;
        while i < cap {
            // what the slot keeps of each (slot number, thumbnail length and CRC), and the entry
            let (mut at, mut pending): (Vec<(u64, u32, u32)>, Vec<Pending>) = (vec![], vec![]);
            {
                let maps = self.maps.read().expect("index lock");
                while i < cap && pending.len() < crate::encoder::reproject::BATCH {
                    let off = HEADER_SIZE + i as usize * ss;
                    if let Slot::Valid {
                        entry,
                        thumb_len,
                        thumb_crc,
                    } = slot::check(&maps.index[off..off + ss], i, &self.header)
                    {
                        if entry.seq > from && entry.seq <= head {
                            let fss = maps.layout.slot_size();
                            let foff = features::HEADER_SIZE + i as usize * fss;
                            // a re-index reads thumbnails only: kept outputs are another backbone's
                            let kept = next.new_layout.is_none().then(|| {
                                features::decode(
                                    &maps.features[foff..foff + fss],
                                    entry.seq,
                                    &maps.layout,
                                )
                            });
                            let kept = kept.flatten();
                            let thumb = kept.is_none().then(|| {
                                let toff = i as usize * self.header.thumb_slot as usize;
                                let len = (thumb_len as usize).min(self.header.thumb_slot as usize);
                                let t = &maps.thumbs[toff..toff + len];
                                (len > 0 && crc32(t) == thumb_crc).then(|| t.to_vec())
                            });
                            at.push((i, thumb_len, thumb_crc));
                            pending.push(Pending {
                                entry,
                                kept,
                                thumb: thumb.flatten(),
                            });
                        }
                    }
                    i += 1;
                }
            }
            if pending.is_empty() {
                continue;
            }
            let embeddings = project(&pending)?;
            let mut bytes = vec![0u8; ss];
            for ((slot_no, thumb_len, thumb_crc), (p, emb)) in
                at.iter().zip(pending.into_iter().zip(embeddings))
            {
                let off = (HEADER_SIZE + *slot_no as usize * ss) as u64;
                match emb.filter(|e| e.len() == dim) {
                    Some(e) => {
                        let (q, scale) = quantize(&e);
                        let entry = Entry {
                            scale,
                            embedding: q,
                            ..p.entry
                        };
                        slot::encode(&entry, *thumb_len, *thumb_crc, &mut bytes);
                        next.written += 1;
                    }
                    None => {
                        bytes.fill(0);
                        next.left_out += 1;
                    }
                }
                next.file
                    .write_all_at(&bytes, off)
                    .context(format_args!("writing {}", next.path.display()))?;
            }
        }
        next.done = head;
        Ok(())
    }

    /// Swaps `next` in: synced, renamed over `index.ml` (the commit point: a crash before it
    /// leaves the old index, after it the new one), mapped in place of the old one. The
    /// caller holds the ingest thread's turn and has filled `next` up to the head.
    pub fn commit_next(&self, next: Next) -> Result<()> {
        if next.done != self.head() {
            crate::bail!(
                "entries were appended after the last fill: fill again under the ingest turn"
            );
        }
        next.file
            .sync_all()
            .context(format_args!("syncing {}", next.path.display()))?;
        let ipath = self.dir.join("index.ml");
        let mut maps = self.maps.write().expect("index lock");
        std::fs::rename(&next.path, &ipath).context("renaming the re-projected index")?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .context("syncing the index directory")?;
        let len = HEADER_SIZE as u64 + self.header.capacity * self.header.slot_size as u64;
        // SAFETY: the file is ours (the writer lock) and was sized by begin_next.
        maps.index = unsafe { MmapOptions::new().len(len as usize).map_mut(&next.file) }
            .context("mapping the re-projected index")?;
        maps.bundle_id = next.header.bundle_id;
        if let Some(layout) = next.new_layout {
            // after the rename: a crash between the two leaves the old backbone's file, which
            // the next open finds foreign to the index's bundle and makes anew (open_features)
            create_features(&self.dir, self.header.capacity, &layout)?;
            let (ff, layout) = open_features(&self.dir, self.header.capacity, Some(layout))?;
            let flen =
                features::HEADER_SIZE as u64 + self.header.capacity * layout.slot_size() as u64;
            // SAFETY: as at open: our file, sized by open_features
            maps.features = unsafe { MmapOptions::new().len(flen as usize).map_mut(&ff) }
                .context("mapping the new features.ml")?;
            maps.layout = layout;
            // the regions are the old bridge's: none until the next open makes the file for
            // the new bundle (a crash before that leaves the old file, which that open finds
            // foreign and makes anew, open_regions)
            create_regions(&self.dir, self.header.capacity, &RegionLayout::NONE)?;
            let (rf, rl) = open_regions(&self.dir, self.header.capacity, Some(RegionLayout::NONE))?;
            let rlen = regions_len(self.header.capacity, &rl);
            // SAFETY: as at open: our file, sized by open_regions
            maps.regions = unsafe { MmapOptions::new().len(rlen as usize).map_mut(&rf) }
                .context("mapping the new regions.ml")?;
            maps.region_layout = rl;
        }
        // the old codes describe the old space; the caller learns new ones (`learn_codes`)
        maps.codes = codes::Codes::new(self.header.dim as usize, self.header.capacity as usize);
        maps.generation += 1;
        let ss = self.header.slot_size as usize;
        maps.live = (0..self.header.capacity as usize)
            .filter(|i| {
                let off = HEADER_SIZE + i * ss;
                maps.index[off..off + 8] != [0u8; 8]
            })
            .count() as u64;
        Ok(())
    }

    /// Learns the two-stage search's directions from the ring and projects every entry
    /// ([`codes`]): seconds at a million entries, so the daemon runs it on its own thread
    /// after open and after a re-projection, while searches go on (exact until it is done;
    /// appends wait for it, as they would for a long search). Does nothing when the codes
    /// exist or the ring holds fewer than [`codes::LEARN_FROM`] entries (the append that
    /// reaches that count learns them).
    pub fn learn_codes(&self) {
        let (built, head, generation) = {
            let maps = self.maps.read().expect("index lock");
            if maps.codes.ready() {
                return;
            }
            let t = std::time::Instant::now();
            let built = codes::Codes::build(&maps.index[HEADER_SIZE..], &self.header);
            if built.ready() {
                log::info!(
                    "{}: search codes for {} entries in {} ms",
                    self.dir.display(),
                    maps.live,
                    t.elapsed().as_millis()
                );
            }
            (built, maps.head, maps.generation)
        };
        let mut maps = self.maps.write().expect("index lock");
        if !built.ready() || maps.codes.ready() || maps.generation != generation {
            return; // too few entries, learned meanwhile, or another space since
        }
        let mut built = built;
        // what was appended between the two locks gets its code here
        let (ss, dim) = (self.header.slot_size as usize, self.header.dim as usize);
        for seq in head + 1..=maps.head {
            let slot = ((seq - 1) % self.header.capacity) as usize;
            let off = HEADER_SIZE + slot * ss;
            let view = slot::SlotView::new(&maps.index[off..off + ss], dim);
            if view.seq() == seq {
                built.set(slot, view.embedding(), view.scale());
            } else {
                built.clear(slot);
            }
        }
        maps.codes = built;
    }

    /// Adds `rq.lambda` × each hit's best region match to its score ([`search::RegionQuery`]).
    fn add_region_scores(&self, hits: &mut [search::Hit], rq: &search::RegionQuery) {
        let maps = self.maps.read().expect("index lock");
        let (rl, w) = (maps.region_layout, rq.part.len());
        let (ss, dim) = (self.header.slot_size as usize, self.header.dim as usize);
        let rss = rl.slot_size();
        for h in hits.iter_mut() {
            let slot = ((h.seq - 1) % self.header.capacity) as usize;
            let kept = (rl.width as usize == w)
                .then(|| {
                    let off = regions::HEADER_SIZE + slot * rss;
                    regions::best_match(&maps.regions[off..off + rss], h.seq, &rl, &rq.part)
                })
                .flatten();
            // without regions: the entry's own part in that space, its whole frame
            let best = kept.or_else(|| {
                let off = HEADER_SIZE + slot * ss;
                let view = slot::SlotView::new(&maps.index[off..off + ss], dim);
                let own = view.embedding().get(..w).filter(|_| view.seq() == h.seq)?;
                let norm = own.iter().map(|&x| (x as f32).powi(2)).sum::<f32>().sqrt();
                let dot: f32 = own.iter().zip(&rq.part).map(|(&x, q)| x as f32 * q).sum();
                (norm > 0.0).then(|| dot / norm)
            });
            if let Some(b) = best {
                h.score += rq.lambda * b;
            }
        }
    }

    pub(crate) fn with_slots_and_codes<R>(
        &self,
        f: impl FnOnce(&[u8], &Header, &codes::Codes) -> R,
    ) -> R {
        let maps = self.maps.read().expect("index lock");
        f(&maps.index[HEADER_SIZE..], &self.header, &maps.codes)
    }
}

/// The header of `index.ml` from its first page; a header torn by a crash during its rewrite
/// is read from its staged copy (FORMAT.md, "Upgrading").
/// Says whether it came from the copy (which the writer then puts back in place).
fn header_page(page: &[u8], path: &Path) -> Result<(Header, bool)> {
    let staged = |p: &[u8]| {
        let mut b = [0u8; HEADER_SIZE];
        b[..76].copy_from_slice(p.get(HEADER_COPY..HEADER_COPY + 76)?);
        Header::decode(&b).ok()
    };
    match Header::decode(page) {
        Ok(h) => Ok((h, false)),
        Err(e) => match staged(page) {
            Some(h) => {
                log::warn!(
                    "{}: header torn by a crash during its rewrite; read from its staged copy",
                    path.display()
                );
                Ok((h, true))
            }
            None => Err(e).context(format_args!("{}", path.display())),
        },
    }
}

/// Check the bytes of an index file and its thumbnail file: the slot checks of every open,
/// as a pure function (fuzzed by `tests/fuzz`). Never panics, whatever the bytes.
pub fn verify_bytes(bytes: &[u8], thumbs: &[u8]) -> Result<Report> {
    let h = Header::decode(bytes)?;
    let ss = h.slot_size as usize;
    let mut r = Report::new(h.capacity);
    r.bad_thumbs = Some(0);
    let thumb_crc = |off: u64, len: usize| -> Option<u32> {
        let off = usize::try_from(off).ok()?;
        thumbs.get(off..off.checked_add(len)?).map(crc32)
    };
    for i in 0..h.capacity {
        let off = HEADER_SIZE + i as usize * ss;
        if off + ss > bytes.len() {
            r.truncated_from(i);
            break;
        }
        r.tally(i, &bytes[off..off + ss], &h, Some(&thumb_crc));
    }
    Ok(r)
}

/// Reads until `buf` is full or the reader ends; returns how many bytes it read.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What [`Report::tally`] found in one slot, for a caller that acts on it.
enum Seen {
    Empty,
    Valid(u64),
    Corrupt(slot::Damage),
}

/// Reads the CRC-32 of `len` thumbnail bytes at `offset` (None: they cannot be read).
type ThumbCrc<'a> = &'a dyn Fn(u64, usize) -> Option<u32>;

impl Report {
    fn new(capacity: u64) -> Report {
        Report {
            capacity,
            ..Default::default()
        }
    }

    /// The checks of one slot, counted; with `thumb_crc`, its thumbnail's too.
    fn tally(&mut self, i: u64, bytes: &[u8], h: &Header, thumb_crc: Option<ThumbCrc>) -> Seen {
        match slot::check(bytes, i, h) {
            Slot::Empty => Seen::Empty,
            Slot::Corrupt(damage) => {
                self.corrupt += 1;
                if self.corrupt_slots.len() < 100 {
                    self.corrupt_slots.push(i);
                }
                Seen::Corrupt(damage)
            }
            Slot::Valid {
                entry,
                thumb_len,
                thumb_crc: want,
            } => {
                self.entries += 1;
                if let (Some(read), Some(bad)) = (thumb_crc, self.bad_thumbs.as_mut()) {
                    let ok = thumb_len <= h.thumb_slot
                        && read(i * h.thumb_slot as u64, thumb_len as usize) == Some(want);
                    *bad += u64::from(!ok);
                }
                Seen::Valid(entry.seq)
            }
        }
    }

    /// A truncated file: slot `i` and all after it are gone.
    fn truncated_from(&mut self, i: u64) {
        self.corrupt += self.capacity - i;
        let room = 100 - self.corrupt_slots.len().min(100);
        self.corrupt_slots.extend((i..self.capacity).take(room));
    }
}
