//! The registry's decisions for one batch: given the classified records of
//! one partition (in offset order) and the stored state of the sessions
//! they name, what to write, which resyncs to ask for and what to
//! dead-letter. Pure; no I/O; tested without tokio.
//!
//! Invariants (docs/PROTOCOL.md §4):
//! - idempotent by `(session_id, seq)`: a duplicate or old `seq` changes
//!   nothing, so planning a redelivered batch against the state it produced
//!   yields an empty write set;
//! - `seq == last + 1` is applied; a gap is never applied: the session is
//!   marked stale and at most one resync per `resync_min_interval_ms` is
//!   asked for (the time of the last one is stored with the session);
//! - within a batch, each session's envelopes are taken in `seq` order
//!   (ties in offset order), so a reorder that stays inside one batch (two
//!   bridges on one shared subscription) is undone, not a gap; every other
//!   record keeps its offset position ([`visit_order`]); a gap in a
//!   batch's tail may wait for the next batch, once
//!   ([`plan_with_deferral`]);
//! - a checkpoint with `seq >= last` (or for an unknown session) replaces
//!   the attributes, sets `last = seq` and clears `stale`;
//! - every applied envelope gets one history row; history beyond
//!   `history_max` rows per session is trimmed; a history row never has a
//!   seq above its session's `last_seq`, so only a checkpoint at the last
//!   seq can meet an existing row ([`Plan::history_may_exist`]).

use super::boxes::BoxUpdate;
use super::classify::{Classified, DeadLetter};
use rae_protocol::{check_seq, AttrValue, Envelope, EventKind, SeqVerdict};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// The stored state of one device session (`device_sessions` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub rae_id: String,
    pub device_id: String,
    /// Last applied seq; 0 when nothing was applied (a session first seen
    /// through a gap).
    pub last_seq: u64,
    pub stale: bool,
    /// The gap that made the session stale: (expected, got).
    pub stale_gap: Option<(u64, u64)>,
    pub last_resync_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub end_reason: Option<String>,
}

impl SessionState {
    /// A session of `device_id` on `rae_id` with nothing applied yet.
    pub fn new(rae_id: String, device_id: String) -> SessionState {
        SessionState {
            rae_id,
            device_id,
            last_seq: 0,
            stale: false,
            stale_gap: None,
            last_resync_ms: None,
            started_ms: None,
            ended_ms: None,
            end_reason: None,
        }
    }
}

/// Batch policy, from `[registry]`.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub resync_min_interval_ms: u64,
    pub history_max: u64,
}

/// One record of the batch: its position and what it is.
#[derive(Debug, Clone)]
pub struct Item {
    pub partition: i32,
    pub offset: i64,
    /// The record key (dead letters keep it).
    pub key: Option<Vec<u8>>,
    /// The raw value (history keeps the envelope bytes).
    pub raw: Vec<u8>,
    pub classified: Classified,
}

/// Attribute changes of one session, net of the whole batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttrDelta {
    /// Delete every stored attribute of the session first (full record).
    pub replace: bool,
    /// name → new value and the seq that set it, or `None` = removed.
    pub changes: BTreeMap<String, Option<(AttrValue, u64)>>,
}

/// One applied envelope for `device_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub session_id: Uuid,
    pub seq: u64,
    pub kind: &'static str,
    pub ts_ms: u64,
    pub partition: i32,
    pub offset: i64,
    /// Index of the record in the planned items: its raw value is the
    /// stored envelope (not copied into the plan).
    pub item: usize,
}

/// A resync to ask for (docs/PROTOCOL.md §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    pub rae_id: String,
    pub session_id: Uuid,
}

/// A record to dead-letter, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    pub index: usize,
    pub letter: DeadLetter,
}

/// Counts for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub applied: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub resyncs: u64,
    pub dead: u64,
    pub skipped: u64,
    /// Box status messages applied ([`super::boxes::plan_boxes`]).
    pub status: u64,
    /// Copies of status messages a box row had already taken (one per
    /// extra bridge), ignored.
    pub status_repeats: u64,
    /// Envelopes taken at another position than their offset's, to apply
    /// their session in `seq` order ([`visit_order`]).
    pub reordered: u64,
}

