//! [`Subscriber`]: an MQTT client (rumqttc, on its own thread and tokio
//! runtime) that subscribes to `rae/v1/+/#` at QoS 1 and records every
//! message it receives — topic, payload bytes, retain flag, order — for the
//! uplink tests to compare with the agent's journal.
//!
//! * Fixed client id, `clean_session = false`: while the broker lives, what
//!   is published during a short disconnect is queued for it. The broker
//!   runs with `persistence false`, so a broker *restart* loses the session:
//!   on every CONNACK without `session_present` the subscriber subscribes
//!   again ([`Subscriber::subacks`] counts the SUBACKs, so a test can wait
//!   for the resubscription before letting the agent publish again).
//! * It reconnects forever (every 50 ms) until dropped.
//! * [`Subscriber::publish`] / [`Subscriber::command`] publish at QoS 1 and
//!   wait for the PUBACK.
//! * [`Subscriber::connect_tls`] connects over a given rumqttc transport
//!   (e.g. TLS with a client certificate from [`crate::tls_certs`]).
//! * [`decode`] (re-exported here) decodes what arrived and compares it with
//!   the agent's journal; [`lab`] is the uplink tests' setup (broker, fake
//!   adb server, agent).

mod decode;
pub mod lab;

pub use decode::*;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;

/// What the subscriber subscribes to.
pub const FILTER: &str = "rae/v1/+/#";
/// Bound for [`Subscriber::connect`] and [`Subscriber::publish`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(50);

/// One received PUBLISH.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Position in receive order, from 0.
    pub index: usize,
    pub topic: String,
    pub payload: Vec<u8>,
    /// Set by the broker only for retained messages sent at subscribe time.
    pub retain: bool,
    pub dup: bool,
    /// How many CONNACKs the subscriber had when it arrived (1 = first connection).
    pub connection: usize,
}

#[derive(Debug, Default)]
struct State {
    messages: Vec<Message>,
    connacks: usize,
    subacks: usize,
    /// A SUBACK, or a CONNACK with the session (and so the subscription) kept.
    subscribed: bool,
    pubacks: usize,
    connected: bool,
    last_error: Option<String>,
}

/// A recording subscriber. See the module docs. Dropping it disconnects.
#[derive(Debug)]
pub struct Subscriber {
    client: AsyncClient,
    state: Arc<Mutex<State>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Subscriber {
    /// Anonymous, on `127.0.0.1:port`; waits until subscribed (a SUBACK,
    /// or a CONNACK resuming an earlier session of `client_id`).
    pub fn connect(port: u16, client_id: &str) -> Result<Subscriber> {
        Self::connect_as(port, client_id, None)
    }

    /// With a user name and password, if given.
    pub fn connect_as(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> Result<Subscriber> {
        Self::connect_with(port, client_id, login, None)
    }

    /// Over `transport`, e.g. rumqttc's `Transport::tls(ca_pem,
    /// Some((cert_pem, key_pem)), None)`; the TLS server name is `127.0.0.1`.
    pub fn connect_tls(
        port: u16,
        client_id: &str,
        transport: rumqttc::Transport,
    ) -> Result<Subscriber> {
        Self::connect_with(port, client_id, None, Some(transport))
    }

    fn connect_with(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
        transport: Option<rumqttc::Transport>,
    ) -> Result<Subscriber> {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        if let Some(transport) = transport {
            opts.set_transport(transport);
        }
        let (client, mut events) = AsyncClient::new(opts, 256);
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shared, sub) = (state.clone(), client.clone());
        let thread = std::thread::Builder::new()
            .name(format!("mqtt-sub-{client_id}"))
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        let event = tokio::select! {
                            _ = &mut stopped => break,
                            event = events.poll() => event,
                        };
                        if !record(&shared, &sub, event) {
                            tokio::select! {
                                _ = &mut stopped => break,
                                _ = tokio::time::sleep(RETRY) => {}
                            }
                        }
                    }
                    // Best effort: a clean DISCONNECT, so no will is involved.
                    if sub.try_disconnect().is_ok() {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
                    }
                })
            })?;
        let subscriber = Subscriber {
            client,
            state,
            stop: Some(stop),
            thread: Some(thread),
        };
        subscriber.wait_state("the subscription", CONNECT_TIMEOUT, |st| st.subscribed)?;
        Ok(subscriber)
    }

    fn wait_state(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&State) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = lock(&self.state);
            if done(&st) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "subscriber: timed out after {timeout:?} waiting for {what} (last error: {:?})",
                st.last_error
            );
            drop(st);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything received so far, in order.
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.state).messages.clone()
    }

    pub fn connected(&self) -> bool {
        lock(&self.state).connected
    }

    /// SUBACKs so far: 1 after connecting, +1 per resubscription.
    pub fn subacks(&self) -> usize {
        lock(&self.state).subacks
    }

    /// Waits until there were more than `seen` SUBACKs (resubscribed after a
    /// broker restart).
    pub fn wait_resubscribed(&self, seen: usize, timeout: Duration) -> Result<()> {
        self.wait_state("a new SUBACK", timeout, |st| st.subacks > seen)
    }

    /// Polls `check` on the messages every 20 ms until it returns `Some`;
    /// an error from `check` fails at once, `timeout` fails with `what`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Message]) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if let Some(value) = check(&messages).with_context(|| format!("waiting for {what}"))? {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; {} messages received, last error {:?}",
                    messages.len(),
                    lock(&self.state).last_error
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) -> Result<()> {
        let before = lock(&self.state).pubacks;
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .context("subscriber: queueing a publish")?;
        self.wait_state(&format!("the PUBACK for {topic}"), CONNECT_TIMEOUT, |st| {
            st.pubacks > before
        })
    }

    /// Publishes command `name` to agent `rae_id`.
    pub fn command(&self, rae_id: &str, name: &str, payload: &[u8]) -> Result<()> {
        self.publish(&rae_protocol::command_topic(rae_id, name)?, payload, false)
    }
}

