//! The registry core: a pure state machine from probe observations to
//! journaled events. No I/O, no clock, no tokio: time comes in as `now_ms`
//! and fresh session ids are handed in by the caller.
//!
//! Invariants:
//! - `seq` is gapless per session, starting at 1 with `attached`.
//! - Only real attribute changes produce `changed` events.
//! - A device whose facets all vanish is `missing`; if one comes back within
//!   `detach_grace_ms` it keeps its session (a `changed` that bumps
//!   `session.reconnects`), otherwise [`Registry::expire`] detaches it.
//! - Every method that reacts to input returns a [`Transition`] and leaves
//!   `self` alone; [`Registry::apply`] is called only after the journal has
//!   committed that transition.

pub mod diff;
pub mod identity;
pub mod liveness;
pub mod observation;
pub mod record;

#[cfg(test)]
mod tests;

pub use identity::IdentityRules;
pub use observation::{FacetKey, Identifier, Observation, Presence, Source};
pub use record::{DeviceChange, DeviceRecord, Event, Session, Transition};

use rae_protocol::{AttrValue, Attrs, EventKind, FIRST_SEQ};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Attribute counting how often a device re-enumerated within its grace period.
pub const RECONNECTS_ATTR: &str = "session.reconnects";
/// Detach reason when the grace period ran out.
pub const REASON_UNPLUGGED: &str = "unplugged";
/// Detach reason for a device that vanished while the agent was down.
pub const REASON_MISSING_AT_START: &str = "missing-at-start";

/// Tunables of the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub rules: IdentityRules,
    /// How long a vanished device keeps its session (default 5 s).
    pub detach_grace_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            rules: IdentityRules::default(),
            detach_grace_ms: 5_000,
        }
    }
}

