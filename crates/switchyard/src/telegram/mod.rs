//! The Telegram bot: a first-class client of the gateway, running in the same process.
//!
//! Updates arrive by webhook (`POST /telegram/webhook`, checked against the secret token in
//! constant time, answered at once, the work done after) or by long polling `getUpdates`.
//! Each update is handled once (by `update_id`). A chat message becomes a chat completion
//! sent through the gateway's own router in process ([`chat`]), so the whole chain applies
//! (auth, limits, budgets, cache, routing, failover, analytics) with the Telegram user as the
//! OpenAI `user` (`tg:<id>`) and the bot's key (or the master key) as the credential.
//!
//! This module owns the bot's behaviour; it must not reach into the chain's stages. It
//! reads the gateway's state only for the admin commands (analytics, tracker).
//!
//! - [`api`]: the Bot API client (429 `retry_after` honoured, the token never shown).
//! - [`types`]: the update types read.
//! - [`format`]: Markdown → Telegram HTML, and splitting long answers.
//! - [`memory`]: `telegram.db` (conversations, chosen models, per-user usage).
//! - [`chat`]: a message → a completion through the router → the answer, streamed by
//!   throttled edits or sent as one message.
//! - [`commands`]: `/start`, `/help`, `/model`, `/reset`, `/usage` and the admin commands.

pub mod api;
pub mod chat;
pub mod commands;
pub mod format;
pub mod memory;
pub mod types;

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;
use switchyard_core::config::Secret;
use switchyard_core::config::telegram::{
    TelegramConfig, TelegramMode, WEBHOOK_SECRET_ENV, WEBHOOK_SECRET_FILE,
};

use crate::app::AppState;
use api::BotApi;
use memory::Memory;
use types::{Message, Update, User};

/// The header Telegram sends the webhook secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Update ids remembered for deduplication.
const SEEN_CAPACITY: usize = 10_000;

/// The bot: built once at start-up, held by the gateway's state.
pub struct Bot {
    /// Its settings.
    pub config: TelegramConfig,
    /// The Bot API client.
    pub api: BotApi,
    /// Conversations, models and usage.
    pub memory: Memory,
    /// The webhook secret (webhook mode).
    webhook_secret: Option<Secret>,
    /// Recently handled update ids, oldest first in the queue. A std mutex: a lookup and an
    /// insert, never held across an await.
    seen: Mutex<(HashSet<i64>, VecDeque<i64>)>,
    /// The bot's own user (for mentions and replies in groups), fetched once.
    me: tokio::sync::OnceCell<User>,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Bot")
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

/// Reads the webhook secret that `switchyard telegram set-webhook` stored in `data_dir`.
pub fn stored_secret(data_dir: &Path) -> Result<Option<Secret>, String> {
    let path = data_dir.join(WEBHOOK_SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim();
            if switchyard_core::config::telegram::is_valid_secret(secret) {
                Ok(Some(Secret::new(secret)))
            } else {
                Err(format!(
                    "{} does not hold a valid webhook secret; run `switchyard telegram \
                     set-webhook` again",
                    path.display()
                ))
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("could not read {}: {error}", path.display())),
    }
}

impl Bot {
    /// Builds the bot: the client, `telegram.db`, and in webhook mode the secret (from
    /// `$TELEGRAM_WEBHOOK_SECRET`, else the data directory).
    pub fn new(config: &TelegramConfig, data_dir: Option<&Path>) -> Result<Self, String> {
        let api = BotApi::new(&config.api_url, &config.token)?;
        let memory = Memory::open(data_dir)?;
        let webhook_secret = match (&config.webhook_secret, data_dir) {
            (Some(secret), _) => Some(secret.clone()),
            (None, Some(dir)) => stored_secret(dir)?,
            (None, None) => None,
        };
        if config.mode == TelegramMode::Webhook && webhook_secret.is_none() {
            return Err(format!(
                "telegram: webhook mode needs its secret: run `switchyard telegram set-webhook \
                 --url https://HOST/telegram/webhook` (it stores one in the data directory), \
                 or set ${WEBHOOK_SECRET_ENV}; or use mode = \"polling\""
            ));
        }
        Ok(Bot {
            config: config.clone(),
            api,
            memory,
            webhook_secret,
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
            me: tokio::sync::OnceCell::new(),
        })
    }

