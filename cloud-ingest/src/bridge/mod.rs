//! The `bridge` subcommand: MQTT → Kafka (uplink) and Kafka → MQTT
//! commands (downlink). [`run`] wires the tasks; each owns its state:
//!
//! - [`mqtt::Reader`]: rumqttc's event loop of the uplink connection;
//! - [`uplink::Uplink`]: produces each message, acks it after Kafka's
//!   delivery report ([`inflight`] bounds and orders them; [`record`] maps
//!   a message to a record; [`health`] says when to replace the producer);
//! - [`downlink::Downlink`]: publishes commands, stores the offset after
//!   the PUBACK;
//! - the `/metrics` endpoint.
//!
//! Shutdown (SIGTERM/SIGINT): a broadcast stops reading; the uplink drains
//! its in-flight messages for up to [`DRAIN_DEADLINE`]; exit 0.

pub mod downlink;
pub mod health;
pub mod inflight;
pub mod kafka;
pub mod mqtt;
pub mod record;
pub mod uplink;

use crate::config::Settings;
use crate::metrics::{self, Metrics, Value};
use anyhow::Context;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureProducer;
use rumqttc::AsyncClient;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long shutdown waits for Kafka to confirm in-flight messages.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The bridge's metrics (served at `metrics.bridge_listen`).
#[derive(Debug, Clone)]
pub struct BridgeMetrics {
    pub messages_in: Value,
    pub messages_out: Value,
    pub skipped: Value,
    pub too_large: Value,
    pub in_flight: Value,
    pub delivery_failures: Value,
    pub producer_replacements: Value,
    pub acks: Value,
    pub mqtt_connections: Value,
    pub commands_in: Value,
    pub commands_out: Value,
    pub commands_rejected: Value,
}

impl BridgeMetrics {
    pub fn new(m: &Metrics) -> BridgeMetrics {
        BridgeMetrics {
            messages_in: m.counter(
                "rae_bridge_messages_in_total",
                "MQTT messages received on the uplink.",
            ),
            messages_out: m.counter(
                "rae_bridge_messages_out_total",
                "Kafka records confirmed by the broker (retries count once each).",
            ),
            skipped: m.counter(
                "rae_bridge_messages_skipped_total",
                "MQTT messages acked without a record (empty retained clears).",
            ),
            too_large: m.counter(
                "rae_bridge_messages_too_large_total",
                "MQTT messages too large for a Kafka record (a dead letter names each).",
            ),
            in_flight: m.gauge(
                "rae_bridge_in_flight",
                "MQTT messages received and not yet acked.",
            ),
            delivery_failures: m.counter(
                "rae_bridge_delivery_failures_total",
                "Failed Kafka deliveries (each is retried).",
            ),
            producer_replacements: m.counter(
                "rae_bridge_producer_replacements_total",
                "Kafka producers replaced (lost idempotence state or timeouts in a row).",
            ),
            acks: m.counter("rae_bridge_mqtt_acks_total", "PUBACKs sent by the uplink."),
            mqtt_connections: m.counter(
                "rae_bridge_mqtt_connections_total",
                "MQTT connections of the uplink (CONNACKs).",
            ),
            commands_in: m.counter(
                "rae_bridge_commands_in_total",
                "Command records consumed from Kafka.",
            ),
            commands_out: m.counter(
                "rae_bridge_commands_out_total",
                "Commands published to MQTT and acknowledged.",
            ),
            commands_rejected: m.counter(
                "rae_bridge_commands_rejected_total",
                "Command records without a valid target, skipped.",
            ),
        }
    }
}

/// Runs the bridge until SIGTERM/SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let bridge_metrics = BridgeMetrics::new(&metrics);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(addr) = settings.metrics.bridge_listen {
        let listener = metrics::bind(addr).await?;
        log::info!("bridge: serving /metrics on {addr}");
        tokio::spawn(metrics::serve(listener, metrics.clone(), stop_rx.clone()));
    }

    let k = &settings.kafka;
    let producer_properties = kafka::producer_properties(k);
    let producer_config = kafka::client_config(&producer_properties);
    let max_record_bytes = crate::kafka_props::record_limit(&producer_config);
    let producer: FutureProducer<kafka::QuietContext> = producer_config
        .create_with_context(kafka::QuietContext::default())
        .context("creating the Kafka producer (check [kafka.properties])")?;
    let consumer: StreamConsumer<kafka::QuietContext> =
        kafka::client_config(&kafka::consumer_properties(k))
            .create_with_context(kafka::QuietContext::default())
            .context("creating the Kafka command consumer (check [kafka.properties])")?;

    let m = &settings.mqtt;
    let max_in_flight = usize::from(m.max_in_flight);
    let reconnect_max = Duration::from_secs(m.reconnect_max_backoff_secs);
    let (client, eventloop) = AsyncClient::new(
        mqtt::options(m, &m.client_id, false),
        mqtt::REQUEST_CAPACITY,
    );
    let (events_tx, events_rx) = mpsc::channel(1);
    tasks.spawn(async move {
        mqtt::Reader {
            eventloop,
            tx: events_tx,
            reconnect_max,
        }
        .run()
        .await;
        Ok(())
    });
    tasks.spawn(
        uplink::Uplink {
            client,
            events: events_rx,
            producer,
            producer_properties,
            events_topic: k.events_topic.clone(),
            status_topic: k.status_topic.clone(),
            dlq_topic: k.dlq_topic.clone(),
            max_record_bytes,
            share_group: m.share_group.clone(),
            max_in_flight,
            drain: DRAIN_DEADLINE,
            metrics: bridge_metrics.clone(),
            shutdown: stop_rx.clone(),
        }
        .run(),
    );
    let (cmd_client, cmd_eventloop) = AsyncClient::new(
        mqtt::options(m, &format!("{}-commands", m.client_id), true),
        16,
    );
    tasks.spawn(
        downlink::Downlink {
            consumer,
            commands_topic: k.commands_topic.clone(),
            client: cmd_client,
            eventloop: cmd_eventloop,
            reconnect_max,
            metrics: bridge_metrics,
            shutdown: stop_rx,
        }
        .run(),
    );
    log::info!(
        "bridge: {} → {} / {}; commands {} → MQTT; client id {}",
        m.broker_url,
        k.events_topic,
        k.status_topic,
        k.commands_topic,
        m.client_id
    );

    let mut first_error = None;
    tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            log::info!("bridge: shutting down");
        }
        Some(done) = tasks.join_next() => {
            first_error = Some(task_error(done));
        }
    }
    let _ = stop_tx.send(true);
    let deadline = DRAIN_DEADLINE + Duration::from_secs(5);
    let drained = tokio::time::timeout(deadline, async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = task_error(done) {
                log::error!("bridge: {e:#}");
            }
        }
    })
    .await;
    if drained.is_err() {
        log::warn!("bridge: tasks still running after {deadline:?}; exiting anyway");
    }
    match first_error {
        Some(Err(e)) => Err(e),
        Some(Ok(())) => Err(anyhow::anyhow!("a bridge task ended on its own")),
        None => Ok(()),
    }
}

fn task_error(done: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match done {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("a bridge task panicked: {e}")),
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
