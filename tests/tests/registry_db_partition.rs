//! A network partition between the registry and its database: the
//! registry's connection stops carrying bytes without closing (a real
//! PostgreSQL behind [`rae_tests::partition::PartitionProxy`]). The kernel
//! would take ~15 minutes to give such a connection up; the registry must
//! give up after `database.timeout_secs`, retry the batch on a new
//! connection, and lose nothing (the server ends the cut session's open
//! transaction after the same time, releasing its row locks).

#![allow(clippy::unwrap_used)]

mod registry_support;

use anyhow::{ensure, Result};
use rae_tests::partition::PartitionProxy;
use registry_support::*;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

#[test]
fn a_database_connection_cut_mid_stream_is_given_up_after_the_timeout_and_nothing_is_lost(
) -> Result<()> {
    let cloud = Cloud::start(2, "batch_max_records = 50")?;
    let proxy = PartitionProxy::start(cloud.pg.port())?;
    // The same config, but the database through the proxy and a 3 s timeout.
    let text = std::fs::read_to_string(&cloud.config)?;
    let direct = format!("127.0.0.1:{}/", cloud.pg.port());
    ensure!(text.contains(&direct), "no database url in {text}");
    let text = text
        .replace(&direct, &format!("127.0.0.1:{}/", proxy.port()))
        .replace(
            "retry_max_backoff_secs = 1\n",
            "retry_max_backoff_secs = 1\ntimeout_secs = 3\n",
        );
    ensure!(text.contains("timeout_secs = 3"), "{text}");
    let config = cloud.dir.path().join("through-proxy.toml");
    std::fs::write(&config, text)?;
    let reg = Registry::start(&config, &cloud.dir.path().join("registry.log"))?;

    let mut sessions: Vec<Session> = (0..6)
        .map(|i| Session::new("box-p", &format!("dev{i}")))
        .collect();
    let mut first = Vec::new();
    let mut rest = Vec::new();
    for s in &mut sessions {
        first.push(s.attached(&[("counter", 0)]));
        for i in 1..40 {
            first.push(s.changed(&[("counter", i)]));
        }
        for i in 40..100 {
            rest.push(s.changed(&[("counter", i)]));
        }
    }
    cloud.send(&first)?;
    wait("the first part applied", CONVERGE, || {
        sessions.iter().all(|s| last_seq(&cloud, s) == 40)
    })?;

    proxy.cut_open_connections();
    cloud.send(&rest)?;
    wait("everything applied on new connections", CONVERGE, || {
        sessions.iter().all(|s| last_seq(&cloud, s) == 100)
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))?;
    for s in &sessions {
        check_complete(&cloud.pg, &s.id, 100)?;
        check_history_envelopes(&cloud.pg, &s.id)?;
    }
    let log = reg.log_text();
    ensure!(
        log.contains("no answer from the database within 3 s (database.timeout_secs)"),
        "the registry did not report the timeout:\n{}",
        reg.log_tail()
    );
    ensure!(
        cloud.count("SELECT count(*) FROM device_sessions WHERE stale") == 0,
        "stale sessions"
    );
    Ok(())
}

/// What releases the row locks of a cut connection's open transaction: the
/// session setting the registry makes on each connection. Checked on the
/// real server: a session silent inside a transaction for longer is ended
/// by the server.
#[test]
fn the_server_ends_a_registry_session_left_silent_inside_a_transaction() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pg = rae_tests::postgres::Postgres::start(dir.path())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = rae_cloud_ingest::db::connect(&pg.url(), 10).await?;
        rae_cloud_ingest::db::limit_idle_transactions(&client, 1).await?;
        client.batch_execute("BEGIN").await?;
        client.batch_execute("SELECT 1").await?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = client.batch_execute("SELECT 1").await;
        let e = after.err().map(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        });
        ensure!(
            e.as_deref()
                .is_some_and(|e| e.contains("idle-in-transaction timeout") || e.contains("closed")),
            "the session outlived its idle transaction: {e:?}"
        );
        Ok(())
    })
}
