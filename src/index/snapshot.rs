//! Reading an index without its writer lock, while a daemon may be appending to it: what
//! `moonlens-host fleet sync` ships to the fleet database.
//!
//! Nothing here writes. The index file is opened once, so a re-projection that commits
//! meanwhile (a rename over `index.ml`, FORMAT.md) leaves this reader on the old file: one
//! bundle's embeddings throughout. A slot the daemon is rewriting can read torn; its CRC
//! says so, it is read again after a pause, and a slot still bad is counted, not shipped.
//! An entry the ring overwrites between listing and reading (its slot now holds a newer
//! seq) has left the ring; it is counted too.

use super::slot::{self, Slot};
use super::{header_page, Entry, Header, HEADER_SIZE};
use crate::error::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How long a torn slot is given before its second read.
const REREAD_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// An index opened for reading: its header, then the entries newer than a given seq, listed
/// once ([`Snapshot::list`]) and read in batches ([`Snapshot::read`]).
pub struct Snapshot {
    header: Header,
    index: File,
    thumbs: Option<File>,
    /// The seqs to read, ascending.
    seqs: Vec<u64>,
    /// Slots unreadable twice in the listing pass.
    pub unreadable: u64,
}

/// One entry as read, with its thumbnail when asked for and intact.
pub struct Read {
    pub entry: Entry,
    pub thumb: Option<Vec<u8>>,
}

impl Snapshot {
    /// Opens the index in `dir` and reads its header; nothing is listed yet.
    pub fn open(dir: &Path) -> Result<Snapshot> {
        let path = dir.join("index.ml");
        let index = File::open(&path).context(format_args!("cannot read {}", path.display()))?;
        let mut page = vec![0u8; HEADER_SIZE];
        let got =
            read_at(&index, &mut page, 0).context(format_args!("reading {}", path.display()))?;
        let (header, _) = header_page(&page[..got], &path)?;
        let thumbs = File::open(dir.join("thumbs.ml")).ok();
        Ok(Snapshot {
            header,
            index,
            thumbs,
            seqs: Vec::new(),
            unreadable: 0,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The seqs listed, ascending.
    pub fn seqs(&self) -> &[u64] {
        &self.seqs
    }

    fn slot_offset(&self, i: u64) -> u64 {
        HEADER_SIZE as u64 + i * u64::from(self.header.slot_size)
    }

    /// Lists the valid entries whose seq is above `after` (replacing an earlier listing).
    pub fn list(&mut self, after: u64) -> Result<()> {
        self.seqs.clear();
        self.unreadable = 0;
        let ss = self.header.slot_size as usize;
        // a megabyte of slots a read: the listing is one sequential pass over the file
        let per_read = ((1 << 20) / ss).max(1) as u64;
        let mut buf = vec![0u8; per_read as usize * ss];
        let mut torn = Vec::new();
        let mut i = 0;
        while i < self.header.capacity {
            let n = per_read.min(self.header.capacity - i);
            let bytes = &mut buf[..n as usize * ss];
            let got = read_at(&self.index, bytes, self.slot_offset(i))
                .context("reading the index's slots")?;
            for j in 0..n {
                let at = j as usize * ss;
                if at + ss > got {
                    // a truncated file: the rest is gone
                    self.unreadable += self.header.capacity - (i + j);
                    i = self.header.capacity;
                    break;
                }
                match slot::check(&bytes[at..at + ss], i + j, &self.header) {
                    Slot::Valid { entry, .. } if entry.seq > after => self.seqs.push(entry.seq),
                    Slot::Corrupt(_) => torn.push(i + j),
                    _ => {}
                }
            }
            i += n;
        }
        if !torn.is_empty() {
            std::thread::sleep(REREAD_AFTER);
            let mut one = vec![0u8; ss];
            for i in torn {
                let ok = read_at(&self.index, &mut one, self.slot_offset(i))
                    .context("reading the index's slots")?
                    == ss;
                match slot::check(&one, i, &self.header) {
                    Slot::Valid { entry, .. } if ok => {
                        if entry.seq > after {
                            self.seqs.push(entry.seq)
                        }
                    }
                    _ => self.unreadable += 1,
                }
            }
        }
        self.seqs.sort_unstable();
        Ok(())
    }

    /// Reads the entries of `seqs` (a run of [`Snapshot::seqs`]); an entry the ring has
    /// overwritten since the listing is left out (the count of those is `seqs.len()` minus
    /// the entries returned). Thumbnails only when `thumbs`, and only those whose CRC holds.
    pub fn read(&self, seqs: &[u64], thumbs: bool) -> Result<Vec<Read>> {
        let ss = self.header.slot_size as usize;
        let mut one = vec![0u8; ss];
        let mut out = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let i = (seq - 1) % self.header.capacity;
            if read_at(&self.index, &mut one, self.slot_offset(i))
                .context("reading the index's slots")?
                != ss
            {
                continue;
            }
            let Slot::Valid {
                entry,
                thumb_len,
                thumb_crc,
            } = slot::check(&one, i, &self.header)
            else {
                continue;
            };
            if entry.seq != seq {
                continue;
            }
            let thumb = match (&self.thumbs, thumbs && thumb_len > 0) {
                (Some(f), true) if thumb_len <= self.header.thumb_slot => {
                    let mut t = vec![0u8; thumb_len as usize];
                    let at = i * u64::from(self.header.thumb_slot);
                    (read_at(f, &mut t, at).context("reading thumbs.ml")? == t.len()
                        && super::crc32(&t) == thumb_crc)
                        .then_some(t)
                }
                _ => None,
            };
            out.push(Read { entry, thumb });
        }
        Ok(out)
    }
}

/// `pread` until `buf` is full or the file ends; the bytes read.
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
