//! [`Lab`]: the uplink tests' setup — a [`Mosquitto`], a [`FakeAdbServer`]
//! (on its own tokio runtime) with [`PHONES`] online, and an agent config
//! (`rae_id` [`RAE`], `[udev] enabled = false`, `[adb] server` = the fake,
//! `[registry] detach_grace_secs = 0`, `[mqtt] broker` = the broker,
//! reconnect backoffs capped at 1 s) for the real `rae-agent` binary.
//!
//! [`Lab::toggle`] makes a stream of events: every [`STEP`] one phone flips
//! between `unauthorized` and `offline` (a `changed`), and every 24 steps
//! one is unplugged (`detached`) and plugged back (a new session).
//! [`Lab::converge`] waits until every journal event is published and was
//! received by a [`Subscriber`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{missing, Message, Subscriber};
use crate::agent::{agent_binary, cli, read_events, wait_until, AgentProcess, EventRow};
use crate::fake_adb::FakeAdbServer;
use crate::mosquitto::Mosquitto;

/// The agent's `rae_id`.
pub const RAE: &str = "rae-uplink-test";
/// The fake adb server's devices, all in state `device` at first.
pub const PHONES: [&str; 3] = ["R58M12ABCDE", "R58M34FGHIJ", "emulator-5554"];
/// Pause between two [`Lab::toggle`] steps.
pub const STEP: Duration = Duration::from_millis(20);
/// Bound of the waits on the agent and the subscriber.
pub const WAIT: Duration = Duration::from_secs(10);
/// Bound of the waits on `status --json` (`status.json` is rewritten at
/// least every 5 s heartbeat).
pub const STATUS_WAIT: Duration = Duration::from_secs(12);

/// Broker, fake adb server, agent config and (once started) the agent.
#[derive(Debug)]
pub struct Lab {
    runtime: tokio::runtime::Runtime,
    adb: Arc<FakeAdbServer>,
    pub broker: Mosquitto,
    pub binary: PathBuf,
    pub config: PathBuf,
    pub journal: PathBuf,
    /// The agent's stderr, across restarts.
    pub log: PathBuf,
    agent: Option<AgentProcess>,
}

