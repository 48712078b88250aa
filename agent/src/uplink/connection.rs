//! One MQTT connection: connect, announce, then publish the journal from
//! the first unpublished event while polling the event loop continuously.
//! Ends on shutdown (after draining in-flight PUBACKs and publishing the
//! `offline` status) or when the connection is lost.

use super::messages::{self, Command};
use super::store::{Fetched, StoreHandle};
use super::{tls, Ended, Uplink};
use crate::journal::outbox::OutboxRow;
use crate::runtime::registry_task::RegistryCommand;
use crate::status::UplinkStatus;
use log::{info, warn};
use rae_protocol::{command_filter, parse_topic, status_topic, ParsedTopic};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

const FETCH_BATCH: usize = 256;
/// The next fetch is asked for when the queue falls to this many rows, so
/// the window never waits for the store thread during a drain.
const REFILL_AT: usize = FETCH_BATCH / 2;
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Acknowledged events go to the store thread (and into the status) in
/// batches: at most this late, or a window's worth at once.
const ACK_FLUSH: Duration = Duration::from_millis(5);

/// What a packet id stands for until its PUBACK.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Event(i64),
    Other,
}

pub(crate) struct Connection<'a> {
    up: &'a Uplink,
    broker: &'a super::config::Broker,
    store: StoreHandle,
    shutdown: watch::Receiver<bool>,
    queue: VecDeque<OutboxRow>,
    cursor: i64,
    /// Set when the queue was dropped and `cursor` moved back: a fetch
    /// already asked for (rows after the old cursor) must be discarded.
    stale_fetch: bool,
    awaiting_pkid: VecDeque<Sent>,
    inflight: HashMap<u16, Sent>,
    /// Events sent and not yet fully acknowledged, by journal id.
    outstanding: HashMap<i64, Outstanding>,
    /// Fully acknowledged, not yet handed to the store (see [`ACK_FLUSH`]);
    /// handed over at the latest when the connection is dropped.
    acked: Acked,
    connected: bool,
}

/// Acknowledged events waiting to be handed to the store thread.
#[derive(Debug, Default)]
struct Acked {
    ids: Vec<i64>,
    bytes: u64,
    checkpoints: u64,
    due: Option<Instant>,
}

type Fetch = oneshot::Receiver<Fetched>;

/// An event published and not yet fully acknowledged.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    /// Acks still needed (2 for `detached`: event + retained clear).
    acks: u8,
    checkpoint: bool,
    bytes: u64,
}

impl<'a> Connection<'a> {
    pub(crate) fn new(
        up: &'a Uplink,
        broker: &'a super::config::Broker,
        store: StoreHandle,
    ) -> Self {
        Connection {
            up,
            broker,
            store,
            shutdown: up.shutdown.clone(),
            queue: VecDeque::new(),
            cursor: 0,
            stale_fetch: false,
            awaiting_pkid: VecDeque::new(),
            inflight: HashMap::new(),
            outstanding: HashMap::new(),
            acked: Acked::default(),
            connected: false,
        }
    }

    fn lost(&self, error: impl std::fmt::Display) -> Ended {
        Ended::Lost {
            error: error.to_string(),
            was_connected: self.connected,
        }
    }

    fn options(&self) -> Result<MqttOptions, String> {
        let s = &self.up.settings;
        let mut o = MqttOptions::new(&self.up.rae_id, &self.broker.host, self.broker.port);
        o.set_keep_alive(Duration::from_secs(s.keepalive_secs));
        o.set_clean_session(true);
        // Up to two packets per event (a `detached` and its retained clear).
        o.set_inflight(s.inflight_window.saturating_mul(2).saturating_add(8));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_last_will(LastWill::new(
            status_topic(&self.up.rae_id).map_err(|e| e.to_string())?,
            messages::status_payload("offline", &self.up.birth, crate::timefmt::now_ms()),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some((u, p)) = &s.credentials {
            o.set_credentials(u, p);
        }
        if self.broker.tls {
            let cfg = tls::client_config(s).map_err(|e| e.to_string())?;
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(cfg),
            ));
        }
        Ok(o)
    }

