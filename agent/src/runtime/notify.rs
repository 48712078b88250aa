//! The sd_notify protocol, spoken directly: one datagram of `KEY=VALUE`
//! lines to the unix socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract socket written `@name`). See `sd_notify(3)`.
//!
//! Invariants: without `$NOTIFY_SOCKET` (not started by systemd, or not
//! `Type=notify`) every send is a silent no-op. A failing send is reported
//! to the caller and never panics; the daemon keeps running without
//! systemd's supervision rather than dying for it. The watchdog interval
//! comes from `$WATCHDOG_USEC`, and only applies when `$WATCHDOG_PID` is
//! unset or names this process (the variables may be inherited by a child
//! they were not meant for).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// A state change or keep-alive for the service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Startup finished: the journal is open and every task is running.
    Ready { status: String },
    /// Shutdown began.
    Stopping,
    /// Keep-alive: every supervised task made progress recently.
    Watchdog,
    /// Free-form status shown by `systemctl status`.
    Status(String),
}

impl Message {
    /// The datagram payload: newline-separated `KEY=VALUE` assignments.
    pub fn payload(&self) -> String {
        match self {
            Message::Ready { status } => format!("READY=1\nSTATUS={}", one_line(status)),
            Message::Stopping => "STOPPING=1".to_string(),
            Message::Watchdog => "WATCHDOG=1".to_string(),
            Message::Status(status) => format!("STATUS={}", one_line(status)),
        }
    }
}

/// A value must not contain a newline: it would start a new assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// What `$NOTIFY_SOCKET` could not be turned into.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET is empty")]
    Empty,
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract socket (@name)")]
    Unsupported(String),
    #[error("NOTIFY_SOCKET={value:?}: {source}")]
    Address { value: String, source: io::Error },
    #[error("sending {payload:?} to NOTIFY_SOCKET: {source}")]
    Send { payload: String, source: io::Error },
}

/// Parses `$NOTIFY_SOCKET`: `/abs/path` or `@abstract-name`.
pub fn parse_notify_socket(value: &OsStr) -> Result<SocketAddr, NotifyError> {
    let lossy = || value.to_string_lossy().into_owned();
    let bytes = value.as_bytes();
    let address = |source| NotifyError::Address {
        value: lossy(),
        source,
    };
    match bytes.first() {
        None => Err(NotifyError::Empty),
        Some(b'/') => SocketAddr::from_pathname(Path::new(value)).map_err(address),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..]).map_err(address)
        }
        Some(_) => Err(NotifyError::Unsupported(lossy())),
    }
}

/// The watchdog interval systemd expects keep-alives within, from the values
/// of `$WATCHDOG_USEC` and `$WATCHDOG_PID`; `None` when there is no
/// watchdog for this process (unset, zero, unparsable, or another pid's).
pub fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The sending end; [`Notifier::disabled`] when not under systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A
    /// malformed `$NOTIFY_SOCKET` is an error (the caller logs it and goes
    /// on without notifications).
    pub fn from_env() -> Result<Self, NotifyError> {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Self::disabled());
        };
        let addr = parse_notify_socket(&value)?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Address {
            value: value.to_string_lossy().into_owned(),
            source,
        })?;
        let watchdog = watchdog_timeout(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Ok(Notifier {
            target: Some((socket, addr)),
            watchdog,
        })
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout, if systemd supervises this process with one.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled())
    }

    /// Sends `message`; a no-op when disabled.
    pub fn send(&self, message: &Message) -> Result<(), NotifyError> {
        let Some((socket, addr)) = &self.target else {
            return Ok(());
        };
        let payload = message.payload();
        socket
            .send_to_addr(payload.as_bytes(), addr)
            .map(drop)
            .map_err(|source| NotifyError::Send { payload, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn messages_are_newline_separated_assignments() {
        assert_eq!(Message::Stopping.payload(), "STOPPING=1");
        assert_eq!(Message::Watchdog.payload(), "WATCHDOG=1");
        assert_eq!(
            Message::Ready {
                status: "running\n3 tasks".into()
            }
            .payload(),
            "READY=1\nSTATUS=running 3 tasks"
        );
        assert_eq!(
            Message::Status("stalled".into()).payload(),
            "STATUS=stalled"
        );
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        let path = parse_notify_socket(OsStr::new("/run/systemd/notify")).expect("path");
        assert_eq!(path.as_pathname(), Some(Path::new("/run/systemd/notify")));
        let abs = parse_notify_socket(OsStr::new("@sd-notify/x")).expect("abstract");
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(abs.as_abstract_name(), Some(&b"sd-notify/x"[..]));
        assert!(matches!(
            parse_notify_socket(OsStr::new("")),
            Err(NotifyError::Empty)
        ));
        let err = parse_notify_socket(OsStr::new("relative/sock")).expect_err("relative");
        assert!(err.to_string().contains("relative/sock"), "{err}");
        let err = parse_notify_socket(OsStr::new("vsock:2:1234")).expect_err("vsock");
        assert!(matches!(err, NotifyError::Unsupported(_)), "{err}");
        let long = OsString::from(format!("/{}", "x".repeat(200)));
        assert!(matches!(
            parse_notify_socket(&long),
            Err(NotifyError::Address { .. })
        ));
    }

    #[test]
    fn watchdog_applies_only_to_the_named_pid() {
        let two_s = Some(Duration::from_secs(2));
        assert_eq!(watchdog_timeout(Some("2000000"), None, 7), two_s);
        assert_eq!(watchdog_timeout(Some("2000000"), Some("7"), 7), two_s);
        assert_eq!(watchdog_timeout(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout(Some("2000000"), Some("x"), 7), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout(Some("soon"), None, 7), None);
        assert_eq!(watchdog_timeout(None, Some("7"), 7), None);
    }

    #[test]
    fn a_sent_message_arrives_as_one_datagram_on_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().expect("socket"),
                parse_notify_socket(path.as_os_str()).expect("addr"),
            )),
            watchdog: None,
        };
        notifier.send(&Message::Watchdog).expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn a_sent_message_arrives_on_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("rae-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().expect("socket"),
                parse_notify_socket(OsStr::new(&format!("@{name}"))).expect("addr"),
            )),
            watchdog: Some(Duration::from_secs(1)),
        };
        assert_eq!(notifier.watchdog(), Some(Duration::from_secs(1)));
        notifier.send(&Message::Stopping).expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let n = Notifier::disabled();
        assert!(!n.enabled());
        assert_eq!(n.watchdog(), None);
        n.send(&Message::Watchdog).expect("no-op");
    }

    #[test]
    fn a_send_to_a_socket_nobody_binds_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gone");
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().expect("socket"),
                parse_notify_socket(path.as_os_str()).expect("addr"),
            )),
            watchdog: None,
        };
        let err = notifier.send(&Message::Watchdog).expect_err("no listener");
        assert!(err.to_string().contains("WATCHDOG=1"), "{err}");
    }
}
