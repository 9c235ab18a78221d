//! What every answer carries: the gateway's response headers, spelled as the native gateway
//! spells them.

use switchyard_core::cache::CacheStatus;

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";
/// The provider that answered.
pub const PROVIDER: &str = "x-switchyard-provider";
/// The upstream model that answered.
pub const MODEL: &str = "x-switchyard-model";
/// The route that was resolved.
pub const ROUTE: &str = "x-switchyard-route";
/// Provider attempts made.
pub const ATTEMPTS: &str = "x-switchyard-attempts";
/// `HIT`, `MISS`, `BYPASS` or `REFRESH`.
pub const CACHE: &str = "x-switchyard-cache";
/// What a non-streamed answer cost (USD), or `unknown`.
pub const COST: &str = "x-switchyard-cost-usd";

/// The cost header's value: USD with at most ten decimals and no trailing zeros, or
/// `unknown` when the model has no price (never a silent zero).
pub fn cost_text(cost: Option<f64>) -> String {
    match cost {
        Some(cost) => {
            let text = format!("{cost:.10}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            if text.is_empty() {
                "0".to_owned()
            } else {
                text.to_owned()
            }
        }
        None => "unknown".to_owned(),
    }
}

/// The headers of an answer served by a provider or the cache, as (name, value) pairs.
pub fn served(
    route: &str,
    provider: &str,
    model: &str,
    attempts: u32,
    cache: Option<CacheStatus>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (ROUTE, route.to_owned()),
        (PROVIDER, provider.to_owned()),
        (MODEL, model.to_owned()),
        (ATTEMPTS, attempts.to_string()),
    ];
    if let Some(cache) = cache {
        headers.push((CACHE, cache.as_header().to_owned()));
    }
    headers
}

/// The `Server-Timing` header of an answer: each stage's duration (microseconds in, shown in
/// milliseconds with three decimals, as the native gateway writes it), then the total.
pub fn server_timing(stages: &[(&str, u64)], total_us: u64) -> String {
    let mut header = String::new();
    for (name, micros) in stages.iter().copied().chain([("total", total_us)]) {
        if !header.is_empty() {
            header.push_str(", ");
        }
        header.push_str(&format!(
            "{name};dur={}.{:03}",
            micros / 1000,
            micros % 1000
        ));
    }
    header
}

/// A request id from 16 random bytes: 32 lowercase hex digits.
pub fn request_id(random: &[u8; 16]) -> String {
    switchyard_core::cache::key::hex(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_short_and_never_a_silent_zero() {
        assert_eq!(cost_text(Some(0.000_015)), "0.000015");
        assert_eq!(cost_text(Some(0.0)), "0");
        assert_eq!(cost_text(Some(2.5)), "2.5");
        assert_eq!(cost_text(None), "unknown");
    }

    #[test]
    fn server_timing_lists_the_stages_then_the_total() {
        assert_eq!(
            server_timing(
                &[("auth", 0), ("ratelimit", 3_250), ("upstream", 41_000)],
                45_001
            ),
            "auth;dur=0.000, ratelimit;dur=3.250, upstream;dur=41.000, total;dur=45.001"
        );
        assert_eq!(server_timing(&[], 7), "total;dur=0.007");
    }

    #[test]
    fn served_headers_name_route_provider_model_attempts_and_cache() {
        let headers = served("chat", "alpha", "m", 2, Some(CacheStatus::Hit));
        assert!(headers.contains(&(ATTEMPTS, "2".to_owned())));
        assert!(headers.contains(&(CACHE, "HIT".to_owned())));
        assert_eq!(request_id(&[0xab; 16]).len(), 32);
    }
}
