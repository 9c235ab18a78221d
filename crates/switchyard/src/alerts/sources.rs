//! Where rules' values come from, read by the evaluation task (never on the request path):
//!
//! - error rate, p95 latency, TTFT p95, cost per hour, cache hit rate: the analytics
//!   rollups through the same `Query` and `Fold` as `GET /admin/analytics`: the live 1 s tier
//!   in this instance's memory for windows up to 5 minutes, the store's 1 min rollups for
//!   longer windows and for the key scope (the live tier has no keys);
//! - rate-limited rate: the rate limiter's refusals (counted per key since start, sampled
//!   every tick and differenced over the window) over the window's requests;
//! - dropped analytics events: the event channel's drop counter, sampled the same way;
//! - budget used and forecast: the budgets' snapshot (what `GET /admin/budgets` shows);
//! - provider down and breakers open: the tracker's snapshot (what `GET /admin/providers`
//!   shows).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use switchyard_core::alerts::{AlertMetric, AlertScope, Reading};
use switchyard_core::analytics::Tier;
use switchyard_core::analytics::query::{Answer, Dim, Filter, Fold, Metric, Query};
use switchyard_core::analytics::rollup::SECOND_WINDOWS;
use switchyard_core::config::AlertRule;
use switchyard_core::config::budgets::KEY_BUDGET;

use crate::app::AppState;
use crate::budget::Snapshot as BudgetSnapshot;
use crate::tracker::ProviderSnapshot;

/// The member of a global rule.
pub const GLOBAL_MEMBER: &str = "*";

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Counters read at one tick.
#[derive(Debug, Default)]
pub struct Sample {
    /// When, unix ms.
    at_ms: u64,
    /// Request events dropped since start.
    pub(super) dropped: u64,
    /// Rate-limit refusals since start, per key (read only when a rule needs them).
    refusals: HashMap<String, u64>,
}

impl Sample {
    /// Reads the counters now.
    pub fn take(app: &AppState, now_ms: u64, refusals: bool) -> Self {
        let mut by_key: HashMap<String, u64> = HashMap::new();
        if refusals {
            for offender in app.limiter.snapshot(usize::MAX).top_offenders {
                *by_key.entry(offender.key).or_default() += offender.refusals;
            }
        }
        Sample {
            at_ms: now_ms,
            dropped: app.events.counts().dropped.load(Ordering::Relaxed),
            refusals: by_key,
        }
    }
}

#[cfg(test)]
impl Sample {
    /// A sample of the drop counter alone.
    pub(super) fn dropped_at(at_ms: u64, dropped: u64) -> Self {
        Sample {
            at_ms,
            dropped,
            refusals: HashMap::new(),
        }
    }
}

/// The samples the longest window needs, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Samples(VecDeque<Arc<Sample>>);

impl Samples {
    /// Adds the newest sample and forgets those older than the one at the start of the
    /// longest window.
    pub fn push(&mut self, sample: Sample, longest: Duration) {
        let start = sample.at_ms.saturating_sub(millis(longest));
        self.0.push_back(Arc::new(sample));
        while self.0.len() > 1 && self.0.get(1).is_some_and(|next| next.at_ms <= start) {
            self.0.pop_front();
        }
    }

    /// How much `counter` grew over the window ending now: the newest sample minus the
    /// last one taken at or before the window's start (the counters count from zero at
    /// start, so a window reaching past the first sample counts everything).
    pub fn growth(&self, now_ms: u64, window: Duration, counter: impl Fn(&Sample) -> u64) -> u64 {
        let Some(newest) = self.0.back() else {
            return 0;
        };
        let start = now_ms.saturating_sub(millis(window));
        let base = self
            .0
            .iter()
            .rev()
            .find(|sample| sample.at_ms <= start)
            .map_or(0, |sample| counter(sample));
        // The limiter forgets its lightest offenders past a bound: never a negative count.
        counter(newest).saturating_sub(base)
    }
}

/// What several rules of one tick share: read once per tick, on first use.
#[derive(Default)]
pub struct TickReads {
    budgets: Option<Result<Arc<BudgetSnapshot>, String>>,
    providers: Option<Arc<Vec<ProviderSnapshot>>>,
}

