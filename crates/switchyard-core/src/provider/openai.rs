//! OpenAI and every OpenAI-compatible API (Groq, Mistral, DeepSeek, OpenRouter, Together,
//! Fireworks, xAI, Ollama, vLLM...), plus Azure OpenAI's deployment URLs.
//!
//! The client already speaks this format, so the adapter changes as little as it can: it sets
//! the upstream model, asks for stream usage, and passes the answer's bytes through untouched
//! while reading the usage out of them.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::{
    CallInfo, Completion, SseEvent, StreamItem, UpstreamRequest, WireFormat, base_headers,
    parse_upstream, secret_header, stream_error, to_body,
};
use crate::error::GatewayError;
use crate::wire::{ChatRequest, EmbeddingsRequest, StreamOptions, TokenUsage, Usage};

fn url(call: &CallInfo<'_>, operation: &str) -> String {
    let provider = call.provider;
    match provider.wire {
        WireFormat::Azure => format!(
            "{}/openai/deployments/{}/{operation}?api-version={}",
            provider.base_url, call.model, provider.api_version
        ),
        _ => format!("{}/{operation}", provider.base_url),
    }
}

fn headers(call: &CallInfo<'_>) -> Result<http::HeaderMap, GatewayError> {
    let provider = call.provider;
    let mut headers = base_headers(provider);
    if let Some(key) = &provider.api_key {
        match provider.wire {
            WireFormat::Azure => {
                headers.insert("api-key", secret_header(key.expose())?);
            }
            _ => {
                headers.insert(
                    http::header::AUTHORIZATION,
                    secret_header(&format!("Bearer {}", key.expose()))?,
                );
            }
        }
    }
    Ok(headers)
}

/// The upstream request: the client's body with the upstream model, and stream usage on.
pub fn chat_request(
    call: &CallInfo<'_>,
    request: &ChatRequest,
) -> Result<UpstreamRequest, GatewayError> {
    let mut outgoing = request.clone();
    outgoing.model = call.model.to_owned();
    if outgoing.stream {
        // Usage on every stream, so that metering never depends on what the client asked.
        let options = outgoing
            .stream_options
            .get_or_insert_with(StreamOptions::default);
        options.include_usage = Some(true);
    }
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: url(call, "chat/completions"),
        headers: headers(call)?,
        body: to_body(&outgoing)?,
    })
}

#[derive(Deserialize)]
struct UsagePeek {
    #[serde(default)]
    usage: Option<Usage>,
}

/// Passes the body through and reads its usage.
pub fn chat_response(call: &CallInfo<'_>, body: &[u8]) -> Result<Completion, GatewayError> {
    let peek: UsagePeek = parse_upstream(call.provider, body)?;
    Ok(Completion {
        body: bytes::Bytes::copy_from_slice(body),
        usage: peek
            .usage
            .as_ref()
            .map(TokenUsage::from_openai)
            .unwrap_or_default(),
    })
}

/// The upstream embeddings request: the client's body with the upstream model.
pub fn embeddings_request(
    call: &CallInfo<'_>,
    request: &EmbeddingsRequest,
) -> Result<UpstreamRequest, GatewayError> {
    let mut outgoing = request.clone();
    outgoing.model = call.model.to_owned();
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: url(call, "embeddings"),
        headers: headers(call)?,
        body: to_body(&outgoing)?,
    })
}

/// Passes the embeddings body through and reads its usage.
pub fn embeddings_response(call: &CallInfo<'_>, body: &[u8]) -> Result<Completion, GatewayError> {
    chat_response(call, body)
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ErrorField>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object {
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        code: Option<serde_json::Value>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
    },
    Text(String),
}

/// Message and code from an OpenAI-style error body, tolerating the shapes compatible
/// servers use (`{"error":"text"}`, `{"message":...}`, FastAPI's `{"detail":...}`).
pub fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(body) else {
        return (plain_text(body), None);
    };
    match envelope.error {
        Some(ErrorField::Object {
            message,
            code,
            kind,
        }) => {
            let code = match code {
                Some(serde_json::Value::String(code)) => Some(code),
                Some(serde_json::Value::Number(code)) => Some(code.to_string()),
                _ => kind,
            };
            (message, code)
        }
        Some(ErrorField::Text(text)) => (Some(text), None),
        None => (
            envelope.message.or_else(|| {
                envelope.detail.map(|detail| match detail {
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                })
            }),
            None,
        ),
    }
}

