//! Notifiers against a mock receiver on a loopback port, the history, and the SQLite store.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use switchyard_core::config::{NotifierConfig, NotifierKind, Secret};

use super::notify::{Notification, Notifier, SIGNATURE_HEADER, sign};
use super::store::AlertStore;
use super::*;

/// What the receiver saw.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A scripted answer: status, body, `Retry-After`.
type Scripted = (u16, &'static str, Option<&'static str>);

/// The receiver's scripted answers, in order; past the script it answers 200 `{"ok":true}`.
#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
    /// Answers after this long (a slow receiver).
    delay: Arc<Mutex<Duration>>,
}

async fn answer(
    State(receiver): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receiver.hits.lock().unwrap().push(Hit {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let delay = *receiver.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let next = receiver.script.lock().unwrap().pop_front();
    let (status, body, retry_after) = next.unwrap_or((200, r#"{"ok":true}"#, None));
    let mut response = (StatusCode::from_u16(status).unwrap(), body.to_owned()).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.parse().unwrap());
    }
    response
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let app = Router::new().fallback(answer).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, base)
    }

    fn script(&self, answers: &[Scripted]) {
        self.script.lock().unwrap().extend(answers.iter().copied());
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until `count` requests arrived.
    async fn wait_for(&self, count: usize) -> Vec<Hit> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let hits = self.hits();
                if hits.len() >= count {
                    return hits;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the receiver got the requests")
    }
}

fn notifier_config(name: &str, kind: NotifierKind) -> NotifierConfig {
    NotifierConfig {
        name: name.to_owned(),
        kind,
        queue: 8,
        max_attempts: 3,
        timeout: Duration::from_secs(5),
        retry_backoff: Duration::from_millis(10),
    }
}

fn record(id: &str) -> AlertRecord {
    AlertRecord {
        id: id.to_owned(),
        rule: "provider-errors".to_owned(),
        metric: "error_rate".to_owned(),
        scope: "provider".to_owned(),
        member: "flaky".to_owned(),
        severity: "critical".to_owned(),
        state: "firing".to_owned(),
        value: Some(0.42),
        threshold: 0.2,
        direction: "above".to_owned(),
        started_at: 1_700_000_000_000,
        resolved_at: None,
        message: "[CRITICAL] provider-errors firing: error_rate of provider flaky is 42.0% \
                  (above 20.0%)"
            .to_owned(),
        notifications: Vec::new(),
    }
}

struct Setup {
    notifier: Notifier,
    history: Arc<Mutex<History>>,
    metrics: Arc<AlertMetrics>,
}

fn setup(config: &NotifierConfig) -> Setup {
    let history = Arc::new(Mutex::new(History::new(10)));
    history.lock().unwrap().insert(record("a1"));
    let metrics = Arc::new(AlertMetrics::new());
    let notifier = Notifier::spawn(config, Arc::clone(&history), Arc::clone(&metrics)).unwrap();
    Setup {
        notifier,
        history,
        metrics,
    }
}

fn firing() -> Arc<Notification> {
    Arc::new(Notification {
        event: "firing",
        alert: record("a1"),
        timestamp_ms: 1_700_000_000_000,
    })
}

/// The delivery recorded on alert `a1` once it is no longer queued.
async fn outcome(history: &Arc<Mutex<History>>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let delivery = history
                .lock()
                .unwrap()
                .get_mut("a1")
                .and_then(|r| r.notifications.last().cloned());
            if let Some(delivery) = delivery
                && delivery.outcome != "queued"
            {
                return delivery;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the delivery finished")
}

fn metrics_text(metrics: &AlertMetrics) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry).unwrap();
    text
}

fn enqueue(setup: &Setup) {
    let delivery = setup.notifier.enqueue(firing(), 1);
    assert_eq!(delivery.outcome, "queued");
    setup
        .history
        .lock()
        .unwrap()
        .record_delivery("a1", delivery);
}

