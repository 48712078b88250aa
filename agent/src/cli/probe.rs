//! `rae-agent probe`: one discovery pass with the configured rules, printed.
//! Runs the udev enumeration and one pass of the serial and ADB probes.
//! Writes nothing; the registry's identity rules are applied in memory.

use super::devices::device_json;
use super::{table, Failure};
use crate::config::Settings;
use crate::probe::{adb, serial, udev};
use crate::registry::Registry;
use std::io::Write;
use uuid::Uuid;

pub fn run(settings: &Settings, json: bool, out: &mut impl Write) -> Result<(), Failure> {
    let mut observations = if settings.udev.enabled {
        udev::enumerate(&settings.udev)?
    } else {
        Vec::new()
    };
    let udev_count = observations.len();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (serial, adb) = rt.block_on(async {
        tokio::join!(
            serial::scan_once(&settings.serial),
            adb::scan_once(&settings.adb)
        )
    });
    let (serial_count, adb_count) = (serial.len(), adb.len());
    observations.extend(serial);
    observations.extend(adb);
    let mut registry = Registry::new(settings.registry_config());
    let now = crate::timefmt::now_ms();
    for obs in &observations {
        let t = registry.observe(obs, now, Uuid::now_v7());
        registry.apply(t);
    }
    let devices: Vec<_> = registry.devices().collect();
    if json {
        let v: Vec<_> = devices.iter().map(|d| device_json(d)).collect();
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    let onoff = |on: bool| if on { "enabled" } else { "disabled" };
    writeln!(
        out,
        "udev: {} ({udev_count} facets)  serial: {} ({serial_count} ports)  adb: {} ({adb_count} devices)",
        onoff(settings.udev.enabled),
        onoff(settings.serial.enabled()),
        onoff(settings.adb.enabled()),
    )?;
    if devices.is_empty() {
        writeln!(out, "no devices found")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            let attrs = d
                .attrs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            vec![d.device_id.clone(), d.identity.clone(), attrs]
        })
        .collect();
    table::write(out, &["DEVICE", "IDENTITY", "ATTRIBUTES"], &rows)?;
    Ok(())
}
