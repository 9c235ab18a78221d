//! The chaos run (`--chaos`): steady load through the gateway while one of three providers
//! fails and recovers.
//!
//! Three mock providers (alpha, beta, gamma) sit behind one route, `chaos`, in that order.
//! One closed-loop load runs through the gateway across three phases of equal length:
//!
//! 1. **healthy**: every provider answers;
//! 2. **failing**: at its start alpha is made to fail (`--chaos-fault`: answer 500, reset
//!    connections, hang, or be killed so connections are refused);
//! 3. **recovered**: at its start alpha answers again (its behaviour is reset, or the killed
//!    process is started again on the same port).
//!
//! The connections carry on across the phase boundaries; the generator tallies each phase
//! apart. At each boundary this module reads alpha's call counter and its breaker (from the
//! gateway's `/admin/providers`), and between them it polls the breaker for a timeline. It
//! does the I/O only: the bookkeeping and the table are in [`super::chaos_report`].
//!
//! Every child lives in the caller's [`Children`], so every way out stops them all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::chaos_report::{
    BreakerChange, BreakerSample, CallReading, ChaosReport, ChaosSettings, ChildFacts, Phase,
    PhaseCounts, PhaseResult, ProviderFigures, attempts_during, calls_over, note_breaker,
};
use super::child::{ChildProcess, ConfigFile};
use super::control::call_json;
use super::error::LoadError;
use super::generator::{LoadOutcome, LoadPlan, Schedule, start_on_own_runtime};
use super::harness::{
    CHAT_COMPLETIONS_PATH, Children, DEFAULT_BODY, ensure_alive, prepare_body, progress,
    start_gateway, start_mock,
};
use super::options::{ChaosFault, ChaosStrategy, LoadOptions};
use super::procfs::MachineFacts;
use super::report::LatencySummary;

/// The providers behind the chaos route, in the route's order; the first one fails.
pub const PROVIDERS: [&str; 3] = ["alpha", "beta", "gamma"];

/// The model every request asks the gateway for.
pub const ROUTE_MODEL: &str = "chaos";

/// The model name the route sends to each provider.
pub const UPSTREAM_MODEL: &str = "m";

/// `[routing.breaker] consecutive_failures` of the chaos config.
pub const BREAKER_CONSECUTIVE_FAILURES: u32 = 5;

/// `[routing.breaker] cooldown` of the chaos config.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(2);

/// `[upstream] first_byte_timeout` of the chaos config. Far above what a healthy mock takes,
/// and short enough that a hanging provider costs a bounded, visible delay. Written for every
/// fault so the runs stay comparable.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the breaker is polled for the timeline.
pub const BREAKER_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Pause between attempts to restart a killed provider on its old port.
const RESTART_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The failing provider: the first of [`PROVIDERS`].
const FAILING: &str = PROVIDERS[0];

