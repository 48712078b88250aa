//! Record classification: what one Kafka record is, before any state is
//! consulted. Pure; no I/O.
//!
//! Owns [`classify`]. Invariants: every record becomes exactly one
//! [`Classified`]; nothing panics on input; a record the registry cannot
//! apply is a [`DeadLetter`] with a precise reason (never dropped
//! silently); only empty payloads (retained clears) are skipped.

use rae_protocol::{parse_topic, DecodeError, Envelope, EventKind, ParsedTopic};

/// Which subscribed topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `kafka.events_topic`: device envelopes.
    Events,
    /// `kafka.status_topic`: box birth / last-will.
    Status,
}

/// Why a record is dead-lettered (`error_kind` header, docs/PROTOCOL.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadKind {
    Decode,
    Schema,
    Kind,
    Key,
    Unstorable,
}

impl DeadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadKind::Decode => "decode",
            DeadKind::Schema => "schema",
            DeadKind::Kind => "kind",
            DeadKind::Key => "key",
            DeadKind::Unstorable => "unstorable",
        }
    }
}

/// A record that goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub kind: DeadKind,
    pub reason: String,
}

/// A decoded box status message (docs/PROTOCOL.md §1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMsg {
    pub rae_id: String,
    pub online: bool,
    pub agent_version: Option<String>,
    pub started_ms: Option<i64>,
    pub boot_count: Option<i64>,
    pub ts_ms: Option<i64>,
    /// The payload's digest: the message's identity across the copies
    /// several bridges forward ([`super::boxes`]).
    pub digest: u64,
}

/// What a record is.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    /// A device envelope whose key matches its topic.
    Event(Envelope),
    /// A box status message.
    Status(StatusMsg),
    /// An empty payload (a retained clear): nothing to do.
    Skip,
    /// Cannot be applied: goes to the DLQ.
    Dead(DeadLetter),
}

fn dead(kind: DeadKind, reason: impl Into<String>) -> Classified {
    Classified::Dead(DeadLetter {
        kind,
        reason: reason.into(),
    })
}

/// Classifies one record by its source topic, key and value.
pub fn classify(source: Source, key: Option<&[u8]>, value: Option<&[u8]>) -> Classified {
    let value = match value {
        None | Some([]) => return Classified::Skip,
        Some(v) => v,
    };
    match source {
        Source::Events => classify_event(key, value),
        Source::Status => classify_status(key, value),
    }
}

fn key_topic(key: Option<&[u8]>) -> Result<ParsedTopic, DeadLetter> {
    let bad = |reason: String| DeadLetter {
        kind: DeadKind::Key,
        reason,
    };
    let key = key.ok_or_else(|| bad("record has no key (expected the MQTT topic)".into()))?;
    let key = std::str::from_utf8(key)
        .map_err(|_| bad("record key is not UTF-8 (expected the MQTT topic)".into()))?;
    parse_topic(key).map_err(|e| bad(format!("record key {key:?}: {e}")))
}

fn classify_event(key: Option<&[u8]>, value: &[u8]) -> Classified {
    let envelope = match Envelope::decode(value) {
        Ok(e) => e,
        Err(e @ DecodeError::UnsupportedSchema { .. }) => {
            return dead(DeadKind::Schema, e.to_string())
        }
        Err(e @ DecodeError::UnknownKind(_)) => return dead(DeadKind::Kind, e.to_string()),
        Err(e) => return dead(DeadKind::Decode, e.to_string()),
    };
    match key_topic(key) {
        Err(d) => return Classified::Dead(d),
        Ok(ParsedTopic::Device { rae_id, session_id }) => {
            if rae_id != envelope.rae_id || session_id != envelope.session_id {
                return dead(
                    DeadKind::Key,
                    format!(
                        "record key names rae_id {rae_id:?} session {session_id} but the envelope has rae_id {:?} session {}",
                        envelope.rae_id, envelope.session_id
                    ),
                );
            }
        }
        Ok(other) => {
            return dead(
                DeadKind::Key,
                format!("record key is not a device topic: {other:?}"),
            )
        }
    }
    if let Err(reason) = storable(&envelope) {
        return dead(DeadKind::Unstorable, reason);
    }
    Classified::Event(envelope)
}

