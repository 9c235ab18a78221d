//! A chat message → a chat completion through the gateway → the answer in the chat.
//!
//! The completion is a `POST /v1/chat/completions` sent to the gateway's own router in
//! process (`tower::ServiceExt::oneshot`), so it takes the whole chain like any client's
//! request: the bot's key (`key_env`, else the master key) is the credential, the OpenAI
//! `user` is `tg:<user id>` (so `scope = "user"` rate limits count each Telegram user apart),
//! and analytics record it. A refusal (rate limit, budget) becomes a friendly message that
//! says when the user can continue; any other failure is said too: a user never gets silence.
//!
//! While the bot waits, a typing indicator shows (sent again every 4 s, as it lasts 5 s).
//! With `streaming = "edits"` the answer is streamed: the first text is sent as a message,
//! then that message is edited at most once per `edit_interval` ([`Editor`]); the finished
//! answer replaces it as Telegram HTML, split when it is long.

use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use switchyard_core::config::telegram::Streaming;
use switchyard_core::wire::{TokenUsage, Usage as WireUsage};
use tokio::time::Instant;
use tower::ServiceExt;

use super::api::BotApi;
use super::memory::{Turn, Usage, estimate_tokens};
use super::types::{Message, User};
use super::{Bot, format};
use crate::app::AppState;

/// How often the typing indicator is renewed (Telegram shows it for 5 s).
const TYPING_EVERY: Duration = Duration::from_secs(4);

/// The principal's `user` for a Telegram user.
pub fn user_label(user: i64) -> String {
    format!("tg:{user}")
}

/// Days since the epoch (UTC).
pub fn day_of(unix_ms: u64) -> i64 {
    i64::try_from(unix_ms / 86_400_000).unwrap_or(i64::MAX)
}

/// "3 h 12 min", "45 s": how long until something.
pub fn wait_text(wait: Duration) -> String {
    let seconds = wait.as_secs().max(1);
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds.div_ceil(60)),
        _ => format!("{} h {} min", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// A finished answer.
#[derive(Debug, Clone, Default)]
struct Completion {
    text: String,
    usage: TokenUsage,
    cost_usd: Option<f64>,
}

/// Answers a chat message.
pub async fn answer(bot: &Bot, app: &AppState, message: &Message, from: &User, text: &str) {
    let chat = message.chat.id;
    let reply_to = (!message.chat.is_private()).then_some(message.message_id);
    let now_ms = crate::cache::unix_ms();
    let today = day_of(now_ms);
    if let Some(limit) = bot.config.user_daily_budget_usd {
        match bot.memory.usage(from.id, today).await {
            Ok(usage) if usage.cost_usd >= limit => {
                let until_midnight = 86_400_000 - now_ms % 86_400_000;
                bot.say(
                    chat,
                    &format!(
                        "You have used your daily budget of ${limit:.2}. You can continue at \
                         00:00 UTC, in {}.",
                        wait_text(Duration::from_millis(until_midnight))
                    ),
                )
                .await;
                return;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "telegram: could not read a user's usage"),
        }
    }
    let typing = Typing::start(&bot.api, chat).await;
    let model = chosen_model(bot, chat).await;
    let budget = u64::from(bot.config.memory_tokens).saturating_sub(estimate_tokens(text));
    let history = bot
        .memory
        .history(chat, budget)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "telegram: could not read the conversation memory");
            Vec::new()
        });
    let stream = bot.config.streaming == Streaming::Edits;
    let body = request_body(bot, &model, &history, text, from.id, stream);
    let mut editor = Editor::new(&bot.api, chat, reply_to, bot.config.edit_interval);
    let outcome = complete(app, bot, body, stream.then_some(&mut editor)).await;
    drop(typing);
    match outcome {
        Ok(completion) => {
            // Remembered and counted before it is delivered: a /usage or a next message
            // right after the answer already sees it.
            if let Err(error) = bot
                .memory
                .remember(chat, text.to_owned(), completion.text.clone())
                .await
            {
                tracing::warn!(%error, "telegram: could not remember the conversation");
            }
            let usage = Usage {
                requests: 1,
                tokens_in: completion.usage.input,
                tokens_out: completion.usage.output,
                cost_usd: completion.cost_usd.unwrap_or(0.0),
            };
            if let Err(error) = bot.memory.add_usage(from.id, today, usage).await {
                tracing::warn!(%error, "telegram: could not record usage");
            }
            let delivered = bot
                .send_formatted(chat, &completion.text, editor.message(), reply_to)
                .await;
            if !delivered {
                bot.say(chat, "Sorry, part of the answer could not be delivered.")
                    .await;
            }
        }
        Err(problem) => {
            let text = match &editor.shown {
                shown if shown.is_empty() => problem,
                shown => format!("{shown}\n\n({problem})"),
            };
            let sent = match editor.message() {
                Some(id) => bot.api.edit_message_text(chat, id, &text, false).await,
                None => bot
                    .api
                    .send_message(chat, &text, false, reply_to)
                    .await
                    .map(|_| ()),
            };
            if let Err(error) = sent {
                tracing::warn!(%error, chat, "telegram: could not send an error message");
            }
        }
    }
}

