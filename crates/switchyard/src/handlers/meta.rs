//! `GET /v1/models`, health and readiness, and the OpenAI-shaped 404 and 405 fallbacks.

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, Uri, header};
use switchyard_core::{ErrorKind, GatewayError, Origin};

use crate::app::AppState;
use crate::error::ApiError;

fn json(body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /v1/models`: routes and the providers' exact model names (built at start-up).
pub async fn list_models(State(app): State<AppState>) -> Response {
    json(app.models_body.clone())
}

/// `GET /v1/models/{model}`: one model, if the gateway can route it.
pub async fn get_model(State(app): State<AppState>, Path(model): Path<String>) -> Response {
    match app.router.resolve(&model) {
        Ok(resolution) => {
            let owned_by = match resolution.targets() {
                [only] => only.provider.name.clone(),
                _ => "switchyard".to_owned(),
            };
            let body = serde_json::json!({"id": model, "object": "model", "created": 0, "owned_by": owned_by});
            json(body.to_string())
        }
        Err(error) => ApiError(error).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(app): State<AppState>) -> Response {
    // Scrape-time gauges: breaker state and in-flight per target.
    for provider in app.tracker.snapshot() {
        for target in provider.targets {
            let labels = crate::analytics::TargetLabels {
                provider: provider.name.clone(),
                model: target.model.clone(),
            };
            let state = match target.breaker {
                "closed" => 0,
                "half-open" => 1,
                _ => 2,
            };
            app.metrics.breaker_state.get_or_create(&labels).set(state);
            app.metrics
                .in_flight
                .get_or_create(&labels)
                .set(i64::from(target.in_flight));
        }
    }
    if let Some(cache) = &app.cache {
        cache.refresh_gauges();
    }
    let stats = &app.analytics.stats;
    for (gauge, value) in [
        (&app.metrics.analytics_memory, &stats.memory_bytes),
        (&app.metrics.analytics_pending, &stats.pending),
    ] {
        let value = value.load(Ordering::Relaxed);
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    }
    // Running totals: the counters add what they gained since the last scrape.
    app.metrics
        .analytics_store_failures
        .follow(stats.flush_failures.load(Ordering::Relaxed));
    app.metrics
        .analytics_lost
        .follow(stats.lost.load(Ordering::Relaxed));
    let dropped = app.events.counts().dropped.load(Ordering::Relaxed);
    let mut text = app.metrics.render(dropped, &app.connections);
    app.alerts.render_metrics(&mut text);
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Response {
    json(r#"{"status":"ok"}"#)
}

/// `GET /readyz`: the gateway accepts traffic (503 while draining for shutdown).
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.ready.load(Ordering::Relaxed) {
        json(r#"{"status":"ready"}"#)
    } else {
        let mut response = json(r#"{"status":"draining"}"#);
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
    }
}

/// Any unknown path.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError(
        GatewayError::new(
            ErrorKind::NotFound,
            Origin::Client,
            format!(
                "Unknown request URL: {method} {}. This gateway serves POST /v1/chat/completions, \
                 POST /v1/embeddings and GET /v1/models",
                uri.path()
            ),
        )
        .with_code("unknown_url"),
    )
    .into_response()
}

/// A known path with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError(
        GatewayError::new(
            ErrorKind::MethodNotAllowed,
            Origin::Client,
            format!("Method {method} is not allowed on {}", uri.path()),
        )
        .with_code("method_not_allowed"),
    )
    .into_response()
}
