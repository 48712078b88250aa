//! Reading the journal the agent wrote: every row of the `events` table
//! (read-only, safe while the daemon runs), decoded and checked.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rae_protocol::{AttrValue, Attrs, Envelope, EventKind};
use rusqlite::{Connection, OpenFlags};

/// One row of the journal's `events` table. `Debug` shows the decoded
/// payload instead of its bytes.
#[derive(Clone, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub session_id: String,
    pub device_id: String,
    pub seq: u64,
    pub ts_ms: u64,
    pub kind: String,
    pub payload: Vec<u8>,
    pub published: bool,
}

impl std::fmt::Debug for EventRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let decoded = Envelope::decode(&self.payload).map(|env| env.kind);
        write!(
            f,
            "#{} {} session {} device {} seq {} ts {}{}: {decoded:?}",
            self.id,
            self.kind,
            self.session_id,
            self.device_id,
            self.seq,
            self.ts_ms,
            if self.published { " published" } else { "" }
        )
    }
}

impl EventRow {
    /// The decoded event kind, after checking that the stored envelope agrees
    /// with the row's columns.
    pub fn kind(&self) -> Result<EventKind> {
        let env = Envelope::decode(&self.payload)
            .map_err(|e| anyhow::anyhow!("event {}: undecodable payload: {e}", self.id))?;
        ensure!(
            env.session_id.to_string() == self.session_id
                && env.device_id == self.device_id
                && env.seq == self.seq
                && env.ts_ms == self.ts_ms
                && env.kind.name() == self.kind,
            "event {}: envelope {env:?} disagrees with its row {self:?}",
            self.id
        );
        Ok(env.kind)
    }
}

/// Every event, in journal order. Empty while the journal or its schema does
/// not exist yet (the daemon is starting).
pub fn read_events(journal: &Path) -> Result<Vec<EventRow>> {
    if !journal.exists() {
        return Ok(Vec::new());
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(journal, flags)
        .with_context(|| format!("opening {} read-only", journal.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    if tables == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT id, session_id, device_id, seq, ts_ms, kind, payload, published
         FROM events ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(EventRow {
            id: r.get(0)?,
            session_id: r.get(1)?,
            device_id: r.get(2)?,
            seq: r.get(3)?,
            ts_ms: r.get(4)?,
            kind: r.get(5)?,
            payload: r.get(6)?,
            published: r.get::<_, i64>(7)? != 0,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The events of one device, read from the journal.
pub fn read_device_events(journal: &Path, device_id: &str) -> Result<Vec<EventRow>> {
    let mut events = read_events(journal)?;
    events.retain(|e| e.device_id == device_id);
    Ok(events)
}

/// The events of one device, in journal order.
pub fn events_of<'a>(events: &'a [EventRow], device_id: &str) -> Vec<&'a EventRow> {
    events.iter().filter(|e| e.device_id == device_id).collect()
}

/// Checks, in journal order, that each session's seqs are exactly 1, 2, …, n
/// (no gap, no repeat), that it starts with `attached`, belongs to one device
/// and has nothing after a `detached`. Returns the last seq per session.
pub fn check_sessions(events: &[EventRow]) -> Result<BTreeMap<String, u64>> {
    let mut last: BTreeMap<String, (u64, &str, bool)> = BTreeMap::new();
    for ev in events {
        let (seq, device, ended) =
            last.get(&ev.session_id)
                .copied()
                .unwrap_or((0, &ev.device_id, false));
        ensure!(
            !ended,
            "session {} has event {ev:?} after its detach",
            ev.session_id
        );
        ensure!(
            device == ev.device_id,
            "session {} spans two devices: {ev:?}",
            ev.session_id
        );
        ensure!(
            ev.seq == seq + 1,
            "session {}: seq {} follows seq {seq} (event id {})",
            ev.session_id,
            ev.seq,
            ev.id
        );
        ensure!(
            (ev.seq == 1) == (ev.kind == "attached"),
            "session {}: seq {} is {:?}; only seq 1 may be (and must be) attached",
            ev.session_id,
            ev.seq,
            ev.kind
        );
        last.insert(
            ev.session_id.clone(),
            (ev.seq, &ev.device_id, ev.kind == "detached"),
        );
    }
    Ok(last.into_iter().map(|(s, (seq, _, _))| (s, seq)).collect())
}

/// Text attributes, for expected events.
pub fn text_attrs(pairs: &[(&str, &str)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), AttrValue::Text(v.to_string())))
        .collect()
}

/// An expected `attached` event.
pub fn attached(attrs: Attrs) -> EventKind {
    EventKind::Attached { attrs }
}

/// An expected `changed` event.
pub fn changed(set: Attrs, removed: &[&str]) -> EventKind {
    let removed = removed.iter().map(|s| s.to_string()).collect();
    EventKind::Changed { set, removed }
}

/// An expected `detached` event.
pub fn detached(reason: &str) -> EventKind {
    EventKind::Detached {
        reason: reason.to_string(),
    }
}

/// The decoded kinds of `events`.
pub fn kinds(events: &[&EventRow]) -> Result<Vec<EventKind>> {
    events.iter().map(|e| e.kind()).collect()
}

/// Checks that `events` are exactly `expected`, numbered 1, 2, … in one session.
pub fn assert_session(events: &[&EventRow], expected: &[EventKind]) -> Result<()> {
    let session = events.first().map_or("", |e| e.session_id.as_str());
    assert_continues(events, session, 1, expected)
}

/// Checks that `events` are exactly `expected`, in `session`, numbered
/// `first_seq`, `first_seq + 1`, ….
pub fn assert_continues(
    events: &[&EventRow],
    session: &str,
    first_seq: u64,
    expected: &[EventKind],
) -> Result<()> {
    let kinds = kinds(events)?;
    ensure!(
        kinds == expected,
        "events {events:#?}\nexpected {expected:#?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (first_seq..).take(expected.len()).collect();
    ensure!(
        seqs == want,
        "seqs {seqs:?}, expected {want:?}: {events:#?}"
    );
    ensure!(
        events.iter().all(|e| e.session_id == session),
        "not all in session {session}: {events:#?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_must_run_from_one_without_gaps_within_each_session() {
        let row = |id, session: &str, seq, kind: &str| EventRow {
            id,
            session_id: session.into(),
            device_id: "d".into(),
            seq,
            ts_ms: 0,
            kind: kind.into(),
            payload: Vec::new(),
            published: false,
        };
        let good = [
            row(1, "a", 1, "attached"),
            row(2, "b", 1, "attached"),
            row(3, "a", 2, "detached"),
        ];
        let last = check_sessions(&good).expect("valid");
        assert_eq!(last, [("a".to_string(), 2), ("b".to_string(), 1)].into());
        let gap = [row(1, "a", 1, "attached"), row(2, "a", 3, "changed")];
        assert!(check_sessions(&gap).is_err());
        let repeat = [row(1, "a", 1, "attached"), row(2, "a", 1, "changed")];
        assert!(check_sessions(&repeat).is_err());
        let after_detach = [
            row(1, "a", 1, "attached"),
            row(2, "a", 2, "detached"),
            row(3, "a", 3, "changed"),
        ];
        assert!(check_sessions(&after_detach).is_err());
    }
}
