//! The udev probe: USB devices (`usb`/`usb_device`) and ttys whose USB parent
//! is tracked. Enumerates at start, then follows hotplug events.
//!
//! Two halves:
//! - [`map`] turns a [`UdevRecord`] (a plain snapshot of a udev device and
//!   its USB parent, also loadable from JSON fixtures) into an
//!   [`Observation`]; pure and tested without udev.
//! - [`UdevProbe`] talks to libudev. Its monitor socket is not `Send`, so it
//!   runs on its own thread with a current-thread runtime.
//!
//! Identity: a USB device is identified by its serial (`ID_SERIAL_SHORT`,
//! else sysfs `serial`), else its port (`ID_PATH`, else the kernel port name
//! such as `1-2.3`). A tty on interface 0 joins its parent's record with
//! `tty.node`; a tty on another interface of a multi-port adapter is its
//! own device keyed by the parent's identity plus the interface number.

use super::rules::{self, Lookup};
use super::ProbeEvent;
use crate::config::UdevSettings;
use crate::registry::{FacetKey, Identifier, Observation, Source};
use log::{debug, info, warn};
use rae_protocol::{AttrValue, Attrs};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A snapshot of one udev device, as much as the mapping needs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct UdevRecord {
    pub syspath: String,
    pub subsystem: String,
    #[serde(default)]
    pub devtype: Option<String>,
    #[serde(default)]
    pub devnode: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// For a tty: its `usb_device` ancestor, if any.
    #[serde(default)]
    pub usb_parent: Option<Box<UdevRecord>>,
    /// For a tty: the `bInterfaceNumber` of its `usb_interface` ancestor.
    #[serde(default)]
    pub interface_number: Option<u8>,
}

impl Lookup for UdevRecord {
    fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

impl UdevRecord {
    fn first(&self, props: &[&str], attrs: &[&str]) -> Option<String> {
        props
            .iter()
            .filter_map(|p| self.property(p))
            .chain(attrs.iter().filter_map(|a| self.attribute(a)))
            .map(str::trim)
            .find(|v| !v.is_empty())
            .map(str::to_string)
    }

    fn is_usb_device(&self) -> bool {
        self.subsystem == "usb" && self.devtype.as_deref() == Some("usb_device")
    }

    /// The kernel's port name, the last component of the syspath (`1-2.3`).
    fn port_name(&self) -> Option<&str> {
        self.syspath.rsplit('/').next().filter(|s| !s.is_empty())
    }

    fn identifiers(&self, interface: Option<u8>) -> Vec<Identifier> {
        let mut ids = Vec::new();
        if let Some(serial) = self.first(&["ID_SERIAL_SHORT"], &["serial"]) {
            ids.push(Identifier::Serial { serial, interface });
        }
        let path = self
            .first(&["ID_PATH"], &[])
            .or_else(|| self.port_name().map(|p| format!("usb-{p}")));
        if let Some(path) = path {
            ids.push(Identifier::Port { path, interface });
        }
        ids
    }

    fn usb_attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        let mut put = |key: &str, v: Option<String>| {
            if let Some(v) = v {
                a.insert(key.to_string(), AttrValue::Text(v));
            }
        };
        put(
            "usb.vendor_id",
            self.first(&["ID_VENDOR_ID"], &["idVendor"]),
        );
        put(
            "usb.product_id",
            self.first(&["ID_MODEL_ID"], &["idProduct"]),
        );
        put(
            "usb.vendor",
            self.first(&["ID_VENDOR_FROM_DATABASE", "ID_VENDOR"], &["manufacturer"]),
        );
        put(
            "usb.model",
            self.first(&["ID_MODEL_FROM_DATABASE", "ID_MODEL"], &["product"]),
        );
        put("usb.serial", self.first(&["ID_SERIAL_SHORT"], &["serial"]));
        put("usb.path", self.first(&["ID_PATH"], &[]));
        if let Some(speed) = self.attribute("speed").map(str::trim) {
            match speed.parse::<i64>() {
                Ok(n) => a.insert("usb.speed".into(), AttrValue::Int(n)),
                Err(_) => a.insert("usb.speed".into(), AttrValue::Text(speed.into())),
            };
        }
        a
    }
}

