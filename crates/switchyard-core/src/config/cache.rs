//! `[cache]` and a route's `cache` table: the validated response cache settings.

use std::time::Duration;

use super::ConfigError;
use super::raw::{RawCache, RawRouteCache};

/// Longest TTL accepted (30 days): an answer older than that is not a cache, it is a store.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who may read a cached answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheScope {
    /// Only the key that stored it (the default): one customer never reads another's answer.
    #[default]
    Key,
    /// Every key of the same team (keys without a team fall back to their own scope).
    Team,
    /// Every caller.
    Global,
}

impl CacheScope {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheScope::Key => "key",
            CacheScope::Team => "team",
            CacheScope::Global => "global",
        }
    }
}

/// Whether and how long a route's answers are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Answers are looked up and stored.
    pub enabled: bool,
    /// How long an answer is served.
    pub ttl: Duration,
    /// Requests with `temperature` above 0 are cached too.
    pub sampled: bool,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            enabled: false,
            ttl: Duration::from_secs(3600),
            sampled: false,
        }
    }
}

/// Validated `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The policy of requests that match no configured route with its own `cache` table.
    pub default: CachePolicy,
    /// Whether any route (or the default) caches: when none does, the cache is not built.
    pub any_enabled: bool,
    /// Memory for cached answers in this instance.
    pub max_bytes: u64,
    /// Largest answer stored.
    pub max_entry_bytes: u64,
    /// Who may read an answer.
    pub scope: CacheScope,
    /// Share answers through Redis (only when `storage.redis_url` is set).
    pub redis: bool,
    /// Longest wait for one Redis lookup.
    pub redis_timeout: Duration,
    /// Longest wait of identical requests for the first one's answer.
    pub lock_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            default: CachePolicy::default(),
            any_enabled: false,
            max_bytes: 50 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            scope: CacheScope::Key,
            redis: false,
            redis_timeout: Duration::from_millis(50),
            lock_timeout: Duration::from_secs(30),
        }
    }
}

fn check_ttl(key: String, ttl: Duration) -> Result<Duration, ConfigError> {
    if ttl < Duration::from_secs(1) {
        return Err(ConfigError::new(key, "must be at least 1s"));
    }
    if ttl > MAX_TTL {
        return Err(ConfigError::new(key, "must be at most 30 days"));
    }
    Ok(ttl)
}

/// Validates `[cache]`. `redis_configured` says whether `storage.redis_url` is set.
pub fn validate(raw: &RawCache, redis_configured: bool) -> Result<CacheConfig, ConfigError> {
    let defaults = CacheConfig::default();
    let default = CachePolicy {
        enabled: raw.enabled.unwrap_or(false),
        ttl: match raw.ttl {
            Some(ttl) => check_ttl("cache.ttl".to_owned(), ttl)?,
            None => defaults.default.ttl,
        },
        sampled: raw.sampled.unwrap_or(false),
    };
    let max_mb = raw.max_mb.unwrap_or(50);
    if max_mb == 0 || max_mb > 1024 * 1024 {
        return Err(ConfigError::new(
            "cache.max_mb",
            "must be between 1 and 1048576 (MB of memory for cached answers)",
        ));
    }
    let max_bytes = max_mb * 1024 * 1024;
    let max_entry_bytes = raw.max_entry_kb.unwrap_or(1024).saturating_mul(1024);
    if max_entry_bytes == 0 || max_entry_bytes > max_bytes {
        return Err(ConfigError::new(
            "cache.max_entry_kb",
            format!("must be between 1 and the cache's size ({max_mb} MB)"),
        ));
    }
    let scope = match raw.scope.as_deref() {
        None | Some("key") => CacheScope::Key,
        Some("team") => CacheScope::Team,
        Some("global") => CacheScope::Global,
        Some(other) => {
            return Err(ConfigError::new(
                "cache.scope",
                format!("unknown scope `{other}` (expected key, team or global)"),
            ));
        }
    };
    let redis = match raw.redis {
        Some(true) if !redis_configured => {
            return Err(ConfigError::new(
                "cache.redis",
                "is true but no Redis is configured (set storage.redis_url or SWITCHYARD_REDIS_URL)",
            ));
        }
        Some(redis) => redis,
        None => redis_configured,
    };
    let positive = |key: &str, value: Option<Duration>, default: Duration| match value {
        Some(value) if value.is_zero() => Err(ConfigError::new(key, "must be above 0")),
        Some(value) => Ok(value),
        None => Ok(default),
    };
    let redis_timeout = positive(
        "cache.redis_timeout",
        raw.redis_timeout,
        defaults.redis_timeout,
    )?;
    if redis_timeout > Duration::from_secs(10) {
        return Err(ConfigError::new(
            "cache.redis_timeout",
            "must be at most 10s",
        ));
    }
    Ok(CacheConfig {
        default,
        any_enabled: default.enabled,
        max_bytes,
        max_entry_bytes,
        scope,
        redis,
        redis_timeout,
        lock_timeout: positive(
            "cache.lock_timeout",
            raw.lock_timeout,
            defaults.lock_timeout,
        )?,
    })
}

/// A route's policy: its own `cache` table over the `[cache]` defaults. `key` names the
/// table for errors (`routes[2].cache`).
pub fn route_policy(
    raw: Option<&RawRouteCache>,
    default: CachePolicy,
    key: &str,
) -> Result<CachePolicy, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    let ttl = match raw.ttl {
        Some(ttl) => check_ttl(format!("{key}.ttl"), ttl)?,
        None => default.ttl,
    };
    Ok(CachePolicy {
        enabled: raw.enabled.unwrap_or(default.enabled),
        ttl,
        sampled: raw.sampled.unwrap_or(default.sampled),
    })
}
