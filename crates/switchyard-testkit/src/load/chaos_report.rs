//! The chaos scenario's figures and how they are shown: the phase bookkeeping, the breaker
//! readings, the markdown table and the JSON.
//!
//! Everything here is pure: [`super::chaos`] does the I/O and fills a [`ChaosReport`]; this
//! module turns readings into figures and figures into text. Requests that fail are results
//! shown in the table, never errors.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::procfs::MachineFacts;
use super::report::{LatencySummary, describe_machine};

/// The three phases of a chaos run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Every provider answers.
    Healthy,
    /// The failing provider fails the way `--chaos-fault` says.
    Failing,
    /// The failing provider answers again.
    Recovered,
}

impl Phase {
    /// The phases in the order they run.
    pub const ALL: [Phase; 3] = [Phase::Healthy, Phase::Failing, Phase::Recovered];

    /// The name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Failing => "failing",
            Phase::Recovered => "recovered",
        }
    }

    /// The phase that `seconds` after the healthy phase began falls in, with how far into
    /// that phase it is; `None` in the warm-up (negative) and after the run.
    pub fn locate(seconds: f64, phase_seconds: f64) -> Option<(Phase, f64)> {
        if !(seconds >= 0.0 && phase_seconds > 0.0) {
            return None;
        }
        let index = (seconds / phase_seconds).floor();
        // A float-to-int cast saturates; anything past the last phase is out of range.
        let phase = Phase::ALL.get(index as usize)?;
        Some((*phase, seconds - index * phase_seconds))
    }
}

/// A mock's call counter at one moment, and which process it was read from: a restarted
/// mock counts from zero again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallReading {
    /// 1 for the first process, 2 after a restart, and so on.
    pub instance: u32,
    /// `GET /__mock/calls` at that moment.
    pub calls: u64,
}

/// How many requests a mock received in a phase, from its counter at the phase's start and
/// end; a `None` reading means the process was not running then.
///
/// `None` when it cannot be known: the process died during the phase, or was replaced by
/// one that did not start from zero in the phase.
pub fn calls_during(start: Option<CallReading>, end: Option<CallReading>) -> Option<u64> {
    match (start, end) {
        // Down for the whole phase: nothing can have reached it.
        (None, None) => Some(0),
        (Some(start), Some(end)) if start.instance == end.instance => {
            Some(end.calls.saturating_sub(start.calls))
        }
        // Started during the phase, so its whole count belongs to the phase.
        (None, Some(end)) => Some(end.calls),
        (Some(_), Some(_)) | (Some(_), None) => None,
    }
}

/// How many requests a mock received over stretches of a phase, each a start and an end
/// reading as for [`calls_during`]; `None` when any stretch is unknown.
pub fn calls_over(stretches: &[(Option<CallReading>, Option<CallReading>)]) -> Option<u64> {
    stretches
        .iter()
        .map(|(start, end)| calls_during(*start, *end))
        .sum()
}

/// How many attempts the gateway admitted to a target between two breaker readings (its
/// own count, which unlike the mock's also sees refused connections). `None` when either
/// reading is missing.
pub fn attempts_during(start: Option<&BreakerSample>, end: Option<&BreakerSample>) -> Option<u64> {
    Some(end?.attempts.saturating_sub(start?.attempts))
}

/// One target's circuit breaker as `GET /admin/providers` showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerSample {
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// When open: how long until a probe may go.
    pub retry_in_ms: Option<u64>,
    /// Times it opened since the gateway started.
    pub opened: u64,
    /// State changes since the gateway started.
    pub transitions: u64,
    /// Attempts the gateway admitted to this target since it started (the gateway's own
    /// count, to set beside the mock's).
    pub attempts: u64,
}