/// The durable state the registry is rebuilt from at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub devices: Vec<DeviceRecord>,
    pub aliases: Vec<(String, String)>,
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    devices: BTreeMap<String, DeviceRecord>,
    aliases: BTreeMap<String, String>,
    facet_owner: BTreeMap<FacetKey, String>,
    /// Facets loaded at start that no probe has confirmed yet.
    unconfirmed: BTreeSet<FacetKey>,
    /// Loaded from a journal and no probe has reconciled yet: grace periods
    /// that ran out while the agent was down wait for the first scan, so a
    /// device plugged back in meanwhile keeps its session.
    awaiting_reconcile: bool,
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Registry::from_snapshot(config, Snapshot::default())
    }

    /// A registry rebuilt from the journal. Every facet of a device with an
    /// open session is unconfirmed until its probe sees it again or
    /// [`Registry::reconcile`] drops it.
    pub fn from_snapshot(config: RegistryConfig, snapshot: Snapshot) -> Self {
        let mut reg = Registry {
            config,
            devices: BTreeMap::new(),
            aliases: snapshot.aliases.into_iter().collect(),
            facet_owner: BTreeMap::new(),
            unconfirmed: BTreeSet::new(),
            awaiting_reconcile: !snapshot.devices.is_empty(),
        };
        for rec in snapshot.devices {
            for facet in rec.facets.keys() {
                reg.facet_owner.insert(facet.clone(), rec.device_id.clone());
                if rec.session.is_some() {
                    reg.unconfirmed.insert(facet.clone());
                }
            }
            reg.devices.insert(rec.device_id.clone(), rec);
        }
        reg
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// All device records, present or not, ordered by id.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceRecord> {
        self.devices.values()
    }

    pub fn device(&self, device_id: &str) -> Option<&DeviceRecord> {
        self.devices.get(device_id)
    }

    /// The device an alias (e.g. `serial:ABC`, `node:/dev/ttyUSB0`) points at.
    pub fn resolve_alias(&self, alias: &str) -> Option<&str> {
        self.aliases.get(alias).map(String::as_str)
    }

    /// The earliest time at which [`Registry::expire`] has work to do.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.awaiting_reconcile {
            return None;
        }
        self.devices
            .values()
            .filter(|r| r.session.is_some())
            .filter_map(|r| r.missing_since_ms)
            .map(|t| t.saturating_add(self.config.detach_grace_ms))
            .min()
    }

    /// What an observation does. `fresh_session` is used only if a session opens.
    pub fn observe(&self, obs: &Observation, now_ms: u64, fresh_session: Uuid) -> Transition {
        let mut t = Transition {
            confirmed: self
                .unconfirmed
                .contains(&obs.facet)
                .then(|| obs.facet.clone()),
            ..Transition::default()
        };
        match obs.presence {
            Presence::Absent => {
                if let Some(change) = self.facet_gone(&obs.facet, now_ms, None) {
                    t.changes.push(change);
                }
            }
            Presence::Present => {
                let (device_id, identity) = self.resolve(obs);
                if let Some(old) = self.facet_owner.get(&obs.facet) {
                    if *old != device_id {
                        t.changes.extend(self.facet_gone(&obs.facet, now_ms, None));
                    }
                }
                if let Some(change) =
                    self.facet_seen(obs, device_id, identity, now_ms, fresh_session)
                {
                    t.changes.push(change);
                }
            }
        }
        t
    }

    /// Detaches every device whose grace period has run out by `now_ms`.
    pub fn expire(&self, now_ms: u64) -> Transition {
        let mut t = Transition::default();
        if self.awaiting_reconcile {
            return t;
        }
        for rec in self.devices.values() {
            let due = rec
                .missing_since_ms
                .is_some_and(|t0| t0.saturating_add(self.config.detach_grace_ms) <= now_ms);
            if due && rec.session.is_some() {
                t.changes
                    .push(detached_change(rec, now_ms, REASON_UNPLUGGED));
            }
        }
        t
    }

    /// Called once `source` has finished its first full scan after start:
    /// facets loaded from the journal that it did not see are gone, and a
    /// device left with no facet is detached as `missing-at-start` at once.
    pub fn reconcile(&self, source: Source, now_ms: u64) -> Transition {
        let mut t = self.drop_unconfirmed(source, now_ms);
        t.reconciled = true;
        // Devices that were already missing when the agent stopped.
        for rec in self.devices.values() {
            let already = t
                .changes
                .iter()
                .any(|c| c.record.device_id == rec.device_id);
            if !already && rec.session.is_some() && rec.facets.is_empty() {
                t.changes
                    .push(detached_change(rec, now_ms, REASON_MISSING_AT_START));
            }
        }
        t
    }

    /// At start, for a probe the config disables: its facets loaded from
    /// the journal can never be confirmed, so they go now, and a device left
    /// with no facet is detached as `missing-at-start`. Unlike
    /// [`Registry::reconcile`] this is no first scan: grace periods that ran
    /// out while the agent was down keep waiting for an enabled probe's.
    pub fn forget_disabled(&self, source: Source, now_ms: u64) -> Transition {
        self.drop_unconfirmed(source, now_ms)
    }

    fn drop_unconfirmed(&self, source: Source, now_ms: u64) -> Transition {
        let mut t = Transition::default();
        let mut per_device: BTreeMap<&str, Vec<&FacetKey>> = BTreeMap::new();
        for facet in self.unconfirmed.iter().filter(|f| f.source == source) {
            if let Some(owner) = self.facet_owner.get(facet) {
                per_device.entry(owner.as_str()).or_default().push(facet);
            }
            t.unconfirmed_dropped.push(facet.clone());
        }
        for (device_id, facets) in per_device {
            let Some(rec) = self.devices.get(device_id) else {
                continue;
            };
            let mut next = rec.clone();
            for f in facets {
                next.facets.remove(f);
            }
            if let Some(change) = self.settle(rec, next, now_ms, Some(REASON_MISSING_AT_START)) {
                t.changes.push(change);
            }
        }
        t
    }

    /// A `checkpoint` (the full record, taking the next `seq`) for every
    /// present device with an open session, or only for `session`.
    pub fn checkpoint(&self, now_ms: u64, session: Option<Uuid>) -> Transition {
        let mut t = Transition::default();
        for rec in self.devices.values() {
            let Some(s) = &rec.session else { continue };
            if rec.missing_since_ms.is_some() || session.is_some_and(|id| id != s.id) {
                continue;
            }
            let mut next = rec.clone();
            let mut events = Vec::new();
            let attrs = next.attrs.clone();
            push_event(
                &mut next,
                &mut events,
                now_ms,
                EventKind::Checkpoint { attrs },
            );
            t.changes.push(DeviceChange {
                record: next,
                events,
                aliases: Vec::new(),
            });
        }
        t
    }

    /// Makes a committed transition the current state.
    pub fn apply(&mut self, t: Transition) {
        if t.reconciled {
            self.awaiting_reconcile = false;
        }
        if let Some(f) = t.confirmed {
            self.unconfirmed.remove(&f);
        }
        for f in t.unconfirmed_dropped {
            self.unconfirmed.remove(&f);
        }
        for change in t.changes {
            let id = change.record.device_id.clone();
            self.facet_owner.retain(|_, owner| *owner != id);
            for facet in change.record.facets.keys() {
                self.facet_owner.insert(facet.clone(), id.clone());
            }
            for alias in change.aliases {
                self.aliases.insert(alias, id.clone());
            }
            self.devices.insert(id, change.record);
        }
    }

    /// The device id and identity key an observation belongs to.
    fn resolve(&self, obs: &Observation) -> (String, String) {
        if let Some(key) = self.config.rules.identity_key(&obs.identifiers) {
            return (identity::device_id_for(&key), key);
        }
        for alias in identity::node_aliases(&obs.identifiers) {
            if let Some(id) = self.aliases.get(&alias) {
                if let Some(rec) = self.devices.get(id) {
                    return (id.clone(), rec.identity.clone());
                }
            }
        }
        let key = identity::node_aliases(&obs.identifiers)
            .next()
            .unwrap_or_else(|| format!("facet:{}", obs.facet));
        (identity::device_id_for(&key), key)
    }

    fn facet_seen(
        &self,
        obs: &Observation,
        device_id: String,
        identity: String,
        now_ms: u64,
        fresh_session: Uuid,
    ) -> Option<DeviceChange> {
        let current = self.devices.get(&device_id);
        let mut next = current.cloned().unwrap_or_else(|| DeviceRecord {
            device_id: device_id.clone(),
            identity,
            facets: BTreeMap::new(),
            attrs: Attrs::new(),
            session: None,
            missing_since_ms: None,
            first_seen_ms: now_ms,
            last_change_ms: now_ms,
        });
        next.facets.insert(obs.facet.clone(), obs.attrs.clone());
        let mut events = Vec::new();
        if next.session.is_none() {
            next.attrs = diff::merge_facets(&next.facets);
            next.missing_since_ms = None;
            next.session = Some(Session {
                id: fresh_session,
                last_seq: FIRST_SEQ - 1,
                started_ms: now_ms,
            });
            let attrs = next.attrs.clone();
            push_event(
                &mut next,
                &mut events,
                now_ms,
                EventKind::Attached { attrs },
            );
        } else {
            let mut reconnects = reconnects(&next.attrs);
            if next.missing_since_ms.take().is_some() {
                reconnects += 1;
            }
            let merged = with_reconnects(diff::merge_facets(&next.facets), reconnects);
            if let Some((set, removed)) = diff::diff(&next.attrs, &merged) {
                next.attrs = merged;
                push_event(
                    &mut next,
                    &mut events,
                    now_ms,
                    EventKind::Changed { set, removed },
                );
            }
        }
        let aliases: Vec<String> = identity::alias_strings(&obs.identifiers)
            .into_iter()
            .filter(|a| self.aliases.get(a) != Some(&device_id))
            .collect();
        let unchanged = current == Some(&next) && aliases.is_empty();
        (!unchanged).then_some(DeviceChange {
            record: next,
            events,
            aliases,
        })
    }

    /// The change when a facet disappears from its device.
    fn facet_gone(
        &self,
        facet: &FacetKey,
        now_ms: u64,
        detach_reason: Option<&str>,
    ) -> Option<DeviceChange> {
        let rec = self.devices.get(self.facet_owner.get(facet)?)?;
        let mut next = rec.clone();
        next.facets.remove(facet);
        self.settle(rec, next, now_ms, detach_reason)
    }

    /// Turns a record whose facets shrank into a change: a `changed` event if
    /// facets remain, else `missing` (or an immediate detach with a reason,
    /// or when there is no grace period).
    fn settle(
        &self,
        current: &DeviceRecord,
        mut next: DeviceRecord,
        now_ms: u64,
        detach_reason: Option<&str>,
    ) -> Option<DeviceChange> {
        let mut events = Vec::new();
        if next.session.is_some() {
            if !next.facets.is_empty() {
                let merged =
                    with_reconnects(diff::merge_facets(&next.facets), reconnects(&next.attrs));
                if let Some((set, removed)) = diff::diff(&next.attrs, &merged) {
                    next.attrs = merged;
                    push_event(
                        &mut next,
                        &mut events,
                        now_ms,
                        EventKind::Changed { set, removed },
                    );
                }
            } else if let Some(reason) = detach_reason {
                detach(&mut next, &mut events, now_ms, reason);
            } else if self.config.detach_grace_ms == 0 {
                detach(&mut next, &mut events, now_ms, REASON_UNPLUGGED);
            } else if next.missing_since_ms.is_none() {
                next.missing_since_ms = Some(now_ms);
            }
        }
        (next != *current).then_some(DeviceChange {
            record: next,
            events,
            aliases: Vec::new(),
        })
    }
}

