//! Property tests of the envelope codec: exact round trips, no panics on
//! arbitrary or mutated input, and tolerance of unknown map keys.

use ciborium::Value;
use proptest::prelude::*;
use rae_protocol::{AttrValue, Attrs, Envelope, EventKind, SCHEMA_VERSION};
use uuid::Uuid;

const KNOWN_KEYS: [&str; 11] = [
    "v",
    "rae_id",
    "device_id",
    "session_id",
    "seq",
    "ts",
    "kind",
    "attrs",
    "set",
    "removed",
    "reason",
];

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        any::<String>().prop_map(AttrValue::Text),
        any::<i64>().prop_map(AttrValue::Int),
        any::<bool>().prop_map(AttrValue::Bool),
        // Every non-NaN f64, including infinities, -0.0 and subnormals.
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |x| !x.is_nan())
            .prop_map(AttrValue::Float),
    ]
}

fn attrs() -> impl Strategy<Value = Attrs> {
    prop::collection::btree_map(any::<String>(), attr_value(), 0..8)
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        attrs().prop_map(|attrs| EventKind::Attached { attrs }),
        (attrs(), prop::collection::vec(any::<String>(), 0..4))
            .prop_map(|(set, removed)| EventKind::Changed { set, removed }),
        any::<String>().prop_map(|reason| EventKind::Detached { reason }),
        attrs().prop_map(|attrs| EventKind::Checkpoint { attrs }),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        "[a-z0-9._-]{1,24}",
        any::<String>(),
        any::<u128>(),
        1..=u64::MAX,
        any::<u64>(),
        event_kind(),
    )
        .prop_map(|(rae_id, device_id, sid, seq, ts_ms, kind)| Envelope {
            schema: SCHEMA_VERSION,
            rae_id,
            device_id,
            session_id: Uuid::from_u128(sid),
            seq,
            ts_ms,
            kind,
        })
}

/// Any CBOR value a future producer might put under an unknown key.
fn unknown_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Integer(i.into())),
        any::<u64>().prop_map(|u| Value::Integer(u.into())),
        any::<f64>().prop_map(Value::Float),
        any::<String>().prop_map(Value::Text),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>().prop_map(Value::Text), inner.clone()), 0..6)
                .prop_map(Value::Map),
            (0_u64..1000, inner).prop_map(|(tag, v)| Value::Tag(tag, Box::new(v))),
        ]
    })
}

fn unknown_key() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("must not be a known key", |k| {
        !KNOWN_KEYS.contains(&k.as_str())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_returns_the_original_envelope(env in envelope()) {
        let bytes = env.encode().expect("encodes");
        let decoded = Envelope::decode(&bytes).expect("decodes");
        // Re-encoding must give the same bytes: this also pins float bits
        // (e.g. the sign of zero) that `==` on f64 cannot see.
        prop_assert_eq!(decoded.encode().expect("re-encodes"), bytes);
        prop_assert_eq!(decoded, env);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn decoding_a_mutated_valid_encoding_never_panics(
        env in envelope(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        keep in any::<prop::sample::Index>(),
    ) {
        let mut bytes = env.encode().expect("encodes");
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        bytes.truncate(keep.index(bytes.len() + 1));
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn unknown_extra_keys_are_ignored(
        env in envelope(),
        extras in prop::collection::vec(
            (any::<prop::sample::Index>(), unknown_key(), unknown_value()),
            1..6,
        ),
    ) {
        let bytes = env.encode().expect("encodes");
        let value: Value = ciborium::from_reader(bytes.as_slice()).expect("valid cbor");
        let Value::Map(mut entries) = value else {
            panic!("envelope is not a map");
        };
        for (at, key, extra) in extras {
            if entries.iter().any(|(k, _)| k.as_text() == Some(key.as_str())) {
                continue; // keep keys unique
            }
            let i = at.index(entries.len() + 1);
            entries.insert(i, (Value::Text(key), extra));
        }
        let mut extended = Vec::new();
        ciborium::into_writer(&Value::Map(entries), &mut extended).expect("encodes");
        prop_assert_eq!(Envelope::decode(&extended), Ok(env));
    }
}
