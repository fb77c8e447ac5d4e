//! What the index asks of the file system beyond reads and writes: one writer per directory
//! (an exclusive `flock` on `lock`), and the blocks of both ring files reserved up front
//! (`fallocate`), so that a write through the mapping can never meet a full disk: the kernel
//! answers that with SIGBUS, which no error handling can catch. See FORMAT.md, "The media".

use crate::error::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Index files are readable by the daemon's group (the operator's tools), by no one else.
pub const FILE_MODE: u32 = 0o640;

/// Held for as long as an [`super::Index`] is open for writing; the kernel releases it when
/// the process dies, however it dies.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

/// Takes the writer lock of `dir`, or says which process holds it.
pub fn lock_writer(dir: &Path) -> Result<WriterLock> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .context(format_args!("cannot open {}", path.display()))?;
    // A lock just released can still be held for an instant by a copy of its descriptor in
    // a child being spawned (between fork and exec): a few short retries tell that apart
    // from a writer that holds it for good.
    let mut tries = 0;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(err).context(format_args!("cannot lock {}", path.display()));
        }
        tries += 1;
        if tries < 25 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            continue;
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(crate::Error::of(
            crate::error::ErrorKind::IndexLocked,
            format!(
                "index {} is open for writing by another process (pid {}); stop it, or pass \
             another --index",
                dir.display(),
                if holder.is_empty() { "unknown" } else { holder }
            ),
        ));
    }
    file.set_len(0)
        .and_then(|_| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .context(format_args!("writing {}", path.display()))?;
    Ok(WriterLock { _file: file })
}

/// Allocates blocks for bytes `0..len` of `file` (already `len` long or shorter). Fails on
/// a disk that cannot hold them, naming the bytes needed and free; a file system without
/// `fallocate` is logged and accepted (the old, sparse behaviour).
pub fn reserve(file: &File, len: u64, path: &Path) -> Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
            let dir = path.parent().unwrap_or(Path::new("."));
            let free =
                free_bytes(dir).map_or("an unknown number of bytes".into(), |b| b.to_string());
            Err(crate::Error::of(
                crate::error::ErrorKind::NoSpace,
                format!(
                    "{}: the index needs {len} bytes on disk and {} has {free} free; free some \
                     space or lower --capacity",
                    path.display(),
                    dir.display(),
                ),
            ))
        }
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            log::warn!(
                "{}: this file system cannot reserve space (fallocate: {err}); a full disk \
                 will stop the daemon while it writes",
                path.display()
            );
            Ok(())
        }
        _ => Err(err).context(format_args!("reserving {len} bytes for {}", path.display())),
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; c is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0)
        .then(|| s.f_bavail as u64 * s.f_frsize as u64)
}
