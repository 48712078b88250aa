//! A device under test behind a real kernel PTY pair: the slave's path
//! (`/dev/pts/N`) is the port the probe opens; a thread on the master side
//! reads each request line (up to `\n`), notes the baud rate the slave is
//! set to at that moment (`TCGETS2` on the master reports the slave's
//! termios) and answers according to its [`Behaviour`].
//!
//! The test keeps its own slave fd open for the whole test, so the probe's
//! close never hangs up the pair and the test can compare the termios.
//! Dropping a [`Dut`] stops its thread, then closes both ends.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the DUT does with a request.
pub enum Behaviour {
    /// Answers `reply` while `answering` is set, only at `only_at` baud if given.
    Answer {
        reply: Vec<u8>,
        only_at: Option<u32>,
    },
    /// Never answers.
    Silent,
    /// After the first request, writes `chunk` again and again until dropped.
    Stream(Vec<u8>),
}

/// One request the DUT received.
#[derive(Debug, Clone)]
pub struct Request {
    pub bytes: Vec<u8>,
    pub baud: u32,
    /// What the hook returned when the request arrived.
    pub note: String,
}

type Hook = Box<dyn FnMut() -> String + Send>;

pub struct Dut {
    pub path: String,
    /// The test's own slave fd, open for the whole test.
    pub slave: OwnedFd,
    /// Clear to make an `Answer` DUT go silent.
    pub answering: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    master: Option<OwnedFd>,
}

/// A PTY pair; `raw` switches the slave to raw 9600 baud first (else it
/// keeps the kernel's default cooked settings).
pub fn pty(raw: bool) -> (OwnedFd, OwnedFd, String) {
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
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is 128 bytes long.
    let r = unsafe { libc::ttyname_r(slave.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    assert_eq!(r, 0, "ttyname_r");
    // SAFETY: ttyname_r wrote a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    if raw {
        let mut t = termios(&slave);
        // SAFETY: `t` is a valid termios.
        unsafe {
            libc::cfmakeraw(&mut t);
            libc::cfsetspeed(&mut t, libc::B9600);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
    // SAFETY: plain fcntl on an open fd.
    unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    (master, slave, path)
}

/// `tcgetattr` of an fd.
pub fn termios(fd: &OwnedFd) -> libc::termios {
    let mut t = std::mem::MaybeUninit::<libc::termios>::zeroed();
    // SAFETY: tcgetattr fills the struct.
    let r = unsafe { libc::tcgetattr(fd.as_raw_fd(), t.as_mut_ptr()) };
    assert_eq!(r, 0, "tcgetattr");
    // SAFETY: zeroed and filled.
    unsafe { t.assume_init() }
}

/// The output speed of the slave, read through the master.
pub fn ospeed(master: RawFd) -> u32 {
    let mut t = std::mem::MaybeUninit::<libc::termios2>::zeroed();
    // SAFETY: TCGETS2 fills a termios2.
    if unsafe { libc::ioctl(master, libc::TCGETS2, t.as_mut_ptr()) } != 0 {
        return 0;
    }
    // SAFETY: zeroed and filled.
    unsafe { t.assume_init() }.c_ospeed
}

impl Dut {
    pub fn start(behaviour: Behaviour) -> Dut {
        Dut::start_with(behaviour, true, Box::new(String::new))
    }

    /// `raw`: see [`pty`]; `hook` runs when a request arrives.
    pub fn start_with(behaviour: Behaviour, raw: bool, hook: Hook) -> Dut {
        let (master, slave, path) = pty(raw);
        let answering = Arc::new(AtomicBool::new(true));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let fd = master.as_raw_fd();
        let (a, r, s) = (answering.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve(fd, behaviour, hook, &a, &r, &s));
        Dut {
            path,
            slave,
            answering,
            requests,
            stop,
            thread: Some(thread),
            master: Some(master),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Dut {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.master.take();
    }
}

fn serve(
    fd: RawFd,
    behaviour: Behaviour,
    mut hook: Hook,
    answering: &AtomicBool,
    requests: &Mutex<Vec<Request>>,
    stop: &AtomicBool,
) {
    let mut pending = Vec::new();
    let mut streaming = false;
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::SeqCst) {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, if streaming { 1 } else { 10 }) };
        // SAFETY: reading into a local buffer; the fd is non-blocking.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            pending.extend_from_slice(&buf[..n as usize]);
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let bytes: Vec<u8> = pending.drain(..=end).collect();
            let baud = ospeed(fd);
            let note = hook();
            if let Ok(mut r) = requests.lock() {
                r.push(Request { bytes, baud, note });
            }
            match &behaviour {
                Behaviour::Answer { reply, only_at } => {
                    if answering.load(Ordering::SeqCst) && only_at.is_none_or(|b| b == baud) {
                        write_all(fd, reply);
                    }
                }
                Behaviour::Silent => {}
                Behaviour::Stream(_) => streaming = true,
            }
        }
        if let (true, Behaviour::Stream(chunk)) = (streaming, &behaviour) {
            // SAFETY: writing from a live buffer; EAGAIN is fine.
            unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) };
        }
    }
}

fn write_all(fd: RawFd, mut bytes: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !bytes.is_empty() && Instant::now() < deadline {
        // SAFETY: writing from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Deterministic bytes that are not UTF-8, with a few line ends.
pub fn garbage(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            match i % 37 {
                36 => b'\n',
                _ => 0x80 | (x as u8),
            }
        })
        .collect()
}