#[tokio::test]
async fn the_webhook_posts_the_alert_signed_with_hmac_sha256() {
    let (receiver, base) = Receiver::start().await;
    let setup = setup(&notifier_config(
        "hook",
        NotifierKind::Webhook {
            url: Secret::new(format!("{base}/hooks/alerts")),
            secret: Some(Secret::new("s3cret")),
        },
    ));
    enqueue(&setup);
    let hit = receiver.wait_for(1).await.remove(0);
    assert_eq!(hit.path, "/hooks/alerts");
    assert_eq!(hit.headers["content-type"], "application/json");
    assert_eq!(hit.headers["x-switchyard-event"], "firing");
    // The signature covers the raw body, which carries the timestamp.
    let signature = hit.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert_eq!(signature, sign(b"s3cret", &hit.body));
    assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64);
    assert_ne!(signature, sign(b"other", &hit.body));
    let body: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["event"], "firing");
    assert_eq!(
        body["timestamp"].as_u64().unwrap().to_string(),
        hit.headers["x-switchyard-timestamp"].to_str().unwrap()
    );
    let alert = &body["alert"];
    assert_eq!(alert["id"], "a1");
    assert_eq!(alert["rule"], "provider-errors");
    assert_eq!(alert["metric"], "error_rate");
    assert_eq!(alert["scope"], "provider");
    assert_eq!(alert["member"], "flaky");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["value"], 0.42);
    assert_eq!(alert["threshold"], 0.2);
    assert_eq!(alert["started_at"], 1_700_000_000_000u64);
    assert!(alert["resolved_at"].is_null());
    assert!(alert.get("notifications").is_none());
    let delivery = outcome(&setup.history).await;
    assert_eq!((delivery.outcome.as_str(), delivery.attempts), ("sent", 1));
    assert!(
        metrics_text(&setup.metrics)
            .contains(r#"switchyard_alert_notifications_total{notifier="hook",outcome="sent"} 1"#)
    );
}

