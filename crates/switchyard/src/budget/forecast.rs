//! Budget forecasts: where each member's spend is heading by the end of its period, from its
//! recent rate (`core::budget::forecast`: an exponentially weighted rate over the last day,
//! a three-hour half-life), for `GET /admin/budgets` and for the forecast events.
//!
//! A background task ([`Budgets::spawn_forecaster`]) runs a round every minute: it reads
//! every budget's members' spend series from the ledger (one query per budget, one per
//! key-budget period for the keys) and emits a `forecast` [`BudgetEvent`] the first time in
//! a period that a member's projected spend reaches its budget's amount. A member is
//! reported once per period however often its forecast dips below the amount and rises
//! again: the (budget, member, period start) stays marked until the period ends. With Redis,
//! the instances share the mark (`SET NX` on `…:forecast` beside the period's counter), so one
//! of them reports it; without, the mark is this instance's and a restart forgets it. This
//! reads the ledger only: the counters and the request path are never touched.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::budget::{
    BudgetScope, Forecast, Period, Window, forecast, rate_history_start, to_nanos, to_usd, window,
};
use switchyard_core::keys::VirtualKey;

use super::{
    BudgetEvent, BudgetEventKind, BudgetLabels, Budgets, CounterKey, Counters, Rule, lock,
};
use crate::analytics::spend::{SpendColumn, column_of};
use crate::analytics::store::StoreError;

/// How often the forecaster runs a round.
pub const FORECAST_INTERVAL: Duration = Duration::from_secs(60);

/// A budget's period now and its members' forecasts, largest spend first.
pub(super) struct RuleForecasts {
    /// The current period.
    pub window: Window,
    /// Each member with spend in the period or in the rate's history (the last day); the
    /// global budget's `*` always.
    pub members: Vec<(String, Forecast)>,
}

/// A key's own budget now.
pub(super) struct KeyForecast {
    /// The key.
    pub key: Arc<VirtualKey>,
    /// Its budget, USD per period.
    pub amount_usd: f64,
    /// Its period.
    pub period: Period,
    /// The current period.
    pub window: Window,
    /// Where its spend is heading.
    pub forecast: Forecast,
}

/// A forecast that reached its budget's amount.
struct Reached {
    budget: Arc<str>,
    scope: BudgetScope,
    member: String,
    limit: i64,
    period: Period,
    window: Window,
    forecast: Forecast,
}

/// Whether a forecast reaches `limit` (a zero budget is reached only by some spend).
fn reaches(forecast: &Forecast, limit: i64) -> bool {
    forecast
        .projected
        .is_some_and(|projected| projected >= limit && projected > 0)
}

impl Budgets {
    /// The spend series of every member of `column` (one, unnamed, with none) that a forecast
    /// in `period` at `now_ms` needs: the period's buckets before the rate's history folded
    /// into one row, then a day of buckets.
    async fn series(
        &self,
        column: Option<SpendColumn>,
        period: Window,
        now_ms: u64,
    ) -> Result<HashMap<String, Vec<(u64, i64)>>, StoreError> {
        let detail_from = rate_history_start(now_ms);
        let points = self
            .store
            .spend_series(
                column,
                period.start_ms.min(detail_from),
                detail_from,
                period.end_ms.unwrap_or(u64::MAX / 2),
            )
            .await?;
        let mut members: HashMap<String, Vec<(u64, i64)>> = HashMap::new();
        for point in points {
            members
                .entry(point.member)
                .or_default()
                .push((point.bucket_ms, point.cost_nanos));
        }
        Ok(members)
    }

    /// Every member of `rule` and its forecast at `now_ms`.
    pub(super) async fn rule_forecasts(
        &self,
        rule: &Rule,
        now_ms: u64,
    ) -> Result<RuleForecasts, StoreError> {
        let period = rule.window(now_ms);
        let column = column_of(rule.config.scope);
        let mut series = self.series(column, period, now_ms).await?;
        if column.is_none() {
            // The global budget's one member is there even before anything is spent.
            series.entry(String::new()).or_default();
        }
        let mut members: Vec<(String, Forecast)> = series
            .into_iter()
            .filter_map(|(member, buckets)| {
                let member = match column {
                    None => "*".to_owned(),
                    Some(_) if member.is_empty() || !rule.config.covers(&member) => return None,
                    Some(_) => member,
                };
                Some((member, forecast(period, now_ms, &buckets)))
            })
            .collect();
        members.sort_by(|a, b| b.1.spent.cmp(&a.1.spent).then_with(|| a.0.cmp(&b.0)));
        Ok(RuleForecasts {
            window: period,
            members,
        })
    }

    /// The forecast of every key in `keys` with a budget of its own, in their order: one
    /// ledger query per period they use.
    pub(super) async fn key_forecasts(
        &self,
        keys: &[Arc<VirtualKey>],
        now_ms: u64,
    ) -> Result<Vec<KeyForecast>, StoreError> {
        let mut by_period: HashMap<Period, HashMap<String, Vec<(u64, i64)>>> = HashMap::new();
        let mut forecasts = Vec::new();
        for key in keys {
            let Some(amount_usd) = key.settings.budget_usd else {
                continue;
            };
            let period = key.settings.budget_period.unwrap_or(Period::Monthly);
            let span = window(period, &self.timezone, now_ms);
            if let Entry::Vacant(slot) = by_period.entry(period) {
                slot.insert(self.series(Some(SpendColumn::Key), span, now_ms).await?);
            }
            let buckets = by_period
                .get(&period)
                .and_then(|series| series.get(&key.id))
                .map_or(&[][..], Vec::as_slice);
            forecasts.push(KeyForecast {
                key: Arc::clone(key),
                amount_usd,
                period,
                window: span,
                forecast: forecast(span, now_ms, buckets),
            });
        }
        Ok(forecasts)
    }

