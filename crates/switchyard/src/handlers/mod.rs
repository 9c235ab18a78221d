//! Endpoint handlers: the LLM-specific stages of the chain (route, failover, adapter,
//! transport) for each OpenAI endpoint, plus models, health and the fallbacks.

pub mod admin;
pub mod alerts;
pub mod analytics;
pub mod chat;
pub mod dashboard;
pub mod embeddings;
pub mod feedback;
pub mod keys;
pub mod meta;
pub mod spend;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Limited};
use switchyard_core::config::Target;
use switchyard_core::provider::{CallInfo, Completion, UpstreamRequest};
use switchyard_core::routing::Resolution;
use switchyard_core::{ErrorKind, GatewayError, Origin};

use crate::app::AppState;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::failover::{self, PlannedRoute, RequestFacts};
use crate::telemetry::{CallSpan, Operation};
use crate::timing::Stage;
use crate::transport::{CallLimits, UpstreamResponse};
use tracing::Instrument;

/// Reads the request body up to `limit` bytes; beyond it, a 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, GatewayError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(GatewayError::new(
                    ErrorKind::PayloadTooLarge,
                    Origin::Client,
                    format!(
                        "The request body is larger than this gateway's limit of {limit} bytes"
                    ),
                )
                .with_code("request_too_large"))
            } else {
                Err(GatewayError::invalid_request(
                    "The request body could not be read",
                ))
            }
        }
    }
}

/// What the gateway tells the client about how it served a request.
pub struct Served<'a> {
    /// The provider that answered.
    pub provider: &'a str,
    /// The upstream model that answered.
    pub model: &'a str,
    /// The route the request resolved to.
    pub route: &'a str,
    /// How many attempts it took.
    pub attempts: u32,
}

impl<'a> Served<'a> {
    /// `target` answered on `route` after `attempts` attempts.
    pub fn new(target: &'a Target, attempts: u32, route: &'a str) -> Self {
        Served {
            provider: &target.provider.name,
            model: &target.model,
            route,
            attempts,
        }
    }
}

/// The response for a handler's outcome under the request deadline: its answer, or its error
/// (or the deadline's) with the stage timings so far.
pub fn conclude(
    context: &RequestContext,
    outcome: Result<Result<Response, GatewayError>, tokio::time::error::Elapsed>,
) -> Response {
    let error = match outcome {
        Ok(Ok(response)) => return response,
        Ok(Err(error)) => error,
        Err(_) => GatewayError::new(
            ErrorKind::Timeout,
            Origin::Gateway,
            "The request did not finish within the gateway's request timeout",
        ),
    };
    let mut response = ApiError(error).into_response();
    annotate(&mut response, context, None);
    response
}

/// Stamps the `x-switchyard-*` and `Server-Timing` headers.
pub fn annotate(response: &mut Response, context: &RequestContext, served: Option<&Served<'_>>) {
    let headers = response.headers_mut();
    if let Some(served) = served {
        insert(headers, "x-switchyard-provider", served.provider);
        insert(headers, "x-switchyard-model", served.model);
        insert(headers, "x-switchyard-route", served.route);
        headers.insert(
            HeaderName::from_static("x-switchyard-attempts"),
            HeaderValue::from(served.attempts),
        );
    }
    context.rate_headers.apply(headers);
    if let Some(status) = context.cache_status {
        headers.insert(
            HeaderName::from_static("x-switchyard-cache"),
            HeaderValue::from_static(status.as_header()),
        );
    }
    if let Some((tier, reason)) = &context.tier {
        insert(headers, "x-switchyard-tier", tier);
        insert(headers, "x-switchyard-tier-reason", reason);
    }
    if let Some(budget) = &context.downgraded_by {
        insert(headers, "x-switchyard-budget-downgrade", budget);
    }
    insert(
        headers,
        crate::timing::SERVER_TIMING,
        &context.timings.server_timing(),
    );
    context.record(|draft| {
        if let Some(served) = served {
            draft.route = Some(served.route.to_owned());
            draft.provider = Some(served.provider.to_owned());
            draft.model = Some(served.model.to_owned());
            draft.attempts = served.attempts;
        }
        if let Some(status) = context.cache_status {
            draft.cache = Some(status.as_event());
        }
        draft.stages = context.timings.stages_micros();
        draft.upstream_us = context
            .timings
            .get(Stage::Upstream)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    });
}

