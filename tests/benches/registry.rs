//! Registry benchmarks (prints figures, asserts no timing). Needs
//! PostgreSQL (initdb/pg_ctl), `tansu`, and
//! `cargo build --release -p rae-cloud-ingest` first:
//!
//! ```sh
//! cargo build --release -p rae-cloud-ingest
//! cargo bench -p rae-tests --bench registry            # 100k throughput + 100k/1M burst
//! RAE_BENCH_BURST_MAX=100000 cargo bench -p rae-tests --bench registry   # skip the 1M run
//! ```
//!
//! 1. Throughput: N envelopes (1000 sessions, attached + changes) are
//!    pre-loaded into Kafka (4 partitions), the registry is started, and
//!    the time until every history row is in PostgreSQL is measured. The
//!    baseline is a binary COPY of the same N history rows into a scratch
//!    table of the same shape, in the same PostgreSQL, in the same run.
//! 2. Burst: 100k and then 1M envelopes pre-loaded, a fresh registry each
//!    time: drain rate, peak RSS (VmHWM), and lag back to 0.

#![allow(clippy::unwrap_used)]

#[path = "../tests/registry_support/mod.rs"]
mod registry_support;

use anyhow::{ensure, Context, Result};
use rae_protocol::Envelope;
use rdkafka::producer::Producer;
use registry_support::*;
use std::time::{Duration, Instant};

const HINT: &str = "cargo build --release -p rae-cloud-ingest";

fn envelopes(sessions: usize, per_session: u64) -> Vec<Envelope> {
    let mut out = Vec::with_capacity(sessions * per_session as usize);
    let mut ss: Vec<Session> = (0..sessions)
        .map(|i| Session::new(&format!("box{}", i % 50), &format!("dev{i}")))
        .collect();
    for s in &mut ss {
        out.push(s.attached(&[("counter", 0), ("bus", 3), ("port", 7)]));
    }
    for i in 1..per_session {
        for s in &mut ss {
            out.push(s.changed(&[("counter", i as i64)]));
        }
    }
    out
}

fn preload(cloud: &Cloud, envs: &[Envelope]) -> Result<Duration> {
    let started = Instant::now();
    let p = cloud.producer()?;
    for e in envs {
        send_retrying(&p, EVENTS, e.topic()?.as_bytes(), &e.encode()?)?;
    }
    p.flush(Duration::from_secs(300))?;
    Ok(started.elapsed())
}

fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Drain {
    /// (batches, records in batches, sum of batch latencies in ms).
    batches: (i64, i64, i64),
    secs: f64,
    peak_rss_kib: u64,
    lag_zero_after_secs: Option<f64>,
}

fn drain(cloud: &Cloud, n: i64) -> Result<Drain> {
    let started = Instant::now();
    let mut reg = Registry::start_binary(
        &cloud.config,
        &cloud.dir.path().join("registry-bench.log"),
        binary(HINT)?,
    )?;
    let pid = reg.pid();
    let mut peak = 0;
    loop {
        peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
        let done = cloud.count("SELECT count(*) FROM device_events");
        if done >= n {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "drain did not finish: {done}/{n}\n{}",
            reg.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let secs = started.elapsed().as_secs_f64();
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
    reg.terminate(Duration::from_secs(30))?;
    Ok(Drain {
        batches,
        secs,
        peak_rss_kib: peak,
        lag_zero_after_secs,
    })
}

fn copy_baseline(cloud: &Cloud, envs: &[Envelope]) -> Result<f64> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    cloud.pg.query(
        "DROP TABLE IF EXISTS scratch_events; CREATE TABLE scratch_events (LIKE device_events INCLUDING ALL)",
    )?;
    let rows: Vec<(uuid::Uuid, i64, &'static str, i64, Vec<u8>)> = envs
        .iter()
        .map(|e| {
            Ok((
                e.session_id,
                e.seq as i64,
                e.kind.name(),
                e.ts_ms as i64,
                e.encode()?,
            ))
        })
        .collect::<Result<_>>()?;
    let url = cloud.pg.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let started = Instant::now();
        let sink = client
            .copy_in(
                "COPY scratch_events (session_id, seq, kind, ts_ms, envelope, kafka_partition, kafka_offset, recorded_at) FROM STDIN BINARY",
            )
            .await?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::UUID,
                Type::INT8,
                Type::TEXT,
                Type::INT8,
                Type::BYTEA,
                Type::INT4,
                Type::INT8,
                Type::TIMESTAMPTZ,
            ],
        );
        let mut writer = std::pin::pin!(writer);
        let now = std::time::SystemTime::now();
        for (i, (s, q, k, ts, env)) in rows.iter().enumerate() {
            let partition = 0i32;
            let offset = i as i64;
            writer
                .as_mut()
                .write(&[s, q, k, ts, env, &partition, &offset, &now])
                .await?;
        }
        writer.finish().await?;
        Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64())
    })
}

