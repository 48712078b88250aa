//! Capped exponential backoff with jitter, for reconnecting to the adb
//! server. Invariant: a delay is never above the cap and never below half
//! of its undrawn base, so a dead server is retried at a bounded rate.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Capped exponential backoff; each delay is drawn from `[d/2, d]`.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.max);
        // std's RandomState is randomly keyed per instance: enough for jitter.
        let unit = (RandomState::new().build_hasher().finish() >> 11) as f64 / (1u64 << 53) as f64;
        base / 2 + (base / 2).mul_f64(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let mut bases = Vec::new();
        for _ in 0..6 {
            let base = b.next;
            let d = b.next_delay();
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} not in [{base:?}/2, {base:?}]"
            );
            bases.push(base.as_millis());
        }
        assert_eq!(bases, [500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next, Duration::from_millis(500));
        let draws: std::collections::BTreeSet<_> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(draws.len() > 1, "delays are jittered");
    }

    #[test]
    fn a_max_below_the_initial_delay_caps_the_first_delay_too() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
