//! Provider adapters: pure translation between the gateway's OpenAI wire types and each
//! provider's wire format. One file per format; no I/O here.
//!
//! An adapter builds the [`UpstreamRequest`] (URL, headers, body) for a call, parses the
//! provider's answer into an OpenAI body plus normalised [`TokenUsage`], decodes stream
//! events into OpenAI chunks ([`StreamDecoder`]), and maps provider errors to the gateway's
//! error model. The transport that sends the request lives in the native crate (or the
//! Worker), which is why everything here takes bytes and returns bytes.

pub mod anthropic;
pub mod gemini;
pub mod openai;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde::Deserialize;

use crate::config::Provider;
use crate::error::{GatewayError, Origin, upstream_credentials_rejected, upstream_error};
use crate::wire::{ChatRequest, EmbeddingsRequest, TokenUsage};

/// How a provider's requests are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// OpenAI and every OpenAI-compatible API.
    OpenAi,
    /// Azure OpenAI: OpenAI's body, deployment URLs, `api-key` header.
    Azure,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini generateContent.
    Gemini,
}

/// A request ready for the transport.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// HTTP method.
    pub method: Method,
    /// Full URL.
    pub url: String,
    /// Headers, credentials included.
    pub headers: HeaderMap,
    /// JSON body.
    pub body: Bytes,
}

/// A complete (non-streamed) answer, translated.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The OpenAI-shaped JSON body for the client.
    pub body: Bytes,
    /// Normalised usage.
    pub usage: TokenUsage,
}

/// What one upstream stream event turned into.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// One OpenAI chunk (JSON), to send as `data: ...`. `content` is true when it carries
    /// generated text or tool-call pieces (time to first token is measured on the first).
    Chunk {
        /// The chunk's JSON.
        data: Bytes,
        /// Whether the chunk carries generated output.
        content: bool,
    },
    /// The stream is complete; send `data: [DONE]`.
    Done,
}

/// One server-sent event from a provider.
#[derive(Debug, Clone, Copy)]
pub struct SseEvent<'a> {
    /// The `event:` field (`message` when absent).
    pub event: &'a str,
    /// The `data:` field.
    pub data: &'a str,
}

/// Per-call facts an adapter needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// The provider called.
    pub provider: &'a Arc<Provider>,
    /// The upstream model name (Azure: deployment).
    pub model: &'a str,
    /// Unix seconds now, for `created` (the core has no clock of its own).
    pub now_unix: u64,
    /// The gateway's request id, for ids of translated responses.
    pub request_id: &'a str,
}

/// Builds the upstream request for a chat completion.
pub fn chat_request(
    call: &CallInfo<'_>,
    request: &ChatRequest,
) -> Result<UpstreamRequest, GatewayError> {
    match call.provider.wire {
        WireFormat::OpenAi | WireFormat::Azure => openai::chat_request(call, request),
        WireFormat::Anthropic => anthropic::chat_request(call, request),
        WireFormat::Gemini => gemini::chat_request(call, request),
    }
}

/// Translates a successful (2xx) non-streamed answer.
pub fn chat_response(
    call: &CallInfo<'_>,
    request: &ChatRequest,
    body: &[u8],
) -> Result<Completion, GatewayError> {
    match call.provider.wire {
        WireFormat::OpenAi | WireFormat::Azure => openai::chat_response(call, body),
        WireFormat::Anthropic => anthropic::chat_response(call, request, body),
        WireFormat::Gemini => gemini::chat_response(call, request, body),
    }
}

/// Builds the upstream request for embeddings.
pub fn embeddings_request(
    call: &CallInfo<'_>,
    request: &EmbeddingsRequest,
) -> Result<UpstreamRequest, GatewayError> {
    match call.provider.wire {
        WireFormat::OpenAi | WireFormat::Azure => openai::embeddings_request(call, request),
        WireFormat::Gemini => gemini::embeddings_request(call, request),
        WireFormat::Anthropic => Err(GatewayError::invalid_request(format!(
            "provider {} (Anthropic) does not offer embeddings",
            call.provider.name
        ))
        .with_param("model")),
    }
}

