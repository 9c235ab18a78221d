//! Tracing: the process's `tracing` subscriber, the spans of the request path, and their
//! export to an OpenTelemetry collector over OTLP/HTTP (protobuf).
//!
//! - Logs go to stderr, filtered by `RUST_LOG` (default `info`).
//! - Every request opens a root `request` span ([`request_span`]), a span per stage
//!   ([`crate::timing::Stage::span`]) and a span per provider call ([`RequestTrace::call`]),
//!   all `tracing` spans at DEBUG level, for local subscribers: under the default log filter
//!   they are disabled, and a disabled span costs a load of the global max level.
//! - With `[telemetry]` (or `OTEL_EXPORTER_OTLP_ENDPOINT`), the app holds a [`Telemetry`]:
//!   each request gets a [`RequestTrace`], and its spans are exported from what the request
//!   path records anyway. A stage's span is made from its `Server-Timing` lap when the lap is
//!   recorded ([`crate::timing::Timings`]), a provider call's from its [`CallSpan`] when the
//!   call ends, and the root span when the response body is done. Each finished span goes
//!   straight to the SDK's batch processor as `SpanData`.
//! - W3C trace context, only while export is on: a client's `traceparent` becomes the root
//!   span's parent, and each provider request carries its call span's `traceparent`. No
//!   client header is ever forwarded upstream. The sampler is the SDK's parent-based ratio
//!   sampler, asked once per request; an unsampled trace still propagates (flag `00`) but
//!   builds no spans.
//!
//! Why not `tracing-opentelemetry`: bridging every `tracing` span into an OpenTelemetry span
//! (per-span extension storage, attribute visitors, an SDK span per `tracing` span, each
//! copied again into the processor's queue) took twice the CPU per request, and more added
//! latency, than building the seven `SpanData` of a request directly (figures in
//! ARCHITECTURE.md).
//!
//! Nothing here may block a request: a finished span goes into the processor's bounded queue
//! (dropped when it is full) and is exported later. The batch processor is the SDK's own, on a
//! thread of its own: it wakes once per batch (or every `OTEL_BSP_SCHEDULE_DELAY`), encodes
//! it, and sends it itself ([`ExportClient`]), so that no export work runs on the workers that
//! serve requests.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler,
    SamplingDecision, ShouldSample, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use switchyard_core::GatewayError;
use switchyard_core::config::{Provider, Target, TelemetryConfig};
use switchyard_core::wire::TokenUsage;
use tracing::{Level, Span, Subscriber};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::ErrorClass;
use crate::timing::Stage;

/// How long one export may take, connecting included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The W3C header that carries the trace context.
const TRACEPARENT: &str = "traceparent";

/// The log filter when `RUST_LOG` is unset. It leaves the request path's DEBUG spans
/// disabled.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Trace export: the batch processor, the sampler and the id generator. Cheap to clone. End
/// with [`Telemetry::shutdown`], or the spans not yet exported are lost.
#[derive(Clone)]
pub struct Telemetry(Arc<Exporter>);

