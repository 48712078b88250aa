//! Decoding what a [`super::Subscriber`] received and comparing it with the
//! agent's journal: device envelopes ([`device_envelopes`],
//! [`dedupe_by_session_seq`], [`by_session`]), status and command payloads
//! ([`status_state`], [`status_field`], [`statuses`], [`resync_payload`]),
//! and the uplink's delivery guarantees ([`missing`], [`assert_delivered`],
//! [`records`]).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Result};
use ciborium::Value;
use rae_protocol::{parse_topic, Attrs, Envelope, EventKind, ParsedTopic};

use super::Message;
use crate::agent::{check_sessions, EventRow};

/// A message from a device topic, with its decoded envelope.
#[derive(Debug, Clone)]
pub struct Received {
    pub message: Message,
    pub envelope: Envelope,
}

impl Received {
    pub fn session(&self) -> String {
        self.envelope.session_id.to_string()
    }
}

/// The envelopes that arrived on device topics, in receive order. Empty
/// payloads (retained clears) are skipped; an undecodable payload, or one
/// on another session's topic, is an error.
pub fn device_envelopes(messages: &[Message]) -> Result<Vec<Received>> {
    let mut out = Vec::new();
    for m in messages {
        let Ok(ParsedTopic::Device { .. }) = parse_topic(&m.topic) else {
            continue;
        };
        if m.payload.is_empty() {
            continue;
        }
        let envelope = Envelope::decode(&m.payload)
            .map_err(|e| anyhow::anyhow!("message #{} on {}: {e}", m.index, m.topic))?;
        ensure!(
            envelope.topic()? == m.topic,
            "message #{} on {} carries {envelope:?}",
            m.index,
            m.topic
        );
        out.push(Received {
            message: m.clone(),
            envelope,
        });
    }
    Ok(out)
}

/// Keeps the first message of each `(session_id, seq)`, in receive order.
pub fn dedupe_by_session_seq(received: Vec<Received>) -> Vec<Received> {
    let mut seen = BTreeSet::new();
    received
        .into_iter()
        .filter(|r| seen.insert((r.envelope.session_id, r.envelope.seq)))
        .collect()
}

/// Groups by session id (lowercase hyphenated), keeping the order.
pub fn by_session(received: &[Received]) -> BTreeMap<String, Vec<&Received>> {
    let mut out: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in received {
        out.entry(r.session()).or_default().push(r);
    }
    out
}

/// The `state` text of a status payload (a CBOR map), if it has one.
pub fn status_state(payload: &[u8]) -> Option<String> {
    status_field(payload, "state")?.into_text().ok()
}

/// Field `key` of a status payload (a CBOR map).
pub fn status_field(payload: &[u8], key: &str) -> Option<Value> {
    let value: Value = ciborium::from_reader(payload).ok()?;
    value
        .into_map()
        .ok()?
        .into_iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// The status messages of agent `rae_id` with their decoded `state`, in order.
pub fn statuses<'a>(messages: &'a [Message], rae_id: &str) -> Vec<(&'a Message, Option<String>)> {
    let topic = rae_protocol::status_topic(rae_id).unwrap_or_default();
    messages
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| (m, status_state(&m.payload)))
        .collect()
}

/// A `resync` payload for one session: the CBOR map `{"session_id": id}`.
pub fn resync_payload(session_id: &str) -> Result<Vec<u8>> {
    let map = Value::Map(vec![(
        Value::Text("session_id".into()),
        Value::Text(session_id.into()),
    )]);
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out)?;
    Ok(out)
}

/// The journal events not (yet) published or not (yet) received.
pub fn missing<'a>(rows: &'a [EventRow], messages: &[Message]) -> Result<Vec<&'a EventRow>> {
    let got: BTreeSet<(String, u64)> = device_envelopes(messages)?
        .iter()
        .map(|r| (r.session(), r.envelope.seq))
        .collect();
    Ok(rows
        .iter()
        .filter(|r| !r.published || !got.contains(&(r.session_id.clone(), r.seq)))
        .collect())
}

