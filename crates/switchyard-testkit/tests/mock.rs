//! The mock provider over real sockets: each wire format as JSON and SSE, every scripted
//! misbehaviour, the key check, the control API and the binary.
//!
//! The client is hyper's connection-level HTTP/1 client on a plain `TcpStream`: no DNS, no
//! pool, so paused time behaves and each request is on a connection of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};
use tokio::net::TcpStream;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// A tiny client.

/// Sends one request on a new connection and returns the response head with its body unread.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response<Incoming>, hyper::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if !body.is_empty() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    sender.send_request(request).await
}

/// A complete exchange: status, headers and the whole body.
struct Exchange {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Exchange {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.body))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn content_type(&self) -> &str {
        self.headers["content-type"].to_str().unwrap()
    }

    /// The `data:` payloads of an SSE body, in order (CRLF or LF line ends).
    fn sse_data(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(|data| data.trim_end_matches('\r').to_owned())
            .collect()
    }

    /// The `event:` names of an SSE body, in order.
    fn sse_event_names(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|line| line.strip_prefix("event: "))
            .map(str::to_owned)
            .collect()
    }
}

async fn exchange(
    mock: &MockHandle,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Exchange {
    let response = send(mock.addr(), method, path, headers, body)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Exchange {
        status,
        headers,
        body,
    }
}

async fn post(mock: &MockHandle, path: &str, headers: &[(&str, &str)], body: &Value) -> Exchange {
    exchange(mock, Method::POST, path, headers, &body.to_string()).await
}

async fn get(mock: &MockHandle, path: &str) -> Exchange {
    exchange(mock, Method::GET, path, &[], "").await
}

async fn spawn(name: &str) -> MockHandle {
    MockProvider::builder().name(name).spawn().await.unwrap()
}

const ANTHROPIC_HEADERS: &[(&str, &str)] = &[("anthropic-version", "2023-06-01")];

fn chat(content: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": content}]})
}

fn messages(content: &str) -> Value {
    json!({"model": "claude-test", "max_tokens": 64,
           "messages": [{"role": "user", "content": content}]})
}

fn contents(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

// ---------------------------------------------------------------------------------------------
// OpenAI.

#[tokio::test]
async fn openai_chat_json() {
    let mock = spawn("alpha").await;
    let exchange = post(&mock, "/v1/chat/completions", &[], &chat("hello there")).await;
    assert_eq!(exchange.status, StatusCode::OK);
    assert_eq!(exchange.content_type(), "application/json");
    let body = exchange.json();
    assert_eq!(body["id"], "chatcmpl-mock-1");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-test");
    assert!(body["created"].as_u64().unwrap() > 0);
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "alpha says: hello there", "refusal": null})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({
            "prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    );

    // The path without /v1 is the same API.
    let again = post(&mock, "/chat/completions", &[], &chat("x")).await;
    assert_eq!(again.json()["id"], "chatcmpl-mock-2");
}

#[tokio::test]
async fn openai_chat_stream_with_usage() {
    let mock = spawn("alpha").await;
    let mut request = chat("hello there");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let exchange = post(&mock, "/v1/chat/completions", &[], &request).await;
    assert_eq!(exchange.status, StatusCode::OK);
    assert_eq!(exchange.content_type(), "text/event-stream");

    let data = exchange.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk")
    );
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert!(
        rest.iter()
            .all(|chunk| chunk["usage"].is_null() && chunk.get("usage").is_some())
    );
    let text: String = rest
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "alpha says: hello there");
    let finish = rest.last().unwrap();
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 4);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 2);
}

