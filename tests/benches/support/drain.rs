//! One drain of the registry bench: start the release registry on a
//! pre-loaded topic and measure it until every history row is stored:
//! time, records in committed batches (from /metrics), peak RSS, the CPU
//! of the registry, PostgreSQL and Tansu over the drain, and with
//! `RAE_BENCH_TIMELINE=1` a per-200-ms timeline of rate and cores busy.

use crate::registry_support::{binary, Cloud, Registry};
use crate::HINT;
use anyhow::{ensure, Result};
use std::time::{Duration, Instant};

pub fn vm_hwm_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of `pid` in seconds.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / hz.max(1) as f64)
}

impl Drain {
    /// Events/s from the first committed batch to the last (group join
    /// and first fetch excluded).
    pub fn steady_rate(&self, n: i64) -> Option<f64> {
        let (t, first) = self.first_batch?;
        (self.secs > t).then(|| (n - first) as f64 / (self.secs - t))
    }
}

pub struct Drain {
    /// (batches, records in batches, sum of batch latencies in ms).
    pub batches: (i64, i64, i64),
    pub secs: f64,
    /// Seconds from process start to the first committed batch (group
    /// join, first fetch, first batch), and the records it held.
    pub first_batch: Option<(f64, i64)>,
    /// Sums over pipelines, in ms: waiting for a batch's first record;
    /// collecting the rest of a batch.
    pub pipeline_ms: (i64, i64),
    /// CPU seconds (user + system) of the registry process.
    pub cpu_secs: f64,
    /// CPU seconds of PostgreSQL (every backend) and of Tansu over the
    /// drain, process start to exit (same span as `cpu_secs`).
    pub pg_cpu_secs: Option<f64>,
    pub tansu_cpu_secs: Option<f64>,
    pub peak_rss_kib: u64,
    /// VmRSS when the first batch was seen committed (clients connected,
    /// group joined, first fetch buffered).
    pub rss_first_batch_kib: u64,
    pub lag_zero_after_secs: Option<f64>,
}

/// One poll of a drain (`RAE_BENCH_TIMELINE`).
pub struct Sample {
    pub at: f64,
    pub done: i64,
    pub registry: f64,
    pub pg: f64,
    pub tansu: f64,
}

/// Prints a drain's samples per 200 ms window: records applied and the
/// cores each process kept busy (CPU time is counted in 10 ms ticks, so a
/// window's figures are good to about 0.05 cores).
pub fn print_timeline(samples: &[Sample]) {
    const WINDOW: f64 = 0.2;
    let Some(first) = samples.first() else { return };
    println!("timeline (window start: records/s applied; cores busy registry + PostgreSQL + Tansu = total):");
    let mut from = first;
    for s in samples {
        let span = s.at - from.at;
        if span < WINDOW && !std::ptr::eq(s, samples.last().unwrap_or(s)) {
            continue;
        }
        if span <= 0.0 {
            break;
        }
        let (r, p, t) = (
            (s.registry - from.registry) / span,
            (s.pg - from.pg) / span,
            (s.tansu - from.tansu) / span,
        );
        println!(
            "  {:5.2} s: {:7.0} events/s; cores {r:.2} + {p:.2} + {t:.2} = {:.2}",
            from.at,
            (s.done - from.done) as f64 / span,
            r + p + t
        );
        from = s;
    }
}

