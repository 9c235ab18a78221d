//! Notifiers: where fired and resolved alerts are sent.
//!
//! Each notifier has a bounded queue and one worker task. The evaluation task only
//! `try_send`s: a full queue drops the notification and counts it
//! (`switchyard_alert_notifications_dropped`), so a slow or dead receiver never holds up
//! the evaluation, let alone a request. The worker delivers one notification at a time,
//! retrying connection errors, timeouts, 429s and 5xx answers up to `max_attempts` with a
//! doubling backoff from `retry_backoff` (a receiver's `Retry-After`, or Telegram's
//! `parameters.retry_after`, wins, up to a minute). Every outcome is recorded on the alert.
//!
//! - **webhook**: `POST` of a JSON body `{"event", "timestamp", "alert": {…}}`. With a
//!   secret, `x-switchyard-signature: sha256=<hex>` is the HMAC-SHA256 of the raw body; the
//!   body's `timestamp` (unix ms, also in `x-switchyard-timestamp`) is set at each attempt,
//!   so a receiver can refuse old deliveries (replays).
//! - **slack**: a Slack-compatible incoming webhook: `{"text", "blocks"}`.
//! - **telegram**: `POST {api_base}/bot<token>/sendMessage` to each chat. The token is in
//!   the URL, so no error message here carries a URL (`reqwest::Error::without_url`).
//! - **log**: a `tracing` event (warn when firing, info otherwise).
//!
//! URLs come from the config only.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use switchyard_core::alerts::retry_delay;
use switchyard_core::config::{NotifierConfig, NotifierKind};
use tokio::sync::{mpsc, oneshot};

use super::{AlertMetrics, AlertRecord, Delivery, History, NotifierLabels, OutcomeLabels, lock};

/// The longest wait between two attempts, whatever a receiver asks.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Most bytes of a receiver's error answer quoted in a delivery's error.
const QUOTED_BODY: usize = 200;

/// What a notification says: an alert that fired or resolved, or a test.
#[derive(Debug, Clone)]
pub struct Notification {
    /// `firing`, `resolved` or `test`.
    pub event: &'static str,
    /// The alert as it is now.
    pub alert: AlertRecord,
    /// When it happened, unix ms.
    pub timestamp_ms: u64,
}

/// A queued delivery.
struct Job {
    notification: Arc<Notification>,
    /// Attempts allowed (tests get one: the operator waits for the answer).
    max_attempts: u32,
    /// Where the outcome goes, for a test.
    reply: Option<oneshot::Sender<Delivery>>,
}

/// The sending end of one notifier.
pub struct Notifier {
    name: String,
    timeout: Duration,
    sender: mpsc::Sender<Job>,
    max_attempts: u32,
    metrics: Arc<AlertMetrics>,
}

