//! `/admin/keys`: virtual keys, behind the master key.
//!
//! - `POST /admin/keys` with [`KeySettings`] fields (`name` required): creates a key and
//!   answers it with its `secret`, shown this once.
//! - `GET /admin/keys`, `GET /admin/keys/{id}`: keys without their secrets.
//! - `PATCH /admin/keys/{id}`: changes some settings (`null` clears an optional one).
//! - `DELETE /admin/keys/{id}`: revokes it for good.
//! - `POST /admin/keys/{id}/rotate`: a new secret (shown once); the old one stops working.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};
use switchyard_core::keys::{KeySettings, VirtualKey};
use switchyard_core::{ErrorKind, GatewayError, Origin};

use crate::app::AppState;
use crate::error::ApiError;
use crate::keys::KeyError;

fn error(error: KeyError) -> Response {
    let gateway = match &error {
        KeyError::NotFound(_) => {
            GatewayError::new(ErrorKind::NotFound, Origin::Client, error.to_string())
                .with_code("key_not_found")
        }
        KeyError::Invalid(_) => GatewayError::invalid_request(error.to_string()),
        KeyError::Store(_) => {
            // The admin sees what failed (never the store's URL or password); so does the log.
            tracing::warn!(%error, "a key operation failed in the store");
            GatewayError::new(ErrorKind::Unavailable, Origin::Gateway, error.to_string())
        }
    };
    ApiError(gateway).into_response()
}

fn json_body(body: &Bytes) -> Result<Value, KeyError> {
    serde_json::from_slice(body)
        .map_err(|parse| KeyError::Invalid(format!("the body is not valid JSON: {parse}")))
}

/// A key with its secret: the answer to create and rotate, the only time it is shown.
fn with_secret(key: &VirtualKey, secret: String) -> Value {
    let mut body = serde_json::to_value(key).unwrap_or_default();
    body["secret"] = Value::String(secret);
    body
}

/// `POST /admin/keys`.
pub async fn create(State(app): State<AppState>, body: Bytes) -> Response {
    let created = async {
        let settings: KeySettings = serde_json::from_value(json_body(&body)?)
            .map_err(|parse| KeyError::Invalid(format!("invalid key settings: {parse}")))?;
        app.keys.create(settings).await
    };
    match created.await {
        Ok((key, secret)) => (StatusCode::CREATED, Json(with_secret(&key, secret))).into_response(),
        Err(key_error) => error(key_error),
    }
}

/// `GET /admin/keys`.
pub async fn list(State(app): State<AppState>) -> Response {
    let keys = app.keys.list();
    let keys: Vec<&VirtualKey> = keys.iter().map(|key| &**key).collect();
    Json(json!({ "data": keys })).into_response()
}

/// `GET /admin/keys/{id}`.
pub async fn show(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.keys.get(&id) {
        Ok(key) => Json(&*key).into_response(),
        Err(key_error) => error(key_error),
    }
}

/// `PATCH /admin/keys/{id}`.
pub async fn update(State(app): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    let updated = async {
        let patch = json_body(&body)?;
        app.keys.update(&id, &patch).await
    };
    match updated.await {
        Ok(key) => Json(&*key).into_response(),
        Err(key_error) => error(key_error),
    }
}

/// `DELETE /admin/keys/{id}`.
pub async fn revoke(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.keys.revoke(&id).await {
        Ok(key) => Json(&*key).into_response(),
        Err(key_error) => error(key_error),
    }
}

/// `POST /admin/keys/{id}/rotate`.
pub async fn rotate(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    match app.keys.rotate(&id).await {
        Ok((key, secret)) => Json(with_secret(&key, secret)).into_response(),
        Err(key_error) => error(key_error),
    }
}
