//! Stage 2: accounting. Every API request leaves exactly one [`RequestEvent`], emitted
//! when its response body finishes, or when the body is dropped unfinished (the client went
//! away), or when the request is dropped before it has a response (the client went away
//! sooner). It runs outside auth, so a 401 is accounted too.
//!
//! Inner stages fill in a shared [`Draft`] through the request context (principal, route,
//! provider, usage, time to first token, stage timings); this stage adds the status and the
//! total latency and hands the event to the [`EventSink`], which never blocks.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use switchyard_core::analytics::RequestEvent;
use switchyard_core::cache::CacheStatus;
use switchyard_core::wire::TokenUsage;

use switchyard_core::budget::to_nanos;

use crate::analytics::EventSink;
use crate::analytics::spend::{SpendKey, SpendTotals};
use crate::app::AppState;
use crate::context::RequestContext;
use crate::error::ErrorClass;

/// What the inner stages know about a request, filled in as it goes.
#[derive(Debug, Default)]
pub struct Draft {
    /// Who called (see `Principal::label`).
    pub principal: String,
    /// The virtual key's tags.
    pub tags: Vec<String>,
    /// The route that served it.
    pub route: Option<String>,
    /// The provider that answered or was last tried.
    pub provider: Option<String>,
    /// The upstream model.
    pub model: Option<String>,
    /// Streamed answer.
    pub stream: bool,
    /// Token usage.
    pub usage: TokenUsage,
    /// The provider never reported the usage (a stream cut before its usage chunk): `usage`
    /// is an estimate of what was produced (token limits settle to it), and the cost is
    /// unknown rather than computed from a guess.
    pub usage_estimated: bool,
    /// A cache hit's stored answer's usage: what it saved.
    pub saved_usage: TokenUsage,
    /// Time to first token, microseconds.
    pub ttft_us: Option<u64>,
    /// Provider time, microseconds.
    pub upstream_us: Option<u64>,
    /// Attempts made.
    pub attempts: u32,
    /// Why a stream failed after its headers went out (an error response carries its own
    /// [`ErrorClass`]).
    pub error_class: Option<String>,
    /// Stage durations, microseconds.
    pub stages: Vec<(&'static str, u64)>,
    /// The rate limit that refused the request.
    pub rate_limit: Option<String>,
    /// How the response cache treated it (`none` when the cache was not involved).
    pub cache: Option<&'static str>,
    /// The rate limiter's charges (the request's, and the provider quota's of the target
    /// that served it), settled against the usage when the request ends.
    pub admissions: Vec<crate::ratelimit::Admission>,
    /// The budget reservations of the attempt that served it, settled to its cost.
    pub holds: Vec<crate::budget::Hold>,
    /// The key's team, for the spend ledger.
    pub team: Option<String>,
    /// For a tiered route: the route asked for (`route` is then the tier's).
    pub asked_route: Option<String>,
    /// For a tiered route: the tier that served.
    pub tier: Option<String>,
    /// The default target (provider, model) of the route the client asked for (its strongest
    /// tier, for a tiered route): the savings report's baseline.
    pub baseline_target: Option<(String, String)>,
}

/// The draft shared between the stages of one request. A std mutex: it is only ever held for
/// a few assignments, never across an `.await`.
pub type DraftHandle = Arc<Mutex<Draft>>;

/// Runs `update` on the draft, if the request is accounted.
pub fn update(draft: Option<&DraftHandle>, update: impl FnOnce(&mut Draft)) {
    if let Some(draft) = draft {
        let mut draft = draft
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        update(&mut draft);
    }
}

/// The middleware.
pub async fn account(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    if !is_accounted(request.uri().path()) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let time_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let draft: DraftHandle = Arc::new(Mutex::new(Draft {
        principal: "anonymous".to_owned(),
        ..Draft::default()
    }));
    let endpoint = request.uri().path().to_owned();
    let mut request_id = String::new();
    if let Some(context) = request.extensions_mut().get_mut::<RequestContext>() {
        context.event = Some(Arc::clone(&draft));
        request_id = context.request_id_str().to_owned();
    }
    let head = request.method() == http::Method::HEAD;
    // Made before the inner stages run: if the client goes away before the response's
    // headers, this future is dropped, and so is the pending event, which then emits the
    // request as abandoned (status 499, `client_closed`).
    app.events.begin();
    let mut pending = PendingEvent {
        sink: app.events.clone(),
        app: app.clone(),
        draft,
        started,
        time_unix_ms,
        request_id,
        endpoint,
        status: CLIENT_CLOSED_REQUEST,
        error_class: None,
        emitted: false,
    };
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    pending.status = parts.status.as_u16();
    pending.error_class = parts.extensions.get::<ErrorClass>().map(|class| class.0);
    if head || body.is_end_stream() {
        // Nothing to send (hyper will not poll it, and a HEAD response's body is dropped
        // unread): the request is over now.
        pending.emit(false);
    }
    Response::from_parts(
        parts,
        Body::new(AccountedBody {
            inner: body,
            pending,
        }),
    )
}

/// The status recorded for a request whose client went away before the response's headers
/// (nginx's convention; it is never sent).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The status recorded for a request the gateway cut at the end of its shutdown grace before
/// any answer (never sent either: the connection is closed).
const SHUTDOWN_CUT: u16 = 503;

/// API requests are accounted; health checks, metric scrapes, the admin API, the
/// dashboard's files and Telegram's webhook calls are not (the bot's own chat completions
/// are, as API requests).
fn is_accounted(path: &str) -> bool {
    !matches!(
        path,
        "/healthz"
            | "/readyz"
            | "/metrics"
            | "/v1/feedback"
            | "/feedback"
            | "/dashboard"
            | "/telegram/webhook"
    ) && !path.starts_with("/admin/")
        && !path.starts_with("/dashboard/")
}

/// The event of a request whose body is still being sent.
struct PendingEvent {
    sink: EventSink,
    /// For the prices.
    app: AppState,
    draft: DraftHandle,
    started: Instant,
    time_unix_ms: u64,
    request_id: String,
    endpoint: String,
    status: u16,
    /// The class of an error response, from its extensions.
    error_class: Option<&'static str>,
    emitted: bool,
}

impl PendingEvent {
    /// Emits the event once; `abandoned` when the client went away before the end.
    fn emit(&mut self, abandoned: bool) {
        if self.emitted {
            return;
        }
        self.emitted = true;
        let mut draft = std::mem::take(
            &mut *self
                .draft
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        // A request dropped before it had a response used an unknown part of its
        // reservation (the provider may have read, and will bill, the prompt): its
        // admissions are dropped unsettled, which keeps what they charged.
        let unanswered = abandoned && self.status == CLIENT_CLOSED_REQUEST;
        for admission in draft.admissions.drain(..) {
            if !unanswered {
                admission.settle(draft.usage.input.saturating_add(draft.usage.output));
            }
        }
        let closing = self.app.closing.load(std::sync::atomic::Ordering::Relaxed);
        if abandoned && closing && self.status == CLIENT_CLOSED_REQUEST {
            // Cut by the gateway at the end of its shutdown grace, before any answer.
            self.status = SHUTDOWN_CUT;
        }
        let error_class = if abandoned && closing {
            Some("shutdown".to_owned())
        } else if abandoned {
            Some("client_closed".to_owned())
        } else {
            draft
                .error_class
                .take()
                .or_else(|| self.error_class.map(str::to_owned))
        };
        let (cost_usd, saved_usd) = price(&self.app.config.pricing, &draft);
        settle_spend(
            &self.app,
            &mut draft,
            cost_usd,
            saved_usd,
            self.time_unix_ms,
        );
        if self.status == 200
            && let (Some(route), Some(model)) = (&draft.route, &draft.model)
        {
            // Remembered so that its answer can be rated (`POST /v1/feedback`).
            self.app.quality.remember(
                &self.request_id,
                crate::quality::Served {
                    principal: draft.principal.clone(),
                    route: draft.asked_route.take().unwrap_or_else(|| route.clone()),
                    tier: draft.tier.take(),
                    model: model.clone(),
                },
            );
        }
        self.sink.emit(RequestEvent {
            time_unix_ms: self.time_unix_ms,
            request_id: std::mem::take(&mut self.request_id),
            principal: draft.principal,
            tags: draft.tags,
            endpoint: std::mem::take(&mut self.endpoint),
            route: draft.route,
            provider: draft.provider,
            model: draft.model,
            stream: draft.stream,
            status: self.status,
            error_class,
            usage: draft.usage,
            cost_usd,
            saved_usd,
            latency_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            ttft_us: draft.ttft_us,
            upstream_us: draft.upstream_us,
            attempts: draft.attempts,
            cache: draft.cache.unwrap_or("none"),
            rate_limit: draft.rate_limit,
            stages: draft.stages,
        });
        self.sink.end();
    }
}

/// The request's cost and, for a cache hit, what it saved: a hit costs nothing and saves
/// what its stored answer cost; a request that used no tokens costs nothing; otherwise the
/// usage at the price of the provider and model that answered, `None` when that price is
/// unknown (counted as such by analytics, never taken as zero).
fn price(pricing: &switchyard_core::pricing::Pricing, draft: &Draft) -> (Option<f64>, Option<f64>) {
    let usage = &draft.usage;
    let priced = |usage: &TokenUsage| match (&draft.provider, &draft.model) {
        (Some(provider), Some(model)) => pricing.cost(provider, model, usage),
        _ => None,
    };
    if draft.cache == Some(CacheStatus::Hit.as_event()) {
        return (Some(0.0), priced(&draft.saved_usage));
    }
    if draft.usage_estimated {
        return (None, None);
    }
    let cost = priced(usage);
    if usage.input == 0 && usage.output == 0 {
        return (Some(0.0), None);
    }
    (cost, None)
}

/// Settles the request's budget holds to what it cost and adds it to the spend ledger. A
/// cut stream's cost is unknown for analytics, but its budgets are charged the price of the
/// estimate of what it produced: spend is never taken as zero.
fn settle_spend(
    app: &AppState,
    draft: &mut Draft,
    cost_usd: Option<f64>,
    saved_usd: Option<f64>,
    time_ms: u64,
) {
    let holds = std::mem::take(&mut draft.holds);
    let (Some(provider), Some(model)) = (&draft.provider, &draft.model) else {
        // Dropping the holds releases them: nothing was spent.
        return;
    };
    let charged = cost_usd.or_else(|| {
        draft
            .usage_estimated
            .then(|| app.config.pricing.cost(provider, model, &draft.usage))
            .flatten()
    });
    for hold in holds {
        hold.settle(charged.unwrap_or(0.0));
    }
    let savings = savings(app, draft, provider, model, charged);
    app.budgets.record(
        SpendKey {
            bucket_ms: crate::analytics::spend::bucket(time_ms),
            key: draft.principal.clone(),
            team: draft.team.clone().unwrap_or_default(),
            route: draft.route.clone().unwrap_or_default(),
            model: model.clone(),
            provider: provider.clone(),
        },
        &SpendTotals {
            cost_nanos: to_nanos(charged.unwrap_or(0.0)),
            saved_nanos: to_nanos(saved_usd.unwrap_or(0.0)),
            requests: 1,
            unpriced: i64::from(charged.is_none()),
            input_tokens: i64::try_from(draft.usage.input).unwrap_or(i64::MAX),
            output_tokens: i64::try_from(draft.usage.output).unwrap_or(i64::MAX),
            baseline_nanos: savings.baseline,
            default_nanos: savings.default,
            hit_baseline_nanos: savings.hit_baseline,
        },
    );
}

/// What a request is compared with in the savings report, nano-dollars.
#[derive(Debug, Default)]
struct Savings {
    baseline: i64,
    default: i64,
    hit_baseline: i64,
}

/// The request's baseline (its usage at the default target of the route asked for, with no
/// cache) and, when it went upstream, its usage at the default target of the route that
/// served it. The same token counts are priced at each (another model would have produced
/// other counts: an approximation, stated in the report). A price that is not known makes
/// that comparison the request's own cost: no saving is claimed that cannot be priced.
fn savings(
    app: &AppState,
    draft: &Draft,
    provider: &str,
    model: &str,
    charged: Option<f64>,
) -> Savings {
    let pricing = &app.config.pricing;
    if draft.cache == Some(CacheStatus::Hit.as_event()) {
        let saved = pricing.cost(provider, model, &draft.saved_usage);
        let baseline = draft
            .baseline_target
            .as_ref()
            .and_then(|(p, m)| pricing.cost(p, m, &draft.saved_usage))
            .or(saved)
            .map_or(0, to_nanos);
        return Savings {
            baseline,
            default: 0,
            hit_baseline: baseline,
        };
    }
    let Some(actual) = charged else {
        return Savings::default();
    };
    let default = draft
        .route
        .as_deref()
        .and_then(|route| app.router.route(route))
        .and_then(|route| route.targets.iter().min_by_key(|target| target.priority))
        .and_then(|target| pricing.cost(&target.provider.name, &target.model, &draft.usage))
        .unwrap_or(actual);
    let baseline = draft
        .baseline_target
        .as_ref()
        .and_then(|(p, m)| pricing.cost(p, m, &draft.usage))
        .unwrap_or(default);
    Savings {
        baseline: to_nanos(baseline),
        default: to_nanos(default),
        hit_baseline: 0,
    }
}

impl Drop for PendingEvent {
    fn drop(&mut self) {
        // Dropped before the body ended: the client disconnected (or the server is going away).
        self.emit(true);
    }
}

pin_project_lite::pin_project! {
    /// A response body that emits the request event when it ends.
    struct AccountedBody {
        #[pin]
        inner: Body,
        pending: PendingEvent,
    }
}

impl HttpBody for AccountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        // A body of known length may never be polled to `None`: it ends when it says so.
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.pending.emit(false);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