#[tokio::test]
async fn openai_tool_call_json_and_stream() {
    let mock = spawn("alpha").await;
    let mut request = chat("weather in Paris");
    request["tools"] = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {}}},
    ]);
    request["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});

    let body = post(&mock, "/v1/chat/completions", &[], &request)
        .await
        .json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_time");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"input": "weather in Paris"}));

    request["stream"] = json!(true);
    let exchange = post(&mock, "/v1/chat/completions", &[], &request).await;
    let chunks: Vec<Value> = exchange
        .sse_data()
        .iter()
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(deltas.len(), 3);
    assert_eq!(deltas[0][0]["function"]["name"], "get_time");
    assert_eq!(deltas[0][0]["function"]["arguments"], "");
    assert!(
        deltas[0][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("call_mock_")
    );
    let streamed: String = deltas[1..]
        .iter()
        .map(|delta| delta[0]["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, r#"{"input":"weather in Paris"}"#);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // A tool result last: a text answer about it.
    request["stream"] = json!(false);
    request["messages"] = json!([
        {"role": "user", "content": "weather in Paris"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]);
    let body = post(&mock, "/v1/chat/completions", &[], &request)
        .await
        .json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "alpha got tool result: sunny"
    );
}

#[tokio::test]
async fn openai_n_choices() {
    let mock = spawn("alpha").await;
    let mut request = chat("hi");
    request["n"] = json!(3);
    let body = post(&mock, "/v1/chat/completions", &[], &request)
        .await
        .json();
    assert_eq!(body["choices"].as_array().unwrap().len(), 3);
    assert_eq!(body["choices"][2]["index"], 2);
    assert_eq!(body["usage"]["completion_tokens"], 9);
}

#[tokio::test]
async fn azure_deployment_path_and_api_key_header() {
    let mock = MockProvider::builder()
        .name("azure")
        .expect_api_key("secret")
        .spawn()
        .await
        .unwrap();
    let path = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";
    let request = json!({"messages": [{"role": "user", "content": "hi"}]});

    let ok = post(&mock, path, &[("api-key", "secret")], &request).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["model"], "my-gpt");

    // Azure takes `api-key`, not a bearer token.
    let bearer = post(&mock, path, &[("authorization", "Bearer secret")], &request).await;
    assert_eq!(bearer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bearer.json()["error"]["code"], "invalid_api_key");

    let recorded = mock.requests();
    assert_eq!(
        recorded[0].path,
        "/openai/deployments/my-gpt/chat/completions"
    );
    assert_eq!(recorded[0].query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(recorded[0].headers["api-key"], "secret");
}

#[tokio::test]
async fn openai_embeddings_and_models() {
    let mock = spawn("alpha").await;
    let body = post(
        &mock,
        "/v1/embeddings",
        &[],
        &json!({"model": "mock-embed", "input": ["one two", "three"], "dimensions": 4}),
    )
    .await
    .json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    let encoded = post(
        &mock,
        "/v1/embeddings",
        &[],
        &json!({"model": "mock-embed", "input": "one two", "dimensions": 4,
                "encoding_format": "base64"}),
    )
    .await
    .json();
    // Same text, same vector, whatever the encoding: 4 f32s are 16 bytes, 24 base64 chars.
    assert_eq!(encoded["data"][0]["embedding"].as_str().unwrap().len(), 24);

    let models = get(&mock, "/v1/models").await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock-small", "mock-large", "mock-embed"]);
}

// ---------------------------------------------------------------------------------------------
// Anthropic.

#[tokio::test]
async fn anthropic_messages_json() {
    let mock = spawn("beta").await;
    let exchange = post(
        &mock,
        "/v1/messages",
        ANTHROPIC_HEADERS,
        &messages("hello there"),
    )
    .await;
    assert_eq!(exchange.status, StatusCode::OK);
    assert_eq!(
        exchange.json(),
        json!({
            "id": "msg_mock_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": "beta says: hello there"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 2, "output_tokens": 4,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        })
    );
}

#[tokio::test]
async fn anthropic_requires_max_tokens_and_version() {
    let mock = spawn("beta").await;
    let mut request = messages("hi");
    request.as_object_mut().unwrap().remove("max_tokens");
    let missing = post(&mock, "/v1/messages", ANTHROPIC_HEADERS, &request).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["type"], "error");
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");
    assert!(
        missing.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );

    let no_version = post(&mock, "/v1/messages", &[], &messages("hi")).await;
    assert_eq!(no_version.status, StatusCode::BAD_REQUEST);
    assert!(
        no_version.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version")
    );
}

#[tokio::test]
async fn anthropic_stream_events() {
    let mock = spawn("beta").await;
    let mut request = messages("hello there");
    request["stream"] = json!(true);
    request["system"] = json!([{"type": "text", "text": "CACHED context here"}]);
    let exchange = post(&mock, "/v1/messages", ANTHROPIC_HEADERS, &request).await;
    assert_eq!(exchange.content_type(), "text/event-stream");
    assert_eq!(
        exchange.sse_event_names(),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let events: Vec<Value> = exchange
        .sse_data()
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    // 5 prompt words: 5 cache reads and 3 cache writes leave 0 input tokens.
    assert_eq!(
        events[0]["message"]["usage"],
        json!({"input_tokens": 0, "output_tokens": 1,
               "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5})
    );
    let text: String = events
        .iter()
        .filter(|event| event["type"] == "content_block_delta")
        .map(|event| {
            assert_eq!(event["delta"]["type"], "text_delta");
            event["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "beta says: hello there");
    assert_eq!(
        events[8],
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 4}})
    );
}

#[tokio::test]
async fn anthropic_tool_use() {
    let mock = spawn("beta").await;
    let mut request = messages("find the file");
    request["tools"] = json!([{"name": "search", "description": "d", "input_schema": {}}]);
    let body = post(&mock, "/v1/messages", ANTHROPIC_HEADERS, &request)
        .await
        .json();
    assert_eq!(body["stop_reason"], "tool_use");
    assert_eq!(body["content"][0]["type"], "tool_use");
    assert_eq!(body["content"][0]["name"], "search");
    assert_eq!(
        body["content"][0]["input"],
        json!({"input": "find the file"})
    );

    request["tool_choice"] = json!({"type": "none"});
    let body = post(&mock, "/v1/messages", ANTHROPIC_HEADERS, &request)
        .await
        .json();
    assert_eq!(body["stop_reason"], "end_turn");
}

// ---------------------------------------------------------------------------------------------
// Gemini.

#[tokio::test]
async fn gemini_generate_json() {
    let mock = spawn("gamma").await;
    let exchange = post(
        &mock,
        "/v1beta/models/gemini-test:generateContent",
        &[],
        &contents("hello there"),
    )
    .await;
    assert_eq!(exchange.status, StatusCode::OK);
    assert_eq!(
        exchange.json(),
        json!({
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": "gamma says: hello there"}]},
                "finishReason": "STOP",
                "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 4,
                              "totalTokenCount": 6},
            "modelVersion": "gemini-test",
            "responseId": "mock-1",
        })
    );
}

#[tokio::test]
async fn gemini_stream_sse() {
    let mock = spawn("gamma").await;
    let exchange = post(
        &mock,
        "/v1beta/models/gemini-test:streamGenerateContent?alt=sse",
        &[],
        &contents("hello there"),
    )
    .await;
    assert_eq!(exchange.content_type(), "text/event-stream");
    assert!(!exchange.text().contains("[DONE]"));
    let events: Vec<Value> = exchange
        .sse_data()
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(events.len(), 4);
    let text: String = events
        .iter()
        .map(|event| {
            event["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(text, "gamma says: hello there");
    assert!(
        events[..3]
            .iter()
            .all(|event| event.get("usageMetadata").is_none())
    );
    assert_eq!(events[3]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(events[3]["usageMetadata"]["totalTokenCount"], 6);
}

#[tokio::test]
async fn gemini_function_call_and_embeddings() {
    let mock = spawn("gamma").await;
    let mut request = contents("look it up");
    request["tools"] = json!([{"functionDeclarations": [{"name": "lookup", "parameters": {}}]}]);
    let body = post(&mock, "/v1beta/models/g:generateContent", &[], &request)
        .await
        .json();
    assert_eq!(
        body["candidates"][0]["content"]["parts"][0],
        json!({"functionCall": {"name": "lookup", "args": {"input": "look it up"}}})
    );
    assert_eq!(body["candidates"][0]["finishReason"], "STOP");

    let body = post(
        &mock,
        "/v1beta/models/embed:batchEmbedContents",
        &[],
        &json!({"requests": [
            {"model": "models/embed", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/embed", "content": {"parts": [{"text": "b"}]},
             "outputDimensionality": 16},
        ]}),
    )
    .await
    .json();
    assert_eq!(body["embeddings"][0]["values"].as_array().unwrap().len(), 8);
    assert_eq!(
        body["embeddings"][1]["values"].as_array().unwrap().len(),
        16
    );
}

#[tokio::test]
async fn gemini_key_in_header_or_query() {
    let mock = MockProvider::builder()
        .expect_api_key("g-key")
        .spawn()
        .await
        .unwrap();
    let path = "/v1beta/models/g:generateContent";
    let header = post(&mock, path, &[("x-goog-api-key", "g-key")], &contents("x")).await;
    assert_eq!(header.status, StatusCode::OK);
    let query = post(&mock, &format!("{path}?key=g-key"), &[], &contents("x")).await;
    assert_eq!(query.status, StatusCode::OK);
    let missing = post(&mock, path, &[], &contents("x")).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(missing.json()["error"]["code"], 401);
}

// ---------------------------------------------------------------------------------------------
// Errors, keys, routing.

#[tokio::test]
async fn expect_api_key_rejects_wrong_keys_in_each_wire_shape() {
    let mock = MockProvider::builder()
        .expect_api_key("right")
        .spawn()
        .await
        .unwrap();
    let openai = post(
        &mock,
        "/v1/chat/completions",
        &[("authorization", "Bearer wrong")],
        &chat("x"),
    )
    .await;
    assert_eq!(openai.status, StatusCode::UNAUTHORIZED);
    assert_eq!(openai.json()["error"]["type"], "authentication_error");
    let ok = post(
        &mock,
        "/v1/chat/completions",
        &[("authorization", "Bearer right")],
        &chat("x"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);

    let anthropic = post(
        &mock,
        "/v1/messages",
        &[
            ("anthropic-version", "2023-06-01"),
            ("authorization", "Bearer right"),
        ],
        &messages("x"),
    )
    .await;
    assert_eq!(anthropic.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anthropic.json()["error"]["type"], "authentication_error");
    let ok = post(
        &mock,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01"), ("x-api-key", "right")],
        &messages("x"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn scripted_errors_in_each_wire_shape() {
    let mock = spawn("alpha").await;
    mock.push_script(Behavior::status(500));
    mock.push_script(Behavior::status(529));
    mock.push_script(Behavior::status(503));

    let openai = post(&mock, "/v1/chat/completions", &[], &chat("x")).await;
    assert_eq!(openai.status, StatusCode::INTERNAL_SERVER_ERROR);
    let error = &openai.json()["error"];
    assert_eq!(error["type"], "server_error");
    assert_eq!(error["param"], Value::Null);
    assert!(error["message"].is_string());

    let anthropic = post(&mock, "/v1/messages", ANTHROPIC_HEADERS, &messages("x")).await;
    assert_eq!(anthropic.status.as_u16(), 529);
    assert_eq!(anthropic.json()["error"]["type"], "overloaded_error");

    let gemini = post(
        &mock,
        "/v1beta/models/g:generateContent",
        &[],
        &contents("x"),
    )
    .await;
    assert_eq!(gemini.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gemini.json()["error"]["status"], "UNAVAILABLE");

    // The script is used up: back to the default.
    let ok = post(&mock, "/v1/chat/completions", &[], &chat("x")).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_with_retry_after() {
    let mock = spawn("alpha").await;
    mock.push_script(Behavior::rate_limited(7));
    let limited = post(&mock, "/v1/chat/completions", &[], &chat("x")).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers["retry-after"], "7");
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");

    let ok = post(&mock, "/v1/chat/completions", &[], &chat("x")).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.headers.get("retry-after").is_none());
}

#[tokio::test]
async fn invalid_json_and_unknown_paths() {
    let mock = spawn("alpha").await;
    let openai = exchange(
        &mock,
        Method::POST,
        "/v1/chat/completions",
        &[],
        "{not json",
    )
    .await;
    assert_eq!(openai.status, StatusCode::BAD_REQUEST);
    assert_eq!(openai.json()["error"]["type"], "invalid_request_error");

    let anthropic = exchange(&mock, Method::POST, "/v1/messages", ANTHROPIC_HEADERS, "[").await;
    assert_eq!(anthropic.status, StatusCode::BAD_REQUEST);
    assert_eq!(anthropic.json()["type"], "error");

    let gemini = exchange(
        &mock,
        Method::POST,
        "/v1beta/models/g:generateContent",
        &[],
        "x",
    )
    .await;
    assert_eq!(gemini.status, StatusCode::BAD_REQUEST);
    assert_eq!(gemini.json()["error"]["status"], "INVALID_ARGUMENT");

    let unknown = post(&mock, "/v1/completions", &[], &json!({})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json()["error"]["type"], "not_found_error");
    let unknown = post(&mock, "/v1beta/models/g:countTokens", &[], &json!({})).await;
    assert_eq!(unknown.json()["error"]["status"], "NOT_FOUND");
}

// ---------------------------------------------------------------------------------------------
// Connection-level misbehaviour.

#[tokio::test]
async fn reset_closes_the_connection_without_a_response() {
    let mock = spawn("alpha").await;
    mock.push_script(Behavior::connection_reset());
    let result = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[],
        &chat("x").to_string(),
    )
    .await;
    let error = result.expect_err("a reset must not produce a response");
    assert!(
        error.is_incomplete_message() || error.is_closed(),
        "{error:?}"
    );
    assert_eq!(mock.calls(), 1);

    // The next request is served normally.
    let ok = post(&mock, "/v1/chat/completions", &[], &chat("x")).await;
    assert_eq!(ok.status, StatusCode::OK);
}

/// Reads body frames until the body ends or fails; returns the data and whether it failed.
async fn read_until_end_or_error(response: Response<Incoming>) -> (String, bool) {
    let mut body = response.into_body();
    let mut data = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(bytes) = frame.into_data() {
                    data.extend_from_slice(&bytes);
                }
            }
            Some(Err(_)) => return (String::from_utf8(data).unwrap(), true),
            None => return (String::from_utf8(data).unwrap(), false),
        }
    }
}

#[tokio::test]
async fn reset_after_chunks_cuts_the_stream() {
    let mock = spawn("alpha").await;
    let mut request = chat("one two three four");
    request["stream"] = json!(true);

    mock.push_script(Behavior::reset_after_chunks(2));
    let response = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[],
        &request.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (data, failed) = read_until_end_or_error(response).await;
    assert!(failed, "the body must end in an error, got {data:?}");
    assert_eq!(data.matches("data: ").count(), 2, "{data:?}");
    assert!(!data.contains("[DONE]"));

    // 0 chunks: the headers arrive, then the connection dies.
    mock.push_script(Behavior::reset_after_chunks(0));
    let response = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[],
        &request.to_string(),
    )
    .await
    .unwrap();
    let (data, failed) = read_until_end_or_error(response).await;
    assert!(failed);
    assert_eq!(data, "");
}

#[tokio::test(start_paused = true)]
async fn hang_never_answers_and_is_released_by_shutdown() {
    let mock = spawn("alpha").await;
    mock.set_behavior(Behavior::hang());
    let addr = mock.addr();
    let request = tokio::spawn(async move {
        send(
            addr,
            Method::POST,
            "/v1/chat/completions",
            &[],
            &chat("x").to_string(),
        )
        .await
    });

    // Paused time: the runtime jumps straight to the timeout once everything is idle.
    let started = Instant::now();
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while mock.calls() == 0 {
            tokio::task::yield_now().await;
        }
        std::future::pending::<()>().await;
    })
    .await;
    assert!(waited.is_err());
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert!(!request.is_finished());

    mock.shutdown().await;
    let result = request.await.unwrap();
    assert!(
        result.is_err(),
        "shutdown must close the hanging connection"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}

#[tokio::test(start_paused = true)]
async fn latency_and_stream_pacing_use_tokio_time() {
    let mock = spawn("alpha").await;
    mock.set_behavior(Behavior {
        latency_ms: 500,
        ttft_ms: 200,
        chunk_delay_ms: 50,
        ..Behavior::default()
    });
    let started = Instant::now();
    let mut request = chat("hi");
    request["stream"] = json!(true);
    let response = send(
        mock.addr(),
        Method::POST,
        "/v1/chat/completions",
        &[],
        &request.to_string(),
    )
    .await
    .unwrap();
    let headers_after = started.elapsed();
    assert!(
        headers_after >= Duration::from_millis(500),
        "{headers_after:?}"
    );
    let (data, failed) = read_until_end_or_error(response).await;
    assert!(!failed);
    // role, 3 words, finish, [DONE]: 200 ms before the first, 50 ms between the other 5.
    assert_eq!(data.matches("data: ").count(), 6);
    assert!(started.elapsed() >= Duration::from_millis(500 + 200 + 5 * 50));
}

#[tokio::test]
async fn error_rate_is_deterministic() {
    async fn pattern(mock: &MockHandle) -> Vec<bool> {
        let mut failures = Vec::new();
        for _ in 0..40 {
            let exchange = post(mock, "/v1/chat/completions", &[], &chat("x")).await;
            failures.push(exchange.status == StatusCode::INTERNAL_SERVER_ERROR);
        }
        failures
    }
    let behavior = Behavior {
        error_rate: 0.5,
        ..Behavior::default()
    };
    let first = MockProvider::builder()
        .behavior(behavior.clone())
        .spawn()
        .await
        .unwrap();
    let second = MockProvider::builder()
        .behavior(behavior)
        .spawn()
        .await
        .unwrap();
    let first_pattern = pattern(&first).await;
    assert_eq!(first_pattern, pattern(&second).await);
    let failed = first_pattern.iter().filter(|failed| **failed).count();
    assert!((5..=35).contains(&failed), "{failed} of 40 failed");

    // After a reset the same pattern starts over.
    first.reset();
    assert_eq!(first_pattern, pattern(&first).await);
}

// ---------------------------------------------------------------------------------------------
// Control API, counters, recording, shutdown.

#[tokio::test]
async fn control_api_over_http() {
    let mock = spawn("alpha").await;
    let set = post(&mock, "/__mock/behavior", &[], &json!({"answer": "fixed"})).await;
    assert_eq!(set.status, StatusCode::OK);
    let body = post(&mock, "/v1/chat/completions", &[], &chat("x"))
        .await
        .json();
    assert_eq!(body["choices"][0]["message"]["content"], "fixed");

    let script = post(
        &mock,
        "/__mock/script",
        &[],
        &json!([{"error_status": 429, "retry_after_s": 1}, {"error_status": 500}]),
    )
    .await;
    assert_eq!(script.json(), json!({"queued": 2}));
    assert_eq!(
        post(&mock, "/v1/chat/completions", &[], &chat("x"))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        post(&mock, "/v1/chat/completions", &[], &chat("x"))
            .await
            .status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    // Control calls are not counted.
    assert_eq!(
        get(&mock, "/__mock/calls").await.json(),
        json!({"calls": 3})
    );
    let requests = get(&mock, "/__mock/requests").await.json();
    let requests = requests.as_array().unwrap();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0]["method"], "POST");
    assert_eq!(requests[0]["path"], "/v1/chat/completions");
    assert_eq!(requests[0]["body"], chat("x"));
    assert_eq!(requests[0]["headers"]["content-type"], "application/json");

    let bad = post(&mock, "/__mock/behavior", &[], &json!({"latency": 1})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    assert_eq!(
        post(&mock, "/__mock/reset", &[], &json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(mock.calls(), 0);
    assert!(mock.requests().is_empty());
    let body = post(&mock, "/v1/chat/completions", &[], &chat("x"))
        .await
        .json();
    assert_eq!(body["choices"][0]["message"]["content"], "alpha says: x");
    assert_eq!(body["id"], "chatcmpl-mock-1");
}

#[tokio::test]
async fn otlp_trace_exports_are_counted_apart() {
    let mock = spawn("collector").await;
    // Bytes of some ExportTraceServiceRequest: the mock does not parse them.
    let export = exchange(
        &mock,
        Method::POST,
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        "\n\u{0}",
    )
    .await;
    assert_eq!(export.status, StatusCode::OK);
    assert_eq!(export.content_type(), "application/x-protobuf");
    assert!(
        export.body.is_empty(),
        "an empty ExportTraceServiceResponse"
    );
    assert_eq!(mock.trace_exports(), 1);
    assert_eq!(mock.calls(), 0, "an export is not an API call");
    assert!(mock.requests().is_empty());
    assert_eq!(
        get(&mock, "/__mock/trace_exports").await.json(),
        json!({"trace_exports": 1})
    );
    post(&mock, "/__mock/reset", &[], &json!({})).await;
    assert_eq!(mock.trace_exports(), 0);
}

#[tokio::test]
async fn call_counter_and_recorded_requests() {
    let mock = spawn("alpha").await;
    let clone = mock.clone();
    assert_eq!(mock.calls(), 0);
    post(
        &mock,
        "/v1/chat/completions",
        &[("x-trace", "T")],
        &chat("x"),
    )
    .await;
    post(&mock, "/nowhere", &[], &json!({})).await;
    get(&mock, "/__mock/calls").await;
    assert_eq!(clone.calls(), 2);
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].headers["x-trace"], "T");
    assert_eq!(requests[0].body, chat("x"));
    assert_eq!(requests[1].path, "/nowhere");
}

#[tokio::test]
async fn shutdown_and_drop_close_the_listener() {
    let mock = spawn("alpha").await;
    let addr = mock.addr();
    assert_eq!(mock.base_url(), format!("http://{addr}"));
    mock.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());

    let dropped = spawn("beta").await;
    let addr = dropped.addr();
    drop(dropped);
    // The accept loop is cancelled the next time the runtime gets to it.
    let mut closed = false;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "the listener outlived the last handle");
}

#[tokio::test]
async fn invalid_behavior_is_refused_at_spawn() {
    let error = MockProvider::builder()
        .behavior(Behavior {
            error_rate: 1.5,
            ..Behavior::default()
        })
        .spawn()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

// ---------------------------------------------------------------------------------------------
// The binary.

#[tokio::test]
async fn binary_announces_serves_and_stops_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-mock"))
        .args(["--name", "bin", "--expect-api-key", "k", "--threads", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut lines = BufReader::new(stdout);
    tokio::time::timeout(Duration::from_secs(10), lines.read_line(&mut line))
        .await
        .expect("no listening line")
        .unwrap();
    let url = line
        .trim_end()
        .strip_prefix("switchyard-mock listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr: SocketAddr = url.parse().unwrap();

    let response = send(
        addr,
        Method::POST,
        "/v1/chat/completions",
        &[("authorization", "Bearer k")],
        &chat("hi").to_string(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "bin says: hi");

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the mock did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    lines.read_line(&mut rest).await.unwrap();
    assert_eq!(rest, "", "stdout must hold exactly one line");
}
