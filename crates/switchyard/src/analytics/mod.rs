//! Where request events go: the accounting stage hands each one to a bounded channel and
//! never waits; a background task folds them into the Prometheus metrics served at
//! `GET /metrics`. When the channel is full the event is counted as dropped, never blocking
//! the request.
//!
//! Metric names follow the OpenTelemetry GenAI semantic conventions where one exists
//! (`gen_ai.server.request.duration`, `gen_ai.server.time_to_first_token`,
//! `gen_ai.client.token.usage`), written the Prometheus way.
//!
//! Route and model names come from clients (`provider/<anything>` passes through), so the
//! series keyed by them are capped (`analytics.metrics_max_series`, see [`Consumer`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use switchyard_core::analytics::RequestEvent;
use tokio::sync::mpsc;

pub mod hours;
pub mod pipeline;
pub mod postgres;
pub mod spend;
pub mod sqlite;
pub mod store;

pub use pipeline::Analytics;

/// Events waiting for the background task, at most.
const CHANNEL_CAPACITY: usize = 16_384;

/// The producer side: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct EventSink {
    sender: mpsc::Sender<RequestEvent>,
    counts: Arc<SinkCounts>,
}

/// What the sink has seen.
#[derive(Debug, Default)]
pub struct SinkCounts {
    /// Events handed to the channel.
    pub emitted: AtomicU64,
    /// Events dropped because the channel was full.
    pub dropped: AtomicU64,
    /// Events the background task has processed.
    pub processed: AtomicU64,
    /// Accounted requests under way: begun, their event not emitted yet.
    pub open: AtomicU64,
}

impl EventSink {
    /// Hands an event over without waiting; counts it as dropped if the channel is full.
    pub fn emit(&self, event: RequestEvent) {
        match self.sender.try_send(event) {
            Ok(()) => {
                self.counts.emitted.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters.
    pub fn counts(&self) -> &SinkCounts {
        &self.counts
    }

    /// Counts a request under way until [`EventSink::end`] (its event is emitted).
    pub fn begin(&self) {
        self.counts.open.fetch_add(1, Ordering::Relaxed);
    }

    /// See [`EventSink::begin`].
    pub fn end(&self) {
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Waits until no request is under way, for at most `within`; false if some still are.
    /// Shutdown waits so after dropping the last connections: an HTTP/2 stream's request
    /// runs on a task of its own, which ends a little after its connection's.
    pub async fn all_ended(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.counts.open.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }
}

/// Creates the sink and the receiver the background task drains.
pub fn channel() -> (EventSink, mpsc::Receiver<RequestEvent>) {
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    (
        EventSink {
            sender,
            counts: Arc::new(SinkCounts::default()),
        },
        receiver,
    )
}

/// Labels of request-level series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    provider: String,
    model: String,
    status: String,
}

/// Labels of error series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    route: String,
    provider: String,
    model: String,
    error_class: String,
}

/// The route and model labels of the overflow series: events of a (route, provider, model)
/// first seen past the series cap.
const OVERFLOW_LABEL: &str = "other";

/// Labels of per-model series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    route: String,
    provider: String,
    model: String,
}

impl ModelLabels {
    fn with_status(&self, status: u16) -> RequestLabels {
        RequestLabels {
            route: self.route.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            status: status.to_string(),
        }
    }
}

/// Labels of token series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    route: String,
    provider: String,
    model: String,
    gen_ai_token_type: &'static str,
}

/// Labels of per-target gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// Provider name.
    pub provider: String,
    /// Upstream model.
    pub model: String,
}

/// A Prometheus counter that follows a running total kept elsewhere (an atomic bumped where
/// the thing happens), brought up to date at scrape time. It adds only what the total gained
/// since it was last seen, so it never goes down, and two scrapes at once add each gain once.
#[derive(Debug, Default)]
pub struct TotalCounter {
    counter: Counter,
    /// The largest total seen so far.
    seen: AtomicU64,
}

