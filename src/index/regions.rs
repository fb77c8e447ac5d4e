//! `regions.ml` (format 3): the embeddings of a few regions of every frame, in the space of
//! the bundle's training-free (bridge) embedding (`encoder::regions`), so that a search can
//! add a frame's best region match to its global score (FORMAT.md, "regions.ml").
//!
//! One slot per ring slot, carrying the entry's `seq` like `features.ml`: regions whose seq
//! differs from the entry's belong to an entry the ring overwrote, or were never written
//! (an index upgraded from format 2), and read as absent. A search reads them only for the
//! candidates of its global scan, never for the whole ring.

use super::crc32;

pub const MAGIC: &[u8; 8] = b"MLREGN\0\0";
pub const HEADER_SIZE: usize = 4096;
/// The most regions a frame keeps (EfficientNet-Lite0's map has 49 cells).
pub const COUNT_MAX: u32 = 64;
/// The widest region embedding (the bridge is 384 wide).
pub const WIDTH_MAX: u32 = 4096;

/// Byte ranges of a regions slot, little-endian.
pub mod field {
    use std::ops::Range;
    /// The entry's sequence number; 0 = never written.
    pub const SEQ: Range<usize> = 0..8;
    /// How many regions the slot holds (at most the header's count), u32.
    pub const N: Range<usize> = 8..12;
    /// Where the regions start: each an f32 scale, then `width` int8 values; after the
    /// header's `count` of them, a CRC-32 of everything before it.
    pub const REGIONS: usize = 16;
}

/// How many regions each slot holds, how wide, and in whose space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionLayout {
    pub count: u32,
    pub width: u32,
    /// The bundle whose bridge computed them: [`crate::bundle::Bundle::backbone_id`] (the
    /// base bundle under trained heads, which holds the bridge).
    pub space_id: [u8; 32],
}

impl RegionLayout {
    /// No regions (a bundle without a feature map, a tool without a model, `regions = 0`).
    pub const NONE: RegionLayout = RegionLayout {
        count: 0,
        width: 0,
        space_id: [0; 32],
    };

    fn region_size(&self) -> usize {
        4 + self.width as usize
    }

    fn crc_at(&self) -> usize {
        field::REGIONS + self.count as usize * self.region_size()
    }

