//! Configuration, loaded in two steps: [`RawConfig`] (serde, unknown keys rejected) becomes a
//! validated [`Config`] through the pure [`validate`] pass, which resolves secrets through an
//! injected [`Env`] and checks every cross-reference. Error messages name the offending key.
//!
//! With no config file, [`discover`] builds the raw config from provider API keys found in the
//! environment, and the same validation runs on it.

pub mod alerts;
pub mod budgets;
pub mod cache;
pub mod limits;
mod presets;
mod raw;
pub mod telegram;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use alerts::{AlertConfig, AlertRule, NotifierConfig, NotifierKind};
pub use budgets::{BudgetAction, BudgetConfig, BudgetFailMode, BudgetRule};
pub use cache::{CacheConfig, CachePolicy, CacheScope};
pub use limits::{FailMode, LimitConfig, RateLimitConfig};
pub use presets::{PRESETS, Preset, kind_names, preset};
pub use raw::{
    RawAlertRule, RawAlerts, RawAnalytics, RawBreaker, RawBudget, RawBudgets, RawCache, RawChatId,
    RawClassifier, RawConfig, RawHealthCheck, RawLimit, RawNotifier, RawObjective, RawPrice,
    RawProvider, RawRateLimits, RawRoute, RawRouteCache, RawRouting, RawServer, RawStorage,
    RawTarget, RawTelemetry, RawTimeouts, RawUpstream,
};

use crate::health::{Backoff, BreakerConfig};
use crate::provider::WireFormat;
use crate::strategy::Strategy;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default master key variable.
pub const DEFAULT_MASTER_KEY_ENV: &str = "SWITCHYARD_MASTER_KEY";
/// Default Azure OpenAI API version.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";
/// Default `service.name` of exported spans.
pub const DEFAULT_SERVICE_NAME: &str = "switchyard";
/// The standard OpenTelemetry variable naming the collector, read when
/// `telemetry.otlp_endpoint` is unset.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The path of the OTLP/HTTP traces endpoint under the collector's base URL.
pub const OTLP_TRACES_PATH: &str = "/v1/traces";

/// Reads environment variables. Injected so validation stays pure and testable.
pub trait Env {
    /// The variable's value, if set and non-empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// A fixed set of variables, for tests and for the demo.
impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|value| !value.is_empty()).cloned()
    }
}

/// A secret value. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value, for sending it where it belongs. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The offending key, e.g. `routes[0].targets[1].provider`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The validated configuration, built once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listener, auth and limits.
    pub server: ServerConfig,
    /// Transport timeouts.
    pub upstream: UpstreamConfig,
    /// Providers, in config order (the order bare model names are matched in).
    pub providers: Vec<Arc<Provider>>,
    /// Named routes.
    pub routes: Vec<Route>,
    /// Retries, backoff, retry budget and breakers.
    pub routing: RoutingConfig,
    /// Where state is kept.
    pub storage: StorageConfig,
    /// Analytics flushing and retention.
    pub analytics: AnalyticsConfig,
    /// Trace export; `None` when it is off (the default).
    pub telemetry: Option<TelemetryConfig>,
    /// Rate limits and load shedding.
    pub rate_limits: RateLimitConfig,
    /// The response cache.
    pub cache: CacheConfig,
    /// What each provider's models cost: the catalog, `[[prices]]` and targets' prices.
    pub pricing: crate::pricing::Pricing,
    /// Spending budgets.
    pub budgets: BudgetConfig,
    /// Alert rules and notifiers.
    pub alerts: AlertConfig,
    /// The Telegram bot; `None` when it is off.
    pub telegram: Option<telegram::TelegramConfig>,
}

/// The environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "SWITCHYARD_DATA_DIR";

/// The environment variable holding the Postgres URL.
pub const POSTGRES_URL_ENV: &str = "SWITCHYARD_POSTGRES_URL";

/// The environment variable holding the Redis URL.
pub const REDIS_URL_ENV: &str = "SWITCHYARD_REDIS_URL";

/// The data directory used when neither the config nor the environment names one.
pub const DEFAULT_DATA_DIR: &str = "switchyard-data";

/// Validated `[storage]`.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The SQLite directory; `None` keeps the embedded stores in memory.
    pub data_dir: Option<std::path::PathBuf>,
    /// When set, analytics go to Postgres.
    pub postgres_url: Option<Secret>,
    /// When set, rate-limit counters are shared through Redis.
    pub redis_url: Option<Secret>,
}

/// Validated `[analytics]`.
#[derive(Debug, Clone)]
pub struct AnalyticsConfig {
    /// Store write interval.
    pub flush_interval: Duration,
    /// Keep the raw request log.
    pub request_log: bool,
    /// Request log age limit.
    pub request_log_max_age: Duration,
    /// Request log size limit, bytes.
    pub request_log_max_bytes: u64,
    /// Most (route, provider, model) series in the Prometheus metrics. Route and model names
    /// come from clients, so past this many the rest share one overflow series per provider.
    pub metrics_max_series: usize,
}

