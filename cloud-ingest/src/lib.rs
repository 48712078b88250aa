//! `rae-cloud-ingest`: the cloud side of rae.
//!
//! - [`bridge`]: MQTT → Kafka, acking MQTT only after Kafka confirms.
//! - [`registry`]: Kafka → CockroachDB/PostgreSQL, committing offsets only
//!   after the database transaction commits.
//! - [`db`]: embedded migrations and the SQL both of those share.
//! - [`cli`]: the `devices` query commands.
//! - [`metrics`]: Prometheus `/metrics` for both roles.
//! - [`kafka_props`]: librdkafka property aliases (renamed before merging)
//!   and `message.max.bytes`, shared by both roles.
//! - [`config`]: raw TOML → validated [`config::Settings`].

pub mod bridge;
pub mod cli;
pub mod config;
pub mod db;
pub mod kafka_props;
pub mod logging;
pub mod metrics;
pub mod registry;
