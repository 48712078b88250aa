//! Wall-clock milliseconds driven by `tokio::time`, so tests that pause and
//! advance tokio's clock also move event timestamps and grace periods.

use tokio::time::Instant;

/// Unix milliseconds anchored at construction and advanced by tokio time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_ms: u64,
    at: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            wall_ms: crate::timefmt::now_ms(),
            at: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_ms.saturating_add(elapsed)
    }

    /// The tokio instant at which the wall clock reads `ms`.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.at + std::time::Duration::from_millis(ms.saturating_sub(self.wall_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