/// Validated `[telemetry]`, present only when trace export is on.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Where spans are posted as OTLP/HTTP protobuf: the collector's `/v1/traces` URL.
    pub traces_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Fraction of new traces sampled (a remote parent's decision is followed).
    pub sample_ratio: f64,
}

/// Validated `[routing]`.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Most attempts for one request, across targets and fallback routes.
    pub max_attempts: u32,
    /// Retries may be at most this fraction of requests.
    pub retry_budget: f64,
    /// Retries always allowed per second.
    pub min_retries_per_second: u32,
    /// Backoff before retrying a target that already failed this request.
    pub backoff: Backoff,
    /// Circuit breaker settings for every target.
    pub breaker: BreakerConfig,
}

/// Timeouts of one provider or target, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Request sent → response headers.
    pub first_byte: Duration,
    /// Longest silence between body chunks.
    pub idle: Duration,
    /// Whole attempt, body included (`None`: only the request deadline).
    pub total: Option<Duration>,
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between probes.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Probe with a one-token completion to this model, instead of `GET /models`.
    pub model: Option<String>,
}

/// A target's price, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per million input tokens.
    pub input_per_million: f64,
    /// Per million output tokens.
    pub output_per_million: f64,
}

/// Validated `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The configured listen address, if any (`--listen` wins over it).
    pub listen: Option<SocketAddr>,
    /// The key clients must present; `None` means no client auth (loopback only).
    pub master_key: Option<Secret>,
    /// Request body limit in bytes.
    pub max_body_bytes: usize,
    /// Time allowed to read request headers.
    pub header_read_timeout: Duration,
    /// Deadline for a whole request.
    pub request_timeout: Duration,
    /// Drain time after SIGTERM.
    pub shutdown_grace: Duration,
    /// On SIGTERM, keep accepting this long with readiness failing.
    pub drain_delay: Duration,
}

/// Validated `[upstream]`.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamConfig {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Time to the provider's response headers.
    pub first_byte_timeout: Duration,
    /// Longest silence between body chunks.
    pub idle_timeout: Duration,
}

/// A provider the gateway can call.
#[derive(Debug, Clone)]
pub struct Provider {
    /// Unique name.
    pub name: String,
    /// The configured kind (`openai`, `groq`, ...).
    pub kind: String,
    /// How requests are encoded.
    pub wire: WireFormat,
    /// API root without a trailing slash.
    pub base_url: String,
    /// The provider's API key.
    pub api_key: Option<Secret>,
    /// Azure `api-version`.
    pub api_version: String,
    /// Model-name patterns served (`*` wildcard).
    pub models: Vec<String>,
    /// Extra static headers.
    pub headers: Vec<(String, String)>,
    /// Timeouts (the `[upstream]` defaults, overridden by the provider's own).
    pub timeouts: Timeouts,
    /// Active health checks, when configured.
    pub health_check: Option<HealthCheck>,
}

impl Provider {
    /// Whether this provider serves `model` according to its patterns.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|pattern| glob_match(pattern, model))
    }
}

/// A named route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The model name clients ask for.
    pub name: String,
    /// How targets are chosen.
    pub strategy: Strategy,
    /// Routes tried, in order, when every target failed.
    pub fallbacks: Vec<String>,
    /// Targets in config order.
    pub targets: Vec<Target>,
    /// Whether and how long its answers are cached.
    pub cache: CachePolicy,
    /// The latency objective `least-cost` keeps to.
    pub objective: Objective,
    /// Quality tiers (route names, cheapest first); empty for a route with targets.
    pub tiers: Vec<String>,
    /// How a tiered route chooses its tier.
    pub classifier: crate::tiers::Classifier,
}

/// A route's latency objective: targets whose tracked p95 is over it are tried only after
/// those within it (`least-cost`), so a cheaper but slow provider does not take the traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Objective {
    /// Most time to first token at p95, for streams.
    pub ttft_p95: Option<Duration>,
    /// Most total latency at p95, for non-streamed requests.
    pub latency_p95: Option<Duration>,
}

impl Objective {
    /// The bound for a request of this kind, if any.
    pub fn bound(&self, stream: bool) -> Option<Duration> {
        if stream {
            self.ttft_p95
        } else {
            self.latency_p95
        }
    }
}

/// A provider plus the model to ask it for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The provider.
    pub provider: Arc<Provider>,
    /// The upstream model (Azure: deployment).
    pub model: String,
    /// Share of traffic for `weighted`.
    pub weight: u32,
    /// Lower is preferred for `priority`.
    pub priority: u32,
    /// Price for `least-cost`, when configured.
    pub price: Option<Price>,
    /// Most requests in flight; beyond it the target is skipped.
    pub max_concurrency: Option<u32>,
    /// Timeouts for calls to this target.
    pub timeouts: Timeouts,
}

