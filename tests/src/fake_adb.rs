//! [`FakeAdbServer`]: a FAKE adb server for tests. No real phone can be
//! attached here, so this stands in for the adb server on the host side of
//! the public ADB host protocol, implementing only the subset rae uses,
//! byte for byte as AOSP documents it (`OVERVIEW.TXT`, "Client <-> Server
//! protocol"; `SERVICES.TXT`):
//!
//! * a request is 4 ASCII hex digits of length + payload; the answer is
//!   `OKAY`, or `FAIL` + 4-hex length + message; a malformed request prefix
//!   closes the connection (as adb does);
//! * `host:version` → `OKAY` + `0004` + `0029` (server version 41);
//! * `host:devices` / `host:devices-l` → `OKAY` + 4-hex length + list, then close;
//! * `host:track-devices` / `host:track-devices-l` → `OKAY`, the current
//!   list at once, and the whole list again on every change;
//! * `host:transport:<serial>` → `OKAY` if the device is in state `device`
//!   (else `FAIL` with adb's wording), then `shell:getprop [name]` →
//!   `OKAY` + raw `[name]: [value]` lines until EOF;
//! * `FAIL` + `unknown host service` for anything else.
//!
//! Long list lines follow adb's `append_transport`: `%-22s %s` (serial,
//! state), ` usb:1-<id>` for a USB serial, `product:` `model:` `device:`
//! (from `ro.product.name`, `ro.product.model` with non-alphanumerics as
//! `_`, `ro.product.device`; only in state `device`, as adb learns them
//! from the device's banner), then ` transport_id:<n>`.
//!
//! The test drives it: devices ([`FakeAdbServer::add_device`],
//! [`FakeAdbServer::set_state`], [`FakeAdbServer::remove_device`]),
//! outages ([`FakeAdbServer::stop`] / [`FakeAdbServer::restart`] on the
//! same port, [`FakeAdbServer::set_hang_up`]) and faults on the open
//! tracking connections ([`FakeAdbServer::inject_malformed_prefix`],
//! [`FakeAdbServer::inject_oversized_frame`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};

/// What [`FakeAdbServer::inject_malformed_prefix`] sends.
pub const MALFORMED_PREFIX: &[u8] = b"zz12";

/// One fake device.
#[derive(Debug, Clone)]
struct FakeDevice {
    state: String,
    props: BTreeMap<String, String>,
    transport_id: u64,
    getprop_failure: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    devices: BTreeMap<String, FakeDevice>,
    next_transport_id: u64,
}

