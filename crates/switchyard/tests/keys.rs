//! Virtual keys over real sockets: created through the admin API (secret shown once, stored
//! hashed), used by clients, limited to their models, refused once revoked, rotated or
//! expired, kept out of the admin API, and seen by a second gateway on the same data
//! directory within a second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{TestGateway, call, client};
use serde_json::{Value, json};
use switchyard_testkit::mock::{MockHandle, MockProvider};

const MASTER: &str = "sk-master-for-key-tests";

fn config(mock: &MockHandle) -> String {
    format!(
        "[server]\nmaster_key_env = \"TEST_MASTER\"\n\
         [[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n",
        mock.base_url()
    )
}

async fn setup() -> (MockHandle, TestGateway) {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let gateway = TestGateway::start(&config(&mock), &[("TEST_MASTER", MASTER)]).await;
    (mock, gateway)
}

async fn create(gateway: &TestGateway, settings: Value) -> (String, String) {
    common::create_key(gateway, MASTER, settings).await
}

async fn chat(gateway: &TestGateway, key: &str, model: &str) -> (u16, Value) {
    common::chat_as(gateway, key, model).await
}

#[tokio::test]
async fn a_created_key_works_until_it_is_revoked() {
    let (_mock, gateway) = setup().await;
    let (id, secret) = create(
        &gateway,
        json!({"name": "ci", "team": "platform", "tags": ["ci"]}),
    )
    .await;
    assert!(secret.starts_with("sk-sy-"));
    let (status, answer) = chat(&gateway, &secret, "mock-a").await;
    assert_eq!(status, 200, "{answer}");

    // The request log carries the key's tags, and filters on them (once flushed).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let logged = loop {
        let (status, page) = call(
            &gateway,
            reqwest::Method::GET,
            "/admin/requests?tag=ci",
            MASTER,
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        if let Some(row) = page["data"].as_array().and_then(|rows| rows.first()) {
            break row.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never logged");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(logged["key"], id);
    assert_eq!(logged["tags"], json!(["ci"]));
    let (_, other) = call(
        &gateway,
        reqwest::Method::GET,
        "/admin/requests?tag=c",
        MASTER,
        None,
    )
    .await;
    assert_eq!(other["data"], json!([]), "a tag matches whole");

    // Listed and shown without the secret.
    let (_, listed) = call(&gateway, reqwest::Method::GET, "/admin/keys", MASTER, None).await;
    let text = listed.to_string();
    assert!(text.contains(&id) && text.contains("platform"), "{text}");
    assert!(
        !text.contains(&secret[8..]),
        "the secret is never shown again"
    );
    let (status, shown) = call(
        &gateway,
        reqwest::Method::GET,
        &format!("/admin/keys/{id}"),
        MASTER,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(shown.get("secret").is_none());
    assert_eq!(shown["prefix"].as_str().unwrap()[..10], secret[..10]);

    let (status, revoked) = call(
        &gateway,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        MASTER,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at_ms"].as_u64().is_some());
    let (status, error) = chat(&gateway, &secret, "mock-a").await;
    assert_eq!(status, 401, "{error}");
    assert_eq!(error["error"]["type"], "authentication_error");
}

#[tokio::test]
async fn rotation_disabling_and_expiry() {
    let (_mock, gateway) = setup().await;
    let (id, old) = create(&gateway, json!({"name": "rotating"})).await;
    let (status, rotated) = call(
        &gateway,
        reqwest::Method::POST,
        &format!("/admin/keys/{id}/rotate"),
        MASTER,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat(&gateway, &old, "mock-a").await.0, 401);
    assert_eq!(chat(&gateway, &new, "mock-a").await.0, 200);

    let path = format!("/admin/keys/{id}");
    let patch = |body: Value| call(&gateway, reqwest::Method::PATCH, &path, MASTER, Some(body));
    assert_eq!(patch(json!({"enabled": false})).await.0, 200);
    let (status, error) = chat(&gateway, &new, "mock-a").await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (401, Some("key_disabled"))
    );
    assert_eq!(
        patch(json!({"enabled": true, "expires_at_ms": 1})).await.0,
        200
    );
    let (status, error) = chat(&gateway, &new, "mock-a").await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (401, Some("key_expired"))
    );
    let (status, error) = patch(json!({"priority": "urgent"})).await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = patch(json!({"budget_usd": -5})).await;
    assert_eq!(status, 400, "{error}");
    let (status, error) = patch(json!({"budget_period": "fortnightly"})).await;
    assert_eq!(status, 400, "{error}");
    let (status, key) = patch(json!({"budget_usd": 12.5, "budget_period": "weekly"})).await;
    assert_eq!(status, 200, "{key}");
    assert_eq!(
        (key["budget_usd"].as_f64(), key["budget_period"].as_str()),
        (Some(12.5), Some("weekly"))
    );
    let (status, _) = call(
        &gateway,
        reqwest::Method::PATCH,
        "/admin/keys/key_nope",
        MASTER,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_key_is_limited_to_its_models() {
    let (mock, gateway) = setup().await;
    let (_, secret) = create(&gateway, json!({"name": "narrow", "models": ["mock-a"]})).await;
    assert_eq!(chat(&gateway, &secret, "mock-a").await.0, 200);
    let (status, error) = chat(&gateway, &secret, "mock-b").await;
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["code"], "model_not_allowed");
    assert_eq!(mock.calls(), 1, "the refused request never went upstream");
}

#[tokio::test]
async fn virtual_keys_cannot_use_the_admin_api_and_anyone_else_needs_a_key() {
    let (_mock, gateway) = setup().await;
    let (_, secret) = create(&gateway, json!({"name": "app"})).await;
    for (method, path) in [
        (reqwest::Method::GET, "/admin/keys"),
        (reqwest::Method::POST, "/admin/keys"),
        (reqwest::Method::GET, "/admin/providers"),
        (reqwest::Method::GET, "/metrics"),
    ] {
        let (status, error) =
            call(&gateway, method, path, &secret, Some(json!({"name": "x"}))).await;
        assert_eq!(status, 403, "{path}: {error}");
        assert_eq!(error["error"]["code"], "admin_only");
    }
    let (status, _) = call(&gateway, reqwest::Method::GET, "/admin/keys", "", None).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &gateway,
        reqwest::Method::GET,
        "/admin/keys",
        "sk-sy-made-up",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &gateway,
        reqwest::Method::POST,
        "/admin/keys",
        MASTER,
        Some(json!({"name": ""})),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn requests_are_accounted_to_the_key() {
    let (_mock, gateway) = setup().await;
    let (id, secret) = create(&gateway, json!({"name": "accounted"})).await;
    assert_eq!(chat(&gateway, &secret, "mock-a").await.0, 200);
    let rows = common::logged_requests(&gateway, Some(MASTER), 1).await;
    assert_eq!(rows[0]["key"], id.as_str());
}

#[tokio::test]
async fn a_second_gateway_on_the_same_data_directory_follows_within_a_second() {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let env = [
        ("TEST_MASTER", MASTER),
        ("SWITCHYARD_DATA_DIR", data_dir.as_str()),
    ];
    let first = TestGateway::start(&config(&mock), &env).await;
    let second = TestGateway::start(&config(&mock), &env).await;
    let (id, secret) = create(&first, json!({"name": "shared"})).await;
    let waited = until(&second, &secret, 200).await;
    assert!(waited < Duration::from_secs(1), "seen after {waited:?}");
    call(
        &first,
        reqwest::Method::DELETE,
        &format!("/admin/keys/{id}"),
        MASTER,
        None,
    )
    .await;
    let waited = until(&second, &secret, 401).await;
    assert!(waited < Duration::from_secs(1), "revoked after {waited:?}");
}

/// How long until `gateway` answers `status` to a chat with `key`.
async fn until(gateway: &TestGateway, key: &str, status: u16) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), async {
        while chat(gateway, key, "mock-a").await.0 != status {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the second gateway followed");
    started.elapsed()
}

#[tokio::test]
async fn a_key_has_its_own_request_and_token_limits() {
    let (_mock, gateway) = setup().await;
    let (_, limited) = create(&gateway, json!({"name": "small", "rpm": 2, "tpm": 100_000})).await;
    let (_, other) = create(&gateway, json!({"name": "other"})).await;
    for _ in 0..2 {
        assert_eq!(chat(&gateway, &limited, "mock-a").await.0, 200);
    }
    let (status, error) = chat(&gateway, &limited, "mock-a").await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key-rpm"),
        "{error}"
    );
    // Other keys and the master key are not held back by it.
    assert_eq!(chat(&gateway, &other, "mock-a").await.0, 200);
    assert_eq!(chat(&gateway, MASTER, "mock-a").await.0, 200);

    let (_, tight) = create(&gateway, json!({"name": "tight", "tpm": 100})).await;
    let (status, error) = call(
        &gateway,
        reqwest::Method::POST,
        "/v1/chat/completions",
        &tight,
        Some(json!({"model": "mock-a", "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(status, 429, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too large"),
        "{error}"
    );
}

#[tokio::test]
async fn low_priority_keys_are_shed_first() {
    let mock = MockProvider::builder()
        .name("alpha")
        .behavior(switchyard_testkit::mock::Behavior::latency(400))
        .spawn()
        .await
        .unwrap();
    let text = format!("[rate_limits]\nmax_in_flight = 10\n{}", config(&mock));
    let gateway = TestGateway::start(&text, &[("TEST_MASTER", MASTER)]).await;
    let (_, low) = create(&gateway, json!({"name": "batch", "priority": "low"})).await;
    let (_, high) = create(&gateway, json!({"name": "interactive", "priority": "high"})).await;
    // Seven normal requests in flight: at the low class's share (70%), under the others'.
    let busy: Vec<_> = (0..7)
        .map(|_| {
            let url = gateway.url("/v1/chat/completions");
            tokio::spawn(async move {
                client()
                    .post(url)
                    .bearer_auth(MASTER)
                    .header("content-type", "application/json")
                    .body(json!({"model": "mock-a", "messages": [{"role": "user", "content": "slow"}]}).to_string())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (_, state) = call(
                &gateway,
                reqwest::Method::GET,
                "/admin/ratelimits",
                MASTER,
                None,
            )
            .await;
            if state["in_flight"] == 7 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("seven in flight");
    let (status, error) = chat(&gateway, &low, "mock-a").await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(chat(&gateway, &high, "mock-a").await.0, 200);
    for task in busy {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(
        chat(&gateway, &low, "mock-a").await.0,
        200,
        "admitted once the load is gone"
    );
}

/// The `x-switchyard-cache` status of a chat for `prompt` with `key`.
async fn cache_status(gateway: &TestGateway, key: &str, prompt: &str) -> String {
    let response = client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(
            json!({"model": "mock-a", "messages": [{"role": "user", "content": prompt}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    response.headers()["x-switchyard-cache"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn one_key_never_reads_another_keys_cached_answers() {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let text = format!("[cache]\nenabled = true\n{}", config(&mock));
    let gateway = TestGateway::start(&text, &[("TEST_MASTER", MASTER)]).await;
    let (_, first) = create(&gateway, json!({"name": "tenant-a", "team": "t"})).await;
    let (_, second) = create(&gateway, json!({"name": "tenant-b", "team": "t"})).await;
    assert_eq!(cache_status(&gateway, &first, "private").await, "MISS");
    assert_eq!(cache_status(&gateway, &first, "private").await, "HIT");
    assert_eq!(
        cache_status(&gateway, &second, "private").await,
        "MISS",
        "another key's answer is not shared"
    );
    assert_eq!(mock.calls(), 2);

    // With `scope = "team"`, keys of one team share.
    let text = format!(
        "[cache]\nenabled = true\nscope = \"team\"\n{}",
        config(&mock)
    );
    let gateway = TestGateway::start(&text, &[("TEST_MASTER", MASTER)]).await;
    let (_, first) = create(&gateway, json!({"name": "a", "team": "t"})).await;
    let (_, second) = create(&gateway, json!({"name": "b", "team": "t"})).await;
    let (_, outsider) = create(&gateway, json!({"name": "c", "team": "u"})).await;
    assert_eq!(cache_status(&gateway, &first, "team").await, "MISS");
    assert_eq!(
        cache_status(&gateway, &second, "team").await,
        "HIT",
        "same team"
    );
    assert_eq!(
        cache_status(&gateway, &outsider, "team").await,
        "MISS",
        "another team"
    );
}

#[tokio::test]
async fn a_master_key_that_looks_like_a_virtual_key_still_works() {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let master = "sk-sy-chosen-by-the-operator";
    let gateway = TestGateway::start(&config(&mock), &[("TEST_MASTER", master)]).await;
    assert_eq!(chat(&gateway, master, "mock-a").await.0, 200);
    let (status, _) = call(&gateway, reqwest::Method::GET, "/admin/keys", master, None).await;
    assert_eq!(status, 200);
}
