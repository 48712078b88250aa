//! Logging through the `log` facade: to the systemd journal when stderr is
//! connected to it (`JOURNAL_STREAM`), else plain lines on stderr. The level
//! comes from the config; `RUST_LOG` (a level such as `debug`, or a
//! `target=level` list whose last level wins) overrides it.
//!
//! Structured fields: log lines carry `log` key-values, written with the
//! short keys of [`JOURNAL_KEYS`] (`device_id`, `session_id`, ...):
//! `info!(device_id = id, session_id:% = sid; "...")`. In the journal they
//! become `RAE_DEVICE_ID`, `RAE_SESSION_ID`, ... (systemd-journal-logger
//! writes each key-value as a field, upper-cased), and every line gets
//! `RAE_COMPONENT` ([`component_of`] its target, unless the line sets
//! `component`), so `journalctl -u rae-agent RAE_DEVICE_ID=...` filters by
//! device. On stderr the key-values follow the message as `key=value`.

use log::kv::{Error as KvError, Key, Source, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};
use std::fmt::Write as _;
use std::io::Write;

/// Short log keys and the journal fields they become.
pub const JOURNAL_KEYS: &[(&str, &str)] = &[
    ("device_id", "RAE_DEVICE_ID"),
    ("session_id", "RAE_SESSION_ID"),
    ("component", "RAE_COMPONENT"),
    ("tty", "RAE_TTY"),
    ("adb_serial", "RAE_ADB_SERIAL"),
];

/// The journal field for a log key: [`JOURNAL_KEYS`], else the key itself
/// (which the journal logger upper-cases).
pub fn journal_key(key: &str) -> Option<&'static str> {
    JOURNAL_KEYS
        .iter()
        .find(|(short, _)| *short == key)
        .map(|(_, field)| *field)
}

/// The `RAE_COMPONENT` of a line logged from `target` (a module path):
/// `probe/udev`, `probe/serial`, `probe/adb`, `registry`, `journal`,
/// `uplink` (with the MQTT/TLS libraries it drives), `runtime`, `cli`;
/// another crate's lines get that crate's name.
pub fn component_of(target: &str) -> &str {
    let mut parts = target.split("::");
    let krate = parts.next().unwrap_or_default();
    match krate {
        "rae_agent" => match (parts.next(), parts.next()) {
            (Some("probe"), Some(p @ ("udev" | "serial" | "adb"))) => match p {
                "udev" => "probe/udev",
                "serial" => "probe/serial",
                _ => "probe/adb",
            },
            (Some("probe"), _) => "probe",
            (Some("runtime"), Some("registry_task")) | (Some("registry"), _) => "registry",
            (Some("journal"), _) => "journal",
            (Some("uplink"), _) => "uplink",
            (Some("cli"), _) => "cli",
            _ => "runtime",
        },
        "rumqttc" | "rustls" | "tokio_rustls" => "uplink",
        "udev" | "tokio_udev" => "probe/udev",
        other => other,
    }
}

/// The level of the line the registry logs for a journaled event: attach
/// and detach at info (what an operator follows per device), the rest at
/// debug.
pub fn event_level(kind: &str) -> log::Level {
    match kind {
        "attached" | "detached" => log::Level::Info,
        _ => log::Level::Debug,
    }
}

/// A record's key-values renamed to journal fields, plus `RAE_COMPONENT`.
struct JournalFields<'a> {
    kvs: &'a dyn Source,
    component: Option<&'a str>,
}

struct Renamed<'a, 'kvs>(&'a mut dyn VisitSource<'kvs>);

impl<'kvs> VisitSource<'kvs> for Renamed<'_, 'kvs> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        let key = journal_key(key.as_str()).map_or(key, Key::from_str);
        self.0.visit_pair(key, value)
    }
}

impl Source for JournalFields<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), KvError> {
        self.kvs.visit(&mut Renamed(visitor))?;
        if let Some(component) = self.component {
            visitor.visit_pair(Key::from_str("RAE_COMPONENT"), Value::from(component))?;
        }
        Ok(())
    }
}

/// Calls `emit` with `record` carrying journal-named fields (see the
/// module docs); the journal logger turns each into a field.
pub fn with_journal_fields(record: &Record<'_>, emit: impl FnOnce(&Record<'_>)) {
    let own = record
        .key_values()
        .get(Key::from_str("component"))
        .is_some();
    let fields = JournalFields {
        kvs: record.key_values(),
        component: (!own).then(|| component_of(record.target())),
    };
    emit(&record.to_builder().key_values(&fields).build());
}

