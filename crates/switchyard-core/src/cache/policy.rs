//! What the cache does for one request: the route's policy, overridden by the request.
//!
//! | request header | lookup | store |
//! |---|---|---|
//! | (none) | yes | yes |
//! | `x-switchyard-cache: no-cache` | no | no (`BYPASS`: as if there were no cache) |
//! | `x-switchyard-cache: no-store` | yes | no |
//! | `x-switchyard-cache: refresh` | no | yes (`REFRESH`: a fresh answer replaces the old) |
//! | `Cache-Control: no-cache` | no | yes (HTTP's "revalidate": a refresh) |
//! | `Cache-Control: no-store` | yes | no |
//! | `Cache-Control: max-age=N` | only answers at most N s old | yes, for N s |
//! | `x-switchyard-cache-ttl: N` | yes | yes, for N s (0: not stored) |
//!
//! A TTL from the request can shorten the route's TTL, never lengthen it.
//!
//! A request that asks for sampling (`temperature` above 0) is not cached unless the route
//! says `sampled = true`; a request that sets no temperature counts as not sampling.

use std::time::Duration;

use http::HeaderMap;

use crate::GatewayError;
use crate::config::CachePolicy;
use crate::config::cache::MAX_TTL;

/// The per-request header that picks a cache mode.
pub const MODE_HEADER: &str = "x-switchyard-cache";

/// The per-request header that sets a TTL in seconds.
pub const TTL_HEADER: &str = "x-switchyard-cache-ttl";

/// How the cache treated a request, as sent in `x-switchyard-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Looked up, not found: served upstream (and stored when allowed).
    Miss,
    /// The cache was not used.
    Bypass,
    /// Not looked up; the fresh answer was stored.
    Refresh,
}

impl CacheStatus {
    /// The response header value.
    pub fn as_header(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Refresh => "REFRESH",
        }
    }

    /// The request event's `cache` value.
    pub fn as_event(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Refresh => "refresh",
        }
    }
}

/// The request's own cache instructions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directive {
    /// Skip the lookup.
    pub no_lookup: bool,
    /// Do not store the answer.
    pub no_store: bool,
    /// TTL of an answer this request stores.
    pub ttl: Option<Duration>,
    /// Oldest answer the request accepts.
    pub max_age: Option<Duration>,
}

impl Directive {
    /// Reads the request's cache headers. An unknown mode or a TTL that is not a whole
    /// number of seconds is a 400 naming the header.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, GatewayError> {
        let mut directive = Directive::default();
        if let Some(value) = headers.get("cache-control") {
            let value = value.to_str().unwrap_or_default();
            for token in value.split(',').map(str::trim) {
                let lower = token.to_ascii_lowercase();
                if lower == "no-cache" {
                    directive.no_lookup = true;
                } else if lower == "no-store" {
                    directive.no_store = true;
                } else if let Some(seconds) = lower.strip_prefix("max-age=") {
                    let seconds = parse_seconds(seconds, "Cache-Control max-age")?;
                    directive.max_age = Some(seconds);
                    directive.ttl = Some(seconds);
                }
                // Other directives (private, max-stale...) do not apply to a gateway cache.
            }
        }
        if let Some(value) = headers.get(MODE_HEADER) {
            match value
                .to_str()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "no-cache" => {
                    directive.no_lookup = true;
                    directive.no_store = true;
                }
                "no-store" => directive.no_store = true,
                "refresh" => directive.no_lookup = true,
                other => {
                    return Err(GatewayError::invalid_request(format!(
                        "{MODE_HEADER} must be no-cache, no-store or refresh, not `{other}`"
                    ))
                    .with_param(MODE_HEADER));
                }
            }
        }
        if let Some(value) = headers.get(TTL_HEADER) {
            directive.ttl = Some(parse_seconds(
                value.to_str().unwrap_or_default(),
                TTL_HEADER,
            )?);
        }
        Ok(directive)
    }
}

fn parse_seconds(text: &str, name: &str) -> Result<Duration, GatewayError> {
    text.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| {
            GatewayError::invalid_request(format!(
                "{name} must be a whole number of seconds, not `{}`",
                text.trim()
            ))
            .with_param(name.to_owned())
        })
}

/// What to do for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Look the answer up.
    pub lookup: bool,
    /// Store the answer when it is complete and successful.
    pub store: bool,
    /// TTL of the stored answer.
    pub ttl: Duration,
    /// Oldest answer served.
    pub max_age: Option<Duration>,
}