    /// Whether `presented` is the webhook secret (compared in constant time).
    pub fn secret_matches(&self, presented: Option<&[u8]>) -> bool {
        match (&self.webhook_secret, presented) {
            (Some(secret), Some(presented)) => {
                bool::from(presented.ct_eq(secret.expose().as_bytes()))
            }
            _ => false,
        }
    }

    /// Records `update_id`; false when it was handled already (Telegram redelivers).
    pub fn first_delivery(&self, update_id: i64) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (set, order) = &mut *seen;
        if !set.insert(update_id) {
            return false;
        }
        order.push_back(update_id);
        if order.len() > SEEN_CAPACITY
            && let Some(oldest) = order.pop_front()
        {
            set.remove(&oldest);
        }
        true
    }

    /// The bot's own user, from `getMe` (asked once; `None` while Telegram cannot answer).
    pub async fn me(&self) -> Option<&User> {
        match self.me.get_or_try_init(|| self.api.get_me()).await {
            Ok(me) => Some(me),
            Err(error) => {
                tracing::warn!(%error, "telegram: getMe failed");
                None
            }
        }
    }

    /// Handles one update, start to finish (the answer included). Errors are logged; the
    /// user is told when something failed.
    pub async fn handle(&self, app: &AppState, update: Update) {
        let Some(message) = update.message else {
            return;
        };
        let (Some(text), Some(from)) = (message.text.clone(), message.from.clone()) else {
            return;
        };
        if from.is_bot {
            return;
        }
        let chat = message.chat.id;
        if !self.config.allows(from.id, chat) {
            if message.chat.is_private() {
                self.say(chat, "Sorry, this bot is private.").await;
            }
            return;
        }
        let Some(text) = self.addressed(&message, &text).await else {
            return;
        };
        if let Some(command) = commands::parse(&text) {
            let reply = commands::run(self, app, &message, &from, command).await;
            self.send_formatted(chat, &reply, None, None).await;
            return;
        }
        chat::answer(self, app, &message, &from, &text).await;
    }

    /// The text meant for the bot, or `None` when the message is not for it: every private
    /// message; in groups only commands (not those addressed to another bot), mentions and
    /// replies to the bot. The mention is taken out.
    async fn addressed(&self, message: &Message, text: &str) -> Option<String> {
        let me = self.me().await;
        let username = me.and_then(|me| me.username.clone()).unwrap_or_default();
        let mention = format!("@{username}");
        if let Some(command) = text.strip_prefix('/') {
            let first = command.split_whitespace().next().unwrap_or_default();
            if let Some((_, bot)) = first.split_once('@')
                && !bot.eq_ignore_ascii_case(&username)
            {
                return None;
            }
            return Some(text.to_owned());
        }
        if message.chat.is_private() {
            return Some(text.to_owned());
        }
        let mentioned = !username.is_empty() && mentions(message, text, &mention);
        let replied = message
            .reply_to_message
            .as_ref()
            .and_then(|original| original.from.as_ref())
            .zip(me)
            .is_some_and(|(author, me)| author.id == me.id);
        if !(mentioned || replied) {
            return None;
        }
        let cleaned = text.replace(&mention, "").trim().to_owned();
        (!cleaned.is_empty()).then_some(cleaned)
    }

    /// Sends plain text, logging a failure (the last resort: nothing else to fall back on).
    pub async fn say(&self, chat: i64, text: &str) {
        if let Err(error) = self.api.send_message(chat, text, false, None).await {
            tracing::warn!(%error, chat, "telegram: could not send a message");
        }
    }

