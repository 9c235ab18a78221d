//! `[telegram]`: the Telegram bot that chats through the gateway, validated.
//!
//! ```toml
//! [telegram]
//! mode = "webhook"              # or "polling" (local use, no public URL)
//! models = ["assistant", "fast"] # the routes /model may switch among; the first is the default
//! admins = [123456789]          # user ids allowed /stats, /providers, /drain, /enable, /alerts
//! allowed_users = []            # when either list is set, only these users or chats are served
//! allowed_chats = []
//! streaming = "edits"           # or "message": one message once the answer is complete
//! edit_interval = "1500ms"      # least time between two edits of a streamed answer
//! memory_tokens = 2000          # conversation memory per chat, trimmed to this many tokens
//! key_env = "SWITCHYARD_TELEGRAM_KEY"  # a virtual key the bot presents (optional)
//! user_daily_budget_usd = 0.5   # what one Telegram user may spend per UTC day (optional)
//! ```
//!
//! The token comes from `TELEGRAM_BOT_TOKEN`, the Bot API base URL from `TELEGRAM_API_URL`
//! (then `api_url`, then `https://api.telegram.org`), the webhook secret from
//! `TELEGRAM_WEBHOOK_SECRET` (else from the data directory, where `switchyard telegram
//! set-webhook` stores it). Secrets are never read from the file.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Env, Provider, Route, Secret};

/// The variable holding the bot token.
pub const TOKEN_ENV: &str = "TELEGRAM_BOT_TOKEN";
/// The variable naming the Bot API base URL.
pub const API_URL_ENV: &str = "TELEGRAM_API_URL";
/// The variable holding the webhook secret (wins over the one in the data directory).
pub const WEBHOOK_SECRET_ENV: &str = "TELEGRAM_WEBHOOK_SECRET";
/// Telegram's own Bot API server.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";
/// The file in the data directory that holds the webhook secret.
pub const WEBHOOK_SECRET_FILE: &str = "telegram-webhook-secret";

/// `[telegram]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelegram {
    /// Default true when the section is there.
    pub enabled: Option<bool>,
    /// `webhook` (default) or `polling`.
    pub mode: Option<String>,
    /// The Bot API base URL (`TELEGRAM_API_URL` wins).
    pub api_url: Option<String>,
    /// Routes (or models) the bot may use; the first is the default.
    #[serde(default)]
    pub models: Vec<String>,
    /// Telegram user ids allowed the admin commands.
    #[serde(default)]
    pub admins: Vec<i64>,
    /// When set (or `allowed_chats` is), only these users are served.
    #[serde(default)]
    pub allowed_users: Vec<i64>,
    /// When set (or `allowed_users` is), only these chats are served.
    #[serde(default)]
    pub allowed_chats: Vec<i64>,
    /// `edits` (default) or `message`.
    pub streaming: Option<String>,
    /// Least time between two edits of a streamed answer.
    #[serde(default, with = "humantime_serde")]
    pub edit_interval: Option<Duration>,
    /// Conversation memory per chat, in (estimated) tokens.
    pub memory_tokens: Option<u32>,
    /// The system prompt every conversation starts with.
    pub system_prompt: Option<String>,
    /// The variable holding a virtual key for the bot's requests.
    pub key_env: Option<String>,
    /// Long-poll timeout of `getUpdates` in polling mode.
    #[serde(default, with = "humantime_serde")]
    pub poll_timeout: Option<Duration>,
    /// What one Telegram user may spend per UTC day, in USD.
    pub user_daily_budget_usd: Option<f64>,
    /// The output limit of the bot's requests.
    pub max_output_tokens: Option<u32>,
}

/// How updates reach the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelegramMode {
    /// Telegram posts them to `POST /telegram/webhook`.
    Webhook,
    /// The gateway long-polls `getUpdates`.
    Polling,
}

/// How an answer reaches the chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    /// One message, edited as the answer streams in (throttled).
    Edits,
    /// One message once the answer is complete.
    Message,
}

