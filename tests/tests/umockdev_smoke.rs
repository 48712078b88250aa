//! Smoke tests for the umockdev harness (`rae_tests::umockdev`): the real
//! libudev, through the `udev` and `tokio-udev` crates, sees the testbed.
//!
//! Each test first re-executes itself under `umockdev-wrapper` (the preload
//! must be in `LD_PRELOAD` at process start); the outer run only reports the
//! child's result.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_core::Stream;
use rae_tests::umockdev::{self, fixtures, fixtures::hotplug_ftdi, fixtures::usb_tree, Testbed};
use tokio_udev::{AsyncMonitorSocket, EventType, MonitorBuilder};

/// Upper bound for every wait on the monitor.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

fn property(device: &udev::Device, key: &str) -> Option<String> {
    device
        .property_value(key)
        .map(|v| v.to_string_lossy().into_owned())
}

fn attribute(device: &udev::Device, name: &str) -> Option<String> {
    device
        .attribute_value(name)
        .map(|v| v.to_string_lossy().trim_end().to_owned())
}

fn scan(subsystem: &str) -> Result<BTreeMap<PathBuf, udev::Device>> {
    let mut enumerator = udev::Enumerator::new()?;
    enumerator.match_subsystem(subsystem)?;
    Ok(enumerator
        .scan_devices()?
        .map(|device| (device.syspath().to_owned(), device))
        .collect())
}

fn syspaths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = paths.into_iter().map(PathBuf::from).collect();
    paths.sort();
    paths
}

fn device<'a>(
    devices: &'a BTreeMap<PathBuf, udev::Device>,
    syspath: &str,
) -> Result<&'a udev::Device> {
    devices
        .get(Path::new(syspath))
        .with_context(|| format!("{syspath} not enumerated"))
}

