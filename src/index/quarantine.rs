//! Evidence of damage outlives recovery. A slot that fails its checks at open is cleared so
//! that searches (which skip only `seq == 0`) never serve it; before that, its raw bytes
//! are appended to `quarantine.ml` beside the index and synced, so `verify` still reports
//! the damage after any number of restarts (FORMAT.md, "Recovery").
//!
//! Record, little-endian: magic `MLQ1` (4), slot number u64, found at unix ms i64, length
//! u32, the slot's bytes, CRC-32 of everything before it in the record (4). The file is
//! bounded ([`MAX_BYTES`]); the operator removes it once the damage is understood.

use super::crc32;
use crate::error::{Context, Result};
use std::io::Write;
use std::path::Path;

pub const FILE: &str = "quarantine.ml";
const MAGIC: &[u8; 4] = b"MLQ1";
/// At most this many bytes of quarantined slots are kept (thousands of slots).
pub const MAX_BYTES: u64 = 16 << 20;

/// Appends `slots` (slot number, raw bytes) to the quarantine file and syncs it. Refuses
/// when the file would grow past [`MAX_BYTES`].
pub fn keep(dir: &Path, found_ms: i64, slots: &[(u64, &[u8])]) -> Result<()> {
    let path = dir.join(FILE);
    let mut out = Vec::new();
    for (slot, bytes) in slots {
        let start = out.len();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&slot.to_le_bytes());
        out.extend_from_slice(&found_ms.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    let have = std::fs::metadata(&path).map_or(0, |m| m.len());
    if have + out.len() as u64 > MAX_BYTES {
        crate::bail!(
            "{} is full ({have} bytes): move it away to keep further damaged slots",
            path.display()
        );
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(super::disk::FILE_MODE)
        .open(&path)
        .context(format_args!("cannot open {}", path.display()))?;
    f.write_all(&out)
        .and_then(|_| f.sync_all())
        .context(format_args!("writing {}", path.display()))
}

/// The slot numbers of the intact records in `dir`'s quarantine file (none if it is absent);
/// reading stops at the first damaged record.
pub fn slots(dir: &Path) -> Vec<u64> {
    let Ok(bytes) = std::fs::read(dir.join(FILE)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at + 24 <= bytes.len() && &bytes[at..at + 4] == MAGIC {
        let len = u32::from_le_bytes(bytes[at + 20..at + 24].try_into().expect("4")) as usize;
        let end = at + 24 + len;
        let Some(crc) = bytes.get(end..end + 4) else {
            break;
        };
        if crc32(&bytes[at..end]) != u32::from_le_bytes(crc.try_into().expect("4")) {
            break;
        }
        out.push(u64::from_le_bytes(
            bytes[at + 4..at + 12].try_into().expect("8"),
        ));
        at = end + 4;
    }
    out
}
