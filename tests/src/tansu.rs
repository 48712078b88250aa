//! [`Tansu`]: a real Kafka-protocol broker (Tansu 0.6.0) as a child process,
//! for the cloud-ingest tests, plus a tiny blocking Kafka client
//! ([`Tansu::create_topic`], [`Tansu::produce`], [`Tansu::read`]) built on
//! rdkafka with its bundled librdkafka (Debian's 2.0.2 fails the ApiVersion
//! handshake against Tansu).
//!
//! * [`Tansu::start`] runs `tansu broker --listener-url tcp://127.0.0.1:PORT
//!   --advertised-listener-url tcp://127.0.0.1:PORT --storage-engine
//!   memory://tansu/` in the given directory, on a free ephemeral port
//!   (picked by binding port 0 and releasing it; another is tried if Tansu
//!   exits), with its output appended to `tansu.log` there, and waits
//!   (bounded) until a metadata request through librdkafka succeeds.
//! * [`Tansu::kill`] is SIGKILL, [`Tansu::restart`] starts it again on the
//!   same port.
//!
//! **What a restart can show.** `memory://` storage lives in the process:
//! a killed Tansu comes back *empty* (no topics, no records, no consumer
//! group offsets, no idempotent-producer state). The 0.6.0 binary built
//! with `--features dynostore` offers only `memory://` and `s3://`: its
//! `--help` names `postgres://...` as an example, but the engine is behind
//! the `postgres` feature (checked: `--storage-engine postgres://...` exits
//! with `FeatureNotEnabled { feature: "postgres" }`); a durable engine
//! (`postgres`, or `sqlite://` with `libsql`) would need another ~13-minute
//! build. So a restart test can show that messages sent *while Tansu is
//! down* arrive once it is back (and that clients recover from a broker
//! that lost their state, their group and their committed offsets), never
//! that records written before the kill survive it.
//!
//! **High watermark.** Tansu 0.6.0 reports as a partition's high
//! watermark the base offset of its last record batch, not the offset
//! after its last record (seen: 147 records at offsets 0..=146, the last
//! batch holding 6, watermark 141). Consumer lag computed from it is low
//! by the size of the last batch minus one; the log end is best taken
//! from the records read ([`Tansu::read`]).
//!
//! A missing `tansu` binary is an error naming the install command
//! ([`INSTALL`]). Environment variables Tansu reads as defaults
//! (`CLUSTER_ID`, `LISTENER_URL`, ...) are removed from its environment.
//! Dropping a [`Tansu`] SIGKILLs it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// The command that installs the binary the harness runs.
pub const INSTALL: &str = "cargo install --locked tansu@0.6.0 --features dynostore";
/// The version the harness expects (`tansu --version`).
pub const VERSION: &str = "0.6.0";
/// How long [`Tansu::start`] / [`Tansu::restart`] wait for a metadata answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
const BIND_ATTEMPTS: usize = 3;
const ENV_DEFAULTS: [&str; 6] = [
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// One Kafka record as read back by [`Tansu::read`].
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header name and value, in record order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record's timestamp in ms since the epoch, if it has one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The key as UTF-8 (lossy); `""` without a key.
    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }

    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first header called `name` as UTF-8 (lossy).
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A running (or killed, until restarted) Tansu. See the module docs.
#[derive(Debug)]
pub struct Tansu {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// Where the `tansu` binary is: `$TANSU`, `$CARGO_HOME/bin`, `~/.cargo/bin`,
/// then `$PATH`. The error names [`INSTALL`].
pub fn binary() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("TANSU") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/tansu"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tansu"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "the `tansu` Kafka broker is missing; the cloud-ingest tests run a real one: \
                 `{INSTALL}` (scripts/install-tansu)"
            )
        })
}