#[test]
fn enumeration_sees_testbed_devices_with_properties() -> Result<()> {
    if umockdev::ensure_under_umockdev_wrapper("enumeration_sees_testbed_devices_with_properties")
        .is_some()
    {
        return Ok(());
    }
    let testbed = Testbed::new()?;
    testbed.add_fixture(fixtures::USB_TREE)?;

    // Only the testbed is visible: the real machine's PCI devices are not.
    let pci = scan("pci")?;
    assert_eq!(
        pci.keys().cloned().collect::<Vec<_>>(),
        syspaths([usb_tree::PCI_XHCI])
    );

    let usb = scan("usb")?;
    assert_eq!(
        usb.keys().cloned().collect::<Vec<_>>(),
        syspaths([
            usb_tree::ROOT_HUB,
            usb_tree::HUB,
            usb_tree::ANDROID_PHONE,
            usb_tree::ANDROID_ADB_INTERFACE,
            usb_tree::FTDI_DEVICE,
            usb_tree::FTDI_INTERFACE,
        ])
    );

    let root_hub = device(&usb, usb_tree::ROOT_HUB)?;
    assert_eq!(root_hub.devtype(), Some(OsStr::new("usb_device")));
    assert_eq!(attribute(root_hub, "bDeviceClass").as_deref(), Some("09"));
    assert!(root_hub
        .parent_with_subsystem_devtype("usb", "usb_device")?
        .is_none());

    let hub = device(&usb, usb_tree::HUB)?;
    assert_eq!(attribute(hub, "bDeviceClass").as_deref(), Some("09"));
    assert_eq!(property(hub, "ID_VENDOR_ID").as_deref(), Some("05e3"));
    assert_eq!(
        hub.parent().map(|p| p.syspath().to_owned()),
        Some(PathBuf::from(usb_tree::ROOT_HUB))
    );

    let ftdi = device(&usb, usb_tree::FTDI_DEVICE)?;
    assert_eq!(ftdi.subsystem(), Some(OsStr::new("usb")));
    assert_eq!(ftdi.devtype(), Some(OsStr::new("usb_device")));
    assert_eq!(ftdi.driver(), Some(OsStr::new("usb")));
    assert_eq!(ftdi.devnode(), Some(Path::new("/dev/bus/usb/001/003")));
    for (key, expected) in [
        ("ID_VENDOR_ID", "0403"),
        ("ID_MODEL_ID", "6001"),
        ("ID_SERIAL_SHORT", "A10KZ3X9"),
        ("ID_PATH", "pci-0000:00:14.0-usb-0:2"),
        ("ID_VENDOR", "FTDI"),
        ("ID_MODEL", "FT232R_USB_UART"),
    ] {
        assert_eq!(property(ftdi, key).as_deref(), Some(expected), "FTDI {key}");
    }
    assert_eq!(attribute(ftdi, "speed").as_deref(), Some("12"));
    assert_eq!(attribute(ftdi, "idVendor").as_deref(), Some("0403"));
    assert_eq!(attribute(ftdi, "serial").as_deref(), Some("A10KZ3X9"));

    let ftdi_interface = device(&usb, usb_tree::FTDI_INTERFACE)?;
    assert_eq!(ftdi_interface.devtype(), Some(OsStr::new("usb_interface")));
    assert_eq!(ftdi_interface.driver(), Some(OsStr::new("ftdi_sio")));

    let phone = device(&usb, usb_tree::ANDROID_PHONE)?;
    assert_eq!(property(phone, "ID_VENDOR_ID").as_deref(), Some("18d1"));
    assert_eq!(property(phone, "ID_MODEL_ID").as_deref(), Some("4ee7"));
    assert_eq!(
        property(phone, "ID_SERIAL_SHORT").as_deref(),
        Some("R58M12ABCDE")
    );
    assert_eq!(
        phone.parent().map(|p| p.syspath().to_owned()),
        Some(PathBuf::from(usb_tree::HUB))
    );

    let ttys = scan("tty")?;
    assert_eq!(
        ttys.keys().cloned().collect::<Vec<_>>(),
        syspaths([usb_tree::FTDI_TTY])
    );
    let tty = device(&ttys, usb_tree::FTDI_TTY)?;
    assert_eq!(tty.sysname(), OsStr::new("ttyUSB0"));
    assert_eq!(tty.devnode(), Some(Path::new("/dev/ttyUSB0")));
    for (key, expected) in [
        ("ID_USB_INTERFACE_NUM", "00"),
        ("ID_PATH", "pci-0000:00:14.0-usb-0:2:1.0"),
        ("ID_VENDOR_ID", "0403"),
        ("ID_SERIAL_SHORT", "A10KZ3X9"),
    ] {
        assert_eq!(
            property(tty, key).as_deref(),
            Some(expected),
            "ttyUSB0 {key}"
        );
    }

    // Parent walk: tty -> usb-serial port -> usb_interface -> usb_device.
    let port = tty.parent().context("tty has no parent")?;
    assert_eq!(port.subsystem(), Some(OsStr::new("usb-serial")));
    let interface = tty
        .parent_with_subsystem_devtype("usb", "usb_interface")?
        .context("tty has no usb_interface parent")?;
    assert_eq!(interface.syspath(), Path::new(usb_tree::FTDI_INTERFACE));
    assert_eq!(
        attribute(&interface, "bInterfaceNumber").as_deref(),
        Some("00")
    );
    let usb_device = tty
        .parent_with_subsystem_devtype("usb", "usb_device")?
        .context("tty has no usb_device parent")?;
    assert_eq!(usb_device.syspath(), Path::new(usb_tree::FTDI_DEVICE));
    assert_eq!(
        property(&usb_device, "ID_SERIAL_SHORT").as_deref(),
        Some("A10KZ3X9")
    );
    assert_eq!(attribute(&usb_device, "speed").as_deref(), Some("12"));

    // Lookup by syspath goes through the testbed as well.
    let by_syspath = udev::Device::from_syspath(Path::new(usb_tree::FTDI_TTY))?;
    assert_eq!(
        property(&by_syspath, "ID_MODEL_ID").as_deref(),
        Some("6001")
    );

    // There is no udev database in the testbed, but devnum-less devices pass
    // libudev's initialized filter, so probes may use match_is_initialized().
    let mut initialized = udev::Enumerator::new()?;
    initialized.match_is_initialized()?;
    initialized.match_subsystem("tty")?;
    assert_eq!(initialized.scan_devices()?.count(), 1);
    Ok(())
}