fn reconnects(attrs: &Attrs) -> i64 {
    match attrs.get(RECONNECTS_ATTR) {
        Some(AttrValue::Int(n)) => *n,
        _ => 0,
    }
}

fn with_reconnects(mut attrs: Attrs, n: i64) -> Attrs {
    if n > 0 {
        attrs.insert(RECONNECTS_ATTR.to_string(), AttrValue::Int(n));
    }
    attrs
}

fn push_event(rec: &mut DeviceRecord, events: &mut Vec<Event>, now_ms: u64, kind: EventKind) {
    let Some(session) = rec.session.as_mut() else {
        return;
    };
    session.last_seq += 1;
    rec.last_change_ms = now_ms;
    events.push(Event {
        device_id: rec.device_id.clone(),
        session_id: session.id,
        seq: session.last_seq,
        ts_ms: now_ms,
        kind,
    });
}

/// The change that ends a device's session now.
fn detached_change(rec: &DeviceRecord, now_ms: u64, reason: &str) -> DeviceChange {
    let mut next = rec.clone();
    let mut events = Vec::new();
    detach(&mut next, &mut events, now_ms, reason);
    DeviceChange {
        record: next,
        events,
        aliases: Vec::new(),
    }
}

fn detach(rec: &mut DeviceRecord, events: &mut Vec<Event>, now_ms: u64, reason: &str) {
    push_event(
        rec,
        events,
        now_ms,
        EventKind::Detached {
            reason: reason.to_string(),
        },
    );
    rec.session = None;
    rec.missing_since_ms = None;
    rec.facets.clear();
}
