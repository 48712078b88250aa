//! Registry benchmarks (prints figures, asserts no timing). Needs
//! PostgreSQL (initdb/pg_ctl), `tansu`, and
//! `cargo build --release -p rae-cloud-ingest` first:
//!
//! ```sh
//! cargo build --release -p rae-cloud-ingest
//! cargo bench -p rae-tests --bench registry            # 100k throughput + 100k/1M burst
//! RAE_BENCH_BURST_MAX=100000 cargo bench -p rae-tests --bench registry   # skip the 1M run
//! RAE_BENCH_PRELOAD_BATCH=100 …   # bridge-shaped record batches of up to 100 records (default 250)
//! RAE_BENCH_ONLY_BRIDGE_SHAPED=5 …  # only the bridge-shaped throughput run, 5 times (repeat it cheaply)
//! RAE_BENCH_TIMELINE=1 …          # + each drain's rate and cores busy per 200 ms
//! RAE_BENCH_REGISTRY="batch_min_interval_ms = 0" …   # extra [registry] settings
//! RAE_BENCH_TRICKLE=500 [RAE_BENCH_TRICKLE_SECS=10] …  # only: a caught-up registry fed 500 events/s
//! ```
//!
//! 1. Throughput: N envelopes (1000 sessions, attached + changes) are
//!    pre-loaded into Kafka (4 partitions), the registry is started, and
//!    the time until every history row is in PostgreSQL is measured;
//!    twice, on a fresh broker each: with one record per Kafka record
//!    batch, then with batches as the bridge makes them (`Batching`). The
//!    baseline is a binary COPY of the same N history rows into a scratch
//!    table of the same shape, in the same PostgreSQL, in the same run
//!    (three times; the median counts). Printed too: the CPU per event of
//!    the registry, PostgreSQL and Tansu over the drain, and PostgreSQL's
//!    CPU per COPY row.
//!    Then the registry's database stage alone (its own classify/apply/
//!    COMMIT code driven without Kafka, tests/benches/support/apply.rs)
//!    with 4 and 1 pipelines, against the same COPY baseline.
//! 2. Burst: 100k and then 1M envelopes pre-loaded, a fresh registry each
//!    time: drain rate, peak RSS (VmHWM), and lag back to 0.

#![allow(clippy::unwrap_used)]

#[path = "support/apply.rs"]
mod apply;
#[path = "support/drain.rs"]
mod drain;
#[path = "../tests/registry_support/mod.rs"]
mod registry_support;
#[path = "support/trickle.rs"]
mod trickle;

use anyhow::{Context, Result};
use drain::drain;
use rae_protocol::Envelope;
use rae_tests::postgres::Postgres;
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

/// How the bench's producer batches the records it pre-loads.
#[derive(Clone, Copy)]
enum Batching {
    /// One record per Kafka record batch: what a bridge fed slowly
    /// produces, and the worst case for Tansu's `memory://` engine, which
    /// lists every stored batch of a partition on each fetch. The burst
    /// runs use it: the registry pauses partitions there, and Tansu 0.6.0
    /// answers a fetch from an offset inside a multi-record batch with the
    /// *next* batch, so a registry resuming inside one would skip records
    /// (the drain then stops with the gap count).
    One,
    /// Batches of up to N records, as the bridge's producer makes them
    /// when fed faster than it sends (`linger.ms = 5`; the bridge has at
    /// most `mqtt.max_in_flight` = 1000 messages in flight, about 250 per
    /// partition here). Default 250; `RAE_BENCH_PRELOAD_BATCH=N` sets N.
    UpTo(usize),
}

