//! The uplink's MQTT connection: options (TLS for `mqtts://`),
//! subscriptions and the [`Reader`] task that owns rumqttc's event loop.
//!
//! TLS: the rustls configuration is built from `[mqtt]`'s files (already
//! checked when the config was loaded). Should that fail later (a file
//! removed since), the connection gets a TLS configuration without a CA,
//! which rumqttc refuses on every attempt (logged, retried) — never plain
//! TCP.
//!
//! Session: `clean_session = false` with a stable client id. With QoS 1 the
//! broker then keeps the subscription and queues messages while the bridge
//! is down or restarting, and redelivers the ones it sent but never saw
//! acked; a clean session would make the broker drop everything published
//! while no member of the share group is connected. The price: the client
//! id must be stable per bridge instance (see `mqtt.client_id`) and a
//! session whose bridge never returns keeps its queued share of messages
//! (until the broker's `persistent_client_expiration`, if set).
//!
//! Back-pressure: the reader hands each event over a channel of one slot
//! and waits there while the uplink has no room; while it waits it does not
//! poll the event loop, so nothing more is read from the socket and the
//! broker's own in-flight window (mosquitto: `max_inflight_messages`,
//! default 20) fills and the broker queues the rest. Acks go through
//! rumqttc's request channel and are written on the next poll.

use crate::config::MqttSettings;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use std::time::Duration;
use tokio::sync::mpsc;

/// Capacity of rumqttc's request channel on the uplink connection (the
/// PUBACKs go through it). rumqttc writes at most one request per poll and
/// returns every buffered incoming packet first, so after a burst (e.g.
/// the backlog of a Kafka outage) acks can pile up faster than they are
/// written; a full channel would make `try_ack` fail and leave the message
/// unacked until the next reconnect, and the broker's window with it. Each
/// queued ack names a distinct packet id the broker still awaits on the
/// connection, so 65,535 (the packet id space) plus room for the
/// subscriptions is always enough. flume allocates as it fills.
pub const REQUEST_CAPACITY: usize = 65_535 + 16;

/// What the reader tells the uplink, in connection order.
#[derive(Debug)]
pub enum MqttEvent {
    /// A CONNACK; the subscriptions are (re)made when the session is new.
    Connected {
        session_present: bool,
    },
    Publish(Publish),
    /// The connection failed or dropped; the reader retries after `retry_in`.
    Lost {
        error: String,
        retry_in: Duration,
    },
    /// Our DISCONNECT was written: the reader has stopped.
    Disconnected,
}

/// The two subscription filters.
pub fn filters(share_group: &str) -> [String; 2] {
    [
        format!("$share/{share_group}/rae/v1/+/devices/+"),
        "rae/v1/+/status".to_string(),
    ]
}

/// The largest MQTT packet the bridge reads. A message above the Kafka
/// record limit but below this becomes a dead letter (`record.rs`); a
/// larger packet breaks the connection, and the broker sends it again
/// after every reconnect, so the broker's `message_size_limit` must stay
/// below this (docs/CLOUD.md). Read into memory one at a time.
pub const MAX_INCOMING_PACKET_BYTES: usize = 16 << 20;

/// The uplink's options: manual acks, persistent session.
pub fn options(s: &MqttSettings, client_id: &str, clean_session: bool) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, &s.host, s.port);
    o.set_keep_alive(Duration::from_secs(s.keepalive_secs))
        .set_clean_session(clean_session)
        .set_manual_acks(true)
        .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, 1 << 20)
        // Outgoing QoS 1 window: only the downlink publishes.
        .set_inflight(16);
    if let Some((user, password)) = &s.credentials {
        o.set_credentials(user, password);
    }
    if let Some(tls) = &s.tls {
        let config = match tls.client_config() {
            Ok(config) => rumqttc::TlsConfiguration::Rustls(config),
            Err(e) => {
                log::error!(
                    "mqtt: TLS files cannot be loaded ({e}); every connection will fail \
                     until they are fixed and the bridge restarted"
                );
                // No CA: rumqttc refuses each connection (NoValidCertInChain).
                rumqttc::TlsConfiguration::Simple {
                    ca: Vec::new(),
                    alpn: None,
                    client_auth: None,
                }
            }
        };
        o.set_transport(rumqttc::Transport::Tls(config));
    }
    o
}

