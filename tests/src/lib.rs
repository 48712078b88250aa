//! Test support for the rae workspace.
//!
//! This crate holds cross-crate integration tests (in `tests/tests/`) and the
//! harnesses they share. It is `publish = false` and is only ever built by
//! `cargo test`.
//!
//! * [`umockdev`] — drive the *real* libudev (the `udev` crate enumerator and the
//!   `tokio-udev` async monitor) against an in-process umockdev testbed, with
//!   hand-written device fixtures under `tests/fixtures/udev/`.
//! * [`agent`] — run `rae-agent` (in-process or the real binary as a child
//!   process) and read back its journal.
//! * [`partition`] — a TCP proxy that cuts open connections like a network
//!   partition (in front of the real PostgreSQL).

pub mod agent;
pub mod fake_adb;
pub mod mosquitto;
pub mod mqtt_sub;
pub mod partition;
pub mod postgres;
pub mod tansu;
pub mod tls_certs;
pub mod umockdev;

/// Sends `signal` to `child` unless it has exited (it is then reaped
/// here, so the signal can never reach a reused pid). The harnesses' stop,
/// freeze and kill signals go through it.
pub fn signal_child(child: &mut std::process::Child, signal: libc::c_int) -> anyhow::Result<()> {
    anyhow::ensure!(
        child.try_wait()?.is_none(),
        "process {} already exited",
        child.id()
    );
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own
    // child, checked above not to have been reaped.
    let rc = unsafe { libc::kill(pid, signal) };
    anyhow::ensure!(
        rc == 0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The last `n` lines of a log file (empty if it cannot be read); every
/// harness shows one when a test fails.
pub fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
