//! Journal throughput benchmark (prints figures; not a test).
//!
//! For each `synchronous` mode it journals N `changed` events through the
//! real path (registry transition + one journal transaction per
//! observation), then inserts the very same event rows with a bare rusqlite
//! loop (one transaction per row, same pragmas, same table) into a fresh
//! database, and prints both rates and their ratio.
//!
//! Run: `cargo bench -p rae-agent --bench journal_throughput`
//! Optional: `RAE_BENCH_EVENTS=50000` (NORMAL; FULL uses a tenth).

use rae_agent::config::Synchronous;
use rae_agent::journal::{Journal, JournalOptions};
use rae_agent::registry::{FacetKey, Identifier, Observation, Registry, RegistryConfig, Source};
use rae_protocol::{AttrValue, Attrs};
use rusqlite::{params, Connection};
use std::time::Instant;

struct Row {
    session_id: String,
    device_id: String,
    seq: i64,
    ts: i64,
    kind: &'static str,
    payload: Vec<u8>,
}

fn observation(i: u64) -> Observation {
    let attrs: Attrs = [
        ("usb.vendor_id".to_string(), AttrValue::from("0403")),
        ("usb.product_id".to_string(), AttrValue::from("6001")),
        (
            "usb.model".to_string(),
            AttrValue::from("FT232 Serial (UART) IC"),
        ),
        ("usb.serial".to_string(), AttrValue::from("A10KZ3X9")),
        ("tty.node".to_string(), AttrValue::from("/dev/ttyUSB0")),
        (
            "firmware".to_string(),
            AttrValue::from(format!("build-{i}")),
        ),
    ]
    .into_iter()
    .collect();
    Observation::present(
        FacetKey::new(Source::Udev, "/sys/devices/usb1/1-2"),
        vec![Identifier::Serial {
            serial: "A10KZ3X9".into(),
            interface: None,
        }],
        attrs,
    )
}

/// Journals `n` changed events; returns (events/s, the rows written).
fn journal_run(dir: &std::path::Path, sync: Synchronous, n: u64) -> (f64, Vec<Row>) {
    let path = dir.join("journal.db");
    let opts = JournalOptions {
        synchronous: sync,
        rae_id: "rae-bench".into(),
        agent_version: "bench".into(),
    };
    let mut journal = Journal::open(&path, &opts).expect("open").journal;
    let mut reg = Registry::new(RegistryConfig::default());
    let t = reg.observe(&observation(0), 0, uuid::Uuid::now_v7());
    journal.commit(&t, 0).expect("attach");
    reg.apply(t);
    let start = Instant::now();
    for i in 1..=n {
        let t = reg.observe(&observation(i), i, uuid::Uuid::now_v7());
        journal.commit(&t, i).expect("commit");
        reg.apply(t);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(journal);
    let conn = Connection::open(&path).expect("reopen");
    let mut stmt = conn
        .prepare("SELECT session_id, device_id, seq, ts_ms, payload FROM events WHERE kind = 'changed' ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok(Row {
                session_id: r.get(0)?,
                device_id: r.get(1)?,
                seq: r.get(2)?,
                ts: r.get(3)?,
                kind: "changed",
                payload: r.get(4)?,
            })
        })
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    (rate, rows)
}

/// Inserts the same rows with a bare loop, one transaction per row.
fn bare_run(dir: &std::path::Path, sync: Synchronous, rows: &[Row]) -> f64 {
    let mut conn = Connection::open(dir.join("bare.db")).expect("open");
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .expect("wal");
    let s = match sync {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", s).expect("sync");
    conn.execute_batch(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL,
             device_id TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
             kind TEXT NOT NULL, payload BLOB NOT NULL, published INTEGER NOT NULL DEFAULT 0,
             UNIQUE (session_id, seq));
         CREATE INDEX events_unpublished ON events (id) WHERE published = 0;
         CREATE INDEX events_by_device ON events (device_id, id);",
    )
    .expect("schema");
    let start = Instant::now();
    for r in rows {
        let tx = conn.transaction().expect("tx");
        tx.prepare_cached(
            "INSERT INTO events (session_id, device_id, seq, ts_ms, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .expect("prepare")
        .execute(params![r.session_id, r.device_id, r.seq, r.ts, r.kind, r.payload])
        .expect("insert");
        tx.commit().expect("commit");
    }
    rows.len() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::var("RAE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!("journal throughput: `changed` events, one transaction per observation");
    println!(
        "{:<8} {:>8} {:>14} {:>14} {:>7}",
        "sync", "events", "journal ev/s", "bare ev/s", "ratio"
    );
    for (sync, name, count) in [
        (Synchronous::Normal, "NORMAL", n),
        (Synchronous::Full, "FULL", (n / 10).max(100)),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal_rate, rows) = journal_run(dir.path(), sync, count);
        let bare_rate = bare_run(dir.path(), sync, &rows);
        println!(
            "{name:<8} {count:>8} {journal_rate:>14.0} {bare_rate:>14.0} {:>7.2}",
            journal_rate / bare_rate
        );
    }
}
