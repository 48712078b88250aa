//! The serial-port probe: finds the ports each `[[serial.profiles]]` entry
//! selects, sends the profile's request and reads the answer, and reports
//! one facet per port (`serial:<port path>`) with the identifiers of
//! [`udev::tty_identifiers`], so it joins the same device record as the
//! udev tty of that node.
//!
//! Facet attributes: `tty.node`, `serial.profile`, `state` (`online` when
//! the answer matched `expect`, `unresponsive` when not); on an answer
//! `serial.baud` (Int), `serial.banner` (the matched line) and one attribute
//! per named capture (`serial.<name>`, or `<name>` if it contains a dot); on
//! no answer `serial.probe_error`. The daemon keeps the attributes of the
//! last answer while a port is unresponsive (last known firmware etc.), so a
//! flapping device only changes `state` and `serial.probe_error`.
//!
//! A port that is locked, or held open by another process with `flock` or
//! `TIOCEXCL`, is skipped (no observation). A node whose open fails with
//! `ENXIO`/`ENODEV`/`EIO` (a `/dev/ttyS*` without a UART, an adapter being
//! unplugged) is not a port: no facet, or `absent` if it had one.
//!
//! Module layout: `profile` (config; `escape` decodes `send`),
//! `discover` (which ports), `lock` (UUCP lock files), `tty`
//! (open/restore one port), `port` (the blocking probe of one port),
//! `task` (the daemon's scheduler).
//!
//! Invariants: serial I/O runs only on blocking threads
//! (`spawn_blocking`), one per port and probe, with a per-port deadline,
//! so a stuck port delays no other; a port whose previous probe still runs
//! is not probed again; a port locked or held open exclusively by someone
//! else is not touched and its facet is left as it was; no port is held
//! open between probes and its settings are restored before it is closed;
//! when the daemon task ends, running probes are cancelled (they still
//! restore and unlock).

mod discover;
mod escape;
mod lock;
mod port;
mod profile;
mod task;
mod tty;

#[cfg(test)]
mod tests;

pub use port::{probe as probe_port, Outcome};
pub use profile::{FlowControl, Parity, Profile, RawProfile, RawSerialConfig, SerialSettings};

