//! Drive the real libudev against an in-process [umockdev] testbed.
//!
//! # How it works
//!
//! umockdev has two halves:
//!
//! * **`libumockdev-preload.so.0`** is an `LD_PRELOAD` library that interposes
//!   libc (`open`, `openat`, `stat`, `statx`, `readlink`, `opendir`, `socket`,
//!   `bind`, `recvmsg`, `close`, …). While `$UMOCKDEV_DIR` is set it redirects
//!   every access to `/sys`, `/dev` (and a few `/proc` files) into that
//!   directory, and it turns `socket(AF_NETLINK, …, NETLINK_KOBJECT_UEVENT)`
//!   into an `AF_UNIX` datagram socket which `bind()` places at
//!   `$UMOCKDEV_DIR/event<fd>`. On `recvmsg()` from such a socket it rewrites
//!   the sender address to the udev netlink multicast group and the
//!   `SCM_CREDENTIALS` uid to 0, so libudev's sender checks pass. The preload
//!   has to be in place when the process starts (the dynamic loader only
//!   honours `LD_PRELOAD` at exec time); that is all the `umockdev-wrapper`
//!   shell script does.
//! * **`libumockdev.so.0`** is a GObject library. `UMockdevTestbed` creates a
//!   temporary root (`/tmp/umockdev.XXXXXX`), sets `$UMOCKDEV_DIR` to it in
//!   this process, builds a fake sysfs from umockdev-record text (`E:` lines
//!   become the device's sysfs `uevent` file, `A:`/`H:` attribute files, `L:`
//!   symlinks, `N:` a node under the fake `/dev`, a pty for ttys) and
//!   synthesises uevents: a message in libudev's own wire format (the
//!   `"libudev\0"` header with the subsystem/devtype hashes that the BPF filter
//!   from `udev_monitor_filter_update` checks, then `ACTION`, `DEVPATH`,
//!   `SUBSYSTEM`, `SEQNUM` and every line of the device's `uevent` file),
//!   sent to every `$UMOCKDEV_DIR/event*` socket.
//!
//! The `udev` and `tokio-udev` crates link the system libudev, which calls libc
//! through the PLT, so with the preload loaded they transparently see the
//! testbed: `udev::Enumerator` walks the fake `/sys`, and a
//! `udev::MonitorBuilder` socket is really the `AF_UNIX` socket above.
//! `tokio_udev::AsyncMonitorSocket` wraps that fd in tokio's `AsyncFd`, which
//! only registers it with `epoll`; epoll readiness works for an `AF_UNIX`
//! datagram socket exactly as for a netlink one, and the actual reads go
//! through libudev's `recvmsg()`, which the preload rewrites. Nothing in the
//! netlink → `AF_UNIX` substitution is visible to tokio.
//!
//! This module binds libumockdev at **run time** with `libloading` (so a
//! machine without umockdev gets a clear "install it" error instead of a link
//! failure for the whole test crate) and wraps it in the safe [`Testbed`].
//! [`ensure_under_umockdev_wrapper`] re-executes the current test under
//! `umockdev-wrapper` when the preload is not active yet.
//!
//! # Usage
//!
//! ```no_run
//! use rae_tests::umockdev::{self, fixtures, Testbed};
//!
//! #[test]
//! fn enumeration_sees_the_ftdi_adapter() -> anyhow::Result<()> {
//!     // Parent: re-runs exactly this test under umockdev-wrapper and returns
//!     // Some(status) (it panics itself if the child failed). Child: None.
//!     if umockdev::ensure_under_umockdev_wrapper("enumeration_sees_the_ftdi_adapter").is_some() {
//!         return Ok(());
//!     }
//!     let testbed = Testbed::new()?;
//!     testbed.add_fixture(fixtures::USB_TREE)?;
//!     let mut enumerator = udev::Enumerator::new()?;
//!     enumerator.match_subsystem("tty")?;
//!     assert_eq!(enumerator.scan_devices()?.count(), 1);
//!     Ok(())
//! }
//! ```
//!
//! Hot-plug is [`Testbed::add_from_string`] / [`Testbed::add_fixture`] after
//! the monitor is listening (they emit the `add` uevents); hot-unplug is
//! [`Testbed::unplug`].
//!
//! # Behaviour and caveats (verified with umockdev 0.17.16, systemd/libudev 252, Debian 12)
//!
//! * **One [`Testbed`] per process at a time**: it owns the process-global
//!   `$UMOCKDEV_DIR` (a second `Testbed::new` fails; sequential ones are fine).
//!   It is `!Send`; keep it on the test thread. Prefer a current-thread tokio
//!   runtime: `$UMOCKDEV_DIR` is set/unset with `setenv(3)`, which races with
//!   `getenv(3)` (called by the preload on every path access) in other threads.
//! * **Create the testbed before `MonitorBuilder::listen()`.** Without
//!   `$UMOCKDEV_DIR` the preload leaves the socket alone, `listen()` still
//!   succeeds, and the monitor is a real netlink socket that never sees
//!   testbed events. Drop monitors before the testbed.
//! * **`add_from_string` emits an `add` uevent for every record**, in record
//!   order (so fixtures list parents first). Calling [`Testbed::uevent`] with
//!   `"add"` afterwards would deliver a *second* `add`.
//! * **Monitor events carry all `E:` properties** (`ID_VENDOR_ID`, …) plus
//!   `ACTION`/`DEVPATH`/`SUBSYSTEM`/`SEQNUM`, like udevd's broadcast.
//!   Attributes and parents of an event device are read from the fake sysfs.
//! * **Nothing sends `remove` for you**: `umockdev_testbed_remove_device` is
//!   silent, and umockdev builds a uevent from the device's sysfs `uevent`
//!   file, so `remove` must be sent *before* the device is removed. Use
//!   [`Testbed::unplug`].
//! * **No udev database**: `Device::is_initialized()` is false for enumerated
//!   devices (monitor events report true). `Enumerator::match_is_initialized()`
//!   (libudev's "compat" mode) keeps only devices *without* a device number;
//!   the fixtures therefore have no `MAJOR`/`MINOR`/`dev` (`devnum()` is
//!   `None`; `devnode()` still comes from `DEVNAME`).
//! * **The host's udev database leaks in.** umockdev 0.17.16 does not redirect
//!   `/run/udev/data`, and libudev merges `/run/udev/data/c<major>:<minor>`
//!   (devices with a devnum) or `+<subsystem>:<sysname>` (others) of the
//!   *real* machine into testbed devices (fixed upstream after 0.17.16:
//!   martinpitt/umockdev#213, PR #214). Devnum-less fixtures avoid the
//!   `c…` keys, which would otherwise hit real USB devices; interface/pci
//!   records can still collide with `+usb:1-2:1.0`-style keys on a machine
//!   running udevd. [`Testbed::new`] prints a warning when `/run/udev/data`
//!   exists. Containers/CI normally have no `/run/udev`.
//! * **No tags**: umockdev leaves the tag bloom filter of its messages empty,
//!   so a monitor with `match_tag()` drops every testbed event.
//! * **No device nodes in the fixtures.** An `N:` line creates the node under
//!   the fake `/dev`; for a tty it is a pty whose master umockdev keeps until
//!   the testbed is dropped, so such a tty cannot be re-added after an unplug
//!   (GLib assertion). The fixtures have no `N:` lines: `devnode()` still
//!   reports `/dev/ttyUSB0` (from `DEVNAME`) but nothing exists there. Add
//!   `N: ttyUSB0` in a test's own record if it must open the port.
//! * umockdev **aborts the process** (GLib assertion) on some misuse, e.g.
//!   adding a record whose syspath (or a class/bus link of it) already exists;
//!   the re-exec parent then reports the child's `SIGABRT` (and that
//!   testbed's `/tmp/umockdev.XXXXXX` is left behind).
//!
//! [umockdev]: https://github.com/martinpitt/umockdev

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use libloading::Library;

