//! The provider manager's state: per-target health and performance, per-provider drain and
//! active-check status, and the retry budget.
//!
//! Every attempt goes through [`Tracker::begin`], which admits it (breaker, drain, cooldown,
//! active health, max concurrency) and counts it in flight, and through one of the
//! [`Attempt`] verdicts, which feed the breaker and the latency estimators. The policies
//! themselves are pure and live in `switchyard_core::health`; this module only holds their
//! state behind locks and reads the clock.
//!
//! Locks are std `Mutex`es held for a few arithmetic operations, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use switchyard_core::clock::{Clock, Nanos, nanos};
use switchyard_core::config::{Config, Provider, RoutingConfig, Target};
use switchyard_core::health::{
    Admission, BreakerConfig, BreakerState, CircuitBreaker, Outcome, PeakEwma, RecentLatency,
    RetryBudget,
};
use switchyard_core::pricing::Pricing;
use switchyard_core::strategy::CandidateView;
use switchyard_core::wire::TokenUsage;
use switchyard_core::{ErrorKind, GatewayError};

/// The gateway's clock: tokio's, so that tests can pause it.
#[derive(Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Nanos {
        nanos(self.origin.elapsed())
    }
}

/// Locks a mutex, recovering the data if a holder panicked (the state stays usable: every
/// update is a few plain assignments).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Most distinct models tracked per provider before further ones share [`OVERFLOW_MODEL`].
const MAX_TARGETS_PER_PROVIDER: usize = 64;

/// The shared state of a provider's models beyond [`MAX_TARGETS_PER_PROVIDER`].
const OVERFLOW_MODEL: &str = "*";

/// Samples older than this do not count against a latency objective (nanoseconds).
const OBJECTIVE_MAX_AGE: u64 = 5 * 60 * 1_000_000_000;

/// Fewer recent samples than this say too little to hold a target back.
const OBJECTIVE_MIN_SAMPLES: usize = 10;

/// Health and performance of all providers and targets.
pub struct Tracker {
    clock: Arc<dyn Clock>,
    /// The prices, for `least-cost`.
    pricing: Pricing,
    breaker: BreakerConfig,
    providers: HashMap<String, Arc<ProviderState>>,
    /// Provider name → model → state. Nested so that lookups borrow `&str`s: no allocation
    /// on the request path.
    targets: RwLock<HashMap<String, HashMap<String, Arc<TargetState>>>>,
    budget: Mutex<RetryBudget>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker").finish_non_exhaustive()
    }
}

/// What a routing strategy needs to know about a request to view a target.
#[derive(Debug, Clone, Copy)]
pub struct CandidateAsk {
    /// Streamed (latency is judged by time to first token).
    pub stream: bool,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// The client's output limit.
    pub max_output_tokens: Option<u32>,
    /// The strategy orders by cost: price the request and judge the latency objective
    /// (other strategies read neither, so the request path skips both).
    pub by_cost: bool,
    /// The route's latency objective for this kind of request.
    pub objective: Option<Duration>,
}

/// Per-provider state.
#[derive(Debug)]
pub struct ProviderState {
    /// The provider.
    pub provider: Arc<Provider>,
    /// Taken out of rotation by an operator.
    drained: AtomicBool,
    /// The active health check's verdict (true when there is no check).
    healthy: AtomicBool,
    /// The last active check: when (unix seconds) and the error, if it failed.
    last_check: Mutex<Option<(u64, Option<String>)>>,
}

impl ProviderState {
    /// A provider in rotation and presumed healthy.
    fn new(provider: Arc<Provider>) -> Self {
        ProviderState {
            provider,
            drained: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            last_check: Mutex::new(None),
        }
    }

    /// Whether an operator drained it.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Whether the active health check passes (or there is none).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records an active health check's result.
    pub fn record_check(&self, error: Option<String>) {
        let healthy = error.is_none();
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            match &error {
                Some(error) => {
                    tracing::warn!(provider = %self.provider.name, %error, "active health check failed: provider marked unhealthy")
                }
                None => {
                    tracing::info!(provider = %self.provider.name, "active health check passed: provider healthy again")
                }
            }
        }
        *lock(&self.last_check) = Some((unix_now(), error));
    }
}

