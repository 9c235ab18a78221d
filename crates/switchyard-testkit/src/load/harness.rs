//! One load run from start to report: start the children, run the scenarios in order,
//! sample the children's CPU and memory around each, and assemble the [`Report`].
//!
//! The children live in a [`Children`] owned by the caller, so the caller can stop them
//! whatever way the run ends, interrupted included. This module prints only progress, to
//! stderr; the report is the caller's to print.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::child::{ChildProcess, ConfigFile, gateway_config};
use super::error::LoadError;
use super::generator::{LoadOutcome, LoadPlan, start_on_own_runtime};
use super::options::{CacheMode, LoadOptions};
use super::procfs::{CpuSample, MachineFacts, Process, read_status_bytes};
use super::report::{
    LatencySummary, ProcessFacts, Report, Route, ScenarioResult, Settings, compare_with_direct,
    evaluate_targets,
};

/// The chat completion every request sends unless `--body` says otherwise.
pub const DEFAULT_BODY: &str = r#"{"model":"mock-small","messages":[{"role":"user","content":"Hello from the load harness"}],"max_tokens":16}"#;

/// Where both the mock and the gateway serve chat completions.
pub const CHAT_COMPLETIONS_PATH: &str = "/v1/chat/completions";

/// How often peak RSS is sampled during a scenario.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Let a freshly started gateway finish its start-up allocations before idle RSS is read.
const SETTLE_BEFORE_IDLE_RSS: Duration = Duration::from_millis(250);

/// The processes of a run and the gateway's config file.
#[derive(Debug, Default)]
pub struct Children {
    /// The mock provider of the scenario runs, once started.
    pub mock: Option<ChildProcess>,
    /// The chaos run's mock providers (alpha, beta, gamma), each named by its role; one that
    /// the run has killed on purpose is not in here until it is restarted.
    pub providers: Vec<ChildProcess>,
    /// The gateway, once started (never with `--direct-only`).
    pub gateway: Option<ChildProcess>,
    /// Removed when the children stop.
    config: Option<ConfigFile>,
}

impl Children {
    /// Kills the children, waits for them, and removes the config file.
    pub async fn shutdown(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
        if let Some(mock) = self.mock.take() {
            mock.stop().await;
        }
        for provider in self.providers.drain(..) {
            provider.stop().await;
        }
        self.config = None;
    }

    /// Keeps the gateway's config file until the children stop.
    pub(super) fn keep_config(&mut self, config: ConfigFile) -> &ConfigFile {
        self.config.insert(config)
    }
}

