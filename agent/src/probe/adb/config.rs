//! `[adb]`: the ADB probe's configuration, as written ([`RawAdbConfig`]) and
//! validated ([`AdbSettings`]). Validation touches neither disk nor network.
//!
//! Invariants of a validated [`AdbSettings`]: `server` is `host:port` with a
//! port in 1..=65535; every property name is non-empty, made of letters,
//! digits and `._-:@`, and maps to a distinct attribute name that the probe
//! does not already use for the device list's own fields.

use super::device::{property_attr, RESERVED_ATTRS};
use crate::config::{invalid, ConfigError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Default address of the adb server.
pub const DEFAULT_SERVER: &str = "127.0.0.1:5037";
/// Default properties read from every device in state `device`.
pub const DEFAULT_PROPERTIES: &[&str] = &[
    "ro.product.manufacturer",
    "ro.product.model",
    "ro.build.fingerprint",
    "ro.build.version.release",
    "ro.serialno",
];
/// Default bound on a frame and on a `getprop` reply (1 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u64 = 1 << 20;
const MAX_FRAME_RANGE: (u64, u64) = (1024, 16 << 20);
const TIMEOUT_MS_RANGE: (u64, u64) = (1, 600_000);
const BACKOFF_SECS_RANGE: (u64, u64) = (1, 3600);

/// `[adb]` as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdbConfig {
    /// Whether the ADB probe runs. Default: true.
    pub enabled: Option<bool>,
    /// `host:port` of the adb server (an IPv6 host in brackets).
    /// Default: `127.0.0.1:5037`.
    pub server: Option<String>,
    /// System properties read (`getprop`) from each device in state
    /// `device`, reported as `android.<name without a leading "ro.">`.
    /// Default: [`DEFAULT_PROPERTIES`]. `[]` reads none.
    pub properties: Option<Vec<String>>,
    /// Largest length-prefixed frame (4 hex digits allow at most 65535
    /// bytes) and largest `getprop` reply accepted. Default: 1048576.
    /// Range 1024..=16777216.
    pub max_frame_bytes: Option<u64>,
    /// Timeout of a TCP connect to the server. Default: 2000. Range 1..=600000.
    pub connect_timeout_ms: Option<u64>,
    /// Timeout of one request: its answer, a one-shot reply, the rest of a
    /// started frame. Default: 5000. Range 1..=600000.
    pub request_timeout_ms: Option<u64>,
    /// Cap of the exponential reconnect backoff (0.5 s doubling, with
    /// jitter). Default: 30. Range 1..=3600.
    pub reconnect_max_backoff_secs: Option<u64>,
}

/// Validated ADB probe settings; build them with [`AdbSettings::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdbSettings {
    pub enabled: bool,
    pub server: String,
    pub properties: Vec<String>,
    pub max_frame_bytes: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub reconnect_max_backoff: Duration,
}

impl Default for AdbSettings {
    /// The documented defaults.
    fn default() -> Self {
        AdbSettings {
            enabled: true,
            server: DEFAULT_SERVER.to_string(),
            properties: DEFAULT_PROPERTIES.iter().map(|p| p.to_string()).collect(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES as usize,
            connect_timeout: Duration::from_millis(2000),
            request_timeout: Duration::from_millis(5000),
            reconnect_max_backoff: Duration::from_secs(30),
        }
    }
}

impl AdbSettings {
    /// Applies defaults and checks every key; errors name the key.
    pub fn validate(raw: RawAdbConfig) -> Result<AdbSettings, ConfigError> {
        let d = AdbSettings::default();
        let server = match raw.server {
            Some(s) => check_server(s)?,
            None => d.server,
        };
        let properties = match raw.properties {
            Some(p) => check_properties(p)?,
            None => d.properties,
        };
        let max_frame_bytes = ranged(
            "adb.max_frame_bytes",
            raw.max_frame_bytes,
            DEFAULT_MAX_FRAME_BYTES,
            MAX_FRAME_RANGE,
        )?;
        let ms = |key: &str, v: Option<u64>, default: Duration| {
            ranged(key, v, default.as_millis() as u64, TIMEOUT_MS_RANGE).map(Duration::from_millis)
        };
        Ok(AdbSettings {
            enabled: raw.enabled.unwrap_or(d.enabled),
            server,
            properties,
            max_frame_bytes: usize::try_from(max_frame_bytes).unwrap_or(usize::MAX),
            connect_timeout: ms(
                "adb.connect_timeout_ms",
                raw.connect_timeout_ms,
                d.connect_timeout,
            )?,
            request_timeout: ms(
                "adb.request_timeout_ms",
                raw.request_timeout_ms,
                d.request_timeout,
            )?,
            reconnect_max_backoff: Duration::from_secs(ranged(
                "adb.reconnect_max_backoff_secs",
                raw.reconnect_max_backoff_secs,
                d.reconnect_max_backoff.as_secs(),
                BACKOFF_SECS_RANGE,
            )?),
        })
    }

