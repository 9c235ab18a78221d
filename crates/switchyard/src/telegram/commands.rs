//! The bot's commands. Replies are Markdown (sent as Telegram HTML).
//!
//! Everyone: `/start`, `/help`, `/model [NAME]`, `/reset`, `/usage`. Admins (configured user
//! ids) only: `/stats` (the analytics query over 1 h, 24 h and 7 d), `/providers` (the
//! tracker's health), `/drain NAME`, `/enable NAME`, `/alerts` (firing and recently resolved
//! alerts). They read the gateway's own state, the same as the admin API.

use switchyard_core::analytics::Tier;
use switchyard_core::analytics::query::{Fold, Query};

use super::Bot;
use super::chat::{day_of, wait_text};
use super::types::{Message, User};
use crate::app::AppState;

/// A parsed command: its name (lower case, without `/` and `@bot`) and its argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `model`, `stats`...
    pub name: String,
    /// The rest of the text, trimmed.
    pub argument: String,
}

/// The command in `text`, if it is one.
pub fn parse(text: &str) -> Option<Command> {
    let rest = text.strip_prefix('/')?;
    let (head, argument) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let name = head
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    (!name.is_empty()).then(|| Command {
        name,
        argument: argument.trim().to_owned(),
    })
}

const ADMIN_ONLY: [&str; 5] = ["stats", "providers", "drain", "enable", "alerts"];

/// Runs a command; the reply.
pub async fn run(
    bot: &Bot,
    app: &AppState,
    message: &Message,
    from: &User,
    command: Command,
) -> String {
    let chat = message.chat.id;
    if ADMIN_ONLY.contains(&command.name.as_str()) && !bot.config.is_admin(from.id) {
        return format!("/{} is for this bot's admins only.", command.name);
    }
    match command.name.as_str() {
        "start" | "help" => help(bot, from),
        "model" => model(bot, chat, &command.argument).await,
        "reset" => match bot.memory.reset(chat).await {
            Ok(()) => "Conversation forgotten. Let's start again.".to_owned(),
            Err(error) => {
                tracing::warn!(%error, "telegram: /reset failed");
                "Sorry, the conversation could not be forgotten; try again later.".to_owned()
            }
        },
        "usage" => usage(bot, from).await,
        "stats" => stats(app).await,
        "providers" => providers(app),
        "drain" | "enable" => drain(app, &command),
        "alerts" => alerts(app),
        other => format!("Unknown command /{other}. /help lists the commands."),
    }
}

fn help(bot: &Bot, from: &User) -> String {
    let mut text = String::from(
        "Hi! I answer with an LLM through the Switchyard gateway. Just write to me \
         (in groups: mention me or reply to me).\n\n\
         /model: list the models, or `/model NAME` to switch\n\
         /reset: forget our conversation\n\
         /usage: your tokens and cost\n\
         /help: this message",
    );
    if bot.config.is_admin(from.id) {
        text.push_str(
            "\n\nAdmin:\n/stats: requests, errors, p95, cost and cache hits\n\
             /providers: provider health\n/drain NAME, /enable NAME: take a provider out of \
             rotation or put it back\n/alerts: alerting",
        );
    }
    text
}

