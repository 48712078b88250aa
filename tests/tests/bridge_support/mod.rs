//! Shared setup of the bridge tests and the bridge bench: a [`Lab`] with a
//! real mosquitto and a real Tansu (topics created), [`Bridge`] runs the
//! real `rae-cloud-ingest bridge` binary as a child process, [`publish_all`]
//! publishes a batch at QoS 1 (pipelined) and waits for every PUBACK.

#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rae_tests::mosquitto::Mosquitto;
use rae_tests::tansu::Tansu;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

pub const EVENTS: &str = "rae.device-events";
pub const STATUS: &str = "rae.box-status";
pub const COMMANDS: &str = "rae.device-commands";
/// What to run when the binary is missing or stale.
pub const BUILD_HINT: &str = "cargo build -p rae-cloud-ingest";

/// mosquitto + Tansu in one temp dir.
#[derive(Debug)]
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub mosquitto: Mosquitto,
    pub tansu: Tansu,
}

impl Lab {
    /// Both brokers, and the three topics (events with 3 partitions).
    pub fn start() -> Result<Lab> {
        let dir = tempfile::tempdir()?;
        let mosquitto = Mosquitto::start(&dir.path().join("mosquitto"))?;
        Lab::around(dir, mosquitto)
    }

    /// A lab in `dir` around a broker already started there (e.g. a TLS
    /// one): starts Tansu and creates the topics.
    pub fn around(dir: tempfile::TempDir, mosquitto: Mosquitto) -> Result<Lab> {
        let tansu = Tansu::start(&dir.path().join("tansu"))?;
        let lab = Lab {
            dir,
            mosquitto,
            tansu,
        };
        lab.create_topics()?;
        Ok(lab)
    }

    pub fn create_topics(&self) -> Result<()> {
        self.tansu.create_topic(EVENTS, 3)?;
        self.tansu.create_topic(STATUS, 1)?;
        self.tansu.create_topic(COMMANDS, 1)?;
        Ok(())
    }

    /// A bridge config for client id `name` (plus `extra` TOML appended at
    /// the end of `[kafka.properties]`).
    pub fn config(&self, name: &str, max_in_flight: u16, kafka_props: &str) -> Result<Config> {
        write_config(
            self.dir.path(),
            name,
            &self.mosquitto.url(),
            &self.tansu.bootstrap(),
            max_in_flight,
            kafka_props,
        )
    }

    /// Waits until mosquitto logged the SUBACK to `client_id` `n` times.
    pub fn wait_subscribed(&self, client_id: &str, n: usize) -> Result<()> {
        wait_subscribed(&self.mosquitto, client_id, n)
    }
}

/// Writes `{dir}/{name}.toml`: a bridge config for client id `name` on
/// the given brokers (plus `kafka_props` TOML appended at the end of
/// `[kafka.properties]`), with its metrics on a free port and its log
/// going to `{dir}/{name}.log`.
pub fn write_config(
    dir: &Path,
    name: &str,
    mqtt_url: &str,
    kafka_bootstrap: &str,
    max_in_flight: u16,
    kafka_props: &str,
) -> Result<Config> {
    let metrics_port = free_port()?;
    let toml = format!(
        "log_level = \"debug\"\n\n[mqtt]\nbroker = {mqtt_url:?}\nclient_id = {name:?}\n\
         max_in_flight = {max_in_flight}\nreconnect_max_backoff_secs = 1\n\n\
         [kafka]\nbrokers = {kafka_bootstrap:?}\n\n[kafka.properties]\n{kafka_props}\n\n\
         [metrics]\nbridge_listen = \"127.0.0.1:{metrics_port}\"\nregistry_listen = \"\"\n",
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml)?;
    Ok(Config {
        path,
        metrics_port,
        log: dir.join(format!("{name}.log")),
        client_id: name.to_string(),
    })
}

