//! When to replace the uplink's Kafka producer. Pure: the uplink feeds it
//! every delivery outcome of the current producer and rebuilds the
//! producer when told to (and then re-produces every unacked message, in
//! order: [`super::inflight::InFlight::fail_all`]).
//!
//! Why: an idempotent producer carries state the broker must share (its
//! producer id, epoch and per-partition sequence numbers). A broker that
//! lost it (a restarted Tansu with memory storage; a cluster restored or
//! rebuilt) may never accept that producer's records again: librdkafka
//! then reports nothing fatal, its deliveries just time out, forever. A
//! new producer gets a new id and works at once.
//!
//! Rules (invariants):
//! - a delivery error that says the producer state is gone or unusable
//!   (fatal error, unknown producer id, out-of-order sequence, invalid or
//!   fenced epoch) replaces the producer at once;
//! - [`TIMEOUTS_BEFORE_REPLACE`] delivery timeouts in a row, with no
//!   success in between, replace it too. During a real outage this
//!   replaces the producer about once per `message.timeout.ms`, which is
//!   harmless (nothing unconfirmed is lost: it is all produced again);
//! - other errors (e.g. a record too large) neither count nor reset: a new
//!   producer would not help them, and the bridge's own retry handles them;
//! - a success resets the count, and so does a replacement.

use rdkafka::error::RDKafkaErrorCode;

/// Delivery timeouts in a row (no success between) that replace the
/// producer.
pub const TIMEOUTS_BEFORE_REPLACE: u32 = 3;

/// What a failed delivery says about the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `message.timeout.ms` passed without a confirmation.
    Timeout,
    /// The producer's idempotence state is gone or unusable.
    StateLost,
    /// Anything else (about the record, or transient).
    Other,
}

/// Classifies a delivery error by its librdkafka code (`None`: not a Kafka
/// error, e.g. the delivery future was cancelled).
pub fn classify(code: Option<RDKafkaErrorCode>) -> Failure {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::MessageTimedOut | C::RequestTimedOut) => Failure::Timeout,
        Some(
            C::Fatal
            | C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
            | C::InvalidProducerEpoch
            | C::InvalidProducerIdMapping
            | C::ProducerFenced,
        ) => Failure::StateLost,
        _ => Failure::Other,
    }
}

/// What the uplink does with its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Replace it and produce every unacked message again.
    Replace,
}

/// The delivery history of the current producer. See the module docs.
#[derive(Debug, Default)]
pub struct ProducerHealth {
    timeouts_in_a_row: u32,
    replacements: u64,
}

impl ProducerHealth {
    pub fn new() -> ProducerHealth {
        ProducerHealth::default()
    }

    /// The current producer confirmed a record.
    pub fn delivered(&mut self) {
        self.timeouts_in_a_row = 0;
    }

    /// The current producer failed a delivery; `fatal` is whether the
    /// client reports a fatal error.
    pub fn failed(&mut self, failure: Failure, fatal: bool) -> Verdict {
        if fatal || failure == Failure::StateLost {
            return Verdict::Replace;
        }
        if failure == Failure::Timeout {
            self.timeouts_in_a_row += 1;
            if self.timeouts_in_a_row >= TIMEOUTS_BEFORE_REPLACE {
                return Verdict::Replace;
            }
        }
        Verdict::Keep
    }

    /// The producer was replaced: the new one starts with a clean record.
    pub fn replaced(&mut self) {
        self.timeouts_in_a_row = 0;
        self.replacements += 1;
    }

    /// How many times the producer was replaced.
    pub fn replacements(&self) -> u64 {
        self.replacements
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_producer_state_replaces_the_producer_at_once() {
        for code in [
            RDKafkaErrorCode::UnknownProducerId,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::InvalidProducerIdMapping,
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::Fatal,
        ] {
            let mut h = ProducerHealth::new();
            assert_eq!(h.failed(classify(Some(code)), false), Verdict::Replace);
        }
    }

    #[test]
    fn a_fatal_client_error_replaces_the_producer_whatever_the_delivery_error() {
        let mut h = ProducerHealth::new();
        assert_eq!(h.failed(Failure::Other, true), Verdict::Replace);
    }

    #[test]
    fn timeouts_in_a_row_replace_the_producer() {
        let mut h = ProducerHealth::new();
        let timeout = classify(Some(RDKafkaErrorCode::MessageTimedOut));
        assert_eq!(timeout, Failure::Timeout);
        for _ in 1..TIMEOUTS_BEFORE_REPLACE {
            assert_eq!(h.failed(timeout, false), Verdict::Keep);
        }
        assert_eq!(h.failed(timeout, false), Verdict::Replace);
        h.replaced();
        assert_eq!(h.replacements(), 1);
        assert_eq!(
            h.failed(timeout, false),
            Verdict::Keep,
            "a new producer starts with a clean record"
        );
    }

    #[test]
    fn a_success_between_timeouts_keeps_the_producer() {
        let mut h = ProducerHealth::new();
        for _ in 0..10 {
            for _ in 1..TIMEOUTS_BEFORE_REPLACE {
                assert_eq!(h.failed(Failure::Timeout, false), Verdict::Keep);
            }
            h.delivered();
        }
        assert_eq!(h.replacements(), 0);
    }

    #[test]
    fn record_errors_neither_count_nor_reset_the_timeouts() {
        let mut h = ProducerHealth::new();
        let too_large = classify(Some(RDKafkaErrorCode::MessageSizeTooLarge));
        assert_eq!(too_large, Failure::Other);
        assert_eq!(classify(None), Failure::Other);
        for _ in 0..100 {
            assert_eq!(h.failed(too_large, false), Verdict::Keep);
        }
        for _ in 1..TIMEOUTS_BEFORE_REPLACE {
            assert_eq!(h.failed(Failure::Timeout, false), Verdict::Keep);
            assert_eq!(h.failed(too_large, false), Verdict::Keep);
        }
        assert_eq!(h.failed(Failure::Timeout, false), Verdict::Replace);
    }
}
