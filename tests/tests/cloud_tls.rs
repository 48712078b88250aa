//! `rae-cloud-ingest` over TLS against real peers, with certificates made
//! per test by [`TlsCerts`] (a CA, a server certificate for
//! `127.0.0.1`/`localhost`, client certificates, an unrelated CA):
//!
//! * the bridge against a TLS-only mosquitto requiring client certificates
//!   ([`Mosquitto::start_tls`]): mutual TLS delivers to Tansu; a wrong CA
//!   and a missing client certificate are refused with a precise, retried
//!   error and no crash;
//! * `migrate`, `devices` and `registry` against a TLS-only PostgreSQL
//!   ([`Postgres::start_tls`], `cert` authentication: the client
//!   certificate's CN is the user), configured the libpq way in
//!   `database.url`; a wrong CA, a wrong host name and a missing client
//!   certificate fail with precise errors; `require`/`verify-ca` check less
//!   than `verify-full`, as in libpq;
//! * `check-config` exits 64 naming the key and file of a missing TLS file.
//!
//! Kafka over TLS is not tested end to end: Tansu has no TLS listener (see
//! docs/CLOUD.md, "TLS"); `kafka_tls.rs` checks what can be checked. The
//! binary must be built (`cargo build -p rae-cloud-ingest`).

mod bridge_support;
mod registry_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bridge_support::{Bridge, Lab};
use rae_tests::mosquitto::Mosquitto;
use rae_tests::mqtt_sub::Subscriber;
use rae_tests::postgres::Postgres;
use rae_tests::tansu::Tansu;
use rae_tests::tls_certs::{CertFiles, TlsCerts};

