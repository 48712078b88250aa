//! MQTT message → Kafka record: which topic, which key, which headers.
//! Pure; the uplink task does the I/O.
//!
//! Invariants:
//! - the record key is the MQTT topic, byte for byte, so every message of
//!   one device session lands in one partition, in order;
//! - the record value is the MQTT payload, untouched (never decoded here:
//!   the registry decides what is garbage and dead-letters it);
//! - an empty payload (the agent's retained-clear after `detached`, see
//!   docs/PROTOCOL.md 1.4) produces no record, but is still acknowledged;
//! - a topic outside the two subscribed layouts produces no record (it
//!   cannot arrive through the bridge's filters; counted if it ever does);
//! - a message too large for a Kafka record (`message.max.bytes`) produces
//!   a dead letter instead: a record on `kafka.dlq_topic` with the same key
//!   and headers plus `error`/`error_kind`, and no value. It is acked once
//!   that record is confirmed, so it neither blocks the bridge nor vanishes
//!   without a trace.

/// Header: the MQTT topic the message arrived on (UTF-8).
pub const HEADER_TOPIC: &str = "mqtt_topic";
/// Header: the QoS it arrived with, `"0"`, `"1"` or `"2"`.
pub const HEADER_QOS: &str = "mqtt_qos";
/// Header: `"true"` if the broker flagged it retained, else `"false"`.
pub const HEADER_RETAIN: &str = "mqtt_retain";
/// Header: when the bridge received it, ms since the Unix epoch (decimal).
/// The record timestamp is the same instant.
pub const HEADER_RECEIVED_AT: &str = "received_at_ms";

/// Header on a bridge dead letter: why, as text.
pub const HEADER_ERROR: &str = "error";
/// Header on a bridge dead letter: why, as a word (`too_large`).
pub const HEADER_ERROR_KIND: &str = "error_kind";
/// What a record needs besides its key and value, bounded generously:
/// the four headers above (~90 bytes) and librdkafka's per-message
/// framing, which `message.max.bytes` counts too.
pub const RECORD_OVERHEAD_BYTES: usize = 512;

/// Which Kafka topic (from `[kafka]`) a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `kafka.events_topic`: `rae/v1/{rae_id}/devices/{session_id}`.
    Events,
    /// `kafka.status_topic`: `rae/v1/{rae_id}/status`.
    Status,
    /// `kafka.dlq_topic`: a dead letter naming a message that cannot be a
    /// record ([`Route::TooLarge`]).
    DeadLetter,
}

/// Why a message produces no record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Empty payload: a retained clear.
    EmptyPayload,
    /// Not a device or status topic.
    UnknownTopic,
}

/// What to do with one MQTT message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Produce(Destination),
    Skip(Skip),
    /// Key, value and overhead exceed `max_record_bytes`: Kafka can never
    /// take it; a dead letter goes to [`Destination::DeadLetter`] instead.
    TooLarge {
        max_record_bytes: usize,
    },
}

/// Routes a message by its topic layout and payload length;
/// `max_record_bytes` is the producer's `message.max.bytes`.
pub fn route(topic: &str, payload_len: usize, max_record_bytes: usize) -> Route {
    let destination = match topic.split('/').collect::<Vec<_>>().as_slice() {
        ["rae", "v1", rae_id, "devices", session] if !rae_id.is_empty() && !session.is_empty() => {
            Destination::Events
        }
        ["rae", "v1", rae_id, "status"] if !rae_id.is_empty() => Destination::Status,
        _ => return Route::Skip(Skip::UnknownTopic),
    };
    if payload_len == 0 {
        Route::Skip(Skip::EmptyPayload)
    } else if payload_len.saturating_add(topic.len() + RECORD_OVERHEAD_BYTES) > max_record_bytes {
        Route::TooLarge { max_record_bytes }
    } else {
        Route::Produce(destination)
    }
}

/// The per-message facts carried in headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub qos: u8,
    pub retain: bool,
    pub received_at_ms: i64,
}