impl Batching {
    fn bridge_shaped() -> Batching {
        Batching::UpTo(
            std::env::var("RAE_BENCH_PRELOAD_BATCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(250),
        )
    }

    fn describe(self) -> String {
        match self {
            Batching::One => "one record per Kafka record batch".into(),
            Batching::UpTo(n) => format!("bridge-shaped Kafka record batches of up to {n} records"),
        }
    }
}

/// Pre-loads `envs` into the events topic, batched as `batching` says.
fn preload(cloud: &Cloud, envs: &[Envelope], batching: Batching) -> Result<Duration> {
    let started = Instant::now();
    let p = match batching {
        Batching::UpTo(n) => {
            let mut c = cloud.kafka.config();
            c.set("acks", "all")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .set("batch.num.messages", n.to_string())
                .set("log_level", "3");
            c.create()?
        }
        Batching::One => cloud.producer()?,
    };
    for e in envs {
        send_retrying(&p, EVENTS, e.topic()?.as_bytes(), &e.encode()?)?;
    }
    p.flush(Duration::from_secs(300))?;
    Ok(started.elapsed())
}

/// `RAE_BENCH_KAFKA_PROPERTIES="k=v,k=v"`: extra `[kafka.properties]`
/// for the registry (experiments with librdkafka settings).
fn extra_properties() -> Vec<(String, String)> {
    std::env::var("RAE_BENCH_KAFKA_PROPERTIES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The registry config's extra lines (appended after `[registry]`):
/// `RAE_BENCH_REGISTRY="k = v; k = v"` (experiments with `[registry]`
/// settings), then `props` as `[kafka.properties]`.
fn registry_extra(props: &[(String, String)]) -> String {
    let mut out: String = std::env::var("RAE_BENCH_REGISTRY")
        .unwrap_or_default()
        .split(';')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    if props.is_empty() {
        return out;
    }
    out.push_str("[kafka.properties]\n");
    for (k, v) in props {
        out.push_str(&format!("{k:?} = {v:?}\n"));
    }
    out
}

/// A plain consumer (no database) joining a fresh group on the events
/// topic with `props`, reading `n` records (at most 600 s): (seconds to
/// the first record, i.e. join + first fetch; seconds to the last; records
/// read).
fn plain_read(
    cloud: &Cloud,
    n: usize,
    group: &str,
    props: &[(&str, &str)],
) -> Result<(f64, f64, usize)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut c = cloud.kafka.config();
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in props {
        c.set(*k, *v);
    }
    let consumer: BaseConsumer = c.create()?;
    let started = Instant::now();
    consumer.subscribe(&[EVENTS])?;
    let mut first = None;
    let mut got = 0;
    while got < n && started.elapsed() < Duration::from_secs(600) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                got += 1;
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
            Some(Err(e)) => eprintln!("plain read: {e}"),
            None => {}
        }
    }
    Ok((first.unwrap_or(0.0), started.elapsed().as_secs_f64(), got))
}

/// Reads the events topic back with plain consumers (librdkafka defaults,
/// and the registry's prefetch settings) and prints their rates.
fn print_plain_reads(
    cloud: &Cloud,
    what: &str,
    n: usize,
    extra: &[(String, String)],
) -> Result<()> {
    // The registry's own consumer defaults (prefetch and fetch settings;
    // its statistics interval and log level change nothing for a reader).
    let mut reader_props: Vec<(&str, &str)> =
        rae_cloud_ingest::registry::kafka::CONSUMER_DEFAULTS.to_vec();
    reader_props.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for (label, group, p) in [
        ("librdkafka defaults", "bench-read-defaults", &[][..]),
        (
            "registry prefetch",
            "bench-read-registry",
            &reader_props[..],
        ),
    ] {
        let (join, total, got) = plain_read(cloud, n, group, p)?;
        println!(
            "{what}: plain consumer ({label}): first record after {join:.2} s, {got} of {n} in {total:.2} s = \
             {:.0} records/s from start, {:.0} records/s after the first record",
            got as f64 / total,
            got as f64 / (total - join).max(1e-9)
        );
    }
    Ok(())
}

/// The median of `v` (upper middle for an even count; NaN when empty).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn copy_baseline(pg: &Postgres, envs: &[Envelope]) -> Result<f64> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    pg.query(
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
    let url = pg.url();
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

