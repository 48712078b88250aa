//! The journal fields of the real `rae-agent` binary, captured on a socket.
//!
//! systemd-journal-logger sends to the fixed path
//! `/run/systemd/journal/socket`, so the agent runs in a private mount
//! namespace (`unshare --mount`, needs root / CAP_SYS_ADMIN) where a tmpfs
//! covers `/run` and this test's directory is bind-mounted on
//! `/run/systemd/journal`; the test binds `socket` there and reads the
//! native journal protocol datagrams. `$JOURNAL_STREAM` names the agent's
//! stderr file, so the agent believes (as under systemd) that its stderr is
//! the journal and logs through the journal logger.
//!
//! An Android device on a [`FakeAdbServer`] (a fake adb server; no phone
//! can be attached here) makes the registry journal an `attached` event; its
//! log line must carry `RAE_DEVICE_ID` / `RAE_SESSION_ID` equal to the
//! journaled row, at info priority, with `RAE_COMPONENT=registry`. Every
//! line carries `RAE_COMPONENT`; the adb probe's lines say `probe/adb`, and
//! its getprop failure names the device in `RAE_ADB_SERIAL`.
//! The binary must have been built (`cargo build -p rae-agent`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rae_tests::agent::{agent_binary, read_events};
use rae_tests::fake_adb::FakeAdbServer;

const WAIT: Duration = Duration::from_secs(20);
const PHONE: &str = "R58M12ABCDE";
const BROKEN: &str = "0A1B2C3D4E5F";

/// One journal entry: each field's values (a field may repeat).
type Entry = BTreeMap<String, Vec<String>>;

/// Parses a native-protocol datagram: `KEY=value\n`, or `KEY\n` followed by
/// a 64-bit little-endian length, the value bytes, and `\n`.
fn parse_entry(mut data: &[u8]) -> Result<Entry> {
    let mut entry = Entry::new();
    while !data.is_empty() {
        let nl = data
            .iter()
            .position(|&b| b == b'\n')
            .context("field without a newline")?;
        let line = &data[..nl];
        let (key, value);
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            key = String::from_utf8_lossy(&line[..eq]).into_owned();
            value = String::from_utf8_lossy(&line[eq + 1..]).into_owned();
            data = &data[nl + 1..];
        } else {
            key = String::from_utf8_lossy(line).into_owned();
            let rest = &data[nl + 1..];
            ensure!(rest.len() >= 8, "{key}: truncated length");
            let len = usize::try_from(u64::from_le_bytes(rest[..8].try_into()?))?;
            ensure!(rest.len() > 8 + len, "{key}: truncated value");
            value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
            ensure!(
                rest[8 + len] == b'\n',
                "{key}: value not followed by a newline"
            );
            data = &rest[9 + len..];
        }
        entry.entry(key).or_default().push(value);
    }
    Ok(entry)
}

fn field<'e>(entry: &'e Entry, key: &str) -> Option<&'e str> {
    entry.get(key).and_then(|v| v.first()).map(String::as_str)
}

#[test]
fn native_protocol_fields_parse_with_both_encodings() -> Result<()> {
    let mut data = b"PRIORITY=5\nMESSAGE\n".to_vec();
    data.extend_from_slice(&5u64.to_le_bytes());
    data.extend_from_slice(b"a\nb=c\nRAE_COMPONENT=registry\n");
    let entry = parse_entry(&data)?;
    assert_eq!(field(&entry, "PRIORITY"), Some("5"));
    assert_eq!(field(&entry, "MESSAGE"), Some("a\nb=c"));
    assert_eq!(field(&entry, "RAE_COMPONENT"), Some("registry"));
    assert!(parse_entry(b"MESSAGE\n\x09").is_err());
    Ok(())
}

