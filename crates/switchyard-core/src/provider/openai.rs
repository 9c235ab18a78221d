//! OpenAI and every OpenAI-compatible API (Groq, Mistral, DeepSeek, OpenRouter, Together,
//! Fireworks, xAI, Ollama, vLLM...), plus Azure OpenAI's deployment URLs.
//!
//! The client already speaks this format, so the adapter changes as little as it can: it
//! rewrites the top level of the client's body (the upstream model, stream usage) and copies
//! everything else byte for byte, and it passes the answer's bytes through untouched while
//! reading the usage out of them. A usage the adapter cannot read is treated as absent: it
//! never fails an answer the provider already produced.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{
    CallInfo, Completion, SseEvent, StreamItem, UpstreamRequest, WireFormat, base_headers,
    parse_upstream, path_segment, secret_header, stream_error, to_body,
};
use crate::error::GatewayError;
use crate::wire::{ChatRequest, EmbeddingsRequest, StreamOptions, TokenUsage, Usage};

fn url(call: &CallInfo<'_>, operation: &str) -> Result<String, GatewayError> {
    let provider = call.provider;
    match provider.wire {
        WireFormat::Azure => {
            // The deployment is the client's text: one encoded segment, so that it cannot
            // reach another path on the resource with the gateway's key. A segment of dots
            // would still be a path step (`%2E%2E` is `..` to most servers), so refuse it.
            if call.model.bytes().all(|byte| byte == b'.') {
                return Err(GatewayError::invalid_request(format!(
                    "`{}` is not a valid Azure deployment name",
                    call.model
                ))
                .with_param("model"));
            }
            Ok(format!(
                "{}/openai/deployments/{}/{operation}?api-version={}",
                provider.base_url,
                path_segment(call.model),
                provider.api_version
            ))
        }
        _ => Ok(format!("{}/{operation}", provider.base_url)),
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

/// The upstream request: the client's body with the upstream model, and stream usage on
/// (so that metering never depends on what the client asked).
pub fn chat_request(
    call: &CallInfo<'_>,
    request: &ChatRequest,
) -> Result<UpstreamRequest, GatewayError> {
    let body = match &request.raw {
        Some(raw) => rewrite_top_level(raw, call.model, request.stream)?,
        None => {
            let mut outgoing = request.clone();
            outgoing.model = call.model.to_owned();
            if outgoing.stream {
                let options = outgoing
                    .stream_options
                    .get_or_insert_with(StreamOptions::default);
                options.include_usage = Some(true);
            }
            to_body(&outgoing)?
        }
    };
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: url(call, "chat/completions")?,
        headers: headers(call)?,
        body,
    })
}

/// The upstream embeddings request: the client's body with the upstream model.
pub fn embeddings_request(
    call: &CallInfo<'_>,
    request: &EmbeddingsRequest,
) -> Result<UpstreamRequest, GatewayError> {
    let body = match &request.raw {
        Some(raw) => rewrite_top_level(raw, call.model, false)?,
        None => {
            let mut outgoing = request.clone();
            outgoing.model = call.model.to_owned();
            to_body(&outgoing)?
        }
    };
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: url(call, "embeddings")?,
        headers: headers(call)?,
        body,
    })
}

