//! The real `rae-agent` binary as a child process under an umockdev testbed:
//! SIGKILL it while a stream of changes is being journaled, unplug a device
//! while it is down, restart it, and check the journal: nothing lost, seqs
//! gapless, sessions continued, the vanished device detached once as
//! `missing-at-start`; then SIGTERM stops it cleanly.
//!
//! The daemon inherits `LD_PRELOAD` (this test re-executes itself under
//! `umockdev-wrapper`) and `$UMOCKDEV_DIR`, so its libudev enumerates the
//! testbed, and its monitor socket (`$UMOCKDEV_DIR/event<fd>`) receives the
//! uevents the testbed in this process sends. A SIGKILLed daemon leaves its
//! socket file behind; umockdev unlinks it at the next send (ECONNREFUSED).
//! The binary must have been built (`cargo build -p rae-agent`).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rae_agent::journal::read::JournalReader;
use rae_protocol::{AttrValue, Attrs, EventKind};
use rae_tests::agent::{
    agent_binary, assert_continues, changed, check_sessions, cli, detached,
    device_id_of_serial as id_of, devices_json, events_of, kinds, read_device_events, read_events,
    text_attrs, wait_until, AgentConfig, AgentProcess, EventRow,
};
use rae_tests::umockdev::{self, fixtures, fixtures::hotplug_ftdi, fixtures::usb_tree, Testbed};
use serde_json::Value;

/// Upper bound for every wait on the daemon.
const WAIT: Duration = Duration::from_secs(10);
/// Speed changes the daemon must have journaled before it is killed.
const CHANGES_BEFORE_KILL: usize = 3;
const PHONE: &str = "R58M12ABCDE";
const FTDI: &str = "A10KZ3X9";
const HOTPLUG: &str = "AB0LQ4HZ";

#[derive(Debug)]
struct Paths {
    binary: PathBuf,
    config: PathBuf,
    journal: PathBuf,
    log: PathBuf,
}

impl Paths {
    fn start(&self) -> Result<AgentProcess> {
        AgentProcess::start(&self.binary, &self.config, &self.log)
    }

    /// Waits, while the daemon runs, until the device has `count` events.
    fn wait_events(
        &self,
        daemon: &mut AgentProcess,
        serial: &str,
        count: usize,
    ) -> Result<Vec<EventRow>> {
        wait_until(&format!("{count} events of {serial}"), WAIT, || {
            daemon.ensure_running()?;
            let mine = read_device_events(&self.journal, &id_of(serial))?;
            Ok((mine.len() >= count).then_some(mine))
        })
    }
}

/// The `usb.speed` values journaled for a device (attach, then each change).
fn speeds(events: &[EventRow], serial: &str) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for kind in kinds(&events_of(events, &id_of(serial)))? {
        if let EventKind::Attached { attrs: set } | EventKind::Changed { set, .. } = kind {
            if let Some(AttrValue::Int(speed)) = set.get("usb.speed") {
                out.push(*speed);
            }
        }
    }
    Ok(out)
}

/// Whether `devices --json` lists a present device with this serial (and tty).
fn lists(devices: &[Value], serial: &str, tty: Option<&str>) -> bool {
    devices.iter().any(|d| {
        d["presence"] == "present"
            && d["attrs"]["usb.serial"] == serial
            && tty.is_none_or(|node| d["attrs"]["tty.node"] == node)
    })
}

fn session_of(events: &[EventRow], serial: &str) -> Result<String> {
    let first = *events_of(events, &id_of(serial))
        .first()
        .context("no events")?;
    Ok(first.session_id.clone())
}

#[test]
fn a_daemon_killed_mid_stream_restarts_without_losing_events_and_continues_every_session(
) -> Result<()> {
    if umockdev::ensure_under_umockdev_wrapper(
        "a_daemon_killed_mid_stream_restarts_without_losing_events_and_continues_every_session",
    )
    .is_some()
    {
        return Ok(());
    }
    let binary = agent_binary()?;
    let testbed = Testbed::new()?;
    testbed.add_fixture(fixtures::USB_TREE)?;
    let dir = tempfile::tempdir()?;
    let config = AgentConfig {
        rae_id: "rae-restart-test".into(),
        ..AgentConfig::new(&dir.path().join("state"))
    };
    let paths = Paths {
        binary,
        config: config.write(&dir.path().join("agent.toml"))?,
        journal: config.journal_path(),
        log: dir.path().join("agent.log"),
    };
    let outcome = scenario(&testbed, &paths);
    if outcome.is_err() {
        let log = std::fs::read_to_string(&paths.log).unwrap_or_default();
        let journal = read_events(&paths.journal);
        eprintln!("---- rae-agent log ----\n{log}\n---- journal ----\n{journal:#?}");
    }
    // The daemons were dropped (killed if still running) inside `scenario`,
    // before $UMOCKDEV_DIR goes away with the testbed.
    drop(testbed);
    outcome
}

