//! In-flight accounting of the uplink: every MQTT message from receipt
//! until its PUBACK. Pure (time is a plain `u64` of ms); the uplink task
//! does the I/O.
//!
//! Invariants:
//! - at most `capacity` entries and, past the first, at most `max_bytes`
//!   of their data ([`Weigh`]); at either bound the uplink stops reading
//!   MQTT;
//! - acks are released strictly in receive order (MQTT 3.1.1 4.6), and only
//!   for entries whose record Kafka confirmed (or that produce none);
//! - an entry received on an earlier MQTT connection is never acked: its
//!   packet id may already name another message on the new connection (the
//!   broker redelivers the old one, which is then acked as itself);
//! - per key, records reach the producer in receive order, including
//!   retries: when a delivery fails, that entry *and every later entry with
//!   the same key* are produced again, in order, after a capped backoff,
//!   and new entries with that key wait behind them. Later entries may so
//!   be written twice (duplicates are allowed; reordering is not);
//! - a delivery report of an older attempt is ignored.

use std::collections::VecDeque;

/// First retry delay; doubles per attempt up to [`RETRY_MAX_MS`].
pub const RETRY_FIRST_MS: u64 = 100;
/// Cap of the retry delay.
pub const RETRY_MAX_MS: u64 = 10_000;

/// What an entry's data counts towards [`InFlight`]'s byte bound.
pub trait Weigh {
    fn bytes(&self) -> usize;
}

impl Weigh for () {
    fn bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
impl Weigh for Vec<u8> {
    fn bytes(&self) -> usize {
        self.len()
    }
}

/// The packet to acknowledge: MQTT packet id and the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub pkid: u16,
    pub connection: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed to the producer as attempt `n`.
    Producing(u32),
    /// Waiting to be produced as attempt `n` at `due_ms`.
    Retry { attempt: u32, due_ms: u64 },
    /// Confirmed by Kafka (attempt `n`).
    Done(u32),
    /// Produces no record.
    NoRecord,
}

impl State {
    fn finished(self) -> bool {
        matches!(self, State::Done(_) | State::NoRecord)
    }
}

#[derive(Debug)]
struct Entry<T> {
    id: u64,
    key: String,
    ack: Option<AckToken>,
    state: State,
    data: T,
}

/// What [`InFlight::push`] wants done with a new entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Produce it now as attempt 0.
    ProduceNow(u64),
    /// Its key waits behind a retry; it is produced by [`InFlight::due`].
    Held(u64),
    /// Nothing to produce; it is acked in turn.
    NoRecord(u64),
}

/// The in-flight entries, oldest first. See the module docs.
#[derive(Debug)]
pub struct InFlight<T> {
    entries: VecDeque<Entry<T>>,
    capacity: usize,
    /// Sum of the entries' [`Weigh::bytes`], and its bound.
    bytes: usize,
    max_bytes: usize,
    next_id: u64,
    connection: u64,
    retrying: usize,
}

