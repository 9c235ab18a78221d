//! A mock Telegram Bot API server that records every call.
//!
//! It answers `POST /bot{token}/{method}` with JSON bodies the way the real Bot API does
//! (`{"ok":true,"result":…}` or `{"ok":false,"error_code":…,"description":…}`) for the
//! methods the gateway's bot uses: `getMe`, `sendMessage`, `editMessageText`,
//! `sendChatAction`, `getUpdates` (long polling, with `offset` confirming updates),
//! `setWebhook`, `deleteWebhook` and `getWebhookInfo`. Like Telegram, it checks message texts:
//! `parse_mode = "HTML"` text must parse (see [`html`]), and no text may pass 4096 characters
//! once its entities are parsed; an edit that changes nothing is refused.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use switchyard_testkit::telegram::MockBotApi;
//!
//! let api = MockBotApi::spawn("123:abc").await?;
//! // point the gateway at api.base_url() with TELEGRAM_API_URL ...
//! api.push_failure("sendMessage", 429, serde_json::json!({"retry_after": 3}));
//! let sent = api.wait_for("sendMessage", 1).await;
//! # Ok(()) }
//! ```
//!
//! This module owns the mock only; it must not depend on the gateway's crates.

pub mod html;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The bot's own user id, as `getMe` reports it.
pub const BOT_ID: i64 = 4242;
/// The bot's username, as `getMe` reports it (mentions are `@switchyard_bot`).
pub const BOT_USERNAME: &str = "switchyard_bot";
/// Longest message text, in UTF-16 code units after entity parsing.
pub const MAX_TEXT: usize = 4096;
/// How long [`BotApiHandle::wait_for`] waits before it returns what it has.
const WAIT: Duration = Duration::from_secs(10);

/// One recorded call.
#[derive(Debug, Clone)]
pub struct BotCall {
    /// The method, e.g. `sendMessage`.
    pub method: String,
    /// The JSON parameters (an empty object when the body was empty).
    pub body: Value,
    /// When it arrived (tokio's clock, so paused-time tests can measure gaps).
    pub at: Instant,
    /// The HTTP status it was answered with.
    pub status: u16,
}

impl BotCall {
    /// `body.text` as a string, or "".
    pub fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or_default()
    }
}

/// Entry point: [`MockBotApi::spawn`].
#[derive(Debug, Clone, Copy)]
pub struct MockBotApi;

