//! The figures of a run and how they are shown: a markdown table, the target checks, JSON.
//!
//! Everything here is pure: the harness fills a [`Report`], this module turns it into text.
//! A missed target is a verdict in the report, never an error.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::procfs::MachineFacts;

/// Added p50 latency the gateway may cost at concurrency 1, in ms.
pub const ADDED_P50_GOAL_MS: f64 = 0.1;
/// Concurrency at which the added p50 is judged.
pub const ADDED_P50_CONCURRENCY: usize = 1;
/// Share of the direct RPS the gateway must keep, in percent.
pub const RPS_SHARE_GOAL_PERCENT: f64 = 60.0;
/// Concurrency at which the RPS share is judged.
pub const RPS_SHARE_CONCURRENCY: usize = 32;
/// Largest idle RSS of the gateway, in bytes (15 MB, decimal).
pub const IDLE_RSS_GOAL_BYTES: u64 = 15_000_000;

/// How a scenario reaches the mock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// Straight to the mock provider: the baseline.
    Direct,
    /// Through the gateway, which forwards to the same mock.
    ViaGateway,
}

impl Route {
    /// The label in the table.
    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::ViaGateway => "via-gateway",
        }
    }
}

/// Latency percentiles of the 2xx responses of one scenario, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    /// Summarises a µs histogram; `None` when it is empty.
    pub fn from_micros(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        })
    }
}

/// The gateway row measured against the direct row at the same concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// Gateway p50 minus direct p50, ms (negative means noise won).
    pub added_p50_ms: f64,
    /// Gateway p99 minus direct p99, ms.
    pub added_p99_ms: f64,
    /// Gateway RPS as a percentage of direct RPS.
    pub rps_percent_of_direct: f64,
}

impl Comparison {
    /// Compares two rows; `None` when either has no successful responses.
    pub fn between(direct: &ScenarioResult, gateway: &ScenarioResult) -> Option<Self> {
        let (direct_latency, gateway_latency) = (direct.latency?, gateway.latency?);
        if direct.requests_per_second <= 0.0 {
            return None;
        }
        Some(Self {
            added_p50_ms: gateway_latency.p50_ms - direct_latency.p50_ms,
            added_p99_ms: gateway_latency.p99_ms - direct_latency.p99_ms,
            rps_percent_of_direct: gateway.requests_per_second / direct.requests_per_second * 100.0,
        })
    }
}

/// Everything measured in one scenario (one route at one concurrency).
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub route: Route,
    pub concurrency: usize,
    /// Complete 2xx responses in the measured window.
    pub succeeded: u64,
    /// Responses with another status.
    pub non_success: u64,
    /// Failed connects or requests, timeouts, truncated streams.
    pub errors: u64,
    /// Connections replaced after the server closed them.
    pub reconnects: u64,
    /// Length of the measured window, s.
    pub measured_seconds: f64,
    /// Complete 2xx responses per second.
    pub requests_per_second: f64,
    /// `None` when nothing succeeded.
    pub latency: Option<LatencySummary>,
    /// Median time to the first body byte, ms (reported for streaming runs).
    pub first_byte_p50_ms: Option<f64>,
    /// CPU of the gateway over the measured window, % of one core (gateway rows only).
    pub gateway_cpu_percent: Option<f64>,
    /// CPU of the mock over the measured window, % of one core.
    pub mock_cpu_percent: Option<f64>,
    /// CPU of the harness itself (mostly the load generator), % of one core.
    pub harness_cpu_percent: Option<f64>,
    /// Highest gateway VmRSS sampled every 100 ms during the scenario (gateway rows only).
    pub gateway_peak_rss_bytes: Option<u64>,
    /// Highest mock VmRSS sampled during the scenario.
    pub mock_peak_rss_bytes: Option<u64>,
    /// The first failure, when there was any.
    pub first_failure: Option<String>,
    /// Gateway rows: the comparison with the direct row at the same concurrency.
    pub versus_direct: Option<Comparison>,
}

impl ScenarioResult {
    /// Whether any request of the scenario failed or got a non-2xx answer.
    pub fn had_failures(&self) -> bool {
        self.errors > 0 || self.non_success > 0
    }
}

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub stream: bool,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    pub load_threads: u16,
    pub concurrency: Vec<usize>,
    pub direct_only: bool,
    pub mock_latency_ms: Option<u64>,
    /// The body file, or `None` for the built-in body.
    pub body_file: Option<String>,
    /// The response cache mode (`--cache`), when it was on.
    pub cache: Option<super::options::CacheMode>,
}