/// Runs the chaos scenario and returns its report.
pub async fn run(options: &LoadOptions, children: &mut Children) -> Result<ChaosReport, LoadError> {
    let machine = MachineFacts::read();
    let (body, stream) = chaos_body(options)?;
    // Fail on a missing build before starting anything.
    for (role, path) in [
        ("mock", options.mock_program()),
        ("gateway", options.gateway_program()),
    ] {
        if !path.is_file() {
            return Err(LoadError::MissingBinary { role, path });
        }
    }

    let mut addresses = Vec::with_capacity(PROVIDERS.len());
    for name in PROVIDERS {
        let provider = start_mock(options, name, "127.0.0.1:0").await?;
        progress(format_args!(
            "{name} pid {} listening on {}",
            provider.pid(),
            provider.address()
        ));
        addresses.push((name, provider.address()));
        children.providers.push(provider);
    }
    let config = chaos_gateway_config(&addresses, options.chaos_strategy);
    let config = children.keep_config(ConfigFile::create(&config)?);
    let gateway = start_gateway(options, config).await?;
    let gateway_address = gateway.address();
    progress(format_args!(
        "gateway pid {} listening on {gateway_address}",
        gateway.pid()
    ));
    children.gateway = Some(gateway);
    let mut alpha = FailingProvider {
        address: addresses[0].1,
        instance: 1,
        running: true,
    };

    // Say early, not in the table, when the admin API cannot be read (a master key set in
    // the environment would do that); the run still measures everything else.
    if let Err(error) = read_breaker(gateway_address).await {
        progress(format_args!("cannot read {FAILING}'s breaker: {error}"));
    }

    let plan = LoadPlan {
        target: gateway_address,
        path: CHAT_COMPLETIONS_PATH.to_owned(),
        body,
        stream,
        concurrency: options.chaos_concurrency,
        warmup: options.warmup,
        phases: vec![options.chaos_phase; Phase::ALL.len()],
        request_timeout: options.request_timeout,
        unique_bodies: false,
    };
    let origin = Instant::now();
    let schedule = Schedule::new(origin + plan.warmup, &plan.phases);
    progress(format_args!(
        "{} connections to model {ROUTE_MODEL:?}: {:?} warm-up, then {} phases of {:?}; \
         {FAILING} fault: {}",
        plan.concurrency,
        plan.warmup,
        plan.phases.len(),
        options.chaos_phase,
        options.chaos_fault.label()
    ));
    let outcomes = start_on_own_runtime(plan, options.load_threads, origin)?;
    let poller = BreakerPoller::start(gateway_address, schedule.start());

    tokio::time::sleep_until(schedule.start().into()).await;
    let start = Boundary::read(&alpha, gateway_address).await?;
    let mut start_breaker = start.breaker;
    // Alpha's calls in a phase are summed over stretches of one process each: a kill ends
    // one stretch inside the failing phase, a restart begins another.
    let mut stretches = Vec::new();
    let mut stretch_start = start.calls;
    let mut changed_after = None;
    let mut readings = Vec::with_capacity(Phase::ALL.len());
    for (index, phase) in Phase::ALL.into_iter().enumerate() {
        progress(format_args!("{} phase", phase.label()));
        let (_, phase_end) = schedule.bounds(index);
        tokio::time::sleep_until(phase_end.into()).await;
        let end = Boundary::read(&alpha, gateway_address).await?;
        ensure_alive(children)?;
        stretches.push((stretch_start, end.calls));
        readings.push(PhaseReadings {
            calls: calls_over(&stretches),
            attempts: attempts_during(start_breaker.as_ref().ok(), end.breaker.as_ref().ok()),
            breaker: end.breaker.clone(),
            changed_after: changed_after.take(),
        });
        stretches.clear();
        start_breaker = end.breaker;
        stretch_start = end.calls;
        // The next phase begins at the boundary, like the generator's tally; its fault or
        // recovery is in place a moment later, and that moment is reported.
        match Phase::ALL.get(index + 1) {
            Some(Phase::Failing) => {
                if let Some(last) = inject_fault(options.chaos_fault, &mut alpha, children).await? {
                    stretches.push((end.calls, Some(last)));
                    stretch_start = None;
                }
            }
            Some(Phase::Recovered) => {
                if recover(options, &mut alpha, children).await? {
                    // A fresh process counts from zero, and all it counts is this phase's.
                    stretch_start = Some(CallReading {
                        instance: alpha.instance,
                        calls: 0,
                    });
                }
            }
            _ => break,
        }
        changed_after = Some(phase_end.elapsed());
    }

    let outcomes = outcomes
        .await
        .map_err(|_| LoadError::Generator("its thread ended without a result".to_owned()))??;
    let (timeline, poll_error) = poller.stop().await;
    ensure_alive(children)?;

    let mut breaker_error = poll_error;
    let phases = Phase::ALL
        .into_iter()
        .zip(outcomes)
        .zip(readings)
        .map(|((phase, outcome), readings)| {
            let breaker = match readings.breaker {
                Ok(sample) => Some(sample),
                Err(error) => {
                    breaker_error.get_or_insert(error);
                    None
                }
            };
            let provider = ProviderFigures {
                calls: readings.calls,
                attempts: readings.attempts,
                breaker_at_end: breaker,
                change_in_place_ms: readings
                    .changed_after
                    .map(|after| after.as_secs_f64() * 1000.0),
            };
            let result = PhaseResult::new(phase, counts(outcome), provider);
            progress(format_args!(
                "{}: {} requests, {} non-2xx, {} errors, {FAILING} received {} (gateway \
                 attempts {})",
                phase.label(),
                result.requests,
                result.non_success,
                result.errors,
                unknown_or(result.failing_provider_calls),
                unknown_or(result.failing_provider_attempts),
            ));
            result
        })
        .collect();

    let mut facts: Vec<ChildFacts> = children
        .gateway
        .iter()
        .chain(children.providers.iter())
        .map(|child| ChildFacts {
            role: child.role().to_owned(),
            pid: child.pid(),
            address: child.address().to_string(),
        })
        .collect();
    // The route's order reads better than the order of (re)starts.
    facts.sort_by_key(|child| PROVIDERS.iter().position(|name| *name == child.role));
    Ok(ChaosReport::new(
        machine,
        ChaosSettings {
            fault: options.chaos_fault.label().to_owned(),
            strategy: options.chaos_strategy.config_name().to_owned(),
            providers: PROVIDERS.iter().map(|name| (*name).to_owned()).collect(),
            concurrency: options.chaos_concurrency,
            warmup_seconds: options.warmup.as_secs_f64(),
            phase_seconds: options.chaos_phase.as_secs_f64(),
            stream,
            load_threads: options.load_threads,
            breaker_consecutive_failures: BREAKER_CONSECUTIVE_FAILURES,
            breaker_cooldown_ms: millis(BREAKER_COOLDOWN),
            first_byte_timeout_ms: millis(FIRST_BYTE_TIMEOUT),
            breaker_poll_ms: millis(BREAKER_POLL_INTERVAL),
            mock_latency_ms: options.mock_latency_ms,
        },
        facts,
        phases,
        timeline,
        breaker_error,
    ))
}

