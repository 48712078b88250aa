//! Shared by the registry tests: a [`Cloud`] (real PostgreSQL + real Tansu,
//! topics created, schema migrated, a config file), the `registry` binary
//! as a child process ([`Registry`]), envelope builders and a fast producer.
#![allow(dead_code, clippy::unwrap_used)]

use anyhow::{ensure, Context, Result};
use rae_protocol::{AttrValue, Attrs, Envelope, EventKind, SCHEMA_VERSION};
use rae_tests::postgres::Postgres;
use rae_tests::tansu::Tansu;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const EVENTS: &str = "rae.device-events";
pub const STATUS: &str = "rae.box-status";
pub const COMMANDS: &str = "rae.device-commands";
pub const DLQ: &str = "rae.device-events.dlq";
pub const BUILD_HINT: &str = "cargo build -p rae-cloud-ingest";

/// `target/<profile>/rae-cloud-ingest`, checked to be newer than its sources.
pub fn binary(hint: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary not in target/<profile>/deps")?;
    let binary = dir.join("rae-cloud-ingest");
    rae_tests::agent::check_binary_with_hint(&binary, hint)?;
    Ok(binary)
}

/// PostgreSQL + Tansu + a migrated schema + a registry config.
pub struct Cloud {
    pub dir: tempfile::TempDir,
    pub pg: Postgres,
    pub kafka: Tansu,
    pub config: PathBuf,
    pub metrics_port: u16,
}

impl Cloud {
    /// `partitions` for the events topic (0: no topic is created; the test
    /// calls [`create_topics`]); `extra` is appended to `[registry]`
    /// (`batch_max_wait_ms` is 100 unless `extra` sets it).
    pub fn start(partitions: i32, registry_extra: &str) -> Result<Cloud> {
        Cloud::start_with(partitions, registry_extra, None)
    }

    /// [`Cloud::start`] with a log level for the registry (default debug).
    pub fn start_with(
        partitions: i32,
        registry_extra: &str,
        log_level: Option<&str>,
    ) -> Result<Cloud> {
        let log_level = log_level.unwrap_or("info");
        let dir = tempfile::tempdir()?;
        let pg = Postgres::start(&dir.path().join("pg"))?;
        let kafka = Tansu::start(&dir.path().join("tansu"))?;
        if partitions > 0 {
            create_topics(&kafka, partitions)?;
        }
        let metrics_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let config = dir.path().join("cloud-ingest.toml");
        // 100 ms batches unless the test sets its own.
        let wait = if registry_extra.contains("batch_max_wait_ms") {
            ""
        } else {
            "batch_max_wait_ms = 100\n"
        };
        std::fs::write(
            &config,
            format!(
                "log_level = \"{log_level}\"\n[kafka]\nbrokers = \"{}\"\n[database]\nurl = \"{}\"\nretry_max_backoff_secs = 1\n\
                 [registry]\n{wait}{registry_extra}\n\
                 [metrics]\nbridge_listen = \"\"\nregistry_listen = \"127.0.0.1:{metrics_port}\"\n",
                kafka.bootstrap(),
                pg.url()
            ),
        )?;
        let out = Command::new(binary(BUILD_HINT)?)
            .arg("--config")
            .arg(&config)
            .arg("migrate")
            .output()?;
        ensure!(
            out.status.success(),
            "migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Cloud {
            dir,
            pg,
            kafka,
            config,
            metrics_port,
        })
    }

    pub fn registry(&self) -> Result<Registry> {
        Registry::start(&self.config, &self.dir.path().join("registry.log"))
    }

    /// A producer for many records (acks=all), ONE RECORD PER BATCH:
    /// Tansu 0.6.0 answers a fetch from an offset inside a record batch with
    /// nothing (checked: 100 records in one batch, fetch from 50 → 0
    /// records; real Kafka returns the containing batch). A consumer that
    /// resumes mid-batch (pause/resume, restart from a committed offset)
    /// would then silently skip the rest of that batch. One-record batches
    /// keep every offset a batch boundary.
    pub fn producer(&self) -> Result<ThreadedProducer<DefaultProducerContext>> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.kafka.bootstrap())
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .set("log_level", "3");
        Ok(c.create()?)
    }

    /// Produces envelopes (key = their topic) and waits for delivery.
    pub fn send(&self, envs: &[Envelope]) -> Result<()> {
        let p = self.producer()?;
        for e in envs {
            let key = e.topic()?;
            let value = e.encode()?;
            send_retrying(&p, EVENTS, key.as_bytes(), &value)?;
        }
        p.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// Produces one raw record of any size up to 2 MB on `topic` (a
    /// producer other than the bridge, with a larger `message.max.bytes`).
    pub fn send_large_raw(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.kafka.bootstrap())
            .set("acks", "all")
            .set("message.max.bytes", "2000000")
            .set("log_level", "3");
        let p: ThreadedProducer<DefaultProducerContext> = c.create()?;
        send_retrying(&p, topic, key, value)?;
        p.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// Produces one raw record on `topic`.
    pub fn send_raw(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<()> {
        let p = self.producer()?;
        send_retrying(&p, topic, key, value)?;
        p.flush(Duration::from_secs(30))?;
        Ok(())
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.pg
            .scalar(sql)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1)
    }

    /// Sum of `rae_registry_consumer_lag` over partitions (None before any).
    pub fn lag_total(&self) -> Option<i64> {
        let lags = lags_at(self.metrics_port)?;
        (!lags.is_empty()).then(|| lags.values().sum())
    }

    fn metrics_text(&self) -> Option<String> {
        metrics_text(self.metrics_port)
    }

    /// GET /metrics of the registry and the value of `name` (unlabelled).
    pub fn metric(&self, name: &str) -> Option<i64> {
        metric_at(self.metrics_port, name)
    }

    /// The values of `names` (unlabelled) from one GET /metrics; `None`
    /// when the registry does not answer.
    pub fn metric_values(&self, names: &[&str]) -> Option<Vec<Option<i64>>> {
        let body = self.metrics_text()?;
        Some(names.iter().map(|n| metric_in(&body, n)).collect())
    }

    /// A copy of the registry config that serves `/metrics` on another
    /// free port, for a second registry in the same consumer group.
    pub fn second_config(&self, name: &str) -> Result<(PathBuf, u16)> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let text = std::fs::read_to_string(&self.config)?.replace(
            &format!("registry_listen = \"127.0.0.1:{}\"", self.metrics_port),
            &format!("registry_listen = \"127.0.0.1:{port}\""),
        );
        ensure!(
            text.contains(&port.to_string()),
            "no registry_listen in the config"
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok((path, port))
    }
}

