//! Shared by the integration tests: paths and the one default encoder (loaded once).
#![allow(dead_code)]

use moonlens::bundle::Bundle;
use moonlens::encoder::Encoder;
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn default_bundle() -> Bundle {
    Bundle::open(root().join("models/default")).expect("the committed default bundle opens")
}

pub fn encoder() -> &'static Encoder {
    static ENC: OnceLock<Encoder> = OnceLock::new();
    ENC.get_or_init(|| Encoder::load(&default_bundle()).expect("default bundle loads in tract"))
}

/// The default bundle's training-free embeddings (the bridge under its trained heads): what
/// the Python reference fixtures describe.
pub fn base_encoder() -> &'static Encoder {
    static ENC: OnceLock<Encoder> = OnceLock::new();
    ENC.get_or_init(|| {
        Encoder::load_outputs(&default_bundle(), moonlens::encoder::Outputs::Base)
            .expect("default bundle's base outputs load in tract")
    })
}

/// The Tux Paint data fetched by `models/convert/fetch-data.sh` (CI runs it first).
pub fn data_dir() -> PathBuf {
    let d = root().join("data");
    assert!(
        d.join("pairs/test.jsonl").exists(),
        "data/ is missing: run models/convert/fetch-data.sh (the README's test command does)"
    );
    d
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    moonlens::encoder::cosine(a, b)
}

pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moonlens-test-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
