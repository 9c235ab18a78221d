//! The harness's command line: what to run, for how long, against which binaries.
//!
//! Parsing only. Validation that needs no I/O (the concurrency list, the duration syntax,
//! the bounds that keep a run finite) happens here so it fails before anything starts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

/// The most connections one scenario may open; keeps a typo from exhausting descriptors.
pub const MAX_CONCURRENCY: usize = 4096;

/// The longest warm-up or measured phase one scenario may ask for.
pub const MAX_PHASE: Duration = Duration::from_secs(600);

/// Measure the Switchyard gateway against the mock provider, and the mock alone.
///
/// Starts the mock provider and the gateway as child processes on 127.0.0.1, then for each
/// concurrency runs a closed-loop load (N keep-alive HTTP/1.1 connections, requests back to
/// back) directly against the mock and through the gateway, interleaved. Prints a markdown
/// table and a summary of the performance targets to stdout; progress goes to stderr. A
/// missed target is reported, never an error: the exit status is non-zero only when the
/// harness itself could not run.
///
/// With --chaos it runs the chaos scenario instead: three mock providers (alpha, beta,
/// gamma) behind one gateway route, steady load through three phases (healthy; alpha
/// failing; alpha recovered), and a table of success rate, latency and alpha's traffic and
/// breaker state per phase.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchyard-load", version, about, long_about)]
pub struct LoadOptions {
    /// Concurrencies to run, comma-separated; each gets a direct and a gateway scenario.
    #[arg(long, value_name = "LIST", default_value = "1,32,256", value_parser = parse_concurrency_list)]
    pub concurrency: ConcurrencyList,

    /// Warm-up before each measured phase (seconds, or a duration such as 500ms).
    #[arg(long, value_name = "DURATION", default_value = "1", value_parser = parse_phase)]
    pub warmup: Duration,

    /// Measured phase of each scenario (seconds, or a duration such as 10s).
    #[arg(long, value_name = "DURATION", default_value = "5", value_parser = parse_phase)]
    pub duration: Duration,

    /// Ask for SSE streaming ("stream": true) and also report time to first body byte.
    #[arg(long)]
    pub stream: bool,

    /// JSON request body to send instead of the built-in chat completion.
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,

    /// Run only the direct-to-mock scenarios; the gateway is neither needed nor started.
    #[arg(long)]
    pub direct_only: bool,

    /// Worker threads of the load generator's runtime (1 = a current-thread runtime).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub load_threads: u16,

    /// A request that takes longer than this counts as an error and its connection is
    /// replaced; bounds how long a scenario can overrun.
    #[arg(long, value_name = "DURATION", default_value = "10", value_parser = parse_phase)]
    pub request_timeout: Duration,

    /// How long a child may take to print its listening line.
    #[arg(long, value_name = "DURATION", default_value = "15", value_parser = parse_phase)]
    pub startup_timeout: Duration,

    /// The mock provider binary [default: target/release/switchyard-mock in the workspace].
    #[arg(long, value_name = "PATH")]
    pub mock_bin: Option<PathBuf>,

    /// The gateway binary [default: target/release/switchyard in the workspace].
    #[arg(long, value_name = "PATH")]
    pub gateway_bin: Option<PathBuf>,

    /// Passed to the mock as --latency-ms (simulated upstream latency per request).
    #[arg(long, value_name = "MS")]
    pub mock_latency_ms: Option<u64>,

    /// Passed to the mock as --threads.
    #[arg(long, value_name = "N")]
    pub mock_threads: Option<u16>,

    /// Extra argument for the mock; repeat for several (e.g. --mock-arg=--flag).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub mock_arg: Vec<OsString>,

    /// Extra argument for `switchyard serve`; repeat for several (e.g. --gateway-arg=--flag).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub gateway_arg: Vec<OsString>,

    /// Turn the gateway's trace export on, to the mock's `POST /v1/traces` (OTLP/HTTP), to
    /// measure what tracing costs.
    #[arg(long, conflicts_with = "direct_only")]
    pub otlp: bool,

    /// Turn rate limits on (a per-key request bucket, a per-key token bucket and a global
    /// concurrency cap, all too generous to refuse anything), counted in `memory` or in the
    /// `redis` at 127.0.0.1:6379, to measure what admission costs.
    #[arg(long, value_enum, value_name = "STORE", conflicts_with = "direct_only")]
    pub limits: Option<LimitStore>,

    /// Turn the response cache on, to measure what it adds: `hit` sends one request over and
    /// over (every request after the first is a hit); `miss` makes every request's prompt
    /// unique (every request is a miss that is stored), for the direct runs too.
    #[arg(long, value_enum, value_name = "MODE", conflicts_with = "direct_only")]
    pub cache: Option<CacheMode>,

    /// Also write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Run the chaos scenario instead of the direct/gateway table: three providers behind
    /// one route, and steady load while the first one fails and recovers.
    #[arg(long, conflicts_with_all = ["concurrency", "direct_only", "duration", "otlp"])]
    pub chaos: bool,

