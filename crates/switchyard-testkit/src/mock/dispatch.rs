//! One request through the mock, in this order:
//!
//! 1. Read the body (at most [`MAX_BODY_BYTES`]).
//! 2. `/__mock/*` goes to the control API; it is neither counted nor recorded.
//!    `POST /v1/traces` is an OTLP/HTTP trace export (the gateway's, when the mock is its
//!    collector): counted apart, never recorded or parsed, answered with an empty 200.
//! 3. Count and record the request.
//! 4. Route it to an [`Endpoint`]; an unknown path gets a 404 in the likeliest wire's shape
//!    (and consumes no scripted behaviour).
//! 5. Take the behaviour (next scripted one, else the default) and misbehave: `hang`,
//!    `latency_ms`, `reset`, `error_status`, `error_rate`, in that order.
//! 6. Check the provider key (`expect_api_key`) and the wire's required headers.
//! 7. Parse the JSON body (400 in the wire's shape when it is not JSON), and answer.
//! 8. Add `Retry-After` when the behaviour has `retry_after_s`.
//!
//! Nothing here logs above debug: the load harness runs the mock as its baseline.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use super::behavior::Behavior;
use super::body::{MockBody, Pacing, event_stream_response, full, json_response};
use super::conversation::Reply;
use super::server::ConnectionAbort;
use super::state::Shared;
use super::wire::{Answer, Rejection, Wire, data_event};
use super::{anthropic, control, gemini, openai};

