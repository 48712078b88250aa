//! The daemon side of the serial probe: every [`RESCAN_INTERVAL`] it lists
//! the selected ports, reports ports that went away as absent, and starts a
//! probe (one tokio task around one blocking thread) for every port that is
//! due and not already being probed. Results come back over an internal
//! channel in whatever order the ports finish.
//!
//! Invariants: at most one probe per port in flight (reports carry a probe
//! id, so a late report from before a port vanished and came back is
//! ignored); a port is due `reprobe_interval_secs` after its last result;
//! only an observation that differs from the last one sent for its facet is
//! sent; `Synced` is sent once, after every port of the first round has
//! reported (at once if the first round found none). When the task ends
//! (shutdown, or the registry is gone) running probes are cancelled, so they
//! restore their port and drop their lock before the runtime exits.

use super::{
    answer_attrs, facet, facet_attrs, port::Outcome, present, probe_bounded, Profile, SerialProbe,
    SerialSettings,
};
use crate::probe::ProbeEvent;
use crate::registry::liveness::STATE_ATTR;
use crate::registry::{Identifier, Observation, Source};
use log::{debug, info, warn};
use rae_protocol::{AttrValue, Attrs};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the set of ports is listed again (hotplug, vanished ports).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

struct PortState {
    profile: usize,
    in_flight: Option<u64>,
    next_due: Instant,
    /// The last answer's attributes, kept while the port does not answer.
    kept: Option<Attrs>,
    ids: Vec<Identifier>,
    /// The last observation sent for this facet, `None` when absent.
    sent: Option<Observation>,
}

struct Report {
    path: String,
    id: u64,
    /// `None` for the "thread finished" note after an overdue probe.
    outcome: Option<Outcome>,
    ids: Vec<Identifier>,
    finished: bool,
}

struct Scheduler {
    settings: SerialSettings,
    profiles: Vec<Arc<Profile>>,
    lock_dirs: Arc<[PathBuf]>,
    /// Set when the task ends, so running probes stop, restore and unlock.
    cancel: Arc<AtomicBool>,
    ports: BTreeMap<String, PortState>,
    next_id: u64,
    first_round: Option<BTreeSet<String>>,
    synced: bool,
    last_error: Option<String>,
    done: mpsc::Sender<Report>,
}