/// The registry's database stage alone (no Kafka), same rows, same
/// server, 4 and 1 pipelines (`RAE_BENCH_DB_PIPELINES`). `RAE_BENCH_DB_ROUNDS` rounds (default 3),
/// each with its own COPY baseline taken just before (this shared
/// machine's COPY rate varies 1.5-2x between minutes); prints each
/// round and the median ratio.
fn database_stage(pg: &Postgres, envs: &[Envelope]) -> Result<()> {
    let n = envs.len();
    let rounds: usize = std::env::var("RAE_BENCH_DB_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // RAE_BENCH_DB_PIPELINES: the pipeline counts to run (default "4,1").
    let counts: Vec<usize> = std::env::var("RAE_BENCH_DB_PIPELINES")
        .unwrap_or_else(|_| "4,1".into())
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .context("RAE_BENCH_DB_PIPELINES: a list like 4,1")
        })
        .collect::<Result<_>>()?;
    for pipelines in counts {
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let server_cpu = || pg.cpu_secs();
            let before = server_cpu();
            let copy_rate = n as f64 / copy_baseline(pg, envs)?;
            std::thread::sleep(Duration::from_millis(300));
            let copy_cpu = server_cpu().zip(before).map(|(b, a)| b - a);
            let a = apply::run(
                &pg.url(),
                &format!("apply_bench_{pipelines}_{round}"),
                envs,
                pipelines,
                1000,
                &server_cpu,
            )?;
            let rate = n as f64 / a.secs;
            println!(
                "database stage alone ({pipelines} pipeline(s), batches of 1000, no Kafka), round {round}: \
                 {rate:.0} events/s ({n} in {:.2} s, {} batches, {:.1} ms per batch, busy {:.1} pipeline-s); \
                 COPY {copy_rate:.0} rows/s; ratio {:.2}",
                a.secs,
                a.batches,
                a.busy_secs * 1000.0 / a.batches.max(1) as f64,
                a.busy_secs,
                rate / copy_rate,
            );
            // CPU per event: what the rate ratio hides on a shared 2-core
            // machine (COPY is one backend; the stage keeps both cores busy).
            let per = |secs: Option<f64>| {
                secs.map_or("?".to_string(), |s| format!("{:.1}", s * 1e6 / n as f64))
            };
            println!(
                "  CPU per event: registry code {} µs, PostgreSQL {} µs; COPY: PostgreSQL {} µs per row",
                per(a.client_cpu_secs),
                per(a.server_cpu_secs),
                per(copy_cpu),
            );
            ratios.push(rate / copy_rate);
        }
        if ratios.is_empty() {
            continue;
        }
        println!(
            "database stage alone ({pipelines} pipeline(s)): median ratio to COPY {:.2} over {rounds} round(s) (target >= 0.5)",
            median(&ratios)
        );
    }
    Ok(())
}

/// `RAE_BENCH_DB_ONLY=1`: PostgreSQL only, the COPY baseline and the
/// database stage (no Kafka, no release binary needed).
/// With `RAE_BENCH_DB_STATS=1` the server preloads `pg_stat_statements`
/// and the top statements (calls, total ms summed over the pipelines,
/// rows) are printed afterwards: COPY's own line is the unit to compare
/// the registry's statements with.
fn database_only(n: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut pg = Postgres::start(&dir.path().join("pg"))?;
    let stats = std::env::var_os("RAE_BENCH_DB_STATS").is_some();
    if stats {
        pg.query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")?;
        pg.stop()?;
        pg.start_again()?;
        pg.query("CREATE EXTENSION pg_stat_statements")?;
    }
    apply::migrate(&pg.url())?;
    let envs = envelopes(1000, (n / 1000) as u64);
    database_stage(&pg, &envs)?;
    if stats {
        let rows = pg.query(
            "SELECT CASE WHEN d.datname LIKE 'apply_bench_%' \
                         THEN split_part(d.datname, '_', 3) || ' pipeline(s)' \
                         ELSE 'COPY baseline' END, \
                    sum(s.calls), round(sum(s.total_exec_time)::numeric, 1), sum(s.rows), \
                    left(regexp_replace(s.query, '\\s+', ' ', 'g'), 70) \
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.query NOT LIKE 'CREATE DATABASE%' \
             GROUP BY 1, 5 HAVING sum(s.total_exec_time) > 20 \
             ORDER BY 1, 3 DESC",
        )?;
        println!(
            "pg_stat_statements (summed over rounds and pipelines): stage | calls | total ms | rows | statement"
        );
        for r in rows {
            let col = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            println!(
                "  {:<13} | {:>6} | {:>9} | {:>8} | {}",
                col(0),
                col(1),
                col(2),
                col(3),
                col(4)
            );
        }
    }
    Ok(())
}

