//! From adb device lists to observations, pure (no I/O).
//!
//! [`DeviceTable`] holds the devices of the current tracking connection.
//! Each new list is diffed against it: a new serial or changed attributes
//! give a present observation, a serial that is gone gives
//! [`Observation::absent`]. A device entering state `device` (or coming
//! back in it on a new transport) is due for one property fetch, tagged
//! with a generation so a late answer for an earlier visit is ignored.
//!
//! Mapping: facet `adb:<serial>`; a TCP serial (`host:port`, or an mDNS
//! name such as `adb-XXXX._adb-tls-connect._tcp`) is
//! [`Identifier::Network`], any other serial [`Identifier::Serial`] (a USB
//! phone's adb serial is its USB iSerial, so it joins the udev record).
//! Attributes: `state` (liveness), `android.adb_state` (raw), the `-l`
//! fields and the fetched properties. Properties survive state changes and
//! are replaced by the next successful fetch; a failed fetch sets
//! `android.probe_error` and keeps what an earlier fetch found.

use super::listing::DeviceEntry;
use crate::registry::liveness::STATE_ATTR;
use crate::registry::{FacetKey, Identifier, Observation, Source};
use rae_protocol::{AttrValue, Attrs};
use std::collections::BTreeMap;

pub const ADB_STATE_ATTR: &str = "android.adb_state";
pub const PRODUCT_ATTR: &str = "android.product";
pub const MODEL_NAME_ATTR: &str = "android.model_name";
pub const DEVICE_ATTR: &str = "android.device";
pub const TRANSPORT_ID_ATTR: &str = "android.transport_id";
pub const PROBE_ERROR_ATTR: &str = "android.probe_error";
/// Attributes set by the probe itself, which no property may map to.
pub const RESERVED_ATTRS: &[&str] = &[
    STATE_ATTR,
    ADB_STATE_ATTR,
    PRODUCT_ATTR,
    MODEL_NAME_ATTR,
    DEVICE_ATTR,
    TRANSPORT_ID_ATTR,
    PROBE_ERROR_ATTR,
];
/// The adb state in which a device answers requests.
pub const ONLINE_ADB_STATE: &str = "device";

/// The attribute of a system property: `android.` + the name without `ro.`.
pub fn property_attr(property: &str) -> String {
    format!(
        "android.{}",
        property.strip_prefix("ro.").unwrap_or(property)
    )
}

/// The liveness (`state` attribute) of an adb state.
pub fn liveness(adb_state: &str) -> &'static str {
    match adb_state {
        "device" => "online",
        "unauthorized" => "unauthorized",
        "authorizing" => "authorizing",
        "recovery" => "recovery",
        "bootloader" => "bootloader",
        "sideload" => "sideload",
        "connecting" => "connecting",
        _ => "offline",
    }
}

/// Whether an adb serial names a network endpoint rather than a USB device.
pub fn is_network_serial(serial: &str) -> bool {
    let mdns = serial.trim_end_matches('.');
    if mdns.ends_with("._tcp") || mdns.ends_with("._udp") {
        return true;
    }
    match serial.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && !host.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// The facet of a device.
pub fn facet(serial: &str) -> FacetKey {
    FacetKey::new(Source::Adb, serial)
}

/// The identifiers of a device.
pub fn identifiers(serial: &str) -> Vec<Identifier> {
    if is_network_serial(serial) {
        vec![Identifier::Network(serial.to_string())]
    } else {
        vec![Identifier::Serial {
            serial: serial.to_string(),
            interface: None,
        }]
    }
}

/// The attributes a device list line asserts.
pub fn list_attrs(e: &DeviceEntry) -> Attrs {
    let mut a = Attrs::new();
    a.insert(STATE_ATTR.into(), liveness(&e.state).into());
    a.insert(ADB_STATE_ATTR.into(), e.state.as_str().into());
    for (key, value) in [
        (PRODUCT_ATTR, &e.product),
        (MODEL_NAME_ATTR, &e.model),
        (DEVICE_ATTR, &e.device),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            a.insert(key.into(), v.into());
        }
    }
    if let Some(id) = e
        .transport_id
        .as_deref()
        .and_then(|t| t.parse::<i64>().ok())
    {
        a.insert(TRANSPORT_ID_ATTR.into(), AttrValue::Int(id));
    }
    a
}

