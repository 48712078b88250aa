//! Differential tests of the fast path against ciborium's serde decoder:
//! the fast path must decode exactly as the general decoder, or decline.

use super::*;
use crate::envelope::{Envelope, EventKind, SCHEMA_VERSION};
use proptest::prelude::*;

fn general(bytes: &[u8]) -> Option<WireIn> {
    Envelope::decode_general(bytes).ok()
}

fn attr_value() -> impl Strategy<Value = AttrValue> {
    prop_oneof![
        ".{0,12}".prop_map(AttrValue::Text),
        any::<i64>().prop_map(AttrValue::Int),
        (-30i64..30).prop_map(AttrValue::Int),
        any::<bool>().prop_map(AttrValue::Bool),
        // Any non-NaN float: ciborium writes the shortest lossless width,
        // so halves, singles and doubles all occur.
        any::<f64>()
            .prop_filter("NaN", |x| !x.is_nan())
            .prop_map(AttrValue::Float),
        prop::sample::select(vec![0.5, -0.0, 1.0e-7, 65504.0, f64::INFINITY, 3.25])
            .prop_map(AttrValue::Float),
    ]
}

fn attrs() -> impl Strategy<Value = Attrs> {
    prop::collection::btree_map("[a-z_]{1,10}", attr_value(), 0..6)
}

fn kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        attrs().prop_map(|attrs| EventKind::Attached { attrs }),
        (attrs(), prop::collection::vec("[a-z]{1,8}", 0..4))
            .prop_map(|(set, removed)| EventKind::Changed { set, removed }),
        ".{0,20}".prop_map(|reason| EventKind::Detached { reason }),
        attrs().prop_map(|attrs| EventKind::Checkpoint { attrs }),
    ]
}

prop_compose! {
    fn envelope()(
        rae_id in "[a-z0-9-]{1,16}",
        device_id in ".{1,40}",
        session in any::<u128>(),
        seq in 1u64..,
        ts_ms in any::<u64>(),
        kind in kind(),
    ) -> Envelope {
        Envelope {
            schema: SCHEMA_VERSION,
            rae_id,
            device_id,
            session_id: uuid::Uuid::from_u128(session),
            seq,
            ts_ms,
            kind,
        }
    }
}

