//! Alerting's pure logic: what a rule measures, and the state machine that turns the values
//! it reads every tick into notifications.
//!
//! A rule (`[[alerts.rules]]`, validated in [`crate::config::alerts`]) watches one metric
//! over one scope. "Each member" rules (a scope without a `member`) keep one [`Instance`] per
//! member seen (per provider, per route...), each with its own state:
//!
//! ```text
//!            breach                  breach held for `for`        clear
//! inactive ─────────► pending ─────────────────────────► firing ─────────► inactive
//!     ▲                  │ clear                            │              (resolved:
//!     └──────────────────┘                                  │ no data for   notified once)
//!                                                           └ NO_DATA_RESOLVE_MS → resolved
//! ```
//!
//! Only two transitions are notified: *fired* and *resolved*, so an ongoing outage sends one
//! alert and one resolution whatever the tick rate (deduplication). After a resolution, the
//! same rule and member cannot fire again for `cooldown`: a breach meanwhile waits in
//! `pending` and fires when the cooldown ends if it still holds, so a flapping value sends at
//! most one alert per cooldown.
//!
//! Time is passed in (unix milliseconds), so the tests drive it by hand. The native gateway
//! reads the values (`switchyard::alerts`) and delivers the notifications.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::config::alerts::AlertRule;

/// A firing alert whose metric has had no data for this long is resolved ("no data"), so an
/// alert on a member that went away (a key no longer used) does not fire forever.
pub const NO_DATA_RESOLVE_MS: u64 = 3_600_000;

/// What a rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// Failed requests / requests over the window (0 to 1).
    ErrorRate,
    /// 95th percentile of the whole-request latency over the window, milliseconds.
    LatencyP95,
    /// 95th percentile of the time to first token of streams over the window, milliseconds.
    TtftP95,
    /// Spend over the window, scaled to USD per hour.
    CostPerHour,
    /// A budget member's spend this period as a share of its amount (0.8 = 80 %).
    BudgetUsed,
    /// A budget member's forecast spend at the period's end as a share of its amount.
    BudgetForecast,
    /// 1 when a provider is down (its active health check fails, or every one of its
    /// targets' breakers is open or half-open), else 0.
    ProviderDown,
    /// How many of a provider's targets have a breaker that is not closed.
    BreakerOpen,
    /// Cache hits / requests over the window (0 to 1).
    CacheHitRate,
    /// Requests refused by a rate limit / requests over the window (0 to 1).
    RateLimitedRate,
    /// Request events dropped by the analytics channel over the window.
    DroppedEvents,
}

