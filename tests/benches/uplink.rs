//! MQTT uplink benchmark (prints figures; asserts no timing).
//!
//! Issue "MQTT uplink with store-and-forward": the uplink must keep up with
//! a bare MQTT client, drain an offline backlog quickly once the broker is
//! back, and do so in bounded memory.
//!
//! Setup, all in this process except the broker and the agent:
//! * Journals pre-filled without the daemon: [`Journal::open`] creates the
//!   schema, then event rows are inserted with rusqlite in 50k-row
//!   transactions. [`SESSIONS`] (100) sessions, round robin: event `i`
//!   belongs to session `i % 100` with `seq = i / 100 + 1`; seq 1 is an
//!   `attached` with ten attributes, every later one a `changed` that flips
//!   `android.adb_state` and sets `android.battery_level`. Payloads are the
//!   real wire envelopes ([`envelope`]`(rae_id, &Event).encode()`), all
//!   unpublished. No `sessions`/`devices` rows: the uplink publishes purely
//!   from `events` (`journal::outbox`), and with no device records the
//!   registry journals no checkpoints, so the journal holds exactly the
//!   pre-filled events. Each template is written once, checkpointed into
//!   the main file, and copied for every run.
//! * Per scenario a fresh mosquitto ([`Mosquitto::start`]) whose config is
//!   then adjusted and the broker restarted on the same port: `log_type all`
//!   (a log line per packet, a test-debugging aid that would make the
//!   broker's file I/O the bottleneck) becomes error/warning/notice;
//!   `persistence true` (saved only at exit, `autosave_interval 0`) so the
//!   subscriber's session survives the broker stop of the drain scenario;
//!   `max_queued_messages 0` (no limit) so a momentarily slower subscriber
//!   gets every message instead of mosquitto dropping beyond 1000 queued.
//!   `max_inflight_messages` (20 towards the subscriber) stays the default.
//! * A subscriber ([`BenchSub`]; rumqttc on its own thread, current-thread
//!   runtime; fixed client id, `clean_session = false`, `rae/v1/+/#` at QoS
//!   1, reconnecting every 2 ms) decodes each device message
//!   ([`Envelope::decode`]) and counts distinct `(session_id, seq)` with a
//!   per-session bitset; it records the first receive and the receive that
//!   completed the set, and the first status (the agent's birth, published
//!   right after its CONNACK).
//! * The release `rae-agent` with `[udev]`/`[adb]` off, `[mqtt]
//!   inflight_window = 32`, `reconnect_max_backoff_secs = 1`, the backlog
//!   bounds far above the backlog (no compaction), `log_level = "info"`.
//!
//! Measured:
//! 1. Sustained journaled throughput, `RAE_BENCH_RUNS` (default 5) pairs on
//!    one broker and subscriber: a baseline, then the agent. Baseline: a bare
//!    rumqttc client in this process (clean session, `set_inflight(32)`, one
//!    current-thread runtime on this thread: a future awaiting `publish` of
//!    every payload in journal order, joined with the event loop counting
//!    PUBACKs) publishes the same `RAE_BENCH_EVENTS` (default 100,000)
//!    payloads on the same topics at QoS 1. Agent: a fresh copy of the
//!    pre-filled journal, broker and subscriber already up, `rae-agent run`
//!    started. Rate = (distinct events − 1) / (last − first receive) at the
//!    subscriber; the ratio is the median of the per-pair ratios. Also
//!    printed per run: when the publisher was done relative to the last
//!    receive (baseline: last PUBACK; agent: no unpublished row left in the
//!    journal, polled every 20 ms; a negative value would mean the
//!    subscriber side lags), and the CPU time per event (utime + stime from
//!    /proc) of the publisher (the baseline's thread / the whole agent
//!    process), the broker and the subscriber thread, from the first receive
//!    until the publisher was done.
//! 2. Backlog drain, for a `RAE_BENCH_EVENTS` and a `RAE_BENCH_BACKLOG`
//!    (default 1,000,000) backlog: broker up, subscriber subscribed, broker
//!    stopped (SIGTERM; its session is saved); the agent started on the
//!    pre-filled journal and left until it has logged a failed connect; then
//!    the broker restarted (the subscriber is back within milliseconds,
//!    session present). Reported: from broker start (restart returned; this
//!    includes the agent's reconnect backoff, 0.25 to 1 s), from the agent's
//!    log line "MQTT connected" (written right after CONNACK; the log is
//!    polled every 1 ms) and from the receipt of its birth status (published
//!    right after CONNACK) to the first event received; the drain rate as in
//!    (1), against the median sustained agent rate.
//! 3. Memory: the agent's VmHWM (/proc/<pid>/status) at the end of each
//!    drain (its whole life: start, waiting, draining) and just before the
//!    broker start, and the largest VmRSS sampled every 20 ms with its
//!    RssAnon / RssFile / RssShmem split.
//!
//! Each agent gets SIGTERM at the end of its run and must exit 0; the
//! journal's unpublished rows are counted afterwards.
//!
//! Run: `cargo build --release -p rae-agent && cargo bench -p rae-tests --bench uplink`
//! (cargo bench does not build the agent binary; a missing or stale one
//! fails with that hint). Quick check:
//! `RAE_BENCH_EVENTS=20000 RAE_BENCH_BACKLOG=200000 RAE_BENCH_RUNS=1`.
//! `RAE_BENCH_LOG=1` prints the agents' logs; `RAE_BENCH_AGENT=<path>` runs
//! another agent binary or a wrapper that `exec`s it (e.g. an unstripped
//! build for `perf`, or with `MALLOC_ARENA_MAX` set), unchecked.

