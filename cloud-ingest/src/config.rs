//! Configuration in two stages: [`RawConfig`] is the TOML file exactly as
//! written (unknown keys are errors), [`Settings`] the validated result.
//! Validation touches neither disk nor network. `cloud-ingest/examples/
//! cloud-ingest.toml` shows every key with its default and is parsed by a
//! test.
//!
//! Sections: `[mqtt]` (bridge only), `[kafka]` (both), `[database]`
//! (registry, migrate, devices), `[registry]`, `[metrics]`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where the binary looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rae/cloud-ingest.toml";

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

pub(crate) fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// The TOML file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Log level: error, warn, info, debug or trace. Default: `info`.
    /// `RUST_LOG` overrides it.
    pub log_level: Option<String>,
    #[serde(default)]
    pub mqtt: RawMqtt,
    #[serde(default)]
    pub kafka: RawKafka,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub registry: RawRegistry,
    #[serde(default)]
    pub metrics: RawMetrics,
}

/// `[mqtt]`: the broker the bridge reads from.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// Broker URL, `mqtt://host:port` (default port 1883). Default:
    /// `mqtt://127.0.0.1:1883`.
    pub broker: Option<String>,
    /// MQTT client id; `{client_id}-commands` is used for the command
    /// downlink. The uplink keeps a persistent session (clean_session =
    /// false) under this id, so it must be *stable* across restarts of one
    /// bridge instance (the broker redelivers what it had not seen acked)
    /// and *distinct* per instance (two bridges with one id take each
    /// other's session). Default: `rae-bridge-` plus the hostname; set it
    /// when running two bridges on one host.
    pub client_id: Option<String>,
    /// Shared-subscription group: `$share/{share_group}/rae/v1/+/devices/+`.
    /// Default: `rae-bridge`.
    pub share_group: Option<String>,
    /// MQTT keepalive. Default: 30.
    pub keepalive_secs: Option<u64>,
    /// Messages received from MQTT and not yet confirmed by Kafka, at most.
    /// At this bound the bridge stops reading and the broker holds the rest.
    /// Default: 1000.
    pub max_in_flight: Option<u16>,
    /// Reconnect backoff doubles from 0.5 s up to this. Default: 30.
    pub reconnect_max_backoff_secs: Option<u64>,
    /// Username and password. Default: none.
    pub username: Option<String>,
    pub password: Option<String>,
}

/// `[kafka]`: the Kafka (or Kafka-protocol) cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// `bootstrap.servers`. Default: `127.0.0.1:9092`.
    pub brokers: Option<String>,
    /// Device events, keyed by MQTT topic. Default: `rae.device-events`.
    pub events_topic: Option<String>,
    /// Box birth/will status messages. Default: `rae.box-status`.
    pub status_topic: Option<String>,
    /// Commands for agents (resync). Default: `rae.device-commands`.
    pub commands_topic: Option<String>,
    /// Records the registry cannot apply. Default: `rae.device-events.dlq`.
    pub dlq_topic: Option<String>,
    /// Consumer group of the registry. Default: `rae-registry`.
    pub registry_group: Option<String>,
    /// Consumer group of the bridges' command downlink. Default: `rae-bridge`.
    pub bridge_group: Option<String>,
    /// Extra librdkafka properties (TLS, SASL, tuning), passed through
    /// unchanged. Default: none.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `[database]`: CockroachDB or PostgreSQL.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// A libpq-style URL or key=value string. Default:
    /// `postgresql://rae@127.0.0.1:26257/rae` (CockroachDB's port).
    pub url: Option<String>,
    /// Database retries back off from 0.1 s up to this. Default: 30.
    pub retry_max_backoff_secs: Option<u64>,
}

/// `[registry]`: batching and resync policy of the Cloud Registry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// A batch closes at this many records. Default: 1000.
    pub batch_max_records: Option<usize>,
    /// A batch closes this long after its first record. Default: 1000.
    pub batch_max_wait_ms: Option<u64>,
    /// At most one resync command per session this often. Default: 60.
    pub resync_min_interval_secs: Option<u64>,
    /// Event history rows kept per device session. Default: 1000.
    pub history_max_events_per_session: Option<u32>,
}

