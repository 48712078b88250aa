//! Read-only access to the journal for the CLI, safe while the daemon runs
//! (SQLite WAL readers never block the writer).

use super::{codec, get_meta, schema, JournalError};
use crate::registry::DeviceRecord;
use rae_protocol::Envelope;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};

/// A read-only journal handle.
#[derive(Debug)]
pub struct JournalReader {
    conn: Connection,
    path: PathBuf,
}

/// Why a device query found no single device.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no device matches {0:?} (try `rae-agent devices --all`)")]
    NotFound(String),
    #[error("{query:?} is ambiguous; it matches {}", .candidates.join(", "))]
    Ambiguous {
        query: String,
        candidates: Vec<String>,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// One journaled event as the CLI shows it.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub id: i64,
    pub published: bool,
    /// The decoded envelope, or why it could not be decoded.
    pub envelope: Result<Envelope, String>,
}

/// Counters for `rae-agent status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub devices_present: u64,
    pub devices_missing: u64,
    pub devices_detached: u64,
    pub events_total: u64,
    pub unpublished: u64,
    pub oldest_unpublished_ms: Option<u64>,
    pub journal_bytes: u64,
    pub rae_id: Option<String>,
    pub agent_version: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub boot_count: Option<u64>,
}

impl JournalReader {
    /// Opens the journal read-only; a missing file is [`JournalError::Missing`].
    pub fn open(path: &Path) -> Result<JournalReader, JournalError> {
        if !path.exists() {
            return Err(JournalError::Missing {
                path: path.to_path_buf(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found = schema::version(&conn)?;
        if found > schema::SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        if found == 0 {
            return Err(JournalError::Missing {
                path: path.to_path_buf(),
            });
        }
        Ok(JournalReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All device records, ordered by id.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, JournalError> {
        codec::load_devices(&self.conn)
    }

    /// Finds a device by id, unique id prefix, or any alias (`ABC123` is
    /// tried as `serial:ABC123`, `/dev/ttyUSB0` as `node:/dev/ttyUSB0`).
    pub fn find_device(&self, query: &str) -> Result<DeviceRecord, FindError> {
        let devices = self.devices()?;
        if let Some(d) = devices.iter().find(|d| d.device_id == query) {
            return Ok(d.clone());
        }
        let candidates = [
            query.to_string(),
            format!("serial:{query}"),
            format!("node:{query}"),
            format!("port:{query}"),
            format!("net:{query}"),
        ];
        for alias in &candidates {
            let hit: Option<String> = self
                .conn
                .query_row(
                    "SELECT device_id FROM aliases WHERE alias = ?1",
                    [alias],
                    |r| r.get(0),
                )
                .optional()
                .map_err(JournalError::from)?;
            if let Some(id) = hit {
                if let Some(d) = devices.iter().find(|d| d.device_id == id) {
                    return Ok(d.clone());
                }
            }
        }
        let by_prefix: Vec<&DeviceRecord> = devices
            .iter()
            .filter(|d| d.device_id.starts_with(query))
            .collect();
        match by_prefix.as_slice() {
            [one] if !query.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(FindError::NotFound(query.to_string())),
            many => Err(FindError::Ambiguous {
                query: query.to_string(),
                candidates: many.iter().map(|d| d.device_id.clone()).collect(),
            }),
        }
    }

    /// The aliases of a device.
    pub fn aliases(&self, device_id: &str) -> Result<Vec<String>, JournalError> {
        let mut stmt = self
            .conn
            .prepare("SELECT alias FROM aliases WHERE device_id = ?1 ORDER BY alias")?;
        let rows = stmt.query_map([device_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    /// The newest `limit` events of a device, oldest first.
    pub fn history(&self, device_id: &str, limit: u64) -> Result<Vec<HistoryEntry>, JournalError> {
        let limit = codec::to_sql_int(limit)?;
        let mut stmt = self.conn.prepare(
            "SELECT id, published, payload FROM (
                 SELECT id, published, payload FROM events WHERE device_id = ?1
                 ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )?;
        let rows = stmt.query_map(rusqlite::params![device_id, limit], |r| {
            let payload: Vec<u8> = r.get(2)?;
            Ok(HistoryEntry {
                id: r.get(0)?,
                published: r.get::<_, i64>(1)? != 0,
                envelope: Envelope::decode(&payload).map_err(|e| e.to_string()),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Counters for `status`.
    pub fn stats(&self) -> Result<Stats, JournalError> {
        let mut s = Stats::default();
        for d in self.devices()? {
            match d.presence() {
                crate::registry::record::Presence::Present => s.devices_present += 1,
                crate::registry::record::Presence::Missing => s.devices_missing += 1,
                crate::registry::record::Presence::Detached => s.devices_detached += 1,
            }
        }
        let count = |sql: &str| -> Result<u64, JournalError> {
            let n: i64 = self.conn.query_row(sql, [], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        s.events_total = count("SELECT count(*) FROM events")?;
        s.unpublished = count("SELECT count(*) FROM events WHERE published = 0")?;
        s.oldest_unpublished_ms = self
            .conn
            .query_row(
                "SELECT ts_ms FROM events WHERE published = 0 ORDER BY id LIMIT 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|v| u64::try_from(v).unwrap_or(0));
        s.journal_bytes = ["", "-wal"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", self.path.display())).ok())
            .map(|m| m.len())
            .sum();
        s.rae_id = get_meta(&self.conn, "rae_id")?;
        s.agent_version = get_meta(&self.conn, "agent_version")?;
        s.heartbeat_ms = get_meta(&self.conn, "heartbeat_ms")?.and_then(|v| v.parse().ok());
        s.boot_count = get_meta(&self.conn, "boot_count")?.and_then(|v| v.parse().ok());
        Ok(s)
    }
}
