//! The daemon task ([`SerialProbe::run`]) against PTY DUTs: liveness, a
//! stuck port next to a good one, locked and vanishing ports, `Synced`.
//! Events are read from the task's channel, as the registry task would.

use super::dut::{Behaviour, Dut};
use super::{answering, lock_dir, settings, termios_fields, text, BANNER};
use crate::probe::serial::{SerialProbe, SerialSettings};
use crate::probe::ProbeEvent;
use crate::registry::{FacetKey, Observation, Presence, Source};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

struct Running {
    rx: mpsc::Receiver<ProbeEvent>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(settings: SerialSettings) -> Running {
    let (tx, rx) = mpsc::channel(64);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(
        SerialProbe {
            settings,
            tx,
            shutdown,
        }
        .run(),
    );
    Running { rx, stop, task }
}

impl Running {
    async fn next(&mut self, within: Duration) -> ProbeEvent {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"))
            .expect("the probe task is running")
    }

    async fn observed(&mut self, within: Duration) -> Observation {
        match self.next(within).await {
            ProbeEvent::Observed(o) => o,
            other => panic!("expected an observation, got {other:?}"),
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("the probe task stops promptly")
            .expect("the probe task did not panic");
    }
}

fn state(o: &Observation) -> String {
    o.attrs
        .get("state")
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test]
async fn liveness_flips_between_online_and_unresponsive() {
    let dut = answering(BANNER);
    let locks = lock_dir();
    let extra = "timeout_ms = 300\nreprobe_interval_secs = 1";
    let mut p = start(settings(locks.path(), &[("uboot", &dut.path, extra)]));

    let online = p.observed(secs(5)).await;
    assert_eq!(state(&online), "online");
    assert_eq!(p.next(secs(1)).await, ProbeEvent::Synced(Source::Serial));

    dut.answering.store(false, Ordering::SeqCst);
    let down = p.observed(secs(6)).await;
    assert_eq!(state(&down), "unresponsive");
    assert_eq!(
        down.attrs["serial.probe_error"],
        text("no response within 300 ms at 115200 baud")
    );
    assert_eq!(
        down.attrs["serial.firmware"],
        text("2023.04"),
        "last answer kept"
    );
    assert_eq!(down.facet, online.facet);

    dut.answering.store(true, Ordering::SeqCst);
    let up = p.observed(secs(6)).await;
    assert_eq!(up, online, "back to exactly the first observation");
    p.stop().await;
}

#[tokio::test]
async fn a_stuck_port_does_not_delay_another_port() {
    let stuck = Dut::start(Behaviour::Silent);
    let good = answering(BANNER);
    let locks = lock_dir();
    let s = settings(
        locks.path(),
        &[
            (
                "stuck",
                &stuck.path,
                "timeout_ms = 5000\nreprobe_interval_secs = 1",
            ),
            (
                "good",
                &good.path,
                "timeout_ms = 1000\nreprobe_interval_secs = 1",
            ),
        ],
    );
    let began = Instant::now();
    let mut p = start(s);
    let first = p.observed(secs(3)).await;
    assert_eq!(
        first.facet,
        FacetKey::new(Source::Serial, good.path.clone())
    );
    assert!(
        began.elapsed() < Duration::from_millis(1500),
        "{:?}",
        began.elapsed()
    );

    tokio::time::sleep_until((began + Duration::from_millis(3500)).into()).await;
    assert_eq!(
        stuck.requests().len(),
        1,
        "a port in probe is not probed again"
    );
    assert!(
        good.requests().len() >= 2,
        "the good port was re-probed meanwhile"
    );
    assert!(
        p.rx.try_recv().is_err(),
        "no Synced before the stuck port reported"
    );
    p.stop().await;
    drop(stuck); // hangs the pair up, which ends the stuck probe's read
}

#[tokio::test]
async fn a_port_that_goes_away_is_reported_absent() {
    let dut = answering(BANNER);
    let locks = lock_dir();
    let links = tempfile::tempdir().expect("dir");
    let link = links.path().join("ttyLAB0");
    std::os::unix::fs::symlink(&dut.path, &link).expect("symlink");
    let glob = format!("{}/ttyLAB*", links.path().display());
    let mut p = start(settings(
        locks.path(),
        &[("lab", &glob, "timeout_ms = 300")],
    ));

    let obs = p.observed(secs(5)).await;
    let facet = FacetKey::new(Source::Serial, dut.path.clone());
    assert_eq!(obs.facet, facet, "keyed by the device node, not the link");
    assert_eq!(p.next(secs(1)).await, ProbeEvent::Synced(Source::Serial));

    std::fs::remove_file(&link).expect("unlink");
    let gone = p.observed(secs(3)).await;
    assert_eq!(gone, Observation::absent(facet));
    assert_eq!(gone.presence, Presence::Absent);
    p.stop().await;
}

#[tokio::test]
async fn synced_is_sent_at_once_when_no_port_matches() {
    let locks = lock_dir();
    let s = settings(locks.path(), &[("none", "/nonexistent/ttyNONE*", "")]);
    let mut p = start(s);
    assert_eq!(p.next(secs(2)).await, ProbeEvent::Synced(Source::Serial));
    p.stop().await;
}

#[tokio::test]
async fn a_locked_port_is_left_alone_until_the_lock_goes() {
    let dut = answering(BANNER);
    let locks = lock_dir();
    let name = dut.path.rsplit('/').next().expect("name").to_string();
    let lock = locks.path().join(format!("LCK..{name}"));
    std::fs::write(&lock, format!("{:>10}\n", std::process::id())).expect("lock");
    let extra = "timeout_ms = 300\nreprobe_interval_secs = 1";
    let mut p = start(settings(locks.path(), &[("uboot", &dut.path, extra)]));

    assert_eq!(p.next(secs(3)).await, ProbeEvent::Synced(Source::Serial));
    assert!(dut.requests().is_empty());
    std::fs::remove_file(&lock).expect("unlock");
    let obs = p.observed(secs(4)).await;
    assert_eq!(state(&obs), "online");
    p.stop().await;
}

#[tokio::test]
async fn shutdown_ends_a_running_probe_which_restores_and_unlocks_its_port() {
    let dut = Dut::start_with(Behaviour::Silent, false, Box::new(String::new));
    let locks = lock_dir();
    let before = super::dut::termios(&dut.slave);
    let p = start(settings(
        locks.path(),
        &[("slow", &dut.path, "timeout_ms = 60000")],
    ));
    let files = || std::fs::read_dir(locks.path()).map_or(0, Iterator::count);
    let began = Instant::now();
    while dut.requests().is_empty() {
        assert!(
            began.elapsed() < secs(3),
            "the probe never sent its request"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(files(), 1, "our lock is held while probing");

    p.stop().await;
    let stopped = Instant::now();
    while files() > 0 {
        assert!(
            stopped.elapsed() < secs(1),
            "the lock outlived the shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = super::dut::termios(&dut.slave);
    assert_eq!(termios_fields(&after), termios_fields(&before));
}