/// A child process as the report describes it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFacts {
    pub pid: u32,
    pub address: String,
    /// VmRSS after start-up, before any load.
    pub idle_rss_bytes: Option<u64>,
    /// VmHWM (peak resident set over its whole life) after the last scenario.
    pub peak_rss_at_end_bytes: Option<u64>,
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Miss,
    NotMeasured,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One performance target and what the run says about it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub goal: String,
    pub measured: Option<String>,
    pub verdict: Verdict,
    /// Why it was not measured, or what makes the figure doubtful.
    pub note: Option<String>,
}

/// All the figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: MachineFacts,
    pub settings: Settings,
    pub mock: ProcessFacts,
    pub gateway: Option<ProcessFacts>,
    pub scenarios: Vec<ScenarioResult>,
    pub targets: Vec<TargetCheck>,
    /// With `--otlp`: the OTLP exports the mock received from the gateway by the end.
    pub trace_exports: Option<u64>,
}

impl Report {
    /// The whole report as markdown: facts, the table, failures, the targets.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## Switchyard load run\n");
        let _ = writeln!(out, "- machine: {}", describe_machine(&self.machine));
        let _ = writeln!(out, "- load: {}", describe_settings(&self.settings));
        let latency = match self.settings.mock_latency_ms {
            Some(ms) => format!("{ms} ms simulated upstream latency"),
            None => "the mock's default latency".to_owned(),
        };
        let _ = writeln!(
            out,
            "- mock: pid {} at {}, {latency}",
            self.mock.pid, self.mock.address
        );
        match &self.gateway {
            Some(gateway) => {
                let _ = writeln!(
                    out,
                    "- gateway: pid {} at {}; RSS idle {}, VmHWM at end {}",
                    gateway.pid,
                    gateway.address,
                    optional_megabytes(gateway.idle_rss_bytes),
                    optional_megabytes(gateway.peak_rss_at_end_bytes),
                );
            }
            None => {
                let _ = writeln!(out, "- gateway: not started (--direct-only)");
            }
        }
        match self.settings.cache {
            Some(super::options::CacheMode::Hit) => {
                let _ = writeln!(
                    out,
                    "- cache: on, one request repeated (hits after the first)"
                );
            }
            Some(super::options::CacheMode::Miss) => {
                let _ = writeln!(
                    out,
                    "- cache: on, every prompt unique (every request a stored miss)"
                );
            }
            None => {}
        }
        if let Some(exports) = self.trace_exports {
            let _ = writeln!(
                out,
                "- tracing: the gateway exported its spans to the mock over OTLP/HTTP \
                 ({exports} exports received)"
            );
        }
        out.push('\n');
        out.push_str(&render_table(&self.scenarios, self.settings.stream));
        let failures: Vec<_> = self
            .scenarios
            .iter()
            .filter(|scenario| scenario.had_failures())
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(
                out,
                "\n**Runs with failures** (figures cover 2xx responses only):"
            );
            for scenario in failures {
                let _ = writeln!(
                    out,
                    "- {} c={}: {} non-2xx, {} errors; first: {}",
                    scenario.route.label(),
                    scenario.concurrency,
                    scenario.non_success,
                    scenario.errors,
                    scenario.first_failure.as_deref().unwrap_or("?"),
                );
            }
        }
        for scenario in self
            .scenarios
            .iter()
            .filter(|scenario| scenario.reconnects > 0)
        {
            let _ = writeln!(
                out,
                "\n- {} c={}: the server closed {} keep-alive connections, which were \
                 replaced (reconnect time is outside the latency figures)",
                scenario.route.label(),
                scenario.concurrency,
                scenario.reconnects,
            );
        }
        let _ = writeln!(
            out,
            "\nLatency is request sent to last body byte of 2xx responses; RPS counts complete \
             2xx responses; CPU is % of one core over the measured window; peak RSS is the \
             highest VmRSS sampled every 100 ms.\n"
        );
        out.push_str(&render_targets(&self.targets));
        out
    }
}

