use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::config::{Config, parse_toml, validate as validate_config};

const BASE: &str = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"

[[routes]]
model = "smart"
targets = [ { provider = "openai", model = "gpt-4o" } ]

[[budgets.limits]]
name = "daily"
scope = "global"
amount_usd = 5.0
period = "daily"
"#;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(extra: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    validate_config(&parse_toml(&format!("{BASE}\n{extra}"))?, &env(vars))
}

fn error(extra: &str, vars: &[(&str, &str)]) -> ConfigError {
    match load(extra, vars) {
        Ok(_) => panic!("accepted:\n{extra}"),
        Err(error) => error,
    }
}

#[test]
fn a_full_alerts_section_validates_with_its_defaults() {
    let config = load(
        r#"
[alerts]
interval = "2s"

[[alerts.notifiers]]
name = "hook"
kind = "webhook"
url = "https://hooks.example.com/in?token=abc"
secret_env = "HOOK_SECRET"

[[alerts.notifiers]]
name = "chat"
kind = "slack"
url_env = "SLACK_URL"

[[alerts.notifiers]]
name = "tg"
kind = "telegram"
chat_ids = [12345, "-100200300", "@ops_channel"]
api_base = "http://127.0.0.1:9/"

[[alerts.notifiers]]
name = "logs"
kind = "log"

[[alerts.rules]]
name = "provider-errors"
metric = "error_rate"
scope = "provider"
threshold = 0.2
for = "30s"
severity = "critical"
notifiers = ["hook", "tg"]

[[alerts.rules]]
name = "cache"
metric = "cache_hit_rate"
threshold = 0.5

[[alerts.rules]]
name = "spend"
metric = "cost_per_hour"
scope = "route"
member = "smart"
threshold = 2.5

[[alerts.rules]]
name = "down"
metric = "provider_down"
member = "openai"

[[alerts.rules]]
name = "budget"
metric = "budget_forecast"
budget = "daily"
threshold = 1.0
"#,
        &[
            ("HOOK_SECRET", "s3cret"),
            ("SLACK_URL", "https://hooks.slack.com/services/T/B/X"),
            ("TELEGRAM_BOT_TOKEN", "123:abc"),
        ],
    )
    .unwrap();
    let alerts = &config.alerts;
    assert_eq!(alerts.interval, Duration::from_secs(2));
    assert_eq!(alerts.history, 200);
    assert_eq!(alerts.notifiers.len(), 4);
    match &alerts.notifiers[2].kind {
        NotifierKind::Telegram {
            api_base,
            token,
            chat_ids,
        } => {
            assert_eq!(api_base, "http://127.0.0.1:9");
            assert_eq!(token.expose(), "123:abc");
            assert_eq!(chat_ids, &["12345", "-100200300", "@ops_channel"]);
        }
        other => panic!("{other:?}"),
    }
    // The token never shows in debug output.
    assert!(!format!("{:?}", alerts.notifiers[2]).contains("123:abc"));
    let errors = &alerts.rules[0];
    assert_eq!(errors.metric, AlertMetric::ErrorRate);
    assert_eq!(errors.scope, AlertScope::Provider);
    assert_eq!(errors.member, None);
    assert_eq!(errors.direction, Direction::Above);
    assert_eq!(errors.window, Duration::from_secs(60));
    assert_eq!(errors.for_duration, Duration::from_secs(30));
    assert_eq!(errors.cooldown, Duration::from_secs(300));
    assert_eq!(errors.severity, Severity::Critical);
    assert_eq!(errors.notifiers, vec![0, 2]);
    let cache = &alerts.rules[1];
    assert_eq!(cache.direction, Direction::Below);
    assert_eq!(cache.scope, AlertScope::Global);
    assert_eq!(cache.notifiers, vec![0, 1, 2, 3]);
    assert_eq!(alerts.rules[2].window, Duration::from_secs(3_600));
    assert_eq!(alerts.rules[3].scope, AlertScope::Provider);
    assert_eq!(alerts.rules[3].threshold, 0.0);
    assert_eq!(alerts.rules[4].scope, AlertScope::Budget);
    assert_eq!(alerts.rules[4].budget.as_deref(), Some("daily"));
}

