//! `[alerts]`: validated alert rules and notifiers.
//!
//! ```toml
//! [alerts]
//! interval = "5s"                 # how often rules are evaluated (default 5s)
//! history = 200                   # alerts kept for GET /admin/alerts (default 200)
//!
//! [[alerts.rules]]
//! name = "provider-errors"
//! metric = "error_rate"           # see `AlertMetric`
//! scope = "provider"              # global | route | provider | model | key
//! # member = "openai"             # one member; without it, each member has its own state
//! threshold = 0.2
//! direction = "above"             # or "below" (the cache hit rate's default)
//! window = "1m"
//! for = "30s"                     # the breach must hold this long (default 0s)
//! cooldown = "5m"                 # least time from a resolution to the next firing
//! severity = "critical"           # info | warning (default) | critical
//! notifiers = ["ops"]             # default: all
//!
//! [[alerts.notifiers]]
//! name = "ops"
//! kind = "webhook"                # webhook | slack | telegram | log
//! url = "https://hooks.example.com/switchyard"
//! secret_env = "ALERT_WEBHOOK_SECRET"
//! ```
//!
//! Secrets (the webhook's signing secret, the Telegram bot token, a URL that embeds a token)
//! come from environment variables the file names, never from the file.

use std::time::Duration;

use super::raw::{RawAlertRule, RawAlerts, RawChatId, RawNotifier};
use super::{ConfigError, Env, Secret};
use crate::alerts::{AlertMetric, AlertScope, Direction, Severity};

/// The Telegram Bot API's public base URL.
pub const TELEGRAM_API: &str = "https://api.telegram.org";

/// The variable holding the Telegram bot token when a notifier names none.
pub const TELEGRAM_TOKEN_ENV: &str = "TELEGRAM_BOT_TOKEN";

/// The name of the log notifier used when none is configured.
pub const DEFAULT_NOTIFIER: &str = "log";

/// Validated `[alerts]`.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// How often the rules are evaluated.
    pub interval: Duration,
    /// How many alerts (firing and resolved) the history keeps.
    pub history: usize,
    /// The rules, in config order.
    pub rules: Vec<AlertRule>,
    /// The notifiers, in config order; a log notifier when none is configured.
    pub notifiers: Vec<NotifierConfig>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            interval: Duration::from_secs(5),
            history: 200,
            rules: Vec::new(),
            notifiers: vec![NotifierConfig::log(DEFAULT_NOTIFIER)],
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct AlertRule {
    /// Unique name.
    pub name: String,
    /// What it measures.
    pub metric: AlertMetric,
    /// What the value is split by.
    pub scope: AlertScope,
    /// The one member watched; `None`: each member separately (one for `global`).
    pub member: Option<String>,
    /// Budget metrics: the one budget watched (`key-budget` for keys' own budgets).
    pub budget: Option<String>,
    /// The threshold, in the metric's unit (shares for rates and budgets).
    pub threshold: f64,
    /// Which side of the threshold is a breach.
    pub direction: Direction,
    /// The window a windowed metric is computed over.
    pub window: Duration,
    /// How long a breach must hold before the alert fires.
    pub for_duration: Duration,
    /// Least time from a resolution to the next firing of the same member.
    pub cooldown: Duration,
    /// How urgent it is.
    pub severity: Severity,
    /// The notifiers it goes to: indexes into [`AlertConfig::notifiers`].
    pub notifiers: Vec<usize>,
    /// Per-request metrics: fewer requests in the window count as no data.
    pub min_requests: u64,
}

/// One validated notifier.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Unique name.
    pub name: String,
    /// Where it sends.
    pub kind: NotifierKind,
    /// Notifications waiting for delivery, at most; past it they are dropped and counted.
    pub queue: usize,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// One attempt's deadline.
    pub timeout: Duration,
    /// The first retry's delay, doubled per attempt (up to a minute); a receiver's
    /// `Retry-After` or Telegram's `retry_after` wins.
    pub retry_backoff: Duration,
}

impl NotifierConfig {
    /// A log notifier with the defaults.
    pub fn log(name: &str) -> Self {
        NotifierConfig {
            name: name.to_owned(),
            kind: NotifierKind::Log,
            queue: DEFAULT_QUEUE,
            max_attempts: 1,
            timeout: DEFAULT_TIMEOUT,
            retry_backoff: DEFAULT_BACKOFF,
        }
    }
}