/// Everything one batch writes and sends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Final state of every session the batch changed.
    pub sessions: BTreeMap<Uuid, SessionState>,
    pub attrs: BTreeMap<Uuid, AttrDelta>,
    pub history: Vec<HistoryRow>,
    /// (rae_id, device_id) → newest session first stored by this batch.
    /// A session already in the database is not listed: its device row
    /// was written in the transaction that stored the session.
    pub devices: BTreeMap<(String, String), Uuid>,
    /// Box status, first copy of each message, last message per box wins
    /// (they share a partition). Filled by [`super::boxes::plan_boxes`]
    /// once the boxes' rows are loaded; [`plan_batch`] leaves it empty.
    pub boxes: BTreeMap<String, BoxUpdate>,
    pub resyncs: Vec<Resync>,
    pub dead: Vec<Dead>,
    pub counts: Counts,
    /// Whether a history row of this batch may already be stored: a stale
    /// session's checkpoint at its last applied seq. Otherwise every row
    /// is new (history rows never pass their session's `last_seq`, and the
    /// batch holds the session rows locked), so the rows can be written
    /// with a plain `INSERT` instead of `ON CONFLICT DO NOTHING`. A
    /// session with no stored row cannot be locked: a second consumer
    /// storing it at the same moment (a rebalance) makes the plain insert
    /// fail, and the worker retries with `ON CONFLICT` (`db::write`).
    pub history_may_exist: bool,
    /// Offset-order index of the first record that showed a gap, if any
    /// ([`plan_with_deferral`]).
    pub first_gap: Option<usize>,
}

impl Plan {
    /// Whether the batch writes nothing at all.
    pub fn writes_nothing(&self) -> bool {
        self.sessions.is_empty()
            && self.attrs.is_empty()
            && self.history.is_empty()
            && self.boxes.is_empty()
    }

    /// (session, keep rows with seq > this) for sessions whose history is
    /// over the bound.
    pub fn history_trims(&self, policy: &Policy) -> Vec<(Uuid, u64)> {
        let mut touched: BTreeMap<Uuid, ()> = BTreeMap::new();
        for h in &self.history {
            touched.insert(h.session_id, ());
        }
        touched
            .keys()
            .filter_map(|sid| {
                let last = self.sessions.get(sid)?.last_seq;
                (last > policy.history_max).then(|| (*sid, last - policy.history_max))
            })
            .collect()
    }
}