/// What to run when umockdev is missing.
pub const INSTALL_HINT: &str = "apt-get install umockdev libumockdev0";
/// SONAME of the umockdev testbed library, loaded at run time.
pub const LIBUMOCKDEV_SONAME: &str = "libumockdev.so.0";
/// Substring of `LD_PRELOAD` / `/proc/self/maps` that identifies the preload.
pub const PRELOAD_MARKER: &str = "libumockdev-preload";
/// Program that starts a command with the preload in `LD_PRELOAD`.
pub const WRAPPER: &str = "umockdev-wrapper";
/// How long [`ensure_under_umockdev_wrapper`] waits for the re-executed test.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// The host's udev database, which umockdev 0.17.16 does not redirect.
const HOST_UDEV_DB: &str = "/run/udev/data";
const LIBGLIB_SONAME: &str = "libglib-2.0.so.0";
const LIBGOBJECT_SONAME: &str = "libgobject-2.0.so.0";
/// Set in the re-executed child so that a preload that silently failed to load
/// cannot cause infinite re-execution.
const REEXEC_ENV: &str = "RAE_TESTS_UMOCKDEV_REEXEC";

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// Hand-written umockdev-record fixtures in `tests/fixtures/udev/` and the
/// syspaths of the devices they define.
pub mod fixtures;

