//! The uplink bench's journals (tests/benches/uplink.rs module docs):
//! the synthetic events, the pre-filled journal, and read-only queries of
//! what is still unpublished.

use super::{BASE_TS_MS, PREFILL_TX_ROWS, RAE_ID, SESSIONS};
use anyhow::{Context, Result};
use rae_agent::config::Synchronous;
use rae_agent::journal::{envelope, Journal, JournalOptions};
use rae_agent::registry::identity::device_id_for;
use rae_agent::registry::Event;
use rae_protocol::{AttrValue, Attrs, EventKind};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::Path;
use std::time::Duration;

/// Event `i` of the bench journal (see the module docs): its topic and
/// wire payload.
pub fn bench_event(i: u64) -> Result<(String, Vec<u8>)> {
    let ev = bench_registry_event(i)?;
    let env = envelope(RAE_ID, &ev);
    Ok((env.topic()?, env.encode()?))
}

fn bench_registry_event(i: u64) -> Result<Event> {
    let session = i % SESSIONS;
    let seq = i / SESSIONS + 1;
    let text = |s: &str| AttrValue::Text(s.to_string());
    let kind = if seq == 1 {
        let serial = format!("RAEBENCH{session:04}");
        let attrs: Attrs = [
            ("android.adb_state", text("device")),
            ("android.product.manufacturer", text("rae-bench")),
            (
                "android.product.model",
                text(&format!("Bench Phone {session:03}")),
            ),
            (
                "android.build.fingerprint",
                text("rae/bench/bench:14/UQ1A.240105.004/1:user/release-keys"),
            ),
            ("android.build.version.release", text("14")),
            ("android.serialno", text(&serial)),
            ("android.battery_level", AttrValue::Int(100)),
            ("usb.vendor_id", text("18d1")),
            ("usb.product_id", text("4ee7")),
            ("usb.serial", text(&serial)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        EventKind::Attached { attrs }
    } else {
        let state = if seq.is_multiple_of(2) {
            "offline"
        } else {
            "device"
        };
        let level = i64::try_from(100 - seq % 100)?;
        let set: Attrs = [
            ("android.adb_state".to_string(), text(state)),
            ("android.battery_level".to_string(), AttrValue::Int(level)),
        ]
        .into_iter()
        .collect();
        EventKind::Changed {
            set,
            removed: Vec::new(),
        }
    };
    Ok(Event {
        device_id: device_id_for(&format!("serial:RAEBENCH{session:04}")),
        session_id: format!("0190b2c4-5e6f-7a8b-9c0d-{session:012x}").parse()?,
        seq,
        ts_ms: BASE_TS_MS + i * 10,
        kind,
    })
}

/// Writes a journal with events `0..n` (all unpublished) at `path`.
pub fn prefill(path: &Path, n: u64) -> Result<()> {
    let opts = JournalOptions {
        synchronous: Synchronous::Normal,
        rae_id: RAE_ID.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    drop(Journal::open(path, &opts).context("creating the journal")?);
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let mut i = 0;
    while i < n {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO events (session_id, device_id, seq, ts_ms, kind, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let end = (i + PREFILL_TX_ROWS).min(n);
            for j in i..end {
                let ev = bench_registry_event(j)?;
                let payload = envelope(RAE_ID, &ev).encode()?;
                insert.execute(rusqlite::params![
                    ev.session_id.to_string(),
                    ev.device_id,
                    i64::try_from(ev.seq)?,
                    i64::try_from(ev.ts_ms)?,
                    ev.kind.name(),
                    payload
                ])?;
            }
            i = end;
        }
        tx.commit()?;
    }
    // Everything into the main file, so a plain copy is the whole journal.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    Ok(())
}

fn open_ro(journal: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(journal, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// The oldest unpublished event (an index lookup, cheap while the agent runs).
pub fn first_unpublished(journal: &Path) -> Result<Option<i64>> {
    let conn = open_ro(journal)?;
    Ok(conn
        .query_row(
            "SELECT id FROM events WHERE published = 0 ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn unpublished(journal: &Path) -> Result<u64> {
    let n: i64 = open_ro(journal)?.query_row(
        "SELECT count(*) FROM events WHERE published = 0",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n)?)
}
