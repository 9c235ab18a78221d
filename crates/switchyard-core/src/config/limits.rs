//! `[rate_limits]`: validated rate limits and load shedding.

use std::sync::Arc;
use std::time::Duration;

use super::raw::{RawLimit, RawRateLimits};
use super::{ConfigError, Provider};
use crate::clock::nanos;
use crate::ratelimit::{Algorithm, Policy, Scope, Unit};

/// Names the gateway keeps for virtual keys' own `rpm` and `tpm` limits.
pub const RESERVED_NAMES: [&str; 2] = ["key-rpm", "key-tpm"];

/// Most entries a window log may hold per counter (its memory is one entry per admission).
pub const MAX_WINDOW_LOG: u64 = 100_000;

/// What to do when the shared store (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Keep serving, counting in this instance's memory meanwhile (the default).
    #[default]
    Open,
    /// Refuse with 503 until the store is back.
    Closed,
}

impl FailMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Open => "fail_open",
            FailMode::Closed => "fail_closed",
        }
    }
}

/// Validated `[rate_limits]`.
#[derive(Debug, Clone, Default)]
pub struct RateLimitConfig {
    /// The limits, in config order.
    pub limits: Vec<LimitConfig>,
    /// Behaviour when Redis is unreachable.
    pub on_store_error: FailMode,
    /// Longest wait for Redis per check.
    pub store_timeout: Duration,
    /// Header naming the end user when the body has no `user` field (lower case).
    pub user_header: String,
    /// Take the client IP from the last `X-Forwarded-For` entry.
    pub trust_forwarded_for: bool,
    /// Load shedding cap on requests in flight; `None` when off.
    pub max_in_flight: Option<u64>,
    /// Output tokens reserved when a request sets no `max_tokens`.
    pub default_max_tokens: u64,
}

impl RateLimitConfig {
    /// Whether any request-time limit or shedding is configured.
    pub fn is_active(&self) -> bool {
        !self.limits.is_empty() || self.max_in_flight.is_some()
    }
}

/// One validated limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// Unique name.
    pub name: String,
    /// Which counter a request is charged to.
    pub scope: Scope,
    /// What it counts.
    pub unit: Unit,
    /// How it counts.
    pub policy: Policy,
    /// The configured amount (requests, tokens or in flight) per `period`.
    pub amount: u64,
    /// The period (zero for concurrency).
    pub period: Duration,
    /// Only these routes/models (or providers, for `provider` scope); empty: all.
    pub only: Vec<String>,
    /// Longest wait for room before refusing; zero refuses at once.
    pub queue: Duration,
    /// Most requests waiting on this limit.
    pub max_queued: u32,
}

impl LimitConfig {
    /// Whether the limit applies to a request for `name` (a route or model; a provider for
    /// `provider` scope).
    pub fn applies_to(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|only| only == name)
    }

    /// Whether a per-call limit applies to a call to `model` at `provider`.
    pub fn applies_to_call(&self, provider: &str, model: &str) -> bool {
        match self.scope {
            Scope::Provider => self.applies_to(provider),
            Scope::Target => {
                self.only.is_empty()
                    || self.only.iter().any(|only| {
                        only == provider
                            || only
                                .split_once('/')
                                .is_some_and(|(p, m)| p == provider && m == model)
                    })
            }
            _ => false,
        }
    }
}

pub(super) fn validate(
    raw: &RawRateLimits,
    providers: &[Arc<Provider>],
) -> Result<RateLimitConfig, ConfigError> {
    let on_store_error = match raw.on_store_error.as_deref() {
        None | Some("fail_open") => FailMode::Open,
        Some("fail_closed") => FailMode::Closed,
        Some(other) => {
            return Err(ConfigError::new(
                "rate_limits.on_store_error",
                format!("unknown mode `{other}` (expected fail_open or fail_closed)"),
            ));
        }
    };
    let store_timeout = raw.store_timeout.unwrap_or(Duration::from_millis(100));
    if store_timeout.is_zero() || store_timeout > Duration::from_secs(10) {
        return Err(ConfigError::new(
            "rate_limits.store_timeout",
            "must be more than 0 and at most 10s",
        ));
    }
    let user_header = raw
        .user_header
        .clone()
        .unwrap_or_else(|| "x-switchyard-user".to_owned())
        .to_ascii_lowercase();
    if http::HeaderName::from_bytes(user_header.as_bytes()).is_err() {
        return Err(ConfigError::new(
            "rate_limits.user_header",
            format!("`{user_header}` is not a valid header name"),
        ));
    }
    if raw.max_in_flight == Some(0) {
        return Err(ConfigError::new(
            "rate_limits.max_in_flight",
            "must be at least 1 (leave it out to turn shedding off)",
        ));
    }
    let mut limits: Vec<LimitConfig> = Vec::with_capacity(raw.limits.len());
    for (index, limit) in raw.limits.iter().enumerate() {
        let key = format!("rate_limits.limits[{index}]");
        let limit = validate_limit(limit, &key, providers)?;
        if RESERVED_NAMES.contains(&limit.name.as_str()) {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!(
                    "`{}` is the name of virtual keys' own limits; choose another",
                    limit.name
                ),
            ));
        }
        if limits.iter().any(|existing| existing.name == limit.name) {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!(
                    "duplicate limit name `{}`; give each limit its own `name`",
                    limit.name
                ),
            ));
        }
        limits.push(limit);
    }
    Ok(RateLimitConfig {
        limits,
        on_store_error,
        store_timeout,
        user_header,
        trust_forwarded_for: raw.trust_forwarded_for.unwrap_or(false),
        max_in_flight: raw.max_in_flight,
        default_max_tokens: raw.default_max_tokens.unwrap_or(1024),
    })
}