/// Maps a device that was added or changed to an observation, or `None` if
/// it is not tracked (not USB, excluded, or a tty without a tracked parent).
pub fn map(rec: &UdevRecord, settings: &UdevSettings) -> Option<Observation> {
    let facet = FacetKey::new(Source::Udev, rec.syspath.clone());
    let tracked = |d: &UdevRecord| rules::tracked(&settings.include, &settings.exclude, d);
    if rec.is_usb_device() {
        if !tracked(rec) {
            return None;
        }
        return Some(Observation::present(
            facet,
            rec.identifiers(None),
            rec.usb_attrs(),
        ));
    }
    if rec.subsystem == "tty" {
        let parent = rec.usb_parent.as_deref().filter(|p| tracked(p))?;
        let node = rec.devnode.clone()?;
        let ids = tty_record_identifiers(rec)?;
        let own_device = ids.iter().find_map(|id| match id {
            Identifier::Serial { interface, .. } | Identifier::Port { interface, .. } => *interface,
            _ => None,
        });
        let mut attrs = Attrs::new();
        if let Some(n) = own_device {
            attrs = parent.usb_attrs();
            attrs.insert("usb.interface".into(), AttrValue::Int(i64::from(n)));
        }
        attrs.insert("tty.node".into(), AttrValue::Text(node));
        return Some(Observation::present(facet, ids, attrs));
    }
    None
}

/// The identifiers of a tty device node as the udev probe reports them (its
/// USB parent's serial and port, with the interface number when it is not
/// 0, plus the node), so other probes of the same port land on the same
/// record in any order. Just the node for a non-USB tty or without udev.
pub fn tty_identifiers(node: &str) -> Vec<Identifier> {
    let fallback = vec![Identifier::Node(node.to_string())];
    let Some(name) = std::path::Path::new(node).file_name() else {
        return fallback;
    };
    let Ok(dev) = udev::Device::from_subsystem_sysname("tty".into(), name.to_string_lossy().into())
    else {
        return fallback;
    };
    tty_record_identifiers(&record_of(&dev)).unwrap_or(fallback)
}

fn tty_record_identifiers(rec: &UdevRecord) -> Option<Vec<Identifier>> {
    let parent = rec.usb_parent.as_deref()?;
    let node = rec.devnode.clone()?;
    let interface = rec.interface_number.or_else(|| {
        rec.property("ID_USB_INTERFACE_NUM")
            .and_then(|n| u8::from_str_radix(n.trim(), 16).ok())
    });
    let mut ids = parent.identifiers(interface.filter(|n| *n > 0));
    ids.push(Identifier::Node(node));
    Some(ids)
}

/// The observation for a device that was removed.
pub fn map_removed(syspath: &str) -> Observation {
    Observation::absent(FacetKey::new(Source::Udev, syspath))
}

/// Snapshots a live libudev device.
pub fn record_of(dev: &udev::Device) -> UdevRecord {
    let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
    let mut rec = UdevRecord {
        syspath: dev.syspath().to_string_lossy().into_owned(),
        subsystem: dev.subsystem().map(text).unwrap_or_default(),
        devtype: dev.devtype().map(text),
        devnode: dev.devnode().map(|p| p.to_string_lossy().into_owned()),
        properties: dev
            .properties()
            .map(|p| (text(p.name()), text(p.value())))
            .collect(),
        attributes: BTreeMap::new(),
        usb_parent: None,
        interface_number: None,
    };
    for attr in [
        "bDeviceClass",
        "idVendor",
        "idProduct",
        "manufacturer",
        "product",
        "serial",
        "speed",
    ] {
        if let Some(v) = dev.attribute_value(attr) {
            rec.attributes.insert(attr.to_string(), text(v));
        }
    }
    if rec.subsystem == "tty" {
        if let Ok(Some(parent)) = dev.parent_with_subsystem_devtype("usb", "usb_device") {
            rec.usb_parent = Some(Box::new(record_of(&parent)));
        }
        if let Ok(Some(intf)) = dev.parent_with_subsystem_devtype("usb", "usb_interface") {
            rec.interface_number = intf
                .attribute_value("bInterfaceNumber")
                .and_then(|v| u8::from_str_radix(v.to_string_lossy().trim(), 16).ok());
        }
    }
    rec
}

