//! Wiring: [`build`] opens nothing itself; it takes an opened journal and the
//! settings, creates the bounded channels, and spawns every long-running
//! task into one tracked set. [`Agent::shutdown`] broadcasts the stop and
//! drains the tasks with a deadline.
//!
//! Tasks: the registry task (owns registry + journal), the uplink, and one
//! task per enabled probe.
//!
//! Under systemd ([`notify`]): `READY=1` once the journal is open and every
//! task is spawned, `WATCHDOG=1` from the main loop at half the watchdog
//! timeout but only while every supervised task beats ([`watchdog`]),
//! `STOPPING=1` when shutdown begins.

pub mod clock;
pub mod lock;
pub mod notify;
pub mod registry_task;
pub mod watchdog;

use crate::config::Settings;
use crate::journal::{Journal, JournalOptions, Opened};
use crate::probe::adb::AdbProbe;
use crate::probe::serial::SerialProbe;
use crate::probe::udev::UdevProbe;
use crate::probe::ProbeEvent;
use crate::registry::{Registry, Source};
use crate::status::{RuntimeStatus, UplinkStatus};
use crate::uplink::messages::BirthInfo;
use crate::uplink::Uplink;
use anyhow::Context;
use clock::Clock;
use log::{error, info, warn};
use notify::{Message, Notifier};
use registry_task::{RegistryTask, Retention};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use watchdog::Liveness;

/// Capacity of the probe → registry channel.
pub const PROBE_CHANNEL_CAPACITY: usize = 256;
/// How long shutdown waits for tasks to finish.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(4);

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    tasks: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    /// A sender into the registry task, for tests and future in-process probes.
    pub probe_tx: mpsc::Sender<ProbeEvent>,
}

