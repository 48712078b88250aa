//! `[serial]` configuration: [`RawSerialConfig`] as written (unknown keys
//! are errors) and the validated [`SerialSettings`] the probe uses.
//!
//! Invariants of a validated [`Profile`]: it selects ports (`paths` and/or
//! `match` is non-empty), its baud list is non-empty, `send` is decoded to
//! bytes, `expect` compiles, and every named capture maps to an attribute
//! name that cannot overwrite one the probe sets itself. Errors name the key
//! as `serial.profiles[<0-based index>].<field>`.

use super::escape::unescape;
use crate::config::{invalid, ConfigError, MatchRule};
use regex::Regex;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Attributes the probe sets itself; a capture may not produce one of these.
pub const RESERVED_ATTRS: &[&str] = &[
    "state",
    "tty.node",
    "serial.baud",
    "serial.banner",
    "serial.probe_error",
    "serial.profile",
];

/// `[serial]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialConfig {
    /// Directories searched for UUCP lock files (`LCK..ttyUSB0`); the probe
    /// skips a port locked by a live process and takes its own lock in the
    /// first directory that exists. Default: `["/run/lock", "/var/lock"]`.
    pub lock_dirs: Option<Vec<PathBuf>>,
    /// `[[serial.profiles]]`. Default: none, which disables the probe.
    #[serde(default)]
    pub profiles: Vec<RawProfile>,
}

/// One `[[serial.profiles]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Name for logs and the `serial.profile` attribute. Required, unique.
    pub name: String,
    /// Ports by path; `*` and `?` are allowed in the last component only
    /// (`/dev/ttyUSB*`, `/dev/ttyS?`). Symlinks (`/dev/serial/by-id/*`) are
    /// resolved to the device node. Default: `[]`.
    pub paths: Option<Vec<String>>,
    /// Ports by udev rules, matched against the properties and attributes of
    /// the tty and then of its USB parent (`[{ ID_VENDOR_ID = "0403" }]`);
    /// any rule may match, every key of a rule must. Default: `[]`.
    /// At least one of `paths` and `match` must select something.
    #[serde(rename = "match")]
    pub match_rules: Option<Vec<MatchRule>>,
    /// Baud rates tried in order; the first that gets a matching answer wins.
    /// Default: `[115200]`.
    pub baud_rates: Option<Vec<u32>>,
    /// Data bits, 5 to 8. Default: 8.
    pub data_bits: Option<u8>,
    /// `none`, `odd` or `even`. Default: `none`.
    pub parity: Option<Parity>,
    /// 1 or 2. Default: 1.
    pub stop_bits: Option<u8>,
    /// `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS). Default: `none`.
    pub flow_control: Option<FlowControl>,
    /// Bytes sent after opening, with escapes `\r`, `\n`, `\t`, `\\` and
    /// `\xNN`. Default: `"\r\n"`.
    pub send: Option<String>,
    /// Regex the answer must match. Named captures become attributes,
    /// `serial.<name>` unless the name contains a dot. Required.
    pub expect: String,
    /// How long to wait for a matching answer at each baud rate. Default: 2000.
    pub timeout_ms: Option<u64>,
    /// Seconds between two probes of one port (liveness). Default: 30.
    pub reprobe_interval_secs: Option<u64>,
    /// Stop reading after this many bytes without a match. Default: 4096.
    pub max_read_bytes: Option<usize>,
}

/// Parity as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// Flow control as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

/// Validated serial probe settings.
#[derive(Debug, Clone, Default)]
pub struct SerialSettings {
    pub lock_dirs: Vec<PathBuf>,
    pub profiles: Vec<Profile>,
}

/// One validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub paths: Vec<String>,
    pub match_rules: Vec<MatchRule>,
    pub baud_rates: Vec<u32>,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
    pub send: Vec<u8>,
    pub expect: Regex,
    /// (capture group name, attribute name) for every named capture.
    pub captures: Vec<(String, String)>,
    pub timeout: Duration,
    pub reprobe_interval: Duration,
    pub max_read_bytes: usize,
}

impl SerialSettings {
    pub fn validate(raw: RawSerialConfig) -> Result<SerialSettings, ConfigError> {
        let lock_dirs = raw
            .lock_dirs
            .unwrap_or_else(|| vec!["/run/lock".into(), "/var/lock".into()]);
        if let Some(d) = lock_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(invalid(
                "serial.lock_dirs",
                format!("contains {d:?}; lock directories must be absolute paths"),
            ));
        }
        let mut profiles: Vec<Profile> = Vec::with_capacity(raw.profiles.len());
        for (i, p) in raw.profiles.into_iter().enumerate() {
            let profile = Profile::validate(i, p)?;
            if profiles.iter().any(|q| q.name == profile.name) {
                return Err(invalid(
                    format!("serial.profiles[{i}].name"),
                    format!("{:?} is used by an earlier profile", profile.name),
                ));
            }
            profiles.push(profile);
        }
        Ok(SerialSettings {
            lock_dirs,
            profiles,
        })
    }

    /// Whether any profile is configured.
    pub fn enabled(&self) -> bool {
        !self.profiles.is_empty()
    }
}

