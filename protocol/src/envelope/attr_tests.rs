//! Unit tests of attribute values: display, conversions and serde mapping.

use super::*;

fn to_cbor(value: &AttrValue) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("encodes");
    out
}

fn from_cbor(bytes: &[u8]) -> Result<AttrValue, String> {
    ciborium::from_reader::<AttrValue, _>(bytes).map_err(|e| e.to_string())
}

#[test]
fn display_shows_values_raw() {
    assert_eq!(AttrValue::from("FT232R").to_string(), "FT232R");
    assert_eq!(AttrValue::from(-42_i64).to_string(), "-42");
    assert_eq!(AttrValue::from(true).to_string(), "true");
    assert_eq!(AttrValue::from(false).to_string(), "false");
    assert_eq!(AttrValue::from(41.5).to_string(), "41.5");
    assert_eq!(AttrValue::from(2.0).to_string(), "2");
}

#[test]
fn from_conversions_pick_the_matching_variant() {
    assert_eq!(AttrValue::from("a"), AttrValue::Text("a".into()));
    assert_eq!(
        AttrValue::from(String::from("a")),
        AttrValue::Text("a".into())
    );
    assert_eq!(AttrValue::from(7_i64), AttrValue::Int(7));
    assert_eq!(AttrValue::from(true), AttrValue::Bool(true));
    assert_eq!(AttrValue::from(0.5), AttrValue::Float(0.5));
}

#[test]
fn values_encode_as_native_cbor_items() {
    assert_eq!(to_cbor(&"ab".into()), [0x62, b'a', b'b']);
    assert_eq!(to_cbor(&AttrValue::Int(10)), [0x0a]);
    assert_eq!(to_cbor(&AttrValue::Int(-1)), [0x20]);
    assert_eq!(to_cbor(&AttrValue::Bool(true)), [0xf5]);
    assert_eq!(to_cbor(&AttrValue::Bool(false)), [0xf4]);
    // 1.5 is exact in half precision, so the shortest form is used.
    assert_eq!(to_cbor(&AttrValue::Float(1.5)), [0xf9, 0x3e, 0x00]);
}

#[test]
fn native_cbor_items_decode_to_values() {
    for value in [
        AttrValue::Text("héllo".into()),
        AttrValue::Int(i64::MIN),
        AttrValue::Int(i64::MAX),
        AttrValue::Int(0),
        AttrValue::Bool(false),
        AttrValue::Float(0.1),
        AttrValue::Float(f64::INFINITY),
    ] {
        assert_eq!(from_cbor(&to_cbor(&value)), Ok(value));
    }
}

#[test]
fn float_sign_and_width_survive_a_round_trip_bit_exactly() {
    for x in [-0.0, 1.0e-310, 65504.0, 3.4e38, f64::MIN_POSITIVE, 0.1] {
        match from_cbor(&to_cbor(&AttrValue::Float(x))) {
            Ok(AttrValue::Float(y)) => assert_eq!(y.to_bits(), x.to_bits(), "{x}"),
            other => panic!("{x}: {other:?}"),
        }
    }
}

#[test]
fn unsigned_integer_above_i64_max_is_an_error_not_a_wrap() {
    // 0x1b: uint64 follows; value i64::MAX + 1.
    let bytes = [0x1b, 0x80, 0, 0, 0, 0, 0, 0, 0];
    let err = from_cbor(&bytes).expect_err("out of range");
    assert!(
        err.contains("9223372036854775808 is out of range for i64"),
        "{err}"
    );
}

#[test]
fn negative_integer_below_i64_min_is_an_error_not_a_wrap() {
    // 0x3b: negative int, -1 - 0x8000_0000_0000_0000.
    let bytes = [0x3b, 0x80, 0, 0, 0, 0, 0, 0, 0];
    let err = from_cbor(&bytes).expect_err("out of range");
    assert!(err.contains("out of range for i64"), "{err}");
}

#[test]
fn non_scalar_cbor_items_are_rejected() {
    for bytes in [&[0x80][..], &[0xa0], &[0xf6], &[0x41, 0x00]] {
        assert!(from_cbor(bytes).is_err(), "{bytes:02x?}");
    }
}

#[test]
fn values_map_to_natural_json() {
    let values = vec![
        AttrValue::from("x"),
        AttrValue::from(-3_i64),
        AttrValue::from(true),
        AttrValue::from(2.5),
    ];
    let json = serde_json::to_string(&values).expect("json");
    assert_eq!(json, r#"["x",-3,true,2.5]"#);
    let back: Vec<AttrValue> = serde_json::from_str(&json).expect("json");
    assert_eq!(back, values);
}

#[test]
fn json_integer_above_i64_max_is_an_error() {
    let result = serde_json::from_str::<AttrValue>("18446744073709551615");
    assert!(result.is_err());
}
