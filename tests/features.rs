//! Format 2: the frozen backbones' outputs kept beside each entry (`features.ml`), the
//! in-place upgrade of a format-1 index, and the crash-safe header rewrite it relies on.

mod common;
use common::tempdir;
use moonlens::host::crash::{embedding_for, thumb_for, DIM};
use moonlens::index::search::Filter;
use moonlens::index::{Expect, Header, Index, Kept, Layout, HEADER_COPY, HEADER_SIZE, VERSION};
use std::path::Path;

const BUNDLE: [u8; 32] = [7u8; 32];
const LAYOUT: Layout = Layout {
    features: 48,
    base: 24,
    backbone_id: [5u8; 32],
};

fn expect(layout: Layout) -> Expect {
    Expect {
        dim: DIM,
        bundle_id: BUNDLE,
        layout,
        regions: moonlens::index::RegionLayout::NONE,
    }
}

/// Backbone outputs for frame `seq`: pooled features are non-negative (ReLU6), the base
/// embedding is a unit vector.
fn kept_for(seq: u64) -> Kept {
    let features = (0..LAYOUT.features as u64)
        .map(|j| ((seq * 31 + j * 7) % 60) as f32 / 10.0)
        .collect();
    let mut base = embedding_for(seq + 10_000);
    base.truncate(LAYOUT.base as usize);
    Kept { features, base }
}

fn close(got: &Kept, want: &Kept) -> bool {
    let near = |a: &[f32], b: &[f32]| {
        let amax = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= amax / 254.0 + 1e-6)
    };
    near(&got.features, &want.features) && near(&got.base, &want.base)
}

fn append(idx: &Index, seq: u64, with_kept: bool) -> u64 {
    let kept = kept_for(seq);
    idx.append_kept(
        seq as i64,
        "cam0",
        &format!("f{seq}"),
        &embedding_for(seq),
        &thumb_for(seq),
        with_kept.then_some(&kept),
    )
    .unwrap()
}

/// Rewrites the header of `dir/index.ml` as format 1 wrote it and removes `features.ml`:
/// byte for byte what a format-1 moonlensd leaves (the slots did not change).
fn make_format_1(dir: &Path) {
    let path = dir.join("index.ml");
    let mut bytes = std::fs::read(&path).unwrap();
    let mut h = Header::decode(&bytes).unwrap();
    h.version = 1;
    let mut page = h.encode();
    // encode writes the current version: patch it to 1 and re-checksum, as format 1 did
    page[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&page[0..72]);
    page[72..76].copy_from_slice(&crc.to_le_bytes());
    bytes[..HEADER_SIZE].copy_from_slice(&page);
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(dir.join("features.ml")).unwrap();
}

#[test]
fn kept_outputs_follow_their_entry_through_the_ring_and_restarts() {
    let d = tempdir("kept-ring");
    {
        let idx = Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap();
        assert_eq!(idx.header().version, VERSION);
        for seq in 1..=5 {
            assert_eq!(append(&idx, seq, true), seq);
        }
        // stored without (a tool, or a bundle without features): absent, not another's
        append(&idx, 6, false);
        for seq in 1..=5 {
            assert!(
                close(&idx.kept(seq).expect("kept"), &kept_for(seq)),
                "entry {seq}"
            );
        }
        assert_eq!(idx.kept(6), None);
        // the ring comes round: 1..=4 leave, their slots now hold 9..=12
        for seq in 7..=12 {
            append(&idx, seq, true);
        }
        for seq in 1..=4 {
            assert_eq!(idx.kept(seq), None, "entry {seq} left the ring");
        }
        assert!(close(&idx.kept(12).unwrap(), &kept_for(12)));
    }
    let idx = Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap();
    assert!(
        close(&idx.kept(9).unwrap(), &kept_for(9)),
        "kept across a restart"
    );
    assert_eq!(idx.kept(6), None);
    drop(idx);
    let r = Index::verify(&d).unwrap();
    assert_eq!((r.entries, r.corrupt, r.with_features), (8, 0, Some(7)));
}

#[test]
fn a_torn_features_slot_costs_only_that_entrys_features() {
    let d = tempdir("kept-torn");
    {
        let idx = Index::open_or_create_with(&d, 4, &expect(LAYOUT)).unwrap();
        for seq in 1..=3 {
            append(&idx, seq, true);
        }
    }
    let path = d.join("features.ml");
    let mut b = std::fs::read(&path).unwrap();
    b[4096 + LAYOUT.slot_size() + 30] ^= 0x40; // inside entry 2's features
    std::fs::write(&path, b).unwrap();
    let idx = Index::open_or_create_with(&d, 4, &expect(LAYOUT)).unwrap();
    assert_eq!(idx.kept(2), None, "a torn slot reads as absent");
    assert!(idx.kept(1).is_some() && idx.kept(3).is_some());
    assert_eq!(idx.len(), 3, "the entry itself is still served");
    let hits = idx.search(&embedding_for(2), 1, &Filter::default());
    assert_eq!(hits[0].seq, 2);
}

