//! `rae-agent status`: is the daemon alive, what does the journal hold, and
//! what went wrong last.

use super::Failure;
use crate::config::Settings;
use crate::journal::read::JournalReader;
use crate::runtime::registry_task::HEARTBEAT_INTERVAL;
use crate::status::{self, RuntimeStatus};
use crate::timefmt;
use serde_json::json;
use std::io::Write;

/// The daemon counts as alive if its heartbeat is at most this old.
const ALIVE_WITHIN_MS: u64 = 3 * HEARTBEAT_INTERVAL.as_millis() as u64;

/// `running`, `stale` (heartbeat too old or process gone) or `stopped`.
fn daemon_state(rt: Option<&RuntimeStatus>, now: u64) -> &'static str {
    match rt {
        Some(s) if s.running && status::pid_alive(s.pid) => {
            if now.saturating_sub(s.heartbeat_ms) <= ALIVE_WITHIN_MS {
                "running"
            } else {
                "stale"
            }
        }
        Some(s) if s.running => "stale",
        _ => "stopped",
    }
}

pub fn run(settings: &Settings, json: bool, out: &mut impl Write) -> Result<(), Failure> {
    let now = timefmt::now_ms();
    let rt = status::read(&settings.status_path());
    let daemon = daemon_state(rt.as_ref(), now);
    let reader = JournalReader::open(&settings.journal_path())?;
    let stats = reader.stats()?;
    if json {
        let v = json!({
            "daemon": daemon,
            "heartbeat_age_ms": rt.as_ref().map(|s| now.saturating_sub(s.heartbeat_ms)),
            "runtime": rt,
            "journal_path": settings.journal_path(),
            "journal": stats,
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    let age = |ms: u64| format!("{} ago", timefmt::age(now.saturating_sub(ms)));
    match &rt {
        Some(s) => writeln!(
            out,
            "daemon      {daemon} (pid {}, version {}, heartbeat {}, boot #{})",
            s.pid,
            s.version,
            age(s.heartbeat_ms),
            s.boot_count
        )?,
        None => writeln!(
            out,
            "daemon      {daemon} (no {} yet)",
            settings.status_path().display()
        )?,
    }
    writeln!(
        out,
        "rae_id      {}",
        stats.rae_id.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "devices     {} present, {} missing, {} detached",
        stats.devices_present, stats.devices_missing, stats.devices_detached
    )?;
    writeln!(
        out,
        "journal     {} ({} events, {} KiB)",
        settings.journal_path().display(),
        stats.events_total,
        stats.journal_bytes / 1024
    )?;
    let oldest = stats
        .oldest_unpublished_ms
        .map(|t| format!(", oldest {}", age(t)))
        .unwrap_or_default();
    let compaction = rt
        .as_ref()
        .map(|s| {
            format!(
                "; {} compactions, {} deltas dropped",
                s.compactions, s.dropped_events
            )
        })
        .unwrap_or_default();
    writeln!(
        out,
        "backlog     {} unpublished{oldest}{compaction}",
        stats.unpublished
    )?;
    match rt.as_ref().and_then(|s| s.uplink.as_ref()) {
        Some(u) => {
            let link = match (daemon, u.connected) {
                ("running", true) => "connected to",
                ("running", false) => "DISCONNECTED from",
                _ => "not running; broker",
            };
            let last = u
                .last_puback_ms
                .map(|t| format!(", last PUBACK {}", age(t)))
                .unwrap_or_default();
            writeln!(out, "uplink      {link} {}{last}", u.broker)?;
            writeln!(
                out,
                "published   {} events, {} checkpoints; {} commands rejected",
                u.published, u.checkpoints, u.commands_rejected
            )?;
            if let Some(e) = &u.last_error {
                writeln!(out, "uplink err  {e}")?;
            }
        }
        None => writeln!(
            out,
            "uplink      offline mode (no [mqtt] broker configured)"
        )?,
    }
    if let Some(s) = &rt {
        if let Some(e) = &s.journal_error {
            writeln!(
                out,
                "JOURNAL     FAILING since {}: {}",
                age(e.at_ms),
                e.message
            )?;
        }
        for (source, e) in &s.probe_errors {
            writeln!(
                out,
                "probe {source:<5} error {}: {}",
                age(e.at_ms),
                e.message
            )?;
        }
        if let Some(p) = &s.journal_moved_aside {
            writeln!(
                out,
                "note        a corrupt journal was moved to {p} at start"
            )?;
        }
        match &s.last_error {
            Some(e) => writeln!(out, "last error  {}: {}", age(e.at_ms), e.message)?,
            None => writeln!(out, "last error  none")?,
        }
    }
    Ok(())
}
