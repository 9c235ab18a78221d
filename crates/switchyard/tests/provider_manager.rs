//! Socket-level tests of routing, breakers, cooldowns, drain and health checks against
//! scripted mock providers. Breakers and cooldowns run on a hand-driven clock, so nothing
//! here waits for real time to pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestGateway, client, post_json, sse_data, stream_text};
use serde_json::{Value, json};
use switchyard_core::clock::ManualClock;
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

async fn mock(name: &str) -> MockHandle {
    MockProvider::builder().name(name).spawn().await.unwrap()
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Providers `first`, `second`, `third` over the mocks, and one route over them.
fn config(mocks: &[&MockHandle], route_extra: &str, extra: &str) -> String {
    let mut text = String::from(
        "[routing]\nmax_attempts = 3\nretry_budget = 1.0\n[routing.breaker]\nconsecutive_failures = 2\ncooldown = \"10s\"\n",
    );
    text.push_str(extra);
    let names = ["first", "second", "third"];
    for (name, mock) in names.iter().zip(mocks) {
        text.push_str(&format!(
            "\n[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\n",
            mock.base_url()
        ));
    }
    let targets: Vec<String> = names
        .iter()
        .take(mocks.len())
        .map(|name| format!("{{ provider = \"{name}\", model = \"m\" }}"))
        .collect();
    text.push_str(&format!(
        "\n[[routes]]\nmodel = \"r\"\n{route_extra}\ntargets = [ {} ]\n",
        targets.join(", ")
    ));
    text
}

async fn admin_providers(gateway: &TestGateway, key: Option<&str>) -> (u16, Value) {
    let mut request = client().get(gateway.url("/admin/providers"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap(),
    )
}

fn target<'a>(providers: &'a Value, provider: &str) -> &'a Value {
    let provider = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == provider)
        .unwrap();
    &provider["targets"][0]
}

