//! Where request events go: the accounting stage hands each one to a bounded channel and
//! never waits; a background task folds them into the Prometheus metrics served at
//! `GET /metrics`. When the channel is full the event is counted as dropped, never blocking
//! the request.
//!
//! Metric names follow the OpenTelemetry GenAI semantic conventions where one exists
//! (`gen_ai.server.request.duration`, `gen_ai.server.time_to_first_token`,
//! `gen_ai.client.token.usage`), written the Prometheus way.

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

/// Labels of per-model series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    route: String,
    provider: String,
    model: String,
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

/// The gateway's Prometheus metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    ttft: Family<ModelLabels, Histogram>,
    events: Counter,
    events_dropped: Gauge,
    /// Per-target breaker state (0 closed, 1 half-open, 2 open), set at scrape time.
    pub breaker_state: Family<TargetLabels, Gauge>,
    /// Per-target requests in flight, set at scrape time.
    pub in_flight: Family<TargetLabels, Gauge>,
    open_connections: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident_memory: Gauge,
    /// Analytics pipeline gauges, set at scrape time: heap bytes, rows waiting for the
    /// store, failed store writes, entries lost after the store failed for too long.
    pub analytics_memory: Gauge,
    /// See `analytics_memory`.
    pub analytics_pending: Gauge,
    /// See `analytics_memory`.
    pub analytics_store_failures: Gauge,
    /// See `analytics_memory`.
    pub analytics_lost: Gauge,
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
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens used (input, output, cached_input, reasoning)",
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
        let ttft = Family::<ModelLabels, Histogram>::new_with_constructor(|| {
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
        let events_dropped = Gauge::default();
        registry.register(
            "switchyard_events_dropped",
            "Request events dropped because the analytics channel was full (never blocks requests)",
            events_dropped.clone(),
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
        let cpu_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "process_cpu_seconds",
            "CPU time used by the process (user + system)",
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
        let analytics_store_failures = gauge(
            &mut registry,
            "switchyard_analytics_store_failures",
            "Failed analytics store writes since start (each is retried)",
        );
        let analytics_lost = gauge(
            &mut registry,
            "switchyard_analytics_lost",
            "Analytics entries dropped since start because the store failed for too long",
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
            events_dropped,
            breaker_state,
            in_flight,
            open_connections,
            cpu_seconds,
            resident_memory,
        }
    }

    /// The Prometheus text exposition, with scrape-time gauges refreshed.
    pub fn render(&self, dropped: u64, connections: &AtomicI64) -> String {
        self.events_dropped
            .set(i64::try_from(dropped).unwrap_or(i64::MAX));
        self.open_connections
            .set(connections.load(Ordering::Relaxed));
        if let Some((cpu, rss)) = process_usage() {
            self.cpu_seconds.set(cpu);
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

/// CPU seconds and resident bytes of this process, from `/proc/self` (Linux only).
fn process_usage() -> Option<(f64, i64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: i64 = fields.get(21)?.parse().ok()?;
    // USER_HZ is 100 and pages are 4 KiB on every Linux target we build for.
    Some(((utime + stime) / 100.0, rss_pages * 4096))
}

/// The series of one (route, provider, model), resolved once: metric handles share their
/// storage with the registry, so later events update them without building label sets.
struct Series {
    route: String,
    provider: String,
    model: String,
    by_status: HashMap<u16, (Counter, Histogram)>,
    errors: HashMap<String, Counter>,
    ttft: Histogram,
    tokens: [Counter; 4],
    cost: Counter<f64, AtomicU64>,
    saved: Counter<f64, AtomicU64>,
    cost_unknown: Counter,
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
            route: route.to_owned(),
            provider: provider.to_owned(),
            model: model.to_owned(),
            by_status: HashMap::new(),
            errors: HashMap::new(),
            ttft: metrics.ttft.get_or_create(&model_labels).clone(),
            cost: metrics.cost.get_or_create(&model_labels).clone(),
            saved: metrics.saved.get_or_create(&model_labels).clone(),
            cost_unknown: metrics.cost_unknown.get_or_create(&model_labels).clone(),
            tokens: TOKEN_TYPES.map(|kind| {
                metrics
                    .tokens
                    .get_or_create(&TokenLabels {
                        route: route.to_owned(),
                        provider: provider.to_owned(),
                        model: model.to_owned(),
                        gen_ai_token_type: kind,
                    })
                    .clone()
            }),
        }
    }

    fn observe(&mut self, metrics: &Metrics, event: &RequestEvent) {
        let (route, provider, model) = (&self.route, &self.provider, &self.model);
        let (requests, duration) = self.by_status.entry(event.status).or_insert_with(|| {
            let labels = RequestLabels {
                route: route.clone(),
                provider: provider.clone(),
                model: model.clone(),
                status: event.status.to_string(),
            };
            (
                metrics.requests.get_or_create(&labels).clone(),
                metrics.duration.get_or_create(&labels).clone(),
            )
        });
        requests.inc();
        duration.observe(event.latency_us as f64 / 1_000_000.0);
        if let Some(class) = &event.error_class {
            let errors = match self.errors.get(class) {
                Some(errors) => errors,
                None => {
                    let counter = metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            route: route.clone(),
                            provider: provider.clone(),
                            model: model.clone(),
                            error_class: class.clone(),
                        })
                        .clone();
                    self.errors.entry(class.clone()).or_insert(counter)
                }
            };
            errors.inc();
        }
        if let Some(ttft) = event.ttft_us {
            self.ttft.observe(ttft as f64 / 1_000_000.0);
        }
        let usage = event.usage;
        for (counter, count) in self.tokens.iter().zip([
            usage.input,
            usage.output,
            usage.cached_input,
            usage.reasoning,
        ]) {
            if count > 0 {
                counter.inc_by(count);
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
#[derive(Default)]
pub(crate) struct Consumer {
    series: HashMap<String, HashMap<String, HashMap<String, Series>>>,
}

impl Consumer {
    pub(crate) fn observe(&mut self, metrics: &Metrics, event: &RequestEvent) {
        let route = event.route.as_deref().unwrap_or_default();
        let provider = event.provider.as_deref().unwrap_or_default();
        let model = event.model.as_deref().unwrap_or_default();
        let by_provider = match self.series.get_mut(route) {
            Some(found) => found,
            None => self.series.entry(route.to_owned()).or_default(),
        };
        let by_model = match by_provider.get_mut(provider) {
            Some(found) => found,
            None => by_provider.entry(provider.to_owned()).or_default(),
        };
        let series = match by_model.get_mut(model) {
            Some(found) => found,
            None => by_model
                .entry(model.to_owned())
                .or_insert_with(|| Series::new(metrics, route, provider, model)),
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