impl TotalCounter {
    /// Brings the counter up to `total`.
    pub fn follow(&self, total: u64) {
        let gained = gained_since(&self.seen, total);
        if gained > 0 {
            self.counter.inc_by(gained);
        }
    }
}

/// What `total` gained over the largest total `seen` so far, which becomes `total`: each
/// gain is counted once, whoever sees it first.
fn gained_since(seen: &AtomicU64, total: u64) -> u64 {
    total.saturating_sub(seen.fetch_max(total, Ordering::Relaxed))
}

/// The gateway's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    /// Tokens per request, by type: a histogram, as `gen_ai.client.token.usage` is.
    tokens: Family<TokenLabels, Histogram>,
    duration: Family<RequestLabels, Histogram>,
    ttft: Family<RequestLabels, Histogram>,
    events: Counter,
    /// Events folded into an overflow series because the series cap was reached.
    series_overflow: Counter,
    events_dropped: TotalCounter,
    /// Per-target breaker state (0 closed, 1 half-open, 2 open), set at scrape time.
    pub breaker_state: Family<TargetLabels, Gauge>,
    /// Per-target requests in flight, set at scrape time.
    pub in_flight: Family<TargetLabels, Gauge>,
    open_connections: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    /// The CPU time already added to `cpu_seconds`, in clock ticks (see `TotalCounter`).
    cpu_ticks_seen: AtomicU64,
    resident_memory: Gauge,
    /// Analytics pipeline gauges, set at scrape time: heap bytes, rows waiting for the
    /// store.
    pub analytics_memory: Gauge,
    /// See `analytics_memory`.
    pub analytics_pending: Gauge,
    /// Failed analytics store writes since start, followed at scrape time.
    pub analytics_store_failures: TotalCounter,
    /// Analytics entries lost because the store failed for too long, followed at scrape time.
    pub analytics_lost: TotalCounter,
    /// Spend in USD, by route, provider and model.
    cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    /// What cache hits saved, in USD.
    saved: Family<ModelLabels, Counter<f64, AtomicU64>>,
    /// Requests with tokens whose price is unknown.
    cost_unknown: Family<ModelLabels, Counter>,
    /// The rate limiter's series.
    pub rate_limits: crate::ratelimit::RateLimitMetrics,
    /// The response cache's series.
    pub cache: crate::cache::CacheMetrics,
    /// The budgets' series.
    pub budgets: crate::budget::BudgetMetrics,
    /// Quality feedback.
    pub quality: crate::quality::QualityMetrics,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 1 ms to ~65 s.
    exponential_buckets(0.001, 2.0, 17)
}

