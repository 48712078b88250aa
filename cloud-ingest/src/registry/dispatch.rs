//! The consumer group member: receives records from the subscribed topics
//! (events and status) and hands each to the pipeline ([`Worker`]) of its
//! partition, in offset order.
//!
//! Invariants:
//! - a partition's records reach its worker in order, through a bounded
//!   channel ([`CHANNEL_RECORDS`] records, [`CHANNEL_MAX_BYTES`] of keys
//!   and payloads); when the channel is full (the worker
//!   is behind, or retrying a batch because the database is down) records
//!   wait in the partition's stash, and once the stash holds more than
//!   [`STASH_MAX_BYTES`], or all stashes together more than
//!   [`STASH_TOTAL_MAX_BYTES`], the partition is paused (resumed once its
//!   stash is below half of the first and all of them below half of the
//!   second), so memory stays bounded while the consumer keeps polling (and
//!   keeps its group membership). The stash holds two partition fetches
//!   (`max.partition.fetch.bytes`, 4 MiB): pausing makes librdkafka drop
//!   what it prefetched for the partition and fetch it again, so pausing
//!   at the first record that does not fit the channel would throw most
//!   of each fetch away during a backlog;
//! - revokes are handled before the record that follows them is
//!   dispatched (a rebalance runs inside `recv`), so a record of a new
//!   assignment never lands in a retired pipeline (which would leave a
//!   hole that the next pipeline skips over);
//! - on revoke, the partition's worker is told to abandon (its uncommitted
//!   records are redelivered to the next owner; applying them twice is a
//!   no-op by `(session_id, seq)`) and its stash is dropped;
//! - every newly assigned partition is resumed (librdkafka keeps an
//!   application pause across revoke and re-assignment, and a new pipeline
//!   starts unpaused);
//! - a pipeline that panics stops the registry (after the others finish
//!   their batch): a new pipeline for its partition would start after the
//!   lost batch and commit past it. A pipeline is only ever told to stop
//!   after it leaves the map of pipelines, so one in the map whose channel
//!   is closed has died: its partition gets no new pipeline (the worker's
//!   channel closes while the panic unwinds, before the task's end is
//!   visible to the `JoinSet`, so waiting for that alone would race);
//! - on shutdown, workers finish their batch and commit; then the stored
//!   offsets are committed synchronously; the workers are bounded by
//!   [`SHUTDOWN_DEADLINE`], the commit by [`FINAL_COMMIT_DEADLINE`].

use super::kafka::{consumer_config, producer_config};
use super::plan::Policy;
use super::side_producer::SideProducer;
use super::worker::{Shared, Stop, Worker};
use super::{RegistryMetrics, SHUTDOWN_DEADLINE};
use crate::config::Settings;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::TopicPartitionList;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Records buffered per partition between the dispatcher and its worker.
const CHANNEL_RECORDS: usize = 2048;
/// Bytes (keys + payloads) buffered there: large records (full
/// checkpoints of devices with many attributes) would otherwise make the
/// record bound alone worth megabytes per partition. One record always
/// fits, however large.
const CHANNEL_MAX_BYTES: usize = 1 << 20;
/// Bytes (keys + payloads) a partition's stash holds before the partition
/// is paused: twice the default `max.partition.fetch.bytes` (4 MiB,
/// `kafka.rs`), so a whole fetch of the partition fits while the previous
/// one drains into the channel.
const STASH_MAX_BYTES: usize = 8 << 20;
/// Bytes all stashes together hold before a partition that receives more
/// is paused: bounds memory however many partitions are assigned (each
/// stash may fill while the database is down).
const STASH_TOTAL_MAX_BYTES: usize = 32 << 20;
/// How often stashes are moved on into channels when no record arrives.
const STASH_TICK: Duration = Duration::from_millis(20);
/// How long shutdown waits for Kafka to confirm the final offset commit
/// (after [`SHUTDOWN_DEADLINE`]; systemd's `TimeoutStopSec=30` bounds all).
const FINAL_COMMIT_DEADLINE: Duration = Duration::from_secs(3);
/// How long a stopping registry waits for a dead pipeline's task to end,
/// for its panic message (it ends as soon as the panic has unwound).
const DEAD_PIPELINE_WAIT: Duration = Duration::from_secs(1);

