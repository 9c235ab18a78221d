//! A mock LLM provider that speaks the OpenAI, Anthropic and Gemini wire formats over a real
//! socket, answers deterministically, and misbehaves on demand.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use switchyard_testkit::mock::{Behavior, MockProvider};
//!
//! let mock = MockProvider::builder().name("alpha").spawn().await?;
//! mock.push_script(Behavior::rate_limited(2)); // the next request gets a 429
//! // point the gateway at mock.base_url() ...
//! assert_eq!(mock.calls(), 0);
//! # Ok(()) }
//! ```
//!
//! It can also stand in for an OpenTelemetry collector: `POST /v1/traces` (OTLP/HTTP) is
//! counted and answered, so the load harness can run the gateway with trace export on.
//!
//! Answers: the text is `"{name} says: {last user text}"`; prompt tokens are the words of all
//! message texts (at least 1), completion tokens the words of the answer. See
//! `conversation.rs` for tool calls and `dispatch.rs` for the order a request goes through.
//!
//! This module owns the mock only. It must not depend on `switchyard-core`: it is an
//! independent reading of the wire formats, so gateway tests against it are not circular.

mod anthropic;
mod behavior;
mod body;
mod control;
mod conversation;
mod dispatch;
mod embedding;
mod gemini;
mod openai;
mod record;
mod server;
mod state;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};

pub use behavior::Behavior;
pub use record::{RECORDED_REQUESTS, RecordedRequest};

use state::Shared;

/// Entry point: `MockProvider::builder()`.
#[derive(Debug, Clone, Copy)]
pub struct MockProvider;

impl MockProvider {
    /// A builder with the defaults: name `mock`, normal behaviour, no key check, listening on
    /// `127.0.0.1:0`.
    pub fn builder() -> MockProviderBuilder {
        MockProviderBuilder::default()
    }
}

/// Configures and starts a [`MockProvider`].
#[derive(Debug, Clone)]
pub struct MockProviderBuilder {
    /// Appears in every answer (`"{name} says: ..."`), so tests can tell providers apart.
    name: String,
    /// The default behaviour; `reset` returns to it.
    behavior: Behavior,
    /// When set, requests without this key in their wire's key header get a 401.
    expected_api_key: Option<String>,
    /// Address to bind; port 0 picks a free port.
    listen: String,
}

impl Default for MockProviderBuilder {
    fn default() -> Self {
        Self {
            name: "mock".to_owned(),
            behavior: Behavior::default(),
            expected_api_key: None,
            listen: "127.0.0.1:0".to_owned(),
        }
    }
}

impl MockProviderBuilder {
    /// The provider name used in answers. Default `mock`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The default behaviour. Default: behave normally.
    pub fn behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// Requires this provider key: `Authorization: Bearer` (OpenAI), `api-key` (Azure),
    /// `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Gemini).
    pub fn expect_api_key(mut self, key: impl Into<String>) -> Self {
        self.expected_api_key = Some(key.into());
        self
    }

    /// The address to listen on. Default `127.0.0.1:0`.
    pub fn listen(mut self, address: impl Into<String>) -> Self {
        self.listen = address.into();
        self
    }

    /// Binds the socket and starts serving on the current tokio runtime.
    ///
    /// Fails when the address cannot be bound, or when the behaviour is invalid
    /// ([`io::ErrorKind::InvalidInput`]).
    pub async fn spawn(self) -> io::Result<MockHandle> {
        self.behavior
            .validate()
            .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message))?;
        let listener = TcpListener::bind(&self.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(self.name, self.expected_api_key, self.behavior));
        let task = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        Ok(MockHandle {
            inner: Arc::new(Inner {
                shared,
                addr,
                base_url: format!("http://{addr}"),
                abort: task.abort_handle(),
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

/// A running mock provider. Cheap to clone; the server stops on [`MockHandle::shutdown`] or
/// when the last clone is dropped.
#[derive(Clone)]
pub struct MockHandle {
    inner: Arc<Inner>,
}

/// What every clone of a handle shares.
struct Inner {
    shared: Arc<Shared>,
    /// The bound address (the real port when asked for port 0).
    addr: SocketAddr,
    /// `http://{addr}`, built once.
    base_url: String,
    /// Stops the accept loop from `Drop`, which cannot await.
    abort: AbortHandle,
    // A std Mutex: taken once, by the first `shutdown`, and released before the await.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn stop(&self) {
        self.shared.stop();
        self.abort.abort();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for MockHandle {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MockHandle")
            .field("name", &self.inner.shared.name)
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl MockHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://IP:PORT`, without a trailing slash or `/v1`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The provider name used in answers.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// API requests received since start or the last reset (control calls excluded).
    pub fn calls(&self) -> u64 {
        self.inner.shared.calls()
    }

    /// OTLP/HTTP trace exports received (`POST /v1/traces`) since start or the last reset.
    /// They are not API requests: neither counted in [`MockHandle::calls`] nor recorded.
    pub fn trace_exports(&self) -> u64 {
        self.inner.shared.trace_exports()
    }

    /// The last [`RECORDED_REQUESTS`] API requests, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.shared.requests()
    }

    /// The current default behaviour.
    pub fn behavior(&self) -> Behavior {
        self.inner.shared.behavior()
    }

    /// Replaces the default behaviour.
    pub fn set_behavior(&self, behavior: Behavior) {
        self.inner.shared.set_behavior(behavior);
    }

    /// Queues a one-shot behaviour for the next API request (first in, first out), ahead of
    /// the default.
    pub fn push_script(&self, behavior: Behavior) {
        self.inner.shared.push_script([behavior]);
    }

    /// Back to the start-up state: the built behaviour, an empty script, zero calls, no
    /// recorded requests, response ids from 1.
    pub fn reset(&self) {
        self.inner.shared.reset();
    }

    /// Stops the server and waits until the listener is closed. Open connections are aborted
    /// and hanging requests released. Every clone of the handle sees the stop.
    pub async fn shutdown(&self) {
        self.inner.stop();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // Cancelled is the expected outcome; the loop has no other way to end.
            let _ = task.await;
        }
    }
}
