//! Queries of the `devices` CLI (and of tests): devices with their current
//! session and attributes.
//!
//! Invariants: read-only; a device's "current" session is
//! `devices.current_session_id` (the newest one seen); attribute filters
//! compare the stored text rendering exactly.

use super::{col, sql, DbError};
use serde::Serialize;
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use uuid::Uuid;

/// One attribute as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attribute {
    pub name: String,
    /// `text`, `int`, `bool` or `float`.
    #[serde(rename = "type")]
    pub value_type: String,
    pub value: String,
    pub updated_seq: i64,
}

impl Attribute {
    /// The value as JSON of its type (numbers and booleans unquoted).
    pub fn json_value(&self) -> serde_json::Value {
        let parsed = match self.value_type.as_str() {
            "int" => self.value.parse::<i64>().ok().map(serde_json::Value::from),
            "bool" => self.value.parse::<bool>().ok().map(serde_json::Value::from),
            "float" => self
                .value
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(serde_json::Value::Number),
            _ => None,
        };
        parsed.unwrap_or_else(|| serde_json::Value::String(self.value.clone()))
    }
}

/// A device with its current session and that session's attributes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceView {
    pub rae_id: String,
    pub device_id: String,
    pub session_id: Uuid,
    pub last_seq: i64,
    pub stale: bool,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<String>,
    pub attributes: Vec<Attribute>,
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub rae_id: Option<String>,
    pub device_id: Option<String>,
    /// (name, value): the current session has this attribute with this
    /// text value; all must match.
    pub attrs: Vec<(String, String)>,
}

/// Devices matching `filter`, ordered by box and device id.
pub async fn devices(client: &Client, filter: &Filter) -> Result<Vec<DeviceView>, DbError> {
    let mut query = String::from(
        "SELECT d.rae_id, d.device_id, s.session_id, s.last_seq, s.stale, s.started_ms,
                s.ended_ms, s.end_reason
         FROM devices d JOIN device_sessions s ON s.session_id = d.current_session_id
         WHERE TRUE",
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(r) = &filter.rae_id {
        params.push(r);
        query.push_str(&format!(" AND d.rae_id = ${}", params.len()));
    }
    if let Some(d) = &filter.device_id {
        params.push(d);
        query.push_str(&format!(" AND d.device_id = ${}", params.len()));
    }
    for (name, value) in &filter.attrs {
        params.push(name);
        params.push(value);
        query.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM device_attributes a WHERE a.session_id = d.current_session_id AND a.name = ${} AND a.value = ${})",
            params.len() - 1,
            params.len()
        ));
    }
    query.push_str(" ORDER BY d.rae_id, d.device_id");
    let rows = client
        .query(&query, &params)
        .await
        .map_err(sql("list devices"))?;
    const STEP: &str = "read the listed devices";
    let mut out: Vec<DeviceView> = rows
        .iter()
        .map(|r| {
            Ok(DeviceView {
                rae_id: col(r, 0, STEP)?,
                device_id: col(r, 1, STEP)?,
                session_id: col(r, 2, STEP)?,
                last_seq: col(r, 3, STEP)?,
                stale: col(r, 4, STEP)?,
                started_ms: col(r, 5, STEP)?,
                ended_ms: col(r, 6, STEP)?,
                end_reason: col(r, 7, STEP)?,
                attributes: Vec::new(),
            })
        })
        .collect::<Result<_, DbError>>()?;
    let ids: Vec<Uuid> = out.iter().map(|d| d.session_id).collect();
    let mut attrs = attributes(client, &ids).await?;
    for d in &mut out {
        d.attributes = attrs.remove(&d.session_id).unwrap_or_default();
    }
    Ok(out)
}

/// Attributes of `sessions`, by session, ordered by name.
pub async fn attributes(
    client: &Client,
    sessions: &[Uuid],
) -> Result<HashMap<Uuid, Vec<Attribute>>, DbError> {
    let mut out: HashMap<Uuid, Vec<Attribute>> = HashMap::new();
    if sessions.is_empty() {
        return Ok(out);
    }
    let rows = client
        .query(
            "SELECT session_id, name, value_type, value, updated_seq FROM device_attributes
             WHERE session_id = ANY($1) ORDER BY session_id, name",
            &[&sessions],
        )
        .await
        .map_err(sql("read device attributes"))?;
    const STEP: &str = "read device attributes";
    for r in rows {
        out.entry(col(&r, 0, STEP)?).or_default().push(Attribute {
            name: col(&r, 1, STEP)?,
            value_type: col(&r, 2, STEP)?,
            value: col(&r, 3, STEP)?,
            updated_seq: col(&r, 4, STEP)?,
        });
    }
    Ok(out)
}