impl Plan {
    /// The plan under the route's `policy`, the request's `directive`, for a request that
    /// asks for sampling or not.
    pub fn new(policy: &CachePolicy, directive: &Directive, sampled: bool) -> Self {
        if !policy.enabled || (sampled && !policy.sampled) {
            return Plan::bypass();
        }
        // A request can shorten its answer's life, not lengthen it past the route's TTL
        // (with a shared scope, one client would pin answers for everyone).
        let ttl = directive
            .ttl
            .unwrap_or(policy.ttl)
            .min(policy.ttl)
            .min(MAX_TTL);
        let max_age = directive.max_age;
        Plan {
            lookup: !directive.no_lookup && max_age != Some(Duration::ZERO),
            store: !directive.no_store && !ttl.is_zero(),
            ttl,
            max_age,
        }
    }

    /// Neither looked up nor stored.
    pub fn bypass() -> Self {
        Plan {
            lookup: false,
            store: false,
            ttl: Duration::ZERO,
            max_age: None,
        }
    }

    /// The status of a request under this plan that was not served from the cache.
    pub fn miss_status(&self) -> CacheStatus {
        match (self.lookup, self.store) {
            (true, _) => CacheStatus::Miss,
            (false, true) => CacheStatus::Refresh,
            (false, false) => CacheStatus::Bypass,
        }
    }

    /// Whether the cache is used at all.
    pub fn is_active(&self) -> bool {
        self.lookup || self.store
    }
}

/// Whether a request with this `temperature` asks for sampling.
pub fn is_sampled(temperature: Option<f64>) -> bool {
    temperature.is_some_and(|t| t > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> CachePolicy {
        CachePolicy {
            enabled: true,
            ttl: Duration::from_secs(600),
            sampled: false,
        }
    }

    fn directive(pairs: &[(&'static str, &str)]) -> Result<Directive, GatewayError> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        Directive::from_headers(&headers)
    }

    fn plan(pairs: &[(&'static str, &str)]) -> Plan {
        Plan::new(&on(), &directive(pairs).unwrap(), false)
    }

    #[test]
    fn default_looks_up_and_stores_for_the_route_ttl() {
        let plan = plan(&[]);
        assert!(plan.lookup && plan.store);
        assert_eq!(plan.ttl, Duration::from_secs(600));
        assert_eq!(plan.miss_status(), CacheStatus::Miss);
    }

    #[test]
    fn modes() {
        let bypass = plan(&[(MODE_HEADER, "no-cache")]);
        assert!(!bypass.lookup && !bypass.store);
        assert_eq!(bypass.miss_status(), CacheStatus::Bypass);
        let no_store = plan(&[(MODE_HEADER, "No-Store")]);
        assert!(no_store.lookup && !no_store.store);
        let refresh = plan(&[(MODE_HEADER, "refresh")]);
        assert!(!refresh.lookup && refresh.store);
        assert_eq!(refresh.miss_status(), CacheStatus::Refresh);
    }

    #[test]
    fn cache_control() {
        let refresh = plan(&[("cache-control", "no-cache")]);
        assert!(!refresh.lookup && refresh.store);
        let no_store = plan(&[("cache-control", "private, no-store")]);
        assert!(no_store.lookup && !no_store.store);
        let max_age = plan(&[("cache-control", "max-age=30")]);
        assert!(max_age.lookup && max_age.store);
        assert_eq!(max_age.max_age, Some(Duration::from_secs(30)));
        assert_eq!(max_age.ttl, Duration::from_secs(30));
        let zero = plan(&[("cache-control", "max-age=0")]);
        assert!(!zero.lookup && !zero.store);
    }

    #[test]
    fn ttl_header() {
        assert_eq!(plan(&[(TTL_HEADER, "5")]).ttl, Duration::from_secs(5));
        assert!(!plan(&[(TTL_HEADER, "0")]).store);
        // Capped at the route's TTL.
        assert_eq!(
            plan(&[(TTL_HEADER, "999999999")]).ttl,
            Duration::from_secs(600)
        );
        assert_eq!(
            plan(&[("cache-control", "max-age=3600")]).ttl,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn bad_headers_are_client_errors_naming_the_header() {
        let error = directive(&[(MODE_HEADER, "sometimes")]).unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(error.message.contains(MODE_HEADER));
        let error = directive(&[(TTL_HEADER, "1.5")]).unwrap_err();
        assert!(error.message.contains(TTL_HEADER));
        assert!(directive(&[("cache-control", "max-age=soon")]).is_err());
    }

    #[test]
    fn disabled_route_and_sampling_bypass() {
        let off = CachePolicy {
            enabled: false,
            ..on()
        };
        assert_eq!(
            Plan::new(&off, &Directive::default(), false),
            Plan::bypass()
        );
        assert_eq!(
            Plan::new(&on(), &Directive::default(), true),
            Plan::bypass()
        );
        let sampled = CachePolicy {
            sampled: true,
            ..on()
        };
        assert!(Plan::new(&sampled, &Directive::default(), true).lookup);
        assert!(!is_sampled(None));
        assert!(!is_sampled(Some(0.0)));
        assert!(is_sampled(Some(0.7)));
    }
}
