//! Any bytes as an index file (and its thumbnails): a report or an error, never a panic.
//! The first bytes choose how the input is split into index and thumbnail parts, and a
//! valid header is prepended half of the time so the slot parser gets exercised too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moonlens::index::{slot, verify_bytes, Header, HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (data[0] as usize * data.len()) / 256;
    let (a, thumbs) = data[1..].split_at(split.min(data.len() - 1));
    if data[0] & 1 == 0 {
        let _ = verify_bytes(a, thumbs);
    } else {
        let dim = 1 + (data[1] as usize % 64);
        let h = Header { version: moonlens::index::VERSION, dim: dim as u32, capacity: 1 + (a.len() / slot::size(dim)) as u64, slot_size: slot::size(dim) as u32, thumb_slot: 64, bundle_id: [0; 32], created_ms: 0 };
        let mut file = h.encode().to_vec();
        assert_eq!(file.len(), HEADER_SIZE);
        file.extend_from_slice(a);
        let _ = verify_bytes(&file, thumbs);
    }
});
