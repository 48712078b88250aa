//! `rae-protocol`: the shared wire contract of rae.
//!
//! Owns everything two rae processes must agree on byte for byte:
//! - [`topic`]: the MQTT topic layout and the validation of topic segments;
//! - [`envelope`]: the CBOR device-event [`Envelope`] and its encoding;
//! - [`seq`]: the per-session sequence rules consumers apply;
//! - [`time`]: unix-millisecond timestamps: now, and as UTC text.
//!
//! Invariants: this crate does no I/O (it reads only the clock,
//! [`time::now_ms`]), holds no state and never panics on
//! input; every malformed input becomes a typed error. The human-readable
//! contract lives in `docs/PROTOCOL.md` and is kept in sync by tests.

pub mod envelope;
pub mod seq;
pub mod time;
pub mod topic;

pub use envelope::{
    AttrValue, Attrs, DecodeError, EncodeError, Envelope, EventKind, SCHEMA_VERSION,
};
pub use seq::{check_seq, SeqVerdict, FIRST_SEQ};
pub use topic::{
    command_filter, command_topic, device_topic, parse_topic, status_topic, validate_segment,
    ParsedTopic, TopicError, MAX_SEGMENT_LEN,
};
