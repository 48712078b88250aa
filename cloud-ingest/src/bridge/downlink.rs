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
//! Invariants: one command at a time; its offset is stored and committed
//! (asynchronously) only after its PUBACK, and shutdown commits the stored
//! offsets synchronously, so a crash redelivers it (agents treat commands
//! as at-least-once). Nothing else commits: no auto-commit, whose timer
//! and lost-assignment commits would send, after a broker restart that
//! lost the log, the old log's position to the new broker, which then
//! hands that position to the rejoined group and the new log's first
//! commands are never read (seen with memory Tansu, which accepts a commit
//! from a member it does not know). The current command is never
//! skipped: its MQTT topic and payload are kept until its PUBACK, and it
//! is published again at each CONNACK that finds it lost, i.e. when the
//! broker kept no session (always with this clean-session connection;
//! rumqttc then drops its unacknowledged publishes) and the connection
//! dropped since it was handed to rumqttc, or when rumqttc refused it
//! (also retried after [`RETRY_DELAY`]). A record
//! that names no valid target is logged, counted and skipped (its offset
//! stored): it could never be delivered, and must not stall the partition.

use super::mqtt::reconnect_delay;
use super::BridgeMetrics;
use rae_protocol::topic::command_topic;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The header naming the command.
pub const HEADER_COMMAND: &str = "command";
/// How long shutdown waits for the PUBACK of the command being published.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// How long to wait before handing a command rumqttc refused to it again.
const RETRY_DELAY: Duration = Duration::from_millis(500);

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
    /// Its Kafka record.
    topic: String,
    partition: i32,
    offset: i64,
    /// Its MQTT topic and payload, kept to publish it again.
    target: String,
    payload: Vec<u8>,
    /// The connection-loss count ([`Downlink::run`]'s `losses`) when it was
    /// last handed to rumqttc; None while rumqttc refused it.
    queued_at: Option<u64>,
    /// Packet ids rumqttc sent it with: all kept, since a PUBACK for any of
    /// them is for this command (the only publish on this connection).
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
        let mut retry_at: Option<Instant> = None;
        let mut failures = 0u32;
        let mut stop_at: Option<Instant> = None;
        // Whether the last poll outcome was a CONNACK rather than an error.
        let mut connected = false;
        // Connections lost after their CONNACK: at each, rumqttc moves its
        // unacknowledged publishes and queued requests to a pending list
        // that it drops at the next CONNACK without `session_present`.
        let mut losses = 0u64;
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
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    retry_at = None;
                    if let Some(c) = current.as_mut().filter(|c| c.queued_at.is_none()) {
                        retry_at = self.publish(c, losses);
                    }
                }
                event = self.eventloop.poll(), if paused_until.is_none() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        failures = 0;
                        connected = true;
                        log::info!("downlink: connected to MQTT");
                        if let Some(c) = current.as_mut() {
                            if lost_at_connack(c.queued_at, ack.session_present, losses) {
                                log::info!(
                                    "downlink: publishing the command for {} ({}/{}@{}) again \
                                     after the reconnect",
                                    c.target, c.topic, c.partition, c.offset
                                );
                                retry_at = self.publish(c, losses);
                            }
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(c) = current.as_mut().filter(|c| !c.pkids.contains(&pkid)) {
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
                        if connected {
                            connected = false;
                            losses += 1;
                        }
                        let delay = reconnect_delay(failures, self.reconnect_max);
                        failures = failures.saturating_add(1);
                        log::warn!("downlink: MQTT connection lost: {e}; retrying in {delay:?}");
                        paused_until = Some(Instant::now() + delay);
                    }
                },
                message = self.consumer.recv(), if current.is_none() && stop_at.is_none() => {
                    match message {
                        Ok(m) => {
                            if let Some(mut c) = self.on_record(&m) {
                                retry_at = self.publish(&mut c, losses);
                                current = Some(c);
                            }
                        }
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
        Some(Current {
            topic,
            partition,
            offset,
            target,
            payload,
            queued_at: None,
            pkids: Vec::new(),
        })
    }

    /// Hands `c` to rumqttc (`losses`: see [`Downlink::run`]). If rumqttc
    /// refuses it (its request queue is full), it stays current and
    /// unqueued, and the returned instant is when to try again.
    fn publish(&self, c: &mut Current, losses: u64) -> Option<Instant> {
        match self
            .client
            .try_publish(&c.target, QoS::AtLeastOnce, false, c.payload.clone())
        {
            Ok(()) => {
                log::debug!(
                    "downlink: publishing {} ({}/{}@{})",
                    c.target,
                    c.topic,
                    c.partition,
                    c.offset
                );
                c.queued_at = Some(losses);
                None
            }
            Err(e) => {
                log::error!(
                    "downlink: cannot queue the command for {}: {e}; retrying in {RETRY_DELAY:?}",
                    c.target
                );
                c.queued_at = None;
                Some(Instant::now() + RETRY_DELAY)
            }
        }
    }

    /// Stores the offset after `offset` (for the shutdown commit) and
    /// commits it now, asynchronously (a failure is logged by the
    /// context; the command is then delivered again after a restart).
    fn store(&self, topic: &str, partition: i32, offset: i64) {
        if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
            log::warn!(
                "downlink: cannot store offset {offset} of {topic}/{partition} (revoked?): {e}; \
                 the command may be delivered again"
            );
            return;
        }
        let mut next = TopicPartitionList::new();
        let committed = next
            .add_partition_offset(topic, partition, Offset::Offset(offset + 1))
            .and_then(|()| self.consumer.commit(&next, CommitMode::Async));
        if let Err(e) = committed {
            log::warn!(
                "downlink: cannot commit offset {} of {topic}/{partition}: {e}; \
                 the command may be delivered again",
                offset + 1
            );
        }
    }
}

/// Whether the current command must be handed to rumqttc again at a
/// CONNACK (pure): rumqttc refused it (`queued_at` None), or the broker kept
/// no session and a connection was lost since it was queued (rumqttc then
/// moved it to its pending list, dropped at this CONNACK). A command queued
/// since the last loss is still in rumqttc's request queue and goes out now.
fn lost_at_connack(queued_at: Option<u64>, session_present: bool, losses: u64) -> bool {
    queued_at.is_none_or(|at| !session_present && at < losses)
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
    fn a_command_is_published_again_only_when_the_reconnect_lost_it() {
        // Refused by rumqttc: always retried.
        assert!(lost_at_connack(None, true, 0));
        assert!(lost_at_connack(None, false, 0));
        // Queued before a lost connection, new session: dropped by rumqttc.
        assert!(lost_at_connack(Some(0), false, 1));
        // Session kept: rumqttc resends it itself.
        assert!(!lost_at_connack(Some(0), true, 1));
        // Queued while disconnected: still in the request queue.
        assert!(!lost_at_connack(Some(1), false, 1));
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
