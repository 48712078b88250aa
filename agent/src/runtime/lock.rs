//! One daemon per state directory: an exclusive `flock` on
//! `<state_dir>/agent.lock`, held for the life of the process. The lock file
//! records the holder's pid for the error message of a second instance.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Another daemon holds the state directory, or the lock file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another rae-agent (pid {pid}) is already running with state directory {dir}")]
    Held { pid: String, dir: PathBuf },
    #[error("cannot use lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Takes the state directory's lock without waiting.
pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
    let path = state_dir.join("agent.lock");
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a valid, owned file descriptor; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(LockError::Held {
            pid: pid.trim().to_string(),
            dir: state_dir.to_path_buf(),
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = super::acquire(dir.path()).expect("first");
        let err = super::acquire(dir.path()).expect_err("second");
        let msg = err.to_string();
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    }
}
