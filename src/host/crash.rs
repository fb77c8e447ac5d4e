//! The writer side of the crash-safety harness: a process that appends as fast as it can and
//! prints `acked <seq>` after each append returns (i.e. after the flush). The test kills it
//! with SIGKILL at random moments and checks every acknowledged entry on reopen.

use crate::error::Result;
use crate::index::Index;
use std::io::Write;
use std::path::Path;

pub const DIM: usize = 384;

/// The embedding the harness stores for `seq`: deterministic, L2-normalized, distinct.
pub fn embedding_for(seq: u64) -> Vec<f32> {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

pub fn thumb_for(seq: u64) -> Vec<u8> {
    (0..(seq % 200 + 1) as usize)
        .map(|i| (seq as usize + i) as u8)
        .collect()
}

/// What the harness keeps of each frame's regions (`regions.ml`, format 3).
pub const REGIONS: crate::index::RegionLayout = crate::index::RegionLayout {
    count: 2,
    width: 16,
    space_id: [8u8; 32],
};

/// The regions the harness stores for `seq`: two unit vectors, deterministic and distinct.
pub fn regions_for(seq: u64) -> Vec<Vec<f32>> {
    [777, 999]
        .iter()
        .map(|k| {
            let v = &embedding_for(seq * 3 + k)[..REGIONS.width as usize];
            let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter().map(|a| a / n).collect()
        })
        .collect()
}

pub fn writer(dir: &Path, capacity: u64, count: u64) -> Result<()> {
    let expect = crate::index::Expect {
        dim: DIM,
        bundle_id: [7u8; 32],
        layout: crate::index::Layout::NONE,
        regions: REGIONS,
    };
    let idx = Index::open_or_create_with(dir, capacity, &expect)?;
    let out = std::io::stdout();
    for _ in 0..count {
        let seq = idx.head() + 1;
        let got = idx.append_frame(
            seq as i64,
            "crash",
            &format!("frame-{seq}"),
            &embedding_for(seq),
            &thumb_for(seq),
            None,
            Some(&regions_for(seq)),
        )?;
        assert_eq!(got, seq);
        let mut o = out.lock();
        let _ = writeln!(o, "acked {seq}");
        let _ = o.flush();
    }
    Ok(())
}