pub fn drain(cloud: &Cloud, n: i64) -> Result<Drain> {
    let tansu_cpu = || cloud.kafka.pid().and_then(|p| cpu_secs(p as i32));
    let (pg_cpu0, tansu_cpu0) = (cloud.pg.cpu_secs(), tansu_cpu());
    let started = Instant::now();
    let mut reg = Registry::start_binary(
        &cloud.config,
        &cloud.dir.path().join("registry-bench.log"),
        binary(HINT)?,
    )?;
    let pid = reg.pid();
    let mut peak = 0;
    let mut first_batch = None;
    let mut rss_first_batch_kib = 0;
    let mut done = 0;
    // RAE_BENCH_TIMELINE=1: (seconds, records in batches, CPU seconds of
    // registry / PostgreSQL / Tansu) at every poll, printed per 200 ms.
    let timeline = std::env::var_os("RAE_BENCH_TIMELINE").is_some();
    let mut samples: Vec<Sample> = Vec::new();
    let secs = loop {
        peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
        // Records in committed batches, from /metrics (one scrape per
        // poll): a count(*) of a growing table every poll would load the
        // database under test. Polled every 50 ms: a 100k drain takes
        // 1.5-3.5 s, and the 250 ms of earlier runs added up to a quarter
        // of a second to it. Each scrape also costs the registry some CPU,
        // hence not faster.
        let values = cloud
            .metric_values(&[
                "rae_registry_batch_records_total",
                "rae_registry_gaps_total",
            ])
            .unwrap_or_default();
        let at = started.elapsed().as_secs_f64();
        let value = |i: usize| values.get(i).copied().flatten();
        done = value(0).unwrap_or(done);
        if timeline {
            samples.push(Sample {
                at,
                done,
                registry: cpu_secs(pid).unwrap_or(f64::NAN),
                pg: cloud.pg.cpu_secs().unwrap_or(f64::NAN),
                tansu: tansu_cpu().unwrap_or(f64::NAN),
            });
        }
        if done > 0 && first_batch.is_none() {
            first_batch = Some((at, done));
            rss_first_batch_kib = status_kib(pid, "VmRSS:").unwrap_or(0);
        }
        if done >= n && cloud.count("SELECT count(*) FROM device_events") >= n {
            break at;
        }
        // The streams have no gap: a gap means records were skipped
        // (Tansu 0.6.0 after a fetch from inside a multi-record batch, see
        // `Batching`), and the drain would never complete.
        let gaps = value(1).unwrap_or(0);
        ensure!(
            gaps == 0,
            "records were skipped: the registry counted {gaps} gaps and {} offsets the broker \
             jumped over ({done}/{n} records in batches)",
            cloud
                .metric("rae_registry_offsets_skipped_total")
                .unwrap_or(0)
        );
        ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "drain did not finish: {done}/{n}\n{}",
            reg.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let cpu_secs = cpu_secs(pid).unwrap_or(0.0);
    if timeline {
        print_timeline(&samples);
    }
    // Same moment: PostgreSQL's live backends count with the server
    // (`Postgres::cpu_secs`), so its figure needs no disconnect.
    let pg_cpu_secs = cloud.pg.cpu_secs().zip(pg_cpu0).map(|(b, a)| b - a);
    let tansu_cpu_secs = tansu_cpu().zip(tansu_cpu0).map(|(b, a)| b - a);
    // Lag gauges come from librdkafka statistics every 5 s.
    let lag_deadline = Instant::now() + Duration::from_secs(30);
    let mut lag_zero_after_secs = None;
    while Instant::now() < lag_deadline {
        if let Some(total) = cloud.lag_total() {
            if total == 0 {
                lag_zero_after_secs = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
    let m = |name| cloud.metric(name).unwrap_or(0);
    let batches = (
        m("rae_registry_batches_total"),
        m("rae_registry_batch_records_total"),
        m("rae_registry_batch_latency_ms_total"),
    );
    let pipeline_ms = (
        m("rae_registry_idle_ms_total"),
        m("rae_registry_batch_fill_ms_total"),
    );
    reg.terminate(Duration::from_secs(30))?;
    if std::env::var_os("RAE_BENCH_REGISTRY_LOG").is_some() {
        // Numbered per drain: the two throughput runs drain the same n.
        static DRAINS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = DRAINS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let kept = std::env::temp_dir().join(format!("rae-bench-registry-{run}-{n}.log"));
        std::fs::copy(cloud.dir.path().join("registry-bench.log"), &kept)?;
        println!("registry log kept in {}", kept.display());
    }
    Ok(Drain {
        batches,
        secs,
        first_batch,
        pipeline_ms,
        cpu_secs,
        pg_cpu_secs,
        tansu_cpu_secs,
        peak_rss_kib: peak,
        rss_first_batch_kib,
        lag_zero_after_secs,
    })
}
