//! Task liveness for the systemd watchdog. Each supervised long-running
//! task is wrapped in [`Watched`], which records a beat every time the
//! task's future returns from `poll` and, through its own timer, polls it at
//! least every `tick` even when the task is idle (a spurious poll, which the
//! `Future` contract allows). A task whose thread is stuck inside its poll
//! (a blocking call that never returns, a lock held forever, a busy loop)
//! stops beating. The main loop sends `WATCHDOG=1` only while every beat is
//! younger than the stall limit ([`stalled`]), so systemd restarts a wedged
//! agent; it never restarts an idle one.
//!
//! The udev probe runs on a thread of its own with a current-thread runtime;
//! its future is wrapped inside that runtime, so it beats like the others.
//!
//! Not covered: a task that awaits something that never happens while its
//! thread is free (its beats go on).
//!
//! Test-only hook: when `$RAE_TEST_WEDGE_REGISTRY_WHEN` names a path, the
//! registry task's wrapper blocks its thread for good as soon as that path
//! exists (checked on each poll) — what a task stuck in a blocking call
//! looks like. It blocks through `block_in_place`, so the runtime's timers
//! and the main loop keep running and the test sees the liveness check (not
//! a frozen runtime) stop the keep-alives. (A wedge that freezes the whole
//! runtime stops them too: the main loop then never runs.)
//! The hook is read only while a watchdog is configured, and the agent logs
//! a warning at startup when it is set. Used by `tests/tests/systemd_notify.rs`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// The test-only hook's environment variable (see the module docs).
pub const WEDGE_REGISTRY_ENV: &str = "RAE_TEST_WEDGE_REGISTRY_WHEN";

/// The beats of every supervised task, against one start instant.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    tick: Duration,
    beats: Mutex<Vec<Arc<Beat>>>,
}

/// One task's last beat, in ms since [`Liveness`] started.
#[derive(Debug)]
pub struct Beat {
    name: &'static str,
    last_ms: AtomicU64,
}

impl Liveness {
    /// Supervised tasks are polled at least every `tick`.
    pub fn new(tick: Duration) -> Arc<Self> {
        Arc::new(Liveness {
            start: Instant::now(),
            tick,
            beats: Mutex::new(Vec::new()),
        })
    }

