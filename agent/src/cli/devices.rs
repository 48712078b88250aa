//! `rae-agent devices`: the table of devices and its `--json` form.

use super::{table, Failure};
use crate::journal::read::JournalReader;
use crate::registry::record::Presence;
use crate::registry::DeviceRecord;
use crate::timefmt;
use serde_json::json;
use std::collections::BTreeSet;
use std::io::Write;

/// Attributes tried, in order, for the MODEL column.
const MODEL_ATTRS: &[&str] = &[
    "android.model",
    "usb.model",
    "serial.banner",
    "usb.product_id",
];

/// The most descriptive model string of a device.
pub fn model(rec: &DeviceRecord) -> String {
    MODEL_ATTRS
        .iter()
        .find_map(|k| rec.attrs.get(*k))
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

/// The sources that currently see a device, e.g. `udev`.
pub fn transports(rec: &DeviceRecord) -> Vec<&'static str> {
    let set: BTreeSet<&'static str> = rec.facets.keys().map(|f| f.source.as_str()).collect();
    set.into_iter().collect()
}

/// The state column: the liveness `state` attribute while present, else
/// `missing` or `detached`.
pub fn state(rec: &DeviceRecord) -> String {
    match rec.presence() {
        Presence::Present => rec
            .attrs
            .get(crate::registry::liveness::STATE_ATTR)
            .map(|v| v.to_string())
            .unwrap_or_else(|| crate::registry::liveness::DEFAULT_STATE.into()),
        other => other.as_str().into(),
    }
}

/// The stable JSON object of one device (documented in docs/CLI.md).
pub fn device_json(rec: &DeviceRecord) -> serde_json::Value {
    json!({
        "device_id": rec.device_id,
        "identity": rec.identity,
        "state": state(rec),
        "presence": rec.presence().as_str(),
        "transports": transports(rec),
        "model": model(rec),
        "session_id": rec.session.as_ref().map(|s| s.id.to_string()),
        "seq": rec.session.as_ref().map(|s| s.last_seq),
        "first_seen_ms": rec.first_seen_ms,
        "last_change_ms": rec.last_change_ms,
        "last_change": timefmt::rfc3339(rec.last_change_ms),
        "attrs": rec.attrs,
    })
}

pub fn run(
    reader: &JournalReader,
    all: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let devices: Vec<DeviceRecord> = reader
        .devices()?
        .into_iter()
        .filter(|d| all || d.presence() != Presence::Detached)
        .collect();
    if json {
        let list: Vec<_> = devices.iter().map(device_json).collect();
        serde_json::to_writer_pretty(&mut *out, &list)?;
        writeln!(out)?;
        return Ok(());
    }
    if devices.is_empty() {
        let hint = if all {
            ""
        } else {
            " (--all includes detached devices)"
        };
        writeln!(out, "no devices{hint}")?;
        return Ok(());
    }
    let now = timefmt::now_ms();
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            let t = transports(d);
            vec![
                d.device_id.clone(),
                if t.is_empty() {
                    "-".into()
                } else {
                    t.join(",")
                },
                model(d),
                state(d),
                d.session
                    .as_ref()
                    .map(|s| format!("{} #{}", short_session(&s.id), s.last_seq))
                    .unwrap_or_else(|| "-".into()),
                format!("{} ago", timefmt::age(now.saturating_sub(d.last_change_ms))),
            ]
        })
        .collect();
    table::write(
        out,
        &[
            "DEVICE",
            "TRANSPORTS",
            "MODEL",
            "STATE",
            "SESSION",
            "LAST CHANGE",
        ],
        &rows,
    )?;
    Ok(())
}

/// The last 8 hex digits of a session id: the random part of a UUIDv7.
pub fn short_session(id: &uuid::Uuid) -> String {
    let s = id.simple().to_string();
    s[s.len() - 8..].to_string()
}
