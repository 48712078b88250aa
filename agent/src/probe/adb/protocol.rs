//! The ADB smart-socket wire format, pure (no I/O): request encoding, the
//! `OKAY`/`FAIL` status words, 4-hex-digit length prefixes, and
//! [`FrameBuffer`], which cuts length-prefixed frames out of a byte stream.
//!
//! From the AOSP adb docs (`OVERVIEW.TXT`, "Client <-> Server protocol", and
//! `SERVICES.TXT`): a request is a 4-byte ASCII hex length followed by the
//! payload (`000Chost:version`); the server answers `OKAY`, or `FAIL`
//! followed by a 4-hex length and a message. Data replies such as
//! `host:devices-l` and each update of `host:track-devices-l` are again
//! 4-hex length + payload.
//!
//! Invariants: a length prefix is exactly four ASCII hex digits, else it is
//! [`ProtocolError::MalformedLength`]; a frame longer than `max_frame_bytes`
//! is refused from its prefix alone, before any of its payload is buffered.

/// Success status word.
pub const OKAY: &[u8; 4] = b"OKAY";
/// Failure status word; a 4-hex length and a message follow.
pub const FAIL: &[u8; 4] = b"FAIL";
/// The largest payload four hex digits can describe.
pub const MAX_PAYLOAD: usize = 0xffff;

/// A violation of the wire format. Each one ends the connection it came on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed length prefix {0:?} from adb server")]
    MalformedLength(String),
    #[error("frame of {len} bytes exceeds max_frame_bytes {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("reply of more than {max} bytes exceeds max_frame_bytes {max}")]
    ReplyTooLarge { max: usize },
    #[error("unexpected status {0:?} from adb server (expected OKAY or FAIL)")]
    UnexpectedStatus(String),
    #[error("request of {0} bytes is longer than the protocol's {MAX_PAYLOAD}-byte limit")]
    RequestTooLong(usize),
}

/// A status word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Okay,
    Fail,
}

/// `service` as a request: its length in 4 lowercase hex digits, then itself.
pub fn encode_request(service: &str) -> Result<Vec<u8>, ProtocolError> {
    let len = service.len();
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::RequestTooLong(len));
    }
    let mut out = format!("{len:04x}").into_bytes();
    out.extend_from_slice(service.as_bytes());
    Ok(out)
}

/// A 4-hex-digit payload with its length prefix (the server side of framing).
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ProtocolError::RequestTooLong(payload.len()));
    }
    let mut out = format!("{:04x}", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    Ok(out)
}

/// Parses a status word.
pub fn parse_status(word: &[u8]) -> Result<Status, ProtocolError> {
    match word {
        w if w == OKAY => Ok(Status::Okay),
        w if w == FAIL => Ok(Status::Fail),
        other => Err(ProtocolError::UnexpectedStatus(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// Parses a length prefix: exactly four ASCII hex digits (either case).
pub fn parse_length(prefix: &[u8]) -> Result<usize, ProtocolError> {
    let malformed = || ProtocolError::MalformedLength(String::from_utf8_lossy(prefix).into_owned());
    if prefix.len() != 4 || !prefix.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed());
    }
    let text = std::str::from_utf8(prefix).map_err(|_| malformed())?;
    usize::from_str_radix(text, 16).map_err(|_| malformed())
}

/// Parses a length prefix and checks it against `max` bytes.
pub fn parse_checked_length(prefix: &[u8], max: usize) -> Result<usize, ProtocolError> {
    let len = parse_length(prefix)?;
    if len > max {
        return Err(ProtocolError::FrameTooLarge { len, max });
    }
    Ok(len)
}

/// Accumulates bytes of a stream of length-prefixed frames and hands out
/// complete payloads. Holds at most one frame plus one read's worth of bytes.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    max: usize,
}

impl FrameBuffer {
    /// A buffer refusing frames longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameBuffer {
            buf: Vec::new(),
            max,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether bytes of an incomplete frame are waiting.
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete payload, `None` if more bytes are needed. An error
    /// is final: the stream is out of step and must be dropped.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = parse_checked_length(prefix, self.max)?;
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let payload = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_prefixed_with_its_length_in_four_hex_digits() {
        assert_eq!(
            encode_request("host:version").as_deref(),
            Ok(&b"000chost:version"[..])
        );
        assert_eq!(
            encode_request("").as_deref(),
            Ok(&b"0000"[..]),
            "an empty request is just the prefix"
        );
        let long = "x".repeat(MAX_PAYLOAD + 1);
        assert_eq!(
            encode_request(&long),
            Err(ProtocolError::RequestTooLong(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn status_words_are_okay_or_fail_and_nothing_else() {
        assert_eq!(parse_status(b"OKAY"), Ok(Status::Okay));
        assert_eq!(parse_status(b"FAIL"), Ok(Status::Fail));
        let err = parse_status(b"okay").expect_err("case matters");
        assert_eq!(
            err.to_string(),
            "unexpected status \"okay\" from adb server (expected OKAY or FAIL)"
        );
    }

    #[test]
    fn length_prefixes_accept_hex_of_either_case_only() {
        assert_eq!(parse_length(b"0000"), Ok(0));
        assert_eq!(parse_length(b"00ff"), Ok(255));
        assert_eq!(parse_length(b"FFFF"), Ok(65535));
        for bad in [&b"zz12"[..], b"12 4", b"+123", b"-001", b"0x12", b"123"] {
            assert!(parse_length(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_length(b"zz12").map_err(|e| e.to_string()),
            Err("malformed length prefix \"zz12\" from adb server".to_string())
        );
    }

    #[test]
    fn a_frame_longer_than_the_limit_is_refused_from_its_prefix_alone() {
        let mut frames = FrameBuffer::new(1024);
        frames.push(b"ffff");
        let err = frames.next_frame().expect_err("too large");
        assert_eq!(
            err.to_string(),
            "frame of 65535 bytes exceeds max_frame_bytes 1024"
        );
    }

    #[test]
    fn frames_are_cut_out_of_a_stream_split_at_any_byte() {
        let stream = [
            encode_frame(b"A\tdevice\n").expect("frame"),
            encode_frame(b"").expect("frame"),
            encode_frame(b"B\toffline\n").expect("frame"),
        ]
        .concat();
        for split in 0..stream.len() {
            let mut frames = FrameBuffer::new(100);
            let mut got = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                frames.push(chunk);
                while let Some(f) = frames.next_frame().expect("valid") {
                    got.push(f);
                }
            }
            assert_eq!(
                got,
                vec![
                    b"A\tdevice\n".to_vec(),
                    Vec::new(),
                    b"B\toffline\n".to_vec()
                ],
                "split at {split}"
            );
            assert!(!frames.is_partial());
        }
    }

    #[test]
    fn an_incomplete_frame_is_reported_as_partial() {
        let mut frames = FrameBuffer::new(100);
        frames.push(b"000aABC");
        assert_eq!(frames.next_frame(), Ok(None));
        assert!(frames.is_partial());
    }
}