impl Target {
    /// A target with default settings: how bare and `provider/model` names resolve.
    pub fn direct(provider: Arc<Provider>, model: String, position: u32) -> Self {
        let timeouts = provider.timeouts;
        Target {
            provider,
            model,
            weight: 1,
            priority: position,
            price: None,
            max_concurrency: None,
            timeouts,
        }
    }
}

/// Validates a raw config, resolving secrets from `env`.
pub fn validate(raw: &RawConfig, env: &dyn Env) -> Result<Config, ConfigError> {
    let server = validate_server(&raw.server, env)?;
    let upstream = UpstreamConfig {
        connect_timeout: positive(raw.upstream.connect_timeout, 5, "upstream.connect_timeout")?,
        first_byte_timeout: positive(
            raw.upstream.first_byte_timeout,
            120,
            "upstream.first_byte_timeout",
        )?,
        idle_timeout: positive(raw.upstream.idle_timeout, 120, "upstream.idle_timeout")?,
    };

    let routing = validate_routing(&raw.routing)?;
    let telemetry = validate_telemetry(&raw.telemetry, env)?;
    let mut providers: Vec<Arc<Provider>> = Vec::with_capacity(raw.providers.len());
    for (index, provider) in raw.providers.iter().enumerate() {
        let key = format!("providers[{index}]");
        let provider = validate_provider(provider, &key, env, &upstream)?;
        if providers
            .iter()
            .any(|existing| existing.name == provider.name)
        {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!("duplicate provider name `{}`", provider.name),
            ));
        }
        providers.push(Arc::new(provider));
    }

    let storage = validate_storage(&raw.storage, env)?;
    let mut cache_config = cache::validate(&raw.cache, storage.redis_url.is_some())?;
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut route_names = HashSet::new();
    for (index, route) in raw.routes.iter().enumerate() {
        let key = format!("routes[{index}]");
        if route.model.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{key}.model"),
                "must not be empty",
            ));
        }
        if !route_names.insert(route.model.as_str()) {
            return Err(ConfigError::new(
                format!("{key}.model"),
                format!("duplicate route `{}`", route.model),
            ));
        }
        if route.targets.is_empty() && route.tiers.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.targets"),
                "a route needs at least one target (or tiers)",
            ));
        }
        if !route.tiers.is_empty() && !route.targets.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.tiers"),
                "a route has either targets or tiers (the tiers' routes hold the targets)",
            ));
        }
        let mut targets = Vec::with_capacity(route.targets.len());
        for (target_index, target) in route.targets.iter().enumerate() {
            let target_key = format!("{key}.targets[{target_index}]");
            let Some(provider) = providers.iter().find(|p| p.name == target.provider) else {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                return Err(ConfigError::new(
                    format!("{target_key}.provider"),
                    format!(
                        "unknown provider `{}` (configured providers: {})",
                        target.provider,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            };
            targets.push(validate_target(
                target,
                &target_key,
                provider,
                target_index,
            )?);
        }
        let strategy = match &route.strategy {
            Some(strategy) => strategy
                .parse::<Strategy>()
                .map_err(|message| ConfigError::new(format!("{key}.strategy"), message))?,
            None => Strategy::default(),
        };
        let cache = cache::route_policy(
            route.cache.as_ref(),
            cache_config.default,
            &format!("{key}.cache"),
        )?;
        cache_config.any_enabled |= cache.enabled;
        let objective = match &route.objective {
            None => Objective::default(),
            Some(raw) => {
                if raw.ttft_p95.is_none() && raw.latency_p95.is_none() {
                    return Err(ConfigError::new(
                        format!("{key}.objective"),
                        "set ttft_p95, latency_p95 or both",
                    ));
                }
                if [raw.ttft_p95, raw.latency_p95]
                    .into_iter()
                    .flatten()
                    .any(|bound| bound.is_zero())
                {
                    return Err(ConfigError::new(
                        format!("{key}.objective"),
                        "a latency objective must be above zero",
                    ));
                }
                Objective {
                    ttft_p95: raw.ttft_p95,
                    latency_p95: raw.latency_p95,
                }
            }
        };
        let classifier = validate_classifier(route.classifier.as_ref(), &key)?;
        routes.push(Route {
            name: route.model.clone(),
            strategy,
            fallbacks: route.fallbacks.clone(),
            targets,
            cache,
            objective,
            tiers: route.tiers.clone(),
            classifier,
        });
    }
    for (index, route) in raw.routes.iter().enumerate() {
        if route.tiers.len() == 1 {
            return Err(ConfigError::new(
                format!("routes[{index}].tiers"),
                "name at least two tiers, cheapest first",
            ));
        }
        for (tier_index, tier) in route.tiers.iter().enumerate() {
            let key = format!("routes[{index}].tiers[{tier_index}]");
            let Some(target) = raw.routes.iter().find(|other| &other.model == tier) else {
                return Err(ConfigError::new(key, format!("unknown route `{tier}`")));
            };
            if !target.tiers.is_empty() {
                return Err(ConfigError::new(
                    key,
                    format!("`{tier}` has tiers itself; a tier must be a route with targets"),
                ));
            }
        }
        for (fallback_index, fallback) in route.fallbacks.iter().enumerate() {
            let key = format!("routes[{index}].fallbacks[{fallback_index}]");
            if fallback == &route.model {
                return Err(ConfigError::new(key, "a route cannot fall back to itself"));
            }
            if !route_names.contains(fallback.as_str()) {
                return Err(ConfigError::new(key, format!("unknown route `{fallback}`")));
            }
        }
    }

    let rate_limits = limits::validate(&raw.rate_limits, &providers)?;
    let pricing = validate_prices(&raw.prices, &providers, &routes)?;
    let budgets = budgets::validate(&raw.budgets, &|name| route_names.contains(name))?;
    let telegram = telegram::validate(raw.telegram.as_ref(), env, &routes, &providers)?;
    let alerts = alerts::validate(
        &raw.alerts,
        env,
        &alerts::Known {
            provider: &|name| providers.iter().any(|p| p.name == name),
            route: &|name| route_names.contains(name),
            budget: &|name| budgets.rules.iter().any(|rule| rule.name == name),
            bot: telegram.as_ref(),
        },
    )?;
    Ok(Config {
        server,
        upstream,
        providers,
        routes,
        routing,
        storage,
        analytics: validate_analytics(&raw.analytics)?,
        telemetry,
        rate_limits,
        cache: cache_config,
        pricing,
        budgets,
        alerts,
        telegram,
    })
}

fn validate_classifier(
    raw: Option<&RawClassifier>,
    key: &str,
) -> Result<crate::tiers::Classifier, ConfigError> {
    let defaults = crate::tiers::Classifier::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    if let Some(quality) = raw.min_quality
        && !(0.0..=1.0).contains(&quality)
    {
        return Err(ConfigError::new(
            format!("{key}.classifier.min_quality"),
            "a feedback score from 0 to 1",
        ));
    }
    Ok(crate::tiers::Classifier {
        max_prompt_tokens: raw.max_prompt_tokens.unwrap_or(defaults.max_prompt_tokens),
        max_messages: raw.max_messages.unwrap_or(defaults.max_messages),
        tools_are_hard: raw.tools.unwrap_or(defaults.tools_are_hard),
        code_is_hard: raw.code.unwrap_or(defaults.code_is_hard),
        math_is_hard: raw.math.unwrap_or(defaults.math_is_hard),
        min_quality: raw.min_quality,
    })
}

/// The price table: the built-in catalog, then each target's `input_price` /
/// `output_price`, then `[[prices]]` (which win).
fn validate_prices(
    raw: &[RawPrice],
    providers: &[Arc<Provider>],
    routes: &[Route],
) -> Result<crate::pricing::Pricing, ConfigError> {
    use crate::pricing::{Catalog, ModelPrice, Pricing};
    let catalog = Catalog::builtin().map_err(|message| ConfigError::new("prices", message))?;
    let mut pricing = Pricing::new(
        catalog,
        providers.iter().map(|p| {
            let official = preset(&p.kind)
                .and_then(|preset| preset.base_url)
                .is_some_and(|url| url.trim_end_matches('/') == p.base_url);
            (p.name.as_str(), p.kind.as_str(), official)
        }),
    );
    for route in routes {
        for target in &route.targets {
            if let Some(price) = target.price
                && !pricing.is_configured(&target.provider.name, &target.model)
            {
                pricing.configure(
                    &target.provider.name,
                    &target.model,
                    ModelPrice {
                        input: price.input_per_million,
                        output: price.output_per_million,
                        cached_input: None,
                        cache_write: None,
                        reasoning: None,
                        as_of: "config".to_owned(),
                    },
                );
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (index, price) in raw.iter().enumerate() {
        let key = format!("prices[{index}]");
        if !providers.iter().any(|p| p.name == price.provider) {
            return Err(ConfigError::new(
                format!("{key}.provider"),
                format!("unknown provider `{}`", price.provider),
            ));
        }
        if price.model.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{key}.model"),
                "must not be empty",
            ));
        }
        if !seen.insert((price.provider.as_str(), price.model.as_str())) {
            return Err(ConfigError::new(
                key,
                format!("{}/{} is priced twice", price.provider, price.model),
            ));
        }
        for (name, value) in [
            ("input", Some(price.input)),
            ("output", price.output),
            ("cached_input", price.cached_input),
            ("cache_write", price.cache_write),
            ("reasoning", price.reasoning),
        ] {
            if let Some(value) = value
                && !(value.is_finite() && value >= 0.0)
            {
                return Err(ConfigError::new(
                    format!("{key}.{name}"),
                    "must be a non-negative number (USD per million tokens)",
                ));
            }
        }
        pricing.configure(
            &price.provider,
            &price.model,
            ModelPrice {
                input: price.input,
                output: price.output.unwrap_or(0.0),
                cached_input: price.cached_input,
                cache_write: price.cache_write,
                reasoning: price.reasoning,
                as_of: "config".to_owned(),
            },
        );
    }
    Ok(pricing)
}

fn validate_storage(raw: &RawStorage, env: &dyn Env) -> Result<StorageConfig, ConfigError> {
    let data_dir = raw
        .data_dir
        .clone()
        .or_else(|| env.var(DATA_DIR_ENV))
        .unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned());
    if data_dir.trim().is_empty() {
        return Err(ConfigError::new(
            "storage.data_dir",
            "is empty; name a directory, or `:memory:` to keep everything in memory",
        ));
    }
    let data_dir = (data_dir != ":memory:").then(|| std::path::PathBuf::from(data_dir));
    let postgres_url = env
        .var(POSTGRES_URL_ENV)
        .or_else(|| raw.postgres_url.clone())
        .filter(|url| !url.trim().is_empty());
    if let Some(url) = &postgres_url
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        return Err(ConfigError::new(
            "storage.postgres_url",
            "must start with postgres:// or postgresql://",
        ));
    }
    let redis_url = env
        .var(REDIS_URL_ENV)
        .or_else(|| raw.redis_url.clone())
        .filter(|url| !url.trim().is_empty());
    if let Some(url) = &redis_url
        && !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
    {
        return Err(ConfigError::new(
            "storage.redis_url",
            "must start with redis://, rediss:// or unix://",
        ));
    }
    Ok(StorageConfig {
        data_dir,
        postgres_url: postgres_url.map(Secret::new),
        redis_url: redis_url.map(Secret::new),
    })
}

