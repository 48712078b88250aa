//! The wired tasks, driven through the probe channel.

use super::*;
use crate::config::Settings;
use crate::registry::{FacetKey, Identifier, Observation, Source};
use crate::status;
use rae_protocol::{AttrValue, Attrs};
use std::path::Path;
use std::time::Duration;

fn settings(dir: &Path) -> Settings {
    let text = format!(
        "rae_id = \"rae-test\"\nstate_dir = {:?}\n[udev]\nenabled = false\n[adb]\nenabled = false\n",
        dir.display().to_string()
    );
    Settings::from_toml(&text, dir).expect("settings")
}

fn plug(serial: &str, model: &str) -> ProbeEvent {
    ProbeEvent::Observed(Observation::present(
        FacetKey::new(Source::Udev, format!("/sys/{serial}")),
        vec![Identifier::Serial {
            serial: serial.into(),
            interface: None,
        }],
        [("usb.model".to_string(), AttrValue::from(model))]
            .into_iter()
            .collect::<Attrs>(),
    ))
}

fn events(dir: &Path) -> i64 {
    let c = rusqlite::Connection::open(dir.join("journal.db")).expect("open");
    c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_is_reported_retried_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let opened = open_journal(&s).expect("open");
    let fault = opened.journal.fault_handle();
    let agent = build(&s, opened).expect("build");
    agent
        .probe_tx
        .send(plug("S1", "small"))
        .await
        .expect("send");
    wait_for("first event", || events(dir.path()) == 1).await;

    fault.limit_pages(1);
    let big = "x".repeat(256 * 1024);
    agent.probe_tx.send(plug("S2", &big)).await.expect("send");
    agent
        .probe_tx
        .send(plug("S3", "after"))
        .await
        .expect("send");
    wait_for("journal error in status", || {
        status::read(&s.status_path()).is_some_and(|st| st.journal_error.is_some())
    })
    .await;
    let st = status::read(&s.status_path()).expect("status");
    let msg = st.journal_error.expect("error").message;
    assert!(msg.contains("full"), "{msg}");
    assert!(st.running && st.pending_observations >= 1);
    assert_eq!(events(dir.path()), 1);

    fault.unlimited();
    wait_for("both pending observations journaled", || {
        events(dir.path()) == 3
    })
    .await;
    wait_for("error cleared", || {
        status::read(&s.status_path()).is_some_and(|st| st.journal_error.is_none())
    })
    .await;
    agent.shutdown(Duration::from_secs(4)).await;
    let st = status::read(&s.status_path()).expect("status");
    assert!(!st.running, "clean stop recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_failure_is_reported_and_other_events_still_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let agent = build(&s, open_journal(&s).expect("open")).expect("build");
    agent
        .probe_tx
        .send(ProbeEvent::Failed {
            source: Source::Adb,
            message: "adb server 127.0.0.1:5037 unreachable: connection refused".into(),
        })
        .await
        .expect("send");
    agent.probe_tx.send(plug("S1", "m")).await.expect("send");
    wait_for("event", || events(dir.path()) == 1).await;
    wait_for("probe error in status", || {
        status::read(&s.status_path()).is_some_and(|st| st.probe_errors.contains_key("adb"))
    })
    .await;
    agent
        .probe_tx
        .send(ProbeEvent::Synced(Source::Adb))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = status::read(&s.status_path()).expect("status");
    assert!(
        st.probe_errors.contains_key("adb"),
        "a first scan is not a recovery"
    );
    agent
        .probe_tx
        .send(ProbeEvent::Recovered(Source::Adb))
        .await
        .expect("send");
    wait_for("adb error cleared once the probe recovers", || {
        status::read(&s.status_path()).is_some_and(|st| st.probe_errors.is_empty())
    })
    .await;
    agent.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(start_paused = true)]
async fn a_vanished_device_is_detached_when_its_grace_period_runs_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let agent = build(&s, open_journal(&s).expect("open")).expect("build");
    agent.probe_tx.send(plug("S1", "m")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(10)).await;
    agent
        .probe_tx
        .send(ProbeEvent::Observed(Observation::absent(FacetKey::new(
            Source::Udev,
            "/sys/S1",
        ))))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(events(dir.path()), 1, "still within grace");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(events(dir.path()), 2, "detached after 5 s");
    agent.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_probe_disabled_a_restart_settles_the_devices_of_the_last_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = settings(dir.path());
    let agent = build(&s, open_journal(&s).expect("open")).expect("build");
    agent.probe_tx.send(plug("S1", "m")).await.expect("send");
    wait_for("attached", || events(dir.path()) == 1).await;
    agent.shutdown(Duration::from_secs(4)).await;

    // udev (the device's only source) is disabled, as are the others: no
    // scan will ever confirm the device, so the restart detaches it.
    let agent = build(&s, open_journal(&s).expect("reopen")).expect("build");
    let detached = || {
        let c = rusqlite::Connection::open(dir.path().join("journal.db")).expect("open");
        c.query_row(
            "SELECT count(*) FROM events WHERE kind = 'detached'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("count")
    };
    wait_for("detached at start", || detached() == 1).await;
    agent.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_udev_probe_on_its_own_thread_is_supervised_like_the_other_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "rae_id = \"rae-test\"\nstate_dir = {:?}\n[udev]\nenabled = true\n[adb]\nenabled = false\n",
        dir.path().display().to_string()
    );
    let s = Settings::from_toml(&text, dir.path()).expect("settings");
    let liveness = watchdog::Liveness::new(Duration::from_millis(50));
    let supervision = Supervision {
        liveness: liveness.clone(),
        wedge_registry_when: None,
    };
    let agent =
        build_supervised(&s, open_journal(&s).expect("open"), Some(supervision)).expect("build");
    // Whether or not udev works here, the probe's thread keeps polling
    // (watching the monitor, or retrying with backoff), so it beats.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ages = liveness.ages();
    assert!(
        ages.iter().any(|(name, _)| *name == "udev probe"),
        "{ages:?}"
    );
    assert!(
        watchdog::stalled(&ages, Duration::from_millis(300)).is_empty(),
        "{ages:?}"
    );
    agent.shutdown(Duration::from_secs(4)).await;
}