async fn chosen_model(bot: &Bot, chat: i64) -> String {
    let chosen = bot.memory.model(chat).await.unwrap_or_else(|error| {
        tracing::warn!(%error, "telegram: could not read the chat's model");
        None
    });
    chosen
        .filter(|model| bot.config.models.contains(model))
        .or_else(|| bot.config.models.first().cloned())
        .unwrap_or_default()
}

fn request_body(
    bot: &Bot,
    model: &str,
    history: &[Turn],
    text: &str,
    user: i64,
    stream: bool,
) -> Value {
    let mut messages = Vec::with_capacity(history.len() + 2);
    if let Some(system) = &bot.config.system_prompt {
        messages.push(json!({ "role": "system", "content": system }));
    }
    for turn in history {
        messages.push(json!({ "role": turn.role, "content": turn.content }));
    }
    messages.push(json!({ "role": "user", "content": text }));
    let mut body = json!({
        "model": model,
        "messages": messages,
        "user": user_label(user),
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({ "include_usage": true });
    }
    if let Some(limit) = bot.config.max_output_tokens {
        body["max_tokens"] = json!(limit);
    }
    body
}

/// Sends the request through the gateway's router, in process; the finished answer, or the
/// text to tell the user.
async fn complete(
    app: &AppState,
    bot: &Bot,
    body: Value,
    editor: Option<&mut Editor<'_>>,
) -> Result<Completion, String> {
    let mut request = http::Request::post("/v1/chat/completions")
        .header(http::header::CONTENT_TYPE, "application/json");
    let key = bot
        .config
        .key
        .as_ref()
        .or(app.config.server.master_key.as_ref());
    if let Some(key) = key {
        request = request.header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose()),
        );
    }
    let request = request
        .body(Body::from(body.to_string()))
        .map_err(|error| format!("Sorry, the request could not be built ({error})."))?;
    let response = match crate::app::router(app.clone()).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        return Err(refusal_text(parts.status, &parts.headers, &bytes));
    }
    match editor {
        Some(editor) => streamed(app, &parts.headers, body, editor).await,
        None => {
            let bytes = axum::body::to_bytes(body, 16 << 20)
                .await
                .map_err(|error| format!("Sorry, the answer was cut off ({error})."))?;
            whole(&parts.headers, &bytes)
        }
    }
}