/// The capture socket and every entry read from it so far.
struct Capture {
    entries: Arc<Mutex<Vec<Entry>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    fn bind(path: &Path) -> Result<Capture> {
        let socket =
            UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let entries = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (e, errs) = (entries.clone(), errors.clone());
        // Keep draining: a full datagram queue would block the agent's logging.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = socket.recv(&mut buf) {
                if n == 0 {
                    continue; // the logger's connection check
                }
                match parse_entry(&buf[..n]) {
                    Ok(entry) => e.lock().expect("lock").push(entry),
                    Err(err) => errs.lock().expect("lock").push(format!("{err:#}")),
                }
            }
        });
        Ok(Capture { entries, errors })
    }

    fn snapshot(&self) -> Vec<Entry> {
        self.entries.lock().expect("lock").clone()
    }

    fn wait_for(
        &self,
        what: &str,
        agent: &mut Child,
        pred: impl Fn(&Entry) -> bool,
    ) -> Result<Entry> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.snapshot().into_iter().find(|e| pred(e)) {
                return Ok(e);
            }
            if let Some(status) = agent.try_wait()? {
                bail!(
                    "rae-agent exited ({status}) before logging {what}. It runs under \
                     `unshare --mount`, which needs root (CAP_SYS_ADMIN) and util-linux \
                     (apt-get install util-linux mount); entries: {:#?}",
                    self.snapshot()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "no journal entry {what} within {WAIT:?}; entries: {:#?}",
                self.snapshot()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The agent child, SIGKILLed if the test fails before stopping it.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `rae-agent run` whose journal socket is `journal_dir/socket`.
fn start_agent(journal_dir: &Path, config: &Path, stderr_file: &Path) -> Result<Killed> {
    let stderr = std::fs::File::create(stderr_file)?;
    let meta = stderr.metadata()?;
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal \
                  && mount --bind \"$0\" /run/systemd/journal && exec \"$@\"";
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
        ])
        .arg(journal_dir)
        .arg(agent_binary()?)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map(Killed)
        .context("starting `unshare` (util-linux: apt-get install util-linux)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_lines_carry_device_session_and_component_fields() -> Result<()> {
    // Not under /tmp's possible /run: a tmpfs covers /run in the namespace.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir)?;
    let capture = Capture::bind(&journal_dir.join("socket"))?;

    let adb = FakeAdbServer::start().await?;
    adb.add_device(PHONE, "device", &[("ro.product.model", "Pixel 8")]);
    adb.add_device(BROKEN, "unauthorized", &[]);
    adb.fail_getprop(BROKEN, "device still booting")?;
    adb.set_state(BROKEN, "device")?;

    let state = dir.path().join("state");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "rae_id = \"rae-journald\"\nstate_dir = {:?}\nlog_level = \"info\"\n\n\
             [udev]\nenabled = false\n\n[adb]\nserver = {:?}\n",
            state.display().to_string(),
            adb.server()
        ),
    )?;
    let stderr_file = dir.path().join("stderr.log");
    let mut guard = start_agent(&journal_dir, &config, &stderr_file)?;
    let agent = &mut guard.0;

    let attached = tokio::task::block_in_place(|| {
        capture.wait_for("about an attached device", agent, |e| {
            field(e, "MESSAGE").is_some_and(|m| m.starts_with("journaled attached"))
                && e.contains_key("RAE_DEVICE_ID")
        })
    })?;
    let failed = tokio::task::block_in_place(|| {
        capture.wait_for("about the failing getprop", agent, |e| {
            field(e, "RAE_ADB_SERIAL") == Some(BROKEN)
        })
    })?;

    // The fields name the row the registry journaled.
    let rows = read_events(&state.join("journal.db"))?;
    let device = field(&attached, "RAE_DEVICE_ID").unwrap_or_default();
    let session = field(&attached, "RAE_SESSION_ID").context("no RAE_SESSION_ID")?;
    let row = rows
        .iter()
        .find(|r| r.kind == "attached" && r.device_id == device)
        .with_context(|| format!("no attached row for {device}: {rows:?}"))?;
    assert_eq!(session, row.session_id);
    assert_eq!(field(&attached, "RAE_COMPONENT"), Some("registry"));
    assert_eq!(
        field(&attached, "PRIORITY"),
        Some("5"),
        "attach is logged at info"
    );
    assert_eq!(field(&attached, "SYSLOG_IDENTIFIER"), Some("rae-agent"));

    assert_eq!(field(&failed, "RAE_COMPONENT"), Some("probe/adb"));
    assert_eq!(field(&failed, "PRIORITY"), Some("4"), "a warning");

    let entries = capture.snapshot();
    let missing: Vec<&Entry> = entries
        .iter()
        .filter(|e| !e.contains_key("RAE_COMPONENT"))
        .collect();
    assert!(
        missing.is_empty(),
        "lines without RAE_COMPONENT: {missing:#?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| field(e, "RAE_COMPONENT") == Some("runtime")
                && field(e, "MESSAGE").is_some_and(|m| m.contains("starting as rae-journald"))),
        "no runtime start line: {entries:#?}"
    );
    let errors = capture.errors.lock().expect("lock").clone();
    assert!(errors.is_empty(), "unparsable datagrams: {errors:?}");
    // Under the journal nothing goes to stderr.
    let stderr = std::fs::read_to_string(&stderr_file)?;
    assert!(stderr.is_empty(), "stderr: {stderr}");

    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
    // unreaped child (unshare and sh exec into the agent, same pid).
    let rc = unsafe { libc::kill(libc::pid_t::try_from(agent.id())?, libc::SIGTERM) };
    ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = agent.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            bail!("rae-agent still running {WAIT:?} after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(status.success(), "exit {status}");
    Ok(())
}
