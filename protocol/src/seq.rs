//! Per-session sequence rules for device events.
//!
//! Owns [`check_seq`], the single place that decides what a consumer does
//! with an incoming `seq`. Invariants of the contract:
//! - within one `session_id`, producers number envelopes gaplessly starting
//!   at [`FIRST_SEQ`] (1); `seq == 0` never appears on the wire;
//! - consumers are idempotent by `(session_id, seq)`: applying the same
//!   envelope twice has the effect of applying it once, so redelivery
//!   ([`SeqVerdict::Duplicate`]) is simply skipped;
//! - a [`SeqVerdict::Gap`] means events were lost: the consumer marks the
//!   session stale and asks the agent for a resync. It never guesses the
//!   missing state and never applies a delta on top of a gap.
//!
//! Checkpoints are the exception, handled by the consumer before calling
//! [`check_seq`]: a `checkpoint` carries the full record as of its `seq`, so
//! one with `seq >= last_applied` (or any, when nothing was applied yet)
//! replaces the session state, sets `last_applied = seq` and clears the
//! stale mark. A checkpoint with `seq < last_applied` is a duplicate.

/// The first sequence number of every session.
pub const FIRST_SEQ: u64 = 1;

/// What a consumer should do with an envelope, given the last applied `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Exactly the next one: apply it and remember its `seq`.
    Next,
    /// Already applied (redelivery): skip it.
    Duplicate,
    /// Events between were lost: mark the session stale and request a resync.
    Gap {
        /// The `seq` that should have come next.
        expected: u64,
        /// The `seq` that actually arrived.
        got: u64,
    },
}

/// Classifies `got` against the last applied sequence number of a session
/// (`None` when nothing of the session was applied yet).
pub fn check_seq(last_applied: Option<u64>, got: u64) -> SeqVerdict {
    let expected = match last_applied {
        None => FIRST_SEQ,
        Some(last) if got <= last => return SeqVerdict::Duplicate,
        Some(last) => last.saturating_add(1),
    };
    if got == expected {
        SeqVerdict::Next
    } else {
        SeqVerdict::Gap { expected, got }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_event_of_a_session_is_next() {
        assert_eq!(check_seq(None, FIRST_SEQ), SeqVerdict::Next);
    }

    #[test]
    fn missing_start_of_a_session_is_a_gap_from_one() {
        assert_eq!(
            check_seq(None, 5),
            SeqVerdict::Gap {
                expected: 1,
                got: 5
            }
        );
    }

    #[test]
    fn zero_seq_without_history_is_a_gap() {
        assert_eq!(
            check_seq(None, 0),
            SeqVerdict::Gap {
                expected: 1,
                got: 0
            }
        );
    }

    #[test]
    fn successor_of_last_applied_is_next() {
        assert_eq!(check_seq(Some(7), 8), SeqVerdict::Next);
    }

    #[test]
    fn redelivered_or_older_seq_is_duplicate() {
        assert_eq!(check_seq(Some(7), 7), SeqVerdict::Duplicate);
        assert_eq!(check_seq(Some(7), 1), SeqVerdict::Duplicate);
        assert_eq!(check_seq(Some(7), 0), SeqVerdict::Duplicate);
    }

    #[test]
    fn skipped_seq_is_a_gap_naming_the_expected_one() {
        assert_eq!(
            check_seq(Some(7), 10),
            SeqVerdict::Gap {
                expected: 8,
                got: 10
            }
        );
    }

    #[test]
    fn max_last_applied_never_overflows() {
        assert_eq!(check_seq(Some(u64::MAX), u64::MAX), SeqVerdict::Duplicate);
    }
}
