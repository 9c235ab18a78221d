//! Stage 1: client authentication.
//!
//! With a master key configured, every `/v1/*` request must present it, as
//! `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key` (Anthropic-style clients). The
//! comparison is constant-time. A missing or wrong key gets a 401 here, before anything else
//! runs, so nothing reaches a provider. The client's key is never forwarded upstream: adapters
//! build upstream headers from the provider's own key.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use switchyard_core::{ErrorKind, GatewayError, Origin};

use crate::app::AppState;
use crate::context::{Principal, RequestContext};
use crate::error::ApiError;
use crate::timing::Stage;

/// The middleware.
pub async fn authenticate(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let span = match request.extensions().get::<RequestContext>() {
        Some(context) => Stage::Auth.span(&context.span),
        None => tracing::Span::none(),
    };
    let outcome = span.in_scope(|| match &app.config.server.master_key {
        None => Ok(Principal::Anonymous),
        Some(master) => check(presented_key(request.headers()), master.expose()),
    });
    drop(span);
    let Some(context) = request.extensions_mut().get_mut::<RequestContext>() else {
        return ApiError(GatewayError::internal("request context missing")).into_response();
    };
    context.timings.lap(Stage::Auth, started);
    match outcome {
        Ok(principal) => {
            let label = principal.label();
            context.record(|draft| draft.principal = label);
            context.principal = principal;
            next.run(request).await
        }
        Err(error) => ApiError(error).into_response(),
    }
}

/// The key the client presented, from `Authorization: Bearer` or `x-api-key`.
/// A Bearer token wins; otherwise `x-api-key` (a proxy may add `Authorization: Basic ...`).
fn presented_key(headers: &http::HeaderMap) -> Option<&[u8]> {
    let bearer = headers.get(http::header::AUTHORIZATION).and_then(|value| {
        let bytes = value.as_bytes();
        bytes
            .strip_prefix(b"Bearer ")
            .or_else(|| bytes.strip_prefix(b"bearer "))
            .map(<[u8]>::trim_ascii)
    });
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .map(|value| value.as_bytes().trim_ascii())
    })
}

fn check(presented: Option<&[u8]>, master: &str) -> Result<Principal, GatewayError> {
    let Some(presented) = presented.filter(|key| !key.is_empty()) else {
        return Err(GatewayError::new(
            ErrorKind::Authentication,
            Origin::Client,
            "Missing API key: pass it as `Authorization: Bearer <key>` (or `x-api-key`)",
        )
        .with_code("missing_api_key"));
    };
    if bool::from(presented.ct_eq(master.as_bytes())) {
        Ok(Principal::MasterKey)
    } else {
        Err(GatewayError::new(
            ErrorKind::Authentication,
            Origin::Client,
            "Incorrect API key provided",
        )
        .with_code("invalid_api_key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_either_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(presented_key(&headers), Some(&b"k1"[..]));
        headers.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(
            presented_key(&headers),
            Some(&b"k1"[..]),
            "not a bearer token"
        );
        headers.insert("authorization", "Bearer k2".parse().unwrap());
        assert_eq!(presented_key(&headers), Some(&b"k2"[..]));
    }

    #[test]
    fn checks_the_key() {
        assert_eq!(check(Some(b"secret"), "secret"), Ok(Principal::MasterKey));
        let wrong = check(Some(b"secreT"), "secret").unwrap_err();
        assert_eq!(wrong.status(), 401);
        assert_eq!(wrong.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(
            check(None, "secret").unwrap_err().code.as_deref(),
            Some("missing_api_key")
        );
        assert_eq!(check(Some(b""), "secret").unwrap_err().status(), 401);
    }
}
