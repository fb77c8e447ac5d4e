//! `features.ml`: what the frozen backbones computed for every entry, kept beside its
//! searched embedding (FORMAT.md, "features.ml"). The trained heads are small functions of
//! these outputs, so a new head can re-project the whole ring, and operator tags can train
//! one, without the frames (which are gone: a camera keeps only thumbnails).
//!
//! One slot per ring slot (slot `i` here belongs to slot `i` of `index.ml`), carrying the
//! entry's `seq`: features whose seq differs from the entry's belong to an entry the ring
//! overwrote, or were never written (an index upgraded from format 1), and read as absent.

use super::crc32;

pub const MAGIC: &[u8; 8] = b"MLFEAT\0\0";
pub const HEADER_SIZE: usize = 4096;
/// The widest part this format accepts (EfficientNet-Lite2 pools 1280, ViT-L 1024).
pub const PART_MAX: u32 = 8192;

/// Byte ranges of a features slot, little-endian.
pub mod field {
    use std::ops::Range;
    /// The entry's sequence number; 0 = never written.
    pub const SEQ: Range<usize> = 0..8;
    /// f32 scale of the int8 backbone features.
    pub const FEATURES_SCALE: Range<usize> = 8..12;
    /// f32 scale of the int8 base (training-free) embedding.
    pub const BASE_SCALE: Range<usize> = 12..16;
    /// Where the int8 values start: `features` values, then `base` values, then a CRC-32 of
    /// everything before it.
    pub const VALUES: usize = 16;
}

/// What each slot holds, and whose backbone computed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Width of the backbone's pooled features (the bundle's `[image] features`), 0 if none.
    pub features: u32,
    /// Width of the training-free embedding (`[image] base_output`), 0 if none.
    pub base: u32,
    /// Which backbone: [`crate::bundle::Bundle::backbone_id`] of the bundle that wrote them.
    pub backbone_id: [u8; 32],
}

impl Layout {
    /// Nothing kept (an index made by a test or a benchmark without a model).
    pub const NONE: Layout = Layout {
        features: 0,
        base: 0,
        backbone_id: [0; 32],
    };

    pub fn slot_size(&self) -> usize {
        (field::VALUES + self.features as usize + self.base as usize + 4).div_ceil(8) * 8
    }

    pub fn is_empty(&self) -> bool {
        self.features == 0 && self.base == 0
    }
}

