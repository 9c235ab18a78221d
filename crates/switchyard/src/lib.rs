//! # switchyard
//!
//! The native Switchyard gateway: an OpenAI-compatible HTTP server in front of many LLM
//! providers. The wire formats, config, errors and routing live in `switchyard-core`; this
//! crate adds the server, the request chain, the transport, and the CLI.
//!
//! # Layout
//! - [`alerts`]: alert rules evaluated in the background, their notifiers (webhook, Slack,
//!   Telegram, log) and their history.
//! - [`analytics`]: the request-event channel and the Prometheus metrics it feeds.
//! - [`app`]: shared state and the router, where the chain's order is written down.
//! - [`chain`]: cross-cutting stages as middleware (request id and context, auth).
//! - [`handlers`]: the endpoints; route → failover → adapter → transport for each.
//! - [`failover`]: ordering a route's targets by its strategy and failing over between them
//!   (retries, backoff, retry budget, fallback routes).
//! - [`tracker`]: per-target breakers, latency and load; drain; the retry budget.
//! - [`health_check`]: active probes of providers in the background.
//! - [`cache`]: the response cache (memory, Redis behind it, single-flight).
//! - [`ratelimit`]: rate limits (memory or Redis), queueing, load shedding, token settlement.
//! - [`transport`]: the pooled upstream HTTP client with its timeouts.
//! - [`context`], [`timing`]: the typed per-request context and `Server-Timing`.
//! - [`error`]: the one place errors become responses.
//! - [`server`]: listener, connections, graceful shutdown.
//! - [`telemetry`]: the log subscriber, the request path's spans, OTLP trace export and W3C
//!   trace-context propagation.
//! - [`keys`]: virtual keys (in-memory index; SQLite or Postgres store); [`keys_cli`]:
//!   `switchyard keys`.
//! - [`postgres`]: what the Postgres stores share (connection config, error messages).
//! - [`cli`]: `serve`, `demo`, `config check`; [`demo`]: simulated providers and traffic.
//! - [`telegram`]: the Telegram bot, a client of the gateway in the same process (webhook or
//!   polling); [`telegram_cli`]: `switchyard telegram set-webhook|delete-webhook|info`.

pub mod alerts;
pub mod analytics;
pub mod app;
pub mod budget;
pub mod cache;
pub mod chain;
pub mod cli;
pub mod context;
pub mod cost_cli;
pub mod demo;
pub mod error;
pub mod failover;
pub mod handlers;
pub mod health_check;
pub mod keys;
pub mod keys_cli;
pub mod postgres;
pub mod quality;
pub mod ratelimit;
pub mod server;
pub mod telegram;
pub mod telegram_cli;
pub mod telemetry;
pub mod timing;
pub mod tracker;
pub mod transport;

pub use app::{AppState, router};

/// Installs the process-wide TLS crypto provider (ring). Call once before building a
/// [`transport::Transport`]; later calls are harmless.
pub fn install_crypto_provider() {
    // Err means one is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
