//! Box status planning: which status records of a batch change a box row,
//! given the status messages each box row has already taken. Pure; no I/O;
//! tested without tokio.
//!
//! Why: status traffic is not shared between bridges, so with N bridges
//! every status message reaches `rae.box-status` N times, the copies of
//! different bridges interleaved. A lagging bridge's copy of an older
//! message (the birth) can land after a faster bridge's copy of a newer
//! one (the last will), and taking records as they come would show the
//! box online again until the lagging bridge's copy of the will arrives,
//! minutes later if that bridge is stalled or killed.
//!
//! Invariants:
//! - a status message is identified by a digest of its payload, which the
//!   bridges pass on untouched (every birth and will carries the time it
//!   was built, so two messages of one box do not share a payload);
//! - the first copy of a message to reach the partition is applied; a
//!   copy of a message the box row took before (stored digests, or earlier
//!   in the batch) is a repeat and changes nothing. The first copies come
//!   in publish order, because each bridge forwards its copies in order
//!   (one MQTT subscription, one partition), so a bridge's copy of a newer
//!   message always follows its copy of every older one;
//! - a box row remembers its last [`RECENT_MAX`] digests: a copy that
//!   lags by more status messages than that is taken as new (documented
//!   in docs/CLOUD.md).

use super::classify::{Classified, StatusMsg};
use super::plan::{Counts, Item};
use std::collections::{BTreeMap, HashMap};

/// How many status digests a box row keeps.
pub const RECENT_MAX: usize = 32;

/// The digests of the status messages a box row has taken, oldest first.
pub type Recent = Vec<u64>;

/// The net status of one box in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxUpdate {
    pub last: StatusMsg,
    pub last_birth_ms: Option<i64>,
    pub last_will_ms: Option<i64>,
    /// What the row remembers after this batch.
    pub recent: Recent,
}

/// FNV-1a (64 bits) of a status payload: stable across builds and
/// platforms, unlike `std`'s hasher, because it is stored.
pub fn digest(payload: &[u8]) -> u64 {
    payload.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The stored form of [`Recent`]: 8 bytes per digest, big-endian.
pub fn encode(recent: &[u64]) -> Vec<u8> {
    recent.iter().flat_map(|d| d.to_be_bytes()).collect()
}

/// [`encode`] reversed; a trailing partial digest is ignored.
pub fn decode(bytes: &[u8]) -> Recent {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_be_bytes(b)
        })
        .collect()
}

