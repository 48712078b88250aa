//! Unit tests of decoding malformed or hostile input: every such input is
//! a typed error, never a panic, a wrap-around or a stack overflow.

use ciborium::Value;

use super::*;

#[test]
fn attr_integer_above_i64_max_is_an_error_not_a_panic() {
    let big = Value::Map(vec![(
        Value::Text("n".into()),
        Value::Integer(u64::MAX.into()),
    )]);
    let bytes = edited(EventKind::Attached { attrs: attrs() }, |m| {
        set_key(m, "attrs", big)
    });
    let err = Envelope::decode(&bytes).expect_err("out of range");
    assert!(
        matches!(&err, DecodeError::Cbor(msg) if msg.contains("out of range for i64")),
        "{err}"
    );
}

#[test]
fn every_truncation_is_a_cbor_error() {
    let bytes = sample(all_kinds().remove(1)).encode().expect("encodes");
    for len in 0..bytes.len() {
        let result = Envelope::decode(&bytes[..len]);
        assert!(
            matches!(result, Err(DecodeError::Cbor(_))),
            "{len}: {result:?}"
        );
    }
}

#[test]
fn trailing_bytes_after_the_first_item_are_not_read() {
    let env = sample(EventKind::Detached { reason: "x".into() });
    let mut bytes = env.encode().expect("encodes");
    bytes.extend_from_slice(&[0xff, 0x00]);
    assert_eq!(Envelope::decode(&bytes), Ok(env));
}

#[test]
fn non_map_or_non_text_keyed_input_is_a_cbor_error() {
    for bytes in [&[0x01][..], &[0x80], &[0xa1, 0x01, 0x01], &[0xff]] {
        let result = Envelope::decode(bytes);
        assert!(
            matches!(result, Err(DecodeError::Cbor(_))),
            "{bytes:02x?}: {result:?}"
        );
    }
}

#[test]
fn deep_nesting_is_rejected_without_overflowing_the_stack() {
    let mut bytes = vec![0xa1, 0x61, b'x'];
    bytes.extend(std::iter::repeat_n(0x81, 100_000));
    bytes.push(0x00);
    let err = Envelope::decode(&bytes).expect_err("too deep");
    assert!(err.to_string().contains("nested deeper than"), "{err}");
}

#[test]
fn duplicate_known_key_is_a_cbor_error() {
    let bytes = edited(EventKind::Detached { reason: "x".into() }, |m| {
        m.push((Value::Text("seq".into()), Value::Integer(4.into())))
    });
    let err = Envelope::decode(&bytes).expect_err("duplicate");
    assert!(
        matches!(&err, DecodeError::Cbor(msg) if msg.contains("duplicate field")),
        "{err}"
    );
}

#[test]
fn known_key_with_wrong_type_is_a_cbor_error() {
    let bytes = edited(EventKind::Detached { reason: "x".into() }, |m| {
        set_key(m, "seq", Value::Text("4".into()))
    });
    assert!(matches!(
        Envelope::decode(&bytes),
        Err(DecodeError::Cbor(_))
    ));
}

#[test]
fn missing_schema_version_is_a_missing_envelope_field() {
    let bytes = edited(EventKind::Detached { reason: "x".into() }, |m| {
        remove_key(m, "v")
    });
    assert_eq!(
        Envelope::decode(&bytes),
        Err(DecodeError::MissingField {
            kind: "envelope",
            field: "v"
        })
    );
}

#[test]
fn decode_error_messages_say_what_is_wrong() {
    let truncated = Envelope::decode(&[0xa1, 0x61]).expect_err("truncated");
    assert_eq!(
        truncated.to_string(),
        "invalid envelope CBOR: input ends in the middle of an item (truncated)"
    );
    let missing = DecodeError::MissingField {
        kind: "changed",
        field: "set",
    };
    assert_eq!(
        missing.to_string(),
        "changed is missing required field \"set\""
    );
    let schema = DecodeError::UnsupportedSchema {
        found: 2,
        supported: 1,
    };
    assert_eq!(
        schema.to_string(),
        "unsupported envelope schema 2 (this decoder supports 1..=1)"
    );
}
