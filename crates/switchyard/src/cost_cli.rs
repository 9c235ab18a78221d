//! `switchyard cost simulate --config alternative.toml [--from 7d] [--to now]`: replays the
//! recorded request log under another config's routes and prices, offline, and prints the
//! spend, the traffic per provider and the expected latency beside what happened (see
//! [`switchyard_core::simulate`] for the method).
//!
//! It reads the store the alternative config names (`storage.data_dir`, `--data-dir`, or
//! Postgres from `storage.postgres_url` / `SWITCHYARD_POSTGRES_URL`): point it at the
//! gateway's own. Provider API keys are not needed: a provider's key variable that is not set
//! is given a placeholder, as nothing is sent.

use std::collections::HashSet;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use switchyard_core::analytics::query::parse_time;
use switchyard_core::config::{self, Env};
use switchyard_core::simulate::{Recorded, Report, simulate};
use switchyard_core::wire::TokenUsage;

use crate::analytics::store::{Cursor, RequestsQuery, Store};
use crate::cli::ProcessEnv;

/// `switchyard cost`.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CostCommand,
}

/// The cost commands.
#[derive(Debug, Subcommand)]
pub enum CostCommand {
    /// Replay the request log under another config's routes and prices.
    Simulate(SimulateArgs),
}

/// `switchyard cost simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The alternative config.
    #[arg(long)]
    pub config: PathBuf,
    /// Start of the replayed traffic: a duration back (`7d`), unix seconds or RFC 3339.
    #[arg(long, default_value = "7d")]
    pub from: String,
    /// Its end (default: now).
    #[arg(long, default_value = "now")]
    pub to: String,
    /// The data directory holding the request log (default: the config's).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Most requests to replay (the newest).
    #[arg(long, default_value_t = 2_000_000)]
    pub limit: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The process environment, with a placeholder for provider key variables that are unset.
struct OfflineEnv {
    key_variables: HashSet<String>,
}

impl Env for OfflineEnv {
    fn var(&self, name: &str) -> Option<String> {
        ProcessEnv.var(name).or_else(|| {
            self.key_variables
                .contains(name)
                .then(|| "not-used-offline".to_owned())
        })
    }
}

/// Runs the command.
pub async fn run(args: CostArgs) -> Result<(), String> {
    let CostCommand::Simulate(args) = args.command;
    let text = std::fs::read_to_string(&args.config)
        .map_err(|error| format!("could not read {}: {error}", args.config.display()))?;
    let mut raw =
        config::parse_toml(&text).map_err(|error| format!("{}: {error}", args.config.display()))?;
    if let Some(dir) = &args.data_dir {
        raw.storage.data_dir = Some(dir.display().to_string());
    }
    let env = OfflineEnv {
        key_variables: raw
            .providers
            .iter()
            .filter_map(|provider| provider.api_key_env.clone())
            .collect(),
    };
    let config = config::validate(&raw, &env)
        .map_err(|error| format!("{}: {error}", args.config.display()))?;
    let now = crate::cache::unix_ms();
    let from =
        parse_time(&args.from, now).ok_or("--from is not a time (7d, unix seconds, RFC 3339)")?;
    let to = parse_time(&args.to, now).ok_or("--to is not a time (now, unix seconds, RFC 3339)")?;
    let store = Store::open(&config.storage)
        .await
        .map_err(|error| format!("the request log: {error}"))?;
    let (recorded, truncated) = read_log(&store, from, to, args.limit).await?;
    let report = simulate(&config, &recorded);
    if args.json {
        let mut value = serde_json::to_value(&report).map_err(|error| error.to_string())?;
        value["truncated"] = serde_json::Value::Bool(truncated);
        println!("{value:#}");
    } else {
        print(&report, truncated, args.limit);
    }
    Ok(())
}

/// The answered requests of the log in `[from, to)`, newest first, at most `limit`.
async fn read_log(
    store: &Store,
    from: u64,
    to: u64,
    limit: u64,
) -> Result<(Vec<Recorded>, bool), String> {
    let mut recorded = Vec::new();
    let mut before: Option<Cursor> = None;
    loop {
        let page = store
            .requests(RequestsQuery {
                limit: 1_000,
                before,
                status: Some(200),
                from_ms: Some(from),
                to_ms: Some(to),
                ..RequestsQuery::default()
            })
            .await
            .map_err(|error| format!("reading the request log: {error}"))?;
        for row in page.data {
            let (Some(route), Some(provider), Some(model)) = (row.route, row.provider, row.model)
            else {
                continue;
            };
            if recorded.len() as u64 >= limit {
                return Ok((recorded, true));
            }
            recorded.push(Recorded {
                route,
                provider,
                model,
                usage: TokenUsage {
                    input: row.tokens_in,
                    output: row.tokens_out,
                    cached_input: row.tokens_cached,
                    reasoning: row.tokens_reasoning,
                    ..TokenUsage::default()
                },
                cost_usd: row.cost_usd,
                latency_us: row.latency_us,
                hit: row.cache == "hit",
            });
        }
        match page.next_cursor.as_deref().and_then(Cursor::decode) {
            Some(next) => before = Some(next),
            None => return Ok((recorded, false)),
        }
    }
}

fn print(report: &Report, truncated: bool, limit: u64) {
    println!(
        "replayed {} answered requests{}",
        report.requests,
        if truncated {
            format!(" (the newest {limit}; raise --limit for more)")
        } else {
            String::new()
        }
    );
    let change = if report.recorded_usd > 0.0 {
        format!(
            " ({:+.1}%)",
            100.0 * (report.simulated_usd / report.recorded_usd - 1.0)
        )
    } else {
        String::new()
    };
    println!(
        "spend: recorded ${:.6}, simulated ${:.6}{change}; {} requests without a known price",
        report.recorded_usd, report.simulated_usd, report.unpriced
    );
    let ms =
        |value: Option<f64>| value.map_or_else(|| "unknown".to_owned(), |v| format!("{v:.1} ms"));
    println!(
        "mean latency: recorded {}, expected {}{}",
        ms(report.recorded_latency_ms),
        ms(report.simulated_latency_ms),
        if report.latency_unknown > 0.0 {
            format!(
                " ({:.0} requests to targets the log never saw are left out)",
                report.latency_unknown
            )
        } else {
            String::new()
        }
    );
    println!("traffic per provider (recorded → simulated):");
    for (provider, shift) in &report.providers {
        println!(
            "  {provider}: {:.0} → {:.1}",
            shift.recorded, shift.simulated
        );
    }
}
