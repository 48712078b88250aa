//! The agent's MQTT uplink over TLS (`mqtts://`) end to end: the real
//! `rae-agent` binary, a real mosquitto with a TLS listener
//! ([`Mosquitto::start_tls`]), certificates made per test by
//! [`TlsCerts`] (a CA, a server certificate for `127.0.0.1`/`localhost`, a
//! client certificate with `CN` = the agent's `rae_id`, an unrelated CA),
//! and the fake adb server making events, as in `uplink.rs`.
//!
//! The setup is `rae_tests::mqtt_sub::lab::Lab` with its plain broker
//! swapped for a TLS one (see [`tls_lab`]). The subscriber connects over
//! TLS with a client certificate of its own. Every wait is bounded. The
//! agent binary must be built (`cargo build -p rae-agent`).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rae_tests::agent::wait_until;
use rae_tests::mosquitto::Mosquitto;
use rae_tests::mqtt_sub::lab::{Lab, RAE, WAIT};
use rae_tests::mqtt_sub::{assert_delivered, device_envelopes, statuses, Subscriber};
use rae_tests::tls_certs::TlsCerts;
use serde_json::Value;

/// What the agent's `[mqtt]` section gets besides the `mqtts://` broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentTls {
    /// `ca_file` = the broker's CA, plus the client certificate and key.
    Mutual,
    /// `ca_file` = the unrelated CA, plus the client certificate and key.
    WrongCa,
    /// `ca_file` = the broker's CA only.
    CaOnly,
}

/// A [`Lab`] in `dir` whose broker is a TLS mosquitto (requiring client
/// certificates if `require_client_cert`) and whose agent is configured as
/// `agent` says. `Lab::new` starts a plain broker; it is replaced (and so
/// killed) here, and the agent config's `broker` line is rewritten to the
/// TLS broker's `mqtts://` URL before the agent ever starts.
fn tls_lab(dir: &Path, require_client_cert: bool, agent: AgentTls) -> Result<(Lab, TlsCerts)> {
    let certs = TlsCerts::generate(&dir.join("certs"), RAE)?;
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    let ca = match agent {
        AgentTls::WrongCa => &certs.other_ca,
        AgentTls::Mutual | AgentTls::CaOnly => &certs.ca,
    };
    let mut extra = format!("ca_file = {}\n", quoted(ca));
    if agent != AgentTls::CaOnly {
        extra += &format!(
            "client_cert_file = {}\nclient_key_file = {}\n",
            quoted(&certs.client.cert),
            quoted(&certs.client.key)
        );
    }
    let mut lab = Lab::new(dir, &extra, None)?;
    let plain = format!("broker = {:?}\n", lab.broker.url());
    lab.broker = Mosquitto::start_tls(&dir.join("tls-broker"), &certs, require_client_cert)?;
    let tls = format!("broker = {:?}\n", lab.broker.url());
    let toml = std::fs::read_to_string(&lab.config)?;
    ensure!(
        toml.matches(&plain).count() == 1,
        "no single {plain:?} in the agent config:\n{toml}"
    );
    std::fs::write(&lab.config, toml.replace(&plain, &tls))?;
    Ok((lab, certs))
}

/// Runs `scenario` in a [`tls_lab`] in a fresh temp dir.
fn in_tls_lab(
    require_client_cert: bool,
    agent: AgentTls,
    scenario: impl FnOnce(&mut Lab, &TlsCerts) -> Result<()>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (lab, certs) = tls_lab(dir.path(), require_client_cert, agent)?;
    lab.run(|lab| scenario(lab, &certs))
}

/// A recording subscriber over TLS with a client certificate of its own
/// (`CN` = `client_id`), signed by the broker's CA.
fn tls_subscriber(lab: &Lab, certs: &TlsCerts, client_id: &str) -> Result<Subscriber> {
    let own = certs.issue_client(client_id, client_id)?;
    let transport = rumqttc::Transport::tls(certs.ca_pem()?, Some(own.read()?), None);
    Subscriber::connect_tls(lab.broker.port(), client_id, transport)
        .with_context(|| format!("TLS subscriber; broker log:\n{}", lab.broker.log_tail()))
}

/// `runtime.uplink.last_error`, lower-cased (empty if absent).
fn last_error(up: &Value) -> String {
    up["last_error"].as_str().unwrap_or_default().to_lowercase()
}

/// The agent's `MQTT <broker>: <error>; reconnecting in ...` warnings so far.
fn failed_attempts(lab: &Lab) -> Vec<String> {
    let url = format!("MQTT {}: ", lab.broker.url());
    std::fs::read_to_string(&lab.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&url) && l.contains("; reconnecting in "))
        .map(str::to_string)
        .collect()
}

/// Waits until the started agent has journaled events and `status
/// --json` answers (it fails while there is no journal yet).
fn wait_started(lab: &Lab) -> Result<()> {
    wait_until("journaled events and a status", WAIT, || {
        let journaled = lab.events().is_ok_and(|rows| !rows.is_empty());
        Ok((journaled && lab.uplink_status().is_ok()).then_some(()))
    })
}