    /// The wrapper's tick for a watchdog `timeout`: a quarter of it, at most
    /// 5 s and at least 10 ms.
    pub fn tick_for(timeout: Duration) -> Duration {
        (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Wraps `task` as the supervised task `name`.
    pub fn watch<F: Future>(self: &Arc<Self>, name: &'static str, task: F) -> Watched<F> {
        let beat = Arc::new(Beat {
            name,
            last_ms: AtomicU64::new(self.elapsed_ms()),
        });
        if let Ok(mut beats) = self.beats.lock() {
            beats.push(beat.clone());
        }
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Watched {
            inner: Box::pin(task),
            liveness: self.clone(),
            beat,
            tick,
            wedge_when: None,
        }
    }

    /// Each task's name and the time since its last beat.
    pub fn ages(&self) -> Vec<(&'static str, Duration)> {
        let now = self.elapsed_ms();
        self.beats.lock().map_or_else(
            |_| Vec::new(),
            |beats| {
                beats
                    .iter()
                    .map(|b| {
                        let age = now.saturating_sub(b.last_ms.load(Ordering::Relaxed));
                        (b.name, Duration::from_millis(age))
                    })
                    .collect()
            },
        )
    }
}

/// The tasks whose last beat is older than `limit`, oldest first. Empty
/// means healthy: the watchdog may be petted.
pub fn stalled(
    ages: &[(&'static str, Duration)],
    limit: Duration,
) -> Vec<(&'static str, Duration)> {
    let mut out: Vec<_> = ages.iter().copied().filter(|(_, a)| *a > limit).collect();
    out.sort_by_key(|s| std::cmp::Reverse(s.1));
    out
}

/// A one-line description of [`stalled`] tasks for logs and `STATUS=`.
pub fn describe(stalled: &[(&'static str, Duration)]) -> String {
    let parts: Vec<String> = stalled
        .iter()
        .map(|(name, age)| format!("{name} task stalled for {:.1} s", age.as_secs_f64()))
        .collect();
    parts.join(", ")
}

/// A supervised task: see the module docs.
#[derive(Debug)]
pub struct Watched<F> {
    inner: Pin<Box<F>>,
    liveness: Arc<Liveness>,
    beat: Arc<Beat>,
    tick: Interval,
    wedge_when: Option<PathBuf>,
}

impl<F> Watched<F> {
    /// Arms the test-only wedge hook (see the module docs).
    pub fn wedge_when(mut self, path: Option<PathBuf>) -> Self {
        self.wedge_when = path;
        self
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Every field is Unpin (the task itself is boxed).
        let this = self.get_mut();
        // Keep our timer registered so we are polled at least every tick.
        while this.tick.poll_tick(cx).is_ready() {}
        if this.wedge_when.as_ref().is_some_and(|p| p.exists()) {
            log::warn!(
                "test hook {WEDGE_REGISTRY_ENV}: the {} task blocks its thread now",
                this.beat.name
            );
            let block = || loop {
                std::thread::sleep(Duration::from_secs(3600));
            };
            // Like a real blocking call on a multi-thread runtime, after
            // block_in_place handed the worker's other duties (timers, I/O)
            // to another thread: only this task hangs, the main loop runs.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(block)
                }
                _ => block(),
            }
        }
        let out = this.inner.as_mut().poll(cx);
        this.beat
            .last_ms
            .store(this.liveness.elapsed_ms(), Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn only_tasks_older_than_the_limit_are_stalled_oldest_first() {
        let ages = [("registry", S(20)), ("uplink", S(1)), ("adb", S(31))];
        assert_eq!(
            stalled(&ages, S(15)),
            vec![("adb", S(31)), ("registry", S(20))]
        );
        assert!(stalled(&ages, S(60)).is_empty());
        assert!(stalled(&[], S(1)).is_empty());
        assert_eq!(
            describe(&stalled(&ages, S(15))),
            "adb task stalled for 31.0 s, registry task stalled for 20.0 s"
        );
    }

    #[test]
    fn the_tick_is_a_quarter_of_the_timeout_within_bounds() {
        assert_eq!(Liveness::tick_for(S(2)), Duration::from_millis(500));
        assert_eq!(Liveness::tick_for(S(30)), S(5));
        assert_eq!(
            Liveness::tick_for(Duration::from_millis(1)),
            Duration::from_millis(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_task_keeps_beating_through_the_wrapper_tick() {
        let liveness = Liveness::new(S(1));
        let idle = tokio::spawn(liveness.watch("idle", std::future::pending::<()>()));
        for _ in 0..10 {
            tokio::time::sleep(S(1)).await;
            let ages = liveness.ages();
            assert_eq!(ages.len(), 1);
            assert!(stalled(&ages, S(2)).is_empty(), "{ages:?}");
        }
        idle.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_blocking_its_thread_stops_beating() {
        let liveness = Liveness::new(Duration::from_millis(20));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let blocker = async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // A wedge: a blocking wait inside poll, released at the end.
            let _ = rx.recv();
        };
        let task = tokio::spawn(liveness.watch("blocker", blocker));
        // A wedged worker may hold the runtime's timer driver, so this
        // (non-worker) thread waits with std, not tokio.
        let deadline = std::time::Instant::now() + S(10);
        while stalled(&liveness.ages(), Duration::from_millis(300)).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ages = liveness.ages();
        assert_eq!(stalled(&ages, Duration::from_millis(300))[0].0, "blocker");
        tx.send(()).expect("release");
        task.await.expect("join");
    }
}
