//! The agent binary as a child process: the daemon and one-shot CLI commands.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The daemon, `rae-agent --config <config> run`, as a child process.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    /// Its stderr (appended to across restarts).
    pub log: PathBuf,
}

impl AgentProcess {
    pub fn start(binary: &Path, config: &Path, log: &Path) -> Result<Self> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} run", binary.display()))?;
        Ok(AgentProcess {
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the end of the log) if the daemon has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("rae-agent exited ({status}); log:\n{}", self.log_tail()),
        }
    }

    /// Sends `signal` if the daemon has not been reaped yet (so never to a
    /// reused pid).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        crate::signal_child(&mut self.child, signal).context("signal rae-agent")
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap (bounded).
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        self.wait_timeout(Duration::from_secs(5))?
            .context("rae-agent still running 5 s after SIGKILL")
    }

    /// The last 80 lines of the log.
    /// SIGTERM; the agent must exit 0 within 10 s. Returns how long it took.
    pub fn stop_gracefully(mut self) -> Result<Duration> {
        let stopping = Instant::now();
        self.signal(libc::SIGTERM)?;
        let status = self
            .wait_timeout(Duration::from_secs(10))?
            .context("rae-agent still running 10 s after SIGTERM")?;
        ensure!(
            status.success(),
            "rae-agent exited with {status} after SIGTERM; log:\n{}",
            self.log_tail()
        );
        Ok(stopping.elapsed())
    }

    pub fn log_tail(&self) -> String {
        crate::log_tail(&self.log, 80)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.wait_timeout(Duration::from_secs(5));
        }
    }
}

/// What a CLI command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `rae-agent --config <config> <args…>`, killing it after `timeout`.
pub fn cli(binary: &Path, config: &Path, args: &[&str], timeout: Duration) -> Result<CliOutput> {
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting rae-agent {args:?}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().context("stdout is piped")?));
    let stderr = drain(Box::new(child.stderr.take().context("stderr is piped")?));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("rae-agent {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(CliOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// `rae-agent devices --json`, or `None` while there is no journal yet (exit 69).
pub fn devices_json(binary: &Path, config: &Path) -> Result<Option<Vec<serde_json::Value>>> {
    let out = cli(
        binary,
        config,
        &["devices", "--json"],
        Duration::from_secs(10),
    )?;
    if out.status.code() == Some(rae_agent::cli::EXIT_UNAVAILABLE) {
        return Ok(None);
    }
    ensure!(
        out.status.success(),
        "devices --json failed ({}): {}",
        out.status,
        out.stderr
    );
    Ok(Some(
        serde_json::from_str(&out.stdout).context("devices --json output")?,
    ))
}