impl AlertMetric {
    /// Every metric, in the order the docs list them.
    pub const ALL: [AlertMetric; 11] = [
        AlertMetric::ErrorRate,
        AlertMetric::LatencyP95,
        AlertMetric::TtftP95,
        AlertMetric::CostPerHour,
        AlertMetric::BudgetUsed,
        AlertMetric::BudgetForecast,
        AlertMetric::ProviderDown,
        AlertMetric::BreakerOpen,
        AlertMetric::CacheHitRate,
        AlertMetric::RateLimitedRate,
        AlertMetric::DroppedEvents,
    ];

    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertMetric::ErrorRate => "error_rate",
            AlertMetric::LatencyP95 => "latency_p95",
            AlertMetric::TtftP95 => "ttft_p95",
            AlertMetric::CostPerHour => "cost_per_hour",
            AlertMetric::BudgetUsed => "budget_used",
            AlertMetric::BudgetForecast => "budget_forecast",
            AlertMetric::ProviderDown => "provider_down",
            AlertMetric::BreakerOpen => "breaker_open",
            AlertMetric::CacheHitRate => "cache_hit_rate",
            AlertMetric::RateLimitedRate => "rate_limited_rate",
            AlertMetric::DroppedEvents => "dropped_events",
        }
    }

    /// Reads the config spelling.
    pub fn parse(text: &str) -> Option<Self> {
        AlertMetric::ALL.into_iter().find(|m| m.as_str() == text)
    }

    /// Whether the value is an aggregate over a time window (the others are a state now).
    pub const fn windowed(self) -> bool {
        !matches!(
            self,
            AlertMetric::BudgetUsed
                | AlertMetric::BudgetForecast
                | AlertMetric::ProviderDown
                | AlertMetric::BreakerOpen
        )
    }

    /// Whether the value is a share between 0 and 1.
    pub const fn is_ratio(self) -> bool {
        matches!(
            self,
            AlertMetric::ErrorRate | AlertMetric::CacheHitRate | AlertMetric::RateLimitedRate
        )
    }

    /// Whether the value is computed from the requests in the window (so `min_requests`
    /// applies).
    pub const fn per_request(self) -> bool {
        matches!(
            self,
            AlertMetric::ErrorRate
                | AlertMetric::LatencyP95
                | AlertMetric::TtftP95
                | AlertMetric::CacheHitRate
                | AlertMetric::RateLimitedRate
        )
    }

    /// The direction a rule on this metric uses when it names none: `below` for the cache
    /// hit rate, `above` for the rest.
    pub const fn default_direction(self) -> Direction {
        match self {
            AlertMetric::CacheHitRate => Direction::Below,
            _ => Direction::Above,
        }
    }

    /// The window a rule on this metric uses when it names none.
    pub const fn default_window(self) -> Duration {
        match self {
            AlertMetric::CostPerHour => Duration::from_secs(3_600),
            AlertMetric::DroppedEvents => Duration::from_secs(300),
            _ => Duration::from_secs(60),
        }
    }

    /// The scopes a rule on this metric may have.
    pub const fn scopes(self) -> &'static [AlertScope] {
        match self {
            AlertMetric::ErrorRate
            | AlertMetric::LatencyP95
            | AlertMetric::TtftP95
            | AlertMetric::CostPerHour
            | AlertMetric::CacheHitRate => &[
                AlertScope::Global,
                AlertScope::Route,
                AlertScope::Provider,
                AlertScope::Model,
                AlertScope::Key,
            ],
            AlertMetric::RateLimitedRate => &[AlertScope::Global, AlertScope::Key],
            AlertMetric::BudgetUsed | AlertMetric::BudgetForecast => &[AlertScope::Budget],
            AlertMetric::ProviderDown | AlertMetric::BreakerOpen => &[AlertScope::Provider],
            AlertMetric::DroppedEvents => &[AlertScope::Global],
        }
    }

    /// The scope a rule on this metric has when it names none.
    pub const fn default_scope(self) -> AlertScope {
        self.scopes()[0]
    }

    /// A value for people: a percentage, milliseconds, dollars an hour, or a count.
    pub fn format(self, value: f64) -> String {
        match self {
            AlertMetric::ErrorRate
            | AlertMetric::CacheHitRate
            | AlertMetric::RateLimitedRate
            | AlertMetric::BudgetUsed
            | AlertMetric::BudgetForecast => format!("{:.1}%", value * 100.0),
            AlertMetric::LatencyP95 | AlertMetric::TtftP95 => format!("{value:.0} ms"),
            AlertMetric::CostPerHour => format!("${value:.4}/h"),
            AlertMetric::ProviderDown => {
                if value > 0.0 {
                    "down".to_owned()
                } else {
                    "up".to_owned()
                }
            }
            AlertMetric::BreakerOpen | AlertMetric::DroppedEvents => format!("{value:.0}"),
        }
    }
}

/// What a rule's value is split by, or filtered to with `member`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertScope {
    /// Everything together.
    Global,
    /// Per route.
    Route,
    /// Per provider.
    Provider,
    /// Per upstream model.
    Model,
    /// Per virtual key (principal).
    Key,
    /// Per budget member (the budget metrics' only scope; members are `budget/member`).
    Budget,
}

impl AlertScope {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertScope::Global => "global",
            AlertScope::Route => "route",
            AlertScope::Provider => "provider",
            AlertScope::Model => "model",
            AlertScope::Key => "key",
            AlertScope::Budget => "budget",
        }
    }

    /// Reads the config spelling (`budget` is implied by the budget metrics, not written).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "global" => AlertScope::Global,
            "route" => AlertScope::Route,
            "provider" => AlertScope::Provider,
            "model" => AlertScope::Model,
            "key" => AlertScope::Key,
            _ => return None,
        })
    }
}

