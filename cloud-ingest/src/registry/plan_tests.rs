#![allow(clippy::unwrap_used)]

use super::super::classify::{classify, DeadKind, Source};
use super::*;
use proptest::prelude::*;
use rae_protocol::{Attrs, SCHEMA_VERSION};

const POLICY: Policy = Policy {
    resync_min_interval_ms: 60_000,
    history_max: 1000,
};

fn sid(n: u8) -> Uuid {
    Uuid::from_bytes([0x01, 0x90, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, n])
}

fn env(session: u8, seq: u64, kind: EventKind) -> Envelope {
    Envelope {
        schema: SCHEMA_VERSION,
        rae_id: "box1".into(),
        device_id: format!("dev{session}"),
        session_id: sid(session),
        seq,
        ts_ms: 1000 + seq,
        kind,
    }
}

fn attrs(pairs: &[(&str, i64)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), AttrValue::Int(*v)))
        .collect()
}

fn attached(session: u8, pairs: &[(&str, i64)]) -> Envelope {
    env(
        session,
        1,
        EventKind::Attached {
            attrs: attrs(pairs),
        },
    )
}

fn changed(session: u8, seq: u64, set: &[(&str, i64)], removed: &[&str]) -> Envelope {
    env(
        session,
        seq,
        EventKind::Changed {
            set: attrs(set),
            removed: removed.iter().map(|s| s.to_string()).collect(),
        },
    )
}

fn checkpoint(session: u8, seq: u64, pairs: &[(&str, i64)]) -> Envelope {
    env(
        session,
        seq,
        EventKind::Checkpoint {
            attrs: attrs(pairs),
        },
    )
}

fn item(offset: i64, e: &Envelope) -> Item {
    let raw = e.encode().unwrap();
    let key = e.topic().unwrap();
    Item {
        partition: 0,
        offset,
        key: Some(key.clone().into_bytes()),
        classified: classify(Source::Events, Some(key.as_bytes()), Some(&raw)),
        raw,
    }
}

fn items(envs: &[Envelope]) -> Vec<Item> {
    envs.iter()
        .enumerate()
        .map(|(i, e)| item(i as i64, e))
        .collect()
}

/// An in-memory database with the semantics of the SQL in `db::write`.
#[derive(Debug, Default, Clone, PartialEq)]
struct Model {
    sessions: HashMap<Uuid, SessionState>,
    attrs: BTreeMap<(Uuid, String), (AttrValue, u64)>,
    history: BTreeMap<(Uuid, u64), &'static str>,
}

impl Model {
    fn run(&mut self, batch: &[Item], now_ms: u64) -> Plan {
        let needed = sessions_needed(batch);
        let loaded = needed
            .iter()
            .filter_map(|s| self.sessions.get(s).map(|st| (*s, st.clone())))
            .collect();
        let plan = plan_batch(batch, &loaded, now_ms, &POLICY);
        for (sid, st) in &plan.sessions {
            self.sessions.insert(*sid, st.clone());
        }
        for (sid, delta) in &plan.attrs {
            if delta.replace {
                self.attrs.retain(|(s, _), _| s != sid);
            }
            for (name, change) in &delta.changes {
                match change {
                    Some(v) => self.attrs.insert((*sid, name.clone()), v.clone()),
                    None => self.attrs.remove(&(*sid, name.clone())),
                };
            }
        }
        let mut in_batch = std::collections::HashSet::new();
        for h in &plan.history {
            let key = (h.session_id, h.seq);
            let present = self.history.contains_key(&key) || !in_batch.insert(key);
            // db::write uses a plain INSERT unless the plan says otherwise.
            assert!(
                !present || plan.history_may_exist,
                "history row {key:?} is already stored, yet the plan allows a plain INSERT"
            );
            self.history.entry(key).or_insert(h.kind);
        }
        for (sid, keep_after) in plan.history_trims(&POLICY) {
            self.history
                .retain(|(s, q), _| !(*s == sid && *q <= keep_after));
        }
        plan
    }

