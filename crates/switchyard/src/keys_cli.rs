//! `switchyard keys create|list|show|revoke|rotate`: virtual keys from the command line,
//! either straight in the gateway's key store (a gateway serving from it picks the change up
//! within a second) or through a running gateway's admin API (`--url`, with the master key).
//! The store is the gateway's: Postgres when `$SWITCHYARD_POSTGRES_URL` or the config file's
//! `storage.postgres_url` names one (the environment wins, as for the gateway), else
//! `keys.db` in the data directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use switchyard_core::keys::{KeySettings, PriorityName};

use crate::keys::Keys;

/// `switchyard keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
    /// The data directory whose `keys.db` to change (default: SWITCHYARD_DATA_DIR, else
    /// ./switchyard-data), unless the keys are in Postgres.
    #[arg(long, global = true, env = "SWITCHYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The gateway's config file: its `storage.data_dir`, when it sets one, is the data
    /// directory (as for the gateway, it wins over SWITCHYARD_DATA_DIR), and its
    /// `storage.postgres_url` (or SWITCHYARD_POSTGRES_URL, which wins) puts the keys in
    /// Postgres.
    #[arg(long, short = 'c', global = true, env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// A running gateway to change them through instead (wins over --data-dir), e.g.
    /// http://127.0.0.1:8080.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// The gateway's master key, for --url.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_MASTER_KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The key operations.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown this once).
    Create(CreateArgs),
    /// List the keys (never their secrets).
    List,
    /// Show one key.
    Show {
        /// The key's id (`key_…`).
        id: String,
    },
    /// Revoke a key for good.
    Revoke {
        /// The key's id.
        id: String,
    },
    /// Give a key a new secret (printed once); the old one stops working.
    Rotate {
        /// The key's id.
        id: String,
    },
}

/// `switchyard keys create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for people.
    #[arg(long)]
    pub name: String,
    /// Who it belongs to.
    #[arg(long)]
    pub owner: Option<String>,
    /// Its team.
    #[arg(long)]
    pub team: Option<String>,
    /// A label (repeat for several).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A route or model it may use, `*` wildcards allowed (repeat; default: all).
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// Its class for load shedding.
    #[arg(long, value_parser = ["low", "normal", "high"], default_value = "normal")]
    pub priority: String,
    /// Its own limit of requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Its own limit of tokens per minute.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Its own spending budget in USD per `--budget-period`.
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// The period of its budget.
    #[arg(long, value_parser = ["daily", "weekly", "monthly", "total"])]
    pub budget_period: Option<String>,
    /// It stops working after this long, e.g. 30d.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires_in: Option<Duration>,
}

impl CreateArgs {
    fn settings(&self) -> KeySettings {
        KeySettings {
            name: self.name.clone(),
            owner: self.owner.clone(),
            team: self.team.clone(),
            tags: self.tags.clone(),
            models: self.models.clone(),
            priority: PriorityName::parse(&self.priority).unwrap_or_default(),
            rpm: self.rpm,
            tpm: self.tpm,
            budget_usd: self.budget_usd,
            budget_period: self
                .budget_period
                .as_deref()
                .and_then(switchyard_core::budget::Period::parse),
            expires_at_ms: self.expires_in.map(|after| {
                crate::cache::unix_ms()
                    .saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
            }),
            enabled: true,
        }
    }
}

/// Runs the command.
pub async fn run(args: KeysArgs) -> Result<(), String> {
    let result = match &args.url {
        Some(url) => remote(&args, url).await?,
        None => local(&args).await?,
    };
    print(&args, &result);
    Ok(())
}

/// The gateway's key store: Postgres when the environment or the config file names one,
/// else `keys.db` in the data directory.
async fn store(args: &KeysArgs) -> Result<Arc<Keys>, String> {
    let (configured_dir, configured_url) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("could not read {}: {error}", path.display()))?;
            let storage = switchyard_core::config::parse_toml(&text)
                .map_err(|error| format!("{}: {error}", path.display()))?
                .storage;
            (storage.data_dir.map(PathBuf::from), storage.postgres_url)
        }
        None => (None, None),
    };
    let postgres_url = std::env::var(switchyard_core::config::POSTGRES_URL_ENV)
        .ok()
        .or(configured_url)
        .filter(|url| !url.trim().is_empty());
    if let Some(url) = postgres_url {
        return Keys::connect(&url).await.map_err(|error| error.to_string());
    }
    let dir = configured_dir
        .or_else(|| args.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(switchyard_core::config::DEFAULT_DATA_DIR));
    if dir.as_os_str() == ":memory:" {
        return Err(
            "the data directory is `:memory:`: keys kept there would vanish; pass --data-dir DIR \
             or --url of a running gateway"
                .to_owned(),
        );
    }
    Keys::open(Some(&dir)).map_err(|error| error.to_string())
}