impl BreakerSample {
    /// Reads `provider`'s target for `model` out of a `/admin/providers` answer.
    pub fn from_admin(snapshot: &Value, provider: &str, model: &str) -> Result<Self, String> {
        let providers = snapshot
            .get("providers")
            .and_then(Value::as_array)
            .ok_or("the answer has no \"providers\" list")?;
        let entry = providers
            .iter()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some(provider))
            .ok_or_else(|| format!("provider {provider:?} is not listed"))?;
        let target = entry
            .get("targets")
            .and_then(Value::as_array)
            .and_then(|targets| {
                targets
                    .iter()
                    .find(|target| target.get("model").and_then(Value::as_str) == Some(model))
            })
            .ok_or_else(|| format!("provider {provider:?} lists no target for model {model:?}"))?;
        let state = target
            .get("breaker")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the {provider:?} target has no breaker state"))?;
        let count = |key: &str| target.get(key).and_then(Value::as_u64).unwrap_or(0);
        Ok(Self {
            state: state.to_owned(),
            retry_in_ms: target.get("breaker_retry_in_ms").and_then(Value::as_u64),
            opened: count("breaker_opened"),
            transitions: count("breaker_transitions"),
            attempts: count("requests"),
        })
    }

    /// The table cell: the state, and how often it opened when it has.
    pub fn describe(&self) -> String {
        if self.opened == 0 {
            self.state.clone()
        } else {
            format!("{} (opened {}×)", self.state, self.opened)
        }
    }
}

/// A change in the failing provider's breaker seen by polling `/admin/providers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerChange {
    /// Seconds since the healthy phase began (negative: during the warm-up).
    pub at_seconds: f64,
    /// The state then.
    pub state: String,
    /// Times it had opened by then; a change of this alone means it reopened between polls.
    pub opened: u64,
}

/// Appends `sample`, taken `at_seconds` into the run, when it differs from the last change.
pub fn note_breaker(timeline: &mut Vec<BreakerChange>, at_seconds: f64, sample: &BreakerSample) {
    let unchanged = timeline
        .last()
        .is_some_and(|last| last.state == sample.state && last.opened == sample.opened);
    if !unchanged {
        timeline.push(BreakerChange {
            at_seconds,
            state: sample.state.clone(),
            opened: sample.opened,
        });
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub phase: Phase,
    /// Requests started in the phase and finished, whatever their outcome.
    pub requests: u64,
    /// Complete 2xx responses.
    pub succeeded: u64,
    /// Responses with another status.
    pub non_success: u64,
    /// Failed requests, timeouts, truncated streams.
    pub errors: u64,
    /// Connections to the gateway replaced after it closed or broke them.
    pub reconnects: u64,
    /// `succeeded / requests`, 0..=1; `None` when nothing finished.
    pub success_rate: Option<f64>,
    /// Length of the phase, s.
    pub measured_seconds: f64,
    /// Complete 2xx responses per second.
    pub requests_per_second: f64,
    /// Latency of the 2xx responses; `None` when nothing succeeded.
    pub latency: Option<LatencySummary>,
    /// p50 minus the healthy phase's p50, ms (`None` in the healthy phase itself).
    pub added_p50_ms: Option<f64>,
    /// p99 minus the healthy phase's p99, ms.
    pub added_p99_ms: Option<f64>,
    /// 2xx responses the gateway says took more than one attempt (a failover).
    pub retried: u64,
    /// Latency of those, ms: what a failover costs the client.
    pub retried_latency: Option<LatencySummary>,
    /// Requests the failing provider received in the phase, by its own counter (`None`:
    /// unknown).
    pub failing_provider_calls: Option<u64>,
    /// Attempts the gateway admitted to it in the phase, by the gateway's counter.
    pub failing_provider_attempts: Option<u64>,
    /// Its breaker at the end of the phase (`None`: could not be read).
    pub breaker_at_end: Option<BreakerSample>,
    /// How long after the phase began its fault (failing) or recovery (recovered) was in
    /// place, ms: the control call, or the kill or restart.
    pub change_in_place_ms: Option<f64>,
    /// The first failure in the phase, if any.
    pub first_failure: Option<String>,
}

/// A phase's counts before they become a [`PhaseResult`].
#[derive(Debug, Clone)]
pub struct PhaseCounts {
    pub succeeded: u64,
    /// 2xx responses after more than one attempt.
    pub retried: u64,
    pub retried_latency: Option<LatencySummary>,
    pub non_success: u64,
    pub errors: u64,
    pub reconnects: u64,
    pub measured_seconds: f64,
    pub latency: Option<LatencySummary>,
    pub first_failure: Option<String>,
}

/// What was read of the failing provider over a phase.
#[derive(Debug, Clone, Default)]
pub struct ProviderFigures {
    /// Requests it received, by its own counter.
    pub calls: Option<u64>,
    /// Attempts the gateway admitted to it, by the gateway's counter.
    pub attempts: Option<u64>,
    /// Its breaker at the end of the phase.
    pub breaker_at_end: Option<BreakerSample>,
    /// How long after the phase began its fault or recovery was in place, ms.
    pub change_in_place_ms: Option<f64>,
}

impl PhaseResult {
    /// The figures of `phase` (without the comparison, see [`compare_with_healthy`]).
    pub fn new(phase: Phase, counts: PhaseCounts, provider: ProviderFigures) -> Self {
        let requests = counts.succeeded + counts.non_success + counts.errors;
        Self {
            phase,
            requests,
            succeeded: counts.succeeded,
            non_success: counts.non_success,
            errors: counts.errors,
            reconnects: counts.reconnects,
            success_rate: (requests > 0).then(|| counts.succeeded as f64 / requests as f64),
            measured_seconds: counts.measured_seconds,
            requests_per_second: if counts.measured_seconds > 0.0 {
                counts.succeeded as f64 / counts.measured_seconds
            } else {
                0.0
            },
            latency: counts.latency,
            added_p50_ms: None,
            added_p99_ms: None,
            retried: counts.retried,
            retried_latency: counts.retried_latency,
            failing_provider_calls: provider.calls,
            failing_provider_attempts: provider.attempts,
            breaker_at_end: provider.breaker_at_end,
            change_in_place_ms: provider.change_in_place_ms,
            first_failure: counts.first_failure,
        }
    }

    /// Whether any request of the phase failed or got a non-2xx answer.
    pub fn had_failures(&self) -> bool {
        self.errors > 0 || self.non_success > 0
    }
}

/// Fills in every other phase's added latency against the healthy phase.
pub fn compare_with_healthy(phases: &mut [PhaseResult]) {
    let Some(baseline) = phases
        .iter()
        .find(|result| result.phase == Phase::Healthy)
        .and_then(|result| result.latency)
    else {
        return;
    };
    for result in phases
        .iter_mut()
        .filter(|result| result.phase != Phase::Healthy)
    {
        if let Some(latency) = result.latency {
            result.added_p50_ms = Some(latency.p50_ms - baseline.p50_ms);
            result.added_p99_ms = Some(latency.p99_ms - baseline.p99_ms);
        }
    }
}

/// How the chaos run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosSettings {
    /// `--chaos-fault`.
    pub fault: String,
    /// The route's strategy.
    pub strategy: String,
    /// The providers behind the route, in the route's order; the first one fails.
    pub providers: Vec<String>,
    pub concurrency: usize,
    pub warmup_seconds: f64,
    pub phase_seconds: f64,
    pub stream: bool,
    pub load_threads: u16,
    /// `[routing.breaker] consecutive_failures`.
    pub breaker_consecutive_failures: u32,
    /// `[routing.breaker] cooldown`, ms.
    pub breaker_cooldown_ms: u64,
    /// `[upstream] first_byte_timeout`, ms.
    pub first_byte_timeout_ms: u64,
    /// How often `/admin/providers` was polled for the breaker timeline, ms.
    pub breaker_poll_ms: u64,
    pub mock_latency_ms: Option<u64>,
}