// ---------------------------------------------------------------------------
// Run-time binding of libumockdev / GLib
// ---------------------------------------------------------------------------

/// `GError` from `glib/gerror.h`.
#[repr(C)]
struct GError {
    domain: u32,
    code: c_int,
    message: *mut c_char,
}

/// Opaque `UMockdevTestbed*` (a `GObject`).
type RawTestbed = c_void;

/// Function pointers resolved from libumockdev / libgobject / libglib. The
/// libraries are kept loaded for the life of the process (they register
/// GObject types, which must never be unloaded).
struct Api {
    testbed_new: unsafe extern "C" fn() -> *mut RawTestbed,
    add_from_string:
        unsafe extern "C" fn(*mut RawTestbed, *const c_char, *mut *mut GError) -> c_int,
    uevent: unsafe extern "C" fn(*mut RawTestbed, *const c_char, *const c_char),
    remove_device: unsafe extern "C" fn(*mut RawTestbed, *const c_char),
    get_sys_dir: unsafe extern "C" fn(*mut RawTestbed) -> *mut c_char,
    get_root_dir: unsafe extern "C" fn(*mut RawTestbed) -> *mut c_char,
    g_object_unref: unsafe extern "C" fn(*mut c_void),
    g_error_free: unsafe extern "C" fn(*mut GError),
    g_free: unsafe extern "C" fn(*mut c_void),
    _libs: [Library; 3],
}

fn open_library(soname: &str) -> Result<Library> {
    // SAFETY: loading runs the library's ELF initialisers. libumockdev, GLib and
    // GObject are ordinary system libraries whose initialisers only set up
    // GLib's internal state; they have no preconditions on the caller.
    unsafe { Library::new(soname) }.map_err(|e| {
        anyhow!("cannot load {soname} ({e}); umockdev is required for these tests, install it with: {INSTALL_HINT}")
    })
}

/// Resolves `name` from `lib` as a value of type `T`.
///
/// # Safety
///
/// `T` must be an `unsafe extern "C" fn` pointer type whose signature matches
/// the C declaration of `name` exactly.
unsafe fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T> {
    // SAFETY: the caller guarantees that `T` matches the symbol's C type.
    let sym = unsafe { lib.get::<T>(name.as_bytes()) }.map_err(|e| {
        anyhow!("symbol {name} missing ({e}); is the installed umockdev too old? ({INSTALL_HINT})")
    })?;
    Ok(*sym)
}

impl Api {
    fn load() -> Result<Self> {
        let umockdev = open_library(LIBUMOCKDEV_SONAME)?;
        let gobject = open_library(LIBGOBJECT_SONAME)?;
        let glib = open_library(LIBGLIB_SONAME)?;
        // SAFETY: every type below is transcribed from the prototypes in
        // /usr/include/umockdev-1.0/umockdev.h, glib-object.h and glib.h
        // (gboolean = int, gchar = char, GError** = *mut *mut GError, pointers
        // to opaque objects = *mut c_void).
        unsafe {
            Ok(Self {
                testbed_new: symbol(&umockdev, "umockdev_testbed_new")?,
                add_from_string: symbol(&umockdev, "umockdev_testbed_add_from_string")?,
                uevent: symbol(&umockdev, "umockdev_testbed_uevent")?,
                remove_device: symbol(&umockdev, "umockdev_testbed_remove_device")?,
                get_sys_dir: symbol(&umockdev, "umockdev_testbed_get_sys_dir")?,
                get_root_dir: symbol(&umockdev, "umockdev_testbed_get_root_dir")?,
                g_object_unref: symbol(&gobject, "g_object_unref")?,
                g_error_free: symbol(&glib, "g_error_free")?,
                g_free: symbol(&glib, "g_free")?,
                _libs: [umockdev, gobject, glib],
            })
        }
    }

