//! Stage 5: the response cache, once the request is parsed, its route known and its rate
//! limits passed (a hit still counts against them).
//!
//! [`begin`] decides the request's plan (the route's policy, the request's headers, whether
//! it samples), looks its canonical key up, and returns a hit, or a miss with the
//! [`Fill`] through which the handler stores the answer once it is complete and successful.
//! The handler answers a hit with [`json_hit`] or [`stream_hit`].

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, header};
use switchyard_core::GatewayError;
use switchyard_core::cache::{CacheKey, CacheStatus, Entry, Plan, replay_chunks};
use switchyard_core::wire::TokenUsage;
use tracing::Instrument;

use super::super::handlers::{Served, annotate};
use crate::app::AppState;
pub use crate::cache::Fill;
use crate::cache::{Lookup, unix_ms};
use crate::context::RequestContext;
use crate::timing::Stage;

/// The cache's answer for a request.
pub enum Begin {
    /// Serve this stored answer.
    Hit(Arc<Entry>),
    /// Go upstream; store the answer through the fill when there is one.
    Miss(Option<Fill>),
}

/// What the stage needs to know about the request.
pub struct Ask<'a> {
    /// The endpoint path (answers of different endpoints never mix).
    pub endpoint: &'static str,
    /// The route it resolved to.
    pub route: &'a str,
    /// The route's targets.
    pub targets: &'a [switchyard_core::config::Target],
    /// Whether it asks for sampling (`temperature` above 0).
    pub sampled: bool,
    /// Whether something about it makes its answer unfit to share (log probabilities).
    pub uncacheable: bool,
    /// The request body as sent.
    pub body: &'a [u8],
}

/// Looks the request up (see the module docs). Fails only for a malformed cache header on
/// a route whose cache is on.
pub async fn begin(
    app: &AppState,
    context: &mut RequestContext,
    ask: Ask<'_>,
) -> Result<Begin, GatewayError> {
    let Some(cache) = &app.cache else {
        return Ok(Begin::Miss(None));
    };
    let policy = app
        .router
        .route(ask.route)
        .map_or(app.config.cache.default, |route| route.cache);
    let plan = if policy.enabled && !ask.uncacheable {
        let directive = context.cache_directive.clone()?;
        Plan::new(&policy, &directive, ask.sampled)
    } else {
        Plan::bypass()
    };
    if !plan.is_active() {
        set_status(cache, context, CacheStatus::Bypass);
        return Ok(Begin::Miss(None));
    }
    let started = Instant::now();
    let scope = context.principal.cache_scope(app.config.cache.scope);
    // What answers the request is part of the key too: the endpoint, and the targets the
    // route sends to (so that a route pointed at other models, or another deployment with a
    // route of the same name sharing the Redis, never serves answers made by other models).
    let mut namespace = String::with_capacity(64);
    namespace.push_str(ask.endpoint);
    for target in ask.targets {
        namespace.push('\u{1f}');
        namespace.push_str(&target.provider.name);
        namespace.push('/');
        namespace.push_str(&target.model);
    }
    let key = CacheKey::new(&namespace, &scope, ask.route, ask.body)?;
    let lookup = cache
        .lookup(&key, &plan, unix_ms())
        .instrument(Stage::Cache.span(&context.span))
        .await;
    context.timings.lap(Stage::Cache, started);
    Ok(match lookup {
        Lookup::Hit(entry) => {
            set_status(cache, context, CacheStatus::Hit);
            Begin::Hit(entry)
        }
        Lookup::Lead(fill) => {
            set_status(cache, context, plan.miss_status());
            Begin::Miss(Some(fill))
        }
        Lookup::Miss => {
            set_status(cache, context, plan.miss_status());
            Begin::Miss(None)
        }
    })
}

fn set_status(
    cache: &crate::cache::ResponseCache,
    context: &mut RequestContext,
    status: CacheStatus,
) {
    cache.count(status);
    context.cache_status = Some(status);
}