#[path = "support/uplink_journal.rs"]
mod uplink_journal;
#[path = "support/uplink_sub.rs"]
mod uplink_sub;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rae_protocol::Envelope;
use rae_tests::agent::AgentProcess;
use rae_tests::mosquitto::Mosquitto;
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use uplink_journal::{bench_event, first_unpublished, prefill, unpublished};
use uplink_sub::BenchSub;

const RAE_ID: &str = "rae-bench-uplink";
const SESSIONS: u64 = 100;
const WINDOW: u16 = 32;
const RELEASE_HINT: &str = "cargo build --release -p rae-agent";
/// A run fails when the subscriber sees no new event for this long.
const STALL: Duration = Duration::from_secs(30);
const PREFILL_TX_ROWS: u64 = 50_000;
/// 2026-11-18T00:00:00Z; event `i` is stamped 10 ms after event `i - 1`.
const BASE_TS_MS: u64 = 1_795_305_600_000;

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    if !std::env::args().any(|a| a == "--bench") {
        println!("uplink: a benchmark; run it with `cargo bench -p rae-tests --bench uplink`");
        return Ok(());
    }
    let events = env_u64("RAE_BENCH_EVENTS", 100_000)?;
    let backlog = env_u64("RAE_BENCH_BACKLOG", 1_000_000)?;
    let runs = env_u64("RAE_BENCH_RUNS", 5)?;
    ensure!(
        events >= SESSIONS && backlog >= SESSIONS && runs >= 1,
        "RAE_BENCH_EVENTS and RAE_BENCH_BACKLOG must be at least {SESSIONS}, RAE_BENCH_RUNS at least 1"
    );
    let show_log = std::env::var_os("RAE_BENCH_LOG").is_some();
    let binary = match std::env::var_os("RAE_BENCH_AGENT") {
        Some(path) => PathBuf::from(path),
        None => release_binary()?,
    };
    let dir = tempfile::tempdir()?;
    let fixture = Fixture {
        binary,
        root: dir.path().to_path_buf(),
        show_log,
    };

    println!(
        "uplink benchmark: {SESSIONS} sessions, in-flight window {WINDOW}, QoS 1, mosquitto {}",
        mosquitto_version()
    );
    println!("agent binary: {}", fixture.binary.display());

    // Templates and the baseline's payloads.
    let started = Instant::now();
    let payloads: Vec<(String, Vec<u8>)> = (0..events).map(bench_event).collect::<Result<_>>()?;
    let mean_bytes = payloads.iter().map(|(_, p)| p.len()).sum::<usize>() as f64 / events as f64;
    let small = dir.path().join("template-small.db");
    prefill(&small, events)?;
    let large = dir.path().join("template-large.db");
    let large_bytes = if backlog == events {
        std::fs::copy(&small, &large)?
    } else {
        prefill(&large, backlog)?;
        std::fs::metadata(&large)?.len()
    };
    println!(
        "journals pre-filled in {:.1} s: {events} events ({:.1} MB) and {backlog} events ({:.1} MB); \
         payload mean {mean_bytes:.0} bytes",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&small)?.len() as f64 / 1e6,
        large_bytes as f64 / 1e6,
    );
    println!(
        "subscriber decode cost: {:.2} µs/message",
        decode_cost(&payloads)?
    );
    println!();

    // 1. Sustained throughput.
    println!(
        "1. sustained: {events} events per run, broker and subscriber up before the publisher"
    );
    let broker = tuned_broker(&dir.path().join("sustained-broker"))?;
    let sub = BenchSub::connect(broker.port(), "rae-bench-sub-sustained")?;
    let (mut base_rates, mut agent_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=runs {
        sub.reset();
        let b = baseline(&broker, &payloads, &sub)?;
        println!("  run {n} baseline: {}", flow_line(&b));
        sub.reset();
        let a = fixture.sustained(n, &broker, &sub, &small, events)?;
        println!("  run {n} agent:    {}", flow_line(&a.flow));
        println!(
            "  run {n} ratio {:.2}; agent VmHWM {} kB, {} unpublished after stop, stop {:.0} ms",
            a.flow.rate / b.rate,
            a.hwm_kb,
            a.unpublished_after,
            ms(a.stop)
        );
        base_rates.push(b.rate);
        agent_rates.push(a.flow.rate);
        ratios.push(a.flow.rate / b.rate);
    }
    drop(sub);
    drop(broker);
    let base_rate = median(&mut base_rates);
    let sustained = median(&mut agent_rates);
    let sustained_ratio = median(&mut ratios);
    println!();

    // 2./3. Backlog drains.
    println!("2./3. drain: backlog journaled offline, the broker started after the agent");
    let mut drains = Vec::new();
    for (label, template, size) in [("small", &small, events), ("large", &large, backlog)] {
        let d = fixture.drain(label, template, size)?;
        println!(
            "  {size} events: broker start -> first event {:.0} ms; \"MQTT connected\" seen -> first {:.1} ms; \
             birth received -> first {:.1} ms",
            ms(d.broker_to_first),
            ms(d.connected_to_first),
            ms(d.birth_to_first),
        );
        println!("  {size} events: {}", flow_line(&d.run.flow));
        let [anon, file, shmem] = d.run.rss_split;
        println!(
            "  {size} events: VmHWM {} kB ({} kB before the broker start), max sampled VmRSS {} kB \
             (anon {anon}, file {file}, shmem {shmem}); {} unpublished after stop, stop {:.0} ms",
            d.run.hwm_kb,
            d.hwm_before_kb,
            d.run.max_rss_kb,
            d.run.unpublished_after,
            ms(d.run.stop)
        );
        drains.push((size, d));
    }
    println!();

    // Summary.
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("summary:");
    println!(
        "  sustained (median of {runs}): agent {sustained:.0} ev/s vs bare rumqttc {base_rate:.0} ev/s, \
         ratio {sustained_ratio:.2} (target >= 0.8: {})",
        verdict(sustained_ratio >= 0.8)
    );
    for (size, d) in &drains {
        let ratio = d.run.flow.rate / sustained;
        println!(
            "  drain {size}: CONNACK (\"MQTT connected\") -> first event {:.1} ms (target < 1000 ms: {}); \
             broker start -> first {:.0} ms; drain {:.0} ev/s = {ratio:.2} x sustained (target >= 0.8: {})",
            ms(d.connected_to_first),
            verdict(d.connected_to_first < Duration::from_secs(1)),
            ms(d.broker_to_first),
            d.run.flow.rate,
            verdict(ratio >= 0.8)
        );
    }
    if let [(small_n, s), (large_n, l)] = drains.as_slice() {
        let mib = |kb: u64| kb as f64 / 1024.0;
        let (s, l) = (s.run.hwm_kb, l.run.hwm_kb);
        let spread = (l as f64 - s as f64) / s as f64;
        println!(
            "  memory: VmHWM {:.1} MiB ({small_n}) and {:.1} MiB ({large_n}) (target < 32 MiB: {}); \
             difference {:+.1}% (target within 10%: {})",
            mib(s),
            mib(l),
            verdict(s < 32 * 1024 && l < 32 * 1024),
            spread * 100.0,
            verdict(spread.abs() <= 0.10)
        );
    }
    Ok(())
}

