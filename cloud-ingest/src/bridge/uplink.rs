//! [`Uplink`]: MQTT → Kafka. Takes messages from the [`super::mqtt::Reader`]
//! while [`InFlight`] has room, produces them, and acks each one only after
//! Kafka confirmed it (see `inflight.rs` for ordering and retries).
//!
//! Producer replacement: [`ProducerHealth`] watches the current
//! producer's delivery outcomes; when it says so (lost idempotence state,
//! or timeouts in a row) a new producer is built, the old one is purged and
//! dropped off the runtime, and every unacked message is produced again in
//! receive order ([`InFlight::fail_all`]). Nothing is acked in between that
//! the new producer has not confirmed.
//!
//! Shutdown: stop taking new messages (the ones the reader still hands over
//! are dropped unacked, so the broker keeps them in our session), wait for
//! the in-flight ones up to the drain deadline, write the acks and a
//! DISCONNECT, return.

use super::health::{self, ProducerHealth, Verdict};
use super::inflight::{Admit, InFlight};
use super::kafka::{self, QuietContext};
use super::mqtt::{self, MqttEvent};
use super::record::{self, Destination, Meta, Route};
use super::BridgeMetrics;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rumqttc::{AsyncClient, Publish, QoS};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One message waiting for Kafka.
#[derive(Debug)]
pub struct Pending {
    destination: Destination,
    payload: Vec<u8>,
    meta: Meta,
    /// For a dead letter: (`error_kind`, `error`).
    error: Option<(&'static str, String)>,
}

impl super::inflight::Weigh for Pending {
    fn bytes(&self) -> usize {
        self.payload.len()
    }
}

/// Payload bytes in flight at most (past the first message): with
/// `mqtt.max_in_flight` messages of up to Kafka's ~1 MB record limit the
/// count bound alone would allow about a gigabyte.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// A delivery outcome: entry id, attempt, and the error (its librdkafka
/// code if any).
type Report = (u64, u32, Result<(), DeliveryError>);

#[derive(Debug)]
struct DeliveryError {
    code: Option<RDKafkaErrorCode>,
    text: String,
}

impl DeliveryError {
    fn new(e: &KafkaError) -> DeliveryError {
        DeliveryError {
            code: e.rdkafka_error_code(),
            text: e.to_string(),
        }
    }
}

/// The MQTT → Kafka task.
#[allow(missing_debug_implementations)]
pub struct Uplink {
    pub client: AsyncClient,
    pub events: mpsc::Receiver<MqttEvent>,
    pub producer: FutureProducer<QuietContext>,
    pub producer_properties: Vec<(String, String)>,
    pub events_topic: String,
    pub status_topic: String,
    /// Where messages too large for a record leave a dead letter.
    pub dlq_topic: String,
    /// The producer's `message.max.bytes` ([`crate::kafka_props::record_limit`]).
    pub max_record_bytes: usize,
    pub share_group: String,
    pub max_in_flight: usize,
    pub drain: Duration,
    pub metrics: BridgeMetrics,
    pub shutdown: watch::Receiver<bool>,
}

struct Run {
    inflight: InFlight<Pending>,
    deliveries: JoinSet<Report>,
    health: ProducerHealth,
    epoch: Instant,
}

impl Uplink {
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut run = Run {
            inflight: InFlight::new(self.max_in_flight).max_bytes(MAX_IN_FLIGHT_BYTES),
            deliveries: JoinSet::new(),
            health: ProducerHealth::new(),
            epoch: Instant::now(),
        };
        let mut stopping: Option<Instant> = None;
        loop {
            let take = stopping.is_none() && run.inflight.has_room();
            let next_due = run
                .inflight
                .next_due_ms()
                .map(|ms| run.epoch + Duration::from_millis(ms));
            tokio::select! {
                biased;
                _ = self.shutdown.changed(), if stopping.is_none() => {
                    log::info!(
                        "uplink: stopping; draining {} in-flight message(s) for up to {:?}",
                        run.inflight.len(), self.drain
                    );
                    stopping = Some(Instant::now() + self.drain);
                }
                Some(report) = run.deliveries.join_next(), if !run.deliveries.is_empty() => {
                    match report {
                        Ok(report) => self.on_report(&mut run, report),
                        // Cannot happen short of a panic; its message would
                        // stay unconfirmed forever and hold every ack behind
                        // it, so stop: the broker redelivers what is unacked.
                        Err(e) => anyhow::bail!(
                            "uplink: a delivery task failed ({e}); stopping so that the broker \
                             redelivers every unacknowledged message"
                        ),
                    }
                }
                _ = sleep_until(next_due), if next_due.is_some() => {
                    let now = run.now_ms();
                    for (id, attempt) in run.inflight.due(now) {
                        self.produce(&mut run, id, attempt);
                    }
                }
                _ = sleep_until(stopping), if stopping.is_some() => {
                    log::warn!(
                        "uplink: drain deadline passed with {} message(s) unconfirmed; \
                         they stay unacked and the broker redelivers them",
                        run.inflight.len()
                    );
                    break;
                }
                event = self.events.recv(), if take || stopping.is_some() => {
                    let Some(event) = event else { break };
                    self.on_mqtt(&mut run, event, stopping.is_some())?;
                }
            }
            self.metrics.in_flight.set(run.inflight.len() as i64);
            if stopping.is_some() && run.inflight.is_empty() {
                break;
            }
        }
        self.disconnect().await;
        Ok(())
    }