/// The message for a refused or failed request.
fn refusal_text(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> String {
    let error: Value = serde_json::from_slice(body).unwrap_or_default();
    let code = error["error"]["code"].as_str().unwrap_or_default();
    let message = error["error"]["message"].as_str().unwrap_or("no details");
    let wait = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(|seconds| wait_text(Duration::from_secs(seconds)));
    match (status.as_u16(), code) {
        (429, "insufficient_quota") => format!(
            "The spending budget for this bot is used up for now.{}",
            wait.map(|wait| format!(" You can continue in {wait}."))
                .unwrap_or_default()
        ),
        (429, _) => format!(
            "You are sending messages faster than this bot allows.{}",
            wait.map(|wait| format!(" You can continue in {wait}."))
                .unwrap_or_else(|| " Please wait a little and try again.".to_owned())
        ),
        (503, _) => "The gateway is busy right now; please try again in a moment.".to_owned(),
        (403, _) => format!("This bot may not use that model: {message}"),
        (401, _) => "The bot's key was refused by the gateway; tell its operator.".to_owned(),
        _ => format!("Sorry, no answer this time ({message}). Please try again later."),
    }
}

fn whole(headers: &HeaderMap, bytes: &[u8]) -> Result<Completion, String> {
    let answer: Value = serde_json::from_slice(bytes)
        .map_err(|_| "Sorry, the answer could not be read.".to_owned())?;
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let usage = serde_json::from_value::<WireUsage>(answer["usage"].clone())
        .map(|usage| TokenUsage::from_openai(&usage))
        .unwrap_or_default();
    let cost_usd = headers
        .get(crate::handlers::COST_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    Ok(Completion {
        text,
        usage,
        cost_usd,
    })
}

async fn streamed(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
    editor: &mut Editor<'_>,
) -> Result<Completion, String> {
    use eventsource_stream::Eventsource;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut events = body.into_data_stream().eventsource();
    let mut completion = Completion::default();
    while let Some(event) = events.next().await {
        let event = event.map_err(|error| format!("the answer was cut off: {error}"))?;
        if event.data == "[DONE]" {
            break;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        if let Some(message) = chunk["error"]["message"].as_str() {
            return Err(format!("the answer was cut off: {message}"));
        }
        if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str()
            && !delta.is_empty()
        {
            completion.text.push_str(delta);
            editor.show(&completion.text).await;
        }
        if let Ok(usage) = serde_json::from_value::<WireUsage>(chunk["usage"].clone()) {
            completion.usage = TokenUsage::from_openai(&usage);
        }
    }
    completion.cost_usd = if header("x-switchyard-cache") == "HIT" {
        Some(0.0)
    } else {
        app.config.pricing.cost(
            &header("x-switchyard-provider"),
            &header("x-switchyard-model"),
            &completion.usage,
        )
    };
    Ok(completion)
}

/// The typing indicator: sent at once, then every 4 s until dropped.
struct Typing(tokio::task::AbortHandle);

impl Typing {
    async fn start(api: &BotApi, chat: i64) -> Self {
        if let Err(error) = api.send_typing(chat).await {
            tracing::debug!(%error, "telegram: sendChatAction failed");
        }
        let api = api.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(TYPING_EVERY).await;
                if api.send_typing(chat).await.is_err() {
                    return;
                }
            }
        });
        Typing(task.abort_handle())
    }
}

impl Drop for Typing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Shows a growing answer in one message: sent with the first text, then edited at most once
/// per interval (Telegram allows about one message a second per chat), as plain text cut to
/// fit; the finished answer replaces it.
pub struct Editor<'a> {
    api: &'a BotApi,
    chat: i64,
    reply_to: Option<i64>,
    interval: Duration,
    /// The message shown, once sent.
    message: Option<i64>,
    /// What it shows.
    shown: String,
    /// When it was last sent or edited.
    last: Option<Instant>,
}

impl<'a> Editor<'a> {
    /// An editor of nothing yet.
    pub fn new(api: &'a BotApi, chat: i64, reply_to: Option<i64>, interval: Duration) -> Self {
        Editor {
            api,
            chat,
            reply_to,
            interval,
            message: None,
            shown: String::new(),
            last: None,
        }
    }

    /// The message shown, once sent.
    pub fn message(&self) -> Option<i64> {
        self.message
    }

    /// Shows `text` (the answer so far) if the interval since the last edit has passed.
    pub async fn show(&mut self, text: &str) {
        let preview = format::preview(text.trim_end());
        if preview.trim().is_empty() || preview == self.shown {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            return;
        }
        let sent = match self.message {
            None => self
                .api
                .send_message(self.chat, &preview, false, self.reply_to)
                .await
                .map(|message| self.message = Some(message.message_id)),
            Some(id) => match self
                .api
                .edit_message_text(self.chat, id, &preview, false)
                .await
            {
                Err(error) if error.is_not_modified() => Ok(()),
                other => other,
            },
        };
        match sent {
            Ok(()) => {
                self.shown = preview;
                self.last = Some(now);
            }
            Err(error) => {
                // Not again before the interval either.
                self.last = Some(now);
                tracing::debug!(%error, "telegram: could not show the answer so far");
            }
        }
    }
}
