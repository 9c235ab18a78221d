//! `POST /v1/chat/completions`: stages 6 to 9 of the chain for chat, streamed or not.
//!
//! Parse → route (model → targets) → failover over the targets, each attempt being adapter
//! (build) → transport (send) → adapter (translate). A stream is committed to a target only
//! once that target has produced its first event, so a provider that fails before its first
//! byte is failed over like any other; after that, a failure ends the stream with an
//! OpenAI-style error event, never a silent truncation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use eventsource_stream::Event;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, header};
use switchyard_core::cache::policy::is_sampled;
use switchyard_core::config::Target;
use switchyard_core::provider::{
    self, CallInfo, SseEvent, StreamDecoder, StreamItem, UpstreamRequest,
};
use switchyard_core::wire::{ChatRequest, TokenUsage};
use switchyard_core::{ErrorKind, GatewayError, Origin};
use tokio::time::timeout_at;
use tracing::Instrument;

use super::{Served, annotate, now_unix, read_body};
use crate::app::AppState;
use crate::chain::account::{self, DraftHandle};
use crate::chain::cache::{self, Begin, Recording};
use crate::chain::rate_limit;
use crate::context::{RequestContext, TakenContext};
use crate::failover::{self, PlannedRoute, RequestFacts};
use crate::telemetry::{CallSpan, Operation};
use crate::timing::Stage;
use crate::tracker::InFlight;
use crate::transport;
use crate::transport::CallLimits;

/// The handler.
pub async fn chat_completions(
    State(app): State<AppState>,
    TakenContext(mut context): TakenContext,
    body: Body,
) -> Response {
    let outcome = timeout_at(context.deadline, handle(&app, &mut context, body)).await;
    super::conclude(&context, outcome)
}

async fn handle(
    app: &AppState,
    context: &mut RequestContext,
    body: Body,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let (body, request) = async {
        let body = read_body(body, app.config.server.max_body_bytes).await?;
        let request = ChatRequest::from_bytes(body.clone())?;
        Ok::<_, GatewayError>((body, request))
    }
    .instrument(Stage::Parse.span(&context.span))
    .await?;
    let started = context.timings.lap(Stage::Parse, started);

    let resolution = Stage::Route
        .span(&context.span)
        .in_scope(|| app.router.resolve(&request.model))?;
    context.timings.lap(Stage::Route, started);
    crate::chain::auth::authorize_model(
        &context.principal,
        &request.model,
        resolution.route_name(),
    )?;
    let facts = RequestFacts {
        stream: request.stream,
        input_tokens: super::estimate_input_tokens(&body),
        max_output_tokens: request.output_limit(),
        deadline: context.deadline,
    };
    super::record_baseline(app, context, &resolution);
    let resolution = super::choose_tier(app, context, resolution, Some(&request))?;
    let cheaper = super::downgrade(app, context, &resolution, &facts).await?;
    let resolution = match &cheaper {
        Some(route) => app.router.resolve(route)?,
        None => resolution,
    };
    super::record_route(context, &resolution);
    let plan = super::plan(app, &resolution);
    rate_limit::admit(
        app,
        context,
        rate_limit::Ask {
            model: resolution.route_name(),
            user: request.user.as_deref(),
            input_tokens: facts.input_tokens,
            max_output_tokens: facts.max_output_tokens,
        },
    )
    .await?;
    let fill = match cache::begin(
        app,
        context,
        cache::Ask {
            endpoint: "/v1/chat/completions",
            route: resolution.route_name(),
            targets: resolution.targets(),
            sampled: is_sampled(request.temperature),
            uncacheable: request.logprobs == Some(true),
            body: &body,
        },
    )
    .await?
    {
        Begin::Hit(entry) if request.stream => {
            return cache::stream_hit(context, &entry, request.wants_stream_usage());
        }
        Begin::Hit(entry) => return Ok(cache::json_hit(context, &entry)),
        Begin::Miss(fill) => fill.map(cache::Fill::for_chat),
    };

    if request.stream {
        stream(app, context, &request, &plan, facts, fill).await
    } else {
        super::complete(
            app,
            context,
            super::Upstream {
                plan: &plan,
                facts,
                fill,
            },
            Operation::Chat,
            |call| provider::chat_request(call, &request),
            |call, body| provider::chat_response(call, &request, body),
        )
        .await
    }
}

/// A stream whose provider has produced its first event.
struct StartedStream {
    decoder: StreamDecoder,
    events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, GatewayError>> + Send>>,
    pending: VecDeque<StreamItem>,
    /// The target's in-flight slot, held until the stream ends.
    in_flight: Option<InFlight>,
    /// The request's draft event (time to first token, usage, mid-stream failure).
    draft: Option<DraftHandle>,
    /// When the gateway got the request, for time to first token.
    request_started: Instant,
    /// Whether generated output has been sent yet.
    first_token_sent: bool,
    /// Chunks with generated output sent so far (about one token each), and the prompt's
    /// estimate: what the usage is taken to be if the stream ends before reporting it.
    content_chunks: u64,
    input_estimate: u64,
    /// The provider call's span, open until the stream ends.
    call_span: CallSpan,
    /// The answer being recorded for the cache, when this request stores it.
    recording: Option<Recording>,
}

