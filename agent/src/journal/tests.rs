//! Journal behaviour against real SQLite files in temp dirs.

use super::read::{FindError, JournalReader};
use super::*;
use crate::registry::{FacetKey, Identifier, Observation, Registry, RegistryConfig, Source};
use rae_protocol::{AttrValue, Attrs, Envelope};
use uuid::Uuid;

fn opts() -> JournalOptions {
    JournalOptions {
        synchronous: Synchronous::Normal,
        rae_id: "rae-test".into(),
        agent_version: "0.0.0".into(),
    }
}

fn obs(syspath: &str, serial: &str, model: &str) -> Observation {
    Observation::present(
        FacetKey::new(Source::Udev, syspath),
        vec![Identifier::Serial {
            serial: serial.into(),
            interface: None,
        }],
        [("usb.model".to_string(), AttrValue::from(model))]
            .into_iter()
            .collect::<Attrs>(),
    )
}

/// Observes, commits and applies, like the registry task.
fn feed(reg: &mut Registry, j: &mut Journal, o: &Observation, now: u64) {
    let t = reg.observe(o, now, Uuid::now_v7());
    j.commit(&t, now).expect("commit");
    reg.apply(t);
}

fn count(path: &Path, sql: &str) -> i64 {
    let c = Connection::open(path).expect("open");
    c.query_row(sql, [], |r| r.get(0)).expect("query")
}

#[test]
fn events_and_device_state_are_committed_together_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let mut j = Journal::open(&path, &opts()).expect("open").journal;
    let mut reg = Registry::new(RegistryConfig::default());
    feed(&mut reg, &mut j, &obs("/a", "S1", "X"), 1);
    feed(&mut reg, &mut j, &obs("/a", "S1", "Y"), 2);
    drop(j);
    let opened = Journal::open(&path, &opts()).expect("reopen");
    assert_eq!(opened.boot_count, 2);
    let snap = opened.journal.snapshot().expect("snapshot");
    assert_eq!(snap.devices, reg.devices().cloned().collect::<Vec<_>>());
    assert!(snap.aliases.iter().any(|(a, _)| a == "serial:S1"));
    assert_eq!(count(&path, "SELECT count(*) FROM events"), 2);
    assert_eq!(count(&path, "SELECT last_seq FROM sessions"), 2);
}

#[test]
fn stored_payloads_are_wire_envelopes_in_journal_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let mut j = Journal::open(&path, &opts()).expect("open").journal;
    let mut reg = Registry::new(RegistryConfig::default());
    for (i, m) in ["A", "B", "C"].iter().enumerate() {
        feed(&mut reg, &mut j, &obs("/a", "S1", m), i as u64);
    }
    let r = JournalReader::open(&path).expect("reader");
    let dev = r.find_device("S1").expect("by serial alias");
    let seqs: Vec<u64> = r
        .history(&dev.device_id, 10)
        .expect("history")
        .into_iter()
        .map(|e| {
            let env: Envelope = e.envelope.expect("decodes");
            assert_eq!(env.rae_id, "rae-test");
            env.seq
        })
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[test]
fn a_corrupt_database_is_moved_aside_and_a_fresh_one_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    std::fs::write(&path, b"this is not a database, it is garbage ".repeat(200)).expect("write");
    let opened = Journal::open(&path, &opts()).expect("recovers");
    let aside = opened.moved_aside.expect("moved aside");
    assert!(
        aside.to_string_lossy().contains(".corrupt-"),
        "{}",
        aside.display()
    );
    assert!(std::fs::read(&aside)
        .expect("kept")
        .starts_with(b"this is not"));
    assert_eq!(opened.boot_count, 1, "fresh journal");
}

#[test]
fn a_database_from_a_newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    {
        let c = Connection::open(&path).expect("create");
        c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .expect("future schema");
    }
    let before = std::fs::read(&path).expect("read");
    let err = Journal::open(&path, &opts()).expect_err("refused");
    let msg = err.to_string();
    assert!(
        matches!(err, JournalError::NewerSchema { found: 99, .. }),
        "{msg}"
    );
    assert!(msg.contains("upgrade rae-agent"), "{msg}");
    assert_eq!(std::fs::read(&path).expect("read"), before);
    assert!(matches!(
        JournalReader::open(&path),
        Err(JournalError::NewerSchema { .. })
    ));
}

