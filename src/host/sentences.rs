//! Embeddings of many texts through one text tower, computed once on all cores and cached.
//!
//! `distill` needs tens of thousands of sentence embeddings (every translation of every
//! training caption through the student, every English caption through the teacher); at
//! ~13 ms a sentence that is minutes, so they are kept in a cache file per tower and output
//! (named by a key over the `tag`: bundle id and output), one row per text, looked up by a
//! hash of the text. Adding lines to a training file computes only the new ones.
//!
//! File layout (u32 and f32 little-endian):
//!
//! ```text
//! 0   8   magic "MLTEXTS2"
//! 8   32  key: sha256(tag)
//! 40  4   rows
//! 44  4   dim
//! 48      rows[rows] = { text: sha256(text)[..16], embedding: f32[dim] }
//! ```
//!
//! Written whole to a temporary name and renamed, so a crash never leaves a half file under
//! the final name; a file whose size or header disagrees is ignored and rewritten.
//! Caches of the first layout ("MLTEXTS1", one file per exact list of texts) are still read
//! when they hold exactly the texts asked for, and their rows are carried over.

use super::progress::Progress;
use crate::encoder::TextEncoder;
use crate::error::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"MLTEXTS2";
const MAGIC_V1: &[u8; 8] = b"MLTEXTS1";
const HEADER: usize = 48;
const TEXT_HASH: usize = 16;

type TextHash = [u8; TEXT_HASH];

fn text_hash(text: &str) -> TextHash {
    Sha256::digest(text.as_bytes())[..TEXT_HASH]
        .try_into()
        .expect("16 bytes")
}

/// Embeddings of `texts` through `tower`, from `cache_dir` when there. `tag` names the
/// tower and output in the key (e.g. the bundle id and "final").
pub fn embed_cached(
    tower: &TextEncoder,
    tag: &str,
    texts: &[String],
    cache_dir: &Path,
    what: &str,
) -> Result<Vec<Vec<f32>>> {
    let key: [u8; 32] = Sha256::digest(tag.as_bytes()).into();
    std::fs::create_dir_all(cache_dir)
        .context(format_args!("cannot create {}", cache_dir.display()))?;
    let path = cache_dir.join(format!("{}.rows", crate::bundle::hex(&key[..12])));
    let hashes: Vec<TextHash> = texts.iter().map(|t| text_hash(t)).collect();
    let mut known = read(&path, &key).unwrap_or_default();
    let before = known.len();
    if !hashes.iter().all(|h| known.contains_key(h)) {
        if let Some(rows) = read_v1(cache_dir, tag, texts) {
            log::info!(
                "{what}: carrying {} rows over from a first-layout cache",
                rows.len()
            );
            known.extend(hashes.iter().copied().zip(rows));
        }
    }
    let cached = hashes.iter().filter(|h| known.contains_key(*h)).count();
    let mut seen = std::collections::HashSet::new();
    let (missing, missing_hashes): (Vec<String>, Vec<TextHash>) = texts
        .iter()
        .zip(&hashes)
        .filter(|(_, h)| !known.contains_key(*h) && seen.insert(**h))
        .map(|(t, h)| (t.clone(), *h))
        .unzip();
    log::info!(
        "{what}: {cached} of {} embeddings from {}, {} distinct to compute",
        texts.len(),
        path.display(),
        missing.len()
    );
    known.extend(
        missing_hashes
            .into_iter()
            .zip(compute(tower, &missing, what)?),
    );
    if known.len() != before {
        write(&path, &key, &known)?;
    }
    Ok(hashes.iter().map(|h| known[h].clone()).collect())
}

