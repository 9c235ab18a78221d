//! Circuit breakers at the edge: the core's [`CircuitBreaker`] per target (provider and
//! model), held by the isolate. An isolate serves many requests in turn, so a target that
//! keeps failing is skipped for its cooldown there, as in one native instance; isolates do
//! not share this state (each learns on its own), which the native gateway's shared health
//! does not either without Redis.

use std::collections::HashMap;

use std::time::Duration;
use switchyard_core::clock::Nanos;

use switchyard_core::health::{Admission, BreakerConfig, CircuitBreaker, Outcome, PeakEwma};

/// How fast a target's latency estimate forgets, and what it is before the first answer:
/// the native tracker's figures.
const LATENCY_DECAY: Duration = Duration::from_secs(10);
const INITIAL_LATENCY: Duration = Duration::from_millis(500);

/// The breakers of one isolate, by `provider/model`.
#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    by_target: HashMap<String, CircuitBreaker>,
    /// Peak-EWMA of each target's time to the answer's headers, for `least-latency`.
    latency: HashMap<String, PeakEwma>,
}

/// Whether a call failed in a way the breaker counts (the target's fault, not the client's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The target answered (a client error included).
    Answered,
    /// The target failed (unreachable, timeout, 5xx, 429).
    Failed,
}

impl Breakers {
    /// No breaker yet; each target gets one, closed, on its first use.
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            by_target: HashMap::new(),
            latency: HashMap::new(),
        }
    }

    /// Records how long `target` took to answer (its headers).
    pub fn observe_latency(&mut self, target: &str, now: Nanos, latency: Duration) {
        self.latency
            .entry(target.to_owned())
            .or_insert_with(|| PeakEwma::new(LATENCY_DECAY, INITIAL_LATENCY))
            .observe(now, latency);
    }

    /// What `least-latency` ranks `target` by (lower first): its estimate, fading back
    /// towards the initial one while it is idle, so a target that once spiked is tried again;
    /// a target never called gets the initial estimate.
    pub fn latency_cost(&self, target: &str, now: Nanos) -> f64 {
        match self.latency.get(target) {
            Some(estimate) => estimate.cost_at(now, 0),
            None => PeakEwma::new(LATENCY_DECAY, INITIAL_LATENCY).cost_at(now, 0),
        }
    }

    /// Whether `target` would be admitted now (for ordering; takes no probe slot).
    pub fn available(&self, target: &str, now: Nanos) -> bool {
        self.by_target
            .get(target)
            .is_none_or(|breaker| breaker.would_admit(now))
    }

    /// Asks to call `target` now: `None` when its breaker is open, else whether the call is
    /// the half-open probe.
    pub fn admit(&mut self, target: &str, now: Nanos) -> Option<bool> {
        let config = &self.config;
        let breaker = self
            .by_target
            .entry(target.to_owned())
            .or_insert_with(|| CircuitBreaker::new(config.clone()));
        match breaker.admit(now) {
            Admission::Allowed => Some(false),
            Admission::Probe => Some(true),
            Admission::Rejected => None,
        }
    }

    /// Records how a call that [`Breakers::admit`] let through went.
    pub fn record(&mut self, target: &str, now: Nanos, verdict: Verdict, was_probe: bool) {
        if let Some(breaker) = self.by_target.get_mut(target) {
            let outcome = match verdict {
                Verdict::Answered => Outcome::Success,
                Verdict::Failed => Outcome::Failure,
            };
            breaker.record(now, outcome, was_probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 2,
            error_rate: 2.0,
            window: Duration::from_secs(30),
            min_requests: 20,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_failing_target_is_skipped_for_its_cooldown_then_probed() {
        let mut breakers = Breakers::new(config());
        assert!(breakers.available("a/m", 0));
        for t in 0..2 {
            assert_eq!(breakers.admit("a/m", t), Some(false));
            breakers.record("a/m", t, Verdict::Failed, false);
        }
        assert!(!breakers.available("a/m", SEC));
        assert_eq!(breakers.admit("a/m", SEC), None);
        assert!(breakers.available("b/m", SEC), "others are not affected");
        assert_eq!(breakers.admit("a/m", 6 * SEC), Some(true), "the probe");
        breakers.record("a/m", 6 * SEC, Verdict::Answered, true);
        assert_eq!(breakers.admit("a/m", 6 * SEC), Some(false), "closed again");
    }

    #[test]
    fn least_latency_ranks_targets_by_their_observed_time_to_answer() {
        let mut breakers = Breakers::new(config());
        for second in 1..=5 {
            breakers.observe_latency("fast/m", second * SEC, Duration::from_millis(40));
            breakers.observe_latency("slow/m", second * SEC, Duration::from_millis(900));
        }
        let now = 5 * SEC;
        let fast = breakers.latency_cost("fast/m", now);
        let slow = breakers.latency_cost("slow/m", now);
        let unknown = breakers.latency_cost("new/m", now);
        assert!(fast < unknown && unknown < slow, "{fast} {unknown} {slow}");
        // The core's least-latency order follows the costs.
        let view = |latency_cost| switchyard_core::strategy::CandidateView {
            available: true,
            priority: 0,
            weight: 1,
            in_flight: 0,
            latency_cost,
            expected_cost: 0.0,
            meets_objective: true,
        };
        let order = switchyard_core::strategy::order(
            switchyard_core::strategy::Strategy::LeastLatency,
            &[view(slow), view(fast), view(unknown)],
            &mut || 7,
        );
        assert_eq!(order[0], 1);
    }
}