/// The record headers of a message on `topic`, in this order: topic, qos,
/// retain, receive time.
pub fn headers<'a>(topic: &'a str, meta: &Meta) -> [(&'static str, HeaderValue<'a>); 4] {
    [
        (HEADER_TOPIC, HeaderValue::Borrowed(topic.as_bytes())),
        (
            HEADER_QOS,
            HeaderValue::Static(match meta.qos {
                0 => b"0",
                1 => b"1",
                _ => b"2",
            }),
        ),
        (
            HEADER_RETAIN,
            HeaderValue::Static(if meta.retain { b"true" } else { b"false" }),
        ),
        (
            HEADER_RECEIVED_AT,
            HeaderValue::Owned(meta.received_at_ms.to_string().into_bytes()),
        ),
    ]
}

/// A header value without needless copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    Static(&'static [u8]),
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl HeaderValue<'_> {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HeaderValue::Static(b) => b,
            HeaderValue::Borrowed(b) => b,
            HeaderValue::Owned(b) => b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: usize = crate::kafka_props::DEFAULT_MESSAGE_MAX_BYTES;

    #[test]
    fn a_message_too_large_for_a_record_becomes_a_dead_letter() {
        let t = "rae/v1/b/devices/s";
        let fits = M - t.len() - RECORD_OVERHEAD_BYTES;
        assert_eq!(route(t, fits, M), Route::Produce(Destination::Events));
        assert_eq!(
            route(t, fits + 1, M),
            Route::TooLarge {
                max_record_bytes: M
            }
        );
        assert_eq!(
            route("rae/v1/b/status", 2_000_000, M),
            Route::TooLarge {
                max_record_bytes: M
            }
        );
        // Unknown topics and retained clears are decided first.
        assert_eq!(route("x/y", 2_000_000, M), Route::Skip(Skip::UnknownTopic));
    }

    #[test]
    fn device_topics_go_to_the_events_topic() {
        let t = "rae/v1/box-1/devices/0190a8f2-7c1e-7a4b-9c1d-2e3f4a5b6c7d";
        assert_eq!(route(t, 10, M), Route::Produce(Destination::Events));
    }

    #[test]
    fn a_device_topic_with_an_odd_session_segment_is_still_forwarded() {
        // The registry, not the bridge, decides what is garbage.
        assert_eq!(
            route("rae/v1/b/devices/not-a-uuid", 3, M),
            Route::Produce(Destination::Events)
        );
    }

    #[test]
    fn status_topics_go_to_the_status_topic() {
        assert_eq!(
            route("rae/v1/box-1/status", 5, M),
            Route::Produce(Destination::Status)
        );
    }

    #[test]
    fn empty_payloads_are_skipped_on_both_layouts() {
        assert_eq!(
            route("rae/v1/b/devices/s", 0, M),
            Route::Skip(Skip::EmptyPayload)
        );
        assert_eq!(
            route("rae/v1/b/status", 0, M),
            Route::Skip(Skip::EmptyPayload)
        );
    }

    #[test]
    fn other_topics_are_skipped_as_unknown() {
        for t in [
            "rae/v1/b/commands/resync",
            "rae/v2/b/status",
            "rae/v1//status",
            "rae/v1/b/devices/",
            "rae/v1/b/devices/s/extra",
            "",
        ] {
            assert_eq!(route(t, 4, M), Route::Skip(Skip::UnknownTopic), "{t}");
        }
    }

    #[test]
    fn headers_carry_topic_qos_retain_and_receive_time() {
        let meta = Meta {
            qos: 1,
            retain: true,
            received_at_ms: 1_700_000_000_123,
        };
        let h = headers("rae/v1/b/status", &meta);
        let text: Vec<(&str, String)> = h
            .iter()
            .map(|(k, v)| (*k, String::from_utf8(v.as_bytes().to_vec()).unwrap()))
            .collect();
        assert_eq!(
            text,
            vec![
                ("mqtt_topic", "rae/v1/b/status".to_string()),
                ("mqtt_qos", "1".to_string()),
                ("mqtt_retain", "true".to_string()),
                ("received_at_ms", "1700000000123".to_string()),
            ]
        );
        let not_retained = Meta {
            qos: 0,
            retain: false,
            ..meta
        };
        let h = headers("t", &not_retained);
        assert_eq!(h[1].1.as_bytes(), b"0");
        assert_eq!(h[2].1.as_bytes(), b"false");
    }
}
