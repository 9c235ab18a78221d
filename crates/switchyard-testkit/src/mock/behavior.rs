//! How the mock misbehaves for one request.
//!
//! A [`Behavior`] is plain data: the dispatcher reads it and decides. It is serde so the
//! control API (`POST /__mock/behavior`, `POST /__mock/script`) can take it as JSON from the
//! Python SDK tests and the load harness. This module must not do I/O or sleep.

use serde::{Deserialize, Serialize};

/// Seed mixed into the error-rate draw, so the failure pattern is fixed across runs.
const ERROR_RATE_SEED: u64 = 0x5157_1c4a_2d00_0001;

/// What the mock does to one request. Every field defaults to "behave normally".
///
/// The order the dispatcher applies them in: `hang`, then `latency_ms`, then `reset`, then
/// `error_status`, then `error_rate`; a request that survives all of them gets a normal answer,
/// paced by `ttft_ms` / `chunk_delay_ms` and cut by `reset_after_chunks` when it streams.
/// `retry_after_s` is added to whatever response goes out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behavior {
    /// Delay before the response headers, in milliseconds.
    pub latency_ms: u64,
    /// Streams only: delay after the headers and before the first chunk, in milliseconds.
    pub ttft_ms: u64,
    /// Streams only: delay between two chunks, in milliseconds.
    pub chunk_delay_ms: u64,
    /// Answer with this status and an error body in the wire format's shape.
    pub error_status: Option<u16>,
    /// Adds a `Retry-After` header with this many seconds to the response; together with
    /// `error_status: 429` this is the rate-limit case.
    pub retry_after_s: Option<u64>,
    /// Streams only: send this many SSE events, then abort the connection so the client sees
    /// an incomplete body. 0 aborts right after the headers.
    pub reset_after_chunks: Option<u32>,
    /// Close the connection without sending any response at all.
    pub reset: bool,
    /// Never answer. The request is dropped when the mock shuts down.
    pub hang: bool,
    /// Fraction (0..=1) of requests that fail with 500. The draw is seeded by the request's
    /// call number, so the same sequence of requests fails the same way on every run.
    pub error_rate: f64,
    /// Answer with this text instead of the one derived from the prompt.
    pub answer: Option<String>,
}

impl Behavior {
    /// Answers every request with `status` and a wire-format error body.
    pub fn status(status: u16) -> Self {
        Self {
            error_status: Some(status),
            ..Self::default()
        }
    }

    /// Answers with 429 and `Retry-After: retry_after_s`.
    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self {
            error_status: Some(429),
            retry_after_s: Some(retry_after_s),
            ..Self::default()
        }
    }

    /// Waits `latency_ms` before the response headers.
    pub fn latency(latency_ms: u64) -> Self {
        Self {
            latency_ms,
            ..Self::default()
        }
    }

    /// Closes the connection without a response.
    pub fn connection_reset() -> Self {
        Self {
            reset: true,
            ..Self::default()
        }
    }

    /// Streams `chunks` SSE events, then aborts the connection.
    pub fn reset_after_chunks(chunks: u32) -> Self {
        Self {
            reset_after_chunks: Some(chunks),
            ..Self::default()
        }
    }

    /// Never answers.
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::default()
        }
    }

    /// Answers with `text` instead of the text derived from the prompt.
    pub fn answer(text: impl Into<String>) -> Self {
        Self {
            answer: Some(text.into()),
            ..Self::default()
        }
    }

    /// Checks the values a typo or a bad harness could get wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate must be within 0..=1, got {}",
                self.error_rate
            ));
        }
        if let Some(status) = self.error_status.filter(|s| !(100..=999).contains(s)) {
            return Err(format!(
                "error_status must be an HTTP status code, got {status}"
            ));
        }
        Ok(())
    }

    /// Whether the request with this call number (1-based, since the last reset) falls in the
    /// `error_rate` fraction. Pure, so the failure pattern is reproducible.
    pub(crate) fn fails_by_error_rate(&self, call_number: u64) -> bool {
        if self.error_rate <= 0.0 {
            return false;
        }
        // A fresh generator per call number (rather than one shared generator) keeps the draw
        // lock-free and independent of how concurrent requests interleave.
        let mut rng = fastrand::Rng::with_seed(ERROR_RATE_SEED ^ call_number);
        rng.f64() < self.error_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_fields_default_from_empty_json() {
        let behavior: Behavior = serde_json::from_str("{}").unwrap();
        assert_eq!(behavior, Behavior::default());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let error = serde_json::from_str::<Behavior>(r#"{"latency":5}"#).unwrap_err();
        assert!(error.to_string().contains("latency"), "{error}");
    }

    #[test]
    fn error_rate_is_reproducible_and_close_to_the_fraction() {
        let behavior = Behavior {
            error_rate: 0.25,
            ..Behavior::default()
        };
        let first: Vec<bool> = (1..=1000)
            .map(|n| behavior.fails_by_error_rate(n))
            .collect();
        let second: Vec<bool> = (1..=1000)
            .map(|n| behavior.fails_by_error_rate(n))
            .collect();
        assert_eq!(first, second);
        let failures = first.iter().filter(|failed| **failed).count();
        assert!((200..=300).contains(&failures), "{failures} failures");
    }

    #[test]
    fn error_rate_bounds() {
        let never = Behavior::default();
        let always = Behavior {
            error_rate: 1.0,
            ..Behavior::default()
        };
        assert!((1..=100).all(|n| !never.fails_by_error_rate(n)));
        assert!((1..=100).all(|n| always.fails_by_error_rate(n)));
    }

    #[test]
    fn validate_names_the_field() {
        let error = Behavior {
            error_rate: 2.0,
            ..Behavior::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.contains("error_rate"));
        assert!(
            Behavior::status(42)
                .validate()
                .unwrap_err()
                .contains("error_status")
        );
        assert!(Behavior::rate_limited(3).validate().is_ok());
    }
}