fn validate_limit(
    raw: &RawLimit,
    key: &str,
    providers: &[Arc<Provider>],
) -> Result<LimitConfig, ConfigError> {
    let scope: Scope = raw
        .scope
        .parse()
        .map_err(|message| ConfigError::new(format!("{key}.scope"), message))?;
    let (unit, amount) = match (raw.requests, raw.tokens, raw.concurrent) {
        (Some(n), None, None) => (Unit::Requests, n),
        (None, Some(n), None) => (Unit::Tokens, n),
        (None, None, Some(n)) => (Unit::Concurrent, n),
        _ => {
            return Err(ConfigError::new(
                key,
                "set exactly one of `requests`, `tokens` or `concurrent`",
            ));
        }
    };
    if amount == 0 {
        return Err(ConfigError::new(
            format!("{key}.{}", unit.as_str()),
            "must be at least 1",
        ));
    }
    let algorithm: Algorithm = match &raw.algorithm {
        Some(name) => name
            .parse()
            .map_err(|message| ConfigError::new(format!("{key}.algorithm"), message))?,
        None => Algorithm::default(),
    };
    let (policy, period) = if unit == Unit::Concurrent {
        if raw.per.is_some() || raw.algorithm.is_some() || raw.burst.is_some() {
            return Err(ConfigError::new(
                key,
                "`concurrent` counts requests in flight: it takes no `per`, `algorithm` or `burst`",
            ));
        }
        (Policy::Concurrency { limit: amount }, Duration::ZERO)
    } else {
        let Some(per) = raw.per else {
            return Err(ConfigError::new(
                format!("{key}.per"),
                "is required with `requests` or `tokens` (for example \"1m\")",
            ));
        };
        if per < Duration::from_millis(1) || per > Duration::from_secs(31 * 86_400) {
            return Err(ConfigError::new(
                format!("{key}.per"),
                "must be between 1ms and 31d",
            ));
        }
        if raw.burst.is_some() && algorithm != Algorithm::TokenBucket {
            return Err(ConfigError::new(
                format!("{key}.burst"),
                "only the token bucket has a burst",
            ));
        }
        if raw.burst == Some(0) {
            return Err(ConfigError::new(
                format!("{key}.burst"),
                "must be at least 1",
            ));
        }
        if algorithm == Algorithm::WindowLog && amount > MAX_WINDOW_LOG {
            return Err(ConfigError::new(
                key,
                format!(
                    "a window log keeps one entry per admission; use it for at most {MAX_WINDOW_LOG} per window (sliding_window or token_bucket scale to any amount)"
                ),
            ));
        }
        let Some(policy) = Policy::rate(algorithm, amount, nanos(per), raw.burst) else {
            return Err(ConfigError::new(
                key,
                "the amount and period must be positive",
            ));
        };
        (policy, per)
    };
    if scope.is_per_call() {
        for (index, name) in raw.only.iter().enumerate() {
            // A target limit may name a provider (all its targets) or one `provider/model`.
            let provider_name = match scope {
                Scope::Target => name.split_once('/').map_or(name.as_str(), |(p, _)| p),
                _ => name.as_str(),
            };
            if !providers
                .iter()
                .any(|provider| provider.name == provider_name)
            {
                return Err(ConfigError::new(
                    format!("{key}.only[{index}]"),
                    format!("unknown provider `{provider_name}`"),
                ));
            }
        }
        if unit == Unit::Concurrent {
            return Err(ConfigError::new(
                key,
                "per-provider concurrency is a target's `max_concurrency`",
            ));
        }
    }
    let queue = raw.queue.unwrap_or(Duration::ZERO);
    if queue > Duration::from_secs(60) {
        return Err(ConfigError::new(
            format!("{key}.queue"),
            "must be at most 60s (requests hold a connection while they wait)",
        ));
    }
    if scope.is_per_call() && !queue.is_zero() {
        return Err(ConfigError::new(
            format!("{key}.queue"),
            "a provider limit does not queue: the request moves on to the next target",
        ));
    }
    let max_queued = raw.max_queued.unwrap_or(64);
    if max_queued == 0 {
        return Err(ConfigError::new(
            format!("{key}.max_queued"),
            "must be at least 1",
        ));
    }
    let name = raw
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", scope.as_str(), unit.as_str()));
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            format!("{key}.name"),
            "must be non-empty visible ASCII",
        ));
    }
    Ok(LimitConfig {
        name,
        scope,
        unit,
        policy,
        amount,
        period,
        only: raw.only.clone(),
        queue,
        max_queued,
    })
}