/// The bucket boundaries the GenAI semantic conventions give for `gen_ai.client.token.usage`:
/// 1 to 4^13 tokens.
fn token_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 4.0, 14)
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "switchyard_requests",
            "Requests served, by outcome",
            requests.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "switchyard_request_errors",
            "Failed requests, by error class",
            errors.clone(),
        );
        let tokens = Family::<TokenLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(token_buckets())
        });
        // Unit `{token}`: an annotation, which the Prometheus name leaves out.
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens per request ({token}) by gen_ai_token_type: input and output on every \
             request with usage; cached_input and reasoning, parts of those two, on requests \
             that had some",
            tokens.clone(),
        );
        let duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(seconds_buckets())
        });
        registry.register_with_unit(
            "gen_ai_server_request_duration",
            "Whole request duration, as the client saw it",
            Unit::Seconds,
            duration.clone(),
        );
        let ttft = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(seconds_buckets())
        });
        registry.register_with_unit(
            "gen_ai_server_time_to_first_token",
            "Time to the first generated token of streamed answers",
            Unit::Seconds,
            ttft.clone(),
        );
        let events = Counter::default();
        registry.register(
            "switchyard_events",
            "Request events processed",
            events.clone(),
        );
        let series_overflow = Counter::default();
        registry.register(
            "switchyard_metrics_series_overflow",
            "Request events counted in a route=other, model=other series because \
             analytics.metrics_max_series (route, provider, model) series already exist",
            series_overflow.clone(),
        );
        let events_dropped = TotalCounter::default();
        registry.register(
            "switchyard_events_dropped",
            "Request events dropped because the analytics channel was full (never blocks requests)",
            events_dropped.counter.clone(),
        );
        let breaker_state = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "switchyard_breaker_state",
            "Circuit breaker per target: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        let in_flight = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "switchyard_target_in_flight",
            "Requests in flight per target",
            in_flight.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "switchyard_open_connections",
            "Client connections open",
            open_connections.clone(),
        );
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "process_cpu",
            "CPU time used by the process (user + system)",
            Unit::Seconds,
            cpu_seconds.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory",
            Unit::Bytes,
            resident_memory.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let analytics_memory = gauge(
            &mut registry,
            "switchyard_analytics_memory_bytes",
            "Heap bytes of the in-memory analytics (open windows, live tier, buffers)",
        );
        let analytics_pending = gauge(
            &mut registry,
            "switchyard_analytics_pending",
            "Rollup rows and request log entries waiting for the store",
        );
        let total = |registry: &mut Registry, name: &str, help: &str| {
            let total = TotalCounter::default();
            registry.register(name, help, total.counter.clone());
            total
        };
        let analytics_store_failures = total(
            &mut registry,
            "switchyard_analytics_store_failures",
            "Failed analytics store writes (each is retried)",
        );
        let analytics_lost = total(
            &mut registry,
            "switchyard_analytics_lost",
            "Analytics entries dropped because the store failed for too long",
        );
        let cost = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "switchyard_cost_usd",
            "Spend in USD at the providers' prices (cache hits cost 0)",
            cost.clone(),
        );
        let saved = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "switchyard_cache_saved_usd",
            "What cache hits saved in USD: their stored answers' cost",
            saved.clone(),
        );
        let cost_unknown = Family::<ModelLabels, Counter>::default();
        registry.register(
            "switchyard_cost_unknown_requests",
            "Requests that used tokens of a model without a known price (add it under [[prices]])",
            cost_unknown.clone(),
        );
        let rate_limits = crate::ratelimit::RateLimitMetrics::register(&mut registry);
        let cache = crate::cache::CacheMetrics::register(&mut registry);
        let budgets = crate::budget::BudgetMetrics::register(&mut registry);
        let quality = crate::quality::QualityMetrics::register(&mut registry);
        Metrics {
            budgets,
            quality,
            cost,
            saved,
            cost_unknown,
            rate_limits,
            cache,
            registry,
            analytics_memory,
            analytics_pending,
            analytics_store_failures,
            analytics_lost,
            requests,
            errors,
            tokens,
            duration,
            ttft,
            events,
            series_overflow,
            events_dropped,
            breaker_state,
            in_flight,
            open_connections,
            cpu_seconds,
            cpu_ticks_seen: AtomicU64::new(0),
            resident_memory,
        }
    }

    /// The Prometheus text exposition, with scrape-time series refreshed: `dropped` is the
    /// event sink's running total of dropped events.
    pub fn render(&self, dropped: u64, connections: &AtomicI64) -> String {
        self.events_dropped.follow(dropped);
        self.open_connections
            .set(connections.load(Ordering::Relaxed));
        if let Some((cpu_ticks, rss)) = process_usage() {
            let gained = gained_since(&self.cpu_ticks_seen, cpu_ticks);
            if gained > 0 {
                self.cpu_seconds
                    .inc_by(gained as f64 / CLOCK_TICKS_PER_SECOND);
            }
            self.resident_memory.set(rss);
        }
        let mut text = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            tracing::error!("could not encode the metrics");
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// USER_HZ: 100 on every Linux target we build for.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU time in clock ticks and resident bytes of this process, from `/proc/self` (Linux
/// only).
fn process_usage() -> Option<(u64, i64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: i64 = fields.get(21)?.parse().ok()?;
    // Pages are 4 KiB on every Linux target we build for.
    Some((utime.saturating_add(stime), rss_pages * 4096))
}

/// The series of one (route, provider, model), resolved once: metric handles share their
/// storage with the registry, so later events update them without building label sets.
struct Series {
    labels: ModelLabels,
    by_status: HashMap<u16, StatusSeries>,
    /// By error class: `ErrorKind::as_str` or `client_closed`, a closed set.
    errors: HashMap<String, Counter>,
    /// By token type, in the order of `TOKEN_TYPES`; made on first use, so that a series
    /// without usage (or without cached or reasoning tokens) exports no empty histogram.
    tokens: [Option<Histogram>; 4],
    cost: Counter<f64, AtomicU64>,
    saved: Counter<f64, AtomicU64>,
    cost_unknown: Counter,
}

/// The series of one (route, provider, model, status).
struct StatusSeries {
    requests: Counter,
    duration: Histogram,
    /// Made on the first streamed answer.
    ttft: Option<Histogram>,
}

/// Token kinds, in the order of `Series::tokens`.
const TOKEN_TYPES: [&str; 4] = ["input", "output", "cached_input", "reasoning"];

impl Series {
    fn new(metrics: &Metrics, route: &str, provider: &str, model: &str) -> Self {
        let model_labels = ModelLabels {
            route: route.to_owned(),
            provider: provider.to_owned(),
            model: model.to_owned(),
        };
        Series {
            by_status: HashMap::new(),
            errors: HashMap::new(),
            tokens: [None, None, None, None],
            cost: metrics.cost.get_or_create(&model_labels).clone(),
            saved: metrics.saved.get_or_create(&model_labels).clone(),
            cost_unknown: metrics.cost_unknown.get_or_create(&model_labels).clone(),
            labels: model_labels,
        }
    }

    fn observe_tokens(&mut self, metrics: &Metrics, kind: usize, count: u64) {
        let Some(slot) = self.tokens.get_mut(kind) else {
            return;
        };
        let histogram = slot.get_or_insert_with(|| {
            metrics
                .tokens
                .get_or_create(&TokenLabels {
                    route: self.labels.route.clone(),
                    provider: self.labels.provider.clone(),
                    model: self.labels.model.clone(),
                    gen_ai_token_type: TOKEN_TYPES[kind],
                })
                .clone()
        });
        histogram.observe(count as f64);
    }

    fn observe(&mut self, metrics: &Metrics, event: &RequestEvent) {
        let by_status = match self.by_status.get_mut(&event.status) {
            Some(found) => found,
            None => {
                let labels = self.labels.with_status(event.status);
                self.by_status
                    .entry(event.status)
                    .or_insert_with(|| StatusSeries {
                        requests: metrics.requests.get_or_create(&labels).clone(),
                        duration: metrics.duration.get_or_create(&labels).clone(),
                        ttft: None,
                    })
            }
        };
        by_status.requests.inc();
        by_status
            .duration
            .observe(event.latency_us as f64 / 1_000_000.0);
        if let Some(ttft) = event.ttft_us {
            by_status
                .ttft
                .get_or_insert_with(|| {
                    let labels = self.labels.with_status(event.status);
                    metrics.ttft.get_or_create(&labels).clone()
                })
                .observe(ttft as f64 / 1_000_000.0);
        }
        if let Some(class) = &event.error_class {
            let errors = match self.errors.get(class) {
                Some(errors) => errors,
                None => {
                    let counter = metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            route: self.labels.route.clone(),
                            provider: self.labels.provider.clone(),
                            model: self.labels.model.clone(),
                            error_class: class.clone(),
                        })
                        .clone();
                    self.errors.entry(class.clone()).or_insert(counter)
                }
            };
            errors.inc();
        }
        let usage = event.usage;
        if usage.input.saturating_add(usage.output) > 0 {
            // One observation per request with usage; cached and reasoning tokens (parts of
            // input and output) only when there were some.
            self.observe_tokens(metrics, 0, usage.input);
            self.observe_tokens(metrics, 1, usage.output);
            for (kind, count) in [(2, usage.cached_input), (3, usage.reasoning)] {
                if count > 0 {
                    self.observe_tokens(metrics, kind, count);
                }
            }
        }
        match event.cost_usd {
            Some(cost) if cost > 0.0 => {
                self.cost.inc_by(cost);
            }
            Some(_) => {}
            None => {
                if usage.input + usage.output > 0 {
                    self.cost_unknown.inc();
                }
            }
        }
        if let Some(saved) = event.saved_usd {
            self.saved.inc_by(saved);
        }
        metrics.events.inc();
    }
}