struct Exporter {
    processor: BatchSpanProcessor,
    sampler: Sampler,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    /// Where spans go, for the start-up log line.
    endpoint: String,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("endpoint", &self.0.endpoint)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the OTLP/HTTP exporter, the batch processor ([`batch_config`]) and a
    /// parent-based ratio sampler.
    pub fn start(config: &TelemetryConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| format!("telemetry: could not start the export runtime: {error}"))?;
        let connector = crate::transport::https_connector(EXPORT_TIMEOUT)?;
        let client = ExportClient {
            client: HyperClient::new(connector, EXPORT_TIMEOUT, None),
            runtime: Some(runtime),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.traces_endpoint.as_str())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|error| format!("telemetry: could not build the OTLP exporter: {error}"))?;
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch_config(|name| std::env::var_os(name).is_some()))
            .build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        );
        tracing::info!(endpoint = %config.traces_endpoint, "exporting traces (OTLP/HTTP)");
        Ok(Telemetry(Arc::new(Exporter {
            processor,
            sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))),
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("switchyard")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            endpoint: config.traces_endpoint.clone(),
        })))
    }

    /// Starts the trace of one request: continues the client's W3C trace context when it
    /// sent one, and asks the sampler whether this trace is recorded.
    pub fn start_request(&self, request: &Request, request_id: &HeaderValue) -> RequestTrace {
        let exporter = &self.0;
        let propagator = TraceContextPropagator::new();
        let parent = request
            .headers()
            .contains_key(TRACEPARENT)
            .then(|| propagator.extract(&HeaderExtractor(request.headers())))
            .filter(|parent| parent.span().span_context().is_valid());
        let remote = parent
            .as_ref()
            .map(|parent| parent.span().span_context().clone());
        let trace_id = match &remote {
            Some(remote) => remote.trace_id(),
            None => exporter.ids.new_trace_id(),
        };
        let sampling = exporter.sampler.should_sample(
            parent.as_ref(),
            trace_id,
            "request",
            &SpanKind::Server,
            &[],
            &[],
        );
        let flags = match sampling.decision {
            SamplingDecision::RecordAndSample => TraceFlags::SAMPLED,
            SamplingDecision::Drop | SamplingDecision::RecordOnly => TraceFlags::default(),
        };
        let path = request.uri().path();
        RequestTrace(Some(Arc::new(TraceInner {
            telemetry: self.clone(),
            context: SpanContext::new(
                trace_id,
                exporter.ids.new_span_id(),
                flags,
                false,
                sampling.trace_state,
            ),
            parent: remote
                .as_ref()
                .map_or(SpanId::INVALID, SpanContext::span_id),
            upstream: exporter.ids.new_span_id(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            method: request.method().clone(),
            route: http_route(path),
            path: path.into(),
            request_id: request_id.clone(),
        })))
    }

    /// Exports every finished span now.
    pub async fn flush(&self) -> Result<(), String> {
        let telemetry = self.clone();
        // The SDK blocks until the batch thread has exported: not on a worker.
        tokio::task::spawn_blocking(move || telemetry.0.processor.force_flush())
            .await
            .map_err(|error| format!("trace flush did not finish: {error}"))?
            .map_err(|error| format!("trace flush failed: {error}"))
    }

    /// Exports what is pending and stops the exporter (at graceful shutdown).
    pub async fn shutdown(&self) {
        let telemetry = self.clone();
        let stopped = tokio::task::spawn_blocking(move || telemetry.0.processor.shutdown()).await;
        match stopped {
            Ok(Ok(())) => tracing::info!("trace export flushed and stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "trace export did not stop cleanly"),
            Err(error) => tracing::warn!(%error, "trace export did not stop cleanly"),
        }
    }
}

/// A batch of this many spans is exported at once (the SDK's default is 512)...
const EXPORT_BATCH: usize = 2048;
/// ...and this many may wait (the SDK's default is 2048; at about 250 bytes a span, 2 MB).
const EXPORT_QUEUE: usize = 8192;

/// The batch processor's settings: the standard `OTEL_BSP_*` variables where they are set
/// (`is_set` tells), else the SDK's defaults except for bigger batches: a gateway makes about
/// seven spans a request, and each export's fixed cost (a wake-up, an HTTP request, the
/// collector's work) is better spread over more of them (measured: ARCHITECTURE.md).
fn batch_config(is_set: impl Fn(&str) -> bool) -> BatchConfig {
    let mut config = BatchConfigBuilder::default();
    if !is_set("OTEL_BSP_MAX_QUEUE_SIZE") {
        config = config.with_max_queue_size(EXPORT_QUEUE);
    }
    if !is_set("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        config = config.with_max_export_batch_size(EXPORT_BATCH);
    }
    config.build()
}

/// The exporter's HTTP client: hyper with the transport's rustls connector, driven by a
/// current-thread runtime of its own on the batch processor's thread (the SDK runs each export
/// to completion there), so exports never take a request worker's time.
#[derive(Debug)]
struct ExportClient {
    client: HyperClient<HttpsConnector<HttpConnector>>,
    /// `None` only once dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        // The batch thread is no runtime's: blocking it is what it is for.
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err("trace export must run on the batch processor's thread".into());
        }
        match &self.runtime {
            Some(runtime) => runtime.block_on(self.client.send_bytes(request)),
            None => Err("trace export is shut down".into()),
        }
    }
}