impl Tansu {
    /// Starts Tansu with memory storage on a free port; files go into `dir`.
    pub fn start(dir: &Path) -> Result<Tansu> {
        let binary = binary()?;
        std::fs::create_dir_all(dir)?;
        let mut tansu = Tansu {
            binary,
            dir: dir.to_path_buf(),
            port: 0,
            log: dir.join("tansu.log"),
            child: None,
        };
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            tansu.port = free_port()?;
            match tansu.spawn() {
                Ok(()) => return Ok(tansu),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .context(format!("tansu did not start in {BIND_ATTEMPTS} attempts"))
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for var in ENV_DEFAULTS {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} (`{INSTALL}`)", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                self.child = None;
                bail!(
                    "tansu exited ({status}) on port {}; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && self.metadata_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                bail!(
                    "tansu did not answer a metadata request on {addr} within {START_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether a metadata request through librdkafka succeeds now.
    fn metadata_ok(&self) -> bool {
        let Ok(consumer) = self.config().create::<BaseConsumer>() else {
            return false;
        };
        consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|m| !m.brokers().is_empty())
            .unwrap_or(false)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, for `kafka.brokers` / `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGKILL; memory storage is lost with the process.
    pub fn kill(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("tansu is not running")?;
        child.kill().context("SIGKILL tansu")?;
        child.wait().context("reaping tansu")?;
        self.child = None;
        Ok(())
    }

    /// Starts it again (empty) on the same port, killing it first if it
    /// still runs; retries while the port is not free yet.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.kill()?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.context(format!("restarting on port {}", self.port))),
            }
        }
    }

    /// A librdkafka config pointing at this broker.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("socket.timeout.ms", "5000")
            .set("log_level", "3");
        config
    }

    /// Creates `topic` with `partitions` partitions (replication 1) and
    /// waits until its metadata shows them.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .config()
            .create()
            .context("creating the admin client")?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.create_topics([&new], &opts))?
            .with_context(|| format!("creating topic {topic}"))?;
        for result in results {
            if let Err((name, code)) = result {
                bail!("creating topic {name}: {code}");
            }
        }
        let consumer: BaseConsumer = self.config().create()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(2))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                .unwrap_or(0);
            if seen == usize::try_from(partitions)? {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "topic {topic} shows {seen} of {partitions} partitions after 10 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Produces one record and waits for its delivery report.
    pub fn produce(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<()> {
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .config()
            .set("acks", "all")
            .set("message.timeout.ms", "10000")
            .create()
            .context("creating the producer")?;
        let mut owned = OwnedHeaders::new();
        for (name, v) in headers {
            owned = owned.insert(rdkafka::message::Header {
                key: name,
                value: Some(*v),
            });
        }
        producer
            .send(BaseRecord::to(topic).key(key).payload(value).headers(owned))
            .map_err(|(e, _)| e)
            .with_context(|| format!("producing to {topic}"))?;
        producer
            .flush(Duration::from_secs(10))
            .with_context(|| format!("flushing a record to {topic}"))?;
        Ok(())
    }

    /// Reads `topic` from the beginning of every partition until `want`
    /// records arrived or `timeout` passed, whichever is first; then
    /// returns what arrived, ordered by (partition, offset).
    pub fn read(&self, topic: &str, want: usize, timeout: Duration) -> Result<Vec<Record>> {
        let (consumer, partitions) = self.group_client("rae-tests-reader", topic)?;
        let mut list = TopicPartitionList::new();
        for p in partitions {
            list.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&list)?;
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        while records.len() < want && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.with_context(|| format!("reading {topic}"))?;
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers,
                timestamp_ms: message.timestamp().to_millis(),
            });
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    }

    /// A consumer in `group` (no auto commit, nothing assigned yet) and
    /// the partition ids of `topic` (an error if it has none).
    fn group_client(&self, group: &str, topic: &str) -> Result<(BaseConsumer, Vec<i32>)> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .with_context(|| format!("creating a client in group {group}"))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .with_context(|| format!("metadata of {topic}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
        Ok((consumer, partitions))
    }

    /// Per partition of `topic`: the offset `group` committed there (the
    /// next one it will read), if any; an OffsetFetch, without joining the
    /// group. (For the log end use the records [`Tansu::read`] returns:
    /// Tansu 0.6.0's high watermark is the base offset of the last record
    /// batch, not the offset after its last record — see the module docs.)
    pub fn committed(&self, group: &str, topic: &str) -> Result<BTreeMap<i32, Option<i64>>> {
        let (consumer, partitions) = self.group_client(group, topic)?;
        let mut list = TopicPartitionList::new();
        for p in partitions {
            list.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(5))
            .with_context(|| format!("offsets of group {group} on {topic}"))?;
        Ok(committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), Some(o)),
                _ => (e.partition(), None),
            })
            .collect())
    }

    /// The whole log so far (across restarts).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 40 lines of the log.
    pub fn log_tail(&self) -> String {
        crate::log_tail(&self.log, 40)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a future on a fresh current-thread runtime in its own thread, so
/// the blocking API works from plain `#[test]`s and from inside a runtime.
fn block_on<F>(future: F) -> Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<F::Output> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Ok(runtime.block_on(future))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the admin thread panicked"))?
    })
}

/// A port that was free a moment ago (bound to port 0, then released).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tansu_takes_records_and_comes_back_empty_after_a_kill() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut tansu = Tansu::start(dir.path())?;
        let port = tansu.port();
        tansu.create_topic("t.one", 3)?;
        tansu.produce("t.one", b"k", b"v", &[("h", b"x")])?;
        let records = tansu.read("t.one", 1, Duration::from_secs(10))?;
        assert_eq!(records.len(), 1, "{}", tansu.log_tail());
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(records[0].value.as_deref(), Some(&b"v"[..]));
        assert_eq!(records[0].header_str("h").as_deref(), Some("x"));

        tansu.kill()?;
        assert!(!tansu.is_running());
        assert!(tansu.kill().is_err(), "killing a dead broker must fail");
        tansu.restart()?;
        assert_eq!(tansu.port(), port);
        // Memory storage: the topic is gone with the old process.
        tansu.create_topic("t.one", 3)?;
        let records = tansu.read("t.one", 1, Duration::from_secs(2))?;
        assert!(records.is_empty(), "memory storage kept {records:?}");
        Ok(())
    }
}