/// Default `analytics.metrics_max_series`: room for the names clients choose beyond the
/// configured routes (which always have series of their own), while a client cycling
/// through made-up `provider/<anything>` names cannot grow `/metrics` without bound.
pub const DEFAULT_METRICS_MAX_SERIES: usize = 1000;

fn validate_analytics(raw: &RawAnalytics) -> Result<AnalyticsConfig, ConfigError> {
    let flush_interval = raw.flush_interval.unwrap_or(Duration::from_secs(1));
    if flush_interval < Duration::from_millis(100) || flush_interval > Duration::from_secs(60) {
        return Err(ConfigError::new(
            "analytics.flush_interval",
            "must be between 100ms and 60s",
        ));
    }
    let request_log_max_age = raw
        .request_log_max_age
        .unwrap_or(Duration::from_secs(7 * 86_400));
    if request_log_max_age < Duration::from_secs(60) {
        return Err(ConfigError::new(
            "analytics.request_log_max_age",
            "must be at least 1m",
        ));
    }
    let max_mb = raw.request_log_max_mb.unwrap_or(1024);
    if max_mb == 0 || max_mb > 1 << 30 {
        return Err(ConfigError::new(
            "analytics.request_log_max_mb",
            "must be between 1 and 2^30",
        ));
    }
    let metrics_max_series = raw.metrics_max_series.unwrap_or(DEFAULT_METRICS_MAX_SERIES);
    if metrics_max_series == 0 || metrics_max_series > 100_000 {
        return Err(ConfigError::new(
            "analytics.metrics_max_series",
            "must be between 1 and 100000",
        ));
    }
    Ok(AnalyticsConfig {
        flush_interval,
        request_log: raw.request_log.unwrap_or(true),
        request_log_max_age,
        request_log_max_bytes: max_mb * 1024 * 1024,
        metrics_max_series,
    })
}

