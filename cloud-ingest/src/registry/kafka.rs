//! librdkafka configuration of the registry's consumer and producer, and
//! the records it produces (DLQ, resync commands; docs/PROTOCOL.md §6).
//!
//! `[kafka.properties]` is applied after the defaults (an operator may
//! override them) and before the settings the registry's guarantees rest
//! on, which cannot be overridden (librdkafka aliases such as
//! `request.required.acks` are renamed first, [`crate::kafka_props`]):
//! consumer `enable.auto.commit=false`,
//! `enable.auto.offset.store=false`; producer `acks=all`,
//! `enable.idempotence=true`.
//!
//! Also the one librdkafka call rdkafka 0.39 does not wrap:
//! [`cached_high_watermark`].

use crate::config::KafkaSettings;
use crate::kafka_props::canonical;
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use std::ffi::CString;

/// Measured in docs/BENCHMARKS.md ("Cloud registry"); the reasons are in
/// docs/CLOUD.md ("Consumer tuning").
///
/// The registry consumer's defaults (`[kafka.properties]` overrides them);
/// public so the registry bench's plain reader can use the same prefetch.
pub const CONSUMER_DEFAULTS: [(&str, &str); 9] = [
    // Consumer lag per partition for /metrics comes from the statistics.
    ("statistics.interval.ms", "5000"),
    ("auto.offset.reset", "earliest"),
    // Bounded prefetch: librdkafka's default queue (64 MiB) would dominate
    // the registry's memory during a burst. The thresholds apply to the
    // one consumer queue that all partitions feed; 16 MiB holds four
    // partition fetches.
    ("queued.max.messages.kbytes", "16384"),
    ("queued.min.messages", "2000"),
    // With thresholds this low, librdkafka's default 1 s pause of a
    // partition's fetches once they are exceeded left the pipelines idle
    // (its documentation says to lower it in that case).
    ("fetch.queue.backoff.ms", "20"),
    // At most one partition's fetch (4 MiB) per request: half the
    // dispatcher's per-partition stash (dispatch::STASH_MAX_BYTES), and
    // bounds brokers that fill a response from its first partition. 1 MiB
    // fetches held the registry at about half of what it drained with
    // 4 MiB during a backlog (docs/BENCHMARKS.md): more fetches, and more
    // of them answered by a slow broker.
    ("fetch.max.bytes", "4194304"),
    ("max.partition.fetch.bytes", "4194304"),
    // Long-poll bound. A broker answers as soon as data is there, so this
    // only matters for idle partitions (10 empty fetches/s instead of 2),
    // and a fetch that carries only idle partitions (the status topic
    // while the events partitions wait on the queue thresholds) holds up
    // the next one for at most this long.
    ("fetch.wait.max.ms", "100"),
    ("log_level", "4"),
];
const CONSUMER_FIXED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];
const PRODUCER_DEFAULTS: [(&str, &str); 3] = [
    ("message.timeout.ms", "30000"),
    ("linger.ms", "5"),
    ("log_level", "4"),
];
const PRODUCER_FIXED: [(&str, &str); 2] = [("acks", "all"), ("enable.idempotence", "true")];
/// Left out of the consumer's list (librdkafka warns about them there).
const PRODUCER_ONLY: [&str; 5] = [
    "acks",
    "enable.idempotence",
    "message.timeout.ms",
    "linger.ms",
    "compression.type",
];
const CONSUMER_ONLY: [&str; 9] = [
    "auto.offset.reset",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "fetch.queue.backoff.ms",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.wait.max.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

fn build(
    kafka: &KafkaSettings,
    first: &[(&str, &str)],
    defaults: &[(&str, &str)],
    skip: &[&str],
    fixed: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in first.iter().chain(defaults) {
        c.set(*k, *v);
    }
    for (k, v) in &kafka.properties {
        // Renamed first: an alias would otherwise race its name (and
        // could undo a fixed setting) in the unordered `ClientConfig`.
        let k = canonical(k);
        if !skip.contains(&k) {
            c.set(k, v);
        }
    }
    for (k, v) in fixed {
        c.set(*k, *v);
    }
    c
}

/// The registry consumer's config (group `kafka.registry_group`).
pub fn consumer_config(kafka: &KafkaSettings) -> ClientConfig {
    build(
        kafka,
        &[("group.id", kafka.registry_group.as_str())],
        &CONSUMER_DEFAULTS,
        &PRODUCER_ONLY,
        &CONSUMER_FIXED,
    )
}

/// Whether the registry reads a partition with no committed offset from
/// its start: `auto.offset.reset` (default `earliest` here) is one of
/// librdkafka's names for that.
pub fn starts_from_earliest(kafka: &KafkaSettings) -> bool {
    matches!(
        consumer_config(kafka).get("auto.offset.reset"),
        Some("earliest" | "smallest" | "beginning")
    )
}

/// The DLQ / command producer's config.
pub fn producer_config(kafka: &KafkaSettings) -> ClientConfig {
    build(
        kafka,
        &[],
        &PRODUCER_DEFAULTS,
        &CONSUMER_ONLY,
        &PRODUCER_FIXED,
    )
}

/// The value of a `resync` command for one session: `{"session_id": "<uuid>"}`.
pub fn resync_payload(session_id: &uuid::Uuid) -> Vec<u8> {
    let map = ciborium::Value::Map(vec![(
        ciborium::Value::Text("session_id".into()),
        ciborium::Value::Text(session_id.hyphenated().to_string()),
    )]);
    let mut out = Vec::with_capacity(64);
    // Writing a Value into a Vec cannot fail.
    let _ = ciborium::into_writer(&map, &mut out);
    out
}

/// Headers of a command record.
pub fn command_headers(name: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(1).insert(Header {
        key: "command",
        value: Some(name.as_bytes()),
    })
}

/// What a dead letter needs besides its key and value, bounded generously:
/// its five headers with a long reason, and librdkafka's framing.
const DLQ_OVERHEAD_BYTES: usize = 4096;

/// The value a dead letter carries (pure): the record's own bytes, or
/// their first part when the dead letter would not fit a record of
/// `max_record_bytes` (a record another producer wrote near the broker's
/// larger limit); then also the original length, for a `truncated_from`
/// header. Without this, producing the dead letter would fail on every
/// retry and stall the partition.
pub fn dlq_value(raw: &[u8], key_len: usize, max_record_bytes: usize) -> (&[u8], Option<usize>) {
    let room = max_record_bytes.saturating_sub(key_len + DLQ_OVERHEAD_BYTES);
    if raw.len() <= room {
        (raw, None)
    } else {
        (&raw[..room], Some(raw.len()))
    }
}

/// Headers of a dead letter.
pub fn dlq_headers(
    reason: &str,
    kind: &str,
    source_topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = offset.to_string();
    let pairs: [(&str, &[u8]); 5] = [
        ("error", reason.as_bytes()),
        ("error_kind", kind.as_bytes()),
        ("source_topic", source_topic.as_bytes()),
        ("source_partition", partition.as_bytes()),
        ("source_offset", offset.as_bytes()),
    ];
    let mut h = OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in pairs {
        h = h.insert(Header {
            key,
            value: Some(value),
        });
    }
    h
}

/// librdkafka's last known high watermark of a partition this client
/// fetches (the offset of the next record written), or None while it knows
/// none. No request is sent: librdkafka updates it from every fetch
/// response (`rd_kafka_get_watermark_offsets`; rdkafka 0.39 wraps only
/// the variant that asks the broker).
pub fn cached_high_watermark<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client's handle is valid while `client` is borrowed; the
    // topic is a NUL-terminated string that outlives the call; `low` and
    // `high` are valid for writes. The call only reads librdkafka's state
    // under its own locks.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    #[test]
    fn guarantees_cannot_be_overridden_by_properties() {
        let s = parse(
            "[kafka.properties]\n\"enable.auto.commit\" = \"true\"\n\"acks\" = \"1\"\n\"client.id\" = \"x\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let c = consumer_config(&s.kafka);
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("group.id"), Some("rae-registry"));
        assert_eq!(c.get("client.id"), Some("x"));
        assert_eq!(c.get("acks"), None);
        let p = producer_config(&s.kafka);
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("enable.auto.commit"), None);
    }

    #[test]
    fn the_registry_starts_from_earliest_unless_the_properties_say_otherwise() {
        let settings = |props: &str| parse(props, Path::new("t.toml")).unwrap().kafka;
        assert!(starts_from_earliest(&settings("")));
        assert!(starts_from_earliest(&settings(
            "[kafka.properties]\n\"auto.offset.reset\" = \"smallest\"\n"
        )));
        assert!(!starts_from_earliest(&settings(
            "[kafka.properties]\n\"auto.offset.reset\" = \"latest\"\n"
        )));
    }

    #[test]
    fn a_dead_letter_too_large_for_a_record_carries_the_first_part_of_the_value() {
        let raw = vec![7u8; 2_000];
        assert_eq!(dlq_value(&raw, 50, 1_000_000), (&raw[..], None));
        let (value, from) = dlq_value(&raw, 50, 5_000);
        assert_eq!(value.len(), 5_000 - 50 - DLQ_OVERHEAD_BYTES);
        assert_eq!(from, Some(2_000));
        let (value, from) = dlq_value(&raw, 50, 100);
        assert!(value.is_empty());
        assert_eq!(from, Some(2_000));
    }

    #[test]
    fn an_alias_cannot_undo_a_guarantee_or_race_its_name() {
        let s = parse(
            "[kafka.properties]\n\"request.required.acks\" = \"1\"\n\"delivery.timeout.ms\" = \"9000\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let p = producer_config(&s.kafka);
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("request.required.acks"), None);
        assert_eq!(p.get("message.timeout.ms"), Some("9000"));
        assert_eq!(p.get("delivery.timeout.ms"), None);
        let c = consumer_config(&s.kafka);
        assert_eq!(c.get("request.required.acks"), None);
        assert_eq!(c.get("delivery.timeout.ms"), None);
    }

    #[test]
    fn a_resync_payload_is_the_documented_cbor_map() {
        let sid = uuid::Uuid::from_u128(0x0190_b2c4_5e6f_7a8b_9c0d_1e2f_3a4b_5c6d);
        let v: ciborium::Value = ciborium::from_reader(resync_payload(&sid).as_slice()).unwrap();
        assert_eq!(
            v,
            ciborium::Value::Map(vec![(
                ciborium::Value::Text("session_id".into()),
                ciborium::Value::Text("0190b2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d".into())
            )])
        );
    }
}
