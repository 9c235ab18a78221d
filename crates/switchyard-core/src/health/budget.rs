//! A retry budget, after Finagle's: retries may add at most a fixed fraction to the traffic a
//! route already carries, plus a small floor so that a quiet route can still retry.
//!
//! Every original request deposits; every retry withdraws. Over the last `ttl`, a retry is
//! allowed while `retries ≤ ratio × requests + min_per_second × ttl_seconds`. The counts live
//! in time buckets, so old traffic ages out and capacity returns as time passes. During an
//! outage this caps the load that retries add, instead of multiplying it by the attempt count.
//! It does not decide whether an error is retryable, nor where the retry goes.

use std::time::Duration;

use super::SlidingWindow;
use crate::clock::Nanos;

/// Slack for floating-point rounding in the allowance: 0.7 × 90 is 62.999… in `f64`, and must
/// still allow 63 retries.
const EPSILON: f64 = 1e-9;

/// Requests and retries counted in one time bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    requests: u64,
    retries: u64,
}

/// Limits retries to a fraction of recent requests. One per route (or per gateway).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    /// Retries allowed per original request, e.g. 0.2.
    ratio: f64,
    /// Retries allowed over the window regardless of traffic: `min_per_second × ttl` seconds.
    reserve: f64,
    window: SlidingWindow<Flow>,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request over the last `ttl`, plus
    /// `min_per_second` retries a second. A negative or NaN ratio counts as 0.
    pub fn new(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        RetryBudget {
            ratio: ratio.max(0.0),
            reserve: f64::from(min_per_second) * ttl.as_secs_f64(),
            window: SlidingWindow::new(ttl),
        }
    }

    /// Counts an original request (not a retry).
    pub fn deposit(&mut self, now: Nanos) {
        if let Some(flow) = self.window.bucket_mut(now) {
            flow.requests += 1;
        }
    }

    /// Takes one retry from the budget if there is room; `false` means do not retry. A refused
    /// withdrawal takes nothing.
    pub fn try_withdraw(&mut self, now: Nanos) -> bool {
        if self.remaining(now) == 0 {
            return false;
        }
        match self.window.bucket_mut(now) {
            Some(flow) => {
                flow.retries += 1;
                true
            }
            // A timestamp older than the window: nothing to count against, so no retry.
            None => false,
        }
    }

    /// How many retries could be withdrawn at `now`. For the admin API and metrics.
    pub fn remaining(&self, now: Nanos) -> u64 {
        let (requests, retries) = self
            .window
            .live(now)
            .fold((0u64, 0u64), |(requests, retries), flow| {
                (requests + flow.requests, retries + flow.retries)
            });
        let allowance = self.ratio * requests as f64 + self.reserve + EPSILON;
        // Float to integer saturates, and the allowance is never negative or NaN.
        (allowance.floor() as u64).saturating_sub(retries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const SEC: Nanos = 1_000_000_000;

    /// Withdraws until refused; returns how many retries were allowed.
    fn drain(budget: &mut RetryBudget, now: Nanos) -> u64 {
        let mut allowed = 0;
        while budget.try_withdraw(now) {
            allowed += 1;
            assert!(allowed <= 1_000_000, "the budget never ran out");
        }
        allowed
    }

    #[test]
    fn an_outage_gets_at_most_the_ratio_of_its_requests_in_retries() {
        let mut budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        // 100 requests, all failing, each wanting up to 3 retries.
        let mut retries = 0;
        for _ in 0..100 {
            budget.deposit(0);
            for _ in 0..3 {
                if budget.try_withdraw(0) {
                    retries += 1;
                }
            }
        }
        assert_eq!(retries, 20);
        assert_eq!(budget.remaining(0), 0);
    }

    #[test]
    fn the_floor_adds_min_per_second_times_ttl() {
        let mut budget = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        for _ in 0..100 {
            budget.deposit(0);
        }
        assert_eq!(budget.remaining(0), 30);
        assert_eq!(drain(&mut budget, 0), 30);
        // With no traffic at all, only the floor.
        let mut quiet = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        assert_eq!(drain(&mut quiet, 0), 100);
    }

    #[test]
    fn rounding_does_not_lose_a_whole_retry() {
        let mut budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..4 {
            budget.deposit(0);
        }
        assert!(!budget.try_withdraw(0));
        budget.deposit(0);
        assert!(budget.try_withdraw(0));
        assert!(!budget.try_withdraw(0));
        // 0.7 × 90 = 62.999… in floating point.
        let mut budget = RetryBudget::new(0.7, 0, Duration::from_secs(10));
        for _ in 0..90 {
            budget.deposit(0);
        }
        assert_eq!(drain(&mut budget, 0), 63);
    }

    #[test]
    fn capacity_returns_as_time_passes() {
        let clock = ManualClock::new(0);
        let mut budget = RetryBudget::new(0.5, 0, Duration::from_secs(10));
        for _ in 0..10 {
            budget.deposit(clock.now());
        }
        assert_eq!(drain(&mut budget, clock.now()), 5);
        // New traffic a few seconds later funds new retries while the old ones still count.
        clock.advance(Duration::from_secs(5));
        for _ in 0..4 {
            budget.deposit(clock.now());
        }
        assert_eq!(drain(&mut budget, clock.now()), 2);
        // Once the first burst ages out, both its requests and its retries are gone: the 4
        // later requests and 2 later retries leave nothing.
        clock.set(10 * SEC);
        assert_eq!(budget.remaining(clock.now()), 0);
        for _ in 0..6 {
            budget.deposit(clock.now());
        }
        assert_eq!(budget.remaining(clock.now()), 3);
        // Long after, everything has aged out.
        clock.advance(Duration::from_secs(10));
        assert_eq!(budget.remaining(clock.now()), 0);
        for _ in 0..2 {
            budget.deposit(clock.now());
        }
        assert_eq!(drain(&mut budget, clock.now()), 1);
    }

    #[test]
    fn old_requests_do_not_fund_retries_now() {
        let mut budget = RetryBudget::new(1.0, 0, Duration::from_secs(1));
        for _ in 0..1_000 {
            budget.deposit(0);
        }
        assert_eq!(budget.remaining(SEC - 1), 1_000);
        assert_eq!(budget.remaining(SEC), 0);
        assert!(!budget.try_withdraw(SEC));
    }

    #[test]
    fn refused_withdrawals_take_nothing() {
        let mut budget = RetryBudget::new(0.1, 0, Duration::from_secs(10));
        for _ in 0..10 {
            budget.deposit(0);
        }
        assert!(budget.try_withdraw(0));
        for _ in 0..50 {
            assert!(!budget.try_withdraw(0));
        }
        // Ten more requests fund exactly one more retry, not minus fifty.
        for _ in 0..10 {
            budget.deposit(0);
        }
        assert!(budget.try_withdraw(0));
        assert!(!budget.try_withdraw(0));
    }

    #[test]
    fn nonsense_ratios_allow_nothing_beyond_the_floor() {
        for ratio in [-1.0, f64::NAN] {
            let mut budget = RetryBudget::new(ratio, 1, Duration::from_secs(10));
            for _ in 0..100 {
                budget.deposit(0);
            }
            // Neither negative nor NaN eats into the floor.
            assert_eq!(budget.remaining(0), 10);
            assert_eq!(drain(&mut budget, 0), 10);
        }
    }
}
