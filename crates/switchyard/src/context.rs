//! The one typed per-request context, created by the outermost stage and handed down the
//! chain. Stages add to it (the principal, timings); handlers take it to build the answer.

use axum::extract::FromRequestParts;
use http::HeaderValue;
use http::request::Parts;
use switchyard_core::GatewayError;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::timing::Timings;

/// The peer address of the connection a request came on, set by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// No client auth is configured (loopback-only gateway).
    Anonymous,
    /// The client presented the master key.
    MasterKey,
    /// The client presented a virtual key.
    Key(std::sync::Arc<switchyard_core::keys::VirtualKey>),
}

impl Principal {
    /// A stable label for logs, analytics and per-key limits: `anonymous`, `master`, or the
    /// virtual key's id.
    pub fn label(&self) -> &str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::MasterKey => "master",
            Principal::Key(key) => &key.id,
        }
    }

    /// The tenant scope of cached answers under `scope`: the key's own, or its team's (a key
    /// without a team keeps its own), or everyone's.
    pub fn cache_scope(&self, scope: switchyard_core::config::CacheScope) -> String {
        use switchyard_core::config::CacheScope;
        match (scope, self) {
            (CacheScope::Global, _) => "global".to_owned(),
            (CacheScope::Team, Principal::Key(key)) if key.settings.team.is_some() => {
                format!("team:{}", key.settings.team.as_deref().unwrap_or_default())
            }
            _ => format!("key:{}", self.label()),
        }
    }

    /// The priority class for load shedding: a virtual key's own, else normal.
    pub fn priority(&self) -> switchyard_core::ratelimit::shed::Priority {
        match self {
            Principal::Key(key) => key.settings.priority.priority(),
            Principal::Anonymous | Principal::MasterKey => {
                switchyard_core::ratelimit::shed::Priority::Normal
            }
        }
    }

    /// Whether it may call the admin API and `/metrics` (virtual keys may not).
    pub fn is_admin(&self) -> bool {
        !matches!(self, Principal::Key(_))
    }
}

/// Everything the chain knows about one request. (`Clone` only because request extensions
/// require it; the chain moves it, it does not share it.)
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request id, echoed in `x-request-id`.
    pub request_id: HeaderValue,
    /// Stage durations, for `Server-Timing`, and the request's exported trace (a no-op
    /// unless trace export is on).
    pub timings: Timings,
    /// When the whole request, stream included, must be over.
    pub deadline: Instant,
    /// Set by the auth stage.
    pub principal: Principal,
    /// The accounting stage's draft event, filled in by the stages after it.
    pub event: Option<crate::chain::account::DraftHandle>,
    /// The client's address (the socket's, or `X-Forwarded-For`'s last entry when trusted).
    pub client_ip: Option<std::net::IpAddr>,
    /// The end user named by the configured header, if any.
    pub user_header: Option<String>,
    /// The `x-ratelimit-*` figures for the response.
    pub rate_headers: crate::ratelimit::RateHeaders,
    /// The request's cache headers, read (an unreadable one is refused only where the cache
    /// is on).
    pub cache_directive: Result<switchyard_core::cache::Directive, GatewayError>,
    /// How the cache treated the request, for `x-switchyard-cache`.
    pub cache_status: Option<switchyard_core::cache::CacheStatus>,
    /// The budget that sent the request to a cheaper route, for
    /// `x-switchyard-budget-downgrade`.
    pub downgraded_by: Option<String>,
    /// The client's `x-switchyard-tier` header.
    pub tier_hint: Option<String>,
    /// The tier a tiered route chose, and why, for `x-switchyard-tier(-reason)`.
    pub tier: Option<(String, &'static str)>,
    /// The request's root span; the stages' spans are its children. It is passed down here
    /// rather than entered around the whole request, which would cost an enter and an exit
    /// on every poll.
    pub span: tracing::Span,
}

impl RequestContext {
    /// Updates the draft request event, if this request is accounted.
    pub fn record(&self, update: impl FnOnce(&mut crate::chain::account::Draft)) {
        crate::chain::account::update(self.event.as_ref(), update);
    }

    /// The request id as text (ids are generated or checked to be visible ASCII).
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("invalid")
    }
}

/// Extractor that takes the context out of the request: one owner at a time.
pub struct TakenContext(pub RequestContext);

impl<S: Send + Sync> FromRequestParts<S> for TakenContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .remove::<RequestContext>()
            .map(TakenContext)
            .ok_or_else(|| ApiError(GatewayError::internal("request context missing")))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchyard_core::config::CacheScope;
    use switchyard_core::keys::{KeySettings, PriorityName, VirtualKey};
    use switchyard_core::ratelimit::shed::Priority;

    use super::Principal;

    fn key(id: &str, team: Option<&str>) -> Principal {
        Principal::Key(Arc::new(VirtualKey {
            id: id.to_owned(),
            hash: [0; 32],
            prefix: String::new(),
            settings: KeySettings {
                name: id.to_owned(),
                team: team.map(str::to_owned),
                priority: PriorityName::Low,
                enabled: true,
                ..KeySettings::default()
            },
            created_at_ms: 0,
            updated_at_ms: 0,
            revoked_at_ms: None,
        }))
    }

    #[test]
    fn cache_scopes_keep_tenants_apart() {
        let a = key("key_a", Some("red"));
        let b = key("key_b", Some("red"));
        let c = key("key_c", None);
        assert_ne!(
            a.cache_scope(CacheScope::Key),
            b.cache_scope(CacheScope::Key)
        );
        assert_eq!(
            a.cache_scope(CacheScope::Team),
            b.cache_scope(CacheScope::Team)
        );
        assert_eq!(
            c.cache_scope(CacheScope::Team),
            "key:key_c",
            "no team: its own"
        );
        assert_ne!(
            Principal::MasterKey.cache_scope(CacheScope::Key),
            a.cache_scope(CacheScope::Key)
        );
        assert_eq!(a.cache_scope(CacheScope::Global), "global");
    }

    #[test]
    fn a_key_brings_its_priority_and_no_admin_rights() {
        assert_eq!(key("k", None).priority(), Priority::Low);
        assert_eq!(Principal::MasterKey.priority(), Priority::Normal);
        assert!(!key("k", None).is_admin());
        assert!(Principal::MasterKey.is_admin());
    }
}
