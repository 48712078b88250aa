//! [`PartitionProxy`]: a TCP proxy in front of a real server (here
//! PostgreSQL) that can cut its open connections the way a network
//! partition does: bytes stop flowing both ways but neither side sees the
//! connection close, so a client waits for an answer until its own timeout.
//! Connections made afterwards pass, as after a route change.
//!
//! Not a fake of the server: every byte comes from the real one. Threads
//! only; dropping the proxy closes the listener and every connection.

use anyhow::{Context, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a pump checks whether it is cut or stopped.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct State {
    /// Connections numbered below this are cut.
    cut_below: AtomicU64,
    next_id: AtomicU64,
    stop: AtomicBool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct PartitionProxy {
    port: u16,
    state: Arc<State>,
}

impl PartitionProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards each
    /// connection to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> Result<PartitionProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the proxy")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        let s = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let id = s.next_id.fetch_add(1, Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let s = s.clone();
                        std::thread::spawn(move || pump(from, to, id, &s));
                    }
                }
            }
        });
        Ok(PartitionProxy { port, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every connection open now (bytes stop, sockets stay open);
    /// later connections pass.
    pub fn cut_open_connections(&self) {
        let next = self.state.next_id.load(Ordering::SeqCst);
        self.state.cut_below.store(next, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, s: &State) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        if id < s.cut_below.load(Ordering::SeqCst) {
            // Cut: read nothing, write nothing, keep both sockets open.
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Drop for PartitionProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