/// Next event from the monitor, or an error after [`EVENT_TIMEOUT`].
async fn next_event(monitor: &mut AsyncMonitorSocket) -> Result<udev::Event> {
    let item = tokio::time::timeout(
        EVENT_TIMEOUT,
        std::future::poll_fn(|cx| Pin::new(&mut *monitor).poll_next(cx)),
    )
    .await
    .with_context(|| format!("no uevent within {EVENT_TIMEOUT:?}"))?;
    match item {
        Some(event) => Ok(event.context("monitor socket error")?),
        None => bail!("monitor stream ended"),
    }
}

fn describe(event: &udev::Event) -> String {
    let props: Vec<String> = event
        .properties()
        .map(|p| {
            format!(
                "{}={}",
                p.name().to_string_lossy(),
                p.value().to_string_lossy()
            )
        })
        .collect();
    format!(
        "{:?} {} [{}]",
        event.event_type(),
        event.syspath().display(),
        props.join(" ")
    )
}

/// Receives `count` events, failing if any of them takes longer than
/// [`EVENT_TIMEOUT`].
async fn next_events(monitor: &mut AsyncMonitorSocket, count: usize) -> Result<Vec<udev::Event>> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let event = next_event(monitor).await?;
        println!("received: {}", describe(&event));
        events.push(event);
    }
    Ok(events)
}

fn event_syspaths(events: &[udev::Event]) -> Vec<PathBuf> {
    events.iter().map(|e| e.syspath().to_owned()).collect()
}

/// Fails if another event arrives within a short grace period.
async fn assert_no_more_events(monitor: &mut AsyncMonitorSocket) -> Result<()> {
    match tokio::time::timeout(Duration::from_millis(300), next_event(monitor)).await {
        Err(_elapsed) => Ok(()),
        Ok(Ok(event)) => bail!("unexpected extra uevent: {}", describe(&event)),
        Ok(Err(e)) => Err(e),
    }
}