pub(super) fn describe_machine(machine: &MachineFacts) -> String {
    let load = match machine.load_average {
        Some([one, five, fifteen]) => {
            format!("load average {one:.2} {five:.2} {fifteen:.2} at start")
        }
        None => "load average unknown".to_owned(),
    };
    let kernel = machine
        .kernel
        .as_deref()
        .map(|kernel| format!(", Linux {kernel}"))
        .unwrap_or_default();
    format!("nproc {}, {load}{kernel}", machine.cpus)
}

fn describe_settings(settings: &Settings) -> String {
    format!(
        "{}, {} s warm-up + {} s measured per scenario, closed loop over keep-alive HTTP/1.1, \
         generator on {} thread{}, body {}",
        if settings.stream {
            "streaming (SSE)"
        } else {
            "non-streaming"
        },
        settings.warmup_seconds,
        settings.duration_seconds,
        settings.load_threads,
        if settings.load_threads == 1 { "" } else { "s" },
        settings.body_file.as_deref().unwrap_or("built-in"),
    )
}

/// The scenario table, one row per scenario in run order.
pub fn render_table(scenarios: &[ScenarioResult], stream: bool) -> String {
    let mut header = vec![
        "route", "conc", "RPS", "p50 ms", "p90 ms", "p99 ms", "max ms",
    ];
    if stream {
        header.push("TTFB p50 ms");
    }
    header.extend([
        "+p50 ms",
        "+p99 ms",
        "RPS vs direct",
        "gateway CPU",
        "mock CPU",
        "load CPU",
        "gateway peak RSS",
        "non-2xx",
        "errors",
    ]);
    let mut out = String::new();
    push_row(&mut out, header.iter().map(|cell| (*cell).to_owned()));
    push_row(
        &mut out,
        header
            .iter()
            .enumerate()
            .map(|(index, _)| if index == 0 { "---" } else { "---:" }.to_owned()),
    );
    for scenario in scenarios {
        let route = if scenario.had_failures() {
            format!("{} ⚠", scenario.route.label())
        } else {
            scenario.route.label().to_owned()
        };
        let latency = scenario.latency;
        let mut cells = vec![
            route,
            scenario.concurrency.to_string(),
            format!("{:.0}", scenario.requests_per_second),
            optional_ms(latency.map(|l| l.p50_ms)),
            optional_ms(latency.map(|l| l.p90_ms)),
            optional_ms(latency.map(|l| l.p99_ms)),
            optional_ms(latency.map(|l| l.max_ms)),
        ];
        if stream {
            cells.push(optional_ms(scenario.first_byte_p50_ms));
        }
        let comparison = scenario.versus_direct;
        cells.extend([
            optional_signed_ms(comparison.map(|c| c.added_p50_ms)),
            optional_signed_ms(comparison.map(|c| c.added_p99_ms)),
            comparison.map_or_else(dash, |c| format!("{:.1}%", c.rps_percent_of_direct)),
            optional_percent(scenario.gateway_cpu_percent),
            optional_percent(scenario.mock_cpu_percent),
            optional_percent(scenario.harness_cpu_percent),
            optional_megabytes(scenario.gateway_peak_rss_bytes),
            scenario.non_success.to_string(),
            scenario.errors.to_string(),
        ]);
        push_row(&mut out, cells.into_iter());
    }
    out
}

