//! Socket-level tests of the gateway against the in-repo mock provider: every request goes
//! over real loopback sockets, through the same router, chain and transport as production.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PROVIDER_KEYS, TestGateway, client, post_json, sse_data, stream_text, three_formats};
use serde_json::{Value, json};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

async fn mock(name: &str) -> MockHandle {
    MockProvider::builder()
        .name(name)
        .expect_api_key("provider-key")
        .spawn()
        .await
        .unwrap()
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn gateway_over(mock: &MockHandle, extra: &str, env: &[(&str, &str)]) -> TestGateway {
    let mut all: Vec<(&str, &str)> = PROVIDER_KEYS.to_vec();
    all.extend_from_slice(env);
    TestGateway::start(&three_formats(&mock.base_url(), extra), &all).await
}

#[tokio::test]
async fn chat_through_a_route_with_headers() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(
        &mock,
        r#"
[[routes]]
model = "smart"
targets = [ { provider = "openai", model = "mock-large" } ]
"#,
        &[],
    )
    .await;
    let (status, headers, body) = post_json(
        &gateway.url("/v1/chat/completions"),
        &chat("smart", "hello there"),
        &[("x-request-id", "client-chosen-id")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "alpha says: hello there"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 2);
    assert_eq!(headers["x-switchyard-provider"], "openai");
    assert_eq!(headers["x-switchyard-model"], "mock-large");
    assert_eq!(headers["x-switchyard-attempts"], "1");
    assert_eq!(headers["x-request-id"], "client-chosen-id");
    let timing = headers["server-timing"].to_str().unwrap();
    for stage in ["auth;dur=", "upstream;dur=", "total;dur="] {
        assert!(timing.contains(stage), "{timing}");
    }
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(recorded[0].body["model"], "mock-large");
    assert_eq!(recorded[0].headers["authorization"], "Bearer provider-key");
    gateway.stop().await;
}

#[tokio::test]
async fn every_response_carries_server_timing() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(
        &mock,
        "[server]\nmaster_key_env = \"MASTER\"\n",
        &[("MASTER", "sk-master")],
    )
    .await;
    let timing = |response: &reqwest::Response| {
        response
            .headers()
            .get("server-timing")
            .unwrap_or_else(|| panic!("no Server-Timing on {}", response.url()))
            .to_str()
            .unwrap()
            .to_owned()
    };
    // Refused by auth: the auth stage is timed.
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let refused = timing(&response);
    assert!(refused.starts_with("auth;dur="), "{refused}");
    assert!(refused.contains("total;dur="), "{refused}");
    // Responses no stage stamps carry their total.
    for (path, status) in [
        ("/healthz", 200),
        ("/metrics", 200),
        ("/admin/providers", 200),
        ("/v1/models", 200),
        ("/v1/nowhere", 404),
    ] {
        let response = client()
            .get(gateway.url(path))
            .bearer_auth("sk-master")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert!(timing(&response).contains("total;dur="), "{path}");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn generated_request_ids_are_unique() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(&mock, "", &[]).await;
    let (_, first, _) = post_json(
        &gateway.url("/v1/chat/completions"),
        &chat("mock-small", "a"),
        &[],
    )
    .await;
    let (_, second, _) = post_json(
        &gateway.url("/v1/chat/completions"),
        &chat("mock-small", "a"),
        &[],
    )
    .await;
    assert_ne!(first["x-request-id"], second["x-request-id"]);
    assert!(first["x-request-id"].to_str().unwrap().starts_with("req_"));
}

async fn stream_body(
    gateway: &TestGateway,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Vec<String>) {
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (status, headers, sse_data(&text))
}

#[tokio::test]
async fn streams_in_every_wire_format() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(&mock, "", &[]).await;
    for (model, path) in [
        ("mock-small", "/v1/chat/completions"),
        ("anthropic/claude-test", "/v1/messages"),
        (
            "gemini/gemini-test",
            "/v1beta/models/gemini-test:streamGenerateContent",
        ),
    ] {
        mock.reset();
        let mut body = chat(model, "stream please");
        body["stream"] = json!(true);
        let (status, headers, data) = stream_body(&gateway, &body).await;
        assert_eq!(status, 200, "{model}");
        assert_eq!(headers["content-type"], "text/event-stream", "{model}");
        assert_eq!(stream_text(&data), "alpha says: stream please", "{model}");
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{model}");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk"),
            "{model}"
        );
        assert!(
            chunks
                .iter()
                .all(|c| c.get("usage").is_none_or(Value::is_null)),
            "{model}: usage chunk not asked for"
        );
        assert!(
            chunks
                .iter()
                .any(|c| c["choices"][0]["finish_reason"] == "stop"),
            "{model}"
        );
        let recorded = &mock.requests()[0];
        assert_eq!(recorded.path, path, "{model}");
        if model == "mock-small" {
            // The gateway always asks for usage, whatever the client asked.
            assert_eq!(recorded.body["stream_options"]["include_usage"], true);
        }

        body["stream_options"] = json!({"include_usage": true});
        let (_, _, data) = stream_body(&gateway, &body).await;
        let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(last["choices"], json!([]), "{model}");
        assert!(
            last["usage"]["completion_tokens"].as_u64().unwrap() > 0,
            "{model}"
        );
    }
}