fn validate_target(
    raw: &RawTarget,
    key: &str,
    provider: &Arc<Provider>,
    position: usize,
) -> Result<Target, ConfigError> {
    if raw.model.trim().is_empty() {
        return Err(ConfigError::new(
            format!("{key}.model"),
            "must not be empty",
        ));
    }
    if raw.timeouts.connect.is_some() {
        return Err(ConfigError::new(
            format!("{key}.timeouts.connect"),
            "the connect timeout is set per provider (providers[].timeouts.connect)",
        ));
    }
    let price = match (raw.input_price, raw.output_price) {
        (None, None) => None,
        (input, output) => {
            for (name, value) in [("input_price", input), ("output_price", output)] {
                if let Some(value) = value
                    && !(value.is_finite() && value >= 0.0)
                {
                    return Err(ConfigError::new(
                        format!("{key}.{name}"),
                        "must be a non-negative number (USD per million tokens)",
                    ));
                }
            }
            Some(Price {
                input_per_million: input.unwrap_or(0.0),
                output_per_million: output.unwrap_or(0.0),
            })
        }
    };
    if raw.max_concurrency == Some(0) {
        return Err(ConfigError::new(
            format!("{key}.max_concurrency"),
            "must be at least 1",
        ));
    }
    let timeouts = resolve_timeouts(
        &raw.timeouts,
        &provider.timeouts,
        &format!("{key}.timeouts"),
    )?;
    Ok(Target {
        provider: Arc::clone(provider),
        model: raw.model.clone(),
        weight: raw.weight.unwrap_or(1),
        priority: raw
            .priority
            .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX)),
        price,
        max_concurrency: raw.max_concurrency,
        timeouts,
    })
}

