//! Configuration in two stages: [`RawConfig`] is the TOML file exactly as
//! written (unknown keys are errors), [`Settings`] the validated result.
//! Validation ([`parse`]) touches neither disk nor network; [`load`] then
//! also checks the files the config names (TLS certificates and keys:
//! readable, PEM, key matching certificate), so `check-config` and every
//! subcommand's start fail with exit 64 on a bad one. `cloud-ingest/
//! examples/cloud-ingest.toml` shows every key with its default and is
//! parsed by a test. TLS per connection: docs/CLOUD.md, "TLS".
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
    /// `RUST_LOG` overrides it. The PostgreSQL client's own lines stay at
    /// info and above (at debug it prints every bound parameter).
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
    /// Broker URL, `mqtt://host[:port]` (default port 1883) or
    /// `mqtts://host[:port]` (TLS, default port 8883). Default:
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
    /// PEM CA certificate(s) that sign the broker's certificate; required
    /// for (and only allowed with) `mqtts://`. Default: none.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and its key, for brokers that require mutual
    /// TLS; both or neither, `mqtts://` only. Default: none.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
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
    /// Extra librdkafka properties (TLS, SASL, tuning), merged over rae's
    /// defaults after librdkafka's aliases are mapped to the names rae
    /// uses; a property meant only for the other client (producer or
    /// consumer) is left out of each, and `acks`, `enable.idempotence`
    /// and the consumers' auto-commit settings are fixed (docs/CLOUD.md,
    /// "Property names"). The files of `ssl.ca.location`, `ssl.certificate.location`
    /// and `ssl.key.location` must be readable. Default: none.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// `[database]`: CockroachDB or PostgreSQL.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// A libpq-style URL or key=value string. Default:
    /// `postgresql://rae@127.0.0.1:26257/rae` (CockroachDB's port). TLS is
    /// set in it the libpq way: `sslmode` (`disable`, the default;
    /// `require`, `verify-ca`, `verify-full`), `sslrootcert` (CA file),
    /// `sslcert` + `sslkey` (client certificate, e.g. CockroachDB's
    /// `client.<user>.crt`). See docs/CLOUD.md, "TLS".
    pub url: Option<String>,
    /// Database retries back off from 0.1 s up to this. Default: 30.
    pub retry_max_backoff_secs: Option<u64>,
    /// Bounds a connection attempt (TCP, TLS, login) and a registry batch's
    /// transaction (from `BEGIN` to `COMMIT`); past it the connection is
    /// dropped and the batch retried on a new one, so a database that stops
    /// answering (a network partition) holds a partition up for this long,
    /// not for the kernel's TCP retransmission time (~15 min). Default: 60.
    pub timeout_secs: Option<u64>,
}

/// `[registry]`: batching and resync policy of the Cloud Registry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// A batch closes at this many records. Default: 1000.
    pub batch_max_records: Option<usize>,
    /// A batch closes this long after its first record. Default: 1000.
    pub batch_max_wait_ms: Option<u64>,
    /// A batch that holds every record its partition had at the last fetch
    /// (caught up with the log) closes without waiting `batch_max_wait_ms`
    /// for records not written yet, once this long has passed since the
    /// partition's previous batch closed: a change after a quiet spell is
    /// applied at once, and a steady stream costs at most 1000 / this
    /// transactions per second per partition. At most `batch_max_wait_ms`.
    /// Default: 100 (or `batch_max_wait_ms` if that is lower).
    pub batch_min_interval_ms: Option<u64>,
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
    /// Set for `mqtts://`.
    pub tls: Option<MqttTls>,
}

/// The TLS files of an `mqtts://` broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    pub ca_file: PathBuf,
    /// Client certificate and key (mutual TLS).
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

impl MqttTls {
    /// The rustls configuration (reads the files).
    pub fn client_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, rae_tls::TlsError> {
        rae_tls::client_config(
            Some(&self.ca_file),
            rae_tls::ClientAuth::from_pair(self.client_auth.as_ref()),
        )
    }
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
    /// As written (TLS parameters included; [`crate::db::connect`] splits
    /// them off again).
    pub url: String,
    /// The TLS part of `url`.
    pub tls: crate::db::tls::DbTls,
    pub retry_max_backoff_secs: u64,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub batch_max_records: usize,
    pub batch_max_wait_ms: u64,
    pub batch_min_interval_ms: u64,
    pub resync_min_interval_secs: u64,
    pub history_max_events_per_session: u32,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub bridge_listen: Option<SocketAddr>,
    pub registry_listen: Option<SocketAddr>,
}

/// Reads and validates a config file, then checks the files it names
/// ([`check_files`]).
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let settings = parse(&text, path)?;
    check_kafka_properties(&settings)?;
    check_files(&settings)?;
    Ok(settings)
}