/// The systemd journal logger, fed records with [`with_journal_fields`].
struct JournalLogger(systemd_journal_logger::JournalLog);

impl Log for JournalLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        with_journal_fields(record, |r| self.0.log(r));
    }

    fn flush(&self) {}
}

/// ` key=value` for each key-value of `record`, for the stderr line.
pub fn kv_suffix(record: &Record<'_>) -> String {
    struct Suffix(String);
    impl<'kvs> VisitSource<'kvs> for Suffix {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
            let _ = write!(self.0, " {key}={value}");
            Ok(())
        }
    }
    let mut out = Suffix(String::new());
    let _ = record.key_values().visit(&mut out);
    out.0
}

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
                "{now} {:<5} {}: {}{}",
                record.level(),
                record.target(),
                record.args(),
                kv_suffix(record)
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
        Some(j) => log::set_boxed_logger(Box::new(JournalLogger(j))).is_ok(),
        None => log::set_logger(&StderrLogger).is_ok(),
    };
    if installed {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key-value of a record as (key, value) strings.
    fn pairs(record: &Record<'_>) -> Vec<(String, String)> {
        struct Collect(Vec<(String, String)>);
        impl<'kvs> VisitSource<'kvs> for Collect {
            fn visit_pair(&mut self, k: Key<'kvs>, v: Value<'kvs>) -> Result<(), KvError> {
                self.0.push((k.to_string(), v.to_string()));
                Ok(())
            }
        }
        let mut c = Collect(Vec::new());
        record.key_values().visit(&mut c).expect("visit");
        c.0
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attach_and_detach_are_logged_at_info_the_rest_at_debug() {
        assert_eq!(event_level("attached"), log::Level::Info);
        assert_eq!(event_level("detached"), log::Level::Info);
        assert_eq!(event_level("changed"), log::Level::Debug);
        assert_eq!(event_level("checkpoint"), log::Level::Debug);
    }

    #[test]
    fn components_follow_the_module_of_the_line() {
        for (target, component) in [
            ("rae_agent::probe::udev", "probe/udev"),
            ("rae_agent::probe::serial::task", "probe/serial"),
            ("rae_agent::probe::adb::client", "probe/adb"),
            ("rae_agent::probe", "probe"),
            ("rae_agent::runtime::registry_task", "registry"),
            ("rae_agent::registry::liveness", "registry"),
            ("rae_agent::journal::compact", "journal"),
            ("rae_agent::uplink::connection", "uplink"),
            ("rumqttc::eventloop", "uplink"),
            ("rae_agent::runtime", "runtime"),
            ("rae_agent", "runtime"),
            ("rae_agent::cli::status", "cli"),
            ("rusqlite", "rusqlite"),
        ] {
            assert_eq!(component_of(target), component, "{target}");
        }
    }

    #[test]
    fn device_lines_get_journal_field_names_and_a_component() {
        let kvs: &[(&str, &str)] = &[("device_id", "dev-1"), ("session_id", "s-1"), ("seq", "3")];
        let record = Record::builder()
            .target("rae_agent::runtime::registry_task")
            .args(format_args!("journaled attached"))
            .key_values(&kvs)
            .build();
        let mut seen = Vec::new();
        with_journal_fields(&record, |r| seen = pairs(r));
        assert_eq!(
            seen,
            owned(&[
                ("RAE_DEVICE_ID", "dev-1"),
                ("RAE_SESSION_ID", "s-1"),
                ("seq", "3"),
                ("RAE_COMPONENT", "registry"),
            ])
        );
    }

    #[test]
    fn a_line_that_names_its_component_keeps_it() {
        let kvs: &[(&str, &str)] = &[("component", "probe/udev")];
        let record = Record::builder()
            .target("rae_agent::runtime")
            .args(format_args!("x"))
            .key_values(&kvs)
            .build();
        let mut seen = Vec::new();
        with_journal_fields(&record, |r| seen = pairs(r));
        assert_eq!(seen, owned(&[("RAE_COMPONENT", "probe/udev")]));
    }

    #[test]
    fn stderr_lines_end_with_the_key_values_as_key_equals_value() {
        let kvs: &[(&str, &str)] = &[("device_id", "dev-1"), ("session_id", "s-1")];
        let record = Record::builder()
            .args(format_args!("m"))
            .key_values(&kvs)
            .build();
        assert_eq!(kv_suffix(&record), " device_id=dev-1 session_id=s-1");
        let plain = Record::builder().args(format_args!("m")).build();
        assert_eq!(kv_suffix(&plain), "");
    }

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
