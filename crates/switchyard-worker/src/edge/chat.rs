//! `POST /v1/chat/completions` and `POST /v1/embeddings` at the edge, the native chain's
//! stages in the same order:
//!
//! 1. **auth**: master key or virtual key (401 before anything else runs).
//! 2. **account**: whatever happens next, one request event goes to D1 (batched, after the
//!    response; for a stream, when it ends).
//! 3. **rate limit**: each counter's Durable Object (429 with `Retry-After` and
//!    `x-ratelimit-*`; no provider quota used).
//! 4. **cache**: the core's canonical key and plan, entries in KV (a hit still passed the
//!    limits, and records its event with the cost it saved).
//! 5. **route**: the core's router and strategy order; fallback routes' targets follow.
//! 6. **failover**: targets in order, retrying only retryable errors, at most
//!    `routing.max_attempts`; a stream fails over only before its first byte.
//! 7. **provider adapter**: the core's pure translation (OpenAI-compatible, Anthropic,
//!    Gemini), over `fetch`.
//!
//! A call that does not answer its headers within the target's `first_byte` timeout counts as
//! a retryable timeout. Streamed answers are assembled as they pass ([`StreamRecorder`]) and
//! cached like JSON ones, and replayed as a stream or returned as JSON on a hit.
//!
//! The isolate's circuit breakers leave failing targets out of the order and judge every
//! call; its peak-EWMA of each target's time to headers ranks targets for `least-latency`.
//! Not at the edge: budgets, quality tiers, and per-call provider quotas.

use std::collections::VecDeque;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_channel::oneshot;
use futures_util::future::{Either, select};
use futures_util::{Stream, StreamExt, stream};
use http::HeaderMap;
use switchyard_core::analytics::RequestEvent;
use switchyard_core::cache::policy::is_sampled;
use switchyard_core::cache::{
    CacheKey, CacheStatus, Directive, Entry, Plan, StreamRecorder, replay_chunks,
};
use switchyard_core::config::Target;
use switchyard_core::error::{ErrorKind, GatewayError, Origin};
use switchyard_core::provider::{self, CallInfo, SseEvent, StreamDecoder, StreamItem};
use switchyard_core::strategy::{self, CandidateView};
use switchyard_core::wire::{ChatRequest, EmbeddingsRequest, TokenUsage};
use worker::wasm_bindgen::JsValue;
use worker::{
    AbortController, Context, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Response,
};

use super::{
    Gateway, authenticate, error_response, internal, now_ms, now_nanos, random_u64, store,
};
use crate::auth::{self, Principal};
use crate::health::Verdict;
use crate::limits::{self, Subject};
use crate::respond;

/// The two endpoints that go to providers.
enum Call {
    /// `/v1/chat/completions`.
    Chat(Box<ChatRequest>),
    /// `/v1/embeddings`.
    Embeddings(EmbeddingsRequest),
}

impl Call {
    fn endpoint(&self) -> &'static str {
        match self {
            Call::Chat(_) => "/v1/chat/completions",
            Call::Embeddings(_) => "/v1/embeddings",
        }
    }

    fn model(&self) -> &str {
        match self {
            Call::Chat(request) => &request.model,
            Call::Embeddings(request) => &request.model,
        }
    }

    fn user(&self) -> Option<&str> {
        match self {
            Call::Chat(request) => request.user.as_deref(),
            Call::Embeddings(request) => request.user.as_deref(),
        }
    }

    fn stream(&self) -> Option<&ChatRequest> {
        match self {
            Call::Chat(request) if request.stream => Some(request),
            _ => None,
        }
    }

    fn raw(&self) -> Bytes {
        match self {
            Call::Chat(request) => request.raw.clone(),
            Call::Embeddings(request) => request.raw.clone(),
        }
        .unwrap_or_default()
    }

    /// Whether the answer may be cached at all, and whether the request asks for sampling.
    fn cacheable(&self) -> (bool, bool) {
        match self {
            Call::Chat(request) => (
                request.logprobs != Some(true),
                is_sampled(request.temperature),
            ),
            Call::Embeddings(_) => (true, false),
        }
    }

    fn upstream(&self, call: &CallInfo<'_>) -> Result<provider::UpstreamRequest, GatewayError> {
        match self {
            Call::Chat(request) => provider::chat_request(call, request),
            Call::Embeddings(request) => provider::embeddings_request(call, request),
        }
    }

    fn answer(
        &self,
        call: &CallInfo<'_>,
        body: &[u8],
    ) -> Result<provider::Completion, GatewayError> {
        match self {
            Call::Chat(request) => provider::chat_response(call, request, body),
            Call::Embeddings(request) => provider::embeddings_response(call, request, body),
        }
    }
}

