//! The Cloud Registry end to end from Kafka: real Tansu, real PostgreSQL,
//! the real `rae-cloud-ingest registry` binary.

#![allow(clippy::unwrap_used)]

mod registry_support;

use rae_protocol::EventKind;
use registry_support::*;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

fn history(cloud: &Cloud, s: &Session) -> i64 {
    cloud.count(&format!(
        "SELECT count(*) FROM device_events WHERE session_id = '{}'",
        s.id
    ))
}

fn attr(cloud: &Cloud, s: &Session, name: &str) -> Option<String> {
    cloud
        .pg
        .query(&format!(
            "SELECT value FROM device_attributes WHERE session_id = '{}' AND name = '{name}'",
            s.id
        ))
        .ok()?
        .first()?
        .first()?
        .clone()
}

/// A session's stream: attached, then `n - 1` changes of `counter`.
fn stream(s: &mut Session, n: u64) -> Vec<rae_protocol::Envelope> {
    let mut out = vec![s.attached(&[("counter", 0), ("fixed", 7)])];
    for i in 1..n {
        out.push(s.changed(&[("counter", i as i64)]));
    }
    out
}

#[test]
fn registry_applies_events_in_order_and_ignores_duplicates() {
    let cloud = Cloud::start(2, "").unwrap();
    let mut reg = cloud.registry().unwrap();
    let mut sessions: Vec<Session> = (0..4)
        .map(|i| Session::new("box-a", &format!("dev{i}")))
        .collect();
    let mut all = Vec::new();
    for s in &mut sessions {
        all.extend(stream(s, 50));
    }
    cloud.send(&all).unwrap();
    // Redelivery: the same records again.
    cloud.send(&all).unwrap();
    for s in &sessions {
        wait("all events applied", CONVERGE, || last_seq(&cloud, s) == 50)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
            .unwrap();
    }
    wait("duplicates counted", CONVERGE, || {
        cloud.metric("rae_registry_events_duplicate_total") == Some(200)
    })
    .unwrap();
    // 400 records in batches of at most 1000: the last batch's size and
    // latency, and the lag of both partitions back to 0 (librdkafka
    // statistics, every 5 s).
    let size = cloud.metric("rae_registry_batch_size").unwrap();
    assert!((1..=400).contains(&size), "batch size {size}");
    assert!(cloud.metric("rae_registry_batch_latency_ms").unwrap() >= 0);
    // The histograms saw every committed batch and every record.
    let batches = cloud.metric("rae_registry_batches_total");
    assert!(batches.is_some_and(|n| n >= 1), "{batches:?}");
    assert_eq!(
        cloud.metric("rae_registry_batch_duration_seconds_count"),
        batches
    );
    assert_eq!(
        cloud.metric("rae_registry_batch_records_sum"),
        cloud.metric("rae_registry_batch_records_total")
    );
    wait("lag 0 on both partitions", CONVERGE, || {
        lags_at(cloud.metrics_port).is_some_and(|l| {
            l.keys().filter(|k| k.starts_with(EVENTS)).count() == 2 && l.values().all(|&v| v == 0)
        })
    })
    .unwrap();
    for s in &sessions {
        assert_eq!(history(&cloud, s), 50, "one history row per event");
        assert_eq!(attr(&cloud, s, "counter").as_deref(), Some("49"));
        assert_eq!(attr(&cloud, s, "fixed").as_deref(), Some("7"));
    }
    assert_eq!(
        cloud.count("SELECT count(*) FROM device_sessions WHERE stale"),
        0
    );
    assert_eq!(
        cloud.count("SELECT count(*) FROM devices WHERE rae_id = 'box-a'"),
        4
    );
    let status = reg.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status:?}\n{}", reg.log_tail());
}

