//! Stage 3's engine: admission against the configured rate limits, load shedding, and the
//! settlement of token reservations.
//!
//! A request is charged to every limit it falls under (its key, user, IP, model, global),
//! all or nothing: a refusal by one limit charges none. Token limits reserve the input
//! estimate plus the output limit and settle to the actual usage when the response ends
//! ([`Admission::settle`]); concurrency limits and the shedding slot are held until then.
//!
//! Counters live in this process's memory ([`memory`]) or, with `storage.redis_url`, in
//! Redis ([`redis`]), one round trip per admission. When Redis cannot be reached, the
//! configured fail mode applies: `fail_open` counts in memory meanwhile (per instance),
//! `fail_closed` answers 503. Either way it is logged and counted, and Redis is left alone
//! for a second before the next try so that a dead store does not cost every request a
//! timeout.

pub mod memory;
pub mod redis;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use switchyard_core::clock::{Clock, Nanos, nanos};
use switchyard_core::config::{FailMode, LimitConfig, RateLimitConfig};
use switchyard_core::ratelimit::shed::{self, Priority};
use switchyard_core::ratelimit::{Algorithm, Outcome, Policy, Scope, Unit, reset_text};
use switchyard_core::{ErrorKind, GatewayError, Origin};
use tokio::time::Instant;

use self::memory::MemoryStore;
use self::redis::{Check, Decision, RedisStore, Settlement};

/// Settlements waiting to be sent to Redis; beyond it a settlement is sent on its own.
const SETTLE_QUEUE: usize = 16_384;

/// Most settlements sent in one script call.
const SETTLE_BATCH: usize = 256;

/// How long Redis is left alone after it failed.
const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// Most distinct (key, limit, counter) refusal tallies kept for the admin view.
const MAX_OFFENDERS: usize = 10_000;

/// Longest counter value kept (user ids are client-chosen).
const MAX_COUNTER_LEN: usize = 256;

/// Who and what a request is, as far as limits care.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The principal's label (`anonymous`, `master`, a virtual key's id).
    pub key: String,
    /// The end user, when the request names one.
    pub user: Option<String>,
    /// The virtual key's team.
    pub team: Option<String>,
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The route or model asked for.
    pub model: String,
    /// The key's priority class.
    pub priority: Priority,
    /// Tokens to reserve: the input estimate plus the output limit.
    pub tokens: u64,
    /// The virtual key's own limits, counted under [`OWN_LIMITS`] (token buckets per minute,
    /// burst = the amount).
    pub own: OwnLimits,
}

/// Prometheus series of the limiter.
#[derive(Debug, Clone)]
pub struct RateLimitMetrics {
    refusals: Family<RefusalLabels, Counter>,
    queued: Family<LimitLabels, Counter>,
    shed: Family<PriorityLabels, Counter>,
    store_errors: Family<ModeLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    limit: String,
    scope: &'static str,
    key: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabels {
    priority: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: &'static str,
}

impl RateLimitMetrics {
    /// Registers the limiter's families.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RateLimitMetrics {
            refusals: Family::default(),
            queued: Family::default(),
            shed: Family::default(),
            store_errors: Family::default(),
        };
        registry.register(
            "switchyard_ratelimit_refusals",
            "Requests refused by a rate limit (429), by limit, scope and key",
            metrics.refusals.clone(),
        );
        registry.register(
            "switchyard_ratelimit_queued",
            "Requests that waited for room in a limit instead of being refused at once",
            metrics.queued.clone(),
        );
        registry.register(
            "switchyard_ratelimit_shed",
            "Requests shed under overload (503), by priority class",
            metrics.shed.clone(),
        );
        registry.register(
            "switchyard_ratelimit_store_errors",
            "Rate-limit checks that could not reach Redis, by the fail mode applied",
            metrics.store_errors.clone(),
        );
        metrics
    }
}

/// Why a request was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// A limit is exhausted (429).
    Limited {
        /// The limit.
        limit: usize,
        /// Until the request could pass; `None`: it never can as it stands.
        retry_after: Option<Duration>,
        /// Units the request asked for.
        units: u64,
    },
    /// Shed under overload (503).
    Shed,
    /// Redis is unreachable and the mode is `fail_closed` (503).
    StoreUnavailable,
}

/// A limit a request falls under: the limit's index, the counter, the units to charge, and
/// the policy to count them by (the limit's own, or a virtual key's own amount).
type Wanted<'s> = (usize, Cow<'s, str>, u64, Policy);

/// A virtual key's own limits, per minute (see [`Subject::own`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnLimits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
}

impl OwnLimits {
    /// Whether there is any.
    pub fn is_some(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some()
    }
}