/// What the request did so far: becomes its [`RequestEvent`].
#[derive(Clone)]
struct Account {
    endpoint: &'static str,
    started_ms: u64,
    request_id: String,
    principal: String,
    route: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    stream: bool,
    attempts: u32,
    cache: Option<CacheStatus>,
    rate_limit: Option<String>,
    usage: TokenUsage,
    cost_usd: Option<f64>,
    saved_usd: Option<f64>,
    upstream_ms: Option<u64>,
    ttft_ms: Option<u64>,
    /// Each stage's duration in microseconds, in the order they ran (`Server-Timing`, and the
    /// event's per-stage timings). A Worker's clock moves only across I/O, so stages without
    /// any (auth by master key, routing) read 0.
    stages: Vec<(&'static str, u64)>,
    /// When the last stage ended (unix ms).
    lap_ms: u64,
}

impl Account {
    /// Ends `stage` now; a stage that runs again (upstream, per attempt) adds up.
    fn lap(&mut self, stage: &'static str) {
        let now = now_ms();
        let micros = now.saturating_sub(self.lap_ms).saturating_mul(1_000);
        self.lap_ms = now;
        match self.stages.iter_mut().find(|(name, _)| *name == stage) {
            Some((_, total)) => *total += micros,
            None => self.stages.push((stage, micros)),
        }
    }

    /// The `Server-Timing` header so far.
    fn server_timing(&self) -> String {
        let total = now_ms()
            .saturating_sub(self.started_ms)
            .saturating_mul(1_000);
        respond::server_timing(&self.stages, total)
    }

    fn event(&self, status: u16, error_class: Option<String>) -> RequestEvent {
        let now = now_ms();
        RequestEvent {
            time_unix_ms: self.started_ms,
            request_id: self.request_id.clone(),
            principal: self.principal.clone(),
            tags: Vec::new(),
            endpoint: self.endpoint.to_owned(),
            route: self.route.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            stream: self.stream,
            status,
            error_class,
            usage: self.usage,
            cost_usd: self.cost_usd,
            saved_usd: self.saved_usd,
            latency_us: now.saturating_sub(self.started_ms).saturating_mul(1_000),
            ttft_us: self.ttft_ms.map(|ms| ms.saturating_mul(1_000)),
            upstream_us: self.upstream_ms.map(|ms| ms.saturating_mul(1_000)),
            attempts: self.attempts,
            cache: self.cache.map_or("none", CacheStatus::as_event),
            rate_limit: self.rate_limit.clone(),
            stages: self.stages.clone(),
        }
    }
}

/// A failure with the headers its answer carries.
struct Failure {
    error: GatewayError,
    headers: Vec<(&'static str, String)>,
}

impl From<GatewayError> for Failure {
    fn from(error: GatewayError) -> Self {
        Failure {
            error,
            headers: Vec::new(),
        }
    }
}

/// Handles one chat completion or embeddings request (see the module docs for the order).
pub async fn handle(
    embeddings: bool,
    req: Request,
    env: &Env,
    ctx: &Context,
    gateway: &Rc<Gateway>,
    request_id: &str,
    started_ms: u64,
) -> Result<Response, GatewayError> {
    // 1. auth: a 401 leaves no event behind, as in the native chain.
    let principal = authenticate(&req, env, gateway).await?;
    let mut account = Account {
        endpoint: if embeddings {
            "/v1/embeddings"
        } else {
            "/v1/chat/completions"
        },
        started_ms,
        request_id: request_id.to_owned(),
        principal: principal.label().to_owned(),
        route: None,
        provider: None,
        model: None,
        stream: false,
        attempts: 0,
        cache: None,
        rate_limit: None,
        usage: TokenUsage::default(),
        cost_usd: None,
        saved_usd: None,
        upstream_ms: None,
        ttft_ms: None,
        stages: Vec::new(),
        lap_ms: started_ms,
    };
    account.lap("auth");
    // 2. account: every outcome below records its event.
    match serve(embeddings, req, env, ctx, gateway, &principal, &mut account).await {
        Ok(Served::Complete(mut response, status)) => {
            store::record(ctx, env, &account.event(status, None));
            let _ = response
                .headers_mut()
                .set("server-timing", &account.server_timing());
            Ok(response)
        }
        // The stream records its own event when it ends.
        Ok(Served::Streaming(mut response)) => {
            let _ = response
                .headers_mut()
                .set("server-timing", &account.server_timing());
            Ok(response)
        }
        Err(mut failure) => {
            failure
                .headers
                .push(("server-timing", account.server_timing()));
            let class = failure.error.kind.as_str().to_owned();
            store::record(
                ctx,
                env,
                &account.event(failure.error.status(), Some(class)),
            );
            error_response(&failure.error, &failure.headers).map_err(internal)
        }
    }
}

enum Served {
    /// A complete answer and its status.
    Complete(Response, u16),
    /// A stream whose event is recorded when it ends.
    Streaming(Response),
}

async fn serve(
    embeddings: bool,
    mut req: Request,
    env: &Env,
    ctx: &Context,
    gateway: &Rc<Gateway>,
    principal: &Principal,
    account: &mut Account,
) -> Result<Served, Failure> {
    let config = &gateway.config;
    let body = req.bytes().await.map_err(internal)?;
    if body.len() > config.server.max_body_bytes {
        return Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            Origin::Client,
            format!(
                "The request body is larger than {} bytes",
                config.server.max_body_bytes
            ),
        )
        .into());
    }
    let body = Bytes::from(body);
    let request = if embeddings {
        Call::Embeddings(EmbeddingsRequest::from_bytes(body)?)
    } else {
        Call::Chat(Box::new(ChatRequest::from_bytes(body)?))
    };
    account.stream = request.stream().is_some();
    account.lap("parse");
    let resolution = gateway.router.resolve(request.model())?;
    let route = resolution.route_name().to_owned();
    account.route = Some(route.clone());
    account.lap("route");
    if !principal.allows(&route) {
        return Err(auth::forbidden_route(&route).into());
    }

