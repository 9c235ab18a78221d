//! The transport: one pooled HTTP client for every provider (keep-alive, HTTP/2 where the
//! provider offers it through ALPN, rustls, `TCP_NODELAY`), with connect, first-byte, idle and
//! total deadlines. It sends what an adapter built and hands back bytes or SSE events; it
//! knows nothing about wire formats beyond asking the adapter to read error bodies. With trace
//! export on, it adds the provider-call span's W3C `traceparent` and records the provider's
//! status on that span ([`crate::telemetry`]).
//!
//! It is hyper-util's pooled client used directly: the load harness showed reqwest's extra
//! layers (URL and IDNA parsing, connector clones, header merging) on every request, and the
//! gateway needs none of its conveniences (redirects, cookies, proxies, decompression).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use http::HeaderValue;
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use switchyard_core::config::{Provider, Target, UpstreamConfig};
use switchyard_core::error::ErrorKind;
use switchyard_core::provider::{UpstreamRequest, error_response};
use switchyard_core::{GatewayError, Origin};
use tokio::time::{Instant, timeout_at};

/// Largest provider answer the gateway will buffer (non-streamed), to bound memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read for its message.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// A provider's answer, headers received, body still to read.
pub type UpstreamResponse = http::Response<Incoming>;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The shared upstream client: one connection pool per provider (each with its own connect
/// timeout). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    clients: Arc<HashMap<String, HttpClient>>,
    default_client: HttpClient,
    user_agent: HeaderValue,
}

/// The `code` of a timeout caused by the client request's own deadline rather than by the
/// target: such timeouts are not held against the target.
pub const REQUEST_DEADLINE: &str = "request_deadline";

/// How long one call may take.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// Request sent → response headers.
    pub first_byte: Duration,
    /// Longest silence between body chunks.
    pub idle: Duration,
    /// When the call must be over (the request deadline, or sooner with a total timeout).
    pub deadline: Instant,
    /// The client request's deadline.
    pub request_deadline: Instant,
}

impl CallLimits {
    /// The limits for calling `target` within the request `deadline`.
    pub fn for_target(target: &Target, deadline: Instant) -> Self {
        CallLimits {
            first_byte: target.timeouts.first_byte,
            idle: target.timeouts.idle,
            deadline: match target.timeouts.total {
                Some(total) => deadline.min(Instant::now() + total),
                None => deadline,
            },
            request_deadline: deadline,
        }
    }
}

/// A connector for http and https (rustls with ring and the platform's trust store, HTTP/2 by
/// ALPN, `TCP_NODELAY`). Also used by the trace exporter.
pub fn https_connector(connect_timeout: Duration) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())
        .map_err(|error| format!("could not set up TLS for outgoing connections: {error}"))?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http))
}

fn client(connect_timeout: Duration) -> Result<HttpClient, String> {
    let https = https_connector(connect_timeout)?;
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http2_adaptive_window(true)
        .build(https))
}

impl Transport {
    /// Builds a pool per provider: rustls (ring) with the platform's trust store.
    pub fn new(upstream: UpstreamConfig, providers: &[Arc<Provider>]) -> Result<Self, String> {
        crate::install_crypto_provider();
        let mut clients = HashMap::with_capacity(providers.len());
        for provider in providers {
            clients.insert(provider.name.clone(), client(provider.timeouts.connect)?);
        }
        Ok(Transport {
            clients: Arc::new(clients),
            default_client: client(upstream.connect_timeout)?,
            user_agent: HeaderValue::from_static(concat!("switchyard/", env!("CARGO_PKG_VERSION"))),
        })
    }

    /// Sends `request` and waits for the answer's headers. A non-2xx answer is read and
    /// mapped to a gateway error by the provider's adapter.
    pub async fn send(
        &self,
        provider: &Provider,
        request: UpstreamRequest,
        limits: CallLimits,
    ) -> Result<UpstreamResponse, GatewayError> {
        let uri: http::Uri = request.url.parse().map_err(|_| {
            GatewayError::internal(format!("provider {} has an invalid URL", provider.name))
        })?;
        let mut outgoing = http::Request::new(Full::new(request.body));
        *outgoing.method_mut() = request.method;
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = request.headers;
        outgoing
            .headers_mut()
            .insert(http::header::USER_AGENT, self.user_agent.clone());
        let deadline = limits.deadline;
        let first_byte = deadline.min(Instant::now() + limits.first_byte);
        let client = self
            .clients
            .get(&provider.name)
            .unwrap_or(&self.default_client);
        let response = match timeout_at(first_byte, client.request(outgoing)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Err(send_error(provider, &error)),
            Err(_) => {
                return Err(timeout(
                    provider,
                    &limits,
                    format!(
                        "provider {} did not answer within {:?}",
                        provider.name,
                        first_byte_limit(first_byte, deadline, limits.first_byte)
                    ),
                ));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = read_limited(provider, response, limits, MAX_ERROR_BYTES)
            .await
            .unwrap_or_default();
        Err(error_response(
            provider,
            status.as_u16(),
            retry_after,
            &body,
        ))
    }

    /// Reads a whole answer body, with the idle timeout between chunks.
    pub async fn read_body(
        &self,
        provider: &Provider,
        response: UpstreamResponse,
        limits: CallLimits,
    ) -> Result<Bytes, GatewayError> {
        read_limited(provider, response, limits, MAX_RESPONSE_BYTES).await
    }
}

async fn read_limited(
    provider: &Provider,
    response: UpstreamResponse,
    limits: CallLimits,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let deadline = limits.deadline;
    let mut body = response.into_body();
    // Most answers arrive in one chunk: keep it as is and copy only when a second comes.
    let mut first: Option<Bytes> = None;
    let mut buffer = BytesMut::new();
    loop {
        let idle = deadline.min(Instant::now() + limits.idle);
        match timeout_at(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers
                };
                let held = first.as_ref().map_or(0, Bytes::len);
                if held + buffer.len() + chunk.len() > limit {
                    return Err(GatewayError::new(
                        ErrorKind::BadGateway,
                        Origin::Upstream(provider.name.clone()),
                        format!(
                            "provider {} sent an answer over {limit} bytes",
                            provider.name
                        ),
                    ));
                }
                match first.take() {
                    None if buffer.is_empty() => first = Some(chunk),
                    held => {
                        if let Some(held) = held {
                            buffer.extend_from_slice(&held);
                        }
                        buffer.extend_from_slice(&chunk);
                    }
                }
            }
            Ok(None) => return Ok(first.unwrap_or_else(|| buffer.freeze())),
            Ok(Some(Err(error))) => return Err(body_error(provider, &error)),
            Err(_) => {
                return Err(timeout(
                    provider,
                    &limits,
                    format!("provider {} stopped sending its answer", provider.name),
                ));
            }
        }
    }
}

