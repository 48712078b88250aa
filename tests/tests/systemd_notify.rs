//! The real `rae-agent` binary under a stand-in for systemd's notify
//! socket: the test binds a unix datagram socket, starts `rae-agent run`
//! with `$NOTIFY_SOCKET` naming it (a path, or an abstract `@name`) and a
//! 2 s `$WATCHDOG_USEC`, and reads what the agent says: `READY=1`, then
//! `WATCHDOG=1` about every second while healthy, `STOPPING=1` on SIGTERM.
//! With the test-only hook `$RAE_TEST_WEDGE_REGISTRY_WHEN` (see
//! `agent/src/runtime/watchdog.rs`) the registry task blocks its thread once
//! a file exists, and the keep-alives must stop while the process still
//! runs — which is what makes systemd kill and restart a hung agent.
//! The binary must have been built (`cargo build -p rae-agent`).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rae_tests::agent::agent_binary;

/// The watchdog timeout the agent is given: it pets every second.
const WATCHDOG_USEC: &str = "2000000";

/// The stand-in for systemd's notify socket.
struct Manager {
    socket: UnixDatagram,
    /// `$NOTIFY_SOCKET` for the agent.
    env: String,
}

impl Manager {
    fn on_path(path: &Path) -> Result<Self> {
        Ok(Manager {
            socket: UnixDatagram::bind(path)
                .with_context(|| format!("binding {}", path.display()))?,
            env: path.display().to_string(),
        })
    }

    fn abstract_named(name: &str) -> Result<Self> {
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        Ok(Manager {
            socket: UnixDatagram::bind_addr(&addr).context("binding an abstract socket")?,
            env: format!("@{name}"),
        })
    }

    /// The next datagram within `timeout`, or `None`.
    fn recv(&self, timeout: Duration) -> Result<Option<String>> {
        self.socket.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `timeout` for a datagram with the line `line`; returns
    /// every datagram seen until then.
    fn expect_line(&self, line: &str, timeout: Duration, agent: &mut Agent) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(msg) = self.recv(left.max(Duration::from_millis(1)))? {
                let hit = msg.lines().any(|l| l == line);
                seen.push(msg);
                if hit {
                    return Ok(seen);
                }
            }
            agent.ensure_running()?;
        }
        bail!(
            "no {line:?} within {timeout:?}; got {seen:?}; log:\n{}",
            agent.log()
        )
    }

    /// Every datagram that arrives within `window`.
    fn collect(&self, window: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(msg) = self.recv(left.max(Duration::from_millis(1)))? {
                seen.push(msg);
            }
        }
        Ok(seen)
    }
}

fn count_line(msgs: &[String], line: &str) -> usize {
    msgs.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

/// `rae-agent run` with only the registry task (no probes, no broker).
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, manager: &Manager, wedge_when: Option<&Path>) -> Result<Self> {
        let state = dir.join("state");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "rae_id = \"rae-notify\"\nstate_dir = {:?}\nlog_level = \"debug\"\n\n\
                 [udev]\nenabled = false\n\n[adb]\nenabled = false\n",
                state.display().to_string()
            ),
        )?;
        let log = dir.join("agent.log");
        let mut cmd = Command::new(agent_binary()?);
        cmd.arg("--config")
            .arg(&config)
            .arg("run")
            .env("NOTIFY_SOCKET", &manager.env)
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RAE_TEST_WEDGE_REGISTRY_WHEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        if let Some(path) = wedge_when {
            cmd.env("RAE_TEST_WEDGE_REGISTRY_WHEN", path);
        }
        let child = cmd.spawn().context("starting rae-agent run")?;
        Ok(Agent { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("rae-agent exited ({status}); log:\n{}", self.log());
        }
        Ok(())
    }

    fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        self.ensure_running()?;
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our
        // own child, not yet reaped, so it cannot name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
        Ok(())
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "rae-agent still running {timeout:?} after the signal; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// READY=1, steady WATCHDOG=1 over a window longer than the timeout (an
/// idle agent is healthy), then STOPPING=1 and exit 0 on SIGTERM.
fn ready_keepalives_and_stopping(manager: &Manager, dir: &Path) -> Result<()> {
    let mut agent = Agent::start(dir, manager, None)?;
    let first = manager.expect_line("READY=1", Duration::from_secs(20), &mut agent)?;
    ensure!(
        count_line(&first, "WATCHDOG=1") == 0,
        "WATCHDOG=1 before READY=1: {first:?}"
    );
    let window = manager.collect(Duration::from_secs(6))?;
    agent.ensure_running()?;
    let pets = count_line(&window, "WATCHDOG=1");
    ensure!(
        pets >= 3,
        "only {pets} WATCHDOG=1 in 6 s with a 2 s timeout (expected one a second): {window:?}"
    );
    agent.signal(libc::SIGTERM)?;
    manager.expect_line("STOPPING=1", Duration::from_secs(10), &mut agent)?;
    let status = agent.wait_exit(Duration::from_secs(15))?;
    ensure!(status.success(), "exit {status}; log:\n{}", agent.log());
    Ok(())
}

#[test]
fn ready_watchdog_and_stopping_reach_a_path_notify_socket() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = Manager::on_path(&dir.path().join("notify"))?;
    ready_keepalives_and_stopping(&manager, dir.path())
}

#[test]
fn ready_watchdog_and_stopping_reach_an_abstract_notify_socket() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = Manager::abstract_named(&format!("rae-notify-{}", std::process::id()))?;
    ready_keepalives_and_stopping(&manager, dir.path())
}

#[test]
fn a_wedged_registry_task_stops_the_watchdog_keepalives() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = Manager::on_path(&dir.path().join("notify"))?;
    let wedge = dir.path().join("wedge-now");
    let mut agent = Agent::start(dir.path(), &manager, Some(&wedge))?;
    manager.expect_line("READY=1", Duration::from_secs(20), &mut agent)?;
    let healthy = manager.collect(Duration::from_secs(3))?;
    ensure!(
        count_line(&healthy, "WATCHDOG=1") >= 2,
        "no steady WATCHDOG=1 before the wedge: {healthy:?}"
    );
    std::fs::write(&wedge, "")?;
    // The hook fires within a wrapper tick (0.5 s); the registry's last beat
    // then ages past the 2 s limit; one more pet may be in flight.
    let grace = manager.collect(Duration::from_secs(4))?;
    let after = manager.collect(Duration::from_secs(5))?;
    agent.ensure_running()?;
    let log = agent.log();
    ensure!(
        log.contains("the registry task blocks its thread now"),
        "the wedge hook did not fire; log:\n{log}"
    );
    ensure!(
        count_line(&after, "WATCHDOG=1") == 0,
        "WATCHDOG=1 still sent 4-9 s after the registry task wedged: {after:?} \
         (grace: {grace:?}); log:\n{log}"
    );
    // The main loop is alive and withholds the keep-alives on purpose: it
    // says why, in the log and in STATUS=.
    ensure!(
        log.contains("registry task stalled for"),
        "the main loop did not report the stalled registry task; log:\n{log}"
    );
    let statuses: Vec<&String> = grace.iter().chain(&after).collect();
    ensure!(
        statuses
            .iter()
            .any(|m| m.starts_with("STATUS=registry task stalled for")),
        "no STATUS= naming the stalled task: {statuses:?}"
    );
    // Shutdown still works around the wedged task (it is abandoned after
    // the drain deadline).
    agent.signal(libc::SIGTERM)?;
    manager.expect_line("STOPPING=1", Duration::from_secs(10), &mut agent)?;
    agent.wait_exit(Duration::from_secs(20))?;
    Ok(())
}