/// What the tracking connections are told.
#[derive(Debug, Clone)]
enum Push {
    ListChanged,
    Raw(Arc<Vec<u8>>),
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    pushes: broadcast::Sender<Push>,
    accepted: AtomicUsize,
    hang_up: AtomicBool,
    requests: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fake server. See the module docs. Dropping it stops it.
#[derive(Debug)]
pub struct FakeAdbServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl FakeAdbServer {
    /// Listens on `127.0.0.1:0` with no devices.
    pub async fn start() -> Result<FakeAdbServer> {
        let (pushes, _) = broadcast::channel(64);
        let mut server = FakeAdbServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                pushes,
                accepted: AtomicUsize::new(0),
                hang_up: AtomicBool::new(false),
                requests: Mutex::new(Vec::new()),
            }),
            running: None,
        };
        server.listen().await?;
        Ok(server)
    }

    async fn listen(&mut self) -> Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket
            .bind(self.addr)
            .with_context(|| format!("fake adb server: binding {}", self.addr))?;
        let listener = socket.listen(64)?;
        self.addr = listener.local_addr()?;
        let (stop_tx, mut stop) = watch::channel(false);
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => accepted,
                };
                while conns.try_join_next().is_some() {}
                let Ok((sock, _)) = accepted else { continue };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                if shared.hang_up.load(Ordering::SeqCst) {
                    drop(sock);
                    continue;
                }
                conns.spawn(serve(sock, shared.clone()));
            }
            drop(listener);
            conns.shutdown().await;
        });
        self.running = Some((stop_tx, task));
        Ok(())
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, for `[adb] server`.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Closes the listener and every connection; the port refuses connections.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// Listens again on the same port, with the same devices.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.listen().await
    }

    /// While on, every connection is accepted and closed at once, unanswered.
    pub fn set_hang_up(&self, on: bool) {
        self.shared.hang_up.store(on, Ordering::SeqCst);
    }

    /// Connections accepted so far (across restarts).
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Open `host:track-devices[-l]` connections.
    pub fn tracking_connections(&self) -> usize {
        self.shared.pushes.receiver_count()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared.requests).clone()
    }

    /// Adds (or replaces, on a new transport) a device.
    pub fn add_device(&self, serial: &str, state: &str, props: &[(&str, &str)]) {
        let mut st = lock(&self.shared.state);
        st.next_transport_id += 1;
        let device = FakeDevice {
            state: state.to_string(),
            props: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            transport_id: st.next_transport_id,
            getprop_failure: None,
        };
        st.devices.insert(serial.to_string(), device);
        drop(st);
        self.changed();
    }

    /// Changes a device's state (same transport).
    pub fn set_state(&self, serial: &str, state: &str) -> Result<()> {
        self.with_device(serial, |d| d.state = state.to_string())
    }

    /// Makes `shell:getprop` on a device answer `FAIL` with `message`.
    pub fn fail_getprop(&self, serial: &str, message: &str) -> Result<()> {
        self.with_device(serial, |d| d.getprop_failure = Some(message.to_string()))
    }

    /// Unplugs a device.
    pub fn remove_device(&self, serial: &str) -> Result<()> {
        if lock(&self.shared.state).devices.remove(serial).is_none() {
            bail!("fake adb server: no device {serial:?}");
        }
        self.changed();
        Ok(())
    }

    /// Sends a length prefix that is not hex to every tracking connection;
    /// returns how many there were.
    pub fn inject_malformed_prefix(&self) -> usize {
        let mut bytes = MALFORMED_PREFIX.to_vec();
        bytes.extend_from_slice(b"R58M\tdevice\n");
        self.push(Push::Raw(Arc::new(bytes)))
    }

    /// Sends a frame of 65535 bytes (`ffff` + payload) to every tracking
    /// connection; returns how many there were.
    pub fn inject_oversized_frame(&self) -> usize {
        let mut bytes = b"ffff".to_vec();
        bytes.resize(4 + 0xffff, b'x');
        self.push(Push::Raw(Arc::new(bytes)))
    }

    fn with_device(&self, serial: &str, f: impl FnOnce(&mut FakeDevice)) -> Result<()> {
        match lock(&self.shared.state).devices.get_mut(serial) {
            Some(d) => f(d),
            None => bail!("fake adb server: no device {serial:?}"),
        }
        self.changed();
        Ok(())
    }

    fn changed(&self) {
        self.push(Push::ListChanged);
    }

    fn push(&self, p: Push) -> usize {
        self.shared.pushes.send(p).unwrap_or(0)
    }
}

impl Drop for FakeAdbServer {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(true);
            task.abort();
        }
    }
}

