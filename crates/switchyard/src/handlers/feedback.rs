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
    match app.quality.rate(
        context.principal.label(),
        &feedback.request_id,
        feedback.score,
    ) {
        Ok(served) => Json(json!({
            "request_id": feedback.request_id,
            "score": feedback.score,
            "route": served.route,
            "tier": served.tier,
            "model": served.model,
        }))
        .into_response(),
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

/// `GET /admin/quality`.
pub async fn quality(State(app): State<AppState>) -> Response {
    Json(json!({ "routes": app.quality.snapshot() })).into_response()
}