/// Validated `[telegram]`.
#[derive(Debug, Clone)]
pub struct TelegramConfig {
    /// The bot token.
    pub token: Secret,
    /// The Bot API base URL, without a trailing slash.
    pub api_url: String,
    /// Webhook or polling.
    pub mode: TelegramMode,
    /// The webhook secret from the environment; `None`: the one in the data directory.
    pub webhook_secret: Option<Secret>,
    /// The key the bot presents to the gateway: `key_env`'s virtual key, else none (the
    /// master key is used when one is set).
    pub key: Option<Secret>,
    /// Routes the bot may use; the first is the default. Never empty.
    pub models: Vec<String>,
    /// Admin user ids.
    pub admins: Vec<i64>,
    /// The allowlist of users (empty with `allowed_chats` empty: everyone).
    pub allowed_users: Vec<i64>,
    /// The allowlist of chats.
    pub allowed_chats: Vec<i64>,
    /// Edits or one message.
    pub streaming: Streaming,
    /// Least time between two edits.
    pub edit_interval: Duration,
    /// Conversation memory per chat, in tokens.
    pub memory_tokens: u32,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// `getUpdates` long-poll timeout.
    pub poll_timeout: Duration,
    /// Per-user daily spend, USD.
    pub user_daily_budget_usd: Option<f64>,
    /// Output limit of the bot's requests.
    pub max_output_tokens: Option<u32>,
}

impl TelegramConfig {
    /// Whether `user` may use the admin commands.
    pub fn is_admin(&self, user: i64) -> bool {
        self.admins.contains(&user)
    }

    /// Whether the allowlist lets `user` in `chat` use the bot.
    pub fn allows(&self, user: i64, chat: i64) -> bool {
        (self.allowed_users.is_empty() && self.allowed_chats.is_empty())
            || self.allowed_users.contains(&user)
            || self.allowed_chats.contains(&chat)
    }
}