    /// Whether a round has anything to forecast.
    fn forecasts_anything(&self, keys: &[Arc<VirtualKey>]) -> bool {
        !self.rules.is_empty() || keys.iter().any(|key| key.settings.budget_usd.is_some())
    }

    /// One forecast round: every budget's and key budget's members, and a `forecast` event
    /// for each whose projected spend reached the amount for the first time this period
    /// (returned, and added to the recent events).
    pub async fn forecast_round(
        &self,
        keys: &[Arc<VirtualKey>],
    ) -> Result<Vec<BudgetEvent>, StoreError> {
        let now = self.now_ms();
        lock(&self.forecasted).retain(|_, end| end.is_none_or(|end| end > now));
        let mut reached = Vec::new();
        for rule in &self.rules {
            let forecasts = self.rule_forecasts(rule, now).await?;
            for (member, forecast) in forecasts.members {
                if reaches(&forecast, rule.limit) {
                    reached.push(Reached {
                        budget: Arc::clone(&rule.name),
                        scope: rule.config.scope,
                        member,
                        limit: rule.limit,
                        period: rule.config.period,
                        window: forecasts.window,
                        forecast,
                    });
                }
            }
        }
        for key in self.key_forecasts(keys, now).await? {
            let limit = to_nanos(key.amount_usd);
            if reaches(&key.forecast, limit) {
                reached.push(Reached {
                    budget: Arc::clone(&self.key_budget),
                    scope: BudgetScope::Key,
                    member: key.key.id.clone(),
                    limit,
                    period: key.period,
                    window: key.window,
                    forecast: key.forecast,
                });
            }
        }
        let mut events = Vec::new();
        for reached in reached {
            if !self.first_forecast(&reached, now).await {
                continue;
            }
            let event = BudgetEvent {
                time_ms: now,
                kind: BudgetEventKind::Forecast,
                budget: reached.budget.to_string(),
                scope: reached.scope.as_str(),
                member: reached.member,
                threshold: 1.0,
                spent_usd: to_usd(reached.forecast.spent),
                forecast_usd: reached.forecast.projected.map(to_usd),
                amount_usd: to_usd(reached.limit),
                period: reached.period,
                period_start_ms: reached.window.start_ms,
            };
            tracing::warn!(
                budget = %event.budget,
                member = %event.member,
                spent_usd = event.spent_usd,
                forecast_usd = event.forecast_usd,
                rate_usd_per_hour = reached.forecast.rate_per_hour / 1e9,
                amount_usd = event.amount_usd,
                "budget forecast to be passed by the end of the period"
            );
            self.metrics
                .forecasts
                .get_or_create(&BudgetLabels {
                    budget: event.budget.clone(),
                })
                .inc();
            self.push_event(event.clone());
            events.push(event);
        }
        Ok(events)
    }

    /// Marks a member's forecast as reported this period; whether this instance is the one
    /// to report it (the first time here, and, with Redis, the first instance).
    async fn first_forecast(&self, reached: &Reached, now_ms: u64) -> bool {
        let mark = CounterKey {
            budget: Arc::clone(&reached.budget),
            member: reached.member.clone(),
            start_ms: reached.window.start_ms,
        };
        if lock(&self.forecasted)
            .insert(mark, reached.window.end_ms)
            .is_some()
        {
            return false;
        }
        let Counters::Redis(redis) = &self.counters else {
            return true;
        };
        let key = format!(
            "{}:forecast",
            super::redis::key(&reached.budget, &reached.member, reached.window.start_ms)
        );
        // Kept for the rest of the period and a day, as the period's counter is.
        let ttl_ms = reached
            .window
            .end_ms
            .map_or(0, |end| end.saturating_sub(now_ms) + 86_400_000);
        match redis.claim(&key, ttl_ms).await {
            Ok(first) => first,
            Err(error) => {
                // Better reported twice than not at all.
                self.metrics.store_errors.inc();
                tracing::warn!(%error, "budgets: marking a forecast in Redis failed");
                true
            }
        }
    }

    /// Runs a forecast round every `interval` (the first at once) until the budgets are
    /// dropped; `keys` lists the virtual keys, for their own budgets.
    pub fn spawn_forecaster<K>(self: &Arc<Self>, interval: Duration, keys: K)
    where
        K: Fn() -> Vec<Arc<VirtualKey>> + Send + Sync + 'static,
    {
        self.spawn_rounds(
            interval,
            "could not read the spend ledger for budget forecasts",
            "budget forecasts are being computed again",
            move |budgets| {
                let keys = keys();
                async move {
                    if budgets.forecasts_anything(&keys) {
                        budgets.forecast_round(&keys).await?;
                    }
                    Ok(())
                }
            },
        );
    }
}
