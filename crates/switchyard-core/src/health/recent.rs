//! The recent latencies of a target, for latency objectives: a ring of the last
//! [`RECENT_SAMPLES`] samples with their times. Its p95 counts only samples younger than a
//! maximum age, so a target that was slow and then got no traffic is not judged by old news:
//! once its samples age out, too little is known to hold it back, and it is tried again.

/// Samples kept per target.
pub const RECENT_SAMPLES: usize = 64;

/// The last samples, oldest overwritten first.
#[derive(Debug, Clone)]
pub struct RecentLatency {
    /// `(time, microseconds)`; time in the caller's clock (nanoseconds).
    samples: [(u64, u32); RECENT_SAMPLES],
    len: usize,
    next: usize,
}

impl Default for RecentLatency {
    fn default() -> Self {
        RecentLatency {
            samples: [(0, 0); RECENT_SAMPLES],
            len: 0,
            next: 0,
        }
    }
}

impl RecentLatency {
    /// Records a latency of `micros` at `now`.
    pub fn push(&mut self, now: u64, micros: u64) {
        self.samples[self.next] = (now, u32::try_from(micros).unwrap_or(u32::MAX));
        self.next = (self.next + 1) % RECENT_SAMPLES;
        self.len = (self.len + 1).min(RECENT_SAMPLES);
    }

    /// The 95th percentile (microseconds, nearest rank) of the samples younger than
    /// `max_age` (nanoseconds) at `now`, when there are at least `min_samples` of them.
    pub fn p95(&self, now: u64, max_age: u64, min_samples: usize) -> Option<u64> {
        let mut fresh = [0u32; RECENT_SAMPLES];
        let mut count = 0;
        for &(at, micros) in &self.samples[..self.len] {
            if now.saturating_sub(at) <= max_age {
                fresh[count] = micros;
                count += 1;
            }
        }
        if count == 0 || count < min_samples {
            return None;
        }
        let rank = (count * 95).div_ceil(100).clamp(1, count) - 1;
        let fresh = &mut fresh[..count];
        let (_, value, _) = fresh.select_nth_unstable(rank);
        Some(u64::from(*value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn p95_of_the_fresh_samples_once_there_are_enough() {
        let mut recent = RecentLatency::default();
        assert_eq!(recent.p95(0, 60 * S, 1), None);
        for i in 1..=20u64 {
            recent.push(i * S, i * 1_000);
        }
        assert_eq!(recent.p95(20 * S, 60 * S, 21), None, "too few");
        assert_eq!(recent.p95(20 * S, 60 * S, 10), Some(19_000));
        // Ten seconds later, only the last eleven are at most 20 s old.
        assert_eq!(recent.p95(30 * S, 20 * S, 11), Some(20_000));
        assert_eq!(recent.p95(30 * S, 20 * S, 12), None);
    }

    #[test]
    fn the_ring_keeps_the_latest_samples() {
        let mut recent = RecentLatency::default();
        for _ in 0..RECENT_SAMPLES {
            recent.push(0, 900_000);
        }
        for _ in 0..RECENT_SAMPLES {
            recent.push(S, 1_000);
        }
        assert_eq!(
            recent.p95(S, 10 * S, 1),
            Some(1_000),
            "the slow past is overwritten"
        );
    }
}