impl Drop for ExportClient {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime (a failed start).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The exported trace of one request; does nothing when export is off. Cheap to clone.
#[derive(Clone, Default)]
pub struct RequestTrace(Option<Arc<TraceInner>>);

struct TraceInner {
    telemetry: Telemetry,
    /// The root span's context: trace id, span id, the sampling decision, trace state.
    context: SpanContext,
    /// The client's span, or invalid for a trace the gateway started.
    parent: SpanId,
    /// The `upstream` stage's span id, chosen up front: provider calls are its children.
    upstream: SpanId,
    /// When the request started, on both clocks (spans carry wall-clock times, the request
    /// path measures with `Instant`).
    started: Instant,
    started_at: SystemTime,
    method: Method,
    route: Option<&'static str>,
    path: Box<str>,
    request_id: HeaderValue,
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(trace) => write!(
                f,
                "RequestTrace({}, sampled: {})",
                trace.context.trace_id(),
                trace.context.is_sampled()
            ),
            None => f.write_str("RequestTrace(off)"),
        }
    }
}

impl TraceInner {
    /// The context of this trace's span `id`: the trace's id, sampling decision and state.
    fn span_context(&self, id: SpanId) -> SpanContext {
        SpanContext::new(
            self.context.trace_id(),
            id,
            self.context.trace_flags(),
            false,
            self.context.trace_state().clone(),
        )
    }

    /// Wall-clock time of `instant`.
    fn at(&self, instant: Instant) -> SystemTime {
        self.started_at + instant.saturating_duration_since(self.started)
    }

    /// Hands a finished span of this trace to the batch processor.
    #[allow(clippy::too_many_arguments)]
    fn export(
        &self,
        id: SpanId,
        parent: SpanId,
        kind: SpanKind,
        name: Cow<'static, str>,
        (start, end): (Instant, Instant),
        attributes: Vec<KeyValue>,
        status: Status,
    ) {
        let exporter = &self.telemetry.0;
        exporter.processor.on_end(SpanData {
            span_context: self.span_context(id),
            parent_span_is_remote: parent == self.parent && parent != SpanId::INVALID,
            parent_span_id: parent,
            span_kind: kind,
            name,
            start_time: self.at(start),
            end_time: self.at(end),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: exporter.scope.clone(),
        });
    }
}

impl RequestTrace {
    /// The trace when it is recorded (sampled), else `None`.
    fn sampled(&self) -> Option<&TraceInner> {
        self.0.as_deref().filter(|trace| trace.context.is_sampled())
    }

    /// Exports a stage's span, a child of the request's, which ran over the times `when`
    /// gives (asked only when the trace is sampled). `translate` is left to its provider
    /// call ([`CallSpan::translated`]).
    pub fn stage(&self, stage: Stage, when: impl FnOnce() -> (Instant, Instant)) {
        let Some(trace) = self.sampled() else {
            return;
        };
        let id = match stage {
            Stage::Translate => return,
            Stage::Upstream => trace.upstream,
            _ => trace.telemetry.0.ids.new_span_id(),
        };
        trace.export(
            id,
            trace.context.span_id(),
            SpanKind::Internal,
            Cow::Borrowed(stage.name()),
            when(),
            Vec::new(),
            Status::Unset,
        );
    }