/// Translates a successful embeddings answer.
pub fn embeddings_response(
    call: &CallInfo<'_>,
    request: &EmbeddingsRequest,
    body: &[u8],
) -> Result<Completion, GatewayError> {
    match call.provider.wire {
        WireFormat::OpenAi | WireFormat::Azure => openai::embeddings_response(call, body),
        WireFormat::Gemini => gemini::embeddings_response(call, request, body),
        WireFormat::Anthropic => Err(GatewayError::internal("anthropic has no embeddings")),
    }
}

/// A cheap request that shows whether a provider is up and accepts the gateway's key: its
/// model list (`GET /models` or the wire format's equivalent). Used by active health checks.
pub fn models_request(provider: &Provider) -> Result<UpstreamRequest, GatewayError> {
    let mut headers = HeaderMap::with_capacity(4 + provider.headers.len());
    for (name, value) in &provider.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let key = provider.api_key.as_ref().map(|key| key.expose());
    let base = &provider.base_url;
    let url = match provider.wire {
        WireFormat::OpenAi => {
            if let Some(key) = key {
                headers.insert(
                    http::header::AUTHORIZATION,
                    secret_header(&format!("Bearer {key}"))?,
                );
            }
            format!("{base}/models")
        }
        WireFormat::Azure => {
            if let Some(key) = key {
                headers.insert("api-key", secret_header(key)?);
            }
            format!("{base}/openai/models?api-version={}", provider.api_version)
        }
        WireFormat::Anthropic => {
            if let Some(key) = key {
                headers.insert("x-api-key", secret_header(key)?);
            }
            if !headers.contains_key("anthropic-version") {
                headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
            }
            format!("{base}/v1/models")
        }
        WireFormat::Gemini => {
            if let Some(key) = key {
                headers.insert("x-goog-api-key", secret_header(key)?);
            }
            format!("{base}/v1beta/models")
        }
    };
    Ok(UpstreamRequest {
        method: Method::GET,
        url,
        headers,
        body: Bytes::new(),
    })
}

/// Maps a provider's error answer (non-2xx) to a gateway error.
pub fn error_response(
    provider: &Provider,
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> GatewayError {
    let (message, code) = match provider.wire {
        WireFormat::OpenAi | WireFormat::Azure => openai::error_details(body),
        WireFormat::Anthropic => anthropic::error_details(body),
        WireFormat::Gemini => {
            // Gemini answers a bad key with 400 INVALID_ARGUMENT, which would otherwise tell
            // the client that its own request was invalid.
            if gemini::rejects_api_key(body) {
                return upstream_credentials_rejected(&provider.name, status, retry_after);
            }
            gemini::error_details(body)
        }
    };
    upstream_error(&provider.name, status, message, code, retry_after)
}

/// Turns a provider's stream into OpenAI chunks, one event at a time.
#[derive(Debug)]
pub enum StreamDecoder {
    /// OpenAI-compatible passthrough.
    OpenAi(openai::OpenAiStream),
    /// Anthropic Messages events.
    Anthropic(anthropic::AnthropicStream),
    /// Gemini `streamGenerateContent?alt=sse`.
    Gemini(gemini::GeminiStream),
}

impl StreamDecoder {
    /// A decoder for a stream answering `request`.
    pub fn new(call: &CallInfo<'_>, request: &ChatRequest) -> Self {
        match call.provider.wire {
            WireFormat::OpenAi | WireFormat::Azure => {
                StreamDecoder::OpenAi(openai::OpenAiStream::new(call, request))
            }
            WireFormat::Anthropic => {
                StreamDecoder::Anthropic(anthropic::AnthropicStream::new(call, request))
            }
            WireFormat::Gemini => StreamDecoder::Gemini(gemini::GeminiStream::new(call, request)),
        }
    }

    /// Decodes one event, appending what it produced to `out`.
    pub fn decode(
        &mut self,
        event: SseEvent<'_>,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        match self {
            StreamDecoder::OpenAi(decoder) => decoder.decode(event, out),
            StreamDecoder::Anthropic(decoder) => decoder.decode(event, out),
            StreamDecoder::Gemini(decoder) => decoder.decode(event, out),
        }
    }

    /// Called when the upstream body ends. Completes the stream (usage chunk, `[DONE]`), or
    /// fails if the provider stopped before its end-of-stream marker.
    pub fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        match self {
            StreamDecoder::OpenAi(decoder) => decoder.finish(out),
            StreamDecoder::Anthropic(decoder) => decoder.finish(out),
            StreamDecoder::Gemini(decoder) => decoder.finish(out),
        }
    }

    /// Usage seen so far (complete once the stream is done).
    pub fn usage(&self) -> Option<TokenUsage> {
        match self {
            StreamDecoder::OpenAi(decoder) => decoder.usage(),
            StreamDecoder::Anthropic(decoder) => decoder.usage(),
            StreamDecoder::Gemini(decoder) => decoder.usage(),
        }
    }
}

