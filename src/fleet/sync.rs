//! Shipping a board's entries to the fleet database.
//!
//! What the database already has is asked, never remembered on the board: the newest seq it
//! holds for this board, ring and bundle. Everything newer is sent in seq order, in batches
//! that each commit on their own (binary COPY into a session table, then one `INSERT … ON
//! CONFLICT DO NOTHING`). So a sync killed anywhere leaves whole batches behind and the next
//! run resumes after the last one; a second run sends nothing; two senders at once (the
//! daemon's push and a manual sync) cannot duplicate a row. Entries that left the ring stay
//! in the database. The board's index is only read ([`crate::index::snapshot`]).

use super::Db;
use crate::error::{Error, Result};
use crate::index::snapshot::{Read, Snapshot};
use crate::index::Header;
use pgvector::Vector;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;

/// Entries per committed batch: large enough that COPY dominates, small enough that a kill
/// loses little work.
pub const BATCH: usize = 2_000;

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub board: String,
    pub ring: i64,
    pub bundle_id: String,
    /// Rows the database did not have and now has.
    pub sent: u64,
    /// Entries newer than the database's, found in the ring.
    pub listed: u64,
    /// Entries the ring overwrote between listing and reading (left the ring first).
    pub left_ring: u64,
    /// Slots the board cannot read (torn twice or corrupt): not sent.
    pub unreadable: u64,
    /// The newest seq the database holds for this board, ring and bundle afterwards.
    pub newest: Option<u64>,
    pub seconds: f64,
    /// Of which building or rebuilding the bundle's approximate index and the statistics.
    pub ann_index_seconds: f64,
}

/// Where the rows come from and what they are called.
pub struct Board<'a> {
    pub name: &'a str,
    /// The bundle's name, recorded beside its id the first time it is seen.
    pub bundle_name: Option<&'a str>,
    pub thumbs: bool,
    /// The bundle's approximate index after sending ([`super::ann`]).
    pub ann_index: super::ann::Policy,
}

/// Syncs an opened index (a daemon may be writing it; the snapshot stays on the file it
/// opened, so one bundle's rows throughout). `progress(done, total)` after each batch.
pub fn run(
    db: &mut Db,
    snap: &mut Snapshot,
    board: &Board,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Report> {
    let t0 = std::time::Instant::now();
    check_board_name(board.name)?;
    let target = Target::new(db, snap.header(), board)?;
    let newest = target.newest(db)?;
    snap.list(newest.unwrap_or(0))?;
    let mut report = target.report(newest);
    report.listed = snap.seqs().len() as u64;
    report.unreadable = snap.unreadable;
    for seqs in snap.seqs().chunks(BATCH) {
        let reads = snap.read(seqs, board.thumbs)?;
        report.left_ring += (seqs.len() - reads.len()) as u64;
        report.sent += target.send(db, &reads)?;
        progress(report.sent + report.left_ring, report.listed);
    }
    report.newest = target.newest(db)?;
    if report.sent > 0 {
        let t = std::time::Instant::now();
        target.ensure_ann_index(db, board.ann_index)?;
        report.ann_index_seconds = t.elapsed().as_secs_f64();
    }
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// A board name is a label in every hit: printable, short, no surprises in SQL or shells.
pub fn check_board_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(format!(
            "--board {name:?}: use 1-64 characters of letters, digits, '-', '_' and '.'"
        )))
    }
}

/// The rows of one board, ring and bundle.
pub struct Target {
    board: String,
    ring: i64,
    bundle_id: String,
    dim: usize,
    vector: Type,
}