/// Opens the journal for the daemon.
pub fn open_journal(settings: &Settings) -> Result<Opened, crate::journal::JournalError> {
    Journal::open(
        &settings.journal_path(),
        &JournalOptions {
            synchronous: settings.synchronous,
            rae_id: settings.rae_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    )
}

/// Spawns the tasks. Must be called inside a tokio runtime.
pub fn build(settings: &Settings, opened: Opened) -> anyhow::Result<Agent> {
    build_supervised(settings, opened, None)
}

/// Which tasks the watchdog supervises, and the test-only wedge hook.
#[derive(Debug, Clone)]
pub struct Supervision {
    pub liveness: Arc<Liveness>,
    /// `$RAE_TEST_WEDGE_REGISTRY_WHEN` (see [`watchdog`]).
    pub wedge_registry_when: Option<PathBuf>,
}

/// Spawns `task`, wrapped in the watchdog's [`watchdog::Watched`] when
/// supervised.
fn spawn_task<F>(
    tasks: &mut JoinSet<()>,
    supervision: Option<&Supervision>,
    name: &'static str,
    task: F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    match supervision {
        Some(s) => {
            let wedge = (name == "registry")
                .then(|| s.wedge_registry_when.clone())
                .flatten();
            tasks.spawn(s.liveness.watch(name, task).wedge_when(wedge));
        }
        None => {
            tasks.spawn(task);
        }
    }
}

/// [`build`], with the async tasks supervised by `supervision`'s liveness.
pub fn build_supervised(
    settings: &Settings,
    opened: Opened,
    supervision: Option<Supervision>,
) -> anyhow::Result<Agent> {
    let sup = supervision.as_ref();
    let clock = Clock::new();
    let snapshot = opened
        .journal
        .snapshot()
        .context("reading device state from the journal")?;
    let registry = Registry::from_snapshot(settings.registry_config(), snapshot);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (probe_tx, probe_rx) = mpsc::channel(PROBE_CHANNEL_CAPACITY);
    let (command_tx, command_rx) = mpsc::channel(16);
    let journal_changed = Arc::new(Notify::new());
    let (backlog_checked, backlog_checked_rx) = watch::channel(false);
    let uplink_status = settings
        .mqtt
        .enabled()
        .then(|| Arc::new(Mutex::new(UplinkStatus::default())));
    let now = clock.now_ms();
    let status = RuntimeStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: now,
        heartbeat_ms: now,
        boot_count: opened.boot_count,
        running: true,
        journal_moved_aside: opened.moved_aside.map(|p| p.display().to_string()),
        ..RuntimeStatus::default()
    };
    let birth = BirthInfo {
        agent_version: status.version.clone(),
        started_ms: status.started_ms,
        boot_count: status.boot_count,
    };
    let mut tasks = JoinSet::new();
    spawn_task(
        &mut tasks,
        sup,
        "registry",
        RegistryTask {
            registry,
            journal: opened.journal,
            rx: probe_rx,
            shutdown: shutdown_rx.clone(),
            status_path: settings.status_path(),
            status,
            retention: Retention {
                max_age_ms: settings.retention_max_age_secs.saturating_mul(1000),
                max_events: settings.retention_max_events,
                backlog: crate::journal::compaction::Bounds {
                    max_events: settings.max_backlog_events,
                    max_bytes: settings.max_backlog_bytes,
                },
            },
            clock,
            commands: command_rx,
            journal_changed: journal_changed.clone(),
            uplink_status: uplink_status.clone(),
            backlog_checked,
            disabled_probes: [
                (Source::Udev, settings.udev.enabled),
                (Source::Serial, settings.serial.enabled()),
                (Source::Adb, settings.adb.enabled()),
            ]
            .into_iter()
            .filter_map(|(source, on)| (!on).then_some(source))
            .collect(),
        }
        .run(),
    );
    match uplink_status {
        Some(status) => {
            spawn_task(
                &mut tasks,
                sup,
                "uplink",
                Uplink {
                    settings: settings.mqtt.clone(),
                    rae_id: settings.rae_id.clone(),
                    journal_path: settings.journal_path(),
                    birth,
                    registry: command_tx,
                    journal_changed,
                    status,
                    shutdown: shutdown_rx.clone(),
                    backlog_checked: backlog_checked_rx,
                }
                .run(),
            );
        }
        None => info!("no [mqtt] broker configured: offline mode, events stay in the journal"),
    }
    if settings.udev.enabled {
        let probe = UdevProbe {
            settings: settings.udev.clone(),
            tx: probe_tx.clone(),
            shutdown: shutdown_rx.clone(),
        };
        // Its own thread and runtime (see `run_blocking`), watched there
        // like the other tasks.
        let liveness = sup.map(|s| s.liveness.clone());
        tasks.spawn_blocking(move || {
            probe.run_blocking(|task| async move {
                match liveness {
                    Some(l) => l.watch("udev probe", task).await,
                    None => task.await,
                }
            })
        });
    } else {
        info!("udev probe disabled in config");
    }
    if settings.serial.enabled() {
        spawn_task(
            &mut tasks,
            sup,
            "serial probe",
            SerialProbe {
                settings: settings.serial.clone(),
                tx: probe_tx.clone(),
                shutdown: shutdown_rx.clone(),
            }
            .run(),
        );
    }
    if settings.adb.enabled() {
        spawn_task(
            &mut tasks,
            sup,
            "adb probe",
            AdbProbe {
                settings: settings.adb.clone(),
                tx: probe_tx.clone(),
                shutdown: shutdown_rx.clone(),
            }
            .run(),
        );
    }
    Ok(Agent {
        tasks,
        shutdown,
        probe_tx,
    })
}