/// Per-target state: breaker, load and performance.
#[derive(Debug)]
pub struct TargetState {
    provider: Arc<ProviderState>,
    model: String,
    breaker: Mutex<CircuitBreaker>,
    stats: Mutex<Stats>,
    in_flight: AtomicU32,
    /// After a 429 with `Retry-After`: skipped until this time.
    cooldown_until: AtomicU64,
    requests: AtomicU64,
}

#[derive(Debug)]
struct Stats {
    latency: PeakEwma,
    ttft: PeakEwma,
    latency_histogram: Option<Histogram<u64>>,
    ttft_histogram: Option<Histogram<u64>>,
    /// EWMA of output tokens per second (streams and non-streams).
    output_rate: Option<f64>,
    /// EWMA of output tokens per request, for cost estimates.
    output_tokens: Option<f64>,
    /// EWMA of the share of input tokens read from the provider's prompt cache.
    cached_share: Option<f64>,
    /// The last samples, for latency objectives (time to first token for streams, total
    /// latency for other requests).
    recent_ttft: RecentLatency,
    recent_latency: RecentLatency,
    errors: HashMap<&'static str, u64>,
    last_error: Option<(u64, String)>,
}

/// 1 µs to 10 min at 2 significant digits: about 25 KB per histogram, two per target (which
/// is why targets are bounded per provider). These bounds are valid, so `None` does not
/// happen; it only spares an `expect`.
fn histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 2).ok()
}

fn record(histogram: &mut Option<Histogram<u64>>, latency: Duration) {
    if let Some(histogram) = histogram {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.clamp(1, 600_000_000));
    }
}