impl Notifier {
    /// Starts the notifier's worker (inside the tokio runtime).
    pub fn spawn(
        config: &NotifierConfig,
        history: Arc<Mutex<History>>,
        metrics: Arc<AlertMetrics>,
    ) -> Result<Self, String> {
        // reqwest panics when building a client without a TLS crypto provider.
        crate::install_crypto_provider();
        // Telegram goes through the bot's own Bot API client (see crate::telegram::api).
        let bot = match &config.kind {
            NotifierKind::Telegram {
                api_base, token, ..
            } => Some(
                crate::telegram::api::BotApi::new(api_base, token)
                    .map_err(|error| format!("alerts.notifiers `{}`: {error}", config.name))?,
            ),
            _ => None,
        };
        let client = match config.kind {
            NotifierKind::Log | NotifierKind::Telegram { .. } => None,
            _ => Some(
                reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout)
                    .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|error| {
                        format!(
                            "alerts.notifiers `{}`: no HTTP client: {error}",
                            config.name
                        )
                    })?,
            ),
        };
        let (sender, receiver) = mpsc::channel(config.queue);
        let worker = Worker {
            config: config.clone(),
            client,
            bot,
            history,
            metrics: Arc::clone(&metrics),
        };
        tokio::spawn(worker.run(receiver));
        Ok(Notifier {
            name: config.name.clone(),
            timeout: config.timeout,
            sender,
            max_attempts: config.max_attempts,
            metrics,
        })
    }

    /// The notifier's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a notification without waiting; answers `queued`, or `dropped` (counted)
    /// when the queue is full.
    pub fn enqueue(&self, notification: Arc<Notification>, now_ms: u64) -> Delivery {
        let event = notification.event;
        let job = Job {
            notification,
            max_attempts: self.max_attempts,
            reply: None,
        };
        match self.sender.try_send(job) {
            Ok(()) => delivery(&self.name, event, "queued", 0, now_ms, None),
            Err(_) => {
                self.count_dropped();
                delivery(
                    &self.name,
                    event,
                    "dropped",
                    0,
                    now_ms,
                    Some("the notifier's queue is full".to_owned()),
                )
            }
        }
    }

    /// Sends a test notification (one attempt) and waits for its outcome.
    pub async fn test(&self, notification: Arc<Notification>, now_ms: u64) -> Delivery {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            notification,
            max_attempts: 1,
            reply: Some(reply),
        };
        if self.sender.try_send(job).is_err() {
            self.count_dropped();
            return delivery(
                &self.name,
                "test",
                "dropped",
                0,
                now_ms,
                Some("the notifier's queue is full".to_owned()),
            );
        }
        // The worker may be busy with queued alerts first: allow for one of them.
        let wait = self.timeout * 2 + Duration::from_secs(1);
        match tokio::time::timeout(wait, outcome).await {
            Ok(Ok(delivery)) => delivery,
            _ => delivery(
                &self.name,
                "test",
                "queued",
                0,
                now_ms,
                Some(format!(
                    "no outcome within {}; it is still queued",
                    humantime::format_duration(wait)
                )),
            ),
        }
    }

    fn count_dropped(&self) {
        self.metrics
            .dropped
            .get_or_create(&NotifierLabels {
                notifier: self.name.clone(),
            })
            .inc();
        self.metrics
            .notifications
            .get_or_create(&OutcomeLabels {
                notifier: self.name.clone(),
                outcome: "dropped",
            })
            .inc();
    }
}

fn delivery(
    notifier: &str,
    event: &str,
    outcome: &str,
    attempts: u32,
    at: u64,
    error: Option<String>,
) -> Delivery {
    Delivery {
        notifier: notifier.to_owned(),
        event: event.to_owned(),
        outcome: outcome.to_owned(),
        attempts,
        at,
        error,
        retry_delays_ms: Vec::new(),
    }
}

/// Why one attempt failed.
#[derive(Debug)]
struct Failure {
    message: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// The receiving end: delivers one notification at a time.
struct Worker {
    config: NotifierConfig,
    client: Option<reqwest::Client>,
    bot: Option<crate::telegram::api::BotApi>,
    history: Arc<Mutex<History>>,
    metrics: Arc<AlertMetrics>,
}

impl Worker {
    async fn run(self, mut receiver: mpsc::Receiver<Job>) {
        while let Some(job) = receiver.recv().await {
            let delivery = self.deliver(&job).await;
            self.metrics
                .notifications
                .get_or_create(&OutcomeLabels {
                    notifier: self.config.name.clone(),
                    outcome: if delivery.outcome == "sent" {
                        "sent"
                    } else {
                        "failed"
                    },
                })
                .inc();
            if delivery.outcome != "sent" {
                tracing::warn!(
                    notifier = %self.config.name,
                    alert = %job.notification.alert.id,
                    error = delivery.error.as_deref().unwrap_or_default(),
                    attempts = delivery.attempts,
                    "alert notification failed"
                );
            }
            if job.notification.event != "test" {
                lock(&self.history).record_delivery(&job.notification.alert.id, delivery.clone());
            }
            if let Some(reply) = job.reply {
                let _ = reply.send(delivery);
            }
        }
    }

