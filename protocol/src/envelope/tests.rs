//! Unit tests of the envelope codec: round trips, validation errors and
//! robustness against malformed input.

use ciborium::Value;
use uuid::Uuid;

use super::*;

mod doc_examples;
mod malformed;

fn sample(kind: EventKind) -> Envelope {
    Envelope {
        schema: SCHEMA_VERSION,
        rae_id: "box1".into(),
        device_id: "usb-0403:6001-A1".into(),
        session_id: Uuid::from_u128(0x0190b2c4_5e6f_7a8b_9c0d_1e2f3a4b5c6d),
        seq: 3,
        ts_ms: 1_720_000_000_000,
        kind,
    }
}

fn attrs() -> Attrs {
    Attrs::from([
        ("bus".to_owned(), AttrValue::Int(3)),
        ("label".to_owned(), AttrValue::from("dut")),
        ("powered".to_owned(), AttrValue::Bool(true)),
        ("temp_c".to_owned(), AttrValue::Float(41.5)),
    ])
}

/// Encodes `sample(kind)` and hands its map entries to `edit` before re-encoding.
fn edited(kind: EventKind, edit: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let bytes = sample(kind).encode().expect("encodes");
    let mut value: Value = ciborium::from_reader(bytes.as_slice()).expect("cbor");
    let Value::Map(entries) = &mut value else {
        panic!("envelope is not a map: {value:?}")
    };
    edit(entries);
    let mut out = Vec::new();
    ciborium::into_writer(&value, &mut out).expect("encodes");
    out
}

fn set_key(entries: &mut Vec<(Value, Value)>, key: &str, new: Value) {
    entries.retain(|(k, _)| k.as_text() != Some(key));
    entries.push((Value::Text(key.to_owned()), new));
}

fn remove_key(entries: &mut Vec<(Value, Value)>, key: &str) {
    entries.retain(|(k, _)| k.as_text() != Some(key));
}

fn all_kinds() -> Vec<EventKind> {
    vec![
        EventKind::Attached { attrs: attrs() },
        EventKind::Changed {
            set: attrs(),
            removed: vec!["serial".into(), "speed".into()],
        },
        EventKind::Detached {
            reason: "unplugged".into(),
        },
        EventKind::Checkpoint { attrs: attrs() },
    ]
}

#[test]
fn every_kind_round_trips() {
    for kind in all_kinds() {
        let env = sample(kind);
        let bytes = env.encode().expect("encodes");
        assert_eq!(Envelope::decode(&bytes), Ok(env));
    }
}

#[test]
fn kind_names_are_the_wire_names() {
    let names: Vec<_> = all_kinds().iter().map(EventKind::name).collect();
    assert_eq!(names, ["attached", "changed", "detached", "checkpoint"]);
}

#[test]
fn encoding_writes_documented_keys_in_order_and_only_the_kinds_fields() {
    let expected: [&[&str]; 4] = [&["attrs"], &["set", "removed"], &["reason"], &["attrs"]];
    for (kind, extra) in all_kinds().into_iter().zip(expected) {
        let bytes = sample(kind).encode().expect("encodes");
        let value: Value = ciborium::from_reader(bytes.as_slice()).expect("cbor");
        let keys: Vec<_> = value
            .as_map()
            .expect("map")
            .iter()
            .filter_map(|(k, _)| k.as_text())
            .collect();
        let mut want = vec![
            "v",
            "rae_id",
            "device_id",
            "session_id",
            "seq",
            "ts",
            "kind",
        ];
        want.extend_from_slice(extra);
        assert_eq!(keys, want);
    }
}

#[test]
fn topic_is_the_device_topic_of_the_session() {
    let env = sample(EventKind::Detached { reason: "x".into() });
    assert_eq!(
        env.topic(),
        Ok("rae/v1/box1/devices/0190b2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d".to_owned())
    );
}

#[test]
fn unknown_kind_decodes_to_typed_error() {
    let bytes = edited(EventKind::Attached { attrs: attrs() }, |m| {
        set_key(m, "kind", Value::Text("rebooted".into()))
    });
    assert_eq!(
        Envelope::decode(&bytes),
        Err(DecodeError::UnknownKind("rebooted".into()))
    );
}

#[test]
fn newer_schema_is_unsupported() {
    let bytes = edited(EventKind::Attached { attrs: attrs() }, |m| {
        set_key(m, "v", Value::Integer(2.into()))
    });
    assert_eq!(
        Envelope::decode(&bytes),
        Err(DecodeError::UnsupportedSchema {
            found: 2,
            supported: SCHEMA_VERSION
        })
    );
}

#[test]
fn schema_zero_and_huge_schemas_are_unsupported() {
    for (v, found) in [(0_u64, 0_u32), (u64::MAX, u32::MAX)] {
        let bytes = edited(EventKind::Attached { attrs: attrs() }, |m| {
            set_key(m, "v", Value::Integer(v.into()))
        });
        assert_eq!(
            Envelope::decode(&bytes),
            Err(DecodeError::UnsupportedSchema {
                found,
                supported: SCHEMA_VERSION
            })
        );
    }
}

#[test]
fn seq_zero_is_an_invalid_field() {
    let bytes = edited(EventKind::Attached { attrs: attrs() }, |m| {
        set_key(m, "seq", Value::Integer(0.into()))
    });
    assert!(matches!(
        Envelope::decode(&bytes),
        Err(DecodeError::InvalidField { field: "seq", .. })
    ));
}

#[test]
fn missing_session_id_is_a_missing_envelope_field() {
    let bytes = edited(EventKind::Attached { attrs: attrs() }, |m| {
        remove_key(m, "session_id")
    });
    assert_eq!(
        Envelope::decode(&bytes),
        Err(DecodeError::MissingField {
            kind: "envelope",
            field: "session_id"
        })
    );
}

#[test]
fn missing_kind_field_names_the_kind() {
    let kind = EventKind::Changed {
        set: attrs(),
        removed: vec![],
    };
    let bytes = edited(kind, |m| remove_key(m, "removed"));
    assert_eq!(
        Envelope::decode(&bytes),
        Err(DecodeError::MissingField {
            kind: "changed",
            field: "removed"
        })
    );
}

#[test]
fn non_canonical_session_id_is_an_invalid_field() {
    for text in ["not-a-uuid", "0190B2C4-5E6F-7A8B-9C0D-1E2F3A4B5C6D"] {
        let bytes = edited(EventKind::Attached { attrs: attrs() }, |m| {
            set_key(m, "session_id", Value::Text(text.into()))
        });
        assert!(
            matches!(
                Envelope::decode(&bytes),
                Err(DecodeError::InvalidField {
                    field: "session_id",
                    ..
                })
            ),
            "{text}"
        );
    }
}

#[test]
fn unknown_fields_and_other_kinds_fields_are_ignored() {
    let bytes = edited(EventKind::Detached { reason: "x".into() }, |m| {
        set_key(
            m,
            "future",
            Value::Array(vec![Value::Null, Value::Bytes(vec![1])]),
        );
        set_key(m, "attrs", Value::Map(vec![]));
    });
    assert_eq!(
        Envelope::decode(&bytes),
        Ok(sample(EventKind::Detached { reason: "x".into() }))
    );
}