    /// Copies and frees a transfer-full `gchar*`.
    ///
    /// # Safety
    ///
    /// `ptr` must be NULL or a NUL-terminated string allocated by GLib that the
    /// caller owns; it must not be used afterwards.
    unsafe fn take_gstring(&self, ptr: *mut c_char) -> Option<String> {
        if ptr.is_null() {
            return None;
        }
        // SAFETY: non-NULL, NUL-terminated and owned by us (caller contract).
        let s = unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: GLib allocated it, we own it, and it is not used again.
        unsafe { (self.g_free)(ptr.cast()) };
        Some(s)
    }
}

/// Loads libumockdev once per process. The error names [`INSTALL_HINT`].
fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| Api::load().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

/// Checks that libumockdev (and GLib) can be loaded, without creating a testbed.
pub fn check_available() -> Result<()> {
    api().map(|_| ())
}

// ---------------------------------------------------------------------------
// Preload detection and re-exec under umockdev-wrapper
// ---------------------------------------------------------------------------

/// True when `LD_PRELOAD` names `libumockdev-preload` (i.e. we were started by
/// `umockdev-wrapper` or an equivalent).
pub fn preload_requested() -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|v| v.contains(PRELOAD_MARKER))
}

/// True when `libumockdev-preload` is actually mapped into this process (the
/// loader ignores, with only a warning, a preload it cannot find).
pub fn preload_loaded() -> bool {
    match std::fs::read_to_string("/proc/self/maps") {
        Ok(maps) => maps.contains(PRELOAD_MARKER),
        Err(_) => preload_requested(),
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Makes sure the calling test runs with `libumockdev-preload` loaded.
///
/// * Already under the preload (the re-executed child): returns `None`; the
///   test proceeds and should create its [`Testbed`].
/// * Otherwise (the normal `cargo test` process): runs
///   `umockdev-wrapper <current test binary> --exact <test_name> --nocapture
///   --test-threads=1 --include-ignored`, forwards the child's stdout/stderr
///   line by line through `print!`/`eprint!` (so libtest shows it on failure,
///   or live with `--nocapture`), and returns `Some(status)`. The caller must
///   then `return` without doing anything else.
///
/// # Panics
///
/// Fails the calling test (panics) when `umockdev-wrapper` is not on `PATH`
/// (naming `apt-get install umockdev`), when the child exits unsuccessfully or
/// is killed, when it runs longer than [`CHILD_TIMEOUT`], when it did not run
/// exactly one passing test (typically a wrong `test_name`), or when the
/// preload still is not loaded in the re-executed child.
///
/// `test_name` is the libtest name of the calling test: the function name for
/// a test at the root of an integration-test file, `module::name` otherwise.
/// Tests using this may run in parallel: each child is a separate process with
/// its own testbed.
#[must_use = "when this returns Some, the calling test must return immediately"]
pub fn ensure_under_umockdev_wrapper(test_name: &str) -> Option<ExitStatus> {
    if preload_requested() {
        assert!(
            preload_loaded(),
            "LD_PRELOAD={:?} names {PRELOAD_MARKER} but it is not loaded into this process; \
             is umockdev installed? ({INSTALL_HINT})",
            std::env::var("LD_PRELOAD").unwrap_or_default()
        );
        return None;
    }
    assert!(
        std::env::var_os(REEXEC_ENV).is_none(),
        "re-executed under {WRAPPER} but LD_PRELOAD does not contain {PRELOAD_MARKER}; \
         is umockdev installed correctly? ({INSTALL_HINT})"
    );
    if let Some(thread_name) = thread::current().name() {
        assert!(
            thread_name == "main" || thread_name == test_name,
            "ensure_under_umockdev_wrapper({test_name:?}) called from test {thread_name:?}; \
             pass the calling test's exact name"
        );
    }
    let Some(wrapper) = find_in_path(WRAPPER) else {
        panic!("`{WRAPPER}` not found in PATH; these tests need umockdev, install it with: {INSTALL_HINT}");
    };
    let exe = std::env::current_exe().expect("cannot determine the current test binary");

    let mut child = Command::new(&wrapper)
        .arg(&exe)
        .args([
            "--exact",
            test_name,
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(REEXEC_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} ({INSTALL_HINT})", wrapper.display()));

    // Forward output as it arrives. Spawned threads inherit libtest's output
    // capture, so this lands in the calling test's captured output.
    let stdout = child.stdout.take().expect("child stdout is piped");
    let stderr = child.stderr.take().expect("child stderr is piped");
    let out_forwarder = thread::spawn(move || forward_lines(stdout, false));
    let err_forwarder = thread::spawn(move || forward_lines(stderr, true));

    let deadline = Instant::now() + CHILD_TIMEOUT;
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "`{test_name}` under {WRAPPER} did not finish within {CHILD_TIMEOUT:?}; killed it"
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("waiting for `{test_name}` under {WRAPPER}: {e}")),
        }
    };
    // The pipes close when the child exits (or was killed): collect all output
    // before reporting anything.
    let child_stdout = out_forwarder.join().unwrap_or_default();
    let _ = err_forwarder.join();
    let status = outcome.unwrap_or_else(|message| panic!("{message}; its output is above"));

    assert!(
        status.success(),
        "`{test_name}` failed under {WRAPPER} ({status}); its output is above"
    );
    assert!(
        child_stdout.contains("test result: ok. 1 passed"),
        "`{} --exact {test_name}` under {WRAPPER} did not run exactly one passing test; \
         is {test_name:?} the calling test's exact libtest name?",
        exe.display()
    );
    Some(status)
}

/// Copies `from` to our stdout/stderr line by line; returns what it saw.
fn forward_lines(from: impl Read, to_stderr: bool) -> String {
    let mut reader = BufReader::new(from);
    let mut seen = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                if to_stderr {
                    eprint!("{text}");
                } else {
                    print!("{text}");
                }
                seen.push_str(&text);
            }
        }
    }
    seen
}

