//! Logging through the `log` facade as plain lines on stderr (journald
//! stores them as they are under systemd). `RUST_LOG` (a level) overrides
//! the configured level.
//!
//! tokio-postgres logs at debug every statement with all its bound
//! parameters: the registry's 1000-row arrays made a debug log about 750
//! bytes per event and the registry some 20× slower (docs/BENCHMARKS.md).
//! Its lines are therefore kept at info and above whatever the level.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger;

/// Whether a line of `target` at `level` is written, `max` being the
/// configured level (pure).
fn wanted(target: &str, level: Level, max: LevelFilter) -> bool {
    level <= max && (level <= Level::Info || !target.starts_with("tokio_postgres"))
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        wanted(metadata.target(), metadata.level(), log::max_level())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{:<5} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger once; later calls are ignored.
pub fn init(configured: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(configured);
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_lines_of_tokio_postgres_are_dropped_and_its_warnings_kept() {
        let debug = LevelFilter::Debug;
        assert!(!wanted("tokio_postgres::query", Level::Debug, debug));
        assert!(!wanted(
            "tokio_postgres::prepare",
            Level::Trace,
            LevelFilter::Trace
        ));
        assert!(wanted("tokio_postgres::connection", Level::Info, debug));
        assert!(wanted("tokio_postgres::connection", Level::Warn, debug));
        assert!(wanted(
            "rae_cloud_ingest::registry::worker",
            Level::Debug,
            debug
        ));
        assert!(wanted("librdkafka", Level::Debug, debug));
        assert!(!wanted(
            "rae_cloud_ingest::registry::worker",
            Level::Debug,
            LevelFilter::Info
        ));
    }
}
