//! The registry's producer of side records (dead letters, resync
//! commands), replaced when the broker may have lost its state.
//!
//! Why: the producer is idempotent, and an idempotent producer carries
//! state the broker must share (producer id, epoch, sequence numbers). A
//! broker that lost it (a restarted Tansu with memory storage; a cluster
//! restored or rebuilt) may never confirm that producer's records again:
//! librdkafka reports nothing fatal, each delivery just times out. The
//! batch that needs a side record then fails at every retry and its
//! partition stalls for good. A new producer gets a new id and works.
//!
//! Invariants:
//! - a delivery that failed with a timeout or a lost-state error
//!   ([`crate::bridge::health::classify`]) replaces the producer that made
//!   it, once: a failure reported for an older generation changes nothing;
//! - replacing loses nothing: side records are produced inside the batch
//!   transaction, before COMMIT, so the failed batch is retried and
//!   produces them again with the new producer (a duplicate dead letter or
//!   resync command is harmless);
//! - the old producer is purged and dropped off the async runtime (its
//!   drop joins librdkafka's threads).
//!
//! Unlike the bridge (three timeouts in a row), one timeout is enough:
//! each failure here costs a whole batch attempt (`message.timeout.ms`,
//! 30 s by default), and during a real outage a replacement per timeout
//! is harmless.

use crate::bridge::health::{classify, Failure};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer, PurgeConfig};
use std::sync::Mutex;

/// See the module docs.
pub struct SideProducer {
    config: ClientConfig,
    current: Mutex<(u64, FutureProducer)>,
}

impl std::fmt::Debug for SideProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideProducer")
            .field("generation", &self.lock().0)
            .finish_non_exhaustive()
    }
}

/// Whether a failed delivery calls for a new producer.
pub fn needs_replacement(error: &KafkaError) -> bool {
    let code: Option<RDKafkaErrorCode> = error.rdkafka_error_code();
    matches!(classify(code), Failure::Timeout | Failure::StateLost)
}

impl SideProducer {
    pub fn new(config: ClientConfig) -> KafkaResult<SideProducer> {
        let producer = config.create()?;
        Ok(SideProducer {
            config,
            current: Mutex::new((0, producer)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, FutureProducer)> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current producer and its generation.
    pub fn get(&self) -> (u64, FutureProducer) {
        let current = self.lock();
        (current.0, current.1.clone())
    }

    /// A delivery by the producer of `generation` failed with `error`:
    /// replaces that producer if [`needs_replacement`] says so and it is
    /// still the current one.
    pub fn failed(&self, generation: u64, error: &KafkaError) {
        if !needs_replacement(error) {
            return;
        }
        let fresh: FutureProducer = match self.config.create() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("cannot build a new Kafka producer for side records: {e}");
                return;
            }
        };
        let old = {
            let mut current = self.lock();
            if current.0 != generation {
                return;
            }
            let old = std::mem::replace(&mut current.1, fresh);
            current.0 += 1;
            old
        };
        log::warn!(
            "replaced the Kafka producer of dead letters and resync commands after `{error}` \
             (the broker may have lost its producer id); the batch produces them again"
        );
        old.purge(PurgeConfig::default().queue().inflight());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(move || drop(old))),
            Err(_) => drop(old),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_lost_state_replace_other_errors_do_not() {
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let lost = KafkaError::MessageProduction(RDKafkaErrorCode::UnknownProducerId);
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(needs_replacement(&timeout));
        assert!(needs_replacement(&lost));
        assert!(!needs_replacement(&too_large));
        assert!(!needs_replacement(&KafkaError::Canceled));
    }

    #[test]
    fn a_failure_replaces_the_producer_of_its_generation_once() {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        let side = SideProducer::new(config).expect("a producer needs no broker to be built");
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let (first, _) = side.get();
        side.failed(first, &timeout);
        let (second, _) = side.get();
        assert_eq!(second, first + 1);
        // Another worker's report about the old producer: already replaced.
        side.failed(first, &timeout);
        assert_eq!(side.get().0, second);
        // An error a new producer would not fix.
        side.failed(
            second,
            &KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        );
        assert_eq!(side.get().0, second);
    }
}