/// Largest request body the mock reads; bigger ones get a 413.
pub(crate) const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The API call a request makes, borrowed from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint<'a> {
    /// OpenAI chat completions; `deployment` is set for Azure's path.
    ChatCompletions { deployment: Option<&'a str> },
    /// OpenAI embeddings; `deployment` is set for Azure's path.
    Embeddings { deployment: Option<&'a str> },
    /// OpenAI's model list.
    Models,
    /// Anthropic Messages.
    Messages,
    /// Gemini generateContent / streamGenerateContent.
    GenerateContent { model: &'a str, stream: bool },
    /// Gemini embedContent / batchEmbedContents.
    EmbedContent { batch: bool },
}

impl<'a> Endpoint<'a> {
    fn parse(method: &Method, path: &'a str) -> Option<Self> {
        if method == Method::GET {
            return matches!(path, "/v1/models" | "/models").then_some(Endpoint::Models);
        }
        if method != Method::POST {
            return None;
        }
        match path {
            "/v1/chat/completions" | "/chat/completions" => {
                return Some(Endpoint::ChatCompletions { deployment: None });
            }
            "/v1/embeddings" | "/embeddings" => {
                return Some(Endpoint::Embeddings { deployment: None });
            }
            "/v1/messages" => return Some(Endpoint::Messages),
            _ => {}
        }
        if let Some(rest) = path.strip_prefix("/openai/deployments/") {
            let (deployment, operation) = rest.split_once('/')?;
            if deployment.is_empty() {
                return None;
            }
            return match operation {
                "chat/completions" => Some(Endpoint::ChatCompletions {
                    deployment: Some(deployment),
                }),
                "embeddings" => Some(Endpoint::Embeddings {
                    deployment: Some(deployment),
                }),
                _ => None,
            };
        }
        let rest = path
            .strip_prefix("/v1beta/models/")
            .or_else(|| path.strip_prefix("/v1/models/"))?;
        let (model, action) = rest.rsplit_once(':')?;
        if model.is_empty() || model.contains('/') {
            return None;
        }
        match action {
            "generateContent" => Some(Endpoint::GenerateContent {
                model,
                stream: false,
            }),
            "streamGenerateContent" => Some(Endpoint::GenerateContent {
                model,
                stream: true,
            }),
            "embedContent" => Some(Endpoint::EmbedContent { batch: false }),
            "batchEmbedContents" => Some(Endpoint::EmbedContent { batch: true }),
            _ => None,
        }
    }

    fn wire(self) -> Wire {
        match self {
            Endpoint::ChatCompletions { .. } | Endpoint::Embeddings { .. } | Endpoint::Models => {
                Wire::OpenAi
            }
            Endpoint::Messages => Wire::Anthropic,
            Endpoint::GenerateContent { .. } | Endpoint::EmbedContent { .. } => Wire::Gemini,
        }
    }

    /// Whether the request carries `expected` in this wire's key header.
    fn has_api_key(self, parts: &Parts, expected: &str) -> bool {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
        };
        match self {
            Endpoint::ChatCompletions {
                deployment: Some(_),
            }
            | Endpoint::Embeddings {
                deployment: Some(_),
            } => header("api-key") == Some(expected),
            Endpoint::ChatCompletions { deployment: None }
            | Endpoint::Embeddings { deployment: None }
            | Endpoint::Models => {
                header(AUTHORIZATION.as_str()).and_then(|value| value.strip_prefix("Bearer "))
                    == Some(expected)
            }
            Endpoint::Messages => header("x-api-key") == Some(expected),
            Endpoint::GenerateContent { .. } | Endpoint::EmbedContent { .. } => {
                header("x-goog-api-key") == Some(expected)
                    || query_param(parts, "key") == Some(expected)
            }
        }
    }
}

/// The wire format whose error shape an unroutable path most likely expects.
fn wire_for_unknown_path(path: &str) -> Wire {
    if path.starts_with("/v1beta/") || path.contains(':') {
        Wire::Gemini
    } else if path.starts_with("/v1/messages") {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    }
}

/// The raw value of query parameter `name` (provider keys need no percent-decoding).
fn query_param<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .uri
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Handles one request. An `Err` makes hyper drop the connection without a response.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, ConnectionAbort> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            let wire = wire_for_unknown_path(parts.uri.path());
            let message = format!("request body larger than {MAX_BODY_BYTES} bytes");
            return Ok(error_response(
                wire,
                StatusCode::PAYLOAD_TOO_LARGE,
                &message,
            ));
        }
        // The client broke off mid-body: there is no one to answer.
        Err(_) => return Err(ConnectionAbort),
    };

    if let Some(command) = parts.uri.path().strip_prefix("/__mock/") {
        return Ok(control::handle(&shared, &parts.method, command, &body));
    }
    if parts.method == Method::POST && parts.uri.path() == OTLP_TRACES_PATH {
        shared.count_trace_export();
        return Ok(trace_export_response());
    }
    let call_number = shared.record(&parts, &body);

    let path = parts.uri.path();
    let Some(endpoint) = Endpoint::parse(&parts.method, path) else {
        let message = format!("no route for {} {path}", parts.method);
        return Ok(error_response(
            wire_for_unknown_path(path),
            StatusCode::NOT_FOUND,
            &message,
        ));
    };

    let behavior = shared.next_behavior();
    if behavior.hang {
        shared.stopped().await;
        return Err(ConnectionAbort);
    }
    if behavior.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behavior.latency_ms)).await;
    }
    if behavior.reset {
        return Err(ConnectionAbort);
    }

    let injected_status = behavior
        .error_status
        .map(|status| StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .or_else(|| {
            behavior
                .fails_by_error_rate(call_number)
                .then_some(StatusCode::INTERNAL_SERVER_ERROR)
        });
    let mut response = match injected_status {
        Some(status) => {
            let message = format!(
                "mock provider '{}': scripted {} {}",
                shared.name,
                status.as_u16(),
                status.canonical_reason().unwrap_or("error")
            );
            error_response(endpoint.wire(), status, &message)
        }
        None => answer(&shared, endpoint, &parts, &body, &behavior),
    };

    if let Some(seconds) = behavior.retry_after_s {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    Ok(response)
}

/// Where OTLP/HTTP exporters post spans.
const OTLP_TRACES_PATH: &str = "/v1/traces";

/// Accepts an OTLP/HTTP export: an empty `ExportTraceServiceResponse` (no partial success)
/// encodes to no bytes at all.
fn trace_export_response() -> Response<MockBody> {
    let mut response = Response::new(full(Bytes::new()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

/// A response with `status` and `wire`'s error body.
fn error_response(wire: Wire, status: StatusCode, message: &str) -> Response<MockBody> {
    json_response(status, &wire.error_body(status, message))
}

/// Answers a request that passed the behaviour: checks, parses and responds.
fn answer(
    shared: &Shared,
    endpoint: Endpoint<'_>,
    parts: &Parts,
    body: &Bytes,
    behavior: &Behavior,
) -> Response<MockBody> {
    let wire = endpoint.wire();
    let wrong_key = shared
        .expected_api_key
        .as_deref()
        .is_some_and(|expected| !endpoint.has_api_key(parts, expected));
    if wrong_key {
        return error_response(wire, StatusCode::UNAUTHORIZED, "invalid or missing API key");
    }
    if endpoint == Endpoint::Messages && !parts.headers.contains_key("anthropic-version") {
        return error_response(
            wire,
            StatusCode::BAD_REQUEST,
            "anthropic-version: header is required",
        );
    }
    if endpoint == Endpoint::Models {
        return json_response(StatusCode::OK, &openai::models());
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            let message = format!("the request body is not valid JSON: {error}");
            return error_response(wire, StatusCode::BAD_REQUEST, &message);
        }
    };
    let pacing = Pacing {
        time_to_first_event: Duration::from_millis(behavior.ttft_ms),
        between_events: Duration::from_millis(behavior.chunk_delay_ms),
        abort_after: behavior.reset_after_chunks,
    };
    let answer = match endpoint {
        Endpoint::ChatCompletions { deployment } => {
            openai::parse_chat(&request, deployment).map(|chat| {
                let reply = chat
                    .conversation
                    .reply(&shared.name, behavior.answer.as_deref());
                let sequence = shared.next_sequence();
                if chat.stream {
                    Answer::Events(openai::chat_stream(&chat, &reply, sequence, unix_now()))
                } else {
                    Answer::Json(openai::chat_response(&chat, &reply, sequence, unix_now()))
                }
            })
        }
        Endpoint::Embeddings { deployment } => {
            openai::embeddings(&request, deployment).map(Answer::Json)
        }
        Endpoint::Messages => anthropic::parse_messages(&request).map(|messages| {
            let reply = messages
                .conversation
                .reply(&shared.name, behavior.answer.as_deref());
            let sequence = shared.next_sequence();
            if messages.stream {
                Answer::Events(anthropic::stream(&messages, &reply, sequence))
            } else {
                Answer::Json(anthropic::response(&messages, &reply, sequence))
            }
        }),
        Endpoint::GenerateContent { model, stream } => {
            gemini::parse_generate(&request, model).map(|generate| {
                let reply = generate
                    .conversation
                    .reply(&shared.name, behavior.answer.as_deref());
                let sequence = shared.next_sequence();
                gemini_answer(&generate, &reply, sequence, stream, parts)
            })
        }
        Endpoint::EmbedContent { batch: true } => gemini::batch_embed(&request).map(Answer::Json),
        Endpoint::EmbedContent { batch: false } => gemini::embed(&request).map(Answer::Json),
        Endpoint::Models => Ok(Answer::Json(openai::models())),
    };
    match answer {
        Ok(Answer::Json(value)) => json_response(StatusCode::OK, &value),
        Ok(Answer::Events(events)) => event_stream_response(events, pacing),
        Err(Rejection { status, message }) => error_response(wire, status, &message),
    }
}

/// Gemini streams as SSE with `alt=sse`, and as one JSON array of responses without it.
fn gemini_answer(
    generate: &gemini::GenerateRequest,
    reply: &Reply,
    sequence: u64,
    stream: bool,
    parts: &Parts,
) -> Answer {
    if !stream {
        return Answer::Json(gemini::response(generate, reply, sequence));
    }
    let chunks = gemini::stream(generate, reply, sequence);
    if query_param(parts, "alt") == Some("sse") {
        // Gemini ends its SSE lines with CRLF; clients must cope, so the mock does the same.
        Answer::Events(
            chunks
                .iter()
                .map(|chunk| data_event(chunk, "\r\n"))
                .collect(),
        )
    } else {
        Answer::Json(Value::Array(chunks))
    }
}

/// Seconds since the Unix epoch, for `created` fields.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let post = Method::POST;
        assert_eq!(
            Endpoint::parse(&post, "/v1/chat/completions"),
            Some(Endpoint::ChatCompletions { deployment: None })
        );
        assert_eq!(
            Endpoint::parse(&post, "/openai/deployments/gpt4o/chat/completions"),
            Some(Endpoint::ChatCompletions {
                deployment: Some("gpt4o")
            })
        );
        assert_eq!(
            Endpoint::parse(
                &post,
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
            ),
            Some(Endpoint::GenerateContent {
                model: "gemini-2.0-flash",
                stream: true
            })
        );
        assert_eq!(
            Endpoint::parse(&post, "/v1beta/models/e:batchEmbedContents"),
            Some(Endpoint::EmbedContent { batch: true })
        );
        assert_eq!(
            Endpoint::parse(&Method::GET, "/v1/models"),
            Some(Endpoint::Models)
        );
        assert_eq!(
            Endpoint::parse(&post, "/v1/messages"),
            Some(Endpoint::Messages)
        );
        assert_eq!(Endpoint::parse(&Method::GET, "/v1/messages"), None);
        assert_eq!(
            Endpoint::parse(&post, "/v1beta/models/:generateContent"),
            None
        );
        assert_eq!(Endpoint::parse(&post, "/v1beta/models/m:unknown"), None);
        assert_eq!(
            Endpoint::parse(&post, "/openai/deployments//chat/completions"),
            None
        );
    }

    #[test]
    fn api_key_headers_per_wire() {
        let parts = |builder: http::request::Builder| builder.body(()).unwrap().into_parts().0;
        let bearer =
            parts(Request::post("/v1/chat/completions").header("authorization", "Bearer k"));
        let chat = Endpoint::ChatCompletions { deployment: None };
        assert!(chat.has_api_key(&bearer, "k"));
        assert!(!chat.has_api_key(&bearer, "other"));
        let azure = Endpoint::ChatCompletions {
            deployment: Some("d"),
        };
        assert!(!azure.has_api_key(&bearer, "k"));
        let azure_parts = parts(Request::post("/openai").header("api-key", "k"));
        assert!(azure.has_api_key(&azure_parts, "k"));
        let gemini = Endpoint::EmbedContent { batch: false };
        let query = parts(Request::post("/v1beta/models/m:embedContent?alt=sse&key=k"));
        assert!(gemini.has_api_key(&query, "k"));
        let anthropic = parts(Request::post("/v1/messages").header("x-api-key", "k"));
        assert!(Endpoint::Messages.has_api_key(&anthropic, "k"));
        assert!(!Endpoint::Messages.has_api_key(&bearer, "k"));
    }
}