/// A connection error as logged: rumqttc's text, prefixed with what to do
/// when it is a recognisable TLS failure.
pub fn describe(e: &rumqttc::ConnectionError) -> String {
    let text = e.to_string();
    match rae_tls::hint(&text, "mqtt.client_cert_file and mqtt.client_key_file") {
        Some(h) => format!("{h} ({text})"),
        None => text,
    }
}

/// Subscribes both filters at QoS 1 (queued; written by the event loop).
pub fn subscribe(client: &AsyncClient, share_group: &str) -> Result<(), rumqttc::ClientError> {
    for filter in filters(share_group) {
        client.try_subscribe(filter, QoS::AtLeastOnce)?;
    }
    Ok(())
}

/// Reconnect delay after `failures` consecutive failures: 0.5 s doubling up
/// to `max`.
pub fn reconnect_delay(failures: u32, max: Duration) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1u32 << failures.min(16))
        .min(max)
}

/// Owns the event loop; see the module docs.
#[allow(missing_debug_implementations)]
pub struct Reader {
    pub eventloop: EventLoop,
    pub tx: mpsc::Sender<MqttEvent>,
    pub reconnect_max: Duration,
}

impl Reader {
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let event = match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    MqttEvent::Connected {
                        session_present: ack.session_present,
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => MqttEvent::Publish(p),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    let _ = self.tx.send(MqttEvent::Disconnected).await;
                    return;
                }
                Ok(_) => continue,
                Err(e) => {
                    let retry_in = reconnect_delay(failures, self.reconnect_max);
                    failures = failures.saturating_add(1);
                    if self
                        .tx
                        .send(MqttEvent::Lost {
                            error: describe(&e),
                            retry_in,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(retry_in).await;
                    continue;
                }
            };
            if self.tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_the_shared_device_filter_and_the_status_filter() {
        assert_eq!(
            filters("g1"),
            [
                "$share/g1/rae/v1/+/devices/+".to_string(),
                "rae/v1/+/status".to_string()
            ]
        );
    }

    fn mqtt_settings(toml: &str) -> MqttSettings {
        crate::config::parse(toml, std::path::Path::new("test.toml"))
            .expect("valid")
            .mqtt
    }

    #[test]
    fn mqtts_gets_a_tls_transport_even_when_its_files_cannot_be_loaded() {
        let plain = mqtt_settings("[mqtt]\nbroker = \"mqtt://b\"\n");
        assert!(matches!(
            options(&plain, "c", false).transport(),
            rumqttc::Transport::Tcp
        ));
        // Validation does not read files; here they do not exist.
        let tls =
            mqtt_settings("[mqtt]\nbroker = \"mqtts://b\"\nca_file = \"/nonexistent/ca.pem\"\n");
        match options(&tls, "c", false).transport() {
            rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple { ca, .. }) => {
                assert!(ca.is_empty())
            }
            _ => panic!("not the CA-less TLS transport"),
        }
    }

    #[test]
    fn reconnect_delay_doubles_up_to_the_maximum() {
        let max = Duration::from_secs(30);
        assert_eq!(reconnect_delay(0, max), Duration::from_millis(500));
        assert_eq!(reconnect_delay(1, max), Duration::from_secs(1));
        assert_eq!(reconnect_delay(5, max), Duration::from_secs(16));
        assert_eq!(reconnect_delay(6, max), max);
        assert_eq!(reconnect_delay(u32::MAX, max), max);
    }
}