impl Lab {
    /// Everything lives in `dir`. `mqtt_extra` is appended to `[mqtt]`;
    /// with `login` = (user, password) only that user may connect.
    pub fn new(dir: &Path, mqtt_extra: &str, login: Option<(&str, &str)>) -> Result<Lab> {
        let binary = agent_binary()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let adb = Arc::new(runtime.block_on(FakeAdbServer::start())?);
        let props = [
            ("ro.product.model", "Pixel 7"),
            ("ro.product.name", "panther"),
        ];
        for serial in PHONES {
            adb.add_device(serial, "device", &props);
        }
        let broker_dir = dir.join("broker");
        let broker = match login {
            Some((user, password)) => Mosquitto::start_with_password(&broker_dir, user, password)?,
            None => Mosquitto::start(&broker_dir)?,
        };
        let state = dir.join("state");
        let toml = format!(
            "rae_id = {RAE:?}\nstate_dir = {:?}\nlog_level = \"debug\"\n\
             [registry]\ndetach_grace_secs = 0\n[udev]\nenabled = false\n\
             [adb]\nserver = {:?}\nreconnect_max_backoff_secs = 1\n\
             [mqtt]\nbroker = {:?}\nreconnect_max_backoff_secs = 1\n{mqtt_extra}\n",
            state.display().to_string(),
            adb.server(),
            broker.url()
        );
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml)?;
        Ok(Lab {
            runtime,
            adb,
            broker,
            binary,
            config,
            journal: state.join("journal.db"),
            log: dir.join("agent.log"),
            agent: None,
        })
    }

    /// Starts `rae-agent run` (again, after a kill).
    pub fn start_agent(&mut self) -> Result<()> {
        self.agent = Some(AgentProcess::start(&self.binary, &self.config, &self.log)?);
        Ok(())
    }

    pub fn agent(&mut self) -> Result<&mut AgentProcess> {
        self.agent.as_mut().context("the agent is not started")
    }

    /// An anonymous [`Subscriber`] on the broker.
    pub fn subscribe(&self, client_id: &str) -> Result<Subscriber> {
        Subscriber::connect(self.broker.port(), client_id)
    }

    pub fn events(&self) -> Result<Vec<EventRow>> {
        read_events(&self.journal)
    }

    /// `status --json`'s `runtime.uplink` (`Null` while absent).
    pub fn uplink_status(&self) -> Result<Value> {
        let out = cli(&self.binary, &self.config, &["status", "--json"], WAIT)?;
        anyhow::ensure!(out.status.success(), "status --json: {}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).context("status --json")?;
        Ok(v["runtime"]["uplink"].clone())
    }

    /// Polls [`Lab::uplink_status`] until `done`, for [`STATUS_WAIT`].
    pub fn wait_uplink(&self, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
        wait_until(what, STATUS_WAIT, || {
            let up = self.uplink_status()?;
            Ok(done(&up).then_some(up))
        })
        .with_context(|| format!("last runtime.uplink: {:?}", self.uplink_status().ok()))
    }

    /// Makes device events until [`Toggler::stop`] (see the module docs).
    pub fn toggle(&self) -> Toggler {
        let (adb, stop) = (self.adb.clone(), Arc::new(AtomicBool::new(false)));
        let stopped = stop.clone();
        let task = self.runtime.spawn(async move {
            let mut i = 0usize;
            while !stopped.load(Ordering::SeqCst) {
                let unplugged = PHONES[(i / 24) % PHONES.len()];
                match i % 24 {
                    22 => adb.remove_device(unplugged)?,
                    23 => adb.add_device(unplugged, "offline", &[]),
                    _ => {
                        let state = ["unauthorized", "offline"][(i / PHONES.len()) % 2];
                        adb.set_state(PHONES[i % PHONES.len()], state)?;
                    }
                }
                i += 1;
                tokio::time::sleep(STEP).await;
            }
            anyhow::Ok(i)
        });
        Toggler { stop, task }
    }

    /// Waits until every journal event is published and was received;
    /// returns the journal and the messages (read before it, so every
    /// message's event is in it).
    pub fn converge(&self, sub: &Subscriber) -> Result<(Vec<EventRow>, Vec<Message>)> {
        self.converge_until(sub, "nothing more", |_| true)
    }

    /// [`Lab::converge`], and `done` holds for the journal.
    pub fn converge_until(
        &self,
        sub: &Subscriber,
        what: &str,
        done: impl Fn(&[EventRow]) -> bool,
    ) -> Result<(Vec<EventRow>, Vec<Message>)> {
        let what = format!("every journal event published and received, and {what}");
        let result = sub.wait_for(&what, WAIT, |_| {
            let messages = sub.messages();
            let rows = self.events()?;
            let done = !rows.is_empty() && missing(&rows, &messages)?.is_empty() && done(&rows);
            Ok(done.then_some((rows, messages)))
        });
        result.with_context(|| {
            let (messages, rows) = (sub.messages(), self.events().unwrap_or_default());
            let missing: Vec<String> = missing(&rows, &messages)
                .unwrap_or_default()
                .iter()
                .take(10)
                .map(|r| format!("{r:?}"))
                .collect();
            format!("{} events, missing (first 10): {missing:#?}", rows.len())
        })
    }

    /// [`Lab::converge_until`], then no new event for 1 s.
    pub fn settle(
        &self,
        sub: &Subscriber,
        done: impl Fn(&[EventRow]) -> bool,
    ) -> Result<Vec<EventRow>> {
        wait_until("a quiet journal", WAIT, || {
            let (rows, _) = self.converge_until(sub, "the expected events", &done)?;
            std::thread::sleep(Duration::from_secs(1));
            Ok((self.events()?.len() == rows.len()).then_some(rows))
        })
    }

    /// Runs `scenario`; a failure gets the end of the agent's and the
    /// broker's logs attached.
    pub fn run(mut self, scenario: impl FnOnce(&mut Lab) -> Result<()>) -> Result<()> {
        scenario(&mut self).with_context(|| {
            let agent = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = agent.lines().collect();
            format!(
                "agent log (end):\n{}\nbroker log (end):\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n"),
                self.broker.log_tail()
            )
        })
    }
}

/// The running [`Lab::toggle`] task.
#[derive(Debug)]
pub struct Toggler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<usize>>,
}

impl Toggler {
    /// Stops toggling; returns how many steps were made.
    pub fn stop(self, lab: &Lab) -> Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        lab.runtime.block_on(self.task)?
    }
}
