//! One ordered pipeline per assigned partition: collect a batch (up to
//! `batch_max_records` or `batch_max_wait_ms` after its first record, or
//! as soon as it holds every record the partition had at the last fetch,
//! [`caught_up`], but no sooner than `batch_min_interval_ms` after the
//! previous batch closed), apply it in ONE database transaction, then
//! store and commit the offset.
//! A gap in a batch's tail may make the batch apply only up to it; the
//! rest opens the next batch (once per record, never on the last batch
//! before shutdown; `plan::plan_with_deferral`), and the stored offset is
//! that of the last record applied. A batch closed early (caught up) may
//! wait whole when its first record shows the gap.
//!
//! Invariants:
//! - the offset of a batch is stored/committed only after its transaction
//!   committed, and after its dead letters and resync commands were
//!   confirmed by Kafka (they are produced inside the transaction, before
//!   COMMIT: a failed commit repeats them, never loses them);
//! - a database failure stops this pipeline (it reads nothing more, the
//!   dispatcher pauses the partition once the channel is full) and the
//!   batch is retried with capped exponential backoff; serialization
//!   failures (40001) and deadlocks are retried the same way;
//! - the sessions a committed batch loaded or wrote are kept
//!   ([`super::known`]) and trusted only through the compare-and-set of
//!   `db::write`; a miss forgets them all and the batch is retried at once
//!   from loaded rows (the retry knows nothing, so it cannot miss again);
//! - on revoke the batch in flight is abandoned at the next retry point
//!   (nothing of it was committed; the new owner redelivers it); on
//!   shutdown it is finished (retried until the shutdown deadline).

use super::classify::{classify, Source};
use super::dispatch::{Record, RegistryContext};
use super::kafka::{
    cached_high_watermark, command_headers, dlq_headers, dlq_value, resync_payload,
};
use super::known::Known;
use super::plan::{Deferral, Item, Plan, Policy};
use super::side_producer::SideProducer;
use super::RegistryMetrics;
use crate::db::write::HistoryInsert;
use crate::db::{self, write, DbError};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Header;
use rdkafka::producer::FutureRecord;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Why a worker should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// The partition was revoked: abandon, do not commit.
    Revoked,
    /// SIGTERM: finish the batch, commit, exit.
    Shutdown,
}