type Tp = (String, i32);

/// One consumed record as a pipeline needs it: key and value copied once
/// out of librdkafka's buffer (no topic name, headers or timestamp, which
/// the pipelines do not use; `BorrowedMessage::detach` copies all of them,
/// and the batch then copied key and value a second time).
#[derive(Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Record {
    fn of(m: &BorrowedMessage<'_>) -> Record {
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }

    /// Key + payload bytes: what the channel and stash bounds count.
    fn bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.payload.as_ref().map_or(0, Vec::len)
    }
}

/// Receives rebalance notifications from librdkafka (called inside poll).
#[derive(Debug)]
pub struct RegistryContext {
    revoked: Mutex<Vec<Tp>>,
    /// The partitions assigned now: only their lag is exported.
    assigned: Mutex<std::collections::BTreeSet<Tp>>,
    /// `auto.offset.reset` reads a partition with no committed offset from
    /// its start ([`super::partition_lag`]).
    from_earliest: bool,
    metrics: RegistryMetrics,
}

impl ClientContext for RegistryContext {
    /// librdkafka statistics (every `statistics.interval.ms`): consumer lag
    /// per assigned partition (librdkafka also lists partitions it no
    /// longer fetches, with their last figures).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if !assigned.contains(&(topic.clone(), *partition)) {
                    continue;
                }
                if let Some(lag) = super::partition_lag(
                    p.consumer_lag,
                    p.committed_offset,
                    p.lo_offset,
                    p.hi_offset,
                    self.from_earliest,
                ) {
                    self.metrics.lag(topic, *partition).set(lag);
                }
            }
        }
    }
}

impl ConsumerContext for RegistryContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let list: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                log::info!("partitions revoked: {list:?}");
                let mut assigned = self.assigned.lock().unwrap_or_else(|e| e.into_inner());
                for (topic, partition) in &list {
                    assigned.remove(&(topic.clone(), *partition));
                    self.metrics.forget_lag(topic, *partition);
                }
                drop(assigned);
                self.revoked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(list);
            }
            Rebalance::Assign(tpl) => {
                let list: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                log::info!("partitions assigned: {list:?}");
                self.assigned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(list);
            }
            Rebalance::Error(e) => log::warn!("rebalance error: {e}"),
        }
    }

    /// Resumes every newly assigned partition. The dispatcher pauses a
    /// partition whose stash is full, and librdkafka keeps such an
    /// application pause across a revoke and a later re-assignment
    /// (`rdkafka_assignment.c` resets only its own pause flag). A paused
    /// partition revoked and handed back (an eager rebalance, e.g. a second
    /// registry joining during a database outage) would otherwise never be
    /// fetched again: its new pipeline starts unpaused and nothing would
    /// ever resume it.
    fn post_rebalance(&self, c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if tpl.count() > 0 {
                if let Err(e) = c.resume(tpl) {
                    log::warn!("cannot resume the newly assigned partitions: {e}");
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            log::warn!("offset commit failed (the records will be redelivered): {e}");
        }
    }
}

/// Keys + payloads sent into a pipeline's channel and not yet received by
/// its worker (the worker subtracts what it receives).
#[derive(Debug, Clone, Default)]
pub struct ChannelBytes(Arc<AtomicI64>);

