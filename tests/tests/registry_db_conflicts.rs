//! The registry against serialization failures (SQLSTATE 40001: what
//! CockroachDB returns under contention, often at COMMIT) and deadlocks
//! (40P01), raised by triggers inside a real PostgreSQL: a failing batch
//! is retried with backoff on the same connection, nothing is lost or
//! applied twice, and no offset is committed while the batch's
//! transaction cannot commit.

#![allow(clippy::unwrap_used)]

mod registry_support;

use registry_support::*;
use std::time::Duration;

/// Generous: after a kill, the restarted registry first waits out the
/// killed member's group session (librdkafka's 45 s default).
const CONVERGE: Duration = Duration::from_secs(120);
const GROUP: &str = "rae-registry";

/// Fault injection in the database under test: one trigger function,
/// `inject_fault(sequence, budget row, SQLSTATE, message)`, fails while
/// its sequence's next value is within its budget (`fault_budget`, 0 =
/// off); `nextval` is not rolled back with the failed transaction, so
/// each failure uses up one unit of the budget. Two triggers use it:
/// - `inject_deadlock`: a statement writing sessions (the upsert of new
///   or loaded ones, or the compare-and-set of ones the pipeline knows)
///   fails with 40P01 (statement-level trigger), mid-batch.
/// - `inject_serialization_failure`: a deferred constraint trigger on
///   history rows, so COMMIT itself fails with 40001 after every statement
///   of the batch succeeded.
const FAULTS_SQL: &str = "
CREATE SEQUENCE statement_faults;
CREATE SEQUENCE commit_faults;
CREATE TABLE fault_budget (fault TEXT PRIMARY KEY, budget BIGINT NOT NULL);
INSERT INTO fault_budget VALUES ('statement_faults', 0), ('commit_faults', 0);
CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval(TG_ARGV[0]) <= (SELECT budget FROM fault_budget WHERE fault = TG_ARGV[0]) THEN
        RAISE EXCEPTION USING ERRCODE = TG_ARGV[1], MESSAGE = TG_ARGV[2];
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER inject_deadlock AFTER INSERT OR UPDATE ON device_sessions FOR EACH STATEMENT
    EXECUTE FUNCTION inject_fault('statement_faults', '40P01', 'injected deadlock');
CREATE CONSTRAINT TRIGGER inject_serialization_failure AFTER INSERT ON device_events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION inject_fault('commit_faults', '40001', 'injected serialization failure at commit');
";

/// Arms the faults: the next `statement` statements that write sessions
/// fail, and so do the next `commit` COMMITs of batches with history rows.
fn arm(cloud: &Cloud, statement: i64, commit: i64) {
    cloud
        .pg
        .query(&format!(
            "ALTER SEQUENCE statement_faults RESTART WITH 1; \
             ALTER SEQUENCE commit_faults RESTART WITH 1; \
             UPDATE fault_budget SET budget = {statement} WHERE fault = 'statement_faults'; \
             UPDATE fault_budget SET budget = {commit} WHERE fault = 'commit_faults'"
        ))
        .unwrap();
}

/// The cloud, with the faults installed (off) and the registry's database
/// connections named `rae-registry` (to find them in `pg_stat_activity`);
/// the registry logs at debug level (every retried attempt).
fn cloud_with_faults() -> Cloud {
    let cloud = Cloud::start_with(1, "", Some("debug")).unwrap();
    cloud.pg.query(FAULTS_SQL).unwrap();
    let url = cloud.pg.url();
    let config = std::fs::read_to_string(&cloud.config).unwrap();
    assert!(config.contains(&url), "{config}");
    std::fs::write(
        &cloud.config,
        config.replace(&url, &format!("{url}?application_name=rae-registry")),
    )
    .unwrap();
    cloud
}

/// The backend pids of the registry's database connections.
fn registry_backends(cloud: &Cloud) -> Vec<String> {
    cloud
        .pg
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'rae-registry' ORDER BY pid",
        )
        .unwrap()
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect()
}

fn stream(s: &mut Session, n: u64) -> Vec<rae_protocol::Envelope> {
    let mut out = vec![s.attached(&[("counter", 0)])];
    for i in 1..n {
        out.push(s.changed(&[("counter", i as i64)]));
    }
    out
}