#[test]
fn a_reorder_across_a_batch_boundary_waits_for_the_next_batch_instead_of_a_gap() {
    // Batches of 2 records: [1, 3] [2, 4] [5] as two bridges could deliver
    // them. Without the deferral seq 3 ends the first batch as a gap.
    let cloud = Cloud::start(1, "batch_max_records = 2\nbatch_max_wait_ms = 2000").unwrap();
    let mut s = Session::new("box-d", "dev0");
    let one = s.attached(&[("n", 1)]);
    let two = s.changed(&[("n", 2)]);
    let three = s.changed(&[("n", 3)]);
    let four = s.changed(&[("n", 4)]);
    let five = s.changed(&[("n", 5)]);
    // Pre-loaded, so every batch fills to 2 at once.
    cloud.send(&[one, three, two, four, five]).unwrap();
    let reg = cloud.registry().unwrap();
    wait("all events applied", CONVERGE, || last_seq(&cloud, &s) == 5)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
        .unwrap();
    assert_eq!(cloud.metric("rae_registry_gaps_total"), Some(0));
    assert!(
        cloud
            .metric("rae_registry_records_deferred_total")
            .is_some_and(|n| n >= 1),
        "{:?}",
        cloud.metric("rae_registry_records_deferred_total")
    );
    assert_eq!(history(&cloud, &s), 5);
    assert_eq!(attr(&cloud, &s, "n").as_deref(), Some("5"));
    assert_eq!(
        cloud.count("SELECT count(*) FROM device_sessions WHERE stale"),
        0
    );
}

