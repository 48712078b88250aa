//! `RAE_BENCH_TRICKLE=<events/s>`: the registry caught up with a steady
//! stream, a fleet's normal state (the other runs drain a backlog). Prints
//! the transactions it runs per second, their size, how long a batch stays
//! open (first record to close) and the CPU per event, for three values of
//! `batch_min_interval_ms` (a batch that holds everything its partition
//! had closes at once, but no sooner than that after the previous one):
//! 0, the default 100, and 1000 (about the transactions of the batching
//! before 2026-12-07, which closed a batch only at 1000 records or 1 s).
//! All with the registry's default `batch_max_wait_ms` (1000).

use crate::drain::cpu_secs;
use crate::registry_support::*;
use crate::{envelopes, HINT};
use anyhow::{ensure, Result};
use rdkafka::producer::Producer;
use std::time::{Duration, Instant};

/// One run per batching, each on a fresh broker and database: `rate`
/// events/s for `secs` seconds.
pub fn trickle(rate: u64, secs: u64) -> Result<()> {
    let modes = [
        ("batch_min_interval_ms = 0", "batch_min_interval_ms = 0"),
        ("batch_min_interval_ms = 100 (default)", ""),
        (
            "batch_min_interval_ms = 1000",
            "batch_min_interval_ms = 1000",
        ),
    ];
    for (label, extra) in modes {
        let cloud = Cloud::start(4, &format!("batch_max_wait_ms = 1000\n{extra}"))?;
        let mut reg = Registry::start_binary(
            &cloud.config,
            &cloud.dir.path().join("registry-trickle.log"),
            binary(HINT)?,
        )?;
        let n = rate * secs;
        // 1000 sessions: their attaches first (every partition assigned
        // and caught up), then `n` changes, round robin over the sessions.
        let envs = envelopes(1000, n.div_ceil(1000) + 1);
        let (warm, stream) = envs.split_at(1000);
        let stream = &stream[..n as usize];
        let producer = cloud.producer()?;
        let send = |e: &rae_protocol::Envelope| {
            send_retrying(&producer, EVENTS, e.topic()?.as_bytes(), &e.encode()?)
        };
        warm.iter().try_for_each(send)?;
        producer.flush(Duration::from_secs(60))?;
        wait("the warm-up applied", Duration::from_secs(120), || {
            cloud.metric("rae_registry_batch_records_total") == Some(1000)
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))?;
        let snapshot = || {
            [
                "rae_registry_batches_total",
                "rae_registry_batch_records_total",
                "rae_registry_batch_fill_ms_total",
                "rae_registry_batch_latency_ms_total",
            ]
            .map(|m| cloud.metric(m).unwrap_or(0))
        };
        let before = snapshot();
        let (reg_cpu0, pg_cpu0) = (cpu_secs(reg.pid()), cloud.pg.cpu_secs());
        // Paced in 10 ms ticks.
        let started = Instant::now();
        let per_tick = (rate / 100).max(1) as usize;
        for (i, chunk) in stream.chunks(per_tick).enumerate() {
            chunk.iter().try_for_each(send)?;
            let due = started + Duration::from_millis(10 * (i as u64 + 1));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        producer.flush(Duration::from_secs(60))?;
        let total = 1000 + n as i64;
        wait("the stream applied", Duration::from_secs(120), || {
            cloud.metric("rae_registry_batch_records_total") == Some(total)
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", reg.log_tail()))?;
        let span = started.elapsed().as_secs_f64();
        let after = snapshot();
        let d = |i: usize| (after[i] - before[i]) as f64;
        let (batches, records) = (d(0), d(1));
        ensure!(batches > 0.0, "no batch committed during the stream");
        let reg_cpu = cpu_secs(reg.pid()).zip(reg_cpu0).map(|(b, a)| b - a);
        let pg_cpu = cloud.pg.cpu_secs().zip(pg_cpu0).map(|(b, a)| b - a);
        let per_event = |cpu: Option<f64>| {
            cpu.map(|c| format!("{:.1}", c * 1e6 / records))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "trickle, {label}: {n} events at {rate}/s over {span:.1} s: {:.1} transactions/s, \
             mean {:.1} records per batch, a batch open {:.0} ms from its first record to its close, \
             {:.1} ms from close to commit; CPU per event: registry {} us, PostgreSQL {} us",
            batches / span,
            records / batches,
            d(2) / batches,
            d(3) / batches,
            per_event(reg_cpu),
            per_event(pg_cpu),
        );
        reg.terminate(Duration::from_secs(30))?;
    }
    Ok(())
}