/// The client's body with only its top level rewritten: `model` set to the upstream model,
/// and for a stream `stream_options.include_usage` set to true (the client's other stream
/// options kept). Every other value is copied byte for byte, so fields the gateway does not
/// model, at any depth (`cache_control` on a content part, a new part type), reach the
/// provider exactly as the client sent them. A key the client repeated is written once.
fn rewrite_top_level(raw: &[u8], model: &str, stream: bool) -> Result<Bytes, GatewayError> {
    let unreadable = || GatewayError::internal("could not re-read the request body");
    let TopLevel(fields) = serde_json::from_slice(raw).map_err(|_| unreadable())?;
    let mut body = Vec::with_capacity(raw.len() + model.len() + 48);
    body.extend_from_slice(b"{\"model\":");
    write_json(&mut body, model)?;
    let mut stream_options = None;
    for (key, value) in &fields {
        match key.as_ref() {
            "model" => continue,
            "stream_options" if stream => {
                stream_options = Some(*value);
                continue;
            }
            _ => {}
        }
        body.push(b',');
        write_json(&mut body, key.as_ref())?;
        body.push(b':');
        body.extend_from_slice(value.get().as_bytes());
    }
    if stream {
        // The client's options object is small; it is the one value parsed and rewritten.
        // `null` (allowed by the typed parse) counts as no options.
        let mut options = match stream_options {
            Some(options) => serde_json::from_str::<Option<Map<String, Value>>>(options.get())
                .map_err(|_| unreadable())?
                .unwrap_or_default(),
            None => Map::new(),
        };
        options.insert("include_usage".to_owned(), Value::Bool(true));
        body.extend_from_slice(b",\"stream_options\":");
        write_json(&mut body, &options)?;
    }
    body.push(b'}');
    Ok(Bytes::from(body))
}

fn write_json<T: Serialize + ?Sized>(body: &mut Vec<u8>, value: &T) -> Result<(), GatewayError> {
    serde_json::to_writer(body, value)
        .map_err(|_| GatewayError::internal("could not encode the upstream request"))
}

/// A JSON object's top level: its keys in order, each with its value unparsed (borrowed from
/// the body). A repeated key keeps its first position and its last value, as serde_json's
/// own maps do.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopLevelVisitor;
        impl<'de> Visitor<'de> for TopLevelVisitor {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Key(key)) = map.next_key()? {
                    let value: &'de RawValue = map.next_value()?;
                    match fields.iter_mut().find(|(seen, _)| *seen == key) {
                        Some(field) => field.1 = value,
                        None => fields.push((key, value)),
                    }
                }
                Ok(TopLevel(fields))
            }
        }
        deserializer.deserialize_map(TopLevelVisitor)
    }
}

