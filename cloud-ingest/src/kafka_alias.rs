//! librdkafka property aliases, shared by the bridge's and the registry's
//! Kafka clients.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_their_names_and_other_keys_pass_through() {
        assert_eq!(canonical("request.required.acks"), "acks");
        assert_eq!(canonical("delivery.timeout.ms"), "message.timeout.ms");
        assert_eq!(canonical("acks"), "acks");
        assert_eq!(canonical("client.id"), "client.id");
    }
}
