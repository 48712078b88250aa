//! The registry task: owns the [`Registry`] and the [`Journal`] write
//! handle. For each probe event it computes a transition, commits it, and
//! only then applies it, so memory never runs ahead of disk.
//!
//! When the journal fails (full disk, read-only, I/O error) it keeps the
//! pending input, reports the error in `status.json`, and retries with a
//! capped backoff; it stops reading new input meanwhile, so the bounded
//! channel pushes back on the probes. It never exits on a journal error.

use super::clock::Clock;
use crate::journal::backlog::{BacklogEstimate, Size};
use crate::journal::Journal;
use crate::probe::ProbeEvent;
use crate::registry::{Registry, Source, Transition};
use crate::status::{self, ErrorNote, RuntimeStatus, UplinkStatus};
use log::{debug, error, info, warn};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// How often the daemon records a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How often retention runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What other tasks ask of the registry task.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryCommand {
    /// Journal a checkpoint of every present session, or of one.
    Checkpoint { session: Option<uuid::Uuid> },
}

/// How often the backlog bound is checked.
pub const COMPACTION_INTERVAL: Duration = Duration::from_secs(10);

/// Retention limits for published events and the unpublished backlog bound.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age_ms: u64,
    pub max_events: u64,
    pub backlog: crate::journal::compaction::Bounds,
}

/// See the module docs.
#[derive(Debug)]
pub struct RegistryTask {
    pub registry: Registry,
    pub journal: Journal,
    pub rx: mpsc::Receiver<ProbeEvent>,
    pub shutdown: watch::Receiver<bool>,
    pub status_path: PathBuf,
    pub status: RuntimeStatus,
    pub retention: Retention,
    pub clock: Clock,
    pub commands: mpsc::Receiver<RegistryCommand>,
    /// Signalled after every commit that added events (wakes the uplink).
    pub journal_changed: Arc<Notify>,
    /// The uplink's status, copied into `status.json`.
    pub uplink_status: Option<Arc<Mutex<UplinkStatus>>>,
    /// Set once the startup backlog check (count, and compaction if over
    /// the bound) is done; the uplink starts draining only then.
    pub backlog_checked: watch::Sender<bool>,
    /// Probes the config disables: what the journal holds of their devices
    /// is settled at start, since no scan of theirs will ever confirm it.
    pub disabled_probes: Vec<Source>,
}

