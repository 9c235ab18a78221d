//! Tracing: the process's `tracing` subscriber, the spans of the request path, and their
//! export to an OpenTelemetry collector over OTLP/HTTP (protobuf).
//!
//! - Logs go to stderr, filtered by `RUST_LOG` (default `info`).
//! - Every request opens a root `request` span ([`request_span`]), a span per stage
//!   ([`crate::timing::Stage::span`]) and a span per provider call ([`provider_call_span`]),
//!   all at DEBUG level: under the default log filter they are disabled, and a disabled span
//!   costs a load of the global max level.
//! - With `[telemetry]` (or `OTEL_EXPORTER_OTLP_ENDPOINT`), [`Telemetry`] adds an
//!   OpenTelemetry layer that sees the gateway's spans whatever `RUST_LOG` says, and the SDK's
//!   batch processor exports them in the background. Without it the layer is not installed
//!   at all.
//! - W3C trace context, only while export is on: a client's `traceparent` becomes the root
//!   span's parent, and each provider request carries its call span's `traceparent`. No
//!   client header is ever forwarded upstream.
//!
//! Nothing here may block a request: a finished span goes into the processor's bounded queue
//! (dropped when it is full) and is exported later.
//!
//! The batch processor is the SDK's own, on a thread of its own, not its tokio variant: that
//! one wakes its task for every finished span, a cross-thread wake-up per span that cost about
//! 10 µs per request (7 spans) when the span path was timed alone. The thread wakes once per
//! batch, encodes it, and sends it itself ([`ExportClient`]), so that no export work runs on
//! the workers that serve requests.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use switchyard_core::GatewayError;
use switchyard_core::config::{Provider, Target, TelemetryConfig};
use switchyard_core::wire::TokenUsage;
use tracing::field::Empty;
use tracing::{Instrument, Level, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::ErrorClass;

/// How long one export may take, connecting included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The W3C header that carries the trace context.
const TRACEPARENT: &str = "traceparent";

/// The log filter when `RUST_LOG` is unset. It leaves the request path's DEBUG spans
/// disabled.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// Trace export: the tracer provider and its batch processor. End with
/// [`Telemetry::shutdown`], or the spans not yet exported are lost.
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Where spans go, for the start-up log line.
    endpoint: String,
}

impl Telemetry {
    /// Builds the OTLP/HTTP exporter, the batch processor and a parent-based ratio sampler.
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
        // Queue and batch sizes: the SDK's defaults, or the standard OTEL_BSP_* variables.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Telemetry {
            provider,
            endpoint: config.traces_endpoint.clone(),
        })
    }

    /// The `tracing` layer that turns the gateway's spans into OpenTelemetry spans. It sees
    /// the gateway's spans and its warnings and errors (as span events), nothing else, and
    /// does not depend on `RUST_LOG`.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("switchyard"))
            // Per-enter bookkeeping and attributes nobody asked for, on every request.
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(FilterFn::new(exported).with_max_level_hint(Level::DEBUG))
    }

    /// Exports every finished span now.
    pub async fn flush(&self) -> Result<(), String> {
        let provider = self.provider.clone();
        // The SDK blocks until the batch thread has exported: not on a worker.
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .map_err(|error| format!("trace flush did not finish: {error}"))?
            .map_err(|error| format!("trace flush failed: {error}"))
    }

    /// Exports what is pending and stops the exporter (at graceful shutdown).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match stopped {
            Ok(Ok(())) => tracing::info!("trace export flushed and stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "trace export did not stop cleanly"),
            Err(error) => tracing::warn!(%error, "trace export did not stop cleanly"),
        }
    }
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

/// What the export layer sees: the gateway's own spans, and its warnings and errors.
fn exported(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("switchyard")
        && (metadata.is_span() || *metadata.level() <= Level::WARN)
}