/// Which side of the threshold is a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The value is above the threshold.
    Above,
    /// The value is below the threshold.
    Below,
}

impl Direction {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Above => "above",
            Direction::Below => "below",
        }
    }

    /// Whether `value` breaches `threshold`.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Direction::Above => value > threshold,
            Direction::Below => value < threshold,
        }
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// For information.
    Info,
    /// Needs a look.
    Warning,
    /// Needs someone now.
    Critical,
}

impl Severity {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// Reads the config spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// Where one rule and member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not breaching.
    Inactive,
    /// Breaching since `since_ms`, not yet for long enough (or cooling down).
    Pending {
        /// The first breaching tick, unix ms.
        since_ms: u64,
    },
    /// Firing since `since_ms` (notified).
    Firing {
        /// When it fired, unix ms.
        since_ms: u64,
    },
}

/// A change that is notified.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The breach held for the rule's `for`: notify once.
    Fired {
        /// When it fired, unix ms.
        at_ms: u64,
        /// The value that fired it.
        value: f64,
    },
    /// It stopped breaching, or had no data for [`NO_DATA_RESOLVE_MS`]: notify once.
    Resolved {
        /// When it had fired, unix ms.
        since_ms: u64,
        /// When it resolved, unix ms.
        at_ms: u64,
        /// The value that resolved it; `None` when it resolved for lack of data.
        value: Option<f64>,
    },
}

/// One rule and member's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Where it stands.
    pub phase: Phase,
    /// The last value read, if any.
    pub value: Option<f64>,
    /// When a value was last read (unix ms).
    pub last_data_ms: Option<u64>,
    /// When it last resolved, for the cooldown.
    pub last_resolved_ms: Option<u64>,
}

/// What a tick read for one rule and member.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// A value.
    Value(f64),
    /// Nothing to judge by (no requests in the window, fewer than `min_requests`): the
    /// state is kept, except that a pending breach ends after a window without data and a
    /// firing one resolves after [`NO_DATA_RESOLVE_MS`].
    NoData,
}

/// The timings of a rule, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a breach must hold before it fires.
    pub for_ms: u64,
    /// Least time from a resolution to the next firing.
    pub cooldown_ms: u64,
    /// The rule's window.
    pub window_ms: u64,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Timing {
    /// A rule's timings.
    pub fn of(rule: &AlertRule) -> Self {
        Timing {
            for_ms: millis(rule.for_duration),
            cooldown_ms: millis(rule.cooldown),
            window_ms: millis(rule.window),
        }
    }
}

impl Instance {
    /// A new, inactive instance.
    pub const fn new() -> Self {
        Instance {
            phase: Phase::Inactive,
            value: None,
            last_data_ms: None,
            last_resolved_ms: None,
        }
    }

    /// An instance that was firing since `since_ms` (restored from the history at start, so
    /// a restart does not notify an ongoing alert again).
    pub const fn firing(since_ms: u64, value: Option<f64>) -> Self {
        Instance {
            phase: Phase::Firing { since_ms },
            value,
            last_data_ms: Some(since_ms),
            last_resolved_ms: None,
        }
    }

    fn cooling_down(&self, timing: &Timing, now_ms: u64) -> bool {
        self.last_resolved_ms
            .is_some_and(|at| now_ms < at.saturating_add(timing.cooldown_ms))
    }

