//! The Cloud Registry: Kafka → database.
//!
//! - [`classify`], [`plan`] and [`boxes`]: the pure core (what a record
//!   is, what a batch writes and sends, which box status copies are
//!   repeats); no I/O, tested without tokio;
//! - [`kafka`]: client configs and the records the registry produces;
//! - [`side_producer`]: the producer of those records, replaced when the
//!   broker lost its state (a restarted Kafka);
//! - [`worker`]: one ordered pipeline per partition, one database
//!   transaction per batch, offsets stored and committed only after it;
//! - [`dispatch`]: the consumer group member that feeds the workers,
//!   pauses partitions whose worker is behind (database down) and handles
//!   rebalances.

pub mod boxes;
pub mod classify;
pub mod dispatch;
pub mod kafka;
pub mod known;
pub mod plan;
pub mod side_producer;
pub mod worker;

use crate::config::Settings;
use crate::metrics::{self, Histogram, Metrics, Value};
use anyhow::Context as _;
use std::time::Duration;
use tokio::sync::watch;

/// How long SIGTERM waits for the batches in flight.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(20);

/// Bounds of `rae_registry_batch_duration_seconds`: a healthy batch
/// commits in milliseconds; seconds mean a slow database or retries.
const BATCH_SECONDS_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bounds of `rae_registry_batch_records` (the default batch is 1000).
const BATCH_RECORDS_BUCKETS: [f64; 9] = [
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

/// The registry's metrics.
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    pub registry: Metrics,
    pub records_in: Value,
    pub batches: Value,
    pub batch_records: Value,
    pub last_batch_size: Value,
    pub last_batch_latency_ms: Value,
    pub batch_latency_ms_total: Value,
    pub batch_seconds: Histogram,
    pub batch_size: Histogram,
    pub batch_fill_ms_total: Value,
    pub batches_caught_up: Value,
    pub idle_ms_total: Value,
    pub applied: Value,
    pub duplicates: Value,
    pub gaps: Value,
    pub reordered: Value,
    pub deferred: Value,
    pub resyncs: Value,
    pub dlq: Value,
    pub status: Value,
    pub status_repeats: Value,
    pub db_errors: Value,
    pub db_conflicts: Value,
    pub paused: Value,
    pub paused_partitions: Value,
    pub offsets_skipped: Value,
}

impl RegistryMetrics {
    pub fn new(m: &Metrics) -> RegistryMetrics {
        RegistryMetrics {
            registry: m.clone(),
            records_in: m.counter("rae_registry_records_in_total", "Kafka records received."),
            batches: m.counter("rae_registry_batches_total", "Batches committed."),
            batch_records: m.counter(
                "rae_registry_batch_records_total",
                "Records in committed batches.",
            ),
            last_batch_size: m.gauge("rae_registry_batch_size", "Records in the last batch."),
            last_batch_latency_ms: m.gauge(
                "rae_registry_batch_latency_ms",
                "Milliseconds from the first attempt to the commit of the last batch.",
            ),
            batch_latency_ms_total: m.counter(
                "rae_registry_batch_latency_ms_total",
                "Sum of batch latencies (divide by rae_registry_batches_total).",
            ),
            batch_seconds: m.histogram(
                "rae_registry_batch_duration_seconds",
                "Seconds from a batch's first attempt to its commit (database, retry backoff, side records).",
                &BATCH_SECONDS_BUCKETS,
            ),
            batch_size: m.histogram(
                "rae_registry_batch_records",
                "Records per committed batch.",
                &BATCH_RECORDS_BUCKETS,
            ),
            batch_fill_ms_total: m.counter(
                "rae_registry_batch_fill_ms_total",
                "Milliseconds pipelines spent collecting batches (first record to batch close).",
            ),
            batches_caught_up: m.counter(
                "rae_registry_batches_caught_up_total",
                "Batches closed before batch_max_records and batch_max_wait_ms because they held every record their partition had.",
            ),
            idle_ms_total: m.counter(
                "rae_registry_idle_ms_total",
                "Milliseconds pipelines spent waiting for the first record of a batch.",
            ),
            applied: m.counter("rae_registry_events_applied_total", "Envelopes applied."),
            duplicates: m.counter(
                "rae_registry_events_duplicate_total",
                "Envelopes skipped as duplicates.",
            ),
            gaps: m.counter("rae_registry_gaps_total", "Envelopes that showed a gap."),
            reordered: m.counter(
                "rae_registry_events_reordered_total",
                "Envelopes taken out of offset order to apply their session in seq order within a batch.",
            ),
            deferred: m.counter(
                "rae_registry_records_deferred_total",
                "Records left for the next batch because a gap in the batch's tail may be a reorder.",
            ),
            resyncs: m.counter("rae_registry_resyncs_total", "Resync commands produced."),
            dlq: m.counter(
                "rae_registry_dlq_total",
                "Records sent to the dead-letter topic.",
            ),
            status: m.counter("rae_registry_status_total", "Box status messages applied."),
            status_repeats: m.counter(
                "rae_registry_status_repeats_total",
                "Copies of box status messages already applied (one per extra bridge), ignored.",
            ),
            db_errors: m.counter(
                "rae_registry_db_errors_total",
                "Failed batch attempts (database or Kafka produce errors).",
            ),
            db_conflicts: m.counter(
                "rae_registry_db_conflicts_total",
                "Batch attempts failed by serialization failure, deadlock, or a session changed by another writer since this pipeline knew it.",
            ),
            paused: m.gauge(
                "rae_registry_retrying",
                "Partition pipelines retrying a batch (database down or failing).",
            ),
            paused_partitions: m.gauge(
                "rae_registry_paused_partitions",
                "Partitions paused because their pipeline is full.",
            ),
            offsets_skipped: m.counter(
                "rae_registry_offsets_skipped_total",
                "Event offsets the broker jumped over (records never delivered).",
            ),
        }
    }

