//! Searching the fleet database: the query is encoded by the bundle the rows carry and
//! ranked by inner product, which is the board's own score (stored embeddings are the
//! board's int8 values times their scale; the board ranks by the same dot product).
//!
//! One bundle per search: rows embedded by another bundle live in another space, so they
//! are never ranked together. A search whose bundle the selected rows do not carry is
//! refused, naming the bundles they do carry; rows of other bundles beside are reported as
//! not searched.
//!
//! The ranking runs on the bundle's approximate index ([`super::ann`]): IVFFlat with
//! `ivfflat.probes` = sqrt(lists), or HNSW with `hnsw.ef_search` at least 40 and twice k;
//! both raised when filters (board, time) may remove candidates after the index's scan. A
//! scan that still returns fewer than k hits is repeated exactly, as is every search asked
//! `exact`.

use super::sync::hex;
use super::{BundleRows, Db};
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use pgvector::Vector;

/// What to look for, and where.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    pub text: &'a str,
    pub board: Option<&'a str>,
    /// Unix ms; rows at or after.
    pub since_ms: Option<i64>,
    /// Unix ms; rows at or before (as the board's `until`).
    pub until_ms: Option<i64>,
    pub k: usize,
    /// Rank every row instead of walking the HNSW graph.
    pub exact: bool,
    /// `hnsw.ef_search` (candidates the walk keeps); None: 2k, at least 40, 400 with filters.
    pub ef: Option<usize>,
    /// `ivfflat.probes` (lists scanned); None: sqrt(lists), 4x with filters.
    pub probes: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hit {
    pub board: String,
    /// The board's entry id.
    pub id: u64,
    pub score: f32,
    #[serde(serialize_with = "crate::protocol::emit::ts_rfc3339")]
    pub ts: i64,
    pub source: String,
    pub label: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Answer {
    pub bundle: BundleRows,
    pub hits: Vec<Hit>,
    /// Rows of other bundles the selection holds: not searched.
    pub not_searched: Vec<BundleRows>,
    /// Whether the hits come from an exact scan.
    pub exact: bool,
    /// The whole search, and of it the query's encoding.
    pub ms: f64,
    pub encode_ms: f64,
}

/// The rows of `moonlens_entries e` that `q`'s filters select ($1 board, $2 since, $3 until).
const SELECTED: &str = "($1::text IS NULL OR e.board = $1)
    AND ($2::bigint IS NULL OR e.ts_ms >= $2)
    AND ($3::bigint IS NULL OR e.ts_ms <= $3)";

/// The bundles some row matching `q`'s filters carries (an index probe per bundle), with
/// their IVFFlat lists.
pub fn present(db: &mut Db, q: &Query) -> Result<Vec<BundleRows>> {
    let rows = db
        .client
        .query(
            &format!(
                "SELECT b.bundle_id, b.name, b.ann_lists FROM moonlens_bundles b
                 WHERE EXISTS (SELECT 1 FROM moonlens_entries e
                               WHERE e.bundle_id = b.bundle_id AND {SELECTED})
                 ORDER BY b.bundle_id"
            ),
            &[&q.board, &q.since_ms, &q.until_ms],
        )
        .map_err(|e| db.error("listing the bundles", &e))?;
    Ok(rows
        .iter()
        .map(|r| BundleRows {
            bundle_id: r.get(0),
            name: r.get(1),
            rows: None,
            ann_lists: r.get::<_, Option<i32>>(2).map(i64::from),
        })
        .collect())
}

/// The bundles the rows matching `q`'s filters carry with their counts, most rows first
/// (reads every matching row: for messages).
pub fn bundles(db: &mut Db, q: &Query) -> Result<Vec<BundleRows>> {
    let rows = db
        .client
        .query(
            &format!(
                "SELECT e.bundle_id, b.name, count(*) FROM moonlens_entries e
                   JOIN moonlens_bundles b USING (bundle_id)
                 WHERE {SELECTED}
                 GROUP BY e.bundle_id, b.name ORDER BY count(*) DESC"
            ),
            &[&q.board, &q.since_ms, &q.until_ms],
        )
        .map_err(|e| db.error("counting the rows", &e))?;
    Ok(rows
        .iter()
        .map(|r| BundleRows {
            bundle_id: r.get(0),
            name: r.get(1),
            rows: Some(r.get(2)),
            ann_lists: None,
        })
        .collect())
}

/// Searches with `enc`, whose bundle must be one the selected rows carry.
pub fn search(db: &mut Db, enc: &Encoder, q: &Query) -> Result<Answer> {
    let t0 = std::time::Instant::now();
    if q.k == 0 || q.k > 1000 {
        return Err(Error::new(format!("--k {}: ask for 1 to 1000 hits", q.k)));
    }
    let ours = hex(&enc.bundle().id);
    let carried = present(db, q)?;
    let Some(bundle) = carried.iter().find(|b| b.bundle_id == ours).cloned() else {
        let carried = bundles(db, q)?;
        let mine = format!("{} {}", enc.bundle().manifest.name, &ours[..16]);
        if carried.is_empty() {
            return Err(Error::new(format!(
                "{}: no rows{} to search; sync a board first (moonlens-host fleet sync)",
                db.place,
                selection(q)
            )));
        }
        let list: Vec<String> = carried.iter().map(ToString::to_string).collect();
        return Err(Error::new(format!(
            "the rows{} carry bundle(s) {}, not {mine}: a query must be encoded by the bundle \
             of the rows it ranks; run again with --bundle DIR of that bundle",
            selection(q),
            list.join(", ")
        )));
    };
    let not_searched = carried
        .into_iter()
        .filter(|b| b.bundle_id != ours)
        .collect();
    let t = std::time::Instant::now();
    let query = Vector::from(enc.embed_text(q.text)?);
    let encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let filtered = q.board.is_some() || q.since_ms.is_some() || q.until_ms.is_some();
    let mut hits = None;
    if !q.exact {
        let auto = if filtered { 400 } else { (2 * q.k).max(40) };
        let ef = q.ef.unwrap_or(auto).max(q.k).min(1000);
        let lists = bundle.ann_lists.unwrap_or(1);
        let probes = q
            .probes
            .map_or(super::ann::probes_for(lists, filtered), |p| p as i64)
            .clamp(1, lists.max(1));
        let got = rank(db, q, &ours, enc.dim(), &query, Some((ef, probes)))?;
        // fewer than k: filters removed candidates after the walk, or the table holds
        // fewer rows; the exact scan tells which
        if got.len() >= q.k {
            hits = Some(got);
        }
    }
    let exact = hits.is_none();
    let hits = match hits {
        Some(h) => h,
        None => rank(db, q, &ours, enc.dim(), &query, None)?,
    };
    Ok(Answer {
        bundle,
        hits,
        not_searched,
        exact,
        ms: t0.elapsed().as_secs_f64() * 1e3,
        encode_ms,
    })
}

fn selection(q: &Query) -> String {
    let mut s = String::new();
    if let Some(b) = q.board {
        s += &format!(" of board {b}");
    }
    if q.since_ms.is_some() || q.until_ms.is_some() {
        s += " in that time";
    }
    s
}

/// The top k of one bundle's rows: on its approximate index (`hnsw.ef_search`,
/// `ivfflat.probes`) or exact.
fn rank(
    db: &mut Db,
    q: &Query,
    bundle_id: &str,
    dim: usize,
    query: &Vector,
    approx: Option<(usize, i64)>,
) -> Result<Vec<Hit>> {
    // the bundle id is written into the statement (64 hex digits, checked) so the planner
    // can match the bundle's partial index; everything else is a parameter
    assert!(bundle_id.len() == 64 && bundle_id.chars().all(|c| c.is_ascii_hexdigit()));
    let place = db.place.clone();
    let err = |e: postgres::Error| super::error_at(&place, "searching", &e);
    let mut tx = db.client.transaction().map_err(err)?;
    let settings = match approx {
        Some((ef, probes)) => {
            format!("SET LOCAL hnsw.ef_search = {ef}; SET LOCAL ivfflat.probes = {probes}")
        }
        None => "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off".into(),
    };
    tx.batch_execute(&settings).map_err(err)?;
    let sql = format!(
        "SELECT board, seq, ts_ms, source, label, (embedding::vector({dim}) <#> $1) AS d
         FROM moonlens_entries
         WHERE bundle_id = '{bundle_id}'
           AND ($2::text IS NULL OR board = $2)
           AND ($3::bigint IS NULL OR ts_ms >= $3)
           AND ($4::bigint IS NULL OR ts_ms <= $4)
         ORDER BY embedding::vector({dim}) <#> $1
         LIMIT $5"
    );
    let rows = tx
        .query(
            &sql,
            &[query, &q.board, &q.since_ms, &q.until_ms, &(q.k as i64)],
        )
        .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(rows
        .iter()
        .map(|r| Hit {
            board: r.get(0),
            id: r.get::<_, i64>(1) as u64,
            ts: r.get(2),
            source: r.get(3),
            label: r.get(4),
            // `<#>` is the negative inner product
            score: -(r.get::<_, f64>(5) as f32),
        })
        .collect())
}

/// The query plan of a search; with `no_seqscan` the plan the planner picks when a scan
/// of the table is ruled out (on a small table it prefers the scan, rightly): whether the
/// bundle's HNSW index can answer at all.
pub fn explain(
    db: &mut Db,
    bundle_id: &str,
    dim: usize,
    k: usize,
    no_seqscan: bool,
) -> Result<String> {
    assert!(bundle_id.len() == 64 && bundle_id.chars().all(|c| c.is_ascii_hexdigit()));
    let zero = Vector::from(vec![0.0f32; dim]);
    let mut tx = db
        .client
        .transaction()
        .map_err(|e| Error::new(e.to_string()))?;
    if no_seqscan {
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off")
            .map_err(|e| Error::new(e.to_string()))?;
    }
    let rows = tx
        .query(
            &format!(
                "EXPLAIN SELECT seq FROM moonlens_entries WHERE bundle_id = '{bundle_id}'
                 ORDER BY embedding::vector({dim}) <#> $1 LIMIT $2"
            ),
            &[&zero, &(k as i64)],
        )
        .map_err(|e| Error::new(format!("explaining a search: {e}")))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}
