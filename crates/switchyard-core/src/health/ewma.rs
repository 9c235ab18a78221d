//! A peak-EWMA latency estimate per target, as linkerd and tower use for load balancing.
//!
//! A latency above the estimate replaces it at once, so that a target that slows down is
//! avoided immediately. A latency below it is blended in with weight `1 - exp(-elapsed /
//! decay)`, where `elapsed` is the time since the previous observation: the estimate comes down
//! over about `decay`, however many requests arrive in that time. Multiplying by the requests
//! in flight gives a cost that also steers away from busy targets. It holds no clock: the
//! caller passes `now`, and chooses which latency to feed (time to first token for streams,
//! total latency otherwise).

use std::time::Duration;

use crate::clock::{Nanos, nanos};

/// A latency estimate that jumps up to peaks and decays down exponentially.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    /// The decay period, in nanoseconds.
    decay: f64,
    /// The current estimate, in nanoseconds.
    estimate: f64,
    /// When the last observation arrived; `None` until the first, which replaces the initial
    /// guess outright.
    last: Option<Nanos>,
}

impl PeakEwma {
    /// The usual decay period.
    pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

    /// An estimate starting at `initial` (a guess used until the first observation), that
    /// forgets lower latencies over about `decay`.
    pub fn new(decay: Duration, initial: Duration) -> Self {
        PeakEwma {
            decay: nanos(decay) as f64,
            estimate: nanos(initial) as f64,
            last: None,
        }
    }

    /// Adds a latency observed at `now`.
    pub fn observe(&mut self, now: Nanos, latency: Duration) {
        let latency = nanos(latency) as f64;
        match self.last {
            Some(last) if latency <= self.estimate => {
                let weight = 1.0 - self.retained(now.saturating_sub(last));
                self.estimate += weight * (latency - self.estimate);
            }
            // A peak, or the first observation.
            _ => self.estimate = latency,
        }
        // Timestamps can arrive slightly out of order from concurrent requests.
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
    }

    /// The estimate in nanoseconds, as of the last observation.
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// The load-balancing cost: the estimate times the requests in flight plus the new one.
    pub fn cost(&self, in_flight: u32) -> f64 {
        self.estimate * (f64::from(in_flight) + 1.0)
    }

    /// The estimate at `now`, decayed toward zero for the time without observations, as
    /// tower's peak-EWMA does when it is read. An idle target's old peak then fades, so that
    /// selection tries it again instead of shunning it forever.
    pub fn estimate_at(&self, now: Nanos) -> f64 {
        match self.last {
            Some(last) => self.estimate * self.retained(now.saturating_sub(last)),
            None => self.estimate,
        }
    }

    /// [`PeakEwma::cost`] with [`PeakEwma::estimate_at`].
    pub fn cost_at(&self, now: Nanos, in_flight: u32) -> f64 {
        self.estimate_at(now) * (f64::from(in_flight) + 1.0)
    }