/// One pass over the current devices, in the order a probe sends them:
/// USB devices first, then ttys (so a tty finds its parent's record).
pub fn enumerate(settings: &UdevSettings) -> std::io::Result<Vec<Observation>> {
    let mut out = Vec::new();
    for subsystem in ["usb", "tty"] {
        let mut en = udev::Enumerator::new()?;
        en.match_subsystem(subsystem)?;
        for dev in en.scan_devices()? {
            if let Some(obs) = map(&record_of(&dev), settings) {
                out.push(obs);
            }
        }
    }
    Ok(out)
}

/// The long-running udev task.
#[derive(Debug)]
pub struct UdevProbe {
    pub settings: UdevSettings,
    pub tx: mpsc::Sender<ProbeEvent>,
    pub shutdown: watch::Receiver<bool>,
}

impl UdevProbe {
    /// Runs on the calling thread until shutdown; builds its own
    /// current-thread runtime because the monitor socket is not `Send`.
    /// `wrap` decorates the probe's future inside that runtime (the
    /// daemon's watchdog supervision).
    pub fn run_blocking<W, F>(self, wrap: W)
    where
        W: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()>>>) -> F,
        F: Future<Output = ()>,
    {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                warn!("udev probe: cannot start its runtime: {e}");
                return;
            }
        };
        rt.block_on(async move { wrap(Box::pin(self.run())).await });
    }

    /// Monitors (retrying with capped backoff if udev is unavailable) until shutdown.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        let mut synced = false;
        let mut reported = BTreeSet::new();
        loop {
            match self.session(&mut synced, &mut reported).await {
                Ok(()) => return,
                Err(e) => {
                    warn!("udev probe failed: {e}; retrying in {backoff:?}");
                    let _ = self
                        .tx
                        .send(ProbeEvent::Failed {
                            source: Source::Udev,
                            message: e.to_string(),
                        })
                        .await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Listen, enumerate, then follow events. `Ok` means shutdown.
    /// `reported` holds the syspaths last reported present, so a re-scan
    /// after a monitor failure also reports what vanished in between.
    async fn session(
        &mut self,
        synced: &mut bool,
        reported: &mut BTreeSet<String>,
    ) -> std::io::Result<()> {
        // Listen before enumerating, so nothing plugged in between is missed.
        let socket = udev::MonitorBuilder::new()?
            .match_subsystem("usb")?
            .match_subsystem("tty")?
            .listen()?;
        let mut socket = tokio_udev::AsyncMonitorSocket::new(socket)?;
        let found = enumerate(&self.settings)?;
        info!(
            "udev probe: {} tracked device facets found by a full scan",
            found.len()
        );
        let now: BTreeSet<String> = found.iter().map(|o| o.facet.key.clone()).collect();
        let vanished: Vec<String> = reported.difference(&now).cloned().collect();
        *reported = now;
        let removals = vanished.iter().map(|syspath| map_removed(syspath));
        for obs in removals.chain(found) {
            if self.tx.send(ProbeEvent::Observed(obs)).await.is_err() {
                return Ok(());
            }
        }
        if !*synced {
            *synced = true;
            if self
                .tx
                .send(ProbeEvent::Synced(Source::Udev))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        loop {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut socket), cx)
            });
            let event = tokio::select! {
                ev = next => ev,
                _ = self.shutdown.changed() => return Ok(()),
            };
            let event = match event {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(e),
                None => return Err(std::io::Error::other("udev monitor closed")),
            };
            let obs = match event.event_type() {
                udev::EventType::Remove => Some(map_removed(&event.syspath().to_string_lossy())),
                udev::EventType::Add | udev::EventType::Change | udev::EventType::Bind => {
                    map(&record_of(&event.device()), &self.settings)
                }
                other => {
                    debug!(
                        "udev probe: ignoring {other:?} for {}",
                        event.syspath().display()
                    );
                    None
                }
            };
            if let Some(obs) = obs {
                match obs.presence {
                    crate::registry::Presence::Present => reported.insert(obs.facet.key.clone()),
                    crate::registry::Presence::Absent => reported.remove(&obs.facet.key),
                };
                if self.tx.send(ProbeEvent::Observed(obs)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