/// Alpha's counters at one moment, read at once so they cover about the same instant (not
/// exactly: under load they can differ by up to about one request per connection).
struct Boundary {
    /// Its call counter; `None` while it is not running.
    calls: Option<CallReading>,
    /// Its breaker, with the gateway's count of attempts to it.
    breaker: Result<BreakerSample, String>,
}

impl Boundary {
    async fn read(alpha: &FailingProvider, gateway: SocketAddr) -> Result<Self, LoadError> {
        let (calls, breaker) = tokio::join!(alpha.read_calls(), read_breaker(gateway));
        Ok(Self {
            calls: calls?,
            breaker,
        })
    }
}

/// What was read of one phase.
struct PhaseReadings {
    /// Requests alpha received during the phase.
    calls: Option<u64>,
    /// Attempts the gateway admitted to alpha during the phase.
    attempts: Option<u64>,
    /// Alpha's breaker at the end of the phase.
    breaker: Result<BreakerSample, String>,
    /// How long after the phase began its fault or recovery was in place.
    changed_after: Option<Duration>,
}

/// Where the failing provider is and which process of it is running.
struct FailingProvider {
    /// Its address; a restart binds the same one, which the gateway's config names.
    address: SocketAddr,
    /// Counts (re)starts, so a call counter is never compared across processes.
    instance: u32,
    /// False between a kill and the restart.
    running: bool,
}

impl FailingProvider {
    /// Its call counter now, or `None` while it is not running.
    async fn read_calls(&self) -> Result<Option<CallReading>, LoadError> {
        if !self.running {
            return Ok(None);
        }
        let answer = call_json(self.address, Method::GET, "/__mock/calls", None)
            .await
            .map_err(control_error)?;
        let calls = answer
            .get("calls")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| control_error(format!("unexpected /__mock/calls answer {answer}")))?;
        Ok(Some(CallReading {
            instance: self.instance,
            calls,
        }))
    }

    /// Sets its default behaviour through the control API.
    async fn set_behavior(&self, behavior: &str) -> Result<(), LoadError> {
        call_json(
            self.address,
            Method::POST,
            "/__mock/behavior",
            Some(behavior),
        )
        .await
        .map(drop)
        .map_err(control_error)
    }
}

fn control_error(message: String) -> LoadError {
    LoadError::Control {
        role: FAILING,
        message,
    }
}

