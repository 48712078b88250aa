//! The device-event envelope: what an agent publishes for every change of a
//! device, and its CBOR encoding.
//!
//! Owns [`Envelope`], [`EventKind`], the attribute values ([`AttrValue`],
//! [`Attrs`]) and the wire codec. Invariants:
//! - the wire form is one CBOR map with text keys (see `docs/PROTOCOL.md`);
//!   attribute values are native CBOR text, integer, bool and float items;
//! - [`Envelope::decode`] never panics: any input either decodes or yields a
//!   precise [`DecodeError`]; it reads exactly one CBOR item; its fast path
//!   (`fast`) decodes exactly as the general one or declines;
//! - unknown map keys are ignored (forward compatibility), an unknown kind is
//!   [`DecodeError::UnknownKind`], a schema newer than [`SCHEMA_VERSION`] is
//!   [`DecodeError::UnsupportedSchema`];
//! - a decoded envelope has `seq >= 1` and a session id that was spelled as a
//!   lowercase hyphenated UUID on the wire.

mod attr;
mod fast;
mod wire;

pub use attr::AttrValue;

use crate::topic::{device_topic, TopicError};

/// The schema version this crate writes and the newest one it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Device attributes by name, ordered (so encoding is deterministic).
pub type Attrs = std::collections::BTreeMap<String, AttrValue>;

/// What happened to the device.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// The device appeared; `attrs` is its full record. Starts a session.
    Attached {
        /// Full attribute record.
        attrs: Attrs,
    },
    /// Some attributes changed: `set` are new or updated, `removed` are gone.
    Changed {
        /// New or updated attributes.
        set: Attrs,
        /// Names of attributes that no longer exist.
        removed: Vec<String>,
    },
    /// The device went away. Ends the session.
    Detached {
        /// Free-form reason, e.g. `unplugged`.
        reason: String,
    },
    /// The full record as of `seq`; replaces the consumer's state.
    Checkpoint {
        /// Full attribute record.
        attrs: Attrs,
    },
}

impl EventKind {
    /// The wire name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Attached { .. } => "attached",
            EventKind::Changed { .. } => "changed",
            EventKind::Detached { .. } => "detached",
            EventKind::Checkpoint { .. } => "checkpoint",
        }
    }
}

/// One device event, as published on the device topic of its session.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Schema version; [`SCHEMA_VERSION`] when built by us.
    pub schema: u32,
    /// Id of the agent (box) that saw the event; a valid topic segment.
    pub rae_id: String,
    /// Stable device id, the same across re-plugs.
    pub device_id: String,
    /// UUIDv7, new for every attach of the device.
    pub session_id: uuid::Uuid,
    /// Gapless per session, starting at [`crate::FIRST_SEQ`].
    pub seq: u64,
    /// Event time, unix milliseconds.
    pub ts_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// Deepest nesting of CBOR arrays, maps and tags accepted by the decoder
/// (an envelope itself needs 3; the rest is room for unknown fields).
const MAX_NESTING: usize = 64;

/// Why an envelope could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The CBOR serializer failed.
    #[error("cannot encode envelope as CBOR: {0}")]
    Cbor(String),
}

/// Why bytes are not a valid envelope.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not CBOR, truncated, or not shaped like an envelope.
    #[error("invalid envelope CBOR: {0}")]
    Cbor(String),
    /// The schema version is 0 or newer than this decoder supports.
    #[error("unsupported envelope schema {found} (this decoder supports 1..={supported})")]
    UnsupportedSchema {
        /// The version on the wire (saturated to `u32::MAX`).
        found: u32,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// The `kind` is not one this decoder knows.
    #[error("unknown envelope kind {0:?}")]
    UnknownKind(String),
    /// A required field is absent; `kind` is `"envelope"` for top-level fields.
    #[error("{kind} is missing required field {field:?}")]
    MissingField {
        /// The kind name, or `"envelope"`.
        kind: &'static str,
        /// The wire key.
        field: &'static str,
    },
    /// A field is present but its value is not acceptable.
    #[error("invalid field {field:?}: {reason}")]
    InvalidField {
        /// The wire key.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Envelope {
    /// Encodes the envelope as one CBOR map (see `docs/PROTOCOL.md`).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(128);
        ciborium::into_writer(&wire::WireOut::from(self), &mut out).map_err(|e| match e {
            ciborium::ser::Error::Io(io) => EncodeError::Cbor(io.to_string()),
            ciborium::ser::Error::Value(msg) => EncodeError::Cbor(msg),
        })?;
        Ok(out)
    }

    /// Decodes one envelope from the first CBOR item of `bytes`.
    ///
    /// The usual shape is read by a direct parser (`fast`); anything else,
    /// including every malformed input, goes through ciborium's serde
    /// decoder, which words the error. Both build the same wire struct,
    /// validated by one function.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let raw = match fast::parse(bytes) {
            Some(raw) => raw,
            None => Self::decode_general(bytes)?,
        };
        raw.into_envelope()
    }

    /// The envelope's CBOR as its wire struct, by ciborium's serde decoder.
    fn decode_general(bytes: &[u8]) -> Result<wire::WireIn, DecodeError> {
        ciborium::de::from_reader_with_recursion_limit(bytes, MAX_NESTING).map_err(cbor_error)
    }

    /// The MQTT topic this envelope is published on.
    pub fn topic(&self) -> Result<String, TopicError> {
        device_topic(&self.rae_id, &self.session_id)
    }
}

/// Turns a ciborium error into a message that says where and what.
fn cbor_error(err: ciborium::de::Error<std::io::Error>) -> DecodeError {
    use ciborium::de::Error;
    DecodeError::Cbor(match err {
        Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "input ends in the middle of an item (truncated)".to_owned()
        }
        Error::Io(io) => format!("read error: {io}"),
        Error::Syntax(offset) => format!("malformed CBOR at byte {offset}"),
        Error::Semantic(Some(offset), msg) => format!("{msg} (item at byte {offset})"),
        Error::Semantic(None, msg) => msg,
        Error::RecursionLimitExceeded => {
            format!("items nested deeper than {MAX_NESTING} levels")
        }
    })
}

#[cfg(test)]
mod tests;