/// Reads one rule's values now.
pub async fn read(
    app: &AppState,
    rule: &AlertRule,
    now_ms: u64,
    samples: &Samples,
    reads: &mut TickReads,
) -> Result<Reading, String> {
    match rule.metric {
        AlertMetric::ErrorRate
        | AlertMetric::LatencyP95
        | AlertMetric::TtftP95
        | AlertMetric::CostPerHour
        | AlertMetric::CacheHitRate
        | AlertMetric::RateLimitedRate => requests(app, rule, now_ms, samples).await,
        AlertMetric::BudgetUsed | AlertMetric::BudgetForecast => budgets(app, rule, reads).await,
        AlertMetric::ProviderDown | AlertMetric::BreakerOpen => Ok(providers(app, rule, reads)),
        AlertMetric::DroppedEvents => Ok(Reading {
            values: vec![(
                GLOBAL_MEMBER.to_owned(),
                samples.growth(now_ms, rule.window, |s| s.dropped) as f64,
            )],
            absent_is_clear: false,
        }),
    }
}

/// The analytics dimension of a scope.
fn dim_of(scope: AlertScope) -> Option<Dim> {
    match scope {
        AlertScope::Route => Some(Dim::Route),
        AlertScope::Provider => Some(Dim::Provider),
        AlertScope::Model => Some(Dim::Model),
        AlertScope::Key => Some(Dim::Key),
        AlertScope::Global | AlertScope::Budget => None,
    }
}

/// The query for a rule's window: one point over the whole window, split by the scope's
/// dimension (each member) or filtered to the rule's member.
pub fn window_query(rule: &AlertRule, metrics: Vec<Metric>, now_ms: u64) -> Query {
    let window_ms = millis(rule.window).max(1_000);
    let dim = dim_of(rule.scope);
    let live = window_ms <= SECOND_WINDOWS * 1_000 && rule.scope != AlertScope::Key;
    let (tier, from_ms, to_ms) = if live {
        // The current second included: what has finished so far counts.
        let to = Tier::Second.bucket(now_ms) + 1_000;
        (
            Tier::Second,
            to.saturating_sub(window_ms.div_ceil(1_000) * 1_000),
            to,
        )
    } else {
        // Whole stored minutes: the window's first one included.
        let from = Tier::Minute.bucket(now_ms.saturating_sub(window_ms));
        (Tier::Minute, from, now_ms + 1)
    };
    let mut filter = Filter::default();
    let mut group_by = Vec::new();
    if let Some(dim) = dim {
        match &rule.member {
            Some(member) => filter.equals.push((dim, member.clone())),
            None => group_by.push(dim),
        }
    }
    Query {
        from_ms,
        to_ms,
        interval_ms: (to_ms - from_ms).max(1),
        tier,
        group_by,
        metrics,
        filter,
    }
}

async fn answer(app: &AppState, query: &Query) -> Result<Answer, String> {
    if query.tier == Tier::Second {
        let mut fold = Fold::new(query);
        app.analytics
            .aggregator()
            .fold_seconds(query.from_ms, query.to_ms, &mut fold);
        return Ok(fold.finish());
    }
    app.analytics
        .store
        .answer(query.clone())
        .await
        .map_err(|error| error.to_string())
}

fn number(map: &serde_json::Map<String, Value>, name: &str) -> Option<f64> {
    map.get(name)
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
}