/// The `POST /__mock/behavior` body that makes a provider fail with `fault`; `None` for
/// `refuse`, which needs the process gone instead.
pub fn fault_behavior(fault: ChaosFault) -> Option<&'static str> {
    match fault {
        ChaosFault::Status500 => Some(r#"{"error_status": 500}"#),
        ChaosFault::Reset => Some(r#"{"reset": true}"#),
        ChaosFault::Hang => Some(r#"{"hang": true}"#),
        ChaosFault::Refuse => None,
    }
}

/// The behaviour that undoes any fault: every field back to "behave normally".
pub const HEALTHY_BEHAVIOR: &str = "{}";

/// Makes alpha fail at the start of the failing phase. When that means killing it, returns
/// the process's last call reading.
async fn inject_fault(
    fault: ChaosFault,
    alpha: &mut FailingProvider,
    children: &mut Children,
) -> Result<Option<CallReading>, LoadError> {
    if let Some(behavior) = fault_behavior(fault) {
        alpha.set_behavior(behavior).await?;
        return Ok(None);
    }
    let last = alpha.read_calls().await?;
    if let Some(position) = children
        .providers
        .iter()
        .position(|child| child.role() == FAILING)
    {
        children.providers.swap_remove(position).stop().await;
    }
    alpha.running = false;
    progress(format_args!(
        "{FAILING} killed; {} now refuses connections",
        alpha.address
    ));
    Ok(last)
}

/// Brings alpha back at the start of the recovered phase; true when that took a new
/// process.
async fn recover(
    options: &LoadOptions,
    alpha: &mut FailingProvider,
    children: &mut Children,
) -> Result<bool, LoadError> {
    if alpha.running {
        alpha.set_behavior(HEALTHY_BEHAVIOR).await?;
        return Ok(false);
    }
    let restarted = restart_on(options, alpha.address).await?;
    progress(format_args!(
        "{FAILING} restarted as pid {} on {}",
        restarted.pid(),
        restarted.address()
    ));
    children.providers.push(restarted);
    alpha.instance += 1;
    alpha.running = true;
    Ok(true)
}

/// Starts the failing provider again on `address`, retrying while the port is briefly not
/// bindable, for at most the start-up timeout.
async fn restart_on(options: &LoadOptions, address: SocketAddr) -> Result<ChildProcess, LoadError> {
    let deadline = Instant::now() + options.startup_timeout;
    let listen = address.to_string();
    loop {
        match start_mock(options, FAILING, &listen).await {
            Ok(child) if child.address() == address => return Ok(child),
            Ok(child) => {
                let actual = child.address();
                child.stop().await;
                return Err(LoadError::Startup {
                    role: FAILING,
                    reason: format!("restarted on {actual} instead of {address}"),
                    output: String::new(),
                });
            }
            Err(error @ LoadError::Startup { .. })
                if Instant::now() + RESTART_RETRY_PAUSE < deadline =>
            {
                progress(format_args!(
                    "restarting {FAILING} on {address} failed, retrying: {error}"
                ));
                tokio::time::sleep(RESTART_RETRY_PAUSE).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Alpha's breaker as the gateway shows it now.
async fn read_breaker(gateway: SocketAddr) -> Result<BreakerSample, String> {
    let snapshot = call_json(gateway, Method::GET, "/admin/providers", None).await?;
    BreakerSample::from_admin(&snapshot, FAILING, UPSTREAM_MODEL)
}

/// Polls alpha's breaker in the background and keeps its changes; stopped (or aborted when
/// dropped on an error path) by the run.
struct BreakerPoller {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<(Vec<BreakerChange>, Option<String>)>>,
}

impl BreakerPoller {
    /// Starts polling `gateway`; times are counted from `zero` (the healthy phase's start).
    fn start(gateway: SocketAddr, zero: Instant) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut timeline = Vec::new();
            let mut first_error = None;
            let mut ticks = tokio::time::interval(BREAKER_POLL_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        let at = Instant::now();
                        match read_breaker(gateway).await {
                            Ok(sample) => note_breaker(&mut timeline, seconds_since(zero, at), &sample),
                            Err(error) => {
                                first_error.get_or_insert(error);
                            }
                        }
                    }
                }
            }
            (timeline, first_error)
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops polling and hands back the timeline and the first failed poll, if any.
    async fn stop(mut self) -> (Vec<BreakerChange>, Option<String>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|error| {
                (
                    Vec::new(),
                    Some(format!("the breaker poller failed: {error}")),
                )
            }),
            None => (Vec::new(), None),
        }
    }
}

impl Drop for BreakerPoller {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Signed seconds from `zero` to `at`: negative during the warm-up.
fn seconds_since(zero: Instant, at: Instant) -> f64 {
    match at.checked_duration_since(zero) {
        Some(after) => after.as_secs_f64(),
        None => -zero.saturating_duration_since(at).as_secs_f64(),
    }
}

fn counts(outcome: LoadOutcome) -> PhaseCounts {
    PhaseCounts {
        succeeded: outcome.succeeded,
        retried: outcome.retried_latency.len(),
        retried_latency: LatencySummary::from_micros(&outcome.retried_latency),
        non_success: outcome.non_success,
        errors: outcome.errors,
        reconnects: outcome.reconnects,
        measured_seconds: outcome.elapsed.as_secs_f64(),
        latency: LatencySummary::from_micros(&outcome.latency),
        first_failure: outcome.first_failure,
    }
}

fn unknown_or(count: Option<u64>) -> String {
    count.map_or_else(|| "?".to_owned(), |count| count.to_string())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The request body of the chaos run: `--body` or the built-in one, asking for the chaos
/// route's model.
fn chaos_body(options: &LoadOptions) -> Result<(Bytes, bool), LoadError> {
    let text = match &options.body {
        Some(path) => std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            context: format!("reading the body {}", path.display()),
            source,
        })?,
        None => DEFAULT_BODY.to_owned(),
    };
    with_route_model(&text)
        .and_then(|text| prepare_body(&text, options.stream))
        .map_err(LoadError::Body)
}

/// `text` (a JSON object) with its `"model"` set to [`ROUTE_MODEL`].
pub fn with_route_model(text: &str) -> Result<String, String> {
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not valid JSON: {error}"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("must be a JSON object".to_owned());
    };
    object.insert("model".to_owned(), ROUTE_MODEL.into());
    serde_json::to_string(&value).map_err(|error| error.to_string())
}

/// The gateway's config for a chaos run: each provider OpenAI-shaped at its address, one
/// route over all of them in the given order, the breaker and the first-byte timeout.
pub fn chaos_gateway_config(providers: &[(&str, SocketAddr)], strategy: ChaosStrategy) -> String {
    let mut config = String::from(
        "# Written by switchyard-load --chaos for one run and removed when it ends.\n",
    );
    config.push_str(&format!(
        "[upstream]\nfirst_byte_timeout = \"{}ms\"\n",
        millis(FIRST_BYTE_TIMEOUT)
    ));
    for (name, address) in providers {
        config.push_str(&format!(
            "\n[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{address}/v1\"\n"
        ));
    }
    let targets: Vec<String> = providers
        .iter()
        .map(|(name, _)| format!("{{ provider = \"{name}\", model = \"{UPSTREAM_MODEL}\" }}"))
        .collect();
    config.push_str(&format!(
        "\n[[routes]]\nmodel = \"{ROUTE_MODEL}\"\nstrategy = \"{}\"\ntargets = [ {} ]\n",
        strategy.config_name(),
        targets.join(", ")
    ));
    config.push_str(&format!(
        "\n[routing.breaker]\nconsecutive_failures = {BREAKER_CONSECUTIVE_FAILURES}\n\
         cooldown = \"{}ms\"\n",
        millis(BREAKER_COOLDOWN)
    ));
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_routes_chaos_over_every_provider_in_order() {
        let config = chaos_gateway_config(
            &[
                ("alpha", SocketAddr::from(([127, 0, 0, 1], 4001))),
                ("beta", SocketAddr::from(([127, 0, 0, 1], 4002))),
                ("gamma", SocketAddr::from(([127, 0, 0, 1], 4003))),
            ],
            ChaosStrategy::LeastLatency,
        );
        assert!(config.contains("[upstream]\nfirst_byte_timeout = \"500ms\""));
        assert_eq!(config.matches("[[providers]]").count(), 3);
        assert!(config.contains("base_url = \"http://127.0.0.1:4002/v1\""));
        assert!(config.contains("strategy = \"least-latency\""));
        assert!(config.contains(
            "targets = [ { provider = \"alpha\", model = \"m\" }, \
             { provider = \"beta\", model = \"m\" }, { provider = \"gamma\", model = \"m\" } ]"
        ));
        assert!(
            config.contains("[routing.breaker]\nconsecutive_failures = 5\ncooldown = \"2000ms\"")
        );
    }

    #[test]
    fn faults_map_to_behaviours() {
        assert_eq!(
            fault_behavior(ChaosFault::Status500),
            Some(r#"{"error_status": 500}"#)
        );
        assert_eq!(
            fault_behavior(ChaosFault::Reset),
            Some(r#"{"reset": true}"#)
        );
        assert_eq!(fault_behavior(ChaosFault::Hang), Some(r#"{"hang": true}"#));
        assert_eq!(fault_behavior(ChaosFault::Refuse), None);
        // Every behaviour the run sends is one the mock accepts.
        for behavior in [ChaosFault::Status500, ChaosFault::Reset, ChaosFault::Hang]
            .into_iter()
            .filter_map(fault_behavior)
            .chain([HEALTHY_BEHAVIOR])
        {
            let parsed: crate::mock::Behavior = serde_json::from_str(behavior).unwrap();
            assert!(parsed.validate().is_ok());
        }
    }

    #[test]
    fn the_body_asks_for_the_chaos_route() {
        let text = with_route_model(DEFAULT_BODY).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["model"], ROUTE_MODEL);
        assert_eq!(value["max_tokens"], 16);
        assert!(with_route_model("[]").is_err());
        assert!(with_route_model("{").is_err());
    }

    #[test]
    fn seconds_are_signed_around_the_start() {
        let zero = Instant::now() + Duration::from_secs(1);
        assert!((seconds_since(zero, zero + Duration::from_millis(1500)) - 1.5).abs() < 1e-9);
        let before = zero.checked_sub(Duration::from_millis(250)).unwrap();
        assert!((seconds_since(zero, before) + 0.25).abs() < 1e-9);
    }
}
