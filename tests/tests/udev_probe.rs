//! The agent's real udev probe (`UdevProbe` on real libudev) against an
//! umockdev testbed, in-process: `rae_agent::runtime::build` with udev on,
//! checked through the SQLite journal.
//!
//! Threads: the [`Testbed`] is `!Send` and stays on the test thread, which
//! also drives a current-thread tokio runtime (the registry task). The probe
//! runs on a blocking-pool thread with its own runtime; it only needs
//! `$UMOCKDEV_DIR`, which the testbed sets process-wide, so the testbed is
//! created before `build` and dropped only after the agent has shut down and
//! the runtime is gone.
//!
//! Each test re-executes itself under `umockdev-wrapper` (one testbed per
//! process).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rae_agent::journal::read::JournalReader;
use rae_agent::registry::identity::device_id_for;
use rae_agent::registry::record::Presence;
use rae_agent::runtime::{build, open_journal, SHUTDOWN_DEADLINE};
use rae_protocol::{AttrValue, Attrs, EventKind};
use rae_tests::agent::{
    assert_session, attached, changed, detached, device_id_of_serial as id_of, events_of,
    read_device_events, read_events, text_attrs, wait_until_async, AgentConfig, EventRow,
};
use rae_tests::umockdev::{self, fixtures, fixtures::hotplug_ftdi, Testbed};

/// Upper bound for every wait on the journal.
const WAIT: Duration = Duration::from_secs(10);
const PHONE_SERIAL: &str = "R58M12ABCDE";
const FTDI_SERIAL: &str = "A10KZ3X9";
const HOTPLUG_SERIAL: &str = "AB0LQ4HZ";

/// The attributes of an FT232R record of the fixtures (`state` is the
/// registry's liveness; udev has no opinion, so it is `online`).
fn ftdi_attrs(serial: &str, port: &str) -> Attrs {
    let mut attrs = text_attrs(&[
        ("state", "online"),
        ("usb.vendor_id", "0403"),
        ("usb.product_id", "6001"),
        ("usb.vendor", "Future Technology Devices International, Ltd"),
        ("usb.model", "FT232 Serial (UART) IC"),
        ("usb.serial", serial),
        ("usb.path", &format!("pci-0000:00:14.0-usb-0:{port}")),
    ]);
    attrs.insert("usb.speed".into(), AttrValue::Int(12));
    attrs
}

/// Runs `scenario(testbed, journal)` with the coldplug tree in the testbed and
/// an in-process agent (udev on, the given detach grace) running.
fn with_agent(
    grace_secs: u64,
    scenario: impl AsyncFnOnce(&Testbed, &Path) -> Result<()>,
) -> Result<()> {
    let testbed = Testbed::new()?;
    testbed.add_fixture(fixtures::USB_TREE)?;
    let state = tempfile::tempdir()?;
    let settings = AgentConfig {
        detach_grace_secs: grace_secs,
        ..AgentConfig::new(state.path())
    }
    .settings()?;
    let journal = settings.journal_path();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        let agent = build(&settings, open_journal(&settings)?)?;
        let outcome = scenario(&testbed, &journal).await;
        agent.shutdown(SHUTDOWN_DEADLINE).await;
        outcome
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    if outcome.is_err() {
        eprintln!("journal at failure: {:#?}", read_events(&journal));
    }
    drop(testbed);
    outcome
}

