//! The circuit breaker of one target, as an explicit state machine.
//!
//! Closed: every request is allowed, and outcomes are counted. It opens after
//! `consecutive_failures` failures in a row, or when the error rate over a sliding window
//! reaches `error_rate` with at least `min_requests` in the window. Open: every request is
//! rejected, at zero cost, until the cooldown has passed. Half-open: one probe at a time is
//! admitted; its success closes the breaker and resets the cooldown, its failure re-opens it
//! with the cooldown doubled (up to `max_cooldown`).
//!
//! It owns no clock and no lock: callers pass `now` and wrap it in whatever synchronisation
//! they use. It does not know about drained targets, `Retry-After` cooldowns or concurrency
//! limits; those are separate reasons for a target to be unavailable.

use std::time::Duration;

use super::SlidingWindow;
use crate::clock::{Nanos, nanos};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Opens after this many failures in a row. 0 disables this trigger.
    pub consecutive_failures: u32,
    /// Opens when failures / requests over `window` reaches this (0.0..=1.0). Catches a
    /// target that fails often but not every time. Above 1.0 disables this trigger.
    pub error_rate: f64,
    /// The span of the error-rate window.
    pub window: Duration,
    /// The error rate counts only with at least this many outcomes in the window, so that one
    /// early failure is not a 100% error rate.
    pub min_requests: u32,
    /// How long the breaker first stays open before letting a probe through.
    pub cooldown: Duration,
    /// The cap for the cooldown, which doubles each time a probe fails.
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_rate: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(5 * 60),
        }
    }
}

/// What happened to a request, as far as the breaker is concerned. The caller decides which
/// errors count as failures (upstream faults, not client mistakes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered well.
    Success,
    /// The target failed (connect error, timeout, 5xx, ...).
    Failure,
}

/// The breaker's answer to "may this request go to the target?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead, then [`CircuitBreaker::record`] the outcome with `was_probe = false`.
    Allowed,
    /// Half-open: this request is the one trial. Record its outcome with `was_probe = true`,
    /// or call [`CircuitBreaker::release_probe`] if it ends without a verdict.
    Probe,
    /// Open, or half-open with the probe already out: skip this target.
    Rejected,
}

/// The breaker's state as reported to operators and used for ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are rejected; a probe becomes possible after `retry_in`.
    Open {
        /// Time left in the cooldown.
        retry_in: Duration,
    },
    /// The cooldown is over; the next (or current) probe decides.
    HalfOpen,
}

impl BreakerState {
    /// The state's name for the admin API and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// The state machine's own state, with what each state needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    /// Rejecting until `until`; after it, the first admission becomes the probe.
    Open {
        until: Nanos,
    },
    HalfOpen {
        probe_in_flight: bool,
    },
}

/// Outcomes counted in one time bucket of the error-rate window.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    successes: u64,
    failures: u64,
}