    // 3. rate limit.
    let ip = req.headers().get("cf-connecting-ip").ok().flatten();
    let user_header = req
        .headers()
        .get(&config.rate_limits.user_header)
        .ok()
        .flatten();
    let subject = Subject {
        route: &route,
        user: request.user().or(user_header.as_deref()),
        ip: ip.as_deref(),
    };
    let mut decisions = Vec::new();
    for charge in limits::counters(&config.rate_limits, principal, subject) {
        let decision = store::charge(env, &charge.object, &charge.ask).await?;
        if !decision.admitted {
            account.rate_limit = Some(charge.limit.clone());
            decisions.push(decision);
            return Err(Failure {
                error: limits::refusal(&charge, &decision),
                headers: limits::headers(&decisions),
            });
        }
        decisions.push(decision);
    }
    let limit_headers = limits::headers(&decisions);
    account.lap("ratelimit");

    // Targets: the route's in strategy order, then each fallback route's.
    let mut targets: Vec<Target> = ordered(resolution.strategy(), resolution.targets(), gateway);
    for fallback in resolution.fallbacks() {
        if let Some(route) = gateway.router.route(fallback) {
            targets.extend(ordered(route.strategy, &route.targets, gateway));
        }
    }

    // 4. cache.
    let policy = gateway
        .router
        .route(&route)
        .map_or(config.cache.default, |route| route.cache);
    let (cacheable, sampled) = request.cacheable();
    let plan = if policy.enabled && cacheable {
        let mut headers = HeaderMap::new();
        for (name, value) in req.headers().entries() {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                headers.append(name, value);
            }
        }
        Plan::new(&policy, &Directive::from_headers(&headers)?, sampled)
    } else {
        Plan::bypass()
    };
    let scope = principal.cache_scope(config.cache.scope);
    let cache_key = if plan.is_active() {
        let mut namespace = String::from(request.endpoint());
        for target in resolution.targets() {
            namespace.push('\u{1f}');
            namespace.push_str(&target.provider.name);
            namespace.push('/');
            namespace.push_str(&target.model);
        }
        let raw = request.raw();
        Some(format!(
            "cache:{}",
            CacheKey::new(&namespace, &scope, &route, &raw)?.hex()
        ))
    } else {
        None
    };
    account.cache = Some(plan.miss_status());
    if plan.lookup
        && let Some(key) = &cache_key
        && let Some(entry) = store::cache_get(env, key).await?
    {
        let max_age = plan
            .max_age
            .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        if entry.is_fresh(now_ms(), max_age) && entry.route == route && entry.scope == scope {
            account.cache = Some(CacheStatus::Hit);
            account.lap("cache");
            return hit(&entry, request.stream(), gateway, account, &limit_headers);
        }
    }
    if plan.lookup {
        account.lap("cache");
    }

    // 5-7. failover over the targets.
    let max_attempts = usize::try_from(config.routing.max_attempts.max(1)).unwrap_or(1);
    let now_unix = now_ms() / 1_000;
    let mut last_error = None;
    // The calls borrow it while the account records each attempt's stages.
    let request_id = account.request_id.clone();
    for target in &targets {
        if account.attempts as usize >= max_attempts {
            break;
        }
        let name = target_name(target);
        let Some(was_probe) = gateway.breakers.borrow_mut().admit(&name, now_nanos()) else {
            continue;
        };
        let judge = |verdict| {
            gateway
                .breakers
                .borrow_mut()
                .record(&name, now_nanos(), verdict, was_probe);
        };
        account.attempts += 1;
        account.provider = Some(target.provider.name.clone());
        account.model = Some(target.model.clone());
        let call = CallInfo {
            provider: &target.provider,
            model: &target.model,
            now_unix,
            request_id: &request_id,
        };
        let upstream = request.upstream(&call)?;
        let sent_ms = now_ms();
        let result = send(&upstream, target.timeouts.first_byte).await;
        let waited_ms = now_ms().saturating_sub(sent_ms);
        account.upstream_ms = Some(account.upstream_ms.unwrap_or(0) + waited_ms);
        account.lap("upstream");
        if result.is_ok() {
            // Time to the answer's headers: what `least-latency` ranks targets by here.
            gateway.breakers.borrow_mut().observe_latency(
                &name,
                now_nanos(),
                Duration::from_millis(waited_ms),
            );
        }
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                judge(Verdict::Failed);
                last_error = Some(error.for_provider(&target.provider.name));
                continue;
            }
        };
        let status = response.status_code();
        if !(200..300).contains(&status) {
            let retry_after = response
                .headers()
                .get("retry-after")
                .ok()
                .flatten()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response.bytes().await.unwrap_or_default();
            let error = provider::error_response(&target.provider, status, retry_after, &body);
            judge(if error.retryable {
                Verdict::Failed
            } else {
                Verdict::Answered
            });
            if error.retryable {
                last_error = Some(error);
                continue;
            }
            return Err(error.into());
        }
        judge(Verdict::Answered);
        let mut headers = respond::served(
            &route,
            &target.provider.name,
            &target.model,
            account.attempts,
            Some(plan.miss_status()),
        );
        headers.extend(limit_headers.iter().cloned());
        if let Some(chat) = request.stream() {
            let fill = match (plan.store, &cache_key) {
                (true, Some(key)) => Some(Fill {
                    key: key.clone(),
                    route: route.clone(),
                    scope: scope.clone(),
                    ttl_ms: u64::try_from(plan.ttl.as_millis()).unwrap_or(u64::MAX),
                    max_bytes: config.cache.max_entry_bytes,
                }),
                _ => None,
            };
            let passing = Passing {
                call: &call,
                request: chat,
                gateway,
                target,
                fill,
            };
            return stream_answer(response, passing, env, ctx, account, &headers)
                .map(Served::Streaming);
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => {
                last_error = Some(
                    GatewayError::new(
                        ErrorKind::BadGateway,
                        Origin::Upstream(target.provider.name.clone()),
                        format!(
                            "provider {} broke off its answer: {error}",
                            target.provider.name
                        ),
                    )
                    .with_retryable(true),
                );
                continue;
            }
        };
        let completion = match request.answer(&call, &body) {
            Ok(completion) => completion,
            Err(error) if error.retryable => {
                last_error = Some(error);
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        account.usage = completion.usage;
        let cost = config
            .pricing
            .cost(&target.provider.name, &target.model, &completion.usage);
        account.cost_usd = cost;
        headers.push((respond::COST, respond::cost_text(cost)));
        if plan.store
            && let Some(key) = cache_key
        {
            let stored = now_ms();
            let ttl_ms = u64::try_from(plan.ttl.as_millis()).unwrap_or(u64::MAX);
            let entry = Entry {
                body: completion.body.clone(),
                pieces: Vec::new(),
                usage: completion.usage,
                provider: target.provider.name.clone(),
                model: target.model.clone(),
                route: route.clone(),
                scope: scope.clone(),
                stored_unix_ms: stored,
                expires_unix_ms: stored.saturating_add(ttl_ms),
            };
            if entry.weight() <= config.cache.max_entry_bytes {
                store::cache_put(ctx, env, key, &entry);
            }
        }
        let answer = super::json_response(completion.body.to_vec()).map_err(internal)?;
        set_headers(&answer, &headers)?;
        return Ok(Served::Complete(answer, 200));
    }
    Err(last_error
        .unwrap_or_else(|| {
            GatewayError::new(
                ErrorKind::Unavailable,
                Origin::Gateway,
                format!("no provider is available for `{route}`"),
            )
        })
        .into())
}