impl<T: Weigh> InFlight<T> {
    /// At most `capacity` entries (no byte bound: [`InFlight::max_bytes`]).
    pub fn new(capacity: usize) -> InFlight<T> {
        InFlight {
            entries: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes: usize::MAX,
            next_id: 0,
            connection: 0,
            retrying: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Also at most `max_bytes` of data once there is one entry (a single
    /// entry may be larger).
    pub fn max_bytes(mut self, max_bytes: usize) -> InFlight<T> {
        self.max_bytes = max_bytes;
        self
    }

    /// Whether another message may be read.
    pub fn has_room(&self) -> bool {
        self.entries.len() < self.capacity
            && (self.entries.is_empty() || self.bytes < self.max_bytes)
    }

    /// The data bytes in flight.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A new MQTT connection: earlier entries will not be acked.
    pub fn new_connection(&mut self) -> u64 {
        self.connection += 1;
        self.connection
    }

    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// Adds a message received on the current connection (`pkid` is `None`
    /// for QoS 0). `record` says whether it produces a Kafka record.
    pub fn push(&mut self, key: &str, pkid: Option<u16>, record: bool, data: T) -> Admit {
        let id = self.next_id;
        self.next_id += 1;
        let ack = pkid.map(|pkid| AckToken {
            pkid,
            connection: self.connection,
        });
        let (state, admit) = if !record {
            (State::NoRecord, Admit::NoRecord(id))
        } else if let Some(due_ms) = self.retry_due_of(key) {
            self.retrying += 1;
            (State::Retry { attempt: 0, due_ms }, Admit::Held(id))
        } else {
            (State::Producing(0), Admit::ProduceNow(id))
        };
        self.bytes = self.bytes.saturating_add(data.bytes());
        self.entries.push_back(Entry {
            id,
            key: key.to_string(),
            ack,
            state,
            data,
        });
        admit
    }

    fn retry_due_of(&self, key: &str) -> Option<u64> {
        if self.retrying == 0 {
            return None;
        }
        self.entries.iter().find_map(|e| match e.state {
            State::Retry { due_ms, .. } if e.key == key => Some(due_ms),
            _ => None,
        })
    }

    fn index(&self, id: u64) -> Option<usize> {
        let first = self.entries.front()?.id;
        let i = usize::try_from(id.checked_sub(first)?).ok()?;
        (i < self.entries.len()).then_some(i)
    }

    /// The key and data of entry `id`, if it is still in flight.
    pub fn get(&self, id: u64) -> Option<(&str, &T)> {
        self.index(id)
            .map(|i| (self.entries[i].key.as_str(), &self.entries[i].data))
    }

    /// Whether attempt `attempt` of entry `id` is the one to produce now
    /// (false once it was rescheduled, e.g. by [`InFlight::fail_all`]).
    pub fn is_producing(&self, id: u64, attempt: u32) -> bool {
        self.index(id)
            .is_some_and(|i| self.entries[i].state == State::Producing(attempt))
    }

    /// Kafka confirmed attempt `attempt` of entry `id`. Returns false for a
    /// report that no longer counts (older attempt, unknown id).
    pub fn delivered(&mut self, id: u64, attempt: u32) -> bool {
        match self.index(id) {
            Some(i) if self.entries[i].state == State::Producing(attempt) => {
                self.entries[i].state = State::Done(attempt);
                true
            }
            _ => false,
        }
    }

    /// Attempt `attempt` of entry `id` failed at `now_ms`: it and every later
    /// entry with its key are scheduled again. Returns false for a report
    /// that no longer counts.
    pub fn failed(&mut self, id: u64, attempt: u32, now_ms: u64) -> bool {
        let Some(i) = self.index(id) else {
            return false;
        };
        if self.entries[i].state != State::Producing(attempt) {
            return false;
        }
        let due_ms = now_ms.saturating_add(backoff_ms(attempt));
        let key = std::mem::take(&mut self.entries[i].key);
        for e in self.entries.iter_mut().skip(i) {
            if e.key == key || e.id == id {
                self.retrying += Self::reschedule(&mut e.state, due_ms);
            }
        }
        self.entries[i].key = key;
        true
    }

    /// The producer was replaced (a fatal error): every entry with a
    /// record is produced again at `due_ms`, in order (confirmed ones too,
    /// so that no key's order depends on what the old producer wrote).
    pub fn fail_all(&mut self, due_ms: u64) {
        for e in self.entries.iter_mut() {
            self.retrying += Self::reschedule(&mut e.state, due_ms);
        }
    }

    fn reschedule(state: &mut State, due_ms: u64) -> usize {
        match *state {
            // A confirmed later entry of the key is written again after the
            // retried one, so the key's last copies are in order (a
            // duplicate is fine, reordering is not).
            State::Producing(attempt) | State::Done(attempt) => {
                *state = State::Retry {
                    attempt: attempt + 1,
                    due_ms,
                };
                1
            }
            State::Retry { attempt, due_ms: d } => {
                *state = State::Retry {
                    attempt,
                    due_ms: d.max(due_ms),
                };
                0
            }
            State::NoRecord => 0,
        }
    }

    /// The earliest time a held entry is due, if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        if self.retrying == 0 {
            return None;
        }
        self.entries
            .iter()
            .filter_map(|e| match e.state {
                State::Retry { due_ms, .. } => Some(due_ms),
                _ => None,
            })
            .min()
    }

    /// Entries due at `now_ms`, in receive order, as (id, attempt); they
    /// count as being produced from now on. An entry stays held while an
    /// earlier entry with its key is still waiting.
    pub fn due(&mut self, now_ms: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        if self.retrying == 0 {
            return out;
        }
        let mut blocked: Vec<&str> = Vec::new();
        for e in self.entries.iter_mut() {
            if let State::Retry { attempt, due_ms } = e.state {
                if due_ms <= now_ms && !blocked.contains(&e.key.as_str()) {
                    e.state = State::Producing(attempt);
                    self.retrying -= 1;
                    out.push((e.id, attempt));
                } else {
                    blocked.push(e.key.as_str());
                }
            }
        }
        out
    }

    /// Removes finished entries from the front and returns the acks to
    /// send, in receive order (entries of older connections and QoS 0 ones
    /// leave without an ack).
    pub fn release(&mut self) -> Vec<AckToken> {
        let mut acks = Vec::new();
        while self.entries.front().is_some_and(|e| e.state.finished()) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes = self.bytes.saturating_sub(e.data.bytes());
                if let Some(ack) = e.ack.filter(|a| a.connection == self.connection) {
                    acks.push(ack);
                }
            }
        }
        acks
    }
}

