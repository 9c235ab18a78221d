//! Helpers for the socket-level tests: an in-process gateway on a real loopback port, built
//! from a TOML config exactly as `switchyard serve` builds it, and small SSE utilities.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use switchyard::AppState;
use switchyard::server;
use switchyard_core::config::{parse_toml, validate};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running gateway.
pub struct TestGateway {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The gateway's state (config, tracker), for white-box checks.
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestGateway {
    /// Starts a gateway from `toml`, with `env` as its environment.
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with_clock(
            toml,
            env,
            std::sync::Arc::new(switchyard::tracker::TokioClock::new()),
        )
        .await
    }

    /// Starts a gateway whose breakers and cooldowns run on `clock`.
    pub async fn start_with_clock(
        toml: &str,
        env: &[(&str, &str)],
        clock: std::sync::Arc<dyn switchyard_core::clock::Clock>,
    ) -> Self {
        switchyard::install_crypto_provider();
        let mut env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // Tests keep analytics in memory unless they name a data directory.
        env.entry(switchyard_core::config::DATA_DIR_ENV.to_owned())
            .or_insert_with(|| ":memory:".to_owned());
        let config = validate(&parse_toml(toml).unwrap(), &env).unwrap();
        let state = AppState::with_clock(config, clock).await.unwrap();
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        TestGateway {
            base,
            state,
            shutdown: Some(tx),
            task,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// A plain HTTP client (no TLS needed on loopback).
pub fn client() -> reqwest::Client {
    switchyard::install_crypto_provider();
    reqwest::Client::builder().build().unwrap()
}

/// A response header's value; panics naming it when it is missing.
pub fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// GETs `url` and returns the body as text (for `/metrics`).
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// GETs `url` (with `bearer` as the key, if any) and parses the JSON answer.
pub async fn get_json(url: &str, bearer: Option<&str>) -> serde_json::Value {
    let mut request = client().get(url);
    if let Some(key) = bearer {
        request = request.bearer_auth(key);
    }
    let text = request.send().await.unwrap().text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// The request log's rows, newest first, once at least `count` are there (it is written at
/// the analytics flush, every second). `bearer`: the admin key, if the gateway has one.
pub async fn logged_requests(
    gateway: &TestGateway,
    bearer: Option<&str>,
    count: usize,
) -> Vec<serde_json::Value> {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let page = get_json(&gateway.url("/admin/requests?limit=50"), bearer).await;
            let rows = page["data"].as_array().cloned().unwrap_or_default();
            if rows.len() >= count {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the requests reached the log")
}

/// POSTs JSON and returns status, headers and the parsed body.
pub async fn post_json(
    url: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut request = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, headers, body)
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The text a stream of OpenAI chunks adds up to (choice 0).
pub fn stream_text(data: &[String]) -> String {
    data.iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Config for one OpenAI-shaped, one Anthropic-shaped and one Gemini-shaped provider, all
/// served by `mock`, plus extra TOML appended.
pub fn three_formats(mock: &str, extra: &str) -> String {
    format!(
        r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock}/v1"
api_key_env = "OPENAI_KEY"
models = ["mock-*"]

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock}"
api_key_env = "ANTHROPIC_KEY"

[[providers]]
name = "gemini"
kind = "gemini"
base_url = "{mock}"
api_key_env = "GEMINI_KEY"
{extra}
"#
    )
}

/// The provider keys `three_formats` reads.
pub const PROVIDER_KEYS: &[(&str, &str)] = &[
    ("OPENAI_KEY", "provider-key"),
    ("ANTHROPIC_KEY", "provider-key"),
    ("GEMINI_KEY", "provider-key"),
];

/// The test Postgres: `SWITCHYARD_TEST_POSTGRES_URL`, or the local one CI starts.
pub fn postgres_base_url() -> String {
    std::env::var("SWITCHYARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// `base` with its connections in `schema` (and named after it in `pg_stat_activity`).
pub fn with_schema(base: &str, schema: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-csearch_path%3D{schema}&application_name={schema}")
}

/// A Postgres schema of a test's own, made afresh (so parallel tests and earlier runs do not
/// meet), and a URL whose connections use it.
pub struct TestDb {
    /// A connection outside the schema, for checks and the clean-up.
    pub admin: tokio_postgres::Client,
    /// The schema.
    pub schema: String,
    /// A URL for the code under test.
    pub url: String,
}

impl TestDb {
    /// Drops and creates `schema`.
    pub async fn new(schema: &str) -> TestDb {
        let base = postgres_base_url();
        let (admin, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot reach the test Postgres (set SWITCHYARD_TEST_POSTGRES_URL; CI \
                     starts one): {error:?}"
                )
            });
        tokio::spawn(connection);
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"
            ))
            .await
            .unwrap();
        TestDb {
            url: with_schema(&base, schema),
            admin,
            schema: schema.to_owned(),
        }
    }

    /// Drops the schema (close the code under test's connections first).
    pub async fn finish(self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .unwrap();
    }
}

/// Sends `method path` with `key` as the bearer and an optional JSON body; returns the
/// status and the body (JSON, or the text as a JSON string).
pub async fn call(
    gateway: &TestGateway,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
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
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Creates a virtual key through the admin API (as `admin`); returns its id and secret.
pub async fn create_key(
    gateway: &TestGateway,
    admin: &str,
    settings: serde_json::Value,
) -> (String, String) {
    let (status, key) = call(
        gateway,
        reqwest::Method::POST,
        "/admin/keys",
        admin,
        Some(settings),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    (
        key["id"].as_str().unwrap().to_owned(),
        key["secret"].as_str().unwrap().to_owned(),
    )
}

/// A one-message chat with `model` as `key`.
pub async fn chat_as(gateway: &TestGateway, key: &str, model: &str) -> (u16, serde_json::Value) {
    call(
        gateway,
        reqwest::Method::POST,
        "/v1/chat/completions",
        key,
        Some(serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await
}