#[tokio::test]
async fn anthropic_and_gemini_translation() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(&mock, "", &[]).await;

    let (status, _, body) = post_json(
        &gateway.url("/v1/chat/completions"),
        &json!({"model": "anthropic/claude-test", "messages": [
            {"role": "system", "content": "Be brief. CACHED"},
            {"role": "user", "content": "hi anthropic"}
        ]}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "alpha says: hi anthropic"
    );
    // Cache reads count as prompt tokens and are reported as cached tokens.
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    let recorded = &mock.requests()[0];
    assert_eq!(recorded.path, "/v1/messages");
    assert_eq!(recorded.headers["x-api-key"], "provider-key");
    assert!(recorded.headers.contains_key("anthropic-version"));
    assert_eq!(recorded.body["system"], "Be brief. CACHED");
    assert!(recorded.body["max_tokens"].as_u64().unwrap() > 0);

    mock.reset();
    let (status, _, body) = post_json(
        &gateway.url("/v1/chat/completions"),
        &json!({"model": "gemini/gemini-test", "messages": [{"role": "user", "content": "hi gemini"}],
                "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"input": "hi gemini"}));
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let recorded = &mock.requests()[0];
    assert_eq!(recorded.path, "/v1beta/models/gemini-test:generateContent");
    assert_eq!(recorded.headers["x-goog-api-key"], "provider-key");
    assert!(recorded.query.is_none(), "the key never goes in the URL");
}

#[tokio::test]
async fn auth_guards_every_v1_endpoint() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(
        &mock,
        "[server]\nmaster_key_env = \"MASTER\"\n",
        &[("MASTER", "sk-master")],
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let body = chat("mock-small", "x");
    let (status, _, error) = post_json(&url, &body, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(error["error"]["type"], "authentication_error");
    let (status, _, error) = post_json(&url, &body, &[("authorization", "Bearer wrong")]).await;
    assert_eq!(status, 401);
    assert_eq!(error["error"]["code"], "invalid_api_key");
    let models = client()
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
    assert_eq!(mock.calls(), 0, "a 401 never reaches the provider");

    let (status, _, _) = post_json(&url, &body, &[("authorization", "Bearer sk-master")]).await;
    assert_eq!(status, 200);
    let (status, _, _) = post_json(&url, &body, &[("x-api-key", "sk-master")]).await;
    assert_eq!(status, 200);
    // The client's key is never forwarded: the provider sees its own key.
    for recorded in mock.requests() {
        assert_eq!(recorded.headers["authorization"], "Bearer provider-key");
        assert!(!recorded.headers.values().any(|v| v.contains("sk-master")));
    }
    let health = client().get(gateway.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "health needs no key");
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_4xx_and_never_reaches_upstream() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(&mock, "[server]\nmax_body_bytes = 4096\n", &[]).await;
    let url = gateway.url("/v1/chat/completions");
    let oversized = format!(
        r#"{{"model":"mock-small","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("invalid JSON", b"{\"model\": ".to_vec(), 400),
        ("JSON array", b"[1, 2]".to_vec(), 400),
        ("missing model", br#"{"messages":[{"role":"user","content":"x"}]}"#.to_vec(), 400),
        ("missing messages", br#"{"model":"mock-small"}"#.to_vec(), 400),
        ("wrong type", br#"{"model":"mock-small","messages":"hi"}"#.to_vec(), 400),
        ("wrong role", br#"{"model":"mock-small","messages":[{"role":"robot","content":"x"}]}"#.to_vec(), 400),
        ("invalid UTF-8", b"{\"model\":\"mock-small\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(), 400),
        ("empty body", Vec::new(), 400),
        ("oversized body", oversized.into_bytes(), 413),
        ("unknown model", br#"{"model":"no-such-model","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 404),
    ];
    for (name, body, expected) in cases {
        let response = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "{name}");
        assert!(response.headers().contains_key("x-request-id"), "{name}");
        let error: Value = response.json_value().await;
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}: {error}"
        );
        assert!(error["error"]["type"].is_string(), "{name}: {error}");
        assert!(
            error["error"].get("param").is_some() && error["error"].get("code").is_some(),
            "{name}: {error}"
        );
    }
    let response = client()
        .get(gateway.url("/v1/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json_value().await["error"]["code"], "unknown_url");
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.json_value().await["error"]["type"],
        "invalid_request_error"
    );
    let response = client()
        .post(gateway.url("/v1/embeddings"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(mock.calls(), 0, "no bad request reached the provider");
}

/// `reqwest` without its `json` feature: parse the body ourselves.
trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        let bytes = self.bytes().await.unwrap();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    }
}

fn two_target_route(first: &MockHandle, second: &MockHandle) -> String {
    format!(
        r#"
[[providers]]
name = "first"
kind = "openai"
base_url = "{}/v1"
api_key_env = "OPENAI_KEY"
[[providers]]
name = "second"
kind = "openai"
base_url = "{}/v1"
api_key_env = "OPENAI_KEY"
[[routes]]
model = "pair"
targets = [ {{ provider = "first", model = "m1" }}, {{ provider = "second", model = "m2" }} ]
"#,
        first.base_url(),
        second.base_url()
    )
}

#[tokio::test]
async fn failover_on_retryable_errors_only() {
    let first = mock("first").await;
    let second = mock("second").await;
    let gateway = TestGateway::start(&two_target_route(&first, &second), PROVIDER_KEYS).await;
    let url = gateway.url("/v1/chat/completions");

    for behavior in [
        Behavior::status(500),
        Behavior::status(503),
        Behavior::connection_reset(),
        Behavior::rate_limited(3),
    ] {
        first.push_script(behavior.clone());
        let (status, headers, body) = post_json(&url, &chat("pair", "x"), &[]).await;
        assert_eq!(status, 200, "{behavior:?}: {body}");
        assert_eq!(headers["x-switchyard-provider"], "second", "{behavior:?}");
        assert_eq!(headers["x-switchyard-attempts"], "2", "{behavior:?}");
        assert_eq!(body["choices"][0]["message"]["content"], "second says: x");
    }
    // The 429's Retry-After put `first` in cooldown: the next request skips it at no cost.
    let before = first.calls();
    let (status, headers, _) = post_json(&url, &chat("pair", "x"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-attempts"], "1");
    assert_eq!(
        first.calls(),
        before,
        "a cooling-down target gets no traffic"
    );

    // A 400 describes the request: returned as is, never retried elsewhere.
    let gateway = TestGateway::start(&two_target_route(&first, &second), PROVIDER_KEYS).await;
    let url = gateway.url("/v1/chat/completions");
    let before = second.calls();
    first.push_script(Behavior::status(400));
    let (status, headers, body) = post_json(&url, &chat("pair", "x"), &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(headers["x-switchyard-attempts"], "1");
    assert_eq!(second.calls(), before);

    // When every target is rate limited, the client gets the 429 and its Retry-After.
    first.push_script(Behavior::rate_limited(3));
    second.push_script(Behavior::rate_limited(7));
    let (status, headers, body) = post_json(&url, &chat("pair", "x"), &[]).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(headers["retry-after"], "7");

    // The provider rejecting the gateway's own key is not the client's auth failure.
    let gateway_bad_key = TestGateway::start(
        &two_target_route(&first, &second),
        &[("OPENAI_KEY", "wrong-provider-key")],
    )
    .await;
    let (status, _, body) = post_json(
        &gateway_bad_key.url("/v1/chat/completions"),
        &chat("pair", "x"),
        &[],
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_authentication_failed");
}

#[tokio::test]
async fn streams_fail_over_before_the_first_byte_and_end_with_an_error_after_it() {
    let first = mock("first").await;
    let second = mock("second").await;
    let gateway = TestGateway::start(&two_target_route(&first, &second), PROVIDER_KEYS).await;
    let mut body = chat("pair", "one two three four");
    body["stream"] = json!(true);

    first.push_script(Behavior::reset_after_chunks(0));
    let (status, headers, data) = stream_body(&gateway, &body).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-provider"], "second");
    assert_eq!(stream_text(&data), "second says: one two three four");

    first.push_script(Behavior::reset_after_chunks(3));
    let (status, headers, data) = stream_body(&gateway, &body).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-provider"], "first");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{data:?}");
    assert!(
        !data.iter().any(|d| d == "[DONE]"),
        "a broken stream never claims success"
    );
}

#[tokio::test]
async fn first_byte_timeout_fails_over_from_a_hung_provider() {
    let first = mock("first").await;
    let second = mock("second").await;
    let config = format!(
        "[upstream]\nfirst_byte_timeout = \"300ms\"\n{}",
        two_target_route(&first, &second)
    );
    let gateway = TestGateway::start(&config, PROVIDER_KEYS).await;
    first.push_script(Behavior::hang());
    let (status, headers, _) = post_json(
        &gateway.url("/v1/chat/completions"),
        &chat("pair", "x"),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-provider"], "second");

    first.push_script(Behavior::hang());
    second.push_script(Behavior::hang());
    let (status, _, body) = post_json(
        &gateway.url("/v1/chat/completions"),
        &chat("pair", "x"),
        &[],
    )
    .await;
    assert_eq!(status, 504, "{body}");
}

#[tokio::test]
async fn embeddings_passthrough_and_translation() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(&mock, "", &[]).await;
    let url = gateway.url("/v1/embeddings");
    let (status, headers, body) = post_json(
        &url,
        &json!({"model": "mock-embed", "input": ["a", "b"], "dimensions": 4}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-provider"], "openai");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 4);

    let (status, _, body) = post_json(
        &url,
        &json!({"model": "gemini/text-embedding-004", "input": "hello"}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert!(
        body["data"][0]["embedding"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    );

    let before = mock.calls();
    let (status, _, body) = post_json(
        &url,
        &json!({"model": "anthropic/claude-x", "input": "hello"}),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(mock.calls(), before);
}

#[tokio::test]
async fn models_and_health() {
    let mock = mock("alpha").await;
    let gateway = gateway_over(
        &mock,
        "[[routes]]\nmodel = \"smart\"\ntargets = [ { provider = \"openai\", model = \"mock-large\" } ]\n",
        &[],
    )
    .await;
    let models = client()
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json_value()
        .await;
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "smart")
    );
    let one = client()
        .get(gateway.url("/v1/models/anthropic/claude-x"))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(one.json_value().await["owned_by"], "anthropic");
    let missing = client()
        .get(gateway.url("/v1/models/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let ready = client().get(gateway.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_refused_connection_fails_over() {
    let second = mock("second").await;
    // Bind then drop a listener: nothing listens on that port any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        r#"
[[providers]]
name = "gone"
kind = "openai"
base_url = "http://{closed}/v1"
api_key_env = "OPENAI_KEY"
[[providers]]
name = "second"
kind = "openai"
base_url = "{}/v1"
api_key_env = "OPENAI_KEY"
[[routes]]
model = "pair"
targets = [ {{ provider = "gone", model = "m1" }}, {{ provider = "second", model = "m2" }} ]
"#,
        second.base_url()
    );
    let gateway = TestGateway::start(&config, PROVIDER_KEYS).await;
    let (status, headers, body) = post_json(
        &gateway.url("/v1/chat/completions"),
        &chat("pair", "x"),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-provider"], "second");
    assert_eq!(headers["x-switchyard-attempts"], "2");

    // With no target left, the client learns which provider could not be reached.
    let (status, _, body) = post_json(
        &gateway.url("/v1/chat/completions"),
        &chat("gone/m1", "x"),
        &[],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not connect to provider gone")
    );
}

#[tokio::test]
async fn slow_request_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = mock("alpha").await;
    let gateway = gateway_over(&mock, "[server]\nheader_read_timeout = \"200ms\"\n", &[]).await;
    let address = gateway.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the gateway must close the connection by itself.
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buffer),
    )
    .await;
    assert!(
        read.is_ok(),
        "the connection must be closed by the header read timeout"
    );
    assert_eq!(mock.calls(), 0);
}