impl MockBotApi {
    /// Starts a mock on `127.0.0.1:0` that accepts `token`.
    pub async fn spawn(token: &str) -> std::io::Result<BotApiHandle> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            state: Mutex::new(MockState::default()),
            changed: Notify::new(),
        });
        let app = Router::new()
            .route("/{bot}/{method}", axum::routing::any(handle))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "mock Bot API stopped");
            }
        });
        Ok(BotApiHandle {
            shared,
            addr,
            _abort: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running mock Bot API. Cheap to clone; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct BotApiHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Stops the server when the last clone is dropped.
    _abort: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for BotApiHandle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BotApiHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    token: String,
    // A std Mutex: short sections, never held across an await.
    state: Mutex<MockState>,
    /// Woken on every call and every queued update.
    changed: Notify,
}

#[derive(Default)]
struct MockState {
    calls: Vec<BotCall>,
    /// One-shot failures per method, first in first out: (status, extra fields).
    failures: HashMap<String, VecDeque<(u16, Value)>>,
    /// Updates not yet confirmed by an offset.
    updates: VecDeque<Value>,
    next_update_id: i64,
    next_message_id: i64,
    /// The current text of every message sent, by (chat, message id).
    texts: HashMap<(i64, i64), String>,
    webhook: Option<Value>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, MockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BotApiHandle {
    /// `http://IP:PORT`: what `TELEGRAM_API_URL` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<BotCall> {
        self.shared.lock().calls.clone()
    }

    /// The calls to `method`, oldest first.
    pub fn calls_to(&self, method: &str) -> Vec<BotCall> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|call| call.method == method)
            .cloned()
            .collect()
    }

    /// The methods called so far, in order.
    pub fn methods(&self) -> Vec<String> {
        self.shared
            .lock()
            .calls
            .iter()
            .map(|call| call.method.clone())
            .collect()
    }

    /// The next call to `method` fails with `status`: a Bot API error whose `parameters`
    /// are `parameters` (e.g. `{"retry_after": 3}` with 429). A `description` field among
    /// them is the error's description instead.
    pub fn push_failure(&self, method: &str, status: u16, parameters: Value) {
        self.shared
            .lock()
            .failures
            .entry(method.to_owned())
            .or_default()
            .push_back((status, parameters));
    }

    /// Queues an update for `getUpdates`, giving it the next `update_id` unless it has one;
    /// returns the id.
    pub fn push_update(&self, mut update: Value) -> i64 {
        let id = {
            let mut state = self.shared.lock();
            let id = match update["update_id"].as_i64() {
                Some(id) => id,
                None => {
                    state.next_update_id += 1;
                    state.next_update_id
                }
            };
            state.next_update_id = state.next_update_id.max(id);
            update["update_id"] = json!(id);
            state.updates.push_back(update);
            id
        };
        self.shared.changed.notify_waiters();
        id
    }

    /// The webhook set by `setWebhook` (its parameters), if any.
    pub fn webhook(&self) -> Option<Value> {
        self.shared.lock().webhook.clone()
    }

    /// Waits (up to 10 s) until `method` has been called `count` times, and returns those
    /// calls; fewer if the wait ran out.
    pub async fn wait_for(&self, method: &str, count: usize) -> Vec<BotCall> {
        self.wait_until(|calls| calls.iter().filter(|c| c.method == method).count() >= count)
            .await;
        self.calls_to(method)
    }

    /// Waits (up to 10 s) until `done` holds for the calls so far.
    pub async fn wait_until(&self, done: impl Fn(&[BotCall]) -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.shared.lock().calls) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done(&self.shared.lock().calls);
            }
        }
    }
}

fn ok(result: Value) -> Response {
    Json(json!({ "ok": true, "result": result })).into_response()
}

fn error(status: u16, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({ "ok": false, "error_code": status, "description": description });
    if let Some(parameters) = parameters {
        body["parameters"] = parameters;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(body)).into_response()
}

fn bad_request(description: &str) -> Response {
    error(400, &format!("Bad Request: {description}"), None)
}

fn status_of(response: &Response) -> u16 {
    response.status().as_u16()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((bot, method)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    if bot.strip_prefix("bot") != Some(shared.token.as_str()) {
        return error(401, "Unauthorized", None);
    }
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(_) => return bad_request("invalid JSON body"),
        }
    };
    let at = Instant::now();
    let failure = shared
        .lock()
        .failures
        .get_mut(&method)
        .and_then(VecDeque::pop_front);
    let response = match failure {
        Some((status, mut parameters)) => {
            let scripted = parameters
                .as_object_mut()
                .and_then(|fields| fields.remove("description"));
            let description = match status {
                _ if scripted.is_some() => scripted
                    .as_ref()
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                429 => format!(
                    "Too Many Requests: retry after {}",
                    parameters["retry_after"].as_i64().unwrap_or(1)
                ),
                400 => "Bad Request: scripted failure".to_owned(),
                _ => "scripted failure".to_owned(),
            };
            error(status, &description, Some(parameters))
        }
        None if method == "getUpdates" => get_updates(&shared, &body).await,
        None => answer(&shared, &method, &body),
    };
    shared.lock().calls.push(BotCall {
        method,
        body,
        at,
        status: status_of(&response),
    });
    shared.changed.notify_waiters();
    response
}

