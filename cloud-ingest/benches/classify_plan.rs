//! The registry's own CPU per event, without Kafka or a database: decoding
//! and classifying each record (`classify`), then planning each batch
//! (`plan_with_deferral`), over the same workload as the registry bench
//! (1000 sessions, an `attached` with 3 attributes then 99 `changed` of
//! one attribute each, interleaved across sessions; 4 partitions, batches
//! of 1000 records).
//!
//! Baseline, in the same run: a generic CBOR parse of the same payloads
//! into `ciborium::Value` (the floor for any decoder built on ciborium).
//! Prints the best of `RAE_BENCH_ROUNDS` (default 7) rounds per step;
//! asserts no timing.
//!
//! `cargo bench -p rae-cloud-ingest --bench classify_plan`

use rae_cloud_ingest::registry::classify::{classify, Source};
use rae_cloud_ingest::registry::plan::{plan_with_deferral, Deferral, Item, Policy, SessionState};
use rae_protocol::{AttrValue, Attrs, Envelope, EventKind, SCHEMA_VERSION};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

const SESSIONS: usize = 1000;
const PER_SESSION: u64 = 100;
const PARTITIONS: usize = 4;
const BATCH: usize = 1000;

const POLICY: Policy = Policy {
    resync_min_interval_ms: 60_000,
    history_max: 1000,
};

fn attrs(pairs: &[(&str, i64)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), AttrValue::Int(*v)))
        .collect()
}

/// (partition, key, payload) per record, in produce order.
fn records() -> Vec<(usize, String, Vec<u8>)> {
    let sessions: Vec<(String, String, uuid::Uuid)> = (0..SESSIONS)
        .map(|i| {
            (
                format!("box{}", i % 50),
                format!("dev{i}"),
                uuid::Uuid::now_v7(),
            )
        })
        .collect();
    let mut out = Vec::with_capacity(SESSIONS * PER_SESSION as usize);
    for seq in 1..=PER_SESSION {
        for (i, (rae_id, device_id, session_id)) in sessions.iter().enumerate() {
            let kind = if seq == 1 {
                EventKind::Attached {
                    attrs: attrs(&[("counter", 0), ("bus", 3), ("port", 7)]),
                }
            } else {
                EventKind::Changed {
                    set: attrs(&[("counter", seq as i64 - 1)]),
                    removed: Vec::new(),
                }
            };
            let env = Envelope {
                schema: SCHEMA_VERSION,
                rae_id: rae_id.clone(),
                device_id: device_id.clone(),
                session_id: *session_id,
                seq,
                ts_ms: 1_700_000_000_000 + seq,
                kind,
            };
            let (Ok(topic), Ok(payload)) = (env.topic(), env.encode()) else {
                panic!("the bench's envelopes encode");
            };
            out.push((i % PARTITIONS, topic, payload));
        }
    }
    out
}

/// Best (lowest) nanoseconds per record over `rounds` runs of `f`.
fn best_ns(rounds: usize, n: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let rounds: usize = std::env::var("RAE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let records = records();
    let n = records.len();
    let mut streams: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); PARTITIONS];
    for (p, key, payload) in &records {
        streams[*p].push((key.clone(), payload.clone()));
    }

    let generic = best_ns(rounds, n, || {
        for (_, _, payload) in &records {
            let v: Result<ciborium::Value, _> = ciborium::from_reader(payload.as_slice());
            black_box(v.is_ok());
        }
    });
    let classified = best_ns(rounds, n, || {
        for (_, key, payload) in &records {
            black_box(classify(
                Source::Events,
                Some(key.as_bytes()),
                Some(payload.as_slice()),
            ));
        }
    });
    // Items as a pipeline builds them (copies of key and payload plus the
    // classification), then one plan per batch against the state the
    // batches before it left, as the database would return it.
    let batches: Vec<Vec<Item>> = streams
        .iter()
        .enumerate()
        .flat_map(|(p, stream)| {
            let mut offset = 0i64;
            stream
                .chunks(BATCH)
                .map(|chunk| {
                    chunk
                        .iter()
                        .map(|(key, payload)| {
                            offset += 1;
                            Item {
                                partition: p as i32,
                                offset,
                                key: Some(key.as_bytes().to_vec()),
                                raw: payload.clone(),
                                classified: classify(
                                    Source::Events,
                                    Some(key.as_bytes()),
                                    Some(payload.as_slice()),
                                ),
                            }
                        })
                        .collect()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let planned = best_ns(rounds, n, || {
        let mut stored: HashMap<uuid::Uuid, SessionState> = HashMap::new();
        for items in &batches {
            let (plan, covered) =
                plan_with_deferral(items, &stored, 0, &POLICY, Some(Deferral::default()));
            assert_eq!(covered, items.len(), "the bench's batches are gapless");
            assert_eq!(plan.counts.applied as usize, items.len());
            stored.extend(plan.sessions);
        }
    });

    println!("registry CPU per event without Kafka or a database ({n} records, best of {rounds} rounds):");
    println!("  generic CBOR parse into ciborium::Value (baseline): {generic:>7.0} ns");
    println!(
        "  classify (decode + validate + key check):           {classified:>7.0} ns  = {:.2} x baseline",
        classified / generic
    );
    println!(
        "  plan (per event, batches of {BATCH}):                  {planned:>7.0} ns  = {:.2} x baseline",
        planned / generic
    );
}