fn flow_line(f: &Flow) -> String {
    format!(
        "{:>6.0} ev/s over {:.2} s, done {:+.0} ms after the last receive, {} duplicates; {}",
        f.rate,
        f.span.as_secs_f64(),
        f.done_lag_ms,
        f.duplicates,
        f.cpu
    )
}

struct Fixture {
    binary: PathBuf,
    root: PathBuf,
    show_log: bool,
}

/// CPU time of the parties over a measured span, in µs per event.
#[derive(Debug, Clone, Copy, Default)]
struct CpuPerEvent {
    /// The bare client's thread, or the whole agent process.
    publisher: f64,
    broker: f64,
    subscriber: f64,
}

impl std::fmt::Display for CpuPerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU µs/event: publisher {:.0}, broker {:.0}, subscriber {:.0}",
            self.publisher, self.broker, self.subscriber
        )
    }
}

/// One publisher's flow of events to the subscriber.
#[derive(Debug)]
struct Flow {
    /// Distinct events / (last − first receive).
    rate: f64,
    /// First to last receive.
    span: Duration,
    /// Publisher done (baseline: last PUBACK; agent: no unpublished row in
    /// the journal, polled every 20 ms) minus the last receive.
    done_lag_ms: f64,
    duplicates: u64,
    cpu: CpuPerEvent,
}