/// The metrics side of the background task: series cached by route, provider and model
/// (nested, so that an event is looked up by reference, without building a key).
///
/// Route and model names come from clients (`provider/<anything>` is passed through), so at
/// most `max_series` of them get series of their own. An event of a further one is counted
/// in its provider's overflow series, labelled `route="other"` and `model="other"`, and in
/// `switchyard_metrics_series_overflow_total`. The configured routes always get series of
/// their own (their models are the config's too), outside the cap, so that client-chosen
/// names seen first cannot push them out. Provider names come from the config, so the
/// overflow series are bounded too. Every family keyed by route and model (requests, errors,
/// duration, time to first token, tokens, cost, savings, unknown cost) goes through here.
pub(crate) struct Consumer {
    series: HashMap<String, HashMap<String, HashMap<String, Series>>>,
    /// Series in `series`, at most `max_series`.
    len: usize,
    max_series: usize,
    /// The configured routes' names: never folded into the overflow series.
    configured: std::collections::HashSet<String>,
    /// By provider: where events go once `series` is full.
    overflow: HashMap<String, Series>,
}

impl Consumer {
    /// A consumer that keeps at most `max_series` (route, provider, model) series of names
    /// that are not `configured` routes.
    pub(crate) fn new(max_series: usize, configured: std::collections::HashSet<String>) -> Self {
        Consumer {
            series: HashMap::new(),
            len: 0,
            max_series,
            configured,
            overflow: HashMap::new(),
        }
    }

