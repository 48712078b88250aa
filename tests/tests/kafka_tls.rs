//! Kafka over TLS, as far as it can be checked here: `rae-cloud-ingest`'s
//! librdkafka is built with OpenSSL (rdkafka feature `ssl`), so a
//! `[kafka.properties]` with `security.protocol = "SSL"` or `"SASL_SSL"`
//! and a CA file makes a working client (without it librdkafka refuses
//! the config: "not supported in this build: OpenSSL not available at
//! build time"). Tansu has no TLS listener, so no TLS session with a
//! Kafka broker is completed here: against Tansu's plain listener (which
//! reads the ClientHello as the start of a huge request and waits) the
//! bridge's librdkafka must connect as `ssl://`/`sasl_ssl://`, time out in
//! its TLS handshake, log it and retry, while the bridge keeps running. End-to-end Kafka TLS is not
//! tested (docs/CLOUD.md, "TLS"). The binary must be built (`cargo build
//! -p rae-cloud-ingest`).

mod bridge_support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bridge_support::{Bridge, Lab};
use rae_tests::tls_certs::TlsCerts;

/// Starts a bridge whose `[kafka.properties]` are `props` plus
/// `ssl.ca.location` = a test CA (and a 1 s connection setup timeout),
/// against a plain Tansu; checks that librdkafka accepted the config and
/// connected with `scheme` (`ssl`, `sasl_ssl`), stuck in the TLS
/// handshake (logged, retried, the bridge still running).
fn bridge_speaks_tls_to_kafka(name: &str, scheme: &str, props: &str) -> Result<()> {
    let lab = Lab::start()?;
    let certs = TlsCerts::generate(&lab.dir.path().join("certs"), "unused")?;
    let props = format!(
        "{props}\"ssl.ca.location\" = {:?}\n\"socket.connection.setup.timeout.ms\" = \"1000\"\n",
        certs.ca.display().to_string()
    );
    let config = lab.config(name, 100, &props)?;
    let mut bridge = Bridge::start(&config)?;
    // librdkafka: "ssl://127.0.0.1:P/bootstrap: Connection setup timed out
    // in state SSL_HANDSHAKE (after 1001ms in state SSL_HANDSHAKE)", per
    // attempt (the time differs, so the bridge's log does not fold them).
    // The producer and the command consumer each try at once: a third
    // line is a retry.
    let needle = format!(
        "{scheme}://{}/bootstrap: Connection setup timed out in state SSL_HANDSHAKE",
        lab.tansu.bootstrap()
    );
    bridge_support::wait(
        "three TLS handshakes with Tansu that timed out",
        Duration::from_secs(30),
        || Ok(bridge.log_text().matches(&needle).count() >= 3),
    )
    .with_context(|| bridge.log_tail())?;
    ensure!(
        bridge.try_exit()?.is_none(),
        "the bridge exited:\n{}",
        bridge.log_tail()
    );
    let log = bridge.log_text();
    ensure!(!log.contains("not supported in this build"), "{log}");
    Ok(())
}

#[test]
fn a_kafka_ssl_config_makes_the_bridge_start_tls_with_the_broker() -> Result<()> {
    bridge_speaks_tls_to_kafka(
        "bridge-kafka-ssl",
        "ssl",
        "\"security.protocol\" = \"SSL\"\n",
    )
}

#[test]
fn a_kafka_sasl_ssl_scram_config_makes_the_bridge_start_tls_with_the_broker() -> Result<()> {
    bridge_speaks_tls_to_kafka(
        "bridge-kafka-sasl-ssl",
        "sasl_ssl",
        "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\
         \"sasl.username\" = \"rae\"\n\"sasl.password\" = \"secret\"\n",
    )
}
