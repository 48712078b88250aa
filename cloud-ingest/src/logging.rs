//! Logging through the `log` facade as plain lines on stderr, each
//! beginning with its UTC time to the millisecond
//! (`2026-12-07T17:16:35.123Z INFO  target: message`). Under systemd
//! (stderr is the journal, `$JOURNAL_STREAM`) the time is left out: the
//! journal stamps every line itself. `RUST_LOG` (a level) overrides the
//! configured level.
//!
//! tokio-postgres logs at debug every statement with all its bound
//! parameters: the registry's 1000-row arrays made a debug log about 750
//! bytes per event and the registry some 20× slower (docs/BENCHMARKS.md).
//! Its lines are therefore kept at info and above whatever the level.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger {
    /// Whether lines begin with their time (not under the journal).
    timestamps: bool,
}

/// The line written for a record: `time` (if any), level, target, message.
fn line(time: Option<&str>, level: Level, target: &str, args: &std::fmt::Arguments<'_>) -> String {
    match time {
        Some(t) => format!("{t} {level:<5} {target}: {args}"),
        None => format!("{level:<5} {target}: {args}"),
    }
}

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
            let time = self
                .timestamps
                .then(|| rae_protocol::time::rfc3339_millis(rae_protocol::time::now_ms()));
            let text = line(
                time.as_deref(),
                record.level(),
                record.target(),
                record.args(),
            );
            let _ = writeln!(std::io::stderr().lock(), "{text}");
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
    let logger = StderrLogger {
        timestamps: !systemd_journal_logger::connected_to_journal(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
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

    #[test]
    fn a_line_begins_with_its_time_unless_the_journal_stamps_it() {
        let t = rae_protocol::time::rfc3339_millis(1_796_663_795_123);
        assert_eq!(
            line(
                Some(&t),
                Level::Warn,
                "rae_cloud_ingest::bridge",
                &format_args!("x {}", 1)
            ),
            "2026-12-07T17:16:35.123Z WARN  rae_cloud_ingest::bridge: x 1"
        );
        assert_eq!(
            line(
                None,
                Level::Info,
                "rae_cloud_ingest::registry",
                &format_args!("up")
            ),
            "INFO  rae_cloud_ingest::registry: up"
        );
    }
}