/// Runs every scenario `options` asks for and returns the report.
pub async fn run(options: &LoadOptions, children: &mut Children) -> Result<Report, LoadError> {
    let machine = MachineFacts::read();
    let (body, stream) = load_body(options)?;
    // Fail on a missing build before starting anything.
    let mut programs = vec![("mock", options.mock_program())];
    if !options.direct_only {
        programs.push(("gateway", options.gateway_program()));
    }
    for (role, path) in programs {
        if !path.is_file() {
            return Err(LoadError::MissingBinary { role, path });
        }
    }

    let mock = start_mock(options, "mock", "127.0.0.1:0").await?;
    progress(format_args!(
        "mock pid {} listening on {}",
        mock.pid(),
        mock.address()
    ));
    let mock = children.mock.insert(mock);
    let mock_address = mock.address();
    let mock_pid = mock.pid();

    // The trace collector is a mock of its own: the provider's latency, which the gateway's
    // added latency is measured against, must not include receiving the gateway's traces.
    let collector = if options.otlp && !options.direct_only {
        let collector = start_mock(options, "collector", "127.0.0.1:0").await?;
        progress(format_args!(
            "trace collector (a mock) pid {} listening on {}",
            collector.pid(),
            collector.address()
        ));
        let address = collector.address();
        children.providers.push(collector);
        Some(address)
    } else {
        None
    };

    if !options.direct_only {
        let config = children.keep_config(ConfigFile::create(&gateway_config(
            mock_address,
            collector,
            options.limits,
            options.cache,
        ))?);
        let gateway = start_gateway(options, config).await?;
        progress(format_args!(
            "gateway pid {} listening on {}",
            gateway.pid(),
            gateway.address()
        ));
        children.gateway = Some(gateway);
    }

    tokio::time::sleep(SETTLE_BEFORE_IDLE_RSS).await;
    let gateway_pid = children.gateway.as_ref().map(ChildProcess::pid);
    let gateway_idle_rss =
        gateway_pid.and_then(|pid| read_status_bytes(Process::Pid(pid), "VmRSS").ok());
    let mock_idle_rss = read_status_bytes(Process::Pid(mock_pid), "VmRSS").ok();

    let mut routes = vec![Route::Direct];
    if !options.direct_only {
        routes.push(Route::ViaGateway);
    }
    let mut scenarios = Vec::new();
    for &concurrency in &options.concurrency.0 {
        for &route in &routes {
            let target = match route {
                Route::Direct => Some(mock_address),
                Route::ViaGateway => children.gateway.as_ref().map(ChildProcess::address),
            };
            let Some(target) = target else { continue };
            progress(format_args!(
                "{} c={concurrency}: {:?} warm-up + {:?} measured",
                route.label(),
                options.warmup,
                options.duration
            ));
            let plan = LoadPlan {
                target,
                path: CHAT_COMPLETIONS_PATH.to_owned(),
                body: body.clone(),
                stream,
                concurrency,
                warmup: options.warmup,
                phases: vec![options.duration],
                request_timeout: options.request_timeout,
                unique_bodies: options.cache == Some(CacheMode::Miss),
            };
            let measures_gateway = gateway_pid.filter(|_| route == Route::ViaGateway);
            let measured =
                run_scenario(plan, options.load_threads, mock_pid, measures_gateway).await?;
            let result = summarise(route, concurrency, stream, measured);
            progress(format_args!(
                "{} c={concurrency}: {:.0} RPS, p50 {}, {} non-2xx, {} errors",
                route.label(),
                result.requests_per_second,
                result.latency.map_or_else(
                    || "-".to_owned(),
                    |latency| format!("{:.3} ms", latency.p50_ms)
                ),
                result.non_success,
                result.errors
            ));
            scenarios.push(result);
            ensure_alive(children)?;
        }
    }
    compare_with_direct(&mut scenarios);
    let trace_exports = match collector {
        Some(collector) => trace_exports(collector).await,
        None => None,
    };

    let gateway = children.gateway.as_ref().map(|gateway| ProcessFacts {
        pid: gateway.pid(),
        address: gateway.address().to_string(),
        idle_rss_bytes: gateway_idle_rss,
        peak_rss_at_end_bytes: read_status_bytes(Process::Pid(gateway.pid()), "VmHWM").ok(),
    });
    let mock = ProcessFacts {
        pid: mock_pid,
        address: mock_address.to_string(),
        idle_rss_bytes: mock_idle_rss,
        peak_rss_at_end_bytes: read_status_bytes(Process::Pid(mock_pid), "VmHWM").ok(),
    };
    let targets = evaluate_targets(&scenarios, gateway.as_ref());
    Ok(Report {
        machine,
        settings: Settings {
            stream,
            warmup_seconds: options.warmup.as_secs_f64(),
            duration_seconds: options.duration.as_secs_f64(),
            load_threads: options.load_threads,
            concurrency: options.concurrency.0.clone(),
            direct_only: options.direct_only,
            mock_latency_ms: options.mock_latency_ms,
            body_file: options.body.as_ref().map(|path| path.display().to_string()),
            cache: options.cache,
        },
        mock,
        gateway,
        scenarios,
        targets,
        trace_exports,
    })
}

/// How many OTLP exports the mock has received, `None` when it cannot tell.
async fn trace_exports(mock: std::net::SocketAddr) -> Option<u64> {
    match super::control::call_json(mock, http::Method::GET, "/__mock/trace_exports", None).await {
        Ok(answer) => answer["trace_exports"].as_u64(),
        Err(error) => {
            progress(format_args!(
                "could not read the mock's trace exports: {error}"
            ));
            None
        }
    }
}