fn ewma_step(current: Option<f64>, sample: f64) -> f64 {
    match current {
        None => sample,
        Some(current) => current * 0.9 + sample * 0.1,
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Tracker {
    /// State for every configured provider and route target.
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Self {
        let routing: &RoutingConfig = &config.routing;
        let providers: HashMap<String, Arc<ProviderState>> = config
            .providers
            .iter()
            .map(|provider| {
                (
                    provider.name.clone(),
                    Arc::new(ProviderState::new(Arc::clone(provider))),
                )
            })
            .collect();
        let tracker = Tracker {
            budget: Mutex::new(RetryBudget::new(
                routing.retry_budget,
                routing.min_retries_per_second,
                Duration::from_secs(10),
            )),
            clock,
            pricing: config.pricing.clone(),
            breaker: routing.breaker.clone(),
            providers,
            targets: RwLock::new(HashMap::new()),
        };
        for route in &config.routes {
            for target in &route.targets {
                tracker.target(target);
            }
        }
        tracker
    }

    /// Now, by the tracker's clock.
    pub fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// A provider's state.
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderState>> {
        self.providers.get(name)
    }

    /// All providers' states, in no particular order.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<ProviderState>> {
        self.providers.values()
    }

    /// The state of `target`, created on first use (bare model names make targets on the fly).
    pub fn target(&self, target: &Target) -> Arc<TargetState> {
        if let Some(state) = self
            .targets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(target.provider.name.as_str())
            .and_then(|models| models.get(target.model.as_str()))
        {
            return Arc::clone(state);
        }
        let mut targets = self
            .targets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Clients choose bare and `provider/model` names: past a bound, unlisted models share
        // one state per provider, so that made-up names cannot grow memory without limit.
        let model = match targets.get(target.provider.name.as_str()) {
            Some(models)
                if models.len() >= MAX_TARGETS_PER_PROVIDER
                    && !models.contains_key(target.model.as_str()) =>
            {
                OVERFLOW_MODEL
            }
            _ => target.model.as_str(),
        };
        let provider = match self.providers.get(&target.provider.name) {
            Some(provider) => Arc::clone(provider),
            None => Arc::new(ProviderState::new(Arc::clone(&target.provider))),
        };
        let models = targets.entry(target.provider.name.clone()).or_default();
        Arc::clone(models.entry(model.to_owned()).or_insert_with(|| {
            Arc::new(TargetState {
                provider,
                model: model.to_owned(),
                breaker: Mutex::new(CircuitBreaker::new(self.breaker.clone())),
                stats: Mutex::new(Stats {
                    latency: PeakEwma::new(Duration::from_secs(10), Duration::from_millis(500)),
                    ttft: PeakEwma::new(Duration::from_secs(10), Duration::from_millis(500)),
                    latency_histogram: histogram(),
                    ttft_histogram: histogram(),
                    output_rate: None,
                    output_tokens: None,
                    cached_share: None,
                    recent_ttft: RecentLatency::default(),
                    recent_latency: RecentLatency::default(),
                    errors: HashMap::new(),
                    last_error: None,
                }),
                in_flight: AtomicU32::new(0),
                cooldown_until: AtomicU64::new(0),
                requests: AtomicU64::new(0),
            })
        }))
    }

    /// A view of `target` for the routing strategy: is it available now, and its load, latency
    /// and expected cost.
    pub fn candidate(
        &self,
        target: &Target,
        state: &TargetState,
        ask: CandidateAsk,
    ) -> CandidateView {
        let CandidateAsk {
            stream,
            input_tokens: expected_input_tokens,
            max_output_tokens,
            by_cost,
            objective,
        } = ask;
        let now = self.now();
        let in_flight = state.in_flight.load(Ordering::Relaxed);
        let available = state.is_available(target, now, in_flight);
        let stats = lock(&state.stats);
        // `cost_at` lets an idle estimate fade, so a target that once spiked gets tried again.
        let latency_cost = if stream {
            stats.ttft.cost_at(now, in_flight)
        } else {
            stats.latency.cost_at(now, in_flight)
        };
        let expected_output = max_output_tokens
            .map(f64::from)
            .or(stats.output_tokens)
            .unwrap_or(256.0);
        let cached_share = stats.cached_share.unwrap_or(0.0);
        // Unknown until enough recent samples say otherwise: a target is held back only by
        // what it did lately.
        let meets_objective = !by_cost
            || objective.is_none_or(|bound| {
                let recent = if stream {
                    &stats.recent_ttft
                } else {
                    &stats.recent_latency
                };
                recent
                    .p95(now, OBJECTIVE_MAX_AGE, OBJECTIVE_MIN_SAMPLES)
                    .is_none_or(|p95| p95 <= u64::try_from(bound.as_micros()).unwrap_or(u64::MAX))
            });
        drop(stats);
        // Input and output at their own prices, the share this target has lately read from
        // its prompt cache at the cached rate; a target without a known price is never taken
        // for the cheapest.
        let expected_cost = if by_cost {
            let usage = TokenUsage {
                input: expected_input_tokens,
                output: expected_output as u64,
                cached_input: (expected_input_tokens as f64 * cached_share) as u64,
                ..TokenUsage::default()
            };
            self.pricing
                .cost(&target.provider.name, &target.model, &usage)
                .unwrap_or(f64::MAX)
        } else {
            0.0
        };
        CandidateView {
            available,
            priority: target.priority,
            weight: target.weight,
            in_flight,
            latency_cost,
            expected_cost,
            meets_objective,
        }
    }

    /// Admits an attempt at `target`, or says why not. The concurrency slot is reserved
    /// atomically, so that `max_concurrency` holds under concurrent admissions.
    pub fn begin(
        &self,
        target: &Target,
        state: &Arc<TargetState>,
    ) -> Result<Attempt, GatewayError> {
        let now = self.now();
        if !state.is_available_except_load(now) {
            return Err(unavailable(target, "is drained, unhealthy or cooling down"));
        }
        let limit = target.max_concurrency.unwrap_or(u32::MAX);
        if state
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_err()
        {
            return Err(unavailable(target, "is at its concurrency limit"));
        }
        let probe = match lock(&state.breaker).admit(now) {
            Admission::Allowed => false,
            Admission::Probe => true,
            Admission::Rejected => {
                state.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Err(unavailable(target, "has its circuit breaker open"));
            }
        };
        state.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Attempt {
            state: Some(Arc::clone(state)),
            clock: Arc::clone(&self.clock),
            started: now,
            probe,
        })
    }

    /// Whether `target` could be attempted now (for retrying the same target).
    pub fn is_available(&self, target: &Target, state: &TargetState) -> bool {
        state.is_available(target, self.now(), state.in_flight())
    }

    /// When the soonest of `targets` becomes available again, if they are all paused by a
    /// cooldown or an open breaker: the `Retry-After` of a fast 503.
    pub fn soonest_available(&self, targets: &[Target]) -> Option<Duration> {
        let now = self.now();
        targets
            .iter()
            .filter_map(|target| {
                let state = self.target(target);
                let cooldown = state
                    .cooldown_until
                    .load(Ordering::Relaxed)
                    .saturating_sub(now);
                let breaker = match lock(&state.breaker).state(now) {
                    BreakerState::Open { retry_in } => nanos(retry_in),
                    _ => 0,
                };
                let wait = cooldown.max(breaker);
                (wait > 0).then(|| Duration::from_nanos(wait))
            })
            .min()
    }

    /// Counts an original request toward the retry budget.
    pub fn deposit(&self) {
        let now = self.now();
        lock(&self.budget).deposit(now);
    }

    /// Whether the retry budget allows one more retry now.
    pub fn try_retry(&self) -> bool {
        let now = self.now();
        lock(&self.budget).try_withdraw(now)
    }

    /// The snapshot `GET /admin/providers` shows.
    pub fn snapshot(&self) -> Vec<ProviderSnapshot> {
        let now = self.now();
        let targets = self
            .targets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut providers: Vec<ProviderSnapshot> =
            self.providers
                .values()
                .map(|provider| {
                    let last_check = lock(&provider.last_check).clone();
                    let mut target_snapshots: Vec<TargetSnapshot> = targets
                        .get(provider.provider.name.as_str())
                        .into_iter()
                        .flat_map(HashMap::values)
                        .map(|state| state.snapshot(now))
                        .collect();
                    target_snapshots.sort_by(|a, b| a.model.cmp(&b.model));
                    ProviderSnapshot {
                        name: provider.provider.name.clone(),
                        kind: provider.provider.kind.clone(),
                        base_url: provider.provider.base_url.clone(),
                        drained: provider.is_drained(),
                        health_check: provider.provider.health_check.as_ref().map(|_| {
                            HealthSnapshot {
                                healthy: provider.is_healthy(),
                                last_checked_unix: last_check.as_ref().map(|(at, _)| *at),
                                last_error: last_check.and_then(|(_, error)| error),
                            }
                        }),
                        targets: target_snapshots,
                    }
                })
                .collect();
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        providers
    }

    /// Takes a provider out of rotation (`drain`) or puts it back (`enable`). Enabling is an
    /// operator saying "it is fixed": it also closes the breakers of the provider's targets
    /// and ends their `Retry-After` cooldowns.
    pub fn set_drained(&self, name: &str, drained: bool) -> bool {
        let Some(provider) = self.providers.get(name) else {
            return false;
        };
        provider.drained.store(drained, Ordering::Relaxed);
        if !drained {
            let targets = self
                .targets
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for state in targets.get(name).into_iter().flat_map(HashMap::values) {
                *lock(&state.breaker) = CircuitBreaker::new(self.breaker.clone());
                state.cooldown_until.store(0, Ordering::Relaxed);
            }
        }
        tracing::info!(provider = name, drained, "provider rotation changed");
        true
    }
}