/// Records one event loop outcome; false after a connection error.
fn record(
    state: &Mutex<State>,
    client: &AsyncClient,
    event: Result<Event, rumqttc::ConnectionError>,
) -> bool {
    let mut st = lock(state);
    match event {
        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
            st.connacks += 1;
            st.connected = true;
            st.subscribed = ack.session_present;
            if !ack.session_present {
                let _ = client.try_subscribe(FILTER, QoS::AtLeastOnce);
            }
        }
        Ok(Event::Incoming(Packet::SubAck(_))) => {
            st.subacks += 1;
            st.subscribed = true;
        }
        Ok(Event::Incoming(Packet::PubAck(_))) => st.pubacks += 1,
        Ok(Event::Incoming(Packet::Publish(p))) => {
            let (index, connection) = (st.messages.len(), st.connacks);
            st.messages.push(Message {
                index,
                topic: p.topic,
                payload: p.payload.to_vec(),
                retain: p.retain,
                dup: p.dup,
                connection,
            });
        }
        Ok(_) => {}
        Err(e) => {
            st.connected = false;
            st.last_error = Some(e.to_string());
            return false;
        }
    }
    true
}

impl Subscriber {
    /// Waits for a status message of `rae_id` with `state`, skipping the
    /// first `skip` status messages.
    pub fn wait_status(
        &self,
        rae_id: &str,
        skip: usize,
        state: &str,
        within: Duration,
    ) -> Result<Message> {
        self.wait_for(&format!("status {state:?}"), within, |m| {
            let mut all = statuses(m, rae_id).into_iter().skip(skip);
            Ok(all
                .find(|(_, s)| s.as_deref() == Some(state))
                .map(|(m, _)| m.clone()))
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mosquitto::Mosquitto;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn subscriber_receives_what_a_client_publishes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut broker = Mosquitto::start(dir.path())?;
        let sub = Subscriber::connect(broker.port(), "sub-a")?;
        let publisher = Subscriber::connect(broker.port(), "pub-b")?;
        let status = rae_protocol::status_topic("box")?;
        let payload = resync_payload("0190b2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d")?;
        publisher.publish(&status, &payload, true)?;
        publisher.command("box", "resync", b"")?;
        publisher.publish("elsewhere/x", b"not matched", false)?;
        let got = sub.wait_for("two messages", WAIT, |m| {
            Ok((m.len() >= 2).then(|| m.to_vec()))
        })?;
        assert_eq!(got[0].topic, status);
        assert_eq!(got[0].payload, payload);
        assert!(!got[0].retain, "live delivery clears the retain flag");
        assert_eq!(got[1].topic, "rae/v1/box/commands/resync");
        assert!(got[1].payload.is_empty());
        assert_eq!((got[0].index, got[1].index, got[0].connection), (0, 1, 1));
        let decoded = status_field(&got[0].payload, "session_id").and_then(|v| v.into_text().ok());
        assert_eq!(
            decoded.as_deref(),
            Some("0190b2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d")
        );

        // A fresh subscriber gets the retained one, flagged.
        let fresh = Subscriber::connect(broker.port(), "sub-c")?;
        let retained = fresh.wait_for("the retained status", WAIT, |m| Ok(m.first().cloned()))?;
        assert!(retained.retain && retained.topic == status, "{retained:?}");

        // Across a broker restart (sessions lost) it resubscribes by itself.
        let subacks = sub.subacks();
        broker.kill()?;
        broker.restart()?;
        sub.wait_resubscribed(subacks, WAIT)?;
        publisher.publish("rae/v1/box/status", b"again", false)?;
        let last = sub.wait_for("a message after the restart", WAIT, |m| {
            Ok(m.iter().find(|m| m.payload == b"again").cloned())
        })?;
        assert!(last.connection >= 2, "{last:?}");
        assert!(sub.connected());
        let envs = device_envelopes(&sub.messages())?;
        assert!(envs.is_empty() && dedupe_by_session_seq(envs).is_empty());
        Ok(())
    }
}