impl ChannelBytes {
    fn add(&self, n: usize) {
        self.0.fetch_add(to_i64(n), Ordering::Relaxed);
    }
    /// Called by the worker for each record it receives.
    pub fn received(&self, m: &Record) {
        self.0.fetch_sub(to_i64(m.bytes()), Ordering::Relaxed);
    }
    /// Undoes [`ChannelBytes::add`] for a record that was not sent.
    fn add_back(&self, n: usize) {
        self.0.fetch_sub(to_i64(n), Ordering::Relaxed);
    }
    fn get(&self) -> usize {
        usize::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

struct Pipeline {
    tx: mpsc::Sender<Record>,
    channel_bytes: ChannelBytes,
    stop: watch::Sender<Stop>,
    stash: VecDeque<Record>,
    /// Keys + payloads in `stash`.
    stash_bytes: usize,
    paused: bool,
    /// The offset after the last record dispatched (None before the first).
    next_offset: Option<i64>,
}

/// Offsets a partition's stream jumped over: `Some((first, end))`, end
/// exclusive, when `got` lies beyond the `expected` next offset (pure).
/// The events topic is neither compacted nor transactional, so its offsets
/// are contiguous and a jump means records the broker never delivered
/// (seen: Tansu 0.6.0 answering a fetch from inside a record batch with the
/// next batch, docs/CLOUD.md). A step back (a refetch) is no jump.
pub fn offset_jump(expected: Option<i64>, got: i64) -> Option<(i64, i64)> {
    expected.filter(|&e| got > e).map(|e| (e, got))
}

/// Whether a partition whose stash holds `own` bytes is to be paused, with
/// `total` the bytes in all stashes (pure). An empty stash (every record
/// went on into the channel) never pauses its partition.
fn over_stash_limit(own: usize, total: usize) -> bool {
    own > STASH_MAX_BYTES || (own > 0 && total > STASH_TOTAL_MAX_BYTES)
}

/// Whether a paused partition may fetch again: its stash below half of
/// its limit and all stashes below half of theirs (pure).
fn may_resume(own: usize, total: usize) -> bool {
    own <= STASH_MAX_BYTES / 2 && total <= STASH_TOTAL_MAX_BYTES / 2
}

impl Pipeline {
    /// Moves stashed records into the channel, in order, while it has
    /// room. False if the worker is gone.
    fn flush(&mut self) -> bool {
        while let Some(m) = self.stash.pop_front() {
            let bytes = m.bytes();
            let queued = self.channel_bytes.get();
            if queued > 0 && queued + bytes > CHANNEL_MAX_BYTES {
                self.stash.push_front(m);
                return true;
            }
            // Counted before the send: the worker may receive (and
            // subtract) it before try_send returns.
            self.channel_bytes.add(bytes);
            match self.tx.try_send(m) {
                Ok(()) => self.stash_bytes -= bytes,
                Err(mpsc::error::TrySendError::Full(m)) => {
                    self.channel_bytes.add_back(bytes);
                    self.stash.push_front(m);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(m)) => {
                    self.channel_bytes.add_back(bytes);
                    self.stash.push_front(m);
                    return false;
                }
            }
        }
        true
    }
}

/// See the module docs.
pub struct Dispatcher {
    consumer: Arc<StreamConsumer<RegistryContext>>,
    shared: Shared,
    pipelines: HashMap<Tp, Pipeline>,
    /// Keys + payloads in all pipelines' stashes (the sum of their
    /// `stash_bytes`, kept as they change rather than summed per record).
    stashed: usize,
    workers: JoinSet<()>,
    /// A partition whose pipeline ended without being told to stop (it
    /// panicked): the registry stops instead of starting another one.
    dead: Option<Tp>,
    metrics: RegistryMetrics,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("partitions", &self.pipelines.len())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// Creates the Kafka clients and subscribes; nothing is read yet.
    pub fn build(settings: &Settings, metrics: RegistryMetrics) -> anyhow::Result<Dispatcher> {
        let kafka = &settings.kafka;
        let consumer: StreamConsumer<RegistryContext> = consumer_config(kafka)
            .create_with_context(RegistryContext {
                revoked: Mutex::default(),
                assigned: Mutex::default(),
                from_earliest: super::kafka::starts_from_earliest(kafka),
                metrics: metrics.clone(),
            })?;
        consumer.subscribe(&[kafka.events_topic.as_str(), kafka.status_topic.as_str()])?;
        let side_config = producer_config(kafka);
        let max_record_bytes = crate::kafka_props::record_limit(&side_config);
        let producer = Arc::new(SideProducer::new(side_config)?);
        let consumer = Arc::new(consumer);
        let r = &settings.registry;
        let shared = Shared {
            consumer: consumer.clone(),
            producer,
            db_url: settings.database.url.clone(),
            dlq_topic: kafka.dlq_topic.clone(),
            commands_topic: kafka.commands_topic.clone(),
            status_topic: kafka.status_topic.clone(),
            policy: Policy {
                resync_min_interval_ms: r.resync_min_interval_secs * 1000,
                history_max: r.history_max_events_per_session.into(),
            },
            batch_max_records: r.batch_max_records,
            batch_max_wait: Duration::from_millis(r.batch_max_wait_ms),
            batch_min_interval: Duration::from_millis(r.batch_min_interval_ms),
            retry_max_backoff: Duration::from_secs(settings.database.retry_max_backoff_secs),
            db_timeout_secs: settings.database.timeout_secs,
            max_record_bytes,
            metrics: metrics.clone(),
        };
        Ok(Dispatcher {
            consumer,
            shared,
            pipelines: HashMap::new(),
            stashed: 0,
            workers: JoinSet::new(),
            dead: None,
            metrics,
        })
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        log::info!(
            "registry consuming {:?} (batches of up to {} records / {:?})",
            self.consumer
                .subscription()
                .map(|t| t
                    .elements()
                    .iter()
                    .map(|e| e.topic().to_string())
                    .collect::<Vec<_>>())
                .unwrap_or_default(),
            self.shared.batch_max_records,
            self.shared.batch_max_wait
        );
        let mut tick = tokio::time::interval(STASH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = self.consumer.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                m = consumer.recv() => match m {
                    Ok(m) => {
                        // A rebalance runs inside recv(): retire the revoked
                        // pipelines before this record (possibly of the new
                        // assignment) is handed to one of them.
                        self.handle_revokes();
                        self.metrics.records_in.inc();
                        let tp = (m.topic().to_string(), m.partition());
                        self.dispatch(tp, Record::of(&m));
                    }
                    Err(e) => {
                        log::warn!("Kafka consumer error: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tick.tick() => self.drain_stashes(),
            }
            self.handle_revokes();
            if let Some(reason) = self.failure().await {
                // A pipeline that panicked lost its uncommitted batch; a new
                // pipeline for its partition would start at the fetch
                // position after it and commit past it. Stop instead: the
                // restart resumes from the committed offsets.
                self.shutdown().await;
                anyhow::bail!(
                    "a partition pipeline failed ({reason}); the registry stops so that the \
                     partition resumes from its committed offset on restart"
                );
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Why a pipeline ended without being told to stop, if one did: its
    /// panic as the `JoinSet` reports it, waited for up to
    /// [`DEAD_PIPELINE_WAIT`] once its channel was seen closed.
    async fn failure(&mut self) -> Option<String> {
        if let Some(e) = self.failed_worker() {
            return Some(e.to_string());
        }
        let (topic, partition) = self.dead.clone()?;
        let unknown = format!("the pipeline of {topic}[{partition}] ended without being stopped");
        let end = tokio::time::timeout(DEAD_PIPELINE_WAIT, async {
            while let Some(done) = self.workers.join_next().await {
                if let Err(e) = done {
                    return Some(e);
                }
            }
            None
        })
        .await;
        Some(match end {
            Ok(Some(e)) => {
                log::error!("a partition pipeline failed: {e}");
                format!("{topic}[{partition}]: {e}")
            }
            _ => {
                log::error!("{unknown}");
                unknown
            }
        })
    }

    /// The first pipeline that ended by panicking, if any (a pipeline
    /// otherwise ends only when revoked or at shutdown).
    fn failed_worker(&mut self) -> Option<tokio::task::JoinError> {
        while let Some(done) = self.workers.try_join_next() {
            if let Err(e) = done {
                log::error!("a partition pipeline failed: {e}");
                return Some(e);
            }
        }
        None
    }

    fn dispatch(&mut self, tp: Tp, m: Record) {
        if !self.pipelines.contains_key(&tp) {
            self.spawn(tp.clone());
        }
        let Some(p) = self.pipelines.get_mut(&tp) else {
            return;
        };
        if tp.0 != self.shared.status_topic {
            if let Some((first, end)) = offset_jump(p.next_offset, m.offset) {
                self.metrics.offsets_skipped.add(end - first);
                log::error!(
                    "{}[{}]: the broker delivered offset {end} after {}, skipping {first}..{end}: \
                     those records were never received; their sessions will show gaps and be \
                     resynced (a broker that answers a fetch from inside a record batch with \
                     the next one, e.g. Tansu 0.6.0, does this)",
                    tp.0,
                    tp.1,
                    first - 1
                );
            }
        }
        p.next_offset = Some(m.offset.saturating_add(1));
        let bytes = m.bytes();
        p.stash_bytes += bytes;
        p.stash.push_back(m);
        self.stashed += bytes;
        let before = p.stash_bytes;
        let alive = p.flush();
        self.stashed -= before - p.stash_bytes;
        if !alive {
            // Still in the map, so never told to stop: it died. Its
            // partition keeps this pipeline (no new one starts after the
            // lost batch) until `run` sees `dead` and stops.
            self.dead.get_or_insert(tp);
            return;
        }
        if !p.paused && over_stash_limit(p.stash_bytes, self.stashed) {
            p.paused = true;
            pause(&self.consumer, &tp, true);
            self.metrics.paused_partitions.add(1);
        }
    }

    /// Forgets a partition's pipeline and its stash; returns it.
    fn retire(&mut self, tp: &Tp) -> Option<Pipeline> {
        let p = self.pipelines.remove(tp)?;
        self.stashed -= p.stash_bytes;
        if p.paused {
            self.metrics.paused_partitions.add(-1);
        }
        Some(p)
    }

    fn spawn(&mut self, tp: Tp) {
        let (tx, rx) = mpsc::channel(CHANNEL_RECORDS);
        let channel_bytes = ChannelBytes::default();
        let (stop_tx, stop_rx) = watch::channel(Stop::Running);
        let worker = Worker {
            topic: tp.0.clone(),
            partition: tp.1,
            rx,
            channel_bytes: channel_bytes.clone(),
            stop: stop_rx,
            shared: self.shared.clone(),
            db: None,
            history: crate::db::write::HistoryInsert::Fast,
            known: Default::default(),
        };
        self.workers.spawn(worker.run());
        self.pipelines.insert(
            tp,
            Pipeline {
                tx,
                channel_bytes,
                stop: stop_tx,
                stash: VecDeque::new(),
                stash_bytes: 0,
                paused: false,
                next_offset: None,
            },
        );
    }

    fn drain_stashes(&mut self) {
        for (tp, p) in self.pipelines.iter_mut() {
            let before = p.stash_bytes;
            if !p.flush() {
                // Never told to stop (revoked ones leave the map first).
                self.dead.get_or_insert_with(|| tp.clone());
            }
            self.stashed -= before - p.stash_bytes;
        }
        let total = self.stashed;
        for (tp, p) in self.pipelines.iter_mut() {
            if p.paused && may_resume(p.stash_bytes, total) {
                p.paused = false;
                pause(&self.consumer, tp, false);
                self.metrics.paused_partitions.add(-1);
            }
        }
    }

    fn handle_revokes(&mut self) {
        let revoked: Vec<Tp> = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for tp in revoked {
            if let Some(p) = self.retire(&tp) {
                let _ = p.stop.send(Stop::Revoked);
            }
        }
    }

    async fn shutdown(mut self) {
        for p in self.pipelines.values() {
            let _ = p.stop.send(Stop::Shutdown);
        }
        let deadline = tokio::time::sleep(SHUTDOWN_DEADLINE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.workers.join_next() => if next.is_none() { break },
                _ = &mut deadline => {
                    log::warn!(
                        "shutdown deadline: {} pipeline(s) still retrying; their batches are not committed and will be redelivered",
                        self.workers.len()
                    );
                    self.workers.abort_all();
                    break;
                }
            }
        }
        let consumer = self.consumer.clone();
        let committed = tokio::time::timeout(
            FINAL_COMMIT_DEADLINE,
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync)),
        )
        .await;
        match committed {
            Ok(Ok(Ok(()))) => log::info!("offsets committed; registry stopped"),
            Ok(Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )))) => {
                log::info!("offsets committed (nothing new since the last batch); registry stopped")
            }
            Ok(Ok(Err(e))) => log::info!("final offset commit: {e}"),
            Ok(Err(e)) => log::warn!("final offset commit did not run: {e}"),
            Err(_) => log::warn!(
                "final offset commit: no answer from Kafka within {FINAL_COMMIT_DEADLINE:?}; \
                 the batches since the last commit will be redelivered"
            ),
        }
    }
}

fn pause(consumer: &StreamConsumer<RegistryContext>, tp: &Tp, pause: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => log::debug!(
            "{}[{}] {}",
            tp.0,
            tp.1,
            if pause { "paused" } else { "resumed" }
        ),
        Err(e) => log::debug!("{}[{}]: pause/resume: {e}", tp.0, tp.1),
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
