//! One slot of `index.ml`, byte by byte (FORMAT.md, "Slot"): the field offsets live here
//! and only here. [`SlotView`] reads a slot in place (the scan and the filters go through it
//! without copying); [`encode`] writes one; [`check`] says what recovery makes of one.

use super::{crc32, Entry, Header};

/// Byte ranges of the fixed part of a slot, all little-endian.
pub mod field {
    use std::ops::Range;
    /// Sequence number (the entry's id); 0 = empty slot.
    pub const SEQ: Range<usize> = 0..8;
    /// Capture time, ms since the Unix epoch.
    pub const TS_MS: Range<usize> = 8..16;
    /// f32 scale of the int8 embedding.
    pub const SCALE: Range<usize> = 16..20;
    pub const THUMB_LEN: Range<usize> = 20..24;
    pub const THUMB_CRC: Range<usize> = 24..28;
    /// Bytes used of `SOURCE` and `LABEL` (u8 each); 30..32 stay zero.
    pub const SOURCE_LEN: usize = 28;
    pub const LABEL_LEN: usize = 29;
    pub const SOURCE: Range<usize> = 32..48;
    pub const LABEL: Range<usize> = 48..104;
    /// Where the `dim` int8 values start; the CRC-32 of everything before follows them.
    pub const EMBEDDING: usize = 104;
}

/// Fixed part of a slot before the embedding.
pub const FIXED: usize = field::EMBEDDING;
pub const SOURCE_MAX: usize = field::SOURCE.end - field::SOURCE.start;
pub const LABEL_MAX: usize = field::LABEL.end - field::LABEL.start;

/// Bytes of one slot for embeddings of `dim` values (8-byte aligned).
pub fn size(dim: usize) -> usize {
    (FIXED + dim + 4).div_ceil(8) * 8
}

/// The longest prefix of `s` that fits `max` bytes, cut at a char boundary (what a string
/// field stores, so what a filter on it must compare with).
pub fn fit(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// A slot's bytes, read in place. Field accessors trust nothing but the length: what they
/// return is only meaningful once [`check`] said the slot is valid.
#[derive(Clone, Copy)]
pub struct SlotView<'a> {
    bytes: &'a [u8],
    dim: usize,
}

impl<'a> SlotView<'a> {
    /// `bytes` must be at least [`size`]`(dim)` long (a slot of the ring always is).
    #[inline(always)]
    pub fn new(bytes: &'a [u8], dim: usize) -> SlotView<'a> {
        debug_assert!(bytes.len() >= FIXED + dim + 4);
        SlotView { bytes, dim }
    }

    #[inline(always)]
    fn u32_at(&self, r: std::ops::Range<usize>) -> u32 {
        u32::from_le_bytes(self.bytes[r].try_into().expect("4 bytes"))
    }

    #[inline(always)]
    pub fn seq(&self) -> u64 {
        u64::from_le_bytes(self.bytes[field::SEQ].try_into().expect("8 bytes"))
    }

    #[inline(always)]
    pub fn ts_ms(&self) -> i64 {
        i64::from_le_bytes(self.bytes[field::TS_MS].try_into().expect("8 bytes"))
    }

    #[inline(always)]
    pub fn scale(&self) -> f32 {
        f32::from_bits(self.u32_at(field::SCALE))
    }

    pub fn thumb_len(&self) -> u32 {
        self.u32_at(field::THUMB_LEN)
    }

    pub fn thumb_crc(&self) -> u32 {
        self.u32_at(field::THUMB_CRC)
    }

    /// The stored source bytes (length clamped to the field).
    #[inline(always)]
    pub fn source_bytes(&self) -> &'a [u8] {
        let n = (self.bytes[field::SOURCE_LEN] as usize).min(SOURCE_MAX);
        &self.bytes[field::SOURCE.start..field::SOURCE.start + n]
    }

    pub fn label_bytes(&self) -> &'a [u8] {
        let n = (self.bytes[field::LABEL_LEN] as usize).min(LABEL_MAX);
        &self.bytes[field::LABEL.start..field::LABEL.start + n]
    }

    #[inline(always)]
    pub fn embedding(&self) -> &'a [i8] {
        let b = &self.bytes[field::EMBEDDING..field::EMBEDDING + self.dim];
        // SAFETY: `[u8]` and `[i8]` have the same size and alignment; the result borrows `b`.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const i8, b.len()) }
    }

    fn crc_matches(&self) -> bool {
        let end = FIXED + self.dim;
        self.u32_at(end..end + 4) == crc32(&self.bytes[..end])
    }

    fn is_zero(&self) -> bool {
        self.bytes.iter().all(|&x| x == 0)
    }
}