/// For a refused agent: after `status --json` shows `connected: false`
/// and a `last_error` accepted by `clear`, waits for at least two more
/// failed attempts (it keeps retrying), then checks it still runs, is still
/// not connected, published nothing (journal and status), the broker never
/// logged it in and the subscriber got nothing from it.
fn assert_refused(
    lab: &mut Lab,
    sub: &Subscriber,
    what: &str,
    clear: impl Fn(&str) -> bool,
) -> Result<String> {
    wait_started(lab)?;
    let up = lab.wait_uplink(what, |u| u["connected"] == false && clear(&last_error(u)))?;
    let error = up["last_error"].as_str().unwrap_or_default().to_string();
    let seen = failed_attempts(lab).len();
    ensure!(seen >= 1, "no failed attempt logged for {error:?}");
    wait_until("two more connection attempts", WAIT, || {
        Ok((failed_attempts(lab).len() >= seen + 2).then_some(()))
    })?;
    lab.agent()?.ensure_running()?;
    let rows = lab.events()?;
    ensure!(
        rows.iter().all(|r| !r.published),
        "events marked published without a connection: {rows:#?}"
    );
    let up = lab.uplink_status()?;
    ensure!(
        up["connected"] == false && up["published"] == 0 && clear(&last_error(&up)),
        "runtime.uplink changed: {up}"
    );
    let log = lab.broker.log_text();
    ensure!(
        !log.contains(&format!("as {RAE} ")),
        "the broker let the agent in:\n{log}"
    );
    let got = sub.messages();
    ensure!(
        statuses(&got, RAE).is_empty() && device_envelopes(&got)?.is_empty(),
        "the subscriber got messages from the agent: {got:#?}"
    );
    lab.agent()?.ensure_running()?;
    let attempts = failed_attempts(lab);
    eprintln!(
        "{} events journaled, none published; {} failed attempts, the last: {:?}",
        rows.len(),
        attempts.len(),
        attempts.last()
    );
    Ok(error)
}

#[test]
fn mutual_tls_connects_and_publishes_events() -> Result<()> {
    in_tls_lab(true, AgentTls::Mutual, |lab, certs| {
        let sub = tls_subscriber(lab, certs, "uplink-tls-sub")?;
        lab.start_agent()?;
        sub.wait_status(RAE, 0, "online", WAIT)?;
        let toggler = lab.toggle();
        std::thread::sleep(Duration::from_millis(1000));
        ensure!(toggler.stop(lab)? >= 24, "too few steps");
        let (rows, messages) = lab.converge(&sub)?;
        ensure!(rows.len() > 24, "too few events: {}", rows.len());
        assert_delivered(&rows, device_envelopes(&messages)?)?;
        let up = lab.wait_uplink("connected with events published", |u| {
            u["connected"] == true && u["published"].as_u64() >= Some(rows.len() as u64)
        })?;
        ensure!(up["last_error"].is_null(), "{up}");
        ensure!(up["broker"] == lab.broker.url().as_str(), "{up}");
        // The broker took the client certificate's CN as the user name.
        let log = lab.broker.log_text();
        ensure!(
            log.contains(&format!("as {RAE} ")) && log.contains(&format!("u'{RAE}'")),
            "the agent did not log in with its certificate:\n{log}"
        );
        lab.agent()?.ensure_running()?;
        eprintln!(
            "{} events over mutual TLS, {} messages received; runtime.uplink {up}",
            rows.len(),
            messages.len()
        );
        Ok(())
    })
}

#[test]
fn a_wrong_ca_is_refused_with_a_clear_error() -> Result<()> {
    in_tls_lab(true, AgentTls::WrongCa, |lab, certs| {
        let sub = tls_subscriber(lab, certs, "uplink-tls-wrong-ca")?;
        lab.start_agent()?;
        let error = assert_refused(lab, &sub, "a certificate error", |e| {
            e.contains("certificate")
                && (e.contains("unknownissuer") || e.contains("unknown issuer"))
        })?;
        // The agent itself aborted the handshake, with an unknown-CA alert.
        let log = lab.broker.log_text();
        ensure!(
            log.contains("alert unknown ca"),
            "the broker logged no unknown-CA alert from the agent:\n{log}"
        );
        eprintln!("wrong CA: {error}");
        Ok(())
    })
}

#[test]
fn a_missing_client_certificate_is_refused_by_the_broker() -> Result<()> {
    in_tls_lab(true, AgentTls::CaOnly, |lab, certs| {
        let sub = tls_subscriber(lab, certs, "uplink-tls-no-cert")?;
        lab.start_agent()?;
        let error = assert_refused(lab, &sub, "a missing certificate error", |e| {
            e.contains("certificaterequired") || e.contains("certificate required")
        })?;
        let log = lab.broker.log_text();
        ensure!(
            log.contains("peer did not return a certificate"),
            "the broker logged no missing client certificate:\n{log}"
        );
        eprintln!("no client certificate: {error}");
        Ok(())
    })
}