    async fn deliver(&self, job: &Job) -> Delivery {
        let notification = &job.notification;
        let mut attempts = 0;
        let mut delays = Vec::new();
        let result = match (&self.config.kind, &self.client) {
            (NotifierKind::Log, _) => {
                log(notification);
                attempts = 1;
                Ok(())
            }
            (NotifierKind::Webhook { url, secret }, Some(client)) => {
                self.retrying(
                    job.max_attempts,
                    &mut attempts,
                    &mut delays,
                    || async move {
                        let body = webhook_body(notification, crate::cache::unix_ms());
                        let mut headers = vec![
                            ("x-switchyard-event", notification.event.to_owned()),
                            ("x-switchyard-timestamp", body.1.to_string()),
                        ];
                        if let Some(secret) = secret {
                            headers.push((
                                SIGNATURE_HEADER,
                                sign(secret.expose().as_bytes(), &body.0),
                            ));
                        }
                        post(client, url.expose(), body.0, &headers)
                            .await
                            .and_then(|answer| answer.check())
                    },
                )
                .await
            }
            (NotifierKind::Slack { url }, Some(client)) => {
                let body = &Bytes::from(slack_body(notification).to_string());
                self.retrying(
                    job.max_attempts,
                    &mut attempts,
                    &mut delays,
                    || async move {
                        post(client, url.expose(), body.clone(), &[])
                            .await
                            .and_then(|answer| answer.check())
                    },
                )
                .await
            }
            (NotifierKind::Telegram { chat_ids, .. }, _) => {
                let Some(bot) = &self.bot else {
                    return Delivery {
                        retry_delays_ms: delays,
                        ..delivery(
                            &self.config.name,
                            notification.event,
                            "failed",
                            attempts,
                            crate::cache::unix_ms(),
                            Some("no Bot API client".to_owned()),
                        )
                    };
                };
                let timeout = self.config.timeout;
                let mut failures = Vec::new();
                for chat in chat_ids {
                    let body = &telegram_body(chat, notification);
                    let mut chat_attempts = 0;
                    // One call per attempt: the retries and their delays are this worker's.
                    let sent = self
                        .retrying(
                            job.max_attempts,
                            &mut chat_attempts,
                            &mut delays,
                            || async move {
                                bot.call_once::<Value>("sendMessage", body, timeout)
                                    .await
                                    .map(drop)
                                    .map_err(telegram_failure)
                            },
                        )
                        .await;
                    attempts = attempts.max(chat_attempts);
                    if let Err(error) = sent {
                        failures.push(format!("chat {chat}: {error}"));
                    }
                }
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(failures.join("; "))
                }
            }
            (_, None) => Err("no HTTP client".to_owned()),
        };
        let (outcome, error) = match result {
            Ok(()) => ("sent", None),
            Err(error) => ("failed", Some(error)),
        };
        Delivery {
            retry_delays_ms: delays,
            ..delivery(
                &self.config.name,
                notification.event,
                outcome,
                attempts,
                crate::cache::unix_ms(),
                error,
            )
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or `max_attempts` are spent,
    /// waiting between attempts; counts attempts and records the delays.
    async fn retrying<F, Fut>(
        &self,
        max_attempts: u32,
        attempts: &mut u32,
        delays: &mut Vec<u64>,
        mut attempt: F,
    ) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), Failure>>,
    {
        loop {
            *attempts += 1;
            let failure = match attempt().await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            if !failure.retryable || *attempts >= max_attempts {
                return Err(failure.message);
            }
            let delay = retry_delay(
                *attempts,
                self.config.retry_backoff,
                MAX_RETRY_DELAY,
                failure.retry_after,
            );
            delays.push(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            self.metrics
                .retries
                .get_or_create(&NotifierLabels {
                    notifier: self.config.name.clone(),
                })
                .inc();
            tracing::debug!(
                notifier = %self.config.name,
                error = %failure.message,
                delay_ms = delay.as_millis(),
                "alert notification failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// A receiver's answer.
struct Answer {
    status: http::StatusCode,
    retry_after: Option<Duration>,
    body: Bytes,
}

impl Answer {
    fn quoted_body(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut quoted: String = text.chars().take(QUOTED_BODY).collect();
        if quoted.len() < text.len() {
            quoted.push('…');
        }
        quoted
    }

    /// A 2xx is delivered; 429 and 5xx are retried; other answers fail for good.
    fn check(self) -> Result<(), Failure> {
        if self.status.is_success() {
            return Ok(());
        }
        Err(Failure {
            message: format!("HTTP {}: {}", self.status.as_u16(), self.quoted_body()),
            retryable: self.status == http::StatusCode::TOO_MANY_REQUESTS
                || self.status.is_server_error(),
            retry_after: self.retry_after,
        })
    }
}

/// A failed Bot API call as a delivery failure: Telegram's 429 (with its `retry_after`) and
/// 5xx, and calls that got no answer, are retried.
fn telegram_failure(error: crate::telegram::api::BotApiError) -> Failure {
    use crate::telegram::api::BotApiError;
    match error {
        BotApiError::Refused {
            code,
            description,
            retry_after,
            ..
        } => Failure {
            message: format!("HTTP {code}: {description}"),
            retryable: code == 429 || code >= 500,
            retry_after: retry_after.map(Duration::from_secs),
        },
        BotApiError::Transport { message, .. } => Failure {
            message,
            retryable: true,
            retry_after: None,
        },
    }
}

/// One POST of a JSON body. Errors never carry the URL (it may hold a token).
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
    headers: &[(&'static str, String)],
) -> Result<Answer, Failure> {
    let mut request = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.map_err(|error| Failure {
        message: describe(error),
        retryable: true,
        retry_after: None,
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.bytes().await.map_err(|error| Failure {
        message: describe(error),
        retryable: true,
        retry_after: None,
    })?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// A transport error's message with its causes, without the URL.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The webhook's signature header.
pub const SIGNATURE_HEADER: &str = "x-switchyard-signature";

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail; an empty signature would not
    // verify anyway.
    let Ok(mut mac) = Hmac::<sha2_hmac::Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut signature = String::with_capacity(7 + digest.len() * 2);
    signature.push_str("sha256=");
    for byte in digest.iter() {
        signature.push_str(&format!("{byte:02x}"));
    }
    signature
}

/// An alert as the webhook sends it (the record without its deliveries).
#[derive(Serialize)]
struct AlertPayload<'a> {
    id: &'a str,
    rule: &'a str,
    metric: &'a str,
    scope: &'a str,
    member: &'a str,
    severity: &'a str,
    state: &'a str,
    value: Option<f64>,
    threshold: f64,
    direction: &'a str,
    started_at: u64,
    resolved_at: Option<u64>,
    message: &'a str,
}

/// The webhook's body at `now_ms`, and that timestamp.
pub fn webhook_body(notification: &Notification, now_ms: u64) -> (Bytes, u64) {
    let alert = &notification.alert;
    let body = json!({
        "event": notification.event,
        "timestamp": now_ms,
        "alert": AlertPayload {
            id: &alert.id,
            rule: &alert.rule,
            metric: &alert.metric,
            scope: &alert.scope,
            member: &alert.member,
            severity: &alert.severity,
            state: &alert.state,
            value: alert.value,
            threshold: alert.threshold,
            direction: &alert.direction,
            started_at: alert.started_at,
            resolved_at: alert.resolved_at,
            message: &alert.message,
        },
    });
    (Bytes::from(body.to_string()), now_ms)
}

/// A Slack incoming webhook's body: the message, then the details.
pub fn slack_body(notification: &Notification) -> Value {
    let alert = &notification.alert;
    let details = format!(
        "rule `{}` · {} `{}` · severity {} · {}",
        alert.rule, alert.scope, alert.member, alert.severity, notification.event
    );
    json!({
        "text": alert.message,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": alert.message}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": details}]},
        ],
    })
}

/// Telegram's `sendMessage` body for one chat (a number, or `@channel`).
pub fn telegram_body(chat: &str, notification: &Notification) -> Value {
    let chat_id = match chat.parse::<i64>() {
        Ok(number) => Value::from(number),
        Err(_) => Value::from(chat),
    };
    json!({
        "chat_id": chat_id,
        "text": notification.alert.message,
        "link_preview_options": { "is_disabled": true },
    })
}

fn log(notification: &Notification) {
    let alert = &notification.alert;
    if notification.event == "firing" {
        tracing::warn!(
            alert = %alert.id,
            rule = %alert.rule,
            member = %alert.member,
            severity = %alert.severity,
            value = alert.value,
            threshold = alert.threshold,
            "{}",
            alert.message
        );
    } else {
        tracing::info!(
            alert = %alert.id,
            rule = %alert.rule,
            member = %alert.member,
            severity = %alert.severity,
            value = alert.value,
            "{}",
            alert.message
        );
    }
}
