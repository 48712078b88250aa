//! Discovery benchmark (prints figures; asserts no timing).
//!
//! Issue requirement: "with 100 simulated ADB devices on the fake server and
//! 16 PTY serial devices, time from agent start to all devices journaled
//! with properties, and the agent's CPU time while idle for 60 s afterwards
//! (target: under 1% of one core)".
//!
//! Setup, all in this process:
//! * a [`FakeAdbServer`] (on a one-worker tokio runtime) with 100 devices in state `device`, each with the
//!   five default properties (`ro.product.manufacturer`, `ro.product.model`,
//!   `ro.build.fingerprint`, `ro.build.version.release`, `ro.serialno`);
//! * 16 kernel PTY pairs; a thread per master plays a DUT that answers every
//!   request line with `U-Boot 2023.04 esn=ESN00NN\r\n`. The slaves are set to
//!   raw mode once, and this process keeps each slave open, so a probe's close
//!   never hangs up the pair;
//! * an agent config: temp `state_dir`, `[udev] enabled = false`, `[adb]`
//!   on the fake server (default properties), one `[[serial.profiles]]` whose
//!   `paths` are the 16 `/dev/pts/N` slaves (listed, since a glob over
//!   `/dev/pts` would also select `ptmx` and other terminals), every other
//!   profile key at its default (`send = '\r\n'`, 115200 baud, 2000 ms
//!   timeout, `reprobe_interval_secs = 30`), UUCP locks in a temp directory.
//!
//! Measured, in `RAE_BENCH_RUNS` (default 11) runs, each a baseline followed
//! by a fresh agent (new state_dir, same fake server and PTYs); medians (the
//! upper one for an even count) are reported, for all runs and for the runs
//! without a listen overflow (see 2):
//! 1. Baseline: one thread with blocking std I/O does, sequentially, one
//!    `host:devices-l` and 100 `host:transport:<serial>` + `shell:getprop`
//!    round trips against the same fake server (output parsed with the
//!    agent's own parsers), then one probe round of the 16 ports (open, write
//!    the profile's `send` bytes, read until the profile's `expect` regex
//!    matches complete lines, close). No UUCP locks, no termios save, raw
//!    mode, baud setting or restore, no journal, no process start.
//! 2. Discovery: wall time from spawning the release `rae-agent run` until
//!    its journal (read in-process, read-only, polled every 20 ms) holds 116
//!    present devices with their properties: the 100 expected
//!    `android.product.model` values and the 16 expected `serial.esn` values.
//!    Also printed: the same span by the journal's own clock (newest event
//!    `ts_ms` minus the spawn time), the agent's CPU time until then, the
//!    number of events journaled, the time this bench spent reading the
//!    journal, and the run's `TcpExt ListenOverflows` (connections dropped
//!    because a listen queue was full; the agent opens its getprop
//!    connections all at once, and a dropped one is retried by TCP only
//!    after its 1 s initial retransmission timeout). Every agent but the
//!    last is then stopped with SIGTERM.
//! 3. Idle, last run only: the agent's CPU time (utime + stime of
//!    /proc/<pid>/stat, in clock ticks) over the next `RAE_BENCH_IDLE_SECS`
//!    (default 60) seconds, as a percentage of one core; the window starts
//!    right after (2). Also peak RSS (VmHWM), journal events written, DUT
//!    requests (liveness re-probes) and adb connections during the window,
//!    and a per-thread-name split of the idle CPU (live threads only).
//! 4. Every agent gets SIGTERM and must exit 0.
//!
//! Run: `cargo build --release -p rae-agent && cargo bench -p rae-tests --bench discovery`
//! (cargo bench does not build the agent binary; a missing or stale one
//! fails with that hint). Quick check: `RAE_BENCH_IDLE_SECS=5`;
//! `RAE_BENCH_LOG=1` also prints the agent's log (info level).

#[path = "support/discovery_duts.rs"]
mod discovery_duts;

use discovery_duts::Dut;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rae_agent::config::Settings;
use rae_agent::journal::read::JournalReader;
use rae_agent::journal::JournalError;
use rae_agent::probe::adb::listing::{parse_device_list, parse_getprop};
use rae_agent::probe::serial::Profile;
use rae_agent::registry::record::Presence;
use rae_protocol::AttrValue;
use rae_tests::agent::{read_events, wait_until, AgentProcess};
use rae_tests::fake_adb::FakeAdbServer;