#[tokio::test]
async fn a_webhook_answering_500_is_retried_and_a_400_is_not() {
    let (receiver, base) = Receiver::start().await;
    receiver.script(&[(500, "busy", None), (503, "still busy", Some("0"))]);
    let setup = setup(&notifier_config(
        "hook",
        NotifierKind::Webhook {
            url: Secret::new(format!("{base}/in")),
            secret: None,
        },
    ));
    enqueue(&setup);
    let delivery = outcome(&setup.history).await;
    assert_eq!(receiver.hits().len(), 3);
    assert!(receiver.hits()[0].headers.get(SIGNATURE_HEADER).is_none());
    assert_eq!((delivery.outcome.as_str(), delivery.attempts), ("sent", 3));
    // The first retry waits the backoff; the second what `Retry-After: 0` asked.
    assert_eq!(delivery.retry_delays_ms, vec![10, 0]);
    assert!(
        metrics_text(&setup.metrics)
            .contains(r#"switchyard_alert_notification_retries_total{notifier="hook"} 2"#)
    );

    receiver.script(&[(400, "bad payload", None)]);
    enqueue(&setup);
    let delivery = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let last = outcome(&setup.history).await;
            if last.attempts == 1 {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(delivery.outcome, "failed");
    assert_eq!(delivery.error.as_deref(), Some("HTTP 400: bad payload"));
    assert_eq!(receiver.hits().len(), 4);
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_gives_up_after_max_attempts() {
    let (receiver, base) = Receiver::start().await;
    receiver.script(&[(502, "a", None), (502, "b", None), (502, "c", None)]);
    let setup = setup(&notifier_config(
        "hook",
        NotifierKind::Webhook {
            url: Secret::new(format!("{base}/in")),
            secret: None,
        },
    ));
    enqueue(&setup);
    let delivery = outcome(&setup.history).await;
    assert_eq!(
        (delivery.outcome.as_str(), delivery.attempts),
        ("failed", 3)
    );
    assert_eq!(delivery.retry_delays_ms, vec![10, 20]);
    assert_eq!(delivery.error.as_deref(), Some("HTTP 502: c"));
}

#[tokio::test]
async fn slack_gets_text_and_blocks() {
    let (receiver, base) = Receiver::start().await;
    let setup = setup(&notifier_config(
        "chat",
        NotifierKind::Slack {
            url: Secret::new(format!("{base}/services/T0/B0/X0")),
        },
    ));
    enqueue(&setup);
    let hit = receiver.wait_for(1).await.remove(0);
    assert_eq!(hit.path, "/services/T0/B0/X0");
    let body: Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["text"], record("a1").message);
    assert_eq!(body["blocks"][0]["type"], "section");
    assert_eq!(body["blocks"][0]["text"]["text"], record("a1").message);
    let context = body["blocks"][1]["elements"][0]["text"].as_str().unwrap();
    assert!(
        context.contains("provider-errors") && context.contains("flaky"),
        "{context}"
    );
    assert_eq!(outcome(&setup.history).await.outcome, "sent");
}

#[tokio::test]
async fn telegram_sends_to_each_chat_and_honours_retry_after() {
    let (receiver, base) = Receiver::start().await;
    receiver.script(&[(
        429,
        r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 1","parameters":{"retry_after":1}}"#,
        None,
    )]);
    let setup = setup(&notifier_config(
        "tg",
        NotifierKind::Telegram {
            api_base: base.clone(),
            token: Secret::new("123:abc"),
            chat_ids: vec!["-1001".to_owned(), "@ops".to_owned()],
        },
    ));
    enqueue(&setup);
    let delivery = outcome(&setup.history).await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 3, "{hits:?}");
    for hit in &hits {
        assert_eq!(hit.path, "/bot123:abc/sendMessage");
    }
    let bodies: Vec<Value> = hits
        .iter()
        .map(|hit| serde_json::from_slice(&hit.body).unwrap())
        .collect();
    // The first chat was refused once (429), then sent; then the second chat.
    assert_eq!(bodies[0]["chat_id"], -1001);
    assert_eq!(bodies[1]["chat_id"], -1001);
    assert_eq!(bodies[2]["chat_id"], "@ops");
    assert_eq!(bodies[2]["text"], record("a1").message);
    assert_eq!((delivery.outcome.as_str(), delivery.attempts), ("sent", 2));
    assert_eq!(delivery.retry_delays_ms, vec![1_000]);
}

#[tokio::test]
async fn telegram_errors_never_show_the_token() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = notifier_config(
        "tg",
        NotifierKind::Telegram {
            api_base: format!("http://{closed}"),
            token: Secret::new("123:SECRET-TOKEN"),
            chat_ids: vec!["1".to_owned()],
        },
    );
    config.max_attempts = 2;
    let setup = setup(&config);
    enqueue(&setup);
    let delivery = outcome(&setup.history).await;
    assert_eq!(
        (delivery.outcome.as_str(), delivery.attempts),
        ("failed", 2)
    );
    let error = delivery.error.unwrap();
    assert!(error.contains("connect"), "{error}");
    assert!(
        !error.contains("SECRET-TOKEN") && !error.contains("/bot"),
        "{error}"
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let (receiver, base) = Receiver::start().await;
    *receiver.delay.lock().unwrap() = Duration::from_secs(3);
    let mut config = notifier_config(
        "slow",
        NotifierKind::Webhook {
            url: Secret::new(format!("{base}/in")),
            secret: None,
        },
    );
    config.queue = 1;
    let setup = setup(&config);
    // The worker takes the first and waits on the receiver; the second fills the queue.
    assert_eq!(setup.notifier.enqueue(firing(), 1).outcome, "queued");
    receiver.wait_for(1).await;
    assert_eq!(setup.notifier.enqueue(firing(), 1).outcome, "queued");
    let dropped = setup.notifier.enqueue(firing(), 1);
    assert_eq!(dropped.outcome, "dropped");
    assert_eq!(
        dropped.error.as_deref(),
        Some("the notifier's queue is full")
    );
    let text = metrics_text(&setup.metrics);
    assert!(
        text.contains(r#"switchyard_alert_notifications_dropped_total{notifier="slow"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_test_notification_reports_its_outcome() {
    let (receiver, base) = Receiver::start().await;
    receiver.script(&[(500, "down", None)]);
    let setup = setup(&notifier_config(
        "hook",
        NotifierKind::Webhook {
            url: Secret::new(format!("{base}/in")),
            secret: None,
        },
    ));
    let test = Arc::new(Notification {
        event: "test",
        alert: record("t1"),
        timestamp_ms: 5,
    });
    // A test gets one attempt: the operator waits for the answer.
    let delivery = setup.notifier.test(Arc::clone(&test), 5).await;
    assert_eq!(
        (delivery.outcome.as_str(), delivery.attempts),
        ("failed", 1)
    );
    let delivery = setup.notifier.test(test, 5).await;
    assert_eq!(delivery.outcome, "sent");
    assert_eq!(receiver.hits().len(), 2);
}

#[tokio::test]
async fn the_log_notifier_always_delivers() {
    let setup = setup(&NotifierConfig::log("log"));
    enqueue(&setup);
    let delivery = outcome(&setup.history).await;
    assert_eq!((delivery.outcome.as_str(), delivery.attempts), ("sent", 1));
}

#[test]
fn the_history_keeps_firing_alerts_and_the_newest_resolved_ones() {
    let mut history = History::new(2);
    for (index, id) in ["r1", "r2", "r3"].into_iter().enumerate() {
        let mut resolved = record(id);
        resolved.member = id.to_owned();
        resolved.started_at = index as u64;
        history.insert(resolved);
        history.resolve(
            "provider-errors",
            id,
            10 + index as u64,
            Some(0.0),
            "ok".to_owned(),
        );
    }
    let mut live = record("f1");
    live.started_at = 100;
    history.insert(live);
    let view = history.view(10);
    let ids = |records: &[AlertRecord]| records.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&view.firing), vec!["f1"]);
    assert_eq!(ids(&view.recent), vec!["f1", "r3", "r2"]);
    assert_eq!(view.recent[1].state, "resolved");
    assert_eq!(view.recent[1].resolved_at, Some(12));
    assert_eq!(ids(&history.view(1).recent), vec!["f1"]);
    // Every change is waiting for the store, once (r1 too, though no longer in memory).
    let dirty = history.take_dirty();
    assert_eq!(ids(&dirty), vec!["r1", "r2", "r3", "f1"]);
    assert!(history.take_dirty().is_empty());
}

#[tokio::test]
async fn the_sqlite_store_keeps_the_history_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = switchyard_core::config::StorageConfig {
        data_dir: Some(dir.path().to_owned()),
        postgres_url: None,
        redis_url: None,
    };
    let store = AlertStore::open(&storage).await.unwrap();
    let mut firing = record("f1");
    firing.notifications.push(Delivery {
        notifier: "hook".to_owned(),
        event: "firing".to_owned(),
        outcome: "sent".to_owned(),
        attempts: 2,
        at: 7,
        error: None,
        retry_delays_ms: vec![10],
    });
    let mut old = record("old");
    old.state = "resolved".to_owned();
    old.started_at = 1;
    old.resolved_at = Some(2);
    let mut newer = record("newer");
    newer.state = "resolved".to_owned();
    newer.started_at = 5;
    newer.resolved_at = Some(6);
    store
        .save(vec![firing.clone(), old.clone(), newer.clone()])
        .await
        .unwrap();
    drop(store);
    let store = AlertStore::open(&storage).await.unwrap();
    // All firing alerts, then the newest resolved ones up to the limit.
    assert_eq!(
        store.load(1).await.unwrap(),
        vec![firing.clone(), newer.clone()]
    );
    assert_eq!(store.load(10).await.unwrap(), vec![firing, newer, old]);
    store.prune(3).await.unwrap();
    assert_eq!(store.load(10).await.unwrap().len(), 2);
}

