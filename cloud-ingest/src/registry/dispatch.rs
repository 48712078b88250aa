//! The consumer group member: receives records from the subscribed topics
//! (events and status) and hands each to the pipeline ([`Worker`]) of its
//! partition, in offset order.
//!
//! Invariants:
//! - a partition's records reach its worker in order, through a bounded
//!   channel; when the channel is full (the worker is retrying a batch
//!   because the database is down) the partition is paused and the
//!   records already received wait in a small stash, so memory stays
//!   bounded while the consumer keeps polling (and keeps its group
//!   membership);
//! - revokes are handled before the record that follows them is
//!   dispatched (a rebalance runs inside `recv`), so a record of a new
//!   assignment never lands in a retired pipeline (which would leave a
//!   hole that the next pipeline skips over);
//! - on revoke, the partition's worker is told to abandon (its uncommitted
//!   records are redelivered to the next owner; applying them twice is a
//!   no-op by `(session_id, seq)`) and its stash is dropped;
//! - on shutdown, workers finish their batch and commit; then the stored
//!   offsets are committed synchronously, bounded by [`SHUTDOWN_DEADLINE`].

use super::kafka::{consumer_config, producer_config};
use super::plan::Policy;
use super::worker::{Shared, Stop, Worker};
use super::{RegistryMetrics, SHUTDOWN_DEADLINE};
use crate::config::Settings;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::TopicPartitionList;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Records buffered per partition between the dispatcher and its worker.
const CHANNEL_RECORDS: usize = 2048;

type Tp = (String, i32);

/// Receives rebalance notifications from librdkafka (called inside poll).
#[derive(Debug)]
pub struct RegistryContext {
    revoked: Mutex<Vec<Tp>>,
    metrics: RegistryMetrics,
}

impl ClientContext for RegistryContext {
    /// librdkafka statistics (every `statistics.interval.ms`): consumer lag
    /// per assigned partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.lag(topic, *partition).set(p.consumer_lag);
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
            }
            Rebalance::Error(e) => log::warn!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            log::warn!("offset commit failed (the records will be redelivered): {e}");
        }
    }
}

struct Pipeline {
    tx: mpsc::Sender<OwnedMessage>,
    stop: watch::Sender<Stop>,
    stash: VecDeque<OwnedMessage>,
    paused: bool,
}

/// See the module docs.
pub struct Dispatcher {
    consumer: Arc<StreamConsumer<RegistryContext>>,
    shared: Shared,
    pipelines: HashMap<Tp, Pipeline>,
    workers: JoinSet<()>,
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
                metrics: metrics.clone(),
            })?;
        consumer.subscribe(&[kafka.events_topic.as_str(), kafka.status_topic.as_str()])?;
        let producer: FutureProducer = producer_config(kafka).create()?;
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
            retry_max_backoff: Duration::from_secs(settings.database.retry_max_backoff_secs),
            metrics: metrics.clone(),
        };
        Ok(Dispatcher {
            consumer,
            shared,
            pipelines: HashMap::new(),
            workers: JoinSet::new(),
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
        let mut tick = tokio::time::interval(Duration::from_millis(50));
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
                        self.dispatch(m.detach());
                    }
                    Err(e) => {
                        log::warn!("Kafka consumer error: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tick.tick() => self.drain_stashes(),
            }
            self.handle_revokes();
            while let Some(done) = self.workers.try_join_next() {
                if let Err(e) = done {
                    log::error!("a partition pipeline failed: {e}");
                }
            }
        }
        self.shutdown().await;
        Ok(())
    }

    fn dispatch(&mut self, m: OwnedMessage) {
        let tp = (m.topic().to_string(), m.partition());
        if !self.pipelines.contains_key(&tp) {
            self.spawn(tp.clone());
        }
        let Some(p) = self.pipelines.get_mut(&tp) else {
            return;
        };
        if p.paused || !p.stash.is_empty() {
            p.stash.push_back(m);
            return;
        }
        match p.tx.try_send(m) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                p.stash.push_back(m);
                p.paused = true;
                pause(&self.consumer, &tp, true);
                self.metrics.paused_partitions.add(1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The worker ended (revoked); the record is redelivered.
                self.pipelines.remove(&tp);
            }
        }
    }

    fn spawn(&mut self, tp: Tp) {
        let (tx, rx) = mpsc::channel(CHANNEL_RECORDS);
        let (stop_tx, stop_rx) = watch::channel(Stop::Running);
        let worker = Worker {
            topic: tp.0.clone(),
            partition: tp.1,
            rx,
            stop: stop_rx,
            shared: self.shared.clone(),
            client: None,
        };
        self.workers.spawn(worker.run());
        self.pipelines.insert(
            tp,
            Pipeline {
                tx,
                stop: stop_tx,
                stash: VecDeque::new(),
                paused: false,
            },
        );
    }

    fn drain_stashes(&mut self) {
        for (tp, p) in self.pipelines.iter_mut() {
            while let Some(m) = p.stash.pop_front() {
                match p.tx.try_send(m) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(m))
                    | Err(mpsc::error::TrySendError::Closed(m)) => {
                        p.stash.push_front(m);
                        break;
                    }
                }
            }
            if p.paused && p.stash.is_empty() {
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
            if let Some(p) = self.pipelines.remove(&tp) {
                let _ = p.stop.send(Stop::Revoked);
                if p.paused {
                    self.metrics.paused_partitions.add(-1);
                }
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
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync))
                .await;
        match committed {
            Ok(Ok(())) => log::info!("offsets committed; registry stopped"),
            Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            ))) => {
                log::info!("offsets committed (nothing new since the last batch); registry stopped")
            }
            Ok(Err(e)) => log::info!("final offset commit: {e}"),
            Err(e) => log::warn!("final offset commit did not run: {e}"),
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
