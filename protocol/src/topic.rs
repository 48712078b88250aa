//! MQTT topic layout of rae, version 1.
//!
//! Owns the topic strings and their parsing. Layout (all under `rae/v1/`):
//! - `rae/v1/{rae_id}/devices/{session_id}`: device envelopes of one session;
//! - `rae/v1/{rae_id}/status`: retained birth / last-will of an agent;
//! - `rae/v1/{rae_id}/commands/{name}`: commands to an agent.
//!
//! Invariants: every variable segment passes [`validate_segment`] (non-empty,
//! at most [`MAX_SEGMENT_LEN`] bytes, no `+`, `#`, `/`, NUL or other control
//! characters), so it can never alter the topic structure or act as an MQTT
//! wildcard; session ids are lowercase hyphenated UUIDs. Builders and
//! [`parse_topic`] agree: parsing a built topic yields its inputs.

use uuid::Uuid;

/// Longest allowed variable topic segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 128;

const PREFIX: &str = "rae/v1/";

/// Why a topic or topic segment is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// A segment is the empty string.
    #[error("{what} is empty")]
    Empty {
        /// Which segment (e.g. `rae_id`, `command name`).
        what: &'static str,
    },
    /// A segment is longer than [`MAX_SEGMENT_LEN`] bytes.
    #[error("{what} is {len} bytes long, more than the maximum of {max} bytes")]
    TooLong {
        /// Which segment.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit, [`MAX_SEGMENT_LEN`].
        max: usize,
    },
    /// A segment contains `+`, `#`, `/`, NUL or a control character.
    #[error("{what} contains forbidden character {ch:?}")]
    ForbiddenChar {
        /// Which segment.
        what: &'static str,
        /// The first offending character.
        ch: char,
    },
    /// The topic does not follow any rae v1 layout.
    #[error("not a rae v1 topic: {0:?}")]
    NotRaeTopic(String),
    /// The session segment of a device topic is not a lowercase hyphenated UUID.
    #[error("session id segment {0:?} is not a lowercase hyphenated UUID")]
    BadSessionId(String),
}

/// A topic recognised by [`parse_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedTopic {
    /// `rae/v1/{rae_id}/devices/{session_id}`.
    Device {
        /// The agent (box) id.
        rae_id: String,
        /// The device session.
        session_id: Uuid,
    },
    /// `rae/v1/{rae_id}/status`.
    Status {
        /// The agent (box) id.
        rae_id: String,
    },
    /// `rae/v1/{rae_id}/commands/{name}`.
    Command {
        /// The agent (box) id.
        rae_id: String,
        /// The command name.
        name: String,
    },
}

/// Checks one variable topic segment (an id or a name).
pub fn validate_segment(segment: &str) -> Result<(), TopicError> {
    check_segment("segment", segment)
}

fn check_segment(what: &'static str, segment: &str) -> Result<(), TopicError> {
    if segment.is_empty() {
        return Err(TopicError::Empty { what });
    }
    if segment.len() > MAX_SEGMENT_LEN {
        return Err(TopicError::TooLong {
            what,
            len: segment.len(),
            max: MAX_SEGMENT_LEN,
        });
    }
    match segment
        .chars()
        .find(|&ch| matches!(ch, '+' | '#' | '/') || ch.is_control())
    {
        Some(ch) => Err(TopicError::ForbiddenChar { what, ch }),
        None => Ok(()),
    }
}

/// `rae/v1/{rae_id}/devices/{session_id}`: where one device session is published.
pub fn device_topic(rae_id: &str, session_id: &Uuid) -> Result<String, TopicError> {
    check_segment("rae_id", rae_id)?;
    Ok(format!(
        "{PREFIX}{rae_id}/devices/{}",
        session_id.hyphenated()
    ))
}

/// `rae/v1/{rae_id}/status`: the agent's retained birth / last-will topic.
pub fn status_topic(rae_id: &str) -> Result<String, TopicError> {
    check_segment("rae_id", rae_id)?;
    Ok(format!("{PREFIX}{rae_id}/status"))
}

/// `rae/v1/{rae_id}/commands/{name}`: one command addressed to an agent.
pub fn command_topic(rae_id: &str, name: &str) -> Result<String, TopicError> {
    check_segment("rae_id", rae_id)?;
    check_segment("command name", name)?;
    Ok(format!("{PREFIX}{rae_id}/commands/{name}"))
}

/// `rae/v1/{rae_id}/commands/#`: the subscription filter for all commands of an agent.
pub fn command_filter(rae_id: &str) -> Result<String, TopicError> {
    check_segment("rae_id", rae_id)?;
    Ok(format!("{PREFIX}{rae_id}/commands/#"))
}

/// Parses a concrete (wildcard-free) rae v1 topic.
pub fn parse_topic(topic: &str) -> Result<ParsedTopic, TopicError> {
    let not_rae = || TopicError::NotRaeTopic(topic.to_owned());
    let rest = topic.strip_prefix(PREFIX).ok_or_else(not_rae)?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [rae_id, "devices", session] => {
            check_segment("rae_id", rae_id)?;
            Ok(ParsedTopic::Device {
                rae_id: (*rae_id).to_owned(),
                session_id: parse_session_id(session)?,
            })
        }
        [rae_id, "status"] => {
            check_segment("rae_id", rae_id)?;
            Ok(ParsedTopic::Status {
                rae_id: (*rae_id).to_owned(),
            })
        }
        [rae_id, "commands", name] => {
            check_segment("rae_id", rae_id)?;
            check_segment("command name", name)?;
            Ok(ParsedTopic::Command {
                rae_id: (*rae_id).to_owned(),
                name: (*name).to_owned(),
            })
        }
        _ => Err(not_rae()),
    }
}

/// Parses a session id in its only accepted spelling: lowercase, hyphenated.
pub(crate) fn parse_canonical_uuid(text: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(text).ok()?;
    let mut buf = Uuid::encode_buffer();
    (uuid.hyphenated().encode_lower(&mut buf) == text).then_some(uuid)
}

fn parse_session_id(segment: &str) -> Result<Uuid, TopicError> {
    parse_canonical_uuid(segment).ok_or_else(|| TopicError::BadSessionId(segment.to_owned()))
}

#[cfg(test)]
#[path = "topic_tests.rs"]
mod tests;