fn answer(shared: &Shared, method: &str, body: &Value) -> Response {
    match method {
        "getMe" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "Switchyard",
            "username": BOT_USERNAME, "can_join_groups": true,
        })),
        "sendChatAction" => match body["chat_id"].as_i64() {
            Some(_) => ok(json!(true)),
            None => bad_request("chat not found"),
        },
        "sendMessage" => {
            let Some(chat) = body["chat_id"].as_i64() else {
                return bad_request("chat not found");
            };
            let visible = match checked_text(body) {
                Ok(visible) => visible,
                Err(problem) => return bad_request(&problem),
            };
            let mut state = shared.lock();
            state.next_message_id += 1;
            let id = state.next_message_id;
            state.texts.insert((chat, id), visible.clone());
            ok(message(chat, id, &visible))
        }
        "editMessageText" => {
            let (Some(chat), Some(id)) = (body["chat_id"].as_i64(), body["message_id"].as_i64())
            else {
                return bad_request("message to edit not found");
            };
            let visible = match checked_text(body) {
                Ok(visible) => visible,
                Err(problem) => return bad_request(&problem),
            };
            let mut state = shared.lock();
            match state.texts.get(&(chat, id)) {
                None => bad_request("message to edit not found"),
                Some(current) if *current == visible => bad_request(
                    "message is not modified: specified new message content and reply markup \
                     are exactly the same as a current content and reply markup of the message",
                ),
                Some(_) => {
                    state.texts.insert((chat, id), visible.clone());
                    ok(message(chat, id, &visible))
                }
            }
        }
        "setWebhook" => {
            if !body["url"]
                .as_str()
                .is_some_and(|url| url.starts_with("https://"))
            {
                return bad_request("bad webhook: An HTTPS URL must be provided for webhook");
            }
            shared.lock().webhook = Some(body.clone());
            ok(json!(true))
        }
        "deleteWebhook" => {
            shared.lock().webhook = None;
            ok(json!(true))
        }
        "getWebhookInfo" => {
            let state = shared.lock();
            let webhook = state.webhook.clone().unwrap_or_else(|| json!({}));
            ok(json!({
                "url": webhook["url"].as_str().unwrap_or_default(),
                "has_custom_certificate": false,
                "pending_update_count": state.updates.len(),
                "allowed_updates": webhook["allowed_updates"],
                "max_connections": 40,
            }))
        }
        _ => error(404, "Not Found", None),
    }
}

/// Checks `text` (and its HTML when `parse_mode` says so); the visible text, or the Bad
/// Request's description.
fn checked_text(body: &Value) -> Result<String, String> {
    let text = body["text"].as_str().unwrap_or_default();
    let visible = match body["parse_mode"].as_str() {
        Some("HTML") => {
            html::parse(text).map_err(|problem| format!("can't parse entities: {problem}"))?
        }
        Some(other) => return Err(format!("unsupported parse_mode {other}")),
        None => text.to_owned(),
    };
    if visible.trim().is_empty() {
        return Err("message text is empty".to_owned());
    }
    if visible.encode_utf16().count() > MAX_TEXT {
        return Err("message is too long".to_owned());
    }
    Ok(visible)
}

fn message(chat: i64, id: i64, text: &str) -> Value {
    json!({
        "message_id": id,
        "date": 1_700_000_000,
        "chat": { "id": chat, "type": if chat < 0 { "group" } else { "private" } },
        "from": { "id": BOT_ID, "is_bot": true, "first_name": "Switchyard", "username": BOT_USERNAME },
        "text": text,
    })
}

async fn get_updates(shared: &Shared, body: &Value) -> Response {
    if shared.lock().webhook.is_some() {
        return error(
            409,
            "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to \
             delete the webhook first",
            None,
        );
    }
    let offset = body["offset"].as_i64().unwrap_or(0);
    let timeout = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0).min(50));
    let deadline = Instant::now() + timeout;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let ready: Vec<Value> = {
            let mut state = shared.lock();
            // An offset confirms every update before it.
            state
                .updates
                .retain(|update| update["update_id"].as_i64().unwrap_or(0) >= offset);
            state.updates.iter().take(100).cloned().collect()
        };
        if !ready.is_empty() {
            return ok(Value::Array(ready));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return ok(json!([]));
        }
    }
}