#[tokio::test]
async fn an_open_breaker_sends_no_traffic_until_its_probe() {
    let (first, second) = (mock("first").await, mock("second").await);
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let gateway =
        TestGateway::start_with_clock(&config(&[&first, &second], "", ""), &[], clock.clone())
            .await;
    let url = gateway.url("/v1/chat/completions");

    first.set_behavior(Behavior::status(500));
    for _ in 0..2 {
        let (status, headers, _) = post_json(&url, &chat("r"), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-switchyard-attempts"], "2");
    }
    assert_eq!(first.calls(), 2);
    let (_, providers) = admin_providers(&gateway, None).await;
    assert_eq!(
        target(&providers, "first")["breaker"],
        "open",
        "{providers}"
    );
    assert_eq!(
        target(&providers, "first")["errors"]["bad_gateway"],
        2,
        "{providers}"
    );

    // Open: the failing provider costs nothing; every request is one attempt at `second`.
    for _ in 0..5 {
        let (status, headers, _) = post_json(&url, &chat("r"), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-switchyard-provider"], "second");
        assert_eq!(headers["x-switchyard-attempts"], "1");
    }
    assert_eq!(first.calls(), 2, "no traffic while the breaker is open");

    // After the cooldown, one probe; it fails, so the breaker re-opens with a longer cooldown.
    clock.advance(Duration::from_secs(10));
    let (status, _, _) = post_json(&url, &chat("r"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(first.calls(), 3, "exactly one probe");
    let (_, _, _) = post_json(&url, &chat("r"), &[]).await;
    assert_eq!(first.calls(), 3);
    clock.advance(Duration::from_secs(10));
    let (_, _, _) = post_json(&url, &chat("r"), &[]).await;
    assert_eq!(first.calls(), 3, "the cooldown doubled to 20 s");

    // The provider recovers; the next probe closes the breaker and traffic returns.
    first.set_behavior(Behavior::default());
    clock.advance(Duration::from_secs(10));
    let (_, headers, _) = post_json(&url, &chat("r"), &[]).await;
    assert_eq!(headers["x-switchyard-provider"], "first");
    let (_, headers, _) = post_json(&url, &chat("r"), &[]).await;
    assert_eq!(headers["x-switchyard-provider"], "first");
    let (_, providers) = admin_providers(&gateway, None).await;
    assert_eq!(target(&providers, "first")["breaker"], "closed");
    assert!(
        target(&providers, "first")["breaker_transitions"]
            .as_u64()
            .unwrap()
            >= 4
    );
}

#[tokio::test]
async fn every_target_unavailable_is_a_fast_503() {
    let first = mock("first").await;
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let gateway = TestGateway::start_with_clock(&config(&[&first], "", ""), &[], clock).await;
    first.set_behavior(Behavior::status(502));
    // A single target is retried after a backoff; its second failure opens the breaker, so
    // the third attempt is not made.
    let (status, headers, _) =
        post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(status, 502);
    assert_eq!(headers["x-switchyard-attempts"], "2");
    assert_eq!(first.calls(), 2);
    let before = first.calls();
    let (status, _, body) = post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_available_provider");
    assert_eq!(first.calls(), before);
}

#[tokio::test]
async fn drain_and_enable_through_the_admin_api() {
    let (first, second) = (mock("first").await, mock("second").await);
    let gateway = TestGateway::start(
        &config(
            &[&first, &second],
            "",
            "[server]\nmaster_key_env = \"MASTER\"\n",
        ),
        &[("MASTER", "sk-admin")],
    )
    .await;
    let auth = [("authorization", "Bearer sk-admin")];
    let url = gateway.url("/v1/chat/completions");

    let (status, _) = admin_providers(&gateway, None).await;
    assert_eq!(status, 401, "admin needs the master key");
    let response = client()
        .post(gateway.url("/admin/providers/first/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = client()
        .post(gateway.url("/admin/providers/first/drain"))
        .bearer_auth("sk-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, headers, _) = post_json(&url, &chat("r"), &auth).await;
    assert_eq!(headers["x-switchyard-provider"], "second");
    assert_eq!(first.calls(), 0);
    let (_, providers) = admin_providers(&gateway, Some("sk-admin")).await;
    let drained: Vec<bool> = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["drained"].as_bool().unwrap())
        .collect();
    assert_eq!(drained, [true, false]);

    let response = client()
        .post(gateway.url("/admin/providers/first/enable"))
        .bearer_auth("sk-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, headers, _) = post_json(&url, &chat("r"), &auth).await;
    assert_eq!(headers["x-switchyard-provider"], "first");

    let response = client()
        .post(gateway.url("/admin/providers/nope/drain"))
        .bearer_auth("sk-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn strategies_spread_and_order_traffic() {
    let (first, second, third) = (
        mock("first").await,
        mock("second").await,
        mock("third").await,
    );
    // least-busy with nothing in flight keeps priority order; weighted spreads by weight.
    let weighted = config(&[&first, &second, &third], "strategy = \"weighted\"", "")
        .replace(
            "{ provider = \"first\", model = \"m\" }",
            "{ provider = \"first\", model = \"m\", weight = 3 }",
        )
        .replace(
            "{ provider = \"third\", model = \"m\" }",
            "{ provider = \"third\", model = \"m\", weight = 0 }",
        );
    let gateway = TestGateway::start(&weighted, &[]).await;
    for _ in 0..80 {
        let (status, _, _) = post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(third.calls(), 0, "weight 0 gets no traffic");
    assert_eq!(first.calls() + second.calls(), 80);
    assert!(
        first.calls() > second.calls(),
        "3:1 weights: {} vs {}",
        first.calls(),
        second.calls()
    );

    // least-cost picks the cheapest target.
    let cheap = config(&[&first, &second], "strategy = \"least-cost\"", "")
        .replace(
            "{ provider = \"first\", model = \"m\" }",
            "{ provider = \"first\", model = \"m\", input_price = 5.0, output_price = 15.0 }",
        )
        .replace(
            "{ provider = \"second\", model = \"m\" }",
            "{ provider = \"second\", model = \"m\", input_price = 0.5, output_price = 1.5 }",
        );
    let gateway = TestGateway::start(&cheap, &[]).await;
    let (_, headers, _) = post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(headers["x-switchyard-provider"], "second");
}

#[tokio::test]
async fn fallback_routes_take_over_when_a_route_fails() {
    let (first, second) = (mock("first").await, mock("second").await);
    let text = format!(
        "{}\n[[routes]]\nmodel = \"backup\"\ntargets = [ {{ provider = \"second\", model = \"b\" }} ]\n",
        config(&[&first, &second], "fallbacks = [\"backup\"]", "")
    )
    // The main route only has `first`.
    .replace(", { provider = \"second\", model = \"m\" }", "");
    let gateway = TestGateway::start(&text, &[]).await;
    first.set_behavior(Behavior::status(503));
    let (status, headers, body) =
        post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-route"], "backup");
    assert_eq!(headers["x-switchyard-model"], "b");
}

#[tokio::test]
async fn active_health_checks_take_a_dead_provider_out_and_back() {
    let (first, second) = (mock("first").await, mock("second").await);
    let text = config(&[&first, &second], "", "").replace(
        &format!("base_url = \"{}/v1\"\n", first.base_url()),
        &format!(
            "base_url = \"{}/v1\"\nhealth_check = {{ interval = \"1h\" }}\n",
            first.base_url()
        ),
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let state = gateway.state.clone();
    let provider = state.config.providers[0].clone();
    let check = provider.health_check.clone().unwrap();

    first.set_behavior(Behavior::status(503));
    let error = switchyard::health_check::probe(&state, &provider, &check)
        .await
        .unwrap_err();
    state
        .tracker
        .provider("first")
        .unwrap()
        .record_check(Some(error));
    assert_eq!(
        first.requests().last().unwrap().path,
        "/v1/models",
        "the probe lists models"
    );
    let (_, headers, _) = post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(headers["x-switchyard-provider"], "second");
    let chats = first
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count();
    assert_eq!(chats, 0, "an unhealthy provider gets no user traffic");
    let (_, providers) = admin_providers(&gateway, None).await;
    let health = &providers["providers"][0]["health_check"];
    assert_eq!(health["healthy"], false, "{providers}");

    first.set_behavior(Behavior::default());
    switchyard::health_check::probe(&state, &provider, &check)
        .await
        .unwrap();
    state.tracker.provider("first").unwrap().record_check(None);
    let (_, headers, _) = post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(headers["x-switchyard-provider"], "first");
}

#[tokio::test]
async fn a_stream_answered_with_json_fails_over() {
    let second = mock("second").await;
    // A compatible server that answers a stream request with a 200 JSON error.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = fake.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                let _ = socket.read(&mut buffer).await;
                let body = r#"{"error":{"message":"quota exceeded"}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    let text = format!(
        "[[providers]]\nname = \"fake\"\nkind = \"openai\"\nbase_url = \"http://{fake_addr}/v1\"\n\
         [[providers]]\nname = \"second\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\n\
         [[routes]]\nmodel = \"r\"\ntargets = [ {{ provider = \"fake\", model = \"m\" }}, {{ provider = \"second\", model = \"m\" }} ]\n",
        second.base_url()
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .body(
            json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-switchyard-provider"], "second");
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(stream_text(&data), "second says: hi");
}

#[tokio::test]
async fn keep_alive_comments_keep_a_slow_stream_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A provider that thinks for a while, sending SSE comments, before answering.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = fake.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len());
                for _ in 0..4 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = socket.write_all(chunk(": thinking\n\n").as_bytes()).await;
                }
                let event = r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"done thinking"},"finish_reason":"stop"}]}"#;
                let _ = socket
                    .write_all(chunk(&format!("{event}\n\n")).as_bytes())
                    .await;
                let _ = socket.write_all(chunk("data: [DONE]\n\n").as_bytes()).await;
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let text = format!(
        "[upstream]\nidle_timeout = \"250ms\"\n[[providers]]\nname = \"thinker\"\nkind = \"openai\"\nbase_url = \"http://{fake_addr}/v1\"\nmodels = [\"m\"]\n"
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .body(
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(stream_text(&data), "done thinking", "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn enable_closes_breakers_and_ends_cooldowns() {
    let (first, second) = (mock("first").await, mock("second").await);
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let gateway =
        TestGateway::start_with_clock(&config(&[&first, &second], "", ""), &[], clock).await;
    let url = gateway.url("/v1/chat/completions");
    first.set_behavior(Behavior::status(500));
    for _ in 0..2 {
        post_json(&url, &chat("r"), &[]).await;
    }
    first.set_behavior(Behavior::rate_limited(600));
    let (_, providers) = admin_providers(&gateway, None).await;
    assert_eq!(target(&providers, "first")["breaker"], "open");
    let response = client()
        .post(gateway.url("/admin/providers/first/enable"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, providers) = admin_providers(&gateway, None).await;
    assert_eq!(target(&providers, "first")["breaker"], "closed");
    // A 429 with a 10-minute Retry-After cools `first` down; enable ends that too.
    post_json(&url, &chat("r"), &[]).await;
    let (_, headers, _) = post_json(&url, &chat("r"), &[]).await;
    assert_eq!(headers["x-switchyard-provider"], "second");
    first.set_behavior(Behavior::default());
    client()
        .post(gateway.url("/admin/providers/first/enable"))
        .send()
        .await
        .unwrap();
    let (_, headers, _) = post_json(&url, &chat("r"), &[]).await;
    assert_eq!(headers["x-switchyard-provider"], "first");
}

#[tokio::test]
async fn the_request_deadline_charges_no_target() {
    let (first, second, third) = (
        mock("first").await,
        mock("second").await,
        mock("third").await,
    );
    let text = config(
        &[&first, &second, &third],
        "",
        "[server]\nrequest_timeout = \"300ms\"\n",
    );
    let gateway = TestGateway::start(&text, &[]).await;
    first.set_behavior(Behavior::hang());
    let (status, _, _) = post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(status, 504);
    let (_, providers) = admin_providers(&gateway, None).await;
    for name in ["first", "second", "third"] {
        assert_eq!(
            target(&providers, name)["breaker"],
            "closed",
            "{name}: {providers}"
        );
    }
    assert_eq!(
        second.calls() + third.calls(),
        0,
        "nothing is tried after the deadline"
    );
    assert_eq!(target(&providers, "second")["requests"], 0);
}

#[tokio::test]
async fn a_fast_503_says_when_to_come_back() {
    let first = mock("first").await;
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let gateway = TestGateway::start_with_clock(&config(&[&first], "", ""), &[], clock).await;
    first.set_behavior(Behavior::rate_limited(42));
    let (status, headers, _) =
        post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "42");
    assert_eq!(
        first.calls(),
        1,
        "no pointless retry of a target that asked for a pause"
    );
    let (status, headers, body) =
        post_json(&gateway.url("/v1/chat/completions"), &chat("r"), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "42");
}