// ---------------------------------------------------------------------------
// Testbed
// ---------------------------------------------------------------------------

/// Set while a [`Testbed`] exists: `$UMOCKDEV_DIR` is process-global.
static TESTBED_ALIVE: AtomicBool = AtomicBool::new(false);

/// An umockdev testbed (`UMockdevTestbed`): a temporary fake `/sys` + `/dev`
/// that this process's libudev sees while the preload is loaded.
///
/// Dropping it deletes the directory and unsets `$UMOCKDEV_DIR`. Not `Send`:
/// GObject instances of this class are not thread-safe.
pub struct Testbed {
    raw: NonNull<RawTestbed>,
    api: &'static Api,
    root_dir: PathBuf,
    sys_dir: PathBuf,
}

impl fmt::Debug for Testbed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Testbed")
            .field("root_dir", &self.root_dir)
            .field("sys_dir", &self.sys_dir)
            .finish_non_exhaustive()
    }
}

impl Testbed {
    /// Creates an empty testbed and points `$UMOCKDEV_DIR` at it.
    ///
    /// Fails if libumockdev cannot be loaded (the message names
    /// [`INSTALL_HINT`]), if `libumockdev-preload` is not loaded in this
    /// process (call [`ensure_under_umockdev_wrapper`] first), or if another
    /// `Testbed` is alive.
    pub fn new() -> Result<Self> {
        ensure!(
            preload_loaded(),
            "{PRELOAD_MARKER} is not loaded in this process, so libudev would see the real /sys; \
             call rae_tests::umockdev::ensure_under_umockdev_wrapper(\"<test name>\") first, or \
             run the test binary under {WRAPPER} ({INSTALL_HINT})"
        );
        if Path::new(HOST_UDEV_DB).is_dir() {
            eprintln!(
                "warning: {HOST_UDEV_DB} exists (udevd runs on this machine); umockdev releases \
                 before martinpitt/umockdev PR #214 (July 2023; Debian 12 ships 0.17.16) let \
                 libudev merge its entries (keyed c<major>:<minor> or +<subsystem>:<sysname>) \
                 into testbed devices with the same key"
            );
        }
        Self::without_preload_check()
    }