    /// Connections of the chaos run, each with one request in flight.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        value_parser = parse_connections,
        requires = "chaos"
    )]
    pub chaos_concurrency: usize,

    /// Length of each chaos phase: healthy, failing, recovered (the warm-up comes first).
    #[arg(long, value_name = "DURATION", default_value = "5", value_parser = parse_phase, requires = "chaos")]
    pub chaos_phase: Duration,

    /// How alpha fails: answer 500, reset the connection, hang (the gateway's first-byte
    /// timeout ends it), or refuse connections (the process is killed, then restarted on
    /// the same port).
    #[arg(long, value_enum, value_name = "FAULT", default_value_t = ChaosFault::Status500, requires = "chaos")]
    pub chaos_fault: ChaosFault,

    /// The chaos route's strategy.
    #[arg(long, value_enum, value_name = "STRATEGY", default_value_t = ChaosStrategy::Priority, requires = "chaos")]
    pub chaos_strategy: ChaosStrategy,
}

/// How the failing provider of the chaos run fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum ChaosFault {
    /// Every request is answered with HTTP 500.
    #[value(name = "500")]
    #[serde(rename = "500")]
    Status500,
    /// Every connection is closed without an answer.
    #[value(name = "reset")]
    #[serde(rename = "reset")]
    Reset,
    /// No request is ever answered.
    #[value(name = "hang")]
    #[serde(rename = "hang")]
    Hang,
    /// The process is gone: connections are refused.
    #[value(name = "refuse")]
    #[serde(rename = "refuse")]
    Refuse,
}

impl ChaosFault {
    /// The name on the command line and in the report.
    pub fn label(self) -> &'static str {
        match self {
            ChaosFault::Status500 => "500",
            ChaosFault::Reset => "reset",
            ChaosFault::Hang => "hang",
            ChaosFault::Refuse => "refuse",
        }
    }
}

/// What the response cache sees during a load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Every request is the same: hits after the first.
    Hit,
    /// Every request is different: misses, each stored.
    Miss,
}

/// Where the gateway counts rate limits during a load run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitStore {
    /// In the gateway's memory.
    Memory,
    /// In Redis on 127.0.0.1:6379.
    Redis,
}

/// The routing strategies the chaos run can exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChaosStrategy {
    /// Ordered fallback: alpha first.
    Priority,
    /// Power of two choices over latency.
    LeastLatency,
    /// Weighted random (equal weights).
    Weighted,
}

impl ChaosStrategy {
    /// The name in the gateway's config.
    pub fn config_name(self) -> &'static str {
        match self {
            ChaosStrategy::Priority => "priority",
            ChaosStrategy::LeastLatency => "least-latency",
            ChaosStrategy::Weighted => "weighted",
        }
    }
}

impl LoadOptions {
    /// The mock binary to start: the flag, or the workspace's release build.
    pub fn mock_program(&self) -> PathBuf {
        self.mock_bin
            .clone()
            .unwrap_or_else(|| release_dir().join("switchyard-mock"))
    }

    /// The gateway binary to start: the flag, or the workspace's release build.
    pub fn gateway_program(&self) -> PathBuf {
        self.gateway_bin
            .clone()
            .unwrap_or_else(|| release_dir().join("switchyard"))
    }
}

/// The concurrencies of a run, in the order given, each between 1 and [`MAX_CONCURRENCY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyList(pub Vec<usize>);

/// Parses `1,32,256`: positive integers, commas, optional spaces, no duplicates.
pub fn parse_concurrency_list(text: &str) -> Result<ConcurrencyList, String> {
    let mut levels = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("empty entry in concurrency list {text:?}"));
        }
        let level: usize = part
            .parse()
            .map_err(|_| format!("concurrency {part:?} is not a whole number"))?;
        if level == 0 || level > MAX_CONCURRENCY {
            return Err(format!(
                "concurrency {level} is outside 1..={MAX_CONCURRENCY}"
            ));
        }
        if levels.contains(&level) {
            return Err(format!("concurrency {level} is listed twice"));
        }
        levels.push(level);
    }
    Ok(ConcurrencyList(levels))
}

/// Parses a number of connections between 1 and [`MAX_CONCURRENCY`].
pub fn parse_connections(text: &str) -> Result<usize, String> {
    let connections: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if connections == 0 || connections > MAX_CONCURRENCY {
        return Err(format!(
            "concurrency {connections} is outside 1..={MAX_CONCURRENCY}"
        ));
    }
    Ok(connections)
}

/// Parses a phase length: a bare number of seconds (`5`, `0.5`) or a humantime duration
/// (`500ms`, `2s`). Zero and anything over [`MAX_PHASE`] are refused.
pub fn parse_phase(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Duration::try_from_secs_f64(seconds).map_err(|error| error.to_string())?
        }
        Ok(_) => return Err(format!("{text:?} is not a positive number of seconds")),
        Err(_) => humantime::parse_duration(text).map_err(|error| format!("{text:?}: {error}"))?,
    };
    if duration.is_zero() {
        return Err("a duration must be longer than zero".to_owned());
    }
    if duration > MAX_PHASE {
        return Err(format!(
            "{text:?} is longer than the {} s limit",
            MAX_PHASE.as_secs()
        ));
    }
    Ok(duration)
}

