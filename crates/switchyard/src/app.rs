//! The application: its shared state and the router, where the chain's order is fixed.

use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use bytes::Bytes;
use switchyard_core::clock::Clock;
use switchyard_core::config::Config;
use switchyard_core::routing::ModelRouter;

use crate::analytics::store::Store;
use crate::analytics::{self, Analytics, EventSink, Metrics};
use crate::cache::ResponseCache;
use crate::chain::{account, auth, request_id};
use crate::handlers::{
    admin, alerts as alerts_api, analytics as analytics_api, chat, dashboard, embeddings, feedback,
    keys as keys_api, meta, spend,
};
use crate::ratelimit::RateLimiter;
use crate::tracker::{TokioClock, Tracker};
use crate::transport::Transport;
use std::time::Duration;
use switchyard_core::analytics::RequestEvent;
use switchyard_core::config::Secret;
use tokio::sync::mpsc;

/// The shared state: built once at start-up, cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What every request reads.
pub struct AppInner {
    /// The validated config.
    pub config: Config,
    /// Model name → targets.
    pub router: ModelRouter,
    /// The pooled upstream client.
    pub transport: Transport,
    /// Health and performance of every provider and target, and the retry budget.
    pub tracker: Tracker,
    /// `GET /v1/models`, serialised once.
    pub models_body: Bytes,
    /// False once shutdown has begun (`/readyz` answers 503).
    pub ready: AtomicBool,
    /// True once the shutdown grace is over: requests ended now were cut by the gateway,
    /// not by their clients.
    pub closing: AtomicBool,
    /// Where request events go (never blocks).
    pub events: EventSink,
    /// The receiving end, taken by the background task when serving starts.
    pub event_receiver: Mutex<Option<mpsc::Receiver<RequestEvent>>>,
    /// Prometheus metrics, fed by the events.
    pub metrics: Arc<Metrics>,
    /// Rollups, the request log and their store.
    pub analytics: Arc<Analytics>,
    /// Client connections open now.
    pub connections: AtomicI64,
    /// Rate limits and load shedding.
    pub limiter: Arc<RateLimiter>,
    /// The response cache, when any route caches.
    pub cache: Option<Arc<ResponseCache>>,
    /// Virtual keys.
    pub keys: Arc<crate::keys::Keys>,
    /// Budgets and the spend ledger.
    pub budgets: Arc<crate::budget::Budgets>,
    /// Quality feedback.
    pub quality: crate::quality::Quality,
    /// Alert rules, their state, notifiers and history.
    pub alerts: Arc<crate::alerts::Alerts>,
    /// The Telegram bot, when `[telegram]` is configured.
    pub telegram: Option<Arc<crate::telegram::Bot>>,
    /// Trace export, when `[telemetry]` is configured; stopped (and flushed) when serving
    /// ends.
    pub telemetry: Option<crate::telemetry::Telemetry>,
}

impl AppState {
    /// Builds the state from a validated config, opening the analytics store.
    pub async fn new(config: Config) -> Result<Self, String> {
        Self::with_clock(config, Arc::new(TokioClock::new())).await
    }

    /// Builds the state with the given clock for breakers, cooldowns and latency estimates
    /// (tests drive it by hand).
    pub async fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let store = Store::open(&config.storage)
            .await
            .map_err(|error| format!("analytics store: {error}"))?;
        let analytics = Arc::new(Analytics::new(store.clone(), config.analytics.clone()));
        let router = ModelRouter::new(&config);
        let models_body = serde_json::to_vec(&router.list())
            .map(Bytes::from)
            .map_err(|error| format!("could not encode the model list: {error}"))?;
        let transport = Transport::new(config.upstream, &config.providers)?;
        let telemetry = config
            .telemetry
            .as_ref()
            .map(crate::telemetry::Telemetry::start)
            .transpose()?;
        let metrics = Arc::new(Metrics::new());
        let limiter = Arc::new(RateLimiter::new(
            &config.rate_limits,
            config.storage.redis_url.as_ref().map(Secret::expose),
            // A concurrency slot outlives a crashed instance by at most this.
            config.server.request_timeout + Duration::from_secs(30),
            Arc::clone(&clock),
            metrics.rate_limits.clone(),
        )?);
        // Connect to Redis before serving, so the first requests do not each wait for it.
        limiter.warm_up().await;
        let cache = if config.cache.any_enabled {
            Some(ResponseCache::new(
                &config.cache,
                config.storage.redis_url.as_ref().map(Secret::expose),
                metrics.cache.clone(),
            )?)
        } else {
            None
        };
        let keys = crate::keys::Keys::open_storage(&config.storage)
            .await
            .map_err(|error| error.to_string())?;
        let budgets = crate::budget::Budgets::new(
            &config.budgets,
            store,
            config.storage.redis_url.as_ref().map(Secret::expose),
            config.rate_limits.store_timeout,
            // A reservation outlives a crashed instance by at most this.
            config.server.request_timeout + Duration::from_secs(30),
            metrics.budgets.clone(),
            Arc::new(crate::cache::unix_ms),
        )?;
        let quality = crate::quality::Quality::new(metrics.quality.clone());
        let alerts = crate::alerts::Alerts::new(
            &config.alerts,
            &config.storage,
            Arc::new(crate::cache::unix_ms),
        )
        .await
        .map_err(|error| format!("alerts: {error}"))?;
        let telegram = match &config.telegram {
            Some(telegram) => Some(Arc::new(crate::telegram::Bot::new(
                telegram,
                config.storage.data_dir.as_deref(),
            )?)),
            None => None,
        };
        let tracker = Tracker::new(&config, clock);
        let (events, event_receiver) = analytics::channel();
        Ok(AppState(Arc::new(AppInner {
            config,
            router,
            transport,
            tracker,
            events,
            event_receiver: Mutex::new(Some(event_receiver)),
            metrics,
            limiter,
            cache,
            keys,
            budgets,
            quality,
            alerts,
            telegram,
            analytics,
            connections: AtomicI64::new(0),
            models_body,
            ready: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            telemetry,
        })))
    }
}