/// `[metrics]`: Prometheus endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `/metrics` of `bridge`. Default: `127.0.0.1:9464`; `""` disables.
    pub bridge_listen: Option<String>,
    /// `/metrics` of `registry`. Default: `127.0.0.1:9465`; `""` disables.
    pub registry_listen: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub log_level: log::LevelFilter,
    pub mqtt: MqttSettings,
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub registry: RegistrySettings,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub broker_url: String,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub share_group: String,
    pub keepalive_secs: u64,
    pub max_in_flight: u16,
    pub reconnect_max_backoff_secs: u64,
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub events_topic: String,
    pub status_topic: String,
    pub commands_topic: String,
    pub dlq_topic: String,
    pub registry_group: String,
    pub bridge_group: String,
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
    pub retry_max_backoff_secs: u64,
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    pub resync_min_interval_secs: u64,
    pub history_max_events_per_session: u32,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub bridge_listen: Option<SocketAddr>,
    pub registry_listen: Option<SocketAddr>,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Settings::validate(raw)
}

impl Settings {
    pub fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
        let log_level = match raw.log_level.as_deref() {
            None => log::LevelFilter::Info,
            Some(s) => s.parse().map_err(|_| {
                invalid(
                    "log_level",
                    format!("is {s:?}; expected error, warn, info, debug or trace"),
                )
            })?,
        };
        Ok(Settings {
            log_level,
            mqtt: validate_mqtt(raw.mqtt)?,
            kafka: validate_kafka(raw.kafka)?,
            database: validate_database(raw.database)?,
            registry: validate_registry(raw.registry)?,
            metrics: validate_metrics(raw.metrics)?,
        })
    }
}

fn in_range(key: &str, v: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64, ConfigError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(invalid(
            key,
            format!("is {v}; expected {}..={}", range.start(), range.end()),
        ))
    }
}

fn validate_mqtt(raw: RawMqtt) -> Result<MqttSettings, ConfigError> {
    let broker_url = raw
        .broker
        .unwrap_or_else(|| "mqtt://127.0.0.1:1883".to_string());
    let (host, port) = parse_mqtt_url(&broker_url)?;
    let share_group = raw.share_group.unwrap_or_else(|| "rae-bridge".to_string());
    if share_group.is_empty() || share_group.contains(['/', '+', '#']) {
        return Err(invalid(
            "mqtt.share_group",
            format!("is {share_group:?}; expected a non-empty name without '/', '+' or '#'"),
        ));
    }
    let client_id = match raw.client_id {
        Some(id) if id.is_empty() => return Err(invalid("mqtt.client_id", "is empty")),
        Some(id) => id,
        None => format!("rae-bridge-{}", hostname()),
    };
    let max_in_flight = raw.max_in_flight.unwrap_or(1000);
    in_range("mqtt.max_in_flight", max_in_flight.into(), 1..=65_000)?;
    let credentials = match (raw.username, raw.password) {
        (Some(u), p) => Some((u, p.unwrap_or_default())),
        (None, Some(_)) => return Err(invalid("mqtt.password", "is set without mqtt.username")),
        (None, None) => None,
    };
    Ok(MqttSettings {
        broker_url,
        host,
        port,
        client_id,
        share_group,
        keepalive_secs: in_range(
            "mqtt.keepalive_secs",
            raw.keepalive_secs.unwrap_or(30),
            5..=3600,
        )?,
        max_in_flight,
        reconnect_max_backoff_secs: in_range(
            "mqtt.reconnect_max_backoff_secs",
            raw.reconnect_max_backoff_secs.unwrap_or(30),
            1..=3600,
        )?,
        credentials,
    })
}

fn parse_mqtt_url(url: &str) -> Result<(String, u16), ConfigError> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
        invalid(
            "mqtt.broker",
            format!("is {url:?}; expected mqtt://host[:port]"),
        )
    })?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| invalid("mqtt.broker", format!("has an invalid port in {url:?}")))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() || host.contains('/') {
        return Err(invalid(
            "mqtt.broker",
            format!("has no valid host in {url:?}"),
        ));
    }
    Ok((host.to_string(), port))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string())
}

fn topic_name(key: &str, v: Option<String>, default: &str) -> Result<String, ConfigError> {
    let v = v.unwrap_or_else(|| default.to_string());
    let ok = !v.is_empty()
        && v.len() <= 249
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(v)
    } else {
        Err(invalid(
            key,
            format!("is {v:?}; a Kafka name is 1-249 characters of [a-zA-Z0-9._-]"),
        ))
    }
}

