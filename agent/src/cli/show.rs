//! `rae-agent show` and `rae-agent history`.

use super::devices::{device_json, model, state, transports};
use super::{table, Failure};
use crate::journal::read::{HistoryEntry, JournalReader};
use crate::timefmt;
use rae_protocol::EventKind;
use serde_json::json;
use std::io::Write;

pub fn show(
    reader: &JournalReader,
    query: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let rec = reader.find_device(query)?;
    let aliases = reader.aliases(&rec.device_id)?;
    if json {
        let mut v = device_json(&rec);
        v["aliases"] = json!(aliases);
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "device      {}", rec.device_id)?;
    writeln!(out, "identity    {}", rec.identity)?;
    writeln!(out, "model       {}", model(&rec))?;
    writeln!(
        out,
        "state       {} ({})",
        state(&rec),
        rec.presence().as_str()
    )?;
    writeln!(out, "transports  {}", transports(&rec).join(", "))?;
    match &rec.session {
        Some(s) => writeln!(
            out,
            "session     {} (seq {}, since {})",
            s.id,
            s.last_seq,
            timefmt::rfc3339(s.started_ms)
        )?,
        None => writeln!(out, "session     none (detached)")?,
    }
    writeln!(out, "first seen  {}", timefmt::rfc3339(rec.first_seen_ms))?;
    writeln!(out, "last change {}", timefmt::rfc3339(rec.last_change_ms))?;
    writeln!(out, "aliases     {}", aliases.join(", "))?;
    writeln!(out, "attributes")?;
    for (k, v) in &rec.attrs {
        writeln!(out, "  {k} = {v}")?;
    }
    Ok(())
}

pub fn history(
    reader: &JournalReader,
    query: &str,
    limit: u64,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let rec = reader.find_device(query)?;
    let entries = reader.history(&rec.device_id, limit)?;
    if json {
        let list: Vec<_> = entries.iter().map(entry_json).collect();
        serde_json::to_writer_pretty(&mut *out, &list)?;
        writeln!(out)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| match &e.envelope {
            Ok(env) => vec![
                timefmt::rfc3339(env.ts_ms),
                super::devices::short_session(&env.session_id),
                env.seq.to_string(),
                env.kind.name().to_string(),
                if e.published { "yes" } else { "no" }.into(),
                summary(&env.kind),
            ],
            Err(err) => vec![
                "-".into(),
                "-".into(),
                "-".into(),
                "undecodable".into(),
                "-".into(),
                err.clone(),
            ],
        })
        .collect();
    table::write(
        out,
        &["TIME", "SESSION", "SEQ", "KIND", "PUBLISHED", "DETAILS"],
        &rows,
    )?;
    Ok(())
}

fn summary(kind: &EventKind) -> String {
    let pairs = |a: &rae_protocol::Attrs| {
        a.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match kind {
        EventKind::Attached { attrs } | EventKind::Checkpoint { attrs } => pairs(attrs),
        EventKind::Changed { set, removed } => {
            let mut s = pairs(set);
            for r in removed {
                if !s.is_empty() {
                    s.push(' ');
                }
                s.push('-');
                s.push_str(r);
            }
            s
        }
        EventKind::Detached { reason } => format!("reason={reason}"),
    }
}

fn entry_json(e: &HistoryEntry) -> serde_json::Value {
    match &e.envelope {
        Ok(env) => {
            let mut v = json!({
                "journal_id": e.id,
                "published": e.published,
                "session_id": env.session_id.to_string(),
                "seq": env.seq,
                "ts_ms": env.ts_ms,
                "kind": env.kind.name(),
            });
            match &env.kind {
                EventKind::Attached { attrs } | EventKind::Checkpoint { attrs } => {
                    v["attrs"] = json!(attrs)
                }
                EventKind::Changed { set, removed } => {
                    v["set"] = json!(set);
                    v["removed"] = json!(removed);
                }
                EventKind::Detached { reason } => v["reason"] = json!(reason),
            }
            v
        }
        Err(err) => json!({"journal_id": e.id, "published": e.published, "error": err}),
    }
}