fn is_request_deadline(error: &GatewayError) -> bool {
    error.code.as_deref() == Some(crate::transport::REQUEST_DEADLINE)
}

fn unavailable(target: &Target, why: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::Unavailable,
        switchyard_core::Origin::Upstream(target.provider.name.clone()),
        format!(
            "provider {} (model {}) {why}",
            target.provider.name, target.model
        ),
    )
}

impl TargetState {
    /// Not drained, healthy and not cooling down.
    fn is_available_except_load(&self, now: Nanos) -> bool {
        !self.provider.is_drained()
            && self.provider.is_healthy()
            && self.cooldown_until.load(Ordering::Relaxed) <= now
    }

    fn is_available(&self, target: &Target, now: Nanos, in_flight: u32) -> bool {
        self.is_available_except_load(now)
            && target.max_concurrency.is_none_or(|limit| in_flight < limit)
            && lock(&self.breaker).would_admit(now)
    }

    /// Skips this target until `now + pause` (a provider's `Retry-After`).
    pub fn cool_down(&self, now: Nanos, pause: Duration) {
        let until = now.saturating_add(nanos(pause));
        self.cooldown_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Requests now in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn snapshot(&self, now: Nanos) -> TargetSnapshot {
        let breaker = lock(&self.breaker);
        let current = breaker.state(now);
        let retry_in_ms = match current {
            BreakerState::Open { retry_in } => {
                Some(u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX))
            }
            _ => None,
        };
        let state = current.name();
        let transitions = breaker.transitions();
        let opened = breaker.opened_count();
        drop(breaker);
        let stats = lock(&self.stats);
        let cooldown = self.cooldown_until.load(Ordering::Relaxed);
        TargetSnapshot {
            model: self.model.clone(),
            breaker: state,
            breaker_retry_in_ms: retry_in_ms,
            breaker_transitions: transitions,
            breaker_opened: opened,
            cooldown_ms: (cooldown > now).then(|| (cooldown - now) / 1_000_000),
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: stats
                .errors
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            latency_ms: LatencySnapshot::of(&stats.latency, &stats.latency_histogram),
            ttft_ms: LatencySnapshot::of(&stats.ttft, &stats.ttft_histogram),
            output_tokens_per_second: stats.output_rate,
            last_error: stats.last_error.as_ref().map(|(at, message)| LastError {
                at_unix: *at,
                message: message.clone(),
            }),
        }
    }
}