impl StartedStream {
    /// The usage the provider reported, or, when it reported none (OpenAI sends it last, so
    /// a stream cut short has none), an estimate of what was produced: `(usage, estimated)`.
    fn usage(&self) -> (TokenUsage, bool) {
        match self.decoder.usage() {
            Some(usage) => (usage, false),
            None => (
                TokenUsage {
                    input: self.input_estimate,
                    output: self.content_chunks,
                    ..TokenUsage::default()
                },
                true,
            ),
        }
    }
}

impl Drop for StartedStream {
    fn drop(&mut self) {
        // The client went away mid-stream: account for what was produced so far.
        if self.in_flight.is_some() {
            let (usage, estimated) = self.usage();
            account::update(self.draft.as_ref(), |draft| {
                draft.usage = usage;
                draft.usage_estimated = estimated;
            });
            self.call_span.record_usage(&usage);
        }
    }
}

/// A streamed answer.
async fn stream<'a>(
    app: &AppState,
    context: &mut RequestContext,
    request: &ChatRequest,
    plan: &[PlannedRoute<'a>],
    facts: RequestFacts,
    fill: Option<cache::Fill>,
) -> Result<Response, GatewayError> {
    let now = now_unix();
    let request_id = context.request_id_str().to_owned();
    let upstream_started = Instant::now();
    let call_for = |target: &'a Target| super::call_info(target, now, &request_id);
    let principal = context.principal.clone();
    let trace = context.timings.trace().clone();
    let result = failover::run(
        &app.tracker,
        &app.config.routing,
        plan,
        facts,
        super::quota(app, &facts, &principal),
        |target| provider::chat_request(&call_for(target), request),
        |target, mut upstream| {
            let call = call_for(target);
            let mut call_span = trace.call(Operation::Chat, target, &mut upstream.headers);
            let span = call_span.span().clone();
            async move {
                let result =
                    start_stream(app, &call, request, target, upstream, facts, &mut call_span)
                        .await;
                match result {
                    // The call goes on with the stream.
                    Ok(mut started) => {
                        started.call_span = call_span;
                        Ok(started)
                    }
                    Err(error) => {
                        call_span.record_error(&error);
                        Err(error)
                    }
                }
            }
            .instrument(span)
        },
    )
    .instrument(Stage::Upstream.span(&context.span))
    .await;
    context
        .timings
        .record(Stage::Upstream, upstream_started.elapsed());
    let served = match result {
        Ok(served) => served,
        Err(failed) => return Ok(super::failure_response(context, failed)),
    };
    let provider_name = served.target.provider.name.clone();
    let mut started = served.value;
    started.in_flight = Some(served.in_flight);
    started.draft = context.event.clone();
    started.request_started = context.timings.started;
    let fallback = plan.first().is_some_and(|asked| asked.name != served.route);
    started.recording =
        fill.map(|fill| Recording::new(fill, &provider_name, &served.target.model, fallback));
    let quota = served.quota;
    let budget = served.budget;
    context.record(|draft| {
        draft.stream = true;
        draft.admissions.extend(quota);
        draft.holds.extend(budget);
    });
    let body = Body::from_stream(sse_body(started, provider_name, request_id));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    annotate(
        &mut response,
        context,
        Some(&Served::new(served.target, served.attempts, served.route)),
    );
    Ok(response)
}

fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("text/event-stream"))
}

fn empty_stream(provider: &str, what: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::BadGateway,
        Origin::Upstream(provider.to_owned()),
        format!("provider {provider} {what}"),
    )
}

fn sse(event: &Event) -> SseEvent<'_> {
    SseEvent {
        event: if event.event.is_empty() {
            "message"
        } else {
            &event.event
        },
        data: &event.data,
    }
}