/// Three sessions of `n` envelopes each, and all their envelopes.
fn three_sessions(n: u64) -> (Vec<Session>, Vec<rae_protocol::Envelope>) {
    let mut sessions: Vec<Session> = (0..3)
        .map(|i| Session::new("box-c", &format!("dev{i}")))
        .collect();
    let all = sessions.iter_mut().flat_map(|s| stream(s, n)).collect();
    (sessions, all)
}

/// Waits until every session has `n` events applied, then checks each
/// is complete: history exactly `1..=n`, no gap, nothing stale.
fn converged(cloud: &Cloud, reg: &Registry, sessions: &[Session], n: u64, what: &str) {
    for s in sessions {
        wait(what, CONVERGE, || last_seq(cloud, s) == n as i64)
            .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
            .unwrap();
        check_complete(&cloud.pg, &s.id, n).unwrap();
    }
}

#[test]
fn deadlocks_and_serialization_failures_at_commit_are_retried_on_the_same_connection() {
    let cloud = cloud_with_faults();
    let mut reg = cloud.registry().unwrap();
    // Warm-up with the faults off: the registry connects and applies.
    let mut first = Session::new("box-c", "warm-up");
    cloud.send(&stream(&mut first, 5)).unwrap();
    wait("the warm-up session applied", CONVERGE, || {
        last_seq(&cloud, &first) == 5
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    let backends = registry_backends(&cloud);
    assert!(!backends.is_empty(), "no registry connection seen");

    // Two deadlocks in a statement writing sessions, then two serialization
    // failures at COMMIT: four failed attempts of the next batch(es).
    arm(&cloud, 2, 2);
    let (sessions, all) = three_sessions(40);
    cloud.send(&all).unwrap();
    converged(
        &cloud,
        &reg,
        &sessions,
        40,
        "every event applied despite the conflicts",
    );
    check_complete(&cloud.pg, &first.id, 5).unwrap();
    assert_eq!(
        cloud.metric("rae_registry_db_conflicts_total"),
        Some(4),
        "every injected failure is one retried attempt\n{}",
        reg.log_tail()
    );
    assert_eq!(
        cloud.metric("rae_registry_db_errors_total"),
        Some(0),
        "a conflict is not counted as a database error"
    );
    let log = reg.log_text();
    for needle in [
        "injected deadlock",
        "injected serialization failure at commit",
    ] {
        assert!(log.contains(needle), "{needle} not logged:\n{log}");
    }
    assert_eq!(
        registry_backends(&cloud),
        backends,
        "a conflict keeps the connection (no reconnect, no re-prepare)"
    );
    let status = reg.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status:?}\n{}", reg.log_tail());
}

#[test]
fn no_offset_is_committed_while_commits_fail_and_a_restart_applies_everything_once() {
    let cloud = cloud_with_faults();
    // Every COMMIT of a batch with history rows fails from the start.
    arm(&cloud, 0, i64::MAX);
    let mut reg = cloud.registry().unwrap();
    let (sessions, all) = three_sessions(30);
    cloud.send(&all).unwrap();
    wait("the batch retried three times", CONVERGE, || {
        cloud
            .metric("rae_registry_db_conflicts_total")
            .is_some_and(|n| n >= 3)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    assert_eq!(cloud.count("SELECT count(*) FROM device_events"), 0);
    let committed = cloud.kafka.committed(GROUP, EVENTS).unwrap();
    assert!(
        committed.values().all(|o| o.unwrap_or(0) == 0),
        "an offset was committed before its batch's transaction: {committed:?}"
    );

    // The registry dies mid-retry; the database recovers; a new registry
    // starts from the last committed offset (none) and applies it all.
    reg.kill();
    arm(&cloud, 0, 0);
    reg.restart().unwrap();
    converged(
        &cloud,
        &reg,
        &sessions,
        30,
        "every event applied after the restart",
    );
    wait("the offset committed after the batch", CONVERGE, || {
        cloud
            .kafka
            .committed(GROUP, EVENTS)
            .is_ok_and(|c| c.get(&0) == Some(&Some(all.len() as i64)))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))
    .unwrap();
    let status = reg.terminate(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status:?}\n{}", reg.log_tail());
}
