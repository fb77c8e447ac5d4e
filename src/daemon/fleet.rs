//! The board pushing its own entries to the fleet database (`--fleet-db URL`, feature
//! `fleet`), the same rows `moonlens-host fleet sync` sends ([`crate::fleet::sync`]).
//!
//! One thread, woken every `--fleet-every-s`: it asks the database for the newest seq it
//! holds of this board, ring and bundle, and sends what is newer in batches of
//! [`BATCH`], each read from the ring under its read lock for the time of a copy (ingest
//! appends meanwhile) and committed on its own. Ingest and queries never wait for the
//! database: a database away or refusing costs a failed round, counted (`fleet_failures` in
//! status) and logged, then retried with a backoff from the interval doubling to
//! [`MAX_BACKOFF`]; what the ring still holds is sent once it answers again. Entries
//! overwritten in the ring before the database came back are lost to it (the ring is
//! bounded; status says how many rounds failed).

use super::Shared;
use crate::fleet::ann::Policy;
use crate::fleet::sync::{self, Board, Target};
use crate::fleet::Db;
use crate::index::snapshot::Read;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Entries per committed batch from the board (smaller than the host's: the board's memory).
pub const BATCH: usize = 500;
/// The longest wait between rounds while the database fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Where and how often to push.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub board: String,
    pub every: Duration,
    pub thumbs: bool,
}

impl Settings {
    /// Checks what can be checked before anything starts: the URL's form, the board name.
    pub fn check(&self) -> crate::Result<()> {
        crate::fleet::config(&self.url)?;
        sync::check_board_name(&self.board)?;
        if self.every.is_zero() {
            crate::bail!("--fleet-every-s must be at least 1");
        }
        Ok(())
    }
}

/// The machine's name (the default board name), from the kernel.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "board".into())
}

/// Starts the push thread (`settings` passed [`Settings::check`] when the daemon started,
/// before anything was loaded); it ends with the daemon.
pub fn start(shared: &Arc<Shared>, settings: Settings) -> crate::Result<()> {
    let weak = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || run(weak, settings))
        .map_err(|e| crate::Error::new(format!("starting the fleet thread: {e}")))?;
    Ok(())
}

fn run(shared: Weak<Shared>, s: Settings) {
    let mut conn: Option<Pusher> = None;
    let mut wait = Duration::ZERO;
    loop {
        std::thread::sleep(wait);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match round(&shared, &s, &mut conn) {
            Ok(sent) => {
                if sent > 0 {
                    log::debug!("fleet: {sent} entries sent");
                }
                shared.counters.fleet_sent.fetch_add(sent, Relaxed);
                wait = s.every;
            }
            Err(e) => {
                shared.counters.fleet_failures.fetch_add(1, Relaxed);
                conn = None;
                wait = if wait < s.every {
                    s.every
                } else {
                    (wait * 2).min(MAX_BACKOFF)
                };
                log::warn!("fleet: {e} (next try in {} s)", wait.as_secs());
            }
        }
    }
}

/// A connection and the rows it sends to (renewed when the ring's bundle changes).
struct Pusher {
    db: Db,
    target: Option<(/* bundle id */ [u8; 32], Target)>,
}

/// One round: everything newer than the database's newest row of this ring and bundle.
fn round(shared: &Shared, s: &Settings, conn: &mut Option<Pusher>) -> crate::Result<u64> {
    if conn.is_none() {
        *conn = Some(Pusher {
            db: Db::connect(&s.url)?,
            target: None,
        });
    }
    let p = conn.as_mut().expect("connected above");
    let index = shared.index();
    // under the model's read lock the ring's bundle and the encoder agree (a reload commits
    // both under its write lock)
    let (bundle_id, dim, name) = {
        let model = shared.model();
        (
            index.bundle_id(),
            model.dim(),
            model.bundle().manifest.name.clone(),
        )
    };
    if p.target.as_ref().map(|(id, _)| *id) != Some(bundle_id) {
        let header = crate::index::Header {
            bundle_id,
            dim: dim as u32,
            ..*index.header()
        };
        let board = Board {
            name: &s.board,
            bundle_name: Some(&name),
            thumbs: s.thumbs,
            ann_index: Policy::Keep,
        };
        p.target = Some((bundle_id, Target::new(&mut p.db, &header, &board)?));
    }
    let (_, target) = p.target.as_ref().expect("set above");
    let newest = target.newest(&mut p.db)?.unwrap_or(0);
    let head = index.head();
    // what left the ring is gone: start at the oldest seq it can still hold
    let oldest = head.saturating_sub(index.header().capacity) + 1;
    let mut sent = 0;
    let mut next = newest.max(oldest - 1) + 1;
    while next <= head {
        let last = (next + BATCH as u64 - 1).min(head);
        // thumbnails are copied out only when they are sent
        let reads: Vec<Read> = (next..=last)
            .filter_map(|seq| match s.thumbs {
                true => index.get_with_thumb(seq),
                false => index.get(seq).map(|e| (e, None)),
            })
            .filter(|(e, _)| e.embedding.len() == dim)
            .map(|(entry, thumb)| Read { entry, thumb })
            .collect();
        sent += target.send(&mut p.db, &reads)?;
        next = last + 1;
    }
    if sent > 0 {
        // builds the bundle's index the first time, rebuilds an IVFFlat one as rows grow
        target.ensure_ann_index(&mut p.db, Policy::Keep)?;
    }
    Ok(sent)
}