/// Waits for coldplug and checks it exactly: the phone attached; the FTDI
/// attached, then joined by ttyUSB0 (`changed` tty.node); nothing else.
async fn expect_coldplug(journal: &Path) -> Result<()> {
    let ftdi = id_of(FTDI_SERIAL);
    wait_until_async("coldplug: ttyUSB0 joins the FTDI", WAIT, || {
        Ok((events_of(&read_events(journal)?, &ftdi).len() >= 2).then_some(()))
    })
    .await?;
    // Anything else the enumeration produced would be journaled by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = read_events(journal)?;
    let mut phone = text_attrs(&[
        ("state", "online"),
        ("usb.vendor_id", "18d1"),
        ("usb.product_id", "4ee7"),
        ("usb.vendor", "Google Inc."),
        ("usb.model", "Nexus/Pixel Device (charging + debug)"),
        ("usb.serial", PHONE_SERIAL),
        ("usb.path", "pci-0000:00:14.0-usb-0:1.4"),
    ]);
    phone.insert("usb.speed".into(), AttrValue::Int(480));
    assert_session(
        &events_of(&events, &id_of(PHONE_SERIAL)),
        &[attached(phone)],
    )?;
    assert_session(
        &events_of(&events, &ftdi),
        &[
            attached(ftdi_attrs(FTDI_SERIAL, "2")),
            changed(text_attrs(&[("tty.node", "/dev/ttyUSB0")]), &[]),
        ],
    )?;
    ensure!(events.len() == 3, "unexpected extra events: {events:#?}");
    Ok(())
}

/// Waits until the device's events number `count`, then returns them.
async fn wait_events(journal: &Path, device_id: &str, count: usize) -> Result<Vec<EventRow>> {
    wait_until_async(&format!("{count} events of {device_id}"), WAIT, || {
        let mine = read_device_events(journal, device_id)?;
        Ok((mine.len() >= count).then_some(mine))
    })
    .await
}

/// The device's `missing_since_ms` once it is missing (or `None` once detached).
async fn wait_missing_or_detached(journal: &Path, device_id: &str) -> Result<Option<u64>> {
    wait_until_async(&format!("{device_id} missing or detached"), WAIT, || {
        let rec = JournalReader::open(journal)?.find_device(device_id)?;
        Ok(match rec.presence() {
            Presence::Present => None,
            Presence::Missing => Some(rec.missing_since_ms),
            Presence::Detached => Some(None),
        })
    })
    .await
}

#[test]
fn enumeration_attaches_the_phone_and_the_ftdi_joined_by_its_tty_but_not_the_hubs() -> Result<()> {
    if umockdev::ensure_under_umockdev_wrapper(
        "enumeration_attaches_the_phone_and_the_ftdi_joined_by_its_tty_but_not_the_hubs",
    )
    .is_some()
    {
        return Ok(());
    }
    with_agent(1, async |_testbed: &Testbed, journal: &Path| {
        expect_coldplug(journal).await?;
        let reader = JournalReader::open(journal)?;
        // Two records only: the root hub, the hub and the interfaces are not tracked.
        let identities: Vec<String> = reader.devices()?.into_iter().map(|d| d.identity).collect();
        let mut want = vec![
            format!("serial:{FTDI_SERIAL}"),
            format!("serial:{PHONE_SERIAL}"),
        ];
        want.sort_by_key(|identity| device_id_for(identity));
        ensure!(
            identities == want,
            "device records {identities:?}, expected {want:?}"
        );
        // The tty is part of the FTDI's record, reachable by its node.
        let ftdi = reader.find_device("/dev/ttyUSB0")?;
        ensure!(
            ftdi.device_id == id_of(FTDI_SERIAL),
            "ttyUSB0 resolves to {ftdi:?}"
        );
        ensure!(
            ftdi.presence() == Presence::Present && ftdi.facets.len() == 2,
            "{ftdi:?}"
        );
        let mut attrs = ftdi_attrs(FTDI_SERIAL, "2");
        attrs.insert("tty.node".into(), AttrValue::Text("/dev/ttyUSB0".into()));
        ensure!(ftdi.attrs == attrs, "FTDI attrs {:#?}", ftdi.attrs);
        Ok(())
    })
}

