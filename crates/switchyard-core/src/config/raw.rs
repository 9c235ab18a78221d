//! The config file as written: plain serde structs that reject unknown keys.
//!
//! Nothing here is checked beyond types; [`super::validate`] turns a [`RawConfig`] into a
//! [`super::Config`]. Durations are humantime strings (`"10s"`, `"2m"`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The whole TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listener, client auth and request limits.
    #[serde(default)]
    pub server: RawServer,
    /// Transport timeouts towards providers.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// The providers the gateway may call.
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    /// Named routes: a model name clients ask for, and the targets that serve it.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Retries, backoff, retry budget and circuit breakers.
    #[serde(default)]
    pub routing: RawRouting,
    /// Where state is kept: the data directory (SQLite) or Postgres.
    #[serde(default)]
    pub storage: RawStorage,
    /// Request analytics: flushing, and the raw request log's retention.
    #[serde(default)]
    pub analytics: RawAnalytics,
    /// OpenTelemetry trace export.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Rate limits and load shedding.
    #[serde(default)]
    pub rate_limits: RawRateLimits,
    /// The response cache.
    #[serde(default)]
    pub cache: RawCache,
    /// Prices that add to or override the built-in catalog, per provider and model.
    #[serde(default)]
    pub prices: Vec<RawPrice>,
    /// `[budgets]`.
    #[serde(default)]
    pub budgets: RawBudgets,
    /// `[alerts]`: rules and notifiers.
    #[serde(default)]
    pub alerts: RawAlerts,
    /// `[telegram]`: the Telegram bot, when the section is there.
    pub telegram: Option<super::telegram::RawTelegram>,
}

/// `[alerts]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// How often the rules are evaluated. Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Alerts kept for `GET /admin/alerts`. Default 200.
    pub history: Option<usize>,
    /// `[[alerts.rules]]`.
    #[serde(default)]
    pub rules: Vec<RawAlertRule>,
    /// `[[alerts.notifiers]]`.
    #[serde(default)]
    pub notifiers: Vec<RawNotifier>,
}

/// One `[[alerts.rules]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertRule {
    /// Unique name.
    pub name: String,
    /// `error_rate`, `latency_p95`, `ttft_p95`, `cost_per_hour`, `budget_used`,
    /// `budget_forecast`, `provider_down`, `breaker_open`, `cache_hit_rate`,
    /// `rate_limited_rate` or `dropped_events`.
    pub metric: String,
    /// `global`, `route`, `provider`, `model` or `key`. Default: the metric's first.
    pub scope: Option<String>,
    /// The one member watched; default: each member separately.
    pub member: Option<String>,
    /// Budget metrics: the one budget watched.
    pub budget: Option<String>,
    /// The threshold in the metric's unit (shares for rates and budgets).
    pub threshold: Option<f64>,
    /// `above` or `below`. Default: `below` for the cache hit rate, else `above`.
    pub direction: Option<String>,
    /// The window of a windowed metric. Default 1m (`cost_per_hour` 1h,
    /// `dropped_events` 5m).
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// How long the breach must hold before the alert fires. Default 0s.
    #[serde(default, rename = "for", with = "humantime_serde")]
    pub for_duration: Option<Duration>,
    /// Least time from a resolution to the next firing. Default 5m.
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Option<Duration>,
    /// `info`, `warning` (default) or `critical`.
    pub severity: Option<String>,
    /// The notifiers it goes to. Default: all.
    pub notifiers: Option<Vec<String>>,
    /// Per-request metrics: fewer requests in the window count as no data. Default 1.
    pub min_requests: Option<u64>,
}

/// One `[[alerts.notifiers]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifier {
    /// Unique name.
    pub name: String,
    /// `webhook`, `slack`, `telegram` or `log`.
    pub kind: String,
    /// Webhook and Slack: the URL.
    pub url: Option<String>,
    /// Webhook and Slack: the environment variable holding the URL (when it embeds a token).
    pub url_env: Option<String>,
    /// Webhook: the environment variable holding the HMAC-SHA256 signing secret.
    pub secret_env: Option<String>,
    /// Telegram: the environment variable holding the bot token. Default
    /// `TELEGRAM_BOT_TOKEN`.
    pub bot_token_env: Option<String>,
    /// Telegram: the chats to send to (numbers, or `@channel` names).
    #[serde(default)]
    pub chat_ids: Vec<RawChatId>,
    /// Telegram: the Bot API base URL. Default `https://api.telegram.org`.
    pub api_base: Option<String>,
    /// Notifications waiting for delivery, at most. Default 256.
    pub queue: Option<usize>,
    /// Attempts per delivery. Default 5.
    pub max_attempts: Option<u32>,
    /// One attempt's deadline. Default 10s.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// The first retry's delay, doubled per attempt. Default 1s.
    #[serde(default, with = "humantime_serde")]
    pub retry_backoff: Option<Duration>,
}

