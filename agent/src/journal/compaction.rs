//! Bounding the unpublished backlog: compact rather than drop.
//!
//! [`plan`] is a pure function over the unpublished events (journal order).
//! Policy, applied in order until the backlog fits `max_events` and
//! `max_bytes`:
//! 1. **Covered deltas go.** A `changed` (or older `checkpoint`) of a session
//!    with a later queued `checkpoint` is redundant: the checkpoint carries
//!    the full record.
//! 2. **Fold.** A session's queued `changed` events are folded into one
//!    synthetic `checkpoint` at the seq of its newest delta (that row is
//!    rewritten, the older deltas deleted). Oldest sessions first.
//! 3. **Drop, counted.** Only if still over the bound, the oldest `changed`
//!    events are dropped; every session that lost one is reported so a fresh
//!    checkpoint follows and the cloud, seeing the gap, recovers.
//!
//! `attached` and `detached` are never removed, so the final state of every
//! device survives. Consumers accept a checkpoint with `seq >= last` as the
//! new state, which is why a fold may jump over seqs.

use std::collections::{BTreeMap, BTreeSet};

/// One unpublished event, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub session: String,
    pub seq: u64,
    pub kind: String,
    pub bytes: u64,
}

/// The backlog bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_events: u64,
    pub max_bytes: u64,
}

/// A session's deltas folded into a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    pub session: String,
    /// The newest delta, rewritten as a checkpoint at its seq.
    pub into: i64,
    pub into_seq: u64,
    /// The older deltas, deleted.
    pub delete: Vec<i64>,
}

/// What to do to the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Deltas covered by a later queued checkpoint.
    pub covered: Vec<i64>,
    pub folds: Vec<Fold>,
    /// Deltas dropped because nothing else got the backlog under the bound.
    pub dropped: Vec<i64>,
    /// Sessions that lost deltas to dropping: they need a checkpoint.
    pub needs_checkpoint: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.covered.is_empty() && self.folds.is_empty() && self.dropped.is_empty()
    }
}

fn is_delta(kind: &str) -> bool {
    kind == "changed"
}

