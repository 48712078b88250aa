//! The blocking probe of one port: lock, open, then for each baud rate of
//! the profile send the request and read until the `expect` regex matches.
//! Runs on a blocking thread (`spawn_blocking`); never call it from async code.
//!
//! Invariants: every call returns an [`Outcome`] within about
//! `timeout × number of baud rates` (each read and write waits at most
//! until the attempt's deadline), or within [`QUIET`] of being cancelled;
//! it never holds the port after returning,
//! and releases our UUCP lock only after the port is closed (and its
//! settings restored, see [`super::tty`]). Reads stop at `max_read_bytes`.
//! The regex runs on the lossy UTF-8 text of complete lines (up to the last
//! `\r` or `\n`), and on the whole text once the device pauses for
//! [`QUIET`] or the attempt ends, so a prompt without a newline still
//! matches but a half-received line does not yield truncated captures.

use super::lock::{self, Acquired, Holder};
use super::profile::{FlowControl, Parity, Profile};
use super::tty::{OpenError, OpenPort};
use log::debug;
use rae_protocol::{AttrValue, Attrs};
use serialport::{ClearBuffer, SerialPort, TTYPort};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A pause after an unterminated line before the whole text is matched.
pub const QUIET: Duration = Duration::from_millis(100);
const CHUNK: usize = 4096;

/// The result of probing one port.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The device answered at `baud`; `attrs` holds the captures and
    /// `serial.banner`.
    Answered { baud: u32, attrs: Attrs },
    /// The port exists but did not answer as expected.
    Unresponsive { error: String },
    /// Not probed because someone else uses the port: no observation change.
    Skipped { reason: String },
    /// The node has no device behind it: not a port at the moment.
    NoDevice { reason: String },
}

/// Probes `path` with `profile`, honouring UUCP locks in `lock_dirs`.
/// Setting `cancel` ends the probe within 100 ms (agent shutdown); the
/// port is still restored and unlocked.
pub fn probe(path: &str, profile: &Profile, lock_dirs: &[PathBuf], cancel: &AtomicBool) -> Outcome {
    let lock = match lock::acquire(lock_dirs, Path::new(path)) {
        Ok(Acquired::Locked(lock)) => {
            debug!(tty:% = path; "serial probe {path}: locked with {}", lock.path().display());
            Some(lock)
        }
        Ok(Acquired::Held { path: file, holder }) => {
            let by = match holder {
                Holder::Pid(pid) => format!("pid {pid}"),
                Holder::Unknown => "an unreadable lock".to_string(),
            };
            return Outcome::Skipped {
                reason: format!("locked by {by} ({})", file.display()),
            };
        }
        Ok(Acquired::Unlocked { reason }) => {
            debug!(tty:% = path; "serial probe {path}: probing without a lock file: {reason}");
            None
        }
        Err(e) => {
            return Outcome::Skipped {
                reason: format!("cannot check its lock: {e}"),
            }
        }
    };
    let outcome = match OpenPort::open(path) {
        Ok(port) => probe_open(path, port, profile, cancel),
        Err(OpenError::Busy(reason)) => Outcome::Skipped { reason },
        Err(OpenError::NoDevice(e)) => Outcome::NoDevice {
            reason: format!("cannot open: {e}"),
        },
        Err(e) => Outcome::Unresponsive {
            error: e.to_string(),
        },
    };
    drop(lock);
    outcome
}

/// Walks the baud rates; takes the port by value so it is closed on return.
fn probe_open(path: &str, mut port: OpenPort, profile: &Profile, cancel: &AtomicBool) -> Outcome {
    let mut errors = Vec::new();
    for &baud in &profile.baud_rates {
        if cancel.load(Ordering::Relaxed) {
            errors.push("probe cancelled".to_string());
            break;
        }
        match attempt(&mut port.tty, profile, baud, cancel) {
            Ok(attrs) => return Outcome::Answered { baud, attrs },
            Err(Failure { message, received }) => {
                debug!(
                    tty:% = path;
                    "serial probe {path}: {message}; received {} bytes: {:?}",
                    received.len(),
                    excerpt(&received)
                );
                errors.push(message);
            }
        }
    }
    Outcome::Unresponsive {
        error: errors.join("; "),
    }
}

struct Failure {
    message: String,
    received: Vec<u8>,
}

fn fail(message: String, received: Vec<u8>) -> Failure {
    Failure { message, received }
}

