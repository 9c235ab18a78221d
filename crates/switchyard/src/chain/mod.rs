//! The request chain. Its order is written down in exactly one place, [`crate::app::router`]
//! (accounting runs outside auth, so that a 401 leaves an event too);
//! this module holds the cross-cutting stages that run as middleware.
//!
//! 0. HTTP basics: panic catch, request id and context (timings, deadline); the body limit is
//!    enforced where the body is read, so that a 413 has OpenAI's shape.
//! 1. [`auth`]: API key → principal; 401 before anything else runs.
//! 2. [`account`]: one request event per request, emitted when the body ends or is dropped.
//! 3. [`rate_limit`]: limits per key, user, IP, model and global; queueing; load shedding
//!    (called by the handlers once the body is parsed and the route known).
//! 4. budget (not built yet).
//! 5. [`cache`]: the response cache (called by the handlers after the rate limit).
//! 6. route: model → targets (`switchyard_core::routing`, in the handlers).
//! 7. failover: [`crate::failover`].
//! 8. provider adapter: `switchyard_core::provider` (pure).
//! 9. transport: [`crate::transport`].

pub mod account;
pub mod auth;
pub mod cache;
pub mod rate_limit;
pub mod request_id;