#[test]
fn a_format_1_index_is_upgraded_in_place_and_keeps_every_entry() {
    let d = tempdir("upgrade-v1");
    {
        let idx = Index::open_or_create_with(&d, 16, &expect(LAYOUT)).unwrap();
        for seq in 1..=10 {
            append(&idx, seq, false);
        }
    }
    make_format_1(&d);
    let r = Index::verify(&d).unwrap();
    assert_eq!(
        (r.entries, r.with_features),
        (10, None),
        "format 1 keeps nothing"
    );
    let idx = Index::open_or_create_with(&d, 16, &expect(LAYOUT)).unwrap();
    assert_eq!(idx.header().version, VERSION, "upgraded");
    assert_eq!(idx.len(), 10);
    for seq in 1..=10 {
        let hit = &idx.search(&embedding_for(seq), 1, &Filter::default())[0];
        assert_eq!(hit.seq, seq, "entry {seq} still found");
        assert_eq!(
            idx.kept(seq),
            None,
            "stored before the upgrade: nothing kept"
        );
    }
    assert_eq!(append(&idx, 11, true), 11, "ids go on");
    assert!(close(&idx.kept(11).unwrap(), &kept_for(11)));
    drop(idx);
    let page = std::fs::read(d.join("index.ml")).unwrap();
    assert_eq!(u32::from_le_bytes(page[8..12].try_into().unwrap()), VERSION);
    assert!(
        page[HEADER_COPY..HEADER_SIZE].iter().all(|&x| x == 0),
        "staged copy cleared"
    );
    let r = Index::verify(&d).unwrap();
    assert_eq!((r.entries, r.corrupt, r.with_features), (11, 0, Some(1)));
}

#[test]
fn a_header_torn_mid_rewrite_is_read_from_its_staged_copy() {
    let d = tempdir("torn-header");
    {
        let idx = Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap();
        for seq in 1..=3 {
            append(&idx, seq, true);
        }
    }
    let path = d.join("index.ml");
    let mut b = std::fs::read(&path).unwrap();
    let good: Vec<u8> = b[..76].to_vec();
    // the crash the rewrite guards against: copy staged, header half-written
    b[HEADER_COPY..HEADER_COPY + 76].copy_from_slice(&good);
    b[20..60].fill(0xEE);
    std::fs::write(&path, &b).unwrap();
    let idx = Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap();
    assert_eq!(idx.len(), 3);
    drop(idx);
    let page = std::fs::read(&path).unwrap();
    assert_eq!(&page[..76], &good[..], "the header is put back");
    assert!(
        page[HEADER_COPY..HEADER_SIZE].iter().all(|&x| x == 0),
        "and the copy cleared"
    );
    // without a staged copy, a damaged header is refused as before (never guessed at)
    b[HEADER_COPY..HEADER_COPY + 76].fill(0);
    std::fs::write(&path, &b).unwrap();
    let e = Index::open_or_create_with(&d, 8, &expect(LAYOUT))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("checksum"), "{e}");
}

#[test]
fn an_unreadable_features_file_is_made_anew_and_the_entries_stay() {
    let d = tempdir("features-lost");
    {
        let idx = Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap();
        for seq in 1..=4 {
            append(&idx, seq, true);
        }
    }
    let path = d.join("features.ml");
    let mut b = std::fs::read(&path).unwrap();
    b[3] ^= 0xFF; // bad magic
    std::fs::write(&path, b).unwrap();
    let idx = Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap();
    assert_eq!(idx.len(), 4);
    assert_eq!(idx.kept(1), None);
    append(&idx, 5, true);
    assert!(close(&idx.kept(5).unwrap(), &kept_for(5)));
}

