//! The `switchyard` command line: `serve` (the default), `demo`, `config check`, `keys`,
//! `cost` and `telegram`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use switchyard_core::config::{self, Config, DEFAULT_LISTEN, Env};

use crate::app::AppState;
use crate::{server, telemetry};

/// Switchyard: an OpenAI-compatible AI gateway.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Async worker threads (default: one per CPU core).
    #[arg(long, global = true, env = "SWITCHYARD_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway. Without --config, serves the providers whose API keys are set in the
    /// environment (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, GROQ_API_KEY, ...).
    Serve(ServeArgs),
    /// Run the gateway over three simulated providers with a little traffic: no API keys needed.
    Demo(DemoArgs),
    /// Check a config file.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage virtual keys: in the data directory (a running gateway on it follows within a
    /// second), or through a running gateway's admin API with --url.
    Keys(Box<crate::keys_cli::KeysArgs>),
    /// Cost tools: `simulate` replays the request log under another config's routes and
    /// prices, offline.
    Cost(crate::cost_cli::CostArgs),
    /// The Telegram bot's webhook: set it (with a new secret stored in the data directory),
    /// delete it, or show it (TELEGRAM_BOT_TOKEN, TELEGRAM_API_URL).
    Telegram(Box<crate::telegram_cli::TelegramArgs>),
}

/// `serve` options.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, short = 'c', env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides the config), e.g. 127.0.0.1:8080.
    #[arg(long, short = 'l', env = "SWITCHYARD_LISTEN")]
    pub listen: Option<String>,
}

/// `demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, short = 'l', default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Do not send the background demo traffic.
    #[arg(long)]
    pub no_traffic: bool,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file without serving.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

/// Runs the command; `Err` is a message for the user, and a non-zero exit.
pub async fn run(cli: Cli) -> Result<(), String> {
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Keys(args) => crate::keys_cli::run(*args).await,
        Command::Cost(args) => crate::cost_cli::run(args).await,
        Command::Telegram(args) => crate::telegram_cli::run(*args).await,
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = load_file(&file)?;
            println!(
                "{}: ok ({} providers, {} routes)",
                file.display(),
                config.providers.len(),
                config.routes.len()
            );
            Ok(())
        }
    }
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("could not read config file {}: {error}", path.display()))?;
    let raw = config::parse_toml(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    config::validate(&raw, &ProcessEnv).map_err(|error| format!("{}: {error}", path.display()))
}

/// The config from the environment alone.
pub fn load_env() -> Result<Config, String> {
    let raw = config::discover(&ProcessEnv);
    config::validate(&raw, &ProcessEnv).map_err(|error| format!("environment: {error}"))
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = match &args.config {
        Some(path) => load_file(path)?,
        None => load_env()?,
    };
    if config.providers.is_empty() {
        return Err(format!(
            "no providers configured: set an API key such as OPENAI_API_KEY, ANTHROPIC_API_KEY or \
             GEMINI_API_KEY (or OLLAMA_BASE_URL for a local Ollama), or pass --config FILE. \
             To try Switchyard without keys, run `switchyard demo`. Known provider kinds: {}",
            config::kind_names()
        ));
    }
    let listen = resolve_listen(args.listen.as_deref(), &config)?;
    run_gateway(config, listen).await
}

/// The address to listen on: `--listen`, then the config, then the default.
pub fn resolve_listen(flag: Option<&str>, config: &Config) -> Result<SocketAddr, String> {
    let listen = match flag {
        Some(flag) => {
            config::parse_listen(flag).map_err(|message| format!("--listen: {message}"))?
        }
        None => match config.server.listen {
            Some(listen) => listen,
            None => config::parse_listen(DEFAULT_LISTEN)?,
        },
    };
    config::check_exposure(listen, config.server.master_key.as_ref())
        .map_err(|error| error.message)?;
    Ok(listen)
}

/// Installs logging, binds, announces the address on stdout, and serves until
/// SIGINT/SIGTERM (trace export, when configured, is flushed as serving ends).
pub async fn run_gateway(config: Config, listen: SocketAddr) -> Result<(), String> {
    telemetry::init()?;
    serve_gateway(config, listen).await
}

async fn serve_gateway(config: Config, listen: SocketAddr) -> Result<(), String> {
    for provider in &config.providers {
        tracing::info!(provider = %provider.name, kind = %provider.kind, base_url = %provider.base_url, "provider");
    }
    for route in &config.routes {
        tracing::info!(route = %route.name, targets = route.targets.len(), "route");
    }
    if config.server.master_key.is_none() {
        tracing::warn!(
            "no master key set: client auth is off, so the gateway listens on loopback only"
        );
    }
    let state = AppState::new(config).await?;
    let listener = server::bind(listen).await?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("could not read the listening address: {error}"))?;
    announce(&format!("switchyard listening on http://{local}"));
    server::serve(listener, state, server::shutdown_signal()).await;
    Ok(())
}

/// Prints a line to stdout and flushes it (harnesses wait for it).
pub fn announce(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