const ADB_DEVICES: usize = 100;
const SERIAL_DEVICES: usize = 16;
const EXPECT: &str = r"U-Boot (?P<firmware>\S+) .*esn=(?P<esn>\w+)";
const RELEASE_HINT: &str = "cargo build --release -p rae-agent";
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "discovery: a benchmark; run it with `cargo bench -p rae-tests --bench discovery`"
        );
        return Ok(());
    }
    let idle_secs: u64 = match std::env::var("RAE_BENCH_IDLE_SECS") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("RAE_BENCH_IDLE_SECS={v:?}"))?,
        Err(_) => 60,
    };
    let runs: usize = match std::env::var("RAE_BENCH_RUNS") {
        Ok(v) => v.parse().with_context(|| format!("RAE_BENCH_RUNS={v:?}"))?,
        Err(_) => 11,
    };
    ensure!(runs > 0, "RAE_BENCH_RUNS must be at least 1");
    let binary = release_binary()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    // 1. The fake adb server and its devices (added before any tracker exists).
    let adb = rt.block_on(FakeAdbServer::start())?;
    let mut models = BTreeSet::new();
    for i in 0..ADB_DEVICES {
        let serial = format!("RAEBENCH{i:04}");
        let model = format!("Bench Phone {i:03}");
        adb.add_device(
            &serial,
            "device",
            &[
                ("ro.product.manufacturer", "rae-bench"),
                ("ro.product.model", &model),
                (
                    "ro.build.fingerprint",
                    "rae/bench/bench:14/UQ1A.240105.004/1:user/release-keys",
                ),
                ("ro.build.version.release", "14"),
                ("ro.serialno", &serial),
            ],
        );
        models.insert(model);
    }

    // 2. The serial DUTs.
    let duts = (0..SERIAL_DEVICES)
        .map(|i| Dut::start(format!("U-Boot 2023.04 esn=ESN{i:04}\r\n").into_bytes()))
        .collect::<Result<Vec<_>>>()?;
    let esns: BTreeSet<String> = (0..SERIAL_DEVICES).map(|i| format!("ESN{i:04}")).collect();

    // 3. The agent config: one state_dir (and log) per run.
    let dir = tempfile::tempdir()?;
    let lock_dir = dir.path().join("locks");
    std::fs::create_dir(&lock_dir)?;
    let run_dir = |n: usize| dir.path().join(format!("run{n}"));
    let config_text = |n: usize| config(&run_dir(n).join("state"), &lock_dir, &adb.server(), &duts);
    let settings = Settings::from_toml(&config_text(0), dir.path()).context("the bench config")?;
    let profile = &settings.serial.profiles[0];

    println!(
        "discovery benchmark: {ADB_DEVICES} ADB devices (fake adb server {}) + {SERIAL_DEVICES} PTY serial devices, {runs} runs",
        adb.server()
    );
    println!("agent binary: {}", binary.display());
    println!("load average at start: {}", loadavg());
    println!(
        "serial profile: send {:?}, bauds {:?}, timeout {:?}, reprobe every {:?}, ports {} .. {}",
        String::from_utf8_lossy(&profile.send),
        profile.baud_rates,
        profile.timeout,
        profile.reprobe_interval,
        duts[0].path,
        duts[SERIAL_DEVICES - 1].path
    );
    println!();

    // Alternating: baseline, then a fresh agent; every agent but the last is
    // stopped at once, the last one goes on to the idle window.
    let fixture = Fixture {
        binary: &binary,
        adb: &adb,
        duts: &duts,
        models: &models,
        esns: &esns,
    };
    let mut baselines = Vec::new();
    let mut discoveries = Vec::new();
    // Runs in which no connection hit a full listen queue.
    let mut clean = Vec::new();
    let mut stops = Vec::new();
    let mut last = None;
    for n in 0..runs {
        let b = baseline(adb.addr(), &duts, profile, &models, &esns)?;
        std::fs::create_dir(run_dir(n))?;
        let config_path = run_dir(n).join("agent.toml");
        std::fs::write(&config_path, config_text(n))?;
        let (agent, d) = fixture.discover(&config_path, &run_dir(n))?;
        println!(
            "run {}: baseline {:>6.1} ms (adb {:.1} + serial {:.1}) | agent {:>6.1} ms polled, {:>4} ms stamped \
             (first device {:.0} ms, all present {:.0} ms), {} events, agent CPU {:.0} ms, {} DUT requests, {} adb connections ({} listen overflows), \
             {} journal polls taking {:.1} ms",
            n + 1,
            ms(b.total()),
            ms(b.adb),
            ms(b.serial),
            ms(d.polled),
            d.stamped.as_millis(),
            ms(d.first_seen),
            ms(d.all_present),
            d.events,
            d.cpu_ms,
            d.dut_requests,
            d.adb_connections,
            d.listen_overflows,
            d.polls,
            ms(d.poll_time),
        );
        baselines.push(b.total());
        discoveries.push(d.polled);
        if d.listen_overflows == 0 {
            clean.push(d.polled);
        }
        if n + 1 < runs {
            stops.push(stop(agent)?);
        } else {
            last = Some((agent, run_dir(n)));
        }
    }
    let (mut agent, last_dir) = last.context("no run")?;
    let pid = agent.pid();
    let journal = last_dir.join("state/journal.db");

    // Idle.
    let idle_start_ticks = cpu_ticks(pid)?;
    let idle_start_threads = threads(pid)?;
    let idle_start_events = read_events(&journal)?.len();
    let idle_start_requests: usize = duts.iter().map(Dut::requests).sum();
    let idle_start_conns = adb.accepted_connections();
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    agent.ensure_running()?;
    let idle_ticks = cpu_ticks(pid)? - idle_start_ticks;
    let idle_wall = idle_started.elapsed();
    let idle_end_threads = threads(pid)?;
    let idle_events = read_events(&journal)?.len() - idle_start_events;
    let idle_requests = duts.iter().map(Dut::requests).sum::<usize>() - idle_start_requests;
    let idle_conns = adb.accepted_connections() - idle_start_conns;
    let still_online = progress(&journal, &mut None)?.map_or(0, |p| p.online);
    let peak_rss_kb = status_kb(pid, "VmHWM")?;
    let rss_kb = status_kb(pid, "VmRSS")?;
    stops.push(stop(agent)?);
    let log_text = std::fs::read_to_string(last_dir.join("agent.log")).unwrap_or_default();
    if std::env::var_os("RAE_BENCH_LOG").is_some() {
        println!("agent log of run {runs}:\n{log_text}");
    }
    let warnings = log_text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();

    // Report.
    let hz = clock_ticks_per_sec()?;
    let tick_ms = 1000.0 / hz as f64;
    let idle_cpu_ms = idle_ticks as f64 * tick_ms;
    let idle_pct = 100.0 * idle_cpu_ms / (idle_wall.as_secs_f64() * 1000.0);
    let (agent_med, agent_min, agent_max) = median_min_max(&mut discoveries);
    let (base_med, base_min, base_max) = median_min_max(&mut baselines);
    let ratio = agent_med.as_secs_f64() / base_med.as_secs_f64();
    let clean_runs = clean.len();
    let (clean_med, _, _) = median_min_max(&mut clean);
    let clean_ratio = clean_med.as_secs_f64() / base_med.as_secs_f64();
    println!();
    println!(
        "discovery, spawn -> 116 devices with properties in the journal (polled every 20 ms):"
    );
    println!(
        "  agent:    median {:>6.1} ms (min {:.1}, max {:.1}) over {runs} runs",
        ms(agent_med),
        ms(agent_min),
        ms(agent_max)
    );
    println!(
        "  agent, runs without a listen overflow: {clean_runs} of {runs}, median {:.1} ms",
        ms(clean_med)
    );
    println!(
        "  baseline: median {:>6.1} ms (min {:.1}, max {:.1}); agent / baseline = {ratio:.1}",
        ms(base_med),
        ms(base_min),
        ms(base_max)
    );
    println!("  agent / baseline, runs without a listen overflow: {clean_ratio:.1}");
    println!();
    println!(
        "idle, run {runs} ({:.1} s window):",
        idle_wall.as_secs_f64()
    );
    println!(
        "  agent CPU: {idle_ticks} ticks ({idle_cpu_ms:.0} ms at {hz} ticks/s) = {idle_pct:.3}% of one core (target < 1%)"
    );
    println!(
        "  journal events written: {idle_events}; DUT requests (re-probes): {idle_requests}; \
         new adb connections: {idle_conns}; devices online at the end: {still_online}"
    );
    println!("  by thread name (live threads; utime+stime ticks, context switches):");
    for (name, (ticks, switches)) in thread_deltas(&idle_start_threads, &idle_end_threads) {
        println!("    {name:<24} {ticks:>5} ticks {switches:>7} switches");
    }
    println!(
        "  threads: {} at start, {} at end",
        idle_start_threads.len(),
        idle_end_threads.len()
    );
    println!("load average at the end: {}", loadavg());
    println!("memory: peak RSS (VmHWM) {peak_rss_kb} kB, RSS at the end {rss_kb} kB");
    let slowest_stop = stops.iter().max().copied().unwrap_or_default();
    println!(
        "stop: SIGTERM -> exit 0 in every run (slowest {:.0} ms); last agent log: {} lines, {warnings} WARN/ERROR",
        ms(slowest_stop),
        log_text.lines().count()
    );
    println!();
    println!(
        "summary: discovery {:.0} ms (without listen overflows {:.0} ms, {clean_runs}/{runs} runs) | baseline {:.1} ms | \
         ratio {ratio:.1} ({clean_ratio:.1}) | idle CPU {idle_pct:.3}% over {:.0} s | peak RSS {:.1} MiB",
        ms(agent_med),
        ms(clean_med),
        ms(base_med),
        idle_wall.as_secs_f64(),
        peak_rss_kb as f64 / 1024.0
    );
    drop(duts);
    drop(adb);
    Ok(())
}