const READ: Duration = Duration::from_secs(30);
/// The CN of the bridge's client certificate.
const BRIDGE_CN: &str = "rae-bridge";

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A bridge [`Lab`] whose mosquitto is TLS-only (requiring client
/// certificates if `require_client_cert`), and its certificates (the
/// default client certificate has CN [`BRIDGE_CN`]).
fn tls_bridge_lab(require_client_cert: bool) -> Result<(Lab, TlsCerts)> {
    let dir = tempfile::tempdir()?;
    let certs = TlsCerts::generate(&dir.path().join("certs"), BRIDGE_CN)?;
    let mosquitto =
        Mosquitto::start_tls(&dir.path().join("mosquitto"), &certs, require_client_cert)?;
    Ok((Lab::around(dir, mosquitto)?, certs))
}

/// A bridge config for `name` on the lab's `mqtts://` broker with the
/// given CA and client certificate in `[mqtt]`.
fn tls_bridge_config(
    lab: &Lab,
    name: &str,
    ca: &Path,
    client: Option<&CertFiles>,
) -> Result<bridge_support::Config> {
    let config = lab.config(name, 100, "")?;
    let mut extra = format!("ca_file = {}\n", quoted(ca));
    if let Some(c) = client {
        extra += &format!(
            "client_cert_file = {}\nclient_key_file = {}\n",
            quoted(&c.cert),
            quoted(&c.key)
        );
    }
    let text = std::fs::read_to_string(&config.path)?;
    ensure!(
        text.matches("[mqtt]\n").count() == 1 && text.contains("broker = \"mqtts://"),
        "unexpected bridge config:\n{text}"
    );
    std::fs::write(
        &config.path,
        text.replacen("[mqtt]\n", &format!("[mqtt]\n{extra}"), 1),
    )?;
    Ok(config)
}

#[test]
fn the_bridge_over_mutual_tls_delivers_device_messages_to_kafka() -> Result<()> {
    let (lab, certs) = tls_bridge_lab(true)?;
    let config = tls_bridge_config(&lab, "bridge-tls", &certs.ca, Some(&certs.client))?;
    let bridge = Bridge::start(&config)?;
    lab.wait_subscribed("bridge-tls", 1)
        .with_context(|| bridge.log_tail())?;
    // mosquitto names a certificate-authenticated client by its CN.
    let log = lab.mosquitto.log_text();
    ensure!(
        log.contains("as bridge-tls ") && log.contains(&format!("u'{BRIDGE_CN}'")),
        "the bridge did not connect with its certificate:\n{}",
        lab.mosquitto.log_tail()
    );
    let (cert, key) = certs.issue_client("publisher", "publisher")?.read()?;
    let publisher = Subscriber::connect_tls(
        lab.mosquitto.port(),
        "publisher",
        rumqttc::Transport::tls(certs.ca_pem()?, Some((cert, key)), None),
    )?;
    let sent = bridge_support::device_messages("box-tls", 2, 20);
    for m in &sent {
        publisher.publish(&m.topic, &m.payload, false)?;
    }
    bridge_support::read_sent(&lab, &sent, &bridge, READ)?;
    Ok(())
}

/// Waits until the bridge logged `needle` `n` times, then checks it is
/// still running and never got through to mosquitto.
fn refused_and_retrying(lab: &Lab, bridge: &mut Bridge, needle: &str, n: usize) -> Result<String> {
    bridge_support::wait(
        &format!("{n} log lines with {needle:?}"),
        Duration::from_secs(30),
        || Ok(bridge.log_text().matches(needle).count() >= n),
    )
    .with_context(|| bridge.log_tail())?;
    ensure!(
        bridge.try_exit()?.is_none(),
        "the bridge exited:\n{}",
        bridge.log_tail()
    );
    let id = &bridge.config.client_id;
    ensure!(
        !lab.mosquitto.log_text().contains(&format!("as {id} ")),
        "{id} got connected:\n{}",
        lab.mosquitto.log_tail()
    );
    Ok(bridge.log_text())
}

#[test]
fn a_bridge_trusting_the_wrong_ca_is_refused_with_the_reason_and_keeps_retrying() -> Result<()> {
    let (lab, certs) = tls_bridge_lab(true)?;
    let config = tls_bridge_config(
        &lab,
        "bridge-wrong-ca",
        &certs.other_ca,
        Some(&certs.client),
    )?;
    let mut bridge = Bridge::start(&config)?;
    // The uplink's reader logs each attempt; three means it retried twice.
    let log = refused_and_retrying(
        &lab,
        &mut bridge,
        "the server's certificate is not signed by the configured CA",
        3,
    )?;
    ensure!(log.contains("UnknownIssuer"), "{log}");
    Ok(())
}

#[test]
fn a_bridge_without_a_client_certificate_is_told_the_broker_requires_one() -> Result<()> {
    let (lab, certs) = tls_bridge_lab(true)?;
    let config = tls_bridge_config(&lab, "bridge-no-cert", &certs.ca, None)?;
    let mut bridge = Bridge::start(&config)?;
    refused_and_retrying(
        &lab,
        &mut bridge,
        "the server requires a client certificate: set mqtt.client_cert_file and \
         mqtt.client_key_file",
        2,
    )?;
    Ok(())
}

/// `rae-cloud-ingest --config <config> <args>`.
fn run(config: &Path, args: &[&str]) -> Result<Output> {
    let binary = bridge_support::binary(bridge_support::BUILD_HINT)?;
    Ok(Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?)
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TLS-only PostgreSQL and the files to reach it.
struct TlsDb {
    dir: tempfile::TempDir,
    certs: TlsCerts,
    /// CN `postgres`: the user, for `cert` authentication.
    client: CertFiles,
    pg: Postgres,
}

impl TlsDb {
    fn start() -> Result<TlsDb> {
        let dir = tempfile::tempdir()?;
        let certs = TlsCerts::generate(&dir.path().join("certs"), "unused")?;
        let client = certs.issue_client("pg-client", "postgres")?;
        let pg = Postgres::start_tls(&dir.path().join("pg"), &certs, true)?;
        Ok(TlsDb {
            dir,
            certs,
            client,
            pg,
        })
    }

    /// `pg.url()` plus `sslmode`, `sslrootcert` (if `ca`) and the client
    /// certificate (if `with_client_cert`).
    fn url(&self, mode: &str, ca: Option<&Path>, with_client_cert: bool) -> String {
        let mut url = format!("{}?sslmode={mode}", self.pg.url());
        if let Some(ca) = ca {
            url += &format!("&sslrootcert={}", ca.display());
        }
        if with_client_cert {
            url += &format!(
                "&sslcert={}&sslkey={}",
                self.client.cert.display(),
                self.client.key.display()
            );
        }
        url
    }

    /// Writes `<name>.toml` with `url` as `database.url` and `kafka`
    /// brokers.
    fn config(&self, name: &str, url: &str, kafka: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "log_level = \"info\"\n[kafka]\nbrokers = {kafka:?}\n\
                 [database]\nurl = {url:?}\nretry_max_backoff_secs = 1\n\
                 [registry]\nbatch_max_wait_ms = 100\n\
                 [metrics]\nbridge_listen = \"\"\nregistry_listen = \"\"\n"
            ),
        )?;
        Ok(path)
    }

    /// `migrate` with `url`.
    fn migrate(&self, name: &str, url: &str) -> Result<Output> {
        run(&self.config(name, url, "127.0.0.1:9")?, &["migrate"])
    }
}

