//! The analytics pipeline end to end: requests through a real gateway reach the rollups and
//! the request log, the query API answers from them, a graceful shutdown flushes everything,
//! and a restarted gateway still has it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TestGateway, client, post_json};
use serde_json::{Value, json};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

const MASTER: &str = "sk-master-analytics";

async fn mock(name: &str) -> MockHandle {
    MockProvider::builder().name(name).spawn().await.unwrap()
}

fn config(mocks: &[&MockHandle]) -> String {
    let mut text = String::new();
    for mock in mocks {
        text.push_str(&format!(
            "[[providers]]\nname = \"{}\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"{}-*\"]\n",
            mock.name(),
            mock.base_url(),
            mock.name()
        ));
    }
    text
}

async fn chat(gateway: &TestGateway, model: &str) -> u16 {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "one two three"}]});
    let (status, _, _) = post_json(
        &gateway.url("/v1/chat/completions"),
        &body,
        &[("authorization", &format!("Bearer {MASTER}"))],
    )
    .await;
    status
}

async fn get(gateway: &TestGateway, path: &str) -> (u16, Value) {
    let response = client()
        .get(gateway.url(path))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls the query until its total request count reaches `count` (bounded), and returns it.
async fn until_requests(gateway: &TestGateway, path: &str, count: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(gateway, path).await;
        assert_eq!(status, 200, "{body}");
        if body["totals"]["requests"].as_u64() >= Some(count) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} requests from {path}, got {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_reach_the_rollups_and_the_request_log() {
    let alpha = mock("alpha").await;
    let beta = mock("beta").await;
    alpha.set_behavior(Behavior::status(500));
    let gateway = TestGateway::start(
        &config(&[&alpha, &beta]),
        &[("SWITCHYARD_MASTER_KEY", MASTER)],
    )
    .await;
    // beta serves 3; alpha fails 2 (500 from the provider: no other target serves alpha-*).
    for _ in 0..3 {
        assert_eq!(chat(&gateway, "beta-small").await, 200);
    }
    for _ in 0..2 {
        assert_ne!(chat(&gateway, "alpha-small").await, 200);
    }

    // The stored minute tier, grouped by provider.
    let body = until_requests(
        &gateway,
        "/admin/analytics?from=-10m&interval=1m&group_by=provider&metrics=requests,errors,error_rate,tokens_in,tokens_out,p50,p99",
        5,
    )
    .await;
    assert_eq!(body["resolution"], "1m");
    assert_eq!(body["totals"]["requests"], 5);
    assert_eq!(body["totals"]["errors"], 2);
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["group"]["provider"], "beta", "largest first");
    assert_eq!(series[0]["totals"]["requests"], 3);
    assert_eq!(series[0]["totals"]["errors"], 0);
    assert!(series[0]["totals"]["tokens_in"].as_u64().unwrap() > 0);
    assert!(series[0]["totals"]["p50"].as_f64().unwrap() > 0.0);
    assert_eq!(series[1]["totals"]["error_rate"], 1.0);
    // Ten minutes back, aligned down to the minute: 10 points, or 11 when not on the minute.
    let points = body["t"].as_array().unwrap().len();
    assert_eq!(
        series[0]["values"]["requests"].as_array().unwrap().len(),
        points
    );
    assert!(points == 10 || points == 11, "{points}");

    // The live 1 s tier from memory agrees.
    let live = until_requests(
        &gateway,
        "/admin/analytics?from=-2m&interval=1s&metrics=requests",
        5,
    )
    .await;
    assert_eq!(live["resolution"], "1s");
    assert_eq!(live["totals"]["requests"], 5);

    // The keyed cube: everything was sent with the master key.
    let (_, by_key) = get(
        &gateway,
        "/admin/analytics?from=-10m&interval=1m&group_by=key,status_class&metrics=requests",
    )
    .await;
    let groups: Vec<(String, String, u64)> = by_key["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["group"]["key"].as_str().unwrap().to_owned(),
                s["group"]["status_class"].as_str().unwrap().to_owned(),
                s["totals"]["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("master".into(), "2xx".into(), 3),
            ("master".into(), "5xx".into(), 2)
        ]
    );

    // The raw log, paged two at a time, newest first, with filters.
    let (status, page) = get(&gateway, "/admin/requests?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let mut seen = page["data"].as_array().unwrap().clone();
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(before) = cursor {
        let (_, next) = get(
            &gateway,
            &format!("/admin/requests?limit=2&before={before}"),
        )
        .await;
        seen.extend(next["data"].as_array().unwrap().iter().cloned());
        cursor = next["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 5, "every request once: {seen:?}");
    let times: Vec<u64> = seen
        .iter()
        .map(|r| r["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let first = &seen[0];
    assert!(first["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(first["key"], "master");
    assert!(first["stages"].as_array().is_some_and(|s| !s.is_empty()));
    let (_, failed) = get(&gateway, "/admin/requests?status=5xx&provider=alpha").await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 2);
    assert!(failed["next_cursor"].is_null());
    let (_, none) = get(&gateway, "/admin/requests?min_latency_ms=60000").await;
    assert_eq!(none["data"].as_array().unwrap().len(), 0);

    let (_, status) = get(&gateway, "/admin/analytics/status").await;
    assert_eq!(status["store"], "sqlite");
    assert!(status["flushes"].as_u64().unwrap() >= 1);
    assert_eq!(status["lost"], 0);
    gateway.stop().await;
}

#[tokio::test]
async fn bad_queries_get_openai_shaped_errors_naming_the_parameter() {
    let beta = mock("beta").await;
    let gateway = TestGateway::start(&config(&[&beta]), &[("SWITCHYARD_MASTER_KEY", MASTER)]).await;
    for (path, param) in [
        ("/admin/analytics?group_by=colour", "group_by"),
        ("/admin/analytics?metrics=p42", "metrics"),
        ("/admin/analytics?from=-3d&interval=1m", "interval"),
        ("/admin/analytics?from=yesterday", "from"),
        ("/admin/requests?limit=0", "limit"),
        ("/admin/requests?status=7xx", "status"),
        ("/admin/requests?before=nonsense", "before"),
        ("/admin/requests?colour=red", "colour"),
    ] {
        let (status, body) = get(&gateway, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{path}");
        assert_eq!(body["error"]["param"], param, "{path}: {body}");
    }
    // The admin key is required.
    let response = client()
        .get(gateway.url("/admin/analytics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    gateway.stop().await;
}

#[tokio::test]
async fn a_graceful_shutdown_flushes_and_a_restart_keeps_everything() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let beta = mock("beta").await;
    let env = [
        ("SWITCHYARD_MASTER_KEY", MASTER),
        ("SWITCHYARD_DATA_DIR", dir.as_str()),
    ];
    // A long flush interval: only the shutdown flush can have written these.
    let text = format!(
        "[analytics]\nflush_interval = \"60s\"\n{}",
        config(&[&beta])
    );
    let gateway = TestGateway::start(&text, &env).await;
    for _ in 0..4 {
        assert_eq!(chat(&gateway, "beta-small").await, 200);
    }
    gateway.stop().await;
    assert!(data.path().join("analytics.db").is_file());
    assert!(data.path().join("requests.db").is_file());

    let restarted = TestGateway::start(&text, &env).await;
    let (status, body) = get(
        &restarted,
        "/admin/analytics?from=-1h&interval=1m&metrics=requests,tokens_out",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["totals"]["requests"], 4, "{body}");
    let (_, hourly) = get(
        &restarted,
        "/admin/analytics?from=-1h&interval=1h&metrics=requests",
    )
    .await;
    assert_eq!(hourly["resolution"], "1h");
    assert_eq!(hourly["totals"]["requests"], 4, "{hourly}");
    let (_, log) = get(&restarted, "/admin/requests").await;
    assert_eq!(log["data"].as_array().unwrap().len(), 4);
    // New traffic adds to it (a new instance id: its rows sit beside the old ones).
    assert_eq!(chat(&restarted, "beta-small").await, 200);
    restarted.stop().await;
    let again = TestGateway::start(&text, &env).await;
    let (_, body) = get(
        &again,
        "/admin/analytics?from=-1h&interval=1m&metrics=requests",
    )
    .await;
    assert_eq!(body["totals"]["requests"], 5, "{body}");
    again.stop().await;
}

/// Two gateways sharing one Postgres: each writes its own rows, and either one's query
/// answers for both.
#[tokio::test]
async fn instances_sharing_postgres_answer_for_each_other() {
    let db = common::TestDb::new("sy_gateway_e2e").await;
    let url = db.url.clone();

    let beta = mock("beta").await;
    let text = config(&[&beta]);
    let env = [
        ("SWITCHYARD_MASTER_KEY", MASTER),
        ("SWITCHYARD_POSTGRES_URL", url.as_str()),
    ];
    let one = TestGateway::start(&text, &env).await;
    let two = TestGateway::start(&text, &env).await;
    for _ in 0..3 {
        assert_eq!(chat(&one, "beta-small").await, 200);
    }
    for _ in 0..2 {
        assert_eq!(chat(&two, "beta-small").await, 200);
    }
    let path = "/admin/analytics?from=-10m&interval=1m&metrics=requests,p50";
    let from_two = until_requests(&two, path, 5).await;
    assert_eq!(from_two["totals"]["requests"], 5, "{from_two}");
    let from_one = until_requests(&one, path, 5).await;
    assert_eq!(from_one["totals"], from_two["totals"]);
    let (_, status) = get(&one, "/admin/analytics/status").await;
    assert_eq!(status["store"], "postgres");
    // Both instances' log entries, from either.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, log) = get(&two, "/admin/requests").await;
        let instances: std::collections::HashSet<String> = log["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["instance"].as_str().unwrap().to_owned())
            .collect();
        if log["data"].as_array().unwrap().len() == 5 {
            assert_eq!(instances.len(), 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one.stop().await;
    two.stop().await;
    db.finish().await;
}
