//! [`Postgres`]: a real PostgreSQL server per test, from `initdb`/`pg_ctl`
//! in a temp dir on an ephemeral port, plus a tiny blocking query helper.
//!
//! * Binaries are looked up in `$PG_BIN`, `/usr/local/bin`,
//!   `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package) and
//!   `$PATH`; missing ones are an error naming [`INSTALL`].
//! * PostgreSQL refuses to run as root. When the tests run as root the
//!   server runs as `nobody` (`setpriv --reuid/--regid`, no supplementary
//!   groups): the data directory is created for and owned by that user.
//!   Otherwise it runs as the current user.
//! * The server listens on 127.0.0.1 only (its socket file stays in the
//!   data directory), trusts local connections (user `postgres`), and runs
//!   with `fsync=off` (test speed; durability is not what these tests
//!   check). [`Postgres::stop`] / [`Postgres::start_again`] inject a
//!   database outage; dropping it stops the server (immediate mode).
//! * [`Postgres::start_tls`] makes TCP TLS-only (`ssl = on` with the
//!   server certificate of a [`TlsCerts`], which names `127.0.0.1` and
//!   `localhost`; `hostssl` accepted, `hostnossl` rejected), optionally
//!   requiring a client certificate signed by the test CA whose CN is the
//!   user (`cert` authentication, as CockroachDB does). The harness's own
//!   [`Postgres::query`] then goes over the Unix socket (trusted).

use crate::tls_certs::TlsCerts;
use anyhow::{bail, ensure, Context, Result};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// How to install the server binaries on Debian.
pub const INSTALL: &str = "apt-get install postgresql";

/// The uid/gid the server runs as when the tests run as root (`nobody`).
const UNPRIVILEGED: u32 = 65534;

