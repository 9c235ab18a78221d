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