impl AppState {
    /// A handle that does not keep the state alive (for background tasks that should end
    /// with it).
    pub fn downgrade(&self) -> std::sync::Weak<AppInner> {
        Arc::downgrade(&self.0)
    }

    /// The state behind `weak`, while it lives.
    pub fn upgrade(weak: &std::sync::Weak<AppInner>) -> Option<AppState> {
        weak.upgrade().map(AppState)
    }
}

/// The HTTP router. The chain runs outermost first:
///
/// 0. request id and context (every route);
/// 2. account (`/v1/*`): outside auth and the panic catch, so that a 401 or a panic is
///    accounted too;
/// 0. panic catch;
/// 1. auth (`/v1/*`, `/admin/*`, `/metrics`);
/// 4. budget downgrade, 3. rate limit and 5. cache: called by the handlers once the body is
///    parsed and the route known (4. budget reservations: by failover, per attempt);
/// 6. route, 7. failover, 8. adapter, 9. transport: inside the handlers.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/chat/completions", post(chat::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/feedback", post(feedback::feedback))
        .route("/feedback", post(feedback::feedback))
        .route("/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(meta::list_models))
        .route("/v1/models/{*model}", get(meta::get_model))
        .route("/metrics", get(meta::metrics))
        .route("/admin/providers", get(admin::providers))
        .route("/admin/analytics", get(analytics_api::analytics))
        .route("/admin/analytics/status", get(analytics_api::status))
        .route("/admin/requests", get(analytics_api::requests))
        .route("/admin/ratelimits", get(admin::ratelimits))
        .route("/admin/cache", get(admin::cache).delete(admin::flush_cache))
        .route("/admin/keys", get(keys_api::list).post(keys_api::create))
        .route(
            "/admin/keys/{id}",
            get(keys_api::show)
                .patch(keys_api::update)
                .delete(keys_api::revoke),
        )
        .route("/admin/keys/{id}/rotate", post(keys_api::rotate))
        .route("/admin/spend", get(spend::spend))
        .route("/admin/budgets", get(spend::budgets))
        .route("/admin/quality", get(feedback::quality))
        .route("/admin/cost/savings", get(spend::savings))
        .route("/admin/alerts", get(alerts_api::list))
        .route("/admin/alerts/test", post(alerts_api::test))
        .route("/admin/providers/{name}/drain", post(admin::drain))
        .route("/admin/providers/{name}/enable", post(admin::enable))
        .route_layer(from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .merge(api)
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/dashboard", get(dashboard::redirect))
        .route("/dashboard/", get(dashboard::index))
        .route("/dashboard/{file}", get(dashboard::file))
        // Checked by its own secret, not by the client auth stage.
        .route("/telegram/webhook", post(crate::telegram::webhook))
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::method_not_allowed)
        // Outermost last: the request id wraps the panic catch, so that even the answer to a
        // panic carries `x-request-id`.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(from_fn_with_state(state.clone(), account::account))
        .layer(from_fn_with_state(
            state.clone(),
            request_id::request_context,
        ))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> http::Response<axum::body::Body> {
    tracing::error!("a request handler panicked");
    crate::error::error_response(&switchyard_core::GatewayError::internal(
        "The gateway hit an internal error",
    ))
}