#[test]
fn a_hotplugged_ftdi_is_attached_joined_by_its_tty_and_detached_after_the_grace_period_when_unplugged(
) -> Result<()> {
    if umockdev::ensure_under_umockdev_wrapper(
        "a_hotplugged_ftdi_is_attached_joined_by_its_tty_and_detached_after_the_grace_period_when_unplugged",
    )
    .is_some()
    {
        return Ok(());
    }
    with_agent(1, async |testbed: &Testbed, journal: &Path| {
        expect_coldplug(journal).await?;
        let id = id_of(HOTPLUG_SERIAL);
        let plugged = [
            attached(ftdi_attrs(HOTPLUG_SERIAL, "3")),
            changed(text_attrs(&[("tty.node", "/dev/ttyUSB1")]), &[]),
        ];
        testbed.add_fixture(fixtures::HOTPLUG_FTDI)?;
        let events = wait_events(journal, &id, 2).await?;
        assert_session(&events.iter().collect::<Vec<_>>(), &plugged)?;

        testbed.unplug(hotplug_ftdi::DEVICE)?;
        let missing_since = wait_missing_or_detached(journal, &id).await?;
        let events = wait_events(journal, &id, 4).await?;
        let unplugged = [changed(Attrs::new(), &["tty.node"]), detached("unplugged")];
        let expected: Vec<EventKind> = plugged.into_iter().chain(unplugged).collect();
        assert_session(&events.iter().collect::<Vec<_>>(), &expected)?;
        // The detach waited for the whole grace period.
        let (tty_gone, detached) = (events[2].ts_ms, events[3].ts_ms);
        ensure!(
            detached >= tty_gone + 1000,
            "detached at {detached}, tty gone at {tty_gone}"
        );
        if let Some(since) = missing_since {
            ensure!(
                detached >= since + 1000,
                "detached at {detached}, missing since {since}"
            );
        }
        let rec = JournalReader::open(journal)?.find_device(&id)?;
        ensure!(
            rec.presence() == Presence::Detached && rec.facets.is_empty(),
            "{rec:?}"
        );
        ensure!(
            read_events(journal)?.len() == 3 + 4,
            "other devices changed"
        );
        Ok(())
    })
}

#[test]
fn replugging_within_the_grace_period_keeps_the_session_and_counts_a_reconnect() -> Result<()> {
    if umockdev::ensure_under_umockdev_wrapper(
        "replugging_within_the_grace_period_keeps_the_session_and_counts_a_reconnect",
    )
    .is_some()
    {
        return Ok(());
    }
    const GRACE_MS: u64 = 2000;
    with_agent(
        GRACE_MS / 1000,
        async |testbed: &Testbed, journal: &Path| {
            expect_coldplug(journal).await?;
            let id = id_of(HOTPLUG_SERIAL);
            testbed.add_fixture(fixtures::HOTPLUG_FTDI)?;
            wait_events(journal, &id, 2).await?;
            testbed.unplug(hotplug_ftdi::DEVICE)?;
            let since = wait_missing_or_detached(journal, &id).await?.context(
                "detached before it could be re-plugged (grace too short for this machine?)",
            )?;
            testbed.add_fixture(fixtures::HOTPLUG_FTDI)?;
            wait_events(journal, &id, 5).await?;
            // Past the original deadline: the pending detach must have been cancelled.
            let deadline = since + GRACE_MS + 500;
            let now = rae_agent::timefmt::now_ms();
            tokio::time::sleep(Duration::from_millis(deadline.saturating_sub(now))).await;

            let events = read_events(journal)?;
            let mut reconnects = Attrs::new();
            reconnects.insert("session.reconnects".into(), AttrValue::Int(1));
            let tty = || text_attrs(&[("tty.node", "/dev/ttyUSB1")]);
            let expected = [
                attached(ftdi_attrs(HOTPLUG_SERIAL, "3")),
                changed(tty(), &[]),
                changed(Attrs::new(), &["tty.node"]),
                changed(reconnects, &[]),
                changed(tty(), &[]),
            ];
            let mine = events_of(&events, &id);
            assert_session(&mine, &expected)?;
            ensure!(
                mine[3].ts_ms < since + GRACE_MS,
                "re-plugged after the grace period"
            );
            let rec = JournalReader::open(journal)?.find_device(&id)?;
            ensure!(
                rec.presence() == Presence::Present && rec.facets.len() == 2,
                "{rec:?}"
            );
            ensure!(events.len() == 3 + 5, "other devices changed");
            Ok(())
        },
    )
}
