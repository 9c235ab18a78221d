//! Per-target health policies: the pure decisions behind failover, with time passed in.
//!
//! - [`CircuitBreaker`]: closed → open → half-open, with one probe and exponential cooldown.
//! - [`RetryBudget`]: retries limited to a fraction of recent traffic.
//! - [`Backoff`]: exponential delay with equal jitter between retries.
//! - [`PeakEwma`]: a peak-sensitive latency estimate for least-latency selection.
//! - [`RecentLatency`]: the last samples' p95, for latency objectives.
//!
//! Nothing here reads a clock, sleeps, draws random numbers or locks: the caller passes `now`
//! (from a [`crate::clock::Clock`]) and any randomness, and owns the synchronisation.

mod backoff;
mod breaker;
mod budget;
mod ewma;
mod recent;

pub use backoff::Backoff;
pub use breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker, Outcome};
pub use budget::RetryBudget;
pub use ewma::PeakEwma;
pub use recent::{RECENT_SAMPLES, RecentLatency};

use std::time::Duration;

use crate::clock::{Nanos, nanos};

/// How many buckets a [`SlidingWindow`] has: it slides in steps of a tenth of its span.
const BUCKETS: u64 = 10;

/// Counts over the recent past, kept in a ring of time buckets so that old events age out
/// without storing each one. The window covers between nine and ten buckets' worth of time,
/// depending on where `now` falls inside the current bucket.
#[derive(Debug, Clone)]
struct SlidingWindow<T> {
    /// The span of one bucket, at least one nanosecond.
    bucket_width: Nanos,
    /// Slot `i` holds the bucket whose index (time / width) is `i` modulo [`BUCKETS`].
    buckets: [Bucket<T>; BUCKETS as usize],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket<T> {
    /// Which period of time the counts belong to: time / bucket width.
    index: u64,
    counts: T,
}

impl<T: Copy + Default> SlidingWindow<T> {
    /// An empty window spanning `span`.
    fn new(span: Duration) -> Self {
        SlidingWindow {
            bucket_width: (nanos(span) / BUCKETS).max(1),
            buckets: [Bucket::default(); BUCKETS as usize],
        }
    }

    /// The counts of the bucket that holds `now`, emptied first if the slot held an older
    /// period. `None` when `now` is older than the whole window: a stale timestamp from a
    /// caller that lost a race, whose event no longer counts anyway.
    fn bucket_mut(&mut self, now: Nanos) -> Option<&mut T> {
        let index = now / self.bucket_width;
        // In bounds: the remainder is below BUCKETS, the array's length.
        let slot = &mut self.buckets[(index % BUCKETS) as usize];
        if slot.index < index {
            *slot = Bucket {
                index,
                counts: T::default(),
            };
        }
        (slot.index == index).then_some(&mut slot.counts)
    }

    /// The counts of every bucket still inside the window at `now`.
    fn live(&self, now: Nanos) -> impl Iterator<Item = &T> {
        let index = now / self.bucket_width;
        self.buckets
            .iter()
            // A bucket newer than `now` (a caller's slightly stale timestamp) is live too.
            .filter(move |bucket| index.saturating_sub(bucket.index) < BUCKETS)
            .map(|bucket| &bucket.counts)
    }

    /// Forgets everything.
    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn total(window: &SlidingWindow<u64>, now: Nanos) -> u64 {
        window.live(now).sum()
    }

    fn add(window: &mut SlidingWindow<u64>, now: Nanos) -> bool {
        window.bucket_mut(now).map(|count| *count += 1).is_some()
    }

    #[test]
    fn events_age_out_bucket_by_bucket() {
        // Ten buckets of 100 ms each.
        let mut window = SlidingWindow::<u64>::new(Duration::from_secs(1));
        assert!(add(&mut window, 0));
        assert!(add(&mut window, 50 * MS));
        assert!(add(&mut window, 450 * MS));
        assert_eq!(total(&window, 450 * MS), 3);
        // The first bucket (0..100 ms) is live until its tenth successor starts at 1 s.
        assert_eq!(total(&window, 999 * MS), 3);
        assert_eq!(total(&window, 1_000 * MS), 1);
        assert_eq!(total(&window, 1_399 * MS), 1);
        assert_eq!(total(&window, 1_400 * MS), 0);
        // Reusing a slot clears what an older period left there.
        assert!(add(&mut window, 1_020 * MS));
        assert_eq!(total(&window, 1_020 * MS), 2);
        assert_eq!(total(&window, 1_500 * MS), 1);
    }

    #[test]
    fn stale_timestamps_are_dropped_not_misfiled() {
        let mut window = SlidingWindow::<u64>::new(Duration::from_secs(1));
        assert!(add(&mut window, 1_050 * MS));
        // Slightly behind the newest event, still inside the window: counted.
        assert!(add(&mut window, 990 * MS));
        // A whole window behind: would land in the slot of 1 050 ms, so it is dropped.
        assert!(!add(&mut window, 50 * MS));
        assert_eq!(total(&window, 1_050 * MS), 2);
        window.clear();
        assert_eq!(total(&window, 1_050 * MS), 0);
    }

    #[test]
    fn a_zero_span_still_has_a_bucket_width() {
        let mut window = SlidingWindow::<u64>::new(Duration::ZERO);
        assert!(add(&mut window, 5));
        assert_eq!(total(&window, 5), 1);
        assert_eq!(total(&window, 15), 0);
        // Near the end of time nothing overflows.
        assert!(add(&mut window, u64::MAX));
        assert_eq!(total(&window, u64::MAX), 1);
    }
}