    fn attrs_of(&self, session: u8) -> Vec<(String, i64)> {
        self.attrs
            .iter()
            .filter(|((s, _), _)| *s == sid(session))
            .map(|((_, n), (v, _))| match v {
                AttrValue::Int(i) => (n.clone(), *i),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }
}

#[test]
fn in_order_events_are_applied_and_recorded() {
    let mut m = Model::default();
    let plan = m.run(
        &items(&[
            attached(1, &[("a", 1), ("b", 2)]),
            changed(1, 2, &[("a", 5)], &["b"]),
        ]),
        0,
    );
    assert_eq!(plan.counts.applied, 2);
    assert_eq!(m.attrs_of(1), vec![("a".to_string(), 5)]);
    assert_eq!(m.sessions[&sid(1)].last_seq, 2);
    assert_eq!(m.sessions[&sid(1)].started_ms, Some(1001));
    assert_eq!(m.history.len(), 2);
    assert_eq!(plan.devices[&("box1".into(), "dev1".into())], sid(1));
}

#[test]
fn the_device_row_is_written_only_when_its_session_is_first_stored() {
    let mut m = Model::default();
    let first = m.run(&items(&[attached(1, &[("a", 1)])]), 0);
    assert_eq!(first.devices[&("box1".into(), "dev1".into())], sid(1));
    let later = m.run(&items(&[changed(1, 2, &[("a", 2)], &[])]), 0);
    assert_eq!(later.counts.applied, 1);
    assert!(later.devices.is_empty(), "{:?}", later.devices);
    // A session first seen through a gap is stored, with its device.
    let gap = m.run(&items(&[changed(2, 5, &[("a", 2)], &[])]), 0);
    assert_eq!(gap.devices[&("box1".into(), "dev2".into())], sid(2));
}

#[test]
fn a_redelivered_batch_writes_nothing() {
    let mut m = Model::default();
    let batch = items(&[attached(1, &[("a", 1)]), changed(1, 2, &[("a", 2)], &[])]);
    m.run(&batch, 0);
    let before = m.clone();
    let plan = m.run(&batch, 0);
    assert!(plan.writes_nothing(), "{plan:?}");
    assert_eq!(plan.counts.duplicates, 2);
    assert_eq!(m, before);
}

#[test]
fn a_gap_marks_the_session_stale_and_asks_for_one_resync() {
    let mut m = Model::default();
    m.run(&items(&[attached(1, &[("a", 1)])]), 0);
    let plan = m.run(
        &items(&[
            changed(1, 3, &[("a", 3)], &[]),
            changed(1, 4, &[("a", 4)], &[]),
        ]),
        10,
    );
    assert_eq!(plan.counts.gaps, 2);
    assert_eq!(
        plan.resyncs,
        vec![Resync {
            rae_id: "box1".into(),
            session_id: sid(1)
        }]
    );
    let s = &m.sessions[&sid(1)];
    assert!(s.stale);
    assert_eq!(s.last_seq, 1);
    assert_eq!(s.stale_gap, Some((2, 4)));
    assert_eq!(m.attrs_of(1), vec![("a".to_string(), 1)], "gap not applied");
    // Within the interval: no second resync; after it: one more.
    let plan = m.run(&items(&[changed(1, 5, &[], &[])]), 10 + 59_999);
    assert!(plan.resyncs.is_empty());
    let plan = m.run(&items(&[changed(1, 5, &[], &[])]), 10 + 60_000);
    assert_eq!(plan.resyncs.len(), 1);
}

#[test]
fn a_reorder_inside_one_batch_is_applied_in_seq_order_without_a_gap() {
    // Two bridges on one shared subscription: a session's envelopes reach
    // the partition as 3, 2, 5, 4 (another session's in between).
    let mut m = Model::default();
    m.run(&items(&[attached(1, &[("a", 1)])]), 0);
    let batch = items(&[
        changed(1, 3, &[("a", 3)], &[]),
        attached(2, &[("b", 1)]),
        changed(1, 2, &[("a", 2)], &[]),
        changed(1, 5, &[("a", 5)], &[]),
        changed(2, 2, &[("b", 2)], &[]),
        changed(1, 4, &[("a", 4)], &[]),
    ]);
    let plan = m.run(&batch, 0);
    assert_eq!(plan.counts.gaps, 0);
    assert!(plan.resyncs.is_empty());
    assert_eq!(plan.counts.applied, 6);
    assert_eq!(plan.counts.reordered, 4, "3,2,5,4 are taken as 2,3,4,5");
    let s = &m.sessions[&sid(1)];
    assert!(!s.stale);
    assert_eq!(s.last_seq, 5);
    assert_eq!(m.attrs_of(1), vec![("a".to_string(), 5)]);
    assert_eq!(m.attrs_of(2), vec![("b".to_string(), 2)]);
    // Each history row keeps the offset its envelope had.
    let offsets: Vec<(u64, i64)> = plan
        .history
        .iter()
        .filter(|h| h.session_id == sid(1))
        .map(|h| (h.seq, h.offset))
        .collect();
    assert_eq!(offsets, vec![(2, 2), (3, 0), (4, 5), (5, 3)]);
}

#[test]
fn a_reorder_across_batches_is_still_a_gap() {
    let mut m = Model::default();
    m.run(&items(&[attached(1, &[("a", 1)])]), 0);
    let plan = m.run(&items(&[changed(1, 3, &[("a", 3)], &[])]), 0);
    assert_eq!(plan.counts.gaps, 1);
    assert_eq!(plan.resyncs.len(), 1);
    m.run(&items(&[changed(1, 2, &[("a", 2)], &[])]), 0);
    let s = &m.sessions[&sid(1)];
    assert!(
        s.stale,
        "3 was not applied; only a checkpoint heals the session"
    );
    assert_eq!(m.attrs_of(1), vec![("a".to_string(), 2)]);
}

impl Model {
    /// Plans `batch` with [`plan_with_deferral`] and applies the covered
    /// prefix; returns the records left for the next batch.
    fn run_deferring(&mut self, batch: &[Item], carried: Option<usize>) -> (Plan, Vec<Item>) {
        let defer = carried.map(|carried| Deferral {
            carried,
            whole_batch: false,
        });
        self.run_with(batch, defer)
    }

    fn run_with(&mut self, batch: &[Item], defer: Option<Deferral>) -> (Plan, Vec<Item>) {
        let loaded = sessions_needed(batch)
            .iter()
            .filter_map(|s| self.sessions.get(s).map(|st| (*s, st.clone())))
            .collect();
        let (_, covered) = plan_with_deferral(batch, &loaded, 0, &POLICY, defer);
        let plan = self.run(&batch[..covered], 0);
        (plan, batch[covered..].to_vec())
    }
}

#[test]
fn a_gap_in_the_batch_tail_waits_for_the_next_batch_once() {
    // Two bridges: seq 3 ends this batch, seq 2 opens the next.
    let all = items(&[
        attached(1, &[("a", 1)]),
        changed(1, 3, &[("a", 3)], &[]),
        changed(1, 2, &[("a", 2)], &[]),
        changed(1, 4, &[("a", 4)], &[]),
    ]);
    let mut m = Model::default();
    let (plan, carry) = m.run_deferring(&all[..2], Some(0));
    assert_eq!(plan.counts.gaps, 0);
    assert_eq!(carry.len(), 1, "seq 3 waits");
    let mut next = carry;
    next.extend_from_slice(&all[2..]);
    let (plan, carry) = m.run_deferring(&next, Some(1));
    assert!(carry.is_empty());
    assert_eq!(plan.counts.gaps, 0);
    let s = &m.sessions[&sid(1)];
    assert!(!s.stale);
    assert_eq!(s.last_seq, 4);
}

#[test]
fn a_deferred_gap_that_persists_is_a_gap() {
    let mut m = Model::default();
    m.run(&items(&[attached(1, &[("a", 1)])]), 0);
    let batch = items(&[changed(1, 3, &[("a", 3)], &[])]);
    // Carried once already: it is applied as a gap.
    let (plan, carry) = m.run_deferring(&batch, Some(1));
    assert!(carry.is_empty());
    assert_eq!(plan.counts.gaps, 1);
    assert!(m.sessions[&sid(1)].stale);
}

#[test]
fn nothing_is_deferred_on_the_last_batch_or_when_nothing_would_be_applied() {
    let mut m = Model::default();
    m.run(&items(&[attached(1, &[("a", 1)])]), 0);
    let gap_first = items(&[changed(1, 3, &[], &[]), attached(2, &[("b", 1)])]);
    let (plan, carry) = m.clone().run_deferring(&gap_first, Some(0));
    assert!(carry.is_empty(), "a cut at 0 would apply nothing");
    assert_eq!(plan.counts.gaps, 1);
    let gap_last = items(&[attached(2, &[("b", 1)]), changed(1, 3, &[], &[])]);
    let (plan, carry) = m.run_deferring(&gap_last, None);
    assert!(carry.is_empty(), "the last batch applies everything");
    assert_eq!(plan.counts.gaps, 1);
}

#[test]
fn a_batch_closed_early_may_wait_whole_for_an_envelope_reordered_behind_its_first() {
    // Two bridges: seq 3 arrives alone and the batch closes at once
    // (caught up); seq 2 is on its way.
    let mut m = Model::default();
    m.run(&items(&[attached(1, &[("a", 1)])]), 0);
    let early = Deferral {
        carried: 0,
        whole_batch: true,
    };
    let three = items(&[changed(1, 3, &[("a", 3)], &[]), attached(2, &[("b", 1)])]);
    let (plan, carry) = m.run_with(&three, Some(early));
    assert!(plan.writes_nothing(), "{plan:?}");
    assert_eq!(carry.len(), 2, "the whole batch waits");
    // Next batch: the carried records (waited once) and seq 2.
    let mut next = carry;
    next.extend(items(&[changed(1, 2, &[("a", 2)], &[])]));
    let (plan, carry) = m.run_with(
        &next,
        Some(Deferral {
            carried: 2,
            whole_batch: false,
        }),
    );
    assert!(carry.is_empty());
    assert_eq!(plan.counts.gaps, 0);
    assert_eq!(plan.counts.reordered, 2);
    assert!(!m.sessions[&sid(1)].stale);
    assert_eq!(m.sessions[&sid(1)].last_seq, 3);
    // Waited once: carried again, the gap is a gap.
    let lost = items(&[changed(1, 5, &[], &[])]);
    let (plan, carry) = m.run_with(&lost, Some(early));
    assert_eq!((plan.counts.gaps, carry.len()), (0, 1));
    let (plan, carry) = m.run_with(
        &carry,
        Some(Deferral {
            carried: 1,
            whole_batch: true,
        }),
    );
    assert!(carry.is_empty());
    assert_eq!(plan.counts.gaps, 1);
}

#[test]
fn a_cut_never_splits_a_reorder_that_the_batch_holds_whole() {
    let mut m = Model::default();
    m.run(
        &items(&[attached(1, &[("a", 1)]), attached(2, &[("b", 1)])]),
        0,
    );
    // Session 1 arrives as 3, 2 around session 2's gap: cutting at that gap
    // would leave 2 behind 3, so nothing is cut.
    let batch = items(&[
        changed(1, 3, &[("a", 3)], &[]),
        changed(2, 5, &[("b", 5)], &[]),
        changed(1, 2, &[("a", 2)], &[]),
    ]);
    let (plan, carry) = m.clone().run_deferring(&batch, Some(0));
    assert!(carry.is_empty());
    assert_eq!(plan.counts.gaps, 1, "only session 2's own gap");
    // Session 1 in order before the gap: the cut is at the gap.
    let batch = items(&[
        changed(1, 2, &[("a", 2)], &[]),
        changed(2, 5, &[("b", 5)], &[]),
        changed(1, 3, &[("a", 3)], &[]),
    ]);
    let (plan, carry) = m.run_deferring(&batch, Some(0));
    assert_eq!(plan.counts.gaps, 0);
    assert_eq!(carry.len(), 2, "from session 2's gap on");
    assert_eq!(m.sessions[&sid(1)].last_seq, 2);
}

#[test]
fn an_in_order_batch_is_visited_in_offset_order() {
    let batch = items(&[
        attached(1, &[("a", 1)]),
        attached(2, &[("b", 1)]),
        changed(1, 2, &[("a", 2)], &[]),
    ]);
    assert_eq!(visit_order(&batch), vec![0, 1, 2]);
    assert_eq!(
        plan_batch(&batch, &HashMap::new(), 0, &POLICY)
            .counts
            .reordered,
        0
    );
}

#[test]
fn a_checkpoint_at_or_after_the_last_seq_replaces_attributes_and_clears_stale() {
    let mut m = Model::default();
    m.run(&items(&[attached(1, &[("a", 1), ("b", 1)])]), 0);
    m.run(&items(&[changed(1, 5, &[("a", 5)], &[])]), 0);
    assert!(m.sessions[&sid(1)].stale);
    let plan = m.run(&items(&[checkpoint(1, 5, &[("c", 9)])]), 0);
    assert_eq!(plan.counts.applied, 1);
    let s = &m.sessions[&sid(1)];
    assert!(!s.stale);
    assert_eq!(s.stale_gap, None);
    assert_eq!(s.last_seq, 5);
    assert_eq!(m.attrs_of(1), vec![("c".to_string(), 9)]);
    // Older checkpoint: duplicate.
    let plan = m.run(&items(&[checkpoint(1, 3, &[("z", 0)])]), 0);
    assert_eq!(plan.counts.duplicates, 1);
    assert_eq!(m.attrs_of(1), vec![("c".to_string(), 9)]);
}

#[test]
fn a_stale_sessions_checkpoint_at_its_last_seq_may_meet_its_own_history_row() {
    let mut m = Model::default();
    let first = m.run(&items(&[attached(1, &[("a", 1)])]), 0);
    assert!(!first.history_may_exist);
    m.run(&items(&[changed(1, 3, &[("a", 3)], &[])]), 0);
    assert!(m.sessions[&sid(1)].stale);
    // The checkpoint repeats seq 1, whose history row is stored.
    let plan = m.run(&items(&[checkpoint(1, 1, &[("a", 2)])]), 0);
    assert_eq!(plan.counts.applied, 1);
    assert!(plan.history_may_exist);
    assert!(!m.sessions[&sid(1)].stale);
    // In one batch: the delta at seq 2 and then a checkpoint at seq 2.
    m.run(&items(&[changed(1, 4, &[("a", 4)], &[])]), 0);
    let plan = m.run(
        &items(&[
            changed(1, 2, &[("a", 5)], &[]),
            checkpoint(1, 2, &[("a", 6)]),
        ]),
        0,
    );
    assert_eq!(plan.counts.applied, 2);
    assert!(plan.history_may_exist);
    // Ordinary deltas: every row is new.
    let plan = m.run(&items(&[changed(1, 3, &[("a", 7)], &[])]), 0);
    assert_eq!(plan.counts.applied, 1);
    assert!(!plan.history_may_exist);
}

#[test]
fn a_checkpoint_starts_an_unknown_session() {
    let mut m = Model::default();
    m.run(&items(&[checkpoint(2, 40, &[("x", 1)])]), 0);
    assert_eq!(m.sessions[&sid(2)].last_seq, 40);
    m.run(&items(&[changed(2, 41, &[("x", 2)], &[])]), 0);
    assert_eq!(m.attrs_of(2), vec![("x".to_string(), 2)]);
}

#[test]
fn an_unknown_session_starting_mid_stream_is_stale_from_seq_one() {
    let mut m = Model::default();
    let plan = m.run(&items(&[changed(3, 7, &[("x", 1)], &[])]), 0);
    assert_eq!(plan.resyncs.len(), 1);
    let s = &m.sessions[&sid(3)];
    assert!(s.stale);
    assert_eq!(s.last_seq, 0);
    assert_eq!(s.stale_gap, Some((1, 7)));
}

#[test]
fn detached_ends_the_session_and_keeps_its_last_attributes() {
    let mut m = Model::default();
    m.run(
        &items(&[
            attached(1, &[("a", 1)]),
            env(
                1,
                2,
                EventKind::Detached {
                    reason: "unplugged".into(),
                },
            ),
        ]),
        0,
    );
    let s = &m.sessions[&sid(1)];
    assert_eq!(s.ended_ms, Some(1002));
    assert_eq!(s.end_reason.as_deref(), Some("unplugged"));
    assert_eq!(m.attrs_of(1), vec![("a".to_string(), 1)]);
}

#[test]
fn dead_letters_and_skips_keep_their_batch_position() {
    let good = attached(1, &[("a", 1)]);
    let mut batch = vec![item(0, &good)];
    batch.push(Item {
        partition: 0,
        offset: 1,
        key: None,
        raw: b"garbage".to_vec(),
        classified: classify(
            Source::Events,
            Some(b"rae/v1/box1/devices/x"),
            Some(b"garbage"),
        ),
    });
    batch.push(Item {
        partition: 0,
        offset: 2,
        key: None,
        raw: vec![],
        classified: classify(Source::Events, None, Some(b"")),
    });
    let plan = plan_batch(&batch, &HashMap::new(), 0, &POLICY);
    assert_eq!(plan.counts.applied, 1);
    assert_eq!(plan.counts.dead, 1);
    assert_eq!(plan.counts.skipped, 1);
    assert_eq!(plan.dead[0].index, 1);
    assert_eq!(plan.dead[0].letter.kind, DeadKind::Decode);
}

#[test]
fn history_is_trimmed_to_the_bound() {
    let policy = Policy {
        resync_min_interval_ms: 1,
        history_max: 3,
    };
    let mut envs = vec![attached(1, &[("a", 0)])];
    envs.extend((2..=10).map(|s| changed(1, s, &[("a", s as i64)], &[])));
    let plan = plan_batch(&items(&envs), &HashMap::new(), 0, &policy);
    assert_eq!(plan.history_trims(&policy), vec![(sid(1), 7)]);
}

/// A session's stream: attached, then changes over a few keys, checkpoints
/// sprinkled in, as the agent would number them.
fn stream() -> impl Strategy<Value = Vec<Envelope>> {
    prop::collection::vec((0u8..4, 0i64..5, any::<bool>(), 0u8..8), 1..40).prop_map(|steps| {
        let mut out = vec![attached(1, &[("k0", 0)])];
        let mut current: BTreeMap<String, i64> = [("k0".to_string(), 0)].into();
        for (i, (key, val, remove, ck)) in steps.into_iter().enumerate() {
            let seq = i as u64 + 2;
            let name = format!("k{key}");
            if ck == 0 {
                let pairs: Vec<(&str, i64)> =
                    current.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                out.push(checkpoint(1, seq, &pairs));
            } else if remove {
                current.remove(&name);
                out.push(changed(1, seq, &[], &[&name]));
            } else {
                current.insert(name.clone(), val);
                out.push(changed(1, seq, &[(&name, val)], &[]));
            }
        }
        out
    })
}

proptest! {
    /// However a stream is cut into batches and however often prefixes are
    /// redelivered, the final state equals applying it once, in one batch.
    #[test]
    fn batching_and_redelivery_never_change_the_outcome(
        envs in stream(),
        cuts in prop::collection::vec(0usize..60, 0..6),
        replays in prop::collection::vec((0usize..60, 0usize..60), 0..4),
    ) {
        let all = items(&envs);
        let mut once = Model::default();
        once.run(&all, 0);

        let mut cut_points: Vec<usize> = cuts.into_iter().map(|c| c % (all.len() + 1)).collect();
        cut_points.push(0);
        cut_points.push(all.len());
        cut_points.sort();
        let mut ranges: Vec<(usize, usize)> = cut_points.windows(2).map(|w| (w[0], w[1])).collect();
        // Redeliveries: a range of the stream replayed after the batch that
        // delivered its end (Kafka redelivers, it never reorders).
        for (a, b) in replays {
            let (a, b) = (a % all.len(), b % all.len());
            let (lo, hi) = (a.min(b), a.max(b) + 1);
            let at = ranges.iter().position(|r| r.1 >= hi).map_or(ranges.len(), |j| j + 1);
            ranges.insert(at, (lo, hi));
        }
        let batches: Vec<Vec<Item>> = ranges.iter().map(|&(lo, hi)| all[lo..hi].to_vec()).collect();
        let mut many = Model::default();
        for b in &batches {
            many.run(b, 0);
        }
        prop_assert_eq!(&many.attrs, &once.attrs);
        prop_assert_eq!(&many.history, &once.history);
        prop_assert_eq!(&many.sessions, &once.sessions);
        prop_assert!(!once.sessions[&sid(1)].stale);
    }

    /// However a stream's envelopes are shuffled inside one batch, the
    /// outcome equals applying them in order: no gap, nothing stale.
    #[test]
    fn a_shuffle_inside_one_batch_never_changes_the_outcome(
        envs in stream(),
        keys in prop::collection::vec(any::<u32>(), 41),
    ) {
        let all = items(&envs);
        let mut once = Model::default();
        once.run(&all, 0);
        let mut shuffled = all.clone();
        let mut k = keys.into_iter();
        shuffled.sort_by_key(|_| k.next().unwrap_or(0));
        let mut m = Model::default();
        let plan = m.run(&shuffled, 0);
        prop_assert_eq!(plan.counts.gaps, 0);
        prop_assert_eq!(&m.attrs, &once.attrs);
        prop_assert_eq!(&m.history, &once.history);
        prop_assert_eq!(&m.sessions, &once.sessions);
    }

    /// Dropping events makes the session stale (unless a later checkpoint
    /// heals it) and never applies a delta across the gap.
    #[test]
    fn a_lost_event_is_never_applied_across(envs in stream(), lose in 1usize..40) {
        prop_assume!(lose < envs.len());
        let mut kept = envs.clone();
        let lost = kept.remove(lose);
        let mut m = Model::default();
        let plan = m.run(&items(&kept), 0);
        let s = &m.sessions[&sid(1)];
        let healed = kept[lose..]
            .iter()
            .any(|e| matches!(e.kind, EventKind::Checkpoint { .. }));
        if lose == kept.len() {
            prop_assert!(!s.stale);
        } else {
            prop_assert_eq!(s.stale, !healed);
            prop_assert!(plan.resyncs.len() <= 1);
            prop_assert!(!m.history.contains_key(&(sid(1), lost.seq)));
        }
    }
}