    /// The share of the old estimate that survives `elapsed` nanoseconds.
    fn retained(&self, elapsed: Nanos) -> f64 {
        if self.decay > 0.0 {
            (-(elapsed as f64) / self.decay).exp()
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const MS: f64 = 1_000_000.0;
    const SEC: Nanos = 1_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected.abs() * 1e-9 + 1e-6
    }

    #[test]
    fn the_initial_guess_holds_until_the_first_observation_replaces_it() {
        let mut ewma = PeakEwma::new(PeakEwma::DEFAULT_DECAY, ms(500));
        assert_eq!(ewma.estimate(), 500.0 * MS);
        assert_eq!(ewma.estimate_at(100 * SEC), 500.0 * MS);
        ewma.observe(SEC, ms(40));
        assert_eq!(ewma.estimate(), 40.0 * MS);
    }

    #[test]
    fn a_peak_replaces_the_estimate_at_once() {
        let mut ewma = PeakEwma::new(PeakEwma::DEFAULT_DECAY, ms(0));
        ewma.observe(0, ms(100));
        // No time has passed, yet the higher latency wins immediately.
        ewma.observe(0, ms(900));
        assert_eq!(ewma.estimate(), 900.0 * MS);
        // While a lower one at the same instant changes nothing.
        ewma.observe(0, ms(100));
        assert_eq!(ewma.estimate(), 900.0 * MS);
    }

    #[test]
    fn lower_latencies_blend_in_by_elapsed_time() {
        let mut ewma = PeakEwma::new(Duration::from_secs(10), ms(0));
        ewma.observe(0, ms(1_000));
        // After one decay period, 1 - 1/e of the gap closes.
        ewma.observe(10 * SEC, ms(0));
        assert!(close(ewma.estimate(), 1_000.0 * MS * (-1.0f64).exp()));
        // After ln 2 decay periods, half of it.
        let mut ewma = PeakEwma::new(Duration::from_secs(10), ms(0));
        ewma.observe(0, ms(1_000));
        let half_life = (10.0 * std::f64::consts::LN_2 * 1e9) as Nanos;
        ewma.observe(half_life, ms(200));
        assert!(close(ewma.estimate(), 600.0 * MS));
        // A long silence lets the next observation all but replace the estimate.
        ewma.observe(half_life + 1_000 * SEC, ms(10));
        assert!(close(ewma.estimate(), 10.0 * MS));
    }

    #[test]
    fn converges_toward_a_new_steady_latency() {
        let clock = ManualClock::new(0);
        let mut ewma = PeakEwma::new(Duration::from_secs(10), ms(0));
        ewma.observe(clock.now(), ms(1_000));
        let mut previous = ewma.estimate();
        for step in 1..=50 {
            clock.advance(Duration::from_secs(1));
            ewma.observe(clock.now(), ms(100));
            assert!(ewma.estimate() < previous, "step {step}");
            assert!(ewma.estimate() > 100.0 * MS, "step {step}");
            previous = ewma.estimate();
            // The gap shrinks by e^(-1/10) a second, whatever the request rate.
            let expected = 100.0 * MS + 900.0 * MS * (-(step as f64) / 10.0).exp();
            assert!(close(ewma.estimate(), expected), "step {step}");
        }
        assert!(ewma.estimate() < 107.0 * MS);
        // Many observations in the same short time move it no more than one would.
        let mut burst = PeakEwma::new(Duration::from_secs(10), ms(0));
        burst.observe(0, ms(1_000));
        for _ in 0..1_000 {
            burst.observe(SEC, ms(100));
        }
        assert!(close(
            burst.estimate(),
            100.0 * MS + 900.0 * MS * (-0.1f64).exp()
        ));
    }

    #[test]
    fn cost_multiplies_by_requests_in_flight_plus_one() {
        let mut ewma = PeakEwma::new(PeakEwma::DEFAULT_DECAY, ms(0));
        ewma.observe(0, ms(20));
        assert_eq!(ewma.cost(0), 20.0 * MS);
        assert_eq!(ewma.cost(3), 80.0 * MS);
        assert_eq!(ewma.cost(u32::MAX), 20.0 * MS * (f64::from(u32::MAX) + 1.0));
    }

    #[test]
    fn reads_at_a_time_decay_an_idle_estimate_toward_zero() {
        let mut ewma = PeakEwma::new(Duration::from_secs(10), ms(0));
        ewma.observe(5 * SEC, ms(1_000));
        assert_eq!(ewma.estimate_at(5 * SEC), 1_000.0 * MS);
        assert!(close(
            ewma.estimate_at(15 * SEC),
            1_000.0 * MS * (-1.0f64).exp()
        ));
        assert!(close(
            ewma.cost_at(15 * SEC, 1),
            2_000.0 * MS * (-1.0f64).exp()
        ));
        // Reading does not change the estimate, and a time before the last observation
        // counts as no time.
        assert_eq!(ewma.estimate(), 1_000.0 * MS);
        assert_eq!(ewma.estimate_at(0), 1_000.0 * MS);
    }

    #[test]
    fn out_of_order_timestamps_and_zero_decay_are_safe() {
        let mut ewma = PeakEwma::new(Duration::ZERO, ms(0));
        ewma.observe(10 * SEC, ms(300));
        // Zero decay: each observation replaces the estimate.
        ewma.observe(10 * SEC, ms(100));
        assert_eq!(ewma.estimate(), 100.0 * MS);
        let mut ewma = PeakEwma::new(Duration::from_secs(10), ms(0));
        ewma.observe(10 * SEC, ms(300));
        // An older timestamp counts as no elapsed time, and does not move `last` back.
        ewma.observe(5 * SEC, ms(100));
        assert_eq!(ewma.estimate(), 300.0 * MS);
        ewma.observe(20 * SEC, ms(100));
        assert!(close(
            ewma.estimate(),
            100.0 * MS + 200.0 * MS * (-1.0f64).exp()
        ));
    }
}
