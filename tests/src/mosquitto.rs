//! [`Mosquitto`]: a real MQTT broker (Debian's `mosquitto`, 2.0) as a child
//! process, for the uplink tests.
//!
//! * [`Mosquitto::start`] writes a config into the given directory —
//!   `listener PORT 127.0.0.1` on a free ephemeral port (picked by binding
//!   port 0 and releasing it; another port is tried if mosquitto then fails
//!   to bind), `allow_anonymous true`, `persistence false`, `log_type all` —
//!   runs `/usr/sbin/mosquitto -c <conf>` with its log (stderr) appended to
//!   `mosquitto.log` there, and waits (bounded) until the port accepts TCP
//!   connections. [`Mosquitto::start_with_password`] requires a user name and
//!   password instead (`allow_anonymous false`, a `password_file` made with
//!   `mosquitto_passwd -b`); [`Mosquitto::set_password`] +
//!   [`Mosquitto::reload`] (SIGHUP) change it while the broker runs.
//! * [`Mosquitto::start_tls`] makes the listener TLS-only (`cafile`,
//!   `certfile`, `keyfile` from a [`TlsCerts`]); with `require_client_cert`
//!   a client must present a certificate signed by that CA
//!   (`require_certificate true`) and its CN becomes its user name
//!   (`use_identity_as_username true`, `allow_anonymous false`); without,
//!   `require_certificate false` and `allow_anonymous true`. Then
//!   [`Mosquitto::url`] is `mqtts://127.0.0.1:<port>`; readiness is still a
//!   plain TCP connect.
//! * [`Mosquitto::kill`] is SIGKILL (no goodbye to any client, sessions and
//!   retained messages lost: `persistence false`), [`Mosquitto::stop`] is
//!   SIGTERM, [`Mosquitto::restart`] starts it again on the same port.
//!   [`Mosquitto::freeze`] is SIGSTOP: connections stay open but nothing is
//!   read or acknowledged any more (`kill` still ends a frozen broker).
//! * The log ([`Mosquitto::log_text`]) has one line per packet, e.g.
//!   `Received PUBLISH from <client> (d0, q1, r1, m2, '<topic>', ... (N bytes))`,
//!   `Client <id> disconnected.` (clean DISCONNECT) or
//!   `Client <id> closed its connection.` (socket closed without one).
//!
//! It runs as the current user (`user root` keeps a root mosquitto from
//! switching to the `mosquitto` user, which could not read the temp dir).
//! Dropping it SIGKILLs it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::tls_certs::TlsCerts;

/// The broker binary (Debian package `mosquitto`).
pub const BINARY: &str = "/usr/sbin/mosquitto";
/// The password file tool (same package).
pub const PASSWD_BINARY: &str = "/usr/bin/mosquitto_passwd";
/// How long [`Mosquitto::start`] / [`Mosquitto::restart`] wait for the port.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
const BIND_ATTEMPTS: usize = 5;

/// A running (or killed, until restarted) mosquitto. See the module docs.
#[derive(Debug)]
pub struct Mosquitto {
    dir: PathBuf,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    passwd: Option<PathBuf>,
    tls: Option<Tls>,
    child: Option<Child>,
}

/// The TLS listener's files and whether it requires client certificates.
#[derive(Debug, Clone)]
struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    require_client_cert: bool,
}

impl Mosquitto {
    /// Anonymous access, on a free port; files go into `dir`.
    pub fn start(dir: &Path) -> Result<Mosquitto> {
        Self::launch(dir, None, None)
    }

    /// Only `user` with `password` may connect (`allow_anonymous false`).
    pub fn start_with_password(dir: &Path, user: &str, password: &str) -> Result<Mosquitto> {
        std::fs::create_dir_all(dir)?;
        let file = dir.join("mosquitto.passwd");
        passwd(&["-c", "-b"], &file, user, password)?;
        Self::launch(dir, Some(file), None)
    }

    /// A TLS listener with `certs`' CA and server certificate; clients
    /// must present a certificate signed by that CA if
    /// `require_client_cert` (see the module docs).
    pub fn start_tls(dir: &Path, certs: &TlsCerts, require_client_cert: bool) -> Result<Mosquitto> {
        let tls = Tls {
            ca: certs.ca.clone(),
            cert: certs.server.cert.clone(),
            key: certs.server.key.clone(),
            require_client_cert,
        };
        Self::launch(dir, None, Some(tls))
    }