/// An object key, borrowed from the body unless it holds escapes (`"mod\u0065l"` is `model`).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
            fn visit_string<E>(self, key: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The top-level `usage` of an answer, unparsed: a malformed usage must not fail the answer.
#[derive(Deserialize)]
struct UsagePeek<'a> {
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

/// Reads a usage object; `None` when it is `null` or cannot be read (a string, a negative
/// count), which the caller treats as a provider that reported no usage.
fn read_usage(usage: Option<&RawValue>) -> Option<TokenUsage> {
    let usage = serde_json::from_str::<Option<Usage>>(usage?.get()).ok()??;
    Some(TokenUsage::from_openai(&usage))
}

/// Passes the body through and reads its usage.
pub fn chat_response(call: &CallInfo<'_>, body: &[u8]) -> Result<Completion, GatewayError> {
    let peek: UsagePeek<'_> = parse_upstream(call.provider, body)?;
    Ok(Completion {
        body: Bytes::copy_from_slice(body),
        usage: read_usage(peek.usage).unwrap_or_default(),
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
///
/// A stream is complete at `[DONE]`. Some compatible servers just close after the last
/// chunk, so a stream in which a choice sent its `finish_reason` is complete too; one that
/// ends with neither was cut short and fails rather than look complete.
#[derive(Debug)]
pub struct OpenAiStream {
    /// The provider, for errors.
    provider: std::sync::Arc<crate::config::Provider>,
    /// Whether the client asked for the final usage chunk (the gateway always asks).
    client_wants_usage: bool,
    /// The latest usage the provider reported.
    usage: Option<TokenUsage>,
    /// Some choice sent a `finish_reason`.
    finished: bool,
    /// `[DONE]` was produced.
    done: bool,
}

#[derive(Deserialize)]
struct ChunkPeek<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoicePeek<'a>>,
    /// Unparsed, so that a malformed usage never fails the stream.
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoicePeek<'a> {
    #[serde(default, borrow)]
    delta: Option<DeltaPeek<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<&'a RawValue>,
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
            finished: false,
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
        if peek
            .choices
            .iter()
            .any(|choice| non_empty(choice.finish_reason))
        {
            self.finished = true;
        }
        if non_empty(peek.usage) {
            if let Some(usage) = read_usage(peek.usage) {
                self.usage = Some(usage);
            }
            // The usage-only chunk the gateway asked for on the client's behalf, even when
            // its usage is unreadable: a client that did not ask for it gets no empty chunk.
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
            data: Bytes::copy_from_slice(data.as_bytes()),
            content,
        });
        Ok(())
    }

    /// The upstream body ended. OpenAI ends with `[DONE]`; some compatible servers just close
    /// after the finish reason. A body that ends with neither was cut short.
    pub fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        if !self.finished {
            return Err(stream_error(
                &self.provider,
                format!(
                    "provider {} ended the stream before finishing",
                    self.provider.name
                ),
            ));
        }
        self.done = true;
        out.push(StreamItem::Done);
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

    /// The golden request file's bytes, as a client would send them.
    fn golden_bytes(path: &str) -> Vec<u8> {
        let full = format!("{}/tests/golden/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    fn upstream_json(upstream: &UpstreamRequest) -> serde_json::Value {
        serde_json::from_slice(&upstream.body).unwrap()
    }

    #[test]
    fn request_passes_the_client_body_through_but_the_model() {
        let openai = provider("openai");
        let request = ChatRequest::from_slice(&golden_bytes("openai/request.in.json")).unwrap();
        let upstream = dispatch_request(&call(&openai, "gpt-4o-mini"), &request).unwrap();
        assert_eq!(upstream.url, "https://api.openai.com/v1/chat/completions");
        assert_eq!(upstream.headers["authorization"], "Bearer test-key");
        assert!(upstream.headers["authorization"].is_sensitive());
        // `cache_control` on a text part, unknown fields on an image, a tool call and a
        // function, an unknown part type and `"content": null` all reach the provider.
        assert_eq!(upstream_json(&upstream), golden("openai/request.out.json"));
    }

    #[test]
    fn stream_request_merges_include_usage_into_the_client_options() {
        let openai = provider("openai");
        let mut body = golden("openai/request.in.json");
        body["stream"] = serde_json::json!(true);
        body["stream_options"] =
            serde_json::json!({"include_usage": false, "continuous_usage_stats": true});
        let request = ChatRequest::from_slice(body.to_string().as_bytes()).unwrap();
        let upstream = dispatch_request(&call(&openai, "gpt-4o-mini"), &request).unwrap();
        let mut expected = body.clone();
        expected["model"] = serde_json::json!("gpt-4o-mini");
        expected["stream_options"] =
            serde_json::json!({"include_usage": true, "continuous_usage_stats": true});
        assert_eq!(upstream_json(&upstream), expected);

        // Without options, or with `null`, the gateway's own.
        for options in [None, Some(serde_json::Value::Null)] {
            let mut body = golden("openai/request.in.json");
            body["stream"] = serde_json::json!(true);
            if let Some(options) = options {
                body["stream_options"] = options;
            }
            let request = ChatRequest::from_slice(body.to_string().as_bytes()).unwrap();
            let upstream = dispatch_request(&call(&openai, "m"), &request).unwrap();
            assert_eq!(
                upstream_json(&upstream)["stream_options"],
                serde_json::json!({"include_usage": true})
            );
        }
    }

    #[test]
    fn passthrough_rewrites_only_the_top_level() {
        let openai = provider("openai");
        // Escaped and repeated keys, number spellings a re-serialisation would change.
        let body =
            br#"{ "model" : "smart", "messages": [ {"role":"user","content":"x", "z": 1.50} ],
            "temperature": 0.50, "x_vendor": {"b": 1, "a": 2}, "x_vendor": {"a": 1e2},
            "stream": true, "stream_options": {"include_usage": false} }"#;
        let request = ChatRequest::from_slice(body).unwrap();
        let upstream = dispatch_request(&call(&openai, "gpt-4o"), &request).unwrap();
        let text = std::str::from_utf8(&upstream.body).unwrap();
        assert_eq!(
            text,
            r#"{"model":"gpt-4o","messages":[ {"role":"user","content":"x", "z": 1.50} ],"temperature":0.50,"x_vendor":{"a": 1e2},"stream":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn requests_built_in_code_are_serialised() {
        let openai = provider("openai");
        let mut request = ChatRequest {
            model: "probe".to_owned(),
            messages: vec![crate::wire::ChatMessage::text(
                crate::wire::Role::User,
                "ping",
            )],
            stream: true,
            ..ChatRequest::default()
        };
        request.max_tokens = Some(1);
        let upstream = dispatch_request(&call(&openai, "gpt-4o-mini"), &request).unwrap();
        assert_eq!(
            upstream_json(&upstream),
            serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "ping"}],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 1
            })
        );
    }

    #[test]
    fn embeddings_pass_through_but_the_model() {
        let openai = provider("openai");
        let body =
            br#"{"model":"embed","input":["a","b"],"dimensions":256,"x_vendor":{"scale": 1.50}}"#;
        let request = EmbeddingsRequest::from_slice(body).unwrap();
        let upstream =
            super::super::embeddings_request(&call(&openai, "text-embedding-3-small"), &request)
                .unwrap();
        assert_eq!(upstream.url, "https://api.openai.com/v1/embeddings");
        assert_eq!(
            std::str::from_utf8(&upstream.body).unwrap(),
            r#"{"model":"text-embedding-3-small","input":["a","b"],"dimensions":256,"x_vendor":{"scale": 1.50}}"#
        );
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
    fn azure_deployment_is_one_encoded_path_segment() {
        let azure = provider("azure");
        let request: ChatRequest =
            serde_json::from_value(golden("openai/request.in.json")).unwrap();
        let upstream = dispatch_request(&call(&azure, "dep/../../x?y=1 z#f"), &request).unwrap();
        assert_eq!(
            upstream.url,
            "https://example-resource.openai.azure.com/openai/deployments/dep%2F..%2F..%2Fx%3Fy%3D1%20z%23f/chat/completions?api-version=2024-10-21"
        );
        let embeddings = EmbeddingsRequest::from_slice(br#"{"model":"az/e","input":"x"}"#).unwrap();
        let upstream =
            super::super::embeddings_request(&call(&azure, "../e"), &embeddings).unwrap();
        assert_eq!(
            upstream.url,
            "https://example-resource.openai.azure.com/openai/deployments/..%2Fe/embeddings?api-version=2024-10-21"
        );
        // A name that is only dots would still be a path step once decoded.
        for model in ["..", ".", ""] {
            let error = dispatch_request(&call(&azure, model), &request).unwrap_err();
            assert_eq!(error.status(), 400, "{model:?}");
            assert_eq!(error.param.as_deref(), Some("model"));
        }
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
        // No serde detail ("expected value at line 1 column 1").
        assert_eq!(
            error.message,
            "provider openai sent a response the gateway could not read"
        );
    }

    #[test]
    fn null_usage_counts_are_zero() {
        let openai = provider("openai");
        let body = br#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":null,"prompt_tokens_details":{"cached_tokens":null},"completion_tokens_details":null}}"#;
        let completion = chat_response(&call(&openai, "m"), body).unwrap();
        assert_eq!(
            completion.usage,
            TokenUsage {
                input: 7,
                output: 2,
                ..TokenUsage::default()
            }
        );
    }

    #[test]
    fn unreadable_usage_never_fails_the_answer() {
        let openai = provider("openai");
        for usage in [r#""n/a""#, "-1", r#"{"prompt_tokens":"many"}"#, "[]"] {
            let body = format!(r#"{{"id":"x","choices":[],"usage":{usage}}}"#);
            let completion = chat_response(&call(&openai, "m"), body.as_bytes()).unwrap();
            assert_eq!(completion.body, body.as_bytes());
            assert_eq!(completion.usage, TokenUsage::default(), "{usage}");
        }
    }

    /// Runs a golden transcript through a decoder; the result of `finish` is returned.
    fn run_transcript(
        path: &str,
        wants_usage: bool,
    ) -> (
        Vec<StreamItem>,
        Result<(), GatewayError>,
        Option<TokenUsage>,
    ) {
        let openai = provider("openai");
        let mut body = golden("openai/request.in.json");
        body["stream"] = serde_json::json!(true);
        if wants_usage {
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        let request = ChatRequest::from_slice(body.to_string().as_bytes()).unwrap();
        let mut decoder = StreamDecoder::new(&call(&openai, "gpt-4o-mini"), &request);
        let mut out = Vec::new();
        for (event, data) in golden_sse(path) {
            let event = SseEvent {
                event: &event,
                data: &data,
            };
            if let Err(error) = decoder.decode(event, &mut out) {
                return (out, Err(error), decoder.usage());
            }
        }
        let finished = decoder.finish(&mut out);
        (out, finished, decoder.usage())
    }

    #[test]
    fn stream_cut_short_fails_retryably() {
        let (items, finished, _) = run_transcript("openai/stream_truncated.sse", false);
        assert_eq!(items.len(), 2);
        assert!(!items.contains(&StreamItem::Done));
        let error = finished.unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.retryable);
        assert_eq!(
            error.message,
            "provider openai ended the stream before finishing"
        );
    }

    #[test]
    fn stream_with_finish_reason_but_no_done_completes() {
        let (items, finished, usage) = run_transcript("openai/stream_without_done.sse", true);
        finished.unwrap();
        // role, content, finish, usage chunk, then the [DONE] the server never sent.
        assert_eq!(items.len(), 5);
        assert_eq!(items.last(), Some(&StreamItem::Done));
        assert_eq!(
            usage,
            Some(TokenUsage {
                input: 12,
                output: 3,
                ..TokenUsage::default()
            })
        );
    }

    #[test]
    fn stream_whose_first_event_is_an_error_fails() {
        let (items, finished, _) = run_transcript("openai/stream_error_first.sse", false);
        assert!(items.is_empty());
        let error = finished.unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.retryable);
        assert!(
            error.message.contains("The server had an error"),
            "{}",
            error.message
        );
    }

    #[test]
    fn stream_with_unreadable_usage_still_completes() {
        let (items, finished, usage) = run_transcript("openai/stream_bad_usage.sse", false);
        finished.unwrap();
        assert_eq!(usage, None);
        // The usage-only chunk is still the gateway's to drop.
        assert_eq!(items.len(), 3);
        assert_eq!(items.last(), Some(&StreamItem::Done));
        let (items, finished, _) = run_transcript("openai/stream_bad_usage.sse", true);
        finished.unwrap();
        assert_eq!(items.len(), 4);
    }

    #[test]
    fn unreadable_stream_event_names_no_serde_detail() {
        let openai = provider("openai");
        let request: ChatRequest =
            serde_json::from_value(golden("openai/request.in.json")).unwrap();
        let mut decoder = StreamDecoder::new(&call(&openai, "m"), &request);
        let error = decoder
            .decode(
                SseEvent {
                    event: "message",
                    data: "{\"choices\": [",
                },
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(
            error.message,
            "provider openai sent a response the gateway could not read"
        );
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

        // OpenAI echoes part of the key; none of it reaches the client.
        let error = error_response(
            &openai,
            401,
            None,
            br#"{"error":{"message":"Incorrect API key provided: sk-proj-****WXYZ. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        );
        assert_eq!(error.status(), 502);
        assert!(!error.retryable);
        assert_eq!(
            error.message,
            "provider openai rejected the gateway's credentials (401)"
        );
        assert_eq!(
            error.code.as_deref(),
            Some("upstream_authentication_failed")
        );

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