/// A running (or stopped) PostgreSQL; see the module docs.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    running: bool,
    /// Started by [`Postgres::start_tls`].
    tls: bool,
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn bin_dir() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PG_BIN") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from("/usr/local/bin"));
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|d| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| d.join(b).is_file())
        })
        .with_context(|| {
            format!(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in $PG_BIN, \
                 /usr/local/bin, /usr/lib/postgresql/*/bin or $PATH; the registry tests run a \
                 real PostgreSQL: `{INSTALL}`"
            )
        })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

impl Postgres {
    /// initdb + start in `dir` (created if needed) on a free port.
    pub fn start(dir: &Path) -> Result<Postgres> {
        Self::start_with(dir, None)
    }

    /// [`Postgres::start`] with TCP TLS-only (see the module docs): the
    /// server certificate and CA of `certs`; with `require_client_cert`,
    /// connections must present a client certificate signed by that CA
    /// whose CN is the user (e.g. [`TlsCerts::issue_client`] with CN
    /// `postgres`).
    pub fn start_tls(dir: &Path, certs: &TlsCerts, require_client_cert: bool) -> Result<Postgres> {
        Self::start_with(dir, Some((certs, require_client_cert)))
    }

    fn start_with(dir: &Path, tls: Option<(&TlsCerts, bool)>) -> Result<Postgres> {
        let bin = bin_dir()?;
        std::fs::create_dir_all(dir)?;
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data)?;
        if is_root() {
            for p in [dir, data.as_path()] {
                chown(p)?;
            }
        }
        let mut pg = Postgres {
            log: dir.join("postgres.log"),
            bin,
            data,
            port: 0,
            running: false,
            tls: tls.is_some(),
        };
        if is_root() {
            // The log file is written by the server user.
            std::fs::write(&pg.log, b"")?;
            chown(&pg.log)?;
        }
        let out = pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        ensure!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((certs, require_client_cert)) = tls {
            pg.configure_tls(certs, require_client_cert)?;
        }
        let mut last = None;
        for _ in 0..3 {
            pg.port = free_port()?;
            match pg.start_again() {
                Ok(()) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    /// Copies the server certificate, its key and the CA into the data
    /// directory (owned by the server user, key 0600 as PostgreSQL
    /// demands), turns `ssl` on and rewrites `pg_hba.conf`.
    fn configure_tls(&self, certs: &TlsCerts, require_client_cert: bool) -> Result<()> {
        for (from, to) in [
            (&certs.server.cert, "server.crt"),
            (&certs.server.key, "server.key"),
            (&certs.ca, "root.crt"),
        ] {
            let to = self.data.join(to);
            std::fs::copy(from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
            if is_root() {
                chown(&to)?;
            }
        }
        let conf = self.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(
            "\n# rae_tests::postgres::start_tls\nssl = on\nssl_cert_file = 'server.crt'\n\
             ssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n",
        );
        std::fs::write(&conf, text)?;
        let method = if require_client_cert { "cert" } else { "trust" };
        std::fs::write(
            self.data.join("pg_hba.conf"),
            format!(
                "# rae_tests::postgres::start_tls\nlocal all all trust\n\
                 hostssl all all 127.0.0.1/32 {method}\nhostnossl all all 127.0.0.1/32 reject\n"
            ),
        )?;
        Ok(())
    }

    /// Whether TCP is TLS-only ([`Postgres::start_tls`]).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<Output> {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={UNPRIVILEGED}"))
                .arg(format!("--regid={UNPRIVILEGED}"))
                .arg("--clear-groups")
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(&self.data)
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .stdin(Stdio::null());
        cmd.output()
            .with_context(|| format!("running {}", exe.display()))
    }

    /// Starts the (stopped) server on its port and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) -> Result<()> {
        let opts = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.data.display()
        );
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-l",
                &self.log.to_string_lossy(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed on port {}: {}\nlog:\n{}",
                self.port,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast mode: open connections are closed).
    pub fn stop(&mut self) -> Result<()> {
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )?;
        ensure!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A libpq URL for the `postgres` database (plain TCP; a
    /// [`Postgres::start_tls`] server needs TLS parameters added).
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// What [`Postgres::query`] connects with: [`Postgres::url`], or the
    /// Unix socket in the data directory for a TLS server.
    fn admin_conn(&self) -> String {
        if self.tls {
            format!(
                "host={} port={} user=postgres dbname=postgres",
                self.data.display(),
                self.port
            )
        } else {
            self.url()
        }
    }

    /// Runs `sql` and returns every row as text columns (`NULL` → `None`).
    /// Uses the simple query protocol; several statements are allowed.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let url = self.admin_conn();
        let sql = sql.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let task = tokio::spawn(conn);
            let messages = client
                .simple_query(&sql)
                .await
                .with_context(|| format!("query {sql}"))?;
            drop(client);
            let _ = task.await;
            let mut rows = Vec::new();
            for m in messages {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                }
            }
            Ok(rows)
        })
    }

    /// The single value of a one-row, one-column query.
    pub fn scalar(&self, sql: &str) -> Result<String> {
        let rows = self.query(sql)?;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .with_context(|| format!("no value from {sql}"))
    }

    /// The last 40 lines of the server log.
    pub fn log_tail(&self) -> String {
        crate::log_tail(&self.log, 40)
    }

    /// CPU seconds (user + system) the server has used so far: the
    /// postmaster's own and its reaped children's (backends that ended:
    /// `cutime`/`cstime`), plus its live children's (background workers,
    /// open backends). A backend's time moves from "live" to "reaped" when
    /// it exits, so read this a moment after closing connections.
    pub fn cpu_secs(&self) -> Option<f64> {
        let pid: i32 = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        let mut ticks = proc_ticks(pid, true)?;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if proc_ppid(child) == Some(pid) {
                ticks += proc_ticks(child, false).unwrap_or(0.0);
            }
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Some(ticks / hz.max(1) as f64)
    }
}

/// The fields of `/proc/PID/stat` after the command name (field 3 on).
fn proc_stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn proc_ppid(pid: i32) -> Option<i32> {
    proc_stat_fields(pid)?.get(1)?.parse().ok()
}

/// utime + stime (fields 14, 15), with `children` also cutime + cstime
/// (16, 17), in clock ticks.
fn proc_ticks(pid: i32, children: bool) -> Option<f64> {
    let f = proc_stat_fields(pid)?;
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let mut t = field(11)? + field(12)?;
    if children {
        t += field(13)? + field(14)?;
    }
    Some(t)
}

fn chown(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::chown(c.as_ptr(), UNPRIVILEGED, UNPRIVILEGED) };
    ensure!(
        rc == 0,
        "chown {} to nobody: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D",
                    &self.data.to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}