async fn model(bot: &Bot, chat: i64, argument: &str) -> String {
    let current = bot
        .memory
        .model(chat)
        .await
        .ok()
        .flatten()
        .filter(|model| bot.config.models.contains(model))
        .or_else(|| bot.config.models.first().cloned())
        .unwrap_or_default();
    if argument.is_empty() {
        let list: Vec<String> = bot
            .config
            .models
            .iter()
            .map(|model| {
                let mark = if *model == current { " (current)" } else { "" };
                format!("- `{model}`{mark}")
            })
            .collect();
        return format!("Models:\n{}\n\nSwitch with `/model NAME`.", list.join("\n"));
    }
    if !bot.config.models.iter().any(|model| model == argument) {
        return format!(
            "`{argument}` is not one of this bot's models: {}.",
            bot.config
                .models
                .iter()
                .map(|model| format!("`{model}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    match bot.memory.set_model(chat, argument.to_owned()).await {
        Ok(()) => format!("This chat now uses `{argument}`."),
        Err(error) => {
            tracing::warn!(%error, "telegram: /model failed");
            "Sorry, the model could not be changed; try again later.".to_owned()
        }
    }
}

async fn usage(bot: &Bot, from: &User) -> String {
    let now = crate::cache::unix_ms();
    let today = day_of(now);
    let (Ok(day), Ok(all)) = (
        bot.memory.usage(from.id, today).await,
        bot.memory.usage(from.id, 0).await,
    ) else {
        return "Sorry, your usage could not be read; try again later.".to_owned();
    };
    let line = |label: &str, usage: super::memory::Usage| {
        format!(
            "{label}: {} requests, {} tokens in, {} tokens out, ${:.4}",
            usage.requests, usage.tokens_in, usage.tokens_out, usage.cost_usd
        )
    };
    let mut text = format!(
        "Your usage\n{}\n{}",
        line("Today (UTC)", day),
        line("All time", all)
    );
    if let Some(limit) = bot.config.user_daily_budget_usd {
        let left = (limit - day.cost_usd).max(0.0);
        text.push_str(&format!(
            "\nDaily budget: ${left:.4} of ${limit:.2} left; it resets in {}.",
            wait_text(std::time::Duration::from_millis(
                86_400_000 - now % 86_400_000
            ))
        ));
    }
    text
}

/// One line of `/stats`: the analytics totals over `range` (`1h`, `24h`, `7d`).
async fn stats_line(app: &AppState, range: &str) -> String {
    let now = crate::analytics::pipeline::now_ms();
    let from = format!("-{range}");
    let params = [
        ("from", from.as_str()),
        ("interval", range),
        ("metrics", "requests,errors,p95,cost,cache_hit_rate"),
    ];
    let query = match Query::parse(params.iter().copied(), now) {
        Ok(query) => query,
        Err(error) => return format!("{range}: {error}"),
    };
    let answer = if query.tier == Tier::Second {
        let (from, to) = query.bucket_range();
        let mut fold = Fold::new(&query);
        app.analytics.aggregator().fold_seconds(from, to, &mut fold);
        fold.finish()
    } else {
        match app.analytics.store.answer(query).await {
            Ok(answer) => answer,
            Err(error) => {
                return format!("{range}: the analytics store could not answer ({error})");
            }
        }
    };
    let number = |name: &str| answer.totals.get(name).and_then(serde_json::Value::as_f64);
    let requests = number("requests").unwrap_or(0.0);
    let errors = number("errors").unwrap_or(0.0);
    let p95 = number("p95").map_or("n/a".to_owned(), |ms| format!("{ms:.0} ms"));
    let cost = number("cost").unwrap_or(0.0);
    let hit_rate =
        number("cache_hit_rate").map_or("n/a".to_owned(), |rate| format!("{:.1}%", rate * 100.0));
    format!(
        "*{range}*: {requests:.0} requests, {errors:.0} errors, p95 {p95}, ${cost:.4}, \
         cache hits {hit_rate}"
    )
}

async fn stats(app: &AppState) -> String {
    let mut lines = vec!["Gateway analytics".to_owned()];
    for range in ["1h", "24h", "7d"] {
        lines.push(stats_line(app, range).await);
    }
    lines.join("\n")
}

fn providers(app: &AppState) -> String {
    let snapshot = app.tracker.snapshot();
    if snapshot.is_empty() {
        return "No providers are configured.".to_owned();
    }
    let mut lines = vec!["Providers".to_owned()];
    for provider in snapshot {
        let state = if provider.drained {
            "drained"
        } else if provider
            .health_check
            .as_ref()
            .is_some_and(|health| !health.healthy)
        {
            "unhealthy"
        } else {
            "in rotation"
        };
        lines.push(format!("*{}* ({}): {state}", provider.name, provider.kind));
        for target in provider.targets {
            let errors: u64 = target.errors.values().sum();
            let p95 = target
                .latency_ms
                .p95
                .map_or("n/a".to_owned(), |ms| format!("{ms:.0} ms"));
            lines.push(format!(
                "- `{}`: breaker {}, {} requests, {errors} errors, p95 {p95}",
                target.model, target.breaker, target.requests
            ));
        }
    }
    lines.join("\n")
}

fn alerts(app: &AppState) -> String {
    let rules = app.alerts.rules();
    if rules.is_empty() {
        return "Alerting is not configured on this gateway (no [[alerts.rules]]).".to_owned();
    }
    let view = app.alerts.view(5);
    let notifiers = app.alerts.notifier_names();
    let mut lines = vec![format!(
        "Alerts: {} rules; notifiers: {}",
        rules.len(),
        if notifiers.is_empty() {
            "none".to_owned()
        } else {
            notifiers.join(", ")
        }
    )];
    let since = |ms: u64| {
        let ago = crate::cache::unix_ms().saturating_sub(ms);
        wait_text(std::time::Duration::from_millis(ago))
    };
    if view.firing.is_empty() {
        lines.push("Nothing is firing.".to_owned());
    } else {
        lines.push("*Firing*".to_owned());
        for alert in &view.firing {
            lines.push(format!(
                "- `{}` ({}) {}: {} ({} ago)",
                alert.rule,
                alert.severity,
                alert.member,
                alert.message,
                since(alert.started_at)
            ));
        }
    }
    let resolved: Vec<_> = view
        .recent
        .iter()
        .filter(|alert| alert.state == "resolved")
        .collect();
    if !resolved.is_empty() {
        lines.push("*Recently resolved*".to_owned());
        for alert in resolved {
            lines.push(format!(
                "- `{}` ({}) {}, fired {} ago",
                alert.rule,
                alert.severity,
                alert.member,
                since(alert.started_at)
            ));
        }
    }
    lines.join("\n")
}

fn drain(app: &AppState, command: &super::commands::Command) -> String {
    let name = command.argument.as_str();
    if name.is_empty() {
        return format!("Usage: /{} NAME (see /providers)", command.name);
    }
    let drained = command.name == "drain";
    if !app.tracker.set_drained(name, drained) {
        return format!("There is no provider named `{name}` (see /providers).");
    }
    tracing::info!(
        provider = name,
        drained,
        "telegram: provider rotation changed by an admin"
    );
    if drained {
        format!("`{name}` is drained: new requests skip it; in-flight ones finish.")
    } else {
        format!("`{name}` is back in rotation.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse("/model  fast "),
            Some(Command {
                name: "model".into(),
                argument: "fast".into()
            })
        );
        assert_eq!(parse("/Stats@switchyard_bot").unwrap().name, "stats");
        assert_eq!(parse("hello"), None);
        assert_eq!(parse("/"), None);
    }
}