/// Hands each `[kafka.properties]` entry to librdkafka's own config
/// parser (no client is created, nothing touches the network), so an
/// unknown property or a bad value is a config error (exit 64) rather than
/// a client that fails to start (exit 1, restarted by systemd forever).
pub fn check_kafka_properties(s: &Settings) -> Result<(), ConfigError> {
    for (key, value) in &s.kafka.properties {
        let mut c = rdkafka::ClientConfig::new();
        c.set(key, value);
        if let Err(e) = c.create_native_config() {
            let reason = match e {
                rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) => desc,
                other => other.to_string(),
            };
            return Err(invalid(
                &format!("kafka.properties.{key:?}"),
                format!("is refused by librdkafka: {reason}"),
            ));
        }
    }
    Ok(())
}

/// The librdkafka properties that name files.
const KAFKA_FILE_PROPERTIES: [&str; 3] = [
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
];

/// Checks the TLS files of every section by loading them as the
/// connections will (readable, PEM, key matching certificate); for Kafka,
/// that the files librdkafka will open are readable. Touches disk only.
pub fn check_files(s: &Settings) -> Result<(), ConfigError> {
    if let Some(tls) = &s.mqtt.tls {
        tls.client_config().map_err(|e| {
            invalid(
                "mqtt.ca_file/client_cert_file/client_key_file",
                format!("cannot be loaded: {e}"),
            )
        })?;
    }
    crate::db::tls::client_config(&s.database.tls).map_err(|e| {
        invalid(
            "database.url",
            format!("has TLS files that cannot be loaded: {e}"),
        )
    })?;
    for key in KAFKA_FILE_PROPERTIES {
        let Some(file) = s.kafka.properties.get(key) else {
            continue;
        };
        // librdkafka also accepts "probe" (system CA locations) for the CA.
        if key == "ssl.ca.location" && file == "probe" {
            continue;
        }
        if let Err(e) = std::fs::File::open(file) {
            return Err(invalid(
                &format!("kafka.properties.{key:?}"),
                format!("names {file:?}, which cannot be read: {e}"),
            ));
        }
    }
    Ok(())
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
    let (host, port, is_tls) = parse_mqtt_url(&broker_url)?;
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
    let client_auth =
        rae_tls::cert_key_pair(raw.client_cert_file, raw.client_key_file).map_err(|_| {
            invalid(
                "mqtt.client_cert_file",
                "and mqtt.client_key_file must be set together",
            )
        })?;
    let tls = match (is_tls, raw.ca_file) {
        (true, Some(ca_file)) => Some(MqttTls {
            ca_file,
            client_auth,
        }),
        (true, None) => {
            return Err(invalid(
                "mqtt.ca_file",
                "is required for an mqtts:// broker",
            ))
        }
        (false, ca_file) => {
            if ca_file.is_some() || client_auth.is_some() {
                return Err(invalid(
                    "mqtt.broker",
                    "uses mqtt:// but TLS files are set; use mqtts://",
                ));
            }
            None
        }
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
        tls,
    })
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` → host, port, TLS.
fn parse_mqtt_url(url: &str) -> Result<(String, u16, bool), ConfigError> {
    let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => {
            return Err(invalid(
                "mqtt.broker",
                format!("is {url:?}; expected mqtt://host[:port] or mqtts://host[:port]"),
            ))
        }
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| invalid("mqtt.broker", format!("has an invalid port in {url:?}")))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return Err(invalid(
            "mqtt.broker",
            format!("has no valid host in {url:?}"),
        ));
    }
    Ok((host.to_string(), port, tls))
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
    let target = crate::db::tls::DbTarget::parse(&url).map_err(|e| invalid("database.url", e))?;
    if let Err(e) = target.conn.parse::<tokio_postgres::Config>() {
        return Err(invalid(
            "database.url",
            format!("is not a valid connection string: {e}"),
        ));
    }
    Ok(DatabaseSettings {
        tls: target.tls,
        url,
        retry_max_backoff_secs: in_range(
            "database.retry_max_backoff_secs",
            raw.retry_max_backoff_secs.unwrap_or(30),
            1..=3600,
        )?,
        timeout_secs: in_range(
            "database.timeout_secs",
            raw.timeout_secs.unwrap_or(60),
            1..=3600,
        )?,
    })
}

fn validate_registry(raw: RawRegistry) -> Result<RegistrySettings, ConfigError> {
    let batch_max_wait_ms = in_range(
        "registry.batch_max_wait_ms",
        raw.batch_max_wait_ms.unwrap_or(1000),
        1..=60_000,
    )?;
    let batch_min_interval_ms = raw
        .batch_min_interval_ms
        .unwrap_or(batch_max_wait_ms.min(100));
    if batch_min_interval_ms > batch_max_wait_ms {
        return Err(invalid(
            "registry.batch_min_interval_ms",
            format!(
                "is {batch_min_interval_ms}; expected at most registry.batch_max_wait_ms ({batch_max_wait_ms})"
            ),
        ));
    }
    Ok(RegistrySettings {
        batch_max_records: in_range(
            "registry.batch_max_records",
            raw.batch_max_records.unwrap_or(1000) as u64,
            1..=100_000,
        )? as usize,
        batch_max_wait_ms,
        batch_min_interval_ms,
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
#[path = "config_tests.rs"]
mod tests;
