//! Agent configuration in two stages: [`RawConfig`] is the TOML file exactly
//! as written (unknown keys are errors), [`Settings`] is the validated result
//! the rest of the agent uses. Validation touches neither disk nor network,
//! except reading `/etc/machine-id` (or the hostname) for the default `rae_id`.
//!
//! Every field is documented with its default; `agent/examples/agent.toml`
//! shows them all and is checked by a test to parse.

use crate::registry::identity::{IdentityRules, DEFAULT_SERIAL_DENYLIST};
use crate::registry::RegistryConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rae/agent.toml";

/// A configuration problem; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

/// The TOML file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Identity of this box in topics and envelopes. Default: `rae-` plus the
    /// first 12 characters of `/etc/machine-id` (fallback: the hostname).
    pub rae_id: Option<String>,
    /// Directory for `journal.db` and `status.json`. Default: `/var/lib/rae-agent`.
    /// A relative path is relative to the config file's directory.
    pub state_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace. Default: `info`.
    /// `RUST_LOG` overrides it.
    pub log_level: Option<String>,
    #[serde(default)]
    pub journal: RawJournal,
    #[serde(default)]
    pub registry: RawRegistry,
    #[serde(default)]
    pub udev: RawUdev,
    /// `[serial]`: serial-port probe profiles; see `probe/serial.rs`.
    #[serde(default)]
    pub serial: crate::probe::serial::RawSerialConfig,
    /// `[adb]`: the ADB host-protocol probe; see `probe/adb.rs`.
    #[serde(default)]
    pub adb: crate::probe::adb::RawAdbConfig,
    /// `[mqtt]`: the uplink; absent = offline. See `uplink/config.rs`.
    #[serde(default)]
    pub mqtt: crate::uplink::RawMqttConfig,
}

/// `[journal]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    /// SQLite `synchronous`: `normal` (default; durable across process
    /// crashes, may lose the last commits on power loss) or `full`.
    pub synchronous: Option<Synchronous>,
    /// Published events older than this are deleted. Default: 604800 (7 days).
    /// Unpublished events are never deleted by retention.
    pub retention_max_age_secs: Option<u64>,
    /// At most this many published events are kept. Default: 100000.
    pub retention_max_events: Option<u64>,
    /// Bound of the unpublished backlog, in events. Past it the backlog is
    /// compacted (see docs/ARCHITECTURE.md). Default: 100000.
    pub max_backlog_events: Option<u64>,
    /// Bound of the unpublished backlog, in payload bytes. Default: 67108864 (64 MiB).
    pub max_backlog_bytes: Option<u64>,
}

/// `[registry]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// A device that vanishes and comes back within this many seconds keeps
    /// its session. Default: 5. Range 0..=3600.
    pub detach_grace_secs: Option<u64>,
    /// Serial numbers shared by many devices, which then fall back to the
    /// port. Default: the built-in list (`0123456789ABCDEF`, `0000`,
    /// `????????????`, ...). Setting it replaces the built-in list.
    pub serial_denylist: Option<Vec<String>>,
}

/// `[udev]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUdev {
    /// Whether the udev probe runs. Default: true.
    pub enabled: Option<bool>,
    /// A device is tracked if it matches any of these rules (all keys of a
    /// rule must match). Keys are udev properties (`ID_VENDOR_ID`), or
    /// `attr:NAME` for a sysfs attribute; values may use `*` and `?`.
    /// Default: `[]`, meaning every USB device.
    pub include: Option<Vec<BTreeMap<String, String>>>,
    /// A device matching any of these rules is not tracked, even if included.
    /// Default: `[{ "attr:bDeviceClass" = "09" }]` (hubs and root hubs).
    pub exclude: Option<Vec<BTreeMap<String, String>>>,
}

/// SQLite durability level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Normal,
    Full,
}

/// One match rule: property (or `attr:NAME`) → glob.
pub type MatchRule = BTreeMap<String, String>;

