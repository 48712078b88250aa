//! librdkafka configuration of the bridge's producer (uplink) and consumer
//! (command downlink). The property lists are pure and tested; `[kafka.
//! properties]` is applied last, so an operator can override any default
//! (e.g. `security.protocol`), except the settings the bridge's guarantees
//! rest on, which are applied after it and cannot be overridden:
//!
//! - producer: `acks=all`, `enable.idempotence=true` (with librdkafka's
//!   own retries this keeps each partition in order and free of
//!   duplicates from internal retries);
//! - consumer: `enable.auto.offset.store=false` and
//!   `enable.auto.commit=false`: the downlink stores and commits a
//!   command's offset itself, right after its PUBACK, and nothing else
//!   commits (auto-commit would also commit from a timer deferred through
//!   a broker outage, and when an assignment is lost: on a broker that
//!   lost its log that offset points into the new log, past commands
//!   never read; `bridge::downlink`).

use crate::config::KafkaSettings;
use crate::kafka_props::canonical;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A repeated librdkafka error or log line is logged at most this often.
const REPEAT_EVERY: Duration = Duration::from_secs(30);

/// Logs librdkafka's errors and log lines through `log`, dropping a line
/// identical to the previous one within [`REPEAT_EVERY`] (while Kafka is
/// down librdkafka reports "all brokers down" many times a second).
#[derive(Debug, Default)]
pub struct QuietContext {
    last: Mutex<Option<(String, Instant)>>,
}

impl QuietContext {
    fn fresh(&self, line: &str) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let repeat = last
            .as_ref()
            .is_some_and(|(l, at)| l == line && at.elapsed() < REPEAT_EVERY);
        if !repeat {
            *last = Some((line.to_string(), Instant::now()));
        }
        !repeat
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let line = format!("librdkafka {fac}: {message}");
        if !self.fresh(&line) {
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => log::error!("{line}"),
            RDKafkaLogLevel::Warning => log::warn!("{line}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => log::info!("{line}"),
            RDKafkaLogLevel::Debug => log::debug!("{line}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let line = format!("Kafka client error: {error}: {reason}");
        if self.fresh(&line) {
            log::warn!("{line}");
        }
    }
}

impl ConsumerContext for QuietContext {
    /// A failed commit of the downlink's offsets is a warning (the
    /// commands after the last committed offset are delivered again after a
    /// restart); "no offset to commit" is not a failure.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) | Ok(()) => {}
            Err(e) => {
                let line = format!("Kafka offset commit failed: {e}");
                if self.fresh(&line) {
                    log::warn!(
                        "{line} ({} partition(s)); the commands after the last committed offset \
                         are delivered again after a restart",
                        offsets.count()
                    );
                }
            }
        }
    }
}

/// Producer defaults an operator may override in `[kafka.properties]`.
/// `message.timeout.ms` (alias `delivery.timeout.ms`) is finite so that an
/// outage shows up as delivery failures (metric and log) that the bridge
/// retries itself, in order; 10 s (librdkafka's own default is 300 s) so
/// that a producer the broker no longer accepts is replaced within about
/// `health::TIMEOUTS_BEFORE_REPLACE` × 10 s (see `health.rs`).
pub const PRODUCER_DEFAULTS: [(&str, &str); 5] = [
    ("message.timeout.ms", "10000"),
    ("linger.ms", "5"),
    ("compression.type", "none"),
    ("queue.buffering.max.messages", "100000"),
    ("log_level", "4"),
];

const PRODUCER_FIXED: [(&str, &str); 2] = [("acks", "all"), ("enable.idempotence", "true")];

const CONSUMER_DEFAULTS: [(&str, &str); 2] =
    [("auto.offset.reset", "earliest"), ("log_level", "4")];

const CONSUMER_FIXED: [(&str, &str); 2] = [
    ("enable.auto.offset.store", "false"),
    ("enable.auto.commit", "false"),
];