/// After dedupe by `(session_id, seq)`: exactly the journal's events, same
/// bytes, journal order per session; and every event is published.
pub fn assert_delivered(rows: &[EventRow], received: Vec<Received>) -> Result<()> {
    check_sessions(rows)?;
    let unpublished: Vec<&EventRow> = rows.iter().filter(|r| !r.published).collect();
    ensure!(
        unpublished.is_empty(),
        "not marked published: {unpublished:#?}"
    );
    let deduped = dedupe_by_session_seq(received);
    let got = by_session(&deduped);
    let mut want: BTreeMap<String, Vec<&EventRow>> = BTreeMap::new();
    for r in rows {
        want.entry(r.session_id.clone()).or_default().push(r);
    }
    let (got_ids, want_ids): (Vec<_>, Vec<_>) = (got.keys().collect(), want.keys().collect());
    ensure!(
        got_ids == want_ids,
        "sessions received {got_ids:?}, journaled {want_ids:?}"
    );
    for (session, rows) in &want {
        let msgs = &got[session];
        let got_seqs: Vec<u64> = msgs.iter().map(|m| m.envelope.seq).collect();
        let want_seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        ensure!(
            got_seqs == want_seqs,
            "session {session}: received seqs {got_seqs:?}, journal {want_seqs:?}"
        );
        for (m, r) in msgs.iter().zip(rows) {
            ensure!(
                m.message.payload == r.payload,
                "event {r:?}: received other bytes: {m:?}"
            );
        }
    }
    Ok(())
}

/// The full record of each session as of its last journaled event.
pub fn records(rows: &[EventRow]) -> Result<BTreeMap<String, Attrs>> {
    let mut out: BTreeMap<String, Attrs> = BTreeMap::new();
    for r in rows {
        match r.kind()? {
            EventKind::Attached { attrs } | EventKind::Checkpoint { attrs } => {
                out.insert(r.session_id.clone(), attrs);
            }
            EventKind::Changed { set, removed } => {
                let rec = out.entry(r.session_id.clone()).or_default();
                rec.extend(set);
                rec.retain(|k, _| !removed.contains(k));
            }
            EventKind::Detached { .. } => {
                out.remove(&r.session_id);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rae_protocol::AttrValue;

    const SESSIONS: [&str; 2] = [
        "0190b2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
        "0190b2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6e",
    ];

    fn event(id: i64, session: usize, seq: u64, kind: EventKind) -> Result<(EventRow, Message)> {
        let env = Envelope {
            schema: rae_protocol::SCHEMA_VERSION,
            rae_id: "box".into(),
            device_id: format!("dev{session}"),
            session_id: SESSIONS[session].parse()?,
            seq,
            ts_ms: 1_720_000_000_000 + seq,
            kind,
        };
        let payload = env.encode()?;
        let row = EventRow {
            id,
            session_id: SESSIONS[session].into(),
            device_id: env.device_id.clone(),
            seq,
            ts_ms: env.ts_ms,
            kind: env.kind.name().into(),
            payload: payload.clone(),
            published: true,
        };
        let message = Message {
            index: 0,
            topic: env.topic()?,
            payload,
            retain: false,
            dup: false,
            connection: 1,
        };
        Ok((row, message))
    }

    #[test]
    fn the_delivery_check_catches_missing_reordered_and_foreign_events() -> Result<()> {
        let attrs: Attrs = [("state".to_string(), AttrValue::from("online"))].into();
        let changed = EventKind::Changed {
            set: attrs.clone(),
            removed: vec![],
        };
        let (rows, msgs): (Vec<EventRow>, Vec<Message>) = [
            event(
                1,
                0,
                1,
                EventKind::Attached {
                    attrs: attrs.clone(),
                },
            )?,
            event(
                2,
                1,
                1,
                EventKind::Attached {
                    attrs: attrs.clone(),
                },
            )?,
            event(3, 0, 2, changed.clone())?,
            event(
                4,
                0,
                3,
                EventKind::Checkpoint {
                    attrs: attrs.clone(),
                },
            )?,
        ]
        .into_iter()
        .unzip();
        let check = |msgs: &[Message]| assert_delivered(&rows, device_envelopes(msgs)?);
        check(&msgs)?;
        // Redelivery of what already arrived is fine (dedupe).
        check(&[msgs.clone(), msgs[..2].to_vec()].concat())?;
        // Sessions interleave freely.
        check(&[&msgs[1..2], &msgs[..1], &msgs[2..]].concat())?;
        assert!(check(&msgs[..3]).is_err(), "missing");
        assert!(
            check(&[&msgs[..2], &msgs[3..], &msgs[2..3]].concat()).is_err(),
            "reordered"
        );
        let foreign = event(5, 1, 2, changed)?.1;
        assert!(
            check(&[msgs.clone(), vec![foreign]].concat()).is_err(),
            "not journaled"
        );
        let mut unpublished = rows.clone();
        unpublished[2].published = false;
        assert!(assert_delivered(&unpublished, device_envelopes(&msgs)?).is_err());
        assert_eq!(missing(&unpublished, &msgs[..3])?.len(), 2);
        assert_eq!(records(&rows)?[SESSIONS[0]], attrs);
        Ok(())
    }
}