/// A Telegram chat id as written: a number or a string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawChatId {
    /// A numeric id (negative for groups and channels).
    Number(i64),
    /// A numeric id as a string, or `@channelname`.
    Text(String),
}

/// `[budgets]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    /// IANA time zone of calendar periods (default `UTC`).
    pub timezone: Option<String>,
    /// Soft thresholds, as shares of the amount.
    pub thresholds: Option<Vec<f64>>,
    /// `fail_open` (default) or `fail_closed` when Redis is unreachable.
    pub on_store_error: Option<String>,
    /// The budgets.
    #[serde(default)]
    pub limits: Vec<RawBudget>,
}

/// One `[[budgets.limits]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Unique name.
    pub name: String,
    /// `key`, `team`, `route`, `model`, `provider` or `global`.
    pub scope: String,
    /// Members covered; empty: each member separately.
    #[serde(default)]
    pub only: Vec<String>,
    /// USD per period.
    pub amount_usd: f64,
    /// `daily`, `weekly`, `monthly` (default) or `total`.
    pub period: Option<String>,
    /// IANA time zone overriding `budgets.timezone`.
    pub timezone: Option<String>,
    /// `reject` (default) or `downgrade`.
    pub action: Option<String>,
    /// The route to downgrade to.
    pub downgrade_to: Option<String>,
    /// Soft thresholds overriding `budgets.thresholds`.
    pub thresholds: Option<Vec<f64>>,
}

/// `[[prices]]`: what a model costs at one configured provider, in USD per million tokens.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// A configured provider's name.
    pub provider: String,
    /// The upstream model id.
    pub model: String,
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens. Default 0 (embeddings).
    pub output: Option<f64>,
    /// Prompt tokens read from the provider's cache. Default: the input price.
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the provider's cache. Default: the input price.
    pub cache_write: Option<f64>,
    /// Reasoning tokens, when priced apart from output.
    pub reasoning: Option<f64>,
}

/// `[cache]`, the response cache.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Cache answers on every route (a route's own `cache.enabled` wins). Default false.
    pub enabled: Option<bool>,
    /// How long an answer is served from the cache. Default 1h.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Also cache requests that ask for sampling (`temperature` above 0). Default false.
    pub sampled: Option<bool>,
    /// Memory for cached answers in this instance, in MB. Default 50.
    pub max_mb: Option<u64>,
    /// Largest answer stored, in KB. Default 1024.
    pub max_entry_kb: Option<u64>,
    /// Who may read an answer: `key` (the caller's key; the default), `team`, or `global`.
    pub scope: Option<String>,
    /// Share answers between instances through Redis (`storage.redis_url`). Default true
    /// when Redis is configured.
    pub redis: Option<bool>,
    /// How long one Redis lookup may take before it counts as a miss. Default 50ms.
    #[serde(default, with = "humantime_serde")]
    pub redis_timeout: Option<Duration>,
    /// How long identical requests wait for the first one's answer. Default 30s.
    #[serde(default, with = "humantime_serde")]
    pub lock_timeout: Option<Duration>,
}

/// A route's `cache` table: overrides of `[cache]` for that route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// Cache this route's answers.
    pub enabled: Option<bool>,
    /// How long its answers are served from the cache.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Also cache its sampled requests.
    pub sampled: Option<bool>,
}

/// `[rate_limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    /// `fail_open` (default: a local limiter stands in) or `fail_closed` (503) when the
    /// shared store (Redis) cannot be reached.
    pub on_store_error: Option<String>,
    /// How long one admission check may wait for Redis. Default 100ms.
    #[serde(default, with = "humantime_serde")]
    pub store_timeout: Option<Duration>,
    /// Header naming the end user when the body has no OpenAI `user` field. Default
    /// `x-switchyard-user`.
    pub user_header: Option<String>,
    /// Take the client IP from the last `X-Forwarded-For` entry (your proxy's) instead of the
    /// socket. Default false.
    pub trust_forwarded_for: Option<bool>,
    /// Load shedding: most requests in flight in this instance; low priority is shed at 70%,
    /// normal at 90%, high at 100%, with a fast 503. Default: off.
    pub max_in_flight: Option<u64>,
    /// Output tokens a token limit reserves for a request that sets no `max_tokens`.
    /// Default 1024.
    pub default_max_tokens: Option<u64>,
    /// The limits.
    #[serde(default)]
    pub limits: Vec<RawLimit>,
}