fn scenario(testbed: &Testbed, paths: &Paths) -> Result<()> {
    let mut daemon = paths.start()?;
    plug_in(testbed, paths, &mut daemon)?;
    let speed = stream_and_kill(testbed, paths, &mut daemon)?;
    let before = read_events(&paths.journal)?;
    println!("SIGKILLed with {} events journaled", before.len());

    // While it is down the phone goes away; then restart.
    testbed.unplug(usb_tree::ANDROID_PHONE)?;
    let mut daemon = paths.start()?;
    let after = restarted(paths, &mut daemon, &before, speed)?;
    change_after_restart(testbed, paths, &mut daemon, &after)?;
    stop(paths, &mut daemon)
}

/// The child sees the testbed's devices and receives its uevents.
fn plug_in(testbed: &Testbed, paths: &Paths, daemon: &mut AgentProcess) -> Result<()> {
    wait_until(
        "devices --json listing the phone, and the FTDI with ttyUSB0",
        WAIT,
        || {
            daemon.ensure_running()?;
            let devices = devices_json(&paths.binary, &paths.config)?.unwrap_or_default();
            Ok(
                (lists(&devices, PHONE, None) && lists(&devices, FTDI, Some("/dev/ttyUSB0")))
                    .then_some(()),
            )
        },
    )?;
    testbed.add_fixture(fixtures::HOTPLUG_FTDI)?;
    let plugged = paths
        .wait_events(daemon, HOTPLUG, 2)
        .context("the daemon (a child process) did not journal the hotplugged FTDI: no uevents?")?;
    let kinds = kinds(&plugged.iter().collect::<Vec<_>>())?;
    let tty = text_attrs(&[("tty.node", "/dev/ttyUSB1")]);
    ensure!(
        matches!(&kinds[..], [EventKind::Attached { .. }, EventKind::Changed { set, removed }]
            if *set == tty && removed.is_empty()),
        "hotplug journaled {kinds:#?}"
    );
    Ok(())
}

/// Toggles the second FTDI's speed (sysfs attribute + `change` uevent) every
/// 15 ms and SIGKILLs the daemon right after a send, once a few changes are
/// journaled. Returns the speed sysfs shows at the end.
fn stream_and_kill(testbed: &Testbed, paths: &Paths, daemon: &mut AgentProcess) -> Result<i64> {
    let mut speed = 12;
    for sent in 1..=400 {
        speed = if speed == 12 { 480 } else { 12 };
        testbed.set_attribute(hotplug_ftdi::DEVICE, "speed", &speed.to_string())?;
        testbed.uevent(hotplug_ftdi::DEVICE, "change")?;
        let journaled = speeds(&read_events(&paths.journal)?, HOTPLUG)?.len() - 1;
        if journaled >= CHANGES_BEFORE_KILL {
            let status = daemon.kill_hard()?;
            ensure!(
                status.signal() == Some(libc::SIGKILL),
                "daemon ended with {status}"
            );
            println!("SIGKILLed after {sent} speed changes sent, {journaled} journaled");
            return Ok(speed);
        }
        daemon.ensure_running()?;
        std::thread::sleep(Duration::from_millis(15));
    }
    anyhow::bail!("400 speed changes sent, fewer than {CHANGES_BEFORE_KILL} journaled")
}