/// Where a notifier sends.
#[derive(Debug, Clone)]
pub enum NotifierKind {
    /// A JSON POST, signed with HMAC-SHA256 when a secret is set.
    Webhook {
        /// The URL.
        url: Secret,
        /// The signing secret.
        secret: Option<Secret>,
    },
    /// A Slack-compatible incoming webhook (`{"text", "blocks"}`).
    Slack {
        /// The webhook URL (it embeds a token).
        url: Secret,
    },
    /// Telegram's `sendMessage`, to each chat.
    Telegram {
        /// The Bot API's base URL, without a trailing slash.
        api_base: String,
        /// The bot token.
        token: Secret,
        /// The chats to send to.
        chat_ids: Vec<String>,
    },
    /// The gateway's log (tracing).
    Log,
}

impl NotifierKind {
    /// The config spelling.
    pub const fn as_str(&self) -> &'static str {
        match self {
            NotifierKind::Webhook { .. } => "webhook",
            NotifierKind::Slack { .. } => "slack",
            NotifierKind::Telegram { .. } => "telegram",
            NotifierKind::Log => "log",
        }
    }
}

const DEFAULT_QUEUE: usize = 256;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3_600);

/// What the rules may refer to.
pub(super) struct Known<'a> {
    pub(super) provider: &'a dyn Fn(&str) -> bool,
    pub(super) route: &'a dyn Fn(&str) -> bool,
    pub(super) budget: &'a dyn Fn(&str) -> bool,
    /// The Telegram bot, when `[telegram]` is configured: a Telegram notifier defaults to its
    /// token, its Bot API URL and its admins' chats.
    pub(super) bot: Option<&'a super::telegram::TelegramConfig>,
}

pub(super) fn validate(
    raw: &RawAlerts,
    env: &dyn Env,
    known: &Known<'_>,
) -> Result<AlertConfig, ConfigError> {
    let interval = raw.interval.unwrap_or(Duration::from_secs(5));
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(300) {
        return Err(ConfigError::new(
            "alerts.interval",
            "must be between 100ms and 5m",
        ));
    }
    let history = raw.history.unwrap_or(200);
    if !(1..=10_000).contains(&history) {
        return Err(ConfigError::new(
            "alerts.history",
            "must be between 1 and 10000",
        ));
    }
    let mut notifiers: Vec<NotifierConfig> = Vec::with_capacity(raw.notifiers.len());
    for (index, notifier) in raw.notifiers.iter().enumerate() {
        let key = format!("alerts.notifiers[{index}]");
        let notifier = validate_notifier(notifier, &key, env, known.bot)?;
        if notifiers.iter().any(|n| n.name == notifier.name) {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!("duplicate notifier name `{}`", notifier.name),
            ));
        }
        notifiers.push(notifier);
    }
    if notifiers.is_empty() {
        notifiers.push(NotifierConfig::log(DEFAULT_NOTIFIER));
    }
    let mut rules: Vec<AlertRule> = Vec::with_capacity(raw.rules.len());
    for (index, rule) in raw.rules.iter().enumerate() {
        let key = format!("alerts.rules[{index}]");
        let rule = validate_rule(rule, &key, &notifiers, known)?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!("duplicate rule name `{}`", rule.name),
            ));
        }
        rules.push(rule);
    }
    Ok(AlertConfig {
        interval,
        history,
        rules,
        notifiers,
    })
}

fn check_name(name: &str, key: &str) -> Result<String, ConfigError> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ConfigError::new(
            format!("{key}.name"),
            format!("`{name}` is not a valid name (1 to 64 letters, digits, `-`, `_` or `.`)"),
        ));
    }
    Ok(name.to_owned())
}

