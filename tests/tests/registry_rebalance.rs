//! Rebalances between two registries of one consumer group (real Tansu,
//! real PostgreSQL, two real `rae-cloud-ingest registry` processes).
//!
//! The backlog is built while PostgreSQL is down, so the first registry
//! pauses every partition (its stashes fill); the second one then joins,
//! which revokes all partitions and hands some of them back to the first.
//! librdkafka keeps an application pause across that, so without the
//! resume on assignment (`registry::dispatch`) the partitions handed back
//! are never fetched again. Afterwards the second registry leaves (SIGTERM)
//! and the first takes everything over. Nothing may be lost or applied
//! twice: every session ends complete (`last_seq`, history exactly
//! `1..=last`), nothing stale, no gap counted by either registry.

#![allow(clippy::unwrap_used)]

mod registry_support;

use anyhow::{ensure, Context, Result};
use rae_protocol::{AttrValue, Envelope, EventKind};
use registry_support::*;
use std::time::Duration;

const PARTITIONS: i32 = 4;
const SESSIONS: usize = 400;
/// Per session before the second registry joins: 400 × 100 = 40,000
/// records of about 2.5 KiB ([`PADDING`]), about 25 MiB per partition on
/// average, well past what a partition buffers before it is paused (a
/// 1 MiB channel, a 1000-record batch, an 8 MiB stash; all stashes
/// together 32 MiB). With 1 KiB records (10 MiB per partition) a partition
/// that got fewer sessions than the others was sometimes never paused.
const BACKLOG: u64 = 100;
/// A text attribute that makes each envelope about 2.5 KiB.
const PADDING: usize = 2500;
const CONVERGE: Duration = Duration::from_secs(120);

fn changes(s: &mut Session, from: u64, to: u64) -> Vec<Envelope> {
    (from..=to)
        .map(|i| {
            let mut e = if i == 1 {
                s.attached(&[("counter", 1)])
            } else {
                s.changed(&[("counter", i as i64)])
            };
            let pad = AttrValue::Text("x".repeat(PADDING));
            match &mut e.kind {
                EventKind::Attached { attrs } => attrs.insert("padding".into(), pad),
                EventKind::Changed { set, .. } => set.insert("padding".into(), pad),
                _ => None,
            };
            e
        })
        .collect()
}

/// Interleaved across sessions, each session's envelopes in seq order.
fn round(sessions: &mut [Session], from: u64, to: u64) -> Vec<Envelope> {
    let per: Vec<Vec<Envelope>> = sessions.iter_mut().map(|s| changes(s, from, to)).collect();
    let mut out = Vec::new();
    for i in 0..=(to - from) as usize {
        out.extend(per.iter().map(|p| p[i].clone()));
    }
    out
}

fn all_complete(cloud: &Cloud, sessions: &[Session], last: u64) -> Result<()> {
    for s in sessions {
        check_complete(&cloud.pg, &s.id, last)?;
    }
    Ok(())
}

fn assigned(r: &Registry) -> usize {
    r.log_text()
        .lines()
        .filter(|l| l.contains("partitions assigned:") && l.contains("rae.device-events"))
        .count()
}

