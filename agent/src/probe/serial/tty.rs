//! Opening a tty for one probe and leaving it exactly as found.
//!
//! How a port is opened, and why not with `serialport::new(..).open()`:
//! that call reconfigures the termios right after `open(2)`, before a caller
//! could save them. So [`OpenPort::open`] opens the node itself with
//! `O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC` (never becomes our
//! controlling tty, never waits for carrier), refuses a port that another
//! process holds with `flock` or `TIOCEXCL` (root bypasses `TIOCEXCL` on
//! open, so it is checked with `TIOCGEXCL`), saves the termios, and only then
//! hands the fd to `serialport::TTYPort::from_raw_fd`, which takes
//! `flock(LOCK_EX)` and `TIOCEXCL` for the probe's duration and drops them on
//! close. The fd stays non-blocking; reads and writes wait with `ppoll`.
//!
//! Modem lines: the probe never sets DTR or RTS (serialport's `open` would
//! only with `dtr_on_open`, which is not used here). The kernel itself
//! raises DTR/RTS when a tty is opened and, if the saved termios has
//! `HUPCL`, drops them on the last close; that cannot be avoided without
//! changing the port's settings, which the probe must leave as found.
//!
//! Invariant: while an [`OpenPort`] exists the saved termios is restored on
//! drop, before the fd is closed (pending input and output are discarded
//! first, so nothing queued at our baud rate leaks out after the restore).
//! On Linux the termios is saved and restored with `TCGETS2`/`TCSETS2`, the
//! same data as `tcgetattr`/`tcsetattr` plus the exact input and output
//! speeds, so a port left at a non-standard baud rate gets it back.

use serialport::TTYPort;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process uses the port; do not touch it.
    #[error("{0}")]
    Busy(String),
    /// The node has no device behind it (e.g. `/dev/ttyS5` without a UART,
    /// or a USB adapter unplugged a moment ago).
    #[error("no device: {0}")]
    NoDevice(io::Error),
    #[error("cannot open: {0}")]
    Open(io::Error),
    #[error("cannot read the port settings: {0}")]
    Settings(io::Error),
    #[error("cannot switch the port to raw mode: {0}")]
    Raw(io::Error),
}

/// A port opened for one probe.
#[derive(Debug)]
pub struct OpenPort {
    pub tty: TTYPort,
    saved: saved::Termios,
}

impl OpenPort {
    pub fn open(path: &str) -> Result<OpenPort, OpenError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENXIO | libc::ENODEV | libc::EIO) => OpenError::NoDevice(e),
                Some(libc::EBUSY) => OpenError::Busy("in exclusive use (TIOCEXCL)".into()),
                _ => OpenError::Open(e),
            })?;
        let fd = file.as_raw_fd();
        // SAFETY: fd is open for the lifetime of `file`.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(OpenError::Busy(
                    "in use (flock held by another process)".into(),
                ));
            }
        }
        if saved::exclusive(fd) {
            return Err(OpenError::Busy(
                "in exclusive use (TIOCEXCL) by another process".into(),
            ));
        }
        let saved = saved::Termios::read(fd).map_err(OpenError::Settings)?;
        // SAFETY: the fd comes from `into_raw_fd`, so TTYPort owns it alone.
        let tty = unsafe { TTYPort::from_raw_fd(file.into_raw_fd()) };
        let port = OpenPort { tty, saved };
        make_raw(port.fd()).map_err(OpenError::Raw)?;
        Ok(port)
    }

    pub fn fd(&self) -> RawFd {
        self.tty.as_raw_fd()
    }
}

impl Drop for OpenPort {
    fn drop(&mut self) {
        let fd = self.fd();
        // SAFETY: fd is open until `self.tty` drops, after this.
        unsafe { libc::tcflush(fd, libc::TCIOFLUSH) };
        if let Err(e) = self.saved.restore(fd) {
            log::warn!("serial probe: cannot restore the port settings: {e}");
        }
    }
}

/// Raw 8-bit mode, receiver on, modem control lines ignored (`CLOCAL`), so
/// no read waits for carrier and no byte is translated.
fn make_raw(fd: RawFd) -> io::Result<()> {
    let mut t = std::mem::MaybeUninit::<libc::termios>::zeroed();
    // SAFETY: tcgetattr fills the struct; fd is a valid tty.
    if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by tcgetattr above (and zeroed before).
    let mut t = unsafe { t.assume_init() };
    // SAFETY: cfmakeraw only edits the struct.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_cflag |= libc::CREAD | libc::CLOCAL;
    // SAFETY: `t` is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(
    target_os = "linux",
    not(any(target_arch = "powerpc", target_arch = "powerpc64"))
))]
mod saved {
    use std::io;
    use std::os::fd::RawFd;

    /// The full termios with exact speeds.
    pub struct Termios(libc::termios2);

    impl std::fmt::Debug for Termios {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Termios(cflag={:#o})", self.0.c_cflag)
        }
    }

    impl Termios {
        pub fn read(fd: RawFd) -> io::Result<Termios> {
            let mut t = std::mem::MaybeUninit::<libc::termios2>::zeroed();
            // SAFETY: TCGETS2 fills a termios2.
            if unsafe { libc::ioctl(fd, libc::TCGETS2, t.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: zeroed, then filled by the kernel.
            Ok(Termios(unsafe { t.assume_init() }))
        }

        pub fn restore(&self, fd: RawFd) -> io::Result<()> {
            // SAFETY: TCSETS2 reads a termios2.
            if unsafe { libc::ioctl(fd, libc::TCSETS2, &self.0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    /// Whether another opener set `TIOCEXCL` (unknown counts as no).
    pub fn exclusive(fd: RawFd) -> bool {
        let mut excl: libc::c_int = 0;
        // SAFETY: TIOCGEXCL writes one int.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGEXCL, &mut excl) };
        r == 0 && excl != 0
    }
}

#[cfg(not(all(
    target_os = "linux",
    not(any(target_arch = "powerpc", target_arch = "powerpc64"))
)))]
mod saved {
    use std::io;
    use std::os::fd::RawFd;

    /// The termios as `tcgetattr` reports it.
    pub struct Termios(libc::termios);

    impl std::fmt::Debug for Termios {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Termios(cflag={:#o})", self.0.c_cflag)
        }
    }

    impl Termios {
        pub fn read(fd: RawFd) -> io::Result<Termios> {
            let mut t = std::mem::MaybeUninit::<libc::termios>::zeroed();
            // SAFETY: tcgetattr fills the struct.
            if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: zeroed, then filled.
            Ok(Termios(unsafe { t.assume_init() }))
        }

        pub fn restore(&self, fd: RawFd) -> io::Result<()> {
            // SAFETY: a valid termios.
            if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &self.0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }

    pub fn exclusive(_fd: RawFd) -> bool {
        false
    }
}