/// The body to send and whether it asks for a stream.
fn load_body(options: &LoadOptions) -> Result<(Bytes, bool), LoadError> {
    let text = match &options.body {
        Some(path) => std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            context: format!("reading the body {}", path.display()),
            source,
        })?,
        None => DEFAULT_BODY.to_owned(),
    };
    prepare_body(&text, options.stream).map_err(LoadError::Body)
}

/// Checks that `text` is a JSON object and, when streaming is asked for (by the flag or by
/// the body itself), makes sure it says `"stream": true`. A non-streaming body is sent
/// byte for byte as given.
pub fn prepare_body(text: &str, stream: bool) -> Result<(Bytes, bool), String> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not valid JSON: {error}"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("must be a JSON object".to_owned());
    };
    let stream = stream || object.get("stream") == Some(&serde_json::Value::Bool(true));
    if !stream {
        return Ok((Bytes::from(text.trim().to_owned()), false));
    }
    object.insert("stream".to_owned(), serde_json::Value::Bool(true));
    let bytes = serde_json::to_vec(&value).map_err(|error| error.to_string())?;
    Ok((Bytes::from(bytes), true))
}

/// Starts a mock provider called `name` (also its role in messages) on `listen`.
pub(super) async fn start_mock(
    options: &LoadOptions,
    name: &'static str,
    listen: &str,
) -> Result<ChildProcess, LoadError> {
    let mut args: Vec<OsString> = vec![
        "--listen".into(),
        listen.into(),
        "--name".into(),
        name.into(),
    ];
    if let Some(latency) = options.mock_latency_ms {
        args.extend(["--latency-ms".into(), latency.to_string().into()]);
    }
    if let Some(threads) = options.mock_threads {
        args.extend(["--threads".into(), threads.to_string().into()]);
    }
    args.extend(options.mock_arg.iter().cloned());
    ChildProcess::start(
        name,
        &options.mock_program(),
        &args,
        "switchyard-mock",
        options.startup_timeout,
    )
    .await
}

pub(super) async fn start_gateway(
    options: &LoadOptions,
    config: &ConfigFile,
) -> Result<ChildProcess, LoadError> {
    let mut args: Vec<OsString> = vec![
        "serve".into(),
        "--config".into(),
        config.path().as_os_str().to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(options.gateway_arg.iter().cloned());
    ChildProcess::start(
        "gateway",
        &options.gateway_program(),
        &args,
        "switchyard",
        options.startup_timeout,
    )
    .await
}

/// What one scenario measured, before it is summarised.
struct Measured {
    outcome: LoadOutcome,
    gateway_cpu_percent: Option<f64>,
    mock_cpu_percent: Option<f64>,
    harness_cpu_percent: Option<f64>,
    gateway_peak_rss: Option<u64>,
    mock_peak_rss: Option<u64>,
}

/// Runs the generator on its own runtime while sampling the children from this one.
/// `measures_gateway` is the gateway's pid in gateway scenarios, `None` in direct ones.
async fn run_scenario(
    plan: LoadPlan,
    load_threads: u16,
    mock_pid: u32,
    measures_gateway: Option<u32>,
) -> Result<Measured, LoadError> {
    let warmup = plan.warmup;
    let mock_rss = RssSampler::start(Process::Pid(mock_pid));
    let gateway_rss = measures_gateway.map(|pid| RssSampler::start(Process::Pid(pid)));

    let origin = Instant::now();
    let outcome = start_on_own_runtime(plan, load_threads, origin)?;
    tokio::time::sleep_until((origin + warmup).into()).await;
    let before = CpuSamples::take(mock_pid, measures_gateway);
    let outcome = outcome
        .await
        .map_err(|_| LoadError::Generator("its thread ended without a result".to_owned()))??
        .pop()
        .ok_or_else(|| LoadError::Generator("a one-phase plan gave no outcome".to_owned()))?;
    let after = CpuSamples::take(mock_pid, measures_gateway);

    let gateway_peak_rss = match gateway_rss {
        Some(sampler) => sampler.stop().await,
        None => None,
    };
    Ok(Measured {
        outcome,
        gateway_cpu_percent: percent(before.gateway, after.gateway),
        mock_cpu_percent: percent(before.mock, after.mock),
        harness_cpu_percent: percent(before.harness, after.harness),
        gateway_peak_rss,
        mock_peak_rss: mock_rss.stop().await,
    })
}

/// CPU readings of the processes involved, at one moment.
struct CpuSamples {
    mock: Option<CpuSample>,
    gateway: Option<CpuSample>,
    harness: Option<CpuSample>,
}

impl CpuSamples {
    fn take(mock_pid: u32, gateway_pid: Option<u32>) -> Self {
        Self {
            mock: CpuSample::take(Process::Pid(mock_pid)).ok(),
            gateway: gateway_pid.and_then(|pid| CpuSample::take(Process::Pid(pid)).ok()),
            harness: CpuSample::take(Process::Myself).ok(),
        }
    }
}

fn percent(before: Option<CpuSample>, after: Option<CpuSample>) -> Option<f64> {
    Some(before?.percent_until(&after?))
}

/// Samples one process's VmRSS every [`RSS_SAMPLE_INTERVAL`] and keeps the highest.
struct RssSampler {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<u64>>,
}

impl RssSampler {
    fn start(process: Process) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = None;
            let mut ticks = tokio::time::interval(RSS_SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        if let Ok(rss) = read_status_bytes(process, "VmRSS") {
                            peak = peak.max(Some(rss));
                        }
                    }
                }
            }
            // One last sample, so the end of the scenario is always covered.
            if let Ok(rss) = read_status_bytes(process, "VmRSS") {
                peak = peak.max(Some(rss));
            }
            peak
        });
        Self { stop, task }
    }

    async fn stop(self) -> Option<u64> {
        let _ = self.stop.send(());
        self.task.await.ok().flatten()
    }
}