/// The period of a virtual key's own limits.
const OWN_PERIOD: Duration = Duration::from_secs(60);

/// The names of the limits that count a virtual key's own `rpm` and `tpm`.
pub const OWN_LIMITS: [&str; 2] = switchyard_core::config::limits::RESERVED_NAMES;

/// One counter a request was charged to that needs settling (tokens, concurrency; request
/// counts are final when charged).
#[derive(Debug, Clone)]
struct Charge {
    limit: usize,
    policy: Policy,
    counter: String,
    units: u64,
    /// When it was charged, in the backend's clock (nanoseconds here, microseconds in Redis).
    at: u64,
}

/// The x-ratelimit figures of one unit: limit, remaining, reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// The limit's capacity.
    pub limit: u64,
    /// Left after this request.
    pub remaining: u64,
    /// Until it is full again.
    pub reset: Duration,
}

/// The `x-ratelimit-*` headers of a response: the tightest request and token limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// `-requests`.
    pub requests: Option<Figures>,
    /// `-tokens`.
    pub tokens: Option<Figures>,
}

impl RateHeaders {
    fn merge(&mut self, unit: Unit, figures: Figures) {
        let slot = match unit {
            Unit::Requests => &mut self.requests,
            Unit::Tokens => &mut self.tokens,
            Unit::Concurrent => return,
        };
        if slot.is_none_or(|current| figures.remaining < current.remaining) {
            *slot = Some(figures);
        }
    }

    /// Adds the headers to `headers`.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (figures, names) in [
            (
                self.requests,
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            ),
            (
                self.tokens,
                [
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ],
            ),
        ] {
            let Some(figures) = figures else { continue };
            headers.insert(names[0], http::HeaderValue::from(figures.limit));
            headers.insert(names[1], http::HeaderValue::from(figures.remaining));
            if let Ok(value) = http::HeaderValue::from_str(&reset_text(nanos(figures.reset))) {
                headers.insert(names[2], value);
            }
        }
    }
}

/// The limiter.
pub struct RateLimiter {
    /// The configured limits, then the two [`OWN_LIMITS`].
    limits: Vec<LimitConfig>,
    /// How many of `limits` are configured.
    configured: usize,
    policies: Vec<Policy>,
    fail_mode: FailMode,
    store_timeout: Duration,
    max_in_flight: Option<u64>,
    clock: Arc<dyn Clock>,
    memory: MemoryStore,
    redis: Option<RedisStore>,
    /// Settlements on their way to Redis, batched by a task of their own.
    settlements: Option<tokio::sync::mpsc::Sender<Settlement>>,
    /// Clock time before which Redis is not tried again.
    redis_down_until: AtomicU64,
    /// Last time a store failure was logged (clock nanoseconds), to log once per backoff.
    logged_at: AtomicU64,
    in_flight: AtomicU64,
    queued: Vec<AtomicU32>,
    queued_by_key: Mutex<HashMap<(usize, String), u32>>,
    offenders: Mutex<HashMap<(String, usize, String), u64>>,
    metrics: RateLimitMetrics,
}