/// Write `e` into `out` (one whole slot), CRC last.
pub fn encode(e: &Entry, thumb_len: u32, thumb_crc: u32, out: &mut [u8]) {
    let dim = e.embedding.len();
    out.fill(0);
    out[field::SEQ].copy_from_slice(&e.seq.to_le_bytes());
    out[field::TS_MS].copy_from_slice(&e.ts_ms.to_le_bytes());
    out[field::SCALE].copy_from_slice(&e.scale.to_le_bytes());
    out[field::THUMB_LEN].copy_from_slice(&thumb_len.to_le_bytes());
    out[field::THUMB_CRC].copy_from_slice(&thumb_crc.to_le_bytes());
    let source = fit(&e.source, SOURCE_MAX);
    out[field::SOURCE][..source.len()].copy_from_slice(source.as_bytes());
    out[field::SOURCE_LEN] = source.len() as u8;
    let label = fit(&e.label, LABEL_MAX);
    out[field::LABEL][..label.len()].copy_from_slice(label.as_bytes());
    out[field::LABEL_LEN] = label.len() as u8;
    for (d, &v) in out[FIXED..FIXED + dim].iter_mut().zip(&e.embedding) {
        *d = v as u8;
    }
    let crc = crc32(&out[..FIXED + dim]);
    out[FIXED + dim..FIXED + dim + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Why a slot is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    Checksum,
    FieldsOutOfRange,
    NotUtf8,
    /// A valid slot in the wrong place of the ring (its seq belongs elsewhere).
    Misplaced,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Damage::Checksum => "checksum mismatch",
            Damage::FieldsOutOfRange => "fields out of range",
            Damage::NotUtf8 => "strings are not UTF-8",
            Damage::Misplaced => "entry in the wrong slot",
        })
    }
}

/// What a slot holds: nothing yet, a valid entry, or bytes that are not served.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    Empty,
    Valid {
        entry: Entry,
        thumb_len: u32,
        thumb_crc: u32,
    },
    Corrupt(Damage),
}

/// Decode slot bytes on their own (no position check).
pub fn decode(b: &[u8], dim: usize) -> Slot {
    let v = SlotView::new(b, dim);
    if v.is_zero() {
        return Slot::Empty;
    }
    if !v.crc_matches() {
        return Slot::Corrupt(Damage::Checksum);
    }
    let (sl, ll) = (b[field::SOURCE_LEN] as usize, b[field::LABEL_LEN] as usize);
    if v.seq() == 0 || sl > SOURCE_MAX || ll > LABEL_MAX || !v.scale().is_finite() {
        return Slot::Corrupt(Damage::FieldsOutOfRange);
    }
    let (Ok(source), Ok(label)) = (
        std::str::from_utf8(v.source_bytes()),
        std::str::from_utf8(v.label_bytes()),
    ) else {
        return Slot::Corrupt(Damage::NotUtf8);
    };
    Slot::Valid {
        entry: Entry {
            seq: v.seq(),
            ts_ms: v.ts_ms(),
            source: source.to_string(),
            label: label.to_string(),
            scale: v.scale(),
            embedding: v.embedding().to_vec(),
        },
        thumb_len: v.thumb_len(),
        thumb_crc: v.thumb_crc(),
    }
}

/// What recovery makes of slot number `i` of the ring described by `h`: [`decode`] plus the
/// rule that an entry lives in slot `(seq - 1) % capacity`. Every open and `verify` use it.
pub fn check(b: &[u8], i: u64, h: &Header) -> Slot {
    match decode(b, h.dim as usize) {
        Slot::Valid { entry, .. } if (entry.seq - 1) % h.capacity != i => {
            Slot::Corrupt(Damage::Misplaced)
        }
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets FORMAT.md documents: the fields tile the fixed part without overlap.
    #[test]
    fn fields_tile_the_fixed_part() {
        let mut covered = [0u8; FIXED];
        let ranges = [
            field::SEQ,
            field::TS_MS,
            field::SCALE,
            field::THUMB_LEN,
            field::THUMB_CRC,
            field::SOURCE_LEN..field::SOURCE_LEN + 1,
            field::LABEL_LEN..field::LABEL_LEN + 1,
            30..32, // reserved
            field::SOURCE,
            field::LABEL,
        ];
        for r in ranges {
            for b in &mut covered[r] {
                *b += 1;
            }
        }
        assert!(covered.iter().all(|&c| c == 1), "{covered:?}");
        assert_eq!((SOURCE_MAX, LABEL_MAX, size(640)), (16, 56, 752));
    }

    #[test]
    fn encode_then_view_and_decode() {
        let e = Entry {
            seq: 7,
            ts_ms: -5,
            source: "cam0".into(),
            label: "兔子.png".into(),
            scale: 0.25,
            embedding: vec![1, -2, 127, -127],
        };
        let mut b = vec![0u8; size(4)];
        encode(&e, 900, 0xdead_beef, &mut b);
        let v = SlotView::new(&b, 4);
        assert_eq!((v.seq(), v.ts_ms(), v.scale()), (7, -5, 0.25));
        assert_eq!(
            (v.source_bytes(), v.embedding()),
            (&b"cam0"[..], &e.embedding[..])
        );
        assert_eq!(
            decode(&b, 4),
            Slot::Valid {
                entry: e,
                thumb_len: 900,
                thumb_crc: 0xdead_beef
            }
        );
        b[field::LABEL.start] ^= 1;
        assert_eq!(decode(&b, 4), Slot::Corrupt(Damage::Checksum));
    }

    /// The slot CRC is CRC-32/ISO-HDLC: its standard check value, so files written before
    /// and after the switch to `crc32fast` read the same.
    #[test]
    fn crc_is_crc32_iso_hdlc() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn fit_cuts_at_a_char_boundary() {
        assert_eq!(fit("月饼月饼月饼", 16), "月饼月饼月");
        assert_eq!(fit("cam0", 16), "cam0");
    }
}
