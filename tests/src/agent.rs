//! Run `rae-agent` under test and read back what it journaled.
//!
//! * [`AgentConfig`]: a minimal TOML config (temp `state_dir`, `rae_id`,
//!   `detach_grace_secs`, udev on) as [`rae_agent::config::Settings`] for an
//!   in-process agent, or written to a file for the binary.
//! * [`agent_binary`]: the `rae-agent` binary of the current cargo profile
//!   (`target/<profile>/rae-agent`, next to the test executable's `deps/`).
//!   `CARGO_BIN_EXE_rae-agent` only exists for the agent crate's own tests,
//!   so this crate cannot have cargo build it: a missing or stale binary is a
//!   test failure naming [`BUILD_HINT`] (`scripts/test` builds it first).
//! * [`AgentProcess`] (in `agent/process.rs`): `rae-agent --config X run` as
//!   a child process (stderr to a log file, never to our pipes, which the
//!   umockdev re-exec parent reads to EOF; SIGKILLed on drop). [`cli`] runs
//!   one CLI command with a timeout.
//! * [`read_events`] (in `agent/journal.rs`): every row of the journal's
//!   `events` table, read-only, with [`EventRow::kind`] decoding the stored
//!   wire envelope; [`check_sessions`] checks the per-session `seq`
//!   invariants, [`assert_session`] compares a device's events exactly.
//! * [`wait_until`] / [`wait_until_async`]: polling with a deadline.
//!
//! Child processes inherit this process's environment: under
//! `umockdev-wrapper` that includes `LD_PRELOAD` (the umockdev preload) and,
//! while a [`crate::umockdev::Testbed`] exists, `$UMOCKDEV_DIR`, so the child's
//! libudev sees the testbed. A child's monitor socket is bound at
//! `$UMOCKDEV_DIR/event<fd>`, and the testbed sends each uevent to every
//! `event*` socket there, so children receive the testbed's uevents too.

mod journal;
mod process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

pub use journal::{
    assert_continues, assert_session, attached, changed, check_sessions, detached, events_of,
    kinds, read_device_events, read_events, text_attrs, EventRow,
};
pub use process::{cli, devices_json, AgentProcess, CliOutput};

/// The device id the registry gives a device identified by its USB serial.
pub fn device_id_of_serial(serial: &str) -> String {
    rae_agent::registry::identity::device_id_for(&format!("serial:{serial}"))
}

/// What to run when the agent binary is missing or older than its sources.
pub const BUILD_HINT: &str = "cargo build -p rae-agent";
/// Pause between two polls of [`wait_until`] / [`wait_until_async`].
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The settings the tests vary; everything else is the agent's default.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub rae_id: String,
    pub state_dir: PathBuf,
    pub detach_grace_secs: u64,
}

impl AgentConfig {
    /// `rae_id = "rae-test"`, a 1 s detach grace, udev on, debug logging.
    pub fn new(state_dir: &Path) -> Self {
        AgentConfig {
            rae_id: "rae-test".into(),
            state_dir: state_dir.to_path_buf(),
            detach_grace_secs: 1,
        }
    }

    pub fn toml(&self) -> String {
        format!(
            "rae_id = {:?}\nstate_dir = {:?}\nlog_level = \"debug\"\n\n\
             [registry]\ndetach_grace_secs = {}\n\n[udev]\nenabled = true\n\n[adb]\nenabled = false\n",
            self.rae_id,
            self.state_dir.display().to_string(),
            self.detach_grace_secs
        )
    }

    /// The validated settings, as the daemon would load them.
    pub fn settings(&self) -> Result<rae_agent::config::Settings> {
        Ok(rae_agent::config::Settings::from_toml(
            &self.toml(),
            &self.state_dir,
        )?)
    }

    /// Writes the config to `path` and returns `path`.
    pub fn write(&self, path: &Path) -> Result<PathBuf> {
        std::fs::write(path, self.toml()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("journal.db")
    }
}

/// `target/<profile>/rae-agent`, checked by [`check_binary`].
pub fn agent_binary() -> Result<PathBuf> {
    agent_binary_with_hint(BUILD_HINT)
}

/// [`agent_binary`], naming `hint` (the build command) in its errors; the
/// benches use it with `cargo build --release -p rae-agent`.
pub fn agent_binary_with_hint(hint: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot determine the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} is not in target/<profile>/deps", exe.display()))?;
    let binary = profile_dir.join("rae-agent");
    check_binary_with_hint(&binary, hint)?;
    Ok(binary)
}

/// Fails, naming [`BUILD_HINT`], if `binary` does not exist or is older than
/// a source file listed in cargo's dep-info file beside it (`<binary>.d`).
pub fn check_binary(binary: &Path) -> Result<()> {
    check_binary_with_hint(binary, BUILD_HINT)
}

/// [`check_binary`] naming `hint` as the build command.
pub fn check_binary_with_hint(binary: &Path, hint: &str) -> Result<()> {
    ensure!(
        binary.is_file(),
        "{} does not exist; the real daemon is run here, build it first with `{hint}`",
        binary.display()
    );
    let built = std::fs::metadata(binary)?.modified()?;
    let dep_info = std::fs::read_to_string(binary.with_extension("d")).unwrap_or_default();
    let sources = dep_info.split_once(": ").map_or("", |(_, deps)| deps);
    for source in sources.split_whitespace().map(Path::new) {
        let newer = std::fs::metadata(source)
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified > built);
        ensure!(
            !newer,
            "{} is older than {}; rebuild it with `{hint}`",
            binary.display(),
            source.display()
        );
    }
    Ok(())
}

/// Polls `poll` every [`POLL_INTERVAL`] until it returns `Some`, failing after
/// `timeout`. An error from `poll` fails at once.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut poll: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = poll().with_context(|| format!("while waiting for {what}"))? {
            return Ok(value);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// [`wait_until`] for a test that runs the agent on its own tokio runtime:
/// sleeps with tokio, so the agent's tasks run in between.
pub async fn wait_until_async<T>(
    what: &str,
    timeout: Duration,
    mut poll: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = poll().with_context(|| format!("while waiting for {what}"))? {
            return Ok(value);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn a_missing_or_stale_binary_names_the_build_command() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (binary, source) = (dir.path().join("rae-agent"), dir.path().join("main.rs"));
        let err = check_binary(&binary).expect_err("missing binary");
        assert!(format!("{err:#}").contains(BUILD_HINT), "{err:#}");

        std::fs::write(&source, "fn main() {}")?;
        std::fs::write(&binary, "")?;
        let dep_info = format!("{}: {}\n", binary.display(), source.display());
        std::fs::write(binary.with_extension("d"), dep_info)?;
        check_binary(&binary)?;

        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&binary)?
            .set_modified(an_hour_ago)?;
        let err = check_binary(&binary).expect_err("stale binary");
        assert!(format!("{err:#}").contains(BUILD_HINT), "{err:#}");
        Ok(())
    }
}
