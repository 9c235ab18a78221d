//! # switchyard-worker
//!
//! The Cloudflare Worker build of the Switchyard AI gateway: the same
//! [`switchyard_core`] (config, routing strategies, provider adapters, pricing, cache key,
//! rate-limit algorithms, analytics query) as the native binary, with `fetch` for the
//! transport and Cloudflare's stores for state.
//!
//! # Layout
//! - [`settings`]: the validated config from the `SWITCHYARD_CONFIG_TOML` var (TOML) and the
//!   Worker's vars and secrets, or from provider keys found among them.
//! - [`auth`]: the master key and virtual keys (looked up in D1 by the SHA-256 of the
//!   presented secret, as the native stores keep them).
//! - [`health`]: the core's circuit breaker per target, held by the isolate.
//! - [`limits`]: which rate-limit counters a request is charged to, and the counter logic the
//!   Durable Object runs (the core's token bucket and sliding window).
//! - [`analytics`]: the D1 schema, request events as rows, and `/admin/analytics` answered
//!   from stored events with the core's query fold.
//! - [`respond`]: response headers shared by every answer.
//! - `edge` (wasm32 only): the `fetch` handler, the failover loop over `fetch`, streaming
//!   passthrough, the `RateLimiter` Durable Object, the KV cache and the D1 writer.
//!
//! Everything outside `edge` is pure and compiles (and is tested) on the host too; `edge` is
//! compiled only for `wasm32`, so `cargo test --workspace` on the host never builds
//! workers-rs.

pub mod analytics;
pub mod auth;
pub mod health;
pub mod limits;
pub mod respond;
pub mod settings;

#[cfg(target_arch = "wasm32")]
mod edge;
