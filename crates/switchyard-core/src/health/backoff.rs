//! How long to wait before a retry: exponential backoff with "equal jitter".
//!
//! The ceiling for retry `n` (0 is the first retry) is `base × 2^n`, capped at `max`. Half of
//! it is always waited, the other half is scaled by a random number from the caller, so that
//! clients that failed together do not retry together, yet none retries immediately. It does
//! not sleep, and does not decide whether to retry at all (see the retry budget).

use std::time::Duration;

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Exponential backoff with equal jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub base: Duration,
    /// The largest delay ever returned.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (0 is the first retry). `random` is uniform in
    /// `0..1` from the caller; values outside are clamped and NaN counts as 0. Never overflows.
    pub fn delay(&self, retry: u32, random: f64) -> Duration {
        let doubling = 1u128.checked_shl(retry).unwrap_or(u128::MAX);
        let ceiling = self
            .base
            .as_nanos()
            .saturating_mul(doubling)
            .min(self.max.as_nanos());
        let fixed = ceiling / 2;
        let random = if random.is_nan() {
            0.0
        } else {
            random.clamp(0.0, 1.0)
        };
        // Float to integer saturates; the product is within 0..=ceiling - fixed anyway.
        let jitter = (((ceiling - fixed) as f64) * random) as u128;
        from_nanos(fixed + jitter.min(ceiling - fixed))
    }
}

/// A duration from a nanosecond count that may not fit in `u64`.
fn from_nanos(total: u128) -> Duration {
    let seconds = u64::try_from(total / NANOS_PER_SECOND).unwrap_or(u64::MAX);
    // Below one billion, so it fits.
    let nanos = (total % NANOS_PER_SECOND) as u32;
    Duration::new(seconds, nanos)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults() {
        assert_eq!(
            Backoff::default(),
            Backoff {
                base: ms(25),
                max: ms(2_000)
            }
        );
    }

    #[test]
    fn the_first_retry_waits_between_half_the_base_and_the_base() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(0, 0.0), Duration::from_micros(12_500));
        assert_eq!(backoff.delay(0, 0.5), Duration::from_micros(18_750));
        assert_eq!(backoff.delay(0, 1.0), ms(25));
    }

    #[test]
    fn the_ceiling_doubles_per_retry_until_the_cap() {
        let backoff = Backoff::default();
        let ceilings: Vec<Duration> = (0..10).map(|retry| backoff.delay(retry, 1.0)).collect();
        assert_eq!(
            ceilings,
            [25, 50, 100, 200, 400, 800, 1_600, 2_000, 2_000, 2_000].map(ms)
        );
        let floors: Vec<Duration> = (0..10).map(|retry| backoff.delay(retry, 0.0)).collect();
        assert_eq!(
            floors,
            [
                12_500, 25_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_000_000, 1_000_000,
                1_000_000
            ]
            .map(Duration::from_micros)
        );
    }

    #[test]
    fn huge_retry_counts_and_durations_saturate() {
        let backoff = Backoff::default();
        for retry in [63, 64, 127, 128, 1_000, u32::MAX] {
            assert_eq!(backoff.delay(retry, 1.0), ms(2_000));
            assert_eq!(backoff.delay(retry, 0.0), ms(1_000));
        }
        let unbounded = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
        };
        assert!(unbounded.delay(1_000, 1.0) >= Duration::from_secs(u64::MAX / 2));
        assert!(unbounded.delay(0, 0.0) >= Duration::from_secs(u64::MAX / 2));
    }

    #[test]
    fn random_values_out_of_range_are_clamped() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(0, -3.0), backoff.delay(0, 0.0));
        assert_eq!(backoff.delay(0, f64::NAN), backoff.delay(0, 0.0));
        assert_eq!(backoff.delay(0, 7.0), backoff.delay(0, 1.0));
        assert_eq!(backoff.delay(0, f64::INFINITY), backoff.delay(0, 1.0));
    }

    #[test]
    fn a_zero_base_never_waits() {
        let backoff = Backoff {
            base: Duration::ZERO,
            max: ms(100),
        };
        assert_eq!(backoff.delay(40, 1.0), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn delays_stay_within_half_the_ceiling_and_the_ceiling(
            base_ms in 0u64..10_000,
            max_ms in 0u64..100_000,
            retry in 0u32..200,
            random in 0.0f64..1.0,
        ) {
            let backoff = Backoff { base: ms(base_ms), max: ms(max_ms) };
            // base_ms < 2^14, so the shift cannot overflow below 2^50.
            let ceiling = ms(match (base_ms, retry) {
                (0, _) => 0,
                (_, 50..) => max_ms,
                _ => (base_ms << retry).min(max_ms),
            });
            let delay = backoff.delay(retry, random);
            prop_assert!(delay <= ceiling);
            prop_assert!(delay >= ceiling / 2);
            // More randomness never means a shorter wait.
            prop_assert!(backoff.delay(retry, random) <= backoff.delay(retry, 1.0));
            prop_assert!(backoff.delay(retry, 0.0) <= delay);
        }
    }
}
