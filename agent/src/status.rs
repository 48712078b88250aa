//! The daemon's runtime status file (`status.json` in the state directory):
//! liveness and the last errors, for `rae-agent status`.
//!
//! It lives beside, not inside, the journal so that a journal that cannot be
//! written (full disk, read-only) can still be reported. Written atomically
//! (temp file + rename); failures to write it are logged, never fatal.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// An error with the time it was last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorNote {
    pub at_ms: u64,
    pub message: String,
}

/// What the daemon reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    pub pid: u32,
    pub version: String,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    pub boot_count: u64,
    /// False once the daemon stopped cleanly.
    pub running: bool,
    /// The journal's current error; `None` when the last commit succeeded.
    pub journal_error: Option<ErrorNote>,
    /// The most recent error of any kind.
    pub last_error: Option<ErrorNote>,
    /// Per-probe failures, by source name.
    pub probe_errors: BTreeMap<String, ErrorNote>,
    /// Where a corrupt journal was moved at start, if it was.
    pub journal_moved_aside: Option<String>,
    /// Observations not yet journaled because the journal is failing.
    pub pending_observations: u64,
    /// Backlog compactions that changed the journal, since start.
    #[serde(default)]
    pub compactions: u64,
    /// Unpublished deltas dropped because compaction could not get the
    /// backlog under its bound, since start.
    #[serde(default)]
    pub dropped_events: u64,
    /// The MQTT uplink; `None` in offline mode.
    #[serde(default)]
    pub uplink: Option<UplinkStatus>,
}

/// What the uplink reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub connected: bool,
    pub broker: String,
    pub last_puback_ms: Option<u64>,
    /// Events acknowledged by the broker since start.
    pub published: u64,
    /// Payload bytes of those events.
    #[serde(default)]
    pub published_bytes: u64,
    /// Checkpoint events acknowledged since start.
    pub checkpoints: u64,
    /// Unknown or malformed commands ignored since start.
    pub commands_rejected: u64,
    pub last_error: Option<String>,
}

/// Writes the status atomically.
pub fn write(path: &Path, status: &RuntimeStatus) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads the status file; `None` if absent or unreadable.
pub fn read(path: &Path) -> Option<RuntimeStatus> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}