/// One throughput run on `cloud` (a fresh broker and database): pre-load
/// `envs` batched as `batching` says, drain them with the registry, read
/// them back with plain consumers, and take the COPY baseline.
fn throughput(
    cloud: &Cloud,
    envs: &[Envelope],
    batching: Batching,
    props: &[(String, String)],
) -> Result<(f64, Option<f64>)> {
    let n = envs.len();
    let load = preload(cloud, envs, batching)?;
    println!(
        "throughput ({}): {n} envelopes pre-loaded into Kafka in {:.1} s",
        batching.describe(),
        load.as_secs_f64()
    );
    let d = drain(cloud, n as i64)?;
    let reg_rate = n as f64 / d.secs;
    // Where the time goes: plain consumers (no database) reading the same
    // records back from Tansu as members of a fresh group, with
    // librdkafka's defaults and with the registry's prefetch settings.
    print_plain_reads(cloud, "throughput", n, props)?;
    let (batches, in_batches, latency_ms) = d.batches;
    println!(
        "throughput: registry batches: {batches}, mean size {:.0}, mean latency (load+plan+write+commit) {:.1} ms \
         = {:.0} events/s per pipeline while applying; pipeline time (sum over 4): applying {:.1} s, \
         waiting for a first record {:.1} s, filling batches {:.1} s; registry CPU {:.2} s",
        in_batches as f64 / batches.max(1) as f64,
        latency_ms as f64 / batches.max(1) as f64,
        in_batches as f64 * 1000.0 / latency_ms.max(1) as f64,
        latency_ms as f64 / 1000.0,
        d.pipeline_ms.0 as f64 / 1000.0,
        d.pipeline_ms.1 as f64 / 1000.0,
        d.cpu_secs
    );
    // Where the CPU goes: registry, PostgreSQL and Tansu share the 2
    // cores, while the COPY baseline is one backend.
    let per_event = |secs: f64| secs * 1e6 / n as f64;
    let pg_cpu = d.pg_cpu_secs.unwrap_or(f64::NAN);
    let tansu_cpu = d.tansu_cpu_secs.unwrap_or(f64::NAN);
    println!(
        "throughput: CPU over the drain: registry {:.2} s, PostgreSQL {pg_cpu:.2} s, Tansu {tansu_cpu:.2} s \
         = {:.1} / {:.1} / {:.1} us per event; {:.2} cores busy on average",
        d.cpu_secs,
        per_event(d.cpu_secs),
        per_event(pg_cpu),
        per_event(tansu_cpu),
        (d.cpu_secs + pg_cpu + tansu_cpu) / d.secs
    );
    // The baseline three times (a single 100k COPY moved 1.5-2x between
    // runs); the median is the one compared with.
    let pg_before = cloud.pg.cpu_secs();
    let copies = (0..3)
        .map(|_| copy_baseline(&cloud.pg, envs))
        .collect::<Result<Vec<f64>>>()?;
    // Each COPY's backend has ended once its client is gone (its time is
    // then the postmaster's reaped children's).
    std::thread::sleep(Duration::from_millis(300));
    let copy_cpu_per_row = cloud
        .pg
        .cpu_secs()
        .zip(pg_before)
        .map(|(b, a)| format!("{:.1}", (b - a) * 1e6 / (3 * n) as f64))
        .unwrap_or_else(|| "-".into());
    println!(
        "throughput: COPY baseline, 3 runs in order: {} rows/s; PostgreSQL CPU {copy_cpu_per_row} us per row",
        copies
            .iter()
            .map(|s| format!("{:.0}", n as f64 / s))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let copy_secs = median(&copies);
    let copy_rate = n as f64 / copy_secs;
    let steady = d.steady_rate(n as i64);
    println!(
        "throughput: registry {reg_rate:.0} events/s ({n} in {:.2} s, from process start incl. group join); \
         first batch committed after {}; {} events/s from the first batch to the last",
        d.secs,
        d.first_batch
            .map(|(t, r)| format!("{t:.2} s ({r} records)"))
            .unwrap_or_else(|| "-".into()),
        steady.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into()),
    );
    println!(
        "throughput: COPY of the same {n} history rows, median of 3: {copy_rate:.0} rows/s ({copy_secs:.2} s); \
         ratio registry / COPY {:.2} from process start, {} join excluded (target >= 0.5)",
        reg_rate / copy_rate,
        steady
            .map(|r| format!("{:.2}", r / copy_rate))
            .unwrap_or_else(|| "-".into()),
    );
    Ok((reg_rate / copy_rate, steady.map(|r| r / copy_rate)))
}

