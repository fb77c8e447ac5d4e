//! Format 3: a few region embeddings of each frame kept beside the entry (`regions.ml`), the
//! search that adds a candidate's best region match to its global score, the in-place
//! upgrade of a format-2 index, and the daemon's ingest keeping them.

mod common;
use common::*;
use moonlens::index::search::{Filter, Mode, RegionQuery};
use moonlens::index::{Expect, Header, Index, Layout, RegionLayout, HEADER_SIZE, VERSION};
use std::path::Path;

const DIM: usize = 16;
const BUNDLE: [u8; 32] = [3u8; 32];
const REGIONS: RegionLayout = RegionLayout {
    count: 2,
    width: 4,
    space_id: [4u8; 32],
};

fn expect(regions: RegionLayout) -> Expect {
    Expect {
        dim: DIM,
        bundle_id: BUNDLE,
        layout: Layout::NONE,
        regions,
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// A unit embedding whose first values are `head` and the rest spread over the other axes.
fn embedding(head: &[f32]) -> Vec<f32> {
    let rest = (1.0 - head.iter().map(|x| x * x).sum::<f32>())
        .max(0.0)
        .sqrt();
    let mut v = head.to_vec();
    v.resize(DIM, 0.0);
    v[DIM - 1] = rest;
    v
}

fn append(idx: &Index, head: &[f32], regions: Option<&[Vec<f32>]>) -> u64 {
    idx.append_frame(0, "cam0", "f", &embedding(head), b"jpeg", None, regions)
        .unwrap()
}

fn query() -> (Vec<f32>, RegionQuery) {
    let q = embedding(&[1.0]);
    let part = unit(&q[..4]);
    (q, RegionQuery { part, lambda: 0.1 })
}

#[test]
fn the_best_region_lifts_a_frame_and_a_frame_without_regions_is_its_own() {
    let d = tempdir("regions-search");
    let idx = Index::open_or_create_with(&d, 8, &expect(REGIONS)).unwrap();
    // a: global 0.50 and a region that is the query's; b: global 0.55, regions elsewhere;
    // c: global 0.52 without regions, its own first values at cosine 0.866 to the query's
    let a = append(
        &idx,
        &[0.5],
        Some(&[unit(&[0.0, 1.0, 0.0, 0.0]), unit(&[1.0, 0.0, 0.0, 0.0])]),
    );
    let b = append(&idx, &[0.55], Some(&[unit(&[0.0, 0.0, 1.0, 0.0])]));
    let c = append(&idx, &[0.52, 0.3], None);
    let (q, rq) = query();
    let plain = idx.search_with(&q, 3, &Filter::default(), Mode::Exact, None);
    assert_eq!(plain.iter().map(|h| h.seq).collect::<Vec<_>>(), [b, c, a]);
    let hits = idx.search_with(&q, 3, &Filter::default(), Mode::Exact, Some(&rq));
    let got: Vec<(u64, f32)> = hits.iter().map(|h| (h.seq, h.score)).collect();
    assert_eq!(
        got.iter().map(|h| h.0).collect::<Vec<_>>(),
        [c, a, b],
        "{got:?}"
    );
    for (seq, want) in [(c, 0.52 + 0.1 * 0.866), (a, 0.5 + 0.1), (b, 0.55)] {
        let s = got.iter().find(|h| h.0 == seq).unwrap().1;
        assert!((s - want).abs() < 0.01, "entry {seq}: {s} vs {want}");
    }
    // k is still k, and weight 0 is the plain ranking
    assert_eq!(
        idx.search_with(&q, 1, &Filter::default(), Mode::Exact, Some(&rq))
            .len(),
        1
    );
    let off = RegionQuery { lambda: 0.0, ..rq };
    assert_eq!(
        idx.search_with(&q, 3, &Filter::default(), Mode::Exact, Some(&off)),
        plain
    );
}

#[test]
fn regions_follow_their_entry_through_the_ring_restarts_and_damage() {
    let d = tempdir("regions-ring");
    let r = |seq: u64| vec![unit(&[1.0, seq as f32, 0.0, 0.0])];
    {
        let idx = Index::open_or_create_with(&d, 4, &expect(REGIONS)).unwrap();
        assert_eq!(
            (idx.header().version, idx.region_layout()),
            (VERSION, REGIONS)
        );
        for seq in 1..=6 {
            assert_eq!(append(&idx, &[0.1], Some(&r(seq))), seq);
        }
        assert_eq!(idx.regions(2), None, "left the ring");
        let got = idx.regions(5).unwrap();
        assert!(cosine(&got[0], &r(5)[0]) > 0.999);
        // regions of another width are left out, the entry is stored
        let seq = append(&idx, &[0.1], Some(&[vec![1.0; 3]]));
        assert!(idx.get(seq).is_some() && idx.regions(seq).is_none());
    }
    let idx = Index::open_or_create_with(&d, 4, &expect(REGIONS)).unwrap();
    assert!(
        cosine(&idx.regions(6).unwrap()[0], &r(6)[0]) > 0.999,
        "across a restart"
    );
    drop(idx);
    let v = Index::verify(&d).unwrap();
    assert_eq!((v.entries, v.with_regions), (4, Some(3)));
    // a torn regions slot costs that entry's regions only: entry 6 lives in slot 1
    let path = d.join("regions.ml");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[moonlens::index::regions::HEADER_SIZE + REGIONS.slot_size() + 20] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let idx = Index::open_or_create_with(&d, 4, &expect(REGIONS)).unwrap();
    assert_eq!(idx.regions(6), None);
    assert!(idx.get(6).is_some() && idx.regions(5).is_some());
    let (q, rq) = query();
    assert_eq!(
        idx.search_with(&q, 10, &Filter::default(), Mode::Exact, Some(&rq))
            .len(),
        4
    );
    drop(idx);
    // a damaged header: the file is made anew, every entry still served
    bytes[12] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let idx = Index::open_or_create_with(&d, 4, &expect(REGIONS)).unwrap();
    assert_eq!((idx.len(), idx.regions(5)), (4, None));
    // a bundle that keeps other regions: made anew for it
    drop(idx);
    let other = RegionLayout {
        count: 3,
        ..REGIONS
    };
    let idx = Index::open_or_create_with(&d, 4, &expect(other)).unwrap();
    assert_eq!(idx.region_layout(), other);
}

/// Rewrites `dir/index.ml`'s header as format 2 wrote it and removes `regions.ml`: what a
/// format-2 moonlensd leaves (slots and `features.ml` are the same in both formats).
fn make_format_2(dir: &Path) {
    let path = dir.join("index.ml");
    let mut bytes = std::fs::read(&path).unwrap();
    let h = Header::decode(&bytes).unwrap();
    let mut page = h.encode();
    page[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&page[0..72]);
    page[72..76].copy_from_slice(&crc.to_le_bytes());
    bytes[..HEADER_SIZE].copy_from_slice(&page);
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(dir.join("regions.ml")).unwrap();
    // format 2 wrote its own version into features.ml's header
    let fpath = dir.join("features.ml");
    let mut f = std::fs::read(&fpath).unwrap();
    f[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&f[0..64]);
    f[64..68].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&fpath, f).unwrap();
}

const FEATURES: Layout = Layout {
    features: 8,
    base: 4,
    backbone_id: [4u8; 32],
};

#[test]
fn a_format_2_index_is_upgraded_in_place_and_its_entries_searched_whole() {
    let d = tempdir("regions-upgrade");
    let ex = Expect {
        layout: FEATURES,
        ..expect(REGIONS)
    };
    let kept = moonlens::index::Kept {
        features: vec![0.5; 8],
        base: unit(&[1.0, 2.0, 3.0, 4.0]),
    };
    {
        let idx = Index::open_or_create_with(&d, 8, &ex).unwrap();
        idx.append_kept(0, "cam0", "f", &embedding(&[0.5]), b"", Some(&kept))
            .unwrap();
        append(&idx, &[0.6], None);
    }
    make_format_2(&d);
    let v = Index::verify(&d).unwrap();
    assert_eq!(
        (v.entries, v.with_regions),
        (2, None),
        "format 2 has no regions"
    );
    {
        let idx = Index::open_or_create_with(&d, 8, &ex).unwrap();
        assert_eq!(idx.header().version, VERSION);
        assert_eq!((idx.len(), idx.region_layout()), (2, REGIONS));
        assert_eq!(idx.regions(1), None);
        // the format-2 features.ml is kept, with what it held
        let k = idx.kept(1).expect("kept outputs survive the upgrade");
        assert!(cosine(&k.base, &kept.base) > 0.999);
        let seq = append(&idx, &[0.4], Some(&[unit(&[1.0, 0.0, 0.0, 0.0])]));
        assert!(idx.regions(seq).is_some());
        let (q, rq) = query();
        let hits = idx.search_with(&q, 3, &Filter::default(), Mode::Exact, Some(&rq));
        assert_eq!(hits.len(), 3);
    }
    let on_disk = Header::decode(&std::fs::read(d.join("index.ml")).unwrap()).unwrap();
    assert_eq!(on_disk.version, 3);
    let v = Index::verify(&d).unwrap();
    assert_eq!((v.entries, v.with_regions), (3, Some(1)));
    // a crash after regions.ml was made but before the header said so: the next open
    // finishes the upgrade (and keeps what regions.ml holds)
    let mut bytes = std::fs::read(d.join("index.ml")).unwrap();
    let mut page = Header::decode(&bytes).unwrap().encode();
    page[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&page[0..72]);
    page[72..76].copy_from_slice(&crc.to_le_bytes());
    bytes[..HEADER_SIZE].copy_from_slice(&page);
    std::fs::write(d.join("index.ml"), bytes).unwrap();
    let idx = Index::open_or_create_with(&d, 8, &ex).unwrap();
    assert_eq!(idx.header().version, VERSION);
    assert!(idx.regions(3).is_some() && idx.kept(1).is_some());
}

/// The daemon's ingest with the default bundle keeps the 16 most confident regions of each
/// frame, and a search with them still finds each sample by its name.
#[test]
fn the_daemon_keeps_regions_of_each_frame_and_searches_with_them() {
    use moonlens::daemon::{ingest, region_layout, RegionPolicy, Shared};
    use std::sync::Arc;
    let bundle = default_bundle();
    let enc = moonlens::daemon::load_encoder(&bundle, true).unwrap();
    let layout = region_layout(&enc, RegionPolicy::DEFAULT.keep);
    assert_eq!((layout.count, layout.width), (16, 384));
    assert_eq!(layout.space_id, bundle.backbone_id());
    let ex = Expect {
        dim: enc.dim(),
        bundle_id: bundle.id,
        layout: *enc.layout(),
        regions: layout,
    };
    let idx = Index::open_or_create_with(&tempdir("regions-daemon"), 64, &ex).unwrap();
    let s = Arc::new(Shared::new(
        enc,
        idx,
        "dir",
        std::time::Duration::from_secs(60),
    ));
    let src = moonlens::source::dir::DirSource::open(
        root().join("models/samples").to_str().unwrap(),
        std::time::Duration::ZERO,
        false,
    )
    .unwrap();
    ingest::start(s.clone(), Box::new(src), ingest::Gates::OFF, 2);
    let t0 = std::time::Instant::now();
    while !s.source_done() {
        assert!(t0.elapsed().as_secs() < 120, "ingest did not finish");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let n = s.index().len();
    assert_eq!(n, 22);
    for seq in 1..=n {
        assert_eq!(
            s.index().regions(seq).map(|r| r.len()),
            Some(16),
            "entry {seq}"
        );
    }
    // each sample by its file name: found first as often as by the global score alone, or
    // more often (measured: 20 of 22 against 18)
    let (mut with, mut without) = (0, 0);
    for f in std::fs::read_dir(root().join("models/samples")).unwrap() {
        let file = f.unwrap().file_name().into_string().unwrap();
        let Some(stem) = file.strip_suffix(".png") else {
            continue;
        };
        let name = stem.trim_end_matches('2').replace('_', " ");
        let (reply, _) =
            s.answer(format!(r#"{{"cmd":"search","text":"{name}","k":1}}"#).as_bytes());
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        with += usize::from(hit_labels(&v) == [file.as_str()]);
        let q = s.encoder().embed_text(&name).unwrap();
        let plain = s.index().search(&q, 1, &Filter::default());
        let label = s.index().get(plain[0].seq).unwrap().label;
        without += usize::from(label == file);
    }
    assert!(
        with >= without && with >= 19,
        "with regions {with}, without {without}"
    );
}
