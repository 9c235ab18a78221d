//! `/admin/*`: the operator's API, behind the master key.
//!
//! - `GET /admin/providers`: every provider and target with its health and performance
//!   (breaker state, latency, time to first token, errors, in-flight, last error).
//! - `GET /admin/ratelimits`: the rate limits, what waits or runs now, and the top offenders.
//! - `GET /admin/cache`: the response cache's entries, bytes, counters and hit rate;
//!   `DELETE /admin/cache` flushes it (`?route=NAME` or `?prefix=TEXT` for part of it).
//! - `POST /admin/providers/{name}/drain` and `/enable`: take a provider out of rotation or
//!   put it back. In-flight requests finish; new ones skip it.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_core::{ErrorKind, GatewayError, Origin};

use crate::app::AppState;
use crate::error::ApiError;

/// `GET /admin/ratelimits`: the limits, in-flight and queued counts, and the most refused
/// keys and counters (`?top=N`, default 20).
pub async fn ratelimits(
    State(app): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let top = query
        .get("top")
        .and_then(|top| top.parse::<usize>().ok())
        .unwrap_or(20)
        .min(1_000);
    Json(app.limiter.snapshot(top)).into_response()
}

/// `GET /admin/cache`.
pub async fn cache(State(app): State<AppState>) -> Response {
    match &app.cache {
        Some(cache) => Json(json!({ "enabled": true, "cache": cache.snapshot() })).into_response(),
        None => Json(json!({ "enabled": false })).into_response(),
    }
}

/// `DELETE /admin/cache[?route=NAME | ?prefix=TEXT]`: flushes this instance's memory and, when
/// the shared tier is on, Redis (every instance's memory keeps its copies until they expire
/// or are flushed there too).
pub async fn flush_cache(
    State(app): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let route = query
        .get("route")
        .map(String::as_str)
        .filter(|r| !r.is_empty());
    let prefix = query
        .get("prefix")
        .map(String::as_str)
        .filter(|p| !p.is_empty());
    if let Some(unknown) = query
        .keys()
        .find(|k| !matches!(k.as_str(), "route" | "prefix"))
    {
        return ApiError(
            GatewayError::invalid_request(format!(
                "unknown parameter `{unknown}` (use route=NAME or prefix=TEXT)"
            ))
            .with_param(unknown.clone()),
        )
        .into_response();
    }
    let Some(cache) = &app.cache else {
        return Json(json!({ "enabled": false, "flushed": { "memory": 0 } })).into_response();
    };
    match cache.flush(route, prefix).await {
        Ok(flushed) => Json(json!({ "enabled": true, "flushed": flushed })).into_response(),
        Err(error) => ApiError(GatewayError::new(
            ErrorKind::Unavailable,
            Origin::Gateway,
            format!("the cache was flushed from memory, but not from Redis: {error}"),
        ))
        .into_response(),
    }
}

/// `GET /admin/providers`.
pub async fn providers(State(app): State<AppState>) -> Response {
    Json(json!({ "providers": app.tracker.snapshot() })).into_response()
}

/// `POST /admin/providers/{name}/drain`.
pub async fn drain(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    set_drained(&app, &name, true)
}

/// `POST /admin/providers/{name}/enable`.
pub async fn enable(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    set_drained(&app, &name, false)
}

fn set_drained(app: &AppState, name: &str, drained: bool) -> Response {
    if app.tracker.set_drained(name, drained) {
        Json(json!({ "provider": name, "drained": drained })).into_response()
    } else {
        ApiError(
            GatewayError::new(
                ErrorKind::NotFound,
                Origin::Client,
                format!("There is no provider named `{name}`"),
            )
            .with_code("provider_not_found"),
        )
        .into_response()
    }
}