fn write(path: &Path, key: &[u8; 32], rows: &HashMap<TextHash, Vec<f32>>) -> Result<()> {
    let dim = rows.values().next().map_or(0, Vec::len);
    if rows.values().any(|r| r.len() != dim) {
        crate::bail!(
            "embeddings of different widths for one cache {}",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(HEADER + rows.len() * (TEXT_HASH + 4 * dim));
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(key);
    bytes.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(dim as u32).to_le_bytes());
    for (h, r) in rows {
        bytes.extend_from_slice(h);
        bytes.extend(r.iter().flat_map(|x| x.to_le_bytes()));
    }
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).context(format_args!("cannot create {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .context(format_args!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).context(format_args!("{}", path.display()))
}

fn u32_at(bytes: &[u8], o: usize) -> usize {
    u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes")) as usize
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read(path: &Path, key: &[u8; 32]) -> Option<HashMap<TextHash, Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC || &bytes[8..40] != key {
        return None;
    }
    let (n, dim) = (u32_at(&bytes, 40), u32_at(&bytes, 44));
    let row = TEXT_HASH + 4 * dim;
    if dim == 0 || bytes.len() != HEADER + n * row {
        return None;
    }
    Some(
        bytes[HEADER..]
            .chunks_exact(row)
            .map(|r| {
                let h: TextHash = r[..TEXT_HASH].try_into().expect("16 bytes");
                (h, floats(&r[TEXT_HASH..]))
            })
            .collect(),
    )
}

/// The rows of a first-layout cache file for exactly `texts` (its name and key were a hash
/// over the tag and every text), if one is there and whole.
fn read_v1(cache_dir: &Path, tag: &str, texts: &[String]) -> Option<Vec<Vec<f32>>> {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update([0]);
    for t in texts {
        h.update(t.as_bytes());
        h.update([0]);
    }
    let key: [u8; 32] = h.finalize().into();
    let path = cache_dir.join(format!("{}.texts", crate::bundle::hex(&key[..12])));
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC_V1 || bytes[8..40] != key {
        return None;
    }
    let (n, dim) = (u32_at(&bytes, 40), u32_at(&bytes, 44));
    if n != texts.len() || dim == 0 || bytes.len() != HEADER + 4 * n * dim {
        return None;
    }
    Some(
        floats(&bytes[HEADER..])
            .chunks(dim)
            .map(<[f32]>::to_vec)
            .collect(),
    )
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

    fn rows(pairs: &[(&str, [f32; 3])]) -> HashMap<TextHash, Vec<f32>> {
        pairs
            .iter()
            .map(|(t, r)| (text_hash(t), r.to_vec()))
            .collect()
    }

    #[test]
    fn the_cache_round_trips_and_a_damaged_file_is_not_read() {
        let dir = std::env::temp_dir().join(format!("moonlens-texts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.rows");
        let key = [7u8; 32];
        let want = rows(&[("a rabbit", [1., 2., 3.]), ("兔子", [4., 5., 6.])]);
        write(&path, &key, &want).unwrap();
        assert_eq!(read(&path, &key).unwrap(), want);
        assert!(read(&path, &[8u8; 32]).is_none(), "other key");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read(&path, &key).is_none(), "truncated");
        let mut other_magic = bytes.clone();
        other_magic[..8].copy_from_slice(MAGIC_V1);
        std::fs::write(&path, &other_magic).unwrap();
        assert!(
            read(&path, &key).is_none(),
            "first layout under the new name"
        );
        // rows of two widths are refused, not written
        let mut mixed = want.clone();
        mixed.insert(text_hash("moon"), vec![1.0]);
        assert!(write(&dir.join("y.rows"), &key, &mixed).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_first_layout_cache_for_the_same_texts_is_carried_over() {
        let dir = std::env::temp_dir().join(format!("moonlens-texts-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let texts = vec!["a".to_string(), "b".to_string()];
        let mut h = Sha256::new();
        h.update(b"tag");
        h.update([0]);
        for t in &texts {
            h.update(t.as_bytes());
            h.update([0]);
        }
        let key: [u8; 32] = h.finalize().into();
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        for v in [1f32, 2., 3., 4., 5., 6.] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let name = dir.join(format!("{}.texts", crate::bundle::hex(&key[..12])));
        std::fs::write(&name, &bytes).unwrap();
        assert_eq!(
            read_v1(&dir, "tag", &texts).unwrap(),
            vec![vec![1., 2., 3.], vec![4., 5., 6.]]
        );
        assert!(read_v1(&dir, "other tag", &texts).is_none());
        assert!(read_v1(&dir, "tag", &texts[..1]).is_none(), "other texts");
        std::fs::write(&name, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read_v1(&dir, "tag", &texts).is_none(), "truncated");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
