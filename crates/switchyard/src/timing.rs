//! Per-stage durations of one request, reported in `Server-Timing`.
//!
//! Stages are recorded as they finish; the header lists them in that order plus `total`.
//! Durations are printed in milliseconds with microsecond precision. Each stage also has a
//! `tracing` span ([`Stage::span`]) for local subscribers, and, when trace export is on, an
//! exported span made from the recorded lap ([`Timings::record`]).

use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::telemetry::RequestTrace;

/// A stage of the request path, as named in `Server-Timing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Client authentication.
    Auth,
    /// Reading and parsing the request body.
    Parse,
    /// Resolving the model to targets.
    Route,
    /// Rate limits and load shedding (a queued request's wait included).
    RateLimit,
    /// Response cache lookup (a wait for an identical request's answer included).
    Cache,
    /// Provider calls: from the first request sent to the answer's headers (or, for a
    /// non-streamed answer, its whole body), over all attempts.
    Upstream,
    /// Translating the provider's answer.
    Translate,
}

impl Stage {
    /// The `Server-Timing` metric name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Auth => "auth",
            Stage::Parse => "parse",
            Stage::Route => "route",
            Stage::RateLimit => "ratelimit",
            Stage::Cache => "cache",
            Stage::Upstream => "upstream",
            Stage::Translate => "translate",
        }
    }

    /// A `tracing` span for this stage, named like its `Server-Timing` metric, a child of
    /// `parent` (the request's span, or the provider call's for `translate`). DEBUG level:
    /// disabled (and nearly free) under the default log filter; see [`crate::telemetry`].
    pub fn span(self, parent: &tracing::Span) -> tracing::Span {
        // One callsite per stage: a span's name must be a literal.
        match self {
            Stage::Auth => tracing::debug_span!(parent: parent, "auth"),
            Stage::Parse => tracing::debug_span!(parent: parent, "parse"),
            Stage::Route => tracing::debug_span!(parent: parent, "route"),
            Stage::RateLimit => tracing::debug_span!(parent: parent, "ratelimit"),
            Stage::Cache => tracing::debug_span!(parent: parent, "cache"),
            Stage::Upstream => tracing::debug_span!(parent: parent, "upstream"),
            Stage::Translate => tracing::debug_span!(parent: parent, "translate"),
        }
    }
}

/// The response header the stage durations go in.
pub const SERVER_TIMING: &str = "server-timing";

/// The stage durations of one request.
#[derive(Debug, Clone)]
pub struct Timings {
    /// When the gateway started on the request.
    pub started: Instant,
    stages: Vec<(Stage, Duration)>,
    /// Where each stage's span is exported, when trace export is on.
    trace: RequestTrace,
}

impl Timings {
    /// Starts timing a request now.
    pub fn start() -> Self {
        Timings {
            started: Instant::now(),
            stages: Vec::with_capacity(6),
            trace: RequestTrace::default(),
        }
    }

    /// Exports each stage from now on as a span of `trace`.
    pub fn export_to(&mut self, trace: RequestTrace) {
        self.trace = trace;
    }

    /// The request's exported trace (provider calls are its spans too).
    pub fn trace(&self) -> &RequestTrace {
        &self.trace
    }

    /// Adds `duration`, which ends now, to `stage` (a stage can run several times, e.g. per
    /// attempt), and exports its span.
    pub fn record(&mut self, stage: Stage, duration: Duration) {
        self.trace.stage(stage, || {
            let ended = Instant::now();
            (ended.checked_sub(duration).unwrap_or(ended), ended)
        });
        self.add(stage, duration);
    }

    /// Adds `duration` to `stage`, and exports its span as running from `started` to `ended`
    /// (for a stage recorded after it ended, or whose `Server-Timing` figure leaves out a
    /// part that its span, as a parent, includes).
    pub fn record_span(
        &mut self,
        stage: Stage,
        duration: Duration,
        started: Instant,
        ended: Instant,
    ) {
        self.trace.stage(stage, || (started, ended));
        self.add(stage, duration);
    }

    fn add(&mut self, stage: Stage, duration: Duration) {
        match self.stages.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, total)) => *total += duration,
            None => self.stages.push((stage, duration)),
        }
    }

    /// Records the time since `since` for `stage`, and returns now.
    pub fn lap(&mut self, stage: Stage, since: Instant) -> Instant {
        let now = Instant::now();
        self.record_span(stage, now.saturating_duration_since(since), since, now);
        now
    }

    /// The recorded stages in order, in microseconds (for the request event).
    pub fn stages_micros(&self) -> Vec<(&'static str, u64)> {
        self.stages
            .iter()
            .map(|(stage, duration)| {
                (
                    stage.name(),
                    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    /// The recorded duration of `stage`.
    pub fn get(&self, stage: Stage) -> Option<Duration> {
        self.stages
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, d)| *d)
    }

    /// The `Server-Timing` header value, with `total` up to now.
    pub fn server_timing(&self) -> String {
        let mut header = String::with_capacity(96);
        for (stage, duration) in &self.stages {
            push_metric(&mut header, stage.name(), *duration);
        }
        push_metric(&mut header, "total", self.started.elapsed());
        header
    }
}

/// Appends one `Server-Timing` metric, `name;dur=<milliseconds>`, to `header`.
pub(crate) fn push_metric(header: &mut String, name: &str, duration: Duration) {
    if !header.is_empty() {
        header.push_str(", ");
    }
    let micros = duration.as_micros();
    // Writing to a String cannot fail.
    let _ = write!(header, "{name};dur={}.{:03}", micros / 1000, micros % 1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lists_stages_in_order_with_microseconds() {
        let mut timings = Timings::start();
        timings.record(Stage::Auth, Duration::from_micros(12));
        timings.record(Stage::Upstream, Duration::from_micros(1_500));
        timings.record(Stage::Upstream, Duration::from_micros(250));
        let header = timings.server_timing();
        assert!(
            header.starts_with("auth;dur=0.012, upstream;dur=1.750, total;dur="),
            "{header}"
        );
        assert_eq!(
            timings.get(Stage::Upstream),
            Some(Duration::from_micros(1_750))
        );
    }
}
