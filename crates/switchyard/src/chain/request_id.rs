//! Stage 0: the request id, the per-request context and the request's root span.
//!
//! Echoes a well-formed client `x-request-id` (up to 128 visible ASCII characters) or makes a
//! new one, starts the stage timings and the deadline, and stamps `x-request-id` on every
//! response, errors included. It opens the request's root span and, when trace export is on,
//! its exported trace, which continues a client's W3C trace (see [`crate::telemetry`]); both
//! stay open until the response body is sent.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use tokio::time::Instant;

use crate::app::AppState;
use crate::context::{Principal, RequestContext};
use crate::telemetry;
use crate::timing::{SERVER_TIMING, Timings};

/// The header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// The middleware.
pub async fn request_context(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut timings = Timings::start();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .filter(|value| is_acceptable(value))
        .cloned()
        .unwrap_or_else(new_request_id);
    let span = telemetry::request_span(&request, &request_id);
    let trace = match &app.telemetry {
        Some(telemetry) => telemetry.start_request(&request, &request_id),
        None => telemetry::RequestTrace::default(),
    };
    timings.export_to(trace.clone());
    let limits = &app.config.rate_limits;
    let context = RequestContext {
        request_id: request_id.clone(),
        timings,
        deadline: Instant::now() + app.config.server.request_timeout,
        principal: Principal::Anonymous,
        event: None,
        client_ip: client_ip(&request, limits.trust_forwarded_for),
        user_header: request
            .headers()
            .get(limits.user_header.as_str())
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|user| !user.is_empty())
            .map(str::to_owned),
        rate_headers: crate::ratelimit::RateHeaders::default(),
        cache_directive: switchyard_core::cache::Directive::from_headers(request.headers()),
        cache_status: None,
        downgraded_by: None,
        tier_hint: request
            .headers()
            .get("x-switchyard-tier")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        tier: None,
        span: span.clone(),
    };
    let started = context.timings.started;
    request.extensions_mut().insert(context);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, request_id);
    if !headers.contains_key(SERVER_TIMING) {
        // A response that no stage stamped (the admin API, /metrics, health checks, a 404,
        // a caught panic): its total, so that every response carries the header.
        let mut total = String::new();
        crate::timing::push_metric(&mut total, "total", started.elapsed());
        if let Ok(value) = HeaderValue::from_str(&total) {
            headers.insert(SERVER_TIMING, value);
        }
    }
    telemetry::finish_request(span, trace, response)
}

/// The client's address: the socket peer, or, when the gateway sits behind a trusted proxy,
/// the last `X-Forwarded-For` entry (the one that proxy added; earlier ones are the client's
/// to forge).
fn client_ip(request: &Request, trust_forwarded_for: bool) -> Option<std::net::IpAddr> {
    if trust_forwarded_for
        && let Some(forwarded) = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|entry| entry.trim().parse::<std::net::IpAddr>().ok())
            .next_back()
    {
        return Some(forwarded);
    }
    request
        .extensions()
        .get::<crate::context::PeerAddr>()
        .map(|peer| peer.0.ip())
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

    #[test]
    fn client_ip_trusts_forwarded_for_only_when_told() {
        let mut request = Request::new(axum::body::Body::empty());
        request
            .extensions_mut()
            .insert(crate::context::PeerAddr("10.0.0.9:4000".parse().unwrap()));
        request.headers_mut().append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        request
            .headers_mut()
            .append("x-forwarded-for", HeaderValue::from_static("3.3.3.3"));
        assert_eq!(
            client_ip(&request, false),
            Some("10.0.0.9".parse().unwrap())
        );
        // The proxy's own entry is the last one; earlier ones are the client's to forge.
        assert_eq!(client_ip(&request, true), Some("3.3.3.3".parse().unwrap()));
        let bare = Request::new(axum::body::Body::empty());
        assert_eq!(client_ip(&bare, true), None);
    }
}
