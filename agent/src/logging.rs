//! Logging through the `log` facade: to the systemd journal when stderr is
//! connected to it (`JOURNAL_STREAM`), else plain lines on stderr. The level
//! comes from the config; `RUST_LOG` (a level such as `debug`, or a
//! `target=level` list whose last level wins) overrides it.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let now = crate::timefmt::rfc3339(crate::timefmt::now_ms());
            let _ = writeln!(
                std::io::stderr().lock(),
                "{now} {:<5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// The level in effect: `RUST_LOG` if it parses, else the configured one.
pub fn effective_level(configured: LevelFilter, rust_log: Option<&str>) -> LevelFilter {
    rust_log
        .and_then(|v| {
            v.rsplit(',')
                .filter_map(|part| part.rsplit('=').next())
                .find_map(|lvl| lvl.trim().parse::<LevelFilter>().ok())
        })
        .unwrap_or(configured)
}

/// Installs the logger once; later calls are ignored.
pub fn init(configured: LevelFilter) {
    let level = effective_level(configured, std::env::var("RUST_LOG").ok().as_deref());
    let journald = systemd_journal_logger::connected_to_journal()
        .then(systemd_journal_logger::JournalLog::new)
        .and_then(Result::ok);
    let installed = match journald {
        Some(j) => j.install().is_ok(),
        None => log::set_logger(&StderrLogger).is_ok(),
    };
    if installed {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_configured_level() {
        assert_eq!(effective_level(LevelFilter::Info, None), LevelFilter::Info);
        assert_eq!(
            effective_level(LevelFilter::Info, Some("debug")),
            LevelFilter::Debug
        );
        assert_eq!(
            effective_level(LevelFilter::Info, Some("rae_agent=trace")),
            LevelFilter::Trace
        );
        assert_eq!(
            effective_level(LevelFilter::Warn, Some("nonsense")),
            LevelFilter::Warn
        );
    }
}