impl RegistryTask {
    pub async fn run(mut self) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        let mut retention = tokio::time::interval(RETENTION_INTERVAL);
        retention.reset();
        let mut compaction = tokio::time::interval(COMPACTION_INTERVAL);
        let mut backlog = BacklogEstimate::unknown();
        self.settle_disabled_probes().await;
        // Before the uplink drains: a restart with an over-bound backlog
        // compacts first, and the one full read of the backlog does not
        // overlap the drain (which, for a 1M backlog, cost ~3 MiB of peak
        // RSS in the uplink's page cache; docs/BENCHMARKS.md).
        self.compact(&mut backlog).await;
        compaction.reset();
        let _ = self.backlog_checked.send(true);
        loop {
            let expiry = self
                .registry
                .next_deadline_ms()
                .map(|ms| self.clock.instant_at(ms));
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                ev = self.rx.recv() => match ev {
                    Some(ev) => self.handle(ev).await,
                    None => break,
                },
                Some(cmd) = self.commands.recv() => match cmd {
                    RegistryCommand::Checkpoint { session } => {
                        self.step(|r, now| r.checkpoint(now, session)).await;
                    }
                },
                _ = sleep_until(expiry), if expiry.is_some() => {
                    self.step(|r, now| r.expire(now)).await;
                }
                _ = heartbeat.tick() => self.heartbeat(),
                _ = retention.tick() => self.retention(),
                _ = compaction.tick() => self.compact(&mut backlog).await,
            }
        }
        // Drain what the probes already sent before they stopped.
        while let Ok(ev) = self.rx.try_recv() {
            self.handle(ev).await;
        }
        self.status.running = false;
        self.heartbeat();
        info!("registry task stopped");
    }

    async fn handle(&mut self, ev: ProbeEvent) {
        match ev {
            ProbeEvent::Observed(obs) => {
                self.probe_healthy(obs.facet.source);
                self.step(|r, now| r.observe(&obs, now, Uuid::now_v7()))
                    .await;
            }
            ProbeEvent::Recovered(source) => self.probe_healthy(source),
            ProbeEvent::Synced(source) => {
                info!("{source} probe finished its first scan");
                self.step(|r, now| r.reconcile(source, now)).await;
            }
            ProbeEvent::Failed { source, message } => {
                let note = self.note(message);
                self.status
                    .probe_errors
                    .insert(source.to_string(), note.clone());
                self.status.last_error = Some(note);
                self.write_status();
            }
        }
    }

    /// Facets of disabled probes go at start. With every probe disabled
    /// nothing will ever scan, so the start counts as reconciled (grace
    /// periods and devices missing at the last stop are settled now).
    async fn settle_disabled_probes(&mut self) {
        let all = self.disabled_probes.len() == Source::ALL.len();
        for source in std::mem::take(&mut self.disabled_probes) {
            if all {
                self.step(|r, now| r.reconcile(source, now)).await;
            } else {
                self.step(|r, now| r.forget_disabled(source, now)).await;
            }
        }
    }

    /// Computes, commits (retrying until it succeeds or shutdown), applies.
    async fn step(&mut self, compute: impl Fn(&Registry, u64) -> Transition) {
        let t = compute(&self.registry, self.clock.now_ms());
        if t.is_durable_noop() {
            self.registry.apply(t);
            return;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.journal.commit(&t, self.clock.now_ms()) {
                Ok(()) => {
                    self.journal_changed.notify_one();
                    for ev in t.events() {
                        log::log!(
                            crate::logging::event_level(ev.kind.name()),
                            device_id = ev.device_id.as_str(), session_id:% = ev.session_id;
                            "journaled {} seq {} of device {} (session {})",
                            ev.kind.name(),
                            ev.seq,
                            ev.device_id,
                            ev.session_id
                        );
                    }
                    self.registry.apply(t);
                    if self.status.journal_error.take().is_some() {
                        info!("journal writable again");
                        self.status.pending_observations = 0;
                        self.write_status();
                    }
                    return;
                }
                Err(e) => {
                    let first = self.status.journal_error.is_none();
                    let msg = format!(
                        "cannot write journal {}: {e}",
                        self.journal.path().display()
                    );
                    if first {
                        error!("{msg}; keeping the change in memory and retrying");
                    } else {
                        warn!("{msg}; retrying in {backoff:?}");
                    }
                    let note = self.note(msg);
                    self.status.journal_error = Some(note.clone());
                    self.status.last_error = Some(note);
                    self.status.pending_observations = 1 + self.rx.len() as u64;
                    self.write_status();
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => {
                    error!("shutting down with a change not journaled (the journal kept failing); \
                            it will be observed again at the next start");
                    return;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// A probe that reports again has recovered from its last failure.
    fn probe_healthy(&mut self, source: crate::registry::Source) {
        if self.status.probe_errors.remove(source.as_str()).is_some() {
            info!("{source} probe recovered");
            self.write_status();
        }
    }

    fn note(&self, message: String) -> ErrorNote {
        ErrorNote {
            at_ms: self.clock.now_ms(),
            message,
        }
    }

    fn heartbeat(&mut self) {
        let now = self.clock.now_ms();
        self.status.heartbeat_ms = now;
        if let Err(e) = self.journal.heartbeat(now) {
            debug!("heartbeat not written to journal: {e}");
        }
        self.write_status();
    }

    fn retention(&mut self) {
        let r = self.retention;
        match self
            .journal
            .apply_retention(self.clock.now_ms(), r.max_age_ms, r.max_events)
        {
            Ok(0) => {}
            Ok(n) => info!("retention deleted {n} published events"),
            Err(e) => warn!("retention failed: {e}"),
        }
    }

    /// Events and bytes the broker acknowledged since start.
    fn published(&self) -> Size {
        self.uplink_status
            .as_ref()
            .and_then(|u| {
                u.lock().ok().map(|u| Size {
                    events: u.published,
                    bytes: u.published_bytes,
                })
            })
            .unwrap_or_default()
    }

    /// Keeps the unpublished backlog within its bound; sessions that lost
    /// deltas get a checkpoint right away. Counts the backlog exactly only
    /// when the running estimate says it may be over (or is stale).
    async fn compact(&mut self, backlog: &mut BacklogEstimate) {
        let now = self.clock.now_ms();
        let (journaled, published) = (self.journal.journaled(), self.published());
        if !backlog.needs_count(self.retention.backlog, now, journaled, published) {
            return;
        }
        let report = match self.journal.compact(self.retention.backlog) {
            Ok((report, size)) => {
                backlog.counted(size, now, journaled, published);
                report
            }
            Err(e) => {
                warn!("backlog compaction failed: {e}");
                return;
            }
        };
        if report == Default::default() {
            return;
        }
        self.status.compactions += 1;
        info!(
            "backlog compacted: {} covered deltas removed, {} events folded into checkpoints",
            report.covered, report.folded
        );
        if report.dropped > 0 {
            self.status.dropped_events += report.dropped as u64;
            let msg = format!(
                "backlog over its bound after compaction: dropped {} oldest deltas of {} sessions; checkpoints follow",
                report.dropped,
                report.needs_checkpoint.len()
            );
            warn!("{msg}");
            self.status.last_error = Some(self.note(msg));
        }
        for session in &report.needs_checkpoint {
            if let Ok(id) = Uuid::parse_str(session) {
                self.step(|r, now| r.checkpoint(now, Some(id))).await;
            }
        }
        self.write_status();
    }

    fn write_status(&mut self) {
        if let Some(up) = &self.uplink_status {
            if let Ok(u) = up.lock() {
                self.status.uplink = Some(u.clone());
            }
        }
        if let Err(e) = status::write(&self.status_path, &self.status) {
            debug!("cannot write {}: {e}", self.status_path.display());
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
