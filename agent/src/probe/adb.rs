//! The ADB probe: Android devices as the adb server sees them, through its
//! documented host protocol (AOSP `OVERVIEW.TXT`, `SERVICES.TXT`).
//!
//! [`AdbProbe`] keeps one `host:track-devices-l` connection open; the server
//! sends the full device list at once and again on every change, and
//! [`device::DeviceTable`] turns each list into observations (facet
//! `adb:<serial>`). A device entering state `device` gets its configured
//! properties read once over a separate connection (`host:transport:<serial>`,
//! then `shell:getprop`); a failure there becomes `android.probe_error`.
//!
//! Invariants:
//! - A lost or bad tracking connection (server gone, malformed or oversized
//!   frame, timeout) ends that connection only: every adb facet is reported
//!   absent, and the probe reconnects with capped, jittered exponential
//!   backoff (0.5 s doubling up to `reconnect_max_backoff_secs`), reset once
//!   a connection delivers a device list. It never busy-loops or panics.
//! - `Synced(Adb)` is sent exactly once: after the first device list, or
//!   after the first attempt fails (an absent server has no devices).
//! - `Failed` is sent once per outage (from the first failure until a
//!   connection delivers a list again), not on every retry.
//!
//! Modules: [`protocol`] (framing) and [`listing`] (text parsing) are pure;
//! [`device`] maps and diffs; [`client`] does the socket I/O; [`config`]
//! is `[adb]`.

mod backoff;
pub mod client;
pub mod config;
pub mod device;
pub mod listing;
pub mod protocol;

pub use config::{AdbSettings, RawAdbConfig};

use super::ProbeEvent;
use crate::registry::{Observation, Source};
use backoff::Backoff;
use client::{AdbError, Connection};
use device::{DeviceTable, Fetch};
use log::{debug, info, warn};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

/// The streaming device-list service.
pub const TRACK_SERVICE: &str = "host:track-devices-l";
/// First reconnect delay (before jitter).
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);

/// The long-running ADB probe task.
#[derive(Debug)]
pub struct AdbProbe {
    pub settings: AdbSettings,
    pub tx: mpsc::Sender<ProbeEvent>,
    pub shutdown: watch::Receiver<bool>,
}

