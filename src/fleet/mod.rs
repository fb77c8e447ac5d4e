//! Fleet search (feature `fleet`): every board's entries in one PostgreSQL database with
//! pgvector, searched there. The boards stay the short-term ring; the database is the
//! long-term archive of every board (docs/fleet.md: schema, index choice, sizing).
//!
//! - [`Db`]: a connection with errors that say what to fix, and the schema, created on first
//!   use and checked on every connect.
//! - [`sync`]: ship a board's entries the database does not have yet, in committed batches
//!   (incremental, resumable after a kill, idempotent).
//! - [`ann`]: each bundle's approximate index (IVFFlat by default, or HNSW), kept fresh.
//! - [`search`]: encode a query with the bundle the rows carry and rank there.

pub mod ann;
pub mod search;
pub mod sync;

use crate::error::{Error, Result};
use postgres::{Client, NoTls};

/// Schema version this build writes and reads (`moonlens_meta`).
pub const SCHEMA: i32 = 1;

/// The tables (docs/fleet.md explains each column). `ring` is the board index's creation
/// time: a board whose index is recreated starts its seqs at 1 again, and its new entries
/// must not collide with the archived ones.
const CREATE: &str = "
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS moonlens_meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO moonlens_meta VALUES ('schema', '1') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS moonlens_bundles (
  bundle_id text PRIMARY KEY,
  name text,
  dim integer NOT NULL CHECK (dim BETWEEN 1 AND 2000),
  ann_kind text,
  ann_rows bigint,
  ann_lists integer,
  ann_m integer,
  ann_ef_construction integer
);
CREATE TABLE IF NOT EXISTS moonlens_entries (
  board text NOT NULL,
  ring bigint NOT NULL,
  bundle_id text NOT NULL REFERENCES moonlens_bundles,
  seq bigint NOT NULL,
  ts_ms bigint NOT NULL,
  ts timestamptz GENERATED ALWAYS AS (to_timestamp(ts_ms / 1000.0)) STORED,
  source text NOT NULL,
  label text NOT NULL,
  embedding vector NOT NULL,
  thumb bytea,
  PRIMARY KEY (board, ring, bundle_id, seq)
);
CREATE INDEX IF NOT EXISTS moonlens_entries_bundle_ts ON moonlens_entries (bundle_id, ts_ms);
";

/// A connection to the fleet database.
pub struct Db {
    pub client: Client,
    /// `user@host:port/db`, never the password: what error messages name.
    pub place: String,
}

impl Db {
    /// Connects and makes sure the schema is there (creating it on first use).
    pub fn connect(url: &str) -> Result<Db> {
        Db::connect_config(&config(url)?)
    }

    /// [`Db::connect`] with the URL already parsed (and perhaps changed: another database).
    pub fn connect_config(cfg: &postgres::Config) -> Result<Db> {
        let place = describe(cfg);
        let client = cfg
            .connect(NoTls)
            .map_err(|e| connect_error(&e, &place, cfg))?;
        let mut db = Db { client, place };
        db.ensure_schema()?;
        Ok(db)
    }

    fn ensure_schema(&mut self) -> Result<()> {
        let exists: bool = self
            .client
            .query_one("SELECT to_regclass('moonlens_meta') IS NOT NULL", &[])
            .map_err(|e| self.error("reading the schema", &e))?
            .get(0);
        if exists {
            let v: Option<String> = self
                .client
                .query_opt("SELECT value FROM moonlens_meta WHERE key = 'schema'", &[])
                .map_err(|e| self.error("reading the schema version", &e))?
                .map(|r| r.get(0));
            if v.as_deref() != Some("1") {
                return Err(Error::new(format!(
                    "{}: fleet schema version {v:?}, this build reads {SCHEMA}: use a matching \
                     moonlens-host or another database",
                    self.place
                )));
            }
        } else {
            self.client.batch_execute(CREATE).map_err(|e| {
                let hint = if e.to_string().contains("vector") {
                    " (the pgvector extension must be installed on the server, and created \
                     once by a superuser: CREATE EXTENSION vector)"
                } else {
                    ""
                };
                self.error(&format!("creating the fleet tables{hint}"), &e)
            })?;
        }
        Ok(())
    }

    /// An error of `what` against this database, naming it.
    pub fn error(&self, what: &str, e: &postgres::Error) -> Error {
        error_at(&self.place, what, e)
    }
}

/// An error of `what` against the database at `place` (for code holding a transaction, which
/// borrows the [`Db`]): the server's own message when it sent one.
pub(crate) fn error_at(place: &str, what: &str, e: &postgres::Error) -> Error {
    let detail = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string());
    Error::new(format!("{place}: {what}: {detail}"))
}

/// The bundle rows carry, as the database knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BundleRows {
    pub bundle_id: String,
    pub name: Option<String>,
    /// Counted only for messages (a count reads every row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<i64>,
    /// The lists of its IVFFlat index (None: it has another kind, or none).
    #[serde(skip)]
    pub ann_lists: Option<i64>,
}

impl std::fmt::Display for BundleRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.name.as_deref().unwrap_or("(unnamed)"),
            &self.bundle_id[..16.min(self.bundle_id.len())],
        )?;
        match self.rows {
            Some(n) => write!(f, " ({n} rows)"),
            None => Ok(()),
        }
    }
}

/// The parsed `--db` URL.
pub fn config(url: &str) -> Result<postgres::Config> {
    url.parse().map_err(|e| {
        Error::new(format!(
            "--db {:?} is not a PostgreSQL URL ({e}); use postgresql://USER:PASSWORD@HOST:PORT/DB",
            redact(url)
        ))
    })
}

fn describe(cfg: &postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgresql://{}@{host}:{port}/{}",
        cfg.get_user().unwrap_or("?"),
        cfg.get_dbname().or(cfg.get_user()).unwrap_or("?")
    )
}

/// The URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn connect_error(e: &postgres::Error, place: &str, cfg: &postgres::Config) -> Error {
    use postgres::error::SqlState;
    if let Some(db) = e.as_db_error() {
        let what = match *db.code() {
            SqlState::INVALID_PASSWORD => format!(
                "wrong password for user {:?}; check the password in --db",
                cfg.get_user().unwrap_or("?")
            ),
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                format!("not allowed in: {}", db.message())
            }
            SqlState::INVALID_CATALOG_NAME => format!(
                "{}; create it (createdb) or name another in --db",
                db.message()
            ),
            _ => db.message().to_string(),
        };
        return Error::new(format!("{place}: {what}"));
    }
    let cause = std::error::Error::source(e)
        .map(|c| format!(": {c}"))
        .unwrap_or_default();
    Error::new(format!(
        "cannot reach the fleet database at {place}: {e}{cause} (is PostgreSQL running there, \
         and are the URL's host and port right?)"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_never_carry_the_password() {
        assert_eq!(
            super::redact("postgresql://ml:s3cret@db:5432/fleet"),
            "postgresql://ml:***@db:5432/fleet"
        );
        assert_eq!(
            super::redact("postgresql://db/fleet"),
            "postgresql://db/fleet"
        );
        let cfg: postgres::Config = "postgresql://ml:s3cret@db:6000/fleet".parse().unwrap();
        assert_eq!(super::describe(&cfg), "postgresql://ml@db:6000/fleet");
    }
}
