//! Stage 7: choosing targets and failing over between them.
//!
//! For each route of the plan (the requested route, then its fallbacks), the route's strategy
//! orders the targets that are available now (breaker admits, not drained, healthy, not
//! cooling down after a 429, under their concurrency limit); unavailable ones cost nothing.
//! Attempts then go down that order:
//! - a retryable error (connect failure, timeout, 5xx, 429) moves on to the next target at
//!   once, with no backoff, so recovering from a dead provider adds almost nothing;
//! - a route with a single target retries that target after an exponential backoff with
//!   jitter, unless it is now unavailable (for example in `Retry-After` cooldown);
//! - nothing is tried once the request deadline has passed, and a timeout caused by that
//!   deadline is not held against the target;
//! - a target whose adapter cannot express the request is skipped before anything is sent,
//!   at no cost in attempts or retry budget;
//! - any other error (400, 401, 403, 404, content policy) is the answer, never retried.
//!
//! Every retry needs the retry budget's consent, and the whole is bounded by `max_attempts`
//! and the request deadline. When nothing could be tried, the answer is a fast 503.

use std::future::Future;

use switchyard_core::config::{Objective, RoutingConfig, Target};
use switchyard_core::strategy::{self, Strategy};
use switchyard_core::{ErrorKind, GatewayError, Origin};
use tokio::time::Instant;

use switchyard_core::budget::Members;
use switchyard_core::pricing::Pricing;

use crate::budget::{Budgets, Hold, Spender};
use crate::ratelimit::{Admission, RateLimiter};
use crate::tracker::{CandidateAsk, InFlight, Tracker};
use std::sync::Arc;

/// One route of a plan.
#[derive(Debug, Clone, Copy)]
pub struct PlannedRoute<'a> {
    /// Its name, reported in `x-switchyard-route`.
    pub name: &'a str,
    /// Its targets, in config order.
    pub targets: &'a [Target],
    /// How to order them.
    pub strategy: Strategy,
    /// The latency objective `least-cost` keeps to.
    pub objective: Objective,
}

/// What the strategies need to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts {
    /// Streamed (latency is judged by time to first token).
    pub stream: bool,
    /// Estimated input tokens, for `least-cost`.
    pub input_tokens: u64,
    /// The client's output limit, for `least-cost`.
    pub max_output_tokens: Option<u32>,
    /// When the whole request must be over.
    pub deadline: Instant,
}

/// What a target must pass before it is called: the provider quotas (rate limits of scope
/// `provider`) and the budgets. A target at its quota, or over a budget, is skipped at no
/// cost, like an unavailable one.
#[derive(Clone, Copy)]
pub struct Quota<'q> {
    /// The limiter holding the quotas, when there are any.
    pub limiter: Option<&'q Arc<RateLimiter>>,
    /// Tokens to reserve (input estimate plus output limit).
    pub tokens: u64,
    /// The budgets, when any applies to the request.
    pub budget: Option<BudgetAsk<'q>>,
}

/// What a budget reservation needs.
#[derive(Clone, Copy)]
pub struct BudgetAsk<'q> {
    /// The budgets.
    pub budgets: &'q Arc<Budgets>,
    /// Who pays.
    pub spender: Spender<'q>,
    /// The prices.
    pub pricing: &'q Pricing,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// The output limit (the client's, or the default).
    pub output_tokens: u64,
}

impl BudgetAsk<'_> {
    /// Holds the most `target` can cost in every budget the attempt falls under.
    async fn reserve(&self, route: &str, target: &Target) -> Result<Option<Hold>, GatewayError> {
        let usage = switchyard_core::wire::TokenUsage {
            input: self.input_tokens,
            output: self.output_tokens,
            ..Default::default()
        };
        let most = self
            .pricing
            .cost(&target.provider.name, &target.model, &usage)
            .unwrap_or(0.0);
        let members = Members {
            key: self.spender.key,
            team: self.spender.team,
            route,
            model: &target.model,
            provider: &target.provider.name,
        };
        self.budgets.reserve(&self.spender, &members, most).await
    }
}

/// The outcome of a successful attempt.
pub struct Served<'a, T> {
    /// What the attempt produced.
    pub value: T,
    /// The target that served it.
    pub target: &'a Target,
    /// The route that target belongs to.
    pub route: &'a str,
    /// How many attempts it took, this one included.
    pub attempts: u32,
    /// The target's in-flight slot: finish it when the answer is over.
    pub in_flight: InFlight,
    /// The provider quota's charges, to settle when the answer is over.
    pub quota: Option<Admission>,
    /// The budget reservations, to settle to the answer's cost.
    pub budget: Option<Hold>,
}

/// A failure after `attempts` attempts.
#[derive(Debug)]
pub struct Failed<'a> {
    /// The error to answer with.
    pub error: GatewayError,
    /// How many attempts were made.
    pub attempts: u32,
    /// The last target tried, and its route.
    pub last: Option<(&'a Target, &'a str)>,
}