/// A complete answer to store (its times, route and scope are set by the fill).
pub fn answer(
    body: Bytes,
    pieces: Vec<u32>,
    usage: TokenUsage,
    provider: &str,
    model: &str,
) -> Entry {
    Entry {
        body,
        pieces,
        usage,
        provider: provider.to_owned(),
        model: model.to_owned(),
        route: String::new(),
        scope: String::new(),
        stored_unix_ms: 0,
        expires_unix_ms: 0,
    }
}

/// A hit served as the stored JSON answer.
pub fn json_hit(context: &RequestContext, entry: &Entry) -> Response {
    let mut response = Response::new(Body::from(entry.body.clone()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    finish_hit(context, entry, &mut response, false);
    response
}

/// A hit served to a streaming client: the stored answer replayed as chunks, then `[DONE]`.
pub fn stream_hit(
    context: &RequestContext,
    entry: &Entry,
    include_usage: bool,
) -> Result<Response, GatewayError> {
    let chunks = replay_chunks(&entry.body, &entry.pieces, include_usage)?;
    let size = chunks.iter().map(|chunk| chunk.len() + 8).sum::<usize>() + 14;
    let mut body = BytesMut::with_capacity(size);
    for chunk in &chunks {
        body.put_slice(b"data: ");
        body.put_slice(chunk);
        body.put_slice(b"\n\n");
    }
    body.put_slice(b"data: [DONE]\n\n");
    let mut response = Response::new(Body::from(body.freeze()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    finish_hit(context, entry, &mut response, true);
    Ok(response)
}

fn finish_hit(context: &RequestContext, entry: &Entry, response: &mut Response, stream: bool) {
    let headers = response.headers_mut();
    headers.insert(
        header::AGE,
        HeaderValue::from(entry.age_ms(unix_ms()) / 1000),
    );
    // A hit costs nothing; what it saved is in its request event.
    headers.insert(
        http::HeaderName::from_static(crate::handlers::COST_HEADER),
        HeaderValue::from_static("0"),
    );
    // No provider tokens were used (token limits settle to nothing, token analytics count
    // nothing); what the stored answer cost is what the hit saved. No time to first token
    // either: it would be the cache's, not the provider's.
    let saved = entry.usage;
    context.record(|draft| {
        draft.saved_usage = saved;
        draft.stream = stream;
    });
    annotate(
        response,
        context,
        Some(&Served {
            provider: &entry.provider,
            model: &entry.model,
            route: &entry.route,
            attempts: 0,
        }),
    );
}

/// A streamed answer being recorded for the cache: stored when the stream ends cleanly,
/// dropped (releasing any waiters) when it fails, the client goes away, or the answer turns
/// out too large to keep.
pub struct Recording {
    recorder: switchyard_core::cache::StreamRecorder,
    fill: Option<Fill>,
    provider: String,
    model: String,
    /// Served by a fallback route: handed to the waiters, not stored.
    fallback: bool,
}

impl Recording {
    /// Records the stream of `provider`'s `model` for `fill`; `fallback` when a fallback
    /// route serves it.
    pub fn new(fill: Fill, provider: &str, model: &str, fallback: bool) -> Self {
        Recording {
            recorder: switchyard_core::cache::StreamRecorder::new(fill.max_bytes()),
            fill: Some(fill),
            provider: provider.to_owned(),
            model: model.to_owned(),
            fallback,
        }
    }

    /// One chunk sent to the client.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.fill.is_none() {
            return;
        }
        self.recorder.push(chunk);
        if !self.recorder.is_recording() {
            // Nothing will be stored: let the waiters go now, not when the stream ends.
            self.fill = None;
        }
    }

    /// The stream finished cleanly with `usage` (`None` when the provider reported none):
    /// store the answer if it is complete and its usage known.
    pub fn finish(self, usage: Option<TokenUsage>) {
        let (Some(fill), Some(usage)) = (self.fill, usage) else {
            return;
        };
        if let Some((body, pieces)) = self.recorder.finish(usage) {
            let answer = answer(body, pieces, usage, &self.provider, &self.model);
            if self.fallback {
                fill.hand_over(answer, unix_ms());
            } else {
                fill.store(answer, unix_ms());
            }
        }
    }
}