/// A property fetch the table asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub serial: String,
    pub generation: u64,
}

#[derive(Debug)]
struct Tracked {
    entry: DeviceEntry,
    generation: u64,
    /// Fetched property attributes and `android.probe_error`.
    props: Attrs,
    /// What was last reported.
    sent: Attrs,
}

impl Tracked {
    fn attrs(&self) -> Attrs {
        let mut a = list_attrs(&self.entry);
        a.extend(self.props.iter().map(|(k, v)| (k.clone(), v.clone())));
        a
    }

    /// The observation if the attributes differ from the last one reported.
    fn report(&mut self) -> Option<Observation> {
        let attrs = self.attrs();
        if attrs == self.sent {
            return None;
        }
        self.sent = attrs.clone();
        let serial = &self.entry.serial;
        Some(Observation::present(
            facet(serial),
            identifiers(serial),
            attrs,
        ))
    }
}

/// The devices of one tracking connection. See the module docs.
#[derive(Debug, Default)]
pub struct DeviceTable {
    devices: BTreeMap<String, Tracked>,
    next_generation: u64,
}

impl DeviceTable {
    /// Applies a full device list: the observations to send, then the
    /// property fetches to start.
    pub fn update(&mut self, list: Vec<DeviceEntry>) -> (Vec<Observation>, Vec<Fetch>) {
        let mut out = Vec::new();
        let mut fetches = Vec::new();
        let listed: BTreeMap<String, DeviceEntry> =
            list.into_iter().map(|e| (e.serial.clone(), e)).collect();
        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|s| !listed.contains_key(*s))
            .cloned()
            .collect();
        for serial in gone {
            self.devices.remove(&serial);
            out.push(Observation::absent(facet(&serial)));
        }
        for (serial, entry) in listed {
            let online = entry.state == ONLINE_ADB_STATE;
            let tracked = self
                .devices
                .entry(serial.clone())
                .or_insert_with(|| Tracked {
                    entry: DeviceEntry::default(),
                    generation: 0,
                    props: Attrs::new(),
                    sent: Attrs::new(),
                });
            let entering = online
                && (tracked.entry.state != ONLINE_ADB_STATE
                    || tracked.entry.transport_id != entry.transport_id);
            tracked.entry = entry;
            if entering {
                self.next_generation += 1;
                tracked.generation = self.next_generation;
                fetches.push(Fetch {
                    serial,
                    generation: tracked.generation,
                });
            }
            out.extend(tracked.report());
        }
        (out, fetches)
    }

    /// Applies the result of a fetch: the configured `properties` found, or
    /// an error message. `None` if the fetch is stale or changes nothing.
    pub fn apply_props(
        &mut self,
        fetch: &Fetch,
        result: Result<BTreeMap<String, String>, String>,
        properties: &[String],
    ) -> Option<Observation> {
        let tracked = self
            .devices
            .get_mut(&fetch.serial)
            .filter(|t| t.generation == fetch.generation)?;
        match result {
            Ok(found) => {
                tracked.props = properties
                    .iter()
                    .filter_map(|p| {
                        let v = found.get(p).filter(|v| !v.is_empty())?;
                        Some((property_attr(p), AttrValue::Text(v.clone())))
                    })
                    .collect();
            }
            Err(message) => {
                tracked
                    .props
                    .insert(PROBE_ERROR_ATTR.into(), AttrValue::Text(message));
            }
        }
        tracked.report()
    }

    /// Forgets every device: one absent observation each.
    pub fn clear(&mut self) -> Vec<Observation> {
        let out = self
            .devices
            .keys()
            .map(|s| Observation::absent(facet(s)))
            .collect();
        self.devices.clear();
        out
    }

    /// Every device as a present observation with its current attributes.
    pub fn snapshot(&self) -> Vec<Observation> {
        self.devices
            .values()
            .map(|t| {
                Observation::present(
                    facet(&t.entry.serial),
                    identifiers(&t.entry.serial),
                    t.attrs(),
                )
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

#[cfg(test)]
mod tests;