/// A child process of the chaos run.
#[derive(Debug, Clone, Serialize)]
pub struct ChildFacts {
    /// `gateway`, `alpha`, ...
    pub role: String,
    /// The last pid it had (a restarted provider gets a new one).
    pub pid: u32,
    pub address: String,
}

/// All the figures of one chaos run.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub machine: MachineFacts,
    pub settings: ChaosSettings,
    pub children: Vec<ChildFacts>,
    pub phases: Vec<PhaseResult>,
    /// Every change of the failing provider's breaker seen while polling.
    pub breaker_timeline: Vec<BreakerChange>,
    /// Why the breaker could not be read, when it could not.
    pub breaker_error: Option<String>,
    /// The table as printed.
    pub markdown_table: String,
}

impl ChaosReport {
    /// Assembles the report, rendering its table once so the JSON carries the same text.
    pub fn new(
        machine: MachineFacts,
        settings: ChaosSettings,
        children: Vec<ChildFacts>,
        mut phases: Vec<PhaseResult>,
        breaker_timeline: Vec<BreakerChange>,
        breaker_error: Option<String>,
    ) -> Self {
        compare_with_healthy(&mut phases);
        let failing = settings.providers.first().cloned().unwrap_or_default();
        let markdown_table = render_chaos_table(&phases, &failing);
        Self {
            machine,
            settings,
            children,
            phases,
            breaker_timeline,
            breaker_error,
            markdown_table,
        }
    }