/// Overrides `inherited` with the timeouts set in `raw`, rejecting zeros.
fn resolve_timeouts(
    raw: &RawTimeouts,
    inherited: &Timeouts,
    key: &str,
) -> Result<Timeouts, ConfigError> {
    let pick = |value: Option<Duration>,
                fallback: Duration,
                name: &str|
     -> Result<Duration, ConfigError> {
        match value {
            Some(value) if value.is_zero() => Err(ConfigError::new(
                format!("{key}.{name}"),
                "must be greater than zero",
            )),
            Some(value) => Ok(value),
            None => Ok(fallback),
        }
    };
    let total = match raw.total {
        Some(total) if total.is_zero() => {
            return Err(ConfigError::new(
                format!("{key}.total"),
                "must be greater than zero",
            ));
        }
        Some(total) => Some(total),
        None => inherited.total,
    };
    Ok(Timeouts {
        connect: pick(raw.connect, inherited.connect, "connect")?,
        first_byte: pick(raw.first_byte, inherited.first_byte, "first_byte")?,
        idle: pick(raw.idle, inherited.idle, "idle")?,
        total,
    })
}

fn validate_routing(raw: &RawRouting) -> Result<RoutingConfig, ConfigError> {
    let max_attempts = raw.max_attempts.unwrap_or(3);
    if !(1..=20).contains(&max_attempts) {
        return Err(ConfigError::new(
            "routing.max_attempts",
            "must be between 1 and 20",
        ));
    }
    let retry_budget = raw.retry_budget.unwrap_or(0.2);
    if !(0.0..=1.0).contains(&retry_budget) {
        return Err(ConfigError::new(
            "routing.retry_budget",
            "must be a fraction between 0 and 1",
        ));
    }
    let backoff = Backoff {
        base: raw.backoff_base.unwrap_or(Duration::from_millis(25)),
        max: raw.backoff_max.unwrap_or(Duration::from_secs(2)),
    };
    if backoff.base.is_zero() {
        return Err(ConfigError::new(
            "routing.backoff_base",
            "must be greater than zero",
        ));
    }
    if backoff.base > backoff.max {
        return Err(ConfigError::new(
            "routing.backoff_max",
            "must not be shorter than routing.backoff_base",
        ));
    }
    let defaults = BreakerConfig::default();
    let breaker = &raw.breaker;
    let breaker = BreakerConfig {
        consecutive_failures: breaker
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        error_rate: breaker.error_rate.unwrap_or(defaults.error_rate),
        window: breaker.window.unwrap_or(defaults.window),
        min_requests: breaker.min_requests.unwrap_or(defaults.min_requests),
        cooldown: breaker.cooldown.unwrap_or(defaults.cooldown),
        max_cooldown: breaker.max_cooldown.unwrap_or(defaults.max_cooldown),
    };
    if breaker.consecutive_failures == 0 {
        return Err(ConfigError::new(
            "routing.breaker.consecutive_failures",
            "must be at least 1",
        ));
    }
    if !(breaker.error_rate > 0.0 && breaker.error_rate <= 1.0) {
        return Err(ConfigError::new(
            "routing.breaker.error_rate",
            "must be a fraction above 0 and at most 1",
        ));
    }
    for (name, value) in [("window", breaker.window), ("cooldown", breaker.cooldown)] {
        if value.is_zero() {
            return Err(ConfigError::new(
                format!("routing.breaker.{name}"),
                "must be greater than zero",
            ));
        }
    }
    if breaker.max_cooldown < breaker.cooldown {
        return Err(ConfigError::new(
            "routing.breaker.max_cooldown",
            "must not be shorter than routing.breaker.cooldown",
        ));
    }
    Ok(RoutingConfig {
        max_attempts,
        retry_budget,
        min_retries_per_second: raw.min_retries_per_second.unwrap_or(10),
        backoff,
        breaker,
    })
}

