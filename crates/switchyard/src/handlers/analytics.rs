//! The analytics query API, behind the master key.
//!
//! - `GET /admin/analytics?from=&to=&interval=&group_by=&metrics=&route=&provider=&model=&key=&status_class=`:
//!   time series and totals from the rollups (see [`switchyard_core::analytics::query`] for
//!   the parameters). The 1 s resolution (last 5 minutes) comes from this instance's memory;
//!   the 1 min and 1 h resolutions come from the store, every instance included, and lag by
//!   at most the flush interval.
//! - `GET /admin/requests?limit=&before=&status=&provider=&route=&model=&key=&tag=&min_latency_ms=&from=&to=`:
//!   the raw request log, newest first, one page at a time (`next_cursor` → `before`).
//! - `GET /admin/analytics/status`: the store, the pipeline's counters and its memory.

use axum::Json;
use axum::extract::{Query as QueryString, State};
use axum::response::{IntoResponse, Response};
use switchyard_core::analytics::query::Query;
use switchyard_core::{ErrorKind, GatewayError, Origin};

use crate::analytics::pipeline::now_ms;
use crate::analytics::store::{Cursor, RequestsQuery, StoreError};
use crate::app::AppState;
use crate::error::ApiError;

fn invalid(param: &str, message: impl Into<String>) -> Response {
    ApiError(GatewayError::invalid_request(message.into()).with_param(param.to_owned()))
        .into_response()
}

fn unavailable(error: &StoreError) -> Response {
    tracing::warn!(%error, "analytics query failed");
    ApiError(
        GatewayError::new(
            ErrorKind::Unavailable,
            Origin::Gateway,
            format!("The analytics store could not answer: {error}"),
        )
        .with_code("analytics_store_unavailable"),
    )
    .into_response()
}

/// `GET /admin/analytics`.
pub async fn analytics(
    State(app): State<AppState>,
    QueryString(params): QueryString<Vec<(String, String)>>,
) -> Response {
    let query = match Query::parse(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        now_ms(),
    ) {
        Ok(query) => query,
        Err(error) => return invalid(&error.param, error.to_string()),
    };
    match app.analytics.answer(query).await {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => unavailable(&error),
    }
}

/// `GET /admin/analytics/status`.
pub async fn status(State(app): State<AppState>) -> Response {
    Json(app.analytics.status()).into_response()
}

/// Parses the `/admin/requests` parameters.
fn requests_query(params: &[(String, String)], now: u64) -> Result<RequestsQuery, Box<Response>> {
    let mut query = RequestsQuery {
        limit: 50,
        ..RequestsQuery::default()
    };
    for (name, value) in params {
        let value = value.trim();
        match name.as_str() {
            "limit" => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        Box::new(invalid("limit", "must be a whole number from 1 to 1000"))
                    })?;
            }
            "before" => {
                query.before = Some(Cursor::decode(value).ok_or_else(|| {
                    Box::new(invalid(
                        "before",
                        "is not a cursor from a previous page's next_cursor",
                    ))
                })?);
            }
            "status" => match value {
                "error" => query.error = Some(true),
                "ok" => query.error = Some(false),
                _ => {
                    if let Some(class) = value.strip_suffix("xx") {
                        let digit: u16 = class
                            .parse()
                            .ok()
                            .filter(|d| (1..=5).contains(d))
                            .ok_or_else(|| Box::new(invalid("status", "classes are 1xx to 5xx")))?;
                        query.status_class = Some((digit * 100, digit * 100 + 99));
                    } else {
                        query.status = Some(value.parse().ok().filter(|s| (100..600).contains(s)).ok_or_else(|| {
                            Box::new(invalid("status", "must be a status code (429), a class (5xx), `error` or `ok`"))
                        })?);
                    }
                }
            },
            "provider" => query.provider = Some(value.to_owned()),
            "route" => query.route = Some(value.to_owned()),
            "model" => query.model = Some(value.to_owned()),
            "key" => query.key = Some(value.to_owned()),
            "tag" => query.tag = Some(value.to_owned()),
            "min_latency_ms" => {
                let ms: f64 = value
                    .parse()
                    .ok()
                    .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)
                    .ok_or_else(|| {
                        Box::new(invalid("min_latency_ms", "must be a non-negative number"))
                    })?;
                query.min_latency_us = Some((ms * 1_000.0) as u64);
            }
            "from" | "to" => {
                let time =
                    switchyard_core::analytics::query::parse_time(value, now).ok_or_else(|| {
                        Box::new(invalid(
                            name,
                            "is not a time (unix seconds, RFC 3339, `now` or `-15m`)",
                        ))
                    })?;
                if name == "from" {
                    query.from_ms = Some(time);
                } else {
                    query.to_ms = Some(time);
                }
            }
            other => {
                return Err(Box::new(invalid(
                    other,
                    format!(
                        "unknown parameter `{other}`; known: limit, before, status, provider, \
                         route, model, key, tag, min_latency_ms, from, to"
                    ),
                )));
            }
        }
    }
    Ok(query)
}

/// `GET /admin/requests`.
pub async fn requests(
    State(app): State<AppState>,
    QueryString(params): QueryString<Vec<(String, String)>>,
) -> Response {
    let query = match requests_query(&params, now_ms()) {
        Ok(query) => query,
        Err(response) => return *response,
    };
    match app.analytics.store.requests(query).await {
        Ok(page) => Json(page).into_response(),
        Err(error) => unavailable(&error),
    }
}