/// What a worker needs besides its records.
#[derive(Clone)]
pub struct Shared {
    pub consumer: Arc<StreamConsumer<RegistryContext>>,
    pub producer: Arc<SideProducer>,
    pub db_url: String,
    pub dlq_topic: String,
    pub commands_topic: String,
    pub status_topic: String,
    pub policy: Policy,
    pub batch_max_records: usize,
    pub batch_max_wait: Duration,
    /// A batch that is [`caught_up`] closes no sooner than this after the
    /// pipeline's previous batch closed (bounds its transactions per
    /// second while it keeps up with a steady stream).
    pub batch_min_interval: Duration,
    pub retry_max_backoff: Duration,
    /// `database.timeout_secs`: bounds a connection attempt and a batch.
    pub db_timeout_secs: u64,
    /// The side producer's `message.max.bytes` (dead letters are cut to it).
    pub max_record_bytes: usize,
    pub metrics: RegistryMetrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The pipeline of one partition.
#[derive(Debug)]
pub struct Worker {
    pub topic: String,
    pub partition: i32,
    pub rx: mpsc::Receiver<Record>,
    /// The bytes in `rx`, which this worker lowers as it receives.
    pub channel_bytes: super::dispatch::ChannelBytes,
    pub stop: watch::Receiver<Stop>,
    pub shared: Shared,
    /// The database connection and its prepared statements (None until the
    /// first batch, and after a connection error).
    pub db: Option<Db>,
    /// How the next attempt writes history: [`HistoryInsert::OnConflict`]
    /// for the retry of a batch whose plain insert met an existing row.
    pub history: HistoryInsert,
    /// The sessions this pipeline committed: not loaded again
    /// ([`super::known`]).
    pub known: Known,
}

/// One pipeline counted in the `rae_registry_retrying` gauge while alive.
struct RetryingGuard(crate::metrics::Value);

impl RetryingGuard {
    fn new(gauge: &crate::metrics::Value) -> RetryingGuard {
        gauge.inc();
        RetryingGuard(gauge.clone())
    }
}

impl Drop for RetryingGuard {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// A connection with the registry's statements prepared on it.
#[derive(Debug)]
pub struct Db {
    client: tokio_postgres::Client,
    statements: write::Statements,
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot produce to Kafka topic {topic}: {source}")]
    Produce {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
}

/// Whether a batch whose last record has `last_offset` holds every record
/// its partition had when the consumer last fetched it: `high` is
/// librdkafka's cached high watermark (the offset the next record written
/// gets; negative while unknown), updated by every fetch response. A batch
/// that is caught up has nothing to wait for but records not written yet,
/// so it need not wait `batch_max_wait_ms`. Records fetched but still in
/// librdkafka's queue, the dispatcher's stash or the channel have offsets
/// below `high`, so a batch short of them is not caught up.
pub fn caught_up(last_offset: i64, high: i64) -> bool {
    high >= 0 && last_offset.saturating_add(1) >= high
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Worker {
    /// Lowers the channel's byte count by records just received.
    fn received(&self, records: &[Record]) {
        for m in records {
            self.channel_bytes.received(m);
        }
    }

    /// [`caught_up`] for a batch ending at `last` (false when empty, or
    /// when librdkafka knows no watermark for the partition). Records still
    /// in the channel lie below the watermark, so while there are any the
    /// answer is false without asking librdkafka (a backlog's batches fill
    /// through many receives).
    fn caught_up(&self, last: Option<&Record>) -> bool {
        let Some(last) = last else { return false };
        if !self.rx.is_empty() {
            return false;
        }
        cached_high_watermark(self.shared.consumer.client(), &self.topic, self.partition)
            .is_some_and(|high| caught_up(last.offset, high))
    }

    fn stop_state(&self) -> Stop {
        *self.stop.borrow()
    }

    /// Runs until revoked or shut down.
    pub async fn run(mut self) {
        let source = if self.topic == self.shared.status_topic {
            Source::Status
        } else {
            Source::Events
        };
        let metrics = self.shared.metrics.clone();
        // Records of the last batch left for this one (a gap in its tail,
        // `plan::plan_with_deferral`): they open this batch.
        let mut carry: Vec<Item> = Vec::new();
        // When the previous batch closed: a caught-up batch closes no
        // sooner than `batch_min_interval` after it.
        let mut last_close: Option<Instant> = None;
        loop {
            let idle_since = Instant::now();
            let max = self.shared.batch_max_records;
            let mut batch: Vec<Record> = Vec::with_capacity(max.min(1024));
            if carry.is_empty() {
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, max) => if n == 0 { return },
                    _ = self.stop.changed() => return,
                };
                self.received(&batch);
            }
            let opened = Instant::now();
            metrics
                .idle_ms_total
                .add(ms(opened.duration_since(idle_since)));
            // One timer per batch (not one per receive).
            let deadline = tokio::time::sleep_until(opened + self.shared.batch_max_wait);
            tokio::pin!(deadline);
            let early_from = last_close.map_or(opened, |t| t + self.shared.batch_min_interval);
            let early_timer = tokio::time::sleep_until(early_from);
            tokio::pin!(early_timer);
            let (mut stopping, mut early) = (false, false);
            while carry.len() + batch.len() < max {
                // A batch that opened with a carried gap tail waits the
                // full time for the record that may fill the gap.
                let caught = carry.is_empty() && self.caught_up(batch.last());
                if caught && Instant::now() >= early_from {
                    early = true;
                    break;
                }
                let (before, room) = (batch.len(), max - carry.len() - batch.len());
                tokio::select! {
                    biased;
                    n = self.rx.recv_many(&mut batch, room) => {
                        if n == 0 {
                            stopping = true;
                            break;
                        }
                        self.received(&batch[before..]);
                    }
                    _ = self.stop.changed() => { stopping = true; break }
                    _ = &mut deadline => break,
                    _ = &mut early_timer, if caught => {
                        early = true;
                        break;
                    }
                }
            }
            if early {
                metrics.batches_caught_up.inc();
            }
            last_close = Some(Instant::now());
            metrics.batch_fill_ms_total.add(ms(opened.elapsed()));
            if self.stop_state() == Stop::Revoked {
                return;
            }
            let carried = carry.len();
            let mut items = std::mem::take(&mut carry);
            items.extend(batch.into_iter().map(|m| {
                let classified = classify(source, m.key.as_deref(), m.payload.as_deref());
                Item {
                    partition: m.partition,
                    offset: m.offset,
                    key: m.key,
                    raw: m.payload.unwrap_or_default(),
                    classified,
                }
            }));
            // The last batch before shutdown applies everything. A batch
            // closed early has given its first record no time to be
            // joined by one reordered behind it, so it may wait whole.
            let defer = (!stopping).then_some(Deferral {
                carried,
                whole_batch: early,
            });
            let Some(covered) = self.apply_with_retry(&items, defer).await else {
                return;
            };
            carry = items.split_off(covered);
            if !carry.is_empty() {
                metrics.deferred.add(carry.len() as i64);
                log::debug!(
                    "{}[{}]: a gap at offset {} waits for the next batch with the {} records from there",
                    self.topic,
                    self.partition,
                    carry[0].offset,
                    carry.len()
                );
            }
            if stopping {
                return;
            }
        }
    }