/// Waits until `mosquitto` logged the SUBACK to `client_id` `n` times.
pub fn wait_subscribed(mosquitto: &Mosquitto, client_id: &str, n: usize) -> Result<()> {
    let needle = format!("Sending SUBACK to {client_id}\n");
    wait("the bridge's SUBACKs", Duration::from_secs(20), || {
        Ok(mosquitto.log_text().matches(&needle).count() >= n)
    })
    .with_context(|| mosquitto.log_tail())
}

/// A written bridge config.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub metrics_port: u16,
    pub log: PathBuf,
    pub client_id: String,
}

/// `target/<profile>/rae-cloud-ingest`.
pub fn binary(hint: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?;
    let binary = profile_dir.join("rae-cloud-ingest");
    rae_tests::agent::check_binary_with_hint(&binary, hint)?;
    Ok(binary)
}

/// A running `rae-cloud-ingest bridge`; SIGKILLed on drop.
#[derive(Debug)]
pub struct Bridge {
    pub config: Config,
    child: Option<Child>,
    binary: PathBuf,
}

impl Bridge {
    pub fn start(config: &Config) -> Result<Bridge> {
        Self::start_binary(config, binary(BUILD_HINT)?)
    }

    pub fn start_binary(config: &Config, binary: PathBuf) -> Result<Bridge> {
        let mut bridge = Bridge {
            config: config.clone(),
            child: None,
            binary,
        };
        bridge.spawn()?;
        Ok(bridge)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.config.log)?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config.path)
            .arg("bridge")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("the bridge is not running")?;
        child.kill()?;
        child.wait()?;
        self.child = None;
        Ok(())
    }

    /// Starts it again with the same config (and client id).
    pub fn restart(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the bridge still runs");
        self.spawn()
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("the bridge is not running")?;
        let pid = libc::pid_t::try_from(child.id())?;
        // SAFETY: kill(2) on our own unreaped child.
        ensure!(
            unsafe { libc::kill(pid, libc::SIGTERM) } == 0,
            "kill failed"
        );
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("the bridge did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process stops producing (and acking) at once; what it
    /// already wrote to its sockets is still delivered. [`Bridge::thaw`]
    /// resumes it.
    pub fn freeze(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`Bridge::freeze`].
    pub fn thaw(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid().context("the bridge is not running")?)?;
        // SAFETY: kill(2) on our own unreaped child.
        ensure!(
            unsafe { libc::kill(pid, signal) } == 0,
            "kill({signal}) failed"
        );
        Ok(())
    }

    /// If it exited: reaps it, starts it again with the same config (as a
    /// supervisor's restart-on-failure would) and returns how it ended.
    pub fn restart_if_exited(&mut self) -> Result<Option<ExitStatus>> {
        let Some(status) = self.try_exit()? else {
            return Ok(None);
        };
        self.child = None;
        self.spawn()?;
        Ok(Some(status))
    }

    /// Its exit status, if it exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => Ok(None),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.config.log).unwrap_or_default()
    }

    /// One metric from `/metrics` (None while the endpoint is not up).
    pub fn metric(&self, name: &str) -> Option<i64> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.config.metrics_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
    }

    /// Waits until `name` >= `at_least`.
    pub fn wait_metric(&self, name: &str, at_least: i64, within: Duration) -> Result<i64> {
        let mut last = None;
        wait(&format!("{name} >= {at_least}"), within, || {
            last = self.metric(name);
            Ok(last.is_some_and(|v| v >= at_least))
        })
        .with_context(|| format!("{name} is {last:?}; bridge log:\n{}", self.log_tail()))?;
        Ok(last.unwrap_or_default())
    }

    pub fn log_tail(&self) -> String {
        rae_tests::log_tail(&self.config.log, 40)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `RAE_KEEP_LOGS=dir`: keep the bridge's log after the temp dir goes.
        if let Some(dir) = std::env::var_os("RAE_KEEP_LOGS") {
            let to = Path::new(&dir).join(format!("{}.log", self.config.client_id));
            let _ = std::fs::copy(&self.config.log, to);
        }
    }
}