#[test]
fn migrate_and_devices_work_over_verify_full_with_a_client_certificate() -> Result<()> {
    let db = TlsDb::start()?;
    // The server takes no plain TCP: what works below went over TLS.
    let out = db.migrate("plain", &db.pg.url())?;
    ensure!(
        out.status.code() == Some(1) && text(&out).contains("no encryption"),
        "{}",
        text(&out)
    );
    let url = db.url("verify-full", Some(&db.certs.ca), true);
    let config = db.config("tls", &url, "127.0.0.1:9")?;
    let out = run(&config, &["migrate"])?;
    ensure!(
        out.status.success() && text(&out).contains("applied migration"),
        "{}\npostgres log:\n{}",
        text(&out),
        db.pg.log_tail()
    );
    ensure!(db.pg.scalar("SELECT count(*) FROM devices")? == "0");
    let out = run(&config, &["migrate"])?;
    ensure!(
        out.status.success() && text(&out).contains("up to date"),
        "{}",
        text(&out)
    );
    let out = run(&config, &["devices", "--json"])?;
    ensure!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context(text(&out))?;
    ensure!(json == serde_json::json!([]), "{json}");
    Ok(())
}

/// Runs `migrate` with `url` and checks it failed with exit 1 and every
/// one of `needles` in stderr.
fn migrate_fails(db: &TlsDb, name: &str, url: &str, needles: &[&str]) -> Result<()> {
    let out = db.migrate(name, url)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Each cause once: "…TLS handshake: invalid peer certificate: …".
    ensure!(
        out.status.code() == Some(1)
            && needles.iter().all(|n| stderr.contains(n))
            && !stderr.contains("handshake: error performing TLS handshake")
            && !stderr.contains("db error: db error"),
        "{name}: want exit 1 and {needles:?}; got {}",
        text(&out)
    );
    Ok(())
}

fn migrate_works(db: &TlsDb, name: &str, url: &str) -> Result<()> {
    let out = db.migrate(name, url)?;
    ensure!(out.status.success(), "{name}: {}", text(&out));
    Ok(())
}

#[test]
fn database_tls_failures_are_precise_and_weaker_modes_check_less() -> Result<()> {
    let db = TlsDb::start()?;
    let ca = Some(db.certs.ca.as_path());
    let other = Some(db.certs.other_ca.as_path());
    migrate_fails(
        &db,
        "wrong-ca",
        &db.url("verify-full", other, true),
        &[
            "cannot connect to the database",
            "invalid peer certificate",
            "UnknownIssuer",
        ],
    )?;
    // libpq semantics: `require` with a root certificate checks the chain.
    migrate_fails(
        &db,
        "require-wrong-ca",
        &db.url("require", other, true),
        &["UnknownIssuer"],
    )?;
    migrate_fails(
        &db,
        "no-client-cert",
        &db.url("verify-full", ca, false),
        &["certificate"],
    )?;
    // A host name the server certificate does not carry (it has
    // 127.0.0.1 and localhost), reached at 127.0.0.1.
    let renamed = |mode: &str| {
        format!(
            "host=db.example.invalid hostaddr=127.0.0.1 port={} user=postgres dbname=postgres \
             sslmode={mode} sslrootcert={} sslcert={} sslkey={}",
            db.pg.port(),
            db.certs.ca.display(),
            db.client.cert.display(),
            db.client.key.display()
        )
    };
    migrate_fails(
        &db,
        "wrong-name",
        &renamed("verify-full"),
        &["db.example.invalid"],
    )?;
    migrate_works(&db, "verify-ca-wrong-name", &renamed("verify-ca"))?;
    // `require` without a root certificate encrypts without checking.
    migrate_works(&db, "require-no-ca", &db.url("require", None, true))?;
    Ok(())
}