#[test]
fn without_notifiers_alerts_go_to_the_log() {
    let config = load(
        "[[alerts.rules]]\nname = \"r\"\nmetric = \"latency_p95\"\nthreshold = 800\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.alerts.notifiers.len(), 1);
    assert!(matches!(config.alerts.notifiers[0].kind, NotifierKind::Log));
    assert_eq!(config.alerts.rules[0].notifiers, vec![0]);
}

#[test]
fn errors_name_the_key() {
    let rule = |body: &str| format!("[[alerts.rules]]\nname = \"r\"\n{body}\n");
    let cases: &[(String, &str, &str)] = &[
        (
            rule("metric = \"errors\"\nthreshold = 1"),
            "alerts.rules[0].metric",
            "unknown metric `errors`",
        ),
        (
            rule("metric = \"error_rate\""),
            "alerts.rules[0].threshold",
            "needs a threshold",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 5"),
            "alerts.rules[0].threshold",
            "share from 0 to 1",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 0.1\nscope = \"team\""),
            "alerts.rules[0].scope",
            "unknown scope `team`",
        ),
        (
            rule("metric = \"dropped_events\"\nthreshold = 1\nscope = \"route\""),
            "alerts.rules[0].scope",
            "does not apply to dropped_events",
        ),
        (
            rule("metric = \"budget_used\"\nthreshold = 0.8\nscope = \"key\""),
            "alerts.rules[0].scope",
            "choose them with `budget`",
        ),
        (
            rule("metric = \"budget_used\"\nthreshold = 0.8\nbudget = \"weekly\""),
            "alerts.rules[0].budget",
            "`weekly` is not a configured budget",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 0.1\nbudget = \"daily\""),
            "alerts.rules[0].budget",
            "only budget_used and budget_forecast",
        ),
        (
            rule("metric = \"provider_down\"\nmember = \"azure\""),
            "alerts.rules[0].member",
            "`azure` is not a configured provider",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 0.1\nscope = \"route\"\nmember = \"dumb\""),
            "alerts.rules[0].member",
            "`dumb` is not a configured route",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 0.1\nmember = \"x\""),
            "alerts.rules[0].member",
            "a global rule has no member",
        ),
        (
            rule("metric = \"provider_down\"\nwindow = \"1m\""),
            "alerts.rules[0].window",
            "has no window",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 0.1\nwindow = \"2d\""),
            "alerts.rules[0].window",
            "between 1s and 24h",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 0.1\ndirection = \"sideways\""),
            "alerts.rules[0].direction",
            "unknown direction",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 0.1\nseverity = \"page\""),
            "alerts.rules[0].severity",
            "unknown severity `page`",
        ),
        (
            rule("metric = \"error_rate\"\nthreshold = 0.1\nnotifiers = [\"pager\"]"),
            "alerts.rules[0].notifiers[0]",
            "unknown notifier `pager` (configured: log)",
        ),
        (
            rule("metric = \"cost_per_hour\"\nthreshold = 1\nmin_requests = 5"),
            "alerts.rules[0].min_requests",
            "not computed from requests",
        ),
        (
            format!(
                "{}{}",
                rule("metric = \"error_rate\"\nthreshold = 0.1"),
                rule("metric = \"error_rate\"\nthreshold = 0.2")
            ),
            "alerts.rules[1].name",
            "duplicate rule name `r`",
        ),
        (
            "[alerts]\ninterval = \"10ms\"".to_owned(),
            "alerts.interval",
            "between 100ms and 5m",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"pager\"".to_owned(),
            "alerts.notifiers[0].kind",
            "unknown kind `pager`",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"webhook\"".to_owned(),
            "alerts.notifiers[0].url",
            "needs url",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"webhook\"\nurl = \"ftp://x\"".to_owned(),
            "alerts.notifiers[0].url",
            "must start with http",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"webhook\"\nurl = \"http://x\"\nsecret_env = \"NOPE\""
                .to_owned(),
            "alerts.notifiers[0].secret_env",
            "environment variable NOPE is not set",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"slack\"\nurl = \"http://x\"\nchat_ids = [1]"
                .to_owned(),
            "alerts.notifiers[0].chat_ids",
            "only for kind telegram",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"telegram\"\nchat_ids = [1]".to_owned(),
            "alerts.notifiers[0].bot_token_env",
            "TELEGRAM_BOT_TOKEN is not set",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"telegram\"\nbot_token_env = \"TOKEN\""
                .to_owned(),
            "alerts.notifiers[0].chat_ids",
            "at least one chat id",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"telegram\"\nbot_token_env = \"TOKEN\"\nchat_ids = [\"ops\"]"
                .to_owned(),
            "alerts.notifiers[0].chat_ids[0]",
            "not a chat id",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"log\"\n[[alerts.notifiers]]\nname = \"n\"\nkind = \"log\""
                .to_owned(),
            "alerts.notifiers[1].name",
            "duplicate notifier name",
        ),
        (
            "[[alerts.notifiers]]\nname = \"n\"\nkind = \"log\"\nmax_attempts = 0".to_owned(),
            "alerts.notifiers[0].max_attempts",
            "between 1 and 20",
        ),
    ];
    for (toml, key, message) in cases {
        let error = error(toml, &[("TOKEN", "1:x")]);
        assert_eq!(error.key, *key, "{toml}\n→ {error}");
        assert!(error.message.contains(message), "{toml}\n→ {error}");
    }
}