#[test]
fn counters_are_differenced_over_the_window() {
    use super::sources::{Sample, Samples};
    let window = Duration::from_secs(10);
    let mut samples = Samples::default();
    // A counter counting from zero at start: a window reaching back past the first sample
    // counts everything.
    samples.push(Sample::dropped_at(1_000, 3), window);
    assert_eq!(samples.growth(1_000, window, |s| s.dropped), 3);
    for second in 2..=30 {
        samples.push(Sample::dropped_at(second * 1_000, second * 2), window);
    }
    // At 30 s: 60 now, 40 at 20 s.
    assert_eq!(samples.growth(30_000, window, |s| s.dropped), 20);
    // Only what the longest window needs is kept.
    samples.push(Sample::dropped_at(31_000, 62), window);
    assert_eq!(samples.growth(31_000, window, |s| s.dropped), 20);
}

#[test]
fn a_rule_reads_the_live_tier_or_the_stored_minutes() {
    use super::sources::window_query;
    use switchyard_core::alerts::{AlertMetric, AlertScope, Direction, Severity};
    use switchyard_core::analytics::Tier;
    use switchyard_core::analytics::query::{Dim, Metric};
    let mut rule = switchyard_core::config::AlertRule {
        name: "r".to_owned(),
        metric: AlertMetric::ErrorRate,
        scope: AlertScope::Provider,
        member: None,
        budget: None,
        threshold: 0.1,
        direction: Direction::Above,
        window: Duration::from_secs(60),
        for_duration: Duration::ZERO,
        cooldown: Duration::ZERO,
        severity: Severity::Warning,
        notifiers: vec![0],
        min_requests: 1,
    };
    let now = 1_700_000_123_456;
    let query = window_query(&rule, vec![Metric::ErrorRate], now);
    assert_eq!(query.tier, Tier::Second);
    // Sixty whole seconds, the current one included.
    assert_eq!(query.to_ms, 1_700_000_124_000);
    assert_eq!(query.from_ms, 1_700_000_064_000);
    assert_eq!(query.interval_ms, 60_000);
    assert_eq!(query.group_by, vec![Dim::Provider]);
    assert!(query.filter.equals.is_empty());
    // One member: filtered, not split.
    rule.member = Some("alpha".to_owned());
    let query = window_query(&rule, vec![Metric::ErrorRate], now);
    assert!(query.group_by.is_empty());
    assert_eq!(
        query.filter.equals,
        vec![(Dim::Provider, "alpha".to_owned())]
    );
    // Past the live tier's 5 minutes, or per key: the stored minutes.
    rule.window = Duration::from_secs(3_600);
    let query = window_query(&rule, vec![Metric::Cost], now);
    assert_eq!(query.tier, Tier::Minute);
    assert_eq!(query.from_ms, Tier::Minute.bucket(now - 3_600_000));
    assert_eq!(query.to_ms, now + 1);
    rule.window = Duration::from_secs(60);
    rule.scope = AlertScope::Key;
    rule.member = None;
    let query = window_query(&rule, vec![Metric::Cost], now);
    assert_eq!(query.tier, Tier::Minute);
    assert_eq!(query.group_by, vec![Dim::Key]);
}