    /// Whether the probe runs.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

fn ranged(
    key: &str,
    value: Option<u64>,
    default: u64,
    (lo, hi): (u64, u64),
) -> Result<u64, ConfigError> {
    let v = value.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(invalid(key, format!("is {v}; expected {lo}..={hi}")));
    }
    Ok(v)
}

fn check_server(server: String) -> Result<String, ConfigError> {
    let bad = |why: &str| invalid("adb.server", format!("is {server:?}; {why}"));
    let Some((host, port)) = server.rsplit_once(':') else {
        return Err(bad("expected host:port such as \"127.0.0.1:5037\""));
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(bad("the host is empty or contains whitespace"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad("an IPv6 host must be in brackets, e.g. \"[::1]:5037\""));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(server),
        _ => Err(bad("the port must be a number in 1..=65535")),
    }
}

fn check_properties(props: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let mut attrs: BTreeMap<String, usize> = BTreeMap::new();
    for (i, name) in props.iter().enumerate() {
        let key = format!("adb.properties[{i}]");
        let allowed = |c: char| c.is_ascii_alphanumeric() || "._-:@".contains(c);
        if name.is_empty() || !name.chars().all(allowed) {
            return Err(invalid(
                key,
                format!("is {name:?}; a property name is letters, digits and ._-:@"),
            ));
        }
        let attr = property_attr(name);
        if RESERVED_ATTRS.contains(&attr.as_str()) {
            return Err(invalid(
                key,
                format!("{name:?} would be reported as `{attr}`, which the probe sets from the device list"),
            ));
        }
        if let Some(j) = attrs.insert(attr.clone(), i) {
            return Err(invalid(
                key,
                format!("{name:?} would be reported as `{attr}`, like adb.properties[{j}]"),
            ));
        }
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AdbSettings, String> {
        let raw: RawAdbConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        AdbSettings::validate(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_section_gives_the_documented_defaults() {
        let s = parse("").expect("defaults");
        assert_eq!(s, AdbSettings::default());
        assert!(s.enabled());
        assert_eq!(s.server, "127.0.0.1:5037");
        assert_eq!(s.properties.len(), 5);
        assert_eq!(s.max_frame_bytes, 1_048_576);
        assert_eq!(s.connect_timeout, Duration::from_millis(2000));
        assert_eq!(s.request_timeout, Duration::from_millis(5000));
        assert_eq!(s.reconnect_max_backoff, Duration::from_secs(30));
    }

    #[test]
    fn every_key_can_be_set() {
        let s = parse(
            "enabled = false\nserver = \"[::1]:6037\"\nproperties = [\"ro.product.model\"]\n\
             max_frame_bytes = 4096\nconnect_timeout_ms = 100\nrequest_timeout_ms = 200\n\
             reconnect_max_backoff_secs = 2\n",
        )
        .expect("valid");
        assert!(!s.enabled());
        assert_eq!((s.server.as_str(), s.max_frame_bytes), ("[::1]:6037", 4096));
        assert_eq!(s.properties, ["ro.product.model"]);
        assert_eq!(s.request_timeout, Duration::from_millis(200));
        assert_eq!(s.reconnect_max_backoff, Duration::from_secs(2));
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let msg = parse("servr = \"x:1\"").expect_err("typo");
        assert!(msg.contains("servr"), "{msg}");
    }

    #[test]
    fn out_of_range_numbers_name_their_key() {
        for (text, key) in [
            ("max_frame_bytes = 10", "adb.max_frame_bytes"),
            ("max_frame_bytes = 999999999", "adb.max_frame_bytes"),
            ("connect_timeout_ms = 0", "adb.connect_timeout_ms"),
            ("request_timeout_ms = 0", "adb.request_timeout_ms"),
            (
                "reconnect_max_backoff_secs = 0",
                "adb.reconnect_max_backoff_secs",
            ),
        ] {
            let msg = parse(text).expect_err(text);
            assert!(msg.contains(&format!("`{key}`")), "{text}: {msg}");
        }
    }

    #[test]
    fn a_bad_server_address_is_refused_with_the_reason() {
        for (server, why) in [
            ("localhost", "host:port"),
            (":5037", "host is empty"),
            ("host:0", "port"),
            ("host:99999", "port"),
            ("::1:5037", "brackets"),
        ] {
            let msg = parse(&format!("server = {server:?}")).expect_err(server);
            assert!(
                msg.contains("`adb.server`") && msg.contains(why),
                "{server}: {msg}"
            );
        }
        assert!(parse("server = \"adb-host.lab:5037\"").is_ok());
    }

    #[test]
    fn property_names_are_checked_and_must_map_to_distinct_attributes() {
        let msg = parse("properties = [\"ro.product.model\", \"bad name\"]").expect_err("space");
        assert!(msg.contains("`adb.properties[1]`"), "{msg}");
        let msg =
            parse("properties = [\"ro.serialno\", \"serialno\"]").expect_err("same attribute");
        assert!(
            msg.contains("`android.serialno`") && msg.contains("adb.properties[0]"),
            "{msg}"
        );
        let msg = parse("properties = [\"ro.device\"]").expect_err("reserved");
        assert!(msg.contains("`android.device`"), "{msg}");
        assert_eq!(parse("properties = []").map(|s| s.properties.len()), Ok(0));
    }
}