/// The targets as a small table.
pub fn render_targets(targets: &[TargetCheck]) -> String {
    let mut out = String::from("### Targets\n\n");
    push_row(
        &mut out,
        ["target", "goal", "measured", "verdict"]
            .into_iter()
            .map(str::to_owned),
    );
    push_row(
        &mut out,
        ["---", "---", "---:", "---"].into_iter().map(str::to_owned),
    );
    for target in targets {
        let verdict = match &target.note {
            Some(note) => format!("{} ({note})", target.verdict.label()),
            None => target.verdict.label().to_owned(),
        };
        push_row(
            &mut out,
            [
                target.target.clone(),
                target.goal.clone(),
                target.measured.clone().unwrap_or_else(dash),
                verdict,
            ]
            .into_iter(),
        );
    }
    out
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

fn optional_ms(ms: Option<f64>) -> String {
    ms.map_or_else(dash, |ms| format!("{ms:.3}"))
}

fn optional_signed_ms(ms: Option<f64>) -> String {
    ms.map_or_else(dash, |ms| format!("{ms:+.3}"))
}

fn optional_percent(percent: Option<f64>) -> String {
    percent.map_or_else(dash, |percent| format!("{percent:.0}%"))
}

/// Bytes as decimal megabytes, the unit the RSS target is stated in.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

fn optional_megabytes(bytes: Option<u64>) -> String {
    bytes.map_or_else(dash, megabytes)
}

/// Checks the three gateway targets against a run's figures.
pub fn evaluate_targets(
    scenarios: &[ScenarioResult],
    gateway: Option<&ProcessFacts>,
) -> Vec<TargetCheck> {
    let gateway_row = |concurrency: usize| {
        scenarios.iter().find(|scenario| {
            scenario.route == Route::ViaGateway && scenario.concurrency == concurrency
        })
    };
    let direct_row = |concurrency: usize| {
        scenarios
            .iter()
            .find(|scenario| scenario.route == Route::Direct && scenario.concurrency == concurrency)
    };
    let compared = |concurrency: usize,
                    target: String,
                    goal: String,
                    figure: &dyn Fn(&Comparison) -> (String, bool)| {
        let Some(row) = gateway_row(concurrency) else {
            let note = if gateway.is_none() {
                "no gateway in this run".to_owned()
            } else {
                format!("concurrency {concurrency} was not run")
            };
            return TargetCheck {
                target,
                goal,
                measured: None,
                verdict: Verdict::NotMeasured,
                note: Some(note),
            };
        };
        let Some(comparison) = row.versus_direct else {
            return TargetCheck {
                target,
                goal,
                measured: None,
                verdict: Verdict::Miss,
                note: Some("no successful responses to compare".to_owned()),
            };
        };
        let (measured, met) = figure(&comparison);
        let clean = !row.had_failures()
            && !direct_row(concurrency).is_some_and(ScenarioResult::had_failures);
        TargetCheck {
            target,
            goal,
            measured: Some(measured),
            verdict: if met && clean {
                Verdict::Pass
            } else {
                Verdict::Miss
            },
            note: (!clean).then(|| "the scenarios had failures".to_owned()),
        }
    };

    let added_p50 = compared(
        ADDED_P50_CONCURRENCY,
        format!("added p50 at concurrency {ADDED_P50_CONCURRENCY}"),
        format!("< {ADDED_P50_GOAL_MS:.3} ms"),
        &|comparison| {
            (
                format!("{:+.3} ms", comparison.added_p50_ms),
                comparison.added_p50_ms < ADDED_P50_GOAL_MS,
            )
        },
    );
    let rps_share = compared(
        RPS_SHARE_CONCURRENCY,
        format!("gateway RPS at concurrency {RPS_SHARE_CONCURRENCY}"),
        format!(">= {RPS_SHARE_GOAL_PERCENT:.0}% of direct"),
        &|comparison| {
            (
                format!("{:.1}%", comparison.rps_percent_of_direct),
                comparison.rps_percent_of_direct >= RPS_SHARE_GOAL_PERCENT,
            )
        },
    );
    let idle_goal = format!("< {}", megabytes(IDLE_RSS_GOAL_BYTES));
    let idle_rss = match gateway.map(|gateway| gateway.idle_rss_bytes) {
        None => TargetCheck {
            target: "gateway idle RSS".to_owned(),
            goal: idle_goal,
            measured: None,
            verdict: Verdict::NotMeasured,
            note: Some("no gateway in this run".to_owned()),
        },
        Some(None) => TargetCheck {
            target: "gateway idle RSS".to_owned(),
            goal: idle_goal,
            measured: None,
            verdict: Verdict::NotMeasured,
            note: Some("could not read /proc".to_owned()),
        },
        Some(Some(bytes)) => TargetCheck {
            target: "gateway idle RSS".to_owned(),
            goal: idle_goal,
            measured: Some(megabytes(bytes)),
            verdict: if bytes < IDLE_RSS_GOAL_BYTES {
                Verdict::Pass
            } else {
                Verdict::Miss
            },
            note: None,
        },
    };
    vec![added_p50, rps_share, idle_rss]
}

/// Fills in each gateway row's comparison with the direct row at the same concurrency.
pub fn compare_with_direct(scenarios: &mut [ScenarioResult]) {
    let directs: Vec<ScenarioResult> = scenarios
        .iter()
        .filter(|scenario| scenario.route == Route::Direct)
        .cloned()
        .collect();
    for scenario in scenarios
        .iter_mut()
        .filter(|scenario| scenario.route == Route::ViaGateway)
    {
        scenario.versus_direct = directs
            .iter()
            .find(|direct| direct.concurrency == scenario.concurrency)
            .and_then(|direct| Comparison::between(direct, scenario));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(route: Route, concurrency: usize, rps: f64, p50: f64, p99: f64) -> ScenarioResult {
        ScenarioResult {
            route,
            concurrency,
            succeeded: (rps * 5.0) as u64,
            non_success: 0,
            errors: 0,
            reconnects: 0,
            measured_seconds: 5.0,
            requests_per_second: rps,
            latency: Some(LatencySummary {
                p50_ms: p50,
                p90_ms: p50 * 1.5,
                p99_ms: p99,
                max_ms: p99 * 2.0,
                mean_ms: p50,
            }),
            first_byte_p50_ms: None,
            gateway_cpu_percent: (route == Route::ViaGateway).then_some(45.0),
            mock_cpu_percent: Some(60.0),
            harness_cpu_percent: Some(30.0),
            gateway_peak_rss_bytes: (route == Route::ViaGateway).then_some(9_400_000),
            mock_peak_rss_bytes: Some(4_000_000),
            first_failure: None,
            versus_direct: None,
        }
    }

    fn gateway(idle: u64) -> ProcessFacts {
        ProcessFacts {
            pid: 7,
            address: "127.0.0.1:9".to_owned(),
            idle_rss_bytes: Some(idle),
            peak_rss_at_end_bytes: Some(idle * 2),
        }
    }

    fn run() -> Vec<ScenarioResult> {
        let mut scenarios = vec![
            row(Route::Direct, 1, 10_000.0, 0.090, 0.200),
            row(Route::ViaGateway, 1, 7_000.0, 0.150, 0.350),
            row(Route::Direct, 32, 40_000.0, 0.700, 2.0),
            row(Route::ViaGateway, 32, 20_000.0, 1.500, 4.0),
        ];
        compare_with_direct(&mut scenarios);
        scenarios
    }

    #[test]
    fn gateway_rows_are_compared_with_direct_at_the_same_concurrency() {
        let scenarios = run();
        assert_eq!(scenarios[0].versus_direct, None);
        let at_one = scenarios[1].versus_direct.unwrap();
        assert!((at_one.added_p50_ms - 0.060).abs() < 1e-9);
        assert!((at_one.added_p99_ms - 0.150).abs() < 1e-9);
        assert!((at_one.rps_percent_of_direct - 70.0).abs() < 1e-9);
        let at_32 = scenarios[3].versus_direct.unwrap();
        assert!((at_32.rps_percent_of_direct - 50.0).abs() < 1e-9);
    }

    #[test]
    fn the_table_has_one_aligned_row_per_scenario() {
        let table = render_table(&run(), false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 4);
        let columns = |line: &str| line.matches('|').count();
        assert!(lines.iter().all(|line| columns(line) == columns(lines[0])));
        assert!(!lines[0].contains("TTFB"));
        assert_eq!(
            lines[3],
            "| via-gateway | 1 | 7000 | 0.150 | 0.225 | 0.350 | 0.700 | +0.060 | +0.150 \
             | 70.0% | 45% | 60% | 30% | 9.4 MB | 0 | 0 |"
        );
        assert!(lines[2].starts_with("| direct | 1 | 10000 | 0.090 |"));
        assert!(lines[2].contains("| - | - | - | - | 60% | 30% | - | 0 | 0 |"));
    }

    #[test]
    fn streaming_tables_add_time_to_first_byte() {
        let mut scenarios = run();
        scenarios[0].first_byte_p50_ms = Some(0.0416);
        let table = render_table(&scenarios, true);
        assert!(
            table
                .lines()
                .next()
                .unwrap()
                .contains("| max ms | TTFB p50 ms | +p50 ms |")
        );
        assert!(
            table
                .lines()
                .nth(2)
                .unwrap()
                .contains("| 0.200 | 0.400 | 0.042 | - |")
        );
    }

    #[test]
    fn failures_are_flagged_in_the_table_and_fail_the_target() {
        let mut scenarios = run();
        scenarios[1].errors = 3;
        scenarios[1].first_failure = Some("request: connection reset".to_owned());
        let table = render_table(&scenarios, false);
        assert!(table.contains("| via-gateway ⚠ | 1 |"));
        assert!(table.lines().nth(3).unwrap().ends_with("| 0 | 3 |"));
        let targets = evaluate_targets(&scenarios, Some(&gateway(6_000_000)));
        assert_eq!(targets[0].verdict, Verdict::Miss);
        assert!(targets[0].note.as_deref().unwrap().contains("failures"));
    }

    #[test]
    fn targets_pass_and_miss_on_their_thresholds() {
        let targets = evaluate_targets(&run(), Some(&gateway(6_000_000)));
        let verdicts: Vec<Verdict> = targets.iter().map(|target| target.verdict).collect();
        assert_eq!(verdicts, [Verdict::Pass, Verdict::Miss, Verdict::Pass]);
        assert_eq!(targets[0].measured.as_deref(), Some("+0.060 ms"));
        assert_eq!(targets[1].measured.as_deref(), Some("50.0%"));
        assert_eq!(targets[2].measured.as_deref(), Some("6.0 MB"));

        let heavy = evaluate_targets(&run(), Some(&gateway(15_000_000)));
        assert_eq!(heavy[2].verdict, Verdict::Miss);
    }

    #[test]
    fn direct_only_runs_measure_no_target() {
        let scenarios: Vec<_> = run()
            .into_iter()
            .filter(|scenario| scenario.route == Route::Direct)
            .collect();
        let targets = evaluate_targets(&scenarios, None);
        assert!(
            targets
                .iter()
                .all(|target| target.verdict == Verdict::NotMeasured)
        );
        let rendered = render_targets(&targets);
        assert!(rendered.contains("| not measured (no gateway in this run) |"));
    }

    #[test]
    fn a_missing_concurrency_is_not_measured() {
        let scenarios: Vec<_> = run().into_iter().take(2).collect();
        let targets = evaluate_targets(&scenarios, Some(&gateway(1)));
        assert_eq!(targets[1].verdict, Verdict::NotMeasured);
        assert!(targets[1].note.as_deref().unwrap().contains("32"));
    }

    #[test]
    fn the_markdown_report_names_failures_and_reconnects() {
        let mut scenarios = run();
        scenarios[1].non_success = 2;
        scenarios[1].first_failure = Some("HTTP 502 Bad Gateway: upstream".to_owned());
        scenarios[3].reconnects = 5;
        let report = Report {
            machine: MachineFacts {
                cpus: 2,
                load_average: Some([0.5, 0.25, 0.125]),
                kernel: None,
            },
            settings: Settings {
                stream: false,
                warmup_seconds: 1.0,
                duration_seconds: 5.0,
                load_threads: 1,
                concurrency: vec![1, 32],
                direct_only: false,
                mock_latency_ms: None,
                body_file: None,
                cache: None,
            },
            mock: gateway(4_000_000),
            gateway: Some(gateway(6_000_000)),
            targets: evaluate_targets(&scenarios, Some(&gateway(6_000_000))),
            scenarios,
            trace_exports: Some(3),
        };
        let markdown = report.to_markdown();
        assert!(markdown.contains("- machine: nproc 2, load average 0.50 0.25 0.12 at start"));
        assert!(markdown.contains("(3 exports received)"));
        assert!(markdown.contains("- via-gateway c=1: 2 non-2xx, 0 errors; first: HTTP 502"));
        assert!(markdown.contains("- via-gateway c=32: the server closed 5 keep-alive"));
        assert!(markdown.contains("RSS idle 6.0 MB, VmHWM at end 12.0 MB"));
        assert!(markdown.contains("| gateway idle RSS | < 15.0 MB | 6.0 MB | PASS |"));
    }

    #[test]
    fn latency_summary_reads_microsecond_histograms() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        assert_eq!(LatencySummary::from_micros(&histogram), None);
        for micros in 1..=1000 {
            histogram.record(micros).unwrap();
        }
        let summary = LatencySummary::from_micros(&histogram).unwrap();
        assert!((summary.p50_ms - 0.500).abs() < 0.002);
        assert!((summary.p99_ms - 0.990).abs() < 0.002);
        assert!((summary.max_ms - 1.000).abs() < 0.002);
    }
}