/// One baud rate: configure, discard stale input, send, read the answer.
fn attempt(
    tty: &mut TTYPort,
    p: &Profile,
    baud: u32,
    cancel: &AtomicBool,
) -> Result<Attrs, Failure> {
    configure(tty, p, baud)
        .map_err(|e| fail(format!("cannot configure {baud} baud: {e}"), Vec::new()))?;
    let _ = tty.clear(ClearBuffer::Input);
    let deadline = Instant::now() + p.timeout;
    let ms = p.timeout.as_millis();
    send(tty, &p.send, deadline).map_err(|e| {
        let msg = if e.kind() == io::ErrorKind::TimedOut {
            format!("could not send within {ms} ms at {baud} baud (flow control?)")
        } else {
            format!("cannot send at {baud} baud: {e}")
        };
        fail(msg, Vec::new())
    })?;
    let (buf, end) = match read_answer(tty, p, deadline, cancel) {
        Ok(attrs) => return Ok(attrs),
        Err(unmatched) => unmatched,
    };
    let re = p.expect.as_str();
    let msg = match end {
        End::Deadline if buf.is_empty() => format!("no response within {ms} ms at {baud} baud"),
        End::Deadline => format!("no match for /{re}/ within {ms} ms at {baud} baud"),
        End::Limit => format!(
            "no match for /{re}/ in {} bytes (read limit) at {baud} baud",
            p.max_read_bytes
        ),
        End::Cancelled => "probe cancelled".to_string(),
        End::Failed(e) => format!("read failed at {baud} baud: {e}"),
    };
    Err(fail(msg, buf))
}

/// Why reading stopped without a match.
enum End {
    Deadline,
    Limit,
    Cancelled,
    Failed(io::Error),
}

/// Reads until the regex matches, giving its attributes; else what was
/// read and why reading stopped.
fn read_answer(
    tty: &mut TTYPort,
    p: &Profile,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<Attrs, (Vec<u8>, End)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut unterminated = false;
    let end = loop {
        let now = Instant::now();
        if now >= deadline {
            break End::Deadline;
        }
        if cancel.load(Ordering::Relaxed) {
            break End::Cancelled;
        }
        // Wake at least every QUIET: to match an unterminated tail, and to
        // notice `cancel`.
        let _ = tty.set_timeout((deadline - now).min(QUIET));
        let room = (p.max_read_bytes - buf.len()).min(CHUNK);
        match tty.read(&mut chunk[..room]) {
            Ok(0) => break End::Failed(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if chunk[..n].iter().any(|b| is_eol(*b)) {
                    let last = buf.iter().rposition(|b| is_eol(*b)).unwrap_or(0);
                    if let Some(attrs) = matched(p, &buf[..=last]) {
                        return Ok(attrs);
                    }
                }
                unterminated = !buf.last().is_some_and(|b| is_eol(*b));
                if buf.len() >= p.max_read_bytes {
                    break End::Limit;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if std::mem::take(&mut unterminated) {
                    if let Some(attrs) = matched(p, &buf) {
                        return Ok(attrs);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => break End::Failed(e),
        }
    };
    matched(p, &buf).ok_or((buf, end))
}

fn is_eol(b: u8) -> bool {
    b == b'\n' || b == b'\r'
}

fn configure(tty: &mut TTYPort, p: &Profile, baud: u32) -> serialport::Result<()> {
    tty.set_baud_rate(baud)?;
    tty.set_data_bits(match p.data_bits {
        5 => serialport::DataBits::Five,
        6 => serialport::DataBits::Six,
        7 => serialport::DataBits::Seven,
        _ => serialport::DataBits::Eight,
    })?;
    tty.set_parity(match p.parity {
        Parity::None => serialport::Parity::None,
        Parity::Odd => serialport::Parity::Odd,
        Parity::Even => serialport::Parity::Even,
    })?;
    tty.set_stop_bits(match p.stop_bits {
        2 => serialport::StopBits::Two,
        _ => serialport::StopBits::One,
    })?;
    tty.set_flow_control(match p.flow_control {
        FlowControl::None => serialport::FlowControl::None,
        FlowControl::Software => serialport::FlowControl::Software,
        FlowControl::Hardware => serialport::FlowControl::Hardware,
    })
}

/// Writes all of `bytes` before `deadline`.
fn send(tty: &mut TTYPort, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let _ = tty.set_timeout(left);
        match tty.write(&bytes[sent..]) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The attributes of a match of the profile's regex in `bytes`, if any.
pub fn matched(profile: &Profile, bytes: &[u8]) -> Option<Attrs> {
    let text = String::from_utf8_lossy(bytes);
    let caps = profile.expect.captures(&text)?;
    let whole = caps.get(0)?;
    let mut attrs = Attrs::new();
    for (group, attr) in &profile.captures {
        if let Some(m) = caps.name(group) {
            attrs.insert(attr.clone(), AttrValue::Text(m.as_str().to_string()));
        }
    }
    let banner = banner(&text, whole.start(), whole.end());
    attrs.insert("serial.banner".into(), AttrValue::Text(banner));
    Some(attrs)
}

/// The line(s) holding `text[start..end]`, without line ends.
fn banner(text: &str, start: usize, end: usize) -> String {
    let is_eol = |c: char| c == '\n' || c == '\r';
    let from = text[..start].rfind(is_eol).map_or(0, |i| i + 1);
    let to = if text[start..end].ends_with(is_eol) {
        end
    } else {
        text[end..].find(is_eol).map_or(text.len(), |i| end + i)
    };
    text[from..to].trim().to_string()
}

/// The first bytes, for logs.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned()
}

#[cfg(test)]
#[path = "port_tests.rs"]
mod tests;