/// Boxes whose rows a batch needs loaded before [`plan_boxes`], sorted.
pub fn boxes_needed(items: &[Item]) -> Vec<String> {
    let mut ids: Vec<String> = items
        .iter()
        .filter_map(|i| match &i.classified {
            Classified::Status(s) => Some(s.rae_id.clone()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Folds the status records of `items` (offset order) into one update per
/// box, skipping repeats. `stored` holds the digests of the boxes in
/// [`boxes_needed`] (absent: no row, or none remembered). Counts applied
/// messages in `counts.status`, repeats in `counts.status_repeats`.
pub fn plan_boxes(
    items: &[Item],
    stored: &HashMap<String, Recent>,
    now_ms: u64,
    counts: &mut Counts,
) -> BTreeMap<String, BoxUpdate> {
    let mut out: BTreeMap<String, BoxUpdate> = BTreeMap::new();
    let mut recent: HashMap<&str, Recent> = HashMap::new();
    for item in items {
        let Classified::Status(msg) = &item.classified else {
            continue;
        };
        let seen = recent
            .entry(msg.rae_id.as_str())
            .or_insert_with(|| stored.get(&msg.rae_id).cloned().unwrap_or_default());
        if seen.contains(&msg.digest) {
            counts.status_repeats += 1;
            continue;
        }
        counts.status += 1;
        seen.push(msg.digest);
        if seen.len() > RECENT_MAX {
            seen.drain(..seen.len() - RECENT_MAX);
        }
        let (mut birth, mut will) = out
            .get(&msg.rae_id)
            .map(|b| (b.last_birth_ms, b.last_will_ms))
            .unwrap_or((None, None));
        let at = msg.ts_ms.or(Some(now_ms as i64));
        if msg.online {
            birth = at;
        } else {
            will = at;
        }
        out.insert(
            msg.rae_id.clone(),
            BoxUpdate {
                last: msg.clone(),
                last_birth_ms: birth,
                last_will_ms: will,
                recent: seen.clone(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(rae_id: &str, online: bool, ts_ms: i64) -> Item {
        let msg = StatusMsg {
            rae_id: rae_id.into(),
            online,
            agent_version: online.then(|| "1".into()),
            started_ms: Some(1),
            boot_count: Some(2),
            ts_ms: Some(ts_ms),
            digest: digest(format!("{rae_id}/{online}/{ts_ms}").as_bytes()),
        };
        Item {
            partition: 0,
            offset: 0,
            key: None,
            raw: vec![],
            classified: Classified::Status(msg),
        }
    }

    #[test]
    fn status_messages_fold_into_the_last_state_per_box() {
        let mut counts = Counts::default();
        let items = [status("b", true, 100), status("b", false, 90)];
        let boxes = plan_boxes(&items, &HashMap::new(), 0, &mut counts);
        let b = &boxes["b"];
        assert!(!b.last.online);
        assert_eq!(b.last_birth_ms, Some(100));
        assert_eq!(b.last_will_ms, Some(90));
        assert_eq!(b.recent.len(), 2);
        assert_eq!(counts.status, 2);
    }

    #[test]
    fn a_second_bridges_late_copy_of_the_birth_does_not_bring_the_box_back_online() {
        // Bridge A forwarded birth then will; bridge B, lagging, now
        // forwards its copy of the birth (its copy of the will follows).
        let (birth, will) = (status("b", true, 100), status("b", false, 200));
        let mut counts = Counts::default();
        let items = [birth.clone(), will.clone(), birth.clone(), will];
        let boxes = plan_boxes(&items, &HashMap::new(), 0, &mut counts);
        assert!(!boxes["b"].last.online);
        assert_eq!((counts.status, counts.status_repeats), (2, 2));
        // The same across batches: the row remembers what it took.
        let stored: HashMap<String, Recent> = [("b".to_string(), boxes["b"].recent.clone())].into();
        let mut counts = Counts::default();
        let again = plan_boxes(&[birth], &stored, 0, &mut counts);
        assert!(again.is_empty(), "a repeat writes nothing");
        assert_eq!((counts.status, counts.status_repeats), (0, 1));
    }

    #[test]
    fn a_new_birth_after_the_will_is_applied() {
        let stored: HashMap<String, Recent> = [(
            "b".to_string(),
            vec![digest(b"b/true/100"), digest(b"b/false/200")],
        )]
        .into();
        let mut counts = Counts::default();
        let boxes = plan_boxes(&[status("b", true, 300)], &stored, 0, &mut counts);
        assert!(boxes["b"].last.online);
        assert_eq!(boxes["b"].recent.len(), 3);
    }

    #[test]
    fn boxes_are_independent_and_only_the_last_digests_are_kept() {
        let items: Vec<Item> = (0..RECENT_MAX as i64 + 5)
            .map(|t| status("b", t % 2 == 0, t))
            .chain([status("c", true, 0)])
            .collect();
        let mut counts = Counts::default();
        let boxes = plan_boxes(&items, &HashMap::new(), 0, &mut counts);
        assert_eq!(boxes["b"].recent.len(), RECENT_MAX);
        assert_eq!(boxes["b"].recent.last(), Some(&digest(b"b/true/36")));
        assert!(boxes["c"].last.online, "c's ts 0 is not b's");
        assert_eq!(counts.status_repeats, 0);
    }

    #[test]
    fn stored_digests_round_trip_and_a_torn_tail_is_ignored() {
        let recent = vec![1, u64::MAX, 0x0102_0304_0506_0708];
        let mut bytes = encode(&recent);
        assert_eq!(decode(&bytes), recent);
        bytes.push(9);
        assert_eq!(decode(&bytes), recent);
        assert!(decode(&[]).is_empty());
    }

    #[test]
    fn the_digest_is_fnv1a_so_stored_rows_stay_valid_across_builds() {
        // Reference values of FNV-1a 64.
        assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