#[test]
fn async_monitor_receives_add_and_remove_uevents() -> Result<()> {
    if umockdev::ensure_under_umockdev_wrapper("async_monitor_receives_add_and_remove_uevents")
        .is_some()
    {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The testbed must exist before listen(): the preload only redirects
        // the monitor's socket into $UMOCKDEV_DIR while that is set.
        let testbed = Testbed::new()?;
        testbed.add_fixture(fixtures::USB_TREE)?;
        let socket = MonitorBuilder::new()?
            .match_subsystem("usb")?
            .match_subsystem("tty")?
            .listen()?;
        let mut monitor = AsyncMonitorSocket::new(socket)?;
        // Coldplug happened before the monitor existed: nothing is queued.
        assert_no_more_events(&mut monitor).await?;

        // Hot-plug: loading the record creates the sysfs entries and emits
        // one `add` per device, parent first. The usb-serial port device is
        // not matched by the monitor's subsystem filter.
        testbed.add_fixture(fixtures::HOTPLUG_FTDI)?;
        let added = next_events(&mut monitor, 3).await?;
        assert_eq!(
            event_syspaths(&added),
            [
                hotplug_ftdi::DEVICE,
                hotplug_ftdi::INTERFACE,
                hotplug_ftdi::TTY
            ]
            .map(PathBuf::from)
        );
        assert!(added.iter().all(|e| e.event_type() == EventType::Add));

        let device_event = &added[0];
        assert_eq!(device_event.subsystem(), Some(OsStr::new("usb")));
        assert_eq!(device_event.devtype(), Some(OsStr::new("usb_device")));
        assert_eq!(
            device_event.devnode(),
            Some(Path::new("/dev/bus/usb/001/006"))
        );
        for (key, expected) in [
            ("ID_VENDOR_ID", "0403"),
            ("ID_MODEL_ID", "6001"),
            ("ID_SERIAL_SHORT", "AB0LQ4HZ"),
            ("ID_PATH", "pci-0000:00:14.0-usb-0:3"),
        ] {
            assert_eq!(
                property(device_event, key).as_deref(),
                Some(expected),
                "add event {key}"
            );
        }
        assert_eq!(attribute(device_event, "speed").as_deref(), Some("12"));
        assert_eq!(
            attribute(device_event, "serial").as_deref(),
            Some("AB0LQ4HZ")
        );

        let tty_event = &added[2];
        assert_eq!(tty_event.subsystem(), Some(OsStr::new("tty")));
        assert_eq!(tty_event.sysname(), OsStr::new("ttyUSB1"));
        assert_eq!(tty_event.devnode(), Some(Path::new("/dev/ttyUSB1")));
        assert_eq!(
            property(tty_event, "ID_USB_INTERFACE_NUM").as_deref(),
            Some("00")
        );
        assert_eq!(
            property(tty_event, "ID_PATH").as_deref(),
            Some("pci-0000:00:14.0-usb-0:3:1.0")
        );
        let tty_usb_device = tty_event
            .parent_with_subsystem_devtype("usb", "usb_device")?
            .context("tty event has no usb_device parent")?;
        assert_eq!(tty_usb_device.syspath(), Path::new(hotplug_ftdi::DEVICE));
        assert_eq!(
            property(&tty_usb_device, "ID_SERIAL_SHORT").as_deref(),
            Some("AB0LQ4HZ")
        );
        assert_no_more_events(&mut monitor).await?;

        // An explicit uevent (umockdev_testbed_uevent) for an existing device.
        testbed.uevent(hotplug_ftdi::TTY, "change")?;
        let changed = next_events(&mut monitor, 1).await?;
        assert_eq!(changed[0].event_type(), EventType::Change);
        assert_eq!(changed[0].syspath(), Path::new(hotplug_ftdi::TTY));
        assert_eq!(
            property(&changed[0], "ID_SERIAL_SHORT").as_deref(),
            Some("AB0LQ4HZ")
        );

        // Hot-unplug: `remove` child first, sent while the sysfs entries still
        // exist, then the entries go away.
        let announced = testbed.unplug(hotplug_ftdi::DEVICE)?;
        assert_eq!(
            announced,
            [
                hotplug_ftdi::TTY,
                hotplug_ftdi::USB_SERIAL_PORT,
                hotplug_ftdi::INTERFACE,
                hotplug_ftdi::DEVICE
            ]
        );
        let removed = next_events(&mut monitor, 3).await?;
        assert_eq!(
            event_syspaths(&removed),
            [
                hotplug_ftdi::TTY,
                hotplug_ftdi::INTERFACE,
                hotplug_ftdi::DEVICE
            ]
            .map(PathBuf::from)
        );
        assert!(removed.iter().all(|e| e.event_type() == EventType::Remove));
        assert_eq!(removed[2].devtype(), Some(OsStr::new("usb_device")));
        assert_eq!(
            property(&removed[2], "ID_SERIAL_SHORT").as_deref(),
            Some("AB0LQ4HZ")
        );
        assert_no_more_events(&mut monitor).await?;
        assert!(!scan("usb")?.contains_key(Path::new(hotplug_ftdi::DEVICE)));
        assert!(!scan("tty")?.contains_key(Path::new(hotplug_ftdi::TTY)));
        assert!(scan("tty")?.contains_key(Path::new(usb_tree::FTDI_TTY)));

        // Re-plugging the same adapter works after a clean unplug.
        testbed.add_fixture(fixtures::HOTPLUG_FTDI)?;
        let replugged = next_events(&mut monitor, 3).await?;
        assert!(replugged.iter().all(|e| e.event_type() == EventType::Add));
        assert_eq!(replugged[2].syspath(), Path::new(hotplug_ftdi::TTY));
        assert_no_more_events(&mut monitor).await?;

        drop(monitor);
        Ok(())
    })
}
