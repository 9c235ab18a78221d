//! The response cache's pure parts: the canonical request key, the per-request policy (route
//! config plus request headers), and the stored answer with its conversions between a
//! complete JSON answer and a stream of chunks.
//!
//! - [`key`]: a SHA-256 over a canonical form of the request (key order, whitespace and
//!   number spelling do not matter; fields that do not change the answer are left out),
//!   scoped by tenant and route.
//! - [`policy`]: `x-switchyard-cache`, `x-switchyard-cache-ttl` and `Cache-Control` over the
//!   route's policy → what to do for this request.
//! - [`entry`]: the stored answer, its byte weight and its encoding for a shared store;
//!   [`entry::StreamRecorder`] assembles a streamed answer into one, and
//!   [`entry::replay_chunks`] turns one back into chunks.
//!
//! The stores themselves (memory, Redis) live in the native crate.

pub mod entry;
pub mod key;
pub mod policy;

pub use entry::{Entry, StreamRecorder, replay_chunks};
pub use key::CacheKey;
pub use policy::{CacheStatus, Directive, Plan};
