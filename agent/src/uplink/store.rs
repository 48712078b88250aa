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
    Mark(Vec<i64>),
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
            Request::Mark(ids) => write!(f, "Mark({} ids)", ids.len()),
        }
    }
}

impl StoreHandle {
    /// Queues `ids` to be marked published. The uplink hands them over in
    /// small batches: one message (and one wake-up of the store thread) per
    /// event cost more CPU than the rest of the uplink's work per event.
    pub fn mark(&self, ids: Vec<i64>) {
        let n = ids.len();
        if self.tx.send(Request::Mark(ids)).is_err() {
            warn!(
                "uplink store stopped; {n} acknowledged events stay unpublished and will be resent"
            );
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

fn serve(outbox: Outbox, rx: mpsc::Receiver<Request>, status: &Mutex<UplinkStatus>) {
    let mut marks = Marks {
        outbox,
        status,
        pending: Vec::new(),
        due: None,
        retry_after: None,
    };
    loop {
        let next = match marks.due {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
        };
        match next {
            Ok(Request::Mark(ids)) => {
                marks.pending.extend(ids);
                marks.due.get_or_insert_with(|| Instant::now() + MARK_DELAY);
                if marks.pending.len() >= MARK_BATCH {
                    marks.flush();
                }
            }
            Ok(Request::Fetch {
                after,
                limit,
                reply,
            }) => {
                // Marks first when they could be in the answer (a fetch
                // after a reconnect starts again from the first unpublished
                // event), so it does not return events the broker already
                // acknowledged. During a drain the cursor is past every
                // pending mark, and marks keep their own batches.
                if marks.pending.iter().any(|&id| id > after) {
                    marks.flush();
                }
                let rows = marks.outbox.fetch(after, limit).map_err(|e| e.to_string());
                let _ = reply.send(rows);
            }
            Err(RecvTimeoutError::Timeout) => marks.flush(),
            Err(RecvTimeoutError::Disconnected) => {
                marks.flush_at_shutdown();
                return;
            }
        }
    }
}

/// Acknowledged ids waiting for their batch.
struct Marks<'a> {
    outbox: Outbox,
    status: &'a Mutex<UplinkStatus>,
    pending: Vec<i64>,
    /// When the pending batch must commit.
    due: Option<Instant>,
    /// After a failed commit, no new attempt before this.
    retry_after: Option<Instant>,
}

impl Marks<'_> {
    /// Commits the pending ids in one transaction; after a failure the ids
    /// stay pending and the next attempt waits [`RETRY`].
    fn flush(&mut self) {
        let now = Instant::now();
        if self.pending.is_empty() || self.retry_after.is_some_and(|t| now < t) {
            return;
        }
        match self.outbox.mark_published(&self.pending) {
            Ok(()) => {
                debug!("marked {} events published", self.pending.len());
                self.pending.clear();
                self.due = None;
                self.retry_after = None;
            }
            Err(e) => {
                warn!(
                    "cannot mark {} events published: {e}; retrying in {RETRY:?}",
                    self.pending.len()
                );
                if let Ok(mut s) = self.status.lock() {
                    s.last_error = Some(format!("marking events published: {e}"));
                }
                self.retry_after = Some(now + RETRY);
                self.due = self.retry_after;
            }
        }
    }

    /// A few attempts, then the ids are left unpublished (sent again after
    /// the restart), and that is logged.
    fn flush_at_shutdown(&mut self) {
        for _ in 0..SHUTDOWN_ATTEMPTS {
            if self.pending.is_empty() {
                return;
            }
            if let Some(t) = self.retry_after {
                std::thread::sleep(t.saturating_duration_since(Instant::now()));
            }
            self.flush();
        }
        if !self.pending.is_empty() {
            warn!(
                "{} acknowledged events could not be marked published; they will be sent again after the restart",
                self.pending.len()
            );
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
        handle.mark(rows[..7].iter().map(|r| r.id).collect());
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
        handle.mark(vec![rows[0].id]);
        tokio::time::sleep(MARK_DELAY * 10).await;
        let left = Outbox::open(&path).unwrap().fetch(0, 100).unwrap();
        assert_eq!(left.len(), 2);
        drop(handle);
        join.await.unwrap();
    }
}