fn no_nul(what: &str, s: &str) -> Result<(), String> {
    if s.contains('\0') {
        Err(format!(
            "{what} {s:?} contains a NUL character, which the database cannot store"
        ))
    } else {
        Ok(())
    }
}

/// Whether the database can hold the envelope: text without NUL, `seq` and
/// `ts` within BIGINT.
fn storable(e: &Envelope) -> Result<(), String> {
    if i64::try_from(e.seq).is_err() {
        return Err(format!("seq {} is above 2^63-1", e.seq));
    }
    if i64::try_from(e.ts_ms).is_err() {
        return Err(format!("ts {} is above 2^63-1", e.ts_ms));
    }
    no_nul("rae_id", &e.rae_id)?;
    no_nul("device_id", &e.device_id)?;
    let attrs_ok = |attrs: &rae_protocol::Attrs| -> Result<(), String> {
        for (name, value) in attrs {
            no_nul("attribute name", name)?;
            if let rae_protocol::AttrValue::Text(t) = value {
                no_nul("attribute value", t)?;
            }
        }
        Ok(())
    };
    match &e.kind {
        EventKind::Attached { attrs } | EventKind::Checkpoint { attrs } => attrs_ok(attrs),
        EventKind::Changed { set, removed } => {
            attrs_ok(set)?;
            removed.iter().try_for_each(|n| no_nul("attribute name", n))
        }
        EventKind::Detached { reason } => no_nul("detach reason", reason),
    }
}

fn classify_status(key: Option<&[u8]>, value: &[u8]) -> Classified {
    let rae_id = match key_topic(key) {
        Err(d) => return Classified::Dead(d),
        Ok(ParsedTopic::Status { rae_id }) => rae_id,
        Ok(other) => {
            return dead(
                DeadKind::Key,
                format!("record key is not a status topic: {other:?}"),
            )
        }
    };
    if let Err(reason) = no_nul("rae_id", &rae_id) {
        return dead(DeadKind::Unstorable, reason);
    }
    match decode_status(value) {
        Ok(mut msg) => {
            msg.rae_id = rae_id;
            Classified::Status(msg)
        }
        Err(reason) => dead(DeadKind::Decode, reason),
    }
}

