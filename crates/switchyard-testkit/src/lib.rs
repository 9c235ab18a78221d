//! Test tooling for Switchyard: a mock LLM provider that tests and the load harness run the
//! gateway against over real sockets.
//!
//! # Layout
//!
//! - [`mock`]: the mock provider. It speaks the OpenAI, Anthropic and Gemini wire formats
//!   (JSON and SSE), answers deterministically from the prompt, and can be scripted to
//!   misbehave (latency, error statuses, 429s, connection resets, hangs).
//!   - `mock::behavior`: what a scripted misbehaviour looks like.
//!   - `mock::server`: the accept loop and the hyper service (the only place with sockets).
//!   - `mock::dispatch`: routes one request to a wire format and applies the behaviour.
//!   - `mock::openai`, `mock::anthropic`, `mock::gemini`: one file per wire format, pure
//!     functions from request JSON to response JSON and stream events.
//!   - `mock::control`: the `/__mock/*` control API for out-of-process users.
//! - [`telegram`]: a mock Telegram Bot API server that records every call and checks message
//!   texts (Telegram's HTML parse mode, 4096 characters) as Telegram does; `telegram::html`
//!   is that check.
//! - `src/bin/switchyard-mock.rs`: the mock as a standalone binary.
//!
//! The mock does not depend on `switchyard-core` on purpose: it is an independent reading of
//! the provider wire formats, so tests of the gateway's adapters are not circular.

pub mod load;
pub mod mock;
pub mod telegram;