    /// Sends Markdown as Telegram HTML, split into messages that fit; a piece Telegram
    /// refuses as HTML is sent again as plain text. The first piece replaces `edit`'s text
    /// when given. Returns whether everything arrived.
    pub async fn send_formatted(
        &self,
        chat: i64,
        markdown: &str,
        edit: Option<i64>,
        reply_to: Option<i64>,
    ) -> bool {
        let mut pieces = format::split(markdown, format::MAX_MESSAGE);
        if pieces.is_empty() {
            pieces.push("(empty answer)".to_owned());
        }
        let mut delivered = true;
        for (index, piece) in pieces.iter().enumerate() {
            let target = if index == 0 { edit } else { None };
            let html = format::to_html(piece);
            let sent = self.deliver(chat, target, &html, true, reply_to).await;
            let sent = match sent {
                Err(error) if error.is_entity_error() => {
                    tracing::info!(%error, "telegram: HTML refused; sending plain text");
                    self.deliver(chat, target, piece, false, reply_to).await
                }
                other => other,
            };
            if let Err(error) = sent {
                tracing::warn!(%error, chat, "telegram: could not deliver an answer");
                delivered = false;
            }
        }
        delivered
    }

    async fn deliver(
        &self,
        chat: i64,
        edit: Option<i64>,
        text: &str,
        html: bool,
        reply_to: Option<i64>,
    ) -> Result<(), api::BotApiError> {
        match edit {
            Some(message) => match self.api.edit_message_text(chat, message, text, html).await {
                Err(error) if error.is_not_modified() => Ok(()),
                other => other,
            },
            None => self
                .api
                .send_message(chat, text, html, reply_to)
                .await
                .map(|_| ()),
        }
    }
}

/// Whether the message mentions `mention` (`@username`), by entity or in the text.
fn mentions(message: &Message, text: &str, mention: &str) -> bool {
    let utf16: Vec<u16> = text.encode_utf16().collect();
    let by_entity = message.entities.iter().any(|entity| {
        entity.kind == "mention"
            && utf16
                .get(entity.offset..entity.offset + entity.length)
                .is_some_and(|slice| String::from_utf16_lossy(slice).eq_ignore_ascii_case(mention))
    });
    by_entity || text.to_lowercase().contains(&mention.to_lowercase())
}

/// `POST /telegram/webhook`: checks the secret (401 and nothing else when it is missing or
/// wrong), drops redeliveries, answers at once and handles the update in the background.
pub async fn webhook(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(bot) = app
        .telegram
        .clone()
        .filter(|bot| bot.config.mode == TelegramMode::Webhook)
    else {
        return crate::error::ApiError(switchyard_core::GatewayError::new(
            switchyard_core::ErrorKind::NotFound,
            switchyard_core::Origin::Client,
            "This gateway's Telegram bot does not take webhooks (it is off or polling)",
        ))
        .into_response();
    };
    let presented = headers.get(SECRET_HEADER).map(|value| value.as_bytes());
    if !bot.secret_matches(presented) {
        return (StatusCode::UNAUTHORIZED, "wrong or missing secret token").into_response();
    }
    let update: Update = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(error) => {
            // Telegram would redeliver it forever on an error status: take it and drop it.
            tracing::warn!(%error, "telegram: an update that is not one; dropped");
            return StatusCode::OK.into_response();
        }
    };
    if bot.first_delivery(update.update_id) {
        tokio::spawn(async move { bot.handle(&app, update).await });
    }
    StatusCode::OK.into_response()
}

/// Starts the poller when the bot is in polling mode. It stops once the gateway begins to
/// shut down.
pub fn spawn_poller(app: &AppState) {
    let Some(bot) = app
        .telegram
        .clone()
        .filter(|bot| bot.config.mode == TelegramMode::Polling)
    else {
        return;
    };
    let app = app.clone();
    tokio::spawn(async move {
        let mut offset = 0;
        let mut failures: u32 = 0;
        while app.ready.load(std::sync::atomic::Ordering::Relaxed) {
            match bot.api.get_updates(offset, bot.config.poll_timeout).await {
                Ok(updates) => {
                    failures = 0;
                    for update in updates {
                        let Some(id) = update["update_id"].as_i64() else {
                            continue;
                        };
                        // Confirmed by the next call, whatever becomes of it.
                        offset = offset.max(id + 1);
                        match serde_json::from_value::<Update>(update) {
                            Ok(update) if bot.first_delivery(id) => {
                                let bot = std::sync::Arc::clone(&bot);
                                let app = app.clone();
                                tokio::spawn(async move { bot.handle(&app, update).await });
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(%error, "telegram: an update that is not one");
                            }
                        }
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_secs(1 << failures.min(5));
                    tracing::warn!(%error, ?wait, "telegram: getUpdates failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
}
