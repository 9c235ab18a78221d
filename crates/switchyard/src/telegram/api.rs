//! The Bot API client: the few methods the bot and the CLI call, over the gateway's reqwest.
//!
//! Every call is `POST {api_url}/bot{token}/{method}` with a JSON body, answered with
//! `{"ok":true,"result":…}` or `{"ok":false,"error_code":…,"description":…,"parameters":…}`.
//! A 429 is retried after its `retry_after` (up to [`MAX_RETRIES`] times, each wait at most
//! [`MAX_RETRY_AFTER`]); other failures are returned. The token is part of every URL, so
//! errors are stripped of their URL before they are shown: neither the token nor anything
//! else secret is ever logged.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use switchyard_core::config::Secret;

use super::types::{Message, User};

/// Retries of one call after Telegram's 429.
pub const MAX_RETRIES: u32 = 3;
/// The longest `retry_after` waited for; a longer one is returned as the error.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The timeout of a call other than a long poll.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed Bot API call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BotApiError {
    /// Telegram answered with an error.
    #[error("Telegram refused {method}: {description} ({code})")]
    Refused {
        /// The method called.
        method: &'static str,
        /// `error_code` (the HTTP status).
        code: u16,
        /// Telegram's `description`.
        description: String,
        /// `parameters.retry_after`, in seconds, on a 429.
        retry_after: Option<u64>,
    },
    /// The call did not get an answer (connection, timeout, not JSON).
    #[error("could not call the Bot API's {method}: {message}")]
    Transport {
        /// The method called.
        method: &'static str,
        /// What went wrong (never the URL, which holds the token).
        message: String,
    },
}

impl BotApiError {
    /// Whether Telegram refused the message's HTML entities (then it is sent as plain text).
    pub fn is_entity_error(&self) -> bool {
        matches!(self, BotApiError::Refused { code: 400, description, .. }
            if description.contains("can't parse entities") || description.contains("entities"))
    }

    /// Whether an edit changed nothing (harmless).
    pub fn is_not_modified(&self) -> bool {
        matches!(self, BotApiError::Refused { code: 400, description, .. }
            if description.contains("message is not modified"))
    }
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct BotApi {
    client: reqwest::Client,
    /// `{api_url}/bot{token}/`: secret, never shown.
    base: Secret,
}

impl std::fmt::Debug for BotApi {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("BotApi(***)")
    }
}

