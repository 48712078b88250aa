//! What the uplink publishes besides journaled envelopes, and how it reads
//! commands. Pure functions.
//!
//! - Status (`rae/v1/{rae_id}/status`, retained, QoS 1): a CBOR map
//!   `{state: "online"|"offline", agent_version, started_ms, boot_count, ts_ms}`.
//!   Birth is `online`; the MQTT last will and a graceful stop are `offline`.
//! - Commands (`rae/v1/{rae_id}/commands/{name}`): `resync` with an empty
//!   payload (all sessions) or a CBOR map `{session_id: "<uuid>"}`.

use ciborium::Value;
use uuid::Uuid;

/// The agent facts carried by status messages.
#[derive(Debug, Clone)]
pub struct BirthInfo {
    pub agent_version: String,
    pub started_ms: u64,
    pub boot_count: u64,
}

/// Encodes a status message.
pub fn status_payload(state: &str, info: &BirthInfo, ts_ms: u64) -> Vec<u8> {
    let map = Value::Map(vec![
        (Value::Text("state".into()), Value::Text(state.into())),
        (
            Value::Text("agent_version".into()),
            Value::Text(info.agent_version.clone()),
        ),
        (
            Value::Text("started_ms".into()),
            Value::Integer(info.started_ms.into()),
        ),
        (
            Value::Text("boot_count".into()),
            Value::Integer(info.boot_count.into()),
        ),
        (Value::Text("ts_ms".into()), Value::Integer(ts_ms.into())),
    ]);
    let mut out = Vec::new();
    // Writing a Value into a Vec cannot fail.
    let _ = ciborium::into_writer(&map, &mut out);
    out
}

/// A command the agent understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Checkpoints for every present session, or one.
    Resync { session: Option<Uuid> },
}

/// Why a command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("malformed {name} payload: {reason}")]
    Malformed { name: String, reason: String },
}

/// Parses a command by name and payload.
pub fn parse_command(name: &str, payload: &[u8]) -> Result<Command, CommandError> {
    let malformed = |reason: String| CommandError::Malformed {
        name: name.to_string(),
        reason,
    };
    match name {
        "resync" => {
            if payload.is_empty() {
                return Ok(Command::Resync { session: None });
            }
            let value: Value =
                ciborium::from_reader(payload).map_err(|e| malformed(e.to_string()))?;
            let Value::Map(entries) = value else {
                return Err(malformed("expected a CBOR map".into()));
            };
            let sid = entries.iter().find_map(|(k, v)| match (k, v) {
                (Value::Text(k), Value::Text(v)) if k == "session_id" => Some(v.as_str()),
                _ => None,
            });
            match sid {
                None => Ok(Command::Resync { session: None }),
                Some(s) => Uuid::parse_str(s)
                    .map(|u| Command::Resync { session: Some(u) })
                    .map_err(|e| malformed(format!("session_id {s:?}: {e}"))),
            }
        }
        other => Err(CommandError::Unknown(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cbor(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).expect("encode");
        out
    }

    #[test]
    fn an_empty_resync_means_every_session() {
        assert_eq!(
            parse_command("resync", b""),
            Ok(Command::Resync { session: None })
        );
    }

    #[test]
    fn a_resync_can_name_one_session() {
        let id = Uuid::now_v7();
        let p = cbor(&Value::Map(vec![(
            Value::Text("session_id".into()),
            Value::Text(id.to_string()),
        )]));
        assert_eq!(
            parse_command("resync", &p),
            Ok(Command::Resync { session: Some(id) })
        );
    }

    #[test]
    fn garbage_and_unknown_commands_are_typed_errors() {
        assert!(matches!(
            parse_command("resync", b"\xff\x00garbage"),
            Err(CommandError::Malformed { .. })
        ));
        assert!(matches!(
            parse_command("reboot", b""),
            Err(CommandError::Unknown(_))
        ));
        let bad_id = cbor(&Value::Map(vec![(
            Value::Text("session_id".into()),
            Value::Text("nope".into()),
        )]));
        assert!(matches!(
            parse_command("resync", &bad_id),
            Err(CommandError::Malformed { .. })
        ));
    }

    #[test]
    fn the_status_payload_is_a_cbor_map_with_the_state() {
        let info = BirthInfo {
            agent_version: "1.2.3".into(),
            started_ms: 5,
            boot_count: 7,
        };
        let v: Value =
            ciborium::from_reader(&status_payload("online", &info, 9)[..]).expect("cbor");
        let Value::Map(m) = v else {
            panic!("not a map")
        };
        assert!(m.contains(&(Value::Text("state".into()), Value::Text("online".into()))));
        assert!(m.contains(&(Value::Text("boot_count".into()), Value::Integer(7.into()))));
    }
}
