//! The money, behind the master key:
//!
//! - `GET /admin/spend?group_by=key|team|model|provider|route&from=&to=`: the spend ledger
//!   summed per member of the grouping over `[from, to)` (default: the last 30 days), largest
//!   first, with the total. Times are unix seconds, RFC 3339, `now` or a duration before now
//!   (`-7d`); the ledger's resolution is 15 minutes, so `from` rounds down and `to` up to a
//!   quarter hour.
//! - `GET /admin/cost/savings?from=&to=`: the spend against its baseline (every request at
//!   the default provider of the model asked for, with no cache), and where the difference
//!   came from: cache, tiering, provider switching.
//! - `GET /admin/budgets`: every budget's current period and each member's spend in it, keys'
//!   own budgets, and the recent threshold events.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use switchyard_core::budget::to_usd;
use switchyard_core::{ErrorKind, GatewayError, Origin};

use crate::analytics::spend::{BUCKET_MS, SpendColumn, SpendLine, SpendTotals, bucket};
use crate::app::AppState;
use crate::error::ApiError;

/// The default report span.
const DEFAULT_SPAN_MS: u64 = 30 * 24 * 3_600_000;

/// A line of the report, in dollars.
#[derive(Debug, Serialize)]
struct Line {
    /// The member (`null`: none, e.g. keys without a team).
    member: Option<String>,
    cost_usd: f64,
    saved_usd: f64,
    requests: i64,
    /// Requests whose cost is unknown (not in the figures).
    unpriced_requests: i64,
    input_tokens: i64,
    output_tokens: i64,
}

impl Line {
    fn new(member: Option<String>, totals: &SpendTotals) -> Self {
        Line {
            member,
            cost_usd: to_usd(totals.cost_nanos),
            saved_usd: to_usd(totals.saved_nanos),
            requests: totals.requests,
            unpriced_requests: totals.unpriced,
            input_tokens: totals.input_tokens,
            output_tokens: totals.output_tokens,
        }
    }
}

fn invalid(param: &str, message: impl Into<String>) -> Response {
    ApiError(GatewayError::invalid_request(message.into()).with_param(param.to_owned()))
        .into_response()
}

fn unavailable(error: &dyn std::fmt::Display) -> Response {
    ApiError(GatewayError::new(
        ErrorKind::Unavailable,
        Origin::Gateway,
        format!("the spend ledger cannot be read right now: {error}"),
    ))
    .into_response()
}

/// The `[from, to)` of a report, rounded out to ledger buckets, and its other parameters
/// (`group_by` only where `grouped`).
struct Range {
    from: u64,
    to: u64,
    group_by: Option<SpendColumn>,
}

fn range(params: &[(String, String)], grouped: bool) -> Result<Range, Box<Response>> {
    let now = crate::cache::unix_ms();
    let mut group_by = None;
    let mut from = None;
    let mut to = None;
    for (name, value) in params {
        match name.as_str() {
            "group_by" if grouped => match SpendColumn::parse(value) {
                Some(column) => group_by = Some(column),
                None => {
                    return Err(Box::new(invalid(
                        "group_by",
                        format!("unknown grouping `{value}` (key, team, model, provider or route)"),
                    )));
                }
            },
            "from" | "to" => {
                let Some(time) = switchyard_core::analytics::query::parse_time(value, now) else {
                    return Err(Box::new(invalid(
                        name,
                        format!("`{name}` is not a time (unix seconds, RFC 3339, `now` or `-7d`)"),
                    )));
                };
                if name == "from" {
                    from = Some(time);
                } else {
                    to = Some(time);
                }
            }
            other => {
                let known = if grouped {
                    "group_by, from, to"
                } else {
                    "from, to"
                };
                return Err(Box::new(invalid(
                    other,
                    format!("unknown parameter `{other}` ({known})"),
                )));
            }
        }
    }
    let to = to.unwrap_or(now);
    let from = from.unwrap_or_else(|| to.saturating_sub(DEFAULT_SPAN_MS));
    if from >= to {
        return Err(Box::new(invalid("from", "`from` must be before `to`")));
    }
    Ok(Range {
        from: bucket(from),
        to: bucket(to.saturating_add(BUCKET_MS - 1)),
        group_by,
    })
}

