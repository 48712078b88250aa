//! The journal: SQLite (WAL) holding device records, sessions, aliases,
//! every event (as its wire envelope) and a little metadata.
//!
//! Invariants:
//! - The events of one registry transition and the resulting device state
//!   are committed in one SQLite transaction ([`Journal::commit`]).
//! - `events.id` is the journal order; `(session_id, seq)` is unique.
//! - Retention deletes only events with `published = 1`.
//! - A corrupt database is renamed aside (`.corrupt-<time>`), never deleted;
//!   a database from a newer schema is refused and left untouched.
//!
//! Only the daemon writes ([`Journal`]); the CLI reads ([`read::JournalReader`]).

pub mod backlog;
mod codec;
mod compact;
pub mod compaction;
pub mod outbox;
pub mod read;
pub mod schema;

use crate::config::Synchronous;
use crate::registry::{Snapshot, Transition};
use log::error;
use rae_protocol::EventKind;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use std::path::{Path, PathBuf};

pub use codec::envelope;
pub use compact::CompactionReport;

/// A journal failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path} has schema version {found}, newer than the {supported} this rae-agent supports; upgrade rae-agent or move the file away")]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("database {path} is corrupt and could not be moved aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no journal at {path}; start the daemon with `rae-agent run` (same --config) to create it"
    )]
    Missing { path: PathBuf },
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("journal data: {0}")]
    Codec(String),
}

impl JournalError {
    fn code(&self) -> Option<ErrorCode> {
        match self {
            JournalError::Sqlite(e) => e.sqlite_error_code(),
            _ => None,
        }
    }

    /// The disk (or the database's size limit) is full.
    pub fn is_full(&self) -> bool {
        self.code() == Some(ErrorCode::DiskFull)
    }

    /// The file is not a database, or its pages are damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase)
        )
    }
}

/// How to open the journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    pub synchronous: Synchronous,
    pub rae_id: String,
    pub agent_version: String,
}

/// What [`Journal::open`] found.
#[derive(Debug)]
pub struct Opened {
    pub journal: Journal,
    /// Where a corrupt database was moved to, if one was.
    pub moved_aside: Option<PathBuf>,
    /// How many times a daemon has opened this journal, this time included.
    pub boot_count: u64,
}

/// The daemon's write handle.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    rae_id: String,
    fault: FaultHandle,
    applied_page_limit: u64,
    /// Events and payload bytes committed since open (see [`backlog`]).
    journaled: backlog::Size,
}

/// Retention deletes at most this many events per transaction.
const RETENTION_CHUNK: i64 = 5000;

