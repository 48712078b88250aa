//! The MQTT uplink: publishes the journal, in journal order, at QoS 1, and
//! marks each event published only after the broker's PUBACK for it.
//!
//! Invariants:
//! - The journal is the only source of what to send. Each connection starts
//!   reading at the first unpublished event, so after a reconnect or a
//!   restart everything not acknowledged is sent again (duplicates are
//!   allowed; consumers are idempotent by `(session_id, seq)`).
//! - A PUBACK is mapped back to its event by packet id, exactly; a
//!   `detached` event counts as published only once the clearing empty
//!   retained message on its topic is acknowledged too.
//! - SQLite is touched only by the uplink's store thread (`store.rs`:
//!   fetches, and time-batched `published` marks); the MQTT event loop is
//!   polled all the time.
//! - Each connection uses a fresh rumqttc client with a clean session, so no
//!   in-memory resend state of rumqttc survives a disconnect.
//!
//! Checkpoints are journaled by the registry task on request (after each
//! connect, every `checkpoint_interval_secs`, on a `resync` command) and go
//! out through the same ordered path, with retain = true.

pub mod config;
mod connection;
pub mod messages;
mod store;
mod tls;

pub use config::{MqttSettings, RawMqttConfig};

use crate::journal::outbox::Outbox;
use crate::runtime::registry_task::RegistryCommand;
use crate::status::UplinkStatus;
use log::{info, warn};
use messages::BirthInfo;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// The long-running uplink task.
#[derive(Debug)]
pub struct Uplink {
    pub settings: MqttSettings,
    pub rae_id: String,
    pub journal_path: PathBuf,
    pub birth: BirthInfo,
    pub registry: mpsc::Sender<RegistryCommand>,
    pub journal_changed: Arc<Notify>,
    pub status: Arc<Mutex<UplinkStatus>>,
    pub shutdown: watch::Receiver<bool>,
    /// Becomes `true` once the registry task's startup backlog check is
    /// done; nothing is sent before (see `RegistryTask::backlog_checked`).
    pub backlog_checked: watch::Receiver<bool>,
}

/// How a connection ended.
pub(crate) enum Ended {
    Shutdown,
    Lost { error: String, was_connected: bool },
}

impl Uplink {
    pub async fn run(mut self) {
        let Some(broker) = self.settings.broker.clone() else {
            return;
        };
        self.update(|s| s.broker = broker.url.clone());
        let mut checked = self.backlog_checked.clone();
        tokio::select! {
            r = checked.wait_for(|done| *done) => if r.is_err() { return },
            _ = self.shutdown.changed() => return,
        }
        let outbox = match open_outbox(self.journal_path.clone()).await {
            Ok(o) => o,
            Err(e) => {
                warn!("uplink disabled: {e}");
                self.update(|s| s.last_error = Some(e));
                return;
            }
        };
        let (store, store_thread) = store::spawn(outbox, self.status.clone());
        let max = Duration::from_secs(self.settings.reconnect_max_backoff_secs);
        let mut backoff = Duration::from_millis(500);
        loop {
            let ended = connection::Connection::new(&self, &broker, store.clone())
                .run()
                .await;
            self.update(|s| s.connected = false);
            match ended {
                Ended::Shutdown => break,
                Ended::Lost {
                    error,
                    was_connected,
                } => {
                    if was_connected {
                        backoff = Duration::from_millis(500);
                    }
                    let wait = jitter(backoff);
                    warn!("MQTT {}: {error}; reconnecting in {wait:?}", broker.url);
                    self.update(|s| s.last_error = Some(error));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(max);
                }
            }
        }
        drop(store);
        let _ = store_thread.await;
        info!("uplink stopped");
    }

    fn update(&self, f: impl FnOnce(&mut UplinkStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// Half to all of `d`, so many boxes do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let frac = 0.5 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(frac)
}

async fn open_outbox(path: PathBuf) -> Result<Outbox, String> {
    tokio::task::spawn_blocking(move || Outbox::open(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open the journal for the uplink: {e}"))
}