    /// `rae_registry_consumer_lag{partition="topic/N"}`.
    pub fn lag(&self, topic: &str, partition: i32) -> Value {
        self.registry.labelled_gauge(
            LAG,
            "Records behind the high watermark, per partition this registry is assigned.",
            "partition",
            &format!("{topic}/{partition}"),
        )
    }

    /// Drops the lag of a partition this registry no longer owns: another
    /// registry reports it now, and a sum over registries must not count
    /// it twice.
    pub fn forget_lag(&self, topic: &str, partition: i32) {
        self.registry
            .remove_labelled(LAG, &format!("{topic}/{partition}"));
    }
}

const LAG: &str = "rae_registry_consumer_lag";

/// A partition's lag for `/metrics` from librdkafka's statistics figures
/// (pure): its own `consumer_lag` (log end − committed offset) when it has
/// one; else, while the group has committed nothing there yet (a new
/// group, or a database down since the start) and it starts from the
/// earliest offset (`auto.offset.reset`, rae's default), the whole log
/// (end − start), which is what it has to read; else unknown. A registry
/// restarted on committed offsets has them from the group before it
/// fetches, so its lag is librdkafka's (test
/// `sigterm_commits_the_offsets_so_a_restart_reads_nothing_again`).
pub fn partition_lag(
    consumer_lag: i64,
    committed_offset: i64,
    lo_offset: i64,
    hi_offset: i64,
    from_earliest: bool,
) -> Option<i64> {
    if consumer_lag >= 0 {
        Some(consumer_lag)
    } else if from_earliest && committed_offset < 0 && lo_offset >= 0 && hi_offset >= lo_offset {
        Some(hi_offset - lo_offset)
    } else {
        None
    }
}

/// How long the start waits for the database to answer the schema check.
const SCHEMA_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses to start on a schema this binary does not match
/// ([`crate::db::DbError::SchemaTooOld`] / `SchemaTooNew`; `main` exits 65).
/// A database that cannot be reached now, or does not answer within
/// [`SCHEMA_CHECK_TIMEOUT`], is no reason to refuse: the pipelines retry it
/// like any outage (and check the schema again when they connect).
async fn check_schema(url: &str) -> Result<(), crate::db::DbError> {
    let check = async {
        let client = crate::db::connect(url, SCHEMA_CHECK_TIMEOUT.as_secs()).await?;
        crate::db::migrate::check_version(&client).await
    };
    match tokio::time::timeout(SCHEMA_CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(
            e @ (crate::db::DbError::SchemaTooOld { .. } | crate::db::DbError::SchemaTooNew { .. }),
        )) => Err(e),
        Ok(Err(e)) => {
            log::warn!("the database is not usable at start ({e}); the pipelines retry it");
            Ok(())
        }
        Err(_) => {
            log::warn!(
                "the database did not answer within {SCHEMA_CHECK_TIMEOUT:?} at start; the pipelines retry it"
            );
            Ok(())
        }
    }
}

/// Runs the registry until SIGTERM/SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    check_schema(&settings.database.url).await?;
    let metrics = Metrics::new();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some(addr) = settings.metrics.registry_listen {
        let listener = metrics::bind(addr).await?;
        log::info!("serving /metrics on {}", listener.local_addr()?);
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            shutdown_rx.clone(),
        ));
    }
    let dispatcher = dispatch::Dispatcher::build(&settings, RegistryMetrics::new(&metrics))
        .context("cannot start the Kafka clients")?;
    let signal = tokio::spawn(async move {
        wait_for_signal().await;
        let _ = shutdown_tx.send(true);
    });
    let result = dispatcher.run(shutdown_rx).await;
    signal.abort();
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM: finishing the batches in flight"),
                _ = int.recv() => log::info!("SIGINT: finishing the batches in flight"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::partition_lag;

    #[test]
    fn lag_is_librdkafkas_own_figure_when_it_has_one() {
        assert_eq!(partition_lag(12, 88, 0, 100, true), Some(12));
        assert_eq!(partition_lag(0, 100, 0, 100, false), Some(0));
    }

    #[test]
    fn with_nothing_committed_yet_the_lag_is_the_whole_log_when_reading_from_its_start() {
        // -1001: librdkafka's "no offset".
        assert_eq!(partition_lag(-1, -1001, 40, 100, true), Some(60));
        assert_eq!(partition_lag(-1, -1001, 40, 100, false), None);
    }

    #[test]
    fn lag_is_unknown_while_the_log_end_is() {
        assert_eq!(partition_lag(-1, -1001, -1, -1, true), None);
        assert_eq!(partition_lag(-1, 50, 0, 100, true), None);
    }
}