/// Another backbone's outputs under an index this bundle wrote can only be left by a re-index
/// from thumbnails cut short between its two renames (the bundle check comes first): they are
/// of no use to this bundle's head, so the file is made anew and the entries stay.
#[test]
fn another_backbones_features_are_made_anew_and_the_entries_stay() {
    let d = tempdir("features-other");
    {
        let idx = Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap();
        append(&idx, 1, true);
    }
    let other = Layout {
        backbone_id: [6u8; 32],
        ..LAYOUT
    };
    let idx = Index::open_or_create_with(&d, 8, &expect(other)).unwrap();
    assert_eq!(idx.layout(), other);
    assert_eq!(idx.len(), 1);
    assert_eq!(idx.kept(1), None);
    drop(idx);
    // an index made by a tool that kept nothing takes the first backbone that comes
    let d = tempdir("features-none");
    drop(Index::open_or_create_with(&d, 8, &expect(Layout::NONE)).unwrap());
    let idx = Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap();
    assert_eq!(idx.layout(), LAYOUT);
}

#[test]
fn a_newer_format_is_refused_with_what_to_do() {
    let d = tempdir("future");
    drop(Index::open_or_create_with(&d, 8, &expect(LAYOUT)).unwrap());
    let path = d.join("index.ml");
    let mut b = std::fs::read(&path).unwrap();
    b[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&b[0..72]);
    b[72..76].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, b).unwrap();
    let e = Index::open(&d).err().expect("refused");
    assert!(
        e.to_string()
            .contains(&format!("format version {}", VERSION + 1)),
        "{e}"
    );
}

#[test]
fn the_daemon_keeps_what_its_heads_read() {
    // the default bundle's image tower: 1280 pooled features and the 384-d bridge embedding,
    // bound to the backbone the heads were trained on
    let enc = common::encoder();
    let layout = *enc.layout();
    assert_eq!((layout.features, layout.base), (1280, 384));
    assert_eq!(layout.backbone_id, enc.bundle().backbone_id());
    assert_ne!(
        layout.backbone_id,
        enc.bundle().id,
        "heads bundle: the base's backbone"
    );
    let img = image::open(common::root().join("models/samples/badger.png")).unwrap();
    let (emb, kept) = enc
        .encode_images(std::slice::from_ref(&img))
        .unwrap()
        .remove(0);
    assert_eq!(emb, enc.embed_image(&img).unwrap());
    // the same outputs the training reads through the base encoder
    let base = common::base_encoder();
    let bridge = base.embed_image(&img).unwrap();
    assert!(common::cosine(&kept.base, &bridge) > 0.9999);
    let d = tempdir("kept-daemon");
    let ex = Expect {
        dim: enc.dim(),
        bundle_id: enc.bundle().id,
        layout,
        regions: moonlens::index::RegionLayout::NONE,
    };
    let idx = Index::open_or_create_with(&d, 4, &ex).unwrap();
    let id = idx
        .append_kept(1, "cam0", "f", &emb, b"", Some(&kept))
        .unwrap();
    let got = idx.kept(id).unwrap();
    assert!(common::cosine(&got.features, &kept.features) > 0.999);
    assert!(common::cosine(&got.base, &kept.base) > 0.999);
}

/// The head cut out of the bundle's own image tower turns kept outputs back into the
/// embedding the tower computed from the frame: exactly from the f32 outputs, within int8
/// storage from what the index kept.
#[test]
fn kept_outputs_re_project_to_the_towers_embedding() {
    use moonlens::encoder::reproject::Reprojector;
    let enc = common::encoder();
    let layout = *enc.layout();
    let head = Reprojector::load(enc.bundle(), &layout).unwrap();
    let names = ["badger.png", "banana.png", "bee.png", "duck.png"];
    let imgs: Vec<_> = names
        .iter()
        .map(|n| image::open(common::root().join("models/samples").join(n)).unwrap())
        .collect();
    let encoded = enc.encode_images(&imgs).unwrap();
    let kept: Vec<&Kept> = encoded.iter().map(|(_, k)| k).collect();
    let again = head.project(&kept).unwrap();
    let d = tempdir("reproject-kept");
    let ex = Expect {
        dim: enc.dim(),
        bundle_id: enc.bundle().id,
        layout,
        regions: moonlens::index::RegionLayout::NONE,
    };
    let idx = Index::open_or_create_with(&d, 8, &ex).unwrap();
    let mut stored = Vec::new();
    for (e, k) in &encoded {
        let id = idx.append_kept(1, "cam0", "f", e, b"", Some(k)).unwrap();
        stored.push(idx.kept(id).unwrap());
    }
    let from_index = head.project(&stored.iter().collect::<Vec<_>>()).unwrap();
    for (i, (e, _)) in encoded.iter().enumerate() {
        let exact = common::cosine(e, &again[i]);
        let stored = common::cosine(e, &from_index[i]);
        eprintln!(
            "{}: from f32 outputs {exact:.7}, from the index {stored:.7}",
            names[i]
        );
        assert!(exact > 0.99999, "{exact}");
        assert!(stored > 0.999, "{stored}");
    }
}