#[test]
fn a_url_from_the_environment_is_never_quoted_in_errors() {
    let error = error(
        "[[alerts.notifiers]]\nname = \"n\"\nkind = \"slack\"\nurl_env = \"SLACK_URL\"",
        &[("SLACK_URL", "ftp://hooks.example.com/T0KEN")],
    );
    assert_eq!(error.key, "alerts.notifiers[0].url_env");
    assert!(!error.to_string().contains("T0KEN"), "{error}");
}

#[test]
fn unknown_keys_are_rejected() {
    let error = error(
        "[[alerts.rules]]\nname = \"r\"\nmetric = \"error_rate\"\nthreshold = 0.1\nthreshhold = 2",
        &[],
    );
    assert!(error.message.contains("threshhold"), "{error}");
}

#[test]
fn a_telegram_notifier_defaults_to_the_bots_token_api_and_admin_chats() {
    let bot = "[telegram]\nmodels = [\"smart\"]\nadmins = [42, 7]\n\
               [[alerts.notifiers]]\nname = \"ops\"\nkind = \"telegram\"\n";
    let config = load(
        bot,
        &[
            ("TELEGRAM_BOT_TOKEN", "123:bot"),
            ("TELEGRAM_API_URL", "http://127.0.0.1:9"),
            ("TELEGRAM_WEBHOOK_SECRET", "s3cret"),
        ],
    )
    .unwrap();
    match &config.alerts.notifiers[0].kind {
        NotifierKind::Telegram {
            api_base,
            token,
            chat_ids,
        } => {
            assert_eq!(api_base, "http://127.0.0.1:9");
            assert_eq!(token.expose(), "123:bot");
            assert_eq!(chat_ids, &["42", "7"]);
        }
        other => panic!("{other:?}"),
    }
    // Without admins there is no default chat.
    let no_admins = error(
        "[telegram]\nmodels = [\"smart\"]\n\
         [[alerts.notifiers]]\nname = \"ops\"\nkind = \"telegram\"\n",
        &[
            ("TELEGRAM_BOT_TOKEN", "123:bot"),
            ("TELEGRAM_WEBHOOK_SECRET", "s3cret"),
        ],
    );
    assert_eq!(no_admins.key, "alerts.notifiers[0].chat_ids");
    assert!(
        no_admins.message.contains("admins"),
        "{}",
        no_admins.message
    );
}