/// Validated udev probe settings.
#[derive(Debug, Clone)]
pub struct UdevSettings {
    pub enabled: bool,
    pub include: Vec<MatchRule>,
    pub exclude: Vec<MatchRule>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rae_id: String,
    pub state_dir: PathBuf,
    pub log_level: log::LevelFilter,
    pub synchronous: Synchronous,
    pub retention_max_age_secs: u64,
    pub retention_max_events: u64,
    pub max_backlog_events: u64,
    pub max_backlog_bytes: u64,
    pub detach_grace_secs: u64,
    pub serial_denylist: Vec<String>,
    pub udev: UdevSettings,
    pub serial: crate::probe::serial::SerialSettings,
    pub adb: crate::probe::adb::AdbSettings,
    pub mqtt: crate::uplink::MqttSettings,
}

impl Settings {
    /// Path of the SQLite journal.
    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("journal.db")
    }

    /// Path of the daemon's runtime status file.
    pub fn status_path(&self) -> PathBuf {
        self.state_dir.join("status.json")
    }

    /// The registry's tunables.
    pub fn registry_config(&self) -> RegistryConfig {
        RegistryConfig {
            rules: IdentityRules::new(self.serial_denylist.iter().cloned()),
            detach_grace_ms: self.detach_grace_secs.saturating_mul(1000),
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let base = dir
            .and_then(|d| std::fs::canonicalize(d).ok())
            .unwrap_or_else(|| dir.unwrap_or(Path::new(".")).to_path_buf());
        Settings::from_toml(&text, &base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text; relative paths resolve against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        Settings::validate(raw, base)
    }

    /// Stage two: defaults and checks.
    pub fn validate(raw: RawConfig, base: &Path) -> Result<Settings, ConfigError> {
        let rae_id = match raw.rae_id {
            Some(id) => id,
            None => default_rae_id(),
        };
        rae_protocol::validate_segment(&rae_id).map_err(|e| ConfigError::Invalid {
            key: "rae_id".into(),
            problem: format!("is not usable in an MQTT topic: {e}"),
        })?;
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/rae-agent"));
        if state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }
        let state_dir = if state_dir.is_relative() {
            normalize(&base.join(state_dir))
        } else {
            state_dir
        };
        let log_level = match raw.log_level.as_deref().unwrap_or("info") {
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            other => {
                return Err(invalid(
                    "log_level",
                    format!("is {other:?}; expected one of error, warn, info, debug, trace"),
                ))
            }
        };
        let detach_grace_secs = raw.registry.detach_grace_secs.unwrap_or(5);
        if detach_grace_secs > 3600 {
            return Err(invalid(
                "registry.detach_grace_secs",
                format!("is {detach_grace_secs}; expected at most 3600"),
            ));
        }
        let retention_max_events = raw.journal.retention_max_events.unwrap_or(100_000);
        if retention_max_events == 0 {
            return Err(invalid(
                "journal.retention_max_events",
                "must be at least 1",
            ));
        }
        let udev = UdevSettings {
            enabled: raw.udev.enabled.unwrap_or(true),
            include: check_rules("udev.include", raw.udev.include.unwrap_or_default())?,
            exclude: check_rules(
                "udev.exclude",
                raw.udev
                    .exclude
                    .unwrap_or_else(|| vec![[("attr:bDeviceClass".into(), "09".into())].into()]),
            )?,
        };
        Ok(Settings {
            rae_id,
            state_dir,
            log_level,
            synchronous: raw.journal.synchronous.unwrap_or(Synchronous::Normal),
            retention_max_age_secs: raw.journal.retention_max_age_secs.unwrap_or(7 * 24 * 3600),
            retention_max_events,
            max_backlog_events: positive(
                "journal.max_backlog_events",
                raw.journal.max_backlog_events,
                100_000,
            )?,
            max_backlog_bytes: positive(
                "journal.max_backlog_bytes",
                raw.journal.max_backlog_bytes,
                64 << 20,
            )?,
            detach_grace_secs,
            serial_denylist: raw.registry.serial_denylist.unwrap_or_else(|| {
                DEFAULT_SERIAL_DENYLIST
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }),
            udev,
            serial: crate::probe::serial::SerialSettings::validate(raw.serial)?,
            adb: crate::probe::adb::AdbSettings::validate(raw.adb)?,
            mqtt: crate::uplink::MqttSettings::validate(raw.mqtt)?,
        })
    }
}