/// What every run shares.
struct Fixture<'a> {
    binary: &'a Path,
    adb: &'a FakeAdbServer,
    duts: &'a [Dut],
    models: &'a BTreeSet<String>,
    esns: &'a BTreeSet<String>,
}

/// One run's discovery figures.
#[derive(Debug)]
struct Discovery {
    /// Spawn until the poll that saw everything.
    polled: Duration,
    /// Spawn (wall clock) until the newest journaled event's `ts_ms`.
    stamped: Duration,
    first_seen: Duration,
    all_present: Duration,
    cpu_ms: f64,
    dut_requests: usize,
    adb_connections: usize,
    listen_overflows: u64,
    /// Rows in the journal's `events` table at that point.
    events: usize,
    /// Journal reads by this bench while waiting, and their total time.
    polls: usize,
    poll_time: Duration,
}

impl Fixture<'_> {
    /// Starts the agent on `config` (state and log in `dir`) and waits until
    /// the journal holds every device with its properties.
    fn discover(&self, config: &Path, dir: &Path) -> Result<(AgentProcess, Discovery)> {
        let requests_before: usize = self.duts.iter().map(Dut::requests).sum();
        let conns_before = self.adb.accepted_connections();
        let overflows_before = listen_overflows()?;
        let journal = dir.join("state/journal.db");
        let spawned_wall_ms = unix_ms();
        let spawned = Instant::now();
        let mut agent = AgentProcess::start(self.binary, config, &dir.join("agent.log"))?;
        let mut reader: Option<JournalReader> = None;
        let (mut first_seen, mut all_present) = (None, None);
        let (mut polls, mut poll_time) = (0, Duration::ZERO);
        let waited = wait_until(
            "all 116 devices journaled with their properties",
            DISCOVERY_TIMEOUT,
            || {
                agent.ensure_running()?;
                let poll_started = Instant::now();
                let p = progress(&journal, &mut reader)?;
                polls += 1;
                poll_time += poll_started.elapsed();
                let Some(p) = p else {
                    return Ok(None);
                };
                if first_seen.is_none() && p.present > 0 {
                    first_seen = Some(spawned.elapsed());
                }
                if all_present.is_none() && p.present >= ADB_DEVICES + SERIAL_DEVICES {
                    all_present = Some(spawned.elapsed());
                }
                let done = &p.models == self.models && &p.esns == self.esns;
                Ok(done.then(|| (spawned.elapsed(), p.present)))
            },
        );
        let (polled, present) = match waited {
            Ok(w) => w,
            Err(e) => bail!("{e:#}\nagent log:\n{}", agent.log_tail()),
        };
        let cpu_ms = cpu_ticks(agent.pid())? as f64 * 1000.0 / clock_ticks_per_sec()? as f64;
        ensure!(
            present == ADB_DEVICES + SERIAL_DEVICES,
            "{present} present devices, expected {}",
            ADB_DEVICES + SERIAL_DEVICES
        );
        let events = read_events(&journal)?;
        let newest = events.iter().map(|e| e.ts_ms).max();
        let stamped = newest
            .unwrap_or(spawned_wall_ms)
            .saturating_sub(spawned_wall_ms);
        let discovery = Discovery {
            polled,
            stamped: Duration::from_millis(stamped),
            first_seen: first_seen.unwrap_or(polled),
            all_present: all_present.unwrap_or(polled),
            cpu_ms,
            dut_requests: self.duts.iter().map(Dut::requests).sum::<usize>() - requests_before,
            adb_connections: self.adb.accepted_connections() - conns_before,
            listen_overflows: listen_overflows()? - overflows_before,
            events: events.len(),
            polls,
            poll_time,
        };
        Ok((agent, discovery))
    }
}

