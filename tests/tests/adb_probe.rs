//! The ADB probe (`rae_agent::probe::adb`) against [`FakeAdbServer`] (a fake
//! adb server speaking the documented host protocol), driven directly
//! through its channel; one end-to-end run through the registry and journal;
//! and one run against the REAL `adb` server binary with no devices.
//!
//! Every wait is bounded by [`WAIT`]; a probe that never reports fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rae_agent::probe::adb::{self, AdbProbe, AdbSettings, RawAdbConfig};
use rae_agent::probe::ProbeEvent;
use rae_agent::registry::{FacetKey, Identifier, Observation, Presence, Source};
use rae_protocol::{AttrValue, Attrs};
use rae_tests::fake_adb::FakeAdbServer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);
const PHONE: &str = "R58M12ABCDE";
const PHONE_PROPS: &[(&str, &str)] = &[
    ("ro.product.manufacturer", "samsung"),
    ("ro.product.model", "SM-A525F"),
    ("ro.product.name", "a52qnsxx"),
    ("ro.product.device", "a52q"),
    (
        "ro.build.fingerprint",
        "samsung/a52qnsxx/a52q:13/TP1A/A525FXXU4:user/release-keys",
    ),
    ("ro.build.version.release", "13"),
    ("ro.serialno", PHONE),
];

fn settings(server: &str, tweak: impl FnOnce(&mut RawAdbConfig)) -> Result<AdbSettings> {
    let mut raw = RawAdbConfig {
        server: Some(server.to_string()),
        reconnect_max_backoff_secs: Some(2),
        ..RawAdbConfig::default()
    };
    tweak(&mut raw);
    Ok(AdbSettings::validate(raw)?)
}

/// A running [`AdbProbe`] and everything it has reported so far.
struct Probe {
    rx: mpsc::Receiver<ProbeEvent>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Present facets by key, from the latest observation of each.
    present: BTreeMap<String, Observation>,
    observed: Vec<Observation>,
    failures: Vec<String>,
    synced: usize,
}

impl Probe {
    fn start(settings: AdbSettings) -> Probe {
        let (tx, rx) = mpsc::channel(256);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(
            AdbProbe {
                settings,
                tx,
                shutdown: shutdown_rx,
            }
            .run(),
        );
        Probe {
            rx,
            shutdown,
            task,
            present: BTreeMap::new(),
            observed: Vec::new(),
            failures: Vec::new(),
            synced: 0,
        }
    }

    fn record(&mut self, ev: ProbeEvent) {
        match ev {
            ProbeEvent::Observed(obs) => {
                let key = obs.facet.key.clone();
                match obs.presence {
                    Presence::Present => self.present.insert(key, obs.clone()),
                    Presence::Absent => self.present.remove(&key),
                };
                self.observed.push(obs);
            }
            ProbeEvent::Synced(source) => {
                assert_eq!(source, Source::Adb);
                self.synced += 1;
            }
            ProbeEvent::Failed { source, message } => {
                assert_eq!(source, Source::Adb);
                self.failures.push(message);
            }
            ProbeEvent::Recovered(source) => assert_eq!(source, Source::Adb),
        }
    }

    /// Takes events until `done` holds, for at most `limit`.
    async fn until_within(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&Probe) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.record(ev),
                Ok(None) => bail!("the probe stopped while waiting for {what}"),
                Err(_) => bail!(
                    "timed out waiting for {what}; failures {:?}, present {:#?}",
                    self.failures,
                    self.present
                ),
            }
        }
        Ok(())
    }

    async fn until(&mut self, what: &str, done: impl Fn(&Probe) -> bool) -> Result<()> {
        self.until_within(WAIT, what, done).await
    }

    /// Records whatever arrives during `d`.
    async fn settle(&mut self, d: Duration) {
        let _ = self.until_within(d, "nothing", |_| false).await;
    }

    fn attr(&self, serial: &str, key: &str) -> Option<String> {
        self.present
            .get(serial)?
            .attrs
            .get(key)
            .map(ToString::to_string)
    }

    fn has(&self, serial: &str, key: &str, value: &str) -> bool {
        self.attr(serial, key).as_deref() == Some(value)
    }

    /// Stops the probe and checks that it ends promptly, without a panic.
    async fn stop(self) -> Result<()> {
        ensure!(!self.task.is_finished(), "the probe ended on its own");
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .context("the probe did not stop within 2 s")?
            .context("the probe task panicked")
    }
}