    /// Applies one batch until it commits (`Some(n)`: the first `n` of
    /// `items` were applied, the rest wait for the next batch; `defer` as
    /// in `plan::plan_with_deferral`) or the partition is revoked (`None`).
    async fn apply_with_retry(&mut self, items: &[Item], defer: Option<Deferral>) -> Option<usize> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0u32;
        // Counts this pipeline in `rae_registry_retrying` from its first
        // failed attempt until the batch commits or is left (dropped).
        let mut retrying: Option<RetryingGuard> = None;
        loop {
            if self.stop_state() == Stop::Revoked {
                log::info!(
                    "{}[{}]: partition revoked; batch of {} left to the next owner",
                    self.topic,
                    self.partition,
                    items.len()
                );
                return None;
            }
            attempt += 1;
            match self.apply_bounded(items, defer).await {
                Ok((plan, covered)) => {
                    self.after_commit(&items[..covered], &plan, started.elapsed());
                    self.history = HistoryInsert::Fast;
                    return Some(covered);
                }
                Err(BatchError::Db(e @ DbError::SessionsChanged { .. })) => {
                    // Retried at once from loaded rows; that attempt knows
                    // no session, so it cannot miss again this way.
                    log::info!(
                        "{}[{}]: batch of {}: {e}",
                        self.topic,
                        self.partition,
                        items.len()
                    );
                    self.known.forget();
                    self.shared.metrics.db_conflicts.inc();
                }
                Err(BatchError::Db(e))
                    if e.is_unique_violation() && self.history == HistoryInsert::Fast =>
                {
                    // A history row the plan took for new is stored: a
                    // second consumer stored the same new session during a
                    // rebalance (no row existed to lock), or the database
                    // was edited by hand. Retried at once, history written
                    // with ON CONFLICT DO NOTHING; a unique violation on
                    // that retry takes the backoff path below.
                    log::warn!(
                        "{}[{}]: batch of {} met a stored history row (another consumer during a rebalance, or an edited database: {e}); retrying it with ON CONFLICT",
                        self.topic,
                        self.partition,
                        items.len()
                    );
                    self.history = HistoryInsert::OnConflict;
                    self.shared.metrics.db_errors.inc();
                }
                Err(e) => {
                    let conflict = matches!(&e, BatchError::Db(d) if d.is_conflict());
                    if conflict {
                        self.shared.metrics.db_conflicts.inc();
                    } else {
                        self.shared.metrics.db_errors.inc();
                    }
                    // A database error other than a conflict starts over
                    // with a new connection and freshly prepared statements
                    // (a prepared statement can go stale, e.g. after a
                    // migration: "cached plan must not change result type").
                    if self.db.as_ref().is_some_and(|d| d.client.is_closed())
                        || matches!(&e, BatchError::Db(_) if !conflict)
                    {
                        self.db = None;
                    }
                    let level = if attempt == 1 || attempt.is_multiple_of(10) {
                        log::Level::Warn
                    } else {
                        log::Level::Debug
                    };
                    log::log!(
                        level,
                        "{}[{}]: batch of {} not applied (attempt {attempt}), retrying in {:?}: {e}",
                        self.topic,
                        self.partition,
                        items.len(),
                        backoff
                    );
                    retrying.get_or_insert_with(|| RetryingGuard::new(&self.shared.metrics.paused));
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.shared.retry_max_backoff);
                }
            }
        }
    }