impl Agent {
    /// Broadcasts shutdown and waits up to `deadline` for every task.
    pub async fn shutdown(mut self, deadline: Duration) {
        let _ = self.shutdown.send(true);
        drop(self.probe_tx);
        let drained = tokio::time::timeout(deadline, async {
            while let Some(res) = self.tasks.join_next().await {
                if let Err(e) = res {
                    warn!("a task ended abnormally: {e}");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                "{} task(s) did not stop within {deadline:?}; abandoning them",
                self.tasks.len()
            );
            self.tasks.abort_all();
        }
    }

    /// Waits until any task ends on its own (which is unexpected).
    pub async fn wait_any(&mut self) {
        let _ = self.tasks.join_next().await;
    }
}

/// `rae-agent run`: open, build, tell systemd we are ready, pet its watchdog
/// while the tasks are healthy, wait for SIGTERM/SIGINT, drain.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        warn!("not notifying systemd: {e}");
        Notifier::disabled()
    });
    let _lock = lock::acquire(&settings.state_dir)?;
    let opened = open_journal(&settings)
        .with_context(|| format!("opening journal {}", settings.journal_path().display()))?;
    info!(
        "rae-agent {} starting as {} (journal {}, boot #{})",
        env!("CARGO_PKG_VERSION"),
        settings.rae_id,
        settings.journal_path().display(),
        opened.boot_count
    );
    let supervision = notifier.watchdog().map(|timeout| {
        let wedge_registry_when = std::env::var_os(watchdog::WEDGE_REGISTRY_ENV).map(PathBuf::from);
        if let Some(path) = &wedge_registry_when {
            warn!(
                "test hook {} is set: the registry task will block once {} exists",
                watchdog::WEDGE_REGISTRY_ENV,
                path.display()
            );
        }
        Supervision {
            liveness: Liveness::new(Liveness::tick_for(timeout)),
            wedge_registry_when,
        }
    });
    let liveness = supervision.as_ref().map(|s| s.liveness.clone());
    let mut agent = build_supervised(&settings, opened, supervision)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    notify(
        &notifier,
        &Message::Ready {
            status: format!("running as {}", settings.rae_id),
        },
    );
    let mut pet = WatchdogPet::new(notifier.watchdog(), liveness);
    let mut crashed = false;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received, stopping"); break }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT received, stopping"); break }
            _ = agent.wait_any() => {
                warn!("a task ended unexpectedly, stopping");
                crashed = true;
                break
            }
            _ = pet.tick() => pet.check(&notifier),
        }
    }
    notify(&notifier, &Message::Stopping);
    agent.shutdown(SHUTDOWN_DEADLINE).await;
    if crashed {
        // A non-zero exit, so systemd's Restart=on-failure starts us again.
        anyhow::bail!("stopped because a task ended unexpectedly (see the log above)");
    }
    info!("rae-agent stopped");
    Ok(())
}

/// Sends `message`, logging (not failing) when systemd cannot be told.
fn notify(notifier: &Notifier, message: &Message) {
    if let Err(e) = notifier.send(message) {
        warn!("{e}");
    }
}

/// The main loop's side of the watchdog: at half the timeout, `WATCHDOG=1`
/// if no supervised task is stalled for longer than the timeout.
struct WatchdogPet {
    timer: Option<tokio::time::Interval>,
    limit: Duration,
    liveness: Option<Arc<Liveness>>,
    stalled: bool,
}

impl WatchdogPet {
    fn new(timeout: Option<Duration>, liveness: Option<Arc<Liveness>>) -> Self {
        let timer = timeout.map(|t| {
            let mut i = tokio::time::interval(t / 2);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        WatchdogPet {
            timer,
            limit: timeout.unwrap_or_default(),
            liveness,
            stalled: false,
        }
    }

    /// Resolves at the next pet time; never without a watchdog.
    async fn tick(&mut self) {
        match &mut self.timer {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    fn check(&mut self, notifier: &Notifier) {
        let ages = self.liveness.as_ref().map(|l| l.ages()).unwrap_or_default();
        let stalled = watchdog::stalled(&ages, self.limit);
        if stalled.is_empty() {
            if std::mem::take(&mut self.stalled) {
                info!("every task makes progress again; petting the systemd watchdog");
                notify(notifier, &Message::Status("running".into()));
            }
            notify(notifier, &Message::Watchdog);
        } else if !std::mem::replace(&mut self.stalled, true) {
            let what = watchdog::describe(&stalled);
            error!("{what}; no longer petting the systemd watchdog, which will restart the agent");
            notify(notifier, &Message::Status(what));
        }
    }
}

#[cfg(test)]
mod tests;
