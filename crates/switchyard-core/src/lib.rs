//! # switchyard-core
//!
//! The wasm-safe heart of the Switchyard AI gateway, shared by the native binary and the
//! Cloudflare Worker. Everything here is pure: no tokio, no sockets, no clock of its own.
//!
//! # Layout
//! - [`alerts`]: alert metrics, scopes and severities, and the pending → firing → resolved
//!   state machine (deduplication, `for`, cooldown), with time passed in.
//! - [`analytics`]: the request event every request leaves behind.
//! - [`clock`]: injected monotonic time ([`clock::Clock`], [`clock::ManualClock`]).
//! - [`wire`]: OpenAI wire types (chat, stream chunks, embeddings, usage, models) and body
//!   parsing with errors that name the field.
//! - [`error`]: the one error model: kind → HTTP status and OpenAI error type, origin,
//!   retryability, and the OpenAI-shaped body.
//! - [`config`]: raw TOML structs → validated [`config::Config`]; provider presets and
//!   discovery of providers from the environment.
//! - [`routing`]: model name → ordered targets (route, `provider/model`, bare model).
//! - [`strategy`]: routing strategies: the attempt order over a route's available targets.
//! - [`health`]: per-target policies: circuit breaker, retry budget, backoff, peak-EWMA latency.
//! - [`ratelimit`]: rate-limit algorithms (token bucket, sliding window, window log,
//!   concurrency) and priority load shedding, with time passed in.
//! - [`provider`]: pure adapters, one file per wire format (OpenAI-compatible and Azure,
//!   Anthropic Messages, Gemini), building upstream requests and translating answers, stream
//!   events and errors.

pub mod alerts;
pub mod analytics;
pub mod budget;
pub mod cache;
pub mod clock;
pub mod config;
pub mod error;
pub mod health;
pub mod keys;
pub mod pricing;
pub mod provider;
pub mod ratelimit;
pub mod routing;
pub mod simulate;
pub mod strategy;
pub mod tiers;
pub mod wire;

pub use error::{ErrorKind, GatewayError, Origin};
