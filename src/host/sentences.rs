//! Embeddings of many texts through one text tower, computed once on all cores and cached.
//!
//! `distill` needs tens of thousands of sentence embeddings (every translation of every
//! training caption through the student, every English caption through the teacher); at
//! ~13 ms a sentence that is minutes, so they are kept in a cache file named by a key over
//! everything the numbers depend on (bundle id, which tower and output, every text).
//!
//! File layout (u32 and f32 little-endian):
//!
//! ```text
//! 0   8   magic "MLTEXTS1"
//! 8   32  key
//! 40  4   texts
//! 44  4   dim
//! 48      rows[texts][dim]
//! ```
//!
//! Written to a temporary name and renamed, so a crash never leaves a half file under the
//! final name; a file whose size or header disagrees is recomputed.

use super::progress::Progress;
use crate::encoder::TextEncoder;
use crate::error::{Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"MLTEXTS1";
const HEADER: usize = 48;

/// Embeddings of `texts` through `tower`, from `cache_dir` when there. `tag` names the
/// tower and output in the key (e.g. the bundle id and "final").
pub fn embed_cached(
    tower: &TextEncoder,
    tag: &str,
    texts: &[String],
    cache_dir: &Path,
    what: &str,
) -> Result<Vec<Vec<f32>>> {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update([0]);
    for t in texts {
        h.update(t.as_bytes());
        h.update([0]);
    }
    let key: [u8; 32] = h.finalize().into();
    std::fs::create_dir_all(cache_dir)
        .context(format_args!("cannot create {}", cache_dir.display()))?;
    let path = cache_dir.join(format!("{}.texts", crate::bundle::hex(&key[..12])));
    if let Some(rows) = read(&path, &key, texts.len()) {
        log::info!(
            "{what}: {} embeddings reused from {}",
            rows.len(),
            path.display()
        );
        return Ok(rows);
    }
    let rows = compute(tower, texts, what)?;
    let dim = rows.first().map_or(0, Vec::len);
    let mut bytes = Vec::with_capacity(HEADER + 4 * texts.len() * dim);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&key);
    bytes.extend_from_slice(&(texts.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(dim as u32).to_le_bytes());
    for r in &rows {
        bytes.extend(r.iter().flat_map(|x| x.to_le_bytes()));
    }
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).context(format_args!("cannot create {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .context(format_args!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).context(format_args!("{}", path.display()))?;
    Ok(rows)
}

fn read(path: &Path, key: &[u8; 32], texts: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC || &bytes[8..40] != key {
        return None;
    }
    let u = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes")) as usize;
    let (n, dim) = (u(40), u(44));
    if n != texts || dim == 0 || bytes.len() != HEADER + 4 * n * dim {
        return None;
    }
    let floats: Vec<f32> = bytes[HEADER..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some(floats.chunks(dim).map(<[f32]>::to_vec).collect())
}

fn compute(tower: &TextEncoder, texts: &[String], what: &str) -> Result<Vec<Vec<f32>>> {
    let n = texts.len();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let bar = std::sync::Mutex::new(Progress::new(what, n));
    let mut all: Vec<(usize, Result<Vec<f32>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let bar = &bar;
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in (t..n).step_by(threads) {
                        out.push((i, tower.embed(&texts[i])));
                        bar.lock().expect("progress lock").inc(1);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("embedding thread panicked"))
            .collect()
    });
    all.sort_by_key(|(i, _)| *i);
    all.into_iter()
        .map(|(i, r)| r.context(format_args!("text {:?}", texts[i])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_cache_file_is_not_read() {
        let dir = std::env::temp_dir().join(format!("moonlens-texts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.texts");
        let key = [7u8; 32];
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        for v in [1f32, 2., 3., 4., 5., 6.] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            read(&path, &key, 2).unwrap(),
            vec![vec![1., 2., 3.], vec![4., 5., 6.]]
        );
        assert!(read(&path, &[8u8; 32], 2).is_none(), "other key");
        assert!(read(&path, &key, 3).is_none(), "other text count");
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read(&path, &key, 2).is_none(), "truncated");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
