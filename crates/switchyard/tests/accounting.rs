//! Every `/v1/*` request leaves exactly one request event, whatever its outcome, and the
//! events reach `GET /metrics`, whose output a Prometheus text parser must read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestGateway, client, post_json};
use serde_json::json;
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

async fn setup(extra: &str, env: &[(&str, &str)]) -> (MockHandle, TestGateway) {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let text = format!(
        "{extra}\n[[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
        mock.base_url()
    );
    (mock, TestGateway::start(&text, env).await)
}

/// Waits until the background task has processed `count` events in all (bounded).
async fn processed(gateway: &TestGateway, count: u64) {
    let counts = gateway.state.events.counts();
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while counts.processed.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "expected {count} events, processed {}",
        counts.processed.load(Ordering::Relaxed)
    );
    // Exactly: no second event for any request.
    tokio::task::yield_now().await;
    assert_eq!(counts.processed.load(Ordering::Relaxed), count);
    assert_eq!(counts.dropped.load(Ordering::Relaxed), 0);
}

async fn scrape(gateway: &TestGateway, key: Option<&str>) -> prometheus_parse::Scrape {
    let mut request = client().get(gateway.url("/metrics"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("unparsable metrics: {e}\n{text}"))
}

/// The value of `name` for the sample whose labels include all of `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn one_event_per_request_for_every_outcome() {
    let (mock, gateway) = setup("", &[]).await;
    let url = gateway.url("/v1/chat/completions");
    let chat = |text: &str| json!({"model": "mock-small", "messages": [{"role": "user", "content": text}]});

    // Served.
    let (status, _, _) = post_json(&url, &chat("one two"), &[]).await;
    assert_eq!(status, 200);
    processed(&gateway, 1).await;

    // Streamed.
    let mut body = chat("stream me");
    body["stream"] = json!(true);
    let response = client()
        .post(&url)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    processed(&gateway, 2).await;

    // Refused before reaching any provider.
    let response = client().post(&url).body("{not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    processed(&gateway, 3).await;

    // Failed upstream.
    mock.set_behavior(Behavior::status(500));
    let (status, _, _) = post_json(&url, &chat("x"), &[]).await;
    assert!(status >= 500);
    processed(&gateway, 4).await;
    mock.set_behavior(Behavior::default());

    // Not accounted: health checks and metrics scrapes are not LLM requests.
    client().get(gateway.url("/healthz")).send().await.unwrap();
    let scrape = scrape(&gateway, None).await;
    processed(&gateway, 4).await;

    assert_eq!(
        value(&scrape, "switchyard_requests_total", &[("status", "200")]),
        2.0
    );
    assert_eq!(
        value(&scrape, "switchyard_requests_total", &[("status", "400")]),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "switchyard_request_errors_total",
            &[("error_class", "invalid_request")]
        ),
        1.0
    );
    assert!(
        value(
            &scrape,
            "switchyard_request_errors_total",
            &[("provider", "alpha")]
        ) >= 1.0
    );
    assert_eq!(value(&scrape, "switchyard_events_total", &[]), 4.0);
    assert_eq!(value(&scrape, "switchyard_events_dropped_total", &[]), 0.0);
    // Tokens per request from both the JSON answer and the stream's usage, by type: one
    // observation each, their sum the total.
    let output = [("gen_ai_token_type", "output"), ("model", "mock-small")];
    assert_eq!(
        value(&scrape, "gen_ai_client_token_usage_count", &output),
        2.0
    );
    assert!(value(&scrape, "gen_ai_client_token_usage_sum", &output) >= 2.0);
    // The stream's time to first token, one observation, by status.
    assert_eq!(
        value(
            &scrape,
            "gen_ai_server_time_to_first_token_seconds_count",
            &[("provider", "alpha"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(&scrape, "gen_ai_server_request_duration_seconds_count", &[]),
        4.0
    );
    assert_eq!(
        value(
            &scrape,
            "switchyard_breaker_state",
            &[("provider", "alpha")]
        ),
        0.0
    );
    assert!(value(&scrape, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "process_cpu_seconds_total"),
        "the standard process CPU counter"
    );
    assert_eq!(
        value(&scrape, "switchyard_metrics_series_overflow_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn client_chosen_model_names_past_the_series_cap_share_one_series() {
    let (_mock, gateway) = setup("[analytics]\nmetrics_max_series = 2\n", &[]).await;
    let url = gateway.url("/v1/chat/completions");
    for n in 0..5 {
        let body = json!({"model": format!("mock-made-up-{n}"), "messages": [{"role": "user", "content": "hi"}]});
        let (status, _, _) = post_json(&url, &body, &[]).await;
        assert_eq!(status, 200);
    }
    processed(&gateway, 5).await;

    let scrape = scrape(&gateway, None).await;
    assert_eq!(
        value(&scrape, "switchyard_metrics_series_overflow_total", &[]),
        3.0
    );
    let other = [
        ("route", "other"),
        ("provider", "alpha"),
        ("model", "other"),
    ];
    assert_eq!(value(&scrape, "switchyard_requests_total", &other), 3.0);
    let models: std::collections::BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "switchyard_requests_total")
        .filter_map(|s| s.labels.get("model"))
        .collect();
    assert_eq!(
        models,
        ["mock-made-up-0", "mock-made-up-1", "other"].into(),
        "two series of their own, then the overflow"
    );
}

#[tokio::test]
async fn a_401_and_a_client_disconnect_are_accounted() {
    let (mock, gateway) = setup(
        "[server]\nmaster_key_env = \"MASTER\"\n",
        &[("MASTER", "sk-m")],
    )
    .await;
    let url = gateway.url("/v1/chat/completions");
    let response = client().post(&url).body("{}").send().await.unwrap();
    assert_eq!(response.status(), 401);
    processed(&gateway, 1).await;

    // A slow stream the client abandons after its first chunk.
    mock.set_behavior(Behavior {
        chunk_delay_ms: 200,
        ..Behavior::default()
    });
    let body = json!({"model": "mock-small", "stream": true, "messages": [{"role": "user", "content": "a b c d e f g"}]});
    let mut response = client()
        .post(&url)
        .bearer_auth("sk-m")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.chunk().await.unwrap();
    drop(response);
    processed(&gateway, 2).await;

    let scrape = scrape(&gateway, Some("sk-m")).await;
    assert_eq!(
        value(
            &scrape,
            "switchyard_request_errors_total",
            &[("error_class", "authentication")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "switchyard_request_errors_total",
            &[("error_class", "client_closed")]
        ),
        1.0
    );
    // The metrics endpoint is behind the master key too.
    let response = client().get(gateway.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_client_gone_before_the_headers_and_a_head_request_are_accounted() {
    let (mock, gateway) = setup("", &[]).await;
    let url = gateway.url("/v1/chat/completions");
    // The provider never answers; the client gives up first, so the gateway drops the
    // request before any response exists.
    mock.set_behavior(Behavior {
        hang: true,
        ..Behavior::default()
    });
    let body = json!({"model": "mock-small", "messages": [{"role": "user", "content": "hello"}]});
    let gave_up = client()
        .post(&url)
        .timeout(Duration::from_millis(300))
        .body(body.to_string())
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    processed(&gateway, 1).await;

    // A HEAD response's body is dropped unread: that is not a client going away.
    mock.set_behavior(Behavior::default());
    let response = client()
        .head(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    processed(&gateway, 2).await;

    let scrape = scrape(&gateway, None).await;
    assert_eq!(
        value(
            &scrape,
            "switchyard_request_errors_total",
            &[("error_class", "client_closed")]
        ),
        1.0
    );
    assert_eq!(
        value(&scrape, "switchyard_requests_total", &[("status", "499")]),
        1.0
    );
}

#[tokio::test]
async fn a_request_still_open_when_the_shutdown_grace_ends_is_accounted() {
    let (mock, gateway) = setup(
        "[server]\ndrain_delay = \"0s\"\nshutdown_grace = \"100ms\"\n",
        &[],
    )
    .await;
    mock.set_behavior(Behavior {
        hang: true,
        ..Behavior::default()
    });
    let body = json!({"model": "mock-small", "messages": [{"role": "user", "content": "hello"}]});
    // One over HTTP/1.1, one over HTTP/2 (whose request runs on a task of its own).
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let waiting: Vec<_> = [client(), http2]
        .into_iter()
        .map(|client| {
            let request = client
                .post(gateway.url("/v1/chat/completions"))
                .body(body.to_string());
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    // Shut down once the provider holds both requests.
    tokio::time::timeout(Duration::from_secs(10), async {
        while mock.requests().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let state = gateway.state.clone();
    gateway.stop().await;
    let counts = state.events.counts();
    assert_eq!(counts.processed.load(Ordering::Relaxed), 2);
    assert_eq!(counts.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(counts.open.load(Ordering::Relaxed), 0);
    // Filed as cut by the gateway, not by their clients.
    let text = state.metrics.render(0, &state.connections);
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap();
    let shutdown = [("error_class", "shutdown")];
    assert_eq!(
        value(&scrape, "switchyard_request_errors_total", &shutdown),
        2.0
    );
    assert_eq!(
        value(&scrape, "switchyard_requests_total", &[("status", "503")]),
        2.0
    );
    // The connections were closed at the end of the grace, before any answer.
    for waiting in waiting {
        assert!(waiting.await.unwrap().is_err());
    }
}

#[tokio::test]
async fn unversioned_paths_and_unknown_paths_are_accounted_admin_is_not() {
    let (_mock, gateway) = setup("", &[]).await;
    let chat = json!({"model": "mock-small", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, _) = post_json(&gateway.url("/chat/completions"), &chat, &[]).await;
    assert_eq!(status, 200);
    let response = client()
        .get(gateway.url("/v1/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    client()
        .get(gateway.url("/admin/providers"))
        .send()
        .await
        .unwrap();
    client().get(gateway.url("/readyz")).send().await.unwrap();
    processed(&gateway, 2).await;
}
