//! `[mqtt]` configuration: raw TOML, then validated [`MqttSettings`].
//! No `[mqtt]` section (or no `broker`) means offline mode: the agent
//! journals everything and publishes nothing.

use crate::config::{invalid, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;

/// `[mqtt]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttConfig {
    /// Broker URL, `mqtt://host:port` (default port 1883) or
    /// `mqtts://host:port` (TLS, default port 8883). Default: none (offline).
    pub broker: Option<String>,
    /// MQTT keepalive. Default: 30.
    pub keepalive_secs: Option<u64>,
    /// Events published and not yet acknowledged, at most. Default: 32.
    pub inflight_window: Option<u16>,
    /// A checkpoint of every present device is published this often. Default: 300.
    pub checkpoint_interval_secs: Option<u64>,
    /// Reconnect backoff doubles from 0.5 s up to this. Default: 30.
    pub reconnect_max_backoff_secs: Option<u64>,
    /// On shutdown, wait at most this long for in-flight PUBACKs. Default: 3000.
    pub drain_timeout_ms: Option<u64>,
    /// Username and password. Default: none.
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificate(s) that sign the broker's certificate (mqtts). Required for mqtts.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS. Default: none.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Validated uplink settings.
#[derive(Debug, Clone, Default)]
pub struct MqttSettings {
    /// `None` in offline mode.
    pub broker: Option<Broker>,
    pub keepalive_secs: u64,
    pub inflight_window: u16,
    pub checkpoint_interval_secs: u64,
    pub reconnect_max_backoff_secs: u64,
    pub drain_timeout_ms: u64,
    pub credentials: Option<(String, String)>,
    pub ca_file: Option<PathBuf>,
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl MqttSettings {
    pub fn enabled(&self) -> bool {
        self.broker.is_some()
    }

    pub fn validate(raw: RawMqttConfig) -> Result<MqttSettings, ConfigError> {
        let broker = raw.broker.as_deref().map(parse_broker).transpose()?;
        let inflight_window = raw.inflight_window.unwrap_or(32);
        if inflight_window == 0 || inflight_window > 1000 {
            return Err(invalid(
                "mqtt.inflight_window",
                format!("is {inflight_window}; expected 1..=1000"),
            ));
        }
        let keepalive_secs = raw.keepalive_secs.unwrap_or(30);
        if !(5..=3600).contains(&keepalive_secs) {
            return Err(invalid(
                "mqtt.keepalive_secs",
                format!("is {keepalive_secs}; expected 5..=3600"),
            ));
        }
        let checkpoint_interval_secs = raw.checkpoint_interval_secs.unwrap_or(300);
        if checkpoint_interval_secs == 0 {
            return Err(invalid(
                "mqtt.checkpoint_interval_secs",
                "must be at least 1",
            ));
        }
        let reconnect_max_backoff_secs = raw.reconnect_max_backoff_secs.unwrap_or(30);
        if !(1..=3600).contains(&reconnect_max_backoff_secs) {
            return Err(invalid(
                "mqtt.reconnect_max_backoff_secs",
                format!("is {reconnect_max_backoff_secs}; expected 1..=3600"),
            ));
        }
        let credentials = match (raw.username, raw.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (Some(u), None) => Some((u, String::new())),
            (None, Some(_)) => {
                return Err(invalid("mqtt.password", "is set without mqtt.username"))
            }
            (None, None) => None,
        };
        let client_auth = rae_tls::cert_key_pair(raw.client_cert_file, raw.client_key_file)
            .map_err(|_| {
                invalid(
                    "mqtt.client_cert_file",
                    "and mqtt.client_key_file must be set together",
                )
            })?;
        if let Some(b) = &broker {
            if b.tls && raw.ca_file.is_none() {
                return Err(invalid(
                    "mqtt.ca_file",
                    "is required for an mqtts:// broker",
                ));
            }
            if !b.tls && (raw.ca_file.is_some() || client_auth.is_some()) {
                return Err(invalid(
                    "mqtt.broker",
                    "uses mqtt:// but TLS files are set; use mqtts://",
                ));
            }
        }
        Ok(MqttSettings {
            broker,
            keepalive_secs,
            inflight_window,
            checkpoint_interval_secs,
            reconnect_max_backoff_secs,
            drain_timeout_ms: raw.drain_timeout_ms.unwrap_or(3000),
            credentials,
            ca_file: raw.ca_file,
            client_auth,
        })
    }
}

/// Parses `mqtt://host[:port]` or `mqtts://host[:port]`.
pub fn parse_broker(url: &str) -> Result<Broker, ConfigError> {
    let bad = |why: &str| invalid("mqtt.broker", format!("{url:?} {why}"));
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad("must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
            let port: u16 = p.parse().map_err(|_| bad("has an invalid port"))?;
            (h.trim_start_matches('[').trim_end_matches(']'), port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad("has no valid host"));
    }
    if port == 0 {
        return Err(bad("has port 0"));
    }
    Ok(Broker {
        url: url.to_string(),
        host: host.to_string(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports() {
        let b = parse_broker("mqtt://broker.lab").expect("ok");
        assert_eq!(
            (b.host.as_str(), b.port, b.tls),
            ("broker.lab", 1883, false)
        );
        let b = parse_broker("mqtts://10.0.0.1:8884").expect("ok");
        assert_eq!((b.host.as_str(), b.port, b.tls), ("10.0.0.1", 8884, true));
        assert!(parse_broker("tcp://x:1").is_err());
        assert!(parse_broker("mqtt://x:notaport").is_err());
    }

    #[test]
    fn no_broker_means_offline_mode() {
        let s = MqttSettings::validate(RawMqttConfig::default()).expect("ok");
        assert!(!s.enabled());
    }

    #[test]
    fn tls_without_a_ca_file_names_the_key() {
        let raw = RawMqttConfig {
            broker: Some("mqtts://b".into()),
            ..RawMqttConfig::default()
        };
        let msg = MqttSettings::validate(raw).expect_err("bad").to_string();
        assert!(msg.contains("mqtt.ca_file"), "{msg}");
    }
}