/// Server-sent events of a streamed answer. The idle timeout applies to the bytes, below the
/// SSE parser, so that keep-alive comments (`: ping`) count as signs of life.
pub fn events(
    provider: Arc<Provider>,
    response: UpstreamResponse,
    limits: CallLimits,
) -> impl Stream<Item = Result<Event, GatewayError>> + Send + 'static {
    let (idle_timeout, deadline) = (limits.idle, limits.deadline);
    let bytes = BodyDataStream::new(response.into_body());
    let timed = futures_util::stream::unfold(
        (Box::pin(bytes), Arc::clone(&provider), false),
        move |(mut bytes, provider, ended)| async move {
            if ended {
                return None;
            }
            let idle = deadline.min(Instant::now() + idle_timeout);
            match timeout_at(idle, bytes.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), (bytes, provider, false))),
                Ok(Some(Err(error))) => {
                    Some((Err(body_error(&provider, &error)), (bytes, provider, true)))
                }
                Ok(None) => None,
                Err(_) => {
                    let error = timeout(
                        &provider,
                        &limits,
                        if Instant::now() >= deadline {
                            "the request deadline passed while streaming".to_owned()
                        } else {
                            format!(
                                "provider {} went silent for {idle_timeout:?}",
                                provider.name
                            )
                        },
                    );
                    Some((Err(error), (bytes, provider, true)))
                }
            }
        },
    );
    timed.eventsource().map(move |event| {
        event.map_err(|error| match error {
            EventStreamError::Transport(error) => error,
            EventStreamError::Utf8(_) | EventStreamError::Parser(_) => GatewayError::new(
                ErrorKind::BadGateway,
                Origin::Upstream(provider.name.clone()),
                format!("provider {} sent a malformed event stream", provider.name),
            ),
        })
    })
}

fn first_byte_limit(first_byte: Instant, deadline: Instant, configured: Duration) -> Duration {
    if first_byte >= deadline {
        deadline.saturating_duration_since(Instant::now())
    } else {
        configured
    }
}

fn timeout(provider: &Provider, limits: &CallLimits, message: String) -> GatewayError {
    let error = GatewayError::new(
        ErrorKind::Timeout,
        Origin::Upstream(provider.name.clone()),
        message,
    );
    if Instant::now() >= limits.request_deadline {
        error.with_code(REQUEST_DEADLINE)
    } else {
        error
    }
}

fn send_error(provider: &Provider, error: &hyper_util::client::legacy::Error) -> GatewayError {
    tracing::warn!(provider = %provider.name, error = %error_chain(error), "upstream request failed");
    let origin = Origin::Upstream(provider.name.clone());
    if error.is_connect() {
        GatewayError::new(
            ErrorKind::Unavailable,
            origin,
            format!("could not connect to provider {}", provider.name),
        )
    } else {
        GatewayError::new(
            ErrorKind::BadGateway,
            origin,
            format!("the connection to provider {} failed", provider.name),
        )
    }
}

fn body_error(provider: &Provider, error: &hyper::Error) -> GatewayError {
    tracing::warn!(provider = %provider.name, error = %error_chain(error), "upstream body failed");
    GatewayError::new(
        ErrorKind::BadGateway,
        Origin::Upstream(provider.name.clone()),
        format!(
            "the connection to provider {} broke during the answer",
            provider.name
        ),
    )
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The longest pause a provider may impose through `Retry-After`: beyond it, the breaker and
/// health checks are better judges than a number from a header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` (seconds) or OpenAI's `retry-after-ms`, capped at an hour.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let millis = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(MAX_RETRY_AFTER));
    let seconds = || {
        headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    };
    millis
        .or_else(seconds)
        .map(|pause| pause.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        headers.insert("retry-after-ms", "nan".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        // Absurd values neither panic nor pause a target for ages.
        headers.insert("retry-after-ms", "1e30".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert("retry-after-ms", "-5".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
    }
}