    fn on_mqtt(&mut self, run: &mut Run, event: MqttEvent, stopping: bool) -> anyhow::Result<()> {
        match event {
            MqttEvent::Connected { session_present } => {
                let connection = run.inflight.new_connection();
                self.metrics.mqtt_connections.inc();
                log::info!(
                    "uplink: connected to MQTT (connection {connection}, session present: {session_present})"
                );
                if !session_present {
                    mqtt::subscribe(&self.client, &self.share_group)?;
                }
            }
            MqttEvent::Lost { error, retry_in } => {
                log::warn!("uplink: MQTT connection lost: {error}; retrying in {retry_in:?}");
            }
            MqttEvent::Disconnected => {}
            MqttEvent::Publish(_) if stopping => {}
            MqttEvent::Publish(p) => self.on_publish(run, p),
        }
        Ok(())
    }

    fn on_publish(&mut self, run: &mut Run, p: Publish) {
        self.metrics.messages_in.inc();
        let route = record::route(&p.topic, p.payload.len(), self.max_record_bytes);
        let pkid = (p.qos != QoS::AtMostOnce).then_some(p.pkid);
        let meta = Meta {
            qos: p.qos as u8,
            retain: p.retain,
            received_at_ms: i64::try_from(rae_protocol::time::now_ms()).unwrap_or(i64::MAX),
        };
        let (destination, record, error) = match route {
            Route::Produce(d) => (d, true, None),
            Route::Skip(why) => {
                self.metrics.skipped.inc();
                log::debug!("uplink: no record for {} ({why:?})", p.topic);
                (Destination::Events, false, None)
            }
            Route::TooLarge { max_record_bytes } => {
                self.metrics.too_large.inc();
                let why = format!(
                    "the MQTT payload of {} bytes on {} does not fit a Kafka record of at most \
                     {max_record_bytes} bytes (message.max.bytes)",
                    p.payload.len(),
                    p.topic
                );
                log::error!(
                    "uplink: {why}; a dead letter naming it goes to {} instead",
                    self.dlq_topic
                );
                (Destination::DeadLetter, true, Some(("too_large", why)))
            }
        };
        let payload = if error.is_some() {
            Vec::new()
        } else {
            p.payload.into()
        };
        let pending = Pending {
            destination,
            payload,
            meta,
            error,
        };
        match run.inflight.push(&p.topic, pkid, record, pending) {
            Admit::ProduceNow(id) => self.produce(run, id, 0),
            Admit::Held(_) => {}
            Admit::NoRecord(_) => self.release(run),
        }
    }

