//! The registry's data: device records, sessions, events and the
//! [`Transition`] that moves the registry from one state to the next.
//!
//! Invariant: a transition is computed from the current state without
//! changing it; the journal commits it; only then is it applied. So the
//! in-memory state never runs ahead of what is durable.

use super::observation::FacetKey;
use rae_protocol::{Attrs, EventKind};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The open session of a present device.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: Uuid,
    /// The `seq` of the last event of this session (the first event is 1).
    pub last_seq: u64,
    pub started_ms: u64,
}

/// Whether a device is seen, missing within its grace period, or gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// At least one facet is present.
    Present,
    /// No facet is present, but the grace period has not run out.
    Missing,
    /// The last session ended.
    Detached,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Present => "present",
            Presence::Missing => "missing",
            Presence::Detached => "detached",
        }
    }
}

/// Everything the registry knows about one physical device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub device_id: String,
    /// The identity key the id derives from, e.g. `serial:A10KZ3X9`.
    pub identity: String,
    /// Attributes per present facet.
    pub facets: BTreeMap<FacetKey, Attrs>,
    /// The merged attributes, exactly as the journal last recorded them.
    pub attrs: Attrs,
    /// The open session; `None` once detached.
    pub session: Option<Session>,
    /// When the last facet disappeared, while within the grace period.
    pub missing_since_ms: Option<u64>,
    pub first_seen_ms: u64,
    pub last_change_ms: u64,
}

impl DeviceRecord {
    pub fn presence(&self) -> Presence {
        match (&self.session, self.missing_since_ms) {
            (None, _) => Presence::Detached,
            (Some(_), Some(_)) => Presence::Missing,
            (Some(_), None) => Presence::Present,
        }
    }
}

/// One journaled event, before it is wrapped in a wire envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub device_id: String,
    pub session_id: Uuid,
    pub seq: u64,
    pub ts_ms: u64,
    pub kind: EventKind,
}

/// The new state of one device and the events that lead to it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceChange {
    pub record: DeviceRecord,
    pub events: Vec<Event>,
    /// Aliases that now point at this device.
    pub aliases: Vec<String>,
}

/// Everything one input does to the registry; committed in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    pub changes: Vec<DeviceChange>,
    /// A facet loaded at start that a probe has now confirmed.
    pub(crate) confirmed: Option<FacetKey>,
    /// Facets loaded at start that a source did not confirm (reconcile).
    pub(crate) unconfirmed_dropped: Vec<FacetKey>,
    /// A probe's first scan after start has been reconciled.
    pub(crate) reconciled: bool,
}

impl Transition {
    /// Whether the journal has anything to write.
    pub fn is_durable_noop(&self) -> bool {
        self.changes.is_empty()
    }

    /// All events of the transition, in order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.changes.iter().flat_map(|c| c.events.iter())
    }
}
