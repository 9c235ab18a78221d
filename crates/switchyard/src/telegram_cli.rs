//! `switchyard telegram set-webhook|delete-webhook|info`: the bot's webhook from the command
//! line (it replaces the original plan's `setup-telegram-webhook.sh`).
//!
//! - `set-webhook --url https://HOST/telegram/webhook` generates a secret token (32 random
//!   bytes, hex), stores it in the data directory as `telegram-webhook-secret` (readable by
//!   its owner only), and calls `setWebhook` with it and the update kinds the bot reads. With
//!   `$TELEGRAM_WEBHOOK_SECRET` set, that secret is used and nothing is stored. The gateway
//!   reads the secret when it starts.
//! - `delete-webhook` calls `deleteWebhook` (for polling mode).
//! - `info` prints `getMe` and `getWebhookInfo`, readably.
//!
//! The token comes from `$TELEGRAM_BOT_TOKEN`, the Bot API from `$TELEGRAM_API_URL`. Neither
//! the token nor the secret is ever printed.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::Value;
use switchyard_core::config::Secret;
use switchyard_core::config::telegram::{
    API_URL_ENV, DEFAULT_API_URL, TOKEN_ENV, WEBHOOK_SECRET_ENV, WEBHOOK_SECRET_FILE,
    is_valid_secret,
};

use crate::telegram::api::BotApi;

/// `switchyard telegram`.
#[derive(Debug, Args)]
pub struct TelegramArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TelegramCommand,
    /// The bot token (from @BotFather).
    #[arg(long, env = TOKEN_ENV, hide_env_values = true, hide = true)]
    pub token: Option<String>,
    /// The Bot API base URL.
    #[arg(long, global = true, env = API_URL_ENV, default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// The data directory the gateway reads the webhook secret from (default:
    /// SWITCHYARD_DATA_DIR, else ./switchyard-data).
    #[arg(long, global = true, env = "SWITCHYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The gateway's config file: its `storage.data_dir`, when set, is the data directory.
    #[arg(long, short = 'c', global = true, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// A webhook secret to use instead of a generated one (not stored).
    #[arg(long, env = WEBHOOK_SECRET_ENV, hide_env_values = true, hide = true)]
    pub secret: Option<String>,
}

/// The webhook operations.
#[derive(Debug, Subcommand)]
pub enum TelegramCommand {
    /// Point Telegram at the gateway's webhook, with a new secret token stored in the data
    /// directory.
    SetWebhook {
        /// The public HTTPS URL of the gateway's webhook, e.g.
        /// https://gateway.example.com/telegram/webhook.
        #[arg(long)]
        url: String,
        /// Drop the updates Telegram is still holding.
        #[arg(long)]
        drop_pending_updates: bool,
    },
    /// Remove the webhook (for polling mode).
    DeleteWebhook,
    /// Show the bot and its webhook.
    Info,
}

/// Runs the command; `Err` is a message for the user.
pub async fn run(args: TelegramArgs) -> Result<(), String> {
    let lines = execute(&args).await?;
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(stdout, "{line}");
    }
    Ok(())
}

/// Runs the command and returns what to print.
pub async fn execute(args: &TelegramArgs) -> Result<Vec<String>, String> {
    let token = args
        .token
        .as_deref()
        .filter(|token| !token.trim().is_empty())
        .ok_or_else(|| format!("set ${TOKEN_ENV} to the bot's token (from @BotFather)"))?;
    let api = BotApi::new(&args.api_url, &Secret::new(token.trim()))?;
    match &args.command {
        TelegramCommand::SetWebhook {
            url,
            drop_pending_updates,
        } => set_webhook(args, &api, url, *drop_pending_updates).await,
        TelegramCommand::DeleteWebhook => {
            api.delete_webhook()
                .await
                .map_err(|error| error.to_string())?;
            Ok(vec![
                "webhook deleted: the bot can poll (mode = \"polling\")".to_owned(),
            ])
        }
        TelegramCommand::Info => info(&api).await,
    }
}