/// `[telemetry]`: export is on when an endpoint is configured, or else named by
/// `OTEL_EXPORTER_OTLP_ENDPOINT`. The other keys are checked either way.
fn validate_telemetry(
    raw: &RawTelemetry,
    env: &dyn Env,
) -> Result<Option<TelemetryConfig>, ConfigError> {
    let service_name = raw
        .service_name
        .as_deref()
        .unwrap_or(DEFAULT_SERVICE_NAME)
        .trim();
    if service_name.is_empty() {
        return Err(ConfigError::new(
            "telemetry.service_name",
            "must not be empty",
        ));
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(ConfigError::new(
            "telemetry.sample_ratio",
            "must be a fraction between 0 and 1",
        ));
    }
    let key = "telemetry.otlp_endpoint";
    let endpoint = match &raw.otlp_endpoint {
        Some(endpoint) => check_base_url(endpoint).map_err(|m| ConfigError::new(key, m))?,
        None => match env.var(OTLP_ENDPOINT_ENV) {
            Some(endpoint) => check_base_url(&endpoint)
                .map_err(|m| ConfigError::new(key, format!("(from {OTLP_ENDPOINT_ENV}) {m}")))?,
            None => return Ok(None),
        },
    };
    // Like the standard variable, the endpoint is the collector's base URL; a full traces
    // URL is accepted as it is.
    let traces_endpoint = if endpoint.ends_with(OTLP_TRACES_PATH) {
        endpoint
    } else {
        format!("{endpoint}{OTLP_TRACES_PATH}")
    };
    Ok(Some(TelemetryConfig {
        traces_endpoint,
        service_name: service_name.to_owned(),
        sample_ratio,
    }))
}

fn validate_server(raw: &RawServer, env: &dyn Env) -> Result<ServerConfig, ConfigError> {
    let listen = match &raw.listen {
        Some(listen) => {
            Some(parse_listen(listen).map_err(|m| ConfigError::new("server.listen", m))?)
        }
        None => None,
    };
    let master_key = match &raw.master_key_env {
        Some(name) => Some(Secret::new(env.var(name).ok_or_else(|| {
            ConfigError::new(
                "server.master_key_env",
                format!("environment variable {name} is not set"),
            )
        })?)),
        None => env.var(DEFAULT_MASTER_KEY_ENV).map(Secret::new),
    };
    let max_body_bytes = raw.max_body_bytes.unwrap_or(10 * 1024 * 1024);
    if max_body_bytes < 1024 {
        return Err(ConfigError::new(
            "server.max_body_bytes",
            "must be at least 1024 bytes",
        ));
    }
    Ok(ServerConfig {
        listen,
        master_key,
        max_body_bytes,
        header_read_timeout: positive(raw.header_read_timeout, 10, "server.header_read_timeout")?,
        request_timeout: positive(raw.request_timeout, 600, "server.request_timeout")?,
        shutdown_grace: raw.shutdown_grace.unwrap_or(Duration::from_secs(30)),
        drain_delay: raw.drain_delay.unwrap_or(Duration::ZERO),
    })
}

fn validate_provider(
    raw: &RawProvider,
    key: &str,
    env: &dyn Env,
    upstream: &UpstreamConfig,
) -> Result<Provider, ConfigError> {
    let name = raw.name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(ConfigError::new(
            format!("{key}.name"),
            format!(
                "`{}` is not a valid provider name (use letters, digits, `-`, `_` or `.`)",
                raw.name
            ),
        ));
    }
    let Some(preset) = preset(&raw.kind) else {
        return Err(ConfigError::new(
            format!("{key}.kind"),
            format!(
                "unknown kind `{}` (valid kinds: {})",
                raw.kind,
                kind_names()
            ),
        ));
    };
    let base_url = match (&raw.base_url, preset.base_url) {
        (Some(url), _) => url.clone(),
        (None, Some(default)) => default.to_owned(),
        (None, None) => {
            return Err(ConfigError::new(
                format!("{key}.base_url"),
                format!("required for kind `{}`", raw.kind),
            ));
        }
    };
    let base_url =
        check_base_url(&base_url).map_err(|m| ConfigError::new(format!("{key}.base_url"), m))?;
    let api_key = match &raw.api_key_env {
        Some(variable) => Some(Secret::new(env.var(variable).ok_or_else(|| {
            ConfigError::new(
                format!("{key}.api_key_env"),
                format!("environment variable {variable} is not set"),
            )
        })?)),
        None => None,
    };
    if api_key.is_none() && preset.key_env.is_some() && preset.kind != "openai" {
        return Err(ConfigError::new(
            format!("{key}.api_key_env"),
            format!(
                "kind `{}` needs an API key; set api_key_env (usually \"{}\")",
                raw.kind,
                preset.key_env.unwrap_or_default()
            ),
        ));
    }
    if preset.wire == WireFormat::Azure && api_key.is_none() {
        return Err(ConfigError::new(
            format!("{key}.api_key_env"),
            "kind `azure` needs an API key; set api_key_env (usually \"AZURE_OPENAI_API_KEY\")",
        ));
    }
    // A preset's model names describe its own service: a `kind = "openai"` provider pointed
    // at a self-hosted vLLM must not claim `gpt-*`. So they apply only at the default URL.
    let at_preset_url = preset
        .base_url
        .is_some_and(|default| check_base_url(default).is_ok_and(|default| default == base_url));
    let models = match &raw.models {
        Some(models) => models.clone(),
        None if at_preset_url => preset.models.iter().map(|m| (*m).to_owned()).collect(),
        None => Vec::new(),
    };
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (header, value) in &raw.headers {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return Err(ConfigError::new(
                format!("{key}.headers.{header}"),
                "not a valid HTTP header name and value",
            ));
        }
        headers.push((header.clone(), value.clone()));
    }
    let defaults = Timeouts {
        connect: upstream.connect_timeout,
        first_byte: upstream.first_byte_timeout,
        idle: upstream.idle_timeout,
        total: None,
    };
    let timeouts = resolve_timeouts(&raw.timeouts, &defaults, &format!("{key}.timeouts"))?;
    let health_check = match &raw.health_check {
        None => None,
        Some(check) => Some(HealthCheck {
            interval: positive(check.interval, 30, &format!("{key}.health_check.interval"))?,
            timeout: positive(check.timeout, 5, &format!("{key}.health_check.timeout"))?,
            model: check.model.clone(),
        }),
    };
    Ok(Provider {
        name: name.to_owned(),
        kind: raw.kind.clone(),
        wire: preset.wire,
        base_url,
        api_key,
        api_version: raw
            .api_version
            .clone()
            .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_owned()),
        models,
        headers,
        timeouts,
        health_check,
    })
}