/// Straight in the key store.
async fn local(args: &KeysArgs) -> Result<Value, String> {
    let keys = store(args).await?;
    let to_value =
        |key: &switchyard_core::keys::VirtualKey| serde_json::to_value(key).unwrap_or_default();
    let with_secret = |key: &switchyard_core::keys::VirtualKey, secret: String| {
        let mut value = to_value(key);
        value["secret"] = Value::String(secret);
        value
    };
    Ok(match &args.command {
        KeysCommand::Create(create) => {
            let (key, secret) = keys
                .create(create.settings())
                .await
                .map_err(|e| e.to_string())?;
            with_secret(&key, secret)
        }
        KeysCommand::List => {
            json!({ "data": keys.list().iter().map(|k| to_value(k)).collect::<Vec<_>>() })
        }
        KeysCommand::Show { id } => to_value(&*keys.get(id).map_err(|e| e.to_string())?),
        KeysCommand::Revoke { id } => to_value(&*keys.revoke(id).await.map_err(|e| e.to_string())?),
        KeysCommand::Rotate { id } => {
            let (key, secret) = keys.rotate(id).await.map_err(|e| e.to_string())?;
            with_secret(&key, secret)
        }
    })
}

/// Through a running gateway's admin API.
async fn remote(args: &KeysArgs, url: &str) -> Result<Value, String> {
    crate::install_crypto_provider();
    let base = url.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|error| format!("could not build an HTTP client: {error}"))?;
    let (method, path, body) = match &args.command {
        KeysCommand::Create(create) => (
            reqwest::Method::POST,
            "/admin/keys".to_owned(),
            Some(serde_json::to_value(create.settings()).unwrap_or_default()),
        ),
        KeysCommand::List => (reqwest::Method::GET, "/admin/keys".to_owned(), None),
        KeysCommand::Show { id } => (reqwest::Method::GET, format!("/admin/keys/{id}"), None),
        KeysCommand::Revoke { id } => (reqwest::Method::DELETE, format!("/admin/keys/{id}"), None),
        KeysCommand::Rotate { id } => (
            reqwest::Method::POST,
            format!("/admin/keys/{id}/rotate"),
            None,
        ),
    };
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(key) = &args.admin_key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let response = request
        .send()
        .await
        .map_err(|error| format!("could not reach {base}: {error}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|error| format!("could not read the answer of {base}: {error}"))?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let message = value["error"]["message"]
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        return Err(format!("{base} answered {status}: {message}"));
    }
    Ok(value)
}

fn print(args: &KeysArgs, result: &Value) {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(result).unwrap_or_default()
        );
        return;
    }
    let line = |key: &Value| {
        let state = if key["revoked_at_ms"].is_u64() {
            "revoked"
        } else if key["enabled"] == false {
            "disabled"
        } else {
            "active"
        };
        format!(
            "{}  {}  {}  team={}  priority={}  {}",
            key["id"].as_str().unwrap_or("?"),
            key["prefix"].as_str().unwrap_or(""),
            key["name"].as_str().unwrap_or(""),
            key["team"].as_str().unwrap_or("-"),
            key["priority"].as_str().unwrap_or("normal"),
            state
        )
    };
    match result.get("data").and_then(Value::as_array) {
        Some(keys) if keys.is_empty() => println!("no keys"),
        Some(keys) => keys.iter().for_each(|key| println!("{}", line(key))),
        None => {
            println!("{}", line(result));
            if let Some(secret) = result["secret"].as_str() {
                println!("secret: {secret}");
                println!("(shown once: store it now; only its hash is kept)");
            }
        }
    }
}
