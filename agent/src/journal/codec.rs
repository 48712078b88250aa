//! Encoding of registry state into journal rows and back.
//!
//! Attributes and facets are stored as CBOR (the same value model as the wire
//! envelope); events are stored as their finished wire envelope, so the
//! uplink publishes the stored bytes unchanged.

use super::JournalError;
use crate::registry::{DeviceRecord, Event, FacetKey, Session};
use rae_protocol::{Attrs, Envelope, SCHEMA_VERSION};
use std::collections::BTreeMap;
use uuid::Uuid;

pub fn to_cbor<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, JournalError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| JournalError::Codec(e.to_string()))?;
    Ok(out)
}

pub fn from_cbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, JournalError> {
    ciborium::from_reader(bytes).map_err(|e| JournalError::Codec(e.to_string()))
}

/// The wire envelope of a journaled event.
pub fn envelope(rae_id: &str, ev: &Event) -> Envelope {
    Envelope {
        schema: SCHEMA_VERSION,
        rae_id: rae_id.to_string(),
        device_id: ev.device_id.clone(),
        session_id: ev.session_id,
        seq: ev.seq,
        ts_ms: ev.ts_ms,
        kind: ev.kind.clone(),
    }
}

/// Converts between u64 and SQLite's i64, refusing values that do not fit.
pub fn to_sql_int(v: u64) -> Result<i64, JournalError> {
    i64::try_from(v).map_err(|_| JournalError::Codec(format!("{v} does not fit in SQLite INTEGER")))
}

fn from_sql_int(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Reads one `devices` row (columns in the order of [`DEVICE_COLUMNS`]).
pub fn device_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<DeviceRecord, JournalError>> {
    let attrs: Vec<u8> = row.get(2)?;
    let facets: Vec<u8> = row.get(3)?;
    let session_id: Option<String> = row.get(4)?;
    let last_seq: Option<i64> = row.get(5)?;
    let started: Option<i64> = row.get(6)?;
    let missing: Option<i64> = row.get(7)?;
    let device_id: String = row.get(0)?;
    let identity: String = row.get(1)?;
    let first_seen: i64 = row.get(8)?;
    let last_change: i64 = row.get(9)?;
    Ok((|| {
        let attrs: Attrs = from_cbor(&attrs)?;
        let facets: Vec<(FacetKey, Attrs)> = from_cbor(&facets)?;
        let session = match session_id {
            Some(s) => Some(Session {
                id: Uuid::parse_str(&s).map_err(|e| JournalError::Codec(e.to_string()))?,
                last_seq: from_sql_int(last_seq.unwrap_or(0)),
                started_ms: from_sql_int(started.unwrap_or(0)),
            }),
            None => None,
        };
        Ok(DeviceRecord {
            device_id,
            identity,
            facets: facets.into_iter().collect::<BTreeMap<_, _>>(),
            attrs,
            session,
            missing_since_ms: missing.map(from_sql_int),
            first_seen_ms: from_sql_int(first_seen),
            last_change_ms: from_sql_int(last_change),
        })
    })())
}

pub const DEVICE_COLUMNS: &str =
    "device_id, identity, attrs, facets, session_id, session_last_seq, \
     session_started_ms, missing_since_ms, first_seen_ms, last_change_ms";

/// Reads all device records.
pub fn load_devices(conn: &rusqlite::Connection) -> Result<Vec<DeviceRecord>, JournalError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id"
    ))?;
    let rows = stmt.query_map([], device_from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}