/// A short, printable excerpt of a non-JSON error body.
pub(crate) fn plain_text(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(text.chars().take(300).collect())
}

/// OpenAI stream passthrough: forwards chunks as they are, reads usage, and drops the
/// usage-only chunk when the client did not ask for it.
#[derive(Debug)]
pub struct OpenAiStream {
    provider: std::sync::Arc<crate::config::Provider>,
    client_wants_usage: bool,
    usage: Option<TokenUsage>,
    done: bool,
}

#[derive(Deserialize)]
struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoicePeek<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoicePeek<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaPeek<'a>>,
}

#[derive(Deserialize)]
struct DeltaPeek<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
    #[serde(default, borrow)]
    refusal: Option<&'a RawValue>,
}

fn non_empty(value: Option<&RawValue>) -> bool {
    value.is_some_and(|raw| !matches!(raw.get(), "\"\"" | "null"))
}

impl OpenAiStream {
    /// A decoder for a stream answering `request`.
    pub fn new(call: &CallInfo<'_>, request: &ChatRequest) -> Self {
        OpenAiStream {
            provider: std::sync::Arc::clone(call.provider),
            client_wants_usage: request.wants_stream_usage(),
            usage: None,
            done: false,
        }
    }

    /// Decodes one event.
    pub fn decode(
        &mut self,
        event: SseEvent<'_>,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            out.push(StreamItem::Done);
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let peek: ChunkPeek<'_> = parse_upstream(&self.provider, data.as_bytes())?;
        if let Some(error) = peek.error {
            let (message, _) = error_details(format!("{{\"error\":{}}}", error.get()).as_bytes());
            return Err(stream_error(
                &self.provider,
                format!(
                    "provider {} failed mid-stream: {}",
                    self.provider.name,
                    message.unwrap_or_else(|| "unknown error".to_owned())
                ),
            ));
        }
        if let Some(usage) = &peek.usage {
            self.usage = Some(TokenUsage::from_openai(usage));
            if peek.choices.is_empty() && !self.client_wants_usage {
                return Ok(());
            }
        }
        let content = peek.choices.iter().any(|choice| {
            choice.delta.as_ref().is_some_and(|delta| {
                non_empty(delta.content) || delta.tool_calls.is_some() || non_empty(delta.refusal)
            })
        });
        out.push(StreamItem::Chunk {
            data: bytes::Bytes::copy_from_slice(data.as_bytes()),
            content,
        });
        Ok(())
    }

