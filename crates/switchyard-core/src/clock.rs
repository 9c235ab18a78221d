//! Time, injected. The core never reads a clock itself: policies (breakers, budgets, latency
//! estimators) take "now" as a [`Nanos`] value from a [`Clock`], so that tests drive time by
//! hand and the same code runs natively (tokio's clock, pausable in tests) and in a Worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Monotonic time in nanoseconds since an arbitrary origin.
pub type Nanos = u64;

/// Converts a duration to [`Nanos`], saturating.
pub fn nanos(duration: Duration) -> Nanos {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A monotonic clock.
pub trait Clock: Send + Sync + 'static {
    /// Now, in nanoseconds since this clock's origin.
    fn now(&self) -> Nanos;
}

/// A clock that moves only when told to. For tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock at `start`.
    pub fn new(start: Nanos) -> Self {
        ManualClock {
            now: AtomicU64::new(start),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(nanos(by), Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now: Nanos) {
        self.now.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_when_told() {
        let clock = ManualClock::new(5);
        assert_eq!(clock.now(), 5);
        clock.advance(Duration::from_micros(2));
        assert_eq!(clock.now(), 2_005);
        clock.set(1);
        assert_eq!(clock.now(), 1);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