fn insert(headers: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// Sends one provider call's request, and records the provider's status on the call's span.
pub async fn send(
    app: &AppState,
    target: &Target,
    upstream: UpstreamRequest,
    limits: CallLimits,
    call_span: &mut CallSpan,
) -> Result<UpstreamResponse, GatewayError> {
    let response = app
        .transport
        .send(&target.provider, upstream, limits)
        .await?;
    call_span.record_status(response.status());
    Ok(response)
}

/// What an adapter needs to know about one call to `target`.
pub fn call_info<'t>(target: &'t Target, now_unix: u64, request_id: &'t str) -> CallInfo<'t> {
    CallInfo {
        provider: &target.provider,
        model: &target.model,
        now_unix,
        request_id,
    }
}

/// Unix seconds now, for `created` fields.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a request goes upstream, and what it must do with the answer.
pub struct Upstream<'p, 'a> {
    /// The routes to try.
    pub plan: &'p [PlannedRoute<'a>],
    /// What failover needs to know about the request.
    pub facts: RequestFacts,
    /// Where the answer is stored, when the cache takes it.
    pub fill: Option<crate::cache::Fill>,
}

/// A non-streamed answer from the first target that serves it: `build` makes the upstream
/// request with the target's adapter, `translate` reads a 2xx answer. Each attempt runs in
/// a provider-call span for `operation`.
pub async fn complete<'a, B, T>(
    app: &AppState,
    context: &mut RequestContext,
    upstream: Upstream<'_, 'a>,
    operation: Operation,
    build: B,
    translate: T,
) -> Result<Response, GatewayError>
where
    B: Fn(&CallInfo<'_>) -> Result<UpstreamRequest, GatewayError>,
    T: Fn(&CallInfo<'_>, &[u8]) -> Result<Completion, GatewayError>,
{
    let Upstream { plan, facts, fill } = upstream;
    let now = now_unix();
    let request_id = context.request_id_str().to_owned();
    let upstream_started = std::time::Instant::now();
    let call_for = |target: &'a Target| call_info(target, now, &request_id);
    let principal = context.principal.clone();
    let trace = context.timings.trace().clone();
    let result = failover::run(
        &app.tracker,
        &app.config.routing,
        plan,
        facts,
        quota(app, &facts, &principal),
        |target| build(&call_for(target)),
        |target, mut upstream| {
            let translate = &translate;
            let call = call_for(target);
            let mut call_span = trace.call(operation, target, &mut upstream.headers);
            let span = call_span.span().clone();
            async move {
                let result = async {
                    let limits = CallLimits::for_target(target, facts.deadline);
                    let response = send(app, target, upstream, limits, &mut call_span).await?;
                    let body = app
                        .transport
                        .read_body(&target.provider, response, limits)
                        .await?;
                    let translate_started = std::time::Instant::now();
                    let completion = Stage::Translate
                        .span(call_span.span())
                        .in_scope(|| translate(&call, &body))?;
                    call_span.translated(translate_started);
                    call_span.record_usage(&completion.usage);
                    Ok((completion, translate_started.elapsed()))
                }
                .await;
                if let Err(error) = &result {
                    call_span.record_error(error);
                }
                result
            }
            .instrument(span)
        },
    )
    .instrument(Stage::Upstream.span(&context.span))
    .await;
    let upstream_ended = std::time::Instant::now();
    let upstream = upstream_ended.saturating_duration_since(upstream_started);
    match result {
        Ok(served) => {
            let (completion, translate) = served.value;
            served.in_flight.finish(&completion.usage, false, None);
            let usage = completion.usage;
            if let Some(fill) = fill {
                let answer = crate::chain::cache::answer(
                    completion.body.clone(),
                    Vec::new(),
                    usage,
                    &served.target.provider.name,
                    &served.target.model,
                );
                // A fallback route's answer is not stored as the asked route's.
                if plan.first().is_some_and(|asked| asked.name == served.route) {
                    fill.store(answer, crate::cache::unix_ms());
                } else {
                    fill.hand_over(answer, crate::cache::unix_ms());
                }
            }
            let quota = served.quota;
            let budget = served.budget;
            context.record(|draft| {
                draft.usage = usage;
                draft.admissions.extend(quota);
                draft.holds.extend(budget);
            });
            // Server-Timing's upstream leaves translation out; the span holds it (as a child).
            context.timings.record_span(
                Stage::Upstream,
                upstream.saturating_sub(translate),
                upstream_started,
                upstream_ended,
            );
            context.timings.record(Stage::Translate, translate);
            tracing::debug!(
                request_id = %request_id,
                provider = %served.target.provider.name,
                input_tokens = completion.usage.input,
                output_tokens = completion.usage.output,
                "request served"
            );
            let mut response = Response::new(Body::from(completion.body));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let cost =
                app.config
                    .pricing
                    .cost(&served.target.provider.name, &served.target.model, &usage);
            response
                .headers_mut()
                .insert(HeaderName::from_static(COST_HEADER), cost_header(cost));
            annotate(
                &mut response,
                context,
                Some(&Served::new(served.target, served.attempts, served.route)),
            );
            Ok(response)
        }
        Err(failed) => {
            context.timings.record_span(
                Stage::Upstream,
                upstream,
                upstream_started,
                upstream_ended,
            );
            Ok(failure_response(context, failed))
        }
    }
}

/// What a non-streamed answer cost (USD), or `unknown` when the model has no price. (A
/// stream's headers leave before its usage is known: its cost is in the request event.)
pub const COST_HEADER: &str = "x-switchyard-cost-usd";

/// The [`COST_HEADER`] value for `cost`.
pub fn cost_header(cost: Option<f64>) -> HeaderValue {
    match cost {
        Some(cost) => {
            let text = format!("{cost:.10}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            HeaderValue::from_str(if text.is_empty() { "0" } else { text })
                .unwrap_or(HeaderValue::from_static("0"))
        }
        None => HeaderValue::from_static("unknown"),
    }
}

/// The provider quotas to pass before each call, when any is configured.
pub fn quota<'q>(
    app: &'q AppState,
    facts: &RequestFacts,
    principal: &'q crate::context::Principal,
) -> Option<failover::Quota<'q>> {
    let output_tokens = facts
        .max_output_tokens
        .map_or(app.config.rate_limits.default_max_tokens, u64::from);
    let limiter = app.limiter.has_provider_limits().then_some(&app.limiter);
    let spender = crate::budget::Spender::of(principal);
    let budget = app
        .budgets
        .applies_to(&spender)
        .then(|| failover::BudgetAsk {
            budgets: &app.budgets,
            spender,
            pricing: &app.config.pricing,
            input_tokens: facts.input_tokens,
            output_tokens,
        });
    (limiter.is_some() || budget.is_some()).then_some(failover::Quota {
        limiter,
        tokens: facts.input_tokens.saturating_add(output_tokens),
        budget,
    })
}

/// Records the savings report's baseline: the default target (lowest priority, first in
/// the file) of the route the client asked for, or of its strongest tier.
pub fn record_baseline(app: &AppState, context: &RequestContext, resolution: &Resolution<'_>) {
    let targets = match resolution {
        Resolution::Route(route) => match route.tiers.last() {
            Some(strongest) => app
                .router
                .route(strongest)
                .map_or(&[][..], |route| route.targets.as_slice()),
            None => resolution.targets(),
        },
        Resolution::Direct { .. } => resolution.targets(),
    };
    if let Some(target) = targets.iter().min_by_key(|target| target.priority) {
        let baseline = (target.provider.name.clone(), target.model.clone());
        context.record(|draft| draft.baseline_target = Some(baseline));
    }
}

/// Stage 6, for a route with quality tiers: the classifier (or the client's
/// `x-switchyard-tier`, or the cheap tier's poor feedback) picks the tier, whose route then
/// serves the request. `chat`: `None` for requests the classifier does not read
/// (embeddings), which go to the cheapest tier unless hinted. The request is read only for
/// a tiered route.
pub fn choose_tier<'a>(
    app: &'a AppState,
    context: &mut RequestContext,
    resolution: Resolution<'a>,
    chat: Option<&switchyard_core::wire::ChatRequest>,
) -> Result<Resolution<'a>, GatewayError> {
    use switchyard_core::tiers::{Choice, Features, choose, resolve_hint};
    let Resolution::Route(route) = &resolution else {
        return Ok(resolution);
    };
    if route.tiers.is_empty() {
        return Ok(resolution);
    }
    let hint = match context.tier_hint.as_deref() {
        None => None,
        Some(hint) => Some(resolve_hint(hint, &route.tiers).ok_or_else(|| {
            GatewayError::invalid_request(format!(
                "x-switchyard-tier must be `cheap`, `strong` or one of the tiers of `{}`: {}",
                route.name,
                route.tiers.join(", ")
            ))
            .with_param("x-switchyard-tier")
        })?),
    };
    let choice = match chat {
        Some(chat) => choose(
            &route.classifier,
            &Features::of(chat),
            route.tiers.len(),
            hint,
            app.quality.mean(&route.name, &route.tiers[0]),
        ),
        None => Choice {
            tier: hint.unwrap_or(0),
            reason: if hint.is_some() {
                "hint"
            } else {
                "not classified"
            },
        },
    };
    let tier = &route.tiers[choice.tier.min(route.tiers.len() - 1)];
    tracing::debug!(route = %route.name, tier = %tier, reason = choice.reason, "tier chosen");
    let asked = route.name.clone();
    let chosen = tier.clone();
    context.record(|draft| {
        draft.asked_route = Some(asked);
        draft.tier = Some(chosen);
    });
    context.tier = Some((tier.clone(), choice.reason));
    app.router.resolve(tier)
}