/// A target's breaker name.
fn target_name(target: &Target) -> String {
    format!("{}/{}", target.provider.name, target.model)
}

/// The available targets of a route (their breakers closed, or ready to probe) in the
/// strategy's order.
fn ordered(strategy: strategy::Strategy, targets: &[Target], gateway: &Gateway) -> Vec<Target> {
    let now = now_nanos();
    let views: Vec<CandidateView> = targets
        .iter()
        .map(|target| CandidateView {
            available: gateway
                .breakers
                .borrow()
                .available(&target_name(target), now),
            priority: target.priority,
            weight: target.weight,
            in_flight: 0,
            latency_cost: gateway
                .breakers
                .borrow()
                .latency_cost(&target_name(target), now),
            // A nominal thousand tokens each way: enough to rank targets by price.
            expected_cost: gateway
                .config
                .pricing
                .cost(
                    &target.provider.name,
                    &target.model,
                    &TokenUsage {
                        input: 1_000,
                        output: 1_000,
                        ..TokenUsage::default()
                    },
                )
                .unwrap_or(f64::MAX),
            meets_objective: true,
        })
        .collect();
    strategy::order(strategy, &views, &mut random_u64)
        .into_iter()
        .filter_map(|index| targets.get(index).cloned())
        .collect()
}