/// Runs the plan: for each target in strategy order, `prepare` builds the upstream request
/// (pure; an error there means this target's adapter cannot express the request, which costs
/// neither an attempt nor retry budget), then `attempt` sends it.
pub async fn run<'a, P, T, B, F, Fut>(
    tracker: &Tracker,
    routing: &RoutingConfig,
    plan: &[PlannedRoute<'a>],
    facts: RequestFacts,
    quota: Option<Quota<'_>>,
    mut prepare: B,
    mut attempt: F,
) -> Result<Served<'a, T>, Failed<'a>>
where
    B: FnMut(&'a Target) -> Result<P, GatewayError>,
    F: FnMut(&'a Target, P) -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    tracker.deposit();
    let mut attempts: u32 = 0;
    let mut last_error: Option<GatewayError> = None;
    let mut last = None;
    'routes: for route in plan {
        let states: Vec<_> = route
            .targets
            .iter()
            .map(|target| tracker.target(target))
            .collect();
        let views: Vec<_> = route
            .targets
            .iter()
            .zip(&states)
            .map(|(target, state)| {
                tracker.candidate(
                    target,
                    state,
                    CandidateAsk {
                        stream: facts.stream,
                        input_tokens: facts.input_tokens,
                        max_output_tokens: facts.max_output_tokens,
                        // Only `least-cost` reads prices and the latency objective.
                        by_cost: route.strategy == Strategy::LeastCost,
                        objective: route.objective.bound(facts.stream),
                    },
                )
            })
            .collect();
        let order = strategy::order(route.strategy, &views, &mut || fastrand::u64(..));
        if order.is_empty() {
            last_error.get_or_insert_with(|| {
                no_target(route.name).with_retry_after(tracker.soonest_available(route.targets))
            });
            continue;
        }
        let single = route.targets.len() == 1;
        let mut same_target_retries = 0;
        let mut position = 0;
        while let Some(&index) = order.get(position) {
            if attempts >= routing.max_attempts || Instant::now() >= facts.deadline {
                break 'routes;
            }
            let target = &route.targets[index];
            let prepared = match prepare(target) {
                Ok(prepared) => prepared,
                Err(error) => {
                    // This target's adapter cannot express the request; another might.
                    tracing::debug!(provider = %target.provider.name, error = %error, "target skipped");
                    last_error = Some(error);
                    position += 1;
                    continue;
                }
            };
            let charged = match quota.and_then(|quota| quota.limiter.map(|l| (l, quota.tokens))) {
                Some((limiter, tokens)) => {
                    match limiter
                        .admit_provider(&target.provider.name, &target.model, tokens)
                        .await
                    {
                        Ok(charged) => charged,
                        Err(error) => {
                            tracing::debug!(provider = %target.provider.name, "provider quota reached: target skipped");
                            last_error = Some(error);
                            position += 1;
                            continue;
                        }
                    }
                }
                None => None,
            };
            let held = match quota.and_then(|quota| quota.budget) {
                Some(ask) => match ask.reserve(route.name, target).await {
                    Ok(held) => held,
                    Err(error) => {
                        tracing::debug!(provider = %target.provider.name, "over budget: target skipped");
                        last_error = Some(error);
                        position += 1;
                        continue;
                    }
                },
                None => None,
            };
            let admitted = match tracker.begin(target, &states[index]) {
                Ok(admitted) => admitted,
                Err(error) => {
                    // It became unavailable since the ordering (or is cooling down after the
                    // last attempt): skip it at no cost.
                    last_error.get_or_insert(error);
                    position += 1;
                    continue;
                }
            };
            if attempts > 0 && !tracker.try_retry() {
                // Dropping `admitted` releases its slot (and probe) without a verdict.
                tracing::warn!(route = route.name, "retry budget exhausted: not retrying");
                break 'routes;
            }
            attempts += 1;
            last = Some((target, route.name));
            match attempt(target, prepared).await {
                Ok(value) => {
                    let in_flight = admitted.succeed(facts.stream);
                    return Ok(Served {
                        value,
                        target,
                        route: route.name,
                        attempts,
                        in_flight,
                        quota: charged,
                        budget: held,
                    });
                }
                Err(error) => {
                    admitted.fail(&error, facts.stream);
                    tracing::debug!(
                        provider = %target.provider.name,
                        model = %target.model,
                        error = %error,
                        attempts,
                        "attempt failed"
                    );
                    if !error.retryable {
                        return Err(Failed {
                            error,
                            attempts,
                            last,
                        });
                    }
                    last_error = Some(error);
                    let retry_same = single
                        && attempts < routing.max_attempts
                        && tracker.is_available(target, &states[index]);
                    if retry_same {
                        let delay = routing.backoff.delay(same_target_retries, fastrand::f64());
                        same_target_retries += 1;
                        if Instant::now() + delay >= facts.deadline {
                            break 'routes;
                        }
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    position += 1;
                }
            }
        }
    }
    Err(Failed {
        error: last_error.unwrap_or_else(|| GatewayError::internal("no targets to try")),
        attempts,
        last,
    })
}

fn no_target(route: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::Unavailable,
        Origin::Gateway,
        format!(
            "No provider is available for `{route}` right now: every target is drained, failing \
             its health check, cooling down after a rate limit, at its concurrency limit, or has \
             its circuit breaker open"
        ),
    )
    .with_code("no_available_provider")
}

#[cfg(test)]
mod tests;
