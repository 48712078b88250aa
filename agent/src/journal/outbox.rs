//! The uplink's view of the journal: unpublished events in journal order,
//! and marking them published after the broker's PUBACK. It uses its own
//! SQLite connection (WAL lets it read while the registry task writes) and
//! is only ever called from a blocking thread, never from the event loop.

use super::JournalError;
use rusqlite::{params, Connection};
use std::path::Path;

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub session_id: String,
    pub kind: String,
    pub payload: Vec<u8>,
}

/// The uplink's connection to the journal.
#[derive(Debug)]
pub struct Outbox {
    conn: Connection,
}

impl Outbox {
    /// Opens the (already created) journal for the uplink.
    pub fn open(path: &Path) -> Result<Outbox, JournalError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Marks are idempotent (a lost mark only means a resend), so this
        // connection needs no fsync per commit; and a small page cache keeps
        // the uplink's memory flat during long drains.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -256)?;
        Ok(Outbox { conn })
    }

    /// Up to `limit` unpublished events with `id > after`, in journal order.
    pub fn fetch(&self, after: i64, limit: usize) -> Result<Vec<OutboxRow>, JournalError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, session_id, kind, payload FROM events
             WHERE published = 0 AND id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, limit], |r| {
            Ok(OutboxRow {
                id: r.get(0)?,
                session_id: r.get(1)?,
                kind: r.get(2)?,
                payload: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Marks events published, in one transaction.
    pub fn mark_published(&mut self, ids: &[i64]) -> Result<(), JournalError> {
        mark_published(&mut self.conn, ids)
    }

    /// (count, oldest ts_ms) of the unpublished backlog.
    pub fn backlog(&self) -> Result<(u64, Option<u64>), JournalError> {
        let (n, oldest): (i64, Option<i64>) = self.conn.query_row(
            "SELECT count(*), min(ts_ms) FROM events WHERE published = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((
            u64::try_from(n).unwrap_or(0),
            oldest.and_then(|v| u64::try_from(v).ok()),
        ))
    }
}

/// Sets `published = 1` on `ids`, in one transaction.
pub(super) fn mark_published(conn: &mut Connection, ids: &[i64]) -> Result<(), JournalError> {
    let tx = conn.transaction()?;
    for chunk in ids.chunks(256) {
        let marks = vec!["?"; chunk.len()].join(",");
        tx.execute(
            &format!("UPDATE events SET published = 1 WHERE id IN ({marks})"),
            rusqlite::params_from_iter(chunk),
        )?;
    }
    tx.commit()?;
    Ok(())
}
