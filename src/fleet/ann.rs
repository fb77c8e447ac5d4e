//! Each bundle's approximate-nearest-neighbour index in the fleet database, and the search
//! settings that go with it (docs/fleet.md, "Index choice").
//!
//! One partial index per bundle (`WHERE bundle_id = '…'`) over the embedding cast to the
//! bundle's width, inner product. Two kinds:
//!
//! - **IVFFlat** (the default): k-means lists of the rows; a query scans the `probes` lists
//!   nearest to it. On camera rows — runs of near-identical frames, text queries far from
//!   every image — it finds the exact top 10 where HNSW does not (`bench fleet`). Its lists
//!   are fixed when it is built, so it is rebuilt when the bundle's rows have grown 4x since
//!   (pgvector's starting point: lists = rows / 1000, sqrt(rows) past a million; probes =
//!   sqrt(lists)).
//! - **HNSW** (`--ann hnsw`): a graph that grows with every insert; faster walks, never
//!   rebuilt, but on near-duplicates it reaches the right scenes more often than the right
//!   frames.
//!
//! What was built is recorded in `moonlens_bundles` (`ann_kind`, `ann_rows`, `ann_lists`); a
//! rebuild makes the new index before it drops the old, in one transaction, so searches never
//! lack one.

use super::Db;
use crate::error::Result;

/// Rebuild an IVFFlat index once the bundle's rows reach this multiple of what it was
/// built on.
pub const REBUILD_GROWTH: i64 = 4;

/// pgvector's default HNSW links per node (`m`) and build width (`ef_construction`).
pub const HNSW_M: u32 = 16;
pub const HNSW_EF_CONSTRUCTION: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ann {
    IvfFlat,
    Hnsw { m: u32, ef_construction: u32 },
}

impl Ann {
    /// pgvector's HNSW defaults.
    pub const HNSW: Ann = Ann::Hnsw {
        m: HNSW_M,
        ef_construction: HNSW_EF_CONSTRUCTION,
    };

    pub fn kind(&self) -> &'static str {
        match self {
            Ann::IvfFlat => "ivfflat",
            Ann::Hnsw { .. } => "hnsw",
        }
    }
}

/// Which index a sync leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// None (benchmarks that time the load alone).
    Skip,
    /// The kind the bundle has (kept fresh), IVFFlat when it has none: what the board's push
    /// does, so it never undoes an operator's choice.
    Keep,
    /// This kind (replacing another).
    Use(Ann),
}

/// IVFFlat lists for `rows` (pgvector's starting point).
pub fn lists_for(rows: i64) -> i64 {
    if rows <= 1_000_000 {
        (rows / 1000).max(1)
    } else {
        (rows as f64).sqrt() as i64
    }
}