    pub(crate) fn observe(&mut self, metrics: &Metrics, event: &RequestEvent) {
        let route = event.route.as_deref().unwrap_or_default();
        let provider = event.provider.as_deref().unwrap_or_default();
        let model = event.model.as_deref().unwrap_or_default();
        if let Some(series) = self
            .series
            .get_mut(route)
            .and_then(|by_provider| by_provider.get_mut(provider))
            .and_then(|by_model| by_model.get_mut(model))
        {
            series.observe(metrics, event);
            return;
        }
        let configured = self.configured.contains(route);
        if configured || self.len < self.max_series {
            if !configured {
                self.len += 1;
            }
            self.series
                .entry(route.to_owned())
                .or_default()
                .entry(provider.to_owned())
                .or_default()
                .entry(model.to_owned())
                .or_insert_with(|| Series::new(metrics, route, provider, model))
                .observe(metrics, event);
            return;
        }
        metrics.series_overflow.inc();
        let series = match self.overflow.get_mut(provider) {
            Some(found) => found,
            None => self
                .overflow
                .entry(provider.to_owned())
                .or_insert_with(|| Series::new(metrics, OVERFLOW_LABEL, provider, OVERFLOW_LABEL)),
        };
        series.observe(metrics, event);
    }
}

impl EventSink {
    /// The shared counters, for the consumer.
    pub fn shared_counts(&self) -> Arc<SinkCounts> {
        Arc::clone(&self.counts)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use switchyard_core::wire::TokenUsage;

    use super::*;

    fn event(route: &str, provider: &str, model: &str) -> RequestEvent {
        RequestEvent {
            time_unix_ms: 0,
            request_id: String::new(),
            principal: "anonymous".to_owned(),
            tags: Vec::new(),
            endpoint: "/v1/chat/completions".to_owned(),
            route: Some(route.to_owned()),
            provider: Some(provider.to_owned()),
            model: Some(model.to_owned()),
            stream: false,
            status: 200,
            error_class: None,
            usage: TokenUsage {
                input: 10,
                output: 20,
                ..TokenUsage::default()
            },
            cost_usd: None,
            saved_usd: None,
            latency_us: 1_000,
            ttft_us: None,
            upstream_us: None,
            attempts: 1,
            cache: "none",
            rate_limit: None,
            stages: vec![],
        }
    }

    fn scrape(metrics: &Metrics, dropped: u64) -> (String, prometheus_parse::Scrape) {
        let text = metrics.render(dropped, &AtomicI64::new(0));
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        (text, scrape)
    }

    /// The sum of `name` over the samples whose labels include all of `labels`.
    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    #[test]
    fn series_past_the_cap_fold_into_one_overflow_series_per_provider() {
        let metrics = Metrics::new();
        let mut consumer = Consumer::new(3, HashSet::from(["chat".to_owned()]));
        // A client cycling through passthrough model names, each failing once and streaming
        // once, so that every family keyed by route and model gets a sample.
        for n in 0..10 {
            let model = format!("made-up-{n}");
            let route = format!("alpha/{model}");
            let mut failed = event(&route, "alpha", &model);
            failed.status = 502;
            failed.error_class = Some("upstream_error".to_owned());
            consumer.observe(&metrics, &failed);
            let mut streamed = event(&route, "alpha", &model);
            streamed.stream = true;
            streamed.ttft_us = Some(5_000);
            streamed.usage.cached_input = 4;
            consumer.observe(&metrics, &streamed);
        }
        // Another provider past the cap has an overflow series of its own.
        consumer.observe(&metrics, &event("beta/x", "beta", "x"));
        // A series made before the cap keeps counting under its own name.
        consumer.observe(&metrics, &event("alpha/made-up-0", "alpha", "made-up-0"));
        // A configured route seen only now still gets its own series, outside the cap.
        consumer.observe(&metrics, &event("chat", "alpha", "m"));

        assert_eq!(consumer.len, 3);
        assert_eq!(consumer.overflow.len(), 2);
        let (_, scrape) = scrape(&metrics, 0);
        assert_eq!(
            value(&scrape, "switchyard_metrics_series_overflow_total", &[]),
            15.0,
            "7 made-up models past the cap, 2 events each, and beta's"
        );
        let other = [("route", "other"), ("model", "other")];
        let alpha_other = [other.as_slice(), &[("provider", "alpha")]].concat();
        assert_eq!(
            value(&scrape, "switchyard_requests_total", &alpha_other),
            14.0
        );
        assert_eq!(
            value(
                &scrape,
                "switchyard_requests_total",
                &[other.as_slice(), &[("provider", "beta")]].concat()
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "switchyard_requests_total",
                &[("model", "made-up-0")]
            ),
            3.0
        );
        assert_eq!(
            value(&scrape, "switchyard_request_errors_total", &alpha_other),
            7.0
        );
        assert_eq!(
            value(
                &scrape,
                "gen_ai_server_time_to_first_token_seconds_count",
                &alpha_other
            ),
            7.0
        );
        assert_eq!(
            value(
                &scrape,
                "switchyard_cost_unknown_requests_total",
                &alpha_other
            ),
            14.0
        );
        assert_eq!(
            value(
                &scrape,
                "gen_ai_client_token_usage_sum",
                &[alpha_other.as_slice(), &[("gen_ai_token_type", "output")]].concat()
            ),
            14.0 * 20.0
        );
        // Every family keyed by route and model holds at most the capped series.
        let mut series = BTreeSet::new();
        for sample in &scrape.samples {
            if let (Some(route), Some(model)) =
                (sample.labels.get("route"), sample.labels.get("model"))
            {
                let provider = sample.labels.get("provider").unwrap_or_default();
                series.insert((route.to_owned(), provider.to_owned(), model.to_owned()));
            }
        }
        let expected: BTreeSet<_> = [
            ("alpha/made-up-0", "alpha", "made-up-0"),
            ("alpha/made-up-1", "alpha", "made-up-1"),
            ("alpha/made-up-2", "alpha", "made-up-2"),
            ("chat", "alpha", "m"),
            ("other", "alpha", "other"),
            ("other", "beta", "other"),
        ]
        .into_iter()
        .map(|(r, p, m)| (r.to_owned(), p.to_owned(), m.to_owned()))
        .collect();
        assert_eq!(series, expected);
    }

    #[test]
    fn tokens_are_a_histogram_per_request_and_ttft_has_a_status() {
        let metrics = Metrics::new();
        let mut consumer = Consumer::new(10, HashSet::new());
        let mut streamed = event("r", "alpha", "m");
        streamed.ttft_us = Some(250_000);
        streamed.usage.reasoning = 5;
        consumer.observe(&metrics, &streamed);
        let mut refused = event("r", "alpha", "m");
        refused.status = 400;
        refused.usage = TokenUsage::default();
        consumer.observe(&metrics, &refused);

        let (text, scrape) = scrape(&metrics, 0);
        assert!(text.contains("# TYPE gen_ai_client_token_usage histogram"));
        let output = [("gen_ai_token_type", "output")];
        assert_eq!(
            value(&scrape, "gen_ai_client_token_usage_count", &output),
            1.0,
            "one observation per request with usage"
        );
        assert_eq!(
            value(&scrape, "gen_ai_client_token_usage_sum", &output),
            20.0
        );
        assert_eq!(
            value(
                &scrape,
                "gen_ai_client_token_usage_sum",
                &[("gen_ai_token_type", "reasoning")]
            ),
            5.0
        );
        assert!(
            !text.contains("gen_ai_token_type=\"cached_input\""),
            "no empty histogram for a type never seen"
        );
        // The semantic conventions' boundaries: 20 output tokens fall in (16, 64].
        let buckets = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "gen_ai_client_token_usage"
                    && s.labels.get("gen_ai_token_type") == Some("output")
            })
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => buckets.clone(),
                other => panic!("not a histogram: {other:?}"),
            })
            .unwrap();
        let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
        let mut expected: Vec<f64> = (0..14).map(|i| 4f64.powi(i)).collect();
        expected.push(f64::INFINITY);
        assert_eq!(bounds, expected);
        let at = |bound: f64| buckets.iter().find(|b| b.less_than == bound).unwrap().count;
        assert_eq!((at(16.0), at(64.0)), (0.0, 1.0));

        assert_eq!(
            value(
                &scrape,
                "gen_ai_server_time_to_first_token_seconds_count",
                &[("status", "200"), ("model", "m")]
            ),
            1.0
        );
        assert!(
            !text.contains("gen_ai_server_time_to_first_token_seconds_count{route=\"r\",provider=\"alpha\",model=\"m\",status=\"400\"}"),
            "no time-to-first-token series for a status without streams"
        );
    }

    #[test]
    fn running_totals_are_counters_that_never_go_down() {
        let metrics = Metrics::new();
        metrics.analytics_lost.follow(5);
        metrics.analytics_lost.follow(3);
        metrics.analytics_lost.follow(7);
        metrics.analytics_store_failures.follow(2);
        scrape(&metrics, 4);
        let (text, scrape) = scrape(&metrics, 1);
        for name in [
            "process_cpu_seconds",
            "switchyard_events_dropped",
            "switchyard_analytics_store_failures",
            "switchyard_analytics_lost",
            "switchyard_metrics_series_overflow",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} counter\n")),
                "{name} is a counter:\n{text}"
            );
        }
        assert_eq!(value(&scrape, "switchyard_events_dropped_total", &[]), 4.0);
        assert_eq!(value(&scrape, "switchyard_analytics_lost_total", &[]), 7.0);
        assert_eq!(
            value(&scrape, "switchyard_analytics_store_failures_total", &[]),
            2.0
        );
        assert!(value(&scrape, "process_cpu_seconds_total", &[]) >= 0.0);
        assert!(text.contains("# UNIT process_cpu_seconds seconds"));
    }
}