/// The device list, long (`-l`) or short, as adb formats it.
fn render(state: &State, long: bool) -> String {
    let mut out = String::new();
    for (serial, d) in &state.devices {
        if !long {
            out += &format!("{serial}\t{}\n", d.state);
            continue;
        }
        out += &format!("{serial:<22} {}", d.state);
        if !serial.contains(':') {
            out += &format!(" usb:1-{}", d.transport_id);
        }
        if d.state == "device" {
            let prop = |k: &str| d.props.get(k).filter(|v| !v.is_empty());
            if let Some(p) = prop("ro.product.name") {
                out += &format!(" product:{p}");
            }
            if let Some(m) = prop("ro.product.model") {
                let m: String = m
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                out += &format!(" model:{m}");
            }
            if let Some(dev) = prop("ro.product.device") {
                out += &format!(" device:{dev}");
            }
        }
        out += &format!(" transport_id:{}\n", d.transport_id);
    }
    out
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

async fn okay(sock: &mut TcpStream, data: Option<&[u8]>) -> std::io::Result<()> {
    let mut out = b"OKAY".to_vec();
    if let Some(d) = data {
        out.extend(frame(d));
    }
    sock.write_all(&out).await
}

async fn fail(sock: &mut TcpStream, message: &str) -> std::io::Result<()> {
    let mut out = b"FAIL".to_vec();
    out.extend(frame(message.as_bytes()));
    sock.write_all(&out).await
}

/// Reads one request; `None` on EOF or a malformed prefix.
async fn read_request(sock: &mut TcpStream, shared: &Shared) -> Option<String> {
    let mut prefix = [0u8; 4];
    sock.read_exact(&mut prefix).await.ok()?;
    let text = std::str::from_utf8(&prefix).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let len = usize::from_str_radix(text, 16).ok()?;
    let mut payload = vec![0u8; len];
    sock.read_exact(&mut payload).await.ok()?;
    let request = String::from_utf8_lossy(&payload).into_owned();
    lock(&shared.requests).push(request.clone());
    Some(request)
}

async fn serve(mut sock: TcpStream, shared: Arc<Shared>) {
    let _ = serve_inner(&mut sock, &shared).await;
}

async fn serve_inner(sock: &mut TcpStream, shared: &Shared) -> std::io::Result<()> {
    let Some(request) = read_request(sock, shared).await else {
        return Ok(());
    };
    match request.as_str() {
        "host:version" => okay(sock, Some(b"0029")).await,
        "host:devices" | "host:devices-l" => {
            let list = render(&lock(&shared.state), request.ends_with("-l"));
            okay(sock, Some(list.as_bytes())).await
        }
        "host:track-devices" | "host:track-devices-l" => {
            track(sock, shared, request.ends_with("-l")).await
        }
        r => match r.strip_prefix("host:transport:") {
            Some(serial) => transport(sock, shared, serial).await,
            None => fail(sock, "unknown host service").await,
        },
    }
}

async fn track(sock: &mut TcpStream, shared: &Shared, long: bool) -> std::io::Result<()> {
    // Subscribe before the first list, so no change falls in between.
    let mut pushes = shared.pushes.subscribe();
    let list = render(&lock(&shared.state), long);
    okay(sock, Some(list.as_bytes())).await?;
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            // adb closes a tracker on EOF and on any data from the client.
            _ = sock.read(&mut buf) => return Ok(()),
            push = pushes.recv() => match push {
                Ok(Push::ListChanged) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let list = render(&lock(&shared.state), long);
                    sock.write_all(&frame(list.as_bytes())).await?;
                }
                Ok(Push::Raw(bytes)) => sock.write_all(&bytes).await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

async fn transport(sock: &mut TcpStream, shared: &Shared, serial: &str) -> std::io::Result<()> {
    let device = lock(&shared.state).devices.get(serial).cloned();
    let device = match device {
        Some(d) if d.state == "device" => d,
        other => return fail(sock, &refusal(serial, other.map(|d| d.state))).await,
    };
    okay(sock, None).await?;
    let Some(request) = read_request(sock, shared).await else {
        return Ok(());
    };
    let Some(args) = request.strip_prefix("shell:getprop") else {
        return fail(sock, "closed").await;
    };
    if let Some(message) = &device.getprop_failure {
        return fail(sock, message).await;
    }
    let out = match args.trim() {
        "" => device
            .props
            .iter()
            .map(|(k, v)| format!("[{k}]: [{v}]\n"))
            .collect::<String>(),
        name => format!("{}\n", device.props.get(name).map_or("", String::as_str)),
    };
    okay(sock, None).await?;
    sock.write_all(out.as_bytes()).await?;
    sock.shutdown().await
}

/// adb's `FAIL` message for a transport to a device that cannot answer.
fn refusal(serial: &str, state: Option<String>) -> String {
    match state.as_deref() {
        None => format!("device '{serial}' not found"),
        Some("unauthorized") => {
            "device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n\
                                 Try 'adb kill-server' if that seems wrong.\n\
                                 Otherwise check for a confirmation dialog on your device."
                .to_string()
        }
        Some("authorizing") => "device still authorizing".into(),
        Some("connecting") => "device still connecting".into(),
        Some(_) => "device offline".into(),
    }
}