impl RateLimiter {
    /// A limiter for `config`, sharing counters through Redis when `redis_url` is set.
    /// `lease` bounds how long a concurrency slot outlives a crashed instance.
    pub fn new(
        config: &RateLimitConfig,
        redis_url: Option<&str>,
        lease: Duration,
        clock: Arc<dyn Clock>,
        metrics: RateLimitMetrics,
    ) -> Result<Self, String> {
        // With Redis, every limit is counted there, virtual keys' own limits included.
        let redis = match redis_url {
            Some(url) => Some(RedisStore::new(url, config.store_timeout, lease)?),
            None => None,
        };
        let mut limits = config.limits.clone();
        for (name, unit) in OWN_LIMITS.into_iter().zip([Unit::Requests, Unit::Tokens]) {
            limits.push(LimitConfig {
                name: name.to_owned(),
                scope: Scope::Key,
                unit,
                // Each key brings its own amount; this one is never used.
                policy: Policy::TokenBucket {
                    interval: nanos(OWN_PERIOD),
                    burst: 1,
                },
                amount: 0,
                period: OWN_PERIOD,
                only: Vec::new(),
                queue: Duration::ZERO,
                max_queued: 0,
            });
        }
        let settlements = redis.clone().map(|redis| {
            let (sender, receiver) = tokio::sync::mpsc::channel(SETTLE_QUEUE);
            tokio::spawn(send_settlements(
                redis,
                receiver,
                config.store_timeout.max(Duration::from_secs(1)),
                metrics.clone(),
                config.on_store_error.as_str(),
            ));
            sender
        });
        Ok(RateLimiter {
            policies: limits.iter().map(|limit| limit.policy).collect(),
            queued: limits.iter().map(|_| AtomicU32::new(0)).collect(),
            memory: MemoryStore::new(limits.len()),
            configured: config.limits.len(),
            limits,
            fail_mode: config.on_store_error,
            store_timeout: config.store_timeout,
            max_in_flight: config.max_in_flight,
            clock,
            redis,
            settlements,
            redis_down_until: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            queued_by_key: Mutex::new(HashMap::new()),
            offenders: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Connects to Redis and loads the scripts (when Redis is configured), logging a failure:
    /// called once at start-up, before serving. An unreachable Redis does not stop the start.
    pub async fn warm_up(&self) {
        if let Some(redis) = &self.redis
            && self.configured > 0
        {
            match tokio::time::timeout(Duration::from_secs(2), redis.warm_up()).await {
                Ok(Ok(())) => tracing::info!("rate limits are shared through Redis"),
                Ok(Err(error)) => tracing::warn!(
                    error = %error,
                    mode = self.fail_mode.as_str(),
                    "could not reach Redis for rate limits; applying the configured fail mode until it answers"
                ),
                Err(_) => tracing::warn!(
                    mode = self.fail_mode.as_str(),
                    "Redis did not answer within 2s; applying the configured fail mode until it does"
                ),
            }
        }
    }

    /// Whether any limit is per provider (checked before each provider call).
    pub fn has_provider_limits(&self) -> bool {
        self.limits.iter().any(|limit| limit.scope.is_per_call())
    }

    /// Whether requests need to pass through the limiter at all (a virtual key with limits of
    /// its own always does).
    pub fn is_active(&self) -> bool {
        self.configured > 0 || self.max_in_flight.is_some()
    }

    /// The configured limits, then the two [`OWN_LIMITS`].
    pub fn limits(&self) -> &[LimitConfig] {
        &self.limits
    }

    /// Admits `subject` or says why not. Waits (bounded by the limit's `queue` and by
    /// `deadline`) when a limit with a queue is full.
    pub async fn admit(
        self: &Arc<Self>,
        subject: &Subject,
        deadline: Instant,
    ) -> Result<Admission, (Refusal, RateHeaders)> {
        let mut admission = self.empty_admission();
        if let Some(max) = self.max_in_flight {
            let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
            admission.pending.shed_slot = true;
            if !shed::admits(max, subject.priority, before) {
                self.metrics
                    .shed
                    .get_or_create(&PriorityLabels {
                        priority: subject.priority.as_str(),
                    })
                    .inc();
                // Dropping the admission gives the slot back.
                return Err((Refusal::Shed, RateHeaders::default()));
            }
        }
        let wanted: Vec<Wanted<'_>> = self
            .limits
            .iter()
            .enumerate()
            .filter_map(|(index, limit)| {
                let policy = match index.checked_sub(self.configured) {
                    None => self.policies[index],
                    Some(own) => {
                        let amount = if own == 0 {
                            subject.own.rpm
                        } else {
                            subject.own.tpm
                        }?;
                        Policy::rate(Algorithm::TokenBucket, amount, nanos(OWN_PERIOD), None)?
                    }
                };
                let counter = counter(limit, subject)?;
                let units = match limit.unit {
                    Unit::Requests | Unit::Concurrent => 1,
                    Unit::Tokens => subject.tokens.max(1),
                };
                Some((index, counter, units, policy))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(admission);
        }
        // Read the time only once a request has to wait.
        let mut started: Option<Instant> = None;
        let mut queue_slot: Option<QueueSlot<'_>> = None;
        loop {
            match self.try_once(&wanted, &mut admission).await {
                Ok(()) => return Ok(admission),
                Err(Refusal::Limited {
                    limit,
                    retry_after: Some(wait),
                    units,
                }) => {
                    let config = &self.limits[limit];
                    let now = Instant::now();
                    let waited = now - *started.get_or_insert(now);
                    let within_bounds = !config.queue.is_zero()
                        && waited + wait <= config.queue
                        && now + wait < deadline;
                    if within_bounds && queue_slot.is_none() {
                        queue_slot = self.join_queue(limit, &subject.key);
                    }
                    if within_bounds && queue_slot.is_some() {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(self.refused(subject, &wanted, limit, Some(wait), units));
                }
                Err(Refusal::Limited {
                    limit,
                    retry_after: None,
                    units,
                }) => return Err(self.refused(subject, &wanted, limit, None, units)),
                Err(other) => return Err((other, RateHeaders::default())),
            }
        }
    }

    /// Charges the request to the limits of `provider` (scope `provider`) before a call to it:
    /// `Ok(None)` when none applies. A refusal means "skip this target"; it never waits.
    pub async fn admit_provider(
        self: &Arc<Self>,
        provider: &str,
        model: &str,
        tokens: u64,
    ) -> Result<Option<Admission>, GatewayError> {
        let target = format!("{provider}/{model}");
        let wanted: Vec<Wanted<'_>> = self
            .limits
            .iter()
            .enumerate()
            .filter(|(_, limit)| limit.applies_to_call(provider, model))
            .map(|(index, limit)| {
                let units = match limit.unit {
                    Unit::Tokens => tokens.max(1),
                    Unit::Requests | Unit::Concurrent => 1,
                };
                let counter = if limit.scope == Scope::Target {
                    Cow::Borrowed(target.as_str())
                } else {
                    Cow::Borrowed(provider)
                };
                (index, counter, units, self.policies[index])
            })
            .collect();
        if wanted.is_empty() {
            return Ok(None);
        }
        let mut admission = self.empty_admission();
        match self.try_once(&wanted, &mut admission).await {
            Ok(()) => Ok(Some(admission)),
            Err(refusal) => {
                if let Refusal::Limited { limit, .. } = &refusal {
                    self.metrics
                        .refusals
                        .get_or_create(&RefusalLabels {
                            limit: self.limits[*limit].name.clone(),
                            scope: self.limits[*limit].scope.as_str(),
                            key: String::new(),
                        })
                        .inc();
                }
                let mut error = self.error(&refusal);
                if matches!(refusal, Refusal::Limited { .. }) {
                    error.message = format!(
                        "Provider `{provider}` is at this gateway's quota for it. {}",
                        error.message
                    )
                    .into();
                }
                Err(error)
            }
        }
    }

    fn empty_admission(self: &Arc<Self>) -> Admission {
        Admission {
            limiter: Arc::clone(self),
            pending: Pending::default(),
            settled: false,
            headers: RateHeaders::default(),
        }
    }

    /// Records a refusal and builds its answer.
    fn refused(
        &self,
        subject: &Subject,
        wanted: &[Wanted<'_>],
        limit: usize,
        retry_after: Option<Duration>,
        units: u64,
    ) -> (Refusal, RateHeaders) {
        let config = &self.limits[limit];
        self.metrics
            .refusals
            .get_or_create(&RefusalLabels {
                limit: config.name.clone(),
                scope: config.scope.as_str(),
                key: subject.key.clone(),
            })
            .inc();
        let (counter, policy) = wanted
            .iter()
            .find(|(index, ..)| *index == limit)
            .map_or((String::new(), config.policy), |(_, counter, _, policy)| {
                (counter.to_string(), *policy)
            });
        {
            let mut offenders = lock(&self.offenders);
            if offenders.len() >= MAX_OFFENDERS {
                // Keep the heavier half.
                let mut counts: Vec<u64> = offenders.values().copied().collect();
                counts.sort_unstable();
                let median = counts.get(counts.len() / 2).copied().unwrap_or(0);
                offenders.retain(|_, count| *count > median);
            }
            *offenders
                .entry((subject.key.clone(), limit, counter))
                .or_insert(0) += 1;
        }
        let mut headers = RateHeaders::default();
        headers.merge(
            config.unit,
            Figures {
                limit: policy.capacity(),
                remaining: 0,
                reset: retry_after.unwrap_or(config.period),
            },
        );
        (
            Refusal::Limited {
                limit,
                retry_after,
                units,
            },
            headers,
        )
    }

    /// One attempt at charging every wanted counter.
    async fn try_once(
        &self,
        wanted: &[Wanted<'_>],
        admission: &mut Admission,
    ) -> Result<(), Refusal> {
        let now = self.clock.now();
        if let Some(redis) = &self.redis {
            if now < self.redis_down_until.load(Ordering::Relaxed) {
                // Left alone after a failure: the fail mode applies without trying.
                self.count_store_error();
                return self.unreachable(wanted, now, admission);
            }
            if admission.pending.nonce.is_empty() {
                admission.pending.nonce = format!("{:016x}", fastrand::u64(..));
            }
            let checks = self.checks(wanted);
            match tokio::time::timeout(
                self.store_timeout,
                redis.admit(&admission.pending.nonce, &checks),
            )
            .await
            {
                Ok(Ok(Decision::Admitted { limits, now_us })) => {
                    admission.pending.redis = true;
                    for ((index, counter, units, policy), (remaining, reset_us)) in
                        wanted.iter().zip(limits)
                    {
                        let config = &self.limits[*index];
                        admission.headers.merge(
                            config.unit,
                            Figures {
                                limit: policy.capacity(),
                                remaining,
                                reset: Duration::from_micros(reset_us),
                            },
                        );
                        if config.unit != Unit::Requests {
                            admission.pending.charges.push(Charge {
                                limit: *index,
                                policy: *policy,
                                counter: counter.to_string(),
                                units: *units,
                                at: now_us,
                            });
                        }
                    }
                    return Ok(());
                }
                Ok(Ok(Decision::Refused {
                    index,
                    retry_after_us,
                })) => {
                    let (limit, units) = wanted
                        .get(index)
                        .map_or((0, 0), |(limit, _, units, _)| (*limit, *units));
                    return Err(Refusal::Limited {
                        limit,
                        retry_after: retry_after_us.map(Duration::from_micros),
                        units,
                    });
                }
                Ok(Err(error)) => self.store_failed(now, &error.to_string()),
                Err(_) => self.store_failed(now, "timed out"),
            }
            return self.unreachable(wanted, now, admission);
        }
        self.acquire_in_memory(wanted, now, admission)
    }

    /// Redis cannot be asked: refuse (fail closed) or count in memory (fail open).
    fn unreachable(
        &self,
        wanted: &[Wanted<'_>],
        now: Nanos,
        admission: &mut Admission,
    ) -> Result<(), Refusal> {
        match self.fail_mode {
            FailMode::Closed => Err(Refusal::StoreUnavailable),
            FailMode::Open => self.acquire_in_memory(wanted, now, admission),
        }
    }

    /// Charges every counter in memory, or none.
    fn acquire_in_memory(
        &self,
        wanted: &[Wanted<'_>],
        now: Nanos,
        admission: &mut Admission,
    ) -> Result<(), Refusal> {
        admission.pending.redis = false;
        let mut headers = RateHeaders::default();
        for (position, (index, counter, units, policy)) in wanted.iter().enumerate() {
            match self.memory.acquire(*index, policy, counter, now, *units) {
                Outcome::Admitted { remaining, reset } => {
                    headers.merge(
                        self.limits[*index].unit,
                        Figures {
                            limit: policy.capacity(),
                            remaining,
                            reset: Duration::from_nanos(reset),
                        },
                    );
                }
                Outcome::Refused { retry_after, .. } => {
                    for (index, counter, units, policy) in &wanted[..position] {
                        self.memory
                            .release(*index, policy, counter, now, now, *units);
                    }
                    return Err(Refusal::Limited {
                        limit: *index,
                        retry_after: retry_after.map(Duration::from_nanos),
                        units: *units,
                    });
                }
            }
        }
        admission.headers = headers;
        admission.pending.charges = wanted
            .iter()
            .filter(|(index, ..)| self.limits[*index].unit != Unit::Requests)
            .map(|(index, counter, units, policy)| Charge {
                limit: *index,
                policy: *policy,
                counter: counter.to_string(),
                units: *units,
                at: now,
            })
            .collect();
        Ok(())
    }

    fn checks(&self, wanted: &[Wanted<'_>]) -> Vec<Check> {
        wanted
            .iter()
            .map(|(index, counter, units, policy)| self.check(*index, counter, *units, *policy))
            .collect()
    }

    fn check(&self, index: usize, counter: &str, units: u64, policy: Policy) -> Check {
        let config = &self.limits[index];
        Check {
            key: format!(
                "switchyard:rl:{}:{}:{counter}",
                config.name,
                RedisStore::kind(&policy)
            ),
            policy,
            units,
            weighted: config.unit == Unit::Tokens,
        }
    }

    fn store_failed(&self, now: Nanos, error: &str) {
        self.redis_down_until
            .store(now.saturating_add(nanos(STORE_BACKOFF)), Ordering::Relaxed);
        self.count_store_error();
        let last = self.logged_at.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= nanos(STORE_BACKOFF) {
            self.logged_at.store(now.max(1), Ordering::Relaxed);
            tracing::warn!(
                error,
                mode = self.fail_mode.as_str(),
                "the rate-limit store (Redis) is unreachable; applying the configured fail mode"
            );
        }
    }

    fn count_store_error(&self) {
        self.metrics
            .store_errors
            .get_or_create(&ModeLabels {
                mode: self.fail_mode.as_str(),
            })
            .inc();
    }

    fn join_queue(&self, limit: usize, key: &str) -> Option<QueueSlot<'_>> {
        let config = &self.limits[limit];
        let per_key = (config.max_queued / 4).max(1);
        let mut by_key = lock(&self.queued_by_key);
        let entry = (limit, key.to_owned());
        if by_key.get(&entry).is_some_and(|mine| *mine >= per_key) {
            return None;
        }
        let total = &self.queued[limit];
        if total.fetch_add(1, Ordering::AcqRel) >= config.max_queued {
            total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Only keys with a request waiting have an entry (the slot's drop removes it at 0).
        *by_key.entry(entry).or_insert(0) += 1;
        self.metrics
            .queued
            .get_or_create(&LimitLabels {
                limit: config.name.clone(),
            })
            .inc();
        Some(QueueSlot {
            limiter: self,
            limit,
            key: key.to_owned(),
        })
    }

    /// Settles an admission: token refunds or extra charges, ends of requests in flight.
    fn settle(&self, pending: &mut Pending, used_tokens: Option<u64>) {
        if pending.shed_slot {
            pending.shed_slot = false;
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        let charges = std::mem::take(&mut pending.charges);
        let deltas: Vec<(Charge, i64)> = charges
            .into_iter()
            .filter_map(|charge| {
                let delta = match self.limits[charge.limit].unit {
                    Unit::Requests => return None,
                    Unit::Concurrent => -1,
                    Unit::Tokens => {
                        let used = used_tokens?;
                        i64::try_from(used).unwrap_or(i64::MAX)
                            - i64::try_from(charge.units).unwrap_or(i64::MAX)
                    }
                };
                (delta != 0).then_some((charge, delta))
            })
            .collect();
        if deltas.is_empty() {
            return;
        }
        if pending.redis {
            let nonce = std::mem::take(&mut pending.nonce);
            for (charge, delta) in deltas {
                let settlement = Settlement {
                    check: self.check(charge.limit, &charge.counter, charge.units, charge.policy),
                    delta,
                    at: charge.at,
                    nonce: nonce.clone(),
                };
                let queued = match &self.settlements {
                    Some(sender) => sender.try_send(settlement).map_err(|error| match error {
                        tokio::sync::mpsc::error::TrySendError::Full(s)
                        | tokio::sync::mpsc::error::TrySendError::Closed(s) => s,
                    }),
                    None => Err(settlement),
                };
                if let Err(settlement) = queued {
                    // The queue is full (Redis is slow): send this one on its own.
                    self.settle_alone(settlement);
                }
            }
            return;
        }
        let now = self.clock.now();
        for (charge, delta) in deltas {
            let policy = &charge.policy;
            if delta < 0 {
                self.memory.release(
                    charge.limit,
                    policy,
                    &charge.counter,
                    now,
                    charge.at,
                    delta.unsigned_abs(),
                );
            } else {
                self.memory.charge(
                    charge.limit,
                    policy,
                    &charge.counter,
                    now,
                    delta.unsigned_abs(),
                );
            }
        }
    }

    /// Sends one settlement in a task of its own (when the batching queue is full).
    fn settle_alone(&self, settlement: Settlement) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let timeout = self.store_timeout.max(Duration::from_secs(1));
        let metrics = self.metrics.clone();
        let mode = self.fail_mode.as_str();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let settled = tokio::time::timeout(timeout, redis.settle(&[settlement])).await;
                if !matches!(settled, Ok(Ok(()))) {
                    settle_failed(&metrics, mode, 1);
                }
            });
        }
    }

    /// Forgets idle in-memory counters; returns how many remain.
    pub fn sweep(&self) -> usize {
        self.memory.sweep(&self.policies, self.clock.now())
    }

    /// The admin view: limits, in-flight and queued counts, and the top offenders.
    pub fn snapshot(&self, top: usize) -> Snapshot {
        let now = self.clock.now();
        let mut offenders: Vec<Offender> = lock(&self.offenders)
            .iter()
            .map(|((key, limit, counter), refusals)| Offender {
                key: key.clone(),
                limit: self.limits[*limit].name.clone(),
                scope: self.limits[*limit].scope.as_str(),
                counter: counter.clone(),
                refusals: *refusals,
                // A key's own limit is counted with the key's amount, not known here.
                remaining: (*limit < self.configured)
                    .then(|| {
                        self.memory
                            .peek(*limit, &self.policies[*limit], counter, now)
                    })
                    .flatten()
                    .map(|(remaining, _)| remaining),
            })
            .collect();
        offenders.sort_by(|a, b| b.refusals.cmp(&a.refusals).then(a.key.cmp(&b.key)));
        offenders.truncate(top);
        Snapshot {
            store: if self.redis.is_some() {
                "redis"
            } else {
                "memory"
            },
            on_store_error: self.fail_mode.as_str(),
            store_reachable: self
                .redis
                .as_ref()
                .map(|_| now >= self.redis_down_until.load(Ordering::Relaxed)),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight,
            limits: self.limits[..self.configured]
                .iter()
                .zip(&self.queued)
                .map(|(limit, queued)| LimitView {
                    name: limit.name.clone(),
                    scope: limit.scope.as_str(),
                    unit: limit.unit.as_str(),
                    amount: limit.amount,
                    per_seconds: limit.period.as_secs_f64(),
                    capacity: limit.policy.capacity(),
                    algorithm: algorithm_name(&limit.policy),
                    only: limit.only.clone(),
                    queue_ms: u64::try_from(limit.queue.as_millis()).unwrap_or(u64::MAX),
                    queued_now: queued.load(Ordering::Relaxed),
                })
                .collect(),
            top_offenders: offenders,
        }
    }

    /// The answer for a refusal.
    pub fn error(&self, refusal: &Refusal) -> GatewayError {
        match refusal {
            Refusal::Limited {
                limit,
                retry_after,
                units,
            } => {
                let config = &self.limits[*limit];
                let own = *limit >= self.configured;
                let what = match config.unit {
                    // A virtual key's own limit: its amount is the key's, not the config's.
                    Unit::Requests if own => "this key's own requests per minute".to_owned(),
                    Unit::Tokens if own => "this key's own tokens per minute".to_owned(),
                    Unit::Requests => format!(
                        "{} requests per {}",
                        config.amount,
                        humantime::format_duration(config.period)
                    ),
                    Unit::Tokens => format!(
                        "{} tokens per {}",
                        config.amount,
                        humantime::format_duration(config.period)
                    ),
                    Unit::Concurrent => format!("{} requests in flight", config.amount),
                };
                let message = match (retry_after, config.unit) {
                    (Some(wait), _) => format!(
                        "Rate limit reached on `{}` ({} scope): {what}. Try again in {}.",
                        config.name,
                        config.scope,
                        reset_text(nanos(*wait))
                    ),
                    (None, Unit::Concurrent) => format!(
                        "Rate limit reached on `{}` ({} scope): {what}. Try again when one finishes.",
                        config.name, config.scope
                    ),
                    (None, _) if own => format!(
                        "Request too large for `{}`: it needs {units} {} at once, more than {what} allows. Lower max_tokens or the prompt.",
                        config.name,
                        config.unit.as_str(),
                    ),
                    (None, _) => format!(
                        "Request too large for `{}` ({} scope): it needs {units} {} but the limit allows at most {} at once ({what}). Lower max_tokens or the prompt.",
                        config.name,
                        config.scope,
                        config.unit.as_str(),
                        config.policy.capacity()
                    ),
                };
                GatewayError::new(ErrorKind::RateLimited, Origin::Client, message)
                    .with_code("rate_limit_exceeded")
                    .with_retryable(retry_after.is_some())
                    .with_retry_after(*retry_after)
            }
            Refusal::Shed => GatewayError::new(
                ErrorKind::Unavailable,
                Origin::Gateway,
                "The gateway is overloaded and shed this request; try again shortly",
            )
            .with_code("overloaded")
            .with_retry_after(Some(Duration::from_secs(1))),
            Refusal::StoreUnavailable => GatewayError::new(
                ErrorKind::Unavailable,
                Origin::Gateway,
                "Rate limits cannot be checked right now (the shared store is unreachable and the gateway is set to fail closed)",
            )
            .with_code("rate_limit_store_unavailable")
            .with_retry_after(Some(STORE_BACKOFF)),
        }
    }
}

/// Sends queued settlements to Redis, as many per script call as are waiting (up to
/// [`SETTLE_BATCH`]): under load, one round trip settles many requests. Ends when the
/// limiter is dropped.
async fn send_settlements(
    redis: RedisStore,
    mut receiver: tokio::sync::mpsc::Receiver<Settlement>,
    timeout: Duration,
    metrics: RateLimitMetrics,
    mode: &'static str,
) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while receiver.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let settled = tokio::time::timeout(timeout, redis.settle(&batch)).await;
        if !matches!(settled, Ok(Ok(()))) {
            settle_failed(&metrics, mode, batch.len());
        }
        batch.clear();
    }
}

/// Counts and logs settlements Redis did not take: concurrency leases then expire on their
/// own, token adjustments are lost (the reservation stands).
fn settle_failed(metrics: &RateLimitMetrics, mode: &'static str, count: usize) {
    metrics
        .store_errors
        .get_or_create(&ModeLabels { mode })
        .inc();
    tracing::warn!(
        count,
        "could not settle rate-limit charges in Redis; leases expire on their own, token refunds are lost"
    );
}

fn algorithm_name(policy: &Policy) -> &'static str {
    match policy {
        Policy::TokenBucket { .. } => "token_bucket",
        Policy::SlidingWindow { .. } => "sliding_window",
        Policy::WindowLog { .. } => "window_log",
        Policy::Concurrency { .. } => "concurrency",
    }
}

/// The counter of `limit` that `subject` is charged to; `None` when the limit does not apply.
/// Borrowed from the subject where it can be: admission allocates only for IP counters.
fn counter<'s>(limit: &LimitConfig, subject: &'s Subject) -> Option<Cow<'s, str>> {
    if !limit.applies_to(&subject.model) {
        return None;
    }
    let value: Cow<'s, str> = match limit.scope {
        Scope::Key => Cow::Borrowed(&subject.key),
        Scope::User => Cow::Borrowed(subject.user.as_deref()?),
        Scope::Team => Cow::Borrowed(subject.team.as_deref()?),
        Scope::Ip => Cow::Owned(subject.ip?.to_string()),
        Scope::Model => Cow::Borrowed(&subject.model),
        Scope::Global => Cow::Borrowed("*"),
        // Provider limits are charged per attempt, not at admission.
        Scope::Provider | Scope::Target => return None,
    };
    if value.len() <= MAX_COUNTER_LEN {
        return Some(value);
    }
    let mut end = MAX_COUNTER_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Some(match value {
        Cow::Borrowed(text) => Cow::Borrowed(&text[..end]),
        Cow::Owned(mut text) => {
            text.truncate(end);
            Cow::Owned(text)
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A place in a limit's queue, given back when dropped.
struct QueueSlot<'a> {
    limiter: &'a RateLimiter,
    limit: usize,
    key: String,
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.limiter.queued[self.limit].fetch_sub(1, Ordering::AcqRel);
        let mut by_key = lock(&self.limiter.queued_by_key);
        let entry = (self.limit, std::mem::take(&mut self.key));
        if let Some(count) = by_key.get_mut(&entry) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_key.remove(&entry);
            }
        }
    }
}

/// An admitted request's charges. Settle it with the actual token usage when the response
/// ends; dropped unsettled, the reservation stands as the usage (and in-flight slots are
/// given back).
pub struct Admission {
    limiter: Arc<RateLimiter>,
    pending: Pending,
    settled: bool,
    headers: RateHeaders,
}

/// What an admission holds until it is settled.
#[derive(Debug, Default)]
struct Pending {
    /// Charges to settle (tokens, concurrency).
    charges: Vec<Charge>,
    /// Charged in Redis (else in memory).
    redis: bool,
    /// This admission's id in Redis (window-log members, concurrency leases).
    nonce: String,
    /// Holds a load-shedding slot.
    shed_slot: bool,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The `x-ratelimit-*` figures after this admission.
    pub fn headers(&self) -> RateHeaders {
        self.headers
    }

    /// Settles against `used_tokens` (input plus output) actually used.
    pub fn settle(mut self, used_tokens: u64) {
        self.settled = true;
        self.limiter.settle(&mut self.pending, Some(used_tokens));
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.limiter.settle(&mut self.pending, None);
        }
    }
}

/// `GET /admin/ratelimits`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// `memory` or `redis`.
    pub store: &'static str,
    /// The fail mode.
    pub on_store_error: &'static str,
    /// Whether Redis answered lately (`None` without Redis).
    pub store_reachable: Option<bool>,
    /// Requests in flight (counted only with shedding on).
    pub in_flight: u64,
    /// The shedding cap.
    pub max_in_flight: Option<u64>,
    /// The limits.
    pub limits: Vec<LimitView>,
    /// Most refused first.
    pub top_offenders: Vec<Offender>,
}

/// One configured limit, as the admin view shows it.
#[derive(Debug, Serialize)]
pub struct LimitView {
    /// Name.
    pub name: String,
    /// Scope.
    pub scope: &'static str,
    /// Unit.
    pub unit: &'static str,
    /// Amount per period.
    pub amount: u64,
    /// Period in seconds (0 for concurrency).
    pub per_seconds: f64,
    /// Most at once.
    pub capacity: u64,
    /// Algorithm.
    pub algorithm: &'static str,
    /// Routes or models it is limited to.
    pub only: Vec<String>,
    /// Longest queue wait, ms.
    pub queue_ms: u64,
    /// Requests waiting now.
    pub queued_now: u32,
}

/// A counter that was refused.
#[derive(Debug, Serialize)]
pub struct Offender {
    /// The principal.
    pub key: String,
    /// The limit.
    pub limit: String,
    /// Its scope.
    pub scope: &'static str,
    /// The counter (key, user, IP, model or `*`).
    pub counter: String,
    /// Refusals since start.
    pub refusals: u64,
    /// Units left now in this instance's memory (`None` when kept in Redis or forgotten).
    pub remaining: Option<u64>,
}

#[cfg(test)]
mod tests;