    /// The whole report as markdown: set-up, table, failures, breaker timeline.
    pub fn to_markdown(&self) -> String {
        let settings = &self.settings;
        let failing = settings.providers.first().map_or("?", String::as_str);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "## Switchyard chaos run: {failing} {}\n",
            fault_title(&settings.fault)
        );
        let _ = writeln!(out, "- machine: {}", describe_machine(&self.machine));
        let _ = writeln!(
            out,
            "- load: {} connections, closed loop over keep-alive HTTP/1.1 to model `chaos`, \
             {} s warm-up then three {} s phases, {}, generator on {} thread{}",
            settings.concurrency,
            settings.warmup_seconds,
            settings.phase_seconds,
            if settings.stream {
                "streaming (SSE)"
            } else {
                "non-streaming"
            },
            settings.load_threads,
            if settings.load_threads == 1 { "" } else { "s" },
        );
        let _ = writeln!(
            out,
            "- route: `{}` over {}; breaker opens after {} consecutive failures, cooldown {} ms; \
             upstream first-byte timeout {} ms; {}",
            settings.strategy,
            settings.providers.join(", "),
            settings.breaker_consecutive_failures,
            settings.breaker_cooldown_ms,
            settings.first_byte_timeout_ms,
            match settings.mock_latency_ms {
                Some(ms) => format!("{ms} ms simulated upstream latency"),
                None => "the mocks' default latency".to_owned(),
            },
        );
        let in_place: Vec<String> = self
            .phases
            .iter()
            .filter_map(|result| {
                let ms = result.change_in_place_ms?;
                Some(format!(
                    "{ms:.1} ms into the {} phase",
                    result.phase.label()
                ))
            })
            .collect();
        let in_place = if in_place.is_empty() {
            String::new()
        } else {
            format!(" (in place {})", in_place.join(", "))
        };
        let _ = writeln!(
            out,
            "- fault: {}{in_place}",
            describe_fault(&settings.fault, failing)
        );
        let children: Vec<String> = self
            .children
            .iter()
            .map(|child| format!("{} pid {} at {}", child.role, child.pid, child.address))
            .collect();
        let _ = writeln!(out, "- processes: {}\n", children.join("; "));
        out.push_str(&self.markdown_table);

        let failures: Vec<&PhaseResult> = self
            .phases
            .iter()
            .filter(|result| result.had_failures())
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(
                out,
                "\n**Phases with failed requests** (latency covers 2xx responses only):"
            );
            for result in failures {
                let _ = writeln!(
                    out,
                    "- {}: {} non-2xx, {} errors; first: {}",
                    result.phase.label(),
                    result.non_success,
                    result.errors,
                    result.first_failure.as_deref().unwrap_or("?"),
                );
            }
        }
        for result in self.phases.iter().filter(|result| result.reconnects > 0) {
            let _ = writeln!(
                out,
                "\n- {}: the gateway closed {} keep-alive connections, which were replaced",
                result.phase.label(),
                result.reconnects
            );
        }
        let _ = writeln!(
            out,
            "\n{}",
            render_timeline(
                &self.breaker_timeline,
                settings.phase_seconds,
                failing,
                settings.breaker_poll_ms
            )
        );
        if let Some(error) = &self.breaker_error {
            let _ = writeln!(out, "\nThe breaker could not always be read: {error}");
        }
        let _ = writeln!(
            out,
            "\nA request belongs to the phase it started in. Success is 2xx / finished \
             requests; RPS counts 2xx responses; latency is request sent to last body byte of \
             2xx responses; +p50 and +p99 are against the healthy phase. Retried counts 2xx \
             responses whose `x-switchyard-attempts` is above 1 (they failed over), with \
             their own latency. {failing} calls is the delta of its `GET /__mock/calls` over \
             the phase (what reached it; the fault or recovery takes effect the moment noted \
             above after the phase starts); {failing} attempts is the delta of the gateway's \
             count of attempts it admitted to {failing} (refused connections included), and its \
             breaker state, both from `GET /admin/providers` at each phase boundary. The two \
             counters are read together but not atomically: under load they can differ by up \
             to about one request per connection."
        );
        out
    }
}

fn fault_title(fault: &str) -> String {
    match fault {
        "500" => "answers 500".to_owned(),
        "reset" => "resets connections".to_owned(),
        "hang" => "hangs".to_owned(),
        "refuse" => "refuses connections".to_owned(),
        other => other.to_owned(),
    }
}

