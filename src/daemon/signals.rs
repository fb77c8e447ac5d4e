//! SIGHUP re-reads the config file (`--config`): a changed `bundle` is reloaded
//! ([`super::reload`]); nothing else changes while running.
//!
//! SIGTERM and SIGINT stop the daemon cleanly: the batch of frames being encoded and stored
//! is finished, the socket file is removed, the process exits 0. (SIGKILL and power loss
//! stay covered by the index's crash-only recovery, FORMAT.md.)
//!
//! The signals are blocked in every thread ([`block`], before any thread starts) and taken
//! by one thread with `sigwait`, so no handler runs at an arbitrary point of other code.

use super::Shared;
use std::path::PathBuf;
use std::sync::Arc;

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        libc::sigaddset(&mut s, libc::SIGTERM);
        libc::sigaddset(&mut s, libc::SIGINT);
        libc::sigaddset(&mut s, libc::SIGHUP);
        s
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts afterwards.
pub fn block() {
    let s = set();
    // SAFETY: changes this thread's signal mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
}

/// Starts the thread that waits for SIGTERM or SIGINT and then stops the daemon, and reloads
/// the bundle named by `config` (if any) on SIGHUP.
pub fn stop_on_signal(shared: Arc<Shared>, socket: PathBuf, config: Option<PathBuf>) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let s = set();
            let mut sig: libc::c_int = 0;
            loop {
                // SAFETY: waits on a valid set; writes the signal number into `sig`.
                while unsafe { libc::sigwait(&s, &mut sig) } != 0 {}
                if sig != libc::SIGHUP {
                    break;
                }
                reload_config(&shared, config.as_deref());
            }
            log::info!("signal {sig}: finishing the frames in flight, then exiting");
            // the ingest thread holds this for one batch: taking it waits for that batch
            // and keeps the next one from starting
            let _turn = shared.ingest_turn.lock().unwrap_or_else(|p| p.into_inner());
            let _ = std::fs::remove_file(&socket);
            log::info!("stopped cleanly");
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        log::warn!("no clean shutdown on SIGTERM (cannot start its thread: {e})");
    }
}

/// SIGHUP: the config's `bundle`, reloaded when it is not the running one.
fn reload_config(shared: &Arc<Shared>, config: Option<&std::path::Path>) {
    let Some(path) = config else {
        log::warn!("SIGHUP: no --config to re-read; use `reload <dir>` on the socket");
        return;
    };
    let cfg = match super::config::Config::from_file(path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("SIGHUP: {e}; nothing changed");
            return;
        }
    };
    let wanted = cfg.bundle();
    let running = shared.encoder().bundle().dir.clone();
    let same = |a: &std::path::Path, b: &std::path::Path| {
        std::fs::canonicalize(a)
            .ok()
            .zip(std::fs::canonicalize(b).ok())
            .is_some_and(|(a, b)| a == b)
    };
    if same(&wanted, &running) {
        log::info!("SIGHUP: the config names the running bundle; nothing to reload");
        return;
    }
    log::info!("SIGHUP: reloading {}", wanted.display());
    if let Err(e) = super::reload::start(shared, wanted, false) {
        log::error!("SIGHUP: {e}");
    }
}