/// `[[rate_limits.limits]]`: one limit. Exactly one of `requests`, `tokens`, `concurrent`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// Name in errors, headers and metrics. Default `{scope}-{unit}`.
    pub name: Option<String>,
    /// `key`, `user`, `ip`, `model`, `provider`, `target` (provider/model) or `global`.
    pub scope: String,
    /// Requests per `per`.
    pub requests: Option<u64>,
    /// Tokens per `per` (input estimate plus `max_tokens` reserved, settled to usage).
    pub tokens: Option<u64>,
    /// Requests in flight at once.
    pub concurrent: Option<u64>,
    /// The period of `requests` or `tokens`: `1s`, `1m`, `1h`, `1d`...
    #[serde(default, with = "humantime_serde")]
    pub per: Option<Duration>,
    /// `token_bucket` (default), `sliding_window` or `window_log`.
    pub algorithm: Option<String>,
    /// Token bucket capacity. Default: the amount.
    pub burst: Option<u64>,
    /// Only for these routes or models (default: all). For `provider` scope, provider names;
    /// for `target`, provider names or `provider/model`.
    #[serde(default)]
    pub only: Vec<String>,
    /// Graceful degradation: wait up to this long for room instead of refusing at once.
    #[serde(default, with = "humantime_serde")]
    pub queue: Option<Duration>,
    /// Most requests waiting on this limit at once (default 64); one key may hold at most a
    /// quarter of them.
    pub max_queued: Option<u32>,
}

/// `[storage]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Directory for the SQLite files. Default: `$SWITCHYARD_DATA_DIR`, else
    /// `switchyard-data`. `:memory:` keeps everything in memory (lost on exit).
    pub data_dir: Option<String>,
    /// Postgres URL (`postgres://user:pass@host/db`): analytics go there instead of the data
    /// directory, shared by every instance. `$SWITCHYARD_POSTGRES_URL` overrides it.
    pub postgres_url: Option<String>,
    /// Redis URL (`redis://host:6379/0`): rate-limit counters go there, shared by every
    /// instance. `$SWITCHYARD_REDIS_URL` overrides it.
    pub redis_url: Option<String>,
}

/// `[analytics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalytics {
    /// How often rollups and the request log are written to the store. Default 1s; a crash
    /// loses at most this much.
    #[serde(default, with = "humantime_serde")]
    pub flush_interval: Option<Duration>,
    /// Keep the raw request log. Default true.
    pub request_log: Option<bool>,
    /// Request log entries older than this are deleted. Default 7d.
    #[serde(default, with = "humantime_serde")]
    pub request_log_max_age: Option<Duration>,
    /// The request log is trimmed (oldest first) to this size in MiB. Default 1024.
    pub request_log_max_mb: Option<u64>,
    /// Most (route, provider, model) series in `/metrics`; events of further ones are
    /// counted under `route="other"`, `model="other"`. Default 1000.
    pub metrics_max_series: Option<usize>,
}

/// `[telemetry]`: OpenTelemetry trace export over OTLP/HTTP. Off unless an endpoint is set
/// here or in `OTEL_EXPORTER_OTLP_ENDPOINT`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// The collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`; spans go to
    /// `{otlp_endpoint}/v1/traces` as protobuf. Default: `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans. Default `switchyard`.
    pub service_name: Option<String>,
    /// Fraction of new traces to sample, 0 to 1; a client's `traceparent` decides for its
    /// own trace. Default 1.
    pub sample_ratio: Option<f64>,
}

/// `[routing]`: how failures are handled, for every route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Most attempts for one request, first included, across targets and fallback routes.
    /// Default 3.
    pub max_attempts: Option<u32>,
    /// Retries may be at most this fraction of requests (over the last 10 s). Default 0.2.
    pub retry_budget: Option<f64>,
    /// Retries always allowed per second, whatever the budget. Default 10.
    pub min_retries_per_second: Option<u32>,
    /// First backoff before retrying the same target. Default 25ms.
    #[serde(default, with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// Longest backoff. Default 2s.
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// Circuit breaker per target.
    #[serde(default)]
    pub breaker: RawBreaker,
}

/// `[routing.breaker]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Open after this many failures in a row. Default 5.
    pub consecutive_failures: Option<u32>,
    /// Or when this fraction of requests in the window failed. Default 0.5.
    pub error_rate: Option<f64>,
    /// The error-rate window. Default 30s.
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// Fewest requests in the window before the error rate counts. Default 20.
    pub min_requests: Option<u32>,
    /// First open period; doubles after each failed probe. Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Option<Duration>,
    /// Longest open period. Default 5m.
    #[serde(default, with = "humantime_serde")]
    pub max_cooldown: Option<Duration>,
}

/// Timeouts for one provider or target; unset ones inherit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP + TLS connect (per provider only).
    #[serde(default, with = "humantime_serde")]
    pub connect: Option<Duration>,
    /// Request sent → response headers.
    #[serde(default, with = "humantime_serde")]
    pub first_byte: Option<Duration>,
    /// Longest silence between body chunks.
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
    /// Whole attempt, body included.
    #[serde(default, with = "humantime_serde")]
    pub total: Option<Duration>,
}