/// SIGTERM; the agent must exit 0 within 10 s. Returns how long it took.
fn stop(agent: AgentProcess) -> Result<Duration> {
    agent.stop_gracefully()
}

fn median_min_max(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |i: usize| v.get(i).copied().unwrap_or_default();
    (at(v.len() / 2), at(0), at(v.len().saturating_sub(1)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn config(state_dir: &Path, lock_dir: &Path, adb: &str, duts: &[Dut]) -> String {
    let paths: Vec<String> = duts.iter().map(|d| format!("{:?}", d.path)).collect();
    format!(
        "rae_id = \"rae-bench\"\nstate_dir = {:?}\nlog_level = \"info\"\n\n\
         [udev]\nenabled = false\n\n\
         [adb]\nserver = {adb:?}\n\n\
         [serial]\nlock_dirs = [{:?}]\n\n\
         [[serial.profiles]]\nname = \"uboot\"\npaths = [{}]\nexpect = '{EXPECT}'\n",
        state_dir.display().to_string(),
        lock_dir.display().to_string(),
        paths.join(", ")
    )
}

/// `target/<profile>/rae-agent` beside this bench's `deps/`, failing with
/// [`RELEASE_HINT`] if it is missing or older than a source in its dep-info.
fn release_binary() -> Result<PathBuf> {
    rae_tests::agent::agent_binary_with_hint(RELEASE_HINT)
}

// ---------------------------------------------------------------- journal

/// What the journal holds now.
#[derive(Debug, Default)]
struct Progress {
    present: usize,
    online: usize,
    models: BTreeSet<String>,
    esns: BTreeSet<String>,
}

/// Reads every device record; `None` while the journal does not exist yet.
fn progress(journal: &Path, reader: &mut Option<JournalReader>) -> Result<Option<Progress>> {
    if reader.is_none() {
        match JournalReader::open(journal) {
            Ok(r) => *reader = Some(r),
            Err(JournalError::Missing { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    let Some(r) = reader.as_ref() else {
        return Ok(None);
    };
    let text = |v: Option<&AttrValue>| match v {
        Some(AttrValue::Text(s)) => Some(s.clone()),
        _ => None,
    };
    let mut p = Progress::default();
    for d in r.devices()? {
        if d.presence() != Presence::Present {
            continue;
        }
        p.present += 1;
        if text(d.attrs.get("state")).as_deref() == Some("online") {
            p.online += 1;
        }
        p.models.extend(text(d.attrs.get("android.product.model")));
        p.esns.extend(text(d.attrs.get("serial.esn")));
    }
    Ok(Some(p))
}

// ---------------------------------------------------------------- /proc

fn clock_ticks_per_sec() -> Result<u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) = {hz}");
    Ok(u64::try_from(hz)?)
}

/// (comm, utime + stime) of a `/proc/.../stat` file.
fn stat_ticks(path: &str) -> Result<(String, u64)> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let (head, tail) = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: {stat:?}"))?;
    let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
    // Fields after the comm start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let v = fields
            .get(n - 3)
            .with_context(|| format!("{path}: field {n}"))?;
        Ok(v.parse()?)
    };
    Ok((comm, field(14)? + field(15)?))
}

/// The process's CPU time (all threads, live and exited), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    Ok(stat_ticks(&format!("/proc/{pid}/stat"))?.1)
}

/// A `kB` line of `/proc/<pid>/status`.
fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews
/// every figure here).
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `TcpExt ListenOverflows` of this network namespace (`/proc/net/netstat`):
/// connections dropped because a listen queue was full, which the client
/// only retries after TCP's 1 s initial retransmission timeout.
fn listen_overflows() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat")?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no TcpExt in /proc/net/netstat");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")
        .context("no ListenOverflows in /proc/net/netstat")?;
    let value = values
        .split_whitespace()
        .nth(at)
        .context("short TcpExt line")?;
    Ok(value.parse()?)
}

