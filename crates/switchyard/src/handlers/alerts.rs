//! The alerts API, behind the master key.
//!
//! - `GET /admin/alerts[?limit=N]`: `{"firing": [...], "recent": [...]}`: the alerts firing
//!   now, and the `limit` (default 50) most recent alerts of any state, newest first. Each is
//!   `{id, rule, metric, scope, member, severity, state, value, threshold, direction,
//!   started_at, resolved_at, message, notifications}` (times in unix milliseconds).
//! - `POST /admin/alerts/test` (body optional: `{"notifier": "NAME"}`): sends a test
//!   notification to every notifier, or to the one named, once each (no retries), and
//!   answers each delivery's outcome: `{"results": [{notifier, outcome, attempts, error}]}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchyard_core::GatewayError;

use crate::app::AppState;
use crate::error::ApiError;

fn invalid(param: &str, message: impl Into<String>) -> Response {
    ApiError(GatewayError::invalid_request(message.into()).with_param(param.to_owned()))
        .into_response()
}

/// `GET /admin/alerts` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<String>,
}

/// `GET /admin/alerts`.
pub async fn list(State(app): State<AppState>, Query(params): Query<ListParams>) -> Response {
    let limit = match params.limit.as_deref() {
        None => 50,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(limit) if (1..=10_000).contains(&limit) => limit,
            _ => return invalid("limit", "must be a whole number from 1 to 10000"),
        },
    };
    Json(app.alerts.view(limit)).into_response()
}

/// `POST /admin/alerts/test` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestBody {
    notifier: Option<String>,
}

/// `POST /admin/alerts/test`.
pub async fn test(State(app): State<AppState>, body: Bytes) -> Response {
    let body: TestBody = if body.iter().all(u8::is_ascii_whitespace) {
        TestBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(error) => {
                return invalid(
                    "body",
                    format!("expected {{\"notifier\": \"NAME\"}} or no body: {error}"),
                );
            }
        }
    };
    match app.alerts.test(body.notifier.as_deref()).await {
        Some(results) => Json(json!({ "results": results })).into_response(),
        None => invalid(
            "notifier",
            format!(
                "unknown notifier `{}` (configured: {})",
                body.notifier.unwrap_or_default(),
                app.alerts.notifier_names().join(", ")
            ),
        ),
    }
}
