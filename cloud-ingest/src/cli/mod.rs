//! The `devices` query commands: list devices (per box, filtered by
//! attribute) and show one device's current session and attributes, as a
//! table or `--json`.
//!
//! Invariants: read-only; the JSON shape is stable (documented in
//! docs/CLOUD.md); a device that is not found is an error naming it.

use crate::config::Settings;
use crate::db::{self, read};
use anyhow::Context as _;
use std::fmt::Write as _;

/// Arguments of `rae-cloud-ingest devices`.
#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Only devices of this box (rae_id).
    #[arg(long = "box", value_name = "RAE_ID", global = true)]
    pub rae_id: Option<String>,
    /// Only devices whose current attribute NAME equals VALUE (repeatable;
    /// all must match).
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = parse_attr)]
    pub attrs: Vec<(String, String)>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<DevicesCommand>,
}

/// `devices show`.
#[derive(Debug, clap::Subcommand)]
pub enum DevicesCommand {
    /// One device's current session and attributes.
    Show {
        /// The device id.
        device_id: String,
    },
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// `rae-cloud-ingest devices`.
pub async fn devices(settings: Settings, args: DevicesArgs) -> anyhow::Result<()> {
    let client = db::connect(&settings.database.url, settings.database.timeout_secs)
        .await
        .with_context(|| format!("database {}", db::redact(&settings.database.url)))?;
    db::migrate::check_version(&client).await?;
    let mut filter = read::Filter {
        rae_id: args.rae_id.clone(),
        device_id: None,
        attrs: args.attrs.clone(),
    };
    match &args.command {
        None => {
            let list = read::devices(&client, &filter).await?;
            print!(
                "{}",
                if args.json {
                    to_json(&list)
                } else {
                    table(&list)
                }
            );
        }
        Some(DevicesCommand::Show { device_id }) => {
            filter.device_id = Some(device_id.clone());
            let list = read::devices(&client, &filter).await?;
            match list.as_slice() {
                [] => anyhow::bail!("no device {device_id:?} in the database"),
                [one] if args.json => print!("{}", device_json(one)),
                [one] => print!("{}", show(one)),
                many => anyhow::bail!(
                    "device {device_id:?} exists on {} boxes; pick one with --box ({})",
                    many.len(),
                    many.iter()
                        .map(|d| d.rae_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    }
    Ok(())
}

fn state(d: &read::DeviceView) -> &'static str {
    match (d.ended_ms.is_some(), d.stale) {
        (true, _) => "detached",
        (false, true) => "stale",
        (false, false) => "present",
    }
}

fn device_value(d: &read::DeviceView) -> serde_json::Value {
    let attrs: serde_json::Map<String, serde_json::Value> = d
        .attributes
        .iter()
        .map(|a| (a.name.clone(), a.json_value()))
        .collect();
    serde_json::json!({
        "rae_id": d.rae_id,
        "device_id": d.device_id,
        "state": state(d),
        "session": {
            "session_id": d.session_id,
            "last_seq": d.last_seq,
            "stale": d.stale,
            "started_ms": d.started_ms,
            "ended_ms": d.ended_ms,
            "end_reason": d.end_reason,
        },
        "attributes": attrs,
    })
}

/// `devices --json`: an array of device objects.
pub fn to_json(list: &[read::DeviceView]) -> String {
    let values: Vec<serde_json::Value> = list.iter().map(device_value).collect();
    format!(
        "{}\n",
        serde_json::to_string_pretty(&values).unwrap_or_default()
    )
}

/// `devices show --json`: one device object.
pub fn device_json(d: &read::DeviceView) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(&device_value(d)).unwrap_or_default()
    )
}

/// The device list as a table.
pub fn table(list: &[read::DeviceView]) -> String {
    let mut rows = vec![[
        "BOX".to_string(),
        "DEVICE".to_string(),
        "STATE".to_string(),
        "SEQ".to_string(),
        "ATTRIBUTES".to_string(),
    ]];
    for d in list {
        rows.push([
            d.rae_id.clone(),
            d.device_id.clone(),
            state(d).to_string(),
            d.last_seq.to_string(),
            d.attributes.len().to_string(),
        ]);
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(out, "{} device(s)", list.len());
    out
}

/// `devices show` as text.
pub fn show(d: &read::DeviceView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "device   {}", d.device_id);
    let _ = writeln!(out, "box      {}", d.rae_id);
    let _ = writeln!(out, "state    {}", state(d));
    let _ = writeln!(out, "session  {}", d.session_id);
    let _ = writeln!(out, "last seq {}", d.last_seq);
    if let Some(ms) = d.started_ms {
        let _ = writeln!(out, "started  {ms} (unix ms)");
    }
    if let Some(ms) = d.ended_ms {
        let reason = d.end_reason.as_deref().unwrap_or("");
        let _ = writeln!(out, "ended    {ms} (unix ms) {reason}");
    }
    let _ = writeln!(out, "attributes:");
    let width = d
        .attributes
        .iter()
        .map(|a| a.name.chars().count())
        .max()
        .unwrap_or(0);
    for a in &d.attributes {
        let _ = writeln!(out, "  {:<width$}  {}", a.name, a.value);
    }
    out
}