fn validate_rule(
    raw: &RawAlertRule,
    key: &str,
    notifiers: &[NotifierConfig],
    known: &Known<'_>,
) -> Result<AlertRule, ConfigError> {
    let name = check_name(&raw.name, key)?;
    let metric = AlertMetric::parse(&raw.metric).ok_or_else(|| {
        let names: Vec<&str> = AlertMetric::ALL.iter().map(|m| m.as_str()).collect();
        ConfigError::new(
            format!("{key}.metric"),
            format!(
                "unknown metric `{}` (one of {})",
                raw.metric,
                names.join(", ")
            ),
        )
    })?;
    let allowed = metric.scopes();
    let scope = match raw.scope.as_deref() {
        None => metric.default_scope(),
        Some(text) => {
            let scope = AlertScope::parse(text).ok_or_else(|| {
                ConfigError::new(
                    format!("{key}.scope"),
                    format!("unknown scope `{text}` (global, route, provider, model or key)"),
                )
            })?;
            if !allowed.contains(&scope) {
                let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                let hint = if matches!(
                    metric,
                    AlertMetric::BudgetUsed | AlertMetric::BudgetForecast
                ) {
                    "budget metrics are per budget member; choose them with `budget` and \
                     `member`"
                        .to_owned()
                } else {
                    format!("its scopes: {}", names.join(", "))
                };
                return Err(ConfigError::new(
                    format!("{key}.scope"),
                    format!("`{}` does not apply to {} ({hint})", text, metric.as_str()),
                ));
            }
            scope
        }
    };
    let member = match &raw.member {
        None => None,
        Some(member) => {
            let member = member.trim();
            if member.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.member"),
                    "must not be empty (leave it out for each member)",
                ));
            }
            match scope {
                AlertScope::Global => {
                    return Err(ConfigError::new(
                        format!("{key}.member"),
                        "a global rule has no member; set `scope` to split it",
                    ));
                }
                AlertScope::Provider if !(known.provider)(member) => {
                    return Err(ConfigError::new(
                        format!("{key}.member"),
                        format!("`{member}` is not a configured provider"),
                    ));
                }
                AlertScope::Route if !(known.route)(member) => {
                    return Err(ConfigError::new(
                        format!("{key}.member"),
                        format!("`{member}` is not a configured route"),
                    ));
                }
                _ => {}
            }
            Some(member.to_owned())
        }
    };
    let budget = match (&raw.budget, scope) {
        (None, _) => None,
        (Some(budget), AlertScope::Budget) => {
            if !(known.budget)(budget) && budget != super::budgets::KEY_BUDGET {
                return Err(ConfigError::new(
                    format!("{key}.budget"),
                    format!(
                        "`{budget}` is not a configured budget (or `{}` for keys' own budgets)",
                        super::budgets::KEY_BUDGET
                    ),
                ));
            }
            Some(budget.clone())
        }
        (Some(_), _) => {
            return Err(ConfigError::new(
                format!("{key}.budget"),
                "only budget_used and budget_forecast rules name a budget",
            ));
        }
    };
    let direction = match raw.direction.as_deref() {
        None => metric.default_direction(),
        Some("above") => Direction::Above,
        Some("below") => Direction::Below,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{key}.direction"),
                format!("unknown direction `{other}` (above or below)"),
            ));
        }
    };
    let threshold = match raw.threshold {
        Some(threshold) => threshold,
        None if matches!(metric, AlertMetric::ProviderDown | AlertMetric::BreakerOpen) => 0.0,
        None => {
            return Err(ConfigError::new(
                format!("{key}.threshold"),
                format!("{} needs a threshold", metric.as_str()),
            ));
        }
    };
    if !threshold.is_finite() || threshold < 0.0 {
        return Err(ConfigError::new(
            format!("{key}.threshold"),
            "must be a non-negative number",
        ));
    }
    if metric.is_ratio() && threshold > 1.0 {
        return Err(ConfigError::new(
            format!("{key}.threshold"),
            format!("{} is a share from 0 to 1 (0.05 = 5 %)", metric.as_str()),
        ));
    }
    let window = match raw.window {
        None => metric.default_window(),
        Some(_) if !metric.windowed() => {
            return Err(ConfigError::new(
                format!("{key}.window"),
                format!(
                    "{} is a state read every tick; it has no window (use `for`)",
                    metric.as_str()
                ),
            ));
        }
        Some(window) if window < Duration::from_secs(1) || window > MAX_WINDOW => {
            return Err(ConfigError::new(
                format!("{key}.window"),
                "must be between 1s and 24h",
            ));
        }
        Some(window) => window,
    };
    let min_requests = match raw.min_requests {
        None => 1,
        Some(_) if !metric.per_request() => {
            return Err(ConfigError::new(
                format!("{key}.min_requests"),
                format!("{} is not computed from requests", metric.as_str()),
            ));
        }
        Some(0) => {
            return Err(ConfigError::new(
                format!("{key}.min_requests"),
                "must be at least 1",
            ));
        }
        Some(count) => count,
    };
    let severity = match raw.severity.as_deref() {
        None => Severity::Warning,
        Some(text) => Severity::parse(text).ok_or_else(|| {
            ConfigError::new(
                format!("{key}.severity"),
                format!("unknown severity `{text}` (info, warning or critical)"),
            )
        })?,
    };
    let notifier_indexes = match &raw.notifiers {
        None => (0..notifiers.len()).collect(),
        Some(names) => {
            if names.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.notifiers"),
                    "name at least one notifier (leave it out for all)",
                ));
            }
            let mut indexes = Vec::with_capacity(names.len());
            for (position, name) in names.iter().enumerate() {
                let Some(index) = notifiers.iter().position(|n| &n.name == name) else {
                    let known: Vec<&str> = notifiers.iter().map(|n| n.name.as_str()).collect();
                    return Err(ConfigError::new(
                        format!("{key}.notifiers[{position}]"),
                        format!(
                            "unknown notifier `{name}` (configured: {})",
                            known.join(", ")
                        ),
                    ));
                };
                if !indexes.contains(&index) {
                    indexes.push(index);
                }
            }
            indexes
        }
    };
    let for_duration = raw.for_duration.unwrap_or(Duration::ZERO);
    if for_duration > MAX_WINDOW {
        return Err(ConfigError::new(
            format!("{key}.for"),
            "must be at most 24h",
        ));
    }
    let cooldown = raw.cooldown.unwrap_or(Duration::from_secs(300));
    if cooldown > MAX_WINDOW {
        return Err(ConfigError::new(
            format!("{key}.cooldown"),
            "must be at most 24h",
        ));
    }
    Ok(AlertRule {
        name,
        metric,
        scope,
        member,
        budget,
        threshold,
        direction,
        window,
        for_duration,
        cooldown,
        severity,
        notifiers: notifier_indexes,
        min_requests,
    })
}