    /// Advances the state by one tick at `now_ms`; answers the notified change, if any.
    pub fn step(
        &mut self,
        sample: Sample,
        direction: Direction,
        threshold: f64,
        timing: &Timing,
        now_ms: u64,
    ) -> Option<Transition> {
        let breach = match sample {
            Sample::Value(value) => {
                self.value = Some(value);
                self.last_data_ms = Some(now_ms);
                Some(direction.breaches(value, threshold))
            }
            Sample::NoData => None,
        };
        match (self.phase, breach) {
            (Phase::Inactive, Some(true)) => {
                self.phase = Phase::Pending { since_ms: now_ms };
                self.promote(timing, now_ms)
            }
            (Phase::Inactive, _) => None,
            (Phase::Pending { .. }, Some(true)) => self.promote(timing, now_ms),
            (Phase::Pending { .. }, Some(false)) => {
                self.phase = Phase::Inactive;
                None
            }
            (Phase::Pending { .. }, None) => {
                let since_data = now_ms.saturating_sub(self.last_data_ms.unwrap_or(0));
                if since_data > timing.window_ms {
                    self.phase = Phase::Inactive;
                }
                None
            }
            (Phase::Firing { .. }, Some(true)) => None,
            (Phase::Firing { since_ms }, Some(false)) => {
                self.resolve(now_ms);
                Some(Transition::Resolved {
                    since_ms,
                    at_ms: now_ms,
                    value: self.value,
                })
            }
            (Phase::Firing { since_ms }, None) => {
                let since_data = now_ms.saturating_sub(self.last_data_ms.unwrap_or(since_ms));
                if since_data < NO_DATA_RESOLVE_MS {
                    return None;
                }
                self.resolve(now_ms);
                Some(Transition::Resolved {
                    since_ms,
                    at_ms: now_ms,
                    value: None,
                })
            }
        }
    }

    fn promote(&mut self, timing: &Timing, now_ms: u64) -> Option<Transition> {
        let Phase::Pending { since_ms } = self.phase else {
            return None;
        };
        if now_ms.saturating_sub(since_ms) < timing.for_ms || self.cooling_down(timing, now_ms) {
            return None;
        }
        self.phase = Phase::Firing { since_ms: now_ms };
        Some(Transition::Fired {
            at_ms: now_ms,
            value: self.value.unwrap_or(0.0),
        })
    }

    fn resolve(&mut self, now_ms: u64) {
        self.phase = Phase::Inactive;
        self.last_resolved_ms = Some(now_ms);
    }

    /// Whether the instance holds nothing worth keeping: inactive and past its cooldown.
    fn idle(&self, timing: &Timing, now_ms: u64) -> bool {
        self.phase == Phase::Inactive && !self.cooling_down(timing, now_ms)
    }
}

impl Default for Instance {
    fn default() -> Self {
        Instance::new()
    }
}

/// What a tick read for one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Per member (`*` for a global rule), its value; members without one are left out.
    pub values: Vec<(String, f64)>,
    /// How a known member that is left out counts: [`Sample::NoData`] for windowed metrics,
    /// or cleared for states (a budget member with no spend, say), which resolves it.
    pub absent_is_clear: bool,
}

/// A notified change of one rule and member.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The rule's index in the config.
    pub rule: usize,
    /// The member.
    pub member: String,
    /// What happened.
    pub transition: Transition,
}

/// Every rule and member's state.
#[derive(Debug, Default)]
pub struct Evaluator {
    /// (rule index, member) → state; only members that are pending, firing or cooling down.
    instances: BTreeMap<(usize, String), Instance>,
}

impl Evaluator {
    /// No state.
    pub fn new() -> Self {
        Evaluator::default()
    }

    /// Marks `member` of rule `rule` as firing since `since_ms` (restored at start).
    pub fn restore_firing(&mut self, rule: usize, member: &str, since_ms: u64, value: Option<f64>) {
        self.instances
            .insert((rule, member.to_owned()), Instance::firing(since_ms, value));
    }