/// Waits for the restarted daemon to reconcile, checks (a)–(d) and returns
/// the journal.
fn restarted(
    paths: &Paths,
    daemon: &mut AgentProcess,
    before: &[EventRow],
    speed: i64,
) -> Result<Vec<EventRow>> {
    let last_before = check_sessions(before)?;
    let missed_speed = *speeds(before, HOTPLUG)?.last().context("no speed")? != speed;
    println!("speed {speed} journaled before the kill: {}", !missed_speed);
    wait_until("the restarted daemon to reconcile", WAIT, || {
        daemon.ensure_running()?;
        let events = read_events(&paths.journal)?;
        let phone_gone = events_of(&events, &id_of(PHONE))
            .iter()
            .any(|e| e.kind == "detached");
        let caught_up = speeds(&events, HOTPLUG)?.len() > speeds(before, HOTPLUG)?.len();
        Ok((phone_gone && (caught_up || !missed_speed)).then_some(()))
    })?;
    std::thread::sleep(Duration::from_millis(300)); // anything else would be journaled by now
    let after = read_events(&paths.journal)?;

    // (a) No loss: every row from before the kill is still there, unchanged.
    ensure!(
        after.starts_with(before),
        "rows lost or altered:\n{before:#?}\nnow {after:#?}"
    );
    // (b) Every session's seqs are exactly 1..=n.
    let last_after = check_sessions(&after)?;
    let new: Vec<&EventRow> = after[before.len()..].iter().collect();
    ensure!(
        new.iter().all(|r| r.kind != "attached"),
        "a new session: {new:#?}"
    );
    let new_of = |serial| -> Vec<&EventRow> {
        new.iter()
            .copied()
            .filter(|r| r.device_id == id_of(serial))
            .collect()
    };

    // (d) The phone: one `detached`, missing-at-start, at its last seq + 1.
    let session = session_of(before, PHONE)?;
    let expected = [detached("missing-at-start")];
    assert_continues(
        &new_of(PHONE),
        &session,
        last_before[&session] + 1,
        &expected,
    )?;
    // (c) The FTDI sessions continue: the first unchanged, the second only
    //     catching up on a speed change it missed while down.
    ensure!(new_of(FTDI).is_empty(), "first FTDI changed: {new:#?}");
    let session = session_of(before, FTDI)?;
    ensure!(
        last_after[&session] == last_before[&session],
        "first FTDI seq moved"
    );
    let mut expected = Vec::new();
    if missed_speed {
        expected.push(changed(
            Attrs::from([("usb.speed".into(), AttrValue::Int(speed))]),
            &[],
        ));
    }
    let session = session_of(before, HOTPLUG)?;
    assert_continues(
        &new_of(HOTPLUG),
        &session,
        last_before[&session] + 1,
        &expected,
    )?;
    ensure!(
        new.len() == 1 + expected.len(),
        "unexpected events after restart: {new:#?}"
    );
    Ok(after)
}

/// (c) continued: unplugging the second FTDI after the restart continues its
/// session at last + 1 (tty gone) and last + 2 (detached after the grace).
fn change_after_restart(
    testbed: &Testbed,
    paths: &Paths,
    daemon: &mut AgentProcess,
    after: &[EventRow],
) -> Result<()> {
    let session = session_of(after, HOTPLUG)?;
    let last = check_sessions(after)?[&session];
    testbed.unplug(hotplug_ftdi::DEVICE)?;
    let events = paths.wait_events(daemon, HOTPLUG, last as usize + 2)?;
    let tail: Vec<&EventRow> = events[last as usize..].iter().collect();
    let expected = [changed(Attrs::new(), &["tty.node"]), detached("unplugged")];
    assert_continues(&tail, &session, last + 1, &expected)?;

    let journal = read_events(&paths.journal)?;
    ensure!(
        journal.starts_with(after) && journal.len() == after.len() + 2,
        "{journal:#?}"
    );
    // The device records agree with the events about where each session is.
    let last_seqs: BTreeMap<String, u64> = check_sessions(&journal)?;
    for device in JournalReader::open(&paths.journal)?.devices()? {
        if let Some(s) = &device.session {
            let journaled = last_seqs.get(&s.id.to_string());
            ensure!(
                journaled == Some(&s.last_seq),
                "{device:?} vs journal seq {journaled:?}"
            );
        }
    }
    Ok(())
}

/// SIGTERM: exit 0 within 5 s, and `status --json` reports it stopped.
fn stop(paths: &Paths, daemon: &mut AgentProcess) -> Result<()> {
    daemon.signal(libc::SIGTERM)?;
    let status = daemon
        .wait_timeout(Duration::from_secs(5))?
        .context("running 5 s after SIGTERM")?;
    ensure!(
        status.success(),
        "daemon exited with {status} after SIGTERM"
    );
    let out = cli(&paths.binary, &paths.config, &["status", "--json"], WAIT)?;
    ensure!(out.status.success(), "status --json failed: {}", out.stderr);
    let status: Value = serde_json::from_str(&out.stdout)?;
    let events = read_events(&paths.journal)?.len();
    ensure!(
        status["daemon"] == "stopped"
            && status["runtime"]["running"] == false
            && status["journal"]["boot_count"] == 2
            && status["journal"]["events_total"] == events,
        "status --json: {status:#}"
    );
    Ok(())
}
