//! Rate limits over real sockets: OpenAI-shaped 429s with `Retry-After` and `x-ratelimit-*`
//! headers, token reservations settled to the actual usage of streams, concurrency held
//! while a stream runs, load shedding, and the shared Redis store (its algorithms, and the
//! fail-open / fail-closed modes when it is unreachable). Redis is the real server on
//! 127.0.0.1:6379.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestGateway, client, header, post_json};
use serde_json::json;
use switchyard::ratelimit::{RateLimitMetrics, RateLimiter, Subject};
use switchyard_core::config::{parse_toml, validate};
use switchyard_core::ratelimit::shed::Priority;
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

const REDIS: &str = "redis://127.0.0.1:6379/0";

async fn setup(extra: &str, behavior: Behavior) -> (MockHandle, TestGateway) {
    let mock = MockProvider::builder()
        .name("alpha")
        .behavior(behavior)
        .spawn()
        .await
        .unwrap();
    let text = format!(
        "{extra}\n[[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
        mock.base_url()
    );
    (mock, TestGateway::start(&text, &[]).await)
}

fn chat(extra: serde_json::Value) -> serde_json::Value {
    let mut body =
        json!({"model": "mock-a", "messages": [{"role": "user", "content": "one two three"}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// Waits until `count` request events were processed: their admissions are settled by then.
async fn settled(gateway: &TestGateway, count: u64) {
    let counts = gateway.state.events.counts();
    tokio::time::timeout(Duration::from_secs(10), async {
        while counts.processed.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("request events");
}

async fn metrics(gateway: &TestGateway) -> String {
    common::get_text(&gateway.url("/metrics")).await
}

#[tokio::test]
async fn refusals_are_openai_shaped_429s_with_rate_headers() {
    let (mock, gateway) = setup(
        r#"
[[rate_limits.limits]]
name = "per-key"
scope = "key"
requests = 2
per = "1h"
[[rate_limits.limits]]
name = "tpm"
scope = "key"
tokens = 100000
per = "1h"
"#,
        Behavior::default(),
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    for remaining in ["1", "0"] {
        let (status, headers, _) = post_json(&url, &chat(json!({"max_tokens": 50})), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "2");
        assert_eq!(
            header(&headers, "x-ratelimit-remaining-requests"),
            remaining
        );
        assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), "100000");
        assert!(header(&headers, "x-ratelimit-reset-requests").ends_with('s'));
        assert!(header(&headers, "server-timing").contains("ratelimit;dur="));
    }
    let (status, headers, body) = post_json(&url, &chat(json!({})), &[]).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`per-key`"),
        "{body}"
    );
    let retry_after: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!((1..=1800).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(
        mock.calls(),
        2,
        "a refused request never reaches the provider"
    );

    settled(&gateway, 3).await;
    let text = metrics(&gateway).await;
    assert!(
        text.contains(
            r#"switchyard_ratelimit_refusals_total{limit="per-key",scope="key",key="anonymous"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"error_class="rate_limited"} 1"#),
        "the refusal is in the request events: {text}"
    );
    let admin = common::get_json(&gateway.url("/admin/ratelimits"), None).await;
    assert_eq!(admin["store"], "memory");
    assert_eq!(admin["limits"][0]["name"], "per-key");
    assert_eq!(admin["top_offenders"][0]["key"], "anonymous");
    assert_eq!(admin["top_offenders"][0]["refusals"], 1);
    gateway.stop().await;
}

#[tokio::test]
async fn a_stream_settles_its_token_reservation_to_the_actual_usage() {
    let (_mock, gateway) = setup(
        r#"
[[rate_limits.limits]]
scope = "key"
tokens = 5000
per = "1h"
"#,
        Behavior::default(),
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let first = chat(
        json!({"max_tokens": 2000, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let response = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(first.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reserved_first = first.to_string().len() as u64 / 4 + 2000;
    assert_eq!(
        header(response.headers(), "x-ratelimit-remaining-tokens"),
        (5000 - reserved_first).to_string()
    );
    let text = response.text().await.unwrap();
    let usage: serde_json::Value = common::sse_data(&text)
        .iter()
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .find(|chunk| chunk["usage"].is_object())
        .map(|chunk| chunk["usage"].clone())
        .expect("a usage chunk");
    let used = usage["total_tokens"].as_u64().unwrap();
    assert!(used < 100);
    settled(&gateway, 1).await;

    // The second reservation sees only what the first really used.
    let second = chat(json!({"max_tokens": 1000}));
    let (status, headers, _) = post_json(&url, &second, &[]).await;
    assert_eq!(status, 200);
    let reserved_second = second.to_string().len() as u64 / 4 + 1000;
    let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    // The bucket refills a little while the test runs (5000 per hour: ~1.4 per second).
    let expected = 5000 - used - reserved_second;
    assert!(
        (expected..=expected + 5).contains(&remaining),
        "remaining {remaining}, expected {expected}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn a_request_abandoned_before_its_answer_keeps_its_token_charge() {
    let (mock, gateway) = setup(
        r#"
[[rate_limits.limits]]
scope = "key"
tokens = 5000
per = "1h"
"#,
        Behavior {
            hang: true,
            ..Behavior::default()
        },
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let first = chat(json!({"max_tokens": 2000}));
    let gave_up = client()
        .post(&url)
        .timeout(Duration::from_millis(300))
        .header("content-type", "application/json")
        .body(first.to_string())
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    settled(&gateway, 1).await;

    // The provider may bill the prompt it was reading: nothing is refunded.
    mock.set_behavior(Behavior::default());
    let second = chat(json!({"max_tokens": 1000}));
    let (status, headers, _) = post_json(&url, &second, &[]).await;
    assert_eq!(status, 200);
    let reserved_first = first.to_string().len() as u64 / 4 + 2000;
    let reserved_second = second.to_string().len() as u64 / 4 + 1000;
    let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    let expected = 5000 - reserved_first - reserved_second;
    assert!(
        (expected..=expected + 5).contains(&remaining),
        "remaining {remaining}, expected {expected}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn concurrency_is_held_until_the_stream_ends() {
    let (_mock, gateway) = setup(
        r#"
[[rate_limits.limits]]
scope = "key"
concurrent = 1
"#,
        Behavior {
            chunk_delay_ms: 50,
            ..Behavior::default()
        },
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let streaming = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(chat(json!({"stream": true})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    let (status, headers, body) = post_json(&url, &chat(json!({})), &[]).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        headers.get("retry-after").is_none(),
        "no time would be right"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("when one finishes")
    );
    streaming.text().await.unwrap();
    settled(&gateway, 2).await;
    let (status, _, _) = post_json(&url, &chat(json!({})), &[]).await;
    assert_eq!(status, 200);
    gateway.stop().await;
}

#[tokio::test]
async fn overload_is_shed_fast_with_a_503() {
    let (_mock, gateway) =
        setup("[rate_limits]\nmax_in_flight = 1\n", Behavior::latency(400)).await;
    let url = gateway.url("/v1/chat/completions");
    let slow = tokio::spawn({
        let url = url.clone();
        async move { post_json(&url, &chat(json!({})), &[]).await.0 }
    });
    // Wait until the first request holds the only slot.
    tokio::time::timeout(Duration::from_secs(5), async {
        while gateway.state.limiter.snapshot(0).in_flight == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap();
    let (status, headers, body) = post_json(&url, &chat(json!({})), &[]).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(header(&headers, "retry-after"), "1");
    assert_eq!(slow.await.unwrap(), 200);
    let text = metrics(&gateway).await;
    assert!(
        text.contains(r#"switchyard_ratelimit_shed_total{priority="normal"} 1"#),
        "{text}"
    );
    gateway.stop().await;
}

#[tokio::test]
async fn users_come_from_the_body_or_a_header() {
    let (_mock, gateway) = setup(
        r#"
[[rate_limits.limits]]
scope = "user"
requests = 1
per = "1h"
"#,
        Behavior::default(),
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let ok = |status: u16| assert_eq!(status, 200);
    ok(post_json(&url, &chat(json!({"user": "alice"})), &[])
        .await
        .0);
    assert_eq!(
        post_json(&url, &chat(json!({"user": "alice"})), &[])
            .await
            .0,
        429
    );
    assert_eq!(
        post_json(&url, &chat(json!({})), &[("x-switchyard-user", "alice")])
            .await
            .0,
        429,
        "the header names the same user"
    );
    ok(post_json(&url, &chat(json!({"user": "bob"})), &[]).await.0);
    ok(post_json(&url, &chat(json!({})), &[]).await.0);
    gateway.stop().await;
}

#[tokio::test]
async fn an_unreachable_redis_fails_open_or_closed_as_configured() {
    // Nothing listens on port 1.
    for (mode, expected) in [
        ("fail_open", [200, 200, 429]),
        ("fail_closed", [503, 503, 503]),
    ] {
        let (mock, gateway) = setup(
            &format!(
                "[storage]\nredis_url = \"redis://127.0.0.1:1/0\"\n[rate_limits]\non_store_error = \"{mode}\"\n[[rate_limits.limits]]\nscope = \"key\"\nrequests = 2\nper = \"1h\"\n"
            ),
            Behavior::default(),
        )
        .await;
        let url = gateway.url("/v1/chat/completions");
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let (status, _, body) = post_json(&url, &chat(json!({})), &[]).await;
            if status == 503 {
                assert_eq!(body["error"]["code"], "rate_limit_store_unavailable");
            }
            statuses.push(status);
        }
        assert_eq!(statuses, expected, "{mode}");
        if mode == "fail_closed" {
            assert_eq!(mock.calls(), 0);
        }
        let text = metrics(&gateway).await;
        assert!(
            text.contains(&format!(
                r#"switchyard_ratelimit_store_errors_total{{mode="{mode}"}} 3"#
            )),
            "{text}"
        );
        gateway.stop().await;
    }
}

fn redis_limiter(limits: &str) -> Arc<RateLimiter> {
    let config = validate(
        &parse_toml(limits).unwrap(),
        &std::collections::HashMap::<String, String>::new(),
    )
    .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    Arc::new(
        RateLimiter::new(
            &config.rate_limits,
            Some(REDIS),
            Duration::from_secs(60),
            Arc::new(switchyard::tracker::TokioClock::new()),
            RateLimitMetrics::register(&mut registry),
        )
        .unwrap(),
    )
}

fn subject(key: &str, tokens: u64) -> Subject {
    Subject {
        key: key.to_owned(),
        user: None,
        team: None,
        ip: None,
        model: "m".to_owned(),
        priority: Priority::Normal,
        tokens,
        own: Default::default(),
    }
}

/// Every algorithm counts in Redis as it does in memory: burst then refuse, refunds, leases.
#[tokio::test]
async fn redis_store_runs_every_algorithm() {
    let run = format!("{:x}", fastrand::u64(..));
    let limiter = redis_limiter(&format!(
        r#"
[[rate_limits.limits]]
name = "bucket-{run}"
scope = "key"
requests = 4
per = "1h"
[[rate_limits.limits]]
name = "window-{run}"
scope = "key"
tokens = 1000
per = "1h"
algorithm = "sliding_window"
[[rate_limits.limits]]
name = "log-{run}"
scope = "key"
tokens = 1000
per = "1h"
algorithm = "window_log"
[[rate_limits.limits]]
name = "conc-{run}"
scope = "key"
concurrent = 2
"#
    ));
    let far = tokio::time::Instant::now() + Duration::from_secs(60);
    let first = limiter.admit(&subject("k", 600), far).await.unwrap();
    let headers = first.headers();
    assert_eq!(headers.requests.map(|f| f.remaining), Some(3));
    assert_eq!(headers.tokens.map(|f| f.remaining), Some(400));
    // 600 more tokens do not fit in either token limit; nothing is charged by the refusal.
    assert!(limiter.admit(&subject("k", 600), far).await.is_err());
    // The first used only 100: after settling, 600 fit again.
    first.settle(100);
    let refunded = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match limiter.admit(&subject("k", 600), far).await {
                Ok(admission) => break admission,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await
    .expect("the refund reaches Redis");
    assert_eq!(refunded.headers().tokens.map(|f| f.remaining), Some(300));
    assert_eq!(refunded.headers().requests.map(|f| f.remaining), Some(2));
    // Two in flight: the concurrency lease refuses a third, and a settled one frees a slot.
    let _second = limiter.admit(&subject("k", 1), far).await.unwrap();
    let (refusal, _) = limiter.admit(&subject("k", 1), far).await.unwrap_err();
    assert!(
        limiter
            .error(&refusal)
            .message
            .contains(&format!("conc-{run}")),
        "{}",
        limiter.error(&refusal).message
    );
    refunded.settle(600);
    let third = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match limiter.admit(&subject("k", 1), far).await {
                Ok(admission) => break admission,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await
    .expect("the lease is released in Redis");
    assert_eq!(third.headers().requests.map(|f| f.remaining), Some(0));
    // The request limit is spent for this key, and only for it.
    assert!(limiter.admit(&subject("k", 1), far).await.is_err());
    assert!(limiter.admit(&subject("other", 1), far).await.is_ok());
    assert_eq!(limiter.snapshot(5).store, "redis");
}

/// A provider quota skips that provider's targets at no cost, so traffic moves to the next
/// target; with every target at its quota the client gets a 429 that says so.
#[tokio::test]
async fn provider_quotas_move_traffic_to_the_next_target() {
    let alpha = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let beta = MockProvider::builder().name("beta").spawn().await.unwrap();
    let text = format!(
        r#"
[[providers]]
name = "alpha"
kind = "openai"
base_url = "{}/v1"
[[providers]]
name = "beta"
kind = "openai"
base_url = "{}/v1"
[[routes]]
model = "pair"
targets = [ {{ provider = "alpha", model = "mock-a" }}, {{ provider = "beta", model = "mock-b" }} ]
[[rate_limits.limits]]
name = "alpha-quota"
scope = "provider"
requests = 1
per = "1h"
only = ["alpha"]
[[rate_limits.limits]]
name = "beta-quota"
scope = "provider"
requests = 1
per = "1h"
only = ["beta"]
"#,
        alpha.base_url(),
        beta.base_url()
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let url = gateway.url("/v1/chat/completions");
    let body = json!({"model": "pair", "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, _) = post_json(&url, &body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-switchyard-provider"), "alpha");
    let (status, headers, _) = post_json(&url, &body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-switchyard-provider"), "beta");
    assert_eq!(
        header(&headers, "x-switchyard-attempts"),
        "1",
        "the skip cost no attempt"
    );
    let (status, headers, body) = post_json(&url, &body, &[]).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("quota"),
        "{body}"
    );
    assert!(headers.get("retry-after").is_some());
    assert_eq!((alpha.calls(), beta.calls()), (1, 1));
    gateway.stop().await;
}

/// A client that drops a stream is charged for what was produced, not for its reservation.
#[tokio::test]
async fn a_dropped_stream_is_settled_with_what_was_produced() {
    let (_mock, gateway) = setup(
        r#"
[[rate_limits.limits]]
scope = "key"
tokens = 5000
per = "1h"
"#,
        Behavior {
            chunk_delay_ms: 200,
            ..Behavior::default()
        },
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let first = chat(json!({"max_tokens": 3000, "stream": true}));
    let mut response = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(first.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // One chunk, then the client goes away.
    response.chunk().await.unwrap().unwrap();
    drop(response);
    settled(&gateway, 1).await;
    // Far less than the 3000 reserved is still charged: the second reservation fits.
    let (status, headers, body) = post_json(&url, &chat(json!({"max_tokens": 4000})), &[]).await;
    assert_eq!(status, 200, "{body}");
    let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    let reserved_second = chat(json!({"max_tokens": 4000})).to_string().len() as u64 / 4 + 4000;
    assert!(
        remaining + reserved_second > 5000 - 100,
        "remaining {remaining}: the dropped stream was charged more than it produced"
    );
    gateway.stop().await;
}

/// A target quota counts one model at a provider: the provider's other models still serve.
#[tokio::test]
async fn target_quotas_count_one_model_at_a_provider() {
    let (mock, gateway) = setup(
        r#"
[[routes]]
model = "two-models"
targets = [ { provider = "alpha", model = "mock-a" }, { provider = "alpha", model = "mock-b" } ]
[[rate_limits.limits]]
scope = "target"
requests = 1
per = "1h"
only = ["alpha/mock-a"]
"#,
        Behavior::default(),
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let body = json!({"model": "two-models", "messages": [{"role": "user", "content": "hi"}]});
    let mut models = Vec::new();
    for _ in 0..3 {
        let (status, headers, _) = post_json(&url, &body, &[]).await;
        assert_eq!(status, 200);
        models.push(header(&headers, "x-switchyard-model").to_owned());
    }
    assert_eq!(models, ["mock-a", "mock-b", "mock-b"]);
    assert_eq!(mock.calls(), 3);
    gateway.stop().await;
}

#[tokio::test]
async fn a_refused_request_is_logged_under_its_route() {
    let (_mock, gateway) = setup(
        r#"
[[rate_limits.limits]]
name = "one"
scope = "key"
requests = 1
per = "1h"
[[routes]]
model = "assistant"
[[routes.targets]]
provider = "alpha"
model = "mock-a"
"#,
        Behavior::default(),
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let body = chat(json!({"model": "assistant"}));
    assert_eq!(post_json(&url, &body, &[]).await.0, 200);
    assert_eq!(post_json(&url, &body, &[]).await.0, 429);
    let rows = common::logged_requests(&gateway, None, 2).await;
    let refused = rows.iter().find(|row| row["status"] == 429).unwrap();
    // Refused before any attempt, it is still filed under the route it asked for (the
    // dashboard's filters and per-route alerts rely on it).
    assert_eq!(refused["route"], "assistant");
    assert_eq!(refused["error_class"], "rate_limited");
    assert!(refused["provider"].is_null());
}