/// Probes for `lists` lists: sqrt(lists), times 4 when filters (board, time) drop rows after
/// the scan; at most every list.
pub fn probes_for(lists: i64, filtered: bool) -> i64 {
    let p = (lists as f64).sqrt().ceil() as i64 * if filtered { 4 } else { 1 };
    p.clamp(1, lists.max(1))
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    Nothing,
    /// A new index of this kind, over this many rows.
    Index(&'static str, i64),
}

/// Makes sure the bundle's index follows `policy`, building or rebuilding it when due, and
/// refreshes the planner's statistics after a build.
pub fn ensure(db: &mut Db, bundle_id: &str, dim: usize, policy: Policy) -> Result<Built> {
    assert!(bundle_id.len() == 64 && bundle_id.chars().all(|c| c.is_ascii_hexdigit()));
    if policy == Policy::Skip {
        return Ok(Built::Nothing);
    }
    let place = db.place.clone();
    let err = |what: &str, e: postgres::Error| super::error_at(&place, what, &e);
    let row = db
        .client
        .query_one(
            "SELECT ann_kind, ann_rows, ann_m, ann_ef_construction,
                    (SELECT count(*) FROM moonlens_entries WHERE bundle_id = $1)
             FROM moonlens_bundles WHERE bundle_id = $1",
            &[&bundle_id],
        )
        .map_err(|e| err("reading the bundle's index", e))?;
    let (kind, built_rows): (Option<String>, Option<i64>) = (row.get(0), row.get(1));
    let (m, efc): (Option<i32>, Option<i32>) = (row.get(2), row.get(3));
    let rows: i64 = row.get(4);
    let have = match (kind.as_deref(), m, efc) {
        (Some("ivfflat"), ..) => Some(Ann::IvfFlat),
        (Some("hnsw"), Some(m), Some(e)) => Some(Ann::Hnsw {
            m: m as u32,
            ef_construction: e as u32,
        }),
        _ => None,
    };
    let want = match policy {
        Policy::Use(a) => a,
        _ => have.unwrap_or(Ann::IvfFlat),
    };
    let due = match (have, want) {
        (None, _) => true,
        (Some(h), w) if h != w => true,
        (Some(Ann::IvfFlat), _) => rows >= REBUILD_GROWTH * built_rows.unwrap_or(0).max(1),
        (Some(Ann::Hnsw { .. }), _) => false,
    };
    if !due || rows == 0 {
        return Ok(Built::Nothing);
    }
    let short = &bundle_id[..16];
    let name = format!("moonlens_{}_{short}_{rows}", want.kind());
    let (with, lists) = match want {
        Ann::IvfFlat => {
            let l = lists_for(rows);
            (format!("ivfflat ((embedding::vector({dim})) vector_ip_ops) WITH (lists = {l})"), Some(l as i32))
        }
        Ann::Hnsw { m, ef_construction } => (
            format!("hnsw ((embedding::vector({dim})) vector_ip_ops) WITH (m = {m}, ef_construction = {ef_construction})"),
            None,
        ),
    };
    let old: Vec<String> = db
        .client
        .query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'moonlens_entries'
               AND indexname LIKE $1 AND indexname <> $2",
            &[&format!("moonlens\\_%\\_{short}\\_%"), &name],
        )
        .map_err(|e| err("listing the bundle's indexes", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // the build is done in memory when it fits maintenance_work_mem (else on disk, many
    // times slower): raised to 1 GB for the build when the server's is lower (PostgreSQL's
    // default is 64 MB), never lowered
    let kb: i64 = db
        .client
        .query_one(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'",
            &[],
        )
        .map_err(|e| err("reading maintenance_work_mem", e))?
        .get(0);
    let mut tx = db.client.transaction().map_err(|e| err("BEGIN", e))?;
    if kb < 1 << 20 {
        tx.batch_execute("SET LOCAL maintenance_work_mem = '1GB'")
            .map_err(|e| err("raising maintenance_work_mem", e))?;
    }
    tx.batch_execute(&format!(
        "CREATE INDEX {name} ON moonlens_entries USING {with} WHERE bundle_id = '{bundle_id}'"
    ))
    .map_err(|e| err("building the bundle's index", e))?;
    for o in &old {
        tx.batch_execute(&format!("DROP INDEX {o}"))
            .map_err(|e| err("dropping the bundle's old index", e))?;
    }
    let (m, efc) = match want {
        Ann::Hnsw { m, ef_construction } => (Some(m as i32), Some(ef_construction as i32)),
        Ann::IvfFlat => (None, None),
    };
    tx.execute(
        "UPDATE moonlens_bundles SET ann_kind = $2, ann_rows = $3, ann_lists = $4, ann_m = $5,
           ann_ef_construction = $6 WHERE bundle_id = $1",
        &[&bundle_id, &want.kind(), &rows, &lists, &m, &efc],
    )
    .map_err(|e| err("recording the bundle's index", e))?;
    tx.commit().map_err(|e| err("COMMIT", e))?;
    // fresh statistics, without which the planner takes a loaded table for empty
    db.client
        .batch_execute("ANALYZE moonlens_entries")
        .map_err(|e| err("ANALYZE", e))?;
    Ok(Built::Index(want.kind(), rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_probes_follow_pgvectors_starting_points() {
        assert_eq!(lists_for(22), 1);
        assert_eq!(lists_for(100_000), 100);
        assert_eq!(lists_for(1_000_000), 1000);
        assert_eq!(lists_for(4_000_000), 2000);
        assert_eq!(probes_for(100, false), 10);
        assert_eq!(probes_for(100, true), 40);
        assert_eq!(probes_for(1, true), 1);
        assert_eq!(probes_for(4, true), 4);
    }
}