    /// The upstream body ended. OpenAI ends with `[DONE]`; some compatible servers just close.
    pub fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if !self.done {
            self.done = true;
            out.push(StreamItem::Done);
        }
        Ok(())
    }

    /// Usage reported by the provider.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::test_support::{golden, golden_sse, provider};
    use crate::provider::{StreamDecoder, chat_request as dispatch_request, error_response};
    use pretty_assertions::assert_eq;

    fn call<'a>(
        provider: &'a std::sync::Arc<crate::config::Provider>,
        model: &'a str,
    ) -> CallInfo<'a> {
        CallInfo {
            provider,
            model,
            now_unix: 1_700_000_000,
            request_id: "req-1",
        }
    }

    #[test]
    fn request_sets_model_and_stream_usage() {
        let openai = provider("openai");
        let request: ChatRequest =
            serde_json::from_value(golden("openai/request.in.json")).unwrap();
        let upstream = dispatch_request(&call(&openai, "gpt-4o-mini"), &request).unwrap();
        assert_eq!(upstream.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(upstream.headers["authorization"], "Bearer test-key");
        assert!(upstream.headers["authorization"].is_sensitive());
        let body: serde_json::Value = serde_json::from_slice(&upstream.body).unwrap();
        assert_eq!(body, golden("openai/request.out.json"));
    }

    #[test]
    fn azure_uses_deployment_urls_and_api_key_header() {
        let azure = provider("azure");
        let request: ChatRequest =
            serde_json::from_value(golden("openai/request.in.json")).unwrap();
        let upstream = dispatch_request(&call(&azure, "my-deployment"), &request).unwrap();
        assert_eq!(
            upstream.url,
            "https://example-resource.openai.azure.com/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(upstream.headers["api-key"], "test-key");
        assert!(upstream.headers.get("authorization").is_none());
    }

    #[test]
    fn response_passes_through_with_usage() {
        let openai = provider("openai");
        let body = golden("openai/response.json").to_string();
        let completion = chat_response(&call(&openai, "gpt-4o-mini"), body.as_bytes()).unwrap();
        assert_eq!(completion.body, body.as_bytes());
        assert_eq!(
            completion.usage,
            TokenUsage {
                input: 20,
                output: 9,
                cached_input: 4,
                cache_write: 0,
                reasoning: 2
            }
        );
    }

    #[test]
    fn garbage_response_is_a_retryable_502() {
        let openai = provider("openai");
        let error = chat_response(&call(&openai, "m"), b"<html>").unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.retryable);
    }

    fn run_stream(wants_usage: bool) -> (Vec<StreamItem>, Option<TokenUsage>) {
        let openai = provider("openai");
        let mut request: ChatRequest =
            serde_json::from_value(golden("openai/request.in.json")).unwrap();
        request.stream = true;
        if wants_usage {
            request.stream_options = Some(StreamOptions {
                include_usage: Some(true),
                ..Default::default()
            });
        }
        let mut decoder = StreamDecoder::new(&call(&openai, "gpt-4o-mini"), &request);
        let mut out = Vec::new();
        for (event, data) in golden_sse("openai/stream.sse") {
            decoder
                .decode(
                    SseEvent {
                        event: &event,
                        data: &data,
                    },
                    &mut out,
                )
                .unwrap();
        }
        decoder.finish(&mut out).unwrap();
        (out, decoder.usage())
    }

    #[test]
    fn stream_strips_usage_chunk_unless_asked() {
        let (items, usage) = run_stream(false);
        assert_eq!(usage.unwrap().output, 3);
        // role chunk, 2 content chunks, finish chunk, [DONE]; the usage chunk is dropped.
        assert_eq!(items.len(), 5);
        let flags: Vec<bool> = items
            .iter()
            .map(|item| matches!(item, StreamItem::Chunk { content: true, .. }))
            .collect();
        assert_eq!(flags, [false, true, true, false, false]);
        assert_eq!(items.last(), Some(&StreamItem::Done));

        let (items, _) = run_stream(true);
        assert_eq!(items.len(), 6);
    }

    #[test]
    fn stream_error_event_fails_the_stream() {
        let openai = provider("openai");
        let request: ChatRequest =
            serde_json::from_value(golden("openai/request.in.json")).unwrap();
        let mut decoder = StreamDecoder::new(&call(&openai, "m"), &request);
        let mut out = Vec::new();
        let error = decoder
            .decode(
                SseEvent {
                    event: "message",
                    data: r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
                },
                &mut out,
            )
            .unwrap_err();
        assert!(error.message.contains("overloaded"));
    }

    #[test]
    fn error_bodies_of_compatible_servers() {
        let openai = provider("openai");
        let error = error_response(
            &openai,
            429,
            Some(std::time::Duration::from_secs(7)),
            br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(error.status(), 429);
        assert!(error.retryable);
        assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(7)));
        assert_eq!(error.code.as_deref(), Some("rate_limit_exceeded"));
        assert!(error.message.contains("Rate limit reached"));

        assert_eq!(
            error_details(br#"{"error":"model not loaded"}"#)
                .0
                .as_deref(),
            Some("model not loaded")
        );
        assert_eq!(
            error_details(br#"{"detail":"Not Found"}"#).0.as_deref(),
            Some("Not Found")
        );
        assert_eq!(
            error_details(b"Bad Gateway").0.as_deref(),
            Some("Bad Gateway")
        );
        assert_eq!(error_details(b"").0, None);
    }
}
