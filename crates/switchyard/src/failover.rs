//! Stage 7: failover across a route's targets.
//!
//! Tries the targets in order. A retryable error (connect failure, timeout, 5xx, 429) moves
//! on to the next target; so does a target whose adapter cannot express the request (for
//! example `n > 1` on Anthropic) when another target might. Any other error is the answer.
//! When every target fails, the last error is. Backoff, circuit breakers and retry budgets
//! come with the provider manager.

use std::future::Future;

use switchyard_core::config::Target;
use switchyard_core::{GatewayError, Origin};

/// The outcome of a successful attempt.
#[derive(Debug)]
pub struct Served<'a, T> {
    /// What the attempt produced.
    pub value: T,
    /// The target that served it.
    pub target: &'a Target,
    /// How many attempts it took, this one included.
    pub attempts: u32,
}

/// A failure after `attempts` attempts.
#[derive(Debug)]
pub struct Failed {
    /// The error to answer with.
    pub error: GatewayError,
    /// How many attempts were made.
    pub attempts: u32,
}

/// Runs `attempt` against each target in turn until one succeeds or an error must stop us.
pub async fn run<'a, T, F, Fut>(
    targets: &'a [Target],
    mut attempt: F,
) -> Result<Served<'a, T>, Failed>
where
    F: FnMut(&'a Target) -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    let mut attempts = 0;
    let mut last_error = None;
    for (index, target) in targets.iter().enumerate() {
        attempts += 1;
        match attempt(target).await {
            Ok(value) => {
                return Ok(Served {
                    value,
                    target,
                    attempts,
                });
            }
            Err(error) => {
                // A client-origin error here means this target's adapter cannot express the
                // request; another target might.
                let next = index + 1 < targets.len()
                    && (error.retryable || error.origin == Origin::Client);
                tracing::debug!(
                    provider = %target.provider.name,
                    model = %target.model,
                    error = %error,
                    next,
                    "attempt failed"
                );
                last_error = Some(error);
                if !next {
                    break;
                }
            }
        }
    }
    Err(Failed {
        error: last_error.unwrap_or_else(|| GatewayError::internal("no targets to try")),
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchyard_core::ErrorKind;
    use switchyard_core::config::{Provider, Target};

    use super::*;

    fn targets(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                provider: Arc::new(Provider {
                    name: format!("p{i}"),
                    kind: "openai".into(),
                    wire: switchyard_core::provider::WireFormat::OpenAi,
                    base_url: "http://127.0.0.1:1".into(),
                    api_key: None,
                    api_version: String::new(),
                    models: vec![],
                    headers: vec![],
                }),
                model: "m".into(),
            })
            .collect()
    }

    fn upstream(kind: ErrorKind) -> GatewayError {
        GatewayError::new(kind, Origin::Upstream("p".into()), "x")
    }

    async fn outcome(results: Vec<Result<u32, GatewayError>>) -> (Result<(String, u32), u16>, u32) {
        let targets = targets(results.len());
        let mut results = results.into_iter();
        let mut tried = 0;
        let result = run(&targets, |target| {
            tried += 1;
            let next = results.next().unwrap();
            async move { next.map(|v| (target.provider.name.clone(), v)) }
        })
        .await;
        match result {
            Ok(served) => {
                assert_eq!(served.attempts, tried);
                (Ok(served.value), tried)
            }
            Err(failed) => {
                assert_eq!(failed.attempts, tried);
                (Err(failed.error.status()), tried)
            }
        }
    }

    #[tokio::test]
    async fn retryable_errors_move_on() {
        let (result, tried) = outcome(vec![Err(upstream(ErrorKind::Unavailable)), Ok(7)]).await;
        assert_eq!(result, Ok(("p1".into(), 7)));
        assert_eq!(tried, 2);
    }

    #[tokio::test]
    async fn a_non_retryable_upstream_error_is_the_answer() {
        let bad_request =
            GatewayError::new(ErrorKind::InvalidRequest, Origin::Upstream("p".into()), "x");
        let (result, tried) = outcome(vec![Err(bad_request), Ok(7)]).await;
        assert_eq!(result, Err(400));
        assert_eq!(tried, 1);
    }

    #[tokio::test]
    async fn a_target_that_cannot_express_the_request_is_skipped() {
        let (result, tried) =
            outcome(vec![Err(GatewayError::invalid_request("n > 1")), Ok(1)]).await;
        assert_eq!(result, Ok(("p1".into(), 1)));
        assert_eq!(tried, 2);
    }

    #[tokio::test]
    async fn the_last_error_is_reported_when_all_fail() {
        let (result, tried) = outcome(vec![
            Err(upstream(ErrorKind::Unavailable)),
            Err(upstream(ErrorKind::RateLimited)),
        ])
        .await;
        assert_eq!(result, Err(429));
        assert_eq!(tried, 2);
    }
}