impl BotApi {
    /// A client of the Bot API at `api_url` (no trailing slash) for the bot `token`.
    pub fn new(api_url: &str, token: &Secret) -> Result<Self, String> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| format!("could not build the Bot API client: {error}"))?;
        Ok(BotApi {
            client,
            base: Secret::new(format!(
                "{}/bot{}/",
                api_url.trim_end_matches('/'),
                token.expose()
            )),
        })
    }

    /// Calls `method` with `params`; retries after a 429 as Telegram asks.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: &Value,
    ) -> Result<T, BotApiError> {
        self.call_with_timeout(method, params, CALL_TIMEOUT).await
    }

    async fn call_with_timeout<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: &Value,
        timeout: Duration,
    ) -> Result<T, BotApiError> {
        let mut retries = 0;
        loop {
            match self.call_once(method, params, timeout).await {
                Err(BotApiError::Refused {
                    code: 429,
                    retry_after: Some(seconds),
                    ..
                }) if retries < MAX_RETRIES && Duration::from_secs(seconds) <= MAX_RETRY_AFTER => {
                    retries += 1;
                    tracing::info!(method, seconds, "Telegram asked to slow down; waiting");
                    tokio::time::sleep(Duration::from_secs(seconds.max(1))).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// One call of `method`, without retrying a 429: for callers with a retry policy of their
    /// own (the alert notifier). `timeout` bounds the whole call.
    pub async fn call_once<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: &Value,
        timeout: Duration,
    ) -> Result<T, BotApiError> {
        let transport = |error: reqwest::Error| BotApiError::Transport {
            method,
            message: describe(&error.without_url()),
        };
        let body = serde_json::to_vec(params).map_err(|error| BotApiError::Transport {
            method,
            message: error.to_string(),
        })?;
        let response = self
            .client
            .post(format!("{}{method}", self.base.expose()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        let answer: Value = serde_json::from_slice(&bytes).map_err(|_| BotApiError::Transport {
            method,
            message: format!("the answer (HTTP {status}) is not JSON"),
        })?;
        if answer["ok"].as_bool() == Some(true) {
            return serde_json::from_value(answer["result"].clone()).map_err(|error| {
                BotApiError::Transport {
                    method,
                    message: format!("unexpected result: {error}"),
                }
            });
        }
        Err(BotApiError::Refused {
            method,
            code: answer["error_code"]
                .as_u64()
                .and_then(|code| u16::try_from(code).ok())
                .unwrap_or(status),
            description: answer["description"]
                .as_str()
                .unwrap_or("no description")
                .to_owned(),
            retry_after: answer["parameters"]["retry_after"].as_u64(),
        })
    }

    /// `getMe`.
    pub async fn get_me(&self) -> Result<User, BotApiError> {
        self.call("getMe", &json!({})).await
    }

    /// `sendMessage`: `html` sends it with `parse_mode = HTML`.
    pub async fn send_message(
        &self,
        chat: i64,
        text: &str,
        html: bool,
        reply_to: Option<i64>,
    ) -> Result<Message, BotApiError> {
        let mut params = json!({
            "chat_id": chat,
            "text": text,
            "link_preview_options": { "is_disabled": true },
        });
        if html {
            params["parse_mode"] = json!("HTML");
        }
        if let Some(reply_to) = reply_to {
            params["reply_parameters"] =
                json!({ "message_id": reply_to, "allow_sending_without_reply": true });
        }
        self.call("sendMessage", &params).await
    }

    /// `editMessageText`.
    pub async fn edit_message_text(
        &self,
        chat: i64,
        message: i64,
        text: &str,
        html: bool,
    ) -> Result<(), BotApiError> {
        let mut params = json!({
            "chat_id": chat,
            "message_id": message,
            "text": text,
            "link_preview_options": { "is_disabled": true },
        });
        if html {
            params["parse_mode"] = json!("HTML");
        }
        self.call::<Value>("editMessageText", &params)
            .await
            .map(|_| ())
    }

    /// `sendChatAction` with `typing`.
    pub async fn send_typing(&self, chat: i64) -> Result<(), BotApiError> {
        self.call::<Value>(
            "sendChatAction",
            &json!({ "chat_id": chat, "action": "typing" }),
        )
        .await
        .map(|_| ())
    }

    /// `getUpdates` from `offset`, waiting up to `timeout` for one.
    pub async fn get_updates(
        &self,
        offset: i64,
        timeout: Duration,
    ) -> Result<Vec<Value>, BotApiError> {
        self.call_with_timeout(
            "getUpdates",
            &json!({
                "offset": offset,
                "timeout": timeout.as_secs(),
                "allowed_updates": ALLOWED_UPDATES,
            }),
            timeout + Duration::from_secs(10),
        )
        .await
    }

    /// `setWebhook` to `url` with `secret`, for the updates the bot reads.
    pub async fn set_webhook(&self, url: &str, secret: &Secret) -> Result<(), BotApiError> {
        self.call::<Value>(
            "setWebhook",
            &json!({
                "url": url,
                "secret_token": secret.expose(),
                "allowed_updates": ALLOWED_UPDATES,
            }),
        )
        .await
        .map(|_| ())
    }

    /// `deleteWebhook`.
    pub async fn delete_webhook(&self) -> Result<(), BotApiError> {
        self.call::<Value>("deleteWebhook", &json!({}))
            .await
            .map(|_| ())
    }

    /// `getWebhookInfo`, as Telegram gives it.
    pub async fn get_webhook_info(&self) -> Result<Value, BotApiError> {
        self.call("getWebhookInfo", &json!({})).await
    }
}

/// An error and its causes, `: `-separated (reqwest's own text is terse: "error sending
/// request"). The URL, which holds the token, must already be stripped.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The update kinds the bot reads (set with the webhook and asked for when polling).
pub const ALLOWED_UPDATES: [&str; 1] = ["message"];