#[test]
fn a_registry_joining_and_leaving_mid_outage_loses_nothing_and_resumes_its_paused_partitions(
) -> Result<()> {
    let mut cloud = Cloud::start(PARTITIONS, "")?;
    let mut sessions: Vec<Session> = (0..SESSIONS)
        .map(|i| Session::new(&format!("box-{}", i % 20), &format!("dev{i}")))
        .collect();

    cloud.pg.stop()?;
    cloud.send(&round(&mut sessions, 1, BACKLOG))?;
    let a = cloud.registry()?;
    wait(
        "the first registry pauses all four partitions (database down)",
        CONVERGE,
        || cloud.metric("rae_registry_paused_partitions") == Some(i64::from(PARTITIONS)),
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", a.log_tail()))?;
    let first_assignments = assigned(&a);
    // The lag of every partition (librdkafka statistics, every 5 s) before
    // the second registry joins: afterwards the first must drop those it
    // lost.
    let events_lags = |port: u16| -> Vec<String> {
        lags_at(port)
            .unwrap_or_default()
            .into_keys()
            .filter(|k| k.starts_with(EVENTS))
            .collect()
    };
    wait(
        "the first registry's lag for every partition",
        CONVERGE,
        || events_lags(cloud.metrics_port).len() == PARTITIONS as usize,
    )?;

    let (config_b, port_b) = cloud.second_config("registry-b")?;
    let mut b = Registry::start(&config_b, &cloud.dir.path().join("registry-b.log"))?;
    wait(
        "the group rebalanced over both registries",
        CONVERGE,
        || assigned(&b) >= 1 && assigned(&a) > first_assignments,
    )
    .map_err(|e| anyhow::anyhow!("{e}\nA:\n{}\nB:\n{}", a.log_tail(), b.log_tail()))?;

    cloud.pg.start_again()?;
    cloud.send(&round(&mut sessions, BACKLOG + 1, BACKLOG + 20))?;
    wait("both registries applied everything", CONVERGE, || {
        all_complete(&cloud, &sessions, BACKLOG + 20).is_ok()
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {:?}\nA:\n{}\nB:\n{}",
            all_complete(&cloud, &sessions, BACKLOG + 20).err(),
            a.log_tail(),
            b.log_tail()
        )
    })?;
    // Each partition's lag is exported by the registry that owns it, once.
    let (mut lags_a, mut lags_b) = (Vec::new(), Vec::new());
    wait("each partition's lag from its owner only", CONVERGE, || {
        (lags_a, lags_b) = (events_lags(cloud.metrics_port), events_lags(port_b));
        let mut all: Vec<&String> = lags_a.iter().chain(&lags_b).collect();
        all.sort();
        all.dedup();
        !lags_a.is_empty()
            && !lags_b.is_empty()
            && all.len() == PARTITIONS as usize
            && lags_a.len() + lags_b.len() == PARTITIONS as usize
    })
    .with_context(|| format!("lag labels of A {lags_a:?}, of B {lags_b:?}"))?;
    let b_batches = metric_at(port_b, "rae_registry_batches_total").unwrap_or(0);
    let b_gaps = metric_at(port_b, "rae_registry_gaps_total");
    ensure!(b_batches > 0, "the second registry applied no batch");
    ensure!(
        b_gaps == Some(0),
        "the second registry counted gaps: {b_gaps:?}"
    );

    // The second registry leaves: the first takes every partition over.
    ensure!(
        b.terminate(Duration::from_secs(30))?.success(),
        "the second registry did not exit cleanly:\n{}",
        b.log_tail()
    );
    cloud.send(&round(&mut sessions, BACKLOG + 21, BACKLOG + 30))?;
    wait(
        "the remaining registry applied what came after",
        CONVERGE,
        || all_complete(&cloud, &sessions, BACKLOG + 30).is_ok(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {:?}\nA:\n{}",
            all_complete(&cloud, &sessions, BACKLOG + 30).err(),
            a.log_tail()
        )
    })?;
    ensure!(
        cloud.metric("rae_registry_gaps_total") == Some(0),
        "the first registry counted gaps"
    );
    ensure!(
        cloud.count("SELECT count(*) FROM device_sessions WHERE stale") == 0,
        "stale sessions"
    );
    ensure!(
        cloud.count("SELECT count(*) FROM device_events")
            == (SESSIONS as i64) * (BACKLOG as i64 + 30),
        "history rows are not exactly one per envelope"
    );
    let counters = cloud.count(&format!(
        "SELECT count(*) FROM device_attributes WHERE name = 'counter' AND value = '{}'",
        BACKLOG + 30
    ));
    ensure!(
        counters == SESSIONS as i64,
        "{counters} of {SESSIONS} sessions have the last counter"
    );
    Ok(())
}