    fn produce(&mut self, run: &mut Run, id: u64, attempt: u32) {
        if !run.inflight.is_producing(id, attempt) {
            // Rescheduled meanwhile (the producer was replaced).
            return;
        }
        let Some((key, pending)) = run.inflight.get(id) else {
            return;
        };
        let topic = match pending.destination {
            Destination::Events => &self.events_topic,
            Destination::Status => &self.status_topic,
            Destination::DeadLetter => &self.dlq_topic,
        };
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (name, value) in record::headers(key, &pending.meta) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        if let Some((kind, text)) = &pending.error {
            headers = headers
                .insert(Header {
                    key: record::HEADER_ERROR,
                    value: Some(text.as_bytes()),
                })
                .insert(Header {
                    key: record::HEADER_ERROR_KIND,
                    value: Some(kind.as_bytes()),
                });
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(&pending.payload)
            .headers(headers)
            .timestamp(pending.meta.received_at_ms);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                run.deliveries.spawn(async move {
                    let result = match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, _))) => Err(DeliveryError::new(&e)),
                        Err(_) => Err(DeliveryError {
                            code: None,
                            text: "the producer was dropped".to_string(),
                        }),
                    };
                    (id, attempt, result)
                });
            }
            Err((e, _)) => {
                // Queue full or a fatal producer: a failed attempt, retried.
                let now = run.now_ms();
                self.failed(run, id, attempt, now, DeliveryError::new(&e));
            }
        }
    }

    fn on_report(&mut self, run: &mut Run, (id, attempt, result): Report) {
        match result {
            Ok(()) => {
                if run.inflight.delivered(id, attempt) {
                    run.health.delivered();
                    self.metrics.messages_out.inc();
                    self.release(run);
                }
            }
            Err(e) => {
                let now = run.now_ms();
                self.failed(run, id, attempt, now, e);
            }
        }
    }

    fn failed(&mut self, run: &mut Run, id: u64, attempt: u32, now: u64, error: DeliveryError) {
        if !run.inflight.failed(id, attempt, now) {
            return;
        }
        self.metrics.delivery_failures.inc();
        let key = run.inflight.get(id).map(|(k, _)| k).unwrap_or_default();
        log::warn!(
            "uplink: Kafka delivery failed for {key} (attempt {}): {}; retrying it and \
             later messages of its topic in order",
            attempt + 1,
            error.text
        );
        let fatal = self.producer.client().fatal_error();
        if let Some((code, reason)) = &fatal {
            log::error!("uplink: the Kafka producer hit a fatal error ({code:?}: {reason})");
        }
        let verdict = run
            .health
            .failed(health::classify(error.code), fatal.is_some());
        if verdict == Verdict::Replace {
            self.replace_producer(run, now);
        }
    }

    /// Builds a new producer, drops the old one off the runtime (its drop
    /// purges its queues and joins its thread, which may block briefly) and
    /// schedules every unacked message again, in receive order.
    fn replace_producer(&mut self, run: &mut Run, now: u64) {
        let fresh = kafka::client_config(&self.producer_properties)
            .create_with_context::<_, FutureProducer<QuietContext>>(QuietContext::default());
        match fresh {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.producer, fresh);
                tokio::task::spawn_blocking(move || drop(old));
                run.health.replaced();
                run.inflight
                    .fail_all(now.saturating_add(super::inflight::RETRY_FIRST_MS));
                self.metrics.producer_replacements.inc();
                log::warn!(
                    "uplink: replaced the Kafka producer (replacement {}; the broker no longer \
                     accepts the old one's records); producing the {} unacked message(s) again \
                     in order",
                    run.health.replacements(),
                    run.inflight.len()
                );
            }
            Err(e) => log::error!(
                "uplink: cannot create a new Kafka producer: {e}; keeping the old one and \
                 trying again on the next failure"
            ),
        }
    }

    fn release(&mut self, run: &mut Run) {
        for ack in run.inflight.release() {
            let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new());
            p.pkid = ack.pkid;
            match self.client.try_ack(&p) {
                Ok(()) => self.metrics.acks.inc(),
                Err(e) => log::warn!(
                    "uplink: cannot queue the PUBACK of packet {}: {e}; the broker redelivers it",
                    ack.pkid
                ),
            }
        }
    }

    /// Writes the queued acks and a DISCONNECT (bounded).
    async fn disconnect(&mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(event) = self.events.recv().await {
                if matches!(event, MqttEvent::Disconnected | MqttEvent::Lost { .. }) {
                    break;
                }
            }
        })
        .await;
    }
}

impl Run {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