/// Validates `[telegram]`: `None` when the section is absent or disabled.
pub fn validate(
    raw: Option<&RawTelegram>,
    env: &dyn Env,
    routes: &[Route],
    providers: &[std::sync::Arc<Provider>],
) -> Result<Option<TelegramConfig>, ConfigError> {
    let Some(raw) = raw.filter(|raw| raw.enabled.unwrap_or(true)) else {
        return Ok(None);
    };
    let token = env.var(TOKEN_ENV).ok_or_else(|| {
        ConfigError::new(
            "telegram",
            format!("the bot needs its token in ${TOKEN_ENV} (from @BotFather)"),
        )
    })?;
    if token.contains(char::is_whitespace) || token.contains('/') {
        return Err(ConfigError::new(
            "telegram",
            format!("${TOKEN_ENV} does not look like a bot token (`123456:ABC...`)"),
        ));
    }
    let (api_url, api_key) = match env.var(API_URL_ENV) {
        Some(url) => (url, format!("${API_URL_ENV}")),
        None => (
            raw.api_url
                .clone()
                .unwrap_or_else(|| DEFAULT_API_URL.to_owned()),
            "telegram.api_url".to_owned(),
        ),
    };
    let api_url = api_url.trim().trim_end_matches('/').to_owned();
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return Err(ConfigError::new(
            api_key,
            "must be an http:// or https:// URL",
        ));
    }
    let mode = match raw.mode.as_deref().unwrap_or("webhook") {
        "webhook" => TelegramMode::Webhook,
        "polling" => TelegramMode::Polling,
        other => {
            return Err(ConfigError::new(
                "telegram.mode",
                format!("unknown mode `{other}` (webhook or polling)"),
            ));
        }
    };
    let streaming = match raw.streaming.as_deref().unwrap_or("edits") {
        "edits" => Streaming::Edits,
        "message" => Streaming::Message,
        other => {
            return Err(ConfigError::new(
                "telegram.streaming",
                format!("unknown streaming `{other}` (edits or message)"),
            ));
        }
    };
    let webhook_secret = env.var(WEBHOOK_SECRET_ENV);
    if let Some(secret) = &webhook_secret
        && !is_valid_secret(secret)
    {
        return Err(ConfigError::new(
            format!("${WEBHOOK_SECRET_ENV}"),
            "must be 1 to 256 characters from A-Z, a-z, 0-9, _ and - (Telegram's rule)",
        ));
    }
    let key =
        match &raw.key_env {
            Some(name) => Some(env.var(name).ok_or_else(|| {
                ConfigError::new("telegram.key_env", format!("${name} is not set"))
            })?),
            None => None,
        };
    if raw.models.is_empty() {
        return Err(ConfigError::new(
            "telegram.models",
            "name the routes the bot may use; the first is the default",
        ));
    }
    for (index, model) in raw.models.iter().enumerate() {
        if !is_servable(model, routes, providers) {
            return Err(ConfigError::new(
                format!("telegram.models[{index}]"),
                format!("`{model}` is not a route, a provider/model, or a model a provider serves"),
            ));
        }
    }
    let edit_interval = raw.edit_interval.unwrap_or(Duration::from_millis(1500));
    if edit_interval < Duration::from_secs(1) {
        // Telegram allows about one message (edits included) per second in a chat.
        return Err(ConfigError::new(
            "telegram.edit_interval",
            "must be at least 1s (Telegram's limit is about one message per second per chat)",
        ));
    }
    let memory_tokens = raw.memory_tokens.unwrap_or(2000);
    if memory_tokens < 100 {
        return Err(ConfigError::new(
            "telegram.memory_tokens",
            "must be at least 100",
        ));
    }
    let poll_timeout = raw.poll_timeout.unwrap_or(Duration::from_secs(30));
    if poll_timeout > Duration::from_secs(50) {
        return Err(ConfigError::new(
            "telegram.poll_timeout",
            "must be at most 50s",
        ));
    }
    if let Some(budget) = raw.user_daily_budget_usd
        && !(budget.is_finite() && budget > 0.0)
    {
        return Err(ConfigError::new(
            "telegram.user_daily_budget_usd",
            "must be a positive amount in USD",
        ));
    }
    if raw.max_output_tokens == Some(0) {
        return Err(ConfigError::new(
            "telegram.max_output_tokens",
            "must be at least 1",
        ));
    }
    Ok(Some(TelegramConfig {
        token: Secret::new(token),
        api_url,
        mode,
        webhook_secret: webhook_secret.map(Secret::new),
        key: key.map(Secret::new),
        models: raw.models.clone(),
        admins: raw.admins.clone(),
        allowed_users: raw.allowed_users.clone(),
        allowed_chats: raw.allowed_chats.clone(),
        streaming,
        edit_interval,
        memory_tokens,
        system_prompt: raw
            .system_prompt
            .clone()
            .filter(|prompt| !prompt.trim().is_empty()),
        poll_timeout,
        user_daily_budget_usd: raw.user_daily_budget_usd,
        max_output_tokens: raw.max_output_tokens,
    }))
}

