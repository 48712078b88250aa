//! librdkafka properties the bridge's and the registry's Kafka clients
//! both interpret: alias names, and `message.max.bytes`.
//!
//! Invariant: operator properties (`[kafka.properties]`) are renamed to the
//! names the code uses before they are merged with the defaults and the
//! fixed settings. `ClientConfig` is a map applied in no particular order,
//! so an alias next to its name would win or lose at random (e.g. a
//! `request.required.acks` could undo `acks=all`).

/// librdkafka's aliases (`CONFIGURATION.md`) of the properties the code
/// sets, and their names there.
const ALIASES: [(&str, &str); 4] = [
    ("request.required.acks", "acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("queue.buffering.max.ms", "linger.ms"),
    ("compression.codec", "compression.type"),
];

/// The name the code uses for `key` (`key` itself unless it is an alias).
pub fn canonical(key: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, name)| name)
}

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The largest record a producer with this `message.max.bytes` value
/// sends (librdkafka's default if unset or unreadable; the config check
/// has already refused a bad value).
pub fn message_max_bytes(value: Option<&str>) -> usize {
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
}

/// The record limit of a producer built from `config` (both roles: the
/// bridge routes larger messages to its dead-letter topic, the registry
/// cuts dead letters to it).
pub fn record_limit(config: &rdkafka::ClientConfig) -> usize {
    message_max_bytes(config.get("message.max.bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_limit_is_message_max_bytes_or_librdkafkas_default() {
        assert_eq!(message_max_bytes(None), DEFAULT_MESSAGE_MAX_BYTES);
        assert_eq!(message_max_bytes(Some("2000000")), 2_000_000);
        assert_eq!(message_max_bytes(Some("lots")), DEFAULT_MESSAGE_MAX_BYTES);
    }

    #[test]
    fn the_record_limit_is_the_producers_last_message_max_bytes() {
        let mut c = rdkafka::ClientConfig::new();
        assert_eq!(record_limit(&c), DEFAULT_MESSAGE_MAX_BYTES);
        c.set("message.max.bytes", "2000000");
        assert_eq!(record_limit(&c), 2_000_000);
        c.set("message.max.bytes", "3000000");
        assert_eq!(record_limit(&c), 3_000_000);
    }

    #[test]
    fn aliases_map_to_their_names_and_other_keys_pass_through() {
        assert_eq!(canonical("request.required.acks"), "acks");
        assert_eq!(canonical("delivery.timeout.ms"), "message.timeout.ms");
        assert_eq!(canonical("acks"), "acks");
        assert_eq!(canonical("client.id"), "client.id");
    }
}