fn describe_fault(fault: &str, failing: &str) -> String {
    match fault {
        "500" => format!(
            "at the start of the failing phase {failing}'s default behaviour becomes \
             `{{\"error_status\": 500}}`; at the start of the recovered phase, `{{}}`"
        ),
        "reset" => format!(
            "at the start of the failing phase {failing}'s default behaviour becomes \
             `{{\"reset\": true}}` (the connection closes without an answer); at the start of \
             the recovered phase, `{{}}`"
        ),
        "hang" => format!(
            "at the start of the failing phase {failing}'s default behaviour becomes \
             `{{\"hang\": true}}` (no answer; the gateway's first-byte timeout ends the \
             attempt); at the start of the recovered phase, `{{}}`"
        ),
        "refuse" => format!(
            "at the start of the failing phase the {failing} process is killed (connections \
             are refused); at the start of the recovered phase it is started again on the same \
             port"
        ),
        other => other.to_owned(),
    }
}

/// The phase table, one row per phase. `failing` names the failing provider in the header.
pub fn render_chaos_table(phases: &[PhaseResult], failing: &str) -> String {
    let calls_header = format!("{failing} calls");
    let attempts_header = format!("{failing} attempts");
    let breaker_header = format!("{failing} breaker at end");
    let header = [
        "phase",
        "requests",
        "success",
        "RPS",
        "p50 ms",
        "p99 ms",
        "max ms",
        "+p50 ms",
        "+p99 ms",
        "retried",
        "retried p50 ms",
        "retried max ms",
        calls_header.as_str(),
        attempts_header.as_str(),
        breaker_header.as_str(),
        "non-2xx",
        "errors",
    ];
    let mut out = String::new();
    push_row(&mut out, header.iter().map(|cell| (*cell).to_owned()));
    push_row(
        &mut out,
        header
            .iter()
            .enumerate()
            .map(|(index, _)| match index {
                0 | 14 => "---",
                _ => "---:",
            })
            .map(str::to_owned),
    );
    for result in phases {
        let phase = if result.had_failures() {
            format!("{} ⚠", result.phase.label())
        } else {
            result.phase.label().to_owned()
        };
        let latency = result.latency;
        let retried = result.retried_latency;
        let ms = |value: f64| format!("{value:.3}");
        push_row(
            &mut out,
            [
                phase,
                result.requests.to_string(),
                result
                    .success_rate
                    .map_or_else(dash, |rate| format!("{:.2}%", rate * 100.0)),
                format!("{:.0}", result.requests_per_second),
                optional(latency.map(|latency| latency.p50_ms), ms),
                optional(latency.map(|latency| latency.p99_ms), ms),
                optional(latency.map(|latency| latency.max_ms), ms),
                optional(result.added_p50_ms, |ms| format!("{ms:+.3}")),
                optional(result.added_p99_ms, |ms| format!("{ms:+.3}")),
                result.retried.to_string(),
                optional(retried.map(|latency| latency.p50_ms), ms),
                optional(retried.map(|latency| latency.max_ms), ms),
                optional(result.failing_provider_calls, |calls| calls.to_string()),
                optional(result.failing_provider_attempts, |attempts| {
                    attempts.to_string()
                }),
                result
                    .breaker_at_end
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), BreakerSample::describe),
                result.non_success.to_string(),
                result.errors.to_string(),
            ]
            .into_iter(),
        );
    }
    out
}

/// The breaker's changes as one line, each placed in its phase.
pub fn render_timeline(
    timeline: &[BreakerChange],
    phase_seconds: f64,
    failing: &str,
    poll_ms: u64,
) -> String {
    if timeline.is_empty() {
        return format!("{failing}'s breaker: never read.");
    }
    let changes: Vec<String> = timeline
        .iter()
        .map(|change| {
            let when = match Phase::locate(change.at_seconds, phase_seconds) {
                Some((phase, into)) => format!("{} +{into:.2} s", phase.label()),
                None if change.at_seconds < 0.0 => "warm-up".to_owned(),
                None => format!("after the run (+{:.2} s)", change.at_seconds),
            };
            let opened = if change.opened > 0 {
                format!(", opened {}×", change.opened)
            } else {
                String::new()
            };
            format!("{when}: {}{opened}", change.state)
        })
        .collect();
    format!(
        "{failing}'s breaker over time (polled every {poll_ms} ms, changes only): {}",
        changes.join("; ")
    )
}

