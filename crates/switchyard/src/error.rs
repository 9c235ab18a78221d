//! The one place where a [`GatewayError`] becomes an HTTP response: the status from its kind,
//! an OpenAI-shaped JSON body, and `Retry-After` when the provider asked for a pause.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use switchyard_core::GatewayError;

/// A [`GatewayError`] that axum can answer with.
#[derive(Debug)]
pub struct ApiError(pub GatewayError);

impl From<GatewayError> for ApiError {
    fn from(error: GatewayError) -> Self {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

/// The error class of an error response (`ErrorKind::as_str`), carried in its extensions so
/// that the accounting stage records why a request failed without guessing from the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass(pub &'static str);

/// Builds the response for an error.
pub fn error_response(error: &GatewayError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(error.to_json()));
    *response.status_mut() = status;
    response
        .extensions_mut()
        .insert(ErrorClass(error.kind.as_str()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(retry_after) = error.retry_after {
        // Round up: a client that waits the whole figure must not come back early.
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(code) = error.code.as_deref()
        && let Ok(value) = HeaderValue::from_str(code)
    {
        headers.insert("x-switchyard-error-code", value);
    }
    response
}