/// Stage 4, before planning: a `downgrade` budget that cannot afford the request (its most
/// expensive target at the output limit) sends it to the budget's cheaper route. Returns
/// that route's name.
pub async fn downgrade(
    app: &AppState,
    context: &mut RequestContext,
    resolution: &Resolution<'_>,
    facts: &RequestFacts,
) -> Result<Option<String>, GatewayError> {
    let spender = crate::budget::Spender::of(&context.principal);
    if !app.budgets.downgrades() {
        return Ok(None);
    }
    let usage = switchyard_core::wire::TokenUsage {
        input: facts.input_tokens,
        output: facts
            .max_output_tokens
            .map_or(app.config.rate_limits.default_max_tokens, u64::from),
        ..Default::default()
    };
    let most = resolution
        .targets()
        .iter()
        .filter_map(|target| {
            app.config
                .pricing
                .cost(&target.provider.name, &target.model, &usage)
        })
        .fold(0.0, f64::max);
    let Some(downgrade) = app
        .budgets
        .downgrade(&spender, resolution.route_name(), most)
        .await?
    else {
        return Ok(None);
    };
    context.downgraded_by = Some(downgrade.budget);
    Ok(Some(downgrade.route))
}

/// Records the route that will serve (after tiers and budget downgrades), so that a request
/// refused before any attempt (a rate limit, no available provider) is filed under it too.
/// An attempt that is answered overwrites it with the route that answered.
pub fn record_route(context: &RequestContext, resolution: &Resolution<'_>) {
    let route = resolution.route_name().to_owned();
    context.record(|draft| draft.route = Some(route));
}

