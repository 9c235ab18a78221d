//! The response cache over real sockets: hits and misses with `x-switchyard-cache` and
//! `age`, answers stored from a stream and served as JSON and the reverse, the per-request
//! headers, single-flight (N identical requests, one upstream call), what is never stored
//! (errors, truncated streams, sampled requests), the admin API and metrics, request
//! events, rate limits on hits, and the shared tier: two gateways on the real Redis at
//! 127.0.0.1:6379, where one's miss is the other's hit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{
    TestGateway, client, get_json, get_text, header, logged_requests, post_json, sse_data,
    stream_text,
};
use serde_json::{Value, json};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

const REDIS: &str = "redis://127.0.0.1:6379/0";

fn provider(mock: &MockHandle) -> String {
    format!(
        "\n[[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
        mock.base_url()
    )
}

async fn mock(behavior: Behavior) -> MockHandle {
    MockProvider::builder()
        .name("alpha")
        .behavior(behavior)
        .spawn()
        .await
        .unwrap()
}

async fn setup(extra: &str) -> (MockHandle, TestGateway) {
    let mock = mock(Behavior::default()).await;
    let text = format!("[cache]\nenabled = true\n{extra}\n{}", provider(&mock));
    (mock, TestGateway::start(&text, &[]).await)
}

/// A chat request unique to this test run (Redis outlives runs).
fn chat(prompt: &str) -> Value {
    json!({"model": "mock-a", "messages": [{"role": "user", "content": prompt}]})
}