    /// Like [`Testbed::new`] but does not require the preload in *this*
    /// process: for tests that only build the testbed and run the code under
    /// test as a child under `umockdev-wrapper` (which inherits
    /// `$UMOCKDEV_DIR`).
    pub fn without_preload_check() -> Result<Self> {
        let api = api()?;
        ensure!(
            TESTBED_ALIVE
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok(),
            "another umockdev Testbed is alive in this process; $UMOCKDEV_DIR is process-global"
        );
        // SAFETY: umockdev_testbed_new takes no arguments and returns a new
        // owned reference (it aborts rather than returning NULL on failure;
        // NULL is handled anyway).
        let raw = match NonNull::new(unsafe { (api.testbed_new)() }) {
            Some(raw) => raw,
            None => {
                TESTBED_ALIVE.store(false, Ordering::SeqCst);
                bail!("umockdev_testbed_new() returned NULL");
            }
        };
        // From here on Drop releases `raw` and clears TESTBED_ALIVE.
        let mut testbed = Self {
            raw,
            api,
            root_dir: PathBuf::new(),
            sys_dir: PathBuf::new(),
        };
        // SAFETY: `raw` is a live UMockdevTestbed; both getters return a
        // transfer-full gchar* (see UMockdev-1.0.gir) that take_gstring frees.
        let (root, sys) = unsafe {
            (
                api.take_gstring((api.get_root_dir)(raw.as_ptr())),
                api.take_gstring((api.get_sys_dir)(raw.as_ptr())),
            )
        };
        testbed.root_dir = root
            .context("umockdev_testbed_get_root_dir() returned NULL")?
            .into();
        testbed.sys_dir = sys
            .context("umockdev_testbed_get_sys_dir() returned NULL")?
            .into();
        Ok(testbed)
    }

    /// The testbed root (`$UMOCKDEV_DIR`, e.g. `/tmp/umockdev.XXXXXX`).
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// The fake sysfs (`<root>/sys`); libudev sees it as `/sys`.
    pub fn sys_dir(&self) -> &Path {
        &self.sys_dir
    }

    /// Adds the device(s) described in umockdev-record format (`P:`, `E:`,
    /// `A:`, `H:`, `L:`, `N:`, `S:` lines; one paragraph per device; no
    /// comments) and emits an `add` uevent for each, in record order.
    ///
    /// Note: umockdev *aborts* the process (instead of returning an error) when
    /// a device's syspath already exists in the testbed.
    pub fn add_from_string(&self, record: &str) -> Result<()> {
        let record = CString::new(record).context("device record contains a NUL byte")?;
        let mut error: *mut GError = std::ptr::null_mut();
        // SAFETY: `self.raw` is live; `record` is a valid NUL-terminated string
        // that outlives the call; `error` is a valid GError** initialised to
        // NULL as GLib requires.
        let ok = unsafe {
            (self.api.add_from_string)(self.raw.as_ptr(), record.as_ptr(), &raw mut error)
        };
        if ok != 0 {
            return Ok(());
        }
        if error.is_null() {
            bail!("umockdev_testbed_add_from_string() failed without a GError");
        }
        // SAFETY: on failure GLib stored an owned, valid GError whose `message`
        // is a NUL-terminated string (or NULL); we copy it before freeing the
        // GError exactly once.
        let message = unsafe {
            let message = (*error).message;
            let text = if message.is_null() {
                "(no message)".to_owned()
            } else {
                CStr::from_ptr(message).to_string_lossy().into_owned()
            };
            (self.api.g_error_free)(error);
            text
        };
        bail!("umockdev rejected the device record: {message}")
    }