impl Profile {
    fn validate(i: usize, raw: RawProfile) -> Result<Profile, ConfigError> {
        let key = |field: &str| format!("serial.profiles[{i}].{field}");
        if raw.name.trim().is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        let paths = raw.paths.unwrap_or_default();
        for p in &paths {
            check_path_pattern(p).map_err(|problem| invalid(key("paths"), problem))?;
        }
        let match_rules = raw.match_rules.unwrap_or_default();
        for (n, rule) in match_rules.iter().enumerate() {
            if rule.is_empty() || rule.keys().any(|k| k.is_empty() || k == "attr:") {
                return Err(invalid(
                    key("match"),
                    format!("rule #{} is empty or has an empty key", n + 1),
                ));
            }
        }
        if paths.is_empty() && match_rules.is_empty() {
            return Err(invalid(
                key("paths"),
                "selects no port: set `paths` and/or `match`",
            ));
        }
        let baud_rates = raw.baud_rates.unwrap_or_else(|| vec![115_200]);
        if baud_rates.is_empty() {
            return Err(invalid(key("baud_rates"), "must list at least one rate"));
        }
        if baud_rates.contains(&0) {
            return Err(invalid(key("baud_rates"), "contains 0"));
        }
        let data_bits = raw.data_bits.unwrap_or(8);
        if !(5..=8).contains(&data_bits) {
            return Err(invalid(
                key("data_bits"),
                format!("is {data_bits}; expected 5, 6, 7 or 8"),
            ));
        }
        let stop_bits = raw.stop_bits.unwrap_or(1);
        if !(1..=2).contains(&stop_bits) {
            return Err(invalid(
                key("stop_bits"),
                format!("is {stop_bits}; expected 1 or 2"),
            ));
        }
        let send = unescape(raw.send.as_deref().unwrap_or("\\r\\n"))
            .map_err(|problem| invalid(key("send"), problem))?;
        let expect = Regex::new(&raw.expect)
            .map_err(|e| invalid(key("expect"), format!("is not a valid regex: {e}")))?;
        let captures = capture_attrs(&expect).map_err(|problem| invalid(key("expect"), problem))?;
        let timeout_ms = raw.timeout_ms.unwrap_or(2000);
        if !(1..=600_000).contains(&timeout_ms) {
            return Err(invalid(
                key("timeout_ms"),
                format!("is {timeout_ms}; expected 1..=600000"),
            ));
        }
        let reprobe = raw.reprobe_interval_secs.unwrap_or(30);
        if !(1..=86_400).contains(&reprobe) {
            return Err(invalid(
                key("reprobe_interval_secs"),
                format!("is {reprobe}; expected 1..=86400"),
            ));
        }
        let max_read_bytes = raw.max_read_bytes.unwrap_or(4096);
        if !(1..=1 << 20).contains(&max_read_bytes) {
            return Err(invalid(
                key("max_read_bytes"),
                format!("is {max_read_bytes}; expected 1..=1048576"),
            ));
        }
        Ok(Profile {
            name: raw.name,
            paths,
            match_rules,
            baud_rates,
            data_bits,
            parity: raw.parity.unwrap_or(Parity::None),
            stop_bits,
            flow_control: raw.flow_control.unwrap_or(FlowControl::None),
            send,
            expect,
            captures,
            timeout: Duration::from_millis(timeout_ms),
            reprobe_interval: Duration::from_secs(reprobe),
            max_read_bytes,
        })
    }
}

/// An absolute path whose wildcards (`*`, `?`) are in the last component.
fn check_path_pattern(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("contains {p:?}; paths must be absolute"));
    }
    let (dir, file) = p.rsplit_once('/').unwrap_or(("", p));
    if dir.contains(['*', '?']) {
        return Err(format!(
            "contains {p:?}; `*` and `?` are only supported in the last path component"
        ));
    }
    if file.is_empty() {
        return Err(format!("contains {p:?}, which names a directory"));
    }
    Ok(())
}

/// The attribute name of each named capture: `serial.<name>`, or the name
/// itself when it contains a dot.
fn capture_attrs(re: &Regex) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for name in re.capture_names().flatten() {
        let attr = if name.contains('.') {
            name.to_string()
        } else {
            format!("serial.{name}")
        };
        if RESERVED_ATTRS.contains(&attr.as_str()) || attr.starts_with("session.") {
            return Err(format!(
                "capture {name:?} would overwrite the attribute {attr:?}, which the probe or registry sets"
            ));
        }
        out.push((name.to_string(), attr));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;
