//! Private wire shape of an envelope and its conversion to and from
//! [`Envelope`].
//!
//! Owns the CBOR map keys and the validation done after parsing. Invariants:
//! [`WireOut`] writes keys in the documented order (`v`, `rae_id`,
//! `device_id`, `session_id`, `seq`, `ts`, `kind`, then the kind's fields)
//! and only the fields of its kind; [`WireIn`] accepts any map, ignores
//! unknown keys, and every known field is optional at the serde level so
//! that a missing one becomes [`DecodeError::MissingField`], not a string.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Attrs, DecodeError, Envelope, EventKind, SCHEMA_VERSION};
use crate::seq::FIRST_SEQ;
use crate::topic::parse_canonical_uuid;

/// Borrowed view written by [`Envelope::encode`].
#[derive(Serialize)]
pub(super) struct WireOut<'a> {
    v: u32,
    rae_id: &'a str,
    device_id: &'a str,
    session_id: String,
    seq: u64,
    ts: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attrs: Option<&'a Attrs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    set: Option<&'a Attrs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl<'a> From<&'a Envelope> for WireOut<'a> {
    fn from(env: &'a Envelope) -> Self {
        let mut out = WireOut {
            v: env.schema,
            rae_id: &env.rae_id,
            device_id: &env.device_id,
            session_id: env.session_id.hyphenated().to_string(),
            seq: env.seq,
            ts: env.ts_ms,
            kind: env.kind.name(),
            attrs: None,
            set: None,
            removed: None,
            reason: None,
        };
        match &env.kind {
            EventKind::Attached { attrs } | EventKind::Checkpoint { attrs } => {
                out.attrs = Some(attrs);
            }
            EventKind::Changed { set, removed } => {
                out.set = Some(set);
                out.removed = Some(removed);
            }
            EventKind::Detached { reason } => out.reason = Some(reason),
        }
        out
    }
}

/// Owned, permissive shape read by [`Envelope::decode`], from either
/// decoder (the general one here, or `super::fast`).
#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(super) struct WireIn {
    #[serde(default)]
    pub(super) v: Option<u64>,
    #[serde(default)]
    pub(super) rae_id: Option<String>,
    #[serde(default)]
    pub(super) device_id: Option<String>,
    #[serde(default)]
    pub(super) session_id: Option<String>,
    #[serde(default)]
    pub(super) seq: Option<u64>,
    #[serde(default)]
    pub(super) ts: Option<u64>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) attrs: Option<Attrs>,
    #[serde(default)]
    pub(super) set: Option<Attrs>,
    #[serde(default)]
    pub(super) removed: Option<Vec<String>>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

fn required<T>(
    value: Option<T>,
    kind: &'static str,
    field: &'static str,
) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::MissingField { kind, field })
}

impl WireIn {
    /// Validates the parsed map and builds the envelope. Checks run in a
    /// fixed order: schema first (a newer schema may change everything
    /// else), then the top-level fields, then the kind and its fields.
    pub(super) fn into_envelope(self) -> Result<Envelope, DecodeError> {
        const TOP: &str = "envelope";
        let v = required(self.v, TOP, "v")?;
        let schema = match u32::try_from(v) {
            Ok(s) if (1..=SCHEMA_VERSION).contains(&s) => s,
            _ => {
                return Err(DecodeError::UnsupportedSchema {
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                    supported: SCHEMA_VERSION,
                })
            }
        };
        let rae_id = required(self.rae_id, TOP, "rae_id")?;
        let device_id = required(self.device_id, TOP, "device_id")?;
        let session_text = required(self.session_id, TOP, "session_id")?;
        let session_id = parse_session_id(&session_text)?;
        let seq = required(self.seq, TOP, "seq")?;
        if seq < FIRST_SEQ {
            return Err(DecodeError::InvalidField {
                field: "seq",
                reason: format!("must be at least {FIRST_SEQ}, got {seq}"),
            });
        }
        let ts_ms = required(self.ts, TOP, "ts")?;
        let kind_name = required(self.kind, TOP, "kind")?;
        let kind = match kind_name.as_str() {
            "attached" => EventKind::Attached {
                attrs: required(self.attrs, "attached", "attrs")?,
            },
            "changed" => EventKind::Changed {
                set: required(self.set, "changed", "set")?,
                removed: required(self.removed, "changed", "removed")?,
            },
            "detached" => EventKind::Detached {
                reason: required(self.reason, "detached", "reason")?,
            },
            "checkpoint" => EventKind::Checkpoint {
                attrs: required(self.attrs, "checkpoint", "attrs")?,
            },
            _ => return Err(DecodeError::UnknownKind(kind_name)),
        };
        Ok(Envelope {
            schema,
            rae_id,
            device_id,
            session_id,
            seq,
            ts_ms,
            kind,
        })
    }
}

fn parse_session_id(text: &str) -> Result<Uuid, DecodeError> {
    parse_canonical_uuid(text).ok_or_else(|| DecodeError::InvalidField {
        field: "session_id",
        reason: format!("{text:?} is not a lowercase hyphenated UUID"),
    })
}