/// tid → (comm, CPU ticks, context switches) of the live threads.
fn threads(pid: u32) -> Result<BTreeMap<u64, (String, u64, u64)>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let base = format!("/proc/{pid}/task/{tid}");
        // A thread may exit between the listing and the read.
        let Ok((comm, ticks)) = stat_ticks(&format!("{base}/stat")) else {
            continue;
        };
        let status = std::fs::read_to_string(format!("{base}/status")).unwrap_or_default();
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        out.insert(tid, (comm, ticks, switches));
    }
    Ok(out)
}

/// Per thread name: ticks and context switches between two snapshots
/// (threads that exited in between are missing).
fn thread_deltas(
    before: &BTreeMap<u64, (String, u64, u64)>,
    after: &BTreeMap<u64, (String, u64, u64)>,
) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (tid, (comm, ticks, switches)) in after {
        let (t0, s0) = before.get(tid).map_or((0, 0), |(_, t, s)| (*t, *s));
        let e = out.entry(comm.clone()).or_default();
        e.0 += ticks.saturating_sub(t0);
        e.1 += switches.saturating_sub(s0);
    }
    out
}

// ---------------------------------------------------------------- baseline

#[derive(Debug)]
struct Baseline {
    adb: Duration,
    serial: Duration,
}

impl Baseline {
    fn total(&self) -> Duration {
        self.adb + self.serial
    }
}

