//! Tests of the dispatcher: stash bounds, pause/resume, offset jumps, and
//! a pipeline that dies.

#![allow(clippy::unwrap_used)]
use super::*;

const MIB: usize = 1 << 20;

#[test]
fn one_partition_pauses_above_its_own_stash_limit() {
    assert!(!over_stash_limit(STASH_MAX_BYTES, STASH_MAX_BYTES));
    assert!(over_stash_limit(STASH_MAX_BYTES + 1, STASH_MAX_BYTES + 1));
}

#[test]
fn many_partitions_under_their_own_limit_pause_once_all_stashes_exceed_the_total() {
    // 8 partitions with 5 MiB each: none over 8 MiB, together 40 MiB.
    assert!(over_stash_limit(5 * MIB, 8 * 5 * MIB));
    assert!(!over_stash_limit(5 * MIB, 6 * 5 * MIB));
}

#[test]
fn a_partition_whose_records_all_went_to_its_channel_is_never_paused() {
    assert!(!over_stash_limit(0, usize::MAX));
}

#[test]
fn a_paused_partition_resumes_only_below_half_of_both_limits() {
    assert!(may_resume(STASH_MAX_BYTES / 2, STASH_TOTAL_MAX_BYTES / 2));
    assert!(!may_resume(STASH_MAX_BYTES / 2 + 1, 0));
    assert!(!may_resume(0, STASH_TOTAL_MAX_BYTES / 2 + 1));
}

fn record(offset: i64) -> Record {
    Record {
        partition: 0,
        offset,
        key: Some(b"key".to_vec()),
        payload: Some(vec![0; 100]),
    }
}

fn pipeline(capacity: usize) -> (Pipeline, mpsc::Receiver<Record>) {
    let (tx, rx) = mpsc::channel(capacity);
    let (stop, _) = watch::channel(Stop::Running);
    let p = Pipeline {
        tx,
        channel_bytes: ChannelBytes::default(),
        stop,
        stash: VecDeque::new(),
        stash_bytes: 0,
        paused: false,
        next_offset: None,
    };
    (p, rx)
}

fn push(p: &mut Pipeline, m: Record) -> bool {
    p.stash_bytes += m.bytes();
    p.stash.push_back(m);
    p.flush()
}

#[test]
fn an_offset_beyond_the_next_expected_one_is_a_jump_and_a_refetch_is_not() {
    assert_eq!(offset_jump(None, 57), None, "first record of an assignment");
    assert_eq!(offset_jump(Some(57), 57), None);
    assert_eq!(offset_jump(Some(50), 100), Some((50, 100)));
    assert_eq!(offset_jump(Some(57), 40), None, "a refetch from earlier");
}

fn big_record(offset: i64, bytes: usize) -> Record {
    Record {
        partition: 0,
        offset,
        key: None,
        payload: Some(vec![0; bytes]),
    }
}

#[test]
fn the_channel_holds_at_most_a_mebibyte_of_large_records_and_always_one() {
    let (mut p, mut rx) = pipeline(CHANNEL_RECORDS);
    for offset in 0..10 {
        assert!(push(&mut p, big_record(offset, 300_000)));
    }
    // 3 × 300 kB fit in 1 MiB, a fourth would not: 7 wait in the stash.
    assert_eq!(p.channel_bytes.get(), 900_000);
    assert_eq!(p.stash.len(), 7);
    // The worker receives one: room for one more.
    let m = rx.try_recv().unwrap();
    p.channel_bytes.received(&m);
    assert!(p.flush());
    assert_eq!(p.stash.len(), 6);
    assert_eq!(p.channel_bytes.get(), 900_000);
    // A record larger than the bound still goes through alone.
    let (mut q, mut rx) = pipeline(CHANNEL_RECORDS);
    assert!(push(&mut q, big_record(0, 3 << 20)));
    assert!(push(&mut q, big_record(1, 10)));
    assert_eq!(q.stash.len(), 1);
    let m = rx.try_recv().unwrap();
    q.channel_bytes.received(&m);
    assert!(q.flush());
    assert!(q.stash.is_empty());
    assert_eq!(q.channel_bytes.get(), 10);
}

#[test]
fn records_beyond_a_full_channel_wait_in_the_stash_and_leave_it_in_offset_order() {
    let (mut p, mut rx) = pipeline(2);
    for offset in 0..5 {
        assert!(push(&mut p, record(offset)));
    }
    assert_eq!(p.stash.len(), 3);
    assert_eq!(p.stash_bytes, 3 * 103);
    let mut seen = Vec::new();
    while let Ok(m) = rx.try_recv() {
        seen.push(m.offset);
        assert!(p.flush());
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    assert!(p.stash.is_empty());
    assert_eq!(p.stash_bytes, 0);
}

#[test]
fn a_closed_channel_keeps_the_stash_and_reports_the_worker_gone() {
    let (mut p, rx) = pipeline(1);
    drop(rx);
    assert!(!push(&mut p, record(7)));
    assert_eq!(p.stash.len(), 1);
    assert_eq!(p.stash_bytes, 103);
}

fn dispatcher() -> Dispatcher {
    // No broker listens there; nothing in this test reaches Kafka.
    let settings = crate::config::parse(
        "[kafka]\nbrokers = \"127.0.0.1:1\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let metrics = RegistryMetrics::new(&crate::metrics::Metrics::new());
    Dispatcher::build(&settings, metrics).unwrap()
}

#[tokio::test]
async fn a_partition_whose_pipeline_panicked_gets_no_new_pipeline_and_the_registry_stops() {
    let mut d = dispatcher();
    let tp: Tp = ("rae.device-events".to_string(), 0);
    let (p, rx) = pipeline(8);
    d.workers.spawn(async move {
        let _rx = rx;
        panic!("a bug in a pipeline");
    });
    d.pipelines.insert(tp.clone(), p);
    while !d.pipelines[&tp].tx.is_closed() {
        tokio::task::yield_now().await;
    }
    d.dispatch(tp.clone(), record(0));
    d.dispatch(tp.clone(), record(1));
    // No new pipeline took the records (it would commit past the
    // panicked one's lost batch): they wait with the dead one.
    assert_eq!(d.pipelines[&tp].stash.len(), 2);
    assert_eq!(d.workers.len(), 1, "no pipeline was started");
    let reason = d
        .failure()
        .await
        .expect("a dead pipeline stops the registry");
    assert!(reason.contains("a bug in a pipeline"), "{reason}");
}