/// Windowed metrics read from the rollups.
async fn requests(
    app: &AppState,
    rule: &AlertRule,
    now_ms: u64,
    samples: &Samples,
) -> Result<Reading, String> {
    let metric = match rule.metric {
        AlertMetric::ErrorRate => Metric::ErrorRate,
        AlertMetric::LatencyP95 => Metric::LatencyQuantile(95),
        AlertMetric::TtftP95 => Metric::TtftQuantile(95),
        AlertMetric::CostPerHour => Metric::Cost,
        AlertMetric::CacheHitRate => Metric::CacheHitRate,
        _ => Metric::Requests,
    };
    let query = window_query(rule, vec![Metric::Requests, metric], now_ms);
    let answer = answer(app, &query).await?;
    let span_ms = (query.to_ms - query.from_ms).max(1) as f64;
    // (member, requests, value)
    let mut groups: Vec<(String, f64, Option<f64>)> = Vec::new();
    let value_name = metric.name();
    match query.group_by.first() {
        None => {
            let member = rule
                .member
                .clone()
                .unwrap_or_else(|| GLOBAL_MEMBER.to_owned());
            groups.push((
                member,
                number(&answer.totals, "requests").unwrap_or(0.0),
                number(&answer.totals, &value_name),
            ));
        }
        Some(dim) => {
            for series in &answer.series {
                let Some(member) = series.group.get(dim.name()).and_then(Value::as_str) else {
                    continue;
                };
                if member.is_empty() {
                    continue;
                }
                groups.push((
                    member.to_owned(),
                    number(&series.totals, "requests").unwrap_or(0.0),
                    number(&series.totals, &value_name),
                ));
            }
        }
    }
    let min_requests = rule.min_requests as f64;
    let values = groups
        .into_iter()
        .filter_map(|(member, requests, value)| {
            let value = match rule.metric {
                AlertMetric::CostPerHour => value.unwrap_or(0.0) * 3_600_000.0 / span_ms,
                AlertMetric::RateLimitedRate => {
                    if requests < min_requests {
                        return None;
                    }
                    let refused = samples.growth(now_ms, rule.window, |sample| {
                        if rule.scope == AlertScope::Key {
                            sample.refusals.get(&member).copied().unwrap_or(0)
                        } else {
                            sample.refusals.values().sum()
                        }
                    });
                    (refused as f64 / requests).min(1.0)
                }
                _ => {
                    if requests < min_requests {
                        return None;
                    }
                    value?
                }
            };
            Some((member, value))
        })
        .collect();
    Ok(Reading {
        values,
        absent_is_clear: false,
    })
}

/// Budget used and forecast, per budget and member (`budget/member`).
async fn budgets(
    app: &AppState,
    rule: &AlertRule,
    reads: &mut TickReads,
) -> Result<Reading, String> {
    if reads.budgets.is_none() {
        let keys = app.keys.list();
        reads.budgets = Some(
            app.budgets
                .snapshot(&keys)
                .await
                .map(Arc::new)
                .map_err(|error| error.to_string()),
        );
    }
    let snapshot = match &reads.budgets {
        Some(Ok(snapshot)) => Arc::clone(snapshot),
        Some(Err(error)) => return Err(error.clone()),
        None => return Err("the budgets could not be read".to_owned()),
    };
    let wanted = |budget: &str, member: &str| {
        rule.budget.as_deref().is_none_or(|b| b == budget)
            && rule.member.as_deref().is_none_or(|m| m == member)
    };
    let share = |spent_or_forecast: Option<f64>, used: f64, amount: f64| match rule.metric {
        AlertMetric::BudgetUsed => Some(used),
        _ => spent_or_forecast
            .filter(|_| amount > 0.0)
            .map(|forecast| forecast / amount),
    };
    let mut values = Vec::new();
    for budget in &snapshot.budgets {
        for member in &budget.members {
            if !wanted(&budget.name, &member.member) {
                continue;
            }
            if let Some(value) =
                share(member.forecast_usd, member.used, budget.amount_usd).filter(|v| v.is_finite())
            {
                values.push((format!("{}/{}", budget.name, member.member), value));
            }
        }
    }
    for key in &snapshot.keys {
        if !wanted(KEY_BUDGET, &key.id) {
            continue;
        }
        if let Some(value) =
            share(key.forecast_usd, key.used, key.amount_usd).filter(|v| v.is_finite())
        {
            values.push((format!("{KEY_BUDGET}/{}", key.id), value));
        }
    }
    Ok(Reading {
        values,
        absent_is_clear: true,
    })
}

/// Provider down and breakers open, per provider (drained providers are left out: an
/// operator took them out on purpose).
fn providers(app: &AppState, rule: &AlertRule, reads: &mut TickReads) -> Reading {
    let snapshot = Arc::clone(
        reads
            .providers
            .get_or_insert_with(|| Arc::new(app.tracker.snapshot())),
    );
    let values = snapshot
        .iter()
        .filter(|provider| !provider.drained)
        .filter(|provider| rule.member.as_deref().is_none_or(|m| m == provider.name))
        .map(|provider| {
            let open = provider
                .targets
                .iter()
                .filter(|target| target.breaker != "closed")
                .count();
            let unhealthy = provider
                .health_check
                .as_ref()
                .is_some_and(|check| !check.healthy);
            let value = match rule.metric {
                AlertMetric::BreakerOpen => open as f64,
                _ => {
                    let all_open = !provider.targets.is_empty() && open == provider.targets.len();
                    f64::from(u8::from(unhealthy || all_open))
                }
            };
            (provider.name.clone(), value)
        })
        .collect();
    Reading {
        values,
        absent_is_clear: true,
    }
}