fn metrics_text(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// GET /metrics on `port` and the value of `name` (unlabelled).
pub fn metric_at(port: u16, name: &str) -> Option<i64> {
    metric_in(&metrics_text(port)?, name)
}

/// GET /metrics on `port`: `rae_registry_consumer_lag` by its partition
/// label (`topic/N`).
pub fn lags_at(port: u16) -> Option<std::collections::BTreeMap<String, i64>> {
    let body = metrics_text(port)?;
    Some(
        body.lines()
            .filter_map(|l| l.strip_prefix("rae_registry_consumer_lag{partition=\""))
            .filter_map(|l| {
                let (label, value) = l.split_once("\"} ")?;
                Some((label.to_string(), value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// The value of `name` (unlabelled) in a `/metrics` body.
fn metric_in(body: &str, name: &str) -> Option<i64> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The registry's four topics (events with `partitions` partitions), e.g.
/// again on a Tansu restarted empty.
pub fn create_topics(kafka: &Tansu, partitions: i32) -> Result<()> {
    kafka.create_topic(EVENTS, partitions)?;
    kafka.create_topic(STATUS, 1)?;
    kafka.create_topic(COMMANDS, 1)?;
    kafka.create_topic(DLQ, 1)?;
    Ok(())
}

/// `device_sessions.last_seq` of `s` (-1 if it has no row).
pub fn last_seq(cloud: &Cloud, s: &Session) -> i64 {
    cloud.count(&format!(
        "SELECT last_seq FROM device_sessions WHERE session_id = '{}'",
        s.id
    ))
}

/// Checks that the database holds session `session_id` complete up to
/// `last`: `device_sessions.last_seq = last`, not stale, and its history
/// (`device_events`) is exactly the seqs `1..=last` (the primary key
/// makes duplicates impossible, so count, min and max pin it down: no
/// hole, nothing beyond). Needs `last` <= the history bound.
pub fn check_complete(pg: &Postgres, session_id: &Uuid, last: u64) -> Result<()> {
    let session = pg.query(&format!(
        "SELECT last_seq::text, stale::text FROM device_sessions WHERE session_id = '{session_id}'"
    ))?;
    let history = pg.query(&format!(
        "SELECT count(*)::text, min(seq)::text, max(seq)::text FROM device_events \
         WHERE session_id = '{session_id}'"
    ))?;
    let want_session = vec![vec![Some(last.to_string()), Some("false".to_string())]];
    let want_history = vec![vec![
        Some(last.to_string()),
        Some("1".to_string()),
        Some(last.to_string()),
    ]];
    ensure!(
        session == want_session && history == want_history,
        "session {session_id}: (last_seq, stale) {session:?}, history (count, min, max) \
         {history:?}; want {want_session:?} and {want_history:?}"
    );
    Ok(())
}

/// Checks that every history row of `session_id` stores the envelope of
/// its own session and seq (the registry writes each row's bytes from
/// the record it planned it from).
pub fn check_history_envelopes(pg: &Postgres, session_id: &Uuid) -> Result<()> {
    let rows = pg.query(&format!(
        "SELECT seq::text, encode(envelope, 'hex') FROM device_events \
         WHERE session_id = '{session_id}'"
    ))?;
    for row in rows {
        let (Some(seq), Some(hex)) = (&row[0], &row[1]) else {
            anyhow::bail!("session {session_id}: a history row without seq or envelope");
        };
        let env = Envelope::decode(&from_hex(hex)?)
            .with_context(|| format!("session {session_id}: history row {seq}"))?;
        ensure!(
            env.session_id == *session_id && env.seq.to_string() == *seq,
            "session {session_id}: history row {seq} stores the envelope of session {} seq {}",
            env.session_id,
            env.seq
        );
    }
    Ok(())
}

fn from_hex(hex: &str) -> Result<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .with_context(|| format!("not hex at {i}: {hex}"))
        })
        .collect()
}

pub fn send_retrying(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                p.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// The `registry` subcommand as a child process.
pub struct Registry {
    child: Child,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Registry {
    pub fn start(config: &Path, log: &Path) -> Result<Registry> {
        Registry::start_binary(config, log, binary(BUILD_HINT)?)
    }

    pub fn start_binary(config: &Path, log: &Path, binary: PathBuf) -> Result<Registry> {
        Registry::spawn(config, log, binary, "registry")
    }

    /// Any subcommand of the binary (`bridge` in the end-to-end test).
    pub fn spawn(config: &Path, log: &Path, binary: PathBuf, subcommand: &str) -> Result<Registry> {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(config)
            .arg(subcommand)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()?;
        Ok(Registry {
            child,
            binary,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the registry stops where it is, its sockets stay open.
    pub fn freeze(&mut self) -> Result<()> {
        rae_tests::signal_child(&mut self.child, libc::SIGSTOP).context("freeze the registry")
    }

    /// SIGCONT after [`Registry::freeze`].
    pub fn thaw(&mut self) -> Result<()> {
        rae_tests::signal_child(&mut self.child, libc::SIGCONT).context("thaw the registry")
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        *self =
            Registry::start_binary(&self.config.clone(), &self.log.clone(), self.binary.clone())?;
        Ok(())
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "registry did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its exit status if it exited (it should not on its own).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        rae_tests::log_tail(&self.log, 60)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 100 ms until true or `within` passes.
pub fn wait(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check() {
        ensure!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Envelopes of one session, numbered from 1.
pub struct Session {
    pub rae_id: String,
    pub device_id: String,
    pub id: Uuid,
    pub next: u64,
}

impl Session {
    pub fn new(rae_id: &str, device_id: &str) -> Session {
        Session {
            rae_id: rae_id.into(),
            device_id: device_id.into(),
            id: Uuid::now_v7(),
            next: 1,
        }
    }

    pub fn at(&self, seq: u64, kind: EventKind) -> Envelope {
        Envelope {
            schema: SCHEMA_VERSION,
            rae_id: self.rae_id.clone(),
            device_id: self.device_id.clone(),
            session_id: self.id,
            seq,
            ts_ms: 1_700_000_000_000 + seq,
            kind,
        }
    }

    fn take(&mut self, kind: EventKind) -> Envelope {
        let e = self.at(self.next, kind);
        self.next += 1;
        e
    }

    pub fn attached(&mut self, pairs: &[(&str, i64)]) -> Envelope {
        self.take(EventKind::Attached {
            attrs: attrs(pairs),
        })
    }

    pub fn changed(&mut self, pairs: &[(&str, i64)]) -> Envelope {
        self.changed_removing(pairs, &[])
    }

    /// A change that sets `pairs` and removes `removed`.
    pub fn changed_removing(&mut self, pairs: &[(&str, i64)], removed: &[&str]) -> Envelope {
        self.take(EventKind::Changed {
            set: attrs(pairs),
            removed: removed.iter().map(|r| r.to_string()).collect(),
        })
    }

    pub fn detached(&mut self, reason: &str) -> Envelope {
        self.take(EventKind::Detached {
            reason: reason.into(),
        })
    }

    pub fn checkpoint(&mut self, pairs: &[(&str, i64)]) -> Envelope {
        self.take(EventKind::Checkpoint {
            attrs: attrs(pairs),
        })
    }

    /// Skips `n` seqs (as if lost).
    pub fn lose(&mut self, n: u64) {
        self.next += n;
    }
}

pub fn attrs(pairs: &[(&str, i64)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), AttrValue::Int(*v)))
        .collect()
}

/// A box status payload as the agent builds it (docs/PROTOCOL.md §1.2).
pub fn status_payload(state: &str, ts: u64) -> Vec<u8> {
    let text = |s: &str| ciborium::Value::Text(s.into());
    let v = ciborium::Value::Map(vec![
        (text("state"), text(state)),
        (text("agent_version"), text("9.9")),
        (text("boot_count"), ciborium::Value::Integer(4.into())),
        (text("ts_ms"), ciborium::Value::Integer(ts.into())),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&v, &mut out).expect("CBOR into a Vec");
    out
}
