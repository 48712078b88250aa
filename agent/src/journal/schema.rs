//! Schema migrations, tracked by SQLite's `user_version`.
//!
//! Invariant: migrations only ever append; `SCHEMA_VERSION` is the number of
//! entries in [`MIGRATIONS`]. A database with a higher version was written by
//! a newer agent and is refused, never modified.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE devices (
    device_id          TEXT PRIMARY KEY,
    identity           TEXT NOT NULL,
    attrs              BLOB NOT NULL,   -- CBOR map, as last journaled
    facets             BLOB NOT NULL,   -- CBOR list of (facet, attrs)
    session_id         TEXT,            -- open session, NULL once detached
    session_last_seq   INTEGER,
    session_started_ms INTEGER,
    missing_since_ms   INTEGER,
    first_seen_ms      INTEGER NOT NULL,
    last_change_ms     INTEGER NOT NULL
);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms   INTEGER,
    end_reason TEXT,
    last_seq   INTEGER NOT NULL
);
CREATE INDEX sessions_by_device ON sessions (device_id, started_ms);
CREATE TABLE aliases (
    alias      TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX aliases_by_device ON aliases (device_id);
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,     -- journal order
    session_id TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    payload    BLOB NOT NULL,           -- the CBOR wire envelope
    published  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (session_id, seq)
);
CREATE INDEX events_unpublished ON events (id) WHERE published = 0;
CREATE INDEX events_by_device ON events (device_id, id);
"#];

/// The schema version this agent writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The database's `user_version`.
pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Applies the missing migrations, each in its own transaction.
/// The caller has checked that the version is not newer than ours.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current = version(conn)? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(())
}
