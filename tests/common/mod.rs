//! Shared by the integration tests: paths and the one default encoder (loaded once).
#![allow(dead_code)]

use moonlens::bundle::Bundle;
use moonlens::encoder::Encoder;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// The default bundle's training-free embeddings (the bridge under its trained heads) of
/// queries as typed (without the default's query wording, `[text] prefix`): what the Python
/// reference fixtures describe.
pub fn base_encoder() -> &'static Encoder {
    static ENC: OnceLock<Encoder> = OnceLock::new();
    ENC.get_or_init(|| {
        let mut bundle = default_bundle();
        bundle.manifest.text.prefix.clear();
        Encoder::load_outputs(&bundle, moonlens::encoder::Outputs::Base)
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

/// A fresh directory for one test, `moonlens-test-<name>-<pid>` under the temp dir. The
/// first call of a test process removes what earlier test processes left there (their pid
/// is gone): ring files are reserved whole, so a few hundred runs once filled the disk.
pub fn tempdir(name: &str) -> PathBuf {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(remove_dead_runs);
    let d = std::env::temp_dir().join(format!("moonlens-test-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes the `moonlens-test-*` directories of test processes that no longer run.
fn remove_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("moonlens-test-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The real daemon binary replaying `models/samples/` into a fresh index, with a socket;
/// killed on drop.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    _dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(name: &str, extra: &[&str]) -> Daemon {
    start_in(tempdir(name), extra)
}

/// [`start`] in an existing directory (index `dir/index`, socket `dir/d.sock`): a restart.
pub fn start_in(dir: PathBuf, extra: &[&str]) -> Daemon {
    let socket = dir.join("d.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_moonlensd"))
        .current_dir(root())
        .args([
            "--source",
            "dir:models/samples",
            "--no-console",
            "--capacity",
            "1000",
            "--index",
        ])
        .arg(dir.join("index"))
        .arg("--socket")
        .arg(&socket)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        socket,
        _dir: dir,
    };
    let t0 = Instant::now();
    loop {
        if let Ok(st) = ask_json(&d.socket, &json!({"id": 0, "cmd": "status"})) {
            if st["source_done"] == true {
                assert_eq!(st["ingested"], 22, "{st}");
                return d;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "daemon did not finish its replay"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

pub fn ask_json(path: &Path, req: &Value) -> std::io::Result<Value> {
    let mut s = connect(path)?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The labels of a JSON search reply's hits, best first.
pub fn hit_labels(reply: &Value) -> Vec<&str> {
    reply["hits"]
        .as_array()
        .expect("a search reply has hits")
        .iter()
        .map(|h| h["label"].as_str().expect("every hit has a label"))
        .collect()
}

/// The first `n` pairs of `data/pairs/<split>.jsonl`, image paths made absolute.
pub fn pairs_slice(split: &str, n: usize, dir: &Path) -> PathBuf {
    let src = data_dir().join("pairs").join(format!("{split}.jsonl"));
    let base = src.parent().unwrap().to_path_buf();
    let body = std::fs::read_to_string(&src).unwrap();
    let out = dir.join(format!("{split}.jsonl"));
    let mut f = std::fs::File::create(&out).unwrap();
    for line in body.lines().take(n) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let img = base.join(v["image"].as_str().unwrap());
        v["image"] = serde_json::Value::String(img.to_string_lossy().into_owned());
        writeln!(f, "{v}").unwrap();
    }
    out
}
