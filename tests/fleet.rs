//! Fleet search against a real PostgreSQL 16 + pgvector 0.6 server the test starts on
//! loopback: the server binaries of PyPI's `pgserver` wheel, which bundles both already
//! built (Debian 12 has no pgvector package; `board/dev-setup.sh` fetches the wheel into
//! target/pgserver and, when run as root, adds the `moonlens-pg` user the server runs as).
#![cfg(feature = "fleet")]

mod common;
use common::*;
use moonlens::fleet::ann::{self, Ann, Policy};
use moonlens::fleet::{search, sync, Db};
use moonlens::index::search::Filter;
use moonlens::index::Index;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "fleet-test-pw";

/// A PostgreSQL server in a temporary directory, password-protected, stopped on drop.
struct Postgres {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `bin` run as the server's user (the server refuses root).
fn as_server_user(bin: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=moonlens-pg",
            "--regid=moonlens-pg",
            "--clear-groups",
        ])
        .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    fn start(name: &str) -> Postgres {
        Postgres::start_on(name, free_port())
    }

    fn start_on(name: &str, port: u16) -> Postgres {
        let bin = root().join("target/pgserver/pgserver/pginstall/bin");
        assert!(
            bin.join("postgres").exists(),
            "PostgreSQL with pgvector is missing: run board/dev-setup.sh (the README's test command does)"
        );
        let dir = tempdir(name);
        std::fs::write(dir.join("pw"), PASSWORD).unwrap();
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "moonlens-pg"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "moonlens", "--auth=scram-sha-256", "-E", "UTF8"])
            .arg(format!("--pwfile={}", dir.join("pw").display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let child = as_server_user(&bin.join("postgres"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pg = Postgres {
            child,
            port,
            _dir: dir,
        };
        let t0 = Instant::now();
        while Db::connect(&pg.url()).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "postgres did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn url(&self) -> String {
        format!(
            "postgresql://moonlens:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: the server's fast shutdown, which stops its backends too
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A board's index of real embeddings: each sample image and `views - 1` noisy copies of
/// its embedding (near-duplicate frames), one second apart.
fn board_index(dir: &Path, views: usize, capacity: u64) -> Index {
    let enc = encoder();
    let mut idx = Index::open_or_create(dir, enc.dim(), capacity, enc.bundle().id).expect("index");
    idx.set_durable(false);
    let mut samples: Vec<PathBuf> = std::fs::read_dir(root().join("models/samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    samples.sort();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut noise = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let t0 = 1_790_000_000_000i64;
    let mut n = 0;
    for p in &samples {
        let e = enc.embed_image(&image::open(p).unwrap()).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        for v in 0..views {
            let mut x: Vec<f32> = e.iter().map(|a| a + 0.02 * v as f32 * noise()).collect();
            let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt();
            x.iter_mut().for_each(|a| *a /= norm);
            let source = if v % 2 == 0 { "cam-a" } else { "cam-b" };
            idx.append(
                t0 + n * 1000,
                source,
                &format!("{name}#{v}"),
                &x,
                &[1, 2, 3],
            )
            .unwrap();
            n += 1;
        }
    }
    idx
}

fn count(db: &mut Db, board: &str) -> i64 {
    db.client
        .query_one(
            "SELECT count(*) FROM moonlens_entries WHERE board = $1",
            &[&board],
        )
        .unwrap()
        .get(0)
}

fn plain_sync(db: &mut Db, dir: &Path, board: &str, thumbs: bool) -> sync::Report {
    sync::run(
        db,
        &mut moonlens::index::snapshot::Snapshot::open(dir).unwrap(),
        &sync::Board {
            name: board,
            bundle_name: Some("default"),
            thumbs,
            ann_index: Policy::Keep,
        },
        &mut |_, _| {},
    )
    .unwrap()
}

/// Sync is incremental and idempotent; the database's top-k of one board's data is the
/// board's own exact top-k (HNSW and exact); filters; thumbnails; entries that left the ring
/// stay in the database.
#[test]
fn sync_then_search_equals_the_boards_own_search() {
    let pg = Postgres::start("fleet-pg-a");
    let d = tempdir("fleet-board-a");
    let idx = board_index(&d, 10, 4096);
    let n = idx.len();
    let mut db = Db::connect(&pg.url()).unwrap();

    let r = plain_sync(&mut db, &d, "porch", true);
    assert_eq!((r.sent, r.listed, r.unreadable), (n, n, 0), "{r:?}");
    assert_eq!(r.newest, Some(n));
    let again = plain_sync(&mut db, &d, "porch", true);
    assert_eq!(
        (again.sent, again.listed),
        (0, 0),
        "a second run sends nothing"
    );
    assert_eq!(count(&mut db, "porch"), n as i64);
    let thumbs: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM moonlens_entries WHERE thumb = '\\x010203'::bytea",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(thumbs, n as i64);
    // the bundle's index: IVFFlat first (the default), then HNSW when asked; each usable
    // by a search, the old one dropped, and both answering as the board does
    let enc = encoder();
    let bundle_id = sync::hex(&enc.bundle().id);
    let indexes = |db: &mut Db| -> Vec<String> {
        db.client
            .query(
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'moonlens\\_%\\_' || $1 || '\\_%'",
                &[&&bundle_id[..16]],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    for kind in ["ivfflat", "hnsw"] {
        if kind == "hnsw" {
            let built =
                ann::ensure(&mut db, &bundle_id, enc.dim(), Policy::Use(Ann::HNSW)).unwrap();
            assert_eq!(built, ann::Built::Index("hnsw", n as i64));
        }
        assert_eq!(
            indexes(&mut db),
            [format!("moonlens_{kind}_{}_{n}", &bundle_id[..16])]
        );
        let plan = search::explain(&mut db, &bundle_id, enc.dim(), 10, true).unwrap();
        assert!(plan.contains(&format!("moonlens_{kind}_")), "{plan}");
        // not due again: the same rows, the same kind
        let again = ann::ensure(&mut db, &bundle_id, enc.dim(), Policy::Keep).unwrap();
        assert_eq!(again, ann::Built::Nothing);
        for text in ["a rabbit", "a yellow banana", "an insect on a leaf", "兔子"] {
            let q = enc.embed_text(text).unwrap();
            let board: Vec<u64> = idx
                .search(&q, 10, &Filter::default())
                .iter()
                .map(|h| h.seq)
                .collect();
            for exact in [true, false] {
                let a = search::search(
                    &mut db,
                    enc,
                    &search::Query {
                        text,
                        k: 10,
                        exact,
                        ..Default::default()
                    },
                )
                .unwrap();
                let fleet: Vec<u64> = a.hits.iter().map(|h| h.id).collect();
                assert_eq!(fleet, board, "{kind}: {text} exact={exact}");
                assert_eq!(a.exact, exact);
                assert!(a.hits.iter().all(|h| h.board == "porch"));
            }
        }
    }
    // filters: a time window and a board
    let q = search::Query {
        text: "a rabbit",
        k: 5,
        board: Some("porch"),
        since_ms: Some(1_790_000_000_000 + 50_000),
        until_ms: Some(1_790_000_000_000 + 99_000),
        ..Default::default()
    };
    let a = search::search(&mut db, enc, &q).unwrap();
    assert_eq!(a.hits.len(), 5);
    assert!(a
        .hits
        .iter()
        .all(|h| (1_790_000_050_000..=1_790_000_099_000).contains(&h.ts)));
    let filter = Filter {
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        source: None,
    };
    let board: Vec<u64> = idx
        .search(&enc.embed_text("a rabbit").unwrap(), 5, &filter)
        .iter()
        .map(|h| h.seq)
        .collect();
    assert_eq!(a.hits.iter().map(|h| h.id).collect::<Vec<_>>(), board);
    let e = search::search(
        &mut db,
        enc,
        &search::Query {
            board: Some("garage"),
            ..q.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no rows of board garage"), "{e}");

    // new entries overwrite the ring: the database keeps what left it
    let small = tempdir("fleet-board-ring");
    let ring = board_index(&small, 3, 40);
    assert_eq!(ring.len(), 40);
    let first = plain_sync(&mut db, &small, "shed", false);
    assert_eq!(first.sent, 40);
    let e = encoder().embed_text("a rabbit").unwrap();
    for i in 0..30 {
        ring.append(1_800_000_000_000 + i, "cam-a", "late", &e, &[])
            .unwrap();
    }
    let second = plain_sync(&mut db, &small, "shed", false);
    assert_eq!(second.sent, 30, "{second:?}");
    assert_eq!(
        count(&mut db, "shed"),
        70,
        "entries that left the ring stay"
    );
}

/// A sync killed mid-way resumes where it stopped: after the rerun every entry is in the
/// database once.
#[test]
fn a_killed_sync_resumes_and_never_duplicates() {
    let pg = Postgres::start("fleet-pg-b");
    let d = tempdir("fleet-board-b");
    let n = 40_000u64;
    {
        let mut idx = Index::open_or_create(&d, 384, n, [9u8; 32]).unwrap();
        idx.set_durable(false);
        for s in 1..=n {
            idx.append(
                s as i64,
                "cam",
                &format!("f{s}"),
                &moonlens::host::crash::embedding_for(s),
                &[],
            )
            .unwrap();
        }
    }
    let mut db = Db::connect(&pg.url()).unwrap();
    let sync_cmd = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moonlens-host"));
        c.args(["fleet", "sync", "--board", "yard", "--index"])
            .arg(&d)
            .env("MOONLENS_FLEET_DB", pg.url())
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let mut child = sync_cmd().spawn().unwrap();
    let t0 = Instant::now();
    let mut killed_at = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        killed_at = count(&mut db, "yard");
        if killed_at > 0 {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait().unwrap();
    assert!(
        killed_at > 0 && (killed_at as u64) < n,
        "killed after {killed_at} of {n} rows: the kill must land mid-sync"
    );
    let after_kill = count(&mut db, "yard");
    assert_eq!(after_kill % sync::BATCH as i64, 0, "whole batches only");
    let out = sync_cmd().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(count(&mut db, "yard"), n as i64);
    assert_eq!(r["sent"].as_u64().unwrap(), n - after_kill as u64, "{r}");
    let distinct: i64 = db
        .client
        .query_one(
            "SELECT count(DISTINCT seq) FROM moonlens_entries WHERE board = 'yard'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(distinct, n as i64);
}

/// Bad input: an unreachable database, a wrong password, a query with a bundle the rows do
/// not carry, a bad board name. Clear errors; the board's index is untouched.
#[test]
fn bad_input_gets_clear_errors_and_the_board_loses_nothing() {
    let pg = Postgres::start("fleet-pg-c");
    let d = tempdir("fleet-board-c");
    drop(board_index(&d, 2, 256));
    let before = std::fs::read(d.join("index.ml")).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = |args: &[&str], url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_moonlens-host"))
            .args(args)
            .env("MOONLENS_FLEET_DB", url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let idx = d.to_str().unwrap();
    let sync_args = ["fleet", "sync", "--board", "porch", "--index", idx];
    let e = host(
        &sync_args,
        &format!("postgresql://moonlens:x@127.0.0.1:{dead}/postgres"),
    );
    assert!(e.contains("cannot reach the fleet database"), "{e}");
    let wrong = pg.url().replace(PASSWORD, "not-the-password");
    let e = host(&sync_args, &wrong);
    assert!(e.contains("wrong password"), "{e}");
    assert!(
        !e.contains("not-the-password"),
        "the password is never printed: {e}"
    );
    let e = host(
        &["fleet", "sync", "--board", "porch; drop", "--index", idx],
        &pg.url(),
    );
    assert!(e.contains("--board"), "{e}");
    let e = host(
        &[
            "fleet",
            "sync",
            "--board",
            "porch",
            "--index",
            "/nonexistent",
        ],
        &pg.url(),
    );
    assert!(e.contains("/nonexistent"), "{e}");
    assert_eq!(std::fs::read(d.join("index.ml")).unwrap(), before);

    // rows of another bundle: the default bundle's query is refused, naming theirs
    let other = tempdir("fleet-board-other");
    {
        let mut x = Index::open_or_create(&other, encoder().dim(), 16, [5u8; 32]).unwrap();
        x.set_durable(false);
        x.append(1, "cam", "x", &encoder().embed_text("a cat").unwrap(), &[])
            .unwrap();
    }
    let mut db = Db::connect(&pg.url()).unwrap();
    plain_sync(&mut db, &other, "barn", false);
    // an IVFFlat index is rebuilt once the bundle's rows have grown 4x (its lists are fixed
    // at build), not before
    let built = |db: &mut Db| -> (String, i64) {
        let r = db
            .client
            .query_one(
                "SELECT ann_kind, ann_rows FROM moonlens_bundles WHERE bundle_id LIKE '0505%'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(built(&mut db), ("ivfflat".to_string(), 1));
    let x = Index::open(&other).unwrap();
    for (i, rows) in [(2, 1), (3, 1), (4, 4)] {
        x.append(i, "cam", "x", &encoder().embed_text("a dog").unwrap(), &[])
            .unwrap();
        plain_sync(&mut db, &other, "barn", false);
        assert_eq!(built(&mut db).1, rows, "after {i} rows");
    }
    drop(x);
    let e = host(
        &["fleet", "search", "a", "rabbit", "--board", "barn"],
        &pg.url(),
    );
    assert!(
        e.contains("0505050505050505") && e.contains("--bundle"),
        "{e}"
    );
    // with the default bundle's rows beside, they are searched and the others reported
    plain_sync(&mut db, &d, "porch", false);
    let out = Command::new(env!("CARGO_BIN_EXE_moonlens-host"))
        .args(["fleet", "search", "a rabbit", "--json", "--k", "3"])
        .env("MOONLENS_FLEET_DB", pg.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a["hits"].as_array().unwrap().len(), 3, "{a}");
    assert_eq!(a["hits"][0]["board"], "porch");
    assert!(
        a["hits"][0]["label"]
            .as_str()
            .unwrap()
            .starts_with("rabbit"),
        "{a}"
    );
    assert!(
        a["not_searched"][0]["bundle_id"]
            .as_str()
            .unwrap()
            .starts_with("0505"),
        "{a}"
    );
}

/// The board pushes on its own (`moonlensd --fleet-db`). A database that is not there yet
/// is counted in status while ingest and queries go on; once it answers, every frame the ring
/// holds reaches it and is found there; when it goes away again the daemon keeps serving.
#[test]
fn the_daemon_pushes_its_entries_and_survives_the_database_going_away() {
    let port = free_port();
    let url = format!("postgresql://moonlens:{PASSWORD}@127.0.0.1:{port}/postgres");
    // start() returns once the replay is stored: the database's absence held nothing up
    let d = start(
        "fleet-daemon",
        &[
            "--fleet-db",
            &url,
            "--fleet-board",
            "porch",
            "--fleet-every-s",
            "1",
        ],
    );
    let status = || ask_json(&d.socket, &serde_json::json!({"id": 1, "cmd": "status"})).unwrap();
    let t0 = Instant::now();
    while status()["fleet_failures"].as_u64().unwrap() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", status());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(status()["fleet_sent"], 0);
    let pg = Postgres::start_on("fleet-pg-d", port);
    let t0 = Instant::now();
    while status()["fleet_sent"] != 22 {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", status());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut db = Db::connect(&url).unwrap();
    assert_eq!(count(&mut db, "porch"), 22);
    let thumbs: i64 = db
        .client
        .query_one("SELECT count(thumb) FROM moonlens_entries", &[])
        .unwrap()
        .get(0);
    assert_eq!(thumbs, 0, "without --fleet-thumbs no thumbnail is sent");
    let a = search::search(
        &mut db,
        encoder(),
        &search::Query {
            text: "a rabbit",
            k: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(a.hits[0].label, "rabbit.png", "{:?}", a.hits);
    assert_eq!(
        a.bundle.name.as_deref(),
        Some(encoder().bundle().manifest.name.as_str())
    );
    drop(db);
    let failed = status()["fleet_failures"].as_u64().unwrap();
    drop(pg);
    // gone again: the daemon answers, and counts the failed rounds
    let t0 = Instant::now();
    while status()["fleet_failures"].as_u64().unwrap() == failed {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", status());
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = ask_json(
        &d.socket,
        &serde_json::json!({"id": 2, "cmd": "search", "text": "a banana", "k": 1}),
    )
    .unwrap();
    assert_eq!(hit_labels(&r), ["banana.png"], "{r}");
    assert_eq!(status()["fleet_sent"], 22);
}