#[test]
fn a_full_database_fails_the_whole_transaction_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let mut j = Journal::open(&path, &opts()).expect("open").journal;
    let mut reg = Registry::new(RegistryConfig::default());
    feed(&mut reg, &mut j, &obs("/a", "S1", "X"), 1);
    let pages: i64 = count(&path, "PRAGMA page_count");
    let fault = j.fault_handle();
    fault.limit_pages(u64::try_from(pages).expect("pages"));
    let big = "x".repeat(64 * 1024);
    let t = reg.observe(&obs("/b", "S2", &big), 2, Uuid::now_v7());
    let err = j.commit(&t, 2).expect_err("disk full");
    assert!(err.is_full(), "{err}");
    assert_eq!(
        count(&path, "SELECT count(*) FROM events"),
        1,
        "nothing partial"
    );
    fault.unlimited();
    j.commit(&t, 3).expect("commit after space returns");
    assert_eq!(count(&path, "SELECT count(*) FROM events"), 2);
}

#[test]
fn retention_deletes_only_published_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let mut j = Journal::open(&path, &opts()).expect("open").journal;
    let mut reg = Registry::new(RegistryConfig::default());
    for i in 0..10u64 {
        feed(&mut reg, &mut j, &obs("/a", "S1", &i.to_string()), i * 1000);
    }
    j.mark_published(&[1, 2, 3, 4, 5, 6]).expect("mark");
    // At t = 10 s with max age 6.5 s, ids 1..=4 (ts 0..=3 s) are too old;
    // keeping 2 published events would also drop id 4.
    let deleted = j.apply_retention(10_000, 6_500, 2).expect("retention");
    assert_eq!(deleted, 4, "published ids 1..=4 go");
    let left: Vec<i64> = {
        let c = Connection::open(&path).expect("open");
        let mut s = c
            .prepare("SELECT id FROM events ORDER BY id")
            .expect("prep");
        s.query_map([], |r| r.get(0))
            .expect("q")
            .map(|r| r.expect("row"))
            .collect()
    };
    assert_eq!(left, [5, 6, 7, 8, 9, 10]);
    assert_eq!(j.apply_retention(u64::MAX / 2, 0, 1).expect("all old"), 2);
    assert_eq!(
        count(&path, "SELECT count(*) FROM events WHERE published = 0"),
        4
    );
}

#[test]
fn retention_spanning_many_chunks_keeps_the_newest_and_every_unpublished_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let mut j = Journal::open(&path, &opts()).expect("open").journal;
    {
        let c = Connection::open(&path).expect("open");
        c.execute_batch("BEGIN").expect("begin");
        for id in 1..=12_345i64 {
            // Every 7th event is still unpublished, spread through the range.
            let published = i64::from(id % 7 != 0);
            c.execute(
                "INSERT INTO events (id, session_id, device_id, seq, ts_ms, kind, payload, published)
                 VALUES (?1, 's', 'd', ?1, 0, 'changed', x'00', ?2)",
                rusqlite::params![id, published],
            )
            .expect("insert");
        }
        c.execute_batch("COMMIT").expect("commit");
    }
    let published = count(&path, "SELECT count(*) FROM events WHERE published = 1");
    let unpublished = count(&path, "SELECT count(*) FROM events WHERE published = 0");
    // Nothing is old by age; keep the newest 100 published events.
    let deleted = j.apply_retention(0, u64::MAX, 100).expect("retention");
    assert_eq!(deleted as i64, published - 100);
    assert_eq!(
        count(&path, "SELECT count(*) FROM events WHERE published = 1"),
        100
    );
    assert_eq!(
        count(&path, "SELECT count(*) FROM events WHERE published = 0"),
        unpublished
    );
    assert_eq!(
        count(&path, "SELECT min(id) FROM events WHERE published = 1"),
        12_230
    );
}