/// One edit of valid bytes: overwrite a byte, cut the tail, insert a byte.
#[derive(Debug, Clone)]
enum Edit {
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    match edit {
        Edit::Set(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Edit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Edit::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_envelope_the_encoder_writes_takes_the_fast_path_and_decodes_as_the_general_decoder(
        env in envelope()
    ) {
        let bytes = env.encode().expect("encodes");
        let fast = parse(&bytes);
        prop_assert!(fast.is_some(), "the fast path declined {env:?}");
        prop_assert_eq!(fast, general(&bytes));
    }

    #[test]
    fn edited_input_is_decoded_as_the_general_decoder_does_or_declined(
        env in envelope(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let mut bytes = env.encode().expect("encodes");
        for e in &edits {
            if !bytes.is_empty() {
                apply(&mut bytes, e);
            }
        }
        if let Some(fast) = parse(&bytes) {
            prop_assert_eq!(Some(fast), general(&bytes), "bytes {:02x?}", bytes);
        }
    }

    #[test]
    fn random_bytes_are_decoded_as_the_general_decoder_does_or_declined(
        bytes in prop::collection::vec(any::<u8>(), 0..64)
    ) {
        if let Some(fast) = parse(&bytes) {
            prop_assert_eq!(Some(fast), general(&bytes));
        }
    }

    /// Random bytes alone almost never get past the first map entry; a
    /// valid envelope's head with a random tail reaches every field.
    #[test]
    fn a_valid_head_with_a_random_tail_is_decoded_as_the_general_decoder_does_or_declined(
        env in envelope(),
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut bytes = env.encode().expect("encodes");
        bytes.truncate(cut.index(bytes.len()));
        bytes.extend_from_slice(&tail);
        if let Some(fast) = parse(&bytes) {
            prop_assert_eq!(Some(fast), general(&bytes), "bytes {:02x?}", bytes);
        }
    }
}

/// A minimal changed envelope whose `set` holds one attribute `x` with the
/// CBOR item `value`.
fn with_attr_item(value: &[u8]) -> Vec<u8> {
    let env = Envelope {
        schema: SCHEMA_VERSION,
        rae_id: "box1".into(),
        device_id: "d".into(),
        session_id: uuid::Uuid::from_u128(7),
        seq: 1,
        ts_ms: 2,
        kind: EventKind::Changed {
            set: Attrs::from([("x".to_owned(), AttrValue::Bool(true))]),
            removed: vec![],
        },
    };
    let mut bytes = env.encode().expect("encodes");
    // `true` (0xf5) is the attribute's value and the only such byte.
    let at = bytes.iter().position(|b| *b == 0xf5).expect("the bool");
    bytes.splice(at..=at, value.iter().copied());
    bytes
}

#[test]
fn every_half_float_decodes_to_the_general_decoders_bits_or_declines_if_nan() {
    for bits in 0..=u16::MAX {
        let [hi, lo] = bits.to_be_bytes();
        let bytes = with_attr_item(&[0xf9, hi, lo]);
        let fast = parse(&bytes);
        let general = general(&bytes).expect("a half float decodes");
        let Some(AttrValue::Float(expected)) = general.set.as_ref().and_then(|s| s.get("x")) else {
            panic!("no float for {bits:#06x}");
        };
        if expected.is_nan() {
            assert!(
                fast.is_none(),
                "{bits:#06x}: NaN is left to the general decoder"
            );
            continue;
        }
        let fast = fast.unwrap_or_else(|| panic!("{bits:#06x} declined"));
        let Some(AttrValue::Float(got)) = fast.set.as_ref().and_then(|s| s.get("x")) else {
            panic!("fast path: no float for {bits:#06x}");
        };
        assert_eq!(got.to_bits(), expected.to_bits(), "half {bits:#06x}");
    }
}

#[test]
fn integers_at_the_i64_bounds_decode_and_beyond_them_decline() {
    let min = with_attr_item(&[0x3b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let fast = parse(&min).expect("i64::MIN");
    assert_eq!(
        fast.set.as_ref().and_then(|s| s.get("x")),
        Some(&AttrValue::Int(i64::MIN))
    );
    assert_eq!(Some(fast), general(&min));
    let below = with_attr_item(&[0x3b, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert!(parse(&below).is_none());
    assert!(general(&below).is_none(), "the general decoder reports it");
    let above = with_attr_item(&[0x1b, 0x80, 0, 0, 0, 0, 0, 0, 0]);
    assert!(parse(&above).is_none());
    assert!(general(&above).is_none(), "the general decoder reports it");
}

#[test]
fn shapes_it_does_not_handle_are_declined_for_the_general_decoder() {
    // An unknown key (the general decoder skips it).
    let mut unknown = with_attr_item(&[0xf4]);
    unknown[0] += 1; // one more map entry
    unknown.extend_from_slice(&[0x63, b'z', b'z', b'z', 0x01]);
    assert!(parse(&unknown).is_none());
    assert!(general(&unknown).is_some());
    // A tagged value, a null, an indefinite-length map.
    for item in [&[0xc1, 0x01][..], &[0xf6], &[0xbf, 0xff]] {
        assert!(parse(&with_attr_item(item)).is_none(), "{item:02x?}");
    }
    // Not a map at all, or empty input.
    assert!(parse(&[0x80]).is_none());
    assert!(parse(&[]).is_none());
}

#[test]
fn a_repeated_key_is_declined_for_the_general_decoder_to_report() {
    let mut bytes = with_attr_item(&[0xf4]);
    bytes[0] += 1; // one more map entry: `seq` again
    bytes.extend_from_slice(&[0x63, b's', b'e', b'q', 0x05]);
    assert!(parse(&bytes).is_none());
    assert!(general(&bytes).is_none(), "the general decoder reports it");
}