/// Fault injection for tests: limits the database to a number of pages, so
/// SQLite reports SQLITE_FULL exactly as on a full disk. 0 means no limit.
/// Clones share the limit; the journal applies it at its next commit.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct FaultHandle(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl FaultHandle {
    /// Makes the database full at `pages` pages.
    pub fn limit_pages(&self, pages: u64) {
        self.0.store(pages, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lifts the limit.
    pub fn unlimited(&self) {
        self.limit_pages(0);
    }

    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Journal {
    /// Opens or creates the journal. A corrupt file is renamed aside and a
    /// fresh one created (logged loudly); a newer schema is refused.
    pub fn open(path: &Path, opts: &JournalOptions) -> Result<Opened, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut moved_aside = None;
        let mut conn = match open_checked(path, opts) {
            Ok(conn) => conn,
            Err(e) if e.is_corrupt() => {
                let aside = move_aside(path)?;
                error!(
                    "journal {} is corrupt ({e}); moved it to {} and started a fresh journal",
                    path.display(),
                    aside.display()
                );
                moved_aside = Some(aside);
                open_checked(path, opts)?
            }
            Err(e) => return Err(e),
        };
        schema::migrate(&mut conn)?;
        let boot_count = {
            let tx = conn.transaction()?;
            let boots: u64 = get_meta(&tx, "boot_count")?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
                + 1;
            set_meta(&tx, "boot_count", &boots.to_string())?;
            set_meta(&tx, "rae_id", &opts.rae_id)?;
            set_meta(&tx, "agent_version", &opts.agent_version)?;
            tx.commit()?;
            boots
        };
        Ok(Opened {
            journal: Journal {
                conn,
                path: path.to_path_buf(),
                rae_id: opts.rae_id.clone(),
                fault: FaultHandle::default(),
                applied_page_limit: 0,
                journaled: backlog::Size::default(),
            },
            moved_aside,
            boot_count,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry state to rebuild from.
    pub fn snapshot(&self) -> Result<Snapshot, JournalError> {
        let devices = codec::load_devices(&self.conn)?;
        let mut stmt = self.conn.prepare("SELECT alias, device_id FROM aliases")?;
        let aliases = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<(String, String)>, _>>()?;
        Ok(Snapshot { devices, aliases })
    }

    /// Commits a transition's events and device state in one transaction.
    pub fn commit(&mut self, t: &Transition, now_ms: u64) -> Result<(), JournalError> {
        if t.is_durable_noop() {
            return Ok(());
        }
        self.apply_fault()?;
        let tx = self.conn.transaction()?;
        let mut added = backlog::Size::default();
        for change in &t.changes {
            for ev in &change.events {
                let payload = envelope(&self.rae_id, ev)
                    .encode()
                    .map_err(|e| JournalError::Codec(e.to_string()))?;
                added.events += 1;
                added.bytes += payload.len() as u64;
                let seq = codec::to_sql_int(ev.seq)?;
                let ts = codec::to_sql_int(ev.ts_ms)?;
                let sid = ev.session_id.to_string();
                tx.prepare_cached(
                    "INSERT INTO events (session_id, device_id, seq, ts_ms, kind, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    sid,
                    ev.device_id,
                    seq,
                    ts,
                    ev.kind.name(),
                    payload
                ])?;
                match &ev.kind {
                    EventKind::Attached { .. } => {
                        tx.prepare_cached(
                            "INSERT INTO sessions (session_id, device_id, started_ms, last_seq)
                             VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![sid, ev.device_id, ts, seq])?;
                    }
                    EventKind::Detached { reason } => {
                        tx.prepare_cached(
                            "UPDATE sessions SET last_seq = ?2, ended_ms = ?3, end_reason = ?4
                             WHERE session_id = ?1",
                        )?
                        .execute(params![sid, seq, ts, reason])?;
                    }
                    _ => {
                        tx.prepare_cached(
                            "UPDATE sessions SET last_seq = ?2 WHERE session_id = ?1",
                        )?
                        .execute(params![sid, seq])?;
                    }
                }
            }
            let r = &change.record;
            let facets: Vec<_> = r.facets.iter().collect();
            let opt_int = |v: Option<u64>| v.map(codec::to_sql_int).transpose();
            tx.prepare_cached(
                "INSERT OR REPLACE INTO devices (device_id, identity, attrs, facets, session_id,
                     session_last_seq, session_started_ms, missing_since_ms, first_seen_ms,
                     last_change_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                r.device_id,
                r.identity,
                codec::to_cbor(&r.attrs)?,
                codec::to_cbor(&facets)?,
                r.session.as_ref().map(|s| s.id.to_string()),
                opt_int(r.session.as_ref().map(|s| s.last_seq))?,
                opt_int(r.session.as_ref().map(|s| s.started_ms))?,
                opt_int(r.missing_since_ms)?,
                codec::to_sql_int(r.first_seen_ms)?,
                codec::to_sql_int(r.last_change_ms)?,
            ])?;
            for alias in &change.aliases {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO aliases (alias, device_id, updated_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![alias, r.device_id, codec::to_sql_int(now_ms)?])?;
            }
        }
        tx.commit()?;
        self.journaled.events += added.events;
        self.journaled.bytes += added.bytes;
        Ok(())
    }

    /// Events and payload bytes committed since this journal was opened.
    pub fn journaled(&self) -> backlog::Size {
        self.journaled
    }

    /// Records that the daemon is alive.
    pub fn heartbeat(&mut self, now_ms: u64) -> Result<(), JournalError> {
        set_meta(&self.conn, "heartbeat_ms", &now_ms.to_string())
    }

    /// Deletes published events older than `max_age_ms` or beyond the newest
    /// `max_events` published ones. Returns how many were deleted.
    pub fn apply_retention(
        &mut self,
        now_ms: u64,
        max_age_ms: u64,
        max_events: u64,
    ) -> Result<usize, JournalError> {
        let cutoff = codec::to_sql_int(now_ms.saturating_sub(max_age_ms))?;
        let keep = codec::to_sql_int(max_events)?;
        // Newest published id beyond the `max_events` kept; none: keep all.
        let beyond: i64 = self
            .conn
            .query_row(
                "SELECT id FROM events WHERE published = 1 ORDER BY id DESC LIMIT 1 OFFSET ?1",
                params![keep],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(i64::MIN);
        // In id ranges of at most RETENTION_CHUNK rows, each its own
        // transaction: one DELETE of a million rows held ~24 MiB of heap.
        let (mut deleted, mut after) = (0, i64::MIN);
        loop {
            let last: Option<i64> = self.conn.query_row(
                "SELECT max(id) FROM (SELECT id FROM events
                 WHERE id > ?1 AND published = 1 AND (ts_ms < ?2 OR id <= ?3)
                 ORDER BY id LIMIT ?4)",
                params![after, cutoff, beyond, RETENTION_CHUNK],
                |r| r.get(0),
            )?;
            let Some(last) = last else {
                return Ok(deleted);
            };
            deleted += self.conn.execute(
                "DELETE FROM events
                 WHERE id > ?1 AND id <= ?2 AND published = 1 AND (ts_ms < ?3 OR id <= ?4)",
                params![after, last, cutoff, beyond],
            )?;
            after = last;
        }
    }

    /// Marks events published (used by the uplink and by tests).
    pub fn mark_published(&mut self, ids: &[i64]) -> Result<(), JournalError> {
        outbox::mark_published(&mut self.conn, ids)
    }

    /// The fault-injection handle of this journal (tests only).
    #[doc(hidden)]
    pub fn fault_handle(&self) -> FaultHandle {
        self.fault.clone()
    }

    fn apply_fault(&mut self) -> Result<(), JournalError> {
        let want = self.fault.get();
        if want != self.applied_page_limit {
            // SQLite's own maximum when unlimited.
            let pages = if want == 0 { 0xFFFF_FFFE } else { want };
            self.conn
                .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
            self.applied_page_limit = want;
        }
        Ok(())
    }
}

fn open_checked(path: &Path, opts: &JournalOptions) -> Result<Connection, JournalError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let found = schema::version(&conn)?;
    if found > schema::SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: schema::SCHEMA_VERSION,
        });
    }
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    let sync = match opts.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    // A bounded page cache: the backlog check scans every unpublished row,
    // and the default cache would keep growing with the backlog.
    conn.pragma_update(None, "cache_size", -512)?;
    let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(JournalError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("quick_check: {check}")),
        )));
    }
    Ok(conn)
}

/// Renames a corrupt database (and its -wal/-shm) to `<name>.corrupt-<time>`.
fn move_aside(path: &Path) -> Result<PathBuf, JournalError> {
    let stamp = crate::timefmt::compact(crate::timefmt::now_ms());
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    std::fs::rename(path, &aside).map_err(|source| JournalError::MoveAside {
        path: path.to_path_buf(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
        }
    }
    Ok(aside)
}

fn get_meta(conn: &Connection, key: &str) -> Result<Option<String>, JournalError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), JournalError> {
    conn.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?
        .execute([key, value])?;
    Ok(())
}

#[cfg(test)]
mod tests;
