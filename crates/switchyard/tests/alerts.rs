//! Alerts end to end: a gateway in front of the mock provider; the provider starts failing,
//! the error-rate alert fires within its window, the provider recovers, and a mock webhook
//! receiver gets exactly one signed alert and one resolution. Also `GET /admin/alerts`,
//! `POST /admin/alerts/test`, the `/metrics` series, a breaker-open alert, a history that
//! survives a restart (SQLite), and the Postgres history store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use common::{TestDb, TestGateway, call};
use serde_json::{Value, json};
use switchyard::alerts::notify::sign;
use switchyard::alerts::store::AlertStore;
use switchyard::alerts::{AlertRecord, Delivery};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

const MASTER: &str = "sk-master-for-alert-tests";
const SECRET: &str = "webhook-signing-secret";

/// A webhook receiver: every body it got, with its signature header.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Value)>>>);

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let signature = headers
        .get("x-switchyard-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // The signature must verify over the raw body.
    assert_eq!(signature, sign(SECRET.as_bytes(), &body));
    receiver
        .0
        .lock()
        .unwrap()
        .push((signature, serde_json::from_slice(&body).unwrap()));
    "ok"
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let app = Router::new().fallback(receive).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn events(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| body.clone())
            .collect()
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|b| b["event"] == event).count()
    }
}

fn config(mock: &MockHandle, hook: &str, extra: &str) -> String {
    format!(
        r#"
[server]
master_key_env = "TEST_MASTER"

[[providers]]
name = "alpha"
kind = "openai"
base_url = "{mock}/v1"
models = ["mock-*"]

[[routes]]
model = "chat"
targets = [ {{ provider = "alpha", model = "mock-1" }} ]

# One attempt per request, and a breaker that stays closed: every failure reaches the
# analytics as a failed request.
[routing]
max_attempts = 1
[routing.breaker]
consecutive_failures = 100000
min_requests = 100000

[alerts]
interval = "100ms"

[[alerts.notifiers]]
name = "hook"
kind = "webhook"
url = "{hook}"
secret_env = "HOOK_SECRET"
retry_backoff = "10ms"

[[alerts.rules]]
name = "alpha-errors"
metric = "error_rate"
scope = "provider"
threshold = 0.5
window = "2s"
for = "300ms"
cooldown = "1m"
severity = "critical"
{extra}
"#,
        mock = mock.base_url()
    )
}

async fn gateway(text: &str, data_dir: Option<&str>) -> TestGateway {
    let mut env = vec![("TEST_MASTER", MASTER), ("HOOK_SECRET", SECRET)];
    if let Some(dir) = data_dir {
        env.push(("SWITCHYARD_DATA_DIR", dir));
    }
    TestGateway::start(text, &env).await
}

async fn chat(gateway: &TestGateway) -> u16 {
    common::chat_as(gateway, MASTER, "chat").await.0
}