    /// [`Worker::apply_once`] given up after `database.timeout_secs`: the
    /// connection is dropped (the server rolls the transaction back, or it
    /// committed and the retry is a no-op by `(session_id, seq)`).
    async fn apply_bounded(
        &mut self,
        items: &[Item],
        defer: Option<Deferral>,
    ) -> Result<(Plan, usize), BatchError> {
        let secs = self.shared.db_timeout_secs;
        match tokio::time::timeout(Duration::from_secs(secs), self.apply_once(items, defer)).await {
            Ok(result) => result,
            Err(_) => {
                self.db = None;
                Err(BatchError::Db(db::DbError::Timeout {
                    step: "apply the batch",
                    secs,
                }))
            }
        }
    }

    async fn apply_once(
        &mut self,
        items: &[Item],
        defer: Option<Deferral>,
    ) -> Result<(Plan, usize), BatchError> {
        let conn = match self.db.take() {
            Some(conn) => conn,
            None => {
                let client = db::connect(&self.shared.db_url, self.shared.db_timeout_secs).await?;
                db::limit_idle_transactions(&client, self.shared.db_timeout_secs).await?;
                db::migrate::check_version(&client).await?;
                let statements = write::Statements::prepare(&client).await?;
                Db { client, statements }
            }
        };
        let conn = self.db.insert(conn);
        let tx = conn
            .client
            .transaction()
            .await
            .map_err(db::sql("begin a transaction"))?;
        let applied = write::apply(
            &tx,
            &conn.statements,
            items,
            &self.known,
            rae_protocol::time::now_ms(),
            &self.shared.policy,
            self.history,
            defer,
        )
        .await?;
        let (plan, covered) = (applied.plan, applied.covered);
        produce_side_records(&self.shared, &self.topic, &items[..covered], &plan).await?;
        tx.commit()
            .await
            .map_err(db::sql("commit the batch transaction"))?;
        self.known.committed(applied.loaded, &plan.sessions);
        Ok((plan, covered))
    }

    fn after_commit(&self, items: &[Item], plan: &Plan, took: Duration) {
        if items.is_empty() {
            // The whole batch waits for the next one: nothing applied.
            return;
        }
        let m = &self.shared.metrics;
        m.batches.inc();
        m.batch_records.add(items.len() as i64);
        m.last_batch_size.set(items.len() as i64);
        m.last_batch_latency_ms.set(ms(took));
        m.batch_latency_ms_total.add(ms(took));
        m.batch_seconds.observe(took.as_secs_f64());
        m.batch_size.observe(items.len() as f64);
        m.applied.add(plan.counts.applied as i64);
        m.duplicates.add(plan.counts.duplicates as i64);
        m.gaps.add(plan.counts.gaps as i64);
        m.reordered.add(plan.counts.reordered as i64);
        m.resyncs.add(plan.counts.resyncs as i64);
        m.dlq.add(plan.counts.dead as i64);
        m.status.add(plan.counts.status as i64);
        m.status_repeats.add(plan.counts.status_repeats as i64);
        let Some(last) = items.last() else { return };
        let consumer = &self.shared.consumer;
        if let Err(e) = consumer.store_offset(&self.topic, self.partition, last.offset) {
            log::debug!(
                "{}[{}]: offset {} not stored (partition no longer assigned?): {e}",
                self.topic,
                self.partition,
                last.offset
            );
            return;
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            log::warn!("offset commit not sent: {e}");
        }
        log::debug!(
            "{}[{}]: batch of {} up to offset {} committed ({:?})",
            self.topic,
            self.partition,
            items.len(),
            last.offset,
            plan.counts
        );
    }
}

