//! [`Downlink`]: Kafka → MQTT commands. Consumes `kafka.commands_topic` in
//! the consumer group `kafka.bridge_group` and publishes each record at
//! QoS 1 to `rae/v1/{rae_id}/commands/{name}` on its own MQTT connection
//! (client id `{mqtt.client_id}-commands`), so commands still flow while
//! the uplink is back-pressured.
//!
//! Record layout (docs/PROTOCOL.md, "Kafka records"): key = `rae_id`,
//! header `command` = command name, value = the command's MQTT payload
//! (absent = empty).
//!
//! Invariants: one command at a time; its offset is stored only after its
//! PUBACK (auto-commit then commits stored offsets; shutdown commits
//! synchronously), so a crash redelivers it (agents treat commands as
//! at-least-once). A record that names no valid target is logged, counted
//! and skipped (its offset stored): it could never be delivered, and must
//! not stall the partition.

use super::mqtt::reconnect_delay;
use super::BridgeMetrics;
use rae_protocol::topic::command_topic;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The header naming the command.
pub const HEADER_COMMAND: &str = "command";
/// How long shutdown waits for the PUBACK of the command being published.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Why a command record cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the record has no key (the rae_id)")]
    NoKey,
    #[error("the record has no `command` header (the command name)")]
    NoName,
    #[error("the key or the `command` header is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Topic(#[from] rae_protocol::topic::TopicError),
}

/// The MQTT topic of a command record (pure).
pub fn command_target(key: Option<&[u8]>, name: Option<&[u8]>) -> Result<String, CommandError> {
    let rae_id =
        std::str::from_utf8(key.ok_or(CommandError::NoKey)?).map_err(|_| CommandError::NotUtf8)?;
    let name = std::str::from_utf8(name.ok_or(CommandError::NoName)?)
        .map_err(|_| CommandError::NotUtf8)?;
    Ok(command_topic(rae_id, name)?)
}

/// The command being published.
#[derive(Debug)]
struct Current {
    topic: String,
    partition: i32,
    offset: i64,
    /// Packet ids rumqttc used for it (a reconnect resends it).
    pkids: Vec<u16>,
}

/// The Kafka → MQTT task.
#[allow(missing_debug_implementations)]
pub struct Downlink {
    pub consumer: StreamConsumer<super::kafka::QuietContext>,
    pub commands_topic: String,
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub reconnect_max: Duration,
    pub metrics: BridgeMetrics,
    pub shutdown: watch::Receiver<bool>,
}

impl Downlink {
    pub async fn run(mut self) -> anyhow::Result<()> {
        self.consumer
            .subscribe(&[&self.commands_topic])
            .map_err(|e| anyhow::anyhow!("subscribing to {}: {e}", self.commands_topic))?;
        let mut current: Option<Current> = None;
        let mut paused_until: Option<Instant> = None;
        let mut failures = 0u32;
        let mut stop_at: Option<Instant> = None;
        loop {
            if stop_at.is_some() && current.is_none() {
                break;
            }
            tokio::select! {
                biased;
                _ = self.shutdown.changed(), if stop_at.is_none() => {
                    stop_at = Some(Instant::now() + SHUTDOWN_WAIT);
                }
                _ = sleep_until(stop_at), if stop_at.is_some() => {
                    log::warn!("downlink: stopping without the PUBACK of the current command; it is redelivered");
                    break;
                }
                _ = sleep_until(paused_until), if paused_until.is_some() => paused_until = None,
                event = self.eventloop.poll(), if paused_until.is_none() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        log::info!("downlink: connected to MQTT");
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(c) = current.as_mut() {
                            c.pkids.push(pkid);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if current.as_ref().is_some_and(|c| c.pkids.contains(&ack.pkid)) {
                            if let Some(c) = current.take() {
                                self.metrics.commands_out.inc();
                                self.store(&c.topic, c.partition, c.offset);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let delay = reconnect_delay(failures, self.reconnect_max);
                        failures = failures.saturating_add(1);
                        log::warn!("downlink: MQTT connection lost: {e}; retrying in {delay:?}");
                        paused_until = Some(Instant::now() + delay);
                    }
                },
                message = self.consumer.recv(), if current.is_none() && stop_at.is_none() => {
                    match message {
                        Ok(m) => current = self.on_record(&m),
                        Err(e) => {
                            log::warn!("downlink: Kafka consumer error: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            log::debug!("downlink: final offset commit: {e}");
        }
        if self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.eventloop.poll()).await;
        }
        Ok(())
    }

    fn on_record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Current> {
        self.metrics.commands_in.inc();
        let name = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == HEADER_COMMAND)
                .and_then(|h| h.value)
        });
        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
        let target = match command_target(m.key(), name) {
            Ok(t) => t,
            Err(e) => {
                self.metrics.commands_rejected.inc();
                log::error!("downlink: skipping command record {topic}/{partition}@{offset}: {e}");
                self.store(&topic, partition, offset);
                return None;
            }
        };
        let payload = m.payload().unwrap_or_default().to_vec();
        if let Err(e) = self
            .client
            .try_publish(&target, QoS::AtLeastOnce, false, payload)
        {
            // Only if rumqttc's request queue is gone: retried from Kafka
            // after a restart (offset not stored).
            log::error!("downlink: cannot queue the command for {target}: {e}");
            return None;
        }
        log::debug!("downlink: publishing {target} ({topic}/{partition}@{offset})");
        Some(Current {
            topic,
            partition,
            offset,
            pkids: Vec::new(),
        })
    }

    fn store(&self, topic: &str, partition: i32, offset: i64) {
        if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
            log::warn!(
                "downlink: cannot store offset {offset} of {topic}/{partition} (revoked?): {e}; \
                 the command may be delivered again"
            );
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_record_maps_to_the_agents_command_topic() {
        assert_eq!(
            command_target(Some(b"box-1"), Some(b"resync")).unwrap(),
            "rae/v1/box-1/commands/resync"
        );
    }

    #[test]
    fn records_without_a_valid_target_are_refused_with_a_reason() {
        assert_eq!(
            command_target(None, Some(b"resync")),
            Err(CommandError::NoKey)
        );
        assert_eq!(command_target(Some(b"b"), None), Err(CommandError::NoName));
        assert_eq!(
            command_target(Some(&[0xff]), Some(b"resync")),
            Err(CommandError::NotUtf8)
        );
        let e = command_target(Some(b"a/b"), Some(b"resync")).unwrap_err();
        assert!(e.to_string().contains("rae_id"), "{e}");
        let e = command_target(Some(b"b"), Some(b"#")).unwrap_err();
        assert!(e.to_string().contains("command name"), "{e}");
    }
}