/// Starts trace export when `config` asks for it, and installs the process-wide subscriber:
/// logs to stderr (`RUST_LOG`, default `info`), plus the export layer. Call once, within the
/// tokio runtime; flush with [`Telemetry::shutdown`].
pub fn init(config: Option<&TelemetryConfig>) -> Result<Option<Telemetry>, String> {
    let telemetry = config.map(Telemetry::start).transpose()?;
    let logs = log_layer(
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
    );
    let installed = match &telemetry {
        // Two types: with no export the layer is absent, not a no-op in the stack.
        None => tracing_subscriber::registry().with(logs).try_init(),
        Some(telemetry) => tracing_subscriber::registry()
            .with(logs)
            .with(telemetry.layer())
            .try_init(),
    };
    installed.map_err(|error| format!("could not install the log subscriber: {error}"))?;
    if let Some(telemetry) = &telemetry {
        tracing::info!(endpoint = %telemetry.endpoint, "exporting traces (OTLP/HTTP)");
    }
    Ok(telemetry)
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

/// The root span of one request. When `export` is on and the client sent a W3C
/// `traceparent`, the span continues the client's trace.
pub fn request_span(request: &Request, request_id: &HeaderValue, export: bool) -> Span {
    if !tracing::level_enabled!(Level::DEBUG) {
        // The usual case without export: skip finding the route for a span nobody wants.
        return Span::none();
    }
    let method = request.method();
    let route = http_route(request.uri().path());
    let span = tracing::debug_span!(
        "request",
        otel.name = %match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        },
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method.as_str(),
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = Empty,
        error.type = Empty,
        switchyard.request_id = request_id.to_str().unwrap_or("invalid"),
    );
    if export && !span.is_disabled() && request.headers().contains_key(TRACEPARENT) {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        // Err only when the span is not exported after all; then there is nothing to continue.
        let _ = span.set_parent(parent);
    }
    span
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

/// Records the response on the root span and keeps the span open until the response body
/// has been sent (a stream's included). A disabled span leaves the response untouched.
pub fn finish_request_span(span: Span, mut response: Response) -> Response {
    if span.is_disabled() {
        return response;
    }
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if let Some(ErrorClass(class)) = response.extensions().get::<ErrorClass>() {
        span.record("error.type", *class);
    }
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response = response.map(|body| Body::new(SpannedBody { inner: body, span }));
    response
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's span open until it is done or dropped.
    struct SpannedBody {
        #[pin]
        inner: Body,
        span: Span,
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

/// The span of one provider call (one failover attempt), with the GenAI semantic-convention
/// attributes known before the call; the rest are recorded as they become known.
pub fn provider_call_span(operation: Operation, target: &Target) -> Span {
    let provider = &target.provider;
    let span = tracing::debug_span!(
        "provider_call",
        otel.name = %format_args!("{} {}", operation.name(), target.model),
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        gen_ai.operation.name = operation.name(),
        gen_ai.provider.name = genai_provider_name(provider),
        gen_ai.request.model = target.model.as_str(),
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        server.address = Empty,
        server.port = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        switchyard.provider = provider.name.as_str(),
    );
    if !span.is_disabled() {
        record_server(&span, provider);
    }
    span
}

/// `server.address` and `server.port` of the provider's base URL.
fn record_server(span: &Span, provider: &Provider) {
    let Ok(uri) = provider.base_url.parse::<http::Uri>() else {
        return;
    };
    if let Some(host) = uri.host() {
        span.record("server.address", host);
    }
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    });
    span.record("server.port", i64::from(port));
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

/// Runs one provider call in `span`, and marks the span failed when the call fails.
pub async fn in_call_span<T>(
    span: Span,
    call: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    let result = call.instrument(span.clone()).await;
    if let Err(error) = &result {
        record_error(&span, error);
    }
    result
}

/// Marks a span as failed with `error`'s class and client-safe message.
pub fn record_error(span: &Span, error: &GatewayError) {
    if span.is_disabled() {
        return;
    }
    span.record("error.type", error.kind.as_str());
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", &*error.message);
}

/// Records a call's token usage on its span.
pub fn record_usage(span: &Span, usage: &TokenUsage) {
    if span.is_disabled() {
        return;
    }
    span.record("gen_ai.usage.input_tokens", as_attribute(usage.input));
    span.record("gen_ai.usage.output_tokens", as_attribute(usage.output));
}

/// Records the provider's HTTP status on the current span (the provider call's).
pub fn record_upstream_status(status: StatusCode) {
    Span::current().record("http.response.status_code", i64::from(status.as_u16()));
}

/// OpenTelemetry integers are signed; `tracing-opentelemetry` turns a `u64` into text.
fn as_attribute(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Adds the current span's W3C trace context (`traceparent`, and `tracestate` when there is
/// one) to a provider request. Nothing is added outside an exported span.
pub fn inject_context(headers: &mut HeaderMap) {
    let context = Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
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
            assert!(request_span(&request, &id, true).is_disabled());
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