fn positive(key: &'static str, v: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match v {
        Some(0) => Err(invalid(key, "must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// Removes `.` and `..` components lexically (the directory may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A validation error for `key` (a dotted path such as `serial.profiles[1].regex`).
pub fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

fn check_rules(key: &'static str, rules: Vec<MatchRule>) -> Result<Vec<MatchRule>, ConfigError> {
    for (i, rule) in rules.iter().enumerate() {
        if rule.is_empty() {
            return Err(invalid(
                key,
                format!("rule #{} is empty; a rule needs at least one key", i + 1),
            ));
        }
        if let Some(k) = rule.keys().find(|k| k.is_empty() || *k == "attr:") {
            return Err(invalid(
                key,
                format!("rule #{} has an empty key {k:?}", i + 1),
            ));
        }
    }
    Ok(rules)
}

/// `rae-` + the first 12 characters of `/etc/machine-id`, else the hostname.
pub fn default_rae_id() -> String {
    let from_machine_id = std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().chars().take(12).collect::<String>())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()));
    let id = from_machine_id.or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().replace(['/', '+', '#'], "-"))
            .filter(|s| !s.is_empty())
    });
    format!("rae-{}", id.unwrap_or_else(|| "unknown".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, Path::new("/cfg"))
    }

    #[test]
    fn an_empty_file_gives_documented_defaults() {
        let s = parse("").expect("defaults");
        assert!(s.rae_id.starts_with("rae-"));
        assert_eq!(s.state_dir, PathBuf::from("/var/lib/rae-agent"));
        assert_eq!(s.synchronous, Synchronous::Normal);
        assert_eq!(s.detach_grace_secs, 5);
        assert_eq!(s.retention_max_events, 100_000);
        assert!(s.udev.enabled && s.udev.include.is_empty());
        assert_eq!(s.udev.exclude.len(), 1);
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../examples/agent.toml");
        let s = parse(text).expect("example config must parse");
        assert_eq!(s.rae_id, "rae-lab1-box07");
    }

    #[test]
    fn an_unknown_key_is_named_in_the_error() {
        let err = parse("[journal]\nsyncronous = \"full\"\n").expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("syncronous"), "{msg}");
    }

    #[test]
    fn a_wrong_enum_value_lists_the_allowed_ones() {
        let msg = parse("[journal]\nsynchronous = \"fast\"\n")
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("normal") && msg.contains("full"), "{msg}");
    }

    #[test]
    fn a_rae_id_with_a_topic_wildcard_is_refused() {
        let msg = parse("rae_id = \"box+1\"").expect_err("bad").to_string();
        assert!(msg.contains("`rae_id`"), "{msg}");
    }

    #[test]
    fn an_out_of_range_grace_names_its_key() {
        let msg = parse("[registry]\ndetach_grace_secs = 99999")
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("registry.detach_grace_secs"), "{msg}");
    }

    #[test]
    fn a_relative_state_dir_resolves_against_the_config_directory() {
        let s = parse("state_dir = \"state\"").expect("ok");
        assert_eq!(s.state_dir, PathBuf::from("/cfg/state"));
        let s = parse("state_dir = \"../x/./state\"").expect("ok");
        assert_eq!(s.state_dir, PathBuf::from("/x/state"));
    }

    #[test]
    fn an_empty_match_rule_is_refused() {
        let msg = parse("[udev]\ninclude = [{}]")
            .expect_err("bad")
            .to_string();
        assert!(msg.contains("udev.include") && msg.contains("#1"), "{msg}");
    }
}