/// Sends a request every 20 ms until `done` holds (at most 15 s).
async fn traffic_until(gateway: &TestGateway, done: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(15), async {
        while !done() {
            chat(gateway).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the condition was reached in time");
}

async fn scrape(gateway: &TestGateway) -> String {
    let (status, body) = call(gateway, reqwest::Method::GET, "/metrics", MASTER, None).await;
    assert_eq!(status, 200);
    body.as_str().unwrap().to_owned()
}

async fn alerts(gateway: &TestGateway) -> Value {
    let (status, body) = call(gateway, reqwest::Method::GET, "/admin/alerts", MASTER, None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `GET /admin/alerts` until `check` holds (at most 10 s).
async fn alerts_until(gateway: &TestGateway, check: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let body = alerts(gateway).await;
            if check(&body) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the alerts reached the expected state")
}

#[tokio::test]
async fn a_provider_outage_sends_one_alert_and_one_resolution() {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let (receiver, hook) = Receiver::start().await;
    let gateway = gateway(&config(&mock, &hook, ""), None).await;
    assert_eq!(chat(&gateway).await, 200);

    // The provider fails: the alert fires once, however long the outage lasts.
    mock.set_behavior(Behavior::status(500));
    traffic_until(&gateway, || receiver.count("firing") >= 1).await;
    let firing = receiver.events().remove(0);
    assert_eq!(firing["event"], "firing");
    let alert = &firing["alert"];
    assert_eq!(alert["rule"], "alpha-errors");
    assert_eq!(alert["metric"], "error_rate");
    assert_eq!(alert["scope"], "provider");
    assert_eq!(alert["member"], "alpha");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["state"], "firing");
    assert!(alert["value"].as_f64().unwrap() > 0.5, "{alert}");
    assert_eq!(alert["threshold"], 0.5);
    let id = alert["id"].as_str().unwrap().to_owned();
    // More failing traffic over several ticks: no second alert.
    for _ in 0..10 {
        chat(&gateway).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(receiver.count("firing"), 1);
    let body = alerts_until(&gateway, |b| {
        b["firing"][0]["notifications"][0]["outcome"] == "sent"
    })
    .await;
    assert_eq!(body["firing"].as_array().unwrap().len(), 1);
    assert_eq!(body["firing"][0]["id"], id.as_str());
    assert_eq!(body["recent"][0]["id"], id.as_str());
    let metrics = scrape(&gateway).await;
    assert!(
        metrics.contains(r#"switchyard_alerts_firing{rule="alpha-errors",severity="critical"} 1"#),
        "{metrics}"
    );

    // It recovers: the window's errors age out and one resolution goes out.
    mock.set_behavior(Behavior::default());
    traffic_until(&gateway, || receiver.count("resolved") >= 1).await;
    for _ in 0..10 {
        chat(&gateway).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(receiver.count("firing"), 1);
    assert_eq!(receiver.count("resolved"), 1);
    let resolved = receiver
        .events()
        .into_iter()
        .find(|b| b["event"] == "resolved")
        .unwrap();
    assert_eq!(resolved["alert"]["id"], id.as_str());
    assert_eq!(resolved["alert"]["state"], "resolved");
    assert!(
        resolved["alert"]["resolved_at"].as_u64().unwrap() >= alert["started_at"].as_u64().unwrap()
    );
    assert!(resolved["alert"]["value"].as_f64().unwrap() <= 0.5);

    let body = alerts_until(&gateway, |b| {
        b["recent"][0]["notifications"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|d| d["outcome"] == "sent"))
    })
    .await;
    assert_eq!(body["firing"], json!([]));
    let record = &body["recent"][0];
    for field in [
        "id",
        "rule",
        "metric",
        "scope",
        "member",
        "severity",
        "state",
        "value",
        "threshold",
        "started_at",
        "resolved_at",
        "message",
    ] {
        assert!(record.get(field).is_some(), "{field} missing: {record}");
    }
    assert_eq!(record["state"], "resolved");
    assert!(
        record["message"]
            .as_str()
            .unwrap()
            .starts_with("[RESOLVED] alpha-errors")
    );
    let metrics = scrape(&gateway).await;
    for line in [
        r#"switchyard_alerts_firing{rule="alpha-errors",severity="critical"} 0"#,
        r#"switchyard_alert_transitions_total{rule="alpha-errors",state="firing"} 1"#,
        r#"switchyard_alert_transitions_total{rule="alpha-errors",state="resolved"} 1"#,
        r#"switchyard_alert_notifications_total{notifier="hook",outcome="sent"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    // The exposition still ends once.
    assert_eq!(metrics.matches("# EOF").count(), 1);
    assert!(metrics.ends_with("# EOF\n"));
    gateway.stop().await;
}

#[tokio::test]
async fn an_open_breaker_fires_and_closing_it_resolves() {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let (receiver, hook) = Receiver::start().await;
    let rule = r#"
[[alerts.rules]]
name = "alpha-breaker"
metric = "breaker_open"
member = "alpha"
"#;
    let text = config(&mock, &hook, rule).replace(
        "consecutive_failures = 100000",
        "consecutive_failures = 2\ncooldown = \"1h\"\nmax_cooldown = \"1h\"",
    );
    let gateway = gateway(&text, None).await;
    mock.set_behavior(Behavior::status(500));
    traffic_until(&gateway, || {
        receiver
            .events()
            .iter()
            .any(|b| b["alert"]["rule"] == "alpha-breaker" && b["event"] == "firing")
    })
    .await;
    let fired = receiver
        .events()
        .into_iter()
        .find(|b| b["alert"]["rule"] == "alpha-breaker")
        .unwrap();
    assert_eq!(fired["alert"]["member"], "alpha");
    assert_eq!(fired["alert"]["value"], 1.0);
    // An operator's `enable` closes the breakers.
    mock.set_behavior(Behavior::default());
    let (status, _) = call(
        &gateway,
        reqwest::Method::POST,
        "/admin/providers/alpha/enable",
        MASTER,
        None,
    )
    .await;
    assert_eq!(status, 200);
    alerts_until(&gateway, |b| {
        b["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["rule"] == "alpha-breaker" && a["state"] == "resolved")
    })
    .await;
    gateway.stop().await;
}

#[tokio::test]
async fn the_test_endpoint_reports_each_delivery() {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let (receiver, hook) = Receiver::start().await;
    let notifiers = r#"
[[alerts.notifiers]]
name = "logs"
kind = "log"
"#;
    let gateway = gateway(&config(&mock, &hook, notifiers), None).await;
    let test = |body: Option<Value>| {
        call(
            &gateway,
            reqwest::Method::POST,
            "/admin/alerts/test",
            MASTER,
            body,
        )
    };
    let (status, body) = test(None).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["notifier"], "hook");
    assert_eq!(results[0]["outcome"], "sent");
    assert_eq!(results[0]["event"], "test");
    assert_eq!(results[1]["notifier"], "logs");
    assert_eq!(results[1]["outcome"], "sent");
    assert_eq!(receiver.count("test"), 1);
    let (status, body) = test(Some(json!({"notifier": "logs"}))).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert_eq!(receiver.count("test"), 1);
    let (status, body) = test(Some(json!({"notifier": "pager"}))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "notifier");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("hook, logs")
    );
    // Tests are not alerts.
    assert_eq!(alerts(&gateway).await["recent"], json!([]));
    // Behind the admin key like every /admin endpoint.
    let (status, _) = call(
        &gateway,
        reqwest::Method::POST,
        "/admin/alerts/test",
        "wrong",
        None,
    )
    .await;
    assert_eq!(status, 401);
    gateway.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_the_history_and_does_not_notify_an_ongoing_alert_again() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap().to_owned();
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let (receiver, hook) = Receiver::start().await;
    let text = config(&mock, &hook, "");
    let first = gateway(&text, Some(&dir)).await;
    mock.set_behavior(Behavior::status(500));
    traffic_until(&first, || receiver.count("firing") >= 1).await;
    alerts_until(&first, |b| {
        b["firing"][0]["notifications"][0]["outcome"] == "sent"
    })
    .await;
    first.stop().await;

    // Still failing after the restart: the alert is restored as firing, not sent again.
    let second = gateway(&text, Some(&dir)).await;
    let body = alerts(&second).await;
    assert_eq!(body["firing"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["firing"][0]["notifications"][0]["outcome"], "sent");
    for _ in 0..15 {
        chat(&second).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(receiver.count("firing"), 1);
    mock.set_behavior(Behavior::default());
    traffic_until(&second, || receiver.count("resolved") >= 1).await;
    second.stop().await;
}

fn record(id: &str, state: &str, started_at: u64) -> AlertRecord {
    AlertRecord {
        id: id.to_owned(),
        rule: "r".to_owned(),
        metric: "error_rate".to_owned(),
        scope: "provider".to_owned(),
        member: "alpha".to_owned(),
        severity: "warning".to_owned(),
        state: state.to_owned(),
        value: Some(0.7),
        threshold: 0.5,
        direction: "above".to_owned(),
        started_at,
        resolved_at: (state == "resolved").then_some(started_at + 1),
        message: format!("alert {id}"),
        notifications: vec![Delivery {
            notifier: "hook".to_owned(),
            event: "firing".to_owned(),
            outcome: "sent".to_owned(),
            attempts: 1,
            at: started_at,
            error: None,
            retry_delays_ms: Vec::new(),
        }],
    }
}

#[tokio::test]
async fn the_postgres_store_keeps_the_history() {
    let db = TestDb::new("alerts_store").await;
    let storage = switchyard_core::config::StorageConfig {
        data_dir: None,
        postgres_url: Some(switchyard_core::config::Secret::new(db.url.clone())),
        redis_url: None,
    };
    let store = AlertStore::open(&storage).await.unwrap();
    let mut firing = record("f", "firing", 30);
    store
        .save(vec![
            firing.clone(),
            record("a", "resolved", 10),
            record("b", "resolved", 20),
        ])
        .await
        .unwrap();
    // A change rewrites the row.
    firing.state = "resolved".to_owned();
    firing.resolved_at = Some(40);
    firing.notifications.push(Delivery {
        event: "resolved".to_owned(),
        ..firing.notifications[0].clone()
    });
    store.save(vec![firing.clone()]).await.unwrap();
    let loaded = store.load(2).await.unwrap();
    assert_eq!(loaded, vec![firing, record("b", "resolved", 20)]);
    // A second store on the same schema migrates nothing and reads the same.
    let again = AlertStore::open(&storage).await.unwrap();
    assert_eq!(again.load(10).await.unwrap().len(), 3);
    again.prune(25).await.unwrap();
    assert_eq!(again.load(10).await.unwrap().len(), 1);
    let versions: i64 = db
        .admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.switchyard_alerts_migrations",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 1);
    drop((store, again));
    db.finish().await;
}

#[tokio::test]
async fn budget_spend_per_key_and_rate_limit_rules_read_their_sources() {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let (_receiver, hook) = Receiver::start().await;
    let extra = r#"
[[alerts.rules]]
name = "spend-per-key"
metric = "cost_per_hour"
scope = "key"
threshold = 0.0

[[alerts.rules]]
name = "daily-used"
metric = "budget_used"
budget = "daily"
threshold = 0.000001

[[alerts.rules]]
name = "limited"
metric = "rate_limited_rate"
threshold = 0.1

[[prices]]
provider = "alpha"
model = "mock-1"
input = 1000.0
output = 1000.0

[[budgets.limits]]
name = "daily"
scope = "global"
amount_usd = 10.0
period = "daily"

[[rate_limits.limits]]
scope = "global"
requests = 2
per = "1m"
"#;
    let gateway = gateway(&config(&mock, &hook, extra), None).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(chat(&gateway).await);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    let body = alerts_until(&gateway, |b| b["firing"].as_array().unwrap().len() == 3).await;
    let firing = body["firing"].as_array().unwrap();
    let by_rule = |rule: &str| {
        firing
            .iter()
            .find(|a| a["rule"] == rule)
            .unwrap_or_else(|| panic!("{rule} not firing: {body}"))
    };
    // Per key, from the store's minute rollups; the master key's principal.
    let spend = by_rule("spend-per-key");
    assert_eq!(spend["scope"], "key");
    assert_eq!(spend["member"], "master");
    assert!(spend["value"].as_f64().unwrap() > 0.0);
    let budget = by_rule("daily-used");
    assert_eq!(budget["scope"], "budget");
    assert_eq!(budget["member"], "daily/*");
    assert!(budget["value"].as_f64().unwrap() > 0.000001);
    let limited = by_rule("limited");
    assert_eq!(limited["member"], "*");
    // Refusals over requests (4 of 6 in the end; the value is what it was when it fired).
    let value = limited["value"].as_f64().unwrap();
    assert!(value > 0.1 && value <= 1.0, "{limited}");
    gateway.stop().await;
}