/// `health_check` of a provider: an active probe, independent of user traffic.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Time between probes. Default 30s.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Probe timeout. Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Send a one-token chat completion to this model instead of `GET /models`.
    pub model: Option<String>,
}

/// `[server]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on, e.g. `127.0.0.1:8080`. `--listen` overrides it.
    pub listen: Option<String>,
    /// Environment variable holding the master key clients must present.
    /// Default: `SWITCHYARD_MASTER_KEY`, when set.
    pub master_key_env: Option<String>,
    /// Request body limit in bytes. Default 10 MiB.
    pub max_body_bytes: Option<usize>,
    /// Time allowed to read a request's headers. Default 10s.
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    /// Deadline for a whole request, streams included. Default 10m.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// How long in-flight requests may run after SIGTERM. Default 30s.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    /// On SIGTERM, how long to keep accepting (with `/readyz` failing) before closing the
    /// listener, so that a load balancer stops routing here first. Default 0s.
    #[serde(default, with = "humantime_serde")]
    pub drain_delay: Option<Duration>,
}

/// `[upstream]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// TCP + TLS connect timeout. Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Time from sending a request to the provider's response headers. Default 120s.
    #[serde(default, with = "humantime_serde")]
    pub first_byte_timeout: Option<Duration>,
    /// Longest silence between two chunks of a response body. Default 120s.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

/// `[[providers]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Unique name; clients can address `name/model`.
    pub name: String,
    /// Wire format or preset: `openai`, `azure`, `anthropic`, `gemini`, `groq`, ...
    pub kind: String,
    /// API root. Presets have a default; `openai`-kind providers default to OpenAI's.
    pub base_url: Option<String>,
    /// Environment variable holding the API key. Never the key itself.
    pub api_key_env: Option<String>,
    /// Azure OpenAI `api-version`.
    pub api_version: Option<String>,
    /// Model names this provider serves, `*` as wildcard. Used for bare model names.
    pub models: Option<Vec<String>>,
    /// Extra static headers sent with every request (not for secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Timeouts for this provider (override `[upstream]`).
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Active health checks (off unless set).
    pub health_check: Option<RawHealthCheck>,
}

/// `[[routes]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The model name clients ask for.
    pub model: String,
    /// `priority` (default), `weighted`, `least-latency`, `least-busy` or `least-cost`.
    pub strategy: Option<String>,
    /// Routes to try, in order, when every target of this one failed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Where it goes.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    /// Response cache overrides for this route.
    #[serde(default)]
    pub cache: Option<RawRouteCache>,
    /// A latency objective that `least-cost` keeps to.
    #[serde(default)]
    pub objective: Option<RawObjective>,
    /// Quality tiers: route names, cheapest first (the route then has no targets of its own).
    #[serde(default)]
    pub tiers: Vec<String>,
    /// The tier classifier's thresholds.
    #[serde(default)]
    pub classifier: Option<RawClassifier>,
}

/// A tiered route's classifier.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassifier {
    /// Longer prompts (estimated tokens) go to the strongest tier.
    pub max_prompt_tokens: Option<u64>,
    /// Longer conversations go to the strongest tier.
    pub max_messages: Option<usize>,
    /// Tools or a JSON schema send a request to the strongest tier (default true).
    pub tools: Option<bool>,
    /// Code sends a request to the strongest tier (default true).
    pub code: Option<bool>,
    /// Mathematics sends a request to the strongest tier (default true).
    pub math: Option<bool>,
    /// The cheap tier's mean feedback below which everything goes to the strongest.
    pub min_quality: Option<f64>,
}

/// A route's latency objective.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjective {
    /// Most time to first token at p95 (streams).
    #[serde(default, with = "humantime_serde")]
    pub ttft_p95: Option<Duration>,
    /// Most total latency at p95 (non-streamed requests).
    #[serde(default, with = "humantime_serde")]
    pub latency_p95: Option<Duration>,
}

/// One target of a route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// A provider's name.
    pub provider: String,
    /// The model name at that provider (the Azure deployment for `azure`).
    pub model: String,
    /// Share of traffic for `weighted`. Default 1.
    pub weight: Option<u32>,
    /// Lower is preferred for `priority`. Default: the target's position.
    pub priority: Option<u32>,
    /// USD per million input tokens, for `least-cost`.
    pub input_price: Option<f64>,
    /// USD per million output tokens, for `least-cost`.
    pub output_price: Option<f64>,
    /// Most requests in flight to this target; beyond it the target is skipped.
    pub max_concurrency: Option<u32>,
    /// Timeouts for this target (override the provider's).
    #[serde(default)]
    pub timeouts: RawTimeouts,
}