fn validate_kafka(raw: RawKafka) -> Result<KafkaSettings, ConfigError> {
    let brokers = raw.brokers.unwrap_or_else(|| "127.0.0.1:9092".to_string());
    if brokers.trim().is_empty() {
        return Err(invalid("kafka.brokers", "is empty"));
    }
    Ok(KafkaSettings {
        brokers,
        events_topic: topic_name("kafka.events_topic", raw.events_topic, "rae.device-events")?,
        status_topic: topic_name("kafka.status_topic", raw.status_topic, "rae.box-status")?,
        commands_topic: topic_name(
            "kafka.commands_topic",
            raw.commands_topic,
            "rae.device-commands",
        )?,
        dlq_topic: topic_name("kafka.dlq_topic", raw.dlq_topic, "rae.device-events.dlq")?,
        registry_group: topic_name("kafka.registry_group", raw.registry_group, "rae-registry")?,
        bridge_group: topic_name("kafka.bridge_group", raw.bridge_group, "rae-bridge")?,
        properties: raw.properties,
    })
}

fn validate_database(raw: RawDatabase) -> Result<DatabaseSettings, ConfigError> {
    let url = raw
        .url
        .unwrap_or_else(|| "postgresql://rae@127.0.0.1:26257/rae".to_string());
    if url.trim().is_empty() {
        return Err(invalid("database.url", "is empty"));
    }
    Ok(DatabaseSettings {
        url,
        retry_max_backoff_secs: in_range(
            "database.retry_max_backoff_secs",
            raw.retry_max_backoff_secs.unwrap_or(30),
            1..=3600,
        )?,
    })
}

fn validate_registry(raw: RawRegistry) -> Result<RegistrySettings, ConfigError> {
    Ok(RegistrySettings {
        batch_max_records: in_range(
            "registry.batch_max_records",
            raw.batch_max_records.unwrap_or(1000) as u64,
            1..=100_000,
        )? as usize,
        batch_max_wait_ms: in_range(
            "registry.batch_max_wait_ms",
            raw.batch_max_wait_ms.unwrap_or(1000),
            1..=60_000,
        )?,
        resync_min_interval_secs: in_range(
            "registry.resync_min_interval_secs",
            raw.resync_min_interval_secs.unwrap_or(60),
            1..=86_400,
        )?,
        history_max_events_per_session: in_range(
            "registry.history_max_events_per_session",
            raw.history_max_events_per_session.unwrap_or(1000).into(),
            1..=1_000_000,
        )? as u32,
    })
}

fn listen(key: &str, v: Option<String>, default: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let v = v.unwrap_or_else(|| default.to_string());
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| {
        invalid(
            key,
            format!("is {v:?}; expected ip:port, or \"\" to disable"),
        )
    })
}

fn validate_metrics(raw: RawMetrics) -> Result<MetricsSettings, ConfigError> {
    Ok(MetricsSettings {
        bridge_listen: listen("metrics.bridge_listen", raw.bridge_listen, "127.0.0.1:9464")?,
        registry_listen: listen(
            "metrics.registry_listen",
            raw.registry_listen,
            "127.0.0.1:9465",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Settings, ConfigError> {
        parse(s, Path::new("test.toml"))
    }

    #[test]
    fn empty_config_gets_documented_defaults() {
        let s = parse_str("").unwrap();
        assert_eq!(s.mqtt.port, 1883);
        assert_eq!(s.mqtt.share_group, "rae-bridge");
        assert_eq!(s.mqtt.max_in_flight, 1000);
        assert_eq!(s.kafka.events_topic, "rae.device-events");
        assert_eq!(s.kafka.dlq_topic, "rae.device-events.dlq");
        assert_eq!(s.registry.batch_max_records, 1000);
        assert_eq!(s.registry.batch_max_wait_ms, 1000);
        assert_eq!(
            s.metrics.registry_listen,
            Some("127.0.0.1:9465".parse().unwrap())
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = parse_str("[kafka]\nbrokerz = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("brokerz"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let e = parse_str("[registry]\nbatch_max_records = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry.batch_max_records"), "{e}");
        let e = parse_str("[mqtt]\nbroker = \"tcp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.broker"), "{e}");
        let e = parse_str("[kafka]\nevents_topic = \"a b\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafka.events_topic"), "{e}");
    }

    #[test]
    fn empty_metrics_listen_disables_the_endpoint() {
        let s = parse_str("[metrics]\nbridge_listen = \"\"\n").unwrap();
        assert_eq!(s.metrics.bridge_listen, None);
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cloud-ingest.toml");
        load(&path).unwrap();
    }
}
