//! Request events: the one record every request leaves behind, whatever its outcome (served,
//! streamed, refused, failed upstream, or abandoned by the client).
//!
//! The native gateway emits them from its accounting stage when a response body finishes or
//! is dropped; analytics, metrics, budgets and alerts consume them. This module only defines
//! the record and the pure parts of analytics; it must not do I/O.
//!
//! - [`sketch`]: the mergeable latency sketch (relative-error quantiles).
//! - [`rollup`]: windowed aggregation of events into tiers and cubes.
//! - [`query`]: the analytics query and its answer, from any source of cells.

use serde::Serialize;

pub mod query;
pub mod rollup;
pub mod sketch;

pub use query::{Answer, Query, QueryError};
pub use rollup::{Aggregator, Cube, Dims, Rollup, RollupRow, Tier};
pub use sketch::Sketch;

use crate::wire::TokenUsage;

/// What a request did, in one record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestEvent {
    /// When the request arrived (unix milliseconds).
    pub time_unix_ms: u64,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// Who called (`anonymous`, `master`, later a virtual key's id).
    pub principal: String,
    /// The virtual key's tags (its free labels), for the request log.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The endpoint path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The route that served it, when one was resolved.
    pub route: Option<String>,
    /// The provider that answered (or was last tried).
    pub provider: Option<String>,
    /// The upstream model.
    pub model: Option<String>,
    /// Streamed answer.
    pub stream: bool,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Why it failed (`ErrorKind::as_str`, or `client_closed`); `None` when it succeeded.
    pub error_class: Option<String>,
    /// Token usage, normalised.
    #[serde(skip)]
    pub usage: TokenUsage,
    /// Cost in USD: 0 for a cache hit; `None` when the model's price is unknown (never a
    /// silent zero).
    pub cost_usd: Option<f64>,
    /// What a cache hit saved: the stored answer's cost at its provider's price.
    pub saved_usd: Option<f64>,
    /// Whole request, first byte in to last byte out, in microseconds.
    pub latency_us: u64,
    /// Time to the first generated token of a stream, in microseconds.
    pub ttft_us: Option<u64>,
    /// Time spent in provider calls, in microseconds.
    pub upstream_us: Option<u64>,
    /// Provider attempts made.
    pub attempts: u32,
    /// Response cache outcome (`none` until the cache exists).
    pub cache: &'static str,
    /// The rate limit that refused the request (429), when one did.
    pub rate_limit: Option<String>,
    /// Per-stage durations in microseconds, in the order the stages ran.
    pub stages: Vec<(&'static str, u64)>,
}

impl RequestEvent {
    /// `2xx`, `4xx`, `5xx`...: the status class used as a metrics label.
    pub fn status_class(&self) -> &'static str {
        match self.status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let mut event = RequestEvent {
            time_unix_ms: 0,
            request_id: String::new(),
            principal: String::new(),
            tags: Vec::new(),
            endpoint: String::new(),
            route: None,
            provider: None,
            model: None,
            stream: false,
            status: 200,
            error_class: None,
            usage: TokenUsage::default(),
            cost_usd: None,
            saved_usd: None,
            latency_us: 0,
            ttft_us: None,
            upstream_us: None,
            attempts: 0,
            cache: "none",
            rate_limit: None,
            stages: vec![],
        };
        assert_eq!(event.status_class(), "2xx");
        event.status = 429;
        assert_eq!(event.status_class(), "4xx");
        event.status = 599;
        assert_eq!(event.status_class(), "5xx");
    }
}