fn text(pairs: &[(&str, &str)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), AttrValue::from(*v)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_appear_with_their_facet_identifiers_and_attributes() -> Result<()> {
    let fake = FakeAdbServer::start().await?;
    fake.add_device(PHONE, "device", PHONE_PROPS);
    fake.add_device("OFFLINE1", "offline", &[]);
    let mut probe = Probe::start(settings(&fake.server(), |_| {})?);
    probe
        .until("the phone's properties", |p| {
            p.synced == 1 && p.has(PHONE, "android.serialno", PHONE)
        })
        .await?;
    let phone = &probe.present[PHONE];
    assert_eq!(phone.facet, FacetKey::new(Source::Adb, PHONE));
    assert_eq!(
        phone.identifiers,
        [Identifier::Serial {
            serial: PHONE.into(),
            interface: None
        }]
    );
    let mut want = text(&[
        ("state", "online"),
        ("android.adb_state", "device"),
        ("android.product", "a52qnsxx"),
        ("android.model_name", "SM_A525F"),
        ("android.device", "a52q"),
        ("android.product.manufacturer", "samsung"),
        ("android.product.model", "SM-A525F"),
        ("android.build.fingerprint", PHONE_PROPS[4].1),
        ("android.build.version.release", "13"),
        ("android.serialno", PHONE),
    ]);
    want.insert("android.transport_id".into(), AttrValue::Int(1));
    assert_eq!(phone.attrs, want);
    let offline = &probe.present["OFFLINE1"];
    assert_eq!(
        offline.attrs.get("state"),
        Some(&AttrValue::from("offline"))
    );
    assert!(
        !fake.requests().iter().any(|r| r.contains("OFFLINE1")),
        "an offline device is not asked"
    );
    assert!(probe.failures.is_empty(), "{:?}", probe.failures);
    probe.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_device_turns_online_and_then_its_properties_arrive() -> Result<()> {
    let fake = FakeAdbServer::start().await?;
    fake.add_device(PHONE, "unauthorized", PHONE_PROPS);
    let mut probe = Probe::start(settings(&fake.server(), |_| {})?);
    probe
        .until("unauthorized", |p| p.has(PHONE, "state", "unauthorized"))
        .await?;
    assert_eq!(
        probe.attr(PHONE, "android.adb_state").as_deref(),
        Some("unauthorized")
    );
    assert_eq!(
        probe.attr(PHONE, "android.model_name"),
        None,
        "adb knows no model yet"
    );
    fake.set_state(PHONE, "device")?;
    probe
        .until("the properties", |p| {
            p.has(PHONE, "android.product.model", "SM-A525F")
        })
        .await?;
    let states: Vec<_> = probe
        .observed
        .iter()
        .map(|o| {
            (
                o.attrs.get("state").map(ToString::to_string),
                o.attrs.contains_key("android.product.model"),
            )
        })
        .collect();
    let online = Some("online".to_string());
    assert_eq!(
        states,
        [
            (Some("unauthorized".into()), false),
            (online.clone(), false),
            (online, true)
        ]
    );
    let transports = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("host:transport:"))
        .count();
    assert_eq!(
        transports, 1,
        "properties are read once per visit to `device`"
    );
    probe.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_device_is_reported_absent() -> Result<()> {
    let fake = FakeAdbServer::start().await?;
    fake.add_device(PHONE, "device", PHONE_PROPS);
    fake.add_device("OTHER", "device", &[]);
    let mut probe = Probe::start(settings(&fake.server(), |_| {})?);
    probe
        .until("both devices", |p| p.present.len() == 2)
        .await?;
    fake.remove_device(PHONE)?;
    probe
        .until("the phone gone", |p| !p.present.contains_key(PHONE))
        .await?;
    let last = probe.observed.last().context("an observation")?;
    assert_eq!(
        *last,
        Observation::absent(FacetKey::new(Source::Adb, PHONE))
    );
    assert!(probe.present.contains_key("OTHER"));
    probe.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_survives_a_server_restart_with_backoff_and_one_failure_report() -> Result<()> {
    let mut fake = FakeAdbServer::start().await?;
    fake.add_device(PHONE, "device", PHONE_PROPS);
    let mut probe = Probe::start(settings(&fake.server(), |_| {})?);
    probe
        .until("the phone", |p| p.has(PHONE, "android.serialno", PHONE))
        .await?;
    fake.stop().await;
    probe
        .until("the phone absent", |p| {
            p.present.is_empty() && p.failures.len() == 1
        })
        .await?;
    assert_eq!(
        probe.failures,
        ["adb server closed the connection while tracking devices"]
    );
    probe.settle(Duration::from_millis(1500)).await; // refused retries
                                                     // Back, but hanging up on every connection: count the attempts.
    fake.set_hang_up(true);
    fake.restart().await?;
    let before = fake.accepted_connections();
    probe.settle(Duration::from_secs(3)).await;
    let attempts = fake.accepted_connections() - before;
    assert!(
        (1..=8).contains(&attempts),
        "{attempts} connection attempts in 3 s"
    );
    fake.set_hang_up(false);
    probe
        .until("the phone back", |p| {
            p.has(PHONE, "android.serialno", PHONE)
        })
        .await?;
    assert_eq!(
        (probe.synced, probe.failures.len()),
        (1, 1),
        "one outage, one report: {:?}",
        probe.failures
    );
    probe.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_server_is_synced_empty_and_reported_once() -> Result<()> {
    let mut fake = FakeAdbServer::start().await?;
    fake.add_device(PHONE, "device", PHONE_PROPS);
    fake.stop().await;
    let mut probe = Probe::start(settings(&fake.server(), |_| {})?);
    probe.until("synced", |p| p.synced == 1).await?;
    probe.settle(Duration::from_secs(2)).await;
    let want = format!(
        "adb server {} unreachable: connection refused",
        fake.server()
    );
    assert_eq!(probe.failures, [want]);
    assert!(probe.observed.is_empty());
    fake.restart().await?;
    probe
        .until("the phone", |p| p.present.contains_key(PHONE))
        .await?;
    assert_eq!(probe.synced, 1, "Synced is sent exactly once");
    probe.stop().await
}

/// Injects a fault into the tracking connection; the probe must drop just
/// that connection, report `message`, and track the phone again afterwards.
async fn a_fault_ends_only_its_connection(
    inject: fn(&FakeAdbServer) -> usize,
    message: &str,
) -> Result<()> {
    let fake = FakeAdbServer::start().await?;
    fake.add_device(PHONE, "device", PHONE_PROPS);
    let mut probe = Probe::start(settings(&fake.server(), |r| {
        r.max_frame_bytes = Some(4096)
    })?);
    probe
        .until("the phone", |p| p.has(PHONE, "android.serialno", PHONE))
        .await?;
    for round in 1..=2 {
        let n = probe.observed.len();
        assert_eq!(inject(&fake), 1, "one tracking connection");
        probe
            .until("the failure", |p| p.failures.len() == round)
            .await?;
        assert_eq!(probe.failures[round - 1], message);
        probe
            .until("the phone back", |p| {
                p.observed.len() > n + 1 && p.present.contains_key(PHONE)
            })
            .await?;
        assert_eq!(
            probe.observed[n],
            Observation::absent(FacetKey::new(Source::Adb, PHONE))
        );
        probe
            .until("its properties", |p| {
                p.has(PHONE, "android.serialno", PHONE)
            })
            .await?;
    }
    probe.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_length_prefix_is_an_error_for_that_connection_only() -> Result<()> {
    a_fault_ends_only_its_connection(
        FakeAdbServer::inject_malformed_prefix,
        "malformed length prefix \"zz12\" from adb server",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_an_error_for_that_connection_only() -> Result<()> {
    a_fault_ends_only_its_connection(
        FakeAdbServer::inject_oversized_frame,
        "frame of 65535 bytes exceeds max_frame_bytes 4096",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adb_over_tcp_serial_is_a_network_identifier() -> Result<()> {
    let fake = FakeAdbServer::start().await?;
    fake.add_device("192.168.1.50:5555", "device", &[("ro.serialno", PHONE)]);
    let mut probe = Probe::start(settings(&fake.server(), |_| {})?);
    probe
        .until("the tcp device", |p| {
            p.has("192.168.1.50:5555", "android.serialno", PHONE)
        })
        .await?;
    let obs = &probe.present["192.168.1.50:5555"];
    assert_eq!(
        obs.identifiers,
        [Identifier::Network("192.168.1.50:5555".into())]
    );
    probe.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_fetch_failures_become_probe_errors() -> Result<()> {
    let fake = FakeAdbServer::start().await?;
    fake.add_device("REFUSES", "device", &[("ro.serialno", "REFUSES")]);
    fake.fail_getprop("REFUSES", "closed")?;
    fake.add_device(
        "CHATTY",
        "device",
        &[("ro.serialno", "CHATTY"), ("big", &"x".repeat(5000))],
    );
    let mut probe = Probe::start(settings(&fake.server(), |r| {
        r.max_frame_bytes = Some(4096)
    })?);
    let err = "android.probe_error";
    probe
        .until("both errors", |p| {
            p.attr("REFUSES", err).is_some() && p.attr("CHATTY", err).is_some()
        })
        .await?;
    let refused = probe.attr("REFUSES", err);
    assert_eq!(
        refused.as_deref(),
        Some("getprop failed: adb server refused \"shell:getprop\": closed")
    );
    let chatty = probe.attr("CHATTY", err);
    assert_eq!(
        chatty.as_deref(),
        Some("getprop failed: reply of more than 4096 bytes exceeds max_frame_bytes 4096")
    );
    assert!(probe.has("CHATTY", "state", "online") && probe.failures.is_empty());
    probe.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_once_lists_devices_with_properties_and_an_absent_server_gives_none() -> Result<()> {
    let mut fake = FakeAdbServer::start().await?;
    fake.add_device(PHONE, "device", PHONE_PROPS);
    fake.add_device("192.168.1.50:5555", "unauthorized", &[]);
    let s = settings(&fake.server(), |_| {})?;
    let found = tokio::time::timeout(WAIT, adb::scan_once(&s)).await?;
    let by_key: BTreeMap<_, _> = found
        .iter()
        .map(|o| (o.facet.key.as_str(), &o.attrs))
        .collect();
    assert_eq!(by_key.len(), 2);
    assert_eq!(
        by_key[PHONE].get("android.product.model"),
        Some(&AttrValue::from("SM-A525F"))
    );
    assert_eq!(
        by_key["192.168.1.50:5555"].get("state"),
        Some(&AttrValue::from("unauthorized"))
    );
    fake.stop().await;
    assert!(tokio::time::timeout(WAIT, adb::scan_once(&s))
        .await?
        .is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_seen_by_udev_and_adb_is_one_registry_device() -> Result<()> {
    use rae_agent::journal::read::JournalReader;
    use rae_agent::registry::DeviceRecord;
    use rae_agent::runtime::{build, open_journal, SHUTDOWN_DEADLINE};
    let fake = FakeAdbServer::start().await?;
    fake.add_device(PHONE, "device", PHONE_PROPS);
    let dir = tempfile::tempdir()?;
    let toml = format!(
        "rae_id = \"rae-test\"\nstate_dir = {:?}\n[udev]\nenabled = false\n[adb]\nserver = {:?}\n",
        dir.path().display().to_string(),
        fake.server()
    );
    let settings = rae_agent::config::Settings::from_toml(&toml, dir.path())?;
    let agent = build(&settings, open_journal(&settings)?)?;
    let usb = Observation::present(
        FacetKey::new(
            Source::Udev,
            "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1",
        ),
        vec![Identifier::Serial {
            serial: PHONE.into(),
            interface: None,
        }],
        text(&[
            ("usb.vendor_id", "04e8"),
            ("usb.product_id", "6860"),
            ("usb.serial", PHONE),
        ]),
    );
    agent.probe_tx.send(ProbeEvent::Observed(usb)).await?;
    let journal = settings.journal_path();
    let deadline = tokio::time::Instant::now() + WAIT;
    let devices = loop {
        let devices = JournalReader::open(&journal)?.devices()?;
        // Both facets in one record; the device count is checked below.
        let merged = |d: &DeviceRecord| {
            d.attrs.contains_key("android.product.model") && d.attrs.contains_key("usb.vendor_id")
        };
        if devices.iter().any(merged) {
            break devices;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no record with both usb.* and android.* attributes: {devices:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    agent.shutdown(SHUTDOWN_DEADLINE).await;
    ensure!(devices.len() == 1, "expected one device: {devices:#?}");
    let attrs = &devices[0].attrs;
    for (key, value) in [
        ("usb.vendor_id", "04e8"),
        ("android.product.model", "SM-A525F"),
        ("state", "online"),
    ] {
        assert_eq!(
            attrs.get(key),
            Some(&AttrValue::from(value)),
            "{key} in {attrs:#?}"
        );
    }
    assert_eq!(devices[0].identity, format!("serial:{PHONE}"));
    Ok(())
}

/// The real adb server, isolated (own port, HOME and keys); killed on drop.
struct RealAdb {
    child: Child,
    port: u16,
    home: tempfile::TempDir,
}

impl RealAdb {
    const BINARY: &str = "/usr/bin/adb";

    fn command(home: &Path) -> Command {
        let mut cmd = Command::new(Self::BINARY);
        cmd.env("HOME", home)
            .env("ANDROID_SDK_HOME", home)
            .env("ADB_VENDOR_KEYS", home.join("keys"));
        cmd.env_remove("ANDROID_SERIAL")
            .env_remove("ANDROID_ADB_SERVER_PORT");
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    fn start() -> Result<RealAdb> {
        ensure!(
            Path::new(Self::BINARY).is_file(),
            "{} is missing; this test runs the real adb server: `apt-get install adb`",
            Self::BINARY
        );
        let home = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(home.path().join("server.log"))?;
        let child = Self::command(home.path())
            .args(["-L", &format!("tcp:localhost:{port}"), "server", "nodaemon"])
            .stderr(log)
            .spawn()
            .context("starting `adb server nodaemon`")?;
        Ok(RealAdb { child, port, home })
    }
}

impl Drop for RealAdb {
    fn drop(&mut self) {
        let _ = Self::command(self.home.path())
            .args(["-P", &self.port.to_string(), "kill-server"])
            .stderr(Stdio::null())
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_adb_server_gives_an_empty_healthy_tracking_stream() -> Result<()> {
    let real = RealAdb::start()?;
    let s = settings(&format!("127.0.0.1:{}", real.port), |_| {})?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = async {
            let mut conn = adb::client::Connection::open(&s).await?;
            conn.request("host:version").await?;
            conn.read_frame("host:version").await
        };
        match answer.await {
            Ok(version) => {
                ensure!(version.len() == 4, "host:version answered {version:?}");
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                let log = std::fs::read_to_string(real.home.path().join("server.log"))
                    .unwrap_or_default();
                bail!("the real adb server never answered: {e}\n{log}");
            }
        }
    }
    let mut probe = Probe::start(s.clone());
    probe
        .until_within(Duration::from_secs(5), "Synced", |p| p.synced == 1)
        .await?;
    probe.settle(Duration::from_secs(1)).await;
    assert!(
        probe.failures.is_empty() && probe.observed.is_empty(),
        "{:?} {:?}",
        probe.failures,
        probe.observed
    );
    assert!(adb::scan_once(&s).await.is_empty());
    probe.stop().await
}