/// Where release binaries of this workspace land: `$CARGO_TARGET_DIR/release` when that is
/// set, else `target/release` under the workspace root.
pub fn release_dir() -> PathBuf {
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        let target = if target.is_absolute() {
            target
        } else {
            workspace_root().join(target)
        };
        return target.join("release");
    }
    workspace_root().join("target").join("release")
}

/// The workspace root: two levels above this crate's manifest when that still exists (the
/// usual case, a binary built in this checkout), else the current directory.
pub fn workspace_root() -> PathBuf {
    let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if from_manifest.join("Cargo.toml").is_file() {
        return from_manifest.canonicalize().unwrap_or(from_manifest);
    }
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_list_keeps_order_and_trims() {
        assert_eq!(
            parse_concurrency_list("1,32,256"),
            Ok(ConcurrencyList(vec![1, 32, 256]))
        );
        assert_eq!(
            parse_concurrency_list(" 64 , 8"),
            Ok(ConcurrencyList(vec![64, 8]))
        );
    }

    #[test]
    fn concurrency_list_rejects_bad_entries() {
        for bad in ["", "1,,2", "0", "x", "-3", "1,2,1", "5000", "1.5"] {
            assert!(parse_concurrency_list(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn phases_accept_seconds_and_humantime() {
        assert_eq!(parse_phase("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_phase("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_phase("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_phase("2s"), Ok(Duration::from_secs(2)));
        for bad in ["0", "-1", "soon", "1h", "NaN", "inf"] {
            assert!(parse_phase(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn defaults_match_the_documented_run() {
        let options = LoadOptions::try_parse_from(["switchyard-load"]).unwrap();
        assert_eq!(options.concurrency, ConcurrencyList(vec![1, 32, 256]));
        assert_eq!(options.warmup, Duration::from_secs(1));
        assert_eq!(options.duration, Duration::from_secs(5));
        assert_eq!(options.load_threads, 1);
        assert!(!options.stream && !options.direct_only);
        assert!(options.mock_program().ends_with("release/switchyard-mock"));
        assert!(options.gateway_program().ends_with("release/switchyard"));
    }

    #[test]
    fn chaos_defaults_and_choices() {
        let options = LoadOptions::try_parse_from(["switchyard-load", "--chaos"]).unwrap();
        assert!(options.chaos);
        assert_eq!(options.chaos_concurrency, 16);
        assert_eq!(options.chaos_phase, Duration::from_secs(5));
        assert_eq!(options.chaos_fault, ChaosFault::Status500);
        assert_eq!(options.chaos_strategy, ChaosStrategy::Priority);

        let options = LoadOptions::try_parse_from([
            "switchyard-load",
            "--chaos",
            "--chaos-fault",
            "refuse",
            "--chaos-strategy",
            "least-latency",
            "--chaos-phase",
            "2s",
            "--chaos-concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!(options.chaos_fault, ChaosFault::Refuse);
        assert_eq!(options.chaos_fault.label(), "refuse");
        assert_eq!(options.chaos_strategy.config_name(), "least-latency");
        assert_eq!(options.chaos_phase, Duration::from_secs(2));
        assert_eq!(options.chaos_concurrency, 4);
    }

    #[test]
    fn chaos_flags_need_chaos_and_exclude_the_scenario_flags() {
        for bad in [
            vec!["switchyard-load", "--chaos-fault", "reset"],
            vec!["switchyard-load", "--chaos", "--concurrency", "8"],
            vec!["switchyard-load", "--chaos", "--direct-only"],
            vec!["switchyard-load", "--chaos", "--chaos-fault", "timeout"],
            vec!["switchyard-load", "--chaos", "--chaos-concurrency", "0"],
        ] {
            assert!(
                LoadOptions::try_parse_from(&bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn otlp_export_needs_the_gateway_scenarios() {
        let options = LoadOptions::try_parse_from(["switchyard-load", "--otlp"]).unwrap();
        assert!(options.otlp);
        for bad in [
            vec!["switchyard-load", "--otlp", "--direct-only"],
            vec!["switchyard-load", "--otlp", "--chaos"],
        ] {
            assert!(
                LoadOptions::try_parse_from(&bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn extra_child_arguments_may_start_with_hyphens() {
        let options = LoadOptions::try_parse_from([
            "switchyard-load",
            "--gateway-arg",
            "--workers=1",
            "--mock-arg=--quiet",
            "--concurrency",
            "4",
        ])
        .unwrap();
        assert_eq!(options.gateway_arg, vec![OsString::from("--workers=1")]);
        assert_eq!(options.mock_arg, vec![OsString::from("--quiet")]);
        assert_eq!(options.concurrency, ConcurrencyList(vec![4]));
    }
}
