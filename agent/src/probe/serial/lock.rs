//! UUCP lock files (`LCK..<basename>` in the lock directories), the
//! convention minicom, picocom, screen, lockdev and test harnesses use to
//! say "this port is busy".
//!
//! Invariants: a port whose lock file names a live process (`kill(pid, 0)`
//! succeeds or fails with `EPERM`) is never probed. A lock naming a dead
//! process is stale and removed. Our own lock appears atomically with its
//! content (a temp file with our pid in the HDB format `%10d\n`, hard-linked
//! to the lock name, so nobody sees it empty), lives exactly as long as the
//! [`PortLock`] guard, and is only removed while it still names us.
//! A lock file that cannot be read as a pid is taken as held until it is
//! [`UNREADABLE_GRACE`] old (its writer may be between create and write).
//! Known UUCP race, shared by every implementation: two processes that both
//! find the same stale lock may both remove it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a lock file with unreadable content counts as held.
pub const UNREADABLE_GRACE: Duration = Duration::from_secs(60);

/// A failure to read the lock state; the port is then not probed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} has no file name to lock", .0.display())]
    NoName(PathBuf),
}

/// Who holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A live process.
    Pid(i32),
    /// A recent lock file whose content is not a pid.
    Unknown,
}

/// The result of [`acquire`].
#[derive(Debug)]
pub enum Acquired {
    /// We hold the lock until the guard is dropped.
    Locked(PortLock),
    /// Another process holds it: do not touch the port.
    Held { path: PathBuf, holder: Holder },
    /// Nobody holds it, but we could not take it ourselves (no lock
    /// directory exists, or it is not writable).
    Unlocked { reason: String },
}

/// Our lock on a port; removes the lock file on drop.
#[derive(Debug)]
pub struct PortLock {
    path: PathBuf,
}

impl PortLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PortLock {
    fn drop(&mut self) {
        let ours = fs::read(&self.path)
            .ok()
            .and_then(|b| parse_pid(&b))
            .is_some_and(|pid| pid == own_pid());
        if ours {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!(
                    "serial probe: cannot remove our lock {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

/// `LCK..<basename of the port>`.
pub fn lock_name(port: &Path) -> Result<String, LockError> {
    port.file_name()
        .map(|n| format!("LCK..{}", n.to_string_lossy()))
        .ok_or_else(|| LockError::NoName(port.to_path_buf()))
}

/// Checks every existing lock directory for a lock on `port` (removing
/// stale ones), then takes our own in the first existing directory.
pub fn acquire(lock_dirs: &[PathBuf], port: &Path) -> Result<Acquired, LockError> {
    let name = lock_name(port)?;
    let dirs: Vec<&PathBuf> = lock_dirs.iter().filter(|d| d.is_dir()).collect();
    for dir in &dirs {
        let path = dir.join(&name);
        match inspect(&path)? {
            Existing::Free => {}
            Existing::Held(holder) => return Ok(Acquired::Held { path, holder }),
            Existing::Stale(pid) => remove_stale(&path, pid)?,
        }
    }
    let Some(dir) = dirs.first() else {
        return Ok(Acquired::Unlocked {
            reason: format!("none of the lock directories {lock_dirs:?} exists"),
        });
    };
    let path = dir.join(&name);
    let tmp = match write_temp(dir) {
        Ok(tmp) => tmp,
        Err(e) => {
            return Ok(Acquired::Unlocked {
                reason: format!("cannot create a lock file in {}: {e}", dir.display()),
            })
        }
    };
    let result = link_lock(&tmp, path);
    let _ = fs::remove_file(&tmp);
    result
}

fn link_lock(tmp: &Path, path: PathBuf) -> Result<Acquired, LockError> {
    for _ in 0..3 {
        match fs::hard_link(tmp, &path) {
            Ok(()) => return Ok(Acquired::Locked(PortLock { path })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match inspect(&path)? {
                Existing::Free => {}
                Existing::Held(holder) => return Ok(Acquired::Held { path, holder }),
                Existing::Stale(pid) => remove_stale(&path, pid)?,
            },
            Err(e) => {
                return Ok(Acquired::Unlocked {
                    reason: format!("cannot create {}: {e}", path.display()),
                })
            }
        }
    }
    // Three rounds of someone else creating and dropping it: it is contended.
    Ok(Acquired::Held {
        path,
        holder: Holder::Unknown,
    })
}

/// A fresh temp file in `dir` holding our pid.
fn write_temp(dir: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("LTMP.{}.{n}", own_pid()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let written = f.write_all(format_pid(own_pid()).as_bytes());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

enum Existing {
    Free,
    Held(Holder),
    Stale(Option<i32>),
}

fn inspect(path: &Path) -> Result<Existing, LockError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Free),
        Err(source) => {
            return Err(LockError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    Ok(match parse_pid(&bytes) {
        Some(pid) if pid_alive(pid) => Existing::Held(Holder::Pid(pid)),
        Some(pid) => Existing::Stale(Some(pid)),
        None => {
            let age = fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a >= UNREADABLE_GRACE) {
                Existing::Stale(None)
            } else {
                Existing::Held(Holder::Unknown)
            }
        }
    })
}

fn remove_stale(path: &Path, pid: Option<i32>) -> Result<(), LockError> {
    match fs::remove_file(path) {
        Ok(()) => {
            log::info!(
                "serial probe: removed stale lock {} (pid {})",
                path.display(),
                pid.map_or("unreadable".to_string(), |p| p.to_string())
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LockError::Io {
            action: "remove stale lock",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The pid in a lock file: ASCII (possibly padded with spaces, newlines or
/// NULs), or a 4-byte native-endian integer (old binary format).
pub fn parse_pid(bytes: &[u8]) -> Option<i32> {
    let text = std::str::from_utf8(bytes)
        .ok()
        .map(|s| s.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0'))
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    let pid = match text {
        Some(t) => t.parse::<i32>().ok()?,
        None => i32::from_ne_bytes(<[u8; 4]>::try_from(bytes).ok()?),
    };
    (pid > 0).then_some(pid)
}

/// The HDB UUCP format: the pid right-aligned in 10 characters, newline.
pub fn format_pid(pid: i32) -> String {
    format!("{pid:>10}\n")
}

/// Whether a process with this pid exists (`kill(pid, 0)`).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn own_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

#[cfg(test)]
#[path = "lock_tests.rs"]
mod tests;