pub async fn run(probe: SerialProbe) {
    let SerialProbe {
        settings,
        tx,
        mut shutdown,
    } = probe;
    if *shutdown.borrow() {
        return;
    }
    let (done, mut reports) = mpsc::channel(64);
    let mut s = Scheduler {
        profiles: settings.profiles.iter().cloned().map(Arc::new).collect(),
        lock_dirs: settings.lock_dirs.clone().into(),
        cancel: Arc::new(AtomicBool::new(false)),
        settings,
        ports: BTreeMap::new(),
        next_id: 0,
        first_round: None,
        synced: false,
        last_error: None,
        done,
    };
    let mut ticker = tokio::time::interval(RESCAN_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let events = tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => s.rescan().await,
            Some(report) = reports.recv() => s.report(report),
        };
        for event in events {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Scheduler {
    async fn rescan(&mut self) -> Vec<ProbeEvent> {
        let settings = self.settings.clone();
        let selected =
            match tokio::task::spawn_blocking(move || super::discover::select(&settings)).await {
                Ok(Ok(selected)) => selected,
                Ok(Err(e)) => return self.failed(format!("cannot list serial ports: {e}")),
                Err(e) => return self.failed(format!("serial port discovery failed: {e}")),
            };
        self.last_error = None;
        let mut events = Vec::new();
        self.ports.retain(|path, st| {
            let keep = selected.contains_key(path);
            if !keep {
                info!(tty:% = path; "serial probe {path}: port gone");
                if st.sent.take().is_some() {
                    events.push(ProbeEvent::Observed(Observation::absent(facet(path))));
                }
            }
            keep
        });
        let now = Instant::now();
        let mut due = Vec::new();
        for (path, profile) in selected {
            let st = self.ports.entry(path.clone()).or_insert_with(|| PortState {
                profile,
                in_flight: None,
                next_due: now,
                kept: None,
                ids: Vec::new(),
                sent: None,
            });
            if st.profile != profile {
                (st.profile, st.kept, st.next_due) = (profile, None, now);
            }
            if st.in_flight.is_none() && st.next_due <= now {
                due.push(path);
            }
        }
        for path in &due {
            let id = self.start(path);
            if let Some(st) = self.ports.get_mut(path) {
                st.in_flight = Some(id);
            }
        }
        if self.first_round.is_none() {
            self.first_round = Some(due.into_iter().collect());
        }
        events.extend(self.maybe_synced());
        events
    }

    fn failed(&mut self, message: String) -> Vec<ProbeEvent> {
        if self.last_error.as_ref() == Some(&message) {
            return Vec::new();
        }
        warn!("serial probe: {message}");
        self.last_error = Some(message.clone());
        vec![ProbeEvent::Failed {
            source: Source::Serial,
            message,
        }]
    }

    /// Spawns the probe of one port; returns its id.
    fn start(&mut self, path: &str) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let profile = self.ports.get(path).map_or(0, |st| st.profile);
        let profile = self.profiles[profile].clone();
        let (lock_dirs, done, path) = (self.lock_dirs.clone(), self.done.clone(), path.to_string());
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let (outcome, ids, running) =
                probe_bounded(path.clone(), profile, lock_dirs, cancel).await;
            let finished = running.is_none();
            let report = Report {
                path: path.clone(),
                id,
                outcome: Some(outcome),
                ids,
                finished,
            };
            let _ = done.send(report).await;
            if let Some(thread) = running {
                let _ = thread.await;
                let ids = Vec::new();
                let note = Report {
                    path,
                    id,
                    outcome: None,
                    ids,
                    finished: true,
                };
                let _ = done.send(note).await;
            }
        });
        id
    }

    fn report(&mut self, r: Report) -> Vec<ProbeEvent> {
        let mut events = Vec::new();
        if let (Some(pending), Some(_)) = (&mut self.first_round, &r.outcome) {
            pending.remove(&r.path);
        }
        if let Some(st) = self.ports.get_mut(&r.path) {
            if st.in_flight == Some(r.id) {
                if r.finished {
                    st.in_flight = None;
                }
                if let Some(outcome) = r.outcome {
                    let profile = &self.profiles[st.profile];
                    st.next_due = Instant::now() + profile.reprobe_interval;
                    events.extend(observe(&r.path, profile, outcome, r.ids, st));
                }
            }
        }
        events.extend(self.maybe_synced());
        events
    }

    fn maybe_synced(&mut self) -> Option<ProbeEvent> {
        let done = self.first_round.as_ref().is_some_and(BTreeSet::is_empty);
        if self.synced || !done {
            return None;
        }
        self.synced = true;
        info!(
            "serial probe: first round complete, {} ports",
            self.ports.len()
        );
        Some(ProbeEvent::Synced(Source::Serial))
    }
}

/// Turns one outcome into the event to send, if anything changed.
fn observe(
    path: &str,
    profile: &Profile,
    outcome: Outcome,
    ids: Vec<Identifier>,
    st: &mut PortState,
) -> Option<ProbeEvent> {
    if !ids.is_empty() {
        st.ids = ids;
    }
    match &outcome {
        Outcome::Skipped { reason } => {
            debug!(tty:% = path; "serial probe {path}: skipped: {reason}");
            return None;
        }
        Outcome::NoDevice { reason } => {
            debug!(tty:% = path; "serial probe {path}: not a port now: {reason}");
            st.kept = None;
            let was_present = st.sent.take().is_some();
            return was_present.then(|| ProbeEvent::Observed(Observation::absent(facet(path))));
        }
        Outcome::Answered { baud, attrs } => st.kept = Some(answer_attrs(*baud, attrs)),
        Outcome::Unresponsive { .. } => {}
    }
    let attrs = facet_attrs(path, profile, &outcome, st.kept.as_ref())?;
    let obs = present(path, st.ids.clone(), attrs);
    let state = |o: Option<&Observation>| match o.and_then(|o| o.attrs.get(STATE_ATTR)) {
        Some(AttrValue::Text(s)) => s.clone(),
        _ => "absent".to_string(),
    };
    let (before, after) = (state(st.sent.as_ref()), state(Some(&obs)));
    let detail = match &outcome {
        Outcome::Unresponsive { error } => error.clone(),
        Outcome::Answered { baud, .. } => format!("answered at {baud} baud"),
        _ => String::new(),
    };
    if before != after {
        info!(tty:% = path; "serial probe {path}: {before} -> {after}: {detail}");
    } else {
        debug!(tty:% = path; "serial probe {path}: still {after}: {detail}");
    }
    if st.sent.as_ref() == Some(&obs) {
        return None;
    }
    st.sent = Some(obs.clone());
    Some(ProbeEvent::Observed(obs))
}