fn positive(
    value: Option<Duration>,
    default_secs: u64,
    key: &str,
) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(Duration::from_secs(default_secs));
    if value.is_zero() {
        return Err(ConfigError::new(key, "must be greater than zero"));
    }
    Ok(value)
}

/// Parses a listen address (`127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`).
pub fn parse_listen(listen: &str) -> Result<SocketAddr, String> {
    if let Some(port) = listen.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{listen}` has an invalid port"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    listen
        .parse()
        .map_err(|_| format!("`{listen}` is not an address like 127.0.0.1:8080"))
}

/// Checks that a base URL is absolute http(s), and strips a trailing slash.
fn check_base_url(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("`{url}` is not a valid URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query string"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Matches `name` against a pattern where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return name.is_empty();
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(position) => rest = &rest[position + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Refuses to expose an unauthenticated gateway beyond this machine.
pub fn check_exposure(listen: SocketAddr, master_key: Option<&Secret>) -> Result<(), ConfigError> {
    if master_key.is_none() && !listen.ip().is_loopback() {
        return Err(ConfigError::new(
            "server.listen",
            format!(
                "refusing to listen on {listen} without client authentication: set {DEFAULT_MASTER_KEY_ENV} \
                 (or server.master_key_env) or listen on a loopback address such as 127.0.0.1"
            ),
        ));
    }
    Ok(())
}

/// Builds a raw config from provider keys found in the environment, with the variable names
/// the providers' own SDKs use. A base-URL variable without its key is ignored, except for
/// Ollama, which needs no key.
pub fn discover(env: &dyn Env) -> RawConfig {
    let mut providers = Vec::new();
    for preset in PRESETS {
        let key_found = preset.key_env.and_then(|name| env.var(name)).is_some();
        let base_url = preset.base_url_env.and_then(|name| env.var(name));
        let found = match preset.key_env {
            Some(_) => key_found,
            // Keyless kinds (Ollama) are found by their base URL alone.
            None => base_url.is_some() && preset.base_url_env.is_some(),
        };
        if !found {
            continue;
        }
        let base_url = base_url.map(|url| {
            if preset.kind == "ollama" {
                ollama_v1(&url)
            } else {
                url
            }
        });
        // A base-URL variable is the SDKs' way to reach the same API through another host
        // (`OPENAI_BASE_URL`), and without a config file there is no other place to name
        // models, so the preset's patterns stay; only a configured `base_url` drops them.
        let models = base_url
            .is_some()
            .then(|| preset.models.iter().map(|m| (*m).to_owned()).collect());
        providers.push(RawProvider {
            name: preset.kind.to_owned(),
            kind: preset.kind.to_owned(),
            base_url,
            api_key_env: preset.key_env.map(str::to_owned),
            models,
            ..RawProvider::default()
        });
    }
    RawConfig {
        providers,
        ..RawConfig::default()
    }
}

/// Ollama's OpenAI-compatible API lives under `/v1`; users usually give the bare host.
fn ollama_v1(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/v1") {
        url.to_owned()
    } else {
        format!("{url}/v1")
    }
}

/// Parses TOML text into a raw config, naming the key and line on error.
pub fn parse_toml(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|error| {
        let message = error.message().to_owned();
        let location = error
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_else(|| "config".to_owned());
        ConfigError::new(location, message)
    })
}

#[cfg(test)]
mod tests;