    /// Reads a umockdev-record file and adds its devices.
    pub fn add_from_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let record = std::fs::read_to_string(path)
            .with_context(|| format!("reading umockdev record {}", path.display()))?;
        self.add_from_string(&record)
            .with_context(|| format!("loading umockdev record {}", path.display()))
    }

    /// Adds a fixture from `tests/fixtures/udev/` (see [`fixtures`]).
    pub fn add_fixture(&self, name: &str) -> Result<()> {
        self.add_from_file(fixtures::path(name))
    }

    /// Path of a testbed device's directory inside [`Testbed::root_dir`];
    /// checks that `syspath` is a `/sys/...` path of an existing device.
    fn device_dir(&self, syspath: &str) -> Result<PathBuf> {
        let relative = syspath
            .strip_prefix("/sys/")
            .ok_or_else(|| anyhow!("syspath {syspath:?} must start with /sys/"))?;
        let dir = self.sys_dir.join(relative);
        ensure!(
            dir.join("uevent").is_file(),
            "no device {syspath} in the umockdev testbed ({} has no uevent file)",
            dir.display()
        );
        Ok(dir)
    }

    /// Synthesises a uevent (`"add"`, `"remove"`, `"change"`, …) for an
    /// existing testbed device and sends it to every libudev monitor in this
    /// process (`umockdev_testbed_uevent`). The event carries the device's
    /// properties as they are now in its sysfs `uevent` file.
    ///
    /// Errors if the device does not exist in the testbed (umockdev itself
    /// would only print to stderr), so `"remove"` must be sent before
    /// [`Testbed::remove_device`]; [`Testbed::unplug`] does both.
    pub fn uevent(&self, syspath: &str, action: &str) -> Result<()> {
        self.device_dir(syspath)?;
        ensure!(!action.is_empty(), "empty uevent action");
        let c_syspath = CString::new(syspath).context("syspath contains a NUL byte")?;
        let c_action = CString::new(action).context("action contains a NUL byte")?;
        // SAFETY: `self.raw` is live; both strings are valid, NUL-terminated
        // and outlive the call, which only reads them.
        unsafe { (self.api.uevent)(self.raw.as_ptr(), c_syspath.as_ptr(), c_action.as_ptr()) };
        Ok(())
    }

    /// Sets a sysfs attribute of a testbed device atomically (a temporary
    /// file renamed over it, so a concurrent reader never sees it half
    /// written). No uevent is sent; follow it with a `"change"`
    /// [`Testbed::uevent`].
    pub fn set_attribute(&self, syspath: &str, name: &str, value: &str) -> Result<()> {
        ensure!(
            !name.is_empty() && !name.contains('/') && !name.starts_with('.'),
            "invalid attribute name {name:?}"
        );
        let dir = self.device_dir(syspath)?;
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, value).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("setting {syspath}/{name}"))
    }

    /// Syspaths of `syspath` and of every device below it in the testbed,
    /// parent first (the order in which the kernel announces them).
    pub fn device_subtree(&self, syspath: &str) -> Result<Vec<String>> {
        let dir = self.device_dir(syspath)?;
        let mut found = Vec::new();
        collect_devices(&dir, syspath, &mut found)?;
        Ok(found)
    }

    /// Removes a device and every device below it from the testbed: sysfs
    /// directories, `/sys/class` and `/sys/bus` links and device nodes.
    ///
    /// umockdev's `umockdev_testbed_remove_device` deletes the whole directory
    /// tree but only unlinks the class/bus links of the device it was given,
    /// so the children's links would dangle and re-adding the same record
    /// later would abort the process. This therefore calls it once per
    /// device, children first. umockdev only deletes a device's node under
    /// the fake `/dev` when the device has a `dev` attribute; this also
    /// deletes the node named by `DEVNAME`. No uevent is sent; see
    /// [`Testbed::unplug`].
    pub fn remove_device(&self, syspath: &str) -> Result<()> {
        for device in self.device_subtree(syspath)?.iter().rev() {
            let devname = self.devname_of(device)?;
            let c_syspath = CString::new(device.as_str()).context("syspath contains a NUL byte")?;
            // SAFETY: `self.raw` is live; `c_syspath` is a valid NUL-terminated
            // string that outlives the call, which only reads it.
            unsafe { (self.api.remove_device)(self.raw.as_ptr(), c_syspath.as_ptr()) };
            if let Some(devname) = devname {
                let node = self.root_dir.join("dev").join(devname);
                if node.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                    std::fs::remove_file(&node)
                        .with_context(|| format!("removing {}", node.display()))?;
                }
            }
        }
        Ok(())
    }

    /// `DEVNAME` from a testbed device's `uevent` file, relative to `/dev`.
    fn devname_of(&self, syspath: &str) -> Result<Option<String>> {
        let uevent = self.device_dir(syspath)?.join("uevent");
        let contents = std::fs::read_to_string(&uevent)
            .with_context(|| format!("reading {}", uevent.display()))?;
        Ok(contents
            .lines()
            .find_map(|line| line.strip_prefix("DEVNAME="))
            .map(|name| name.trim_start_matches("/dev/").to_owned())
            .filter(|name| !name.is_empty() && !name.split('/').any(|c| c == "..")))
    }

    /// Hot-unplug: sends a `remove` uevent for `syspath` and every device
    /// below it, children first (as the kernel does), while they still exist
    /// in sysfs (umockdev builds the event from the device's `uevent` file),
    /// then removes them with [`Testbed::remove_device`]. Returns the
    /// syspaths in the order their `remove` events were sent.
    ///
    /// The counterpart, hot-plug, is just [`Testbed::add_from_string`] /
    /// [`Testbed::add_fixture`], which already emits `add` uevents.
    pub fn unplug(&self, syspath: &str) -> Result<Vec<String>> {
        let mut devices = self.device_subtree(syspath)?;
        devices.reverse();
        for device in &devices {
            self.uevent(device, "remove")?;
        }
        self.remove_device(syspath)?;
        Ok(devices)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // SAFETY: we own the only reference returned by umockdev_testbed_new
        // and never use `raw` again; finalisation deletes the temporary root
        // and unsets $UMOCKDEV_DIR.
        unsafe { (self.api.g_object_unref)(self.raw.as_ptr().cast()) };
        TESTBED_ALIVE.store(false, Ordering::SeqCst);
    }
}