#[test]
fn an_envelope_alone_in_a_batch_closed_early_waits_for_one_reordered_behind_it() {
    // Two bridges on a quiet stream: seq 3 reaches Kafka 300 ms before
    // seq 2. Its batch holds all there is and closes at once; without the
    // whole-batch deferral seq 3 would be a gap.
    let cloud = Cloud::start(1, "batch_max_wait_ms = 3000").unwrap();
    let reg = cloud.registry().unwrap();
    let mut s = Session::new("box-r", "dev0");
    let one = s.attached(&[("n", 1)]);
    let two = s.changed(&[("n", 2)]);
    let three = s.changed(&[("n", 3)]);
    cloud.send(&[one]).unwrap();
    wait("seq 1 applied", CONVERGE, || last_seq(&cloud, &s) == 1)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
        .unwrap();
    cloud.send(&[three]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cloud.send(&[two]).unwrap();
    wait("all events applied", CONVERGE, || last_seq(&cloud, &s) == 3)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
        .unwrap();
    assert_eq!(cloud.metric("rae_registry_gaps_total"), Some(0));
    assert_eq!(cloud.metric("rae_registry_records_deferred_total"), Some(1));
    assert_eq!(attr(&cloud, &s, "n").as_deref(), Some("3"));
    assert_eq!(
        cloud.count("SELECT count(*) FROM device_sessions WHERE stale"),
        0
    );
}

#[test]
fn a_gap_marks_the_session_stale_and_produces_exactly_one_resync_record() {
    let cloud = Cloud::start(1, "resync_min_interval_secs = 3600").unwrap();
    let reg = cloud.registry().unwrap();
    let mut s = Session::new("box-g", "dev-g");
    let mut envs = vec![s.attached(&[("a", 1)]), s.changed(&[("a", 2)])];
    s.lose(2);
    envs.push(s.changed(&[("a", 5)]));
    envs.push(s.changed(&[("a", 6)]));
    cloud.send(&envs).unwrap();
    wait("session stale", CONVERGE, || {
        cloud.count(&format!(
            "SELECT count(*) FROM device_sessions WHERE stale AND session_id = '{}'",
            s.id
        )) == 1
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    assert_eq!(last_seq(&cloud, &s), 2, "nothing applied across the gap");
    assert_eq!(attr(&cloud, &s, "a").as_deref(), Some("2"));
    // More gapped events within the interval: still one resync.
    let more = vec![s.changed(&[("a", 7)])];
    cloud.send(&more).unwrap();
    wait("gaps counted", CONVERGE, || {
        cloud.metric("rae_registry_gaps_total") == Some(3)
    })
    .unwrap();
    let commands = cloud
        .kafka
        .read(COMMANDS, 2, Duration::from_secs(5))
        .unwrap();
    assert_eq!(commands.len(), 1, "{commands:?}");
    assert_eq!(cloud.metric("rae_registry_resyncs_total"), Some(1));
    let c = &commands[0];
    assert_eq!(c.key_str(), "box-g");
    assert_eq!(c.header_str("command").as_deref(), Some("resync"));
    let v: ciborium::Value = ciborium::from_reader(c.value.as_deref().unwrap()).unwrap();
    assert_eq!(
        v,
        ciborium::Value::Map(vec![(
            ciborium::Value::Text("session_id".into()),
            ciborium::Value::Text(s.id.to_string())
        )])
    );
    // The agent answers with a checkpoint: stale cleared, attributes replaced.
    let ck = s.checkpoint(&[("a", 8), ("b", 1)]);
    let ck_seq = ck.seq as i64;
    cloud.send(&[ck]).unwrap();
    wait("checkpoint applied", CONVERGE, || {
        last_seq(&cloud, &s) == ck_seq
    })
    .unwrap();
    assert_eq!(
        cloud.count(&format!(
            "SELECT count(*) FROM device_sessions WHERE stale AND session_id = '{}'",
            s.id
        )),
        0
    );
    assert_eq!(attr(&cloud, &s, "a").as_deref(), Some("8"));
    assert_eq!(attr(&cloud, &s, "b").as_deref(), Some("1"));
}

/// A session attached with `a = 1` (seq 1), and its record key.
fn attached_session(cloud: &Cloud, rae_id: &str, device_id: &str) -> (Session, String) {
    let mut s = Session::new(rae_id, device_id);
    let key = s
        .at(1, EventKind::Detached { reason: "x".into() })
        .topic()
        .unwrap();
    cloud.send(&[s.attached(&[("a", 1)])]).unwrap();
    (s, key)
}

#[test]
fn garbage_lands_in_the_dlq_with_a_reason_and_the_partition_keeps_flowing() {
    let cloud = Cloud::start(1, "").unwrap();
    let reg = cloud.registry().unwrap();
    let (mut s, key) = attached_session(&cloud, "box-d", "dev-d");
    cloud
        .send_raw(EVENTS, key.as_bytes(), b"\xff\x00 not cbor")
        .unwrap();
    let mut future = s.changed(&[("a", 2)]);
    future.schema = 1;
    let mut bytes = future.encode().unwrap();
    // "v": 1 → "v": 9 (the first item after the map header and the "v" key).
    assert_eq!(&bytes[1..4], b"\x61v\x01");
    bytes[3] = 9;
    cloud.send_raw(EVENTS, key.as_bytes(), &bytes).unwrap();
    // Flowing on: seq 2 was dead-lettered, so 3 shows a gap; a checkpoint heals.
    cloud.send(&[s.checkpoint(&[("a", 3)])]).unwrap();
    wait("events after the garbage applied", CONVERGE, || {
        last_seq(&cloud, &s) == 3
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    let dead = cloud.kafka.read(DLQ, 3, Duration::from_secs(10)).unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].header_str("error_kind").as_deref(), Some("decode"));
    assert!(
        dead[0].header_str("error").unwrap().contains("CBOR"),
        "{dead:?}"
    );
    assert_eq!(dead[0].value.as_deref(), Some(&b"\xff\x00 not cbor"[..]));
    assert_eq!(dead[0].key_str(), key);
    assert_eq!(dead[1].header_str("error_kind").as_deref(), Some("schema"));
    assert!(
        dead[1]
            .header_str("error")
            .unwrap()
            .contains("unsupported envelope schema 9"),
        "{dead:?}"
    );
    assert_eq!(dead[1].header_str("source_offset").as_deref(), Some("2"));
    assert_eq!(cloud.metric("rae_registry_dlq_total"), Some(2));
    assert_eq!(attr(&cloud, &s, "a").as_deref(), Some("3"));
}

#[test]
fn garbage_too_large_to_dead_letter_whole_is_cut_and_the_partition_keeps_flowing() {
    let cloud = Cloud::start(1, "").unwrap();
    let reg = cloud.registry().unwrap();
    let (mut s, key) = attached_session(&cloud, "box-l", "dev-l");
    // Not CBOR, and larger than the registry producer's message.max.bytes
    // (librdkafka's default 1,000,000): whole, its dead letter could never
    // be produced.
    let garbage = vec![0xffu8; 1_040_000];
    cloud
        .send_large_raw(EVENTS, key.as_bytes(), &garbage)
        .unwrap();
    cloud.send(&[s.checkpoint(&[("a", 3)])]).unwrap();
    wait("events after the large garbage applied", CONVERGE, || {
        last_seq(&cloud, &s) == 2
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    let dead = cloud.kafka.read(DLQ, 1, Duration::from_secs(10)).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.header_str("error_kind").as_deref(), Some("decode"));
    assert_eq!(d.header_str("truncated_from").as_deref(), Some("1040000"));
    let value = d.value.as_deref().unwrap_or_default();
    assert!(
        value.len() < 1_000_000 && value.len() > 900_000,
        "{}",
        value.len()
    );
    assert!(value.iter().all(|&b| b == 0xff));
    assert_eq!(d.key_str(), key);
    assert_eq!(cloud.metric("rae_registry_dlq_total"), Some(1));
}

#[test]
fn a_ten_second_database_outage_mid_stream_loses_nothing() {
    let cloud = Cloud::start(2, "batch_max_records = 50").unwrap();
    let mut pg_ctl = cloud;
    let reg = pg_ctl.registry().unwrap();
    let mut sessions: Vec<Session> = (0..6)
        .map(|i| Session::new("box-o", &format!("dev{i}")))
        .collect();
    let streams: Vec<Vec<rae_protocol::Envelope>> =
        sessions.iter_mut().map(|s| stream(s, 100)).collect();
    let first: Vec<_> = streams.iter().flat_map(|s| s[..40].to_vec()).collect();
    let rest: Vec<_> = streams.iter().flat_map(|s| s[40..].to_vec()).collect();
    pg_ctl.send(&first).unwrap();
    wait("first part applied", CONVERGE, || {
        sessions.iter().all(|s| last_seq(&pg_ctl, s) == 40)
    })
    .unwrap();
    pg_ctl.pg.stop().unwrap();
    pg_ctl.send(&rest).unwrap();
    std::thread::sleep(Duration::from_secs(10));
    wait("the registry noticed the outage", CONVERGE, || {
        pg_ctl.metric("rae_registry_db_errors_total").unwrap_or(0) > 0
    })
    .unwrap();
    // Both partitions hold records of the second part (the keys are
    // fixed: dev0..dev5), so both pipelines retry.
    wait("both pipelines count as retrying", CONVERGE, || {
        pg_ctl.metric("rae_registry_retrying") == Some(2)
    })
    .unwrap();
    pg_ctl.pg.start_again().unwrap();
    for s in &sessions {
        wait("everything applied after the outage", CONVERGE, || {
            last_seq(&pg_ctl, s) == 100
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
        .unwrap();
        assert_eq!(history(&pg_ctl, s), 100);
        assert_eq!(attr(&pg_ctl, s, "counter").as_deref(), Some("99"));
    }
    assert_eq!(
        pg_ctl.count("SELECT count(*) FROM device_sessions WHERE stale"),
        0
    );
    assert_eq!(pg_ctl.metric("rae_registry_retrying"), Some(0));
}

#[test]
fn a_registry_killed_mid_batch_converges_without_duplicate_history_rows() {
    let cloud = Cloud::start(2, "batch_max_records = 100").unwrap();
    let mut sessions: Vec<Session> = (0..20)
        .map(|i| Session::new("box-k", &format!("dev{i}")))
        .collect();
    let all: Vec<_> = sessions.iter_mut().flat_map(|s| stream(s, 200)).collect();
    cloud.send(&all).unwrap();
    let mut reg = cloud.registry().unwrap();
    wait("some batches applied", CONVERGE, || {
        cloud.count("SELECT count(*) FROM device_events") >= 300
    })
    .unwrap();
    // SIGKILL in the middle of the stream, then a fresh registry.
    reg.kill();
    let applied_at_kill = cloud.count("SELECT count(*) FROM device_events");
    assert!(applied_at_kill < 4000, "killed too late to be mid-stream");
    reg.restart().unwrap();
    for s in &sessions {
        wait("convergence after the kill", CONVERGE, || {
            last_seq(&cloud, s) == 200
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}: {} history rows (at kill {applied_at_kill}), records in {:?}, sessions {:?}\n{}",
                cloud.count("SELECT count(*) FROM device_events"),
                cloud.metric("rae_registry_records_in_total"),
                cloud.pg.query("SELECT device_id, last_seq, stale_expected, stale_got, (SELECT min(kafka_offset)::text || '-' || max(kafka_offset)::text || ' p' || min(kafka_partition)::text FROM device_events e WHERE e.session_id = s.session_id) FROM device_sessions s WHERE stale OR last_seq < 200 ORDER BY 1").ok(),
                reg.log_text().lines().filter(|l| !l.contains("DEBUG")).collect::<Vec<_>>().join("\n")
            )
        })
        .unwrap();
        assert_eq!(history(&cloud, s), 200);
        assert_eq!(attr(&cloud, s, "counter").as_deref(), Some("199"));
    }
    assert_eq!(cloud.count("SELECT count(*) FROM device_events"), 4000);
}

#[test]
fn sigterm_commits_the_offsets_so_a_restart_reads_nothing_again() {
    let cloud = Cloud::start(1, "").unwrap();
    let mut reg = cloud.registry().unwrap();
    let mut s = Session::new("box-t", "dev-t");
    cloud.send(&stream(&mut s, 30)).unwrap();
    wait("applied", CONVERGE, || last_seq(&cloud, &s) == 30).unwrap();
    let status = reg.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status:?}\n{}", reg.log_tail());
    assert!(
        reg.log_text().contains("offsets committed"),
        "{}",
        reg.log_tail()
    );
    let reg = cloud.registry().unwrap();
    // With nothing new to read, its lag is 0, not the whole log
    // (`partition_lag`'s fallback for a group that has committed nothing):
    // librdkafka reports no lag of its own until this consumer commits,
    // which it never does without new records; checked again after the
    // next statistics (every 5 s).
    let events_lag =
        || lags_at(cloud.metrics_port).and_then(|l| l.get(&format!("{EVENTS}/0")).copied());
    wait("the restarted registry's lag", CONVERGE, || {
        events_lag().is_some()
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    assert_eq!(events_lag(), Some(0), "lag of a partition read to its end");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(events_lag(), Some(0));
    cloud.send(&[s.changed(&[("counter", 1000)])]).unwrap();
    wait("the new event applied", CONVERGE, || {
        last_seq(&cloud, &s) == 31
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    // Only the new record was read: nothing before the committed offset.
    assert_eq!(cloud.metric("rae_registry_records_in_total"), Some(1));
    assert_eq!(cloud.metric("rae_registry_events_duplicate_total"), Some(0));
}

#[test]
fn sigterm_during_a_database_outage_exits_within_its_deadline_and_loses_nothing() {
    let mut cloud = Cloud::start(1, "").unwrap();
    let mut s = Session::new("box-q", "dev-q");
    let events = stream(&mut s, 20);
    cloud.pg.stop().unwrap();
    let mut reg = cloud.registry().unwrap();
    cloud.send(&events).unwrap();
    wait("the batch is being retried", CONVERGE, || {
        cloud.metric("rae_registry_retrying") == Some(1)
    })
    .unwrap();
    // The batch can never commit: shutdown gives it up after its 20 s
    // deadline, commits nothing for it and exits cleanly, inside
    // systemd's TimeoutStopSec=30.
    let asked = std::time::Instant::now();
    let status = reg.terminate(Duration::from_secs(30)).unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}\n{}", reg.log_tail());
    assert!(
        took < Duration::from_secs(28),
        "{took:?}\n{}",
        reg.log_tail()
    );
    assert!(
        reg.log_text().contains("shutdown deadline"),
        "{}",
        reg.log_tail()
    );
    // Nothing was committed past it: a new registry applies all of it.
    cloud.pg.start_again().unwrap();
    let reg = cloud.registry().unwrap();
    wait("everything applied after the restart", CONVERGE, || {
        last_seq(&cloud, &s) == 20
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    assert_eq!(history(&cloud, &s), 20);
}

#[test]
fn box_status_records_update_the_boxes_table() {
    let cloud = Cloud::start(1, "").unwrap();
    let _reg = cloud.registry().unwrap();
    cloud
        .send_raw(
            STATUS,
            b"rae/v1/box-s/status",
            &status_payload("online", 100),
        )
        .unwrap();
    wait("box online", CONVERGE, || {
        cloud.count("SELECT count(*) FROM boxes WHERE rae_id = 'box-s' AND online") == 1
    })
    .unwrap();
    // As a row written before schema version 4 holds: no digests.
    cloud
        .pg
        .query("UPDATE boxes SET recent_status = NULL")
        .unwrap();
    cloud
        .send_raw(
            STATUS,
            b"rae/v1/box-s/status",
            &status_payload("offline", 90),
        )
        .unwrap();
    wait("box offline", CONVERGE, || {
        cloud.count("SELECT count(*) FROM boxes WHERE rae_id = 'box-s' AND NOT online") == 1
    })
    .unwrap();
    let row = cloud
        .pg
        .query("SELECT agent_version, boot_count, last_birth_ms, last_will_ms FROM boxes")
        .unwrap();
    assert_eq!(
        row[0],
        vec![
            Some("9.9".to_string()),
            Some("4".to_string()),
            Some("100".to_string()),
            Some("90".to_string())
        ]
    );
}

/// Two bridges each forward every status message. Bridge A's copies of
/// the birth and the will land, then lagging bridge B's copy of the birth
/// (B's copy of the will would follow, but B is stalled): the box must
/// stay offline, in one batch and across batches.
#[test]
fn a_lagging_bridges_copy_of_an_earlier_birth_does_not_bring_the_box_back_online() {
    let cloud = Cloud::start(1, "").unwrap();
    let reg = cloud.registry().unwrap();
    let topic = b"rae/v1/box-s/status";
    let taken = |cloud: &Cloud| {
        cloud.metric("rae_registry_status_total").unwrap_or(0)
            + cloud
                .metric("rae_registry_status_repeats_total")
                .unwrap_or(0)
    };
    // Across batches: each record waits for the one before to be taken.
    let across = [("online", 100), ("offline", 200), ("online", 100)];
    for (n, (state, ts)) in across.into_iter().enumerate() {
        cloud
            .send_raw(STATUS, topic, &status_payload(state, ts))
            .unwrap();
        wait(&format!("status record {n} taken"), CONVERGE, || {
            taken(&cloud) == n as i64 + 1
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
        .unwrap();
    }
    assert_eq!(
        cloud.count("SELECT count(*) FROM boxes WHERE rae_id = 'box-s' AND NOT online"),
        1,
        "a repeat of the birth brought the box back online"
    );
    // Back to back (usually one batch): a new birth and will, then B's late
    // copy of that birth.
    for (state, ts) in [("online", 300), ("offline", 400), ("online", 300)] {
        cloud
            .send_raw(STATUS, topic, &status_payload(state, ts))
            .unwrap();
    }
    wait("the second late copy taken", CONVERGE, || {
        taken(&cloud) == 6
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    let row = cloud
        .pg
        .query("SELECT online::text, last_birth_ms, last_will_ms FROM boxes")
        .unwrap();
    assert_eq!(
        row[0],
        vec![
            Some("false".to_string()),
            Some("300".to_string()),
            Some("400".to_string())
        ]
    );
    assert_eq!(cloud.metric("rae_registry_status_total"), Some(4));
    assert_eq!(cloud.metric("rae_registry_status_repeats_total"), Some(2));
}

#[test]
fn a_history_row_already_stored_does_not_stall_the_partition() {
    // History rows the plan knows to be new are written with a plain
    // INSERT. A row put there by hand (the only way one can exist) makes
    // that insert fail; the batch must still apply, with ON CONFLICT.
    let cloud = Cloud::start(1, "").unwrap();
    let reg = cloud.registry().unwrap();
    let mut s = Session::new("box-h", "dev-h");
    cloud.send(&[s.attached(&[("a", 1)])]).unwrap();
    wait("attached applied", CONVERGE, || last_seq(&cloud, &s) == 1)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
        .unwrap();
    cloud
        .pg
        .query(&format!(
            "INSERT INTO device_events (session_id, seq, kind, ts_ms, envelope, kafka_partition, kafka_offset, recorded_at) \
             VALUES ('{}', 2, 'changed', 0, '\\x00', 0, -1, now())",
            s.id
        ))
        .unwrap();
    cloud
        .send(&[s.changed(&[("a", 2)]), s.changed(&[("a", 3)])])
        .unwrap();
    wait("both changes applied", CONVERGE, || {
        last_seq(&cloud, &s) == 3
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    assert_eq!(attr(&cloud, &s, "a").as_deref(), Some("3"));
    assert_eq!(
        history(&cloud, &s),
        3,
        "the stored row is kept, not doubled"
    );
    let log = reg.log_text();
    assert!(
        log.contains("met a stored history row") && log.contains("retrying it with ON CONFLICT"),
        "{log}"
    );
}

/// Sends one attach and returns how long it took to reach the database.
fn lone_record_latency(cloud: &Cloud, reg: &Registry, rae_id: &str) -> Duration {
    let mut s = Session::new(rae_id, "dev0");
    let sent = std::time::Instant::now();
    cloud.send(&[s.attached(&[("n", 1)])]).unwrap();
    wait("the lone record applied", Duration::from_secs(30), || {
        last_seq(cloud, &s) == 1
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    sent.elapsed()
}

#[test]
fn a_batch_holding_everything_its_partition_had_is_applied_without_waiting_for_the_max_wait() {
    // With a minute of batch_max_wait_ms, a lone record used to wait a
    // minute for company; the batch holds all there is, so it closes now
    // (the default batch_min_interval_ms, 100, is past: each record is
    // sent after the last one is seen applied).
    let cloud = Cloud::start(1, "batch_max_wait_ms = 60000").unwrap();
    let reg = cloud.registry().unwrap();
    for round in 0..3 {
        let took = lone_record_latency(&cloud, &reg, &format!("box-l{round}"));
        assert!(took < Duration::from_secs(30), "{took:?}");
    }
    let early = cloud.metric("rae_registry_batches_caught_up_total");
    assert!(early.is_some_and(|n| n >= 3), "{early:?}");
}

#[test]
fn batch_min_interval_ms_spaces_caught_up_batches_but_not_a_change_after_a_quiet_spell() {
    let cloud = Cloud::start(1, "batch_max_wait_ms = 60000\nbatch_min_interval_ms = 3000").unwrap();
    let reg = cloud.registry().unwrap();
    let mut s = Session::new("box-m", "dev0");
    let envs = [
        s.attached(&[("n", 1)]),
        s.changed(&[("n", 2)]),
        s.changed(&[("n", 3)]),
    ];
    let applied = |seq: i64| {
        wait("the record applied", Duration::from_secs(30), || {
            last_seq(&cloud, &s) == seq
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
        .unwrap()
    };
    let sent = std::time::Instant::now();
    cloud.send(&envs[..1]).unwrap();
    applied(1);
    // Right behind it: its batch closes 3 s after the first one closed,
    // which was after the first send.
    cloud.send(&envs[1..2]).unwrap();
    applied(2);
    let took = sent.elapsed();
    assert!(took >= Duration::from_secs(3), "{took:?}");
    // After a quiet spell longer than the interval: at once.
    std::thread::sleep(Duration::from_millis(3500));
    let sent = std::time::Instant::now();
    cloud.send(&envs[2..]).unwrap();
    applied(3);
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let early = cloud.metric("rae_registry_batches_caught_up_total");
    assert_eq!(early, Some(3));
}

#[test]
fn a_registry_started_before_its_topics_exist_consumes_them_once_they_are_created() {
    // A fresh deployment whose registry starts before the topics are
    // created: it must notice them when they appear (librdkafka joins
    // the group only then).
    let cloud = Cloud::start(0, "").unwrap();
    let reg = cloud.registry().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    create_topics(&cloud.kafka, 2).unwrap();
    let mut s = Session::new("box-t", "dev0");
    cloud.send(&[s.attached(&[("n", 1)])]).unwrap();
    wait("the record applied", Duration::from_secs(45), || {
        last_seq(&cloud, &s) == 1
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
}