/// The backbone outputs of one frame, dequantized.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub features: Vec<f32>,
    pub base: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub layout: Layout,
    pub capacity: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&super::VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.layout.features.to_le_bytes());
        b[16..20].copy_from_slice(&self.layout.base.to_le_bytes());
        b[20..24].copy_from_slice(&(self.layout.slot_size() as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        b[32..64].copy_from_slice(&self.layout.backbone_id);
        let crc = crc32(&b[0..64]);
        b[64..68].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> crate::Result<Header> {
        if b.len() < HEADER_SIZE || &b[0..8] != MAGIC {
            crate::bail!("not a features file (short or bad magic)");
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        if u32_at(64) != crc32(&b[0..64]) {
            crate::bail!("features header checksum mismatch");
        }
        // format 2 made this file and format 3 did not change it (a format-2 index's is kept)
        if !(2..=super::VERSION).contains(&u32_at(8)) {
            crate::bail!("features file of format version {}", u32_at(8));
        }
        let layout = Layout {
            features: u32_at(12),
            base: u32_at(16),
            backbone_id: b[32..64].try_into().expect("32 bytes"),
        };
        let capacity = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
        if layout.features > PART_MAX
            || layout.base > PART_MAX
            || u32_at(20) as usize != layout.slot_size()
        {
            crate::bail!("features header fields are inconsistent");
        }
        Ok(Header { layout, capacity })
    }
}

/// Write entry `seq`'s backbone outputs into `out` (one whole slot), CRC last.
pub fn encode(seq: u64, kept: &Kept, layout: &Layout, out: &mut [u8]) {
    let (f, b) = (layout.features as usize, layout.base as usize);
    out.fill(0);
    out[field::SEQ].copy_from_slice(&seq.to_le_bytes());
    let (fq, fs) = super::quantize(&kept.features);
    let (bq, bs) = super::quantize(&kept.base);
    out[field::FEATURES_SCALE].copy_from_slice(&fs.to_le_bytes());
    out[field::BASE_SCALE].copy_from_slice(&bs.to_le_bytes());
    let v = field::VALUES;
    for (d, &x) in out[v..v + f].iter_mut().zip(&fq) {
        *d = x as u8;
    }
    for (d, &x) in out[v + f..v + f + b].iter_mut().zip(&bq) {
        *d = x as u8;
    }
    let end = v + f + b;
    let crc = crc32(&out[..end]);
    out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The backbone outputs of entry `seq` in slot bytes `b`: None when the slot holds another
/// entry's, nothing, or fails its checksum (a torn write).
pub fn decode(b: &[u8], seq: u64, layout: &Layout) -> Option<Kept> {
    let (f, n) = (layout.features as usize, layout.base as usize);
    let end = field::VALUES + f + n;
    if b.len() < end + 4 || seq == 0 {
        return None;
    }
    let four = |o: usize| -> [u8; 4] { b[o..o + 4].try_into().expect("4 bytes") };
    let stored_seq = u64::from_le_bytes(b[field::SEQ].try_into().expect("8 bytes"));
    if stored_seq != seq || u32::from_le_bytes(four(end)) != crc32(&b[..end]) {
        return None;
    }
    let scale = |r: std::ops::Range<usize>| f32::from_le_bytes(four(r.start));
    let (fs, bs) = (scale(field::FEATURES_SCALE), scale(field::BASE_SCALE));
    if !fs.is_finite() || !bs.is_finite() {
        return None;
    }
    let values = |from: usize, len: usize, s: f32| -> Vec<f32> {
        b[from..from + len]
            .iter()
            .map(|&x| x as i8 as f32 * s)
            .collect()
    };
    Some(Kept {
        features: values(field::VALUES, f, fs),
        base: values(field::VALUES + f, n, bs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            features: 5,
            base: 3,
            backbone_id: [9; 32],
        }
    }

    #[test]
    fn a_slot_round_trips_and_answers_only_for_its_entry() {
        let l = layout();
        let kept = Kept {
            features: vec![0.0, 1.0, 2.5, 6.0, 0.25],
            base: vec![0.5, -0.5, 0.7],
        };
        let mut b = vec![0u8; l.slot_size()];
        encode(42, &kept, &l, &mut b);
        let got = decode(&b, 42, &l).expect("valid");
        for (a, w) in got.features.iter().zip(&kept.features) {
            assert!((a - w).abs() <= 6.0 / 127.0 / 2.0 + 1e-6, "{a} vs {w}");
        }
        for (a, w) in got.base.iter().zip(&kept.base) {
            assert!((a - w).abs() <= 0.7 / 127.0 / 2.0 + 1e-6, "{a} vs {w}");
        }
        assert_eq!(decode(&b, 41, &l), None, "another entry's features");
        assert_eq!(
            decode(&vec![0u8; l.slot_size()], 42, &l),
            None,
            "never written"
        );
        for i in 0..field::VALUES + 8 + 4 {
            let mut torn = b.clone();
            torn[i] ^= 0x10;
            assert_eq!(decode(&torn, 42, &l), None, "byte {i} flipped");
        }
    }

    #[test]
    fn the_header_round_trips_and_refuses_damage() {
        let h = Header {
            layout: layout(),
            capacity: 77,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b).expect("valid"), h);
        for i in [0, 8, 12, 20, 24, 40, 64] {
            let mut bad = b;
            bad[i] ^= 1;
            assert!(Header::decode(&bad).is_err(), "byte {i} flipped");
        }
        assert!(Header::decode(&b[..100]).is_err());
    }
}