/// Session ids a batch needs loaded before [`plan_batch`].
pub fn sessions_needed(items: &[Item]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = items
        .iter()
        .filter_map(|i| match &i.classified {
            Classified::Event(e) => Some(e.session_id),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Plans one batch. `loaded` holds the stored state of the sessions in
/// [`sessions_needed`] (absent = unknown session).
pub fn plan_batch(
    items: &[Item],
    loaded: &HashMap<Uuid, SessionState>,
    now_ms: u64,
    policy: &Policy,
) -> Plan {
    let mut plan = Plan::default();
    // Each session's state as the batch goes; `touched` once the batch
    // changed it (it then goes into `plan.sessions`, at the end).
    let mut state: HashMap<Uuid, Slot> = HashMap::new();
    let order = visit_order(items);
    plan.counts.reordered = order
        .iter()
        .enumerate()
        .filter(|(at, index)| at != *index)
        .count() as u64;
    for index in order {
        let item = &items[index];
        match &item.classified {
            Classified::Skip => plan.counts.skipped += 1,
            Classified::Dead(letter) => {
                plan.counts.dead += 1;
                plan.dead.push(Dead {
                    index,
                    letter: letter.clone(),
                });
            }
            // Planned with the boxes' rows (`boxes::plan_boxes`).
            Classified::Status(_) => {}
            Classified::Event(env) => {
                let slot = state.entry(env.session_id).or_insert_with(|| Slot {
                    state: loaded.get(&env.session_id).cloned(),
                    touched: false,
                });
                let gaps = plan.counts.gaps;
                slot.touched |=
                    apply_event(&mut plan, &mut slot.state, env, index, item, now_ms, policy);
                if plan.counts.gaps > gaps {
                    plan.first_gap = Some(plan.first_gap.map_or(index, |g| g.min(index)));
                }
                if slot.touched && !loaded.contains_key(&env.session_id) {
                    note_device(&mut plan, env);
                }
            }
        }
    }
    plan.sessions = state
        .into_iter()
        .filter(|(_, slot)| slot.touched)
        .filter_map(|(id, slot)| Some((id, slot.state?)))
        .collect();
    plan
}

/// One session while [`plan_batch`] goes through a batch.
struct Slot {
    /// Its state (`None`: unknown, nothing stored or planned yet).
    state: Option<SessionState>,
    /// Whether the batch changed it (applied an envelope or saw a gap).
    touched: bool,
}

/// What [`plan_with_deferral`] may leave for the next batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deferral {
    /// The batch's first records that were deferred once already: a gap
    /// among them is a gap.
    pub carried: usize,
    /// Whether a gap at the batch's first record may make the whole batch
    /// wait (nothing applied): for a batch that closed early because it
    /// held every record its partition had, so its first record has not
    /// waited for a reordered one yet. A batch that waited
    /// `batch_max_wait_ms` gave its first record that time already.
    pub whole_batch: bool,
}

/// [`plan_batch`], except that a gap in the batch's tail may wait for the
/// next batch, once: returns the plan and how many of `items` (a prefix)
/// it covers; the caller applies that prefix, commits its offsets, and
/// feeds the rest into the next batch, first.
///
/// Why: two bridges can reorder a session across a batch boundary (the
/// later envelope ends this batch, the earlier one opens the next); inside
/// one batch [`visit_order`] already undoes it.
///
/// `defer` is `None` when no cut is allowed (the last batch before
/// shutdown), else a [`Deferral`]: the batch's first `carried` records
/// were deferred once already, and a gap among them is a gap, so every
/// record waits at most once and a lost envelope delays its gap by at most
/// one batch. The cut is at the first record that shows a gap, provided
/// something before it is applied (or the deferral allows the whole
/// batch to wait); if the prefix itself shows a gap (a session whose
/// earlier envelope lies beyond the cut), the cut moves to that one, and
/// when no gapless prefix qualifies, nothing is cut.
pub fn plan_with_deferral(
    items: &[Item],
    loaded: &HashMap<Uuid, SessionState>,
    now_ms: u64,
    policy: &Policy,
    defer: Option<Deferral>,
) -> (Plan, usize) {
    let full = plan_batch(items, loaded, now_ms, policy);
    let Some(Deferral {
        carried,
        whole_batch,
    }) = defer
    else {
        return (full, items.len());
    };
    let mut cut = full.first_gap;
    while let Some(n) = cut.filter(|&n| (n > 0 || whole_batch) && n >= carried) {
        if n == 0 {
            // Nothing before the gap: the whole batch waits.
            return (plan_batch(&[], loaded, now_ms, policy), 0);
        }
        let prefix = plan_batch(&items[..n], loaded, now_ms, policy);
        if prefix.first_gap.is_none() {
            return (prefix, n);
        }
        cut = prefix.first_gap;
    }
    (full, items.len())
}

/// The order in which [`plan_batch`] takes `items`: offset order, except
/// that the envelopes of each session are taken in `seq` order (stable, so
/// equal seqs keep their offset order) at the positions the session's
/// envelopes occupy. Sessions are independent, so this is the same as
/// applying each session's envelopes sorted by seq; a seq missing from the
/// batch is still a gap. Returns indices into `items`.
pub fn visit_order(items: &[Item]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Most batches are in order: find a session whose seq goes down first.
    let mut last: HashMap<Uuid, u64> = HashMap::new();
    let mut inverted = false;
    for item in items {
        if let Classified::Event(e) = &item.classified {
            let prev = last.insert(e.session_id, e.seq);
            inverted |= prev.is_some_and(|p| p > e.seq);
        }
    }
    if !inverted {
        return order;
    }
    let mut positions: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        if let Classified::Event(e) = &item.classified {
            positions.entry(e.session_id).or_default().push(i);
        }
    }
    let seq = |i: usize| match &items[i].classified {
        Classified::Event(e) => e.seq,
        _ => 0,
    };
    for at in positions.values() {
        let mut sorted = at.clone();
        sorted.sort_by_key(|&i| seq(i));
        for (slot, index) in at.iter().zip(sorted) {
            order[*slot] = index;
        }
    }
    order
}

fn new_session(env: &Envelope) -> SessionState {
    SessionState::new(env.rae_id.clone(), env.device_id.clone())
}

/// Applies one envelope to its session's `slot` and the plan; returns
/// whether the session changed.
fn apply_event(
    plan: &mut Plan,
    slot: &mut Option<SessionState>,
    env: &Envelope,
    index: usize,
    item: &Item,
    now_ms: u64,
    policy: &Policy,
) -> bool {
    let last = slot.as_ref().map(|s| s.last_seq).filter(|&l| l > 0);
    let is_checkpoint = matches!(env.kind, EventKind::Checkpoint { .. });
    let apply = if is_checkpoint {
        match slot {
            None => true,
            Some(s) => env.seq > s.last_seq || (env.seq == s.last_seq && s.stale),
        }
    } else {
        match check_seq(last, env.seq) {
            SeqVerdict::Next => true,
            SeqVerdict::Duplicate => false,
            SeqVerdict::Gap { expected, got } => {
                plan.counts.gaps += 1;
                let s = slot.get_or_insert_with(|| new_session(env));
                s.stale = true;
                s.stale_gap = Some((expected, got));
                let due = s
                    .last_resync_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= policy.resync_min_interval_ms);
                if due {
                    s.last_resync_ms = Some(now_ms);
                    plan.counts.resyncs += 1;
                    plan.resyncs.push(Resync {
                        rae_id: env.rae_id.clone(),
                        session_id: env.session_id,
                    });
                }
                return true;
            }
        }
    };
    if !apply {
        plan.counts.duplicates += 1;
        return false;
    }
    plan.counts.applied += 1;
    if slot.as_ref().is_some_and(|s| env.seq <= s.last_seq) {
        plan.history_may_exist = true;
    }
    let s = slot.get_or_insert_with(|| new_session(env));
    s.last_seq = env.seq;
    let delta = plan.attrs.entry(env.session_id).or_default();
    match &env.kind {
        EventKind::Attached { attrs } | EventKind::Checkpoint { attrs } => {
            if is_checkpoint {
                s.stale = false;
                s.stale_gap = None;
            } else {
                s.started_ms = Some(env.ts_ms);
            }
            delta.replace = true;
            delta.changes = attrs
                .iter()
                .map(|(k, v)| (k.clone(), Some((v.clone(), env.seq))))
                .collect();
        }
        EventKind::Changed { set, removed } => {
            for name in removed {
                delta.changes.insert(name.clone(), None);
            }
            for (k, v) in set {
                delta.changes.insert(k.clone(), Some((v.clone(), env.seq)));
            }
        }
        EventKind::Detached { reason } => {
            s.ended_ms = Some(env.ts_ms);
            s.end_reason = Some(reason.clone());
        }
    }
    plan.history.push(HistoryRow {
        session_id: env.session_id,
        seq: env.seq,
        kind: env.kind.name(),
        ts_ms: env.ts_ms,
        partition: item.partition,
        offset: item.offset,
        item: index,
    });
    true
}

fn note_device(plan: &mut Plan, env: &Envelope) {
    let entry = plan
        .devices
        .entry((env.rae_id.clone(), env.device_id.clone()))
        .or_insert(env.session_id);
    if env.session_id > *entry {
        *entry = env.session_id;
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