    /// Advances rule `rule` by one tick with what was read; answers the notified changes.
    pub fn evaluate(
        &mut self,
        rule: usize,
        config: &AlertRule,
        reading: &Reading,
        now_ms: u64,
    ) -> Vec<Change> {
        let timing = Timing::of(config);
        let mut changes = Vec::new();
        let mut step = |member: &str, instance: &mut Instance, sample: Sample| {
            if let Some(transition) =
                instance.step(sample, config.direction, config.threshold, &timing, now_ms)
            {
                changes.push(Change {
                    rule,
                    member: member.to_owned(),
                    transition,
                });
            }
        };
        for (member, value) in &reading.values {
            let key = (rule, member.clone());
            match self.instances.get_mut(&key) {
                Some(instance) => step(member, instance, Sample::Value(*value)),
                None => {
                    // A member that does not breach needs no state.
                    if !config.direction.breaches(*value, config.threshold) {
                        continue;
                    }
                    let mut instance = Instance::new();
                    step(member, &mut instance, Sample::Value(*value));
                    self.instances.insert(key, instance);
                }
            }
        }
        // Known members that were not read this tick.
        let absent: Vec<String> = self
            .instances
            .range((rule, String::new())..)
            .take_while(|((index, _), _)| *index == rule)
            .map(|((_, member), _)| member.clone())
            .filter(|member| !reading.values.iter().any(|(read, _)| read == member))
            .collect();
        for member in absent {
            if let Some(instance) = self.instances.get_mut(&(rule, member.clone())) {
                let sample = if reading.absent_is_clear {
                    // Cleared: a value on the safe side of the threshold.
                    Sample::Value(match config.direction {
                        Direction::Above => config.threshold.min(0.0),
                        Direction::Below => config.threshold.max(0.0) + 1.0,
                    })
                } else {
                    Sample::NoData
                };
                step(&member, instance, sample);
            }
        }
        self.instances
            .retain(|(index, _), instance| *index != rule || !instance.idle(&timing, now_ms));
        changes
    }

    /// The state of `member` of rule `rule`, if it has one.
    pub fn instance(&self, rule: usize, member: &str) -> Option<&Instance> {
        self.instances.get(&(rule, member.to_owned()))
    }

    /// Every (rule, member) with state, in rule order.
    pub fn instances(&self) -> impl Iterator<Item = (usize, &str, &Instance)> {
        self.instances
            .iter()
            .map(|((rule, member), instance)| (*rule, member.as_str(), instance))
    }

    /// Forgets the state of rules from `count` on (after a config with fewer rules).
    pub fn truncate_rules(&mut self, count: usize) {
        self.instances.retain(|(rule, _), _| *rule < count);
    }
}

/// How long a delivery waits before attempt `attempt` + 1 (`attempt` from 1): what the
/// receiver asked for (`Retry-After`, Telegram's `retry_after`) when it did, capped at
/// `max`; else `base` doubled per attempt, capped at `max`.
pub fn retry_delay(
    attempt: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    if let Some(asked) = retry_after {
        return asked.min(max);
    }
    let doublings = attempt.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings).min(max)
}

/// A one-line description of a notified change, for every notifier:
/// `[CRITICAL] provider-errors firing: error_rate of provider flaky is 42.0% (above 20.0%)`.
pub fn message(rule: &AlertRule, member: &str, transition: &Transition) -> String {
    let subject = match rule.scope {
        AlertScope::Global => String::new(),
        scope => format!(" of {} {member}", scope.as_str()),
    };
    let metric = rule.metric;
    let threshold = format!(
        "{} {}",
        rule.direction.as_str(),
        metric.format(rule.threshold)
    );
    match transition {
        Transition::Fired { value, .. } => format!(
            "[{}] {} firing: {}{subject} is {} ({threshold})",
            rule.severity.as_str().to_uppercase(),
            rule.name,
            metric.as_str(),
            metric.format(*value),
        ),
        Transition::Resolved {
            since_ms,
            at_ms,
            value,
        } => {
            let lasted = humantime::format_duration(Duration::from_secs(
                at_ms.saturating_sub(*since_ms) / 1_000,
            ));
            match value {
                Some(value) => format!(
                    "[RESOLVED] {}: {}{subject} is {} (threshold {threshold}); fired for {lasted}",
                    rule.name,
                    metric.as_str(),
                    metric.format(*value),
                ),
                None => format!(
                    "[RESOLVED] {}: {}{subject} has had no data for {}; fired for {lasted}",
                    rule.name,
                    metric.as_str(),
                    humantime::format_duration(Duration::from_millis(NO_DATA_RESOLVE_MS)),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests;