#[test]
fn the_reader_finds_devices_by_prefix_and_reports_ambiguity_and_absence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    assert!(matches!(
        JournalReader::open(&path),
        Err(JournalError::Missing { .. })
    ));
    let mut j = Journal::open(&path, &opts()).expect("open").journal;
    let mut reg = Registry::new(RegistryConfig::default());
    feed(&mut reg, &mut j, &obs("/a", "S1", "X"), 1);
    feed(&mut reg, &mut j, &obs("/b", "S2", "X"), 1);
    let r = JournalReader::open(&path).expect("reader");
    let ids: Vec<String> = reg.devices().map(|d| d.device_id.clone()).collect();
    assert_eq!(
        r.find_device(&ids[0][..6]).expect("prefix").device_id,
        ids[0]
    );
    assert!(matches!(
        r.find_device(""),
        Err(FindError::NotFound(_)) | Err(FindError::Ambiguous { .. })
    ));
    assert!(matches!(r.find_device("nope"), Err(FindError::NotFound(_))));
    let stats = r.stats().expect("stats");
    assert_eq!((stats.devices_present, stats.unpublished), (2, 2));
}

#[test]
fn a_backlog_over_its_bound_is_compacted_and_still_rebuilds_every_devices_state() {
    use super::compaction::Bounds;
    use crate::registry::diff::apply_diff;
    use rae_protocol::EventKind;
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let mut j = Journal::open(&path, &opts()).expect("open").journal;
    let mut reg = Registry::new(RegistryConfig::default());
    for i in 0..200u64 {
        let serial = format!("S{}", i % 3);
        feed(
            &mut reg,
            &mut j,
            &obs(&format!("/{serial}"), &serial, &i.to_string()),
            i,
        );
    }
    // S2 is unplugged for good: attached ... detached must both survive.
    let t = reg.observe(
        &Observation::absent(FacetKey::new(Source::Udev, "/S2")),
        300,
        Uuid::now_v7(),
    );
    j.commit(&t, 300).expect("commit");
    reg.apply(t);
    let t = reg.expire(10_000);
    j.commit(&t, 10_000).expect("commit");
    reg.apply(t);
    let (report, size) = j
        .compact(Bounds {
            max_events: 20,
            max_bytes: u64::MAX,
        })
        .expect("compact");
    assert!(report.folded > 0 && report.dropped == 0, "{report:?}");
    let r = JournalReader::open(&path).expect("reader");
    let unpublished = r.stats().expect("stats").unpublished;
    assert!(unpublished <= 20);
    assert_eq!(
        size,
        j.backlog_size().expect("size"),
        "size after compaction"
    );
    assert_eq!(size.events, unpublished);
    // Rebuild what a consumer would see from the remaining events.
    let mut seen: BTreeMap<String, (Attrs, u64, bool)> = BTreeMap::new();
    for d in reg.devices() {
        for e in r.history(&d.device_id, 1000).expect("history") {
            let env = e.envelope.expect("decodes");
            let state = seen.entry(env.device_id.clone()).or_default();
            assert!(env.seq > state.1, "order kept");
            state.1 = env.seq;
            match env.kind {
                EventKind::Attached { attrs } | EventKind::Checkpoint { attrs } => state.0 = attrs,
                EventKind::Changed { set, removed } => apply_diff(&mut state.0, &set, &removed),
                EventKind::Detached { .. } => state.2 = true,
            }
        }
    }
    for d in reg.devices() {
        let (attrs, seq, detached) = &seen[&d.device_id];
        assert_eq!(attrs, &d.attrs, "state of {}", d.identity);
        assert_eq!(*detached, d.session.is_none());
        if let Some(s) = &d.session {
            assert_eq!(*seq, s.last_seq);
        }
    }
}

#[test]
fn when_folding_is_not_enough_the_oldest_deltas_are_dropped_and_reported() {
    use super::compaction::Bounds;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.db");
    let mut j = Journal::open(&path, &opts()).expect("open").journal;
    let mut reg = Registry::new(RegistryConfig::default());
    for i in 0..10u64 {
        let serial = format!("S{i}");
        feed(
            &mut reg,
            &mut j,
            &obs(&format!("/{serial}"), &serial, "a"),
            i,
        );
        feed(
            &mut reg,
            &mut j,
            &obs(&format!("/{serial}"), &serial, "b"),
            i,
        );
    }
    let (report, size) = j
        .compact(Bounds {
            max_events: 12,
            max_bytes: u64::MAX,
        })
        .expect("compact");
    assert_eq!(report.dropped, 8);
    assert_eq!(report.needs_checkpoint.len(), 8);
    assert_eq!(
        size.events, 12,
        "the size returned is the one after compaction"
    );
    assert_eq!(
        count(&path, "SELECT count(*) FROM events WHERE kind = 'attached'"),
        10
    );
}