fn summarise(route: Route, concurrency: usize, stream: bool, measured: Measured) -> ScenarioResult {
    let outcome = &measured.outcome;
    ScenarioResult {
        route,
        concurrency,
        succeeded: outcome.succeeded,
        non_success: outcome.non_success,
        errors: outcome.errors,
        reconnects: outcome.reconnects,
        measured_seconds: outcome.elapsed.as_secs_f64(),
        requests_per_second: outcome.requests_per_second(),
        latency: LatencySummary::from_micros(&outcome.latency),
        first_byte_p50_ms: (stream && !outcome.first_byte.is_empty())
            .then(|| outcome.first_byte.value_at_quantile(0.5) as f64 / 1000.0),
        gateway_cpu_percent: measured.gateway_cpu_percent,
        mock_cpu_percent: measured.mock_cpu_percent,
        harness_cpu_percent: measured.harness_cpu_percent,
        gateway_peak_rss_bytes: measured.gateway_peak_rss,
        mock_peak_rss_bytes: measured.mock_peak_rss,
        first_failure: measured.outcome.first_failure,
        versus_direct: None,
    }
}

/// Fails the run when a child died: the figures after that would be meaningless.
pub(super) fn ensure_alive(children: &mut Children) -> Result<(), LoadError> {
    for child in [children.mock.as_mut(), children.gateway.as_mut()]
        .into_iter()
        .flatten()
        .chain(children.providers.iter_mut())
    {
        if let Some(status) = child.exit_status() {
            return Err(LoadError::ChildExited {
                role: child.role(),
                status: status.to_string(),
                output: child.recent_output(),
            });
        }
    }
    Ok(())
}

pub(super) fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!("switchyard-load: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_body_is_sent_as_written() {
        let (body, stream) = prepare_body(DEFAULT_BODY, false).unwrap();
        assert_eq!(body, DEFAULT_BODY.as_bytes());
        assert!(!stream);
    }

    #[test]
    fn streaming_adds_the_stream_flag() {
        let (body, stream) = prepare_body(DEFAULT_BODY, true).unwrap();
        assert!(stream);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["stream"], true);
        assert_eq!(value["model"], "mock-small");
        assert_eq!(value["max_tokens"], 16);
    }

    #[test]
    fn a_body_that_streams_by_itself_is_measured_as_a_stream() {
        let (_, stream) = prepare_body(r#"{"model":"m","stream":true}"#, false).unwrap();
        assert!(stream);
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(prepare_body("[1]", false).is_err());
        assert!(prepare_body("{", false).is_err());
    }
}
