//! Byte transports: a Unix socket (many clients), a serial line, the terminal. Each
//! connection is a session: a reader that splits lines ([`LineBuffer`]) and answers them,
//! and a writer thread that drains a bounded outbox (replies and `+MATCH` pushes), so a slow
//! client never blocks ingest or other clients. No TCP listener, by design.

use super::{Shared, OUTBOX};
use crate::error::{Context, Result};
use crate::protocol::{render, Form, Line, LineBuffer, Response, MAX_LINE};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

/// Serve one connection until its reader ends.
pub fn session<R: Read, W: Write + Send + 'static>(
    shared: &Arc<Shared>,
    mut reader: R,
    mut writer: W,
    name: &str,
) {
    let (tx, rx) = sync_channel::<String>(OUTBOX);
    let writer_thread = std::thread::Builder::new()
        .name(format!("out-{name}"))
        .spawn(move || {
            for s in rx {
                if writer
                    .write_all(s.as_bytes())
                    .and_then(|_| writer.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
    let Ok(writer_thread) = writer_thread else {
        return;
    };
    let json = Arc::new(AtomicBool::new(false));
    let sub = shared.subscribe(json.clone(), tx.clone());
    let mut lb = LineBuffer::default();
    let mut lines = Vec::new();
    let mut buf = [0u8; 1024];
    'read: loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                log::debug!("{name}: read failed: {e}");
                break;
            }
        };
        lb.push(&buf[..n], &mut lines);
        for line in lines.drain(..) {
            let reply = match line {
                Line::TooLong => render(
                    &Form::Human,
                    &Response::Error(format!("line longer than {MAX_LINE} bytes, skipped")),
                ),
                Line::Text(t) if t.iter().all(|b| b.is_ascii_whitespace()) => continue,
                Line::Text(t) => {
                    let (reply, is_json) = shared.answer(&t);
                    json.store(is_json, Relaxed);
                    reply
                }
            };
            if tx.send(reply).is_err() {
                break 'read;
            }
        }
    }
    shared.unsubscribe(sub);
    drop(tx);
    let _ = writer_thread.join();
}

/// Bind `path`, mode 0660 from the first instant. Replaces only a stale socket: a socket
/// file that refuses connections. A live socket, anything that is not a socket, and a socket
/// we cannot probe (another user's, permission denied) are left alone and reported.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            crate::bail!(
                "{} exists and is not a socket; refusing to replace it: pass another --socket",
                path.display()
            );
        }
        match UnixStream::connect(path) {
            Ok(_) => crate::bail!(
                "{} is in use by a running daemon; stop it or pass another --socket",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)
                    .context(format_args!("removing stale socket {}", path.display()))?
            }
            Err(e) => crate::bail!(
                "{}: cannot tell whether a daemon owns this socket ({e}); remove it if it is \
                 stale, or pass another --socket",
                path.display()
            ),
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context(format_args!("creating {}", dir.display()))?;
    }
    // The socket file takes its mode from the umask at bind: set it so the file is 0660 from
    // the start (no window at the process umask), then put the old one back. Startup runs
    // this before any other thread creates files.
    // SAFETY: umask only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(0o117) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    bound.context(format_args!("cannot bind {}", path.display()))
}

pub fn serve_socket(shared: Arc<Shared>, listener: UnixListener) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let Some(seat) = shared.clients.seat(&stream) else {
            let mut s = stream;
            let _ = s.write_all(b"ERROR busy: too many clients, try again\n");
            continue;
        };
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                if let Ok(w) = stream.try_clone() {
                    let _ = w.set_write_timeout(Some(std::time::Duration::from_secs(10)));
                    session(&s, seat.track(&stream), w, "socket");
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a client thread: {e}");
        }
    }
}

/// A serial console: reads with a timeout so a silent line costs nothing; reopened if the
/// adapter vanishes.
pub fn serve_serial(shared: Arc<Shared>, device: String, baud: u32) {
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        match serialport::new(&device, baud)
            .timeout(std::time::Duration::from_millis(200))
            .open()
        {
            Ok(port) => {
                backoff = std::time::Duration::from_millis(500);
                log::info!("serial console on {device} at {baud} baud");
                match port.try_clone() {
                    Ok(w) => session(&shared, port, w, "serial"),
                    Err(e) => log::warn!("{device}: {e}"),
                }
                log::warn!("{device}: serial session ended; reopening");
            }
            Err(e) => log::warn!("{device}: cannot open serial line: {e}"),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
    }
}

/// The terminal: the same protocol on stdin/stdout.
pub fn serve_stdio(shared: Arc<Shared>) {
    session(&shared, std::io::stdin(), std::io::stdout(), "console");
}