    /// Exports the request's root span, now that its response is over.
    fn finish(&self, status: StatusCode, error_type: Option<&'static str>) {
        let Some(trace) = self.sampled() else {
            return;
        };
        let name = match trace.route {
            Some(route) => Cow::Owned(format!("{} {route}", trace.method)),
            None => Cow::Owned(trace.method.to_string()),
        };
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new(
            "http.request.method",
            trace.method.as_str().to_owned(),
        ));
        if let Some(route) = trace.route {
            attributes.push(KeyValue::new("http.route", route));
        }
        attributes.push(KeyValue::new("url.path", trace.path.to_string()));
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if let Some(error_type) = error_type {
            attributes.push(KeyValue::new("error.type", error_type));
        }
        attributes.push(KeyValue::new(
            "switchyard.request_id",
            trace.request_id.to_str().unwrap_or("invalid").to_owned(),
        ));
        trace.export(
            trace.context.span_id(),
            trace.parent,
            SpanKind::Server,
            name,
            (trace.started, Instant::now()),
            attributes,
            if status.is_server_error() {
                Status::error("")
            } else {
                Status::Unset
            },
        );
    }

    /// The span of one provider call (one failover attempt), with the GenAI
    /// semantic-convention attributes known before the call; the rest are recorded as they
    /// become known. Its W3C trace context goes into the provider request's `headers`. The
    /// call's `tracing` span (for local subscribers) comes with it.
    pub fn call(&self, operation: Operation, target: &Target, headers: &mut HeaderMap) -> CallSpan {
        let provider = &target.provider;
        let span = tracing::debug_span!(
            "provider_call",
            gen_ai.operation.name = operation.name(),
            gen_ai.request.model = target.model.as_str(),
            switchyard.provider = provider.name.as_str(),
        );
        let Some(trace) = &self.0 else {
            return CallSpan { span, export: None };
        };
        let mut attributes = Vec::new();
        if trace.context.is_sampled() {
            attributes.reserve(12);
            attributes.push(KeyValue::new("gen_ai.operation.name", operation.name()));
            attributes.push(KeyValue::new(
                "gen_ai.provider.name",
                genai_provider_name(provider).to_owned(),
            ));
            attributes.push(KeyValue::new("gen_ai.request.model", target.model.clone()));
            attributes.push(KeyValue::new("switchyard.provider", provider.name.clone()));
            server_attributes(provider, &mut attributes);
        }
        let call = CallSpan {
            span,
            export: Some(Box::new(CallExport {
                trace: Arc::clone(trace),
                id: trace.telemetry.0.ids.new_span_id(),
                started: Instant::now(),
                name: format!("{} {}", operation.name(), target.model),
                attributes,
                status: Status::Unset,
            })),
        };
        call.inject(headers);
        call
    }
}

/// One provider call's span, exported when it is dropped (a stream's when the stream ends).
/// `CallSpan::default()` is none at all.
pub struct CallSpan {
    span: Span,
    export: Option<Box<CallExport>>,
}

struct CallExport {
    trace: Arc<TraceInner>,
    id: SpanId,
    started: Instant,
    name: String,
    /// Empty, and left so, when the trace is not sampled.
    attributes: Vec<KeyValue>,
    status: Status,
}

impl Default for CallSpan {
    fn default() -> Self {
        CallSpan {
            span: Span::none(),
            export: None,
        }
    }
}

impl std::fmt::Debug for CallSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSpan")
            .field("exported", &self.export.is_some())
            .finish_non_exhaustive()
    }
}

impl CallSpan {
    /// The call's `tracing` span, to run the call in.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The recording part, when the trace is sampled.
    fn recording(&mut self) -> Option<&mut CallExport> {
        self.export
            .as_deref_mut()
            .filter(|call| call.trace.context.is_sampled())
    }

    /// Adds this call's W3C trace context (`traceparent`, and `tracestate` when there is
    /// one) to its provider request. Nothing is added when export is off.
    fn inject(&self, headers: &mut HeaderMap) {
        let Some(call) = &self.export else {
            return;
        };
        let context = opentelemetry::Context::new()
            .with_remote_span_context(call.trace.span_context(call.id));
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }

    /// Records the provider's HTTP status.
    pub fn record_status(&mut self, status: StatusCode) {
        if let Some(call) = self.recording() {
            call.attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
        }
    }

    /// Records the call's token usage.
    pub fn record_usage(&mut self, usage: &TokenUsage) {
        if let Some(call) = self.recording() {
            call.attributes.push(KeyValue::new(
                "gen_ai.usage.input_tokens",
                as_attribute(usage.input),
            ));
            call.attributes.push(KeyValue::new(
                "gen_ai.usage.output_tokens",
                as_attribute(usage.output),
            ));
        }
    }

