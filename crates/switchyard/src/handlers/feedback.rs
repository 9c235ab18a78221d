//! Quality feedback (see [`crate::quality`]):
//!
//! - `POST /v1/feedback` with `{"request_id": "...", "score": 0.8}` (0 bad to 1 good), by the
//!   key that made the request, within an hour, at the instance that served it (the
//!   `x-request-id` of the answer). Answers the route, tier and model it was filed under.
//! - `GET /admin/quality`: the recent mean score per route and tier.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchyard_core::{ErrorKind, GatewayError, Origin};

use crate::analytics::spend::FeedbackRow;
use crate::app::AppState;
use crate::context::TakenContext;
use crate::error::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    request_id: String,
    score: f64,
}

/// `POST /v1/feedback`.
pub async fn feedback(
    State(app): State<AppState>,
    TakenContext(context): TakenContext,
    body: Bytes,
) -> Response {
    let feedback: Feedback = match serde_json::from_slice(&body) {
        Ok(feedback) => feedback,
        Err(error) => {
            return ApiError(GatewayError::invalid_request(format!(
                "the body must be {{\"request_id\": \"...\", \"score\": 0 to 1}}: {error}"
            )))
            .into_response();
        }
    };
    if !(0.0..=1.0).contains(&feedback.score) {
        return ApiError(
            GatewayError::invalid_request("score must be a number from 0 (bad) to 1 (good)")
                .with_param("score"),
        )
        .into_response();
    }
    match app
        .quality
        .lookup(context.principal.label(), &feedback.request_id)
    {
        Ok(served) => {
            // Stored before it counts, so that an answered score is never lost.
            let row = FeedbackRow {
                time_ms: crate::cache::unix_ms(),
                request_id: feedback.request_id.clone(),
                key: served.principal.clone(),
                route: served.route.clone(),
                tier: served.tier.clone().unwrap_or_default(),
                model: served.model.clone(),
                score: feedback.score,
            };
            if let Err(error) = app.analytics.store.write_feedback(row).await {
                return ApiError(GatewayError::new(
                    ErrorKind::Unavailable,
                    Origin::Gateway,
                    format!("the feedback could not be stored; try again: {error}"),
                ))
                .into_response();
            }
            app.quality.record(&served, feedback.score);
            Json(json!({
            "request_id": feedback.request_id,
            "score": feedback.score,
            "route": served.route,
            "tier": served.tier,
            "model": served.model,
            }))
            .into_response()
        }
        Err(crate::quality::Refused::Unknown) => ApiError(
            GatewayError::new(
                ErrorKind::NotFound,
                Origin::Client,
                format!(
                    "No answer `{}` of this key can be rated here: feedback is taken for an \
                     hour after a successful answer, by the key that asked, at the instance \
                     that served it",
                    feedback.request_id
                ),
            )
            .with_param("request_id")
            .with_code("request_not_found"),
        )
        .into_response(),
    }
}

/// `GET /admin/quality?from=&to=`: the stored scores per route, tier and model over the
/// range (default: the last 7 days; every instance's with Postgres), and this instance's
/// rolling means per route and tier (what `min_quality` acts on).
pub async fn quality(
    State(app): State<AppState>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    let now = crate::cache::unix_ms();
    let mut from = now.saturating_sub(7 * 24 * 3_600_000);
    let mut to = now.saturating_add(1);
    for (name, value) in &params {
        if !matches!(name.as_str(), "from" | "to") {
            return ApiError(
                GatewayError::invalid_request(format!("unknown parameter `{name}` (from, to)"))
                    .with_param(name.clone()),
            )
            .into_response();
        }
        let Some(time) = switchyard_core::analytics::query::parse_time(value, now) else {
            return ApiError(
                GatewayError::invalid_request(format!(
                    "`{name}` is not a time (unix seconds, RFC 3339, `now` or `-7d`)"
                ))
                .with_param(name.clone()),
            )
            .into_response();
        };
        if name == "from" {
            from = time;
        } else {
            to = time;
        }
    }
    match app.analytics.store.quality(from, to).await {
        Ok(stored) => Json(json!({
            "from_ms": from,
            "to_ms": to,
            "stored": stored,
            "routes": app.quality.snapshot(),
        }))
        .into_response(),
        Err(error) => ApiError(GatewayError::new(
            ErrorKind::Unavailable,
            Origin::Gateway,
            format!("the feedback cannot be read right now: {error}"),
        ))
        .into_response(),
    }
}