/// `GET /admin/spend`.
pub async fn spend(
    State(app): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let range = match range(&params, true) {
        Ok(range) => range,
        Err(response) => return *response,
    };
    let Some(group_by) = range.group_by else {
        return invalid(
            "group_by",
            "group_by is required: key, team, model, provider or route",
        );
    };
    let lines = match app.budgets.report(group_by, range.from, range.to).await {
        Ok(lines) => lines,
        Err(error) => return unavailable(&error),
    };
    let mut total = SpendTotals::default();
    for line in &lines {
        total.add(&line.totals);
    }
    let lines: Vec<Line> = lines
        .iter()
        .map(|SpendLine { member, totals }| {
            Line::new(Some(member.clone()).filter(|m| !m.is_empty()), totals)
        })
        .collect();
    Json(serde_json::json!({
        "group_by": group_by.column(),
        "from_ms": range.from,
        "to_ms": range.to,
        "resolution_ms": BUCKET_MS,
        "total": Line::new(None, &total),
        "lines": lines,
    }))
    .into_response()
}

/// Where the savings came from, USD.
#[derive(Debug, Serialize)]
struct Savings {
    /// The route that served (a tier's route for a tiered one; `null` in the total).
    route: Option<String>,
    /// What the traffic cost.
    actual_usd: f64,
    /// What it would have cost at the default provider of the route asked for (its strongest
    /// tier), with no cache.
    baseline_usd: f64,
    /// `baseline_usd - actual_usd`.
    saved_usd: f64,
    /// Served from the cache.
    cache_usd: f64,
    /// Sent to a cheaper tier or route (tiers and budget downgrades).
    tiering_usd: f64,
    /// Sent to a cheaper provider than the served route's default.
    provider_switching_usd: f64,
    requests: i64,
    /// Requests without a known price: in none of the figures.
    unpriced_requests: i64,
}

impl Savings {
    fn new(route: Option<String>, totals: &SpendTotals) -> Self {
        let miss_baseline = totals.baseline_nanos - totals.hit_baseline_nanos;
        Savings {
            route,
            actual_usd: to_usd(totals.cost_nanos),
            baseline_usd: to_usd(totals.baseline_nanos),
            saved_usd: to_usd(totals.baseline_nanos - totals.cost_nanos),
            cache_usd: to_usd(totals.hit_baseline_nanos),
            tiering_usd: to_usd(miss_baseline - totals.default_nanos),
            provider_switching_usd: to_usd(totals.default_nanos - totals.cost_nanos),
            requests: totals.requests,
            unpriced_requests: totals.unpriced,
        }
    }
}

/// `GET /admin/cost/savings?from=&to=`: what the traffic cost against what it would have
/// cost at the default provider of the model asked for with no cache, and where the
/// difference came from (cache, tiering, provider switching), in total and per route.
pub async fn savings(
    State(app): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let range = match range(&params, false) {
        Ok(range) => range,
        Err(response) => return *response,
    };
    let lines = match app
        .budgets
        .report(SpendColumn::Route, range.from, range.to)
        .await
    {
        Ok(lines) => lines,
        Err(error) => return unavailable(&error),
    };
    let mut total = SpendTotals::default();
    for line in &lines {
        total.add(&line.totals);
    }
    let saved_share = if total.baseline_nanos > 0 {
        (total.baseline_nanos - total.cost_nanos) as f64 / total.baseline_nanos as f64
    } else {
        0.0
    };
    let by_route: Vec<Savings> = lines
        .iter()
        .map(|line| Savings::new(Some(line.member.clone()), &line.totals))
        .collect();
    Json(serde_json::json!({
        "from_ms": range.from,
        "to_ms": range.to,
        "resolution_ms": BUCKET_MS,
        "total": Savings::new(None, &total),
        "saved_share": saved_share,
        "by_route": by_route,
        "method": "each request's own token counts priced at the default provider of the \
                   route asked for (its strongest tier), and at the default provider of the \
                   route that served it; another model would have used other token counts",
    }))
    .into_response()
}

/// `GET /admin/budgets`.
pub async fn budgets(State(app): State<AppState>) -> Response {
    let keys = app.keys.list();
    match app.budgets.snapshot(&keys).await {
        Ok(snapshot) => Json(snapshot).into_response(),
        Err(error) => unavailable(&error),
    }
}