    /// Marks the call failed with `error`'s class and client-safe message (and the provider's
    /// status, when it answered).
    pub fn record_error(&mut self, error: &GatewayError) {
        if let Some(status) = error
            .upstream_status
            .and_then(|s| StatusCode::from_u16(s).ok())
        {
            self.record_status(status);
        }
        if let Some(call) = self.recording() {
            call.attributes
                .push(KeyValue::new("error.type", error.kind.as_str()));
            call.status = Status::error(error.message.clone());
        }
    }

    /// Exports the `translate` span, a child of this call's, which ran from `started` to now.
    pub fn translated(&mut self, started: Instant) {
        if let Some(call) = self.recording() {
            let trace = &call.trace;
            trace.export(
                trace.telemetry.0.ids.new_span_id(),
                call.id,
                SpanKind::Internal,
                Cow::Borrowed(Stage::Translate.name()),
                (started, Instant::now()),
                Vec::new(),
                Status::Unset,
            );
        }
    }
}

impl Drop for CallSpan {
    fn drop(&mut self) {
        let Some(call) = self.recording() else {
            return;
        };
        let trace = Arc::clone(&call.trace);
        trace.export(
            call.id,
            trace.upstream,
            SpanKind::Client,
            Cow::Owned(std::mem::take(&mut call.name)),
            (call.started, Instant::now()),
            std::mem::take(&mut call.attributes),
            std::mem::replace(&mut call.status, Status::Unset),
        );
    }
}

/// `server.address` and `server.port` of the provider's base URL.
fn server_attributes(provider: &Provider, attributes: &mut Vec<KeyValue>) {
    let Ok(uri) = provider.base_url.parse::<http::Uri>() else {
        return;
    };
    if let Some(host) = uri.host() {
        attributes.push(KeyValue::new("server.address", host.to_owned()));
    }
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    attributes.push(KeyValue::new("server.port", i64::from(port)));
}

/// OpenTelemetry integers are signed.
fn as_attribute(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Installs the process-wide subscriber: logs to stderr (`RUST_LOG`, default `info`). Trace
/// export is the app's ([`Telemetry`], started with the app state). Call once.
pub fn init() -> Result<(), String> {
    let logs = log_layer(
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
    );
    tracing_subscriber::registry()
        .with(logs)
        .try_init()
        .map_err(|error| format!("could not install the log subscriber: {error}"))
}

/// Logs to stderr, through `filter`.
fn log_layer<S>(filter: EnvFilter) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_filter(filter)
}

/// The root `tracing` span of one request, for local subscribers (disabled under the default
/// log filter).
pub fn request_span(request: &Request, request_id: &HeaderValue) -> Span {
    if !tracing::level_enabled!(Level::DEBUG) {
        return Span::none();
    }
    tracing::debug_span!(
        "request",
        http.request.method = request.method().as_str(),
        url.path = request.uri().path(),
        switchyard.request_id = request_id.to_str().unwrap_or("invalid"),
    )
}

/// The route template a path matches, for span names of bounded cardinality; `None` for paths
/// the gateway does not serve. (Axum's `MatchedPath` would cost every request an extension,
/// traced or not.) Follows [`crate::app::router`].
fn http_route(path: &str) -> Option<&'static str> {
    Some(match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/chat/completions" => "/chat/completions",
        "/v1/embeddings" => "/v1/embeddings",
        "/embeddings" => "/embeddings",
        "/v1/models" => "/v1/models",
        "/metrics" => "/metrics",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/admin/providers" => "/admin/providers",
        _ if path.starts_with("/v1/models/") => "/v1/models/{*model}",
        _ if path.starts_with("/admin/providers/") && path.ends_with("/drain") => {
            "/admin/providers/{name}/drain"
        }
        _ if path.starts_with("/admin/providers/") && path.ends_with("/enable") => {
            "/admin/providers/{name}/enable"
        }
        _ => return None,
    })
}