/// Depth-first walk of a testbed sysfs directory: every sub-directory with a
/// `uevent` file is a device. Symlinks (`subsystem`, `driver`, …) are not
/// followed.
fn collect_devices(dir: &Path, syspath: &str, found: &mut Vec<String>) -> Result<()> {
    if dir.join("uevent").is_file() {
        found.push(syspath.to_owned());
    }
    let mut children = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if let Some(name) = entry.file_name().to_str() {
                children.push(name.to_owned());
            }
        }
    }
    children.sort();
    for name in children {
        collect_devices(&dir.join(&name), &format!("{syspath}/{name}"), found)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_error_names_the_install_command() {
        let err = open_library("libumockdev-missing-for-this-test.so.0")
            .expect_err("a library that does not exist must not load");
        assert!(format!("{err:#}").contains(INSTALL_HINT), "{err:#}");
    }

    #[test]
    fn testbed_refuses_to_start_without_the_preload() {
        if preload_loaded() {
            return; // this unit test was itself started under umockdev-wrapper
        }
        let err = Testbed::new().expect_err("no preload in a plain `cargo test` process");
        assert!(
            format!("{err:#}").contains("ensure_under_umockdev_wrapper"),
            "{err:#}"
        );
    }

    #[test]
    fn device_walk_lists_devices_parent_first_without_following_links() -> Result<()> {
        let root = tempfile::tempdir()?;
        let a = root.path().join("a");
        for dir in ["a/b/c/d", "a/b2"] {
            std::fs::create_dir_all(root.path().join(dir))?;
        }
        for device in ["a", "a/b", "a/b/c/d", "a/b2"] {
            std::fs::write(root.path().join(device).join("uevent"), "SUBSYSTEM=usb\n")?;
        }
        std::os::unix::fs::symlink(&a, a.join("b").join("subsystem"))?;
        let mut found = Vec::new();
        collect_devices(&a, "/sys/a", &mut found)?;
        assert_eq!(found, ["/sys/a", "/sys/a/b", "/sys/a/b/c/d", "/sys/a/b2"]);
        Ok(())
    }
}