/// One admitted attempt. Give it a verdict; dropping it without one (the client went away)
/// releases its slot and any breaker probe without judging the target.
pub struct Attempt {
    state: Option<Arc<TargetState>>,
    clock: Arc<dyn Clock>,
    started: Nanos,
    probe: bool,
}

impl Attempt {
    /// The target's state.
    pub fn state(&self) -> Option<&Arc<TargetState>> {
        self.state.as_ref()
    }

    /// The attempt failed with `error`. Only provider-side failures count against the target:
    /// a 400 is the client's fault, and a timeout caused by the client request's own deadline
    /// is nobody's. A timeout also feeds the latency estimate, so that `least-latency` learns
    /// that the target is slow.
    pub fn fail(mut self, error: &GatewayError, stream: bool) {
        let Some(state) = self.state.take() else {
            return;
        };
        let now = self.clock.now();
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        let deadline = is_request_deadline(error);
        let counts_against = (error.retryable || error.kind == ErrorKind::Internal) && !deadline;
        {
            let mut breaker = lock(&state.breaker);
            if counts_against {
                breaker.record(now, Outcome::Failure, self.probe);
            } else if self.probe {
                if error.origin == switchyard_core::Origin::Client || deadline {
                    // No verdict on the provider.
                    breaker.release_probe();
                } else {
                    // The provider answered, if only with a 4xx: it is up.
                    breaker.record(now, Outcome::Success, true);
                }
            }
        }
        if let (ErrorKind::RateLimited, Some(pause)) = (error.kind, error.retry_after) {
            state.cool_down(now, pause);
        }
        let mut stats = lock(&state.stats);
        if error.kind == ErrorKind::Timeout && !deadline {
            let elapsed = Duration::from_nanos(now.saturating_sub(self.started));
            let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            if stream {
                stats.ttft.observe(now, elapsed);
                stats.recent_ttft.push(now, micros);
            } else {
                stats.latency.observe(now, elapsed);
                stats.recent_latency.push(now, micros);
            }
        }
        *stats.errors.entry(error.kind.as_str()).or_insert(0) += 1;
        stats.last_error = Some((unix_now(), error.message.to_string()));
    }

    /// The attempt produced its answer (non-streamed: complete; streamed: its first event).
    /// Returns the in-flight token, which a stream keeps until it ends.
    pub fn succeed(mut self, stream: bool) -> InFlight {
        let Some(state) = self.state.take() else {
            return InFlight {
                state: None,
                started: self.started,
                clock: Arc::clone(&self.clock),
            };
        };
        let now = self.clock.now();
        let latency = Duration::from_nanos(now.saturating_sub(self.started));
        lock(&state.breaker).record(now, Outcome::Success, self.probe);
        {
            let mut stats = lock(&state.stats);
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            if stream {
                stats.ttft.observe(now, latency);
                record(&mut stats.ttft_histogram, latency);
                stats.recent_ttft.push(now, micros);
            } else {
                stats.latency.observe(now, latency);
                record(&mut stats.latency_histogram, latency);
                stats.recent_latency.push(now, micros);
            }
        }
        InFlight {
            state: Some(state),
            started: self.started,
            clock: Arc::clone(&self.clock),
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
            if self.probe {
                lock(&state.breaker).release_probe();
            }
        }
    }
}

