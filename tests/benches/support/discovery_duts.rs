//! The discovery bench's simulated serial DUTs: real kernel PTY pairs,
//! a thread on each master answering every request line.

use anyhow::{ensure, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A simulated device behind a PTY pair: a thread on the master answers
/// every request line (up to `\n`) with `reply`.
pub struct Dut {
    /// The slave, `/dev/pts/N`: the port the probe opens.
    pub path: String,
    /// Our own slave fd, open for the whole run (no hangup on probe close).
    _slave: OwnedFd,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dut {
    pub fn start(reply: Vec<u8>) -> Result<Dut> {
        let (mut m, mut s): (libc::c_int, libc::c_int) = (-1, -1);
        // SAFETY: openpty writes two fds; null name/termios/winsize are allowed.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        ensure!(r == 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both fds were just opened and are owned by nobody else.
        let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: the buffer is 128 bytes long.
        let r = unsafe { libc::ttyname_r(slave.as_raw_fd(), name.as_mut_ptr(), name.len()) };
        ensure!(
            r == 0,
            "ttyname_r: {}",
            std::io::Error::from_raw_os_error(r)
        );
        // SAFETY: ttyname_r wrote a NUL-terminated string.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        // Raw mode (no echo, no line discipline), as a UART console's tty
        // would be after a terminal program; the probe restores this.
        let mut t = std::mem::MaybeUninit::<libc::termios>::zeroed();
        // SAFETY: tcgetattr fills the struct; cfmakeraw edits it; tcsetattr
        // reads it. The fd is a valid tty.
        unsafe {
            ensure!(
                libc::tcgetattr(slave.as_raw_fd(), t.as_mut_ptr()) == 0,
                "tcgetattr"
            );
            let mut t = t.assume_init();
            libc::cfmakeraw(&mut t);
            ensure!(
                libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t) == 0,
                "tcsetattr"
            );
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        }
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(&master, &reply, &r, &st));
        Ok(Dut {
            path,
            _slave: slave,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Dut {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(master: &OwnedFd, reply: &[u8], requests: &AtomicUsize, stop: &AtomicBool) {
    let fd = master.as_raw_fd();
    let mut pending = Vec::new();
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::SeqCst) {
        if !super::wait_readable(fd, Duration::from_millis(200)) {
            continue;
        }
        // SAFETY: reading into a local buffer; the fd is non-blocking.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
            // EIO while no slave is open cannot happen (we hold one); back
            // off on anything unexpected rather than spin.
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            pending.drain(..=end);
            requests.fetch_add(1, Ordering::SeqCst);
            write_all(fd, reply);
        }
    }
}

fn write_all(fd: RawFd, mut bytes: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !bytes.is_empty() && Instant::now() < deadline {
        // SAFETY: writing from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => bytes = &bytes[n..],
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}