/// The client's SSE body: pending items first, then upstream events as they come.
fn sse_body(
    started: StartedStream,
    provider: String,
    request_id: String,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    futures_util::stream::unfold(Some((started, provider, request_id)), |state| async move {
        let (mut started, provider, request_id) = state?;
        loop {
            if let Some(item) = started.pending.pop_front() {
                if matches!(item, StreamItem::Chunk { content: true, .. }) {
                    started.content_chunks += 1;
                }
                if !started.first_token_sent
                    && matches!(item, StreamItem::Chunk { content: true, .. })
                {
                    started.first_token_sent = true;
                    let ttft = u64::try_from(started.request_started.elapsed().as_micros())
                        .unwrap_or(u64::MAX);
                    account::update(started.draft.as_ref(), |draft| draft.ttft_us = Some(ttft));
                }
                let done = matches!(item, StreamItem::Done);
                if let (Some(recording), StreamItem::Chunk { data, .. }) =
                    (started.recording.as_mut(), &item)
                {
                    recording.push(data);
                }
                let frame = frame(&item);
                if done {
                    log_stream_end(&mut started, &provider, &request_id, None);
                    return Some((Ok(frame), None));
                }
                return Some((Ok(frame), Some((started, provider, request_id))));
            }
            let mut out = Vec::new();
            let step = match started.events.next().await {
                Some(Ok(event)) => started.decoder.decode(sse(&event), &mut out),
                Some(Err(error)) => Err(error),
                None => started.decoder.finish(&mut out),
            };
            match step {
                Ok(()) => {
                    if out.is_empty() && started.pending.is_empty() {
                        // An event with nothing to forward (ping, message_start...).
                        continue;
                    }
                    started.pending.extend(out);
                }
                Err(error) => {
                    log_stream_end(&mut started, &provider, &request_id, Some(&error));
                    return Some((Ok(error_frame(&error)), None));
                }
            }
        }
    })
}

/// Sends a stream request to `target` and waits for its first output: a stream that has not
/// produced any is a failed attempt, so that failover can still move on.
async fn start_stream(
    app: &AppState,
    call: &CallInfo<'_>,
    request: &ChatRequest,
    target: &Target,
    upstream: UpstreamRequest,
    facts: RequestFacts,
    call_span: &mut CallSpan,
) -> Result<StartedStream, GatewayError> {
    let limits = CallLimits::for_target(target, facts.deadline);
    let response = super::send(app, target, upstream, limits, call_span).await?;
    if !is_event_stream(response.headers()) {
        // A 200 with a JSON error body (some compatible servers do this) is a failure.
        let _ = app
            .transport
            .read_body(&target.provider, response, limits)
            .await;
        return Err(empty_stream(
            &target.provider.name,
            "answered without an event stream",
        ));
    }
    let mut started = StartedStream {
        decoder: StreamDecoder::new(call, request),
        events: Box::pin(transport::events(
            Arc::clone(&target.provider),
            response,
            limits,
        )),
        pending: VecDeque::new(),
        in_flight: None,
        draft: None,
        request_started: Instant::now(),
        first_token_sent: false,
        content_chunks: 0,
        input_estimate: facts.input_tokens,
        call_span: CallSpan::default(),
        recording: None,
    };
    // Commit to this target only once it has produced output (or finished cleanly).
    while started.pending.is_empty() {
        match started.events.next().await {
            Some(Ok(event)) => {
                let mut out = Vec::new();
                started.decoder.decode(sse(&event), &mut out)?;
                started.pending.extend(out);
            }
            Some(Err(error)) => return Err(error),
            None => {
                let mut out = Vec::new();
                started.decoder.finish(&mut out)?;
                started.pending.extend(out);
                break;
            }
        }
    }
    if matches!(started.pending.front(), Some(StreamItem::Done)) {
        return Err(empty_stream(
            &target.provider.name,
            "ended the stream without any output",
        ));
    }
    Ok(started)
}

/// The stream is over: settle the target's in-flight slot and log.
fn log_stream_end(
    started: &mut StartedStream,
    provider: &str,
    request_id: &str,
    error: Option<&GatewayError>,
) {
    let (usage, estimated) = started.usage();
    if let Some(in_flight) = started.in_flight.take() {
        in_flight.finish(&usage, true, error);
    }
    if let Some(recording) = started.recording.take()
        && error.is_none()
    {
        recording.finish(started.decoder.usage());
    }
    account::update(started.draft.as_ref(), |draft| {
        draft.usage = usage;
        draft.usage_estimated = estimated;
        if let Some(error) = error {
            draft.error_class = Some(error.kind.as_str().to_owned());
        }
    });
    started.call_span.record_usage(&usage);
    if let Some(error) = error {
        started.call_span.record_error(error);
    }
    // The provider call is over.
    started.call_span = CallSpan::default();
    match error {
        None => tracing::debug!(
            request_id,
            provider,
            input_tokens = usage.input,
            output_tokens = usage.output,
            "chat stream served"
        ),
        Some(error) => {
            tracing::warn!(request_id, provider, error = %error, "chat stream failed mid-way")
        }
    }
}

fn frame(item: &StreamItem) -> Bytes {
    match item {
        StreamItem::Chunk { data, .. } => {
            let mut frame = BytesMut::with_capacity(data.len() + 8);
            frame.put_slice(b"data: ");
            frame.put_slice(data);
            frame.put_slice(b"\n\n");
            frame.freeze()
        }
        StreamItem::Done => Bytes::from_static(b"data: [DONE]\n\n"),
    }
}

/// A mid-stream failure, as OpenAI sends it: an `error` object in a data event.
fn error_frame(error: &GatewayError) -> Bytes {
    let mut frame = BytesMut::with_capacity(160);
    frame.put_slice(b"data: ");
    frame.put_slice(&error.to_json());
    frame.put_slice(b"\n\n");
    frame.freeze()
}