fn decode_status(value: &[u8]) -> Result<StatusMsg, String> {
    use ciborium::Value;
    let parsed: Value = ciborium::de::from_reader_with_recursion_limit(value, 16)
        .map_err(|e| format!("invalid status CBOR: {e}"))?;
    let Value::Map(entries) = parsed else {
        return Err("status payload is not a CBOR map".into());
    };
    let get = |name: &str| {
        entries.iter().find_map(|(k, v)| match k {
            Value::Text(k) if k == name => Some(v),
            _ => None,
        })
    };
    let int = |name: &str| -> Result<Option<i64>, String> {
        match get(name) {
            None => Ok(None),
            Some(Value::Integer(i)) => i64::try_from(*i)
                .map(Some)
                .map_err(|_| format!("status {name} is out of range")),
            Some(_) => Err(format!("status {name} is not an integer")),
        }
    };
    let online = match get("state") {
        Some(Value::Text(s)) if s == "online" => true,
        Some(Value::Text(s)) if s == "offline" => false,
        Some(Value::Text(s)) => {
            return Err(format!("status state {s:?} is neither online nor offline"))
        }
        Some(_) => return Err("status state is not text".into()),
        None => return Err("status is missing required field \"state\"".into()),
    };
    let agent_version = match get("agent_version") {
        None => None,
        Some(Value::Text(s)) => {
            no_nul("agent_version", s)?;
            Some(s.clone())
        }
        Some(_) => return Err("status agent_version is not text".into()),
    };
    Ok(StatusMsg {
        rae_id: String::new(),
        online,
        agent_version,
        started_ms: int("started_ms")?,
        boot_count: int("boot_count")?,
        ts_ms: int("ts_ms")?,
        digest: super::boxes::digest(value),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ciborium::Value;
    use rae_protocol::{Attrs, SCHEMA_VERSION};

    fn envelope(kind: EventKind) -> Envelope {
        Envelope {
            schema: SCHEMA_VERSION,
            rae_id: "box".into(),
            device_id: "dev".into(),
            session_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            seq: 1,
            ts_ms: 5,
            kind,
        }
    }

    fn cbor(v: Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    }

    fn kind_of(c: Classified) -> DeadKind {
        match c {
            Classified::Dead(d) => d.kind,
            other => panic!("not dead: {other:?}"),
        }
    }

    #[test]
    fn a_valid_envelope_under_its_own_topic_is_an_event() {
        let e = envelope(EventKind::Attached {
            attrs: Attrs::new(),
        });
        let key = e.topic().unwrap();
        let c = classify(
            Source::Events,
            Some(key.as_bytes()),
            Some(&e.encode().unwrap()),
        );
        assert_eq!(c, Classified::Event(e));
    }

    #[test]
    fn garbage_unknown_schema_and_unknown_kind_are_dead_with_their_reason() {
        let key = b"rae/v1/box/devices/01900000-0000-7000-8000-000000000001".as_slice();
        assert_eq!(
            kind_of(classify(
                Source::Events,
                Some(key),
                Some(b"\xff\x00garbage")
            )),
            DeadKind::Decode
        );
        let future = cbor(Value::Map(vec![(
            Value::Text("v".into()),
            Value::Integer(9.into()),
        )]));
        match classify(Source::Events, Some(key), Some(&future)) {
            Classified::Dead(d) => {
                assert_eq!(d.kind, DeadKind::Schema);
                assert!(d.reason.contains("schema 9"), "{}", d.reason);
            }
            other => panic!("{other:?}"),
        }
        let e = envelope(EventKind::Detached { reason: "x".into() });
        let mut bytes = e.encode().unwrap();
        let pos = bytes.windows(8).position(|w| w == b"detached").unwrap();
        bytes[pos..pos + 8].copy_from_slice(b"exploded");
        assert_eq!(
            kind_of(classify(Source::Events, Some(key), Some(&bytes))),
            DeadKind::Kind
        );
    }

    #[test]
    fn a_key_that_disagrees_with_the_envelope_is_dead() {
        let e = envelope(EventKind::Detached { reason: "x".into() });
        let other = b"rae/v1/other/devices/01900000-0000-7000-8000-000000000001";
        let v = e.encode().unwrap();
        assert_eq!(
            kind_of(classify(Source::Events, Some(other), Some(&v))),
            DeadKind::Key
        );
        assert_eq!(
            kind_of(classify(Source::Events, None, Some(&v))),
            DeadKind::Key
        );
        assert_eq!(
            kind_of(classify(
                Source::Events,
                Some(b"rae/v1/box/status"),
                Some(&v)
            )),
            DeadKind::Key
        );
    }

    #[test]
    fn text_with_nul_is_unstorable() {
        let e = envelope(EventKind::Detached {
            reason: "a\0b".into(),
        });
        let key = e.topic().unwrap();
        let c = classify(
            Source::Events,
            Some(key.as_bytes()),
            Some(&e.encode().unwrap()),
        );
        assert_eq!(kind_of(c), DeadKind::Unstorable);
    }

    #[test]
    fn empty_payloads_are_skipped() {
        assert_eq!(classify(Source::Events, None, Some(b"")), Classified::Skip);
        assert_eq!(classify(Source::Status, None, None), Classified::Skip);
    }

    #[test]
    fn status_maps_decode_and_bad_ones_are_dead() {
        let v = cbor(Value::Map(vec![
            (Value::Text("state".into()), Value::Text("online".into())),
            (
                Value::Text("agent_version".into()),
                Value::Text("0.1".into()),
            ),
            (Value::Text("boot_count".into()), Value::Integer(3.into())),
            (Value::Text("ts_ms".into()), Value::Integer(77.into())),
            (Value::Text("future".into()), Value::Array(vec![])),
        ]));
        match classify(Source::Status, Some(b"rae/v1/b1/status"), Some(&v)) {
            Classified::Status(s) => {
                assert_eq!(s.rae_id, "b1");
                assert!(s.online);
                assert_eq!(s.boot_count, Some(3));
                assert_eq!(s.ts_ms, Some(77));
                assert_eq!(s.digest, crate::registry::boxes::digest(&v));
            }
            other => panic!("{other:?}"),
        }
        let bad = cbor(Value::Map(vec![(
            Value::Text("state".into()),
            Value::Text("sleepy".into()),
        )]));
        assert_eq!(
            kind_of(classify(
                Source::Status,
                Some(b"rae/v1/b1/status"),
                Some(&bad)
            )),
            DeadKind::Decode
        );
    }
}