fn main() -> Result<()> {
    let n_tp: usize = std::env::var("RAE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    if std::env::var_os("RAE_BENCH_DB_ONLY").is_some() {
        return database_only(n_tp);
    }
    binary(HINT).context("the bench runs the release binary")?;
    if let Some(rate) = std::env::var("RAE_BENCH_TRICKLE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let secs = std::env::var("RAE_BENCH_TRICKLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        return trickle::trickle(rate, secs);
    }
    let burst_max: usize = std::env::var("RAE_BENCH_BURST_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let props = extra_properties();
    // RAE_BENCH_REGISTRY_LOG=debug: the registry's log level (default warn);
    // its log is then kept in the temp dir (diagnosis).
    let log_level = std::env::var("RAE_BENCH_REGISTRY_LOG").unwrap_or_else(|_| "warn".into());
    let extra = registry_extra(&props);
    println!(
        "registry benchmarks (release binary, 4 partitions, batches of up to 1000 records / 100 ms{})",
        if extra.is_empty() {
            String::new()
        } else {
            format!(", extra config {:?}", extra.trim_end())
        }
    );

    // 1. Throughput vs COPY, once per batching, each on a fresh broker
    // and database; then the database stage alone.
    let envs = envelopes(1000, (n_tp / 1000) as u64);
    let mut last = None;
    // RAE_BENCH_ONLY_BRIDGE_SHAPED=N: the bridge-shaped run alone, N times
    // (the figure this shared machine's speed moves most: repeat it).
    let runs: Vec<Batching> = match std::env::var("RAE_BENCH_ONLY_BRIDGE_SHAPED")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => vec![Batching::bridge_shaped(); n],
        None => vec![Batching::One, Batching::bridge_shaped()],
    };
    let mut bridge_shaped = Vec::new();
    for batching in runs {
        let cloud = Cloud::start_with(4, &extra, Some(&log_level))?;
        let ratios = throughput(&cloud, &envs, batching, &props)?;
        if matches!(batching, Batching::UpTo(_)) {
            bridge_shaped.push(ratios);
        }
        last = Some(cloud);
    }
    if bridge_shaped.len() > 1 {
        let from_start: Vec<f64> = bridge_shaped.iter().map(|r| r.0).collect();
        let steady: Vec<f64> = bridge_shaped.iter().filter_map(|r| r.1).collect();
        let list = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "throughput, bridge-shaped, {} runs in order: ratio from start {} (median {:.2}); join excluded {} (median {:.2})",
            bridge_shaped.len(),
            list(&from_start),
            median(&from_start),
            list(&steady),
            median(&steady)
        );
    }
    if let Some(cloud) = last {
        database_stage(&cloud.pg, &envs)?;
    }

    // 2. Burst.
    let sizes: Vec<usize> = [100_000usize, 1_000_000]
        .into_iter()
        .filter(|&s| s <= burst_max)
        .collect();
    let mut rss = Vec::new();
    for size in sizes {
        let cloud = Cloud::start_with(4, &extra, Some(&log_level))?;
        let envs = envelopes(10_000, (size / 10_000) as u64);
        let load = preload(&cloud, &envs, Batching::One)?;
        drop(envs);
        let d = drain(&cloud, size as i64)?;
        println!(
            "burst {size}: pre-loaded in {:.1} s; drained in {:.1} s = {:.0} events/s from process start \
             ({} events/s from the first batch); registry CPU {:.1} s; peak RSS {:.1} MiB \
             ({:.1} MiB at the first batch); lag 0 {}",
            load.as_secs_f64(),
            d.secs,
            size as f64 / d.secs,
            d.steady_rate(size as i64)
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "-".into()),
            d.cpu_secs,
            d.peak_rss_kib as f64 / 1024.0,
            d.rss_first_batch_kib as f64 / 1024.0,
            match d.lag_zero_after_secs {
                Some(s) => format!("reported {s:.1} s after start"),
                None => "NOT reported within 30 s after the drain".to_string(),
            }
        );
        rss.push(d.peak_rss_kib as f64);
        // RAE_BENCH_BURST_READBACK=1: the broker's own read rate at this
        // backlog (plain consumers, no database), after the drain.
        if std::env::var_os("RAE_BENCH_BURST_READBACK").is_some() {
            print_plain_reads(&cloud, &format!("burst {size}"), size, &props)?;
        }
    }
    if rss.len() == 2 {
        println!(
            "burst: peak RSS 1M / 100k = {:.2} (target within 10%: 0.90..1.10; absolute < 128 MiB)",
            rss[1] / rss[0]
        );
    }
    Ok(())
}
