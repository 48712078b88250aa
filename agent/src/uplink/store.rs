//! The uplink's one SQLite thread: owns the [`Outbox`] connection, answers
//! fetches, and marks acknowledged events published in batches.
//!
//! Invariants:
//! - SQLite is only touched here, on one dedicated blocking thread, so the
//!   MQTT event loop never waits on it (and one thread means one malloc
//!   arena and no thread-pool churn during long drains).
//! - An id sent to [`StoreHandle::mark`] is always marked: batched for at
//!   most [`MARK_DELAY`] or [`MARK_BATCH`] ids, retried on failure, and
//!   flushed when the uplink stops. A mark that still fails at shutdown only
//!   means the event is sent again after the restart (a duplicate, never a
//!   loss), and that is logged.

use crate::journal::outbox::{Outbox, OutboxRow};
use crate::status::UplinkStatus;
use log::{debug, warn};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Acknowledged ids wait at most this long before their batch commits.
pub const MARK_DELAY: Duration = Duration::from_millis(20);
/// A batch commits at once when it reaches this many ids.
pub const MARK_BATCH: usize = 2048;
const RETRY: Duration = Duration::from_millis(500);
const SHUTDOWN_ATTEMPTS: u32 = 3;

/// The result of a fetch.
pub type Fetched = Result<Vec<OutboxRow>, String>;

enum Request {
    Fetch {
        after: i64,
        limit: usize,
        reply: oneshot::Sender<Fetched>,
    },
    Mark(i64),
}

/// The uplink's side of the store thread; dropping every handle stops it.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Fetch { after, limit, .. } => write!(f, "Fetch({after}, {limit})"),
            Request::Mark(id) => write!(f, "Mark({id})"),
        }
    }
}

impl StoreHandle {
    /// Queues `id` to be marked published.
    pub fn mark(&self, id: i64) {
        if self.tx.send(Request::Mark(id)).is_err() {
            warn!("uplink store stopped; event {id} stays unpublished and will be resent");
        }
    }

    /// Up to `limit` unpublished events after `after`, in journal order.
    pub fn fetch(&self, after: i64, limit: usize) -> oneshot::Receiver<Fetched> {
        let (reply, rx) = oneshot::channel();
        // If the thread is gone, `reply` is dropped and the receiver errors.
        let _ = self.tx.send(Request::Fetch {
            after,
            limit,
            reply,
        });
        rx
    }
}

/// Starts the store thread on the blocking pool.
pub fn spawn(
    outbox: Outbox,
    status: Arc<Mutex<UplinkStatus>>,
) -> (StoreHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let join = tokio::task::spawn_blocking(move || serve(outbox, rx, &status));
    (StoreHandle { tx }, join)
}

fn serve(mut outbox: Outbox, rx: mpsc::Receiver<Request>, status: &Mutex<UplinkStatus>) {
    let mut pending: Vec<i64> = Vec::new();
    let mut oldest: Option<Instant> = None;
    loop {
        let next = match oldest {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout(MARK_DELAY.saturating_sub(t.elapsed())),
        };
        match next {
            Ok(Request::Mark(id)) => {
                pending.push(id);
                oldest.get_or_insert_with(Instant::now);
                if pending.len() >= MARK_BATCH {
                    flush(&mut outbox, &mut pending, status, None);
                    oldest = None;
                }
            }
            Ok(Request::Fetch {
                after,
                limit,
                reply,
            }) => {
                let _ = reply.send(outbox.fetch(after, limit).map_err(|e| e.to_string()));
            }
            Err(RecvTimeoutError::Timeout) => {
                flush(&mut outbox, &mut pending, status, None);
                oldest = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                flush(&mut outbox, &mut pending, status, Some(SHUTDOWN_ATTEMPTS));
                return;
            }
        }
    }
}

/// Marks `pending` published in one transaction, retrying until it works
/// (or, at shutdown, `attempts` times).
fn flush(
    outbox: &mut Outbox,
    pending: &mut Vec<i64>,
    status: &Mutex<UplinkStatus>,
    attempts: Option<u32>,
) {
    if pending.is_empty() {
        return;
    }
    let mut tried = 0;
    loop {
        match outbox.mark_published(pending) {
            Ok(()) => {
                debug!("marked {} events published", pending.len());
                pending.clear();
                return;
            }
            Err(e) => {
                tried += 1;
                let msg = format!("cannot mark {} events published: {e}", pending.len());
                if let Ok(mut s) = status.lock() {
                    s.last_error = Some(format!("marking events published: {e}"));
                }
                if attempts.is_some_and(|n| tried >= n) {
                    warn!("{msg}; giving up at shutdown: they will be sent again after the restart");
                    pending.clear();
                    return;
                }
                warn!("{msg}; retrying in {RETRY:?}");
                std::thread::sleep(RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, JournalOptions};

    fn journal_with_events(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
        let path = dir.join("journal.db");
        let opts = JournalOptions {
            synchronous: crate::config::Synchronous::Normal,
            rae_id: "rae-test".into(),
            agent_version: "0.0.0".into(),
        };
        drop(Journal::open(&path, &opts).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        for seq in 1..=n {
            conn.execute(
                "INSERT INTO events (session_id, device_id, seq, ts_ms, kind, payload)
                 VALUES ('s1', 'd1', ?1, 0, 'changed', x'00')",
                [seq as i64],
            )
            .unwrap();
        }
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn every_marked_id_is_published_when_the_handle_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_with_events(dir.path(), 10);
        let status = Arc::new(Mutex::new(UplinkStatus::default()));
        let (handle, join) = spawn(Outbox::open(&path).unwrap(), status);
        let rows = handle.fetch(0, 100).await.unwrap().unwrap();
        assert_eq!(rows.len(), 10);
        for r in &rows[..7] {
            handle.mark(r.id);
        }
        drop(handle);
        join.await.unwrap();
        let left = Outbox::open(&path).unwrap().fetch(0, 100).unwrap();
        let left: Vec<i64> = left.iter().map(|r| r.id).collect();
        assert_eq!(left, rows[7..].iter().map(|r| r.id).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn marks_commit_within_the_delay_while_the_handle_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_with_events(dir.path(), 3);
        let status = Arc::new(Mutex::new(UplinkStatus::default()));
        let (handle, join) = spawn(Outbox::open(&path).unwrap(), status);
        let rows = handle.fetch(0, 100).await.unwrap().unwrap();
        handle.mark(rows[0].id);
        tokio::time::sleep(MARK_DELAY * 10).await;
        let left = Outbox::open(&path).unwrap().fetch(0, 100).unwrap();
        assert_eq!(left.len(), 2);
        drop(handle);
        join.await.unwrap();
    }
}
