//! An async client of the adb server's smart socket over a tokio
//! `TcpStream`: one [`Connection`] per request sequence, as adb itself
//! does, plus the two one-shot queries the probe needs
//! ([`list_devices`], [`getprop`]) and [`Tracker`] for the stream of
//! `host:track-devices-l`.
//!
//! Invariants: every wait is bounded (`connect_timeout` for the connect,
//! `request_timeout` for an answer, a one-shot reply or the rest of a
//! started frame); every frame and reply is bounded by `max_frame_bytes`.
//! [`Tracker::fill`] is cancel-safe, so it can sit in a `select!`.

use super::config::AdbSettings;
use super::listing::{parse_device_list, parse_getprop, DeviceEntry};
use super::protocol::{self, FrameBuffer, ProtocolError, Status};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// A failure talking to the adb server. Each one ends its connection.
#[derive(Debug, thiserror::Error)]
pub enum AdbError {
    #[error("adb server {server} unreachable: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("adb server {server} unreachable: no answer to connect within {ms} ms")]
    ConnectTimeout { server: String, ms: u128 },
    #[error("adb server gave no complete answer to {service:?} within {ms} ms")]
    Timeout { service: String, ms: u128 },
    #[error("adb server refused {service:?}: {message}")]
    Refused { service: String, message: String },
    #[error("adb server closed the connection {0}")]
    Closed(String),
    #[error("connection to the adb server failed: {0}")]
    Io(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// A short, stable description of a socket error ("connection refused").
pub fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        ErrorKind::ConnectionAborted => "connection aborted".into(),
        ErrorKind::HostUnreachable => "host unreachable".into(),
        ErrorKind::NetworkUnreachable => "network unreachable".into(),
        ErrorKind::AddrNotAvailable => "address not available".into(),
        ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

fn io_error(e: std::io::Error, during: &str) -> AdbError {
    if e.kind() == ErrorKind::UnexpectedEof {
        AdbError::Closed(during.to_string())
    } else {
        AdbError::Io(describe(&e))
    }
}

/// One connection to the adb server.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    max_frame: usize,
    request_timeout: Duration,
}

impl Connection {
    /// Connects within `connect_timeout`.
    pub async fn open(s: &AdbSettings) -> Result<Connection, AdbError> {
        let stream = match timeout(s.connect_timeout, TcpStream::connect(s.server.as_str())).await {
            Err(_) => {
                return Err(AdbError::ConnectTimeout {
                    server: s.server.clone(),
                    ms: s.connect_timeout.as_millis(),
                })
            }
            Ok(Err(e)) => {
                return Err(AdbError::Unreachable {
                    server: s.server.clone(),
                    reason: describe(&e),
                })
            }
            Ok(Ok(stream)) => stream,
        };
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            max_frame: s.max_frame_bytes,
            request_timeout: s.request_timeout,
        })
    }

    /// Sends a request and reads its status; `FAIL` becomes [`AdbError::Refused`].
    pub async fn request(&mut self, service: &str) -> Result<(), AdbError> {
        let bytes = protocol::encode_request(service)?;
        let during = format!("before answering {service:?}");
        bounded(self.request_timeout, service, async {
            self.stream
                .write_all(&bytes)
                .await
                .map_err(|e| io_error(e, &during))?;
            let mut word = [0u8; 4];
            self.stream
                .read_exact(&mut word)
                .await
                .map_err(|e| io_error(e, &during))?;
            match protocol::parse_status(&word)? {
                Status::Okay => Ok(()),
                Status::Fail => {
                    let message = self.frame(&during).await?;
                    Err(AdbError::Refused {
                        service: service.to_string(),
                        message: String::from_utf8_lossy(&message).into_owned(),
                    })
                }
            }
        })
        .await
    }

    async fn frame(&mut self, during: &str) -> Result<Vec<u8>, AdbError> {
        let mut prefix = [0u8; 4];
        self.stream
            .read_exact(&mut prefix)
            .await
            .map_err(|e| io_error(e, during))?;
        let len = protocol::parse_checked_length(&prefix, self.max_frame)?;
        let mut payload = vec![0u8; len];
        self.stream
            .read_exact(&mut payload)
            .await
            .map_err(|e| io_error(e, during))?;
        Ok(payload)
    }

    /// Reads one length-prefixed reply to `service`.
    pub async fn read_frame(&mut self, service: &str) -> Result<Vec<u8>, AdbError> {
        let during = format!("in the middle of the reply to {service:?}");
        bounded(self.request_timeout, service, self.frame(&during)).await
    }

    /// Reads a raw reply to `service` until the server closes the connection.
    pub async fn read_to_end(&mut self, service: &str) -> Result<Vec<u8>, AdbError> {
        let max = self.max_frame;
        bounded(self.request_timeout, service, async {
            let mut out = Vec::new();
            let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
            (&mut self.stream)
                .take(limit)
                .read_to_end(&mut out)
                .await
                .map_err(|e| io_error(e, "in the middle of a reply"))?;
            if out.len() > max {
                return Err(ProtocolError::ReplyTooLarge { max }.into());
            }
            Ok(out)
        })
        .await
    }

    /// Turns the connection into a stream of frames (after a tracking request).
    pub fn into_tracker(self) -> Tracker {
        Tracker {
            frames: FrameBuffer::new(self.max_frame),
            partial_since: None,
            conn: self,
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    service: &str,
    f: impl Future<Output = Result<T, AdbError>>,
) -> Result<T, AdbError> {
    timeout(limit, f).await.unwrap_or_else(|_| {
        Err(AdbError::Timeout {
            service: service.to_string(),
            ms: limit.as_millis(),
        })
    })
}

/// The frames of a streaming reply such as `host:track-devices-l`.
#[derive(Debug)]
pub struct Tracker {
    conn: Connection,
    frames: FrameBuffer,
    partial_since: Option<Instant>,
}

impl Tracker {
    /// Reads whatever the server sent next. Cancel-safe: if the future is
    /// dropped before it completes, no byte is lost.
    pub async fn fill(&mut self) -> Result<(), AdbError> {
        let mut chunk = [0u8; 8192];
        let n = self
            .conn
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| io_error(e, "while tracking devices"))?;
        if n == 0 {
            return Err(AdbError::Closed("while tracking devices".into()));
        }
        self.frames.push(&chunk[..n]);
        if self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
        Ok(())
    }

    /// The next complete frame as text, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<String>, AdbError> {
        let frame = self.frames.next_frame()?;
        if frame.is_some() || !self.frames.is_partial() {
            self.partial_since = self.frames.is_partial().then(Instant::now);
        }
        Ok(frame.map(|f| String::from_utf8_lossy(&f).into_owned()))
    }

    /// When an incomplete frame must be complete, if one is buffered.
    pub fn deadline(&self) -> Option<Instant> {
        self.partial_since.map(|t| t + self.conn.request_timeout)
    }

    /// The error for a frame that did not complete in time.
    pub fn timed_out(&self) -> AdbError {
        AdbError::Timeout {
            service: super::TRACK_SERVICE.into(),
            ms: self.conn.request_timeout.as_millis(),
        }
    }
}

/// `host:devices-l`: the server's device list, once.
pub async fn list_devices(s: &AdbSettings) -> Result<Vec<DeviceEntry>, AdbError> {
    let service = "host:devices-l";
    let mut conn = Connection::open(s).await?;
    conn.request(service).await?;
    let list = conn.read_frame(service).await?;
    Ok(parse_device_list(&String::from_utf8_lossy(&list)))
}

/// `host:transport:<serial>` then `shell:getprop`: every property of a device.
pub async fn getprop(s: &AdbSettings, serial: &str) -> Result<BTreeMap<String, String>, AdbError> {
    let mut conn = Connection::open(s).await?;
    conn.request(&format!("host:transport:{serial}")).await?;
    let service = "shell:getprop";
    conn.request(service).await?;
    let out = conn.read_to_end(service).await?;
    Ok(parse_getprop(&String::from_utf8_lossy(&out)))
}

#[cfg(test)]
mod tests;