/// Telegram's rule for `secret_token`: 1–256 characters from `A-Z a-z 0-9 _ -`.
pub fn is_valid_secret(secret: &str) -> bool {
    (1..=256).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_servable(model: &str, routes: &[Route], providers: &[std::sync::Arc<Provider>]) -> bool {
    if routes.iter().any(|route| route.name == model) {
        return true;
    }
    if let Some((provider, rest)) = model.split_once('/')
        && !rest.is_empty()
        && providers.iter().any(|p| p.name == provider)
    {
        return true;
    }
    providers.iter().any(|provider| provider.serves(model))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn check(toml: &str, vars: &[(&str, &str)]) -> Result<Option<TelegramConfig>, ConfigError> {
        let text = format!(
            "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             api_key_env = \"K\"\nmodels = [\"gpt-*\"]\n[[routes]]\nmodel = \"assistant\"\n\
             [[routes.targets]]\nprovider = \"p\"\nmodel = \"gpt-4o\"\n{toml}"
        );
        let raw = crate::config::parse_toml(&text)?;
        let mut vars = vars.to_vec();
        vars.push(("K", "k"));
        crate::config::validate(&raw, &env(&vars)).map(|config| config.telegram)
    }

    #[test]
    fn absent_or_disabled_is_off() {
        assert!(check("", &[]).unwrap().is_none());
        assert!(
            check("[telegram]\nenabled = false\n", &[])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn defaults_and_environment() {
        let config = check(
            "[telegram]\nmodels = [\"assistant\", \"p/gpt-4o-mini\", \"gpt-4.1\"]\n",
            &[
                (TOKEN_ENV, "123:abc"),
                (API_URL_ENV, "http://127.0.0.1:9/"),
                (WEBHOOK_SECRET_ENV, "s3cret_-"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(config.api_url, "http://127.0.0.1:9");
        assert_eq!(config.mode, TelegramMode::Webhook);
        assert_eq!(config.streaming, Streaming::Edits);
        assert_eq!(config.token.expose(), "123:abc");
        assert_eq!(config.webhook_secret.as_ref().unwrap().expose(), "s3cret_-");
        assert!(config.allows(1, 2), "no allowlist: everyone");
        let config = check(
            "[telegram]\nmodels = [\"assistant\"]\nallowed_users = [7]\n",
            &[(TOKEN_ENV, "123:abc")],
        )
        .unwrap()
        .unwrap();
        assert_eq!(config.api_url, DEFAULT_API_URL);
        assert!(config.allows(7, 1));
        assert!(!config.allows(8, 1));
    }

    #[test]
    fn errors_name_the_key() {
        let token = [(TOKEN_ENV, "123:abc")];
        let key_of = |toml: &str, vars: &[(&str, &str)]| check(toml, vars).unwrap_err().key;
        assert_eq!(
            key_of("[telegram]\nmodels = [\"assistant\"]\n", &[]),
            "telegram"
        );
        assert_eq!(key_of("[telegram]\n", &token), "telegram.models");
        assert_eq!(
            key_of("[telegram]\nmodels = [\"assistant\", \"nope\"]\n", &token),
            "telegram.models[1]"
        );
        assert_eq!(
            key_of(
                "[telegram]\nmodels = [\"assistant\"]\nmode = \"push\"\n",
                &token
            ),
            "telegram.mode"
        );
        assert_eq!(
            key_of(
                "[telegram]\nmodels = [\"assistant\"]\nstreaming = \"x\"\n",
                &token
            ),
            "telegram.streaming"
        );
        assert_eq!(
            key_of(
                "[telegram]\nmodels = [\"assistant\"]\nedit_interval = \"100ms\"\n",
                &token
            ),
            "telegram.edit_interval"
        );
        assert_eq!(
            key_of(
                "[telegram]\nmodels = [\"assistant\"]\nkey_env = \"NOPE\"\n",
                &token
            ),
            "telegram.key_env"
        );
        assert_eq!(
            key_of(
                "[telegram]\nmodels = [\"assistant\"]\napi_url = \"ftp://x\"\n",
                &token
            ),
            "telegram.api_url"
        );
        assert_eq!(
            key_of(
                "[telegram]\nmodels = [\"assistant\"]\n",
                &[(TOKEN_ENV, "1:a"), (WEBHOOK_SECRET_ENV, "has space")]
            ),
            "$TELEGRAM_WEBHOOK_SECRET"
        );
        assert!(
            check("[telegram]\nmodels = [\"assistant\"]\nbogus = 1\n", &token).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn secrets_follow_telegrams_rule() {
        assert!(is_valid_secret("abc_DEF-123"));
        assert!(!is_valid_secret(""));
        assert!(!is_valid_secret("a b"));
        assert!(!is_valid_secret(&"a".repeat(257)));
    }
}