/// Adds `Content-Type: application/json` and the provider's static headers.
pub(crate) fn base_headers(provider: &Provider) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(4 + provider.headers.len());
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in &provider.headers {
        // Validated at config load; skip silently impossible failures.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers
}

/// A header value holding a secret, marked sensitive so that it is never logged.
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue, GatewayError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        GatewayError::internal("a provider API key contains characters not allowed in headers")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Percent-encodes `text` (a model or deployment name) into one URL path segment: everything
/// outside RFC 3986's unreserved characters is encoded, so that no name can climb to another
/// path (`../`), add a query string (`?`) or a fragment, whatever the client sent as `model`.
pub(crate) fn path_segment(text: &str) -> String {
    let mut segment = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            segment.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(segment, "%{byte:02X}");
        }
    }
    segment
}

/// Serialises an outgoing body.
pub(crate) fn to_body<T: serde::Serialize>(value: &T) -> Result<Bytes, GatewayError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|_| GatewayError::internal("could not encode the upstream request"))
}

/// Parses a provider's answer, mapping garbage to a retryable 502.
pub(crate) fn parse_upstream<'a, T: Deserialize<'a>>(
    provider: &Provider,
    body: &'a [u8],
) -> Result<T, GatewayError> {
    // serde's detail ("expected value at line 1 column 7") means nothing to a client and
    // describes the provider's body, so it is left out.
    serde_json::from_slice(body).map_err(|_| {
        GatewayError::new(
            crate::error::ErrorKind::BadGateway,
            Origin::Upstream(provider.name.clone()),
            format!(
                "provider {} sent a response the gateway could not read",
                provider.name
            ),
        )
    })
}

/// A provider stream that carried an error event, or ended early.
pub(crate) fn stream_error(provider: &Provider, message: impl Into<String>) -> GatewayError {
    GatewayError::new(
        crate::error::ErrorKind::BadGateway,
        Origin::Upstream(provider.name.clone()),
        message.into(),
    )
}

/// Serialises one outgoing chunk.
pub(crate) fn chunk_bytes<T: serde::Serialize>(chunk: &T) -> Result<Bytes, GatewayError> {
    serde_json::to_vec(chunk)
        .map(Bytes::from)
        .map_err(|_| GatewayError::internal("could not encode a stream chunk"))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the adapters' golden tests.
    use std::sync::Arc;

    use crate::config::{PRESETS, Provider, Secret};

    /// A provider of the given kind pointing at a fixed test URL.
    pub fn provider(kind: &str) -> Arc<Provider> {
        let preset = PRESETS
            .iter()
            .find(|preset| preset.kind == kind)
            .expect("known kind");
        Arc::new(Provider {
            name: kind.to_owned(),
            kind: kind.to_owned(),
            wire: preset.wire,
            base_url: match kind {
                "azure" => "https://example-resource.openai.azure.com".to_owned(),
                _ => preset.base_url.unwrap_or("https://example.test").to_owned(),
            },
            api_key: Some(Secret::new("test-key")),
            api_version: "2024-10-21".to_owned(),
            models: vec![],
            headers: vec![],
            timeouts: crate::config::Timeouts {
                connect: std::time::Duration::from_secs(5),
                first_byte: std::time::Duration::from_secs(120),
                idle: std::time::Duration::from_secs(120),
                total: None,
            },
            health_check: None,
        })
    }

    /// Loads a golden fixture from `tests/golden/`.
    pub fn golden(path: &str) -> serde_json::Value {
        let full = format!("{}/tests/golden/{path}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    /// Reads a golden SSE transcript (`event:`/`data:` lines) into (event, data) pairs.
    pub fn golden_sse(path: &str) -> Vec<(String, String)> {
        let full = format!("{}/tests/golden/{path}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
        let mut events = Vec::new();
        let mut event = String::from("message");
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                events.push((event.clone(), data.trim_start().to_owned()));
                event = String::from("message");
            }
        }
        events
    }
}
