//! Stage 1: client authentication.
//!
//! A client presents the master key or a virtual key (`sk-sy-…`), as
//! `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key` (Anthropic-style clients). The
//! master key is compared in constant time; a virtual key is found in memory by the SHA-256
//! of what was presented (see [`crate::keys`]). With a master key configured, every
//! `/v1/*` request must present a working key: a missing, wrong, revoked, disabled or expired
//! one gets a 401 here, before anything else runs, so nothing reaches a provider. Virtual
//! keys may not call the admin API or `/metrics` (403). The client's key is never forwarded
//! upstream: adapters build upstream headers from the provider's own key.

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
    let admin_path = is_admin_path(request.uri().path());
    let outcome = span.in_scope(|| {
        let presented = presented_key(request.headers());
        let master = app.config.server.master_key.as_ref();
        // The master key first: an operator may well have chosen one that starts like a
        // virtual key.
        let is_master = master
            .zip(presented)
            .is_some_and(|(master, key)| bool::from(key.ct_eq(master.expose().as_bytes())));
        let principal = match (presented, master) {
            _ if is_master => Ok(Principal::MasterKey),
            (Some(key), _) if crate::keys::Keys::is_virtual(key) => virtual_key(&app, key),
            (_, None) => Ok(Principal::Anonymous),
            (_, Some(master)) => check(presented, master.expose()),
        }?;
        if admin_path && !principal.is_admin() {
            return Err(GatewayError::new(
                ErrorKind::PermissionDenied,
                Origin::Client,
                "Virtual keys cannot call the admin API or /metrics; use the master key",
            )
            .with_code("admin_only"));
        }
        Ok(principal)
    });
    drop(span);
    let Some(context) = request.extensions_mut().get_mut::<RequestContext>() else {
        return ApiError(GatewayError::internal("request context missing")).into_response();
    };
    context.timings.lap(Stage::Auth, started);
    match outcome {
        Ok(principal) => {
            let label = principal.label().to_owned();
            let (team, tags) = match &principal {
                Principal::Key(key) => (key.settings.team.clone(), key.settings.tags.clone()),
                Principal::Anonymous | Principal::MasterKey => (None, Vec::new()),
            };
            context.record(|draft| {
                draft.principal = label;
                draft.team = team;
                draft.tags = tags;
            });
            context.principal = principal;
            next.run(request).await
        }
        Err(error) => {
            // Stamped like a handler's error: `Server-Timing` and the event's stages.
            let mut response = ApiError(error).into_response();
            crate::handlers::annotate(&mut response, context, None);
            response
        }
    }
}

fn is_admin_path(path: &str) -> bool {
    path.starts_with("/admin/") || path == "/admin" || path == "/metrics"
}

fn virtual_key(app: &AppState, presented: &[u8]) -> Result<Principal, GatewayError> {
    use crate::keys::Refused;
    use switchyard_core::keys::Unusable;
    match app.keys.authenticate(presented, crate::cache::unix_ms()) {
        Ok(key) => Ok(Principal::Key(key)),
        Err(refused) => {
            let (message, code) = match refused {
                Refused::Unknown => ("Incorrect API key provided", "invalid_api_key"),
                Refused::Unusable(Unusable::Revoked) => {
                    ("This API key has been revoked", "key_revoked")
                }
                Refused::Unusable(Unusable::Disabled) => {
                    ("This API key is disabled", "key_disabled")
                }
                Refused::Unusable(Unusable::Expired) => ("This API key has expired", "key_expired"),
            };
            Err(
                GatewayError::new(ErrorKind::Authentication, Origin::Client, message)
                    .with_code(code),
            )
        }
    }
}

/// Refuses a virtual key that may not call `route` (nor the model name it asked for): 403.
pub fn authorize_model(
    principal: &Principal,
    requested: &str,
    route: &str,
) -> Result<(), GatewayError> {
    match principal {
        Principal::Key(key) if !key.allows(route) && !key.allows(requested) => {
            Err(GatewayError::new(
                ErrorKind::PermissionDenied,
                Origin::Client,
                format!("This API key may not use the model `{requested}`"),
            )
            .with_param("model")
            .with_code("model_not_allowed"))
        }
        _ => Ok(()),
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
