//! What probes tell the registry: one [`Observation`] says that a source sees
//! (or no longer sees) one thing, with the identifiers it could read and the
//! attributes it asserts.
//!
//! Invariant: an observation never carries a device id. Identity is decided by
//! the registry ([`super::identity`]), so every probe goes through the same rules.

use rae_protocol::Attrs;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which discovery mechanism produced an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// USB and tty hotplug through libudev.
    Udev,
    /// Serial-port probes.
    Serial,
    /// The ADB host protocol.
    Adb,
}

impl Source {
    /// Every probe.
    pub const ALL: [Source; 3] = [Source::Udev, Source::Serial, Source::Adb];

    /// Stable lowercase name, used in facet keys, the CLI and `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Udev => "udev",
            Source::Serial => "serial",
            Source::Adb => "adb",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a source observes, e.g. one udev device (by syspath). A device
/// record is the union of its facets: a USB device and its tty are two facets
/// of one record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FacetKey {
    pub source: Source,
    pub key: String,
}

impl FacetKey {
    pub fn new(source: Source, key: impl Into<String>) -> Self {
        FacetKey {
            source,
            key: key.into(),
        }
    }
}

impl fmt::Display for FacetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.key)
    }
}

/// An identifier a probe could read, from strongest to weakest kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identifier {
    /// A serial number (USB iSerial, or an ADB serial of a USB device, which is
    /// the same string). `interface` tells the ports of a multi-interface
    /// adapter apart.
    Serial {
        serial: String,
        interface: Option<u8>,
    },
    /// The physical port (`ID_PATH` of the USB device).
    Port { path: String, interface: Option<u8> },
    /// A network endpoint such as an ADB-over-TCP `ip:port`.
    Network(String),
    /// A device node such as `/dev/ttyUSB0`. Weakest: it joins whichever
    /// device last claimed the node, and only identifies a device on its own
    /// when nothing else claims it (e.g. `/dev/ttyS0`).
    Node(String),
}

/// Whether the source currently sees the thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Present,
    Absent,
}

/// A single report from a probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub facet: FacetKey,
    pub presence: Presence,
    /// Identifiers, any order; ignored when `presence` is `Absent`.
    pub identifiers: Vec<Identifier>,
    /// Attributes this facet asserts; ignored when `presence` is `Absent`.
    pub attrs: Attrs,
}

impl Observation {
    /// A facet that is present with the given identifiers and attributes.
    pub fn present(facet: FacetKey, identifiers: Vec<Identifier>, attrs: Attrs) -> Self {
        Observation {
            facet,
            presence: Presence::Present,
            identifiers,
            attrs,
        }
    }

    /// A facet that went away.
    pub fn absent(facet: FacetKey) -> Self {
        Observation {
            facet,
            presence: Presence::Absent,
            identifiers: Vec::new(),
            attrs: Attrs::new(),
        }
    }
}
