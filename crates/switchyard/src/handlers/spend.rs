//! The money, behind the master key:
//!
//! - `GET /admin/spend?group_by=key|team|model|provider|route&from=&to=`: the spend ledger
//!   summed per member of the grouping over `[from, to)` (default: the last 30 days), largest
//!   first, with the total. Times are unix seconds, RFC 3339, `now` or a duration before now
//!   (`-7d`); the ledger's resolution is 15 minutes, so `from` rounds down and `to` up to a
//!   quarter hour.
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

/// `GET /admin/spend`.
pub async fn spend(
    State(app): State<AppState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let now = crate::cache::unix_ms();
    let mut group_by = None;
    let mut from = None;
    let mut to = None;
    for (name, value) in &params {
        match name.as_str() {
            "group_by" => match SpendColumn::parse(value) {
                Some(column) => group_by = Some(column),
                None => {
                    return invalid(
                        "group_by",
                        format!("unknown grouping `{value}` (key, team, model, provider or route)"),
                    );
                }
            },
            "from" | "to" => {
                let Some(time) = switchyard_core::analytics::query::parse_time(value, now) else {
                    return invalid(
                        name,
                        format!("`{name}` is not a time (unix seconds, RFC 3339, `now` or `-7d`)"),
                    );
                };
                if name == "from" {
                    from = Some(time);
                } else {
                    to = Some(time);
                }
            }
            other => {
                return invalid(
                    other,
                    format!("unknown parameter `{other}` (group_by, from, to)"),
                );
            }
        }
    }
    let Some(group_by) = group_by else {
        return invalid(
            "group_by",
            "group_by is required: key, team, model, provider or route",
        );
    };
    let to = to.unwrap_or(now);
    let from = from.unwrap_or_else(|| to.saturating_sub(DEFAULT_SPAN_MS));
    if from >= to {
        return invalid("from", "`from` must be before `to`");
    }
    let (from, to) = (bucket(from), bucket(to.saturating_add(BUCKET_MS - 1)));
    let lines = match app.budgets.report(group_by, from, to).await {
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
        "from_ms": from,
        "to_ms": to,
        "resolution_ms": BUCKET_MS,
        "total": Line::new(None, &total),
        "lines": lines,
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