/// The routes to try: the resolved one, then its fallbacks (their own fallbacks are not
/// followed).
pub fn plan<'a>(app: &'a AppState, resolution: &'a Resolution<'a>) -> Vec<PlannedRoute<'a>> {
    let mut plan = Vec::with_capacity(1 + resolution.fallbacks().len());
    plan.push(PlannedRoute {
        name: resolution.route_name(),
        targets: resolution.targets(),
        strategy: resolution.strategy(),
        objective: resolution.objective(),
    });
    for name in resolution.fallbacks() {
        if let Some(route) = app.router.route(name) {
            plan.push(PlannedRoute {
                name: &route.name,
                targets: &route.targets,
                strategy: route.strategy,
                objective: route.objective,
            });
        }
    }
    plan
}

/// A rough input token count for cost estimates: about four bytes of JSON per token.
pub fn estimate_input_tokens(body: &[u8]) -> u64 {
    (body.len() / 4) as u64
}

/// The answer when every attempt failed.
pub fn failure_response(context: &RequestContext, failed: failover::Failed<'_>) -> Response {
    context.record(|draft| {
        draft.attempts = failed.attempts;
        if let Some((target, route)) = failed.last {
            draft.provider = Some(target.provider.name.clone());
            draft.model = Some(target.model.clone());
            draft.route = Some(route.to_owned());
        }
    });
    let mut response = ApiError(failed.error).into_response();
    response.headers_mut().insert(
        HeaderName::from_static("x-switchyard-attempts"),
        HeaderValue::from(failed.attempts),
    );
    annotate(&mut response, context, None);
    response
}