#[derive(Debug)]
struct AgentRun {
    flow: Flow,
    hwm_kb: u64,
    max_rss_kb: u64,
    /// RssAnon / RssFile / RssShmem (kB) at the largest VmRSS sample.
    rss_split: [u64; 3],
    unpublished_after: u64,
    stop: Duration,
}

#[derive(Debug)]
struct Drain {
    run: AgentRun,
    /// VmHWM just before the broker start (journal opened, uplink waiting).
    hwm_before_kb: u64,
    broker_to_first: Duration,
    connected_to_first: Duration,
    birth_to_first: Duration,
}

/// A state dir holding a copy of `template` as its journal, and a config.
struct RunDir {
    config: PathBuf,
    journal: PathBuf,
    log: PathBuf,
}

impl Fixture {
    fn run_dir(&self, name: &str, template: &Path, broker_url: &str, size: u64) -> Result<RunDir> {
        let dir = self.root.join(name);
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        let journal = state.join("journal.db");
        std::fs::copy(template, &journal)
            .with_context(|| format!("copying {}", template.display()))?;
        // Far above the backlog (events and bytes), so compaction never runs.
        let max_events = size.saturating_mul(10).max(1_000_000);
        let max_bytes = size.saturating_mul(10_000).max(1 << 30);
        let toml = format!(
            "rae_id = {RAE_ID:?}\nstate_dir = {:?}\nlog_level = \"info\"\n\n\
             [journal]\nmax_backlog_events = {max_events}\nmax_backlog_bytes = {max_bytes}\n\n\
             [udev]\nenabled = false\n\n[adb]\nenabled = false\n\n\
             [mqtt]\nbroker = {broker_url:?}\ninflight_window = {WINDOW}\nreconnect_max_backoff_secs = 1\n",
            state.display().to_string()
        );
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml)?;
        Ok(RunDir {
            config,
            journal,
            log: dir.join("agent.log"),
        })
    }

    /// The agent on a fresh copy of `template`, broker and subscriber up.
    fn sustained(
        &self,
        n: u64,
        broker: &Mosquitto,
        sub: &BenchSub,
        template: &Path,
        size: u64,
    ) -> Result<AgentRun> {
        let run = self.run_dir(&format!("sustained{n}"), template, &broker.url(), size)?;
        let agent = AgentProcess::start(&self.binary, &run.config, &run.log)?;
        self.finish(agent, &run, broker, sub, size)
    }

    /// Broker stopped, agent started, broker restarted (see the module docs).
    fn drain(&self, label: &str, template: &Path, size: u64) -> Result<Drain> {
        let mut broker = tuned_broker(&self.root.join(format!("drain-{label}-broker")))?;
        let sub = BenchSub::connect(broker.port(), &format!("rae-bench-sub-{label}"))?;
        broker.stop()?;
        let run = self.run_dir(&format!("drain-{label}"), template, &broker.url(), size)?;
        let mut agent = AgentProcess::start(&self.binary, &run.config, &run.log)?;
        // The uplink is up and has found no broker.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !log_contains(&run.log, "reconnecting in") {
            agent.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "the agent logged no failed MQTT connect within 60 s; log:\n{}",
                agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let hwm_before_kb = status_kb(agent.pid(), "VmHWM")?;
        broker.restart()?;
        let broker_up = Instant::now();
        // Until the first event: poll the agent's log every 1 ms.
        let mut connected = None;
        let deadline = broker_up + Duration::from_secs(15);
        let first = loop {
            if connected.is_none() && log_contains(&run.log, "MQTT connected") {
                connected = Some(Instant::now());
            }
            if let Some(first) = sub.snapshot().first {
                break first;
            }
            agent.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "no event within 15 s of the broker start; agent log:\n{}\nbroker log:\n{}",
                agent.log_tail(),
                broker.log_tail()
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        let birth = sub.snapshot().first_status;
        let result = self.finish(agent, &run, &broker, &sub, size)?;
        // The log line follows CONNACK, the first fetch follows it; a line
        // seen only after the event was written within the last 1 ms poll.
        let connected = connected.unwrap_or(first).min(first);
        let birth = birth.unwrap_or(first).min(first);
        Ok(Drain {
            run: result,
            hwm_before_kb,
            broker_to_first: first.saturating_duration_since(broker_up),
            connected_to_first: first.duration_since(connected),
            birth_to_first: first.duration_since(birth),
        })
    }

    /// Waits for every event, samples memory and CPU, stops the agent.
    fn finish(
        &self,
        mut agent: AgentProcess,
        run: &RunDir,
        broker: &Mosquitto,
        sub: &BenchSub,
        size: u64,
    ) -> Result<AgentRun> {
        let pid = agent.pid();
        let broker_pid = broker.pid().context("the broker is not running")?;
        let cpu = |at: &mut Option<[f64; 3]>| -> Result<()> {
            *at = Some([
                cpu_ms(&format!("/proc/{pid}/stat"))?,
                cpu_ms(&format!("/proc/{broker_pid}/stat"))?,
                sub.cpu_ms()?,
            ]);
            Ok(())
        };
        let (mut cpu_first, mut cpu_done) = (None, None);
        let (mut max_rss_kb, mut rss_split) = (0, [0; 3]);
        let mut marked = None;
        let mut complete = None;
        let mut last_count = 0;
        let mut last_change = Instant::now();
        let s = loop {
            let s = sub.snapshot();
            if let Ok(kb) = status_kb(pid, "VmRSS") {
                if kb > max_rss_kb {
                    max_rss_kb = kb;
                    for (i, key) in ["RssAnon", "RssFile", "RssShmem"].iter().enumerate() {
                        rss_split[i] = status_kb(pid, key).unwrap_or(0);
                    }
                }
            }
            if s.first.is_some() && cpu_first.is_none() {
                cpu(&mut cpu_first)?;
            }
            if s.distinct > 0 && marked.is_none() && first_unpublished(&run.journal)?.is_none() {
                marked = Some(Instant::now());
                cpu(&mut cpu_done)?;
            }
            if s.distinct >= size {
                let done = *complete.get_or_insert_with(Instant::now);
                // Give the marker up to 10 s after the last event.
                if marked.is_some() || done.elapsed() > Duration::from_secs(10) {
                    break s;
                }
            }
            if s.distinct != last_count {
                (last_count, last_change) = (s.distinct, Instant::now());
            }
            agent.ensure_running()?;
            ensure!(
                last_change.elapsed() < STALL,
                "stalled at {} of {size} events (subscriber: {} messages, {} undecodable, last error {:?}); agent log:\n{}",
                s.distinct,
                s.messages,
                s.undecodable,
                s.last_error,
                agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        if cpu_done.is_none() {
            cpu(&mut cpu_done)?;
        }
        let hwm_kb = status_kb(pid, "VmHWM")?;
        let stop = stop(agent)?;
        self.show(&run.log);
        let unpublished_after = unpublished(&run.journal)?;
        let (Some(first), Some(last)) = (s.first, s.last_new) else {
            bail!("complete without timestamps");
        };
        let (Some(a), Some(b)) = (cpu_first, cpu_done) else {
            bail!("no CPU samples");
        };
        let per_event = |i: usize| (b[i] - a[i]) * 1000.0 / size as f64;
        let span = last.duration_since(first);
        Ok(AgentRun {
            flow: Flow {
                rate: (size - 1) as f64 / span.as_secs_f64(),
                span,
                done_lag_ms: match marked {
                    Some(m) => signed_ms(m, last),
                    None => f64::NAN,
                },
                duplicates: s.messages - s.distinct,
                cpu: CpuPerEvent {
                    publisher: per_event(0),
                    broker: per_event(1),
                    subscriber: per_event(2),
                },
            },
            hwm_kb,
            max_rss_kb,
            rss_split,
            unpublished_after,
            stop,
        })
    }

    fn show(&self, log: &Path) {
        if self.show_log {
            println!(
                "agent log {}:\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// `a - b` in ms, negative when `a` came first.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        ms(a.duration_since(b))
    } else {
        -ms(b.duration_since(a))
    }
}

/// SIGTERM; the agent must exit 0 within 10 s.
fn stop(agent: AgentProcess) -> Result<Duration> {
    agent.stop_gracefully()
}

/// The baseline: a bare rumqttc QoS 1 publisher of `payloads`, in order,
/// on this thread.
fn baseline(broker: &Mosquitto, payloads: &[(String, Vec<u8>)], sub: &BenchSub) -> Result<Flow> {
    let broker_pid = broker.pid().context("the broker is not running")?;
    let mut opts = MqttOptions::new("rae-bench-baseline", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(WINDOW)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, usize::from(WINDOW) * 2 + 16);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let total = payloads.len();
    let cpu_before = [
        cpu_ms("/proc/thread-self/stat")?,
        cpu_ms(&format!("/proc/{broker_pid}/stat"))?,
        sub.cpu_ms()?,
    ];
    let acked: Result<Instant> = rt.block_on(async {
        let publish = async {
            for (topic, payload) in payloads {
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                    .await?;
            }
            anyhow::Ok(())
        };
        let acks = async {
            let mut n = 0;
            loop {
                if let rumqttc::Event::Incoming(Packet::PubAck(_)) = events.poll().await? {
                    n += 1;
                    if n == total {
                        return anyhow::Ok(Instant::now());
                    }
                }
            }
        };
        let ((), last_ack) = tokio::try_join!(publish, acks)?;
        Ok(last_ack)
    });
    let last_ack = acked?;
    let publisher_cpu = cpu_ms("/proc/thread-self/stat")?;
    let deadline = Instant::now() + STALL;
    let s = loop {
        let s = sub.snapshot();
        if s.distinct >= total as u64 {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "baseline: the subscriber got {} of {total} events",
            s.distinct
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let cpu_after = [
        publisher_cpu,
        cpu_ms(&format!("/proc/{broker_pid}/stat"))?,
        sub.cpu_ms()?,
    ];
    rt.block_on(async {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    });
    let (Some(first), Some(last)) = (s.first, s.last_new) else {
        bail!("baseline complete without timestamps");
    };
    let per_event = |i: usize| (cpu_after[i] - cpu_before[i]) * 1000.0 / total as f64;
    let span = last.duration_since(first);
    Ok(Flow {
        rate: (total - 1) as f64 / span.as_secs_f64(),
        span,
        done_lag_ms: signed_ms(last_ack, last),
        duplicates: s.messages - s.distinct,
        cpu: CpuPerEvent {
            publisher: per_event(0),
            broker: per_event(1),
            subscriber: per_event(2),
        },
    })
}

/// Mean [`Envelope::decode`] time over `payloads` (the subscriber's work).
fn decode_cost(payloads: &[(String, Vec<u8>)]) -> Result<f64> {
    let started = Instant::now();
    let mut seqs = 0;
    for (_, p) in payloads {
        seqs += Envelope::decode(p).map_err(|e| anyhow::anyhow!("{e}"))?.seq;
    }
    std::hint::black_box(seqs);
    Ok(started.elapsed().as_secs_f64() * 1e6 / payloads.len() as f64)
}

/// A broker from the harness, with the config adjusted for a benchmark
/// (see the module docs) and restarted on the same port.
fn tuned_broker(dir: &Path) -> Result<Mosquitto> {
    let mut broker = Mosquitto::start(dir)?;
    let conf_path = dir.join("mosquitto.conf");
    let conf = std::fs::read_to_string(&conf_path)?;
    ensure!(
        conf.contains("log_type all\n") && conf.contains("persistence false\n"),
        "the harness's mosquitto.conf changed; adjust tuned_broker:\n{conf}"
    );
    let conf =
        conf.replace(
            "log_type all\n",
            "log_type error\nlog_type warning\nlog_type notice\n",
        )
        .replace(
            "persistence false\n",
            &format!(
                "persistence true\npersistence_location {}/\nautosave_interval 0\n",
                dir.display()
            ),
        ) + "max_queued_messages 0\n";
    std::fs::write(&conf_path, conf)?;
    broker.restart()?;
    Ok(broker)
}

fn mosquitto_version() -> String {
    std::process::Command::new(rae_tests::mosquitto::BINARY)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}

/// utime + stime of a `/proc/.../stat` file, in ms.
fn cpu_ms(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let (_, tail) = stat
        .rsplit_once(')')
        .with_context(|| format!("{path}: {stat:?}"))?;
    // Fields after the comm start at field 3 (state); utime is 14, stime 15.
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let v = fields
            .get(n - 3)
            .with_context(|| format!("{path}: field {n}"))?;
        Ok(v.parse()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) = {hz}");
    Ok((field(14)? + field(15)?) as f64 * 1000.0 / hz as f64)
}

fn log_contains(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle))
}

fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `target/release/rae-agent` (beside this bench's `deps/`), failing with
/// [`RELEASE_HINT`] if it is missing or older than a source in its dep-info.
fn release_binary() -> Result<PathBuf> {
    rae_tests::agent::agent_binary_with_hint(RELEASE_HINT)
}