    pub fn slot_size(&self) -> usize {
        (self.crc_at() + 4).div_ceil(8) * 8
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0 || self.width == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub layout: RegionLayout,
    pub capacity: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&super::VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.layout.count.to_le_bytes());
        b[16..20].copy_from_slice(&self.layout.width.to_le_bytes());
        b[20..24].copy_from_slice(&(self.layout.slot_size() as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.capacity.to_le_bytes());
        b[32..64].copy_from_slice(&self.layout.space_id);
        let crc = crc32(&b[0..64]);
        b[64..68].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> crate::Result<Header> {
        if b.len() < HEADER_SIZE || &b[0..8] != MAGIC {
            crate::bail!("not a regions file (short or bad magic)");
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        if u32_at(64) != crc32(&b[0..64]) {
            crate::bail!("regions header checksum mismatch");
        }
        if u32_at(8) != super::VERSION {
            crate::bail!("regions file of format version {}", u32_at(8));
        }
        let layout = RegionLayout {
            count: u32_at(12),
            width: u32_at(16),
            space_id: b[32..64].try_into().expect("32 bytes"),
        };
        if layout.count > COUNT_MAX
            || layout.width > WIDTH_MAX
            || u32_at(20) as usize != layout.slot_size()
        {
            crate::bail!("regions header fields are inconsistent");
        }
        let capacity = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
        Ok(Header { layout, capacity })
    }
}

/// Write entry `seq`'s regions (at most `layout.count`, each `layout.width` values) into `out`
/// (one whole slot), CRC last. The caller checked the widths.
pub fn encode(seq: u64, regions: &[Vec<f32>], layout: &RegionLayout, out: &mut [u8]) {
    out.fill(0);
    out[field::SEQ].copy_from_slice(&seq.to_le_bytes());
    let n = regions.len().min(layout.count as usize);
    out[field::N].copy_from_slice(&(n as u32).to_le_bytes());
    for (i, r) in regions[..n].iter().enumerate() {
        let at = field::REGIONS + i * layout.region_size();
        let (q, scale) = super::quantize(r);
        out[at..at + 4].copy_from_slice(&scale.to_le_bytes());
        for (d, &x) in out[at + 4..at + layout.region_size()].iter_mut().zip(&q) {
            *d = x as u8;
        }
    }
    let end = layout.crc_at();
    let crc = crc32(&out[..end]);
    out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The regions of entry `seq` in slot bytes `b`, as (scale, int8 values) views: None when
/// the slot holds another entry's, nothing, or fails its checksum (a torn write).
fn regions_of<'a>(
    b: &'a [u8],
    seq: u64,
    layout: &RegionLayout,
) -> Option<impl Iterator<Item = (f32, &'a [u8])> + 'a> {
    let end = layout.crc_at();
    if layout.is_empty() || b.len() < end + 4 || seq == 0 {
        return None;
    }
    let four = |o: usize| -> [u8; 4] { b[o..o + 4].try_into().expect("4 bytes") };
    let stored = u64::from_le_bytes(b[field::SEQ].try_into().expect("8 bytes"));
    let n = u32::from_le_bytes(four(field::N.start)) as usize;
    if stored != seq
        || n > layout.count as usize
        || u32::from_le_bytes(four(end)) != crc32(&b[..end])
    {
        return None;
    }
    let size = layout.region_size();
    Some((0..n).filter_map(move |i| {
        let at = field::REGIONS + i * size;
        let scale = f32::from_le_bytes(four(at));
        scale.is_finite().then(|| (scale, &b[at + 4..at + size]))
    }))
}

/// The regions of entry `seq`, dequantized (None as for a search: absent, another's, torn).
pub fn decode(b: &[u8], seq: u64, layout: &RegionLayout) -> Option<Vec<Vec<f32>>> {
    let regions = regions_of(b, seq, layout)?;
    Some(
        regions
            .map(|(s, v)| v.iter().map(|&x| x as i8 as f32 * s).collect())
            .collect(),
    )
}

/// The best cosine of `query` (unit length, `layout.width` values) with any region of entry
/// `seq`, read in place; None when the slot holds no regions of that entry.
pub fn best_match(b: &[u8], seq: u64, layout: &RegionLayout, query: &[f32]) -> Option<f32> {
    let best = regions_of(b, seq, layout)?
        .map(|(s, v)| {
            let dot: f32 = v.iter().zip(query).map(|(&x, q)| x as i8 as f32 * q).sum();
            dot * s
        })
        .fold(f32::NEG_INFINITY, f32::max);
    best.is_finite().then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> RegionLayout {
        RegionLayout {
            count: 3,
            width: 4,
            space_id: [7; 32],
        }
    }

    fn unit(v: [f32; 4]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn a_slot_round_trips_scores_in_place_and_answers_only_for_its_entry() {
        let l = layout();
        let regions = vec![unit([1.0, 0.0, 0.0, 0.0]), unit([0.0, 1.0, 1.0, 0.0])];
        let mut b = vec![0u8; l.slot_size()];
        encode(9, &regions, &l, &mut b);
        let got = decode(&b, 9, &l).expect("valid");
        assert_eq!(got.len(), 2, "fewer regions than the layout's count");
        for (g, w) in got.iter().zip(&regions) {
            for (a, e) in g.iter().zip(w) {
                assert!((a - e).abs() < 1.0 / 127.0, "{a} vs {e}");
            }
        }
        let best = best_match(&b, 9, &l, &unit([0.0, 1.0, 0.0, 0.0])).unwrap();
        assert!(
            (best - std::f32::consts::FRAC_1_SQRT_2).abs() < 0.01,
            "{best}"
        );
        assert_eq!(best_match(&b, 8, &l, &regions[0]), None, "another entry's");
        assert_eq!(
            decode(&vec![0u8; l.slot_size()], 9, &l),
            None,
            "never written"
        );
        for i in 0..l.slot_size() - 4 {
            let mut torn = b.clone();
            torn[i] ^= 0x04;
            assert_eq!(decode(&torn, 9, &l), None, "byte {i} flipped");
        }
        // more regions than the layout holds: the first `count` are kept
        encode(10, &vec![regions[0].clone(); 5], &l, &mut b);
        assert_eq!(decode(&b, 10, &l).unwrap().len(), 3);
        assert_eq!(decode(&b, 10, &RegionLayout::NONE), None);
    }

    #[test]
    fn the_header_round_trips_and_refuses_damage() {
        let h = Header {
            layout: layout(),
            capacity: 5,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b).expect("valid"), h);
        for i in [0, 8, 12, 16, 20, 24, 40, 64] {
            let mut bad = b;
            bad[i] ^= 1;
            assert!(Header::decode(&bad).is_err(), "byte {i} flipped");
        }
        assert!(Header::decode(&b[..64]).is_err());
        assert_eq!(RegionLayout::NONE.slot_size(), 24);
    }
}