/// Keeps the request's `tracing` span open, and its exported root span unfinished, until the
/// response body has been sent (a stream's included) or dropped. A response with neither is
/// left untouched.
pub fn finish_request(span: Span, trace: RequestTrace, response: Response) -> Response {
    let export = trace.sampled().is_some();
    if span.is_disabled() && !export {
        return response;
    }
    let root = export.then(|| RootEnd {
        trace,
        status: response.status(),
        error_type: response
            .extensions()
            .get::<ErrorClass>()
            .map(|ErrorClass(class)| *class),
    });
    response.map(|body| {
        Body::new(SpannedBody {
            inner: body,
            span,
            root,
        })
    })
}

/// What the exported root span needs once the body is done.
struct RootEnd {
    trace: RequestTrace,
    status: StatusCode,
    error_type: Option<&'static str>,
}

impl Drop for RootEnd {
    fn drop(&mut self) {
        self.trace.finish(self.status, self.error_type);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's spans open until it is done or dropped.
    struct SpannedBody {
        #[pin]
        inner: Body,
        span: Span,
        root: Option<RootEnd>,
    }
}

impl HttpBody for SpannedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a provider call does, as OpenTelemetry's GenAI conventions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Chat completions.
    Chat,
    /// Embeddings.
    Embeddings,
}

impl Operation {
    /// `gen_ai.operation.name`.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Embeddings => "embeddings",
        }
    }
}

/// `gen_ai.provider.name`: the convention's well-known value for the provider's kind, or the
/// kind itself for those it does not list.
fn genai_provider_name(provider: &Provider) -> &str {
    match provider.kind.as_str() {
        "azure" => "azure.ai.openai",
        "gemini" => "gcp.gemini",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        kind => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timing::Stage;

    #[test]
    fn request_spans_are_disabled_under_the_default_log_filter() {
        let logs =
            tracing_subscriber::registry().with(log_layer(EnvFilter::new(DEFAULT_LOG_FILTER)));
        tracing::subscriber::with_default(logs, || {
            let request = Request::new(Body::empty());
            let id = HeaderValue::from_static("req_1");
            assert!(request_span(&request, &id).is_disabled());
            for stage in [
                Stage::Auth,
                Stage::Parse,
                Stage::Route,
                Stage::Upstream,
                Stage::Translate,
            ] {
                assert!(stage.span(&Span::none()).is_disabled(), "{stage:?}");
            }
            // The subscriber is live: an INFO span passes.
            assert!(!tracing::info_span!("info").is_disabled());
        });
        // RUST_LOG=debug turns them on (for the logs; nothing is exported without a layer).
        let debug = tracing_subscriber::registry().with(log_layer(EnvFilter::new("debug")));
        tracing::subscriber::with_default(debug, || {
            assert!(!Stage::Upstream.span(&Span::none()).is_disabled());
        });
    }

    #[test]
    fn batches_are_bigger_than_the_sdks_unless_the_environment_says() {
        let ours = format!("{:?}", batch_config(|_| false));
        assert!(ours.contains("max_queue_size: 8192"), "{ours}");
        assert!(ours.contains("max_export_batch_size: 2048"), "{ours}");
        // A variable that is set wins; the SDK reads it (unset here: its own default).
        let batch_set = format!(
            "{:?}",
            batch_config(|name| name == "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
        );
        assert!(batch_set.contains("max_queue_size: 8192"), "{batch_set}");
        assert!(
            !batch_set.contains("max_export_batch_size: 2048"),
            "{batch_set}"
        );
    }

    #[test]
    fn span_names_use_route_templates() {
        assert_eq!(
            http_route("/v1/chat/completions"),
            Some("/v1/chat/completions")
        );
        assert_eq!(
            http_route("/v1/models/openai/gpt-4o"),
            Some("/v1/models/{*model}")
        );
        assert_eq!(
            http_route("/admin/providers/a/drain"),
            Some("/admin/providers/{name}/drain")
        );
        assert_eq!(http_route("/wp-login.php"), None);
    }
}