fn set_headers(
    response: &Response,
    headers: &[(&'static str, String)],
) -> Result<(), GatewayError> {
    for (name, value) in headers {
        response.headers().set(name, value).map_err(internal)?;
    }
    Ok(())
}

/// Why a call brought no answer.
enum SendError {
    /// No response headers within the first-byte timeout.
    Timeout(Duration),
    /// `fetch` failed (connection refused, reset, DNS...).
    Failed(String),
}

impl SendError {
    /// The retryable gateway error for a call to `provider`.
    fn for_provider(self, provider: &str) -> GatewayError {
        match self {
            SendError::Timeout(after) => GatewayError::new(
                ErrorKind::Timeout,
                Origin::Upstream(provider.to_owned()),
                format!(
                    "provider {provider} did not answer within {} ms",
                    after.as_millis()
                ),
            ),
            SendError::Failed(problem) => GatewayError::new(
                ErrorKind::BadGateway,
                Origin::Upstream(provider.to_owned()),
                format!("provider {provider} could not be reached: {problem}"),
            ),
        }
        .with_retryable(true)
    }
}

/// Sends an upstream request with `fetch`, giving up (and aborting it) when its headers take
/// longer than `first_byte`.
async fn send(
    upstream: &provider::UpstreamRequest,
    first_byte: Duration,
) -> Result<Response, SendError> {
    let failed = |error: worker::Error| SendError::Failed(error.to_string());
    let headers = Headers::new();
    for (name, value) in &upstream.headers {
        if let Ok(value) = value.to_str() {
            headers.set(name.as_str(), value).map_err(failed)?;
        }
    }
    let mut init = RequestInit::new();
    init.with_method(Method::from(upstream.method.as_str().to_owned()))
        .with_headers(headers);
    if !upstream.body.is_empty() {
        let body = worker::js_sys::Uint8Array::from(upstream.body.as_ref());
        init.with_body(Some(JsValue::from(body)));
    }
    let request = Request::new_with_init(&upstream.url, &init).map_err(failed)?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    let call = fetch.send_with_signal(&signal);
    let timer = Delay::from(first_byte);
    match select(pin!(call), timer).await {
        Either::Left((result, _)) => result.map_err(failed),
        Either::Right(((), _)) => {
            controller.abort();
            Err(SendError::Timeout(first_byte))
        }
    }
}

/// Answers from a cached entry: JSON as stored, or its replay as a stream.
fn hit(
    entry: &Entry,
    stream: Option<&ChatRequest>,
    gateway: &Gateway,
    account: &mut Account,
    limit_headers: &[(&'static str, String)],
) -> Result<Served, Failure> {
    account.provider = Some(entry.provider.clone());
    account.model = Some(entry.model.clone());
    account.cost_usd = Some(0.0);
    account.saved_usd = gateway
        .config
        .pricing
        .cost(&entry.provider, &entry.model, &entry.usage);
    let mut headers = respond::served(
        account.route.as_deref().unwrap_or_default(),
        &entry.provider,
        &entry.model,
        0,
        Some(CacheStatus::Hit),
    );
    headers.push((respond::COST, respond::cost_text(Some(0.0))));
    headers.extend(limit_headers.iter().cloned());
    let response = if let Some(request) = stream {
        let mut text = String::new();
        for chunk in replay_chunks(&entry.body, &entry.pieces, request.wants_stream_usage())? {
            text.push_str("data: ");
            text.push_str(&String::from_utf8_lossy(&chunk));
            text.push_str("\n\n");
        }
        text.push_str("data: [DONE]\n\n");
        let response = Response::from_bytes(text.into_bytes()).map_err(internal)?;
        response
            .headers()
            .set("content-type", "text/event-stream")
            .map_err(internal)?;
        response
    } else {
        super::json_response(entry.body.to_vec()).map_err(internal)?
    };
    set_headers(&response, &headers)?;
    Ok(Served::Complete(response, 200))
}

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>>>>;

/// Where a streamed answer is cached once it completes.
struct Fill {
    key: String,
    route: String,
    scope: String,
    ttl_ms: u64,
    max_bytes: u64,
}

/// What a stream's end sends to the `waitUntil` task: its event, and its answer to cache.
type Ended = (RequestEvent, Option<(String, Entry)>);

/// The call a stream answers.
struct Passing<'a> {
    call: &'a CallInfo<'a>,
    request: &'a ChatRequest,
    gateway: &'a Rc<Gateway>,
    target: &'a Target,
    fill: Option<Fill>,
}

/// What the stream needs to complete its event when it ends.
struct Ending {
    account: Account,
    gateway: Rc<Gateway>,
    target: Target,
    recorder: Option<(StreamRecorder, Fill)>,
    sender: oneshot::Sender<Ended>,
}

/// The state of a stream being passed through.
struct Passthrough {
    events: Events,
    decoder: StreamDecoder,
    queue: VecDeque<Vec<u8>>,
    finished: bool,
    /// Taken when the stream ends (or is dropped by a client that went away).
    ending: Option<Ending>,
}

fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

impl Passthrough {
    fn push(&mut self, items: Vec<StreamItem>) {
        for item in items {
            match item {
                StreamItem::Chunk { data, content } => {
                    if let Some(ending) = &mut self.ending {
                        if content && ending.account.ttft_ms.is_none() {
                            let started = ending.account.started_ms;
                            ending.account.ttft_ms = Some(now_ms().saturating_sub(started));
                        }
                        if let Some((recorder, _)) = &mut ending.recorder {
                            recorder.push(&data);
                        }
                    }
                    self.queue.push_back(frame(&data));
                }
                StreamItem::Done => {
                    self.queue.push_back(frame(b"[DONE]"));
                    self.finished = true;
                }
            }
        }
    }

    /// Ends the stream: the request event (with the stream's usage and cost), and the
    /// assembled answer when it completed, go to the `waitUntil` task that writes them.
    fn end(&mut self, error: Option<(u16, String)>) {
        self.finished = true;
        let Some(ending) = self.ending.take() else {
            return;
        };
        let Ending {
            mut account,
            gateway,
            target,
            recorder,
            sender,
        } = ending;
        let usage = self.decoder.usage();
        if let Some(usage) = usage {
            account.usage = usage;
            account.cost_usd =
                gateway
                    .config
                    .pricing
                    .cost(&target.provider.name, &target.model, &usage);
        }
        let fill = match (&error, recorder) {
            (None, Some((recorder, fill))) => recorder
                .finish(usage.unwrap_or_default())
                .map(|(body, pieces)| {
                    let stored = now_ms();
                    let entry = Entry {
                        body,
                        pieces,
                        usage: usage.unwrap_or_default(),
                        provider: target.provider.name.clone(),
                        model: target.model.clone(),
                        route: fill.route,
                        scope: fill.scope,
                        stored_unix_ms: stored,
                        expires_unix_ms: stored.saturating_add(fill.ttl_ms),
                    };
                    (fill.key, entry, fill.max_bytes)
                })
                .filter(|(_, entry, max_bytes)| entry.weight() <= *max_bytes)
                .map(|(key, entry, _)| (key, entry)),
            _ => None,
        };
        let (status, class) = match error {
            Some((status, class)) => (status, Some(class)),
            None => (200, None),
        };
        // The receiver lives as long as the request; a failed send has no one to tell.
        let _ = sender.send((account.event(status, class), fill));
    }

    fn fail(&mut self, error: &GatewayError) {
        self.queue.push_back(frame(&error.to_json()));
        self.end(Some((502, error.kind.as_str().to_owned())));
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        // The client went away before the end: the event says so (status as first sent).
        self.end(Some((200, "client_closed".to_owned())));
    }
}

/// Passes an upstream stream through the adapter's decoder to the client.
fn stream_answer(
    mut upstream: Response,
    passing: Passing<'_>,
    env: &Env,
    ctx: &Context,
    account: &Account,
    headers: &[(&'static str, String)],
) -> Result<Response, Failure> {
    let bytes = upstream.stream().map_err(internal)?;
    let events: Events = Box::pin(
        bytes
            .eventsource()
            .map(|event| event.map_err(|error| error.to_string())),
    );
    let (sender, receiver) = oneshot::channel::<Ended>();
    let writer_env = env.clone();
    ctx.wait_until(async move {
        if let Ok((event, fill)) = receiver.await {
            store::queue(&event);
            store::flush(&writer_env).await;
            if let Some((key, entry)) = fill {
                store::cache_store(&writer_env, key, entry).await;
            }
        }
    });
    let recorder = passing.fill.map(|fill| {
        let max = usize::try_from(fill.max_bytes).unwrap_or(usize::MAX);
        (StreamRecorder::new(max), fill)
    });
    let state = Passthrough {
        events,
        decoder: StreamDecoder::new(passing.call, passing.request),
        queue: VecDeque::new(),
        finished: false,
        ending: Some(Ending {
            account: account.clone(),
            gateway: Rc::clone(passing.gateway),
            target: passing.target.clone(),
            recorder,
            sender,
        }),
    };
    let body = stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.queue.pop_front() {
                return Some((Ok::<Vec<u8>, worker::Error>(chunk), state));
            }
            if state.finished {
                state.end(None);
                return None;
            }
            let mut items = Vec::new();
            match state.events.next().await {
                Some(Ok(event)) => {
                    let name = if event.event.is_empty() {
                        "message"
                    } else {
                        event.event.as_str()
                    };
                    let sse = SseEvent {
                        event: name,
                        data: &event.data,
                    };
                    match state.decoder.decode(sse, &mut items) {
                        Ok(()) => state.push(items),
                        Err(error) => state.fail(&error),
                    }
                }
                Some(Err(problem)) => {
                    let error = GatewayError::new(
                        ErrorKind::BadGateway,
                        Origin::Gateway,
                        format!("the provider's stream broke off: {problem}"),
                    );
                    state.fail(&error);
                }
                None => match state.decoder.finish(&mut items) {
                    Ok(()) => {
                        state.push(items);
                        state.finished = true;
                    }
                    Err(error) => state.fail(&error),
                },
            }
        }
    });
    let response = Response::from_stream(body).map_err(internal)?;
    let out = response.headers();
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
    ] {
        out.set(name, value).map_err(internal)?;
    }
    set_headers(&response, headers)?;
    Ok(response)
}