/// Delay before attempt `attempt + 1`: 100 ms doubling, capped at 10 s.
pub fn backoff_ms(attempt: u32) -> u64 {
    RETRY_FIRST_MS
        .saturating_mul(1u64 << attempt.min(20))
        .min(RETRY_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(admit: Admit) -> u64 {
        match admit {
            Admit::ProduceNow(id) => id,
            other => panic!("expected ProduceNow, got {other:?}"),
        }
    }

    #[test]
    fn acks_are_released_in_receive_order_only() {
        let mut f = InFlight::new(10);
        let a = produce(f.push("k1", Some(1), true, ()));
        let b = produce(f.push("k2", Some(2), true, ()));
        assert!(f.delivered(b, 0));
        assert!(f.release().is_empty(), "b must wait for a");
        assert!(f.delivered(a, 0));
        let pkids: Vec<u16> = f.release().iter().map(|a| a.pkid).collect();
        assert_eq!(pkids, vec![1, 2]);
        assert!(f.is_empty());
    }

    #[test]
    fn the_byte_bound_stops_reading_until_something_is_released_but_one_entry_always_fits() {
        let mut f: InFlight<Vec<u8>> = InFlight::new(100).max_bytes(1000);
        assert!(f.has_room());
        let a = produce(f.push("k1", Some(1), true, vec![0; 5000]));
        assert!(!f.has_room(), "one entry over the bound is in; no second");
        assert!(f.delivered(a, 0));
        f.release();
        assert_eq!(f.bytes(), 0);
        let b = produce(f.push("k1", Some(2), true, vec![0; 600]));
        assert!(f.has_room(), "600 of 1000");
        let c = produce(f.push("k2", Some(3), true, vec![0; 600]));
        assert!(!f.has_room(), "1200 of 1000");
        assert!(f.delivered(b, 0) && f.delivered(c, 0));
        assert_eq!(f.release().len(), 2);
        assert!(f.has_room());
    }

    #[test]
    fn the_bound_stops_reading_until_something_is_released() {
        let mut f = InFlight::new(2);
        let a = produce(f.push("k", Some(1), true, ()));
        f.push("k", Some(2), true, ());
        assert!(!f.has_room());
        f.delivered(a, 0);
        assert!(!f.has_room(), "delivered but not yet released");
        f.release();
        assert!(f.has_room());
    }

    #[test]
    fn messages_without_a_record_are_acked_in_turn() {
        let mut f = InFlight::new(10);
        let a = produce(f.push("k", Some(1), true, ()));
        assert_eq!(f.push("k", Some(2), false, ()), Admit::NoRecord(1));
        assert!(f.release().is_empty());
        f.delivered(a, 0);
        assert_eq!(f.release().len(), 2);
    }

    #[test]
    fn entries_of_an_old_connection_leave_without_an_ack() {
        let mut f = InFlight::new(10);
        let a = produce(f.push("k", Some(7), true, ()));
        f.new_connection();
        let b = produce(f.push("k", Some(7), true, ()));
        f.delivered(a, 0);
        f.delivered(b, 0);
        let acks = f.release();
        assert_eq!(
            acks,
            vec![AckToken {
                pkid: 7,
                connection: 1
            }]
        );
    }

    #[test]
    fn qos0_messages_are_never_acked() {
        let mut f = InFlight::new(10);
        let a = produce(f.push("k", None, true, ()));
        f.delivered(a, 0);
        assert!(f.release().is_empty());
        assert!(f.is_empty());
    }

    #[test]
    fn a_failure_retries_it_and_later_entries_of_its_key_in_order() {
        let mut f = InFlight::new(10);
        let a = produce(f.push("x", Some(1), true, ()));
        let b = produce(f.push("y", Some(2), true, ()));
        let c = produce(f.push("x", Some(3), true, ()));
        // c reached Kafka before a failed: it must be written again after a.
        assert!(f.delivered(c, 0));
        assert!(f.failed(a, 0, 1000));
        assert_eq!(f.next_due_ms(), Some(1000 + RETRY_FIRST_MS));
        // A new x message waits behind the retry; a new z does not.
        assert_eq!(f.push("x", Some(4), true, ()), Admit::Held(3));
        assert_eq!(f.push("z", Some(5), true, ()), Admit::ProduceNow(4));
        assert!(f.due(1050).is_empty(), "not due yet");
        assert_eq!(f.due(1100), vec![(a, 1), (c, 1), (3, 0)]);
        // The stale report of a's first attempt no longer counts.
        assert!(!f.delivered(a, 0));
        assert!(f.delivered(a, 1));
        assert!(f.delivered(b, 0));
        assert!(f.release().len() == 2, "a and b released, c waits");
        assert!(f.delivered(c, 1));
        assert!(f.delivered(3, 0));
        assert!(f.delivered(4, 0));
        let pkids: Vec<u16> = f.release().iter().map(|t| t.pkid).collect();
        assert_eq!(pkids, vec![3, 4, 5]);
    }

    #[test]
    fn a_pending_later_entry_of_the_failed_key_is_produced_again_after_it() {
        let mut f = InFlight::new(10);
        let a = produce(f.push("x", Some(1), true, ()));
        let b = produce(f.push("x", Some(2), true, ()));
        assert!(f.failed(a, 0, 0));
        // b's first attempt may still land; its report is ignored.
        assert!(!f.delivered(b, 0));
        assert_eq!(f.due(RETRY_FIRST_MS), vec![(a, 1), (b, 1)]);
        assert!(f.failed(a, 1, 500));
        // b (attempt 1) is in flight; it is rescheduled behind a again.
        assert_eq!(f.due(500 + 2 * RETRY_FIRST_MS), vec![(a, 2), (b, 2)]);
    }

    #[test]
    fn fail_all_reschedules_everything_unconfirmed() {
        let mut f = InFlight::new(10);
        let a = produce(f.push("x", Some(1), true, ()));
        let b = produce(f.push("y", Some(2), true, ()));
        f.delivered(b, 0);
        f.push("z", Some(3), false, ());
        f.fail_all(42);
        assert_eq!(f.due(42), vec![(a, 1), (b, 1)]);
    }

    #[test]
    fn after_fail_all_the_old_attempts_are_neither_produced_nor_counted() {
        let mut f = InFlight::new(10);
        let a = produce(f.push("x", Some(1), true, ()));
        let b = produce(f.push("x", Some(2), true, ()));
        assert!(f.is_producing(a, 0));
        f.fail_all(100);
        assert!(
            !f.is_producing(a, 0),
            "rescheduled: not to be sent as attempt 0"
        );
        // The old producer's reports (delivered or failed) no longer count.
        assert!(!f.delivered(a, 0));
        assert!(!f.failed(b, 0, 50));
        assert!(
            f.release().is_empty(),
            "nothing acked before the new producer confirms"
        );
        assert_eq!(f.due(100), vec![(a, 1), (b, 1)]);
        assert!(f.is_producing(b, 1));
        assert!(f.delivered(a, 1) && f.delivered(b, 1));
        assert_eq!(f.release().len(), 2);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(0), 100);
        assert_eq!(backoff_ms(1), 200);
        assert_eq!(backoff_ms(3), 800);
        assert_eq!(backoff_ms(10), RETRY_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), RETRY_MAX_MS);
    }
}