/// A registry [`registry_support::Cloud`] on a [`TlsDb`]: Tansu with the
/// four topics, the schema migrated over `verify-full` with the client
/// certificate, and a config whose `database.url` is `registry_url`
/// (given the database).
fn tls_cloud(registry_url: impl FnOnce(&TlsDb) -> String) -> Result<registry_support::Cloud> {
    let db = TlsDb::start()?;
    let kafka = Tansu::start(&db.dir.path().join("tansu"))?;
    for topic in [
        registry_support::EVENTS,
        registry_support::STATUS,
        registry_support::COMMANDS,
        registry_support::DLQ,
    ] {
        kafka.create_topic(topic, 1)?;
    }
    let out = db.migrate("migrate", &db.url("verify-full", Some(&db.certs.ca), true))?;
    ensure!(out.status.success(), "{}", text(&out));
    let config = db.config("registry", &registry_url(&db), &kafka.bootstrap())?;
    let TlsDb { dir, pg, .. } = db;
    Ok(registry_support::Cloud {
        dir,
        pg,
        kafka,
        config,
        metrics_port: 0,
    })
}

#[test]
fn the_registry_applies_events_over_tls() -> Result<()> {
    let cloud = tls_cloud(|db| db.url("verify-full", Some(&db.certs.ca), true))?;
    let registry = cloud.registry()?;
    let mut session = registry_support::Session::new("box-tls", "dev-tls");
    let events = [
        session.attached(&[("a", 1)]),
        session.changed(&[("b", 2)]),
        session.changed(&[("a", 3)]),
    ];
    cloud.send(&events)?;
    let sql = format!(
        "SELECT last_seq FROM device_sessions WHERE session_id = '{}'",
        session.id
    );
    registry_support::wait("the session at seq 3", READ, || cloud.count(&sql) == 3)
        .with_context(|| registry.log_tail())?;
    // The registry's connection, seen from the server: TLS, over TCP, and
    // authenticated by the client certificate.
    let tls_clients = cloud.pg.scalar(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND s.client_dn LIKE '%postgres%' AND a.client_addr IS NOT NULL",
    )?;
    ensure!(tls_clients != "0", "no TLS client connection");
    Ok(())
}

#[test]
fn a_registry_trusting_the_wrong_ca_logs_why_and_keeps_retrying() -> Result<()> {
    let cloud = tls_cloud(|db| db.url("verify-full", Some(&db.certs.other_ca), true))?;
    let registry = cloud.registry()?;
    let mut session = registry_support::Session::new("box-tls", "dev-tls");
    cloud.send(&[session.attached(&[("a", 1)])])?;
    // The batch is retried with backoff; attempts 1 and 10 log at warn.
    registry_support::wait("two logged attempts with the reason", READ, || {
        registry
            .log_text()
            .lines()
            .filter(|l| l.contains("not applied") && l.contains("UnknownIssuer"))
            .count()
            >= 2
    })
    .with_context(|| registry.log_tail())?;
    ensure!(cloud.count("SELECT count(*) FROM device_sessions") == 0);
    Ok(())
}

#[test]
fn check_config_names_the_key_and_file_of_a_missing_tls_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.pem");
    let m = missing.display();
    for (name, toml, needles) in [
        (
            "mqtt",
            format!("[mqtt]\nbroker = \"mqtts://127.0.0.1\"\nca_file = \"{m}\"\n"),
            vec!["`mqtt.ca_file/client_cert_file/client_key_file`", "cannot read"],
        ),
        (
            "database",
            format!(
                "[database]\nurl = \"postgresql://rae@db/rae?sslmode=verify-full&sslrootcert={m}\"\n"
            ),
            vec!["`database.url`", "cannot read"],
        ),
        (
            "kafka",
            format!("[kafka.properties]\n\"ssl.ca.location\" = \"{m}\"\n"),
            vec!["`kafka.properties.\"ssl.ca.location\"`", "cannot be read"],
        ),
    ] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, toml)?;
        let out = run(&config, &["check-config"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(64)
                && stderr.contains(&m.to_string())
                && needles.iter().all(|n| stderr.contains(n)),
            "{name}: {}",
            text(&out)
        );
    }
    Ok(())
}
