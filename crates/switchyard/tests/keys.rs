//! Virtual keys over real sockets: created through the admin API (secret shown once, stored
//! hashed), used by clients, limited to their models, refused once revoked, rotated or
//! expired, kept out of the admin API, and seen by a second gateway on the same data
//! directory within a second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{TestGateway, client};
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

async fn call(
    gateway: &TestGateway,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client().request(method, gateway.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn create(gateway: &TestGateway, settings: Value) -> (String, String) {
    let (status, key) = call(
        gateway,
        reqwest::Method::POST,
        "/admin/keys",
        MASTER,
        Some(settings),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    (
        key["id"].as_str().unwrap().to_owned(),
        key["secret"].as_str().unwrap().to_owned(),
    )
}

async fn chat(gateway: &TestGateway, key: &str, model: &str) -> (u16, Value) {
    call(
        gateway,
        reqwest::Method::POST,
        "/v1/chat/completions",
        key,
        Some(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await
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
    let rows = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, page) = call(
                &gateway,
                reqwest::Method::GET,
                "/admin/requests?limit=5",
                MASTER,
                None,
            )
            .await;
            if page["data"].as_array().is_some_and(|rows| !rows.is_empty()) {
                return page;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(rows["data"][0]["key"], id.as_str());
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
