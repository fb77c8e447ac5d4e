//! The socket's client table: how many clients are connected, when each last sent a byte,
//! and a handle to close the longest-idle one when a new client finds the table full.
//!
//! Why eviction and not a plain idle timeout: a client waiting for `+MATCH` pushes is idle
//! by design and must not be cut off while there is room; but clients that connect and say
//! nothing must not lock everyone else out either (64 of them did, issue 14). So only a full
//! table evicts, and only a client silent for [`IDLE_EVICT`].

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// At most this many socket clients. Each costs two threads (reader, writer); with the
/// daemon's own threads that stays under the unit's `TasksMax=128` (board/moonlensd.service).
pub const MAX_CLIENTS: usize = 48;
/// A client silent this long may be closed to make room for a new one.
pub const IDLE_EVICT: Duration = Duration::from_secs(5);

struct Entry {
    id: u64,
    last: Arc<AtomicU64>,
    stream: UnixStream,
}

pub struct Clients {
    epoch: Instant,
    next: AtomicU64,
    table: Mutex<Vec<Entry>>,
}

/// A connected client's place in the table; dropping it frees the place.
pub struct Seat {
    clients: Arc<Clients>,
    id: u64,
    last: Arc<AtomicU64>,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            epoch: Instant::now(),
            next: AtomicU64::new(1),
            table: Mutex::new(Vec::new()),
        }
    }
}

impl Clients {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A seat for `stream`, evicting the longest-idle client if the table is full and one
    /// has been silent for [`IDLE_EVICT`]; `None` when the table stays full.
    pub fn seat(self: &Arc<Self>, stream: &UnixStream) -> Option<Seat> {
        let handle = stream.try_clone().ok()?;
        let mut table = self.table.lock().expect("clients lock");
        if table.len() >= MAX_CLIENTS {
            let now = self.now_ms();
            let idle = table
                .iter()
                .enumerate()
                // saturating: a reader may have stamped a time after `now` was taken
                .filter(|(_, e)| {
                    now.saturating_sub(e.last.load(Relaxed)) >= IDLE_EVICT.as_millis() as u64
                })
                .min_by_key(|(_, e)| e.last.load(Relaxed))
                .map(|(i, _)| i)?;
            let gone = table.swap_remove(idle);
            log::warn!(
                "socket client {} silent for {} s, closed to make room for a new one",
                gone.id,
                now.saturating_sub(gone.last.load(Relaxed)) / 1000
            );
            let mut s = &gone.stream;
            let _ = s.write_all(b"ERROR idle: closed to make room for a new client\n");
            let _ = gone.stream.shutdown(Shutdown::Both);
        }
        let id = self.next.fetch_add(1, Relaxed);
        let last = Arc::new(AtomicU64::new(self.now_ms()));
        table.push(Entry {
            id,
            last: last.clone(),
            stream: handle,
        });
        Some(Seat {
            clients: self.clone(),
            id,
            last,
        })
    }
}

impl Seat {
    /// `reader` that marks the client active whenever bytes arrive.
    pub fn track<R: Read>(&self, reader: R) -> Tracked<'_, R> {
        Tracked { seat: self, reader }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut table = self.clients.table.lock().expect("clients lock");
        table.retain(|e| e.id != self.id);
    }
}

pub struct Tracked<'a, R> {
    seat: &'a Seat,
    reader: R,
}

impl<R: Read> Read for Tracked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read(buf)?;
        if n > 0 {
            self.seat.last.store(self.seat.clients.now_ms(), Relaxed);
        }
        Ok(n)
    }
}