impl AdbProbe {
    /// Tracks devices, reconnecting as needed, until shutdown (or until the
    /// registry's channel closes).
    pub async fn run(self) {
        let AdbProbe {
            settings,
            tx,
            mut shutdown,
        } = self;
        if !settings.enabled() {
            return;
        }
        let mut t = Tracking {
            backoff: Backoff::new(INITIAL_BACKOFF, settings.reconnect_max_backoff),
            settings: Arc::new(settings),
            tx,
            table: DeviceTable::default(),
            synced: false,
            outage_reported: false,
            healthy: false,
        };
        while !*shutdown.borrow() {
            let delay = tokio::select! {
                lost = t.session_then_recover() => match lost {
                    Some(delay) => delay,
                    None => return,
                },
                _ = shutdown.changed() => return,
            };
            tokio::select! {
                _ = sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The registry's channel is closed; the probe has nobody to tell.
struct Closed;

/// The state that outlives one tracking connection.
struct Tracking {
    settings: Arc<AdbSettings>,
    tx: mpsc::Sender<ProbeEvent>,
    table: DeviceTable,
    synced: bool,
    outage_reported: bool,
    /// The current connection has delivered a device list.
    healthy: bool,
    backoff: Backoff,
}

impl Tracking {
    async fn send(&self, event: ProbeEvent) -> Result<(), Closed> {
        self.tx.send(event).await.map_err(|_| Closed)
    }

    /// One connection, then the reports of its loss; the delay before the
    /// next attempt, `None` if the registry is gone.
    async fn session_then_recover(&mut self) -> Option<Duration> {
        self.healthy = false;
        let err = self.session().await.ok()?;
        self.recover(err).await.ok()
    }

    /// Tracks over one connection until it fails (`Ok(error)`).
    async fn session(&mut self) -> Result<AdbError, Closed> {
        let mut conn = match Connection::open(&self.settings).await {
            Ok(conn) => conn,
            Err(e) => return Ok(e),
        };
        if let Err(e) = conn.request(TRACK_SERVICE).await {
            return Ok(e);
        }
        let mut tracker = conn.into_tracker();
        let mut fetches = JoinSet::new();
        loop {
            loop {
                match tracker.next_frame() {
                    Err(e) => return Ok(e),
                    Ok(None) => break,
                    Ok(Some(list)) => self.on_list(&list, &mut fetches).await?,
                }
            }
            let deadline = tracker.deadline();
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                filled = tracker.fill() => {
                    if let Err(e) = filled {
                        return Ok(e);
                    }
                }
                Some(done) = fetches.join_next(), if !fetches.is_empty() => match done {
                    Ok((fetch, result)) => {
                        let props = &self.settings.properties;
                        if let Some(obs) = self.table.apply_props(&fetch, result, props) {
                            self.send(ProbeEvent::Observed(obs)).await?;
                        }
                    }
                    Err(e) => warn!("adb probe: a property fetch ended abnormally: {e}"),
                },
                _ = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    return Ok(tracker.timed_out());
                }
            }
        }
    }

    async fn on_list(
        &mut self,
        text: &str,
        fetches: &mut JoinSet<(Fetch, FetchResult)>,
    ) -> Result<(), Closed> {
        let (observations, due) = self.table.update(listing::parse_device_list(text));
        for obs in observations {
            self.send(ProbeEvent::Observed(obs)).await?;
        }
        if !self.healthy {
            self.healthy = true;
            self.backoff.reset();
            if std::mem::take(&mut self.outage_reported) {
                self.send(ProbeEvent::Recovered(Source::Adb)).await?;
            }
            info!(
                "adb probe: tracking {} adb device(s) on {}",
                self.table.len(),
                self.settings.server
            );
            if !self.synced {
                self.synced = true;
                self.send(ProbeEvent::Synced(Source::Adb)).await?;
            }
        }
        if !self.settings.properties.is_empty() {
            for f in due {
                fetches.spawn(fetch_props(self.settings.clone(), f));
            }
        }
        Ok(())
    }

    /// Reports a lost connection; returns the delay before the next attempt.
    async fn recover(&mut self, err: AdbError) -> Result<Duration, Closed> {
        for obs in self.table.clear() {
            self.send(ProbeEvent::Observed(obs)).await?;
        }
        let message = err.to_string();
        let delay = self.backoff.next_delay();
        if self.outage_reported {
            debug!("adb probe: {message}; retrying in {delay:?}");
        } else {
            warn!("adb probe: {message}; retrying in {delay:?} (further failures logged at debug)");
            self.outage_reported = true;
            self.send(ProbeEvent::Failed {
                source: Source::Adb,
                message,
            })
            .await?;
        }
        if !self.synced {
            self.synced = true;
            self.send(ProbeEvent::Synced(Source::Adb)).await?;
        }
        Ok(delay)
    }
}

/// The configured properties' values, or a message for `android.probe_error`.
type FetchResult = Result<BTreeMap<String, String>, String>;

/// At most this many getprop connections are open at once, so a burst of
/// devices does not overflow the adb server's listen queue (a dropped SYN
/// costs a 1 s TCP retry).
static FETCH_LIMIT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

async fn fetch_props(settings: Arc<AdbSettings>, fetch: Fetch) -> (Fetch, FetchResult) {
    let _permit = FETCH_LIMIT.acquire().await.ok();
    let result = client::getprop(&settings, &fetch.serial)
        .await
        .map_err(|e| format!("getprop failed: {e}"));
    if let Err(message) = &result {
        warn!(adb_serial = fetch.serial.as_str(); "adb probe: {}: {message}", fetch.serial);
    }
    (fetch, result)
}

/// One probing pass, for `rae-agent probe`: `host:devices-l`, then the
/// properties of every device in state `device`. An unreachable server
/// gives no devices (and a warning).
pub async fn scan_once(settings: &AdbSettings) -> Vec<Observation> {
    if !settings.enabled() {
        return Vec::new();
    }
    let list = match client::list_devices(settings).await {
        Ok(list) => list,
        Err(e) => {
            warn!("adb probe: {e}; reporting no adb devices");
            return Vec::new();
        }
    };
    let mut table = DeviceTable::default();
    let (_, due) = table.update(list);
    if !settings.properties.is_empty() {
        let shared = Arc::new(settings.clone());
        let mut fetches = JoinSet::new();
        for f in due {
            fetches.spawn(fetch_props(shared.clone(), f));
        }
        while let Some(done) = fetches.join_next().await {
            if let Ok((fetch, result)) = done {
                table.apply_props(&fetch, result, &settings.properties);
            }
        }
    }
    table.snapshot()
}