/// An absolute http(s) URL with a host (a query string is allowed: some webhooks carry
/// their token there).
fn check_url(url: &str, key: &str) -> Result<String, ConfigError> {
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(key, "is not a valid URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(ConfigError::new(key, "must start with http:// or https://"));
    }
    if uri.host().is_none() {
        return Err(ConfigError::new(key, "has no host"));
    }
    Ok(url.trim().to_owned())
}

fn secret_from(env: &dyn Env, variable: &str, key: &str) -> Result<Secret, ConfigError> {
    env.var(variable)
        .map(Secret::new)
        .ok_or_else(|| ConfigError::new(key, format!("environment variable {variable} is not set")))
}

/// The URL of a webhook or Slack notifier: `url`, or the variable `url_env` names.
fn notifier_url(raw: &RawNotifier, key: &str, env: &dyn Env) -> Result<Secret, ConfigError> {
    match (&raw.url, &raw.url_env) {
        (Some(url), None) => Ok(Secret::new(check_url(url, &format!("{key}.url"))?)),
        (None, Some(variable)) => {
            let url = secret_from(env, variable, &format!("{key}.url_env"))?;
            // The message must not quote the URL: it may embed a token.
            check_url(url.expose(), &format!("{key}.url_env"))
                .map_err(|error| {
                    ConfigError::new(
                        error.key,
                        format!("the URL in {variable} {}", error.message),
                    )
                })
                .map(Secret::new)
        }
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{key}.url_env"),
            "set url or url_env, not both",
        )),
        (None, None) => Err(ConfigError::new(
            format!("{key}.url"),
            format!("a {} notifier needs url (or url_env)", raw.kind),
        )),
    }
}