fn with(mut body: Value, extra: Value) -> Value {
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

async fn chat_call(
    gateway: &TestGateway,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let (status, response_headers, body) =
        post_json(&gateway.url("/v1/chat/completions"), body, headers).await;
    let cache = response_headers
        .get("x-switchyard-cache")
        .map_or("-", |v| v.to_str().unwrap())
        .to_owned();
    (status, cache, body)
}

/// Streams a chat request; returns the cache header and the `data:` payloads.
async fn stream_call(gateway: &TestGateway, body: &Value) -> (String, Vec<String>) {
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(with(body.clone(), json!({"stream": true})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(response.headers(), "content-type").starts_with("text/event-stream"));
    let cache = header(response.headers(), "x-switchyard-cache").to_owned();
    let text = response.text().await.unwrap();
    (cache, sse_data(&text))
}

async fn admin(gateway: &TestGateway) -> Value {
    get_json(&gateway.url("/admin/cache"), None).await
}

/// Waits until `gateway`'s cache has sent its pending writes to Redis.
async fn written_to_redis(gateway: &TestGateway) {
    let cache = gateway.state.cache.clone().unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while cache.pending_writes() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the Redis writes finished");
}

fn nonce() -> String {
    format!("{:016x}", fastrand::u64(..))
}

#[tokio::test]
async fn a_repeated_request_is_a_hit_with_the_same_answer() {
    let (mock, gateway) = setup("").await;
    let url = gateway.url("/v1/chat/completions");
    let body = chat("what is a switchyard?");
    let (status, headers, first) = post_json(&url, &body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-switchyard-cache"), "MISS");
    assert!(header(&headers, "server-timing").contains("cache;dur="));
    assert!(headers.get("age").is_none());

    // The same request with its keys in another order, other whitespace, and fields that do
    // not change the answer.
    let reordered = r#"{ "user": "someone-else", "messages": [ {"content": "what is a switchyard?", "role": "user"} ],
        "model": "mock-a" }"#;
    let response = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(reordered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(response.headers(), "x-switchyard-cache"), "HIT");
    assert_eq!(header(response.headers(), "age"), "0");
    assert_eq!(header(response.headers(), "x-switchyard-provider"), "alpha");
    assert_eq!(header(response.headers(), "x-switchyard-attempts"), "0");
    let second: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(second, first);
    assert_eq!(mock.calls(), 1, "the hit did not go upstream");

    // A different request misses.
    let (_, cache, _) = chat_call(&gateway, &chat("something else"), &[]).await;
    assert_eq!(cache, "MISS");
    assert_eq!(mock.calls(), 2);

    let stats = admin(&gateway).await;
    assert_eq!(stats["enabled"], true);
    assert_eq!(stats["cache"]["hits"], 1);
    assert_eq!(stats["cache"]["misses"], 2);
    assert_eq!(stats["cache"]["entries"], 2);
    assert!(stats["cache"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["cache"]["capacity_bytes"], 50 * 1024 * 1024);
    let rate = stats["cache"]["hit_rate"].as_f64().unwrap();
    assert!((rate - 1.0 / 3.0).abs() < 1e-9, "{rate}");

    let metrics = get_text(&gateway.url("/metrics")).await;
    assert!(
        metrics.contains("switchyard_cache_requests_total{result=\"hit\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchyard_cache_requests_total{result=\"miss\"} 2"));
    assert!(metrics.contains("switchyard_cache_entries 2"));
}

#[tokio::test]
async fn a_streamed_answer_is_served_as_json_and_as_the_same_stream() {
    let (mock, gateway) = setup("").await;
    let body = chat("tell me about rail yards");
    let (cache, original) = stream_call(&gateway, &body).await;
    assert_eq!(cache, "MISS");
    let text = stream_text(&original);
    assert!(!text.is_empty());

    let (status, cache, json_answer) = chat_call(&gateway, &body, &[]).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(json_answer["object"], "chat.completion");
    assert_eq!(
        json_answer["choices"][0]["message"]["content"],
        text.as_str()
    );
    assert_eq!(json_answer["choices"][0]["finish_reason"], "stop");
    assert!(json_answer["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let (cache, replayed) = stream_call(&gateway, &body).await;
    assert_eq!(cache, "HIT");
    assert_eq!(replayed.last().map(String::as_str), Some("[DONE]"));
    let pieces = |data: &[String]| -> Vec<String> {
        data.iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .filter(|c| !c.is_empty())
            .collect()
    };
    assert_eq!(
        pieces(&replayed),
        pieces(&original),
        "the same content chunks"
    );
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn a_json_answer_is_served_as_a_stream_with_usage_when_asked() {
    let (mock, gateway) = setup("").await;
    let body = chat("json first");
    let (_, cache, answer) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(cache, "MISS");
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            with(
                body,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            )
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(header(response.headers(), "x-switchyard-cache"), "HIT");
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(
        stream_text(&data),
        answer["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"], answer["usage"]);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn request_headers_bypass_refresh_or_skip_storing() {
    let (mock, gateway) = setup("").await;
    let body = chat("headers");
    let (_, cache, _) = chat_call(&gateway, &body, &[("x-switchyard-cache", "no-store")]).await;
    assert_eq!(cache, "MISS");
    let (_, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(cache, "MISS", "no-store stored nothing");
    let (_, cache, _) = chat_call(&gateway, &body, &[("x-switchyard-cache", "no-cache")]).await;
    assert_eq!(cache, "BYPASS");
    let (_, cache, _) = chat_call(&gateway, &body, &[("x-switchyard-cache", "refresh")]).await;
    assert_eq!(cache, "REFRESH");
    let (_, cache, _) = chat_call(&gateway, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache, "REFRESH");
    let (_, cache, _) = chat_call(&gateway, &body, &[("cache-control", "max-age=60")]).await;
    assert_eq!(cache, "HIT");
    assert_eq!(mock.calls(), 5);

    let (status, _, error) =
        chat_call(&gateway, &body, &[("x-switchyard-cache", "sometimes")]).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["param"], "x-switchyard-cache");
    let (status, _, error) =
        chat_call(&gateway, &body, &[("x-switchyard-cache-ttl", "soon")]).await;
    assert_eq!(status, 400);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-switchyard-cache-ttl")
    );
}

#[tokio::test]
async fn sampled_requests_are_bypassed_unless_the_route_allows_them() {
    let (mock, gateway) = setup("").await;
    let body = with(chat("creative"), json!({"temperature": 0.9}));
    for _ in 0..2 {
        let (_, cache, _) = chat_call(&gateway, &body, &[]).await;
        assert_eq!(cache, "BYPASS");
    }
    assert_eq!(mock.calls(), 2);

    let mock = self::mock(Behavior::default()).await;
    let text = format!(
        "[cache]\nenabled = true\nsampled = true\n{}",
        provider(&mock)
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let (_, first, _) = chat_call(&gateway, &body, &[]).await;
    let (_, second, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"));
}

#[tokio::test]
async fn identical_concurrent_requests_make_one_upstream_call() {
    let mock = mock(Behavior::latency(300)).await;
    let text = format!("[cache]\nenabled = true\n{}", provider(&mock));
    let gateway = TestGateway::start(&text, &[]).await;
    let body = chat("stampede");
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let url = gateway.url("/v1/chat/completions");
            let body = if i % 2 == 0 {
                body.clone()
            } else {
                with(body.clone(), json!({"stream": true}))
            };
            tokio::spawn(async move {
                let response = client()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let cache = header(response.headers(), "x-switchyard-cache").to_owned();
                (
                    response.status().as_u16(),
                    cache,
                    response.text().await.unwrap(),
                )
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        let (status, cache, _) = call.await.unwrap();
        assert_eq!(status, 200);
        statuses.push(cache);
    }
    assert_eq!(mock.calls(), 1, "exactly one upstream call");
    assert_eq!(
        statuses.iter().filter(|s| *s == "MISS").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| *s == "HIT").count(), 9);
    let stats = admin(&gateway).await;
    assert_eq!(stats["cache"]["coalesced"], 9);
    assert_eq!(stats["cache"]["in_flight_fills"], 0);
}

#[tokio::test]
async fn errors_and_truncated_streams_are_never_stored() {
    let (mock, gateway) = setup("").await;
    let body = chat("fragile");
    mock.set_behavior(Behavior::status(500));
    let (status, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!((status, cache.as_str()), (502, "MISS"));
    mock.set_behavior(Behavior::reset_after_chunks(2));
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(with(body.clone(), json!({"stream": true})).to_string())
        .send()
        .await
        .unwrap();
    let data = sse_data(&response.text().await.unwrap());
    assert!(data.last().unwrap().contains("error"), "{data:?}");
    mock.set_behavior(Behavior::default());
    let (status, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(
        (status, cache.as_str()),
        (200, "MISS"),
        "nothing was stored"
    );
    let (_, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(cache, "HIT");
    let stats = admin(&gateway).await;
    assert_eq!(stats["cache"]["stores"], 1);
    assert_eq!(stats["cache"]["in_flight_fills"], 0);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_stores_nothing_and_blocks_no_one() {
    let mock = mock(Behavior {
        chunk_delay_ms: 50,
        ..Behavior::default()
    })
    .await;
    let text = format!("[cache]\nenabled = true\n{}", provider(&mock));
    let gateway = TestGateway::start(&text, &[]).await;
    let body = chat("a long answer that the client will not wait for");
    let mut response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(with(body.clone(), json!({"stream": true})).to_string())
        .send()
        .await
        .unwrap();
    let _first = response.chunk().await.unwrap();
    drop(response);
    // The fill is released once the gateway sees the client gone.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let stats = admin(&gateway).await;
            if stats["cache"]["in_flight_fills"] == 0 {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the fill was released");
    mock.set_behavior(Behavior::default());
    let (_, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(cache, "MISS");
}

#[tokio::test]
async fn flushing_empties_the_cache() {
    let (mock, gateway) = setup("").await;
    let body = chat("flush me");
    chat_call(&gateway, &body, &[]).await;
    let flushed: Value = client()
        .delete(gateway.url("/admin/cache?route=mock-a"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    assert_eq!(flushed["flushed"]["memory"], 1);
    let (_, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(cache, "MISS");
    let response = client()
        .delete(gateway.url("/admin/cache"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(cache, "MISS");
    assert_eq!(mock.calls(), 3);
    let bad = client()
        .delete(gateway.url("/admin/cache?model=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn hits_leave_request_events_and_count_against_rate_limits() {
    let (mock, gateway) = setup(
        "[[rate_limits.limits]]\nname = \"two\"\nscope = \"key\"\nrequests = 2\nper = \"1h\"\n",
    )
    .await;
    let body = chat("limited");
    let (_, first, _) = chat_call(&gateway, &body, &[]).await;
    let (_, second, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"));
    let (status, _, error) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(status, 429, "a hit counts against the limit: {error}");
    assert_eq!(mock.calls(), 1);

    let log = logged_requests(&gateway, None, 3).await;
    let text = Value::from(log).to_string();
    assert!(text.contains("\"cache\":\"hit\""), "{text}");
    assert!(text.contains("\"cache\":\"miss\""), "{text}");
}

#[tokio::test]
async fn embeddings_are_cached_too() {
    let (mock, gateway) = setup("").await;
    let body = json!({"model": "mock-a", "input": ["one", "two"]});
    let url = gateway.url("/v1/embeddings");
    let (_, headers, first) = post_json(&url, &body, &[]).await;
    assert_eq!(header(&headers, "x-switchyard-cache"), "MISS");
    let (_, headers, second) = post_json(&url, &body, &[]).await;
    assert_eq!(header(&headers, "x-switchyard-cache"), "HIT");
    assert_eq!(first, second);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn a_route_can_turn_its_cache_off() {
    let mock = mock(Behavior::default()).await;
    let text = format!(
        "[cache]\nenabled = true\n{}\n[[routes]]\nmodel = \"fresh\"\ntargets = [{{ provider = \"alpha\", model = \"mock-a\" }}]\n[routes.cache]\nenabled = false\n",
        provider(&mock)
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let body = json!({"model": "fresh", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..2 {
        let (_, cache, _) = chat_call(&gateway, &body, &[("x-switchyard-cache", "nonsense")]).await;
        assert_eq!(
            cache, "BYPASS",
            "a bad header does not matter where the cache is off"
        );
    }
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn two_gateways_share_answers_through_redis() {
    let mock = mock(Behavior::default()).await;
    let text = format!(
        "[storage]\nredis_url = \"{REDIS}\"\n[cache]\nenabled = true\n{}",
        provider(&mock)
    );
    let first = TestGateway::start(&text, &[]).await;
    let second = TestGateway::start(&text, &[]).await;
    let body = chat(&format!("shared {}", nonce()));
    let (_, cache, answer) = chat_call(&first, &body, &[]).await;
    assert_eq!(cache, "MISS");
    written_to_redis(&first).await;
    let (_, cache, shared) = chat_call(&second, &body, &[]).await;
    assert_eq!(cache, "HIT", "the other instance's miss is this one's hit");
    assert_eq!(shared, answer);
    assert_eq!(mock.calls(), 1);
    let stats = admin(&second).await;
    assert_eq!(stats["cache"]["shared"]["hits"], 1);
    // Now in the second one's memory too: the next hit does not ask Redis.
    let (_, cache, _) = chat_call(&second, &body, &[]).await;
    assert_eq!(cache, "HIT");
    assert_eq!(admin(&second).await["cache"]["shared"]["hits"], 1);

    // A route's entries are flushed from Redis as well.
    let flushed: Value = client()
        .delete(first.url("/admin/cache?route=mock-a"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    assert!(
        flushed["flushed"]["shared"].as_u64().unwrap() >= 1,
        "{flushed}"
    );
    let third = TestGateway::start(&text, &[]).await;
    let (_, cache, _) = chat_call(&third, &body, &[]).await;
    assert_eq!(cache, "MISS");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_miss_not_an_error() {
    let mock = mock(Behavior::default()).await;
    let text = format!(
        "[storage]\nredis_url = \"redis://127.0.0.1:1/0\"\n[cache]\nenabled = true\n{}",
        provider(&mock)
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let body = chat("no redis");
    let (status, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    let (status, cache, _) = chat_call(&gateway, &body, &[]).await;
    assert_eq!(
        (status, cache.as_str()),
        (200, "HIT"),
        "memory still serves"
    );
    let stats = admin(&gateway).await;
    assert!(stats["cache"]["shared"]["errors"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn a_long_streamed_answer_is_stored_as_its_text_not_its_chunks() {
    // ~48 KB of text streamed word by word: well over 1 MB of chunk JSON, far under the
    // 1 MB entry cap as an answer.
    let text = "lorem ipsum dolor sit amet ".repeat(1_800);
    let mock = mock(Behavior::answer(text.trim_end())).await;
    let body = chat("a long story");
    let gateway = TestGateway::start(
        &format!("[cache]\nenabled = true\n{}", provider(&mock)),
        &[],
    )
    .await;
    let (cache, data) = stream_call(&gateway, &body).await;
    assert_eq!(cache, "MISS");
    let chunk_bytes: usize = data.iter().map(String::len).sum();
    assert!(chunk_bytes > 1024 * 1024, "{chunk_bytes}");
    let (status, cache, answer) = chat_call(&gateway, &body, &[]).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(
        answer["choices"][0]["message"]["content"].as_str().unwrap(),
        text.trim_end()
    );
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn hits_do_not_use_up_token_limits() {
    // Each answer is ~200 tokens; the limit would allow four such answers, not eight.
    let mock = mock(Behavior::answer("word ".repeat(200).trim_end())).await;
    let text = format!(
        "[cache]\nenabled = true\n[[rate_limits.limits]]\nname = \"tpm\"\nscope = \"key\"\ntokens = 1000\nper = \"1h\"\n{}",
        provider(&mock)
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let body = with(chat("tokens"), json!({"max_tokens": 250}));
    for round in 0..8 {
        let (status, cache, answer) = chat_call(&gateway, &body, &[]).await;
        assert_eq!(status, 200, "round {round}: {answer}");
        assert_eq!(cache, if round == 0 { "MISS" } else { "HIT" });
        assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() >= 200);
    }
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn a_route_pointed_at_other_models_does_not_reuse_answers() {
    let mock = mock(Behavior::default()).await;
    let with_target = |model: &str| {
        format!(
            "[storage]\nredis_url = \"{REDIS}\"\n[cache]\nenabled = true\n{}\n[[routes]]\nmodel = \"assistant\"\ntargets = [{{ provider = \"alpha\", model = \"{model}\" }}]\n",
            provider(&mock)
        )
    };
    let first = TestGateway::start(&with_target("mock-a"), &[]).await;
    let second = TestGateway::start(&with_target("mock-b"), &[]).await;
    let body = json!({"model": "assistant", "messages": [{"role": "user", "content": format!("which model {}", nonce())}]});
    let (_, cache, _) = chat_call(&first, &body, &[]).await;
    assert_eq!(cache, "MISS");
    written_to_redis(&first).await;
    let (_, cache, answer) = chat_call(&second, &body, &[]).await;
    assert_eq!(cache, "MISS", "the same route name, other models: {answer}");
    assert_eq!(answer["model"], "mock-b");
    let (_, cache, _) = chat_call(&first, &body, &[]).await;
    assert_eq!(cache, "HIT");
}

#[tokio::test]
async fn an_answer_from_a_fallback_route_is_not_stored_as_the_asked_routes() {
    let failing = mock(Behavior::status(503)).await;
    let backup = MockProvider::builder().name("beta").spawn().await.unwrap();
    let text = format!(
        "[cache]\nenabled = true\n[routing]\nmax_attempts = 3\nretry_budget = 1.0\n[routing.breaker]\nconsecutive_failures = 1\ncooldown = \"10s\"\n\
         [[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = []\n\
         [[providers]]\nname = \"beta\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = []\n\
         [[routes]]\nmodel = \"primary\"\nfallbacks = [\"backup\"]\ntargets = [{{ provider = \"alpha\", model = \"mock-a\" }}]\n\
         [[routes]]\nmodel = \"backup\"\ntargets = [{{ provider = \"beta\", model = \"mock-b\" }}]\n",
        failing.base_url(),
        backup.base_url()
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let body = json!({"model": "primary", "messages": [{"role": "user", "content": "degraded"}]});
    for _ in 0..2 {
        let (status, cache, answer) = chat_call(&gateway, &body, &[]).await;
        assert_eq!((status, cache.as_str()), (200, "MISS"), "{answer}");
        assert_eq!(answer["model"], "mock-b");
    }
    assert_eq!(
        backup.calls(),
        2,
        "the fallback's answer was not kept for `primary`"
    );
}