/// Plans the compaction of `entries` (unpublished, in journal order).
/// `foldable` says whether a session's state at a seq can be rebuilt (the
/// executor needs a base `attached`/`checkpoint` in the journal).
pub fn plan(entries: &[Entry], bounds: Bounds, foldable: impl Fn(&str) -> bool) -> Plan {
    let mut live: BTreeMap<i64, &Entry> = entries.iter().map(|e| (e.id, e)).collect();
    let over = |live: &BTreeMap<i64, &Entry>| {
        live.len() as u64 > bounds.max_events
            || live.values().map(|e| e.bytes).sum::<u64>() > bounds.max_bytes
    };
    let mut p = Plan::default();
    if !over(&live) {
        return p;
    }
    // 1. Covered by a later checkpoint of the same session.
    let mut newest_checkpoint: BTreeMap<&str, u64> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.kind == "checkpoint") {
        let c = newest_checkpoint.entry(e.session.as_str()).or_insert(0);
        *c = (*c).max(e.seq);
    }
    for e in entries {
        let covered = newest_checkpoint
            .get(e.session.as_str())
            .is_some_and(|c| e.seq < *c && (is_delta(&e.kind) || e.kind == "checkpoint"));
        if covered {
            p.covered.push(e.id);
            live.remove(&e.id);
        }
    }
    // 2. Fold each session's deltas, oldest session first.
    if over(&live) {
        let mut order: Vec<&str> = Vec::new();
        let mut deltas: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
        for e in live.values().filter(|e| is_delta(&e.kind)) {
            if !deltas.contains_key(e.session.as_str()) {
                order.push(e.session.as_str());
            }
            deltas.entry(e.session.as_str()).or_default().push(e);
        }
        for session in order {
            if !over(&live) {
                break;
            }
            let list = &deltas[session];
            let Some((newest, older)) = list.split_last() else {
                continue;
            };
            if older.is_empty() || !foldable(session) {
                continue;
            }
            for e in older {
                live.remove(&e.id);
            }
            p.folds.push(Fold {
                session: session.to_string(),
                into: newest.id,
                into_seq: newest.seq,
                delete: older.iter().map(|e| e.id).collect(),
            });
        }
    }
    // 3. Drop the oldest deltas, counted.
    let folded: BTreeSet<i64> = p.folds.iter().map(|f| f.into).collect();
    let mut sessions = BTreeSet::new();
    let candidates: Vec<(i64, String)> = live
        .values()
        .filter(|e| is_delta(&e.kind) && !folded.contains(&e.id))
        .map(|e| (e.id, e.session.clone()))
        .collect();
    for (id, session) in candidates {
        if !over(&live) {
            break;
        }
        live.remove(&id);
        p.dropped.push(id);
        sessions.insert(session);
    }
    p.needs_checkpoint = sessions.into_iter().collect();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: i64, session: &str, seq: u64, kind: &str) -> Entry {
        Entry {
            id,
            session: session.into(),
            seq,
            kind: kind.into(),
            bytes: 100,
        }
    }

    fn bounds(max_events: u64) -> Bounds {
        Bounds {
            max_events,
            max_bytes: u64::MAX,
        }
    }

    #[test]
    fn a_backlog_within_bounds_is_left_alone() {
        let entries = [e(1, "a", 1, "attached"), e(2, "a", 2, "changed")];
        assert!(plan(&entries, bounds(2), |_| true).is_empty());
    }

    #[test]
    fn deltas_covered_by_a_later_checkpoint_go_first() {
        let entries = [
            e(1, "a", 1, "attached"),
            e(2, "a", 2, "changed"),
            e(3, "a", 3, "changed"),
            e(4, "a", 4, "checkpoint"),
            e(5, "a", 5, "changed"),
        ];
        let p = plan(&entries, bounds(3), |_| true);
        assert_eq!(p.covered, vec![2, 3]);
        assert!(p.folds.is_empty() && p.dropped.is_empty());
    }

    #[test]
    fn otherwise_a_sessions_deltas_fold_into_a_checkpoint_at_the_newest_seq() {
        let entries = [
            e(1, "a", 1, "attached"),
            e(2, "a", 2, "changed"),
            e(3, "b", 1, "attached"),
            e(4, "a", 3, "changed"),
            e(5, "a", 4, "changed"),
            e(6, "a", 5, "detached"),
        ];
        let p = plan(&entries, bounds(4), |_| true);
        assert_eq!(
            p.folds,
            vec![Fold {
                session: "a".into(),
                into: 5,
                into_seq: 4,
                delete: vec![2, 4]
            }]
        );
        assert!(p.dropped.is_empty());
    }

    #[test]
    fn attached_and_detached_are_never_removed_and_drops_are_reported() {
        let entries = [
            e(1, "a", 1, "attached"),
            e(2, "a", 2, "changed"),
            e(3, "b", 1, "attached"),
            e(4, "b", 2, "changed"),
            e(5, "b", 3, "detached"),
        ];
        let p = plan(&entries, bounds(1), |_| true);
        assert_eq!(p.dropped, vec![2, 4]);
        assert_eq!(p.needs_checkpoint, vec!["a".to_string(), "b".to_string()]);
        let removed: BTreeSet<i64> = p.covered.iter().chain(&p.dropped).copied().collect();
        for kept in [1, 3, 5] {
            assert!(!removed.contains(&kept));
        }
    }

    #[test]
    fn a_session_that_cannot_be_rebuilt_is_not_folded() {
        let entries = [
            e(1, "a", 7, "changed"),
            e(2, "a", 8, "changed"),
            e(3, "a", 9, "changed"),
        ];
        let p = plan(&entries, bounds(2), |_| false);
        assert!(p.folds.is_empty());
        assert_eq!(p.dropped, vec![1]);
    }

    #[test]
    fn the_byte_bound_counts_too() {
        let entries = [
            e(1, "a", 1, "attached"),
            e(2, "a", 2, "changed"),
            e(3, "a", 3, "changed"),
        ];
        let b = Bounds {
            max_events: 100,
            max_bytes: 250,
        };
        let p = plan(&entries, b, |_| true);
        assert_eq!(p.folds.len(), 1);
    }
}