fn main() -> Result<()> {
    binary(HINT).context("the bench runs the release binary")?;
    let n_tp: usize = std::env::var("RAE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let burst_max: usize = std::env::var("RAE_BENCH_BURST_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    println!("registry benchmarks (release binary, 4 partitions, batches of up to 1000 records / 100 ms)");

    // 1. Throughput vs COPY.
    let cloud = Cloud::start_with(4, "", Some("warn"))?;
    let envs = envelopes(1000, (n_tp / 1000) as u64);
    let n = envs.len();
    let load = preload(&cloud, &envs)?;
    println!(
        "throughput: {n} envelopes pre-loaded into Kafka in {:.1} s",
        load.as_secs_f64()
    );
    let d = drain(&cloud, n as i64)?;
    let reg_rate = n as f64 / d.secs;
    // Where the time goes: a plain consumer reading the same records back
    // from Tansu (no database), and the registry's own batch timings.
    let read_started = Instant::now();
    let read = cloud.kafka.read(EVENTS, n, Duration::from_secs(600))?.len();
    let read_secs = read_started.elapsed().as_secs_f64();
    let (batches, in_batches, latency_ms) = d.batches;
    println!(
        "throughput: Tansu read-back alone {:.0} records/s ({read} in {read_secs:.2} s); registry batches: {batches}, \
         mean size {:.0}, mean latency (load+plan+write+commit) {:.1} ms = {:.0} events/s per pipeline while applying",
        read as f64 / read_secs,
        in_batches as f64 / batches.max(1) as f64,
        latency_ms as f64 / batches.max(1) as f64,
        in_batches as f64 * 1000.0 / latency_ms.max(1) as f64
    );
    let copy_secs = copy_baseline(&cloud, &envs)?;
    let copy_rate = n as f64 / copy_secs;
    println!(
        "throughput: registry {reg_rate:.0} events/s ({n} in {:.2} s, from start incl. group join); \
         COPY of the same {n} history rows {copy_rate:.0} rows/s ({copy_secs:.2} s); ratio {:.2} (target >= 0.5)",
        d.secs,
        reg_rate / copy_rate
    );
    drop(cloud);

    // 2. Burst.
    let sizes: Vec<usize> = [100_000usize, 1_000_000]
        .into_iter()
        .filter(|&s| s <= burst_max)
        .collect();
    let mut rss = Vec::new();
    for size in sizes {
        let cloud = Cloud::start_with(4, "", Some("warn"))?;
        let envs = envelopes(10_000, (size / 10_000) as u64);
        let load = preload(&cloud, &envs)?;
        drop(envs);
        let d = drain(&cloud, size as i64)?;
        println!(
            "burst {size}: pre-loaded in {:.1} s; drained in {:.1} s = {:.0} events/s; peak RSS {:.1} MiB; lag 0 {}",
            load.as_secs_f64(),
            d.secs,
            size as f64 / d.secs,
            d.peak_rss_kib as f64 / 1024.0,
            match d.lag_zero_after_secs {
                Some(s) => format!("reported {s:.1} s after start"),
                None => "NOT reported within 30 s after the drain".to_string(),
            }
        );
        rss.push(d.peak_rss_kib as f64);
    }
    if rss.len() == 2 {
        println!(
            "burst: peak RSS 1M / 100k = {:.2} (target within 10%: 0.90..1.10; absolute < 128 MiB)",
            rss[1] / rss[0]
        );
    }
    Ok(())
}