use super::udev;
use super::ProbeEvent;
use crate::registry::liveness::STATE_ATTR;
use crate::registry::{FacetKey, Identifier, Observation, Source};
use log::{info, warn};
use rae_protocol::{AttrValue, Attrs};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Extra time a probe gets beyond `timeout × baud rates` (lock, open,
/// configure) before it is reported as hanging.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// The long-running serial probe task.
#[derive(Debug)]
pub struct SerialProbe {
    pub settings: SerialSettings,
    pub tx: mpsc::Sender<ProbeEvent>,
    pub shutdown: watch::Receiver<bool>,
}

impl SerialProbe {
    /// Probes every selected port every `reprobe_interval_secs` until
    /// shutdown; sends `Synced` after the first round has reported.
    pub async fn run(self) {
        task::run(self).await
    }
}

/// One probing pass over all configured ports, for `rae-agent probe`.
/// Ports that are locked, in use, or have no device yield no observation.
pub async fn scan_once(settings: &SerialSettings) -> Vec<Observation> {
    let selected = {
        let s = settings.clone();
        match tokio::task::spawn_blocking(move || discover::select(&s)).await {
            Ok(Ok(selected)) => selected,
            Ok(Err(e)) => {
                warn!("serial probe: cannot list ports: {e}");
                return Vec::new();
            }
            Err(e) => {
                warn!("serial probe: port discovery failed: {e}");
                return Vec::new();
            }
        }
    };
    let lock_dirs: Arc<[PathBuf]> = settings.lock_dirs.clone().into();
    let cancel = Arc::new(AtomicBool::new(false));
    let mut probes = tokio::task::JoinSet::new();
    for (path, i) in selected {
        let profile = Arc::new(settings.profiles[i].clone());
        let (lock_dirs, cancel) = (lock_dirs.clone(), cancel.clone());
        probes.spawn(async move {
            let (outcome, ids, _still_running) =
                probe_bounded(path.clone(), profile.clone(), lock_dirs, cancel).await;
            (path, profile, outcome, ids)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = probes.join_next().await {
        let Ok((path, profile, outcome, ids)) = joined else {
            continue;
        };
        match &outcome {
            Outcome::Unresponsive { error } => {
                info!(tty:% = path; "serial probe {path}: unresponsive: {error}")
            }
            Outcome::Skipped { reason } => {
                info!(tty:% = path; "serial probe {path}: skipped: {reason}")
            }
            _ => {}
        }
        if let Some(attrs) = facet_attrs(&path, &profile, &outcome, None) {
            out.push(present(&path, ids, attrs));
        }
    }
    out.sort_by(|a, b| a.facet.cmp(&b.facet));
    out
}

/// How long one probe of `profile` may take.
pub fn deadline_of(profile: &Profile) -> Duration {
    let bauds = u32::try_from(profile.baud_rates.len()).unwrap_or(u32::MAX);
    profile.timeout.saturating_mul(bauds) + DEADLINE_MARGIN
}

/// Runs one blocking probe with the profile's deadline. Returns its
/// outcome and the port's identifiers (empty if unknown); past the
/// deadline, an `Unresponsive` outcome and the handle of the probe thread,
/// which finishes on its own.
pub(crate) async fn probe_bounded(
    path: String,
    profile: Arc<Profile>,
    lock_dirs: Arc<[PathBuf]>,
    cancel: Arc<AtomicBool>,
) -> (Outcome, Vec<Identifier>, Option<JoinHandle<Probed>>) {
    let deadline = deadline_of(&profile);
    let p = path.clone();
    let mut handle = tokio::task::spawn_blocking(move || {
        let outcome = port::probe(&p, &profile, &lock_dirs, &cancel);
        let ids = match outcome {
            Outcome::Answered { .. } | Outcome::Unresponsive { .. } => udev::tty_identifiers(&p),
            _ => Vec::new(),
        };
        (outcome, ids)
    });
    match tokio::time::timeout(deadline, &mut handle).await {
        Ok(Ok((outcome, ids))) => (outcome, ids, None),
        Ok(Err(e)) => {
            warn!(tty:% = path; "serial probe {path}: probe thread failed: {e}");
            let error = format!("probe failed: {e}");
            (Outcome::Unresponsive { error }, Vec::new(), None)
        }
        Err(_) => {
            let error = format!("probe did not finish within {} ms", deadline.as_millis());
            warn!(tty:% = path; "serial probe {path}: {error}");
            (Outcome::Unresponsive { error }, Vec::new(), Some(handle))
        }
    }
}

/// What a probe thread returns.
pub(crate) type Probed = (Outcome, Vec<Identifier>);

/// The attributes of an answer that are kept while the port is unresponsive.
fn answer_attrs(baud: u32, attrs: &Attrs) -> Attrs {
    let mut a = attrs.clone();
    a.insert("serial.baud".into(), AttrValue::Int(i64::from(baud)));
    a
}

/// The facet's attributes for an outcome, or `None` if it asserts nothing
/// (skipped, no device). `kept`: the last answer's attributes.
fn facet_attrs(
    path: &str,
    profile: &Profile,
    outcome: &Outcome,
    kept: Option<&Attrs>,
) -> Option<Attrs> {
    let (mut attrs, state) = match outcome {
        Outcome::Answered { baud, attrs } => (answer_attrs(*baud, attrs), "online"),
        Outcome::Unresponsive { error } => {
            let mut a = kept.cloned().unwrap_or_default();
            a.insert("serial.probe_error".into(), AttrValue::Text(error.clone()));
            (a, "unresponsive")
        }
        Outcome::Skipped { .. } | Outcome::NoDevice { .. } => return None,
    };
    attrs.insert(STATE_ATTR.into(), AttrValue::from(state));
    attrs.insert("tty.node".into(), AttrValue::from(path));
    attrs.insert(
        "serial.profile".into(),
        AttrValue::from(profile.name.as_str()),
    );
    Some(attrs)
}

fn facet(path: &str) -> FacetKey {
    FacetKey::new(Source::Serial, path)
}

fn present(path: &str, ids: Vec<Identifier>, attrs: Attrs) -> Observation {
    let ids = if ids.is_empty() {
        vec![Identifier::Node(path.to_string())]
    } else {
        ids
    };
    Observation::present(facet(path), ids, attrs)
}