    fn launch(dir: &Path, passwd: Option<PathBuf>, tls: Option<Tls>) -> Result<Mosquitto> {
        ensure!(
            Path::new(BINARY).is_file(),
            "{BINARY} is missing; the uplink tests run a real MQTT broker: `apt-get install mosquitto`"
        );
        std::fs::create_dir_all(dir)?;
        let mut broker = Mosquitto {
            dir: dir.to_path_buf(),
            port: 0,
            conf: dir.join("mosquitto.conf"),
            log: dir.join("mosquitto.log"),
            passwd,
            tls,
            child: None,
        };
        let mut last_error = None;
        for _ in 0..BIND_ATTEMPTS {
            broker.port = free_port()?;
            broker.write_conf()?;
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made"))).context(format!(
            "mosquitto did not start in {BIND_ATTEMPTS} attempts"
        ))
    }

    fn write_conf(&self) -> Result<()> {
        let mut conf = format!(
            "listener {} 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type all\n\
             connection_messages true\nuser root\n",
            self.port
        );
        match (&self.passwd, &self.tls) {
            (Some(file), _) => {
                conf += &format!("allow_anonymous false\npassword_file {}\n", file.display())
            }
            (None, Some(tls)) if tls.require_client_cert => {
                conf += "allow_anonymous false\nuse_identity_as_username true\n"
            }
            (None, _) => conf += "allow_anonymous true\n",
        }
        if let Some(tls) = &self.tls {
            conf += &format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display(),
                tls.require_client_cert
            );
        }
        std::fs::write(&self.conf, conf).with_context(|| format!("writing {}", self.conf.display()))
    }

    /// Spawns the broker and waits until its port accepts connections.
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(BINARY)
            .arg("-c")
            .arg(&self.conf)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {BINARY} (`apt-get install mosquitto`)"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(status) = self.child_mut()?.try_wait()? {
                self.child = None;
                bail!(
                    "mosquitto exited ({status}) on port {}; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                bail!(
                    "mosquitto did not accept connections on {addr} within {START_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> Result<&mut Child> {
        self.child.as_mut().context("mosquitto is not running")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:<port>` (`mqtts://` for [`Mosquitto::start_tls`]),
    /// for the agent's `[mqtt] broker`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Whether the listener is TLS ([`Mosquitto::start_tls`]).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The broker's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the broker process is alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        ensure!(self.is_running(), "mosquitto is not running");
        crate::signal_child(self.child_mut()?, signal)
    }

    /// Waits (bounded) for the broker to exit after a signal, then reaps it.
    fn reap(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    }

    /// SIGKILL: the broker vanishes without a word to its clients.
    pub fn kill(&mut self) -> Result<()> {
        self.signal(libc::SIGKILL)?;
        ensure!(
            self.reap(Duration::from_secs(5))?,
            "mosquitto survived SIGKILL for 5 s"
        );
        Ok(())
    }

    /// SIGSTOP: the broker stops reading and acknowledging at once; its
    /// clients' connections stay open (what they send waits in the socket
    /// buffers). Only [`Mosquitto::kill`] ends a frozen broker.
    pub fn freeze(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGTERM (SIGKILL if it has not exited within 5 s).
    pub fn stop(&mut self) -> Result<()> {
        self.signal(libc::SIGTERM)?;
        if !self.reap(Duration::from_secs(5))? {
            self.kill()?;
        }
        Ok(())
    }

    /// SIGHUP: mosquitto reloads its config and password file.
    pub fn reload(&mut self) -> Result<()> {
        self.signal(libc::SIGHUP)
    }

    /// Starts the broker again on the same port (stopping it first if it
    /// still runs). Retries while the port is not free again yet.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.context(format!("restarting on port {}", self.port))),
            }
        }
    }

    /// Sets (or adds) `user`'s password in the password file; takes effect
    /// at [`Mosquitto::reload`] or [`Mosquitto::restart`].
    pub fn set_password(&self, user: &str, password: &str) -> Result<()> {
        let file = self
            .passwd
            .as_ref()
            .context("this broker has no password file")?;
        passwd(&["-b"], file, user, password)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far (across restarts).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 60 lines of the log.
    pub fn log_tail(&self) -> String {
        crate::log_tail(&self.log, 60)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago (bound to port 0, then released).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `mosquitto_passwd <flags> <file> <user> <password>`.
fn passwd(flags: &[&str], file: &Path, user: &str, password: &str) -> Result<()> {
    ensure!(
        Path::new(PASSWD_BINARY).is_file(),
        "{PASSWD_BINARY} is missing: `apt-get install mosquitto`"
    );
    let out = Command::new(PASSWD_BINARY)
        .args(flags)
        .arg(file)
        .args([user, password])
        .stdin(Stdio::null())
        .output()
        .context("running mosquitto_passwd")?;
    ensure!(
        out.status.success(),
        "mosquitto_passwd {flags:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(port: u16) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    }

    #[test]
    fn mosquitto_starts_kills_and_restarts_on_the_same_port() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut broker = Mosquitto::start(dir.path())?;
        let port = broker.port();
        assert_ne!(port, 0);
        assert_eq!(broker.url(), format!("mqtt://127.0.0.1:{port}"));
        assert!(accepts(port), "not listening: {}", broker.log_tail());
        assert!(
            broker.log_text().contains("running"),
            "{}",
            broker.log_tail()
        );

        broker.kill()?;
        assert!(!broker.is_running());
        assert!(!accepts(port), "port {port} still open after SIGKILL");
        assert!(broker.kill().is_err(), "killing a dead broker must fail");

        broker.restart()?;
        assert_eq!(broker.port(), port);
        assert!(
            broker.is_running() && accepts(port),
            "{}",
            broker.log_tail()
        );
        broker.reload()?;
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            broker.is_running(),
            "SIGHUP killed it: {}",
            broker.log_tail()
        );

        broker.stop()?;
        assert!(!accepts(port));
        let text = broker.log_text();
        assert_eq!(text.matches("running").count(), 2, "{text}");
        assert!(text.contains("terminating"), "{text}");
        Ok(())
    }

    #[test]
    fn a_tls_broker_requiring_client_certificates_names_clients_by_their_cn() -> Result<()> {
        use crate::mqtt_sub::Subscriber;
        let dir = tempfile::tempdir()?;
        let certs = TlsCerts::generate(&dir.path().join("certs"), "rae-cn-test")?;
        let mut broker = Mosquitto::start_tls(&dir.path().join("broker"), &certs, true)?;
        let port = broker.port();
        assert!(broker.is_tls());
        assert_eq!(broker.url(), format!("mqtts://127.0.0.1:{port}"));
        let conf = std::fs::read_to_string(&broker.conf)?;
        for line in [
            "require_certificate true",
            "use_identity_as_username true",
            "allow_anonymous false",
        ] {
            assert!(conf.lines().any(|l| l == line), "no {line:?}: {conf}");
        }
        let ca = certs.ca_pem()?;
        let tls = |client| rumqttc::Transport::tls(ca.clone(), client, None);
        let sub = Subscriber::connect_tls(port, "tls-sub", tls(Some(certs.client.read()?)))?;
        assert!(sub.connected());
        let log = broker.log_text();
        assert!(
            log.contains("as tls-sub") && log.contains("u'rae-cn-test'"),
            "the CN is not the user name: {log}"
        );
        let refused = Subscriber::connect_tls(port, "tls-no-cert", tls(None));
        let refused = refused
            .err()
            .context("connected without a client certificate")?;
        eprintln!("without a client certificate: {refused:#}");
        assert!(
            broker
                .log_text()
                .contains("peer did not return a certificate"),
            "{}",
            broker.log_tail()
        );
        broker.kill()?;
        broker.restart()?;
        assert!(broker.is_running() && broker.url().starts_with("mqtts://"));
        Ok(())
    }

    #[test]
    fn a_tls_broker_without_client_certificates_takes_anonymous_tls_clients() -> Result<()> {
        use crate::mqtt_sub::Subscriber;
        let dir = tempfile::tempdir()?;
        let certs = TlsCerts::generate(&dir.path().join("certs"), "rae-anon")?;
        let broker = Mosquitto::start_tls(&dir.path().join("broker"), &certs, false)?;
        let conf = std::fs::read_to_string(&broker.conf)?;
        assert!(
            conf.contains("require_certificate false\n") && conf.contains("allow_anonymous true\n"),
            "{conf}"
        );
        let ca = certs.ca_pem()?;
        let sub = Subscriber::connect_tls(
            broker.port(),
            "tls-anon",
            rumqttc::Transport::tls(ca, None, None),
        )?;
        assert!(sub.connected(), "{}", broker.log_tail());
        Ok(())
    }

    #[test]
    fn a_password_broker_takes_a_changed_password_at_reload() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut broker = Mosquitto::start_with_password(dir.path(), "rae", "s3cret")?;
        let conf = std::fs::read_to_string(&broker.conf)?;
        assert!(conf.contains("allow_anonymous false"), "{conf}");
        let port = broker.port();
        let login = |id, pw| crate::mqtt_sub::Subscriber::connect_as(port, id, Some(("rae", pw)));
        drop(login("before", "s3cret")?);
        broker.set_password("rae", "other")?;
        broker.reload()?;
        // The new password works only once the reload took effect.
        let deadline = Instant::now() + START_TIMEOUT;
        while login("after", "other").is_err() {
            assert!(Instant::now() < deadline, "{}", broker.log_tail());
        }
        Ok(())
    }
}