impl Target {
    /// Registers the bundle (checking its width against what the database knows).
    pub fn new(db: &mut Db, header: &Header, board: &Board) -> Result<Target> {
        let bundle_id = hex(&header.bundle_id);
        let dim = header.dim as i32;
        let known: i32 = db
            .client
            .query_one(
                "INSERT INTO moonlens_bundles (bundle_id, name, dim) VALUES ($1, $2, $3)
                 ON CONFLICT (bundle_id) DO UPDATE
                   SET name = COALESCE(moonlens_bundles.name, EXCLUDED.name)
                 RETURNING dim",
                &[&bundle_id, &board.bundle_name, &dim],
            )
            .map_err(|e| db.error("registering the bundle", &e))?
            .get(0);
        if known != dim {
            return Err(Error::new(format!(
                "{}: bundle {bundle_id} is recorded with {known} dimensions, this index has {dim}: \
                 the database or the index is damaged",
                db.place
            )));
        }
        let vector = db
            .client
            .prepare("SELECT $1::vector")
            .map_err(|e| db.error("looking up the vector type", &e))?
            .params()[0]
            .clone();
        db.client
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS moonlens_incoming (
                   board text, ring bigint, bundle_id text, seq bigint, ts_ms bigint,
                   source text, label text, embedding vector, thumb bytea
                 ) ON COMMIT DELETE ROWS",
            )
            .map_err(|e| db.error("creating the session table", &e))?;
        Ok(Target {
            board: board.name.to_string(),
            ring: header.created_ms,
            bundle_id,
            dim: header.dim as usize,
            vector,
        })
    }

    fn report(&self, newest: Option<u64>) -> Report {
        Report {
            board: self.board.clone(),
            ring: self.ring,
            bundle_id: self.bundle_id.clone(),
            newest,
            ..Report::default()
        }
    }

    /// The newest seq the database holds for these rows.
    pub fn newest(&self, db: &mut Db) -> Result<Option<u64>> {
        let v: Option<i64> = db
            .client
            .query_one(
                "SELECT max(seq) FROM moonlens_entries WHERE board = $1 AND ring = $2 AND bundle_id = $3",
                &[&self.board, &self.ring, &self.bundle_id],
            )
            .map_err(|e| db.error("reading what the database holds", &e))?
            .get(0);
        Ok(v.map(|s| s as u64))
    }

    /// Sends one batch in one transaction; the rows the database did not have.
    pub fn send(&self, db: &mut Db, reads: &[Read]) -> Result<u64> {
        if reads.is_empty() {
            return Ok(0);
        }
        let place = db.place.clone();
        let err = |what: &str, e: postgres::Error| {
            super::error_at(&place, &format!("sending a batch: {what}"), &e)
        };
        let mut tx = db.client.transaction().map_err(|e| err("BEGIN", e))?;
        let sink = tx
            .copy_in("COPY moonlens_incoming FROM STDIN (FORMAT binary)")
            .map_err(|e| err("COPY", e))?;
        let types = [
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            self.vector.clone(),
            Type::BYTEA,
        ];
        let mut w = BinaryCopyInWriter::new(sink, &types);
        for r in reads {
            let e = &r.entry;
            debug_assert_eq!(e.embedding.len(), self.dim);
            let v = Vector::from(e.dequantized());
            w.write(&[
                &self.board,
                &self.ring,
                &self.bundle_id,
                &(e.seq as i64),
                &e.ts_ms,
                &e.source,
                &e.label,
                &v,
                &r.thumb,
            ])
            .map_err(|e| err("COPY", e))?;
        }
        w.finish().map_err(|e| err("COPY", e))?;
        let n = tx
            .execute(
                "INSERT INTO moonlens_entries
                   (board, ring, bundle_id, seq, ts_ms, source, label, embedding, thumb)
                 SELECT * FROM moonlens_incoming ORDER BY seq
                 ON CONFLICT DO NOTHING",
                &[],
            )
            .map_err(|e| err("INSERT", e))?;
        tx.commit().map_err(|e| err("COMMIT", e))?;
        Ok(n)
    }

    /// The bundle's approximate index, built or rebuilt when due ([`super::ann::ensure`]).
    pub fn ensure_ann_index(&self, db: &mut Db, policy: super::ann::Policy) -> Result<()> {
        super::ann::ensure(db, &self.bundle_id, self.dim, policy).map(|_| ())
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