/// A served request still in flight (a stream being relayed). Dropping it ends it.
pub struct InFlight {
    state: Option<Arc<TargetState>>,
    started: Nanos,
    clock: Arc<dyn Clock>,
}

impl InFlight {
    /// Records how the answer ended: output tokens for the throughput estimate, the total
    /// latency of a stream, and a mid-stream failure against the target.
    pub fn finish(mut self, usage: &TokenUsage, stream: bool, error: Option<&GatewayError>) {
        let output_tokens = usage.output;
        let Some(state) = self.state.take() else {
            return;
        };
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = self.clock.now();
        let elapsed = Duration::from_nanos(now.saturating_sub(self.started));
        if let Some(error) = error {
            if !is_request_deadline(error) {
                lock(&state.breaker).record(now, Outcome::Failure, false);
            }
            let mut stats = lock(&state.stats);
            *stats.errors.entry(error.kind.as_str()).or_insert(0) += 1;
            stats.last_error = Some((unix_now(), error.message.to_string()));
            return;
        }
        let mut stats = lock(&state.stats);
        if stream {
            // The whole stream's duration is reported, but not fed to the estimator that
            // non-streamed requests are routed by: a long generation is not a slow provider.
            record(&mut stats.latency_histogram, elapsed);
        }
        if usage.input > 0 {
            let share = usage.cached_input.min(usage.input) as f64 / usage.input as f64;
            stats.cached_share = Some(ewma_step(stats.cached_share, share));
        }
        if output_tokens > 0 {
            stats.output_tokens = Some(ewma_step(stats.output_tokens, output_tokens as f64));
            let seconds = elapsed.as_secs_f64();
            if seconds > 0.0 {
                stats.output_rate =
                    Some(ewma_step(stats.output_rate, output_tokens as f64 / seconds));
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// `GET /admin/providers`: one provider.
#[derive(Debug, Serialize)]
pub struct ProviderSnapshot {
    /// Provider name.
    pub name: String,
    /// Configured kind.
    pub kind: String,
    /// API root.
    pub base_url: String,
    /// Out of rotation by an operator.
    pub drained: bool,
    /// Active health check status, when one is configured.
    pub health_check: Option<HealthSnapshot>,
    /// Its targets (provider + model) that have been configured or used.
    pub targets: Vec<TargetSnapshot>,
}

/// Active health check status.
#[derive(Debug, Serialize)]
pub struct HealthSnapshot {
    /// The last check passed (true before the first).
    pub healthy: bool,
    /// When the last check ran.
    pub last_checked_unix: Option<u64>,
    /// Why the last check failed.
    pub last_error: Option<String>,
}

/// One target's health and performance.
#[derive(Debug, Serialize)]
pub struct TargetSnapshot {
    /// Upstream model.
    pub model: String,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    /// When open: how long until the next probe.
    pub breaker_retry_in_ms: Option<u64>,
    /// Breaker state changes so far.
    pub breaker_transitions: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Remaining `Retry-After` cooldown.
    pub cooldown_ms: Option<u64>,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Attempts admitted so far.
    pub requests: u64,
    /// Failed attempts by error class.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Total latency of complete answers.
    pub latency_ms: LatencySnapshot,
    /// Time to first event of streams.
    pub ttft_ms: LatencySnapshot,
    /// EWMA of output tokens per second.
    pub output_tokens_per_second: Option<f64>,
    /// The last failure.
    pub last_error: Option<LastError>,
}

/// Latency figures in milliseconds.
#[derive(Debug, Serialize)]
pub struct LatencySnapshot {
    /// Peak-EWMA estimate (what `least-latency` uses).
    pub ewma: f64,
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl LatencySnapshot {
    fn of(ewma: &PeakEwma, histogram: &Option<Histogram<u64>>) -> Self {
        let quantile = |q: f64| {
            histogram
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        LatencySnapshot {
            ewma: ewma.estimate() / 1_000_000.0,
            count: histogram.as_ref().map_or(0, Histogram::len),
            p50: quantile(0.50),
            p95: quantile(0.95),
            p99: quantile(0.99),
        }
    }
}

/// A target's last failure.
#[derive(Debug, Serialize)]
pub struct LastError {
    /// When (unix seconds).
    pub at_unix: u64,
    /// The client-safe message.
    pub message: String,
}