fn push_row(out: &mut String, cells: impl Iterator<Item = String>) {
    out.push('|');
    for cell in cells {
        out.push(' ');
        out.push_str(&cell.replace('|', "\\|"));
        out.push_str(" |");
    }
    out.push('\n');
}

fn dash() -> String {
    "-".to_owned()
}

fn optional<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map_or_else(dash, show)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn latency(p50: f64, p99: f64) -> LatencySummary {
        LatencySummary {
            p50_ms: p50,
            p90_ms: p50 * 1.5,
            p99_ms: p99,
            max_ms: p99 * 2.0,
            mean_ms: p50,
        }
    }

    fn counts(succeeded: u64, non_success: u64, errors: u64, p50: f64, p99: f64) -> PhaseCounts {
        PhaseCounts {
            succeeded,
            retried: non_success * 2,
            retried_latency: (non_success > 0).then(|| latency(p50 * 2.0, p99 * 2.0)),
            non_success,
            errors,
            reconnects: 0,
            measured_seconds: 5.0,
            latency: (succeeded > 0).then(|| latency(p50, p99)),
            first_failure: (non_success + errors > 0).then(|| "HTTP 502: upstream".to_owned()),
        }
    }

    fn breaker(state: &str, opened: u64) -> BreakerSample {
        BreakerSample {
            state: state.to_owned(),
            retry_in_ms: (state == "open").then_some(1500),
            opened,
            transitions: opened * 2,
            attempts: 100,
        }
    }

    fn figures(calls: u64, attempts: u64, breaker: BreakerSample) -> ProviderFigures {
        ProviderFigures {
            calls: Some(calls),
            attempts: Some(attempts),
            change_in_place_ms: (breaker.state != "closed" || breaker.opened > 0).then_some(0.8),
            breaker_at_end: Some(breaker),
        }
    }

    fn phases() -> Vec<PhaseResult> {
        let mut phases = vec![
            PhaseResult::new(
                Phase::Healthy,
                counts(10_000, 0, 0, 1.0, 3.0),
                figures(10_000, 10_001, breaker("closed", 0)),
            ),
            PhaseResult::new(
                Phase::Failing,
                counts(9_990, 6, 4, 1.25, 5.5),
                figures(7, 8, breaker("open", 1)),
            ),
            PhaseResult::new(
                Phase::Recovered,
                counts(10_500, 0, 0, 0.9, 2.5),
                figures(9_000, 9_000, breaker("closed", 1)),
            ),
        ];
        compare_with_healthy(&mut phases);
        phases
    }

    #[test]
    fn calls_are_counted_per_process_instance() {
        let reading = |instance, calls| Some(CallReading { instance, calls });
        assert_eq!(calls_during(reading(1, 100), reading(1, 250)), Some(150));
        // Killed at the phase start and still down at its end.
        assert_eq!(calls_during(None, None), Some(0));
        // Restarted at the phase start: a fresh counter.
        assert_eq!(calls_during(reading(2, 0), reading(2, 40)), Some(40));
        assert_eq!(calls_during(None, reading(2, 40)), Some(40));
        // Died during the phase, or replaced mid-phase: unknown, not a guess.
        assert_eq!(calls_during(reading(1, 100), None), None);
        assert_eq!(calls_during(reading(1, 100), reading(2, 5)), None);
        // A counter that went backwards (a reset) never gives a huge number.
        assert_eq!(calls_during(reading(1, 100), reading(1, 3)), Some(0));
    }

    #[test]
    fn calls_add_up_over_a_kill() {
        let reading = |instance, calls| Some(CallReading { instance, calls });
        // Killed shortly after the phase began, then down until its end.
        assert_eq!(
            calls_over(&[(reading(1, 500), reading(1, 512)), (None, None)]),
            Some(12)
        );
        assert_eq!(calls_over(&[(reading(2, 0), reading(2, 90))]), Some(90));
        assert_eq!(
            calls_over(&[(reading(1, 500), None), (None, reading(2, 9))]),
            None
        );
        assert_eq!(calls_over(&[]), Some(0));
    }

    #[test]
    fn gateway_attempts_are_a_delta_of_its_counter() {
        let mut start = breaker("closed", 0);
        start.attempts = 40;
        let mut end = breaker("open", 1);
        end.attempts = 57;
        assert_eq!(attempts_during(Some(&start), Some(&end)), Some(17));
        assert_eq!(attempts_during(None, Some(&end)), None);
        assert_eq!(attempts_during(Some(&start), None), None);
        assert_eq!(attempts_during(Some(&end), Some(&start)), Some(0));
    }

    #[test]
    fn phase_results_count_every_finished_request() {
        let result = &phases()[1];
        assert_eq!(result.requests, 10_000);
        assert!((result.success_rate.unwrap() - 0.999).abs() < 1e-12);
        assert!((result.requests_per_second - 1998.0).abs() < 1e-9);
        assert!(result.had_failures());
        let empty = PhaseResult::new(
            Phase::Failing,
            counts(0, 0, 0, 0.0, 0.0),
            ProviderFigures::default(),
        );
        assert_eq!(empty.success_rate, None);
        assert_eq!(empty.requests, 0);
    }

    #[test]
    fn added_latency_is_against_the_healthy_phase() {
        let phases = phases();
        assert_eq!(phases[0].added_p50_ms, None);
        assert!((phases[1].added_p50_ms.unwrap() - 0.25).abs() < 1e-9);
        assert!((phases[1].added_p99_ms.unwrap() - 2.5).abs() < 1e-9);
        assert!((phases[2].added_p50_ms.unwrap() + 0.1).abs() < 1e-9);

        // Without a healthy latency there is nothing to compare with.
        let mut orphans = vec![PhaseResult::new(
            Phase::Failing,
            counts(10, 0, 0, 1.0, 2.0),
            ProviderFigures::default(),
        )];
        compare_with_healthy(&mut orphans);
        assert_eq!(orphans[0].added_p50_ms, None);
    }

    #[test]
    fn the_table_has_one_row_per_phase() {
        let table = render_chaos_table(&phases(), "alpha");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 3);
        let columns = |line: &str| line.matches('|').count();
        assert!(lines.iter().all(|line| columns(line) == columns(lines[0])));
        assert_eq!(
            lines[0],
            "| phase | requests | success | RPS | p50 ms | p99 ms | max ms | +p50 ms | +p99 ms \
             | retried | retried p50 ms | retried max ms | alpha calls | alpha attempts \
             | alpha breaker at end | non-2xx | errors |"
        );
        assert_eq!(
            lines[2],
            "| healthy | 10000 | 100.00% | 2000 | 1.000 | 3.000 | 6.000 | - | - | 0 | - | - \
             | 10000 | 10001 | closed | 0 | 0 |"
        );
        assert_eq!(
            lines[3],
            "| failing ⚠ | 10000 | 99.90% | 1998 | 1.250 | 5.500 | 11.000 | +0.250 | +2.500 \
             | 12 | 2.500 | 22.000 | 7 | 8 | open (opened 1×) | 6 | 4 |"
        );
        assert!(lines[4].starts_with("| recovered | 10500 | 100.00% | 2100 | 0.900 |"));
        assert!(
            lines[4].contains("| -0.100 | -0.500 | 0 | - | - | 9000 | 9000 | closed (opened 1×) |")
        );
    }

    #[test]
    fn unknown_figures_show_as_placeholders() {
        let phases = vec![PhaseResult::new(
            Phase::Failing,
            counts(0, 0, 12, 0.0, 0.0),
            ProviderFigures::default(),
        )];
        let table = render_chaos_table(&phases, "alpha");
        assert_eq!(
            table.lines().nth(2).unwrap(),
            "| failing ⚠ | 12 | 0.00% | 0 | - | - | - | - | - | 0 | - | - | - | - | ? | 0 | 12 |"
        );
    }

    #[test]
    fn breaker_is_read_from_the_admin_answer() {
        let snapshot = json!({"providers": [
            {"name": "beta", "targets": [{"model": "m", "breaker": "closed"}]},
            {"name": "alpha", "targets": [
                {"model": "other", "breaker": "closed"},
                {"model": "m", "breaker": "open", "breaker_retry_in_ms": 1200,
                 "breaker_opened": 2, "breaker_transitions": 3, "requests": 77}
            ]}
        ]});
        let sample = BreakerSample::from_admin(&snapshot, "alpha", "m").unwrap();
        assert_eq!(
            sample,
            BreakerSample {
                state: "open".to_owned(),
                retry_in_ms: Some(1200),
                opened: 2,
                transitions: 3,
                attempts: 77,
            }
        );
        assert_eq!(sample.describe(), "open (opened 2×)");
        let beta = BreakerSample::from_admin(&snapshot, "beta", "m").unwrap();
        assert_eq!(beta.describe(), "closed");

        for (bad, provider, model) in [
            (json!({}), "alpha", "m"),
            (snapshot.clone(), "gamma", "m"),
            (snapshot.clone(), "alpha", "n"),
            (
                json!({"providers": [{"name": "alpha", "targets": [{"model": "m"}]}]}),
                "alpha",
                "m",
            ),
        ] {
            assert!(BreakerSample::from_admin(&bad, provider, model).is_err());
        }
    }

    #[test]
    fn the_timeline_keeps_changes_only() {
        let mut timeline = Vec::new();
        note_breaker(&mut timeline, -0.5, &breaker("closed", 0));
        note_breaker(&mut timeline, 0.1, &breaker("closed", 0));
        note_breaker(&mut timeline, 5.03, &breaker("open", 1));
        note_breaker(&mut timeline, 5.13, &breaker("open", 1));
        // Reopened between two polls: same state, more openings.
        note_breaker(&mut timeline, 7.2, &breaker("open", 2));
        note_breaker(&mut timeline, 10.4, &breaker("closed", 2));
        let states: Vec<(&str, u64)> = timeline
            .iter()
            .map(|change| (change.state.as_str(), change.opened))
            .collect();
        assert_eq!(
            states,
            [("closed", 0), ("open", 1), ("open", 2), ("closed", 2)]
        );
        let line = render_timeline(&timeline, 5.0, "alpha", 100);
        assert_eq!(
            line,
            "alpha's breaker over time (polled every 100 ms, changes only): warm-up: closed; \
             failing +0.03 s: open, opened 1×; failing +2.20 s: open, opened 2×; \
             recovered +0.40 s: closed, opened 2×"
        );
        assert_eq!(
            render_timeline(&[], 5.0, "alpha", 100),
            "alpha's breaker: never read."
        );
    }

    #[test]
    fn instants_are_placed_in_their_phase() {
        assert_eq!(Phase::locate(-0.1, 5.0), None);
        assert_eq!(Phase::locate(0.0, 5.0), Some((Phase::Healthy, 0.0)));
        assert_eq!(Phase::locate(5.0, 5.0), Some((Phase::Failing, 0.0)));
        let (phase, into) = Phase::locate(14.5, 5.0).unwrap();
        assert_eq!(phase, Phase::Recovered);
        assert!((into - 4.5).abs() < 1e-9);
        assert_eq!(Phase::locate(15.0, 5.0), None);
        assert_eq!(Phase::locate(1.0, 0.0), None);
        assert_eq!(Phase::locate(f64::NAN, 5.0), None);
    }

    #[test]
    fn the_report_serialises_with_its_table() {
        let report = ChaosReport::new(
            MachineFacts {
                cpus: 2,
                load_average: None,
                kernel: None,
            },
            ChaosSettings {
                fault: "reset".to_owned(),
                strategy: "priority".to_owned(),
                providers: vec!["alpha".to_owned(), "beta".to_owned(), "gamma".to_owned()],
                concurrency: 16,
                warmup_seconds: 1.0,
                phase_seconds: 5.0,
                stream: false,
                load_threads: 1,
                breaker_consecutive_failures: 5,
                breaker_cooldown_ms: 2000,
                first_byte_timeout_ms: 500,
                breaker_poll_ms: 100,
                mock_latency_ms: None,
            },
            vec![ChildFacts {
                role: "gateway".to_owned(),
                pid: 9,
                address: "127.0.0.1:1".to_owned(),
            }],
            phases(),
            vec![],
            Some("GET /admin/providers answered 401".to_owned()),
        );
        let markdown = report.to_markdown();
        assert!(markdown.starts_with("## Switchyard chaos run: alpha resets connections"));
        assert!(markdown.contains(&report.markdown_table));
        assert!(markdown.contains("- failing: 6 non-2xx, 4 errors; first: HTTP 502"));
        assert!(markdown.contains("`priority` over alpha, beta, gamma"));
        assert!(markdown.contains("answered 401"));
        assert!(
            markdown.contains(
                "(in place 0.8 ms into the failing phase, 0.8 ms into the recovered phase)"
            )
        );
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["phases"][1]["phase"], "failing");
        assert_eq!(value["phases"][1]["failing_provider_calls"], 7);
        assert_eq!(value["phases"][1]["breaker_at_end"]["state"], "open");
        assert_eq!(value["markdown_table"], report.markdown_table);
        assert_eq!(value["settings"]["fault"], "reset");
    }
}