/// One target's circuit breaker. See the module documentation for the states.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Phase,
    /// Failures in a row while closed.
    consecutive_failures: u32,
    /// Outcomes while closed, for the error rate.
    window: SlidingWindow<Tally>,
    /// The cooldown for the next time the breaker opens: the base after a success, doubled
    /// after each failed probe.
    cooldown: Duration,
    /// State changes so far, for the admin API.
    transitions: u64,
    /// Times the breaker has opened (from closed or from half-open).
    opened: u64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            window: SlidingWindow::new(config.window),
            cooldown: config.cooldown,
            config,
            phase: Phase::Closed,
            consecutive_failures: 0,
            transitions: 0,
            opened: 0,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Decides whether a request may go to the target now. When the cooldown is over, the
    /// first call moves the breaker to half-open and returns [`Admission::Probe`].
    pub fn admit(&mut self, now: Nanos) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Allowed,
            Phase::Open { until } if now < until => Admission::Rejected,
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen {
                    probe_in_flight: true,
                };
                self.transitions += 1;
                Admission::Probe
            }
            Phase::HalfOpen {
                probe_in_flight: true,
            } => Admission::Rejected,
            Phase::HalfOpen {
                probe_in_flight: false,
            } => {
                self.phase = Phase::HalfOpen {
                    probe_in_flight: true,
                };
                Admission::Probe
            }
        }
    }

    /// Records the outcome of a request this breaker admitted. `was_probe` says whether the
    /// admission was [`Admission::Probe`].
    pub fn record(&mut self, now: Nanos, outcome: Outcome, was_probe: bool) {
        match (self.phase, was_probe) {
            (Phase::Closed, false) => self.record_closed(now, outcome),
            (Phase::HalfOpen { .. }, true) => match outcome {
                Outcome::Success => self.close(),
                Outcome::Failure => {
                    let cap = self.config.max_cooldown.max(self.config.cooldown);
                    self.cooldown = self.cooldown.saturating_mul(2).min(cap);
                    self.open(now);
                }
            },
            // Open: a request admitted before the breaker opened; its failure must not extend
            // the open period. Half-open, not the probe: only the probe decides. Closed or open
            // with a probe verdict: a stale verdict from a half-open period already decided.
            _ => {}
        }
    }

    /// Frees the probe slot when a probe ended without a verdict (the client went away, the
    /// deadline ran out before the target could answer), so that the next request can probe.
    pub fn release_probe(&mut self) {
        if let Phase::HalfOpen {
            probe_in_flight: true,
        } = self.phase
        {
            self.phase = Phase::HalfOpen {
                probe_in_flight: false,
            };
        }
    }

    /// The state at `now`. Reports half-open once the cooldown is over, even before an
    /// admission has moved the breaker there.
    pub fn state(&self, now: Nanos) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open {
                retry_in: Duration::from_nanos(until - now),
            },
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether [`CircuitBreaker::admit`] at `now` would let a request through (as allowed or
    /// as the probe), without changing anything. For ordering candidates.
    pub fn would_admit(&self, now: Nanos) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Open { until } => now >= until,
            Phase::HalfOpen { probe_in_flight } => !probe_in_flight,
        }
    }

    /// State changes so far. Open → half-open is counted when an admission makes it.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// How many times the breaker has opened.
    pub fn opened_count(&self) -> u64 {
        self.opened
    }

    fn record_closed(&mut self, now: Nanos, outcome: Outcome) {
        if let Some(tally) = self.window.bucket_mut(now) {
            match outcome {
                Outcome::Success => tally.successes += 1,
                Outcome::Failure => tally.failures += 1,
            }
        }
        match outcome {
            Outcome::Success => {
                self.consecutive_failures = 0;
                return;
            }
            Outcome::Failure => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            }
        }
        let threshold = self.config.consecutive_failures;
        if (threshold > 0 && self.consecutive_failures >= threshold) || self.error_rate_tripped(now)
        {
            self.open(now);
        }
    }

    fn error_rate_tripped(&self, now: Nanos) -> bool {
        let (successes, failures) = self.window.live(now).fold((0u64, 0u64), |(s, f), tally| {
            (s + tally.successes, f + tally.failures)
        });
        let requests = successes + failures;
        // Called only after a failure, so the rate is never 0 / 0.
        requests >= u64::from(self.config.min_requests)
            && failures as f64 >= self.config.error_rate * requests as f64
    }

    fn open(&mut self, now: Nanos) {
        self.phase = Phase::Open {
            until: now.saturating_add(nanos(self.cooldown)),
        };
        self.transitions += 1;
        self.opened += 1;
    }

    /// Closes with a clean slate: what happened before the outage must not re-open it.
    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.consecutive_failures = 0;
        self.window.clear();
        self.cooldown = self.config.cooldown;
        self.transitions += 1;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    const SEC: Nanos = 1_000_000_000;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Only the consecutive-failures trigger, at 3.
    fn consecutive_only() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 3,
            error_rate: 2.0,
            ..BreakerConfig::default()
        })
    }

    /// Only the error-rate trigger: 50% over 10 s with at least 10 requests.
    fn rate_only() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 0,
            error_rate: 0.5,
            window: secs(10),
            min_requests: 10,
            ..BreakerConfig::default()
        })
    }

    fn fail(breaker: &mut CircuitBreaker, now: Nanos, times: u32) {
        for _ in 0..times {
            assert_eq!(breaker.admit(now), Admission::Allowed);
            breaker.record(now, Outcome::Failure, false);
        }
    }

    fn succeed(breaker: &mut CircuitBreaker, now: Nanos, times: u32) {
        for _ in 0..times {
            assert_eq!(breaker.admit(now), Admission::Allowed);
            breaker.record(now, Outcome::Success, false);
        }
    }

    /// Drives the breaker from closed to open with the consecutive trigger.
    fn trip(breaker: &mut CircuitBreaker, now: Nanos) {
        let times = breaker.config().consecutive_failures;
        fail(breaker, now, times);
        assert!(matches!(breaker.state(now), BreakerState::Open { .. }));
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = BreakerConfig::default();
        assert_eq!(config.consecutive_failures, 5);
        assert_eq!(config.error_rate, 0.5);
        assert_eq!(config.window, secs(30));
        assert_eq!(config.min_requests, 20);
        assert_eq!(config.cooldown, secs(5));
        assert_eq!(config.max_cooldown, secs(300));
        let breaker = CircuitBreaker::new(config);
        assert_eq!(breaker.state(0), BreakerState::Closed);
        assert_eq!(breaker.transitions(), 0);
        assert_eq!(breaker.opened_count(), 0);
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let mut breaker = consecutive_only();
        fail(&mut breaker, 0, 2);
        succeed(&mut breaker, 0, 1);
        fail(&mut breaker, 0, 2);
        assert_eq!(breaker.state(0), BreakerState::Closed);
        assert!(breaker.would_admit(0));
        fail(&mut breaker, SEC, 1);
        assert_eq!(breaker.state(SEC), BreakerState::Open { retry_in: secs(5) });
        assert_eq!(breaker.admit(SEC), Admission::Rejected);
        assert!(!breaker.would_admit(SEC));
        assert_eq!(breaker.transitions(), 1);
        assert_eq!(breaker.opened_count(), 1);
    }

    #[test]
    fn opens_on_the_error_rate_once_enough_requests_are_in_the_window() {
        let mut breaker = rate_only();
        // 9 requests, all failures: below min_requests, stays closed.
        fail(&mut breaker, 0, 9);
        assert_eq!(breaker.state(0), BreakerState::Closed);
        // The 10th request makes 9 failures of 10 = 90% ≥ 50%.
        fail(&mut breaker, 0, 1);
        assert!(matches!(breaker.state(0), BreakerState::Open { .. }));
    }

    #[test]
    fn the_error_rate_threshold_is_inclusive_and_successes_dilute_it() {
        let mut breaker = rate_only();
        // Interleaved, so that the consecutive count never matters.
        for _ in 0..4 {
            succeed(&mut breaker, 0, 1);
            fail(&mut breaker, 0, 1);
        }
        succeed(&mut breaker, 0, 2);
        // 4 failures of 10 requests: 40%.
        assert_eq!(breaker.state(0), BreakerState::Closed);
        // 5 of 11 (45%): closed. 6 of 12 (50%): open.
        fail(&mut breaker, 0, 1);
        assert_eq!(breaker.state(0), BreakerState::Closed);
        fail(&mut breaker, 0, 1);
        assert!(matches!(breaker.state(0), BreakerState::Open { .. }));
    }

    #[test]
    fn old_outcomes_leave_the_error_rate_window() {
        let mut breaker = rate_only();
        // 8 failures, then the window (10 s, 1 s buckets) moves past them.
        fail(&mut breaker, 0, 8);
        succeed(&mut breaker, 10 * SEC, 1);
        // Only 2 failures of 3 recent requests: below min_requests even though the old
        // failures would have made 10 of 11.
        fail(&mut breaker, 10 * SEC, 2);
        assert_eq!(breaker.state(10 * SEC), BreakerState::Closed);
        // Still inside the window (bucket 0 lives until 10 s), they would count.
        let mut fresh = rate_only();
        fail(&mut fresh, 0, 8);
        succeed(&mut fresh, 9 * SEC, 1);
        fail(&mut fresh, 9 * SEC, 1);
        assert!(matches!(fresh.state(9 * SEC), BreakerState::Open { .. }));
    }

    #[test]
    fn successes_alone_never_open_it_even_with_a_zero_error_rate() {
        let mut breaker = CircuitBreaker::new(BreakerConfig {
            error_rate: 0.0,
            min_requests: 0,
            ..BreakerConfig::default()
        });
        succeed(&mut breaker, 0, 100);
        assert_eq!(breaker.state(0), BreakerState::Closed);
    }

    #[test]
    fn open_rejects_until_the_cooldown_then_admits_exactly_one_probe() {
        let clock = ManualClock::new(100 * SEC);
        let mut breaker = consecutive_only();
        trip(&mut breaker, clock.now());
        clock.advance(Duration::from_millis(4_999));
        assert_eq!(
            breaker.state(clock.now()),
            BreakerState::Open {
                retry_in: Duration::from_millis(1)
            }
        );
        assert_eq!(breaker.admit(clock.now()), Admission::Rejected);
        clock.advance(Duration::from_millis(1));
        // Reported half-open before anyone asks, but the transition is counted on admission.
        assert_eq!(breaker.state(clock.now()), BreakerState::HalfOpen);
        assert!(breaker.would_admit(clock.now()));
        assert_eq!(breaker.transitions(), 1);
        assert_eq!(breaker.admit(clock.now()), Admission::Probe);
        assert_eq!(breaker.transitions(), 2);
        assert_eq!(breaker.state(clock.now()), BreakerState::HalfOpen);
        // One probe at a time, however long it takes.
        assert!(!breaker.would_admit(clock.now()));
        assert_eq!(breaker.admit(clock.now()), Admission::Rejected);
        clock.advance(secs(3_600));
        assert_eq!(breaker.admit(clock.now()), Admission::Rejected);
    }

    #[test]
    fn a_successful_probe_closes_it_and_resets_the_cooldown() {
        let mut breaker = consecutive_only();
        trip(&mut breaker, 0);
        // Fail two probes: the cooldown grows to 20 s.
        assert_eq!(breaker.admit(5 * SEC), Admission::Probe);
        breaker.record(5 * SEC, Outcome::Failure, true);
        assert_eq!(
            breaker.state(5 * SEC),
            BreakerState::Open { retry_in: secs(10) }
        );
        assert_eq!(breaker.admit(15 * SEC), Admission::Probe);
        breaker.record(15 * SEC, Outcome::Failure, true);
        assert_eq!(
            breaker.state(15 * SEC),
            BreakerState::Open { retry_in: secs(20) }
        );
        assert_eq!(breaker.admit(35 * SEC), Admission::Probe);
        breaker.record(35 * SEC, Outcome::Success, true);
        assert_eq!(breaker.state(35 * SEC), BreakerState::Closed);
        assert_eq!(breaker.admit(35 * SEC), Admission::Allowed);
        // Closed → open → half-open → open → half-open → open → half-open → closed.
        assert_eq!(breaker.transitions(), 7);
        assert_eq!(breaker.opened_count(), 3);
        // The next outage starts again from the base cooldown.
        trip(&mut breaker, 40 * SEC);
        assert_eq!(
            breaker.state(40 * SEC),
            BreakerState::Open { retry_in: secs(5) }
        );
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_the_cap() {
        let mut breaker = CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 1,
            cooldown: secs(5),
            max_cooldown: secs(60),
            ..BreakerConfig::default()
        });
        let mut now = 0;
        fail(&mut breaker, now, 1);
        let mut cooldowns = vec![];
        for _ in 0..6 {
            let BreakerState::Open { retry_in } = breaker.state(now) else {
                unreachable!("the breaker should be open");
            };
            cooldowns.push(retry_in.as_secs());
            now += nanos(retry_in);
            assert_eq!(breaker.admit(now), Admission::Probe);
            breaker.record(now, Outcome::Failure, true);
        }
        assert_eq!(cooldowns, [5, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn a_base_cooldown_above_the_cap_is_kept() {
        let mut breaker = CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 1,
            cooldown: secs(10),
            max_cooldown: secs(1),
            ..BreakerConfig::default()
        });
        fail(&mut breaker, 0, 1);
        assert_eq!(breaker.admit(10 * SEC), Admission::Probe);
        breaker.record(10 * SEC, Outcome::Failure, true);
        assert_eq!(
            breaker.state(10 * SEC),
            BreakerState::Open { retry_in: secs(10) }
        );
    }

    #[test]
    fn a_released_probe_lets_the_next_request_probe() {
        let mut breaker = consecutive_only();
        trip(&mut breaker, 0);
        assert_eq!(breaker.admit(5 * SEC), Admission::Probe);
        assert_eq!(breaker.admit(5 * SEC), Admission::Rejected);
        breaker.release_probe();
        assert_eq!(breaker.state(5 * SEC), BreakerState::HalfOpen);
        assert!(breaker.would_admit(5 * SEC));
        assert_eq!(breaker.admit(6 * SEC), Admission::Probe);
        breaker.record(6 * SEC, Outcome::Success, true);
        assert_eq!(breaker.state(6 * SEC), BreakerState::Closed);
        // Releasing outside half-open changes nothing.
        breaker.release_probe();
        assert_eq!(breaker.admit(6 * SEC), Admission::Allowed);
        trip(&mut breaker, 7 * SEC);
        breaker.release_probe();
        assert_eq!(breaker.admit(7 * SEC), Admission::Rejected);
    }

    #[test]
    fn late_failures_while_open_do_not_extend_the_open_period() {
        let mut breaker = consecutive_only();
        // Ten requests go out while closed; three fail and open the breaker, the others fail
        // later, while it is open.
        trip(&mut breaker, 0);
        for second in 1..=7 {
            breaker.record(second * SEC / 2, Outcome::Failure, false);
        }
        assert_eq!(
            breaker.state(4 * SEC),
            BreakerState::Open { retry_in: secs(1) }
        );
        // Even after the cooldown, before any admission: still half-open on time.
        breaker.record(5 * SEC, Outcome::Failure, false);
        assert_eq!(breaker.opened_count(), 1);
        assert_eq!(breaker.admit(5 * SEC), Admission::Probe);
    }

    #[test]
    fn only_the_probe_decides_in_half_open() {
        let mut breaker = consecutive_only();
        trip(&mut breaker, 0);
        assert_eq!(breaker.admit(5 * SEC), Admission::Probe);
        // Stragglers admitted before the breaker opened.
        breaker.record(5 * SEC, Outcome::Failure, false);
        breaker.record(5 * SEC, Outcome::Success, false);
        assert_eq!(breaker.state(5 * SEC), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(5 * SEC), Admission::Rejected);
        breaker.record(5 * SEC, Outcome::Success, true);
        assert_eq!(breaker.state(5 * SEC), BreakerState::Closed);
        // A stale probe verdict after the breaker closed is ignored.
        breaker.record(5 * SEC, Outcome::Failure, true);
        assert_eq!(breaker.state(5 * SEC), BreakerState::Closed);
        assert_eq!(breaker.opened_count(), 1);
    }

    #[test]
    fn closing_forgets_the_failures_from_before_the_outage() {
        let mut breaker = rate_only();
        fail(&mut breaker, 0, 10);
        assert!(matches!(breaker.state(0), BreakerState::Open { .. }));
        assert_eq!(breaker.admit(5 * SEC), Admission::Probe);
        breaker.record(5 * SEC, Outcome::Success, true);
        // The ten failures are still within the 10 s window, but do not count any more.
        succeed(&mut breaker, 6 * SEC, 5);
        fail(&mut breaker, 6 * SEC, 4);
        assert_eq!(breaker.state(6 * SEC), BreakerState::Closed);
    }

    #[test]
    fn state_names() {
        assert_eq!(BreakerState::Closed.name(), "closed");
        assert_eq!(BreakerState::Open { retry_in: secs(1) }.name(), "open");
        assert_eq!(BreakerState::HalfOpen.name(), "half-open");
    }

    /// One step of a random schedule.
    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Admit,
        /// Reports the oldest outstanding request.
        Report(bool),
        Release,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..8_000).prop_map(Step::Wait),
            Just(Step::Admit),
            any::<bool>().prop_map(Step::Report),
            Just(Step::Release),
        ]
    }

    proptest! {
        /// Under any schedule: the read-only views agree with what `admit` does, a probe is
        /// never handed out while another is outstanding, and closed always admits.
        #[test]
        fn read_only_views_agree_with_admit(steps in prop::collection::vec(step(), 1..200)) {
            let mut breaker = CircuitBreaker::new(BreakerConfig {
                consecutive_failures: 2,
                error_rate: 0.5,
                window: secs(4),
                min_requests: 4,
                cooldown: secs(1),
                max_cooldown: secs(8),
            });
            let clock = ManualClock::new(0);
            // Outstanding requests: whether each was the probe.
            let mut outstanding: Vec<bool> = vec![];
            let mut probe_out = false;
            for step in steps {
                let now = clock.now();
                match step {
                    Step::Wait(ms) => clock.advance(Duration::from_millis(ms)),
                    Step::Admit => {
                        let state = breaker.state(now);
                        let predicted = breaker.would_admit(now);
                        let admission = breaker.admit(now);
                        prop_assert_eq!(predicted, admission != Admission::Rejected);
                        match state {
                            BreakerState::Closed => prop_assert_eq!(admission, Admission::Allowed),
                            BreakerState::Open { .. } => prop_assert_eq!(admission, Admission::Rejected),
                            BreakerState::HalfOpen => prop_assert_ne!(admission, Admission::Allowed),
                        }
                        if admission == Admission::Probe {
                            prop_assert!(!probe_out);
                            probe_out = true;
                        }
                        if admission != Admission::Rejected {
                            outstanding.push(admission == Admission::Probe);
                        }
                    }
                    Step::Report(success) => {
                        if !outstanding.is_empty() {
                            let was_probe = outstanding.remove(0);
                            let outcome = if success { Outcome::Success } else { Outcome::Failure };
                            breaker.record(now, outcome, was_probe);
                            probe_out &= !was_probe;
                        }
                    }
                    Step::Release => {
                        if let Some(position) = outstanding.iter().position(|&probe| probe) {
                            outstanding.remove(position);
                            breaker.release_probe();
                            probe_out = false;
                        }
                    }
                }
                prop_assert!(breaker.opened_count() <= breaker.transitions());
                if let BreakerState::Open { retry_in } = breaker.state(clock.now()) {
                    prop_assert!(retry_in <= secs(8));
                }
            }
        }
    }
}