fn validate_notifier(
    raw: &RawNotifier,
    key: &str,
    env: &dyn Env,
    bot: Option<&super::telegram::TelegramConfig>,
) -> Result<NotifierConfig, ConfigError> {
    let name = check_name(&raw.name, key)?;
    // Keys that belong to other kinds are mistakes, not silently ignored.
    let not_for = |field: &str, set: bool, kinds: &str| -> Result<(), ConfigError> {
        if set {
            Err(ConfigError::new(
                format!("{key}.{field}"),
                format!("only for kind {kinds}, not {}", raw.kind),
            ))
        } else {
            Ok(())
        }
    };
    let kind = match raw.kind.as_str() {
        "webhook" => {
            not_for("bot_token_env", raw.bot_token_env.is_some(), "telegram")?;
            not_for("chat_ids", !raw.chat_ids.is_empty(), "telegram")?;
            not_for("api_base", raw.api_base.is_some(), "telegram")?;
            NotifierKind::Webhook {
                url: notifier_url(raw, key, env)?,
                secret: match &raw.secret_env {
                    Some(variable) => {
                        Some(secret_from(env, variable, &format!("{key}.secret_env"))?)
                    }
                    None => None,
                },
            }
        }
        "slack" => {
            not_for("secret_env", raw.secret_env.is_some(), "webhook")?;
            not_for("bot_token_env", raw.bot_token_env.is_some(), "telegram")?;
            not_for("chat_ids", !raw.chat_ids.is_empty(), "telegram")?;
            not_for("api_base", raw.api_base.is_some(), "telegram")?;
            NotifierKind::Slack {
                url: notifier_url(raw, key, env)?,
            }
        }
        "telegram" => {
            not_for("url", raw.url.is_some(), "webhook or slack")?;
            not_for("url_env", raw.url_env.is_some(), "webhook or slack")?;
            not_for("secret_env", raw.secret_env.is_some(), "webhook")?;
            // Unless the notifier names its own, the bot's token, Bot API and admins.
            let token = match (&raw.bot_token_env, bot) {
                (None, Some(bot)) => bot.token.clone(),
                (variable, _) => secret_from(
                    env,
                    variable.as_deref().unwrap_or(TELEGRAM_TOKEN_ENV),
                    &format!("{key}.bot_token_env"),
                )?,
            };
            let mut chat_ids = Vec::with_capacity(raw.chat_ids.len());
            if raw.chat_ids.is_empty() {
                match bot {
                    Some(bot) if !bot.admins.is_empty() => {
                        chat_ids.extend(bot.admins.iter().map(i64::to_string));
                    }
                    _ => {
                        return Err(ConfigError::new(
                            format!("{key}.chat_ids"),
                            "name at least one chat id to send to (or configure [telegram] \
                             with admins: their chats are the default)",
                        ));
                    }
                }
            }
            for (index, chat) in raw.chat_ids.iter().enumerate() {
                let id = match chat {
                    RawChatId::Number(number) => number.to_string(),
                    RawChatId::Text(text) => text.trim().to_owned(),
                };
                let valid = id.parse::<i64>().is_ok()
                    || (id.len() > 1
                        && id.starts_with('@')
                        && id[1..]
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_'));
                if !valid {
                    return Err(ConfigError::new(
                        format!("{key}.chat_ids[{index}]"),
                        format!("`{id}` is not a chat id (a number, or @channelname)"),
                    ));
                }
                chat_ids.push(id);
            }
            let api_base = match (&raw.api_base, bot) {
                (Some(base), _) => check_url(base, &format!("{key}.api_base"))?,
                (None, Some(bot)) => bot.api_url.clone(),
                (None, None) => TELEGRAM_API.to_owned(),
            };
            NotifierKind::Telegram {
                api_base: api_base.trim_end_matches('/').to_owned(),
                token,
                chat_ids,
            }
        }
        "log" => {
            not_for("url", raw.url.is_some(), "webhook or slack")?;
            not_for("url_env", raw.url_env.is_some(), "webhook or slack")?;
            not_for("secret_env", raw.secret_env.is_some(), "webhook")?;
            not_for("bot_token_env", raw.bot_token_env.is_some(), "telegram")?;
            not_for("chat_ids", !raw.chat_ids.is_empty(), "telegram")?;
            not_for("api_base", raw.api_base.is_some(), "telegram")?;
            NotifierKind::Log
        }
        other => {
            return Err(ConfigError::new(
                format!("{key}.kind"),
                format!("unknown kind `{other}` (webhook, slack, telegram or log)"),
            ));
        }
    };
    let queue = raw.queue.unwrap_or(DEFAULT_QUEUE);
    if !(1..=100_000).contains(&queue) {
        return Err(ConfigError::new(
            format!("{key}.queue"),
            "must be between 1 and 100000",
        ));
    }
    let max_attempts = raw.max_attempts.unwrap_or(5);
    if !(1..=20).contains(&max_attempts) {
        return Err(ConfigError::new(
            format!("{key}.max_attempts"),
            "must be between 1 and 20",
        ));
    }
    let timeout = raw.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() || timeout > Duration::from_secs(120) {
        return Err(ConfigError::new(
            format!("{key}.timeout"),
            "must be above 0 and at most 2m",
        ));
    }
    let retry_backoff = raw.retry_backoff.unwrap_or(DEFAULT_BACKOFF);
    if retry_backoff.is_zero() || retry_backoff > Duration::from_secs(60) {
        return Err(ConfigError::new(
            format!("{key}.retry_backoff"),
            "must be above 0 and at most 1m",
        ));
    }
    Ok(NotifierConfig {
        name,
        kind,
        queue,
        max_attempts,
        timeout,
        retry_backoff,
    })
}

#[cfg(test)]
mod tests;