/// Polls `check` every 50 ms until true or `within` passes.
pub fn wait(what: &str, within: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check()? {
        ensure!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// `n` messages over `topics` device topics of box `rae_id`, round-robin;
/// payload `"{topic}#{i}"` with `i` counting per topic from 0.
pub fn device_messages(rae_id: &str, topics: usize, n: usize) -> Vec<Msg> {
    let names: Vec<String> = (0..topics)
        .map(|t| format!("rae/v1/{rae_id}/devices/00000000-0000-7000-8000-{t:012}"))
        .collect();
    (0..n)
        .map(|i| {
            let topic = names[i % topics].clone();
            let payload = format!("{topic}#{}", i / topics).into_bytes();
            Msg {
                topic,
                payload,
                retain: false,
            }
        })
        .collect()
}

/// [`device_messages`] with each payload padded with `.` to `bytes`.
pub fn padded_messages(rae_id: &str, topics: usize, n: usize, bytes: usize) -> Vec<Msg> {
    let mut msgs = device_messages(rae_id, topics, n);
    for m in &mut msgs {
        m.payload.resize(bytes, b'.');
    }
    msgs
}

/// How far records of [`device_messages`] arrived out of their topic's
/// order, read back from Kafka ([`inversions`]).
#[derive(Debug, Default)]
pub struct Inversions {
    /// Records with a key and a message number.
    pub parsed: usize,
    /// Records that reached their partition after a later message of their
    /// topic.
    pub inverted: usize,
    /// For each inverted record, the offset distance back to the first
    /// record of its topic with a higher message number.
    pub distances: Vec<i64>,
}

/// Counts, per partition and topic (the record key), the records of
/// [`device_messages`] (padding allowed) that came after a later message.
pub fn inversions(records: &[rae_tests::tansu::Record]) -> Inversions {
    /// (message number, offset) of one key's records, in offset order.
    type Seen = Vec<(u64, i64)>;
    let mut seen: std::collections::HashMap<(i32, Vec<u8>), Seen> = Default::default();
    let mut sorted: Vec<&rae_tests::tansu::Record> = records.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    let mut out = Inversions::default();
    for r in sorted {
        let n: Option<u64> = r
            .value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.rsplit_once('#'))
            .and_then(|(_, n)| n.trim_end_matches('.').parse().ok());
        let (Some(key), Some(n)) = (r.key.clone(), n) else {
            continue;
        };
        out.parsed += 1;
        let list = seen.entry((r.partition, key)).or_default();
        if let Some(&(_, first_later)) = list.iter().find(|(m, _)| *m > n) {
            out.inverted += 1;
            out.distances.push(r.offset - first_later);
        }
        list.push((n, r.offset));
    }
    out
}

/// Publishes `msgs` in order at QoS 1 (up to 100 unacked) as `client_id`
/// and waits until the broker acked all of them.
pub fn publish_all(port: u16, client_id: &str, msgs: &[Msg]) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        // Large enough for the too-large-for-Kafka test message.
        opts.set_inflight(100).set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut el) = AsyncClient::new(opts, 200);
        let sender = client.clone();
        let owned: Vec<Msg> = msgs.to_vec();
        let send = tokio::spawn(async move {
            for m in owned {
                sender
                    .publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
                    .await?;
            }
            anyhow::Ok(())
        });
        let mut acked = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while acked < msgs.len() {
            let event = tokio::time::timeout_at(deadline, el.poll())
                .await
                .with_context(|| format!("{acked} of {} PUBACKs after 120 s", msgs.len()))?;
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => bail!("publisher connection failed after {acked} PUBACKs: {e}"),
            }
        }
        send.await??;
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
        Ok(())
    })
}