async fn set_webhook(
    args: &TelegramArgs,
    api: &BotApi,
    url: &str,
    drop_pending_updates: bool,
) -> Result<Vec<String>, String> {
    if !url.starts_with("https://") {
        return Err(format!(
            "--url must be an https:// URL (Telegram only calls HTTPS webhooks), not `{url}`"
        ));
    }
    let mut lines = Vec::new();
    if !url.trim_end_matches('/').ends_with("/telegram/webhook") {
        lines.push(format!(
            "note: the gateway serves its webhook at /telegram/webhook; `{url}` must reach it"
        ));
    }
    let (secret, stored) = match args.secret.as_deref().filter(|s| !s.is_empty()) {
        Some(secret) if is_valid_secret(secret) => (Secret::new(secret), None),
        Some(_) => {
            return Err(format!(
                "${WEBHOOK_SECRET_ENV} must be 1 to 256 characters from A-Z, a-z, 0-9, _ and -"
            ));
        }
        None => {
            let dir = data_dir(args)?;
            let secret = generate_secret()?;
            let path = store_secret(&dir, &secret)?;
            (secret, Some(path))
        }
    };
    if drop_pending_updates {
        api.call::<Value>(
            "deleteWebhook",
            &serde_json::json!({ "drop_pending_updates": true }),
        )
        .await
        .map_err(|error| error.to_string())?;
    }
    api.set_webhook(url, &secret)
        .await
        .map_err(|error| error.to_string())?;
    lines.push(format!("webhook set: {url}"));
    lines.push(match stored {
        Some(path) => format!(
            "its secret token is stored in {} (the gateway reads it when it starts: restart it)",
            path.display()
        ),
        None => format!("its secret token is ${WEBHOOK_SECRET_ENV}'s"),
    });
    Ok(lines)
}

async fn info(api: &BotApi) -> Result<Vec<String>, String> {
    let me = api.get_me().await.map_err(|error| error.to_string())?;
    let webhook = api
        .get_webhook_info()
        .await
        .map_err(|error| error.to_string())?;
    let mut lines = vec![format!(
        "bot:              @{} ({}, id {})",
        me.username.as_deref().unwrap_or("?"),
        me.first_name,
        me.id
    )];
    let url = webhook["url"].as_str().unwrap_or_default();
    lines.push(format!(
        "webhook:          {}",
        if url.is_empty() {
            "none (the bot can poll)"
        } else {
            url
        }
    ));
    lines.push(format!(
        "pending updates:  {}",
        webhook["pending_update_count"].as_u64().unwrap_or(0)
    ));
    let allowed = webhook["allowed_updates"]
        .as_array()
        .map(|kinds| {
            kinds
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|kinds| !kinds.is_empty())
        .unwrap_or_else(|| "all but chat_member (Telegram's default)".to_owned());
    lines.push(format!("allowed updates:  {allowed}"));
    if let Some(error) = webhook["last_error_message"].as_str() {
        let when = webhook["last_error_date"]
            .as_i64()
            .and_then(|seconds| jiff::Timestamp::from_second(seconds).ok())
            .map(|at| format!(" at {at}"))
            .unwrap_or_default();
        lines.push(format!("last error:       {error}{when}"));
    }
    Ok(lines)
}

/// The data directory: the config file's `storage.data_dir`, else `--data-dir` /
/// `$SWITCHYARD_DATA_DIR`, else the default.
fn data_dir(args: &TelegramArgs) -> Result<PathBuf, String> {
    let configured = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("could not read {}: {error}", path.display()))?;
            switchyard_core::config::parse_toml(&text)
                .map_err(|error| format!("{}: {error}", path.display()))?
                .storage
                .data_dir
                .map(PathBuf::from)
        }
        None => None,
    };
    let dir = configured
        .or_else(|| args.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(switchyard_core::config::DEFAULT_DATA_DIR));
    if dir.as_os_str() == ":memory:" {
        return Err(format!(
            "the data directory is `:memory:`, where the secret would be lost; pass --data-dir \
             DIR or set ${WEBHOOK_SECRET_ENV}"
        ));
    }
    Ok(dir)
}

/// 32 random bytes as hex: 64 characters, all in Telegram's alphabet for secrets.
fn generate_secret() -> Result<Secret, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| format!("could not generate a secret: {error}"))?;
    Ok(Secret::new(
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ))
}

/// Writes the secret to `dir`, readable by its owner only; the file's path.
fn store_secret(dir: &Path, secret: &Secret) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let path = dir.join(WEBHOOK_SECRET_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    file.write_all(secret.expose().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    Ok(path)
}
