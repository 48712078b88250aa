//! The sessions one pipeline has committed, as they stood after its last
//! committed batch that touched them. A batch plans against these without
//! loading them again; only sessions not known here are loaded (and locked,
//! `SELECT … FOR UPDATE`). Pure; no I/O.
//!
//! Why: the load was one round trip and a locking read of every session of
//! every batch, although a partition's sessions are written by its one
//! pipeline; with a thousand sessions per batch it was about a sixth of the
//! batch's statement time (docs/BENCHMARKS.md).
//!
//! Invariants:
//! - a state enters only after the transaction that read it under lock or
//!   wrote it has committed ([`Known::committed`]), and it is a copy of the
//!   row as that transaction left it;
//! - a known state is never trusted blindly: a batch that changes such a
//!   session writes it with a compare-and-set on every column a batch can
//!   change (`db::write`, `SESSIONS_CAS_SQL`). Another writer in between (a
//!   second consumer of the partition during a rebalance, a commit whose
//!   outcome was lost with the connection) makes the set miss; the batch
//!   then fails, the pipeline forgets everything ([`Known::forget`]) and
//!   plans the batch again from loaded rows. A known session whose records
//!   in the batch are all duplicates is not written; they are duplicates in
//!   the database too, which is at or past the known state;
//! - bounded: above [`KNOWN_MAX`] sessions only the last batch's are kept.

use super::plan::SessionState;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// Sessions a pipeline keeps at most (about 200 bytes each). Beyond this,
/// a batch mostly names sessions the previous ones did not, and loading
/// them is the cost anyway.
pub const KNOWN_MAX: usize = 10_000;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Known {
    states: HashMap<Uuid, SessionState>,
}

impl Known {
    /// The known states among `needed`, and the ids (in `needed`'s order,
    /// sorted by the caller) still to load.
    pub fn split(&self, needed: &[Uuid]) -> (HashMap<Uuid, SessionState>, Vec<Uuid>) {
        let mut states = HashMap::with_capacity(needed.len());
        let mut missing = Vec::new();
        for id in needed {
            match self.states.get(id) {
                Some(s) => {
                    states.insert(*id, s.clone());
                }
                None => missing.push(*id),
            }
        }
        (states, missing)
    }

    /// The state a batch planned `id` from, if it came from here (the
    /// expected value of its compare-and-set).
    pub fn get(&self, id: &Uuid) -> Option<&SessionState> {
        self.states.get(id)
    }

    /// After a COMMIT: the rows the batch loaded (under lock) and the
    /// states it wrote, which win.
    pub fn committed(
        &mut self,
        loaded: HashMap<Uuid, SessionState>,
        written: &BTreeMap<Uuid, SessionState>,
    ) {
        if self.states.len() + loaded.len() > KNOWN_MAX {
            self.states.clear();
        }
        self.states.extend(loaded);
        for (id, s) in written {
            self.states.insert(*id, s.clone());
        }
    }

    /// Forgets every state (a compare-and-set missed).
    pub fn forget(&mut self) {
        self.states.clear();
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(last_seq: u64) -> SessionState {
        SessionState {
            last_seq,
            ..SessionState::new("box".into(), "dev".into())
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn only_sessions_never_committed_here_are_loaded() {
        let mut known = Known::default();
        assert_eq!(known.split(&[id(1), id(2)]).1, vec![id(1), id(2)]);
        known.committed(HashMap::from([(id(1), state(4))]), &BTreeMap::new());
        let (states, missing) = known.split(&[id(1), id(2)]);
        assert_eq!(missing, vec![id(2)]);
        assert_eq!(states.get(&id(1)), Some(&state(4)));
    }

    #[test]
    fn the_written_state_wins_over_the_loaded_one() {
        let mut known = Known::default();
        known.committed(
            HashMap::from([(id(1), state(4))]),
            &BTreeMap::from([(id(1), state(9))]),
        );
        assert_eq!(known.get(&id(1)), Some(&state(9)));
    }

    #[test]
    fn a_missed_compare_and_set_forgets_everything() {
        let mut known = Known::default();
        known.committed(HashMap::new(), &BTreeMap::from([(id(1), state(2))]));
        known.forget();
        assert!(known.is_empty());
        assert_eq!(known.split(&[id(1)]).1, vec![id(1)]);
    }

    #[test]
    fn beyond_the_bound_only_the_last_batch_is_kept() {
        let mut known = Known::default();
        let many: BTreeMap<Uuid, SessionState> =
            (0..KNOWN_MAX as u128).map(|n| (id(n), state(1))).collect();
        known.committed(HashMap::new(), &many);
        assert_eq!(known.len(), KNOWN_MAX);
        let next = HashMap::from([(id(u128::MAX), state(3))]);
        known.committed(next, &BTreeMap::new());
        assert_eq!(known.len(), 1);
        assert_eq!(known.get(&id(u128::MAX)), Some(&state(3)));
    }
}