/// Checks that every message of `sent` is among `records` (duplicates
/// allowed) and, per key, that the first occurrences keep the sent order.
pub fn check_all_arrived_in_order(
    sent: &[Msg],
    records: &[rae_tests::tansu::Record],
) -> Result<()> {
    use std::collections::{BTreeMap, HashSet};
    let mut per_key: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for r in records {
        per_key
            .entry(r.key_str())
            .or_default()
            .push(r.value.clone().unwrap_or_default());
    }
    let mut missing = Vec::new();
    let mut sent_per_key: BTreeMap<&str, Vec<&[u8]>> = BTreeMap::new();
    for m in sent {
        sent_per_key.entry(&m.topic).or_default().push(&m.payload);
    }
    for (key, want) in &sent_per_key {
        let got = per_key.get(*key).cloned().unwrap_or_default();
        let mut seen = HashSet::new();
        let firsts: Vec<&[u8]> = got
            .iter()
            .filter(|v| seen.insert(v.as_slice()))
            .map(Vec::as_slice)
            .collect();
        for w in want {
            if !seen.contains(w) {
                missing.push(String::from_utf8_lossy(w).into_owned());
            }
        }
        let wanted_order: Vec<&[u8]> = firsts
            .iter()
            .copied()
            .filter(|v| want.contains(v))
            .collect();
        ensure!(
            wanted_order == *want || !missing.is_empty(),
            "key {key}: first occurrences out of order"
        );
    }
    ensure!(
        missing.is_empty(),
        "{} of {} messages missing in Kafka, e.g. {:?}",
        missing.len(),
        sent.len(),
        &missing[..missing.len().min(5)]
    );
    Ok(())
}

/// Reads `sent.len()` records of the events topic (up to `within`) and
/// checks they are exactly `sent`, in order per key; fails with the
/// bridge's log when some are missing.
pub fn read_sent(
    lab: &Lab,
    sent: &[Msg],
    bridge: &Bridge,
    within: Duration,
) -> Result<Vec<rae_tests::tansu::Record>> {
    let records = lab.tansu.read(EVENTS, sent.len(), within)?;
    ensure!(
        records.len() == sent.len(),
        "{} of {} records; bridge log:\n{}",
        records.len(),
        sent.len(),
        bridge.log_tail()
    );
    check_all_arrived_in_order(sent, &records)?;
    Ok(records)
}

/// Reads `topic` again and again until [`check_all_arrived_in_order`]
/// passes for `sent` (returns every record read) or `within` passes (fails
/// with its last complaint).
pub fn read_all_of(
    lab: &Lab,
    topic: &str,
    sent: &[Msg],
    within: Duration,
) -> Result<Vec<rae_tests::tansu::Record>> {
    let deadline = Instant::now() + within;
    loop {
        let records = lab.tansu.read(topic, usize::MAX, Duration::from_secs(2))?;
        match check_all_arrived_in_order(sent, &records) {
            Ok(()) => return Ok(records),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("after {within:?}, {} records", records.len())))
            }
            Err(_) => {}
        }
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Publishes `msgs` (client `publisher`) while `bridge` reads them, and
/// SIGKILLs the bridge once it has read 150; waits until the publisher
/// had all acked by mosquitto. Fails unless the kill came mid-stream (the
/// bridge had PUBACKed fewer than all, per mosquitto's log). Returns the
/// PUBACKs the bridge sent before the kill. The bridge stays down.
pub fn kill_mid_stream(
    bridge: &mut Bridge,
    mosquitto: &Mosquitto,
    publisher: &str,
    msgs: &[Msg],
) -> Result<usize> {
    let (port, to_send, client) = (mosquitto.port(), msgs.to_vec(), publisher.to_string());
    let handle = std::thread::spawn(move || publish_all(port, &client, &to_send));
    bridge.wait_metric("rae_bridge_messages_in_total", 150, Duration::from_secs(60))?;
    bridge.kill()?;
    let acked = mosquitto
        .log_text()
        .matches(&format!(
            "Received PUBACK from {} ",
            bridge.config.client_id
        ))
        .count();
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
    ensure!(
        acked < msgs.len(),
        "the kill came after every message was acked ({acked}): not a mid-stream kill"
    );
    Ok(acked)
}
