//! A cheap estimate of the unpublished backlog between exact scans.
//!
//! Counting the backlog exactly means reading every unpublished row, so the
//! registry task does it only when this estimate says the bound may be
//! crossed, or when the last exact count is older than [`RESCAN_MS`].
//! Between scans the estimate is the last exact size, plus what the journal
//! wrote since, minus what the broker acknowledged since.
//!
//! Invariant: the estimate only decides *when* to count exactly; compaction
//! always works from the exact count. It can drift (an event acknowledged
//! twice after a reconnect is subtracted twice), which is why it is reset
//! to the exact count at least every [`RESCAN_MS`].

use super::compaction::Bounds;

/// The longest time between two exact counts.
pub const RESCAN_MS: u64 = 10 * 60 * 1000;

/// Events and payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub events: u64,
    pub bytes: u64,
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogEstimate {
    /// `None` until the first exact count.
    exact: Option<Exact>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Exact {
    size: Size,
    at_ms: u64,
    journaled: Size,
    published: Size,
}

impl BacklogEstimate {
    /// Nothing counted yet: the first check counts exactly.
    pub fn unknown() -> Self {
        BacklogEstimate { exact: None }
    }

    /// Records an exact count, with the running totals of events journaled
    /// and acknowledged at that moment.
    pub fn counted(&mut self, size: Size, at_ms: u64, journaled: Size, published: Size) {
        self.exact = Some(Exact {
            size,
            at_ms,
            journaled,
            published,
        });
    }

    /// The estimated backlog, given the running totals now.
    pub fn current(&self, journaled: Size, published: Size) -> Option<Size> {
        let e = self.exact.as_ref()?;
        let grow = |base: u64, now: u64, then: u64| base.saturating_add(now.saturating_sub(then));
        let events = grow(e.size.events, journaled.events, e.journaled.events)
            .saturating_sub(published.events.saturating_sub(e.published.events));
        let bytes = grow(e.size.bytes, journaled.bytes, e.journaled.bytes)
            .saturating_sub(published.bytes.saturating_sub(e.published.bytes));
        Some(Size { events, bytes })
    }

    /// Whether the registry task should count exactly now.
    pub fn needs_count(
        &self,
        bounds: Bounds,
        now_ms: u64,
        journaled: Size,
        published: Size,
    ) -> bool {
        let (Some(e), Some(size)) = (&self.exact, self.current(journaled, published)) else {
            return true;
        };
        size.events > bounds.max_events
            || size.bytes > bounds.max_bytes
            || now_ms.saturating_sub(e.at_ms) >= RESCAN_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_events: 100,
        max_bytes: 10_000,
    };

    fn size(events: u64, bytes: u64) -> Size {
        Size { events, bytes }
    }

    #[test]
    fn nothing_counted_yet_means_count_now() {
        assert!(BacklogEstimate::unknown().needs_count(
            BOUNDS,
            0,
            Size::default(),
            Size::default()
        ));
    }

    #[test]
    fn the_estimate_adds_what_was_journaled_and_subtracts_what_was_acknowledged() {
        let mut e = BacklogEstimate::unknown();
        e.counted(size(10, 1000), 0, size(50, 5000), size(40, 4000));
        assert_eq!(
            e.current(size(80, 8000), size(45, 4500)),
            Some(size(35, 3500))
        );
        assert!(!e.needs_count(BOUNDS, 1000, size(80, 8000), size(45, 4500)));
    }

    #[test]
    fn crossing_either_bound_asks_for_an_exact_count() {
        let mut e = BacklogEstimate::unknown();
        e.counted(size(90, 1000), 0, Size::default(), Size::default());
        assert!(e.needs_count(BOUNDS, 1, size(11, 10), Size::default()));
        assert!(e.needs_count(BOUNDS, 1, size(1, 9_001), Size::default()));
        assert!(!e.needs_count(BOUNDS, 1, size(10, 10), Size::default()));
    }

    #[test]
    fn an_old_count_is_refreshed_even_under_the_bound() {
        let mut e = BacklogEstimate::unknown();
        e.counted(Size::default(), 5, Size::default(), Size::default());
        assert!(!e.needs_count(BOUNDS, 5 + RESCAN_MS - 1, Size::default(), Size::default()));
        assert!(e.needs_count(BOUNDS, 5 + RESCAN_MS, Size::default(), Size::default()));
    }

    #[test]
    fn double_acknowledgements_never_underflow() {
        let mut e = BacklogEstimate::unknown();
        e.counted(size(1, 10), 0, Size::default(), Size::default());
        assert_eq!(
            e.current(Size::default(), size(5, 50)),
            Some(Size::default())
        );
    }
}
