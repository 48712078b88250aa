//! Executes a compaction [`Plan`](super::compaction::Plan) in one
//! transaction: deletes covered and dropped deltas, and rewrites each fold
//! target as a `checkpoint` whose attributes are rebuilt by replaying the
//! session from its newest `attached`/`checkpoint` at or before the target.

use super::backlog::Size;
use super::compaction::{self, Bounds, Entry, Plan};
use super::{codec, Journal, JournalError};
use crate::registry::diff::apply_diff;
use rae_protocol::{Attrs, Envelope, EventKind};
use rusqlite::{params, Connection, OptionalExtension};

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub covered: usize,
    pub folded: usize,
    pub dropped: usize,
    /// Sessions that lost deltas and need a checkpoint.
    pub needs_checkpoint: Vec<String>,
}

impl Journal {
    /// The exact size of the unpublished backlog (reads every unpublished row).
    pub fn backlog_size(&self) -> Result<Size, JournalError> {
        let (count, bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM events WHERE published = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Size {
            events: u64::try_from(count).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
        })
    }

    /// Compacts the unpublished backlog if it exceeds `bounds`. Returns what
    /// it did and the exact backlog size afterwards; the backlog is read in
    /// full only once unless a compaction actually ran.
    pub fn compact(&mut self, bounds: Bounds) -> Result<(CompactionReport, Size), JournalError> {
        let size = self.backlog_size()?;
        if size.events <= bounds.max_events && size.bytes <= bounds.max_bytes {
            return Ok((CompactionReport::default(), size));
        }
        let entries = unpublished(&self.conn)?;
        let conn = &self.conn;
        let plan = compaction::plan(&entries, bounds, |session| {
            has_base(conn, session).unwrap_or(false)
        });
        if plan.is_empty() {
            return Ok((CompactionReport::default(), size));
        }
        let tx = self.conn.transaction()?;
        execute(&tx, &plan, &self.rae_id)?;
        tx.commit()?;
        let report = CompactionReport {
            covered: plan.covered.len(),
            folded: plan.folds.iter().map(|f| f.delete.len() + 1).sum(),
            dropped: plan.dropped.len(),
            needs_checkpoint: plan.needs_checkpoint,
        };
        Ok((report, self.backlog_size()?))
    }
}

fn unpublished(conn: &Connection) -> Result<Vec<Entry>, JournalError> {
    let mut stmt = conn.prepare(
        "SELECT id, session_id, seq, kind, length(payload) FROM events
         WHERE published = 0 ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Entry {
            id: r.get(0)?,
            session: r.get(1)?,
            seq: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            kind: r.get(3)?,
            bytes: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn has_base(conn: &Connection, session: &str) -> Result<bool, JournalError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM events WHERE session_id = ?1
             AND kind IN ('attached', 'checkpoint') LIMIT 1",
        )?
        .query_row([session], |_| Ok(()))
        .optional()?
        .is_some())
}

fn execute(tx: &Connection, plan: &Plan, rae_id: &str) -> Result<(), JournalError> {
    let delete = |id: &i64| -> Result<(), JournalError> {
        tx.prepare_cached("DELETE FROM events WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    };
    for fold in &plan.folds {
        let Some(attrs) = replay(tx, &fold.session, fold.into_seq)? else {
            continue;
        };
        let (device_id, ts): (String, i64) = tx.query_row(
            "SELECT device_id, ts_ms FROM events WHERE id = ?1",
            [fold.into],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let env = Envelope {
            schema: rae_protocol::SCHEMA_VERSION,
            rae_id: rae_id.to_string(),
            device_id,
            session_id: uuid::Uuid::parse_str(&fold.session)
                .map_err(|e| JournalError::Codec(e.to_string()))?,
            seq: fold.into_seq,
            ts_ms: u64::try_from(ts).unwrap_or(0),
            kind: EventKind::Checkpoint { attrs },
        };
        let payload = env
            .encode()
            .map_err(|e| JournalError::Codec(e.to_string()))?;
        tx.prepare_cached("UPDATE events SET kind = 'checkpoint', payload = ?2 WHERE id = ?1")?
            .execute(params![fold.into, payload])?;
        fold.delete.iter().try_for_each(delete)?;
    }
    plan.covered.iter().try_for_each(delete)?;
    plan.dropped.iter().try_for_each(delete)?;
    Ok(())
}

/// The session's attributes as of `seq`, or `None` without a base event.
fn replay(conn: &Connection, session: &str, seq: u64) -> Result<Option<Attrs>, JournalError> {
    let seq = codec::to_sql_int(seq)?;
    let mut stmt = conn.prepare_cached(
        "SELECT payload FROM events WHERE session_id = ?1 AND seq <= ?2 AND seq >= coalesce(
             (SELECT max(seq) FROM events WHERE session_id = ?1 AND seq <= ?2
              AND kind IN ('attached', 'checkpoint')), ?2 + 1)
         ORDER BY seq",
    )?;
    let payloads = stmt
        .query_map(params![session, seq], |r| r.get::<_, Vec<u8>>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut attrs: Option<Attrs> = None;
    for p in payloads {
        let env = Envelope::decode(&p).map_err(|e| JournalError::Codec(e.to_string()))?;
        match env.kind {
            EventKind::Attached { attrs: a } | EventKind::Checkpoint { attrs: a } => {
                attrs = Some(a)
            }
            EventKind::Changed { set, removed } => {
                if let Some(a) = attrs.as_mut() {
                    apply_diff(a, &set, &removed);
                }
            }
            EventKind::Detached { .. } => {}
        }
    }
    Ok(attrs)
}