/// The same discovery done by a bare sequential client; see the module docs.
fn baseline(
    server: SocketAddr,
    duts: &[Dut],
    profile: &Profile,
    models: &BTreeSet<String>,
    esns: &BTreeSet<String>,
) -> Result<Baseline> {
    let started = Instant::now();
    let mut conn = adb_connect(server, "host:devices-l")?;
    let len = read_hex4(&mut conn)?;
    let mut list = vec![0u8; len];
    conn.read_exact(&mut list)?;
    drop(conn);
    let entries = parse_device_list(&String::from_utf8_lossy(&list));
    ensure!(
        entries.len() == ADB_DEVICES,
        "{} adb devices",
        entries.len()
    );
    let mut found = BTreeSet::new();
    for e in entries.iter().filter(|e| e.state == "device") {
        let mut conn = adb_connect(server, &format!("host:transport:{}", e.serial))?;
        adb_request(&mut conn, "shell:getprop")?;
        let mut out = Vec::new();
        conn.read_to_end(&mut out)?;
        let props = parse_getprop(&String::from_utf8_lossy(&out));
        found.extend(props.get("ro.product.model").cloned());
    }
    ensure!(&found == models, "baseline: getprop models {found:?}");
    let adb = started.elapsed();

    let started = Instant::now();
    let mut found = BTreeSet::new();
    for dut in duts {
        found.insert(serial_probe(&dut.path, profile)?);
    }
    ensure!(&found == esns, "baseline: serial answers {found:?}");
    Ok(Baseline {
        adb,
        serial: started.elapsed(),
    })
}

/// Connects and sends `service`, expecting `OKAY`.
fn adb_connect(server: SocketAddr, service: &str) -> Result<TcpStream> {
    let mut conn = TcpStream::connect_timeout(&server, IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    adb_request(&mut conn, service)?;
    Ok(conn)
}

fn adb_request(conn: &mut TcpStream, service: &str) -> Result<()> {
    conn.write_all(format!("{:04x}{service}", service.len()).as_bytes())?;
    let mut status = [0u8; 4];
    conn.read_exact(&mut status)?;
    if &status != b"OKAY" {
        let len = read_hex4(conn).unwrap_or(0);
        let mut message = vec![0u8; len];
        let _ = conn.read_exact(&mut message);
        bail!(
            "adb {service:?}: {} {}",
            String::from_utf8_lossy(&status),
            String::from_utf8_lossy(&message)
        );
    }
    Ok(())
}

fn read_hex4(conn: &mut TcpStream) -> Result<usize> {
    let mut prefix = [0u8; 4];
    conn.read_exact(&mut prefix)?;
    Ok(usize::from_str_radix(std::str::from_utf8(&prefix)?, 16)?)
}

/// Open, send, read until `expect` matches complete lines; the `esn` capture.
fn serial_probe(path: &str, profile: &Profile) -> Result<String> {
    let mut port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("opening {path}"))?;
    port.write_all(&profile.send)?;
    let deadline = Instant::now() + profile.timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            wait_readable(port.as_raw_fd(), left),
            "{path}: no answer within {:?}",
            profile.timeout
        );
        let n = port.read(&mut chunk)?;
        ensure!(n > 0, "{path}: EOF");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..=end]).into_owned();
        if let Some(esn) = profile.expect.captures(&text).and_then(|c| c.name("esn")) {
            return Ok(esn.as_str().to_string());
        }
    }
}

fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}
