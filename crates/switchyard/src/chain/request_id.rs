//! Stage 0: the request id, the per-request context and the request's root span.
//!
//! Echoes a well-formed client `x-request-id` (up to 128 visible ASCII characters) or makes a
//! new one, starts the stage timings and the deadline, and stamps `x-request-id` on every
//! response, errors included. It opens the request's root span, which continues a client's W3C
//! trace when trace export is on (see [`crate::telemetry`]), and keeps it open until the
//! response body is sent.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use tokio::time::Instant;

use crate::app::AppState;
use crate::context::{Principal, RequestContext};
use crate::telemetry;
use crate::timing::Timings;

/// The header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// The middleware.
pub async fn request_context(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let timings = Timings::start();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .filter(|value| is_acceptable(value))
        .cloned()
        .unwrap_or_else(new_request_id);
    let span = telemetry::request_span(&request, &request_id, app.config.telemetry.is_some());
    let context = RequestContext {
        request_id: request_id.clone(),
        timings,
        deadline: Instant::now() + app.config.server.request_timeout,
        principal: Principal::Anonymous,
        event: None,
        span: span.clone(),
    };
    request.extensions_mut().insert(context);
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID, request_id);
    telemetry::finish_request_span(span, response)
}

fn is_acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// A new random id: `req_` and 24 hex digits.
pub fn new_request_id() -> HeaderValue {
    let random = fastrand::u128(..) & ((1u128 << 96) - 1);
    let text = format!("req_{random:024x}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 28);
        assert!(is_acceptable(&a));
        assert!(!is_acceptable(&HeaderValue::from_static("has space")));
        assert!(!is_acceptable(
            &HeaderValue::from_str(&"x".repeat(129)).unwrap()
        ));
    }
}