/// Produces the batch's dead letters and resync commands and waits for
/// Kafka to confirm every one.
async fn produce_side_records(
    shared: &Shared,
    source_topic: &str,
    items: &[Item],
    plan: &Plan,
) -> Result<(), BatchError> {
    let (generation, producer) = shared.producer.get();
    let mut pending = Vec::new();
    for d in &plan.dead {
        let item = &items[d.index];
        let headers = dlq_headers(
            &d.letter.reason,
            d.letter.kind.as_str(),
            source_topic,
            item.partition,
            item.offset,
        );
        log::warn!(
            "{source_topic}[{}] offset {}: dead letter ({}): {}",
            item.partition,
            item.offset,
            d.letter.kind.as_str(),
            d.letter.reason
        );
        let key_len = item.key.as_ref().map_or(0, Vec::len);
        let (value, truncated_from) =
            dlq_value(item.raw.as_slice(), key_len, shared.max_record_bytes);
        let headers = match truncated_from {
            Some(len) => {
                log::warn!(
                    "{source_topic}[{}] offset {}: the dead letter carries the first {} of the \
                     record's {len} bytes (message.max.bytes)",
                    item.partition,
                    item.offset,
                    value.len()
                );
                let len = len.to_string();
                headers.insert(Header {
                    key: "truncated_from",
                    value: Some(len.as_bytes()),
                })
            }
            None => headers,
        };
        let mut record = FutureRecord::to(&shared.dlq_topic)
            .payload(value)
            .headers(headers);
        if let Some(key) = &item.key {
            record = record.key(key.as_slice());
        }
        let sent = producer.send_result(record).map_err(|(e, _)| e);
        pending.push((shared.dlq_topic.as_str(), sent));
    }
    for r in &plan.resyncs {
        log::info!(
            "session {} of {} has a gap: resync requested",
            r.session_id,
            r.rae_id
        );
        let payload = resync_payload(&r.session_id);
        let record = FutureRecord::to(&shared.commands_topic)
            .payload(payload.as_slice())
            .key(r.rae_id.as_bytes())
            .headers(command_headers("resync"));
        let sent = producer.send_result(record).map_err(|(e, _)| e);
        pending.push((shared.commands_topic.as_str(), sent));
    }
    for (topic, sent) in pending {
        let produce_err = |source| BatchError::Produce {
            topic: topic.to_string(),
            source,
        };
        let future = sent.map_err(produce_err)?;
        match future.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                // A broker that lost the producer's state: a new producer
                // for the retry (see side_producer).
                shared.producer.failed(generation, &e);
                return Err(produce_err(e));
            }
            Err(_) => return Err(produce_err(rdkafka::error::KafkaError::Canceled)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::caught_up;

    #[test]
    fn a_batch_is_caught_up_only_when_it_holds_the_record_before_the_high_watermark() {
        // Records 0..=9 written: the high watermark is 10.
        assert!(caught_up(9, 10));
        assert!(!caught_up(8, 10), "record 9 is still on its way");
        // A watermark older than the records received (a fetch answered
        // before the last records were written) is caught up too.
        assert!(caught_up(12, 10));
    }

    #[test]
    fn an_unknown_high_watermark_is_never_caught_up() {
        // librdkafka's RD_KAFKA_OFFSET_INVALID before the first fetch.
        assert!(!caught_up(9, -1001));
        assert!(!caught_up(-1, -1));
    }
}