/// Properties librdkafka warns about when given to the other client type;
/// they are left out of that client's list.
const PRODUCER_ONLY: [&str; 6] = [
    "acks",
    "enable.idempotence",
    "message.timeout.ms",
    "linger.ms",
    "compression.type",
    "queue.buffering.max.messages",
];

/// The producer's properties; a later entry replaces an earlier one of the
/// same name.
pub fn producer_properties(kafka: &KafkaSettings) -> Vec<(String, String)> {
    let mut out = vec![("bootstrap.servers".to_string(), kafka.brokers.clone())];
    push(&mut out, &PRODUCER_DEFAULTS);
    out.extend(
        kafka
            .properties
            .iter()
            .map(|(k, v)| (canonical(k).to_string(), v.clone())),
    );
    push(&mut out, &PRODUCER_FIXED);
    out
}

/// The downlink consumer's properties; a later entry replaces an earlier
/// one of the same name.
pub fn consumer_properties(kafka: &KafkaSettings) -> Vec<(String, String)> {
    let mut out = vec![
        ("bootstrap.servers".to_string(), kafka.brokers.clone()),
        ("group.id".to_string(), kafka.bridge_group.clone()),
    ];
    push(&mut out, &CONSUMER_DEFAULTS);
    out.extend(
        kafka
            .properties
            .iter()
            .filter(|(k, _)| !PRODUCER_ONLY.contains(&canonical(k)))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    push(&mut out, &CONSUMER_FIXED);
    out
}

fn push(out: &mut Vec<(String, String)>, pairs: &[(&str, &str)]) {
    out.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
}

/// A librdkafka config from a property list (a later entry replaces an
/// earlier one with the same name).
pub fn client_config(properties: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn settings(props: &[(&str, &str)]) -> KafkaSettings {
        let raw = format!(
            "[kafka]\nbrokers = \"k:9092\"\n[kafka.properties]\n{}",
            props
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}\n"))
                .collect::<String>()
        );
        crate::config::parse(&raw, std::path::Path::new("t.toml"))
            .unwrap()
            .kafka
    }

    fn last(props: &[(String, String)]) -> BTreeMap<String, String> {
        props.iter().cloned().collect()
    }

    #[test]
    fn the_producer_is_idempotent_with_acks_all_whatever_the_properties_say() {
        let p = last(&producer_properties(&settings(&[
            ("acks", "1"),
            ("enable.idempotence", "false"),
            ("linger.ms", "50"),
            ("security.protocol", "SSL"),
        ])));
        assert_eq!(p["acks"], "all");
        assert_eq!(p["enable.idempotence"], "true");
        assert_eq!(p["linger.ms"], "50", "defaults are overridable");
        assert_eq!(p["security.protocol"], "SSL");
        assert_eq!(p["bootstrap.servers"], "k:9092");
    }

    #[test]
    fn the_delivery_timeout_defaults_to_10_s_and_is_overridable() {
        let p = last(&producer_properties(&settings(&[])));
        assert_eq!(p["message.timeout.ms"], "10000");
        let p = last(&producer_properties(&settings(&[(
            "delivery.timeout.ms",
            "2000",
        )])));
        assert_eq!(p["message.timeout.ms"], "2000");
    }

    #[test]
    fn an_alias_cannot_undo_acks_all() {
        let props = producer_properties(&settings(&[("request.required.acks", "1")]));
        assert!(props.iter().all(|(k, _)| k != "request.required.acks"));
        assert_eq!(last(&props)["acks"], "all");
    }

    #[test]
    fn the_consumer_stores_and_commits_offsets_only_by_hand_and_skips_producer_properties() {
        let p = last(&consumer_properties(&settings(&[
            ("enable.auto.offset.store", "true"),
            ("enable.auto.commit", "true"),
            ("linger.ms", "50"),
            ("security.protocol", "SSL"),
        ])));
        assert_eq!(p["enable.auto.offset.store"], "false");
        assert_eq!(p["enable.auto.commit"], "false");
        assert_eq!(p["group.id"], "rae-bridge");
        assert!(!p.contains_key("linger.ms"));
        assert_eq!(p["security.protocol"], "SSL");
    }
}