    pub(crate) async fn run(mut self) -> Ended {
        let opts = match self.options() {
            Ok(o) => o,
            Err(e) => return self.lost(e),
        };
        let window = usize::from(self.up.settings.inflight_window);
        let (client, mut el) = AsyncClient::new(opts, window * 2 + 16);
        if let Err(e) = self.connect(&client, &mut el).await {
            return e;
        }
        let mut checkpoints = tokio::time::interval(Duration::from_secs(
            self.up.settings.checkpoint_interval_secs,
        ));
        checkpoints.reset();
        let mut fetch: Option<Fetch> = None;
        let mut idle = false;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            if self.acked.ids.len() >= window {
                self.flush_acked();
            }
            if drain_deadline.is_none() {
                self.send_queued(&client, window);
            }
            if std::mem::take(&mut self.stale_fetch) {
                fetch = None;
            }
            if drain_deadline.is_none() && self.queue.len() <= REFILL_AT && fetch.is_none() && !idle
            {
                fetch = Some(self.fetch());
            }
            if drain_deadline.is_some() && self.outstanding.is_empty() {
                break;
            }
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(ev) => self.on_event(ev),
                    Err(e) => return self.lost(e),
                },
                res = join_fetch(&mut fetch), if fetch.is_some() => {
                    fetch = None;
                    match res.map_err(|_| "uplink store thread stopped".to_string()).and_then(|r| r) {
                        Ok(rows) => {
                            idle = rows.is_empty();
                            if let Some(last) = rows.last() {
                                self.cursor = last.id;
                            }
                            self.queue.extend(rows);
                        }
                        Err(e) => {
                            warn!("uplink cannot read the journal: {e}");
                            idle = true;
                        }
                    }
                }
                _ = self.up.journal_changed.notified(), if idle => idle = false,
                _ = tokio::time::sleep(IDLE_POLL), if idle => idle = false,
                _ = sleep_until(self.acked.due), if self.acked.due.is_some() => self.flush_acked(),
                _ = checkpoints.tick() => self.request_checkpoint(None),
                _ = self.shutdown.changed(), if drain_deadline.is_none() => {
                    let ms = self.up.settings.drain_timeout_ms;
                    info!("uplink draining {} in-flight events (up to {ms} ms)", self.outstanding.len());
                    drain_deadline = Some(Instant::now() + Duration::from_millis(ms));
                }
                _ = sleep_until(drain_deadline), if drain_deadline.is_some() => {
                    warn!("{} events still unacknowledged at shutdown; they will be resent", self.outstanding.len());
                    break;
                }
            }
        }
        self.say_offline(&client, &mut el).await;
        Ended::Shutdown
    }

    /// Polls until CONNACK, then announces the birth, subscribes to
    /// commands and asks for checkpoints.
    async fn connect(&mut self, client: &AsyncClient, el: &mut EventLoop) -> Result<(), Ended> {
        loop {
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => return Err(self.lost(describe(&e))),
                },
                _ = self.shutdown.changed() => return Err(Ended::Shutdown),
            }
        }
        self.connected = true;
        info!("MQTT connected to {}", self.broker.url);
        self.update(|s| {
            s.connected = true;
            s.last_error = None;
        });
        let rae_id = &self.up.rae_id;
        let birth = messages::status_payload("online", &self.up.birth, crate::timefmt::now_ms());
        let topic = status_topic(rae_id).map_err(|e| self.lost(e))?;
        client
            .try_publish(topic, QoS::AtLeastOnce, true, birth)
            .map_err(|e| self.lost(e))?;
        self.awaiting_pkid.push_back(Sent::Other);
        let filter = command_filter(rae_id).map_err(|e| self.lost(e))?;
        client
            .try_subscribe(filter, QoS::AtLeastOnce)
            .map_err(|e| self.lost(e))?;
        self.request_checkpoint(None);
        Ok(())
    }

    fn fetch(&self) -> Fetch {
        self.store.fetch(self.cursor, FETCH_BATCH)
    }

    /// Publishes queued rows while the window has room.
    fn send_queued(&mut self, client: &AsyncClient, window: usize) {
        while self.outstanding.len() < window {
            let Some(row) = self.queue.pop_front() else {
                return;
            };
            let topic = format!("rae/v1/{}/devices/{}", self.up.rae_id, row.session_id);
            let retain = row.kind == "checkpoint";
            let detached = row.kind == "detached";
            let id = row.id;
            let bytes = row.payload.len() as u64;
            let clear_topic = detached.then(|| topic.clone());
            if client
                .try_publish(topic, QoS::AtLeastOnce, retain, row.payload)
                .is_err()
            {
                // The channel to the event loop is full: forget the queue
                // and read again from this row on the next turn (the journal
                // still has it; nothing before it is skipped).
                self.queue.clear();
                self.cursor = id - 1;
                self.stale_fetch = true;
                return;
            }
            self.awaiting_pkid.push_back(Sent::Event(id));
            let mut acks = 1;
            if let Some(clear_topic) = clear_topic {
                // Clear the retained checkpoint of the ended session. The
                // event is published only when both are acknowledged; if the
                // clear cannot be queued, the event stays unacknowledged in
                // this connection and is sent again after the next connect.
                acks = 2;
                if client
                    .try_publish(clear_topic, QoS::AtLeastOnce, true, Vec::new())
                    .is_ok()
                {
                    self.awaiting_pkid.push_back(Sent::Event(id));
                }
            }
            self.outstanding.insert(
                id,
                Outstanding {
                    acks,
                    checkpoint: retain,
                    bytes,
                },
            );
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(sent) = self.awaiting_pkid.pop_front() {
                    self.inflight.insert(pkid, sent);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(Sent::Event(id)) = self.inflight.remove(&ack.pkid) {
                    self.acked(id);
                }
            }
            Event::Incoming(Packet::Publish(p)) => self.on_command(&p.topic, &p.payload),
            _ => {}
        }
    }

    fn acked(&mut self, id: i64) {
        let Some(out) = self.outstanding.get_mut(&id) else {
            return;
        };
        out.acks -= 1;
        if out.acks > 0 {
            return;
        }
        let out = *out;
        self.outstanding.remove(&id);
        self.acked.ids.push(id);
        self.acked.bytes += out.bytes;
        self.acked.checkpoints += u64::from(out.checkpoint);
        self.acked
            .due
            .get_or_insert_with(|| Instant::now() + ACK_FLUSH);
    }

    /// Hands the acknowledged events to the store thread and counts them in
    /// the status.
    fn flush_acked(&mut self) {
        let acked = std::mem::take(&mut self.acked);
        if acked.ids.is_empty() {
            return;
        }
        let n = acked.ids.len() as u64;
        self.store.mark(acked.ids);
        let now = crate::timefmt::now_ms();
        self.update(|s| {
            s.published += n;
            s.published_bytes += acked.bytes;
            s.last_puback_ms = Some(now);
            s.checkpoints += acked.checkpoints;
        });
    }

    fn on_command(&mut self, topic: &str, payload: &[u8]) {
        let name = match parse_topic(topic) {
            Ok(ParsedTopic::Command { name, .. }) => name,
            _ => return,
        };
        match messages::parse_command(&name, payload) {
            Ok(Command::Resync { session }) => {
                info!(
                    "resync requested for {}",
                    session.map_or("all sessions".into(), |s| s.to_string())
                );
                self.request_checkpoint(session);
            }
            Err(e) => {
                warn!("ignoring command on {topic}: {e}");
                self.update(|s| {
                    s.commands_rejected += 1;
                    s.last_error = Some(format!("command on {topic}: {e}"));
                });
            }
        }
    }

    fn request_checkpoint(&self, session: Option<uuid::Uuid>) {
        if self
            .up
            .registry
            .try_send(RegistryCommand::Checkpoint { session })
            .is_err()
        {
            warn!("registry busy; checkpoint request dropped (the next one will follow)");
        }
    }

    /// Publishes the retained `offline` status and disconnects, bounded.
    async fn say_offline(&mut self, client: &AsyncClient, el: &mut EventLoop) {
        let Ok(topic) = status_topic(&self.up.rae_id) else {
            return;
        };
        let payload = messages::status_payload("offline", &self.up.birth, crate::timefmt::now_ms());
        if client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
        info!("published offline status");
    }

    fn update(&self, f: impl FnOnce(&mut UplinkStatus)) {
        self.up.update(f);
    }
}

fn describe(e: &rumqttc::ConnectionError) -> String {
    let text = match e {
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            return format!("broker refused the connection: {code:?}");
        }
        other => other.to_string(),
    };
    // With TLS 1.3 a broker's refusal of our client certificate arrives
    // while waiting for CONNACK, so rumqttc reports it as a read error.
    let hint = if text.contains("CertificateRequired") {
        Some("the broker requires a client certificate: set mqtt.client_cert_file and mqtt.client_key_file")
    } else if text.contains("alert")
        && (text.contains("BadCertificate") || text.contains("UnknownCA"))
    {
        Some("the broker rejected our client certificate")
    } else {
        None
    };
    match hint {
        Some(h) => format!("{h} ({text})"),
        None => text,
    }
}

impl Drop for Connection<'_> {
    /// Whatever way the connection ends, acknowledged events are marked.
    fn drop(&mut self) {
        self.flush_acked();
    }
}

/// The pending fetch's result; pends forever when there is none.
async fn join_fetch(fetch: &mut Option<Fetch>) -> Result<Fetched, oneshot::error::RecvError> {
    match fetch.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
