//! The state one mock shares between its handle, its control API and its connections.
//!
//! Everything a request touches is an atomic or a short std-Mutex section; nothing here is
//! held across an await.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::request::Parts;
use tokio::sync::watch;

use super::behavior::Behavior;
use super::record::{RecordedRequest, Recorder};

/// Which behaviour the next requests get.
struct Plan {
    /// Applies when the script is empty.
    default: Arc<Behavior>,
    /// One-shot behaviours, consumed first-in first-out by the next API requests.
    script: VecDeque<Arc<Behavior>>,
}

/// The shared state of one mock provider.
pub(crate) struct Shared {
    /// Appears in every answer, so a test can tell which provider answered.
    pub name: String,
    /// When set, API requests must carry this key in their wire format's header.
    pub expected_api_key: Option<String>,
    /// The behaviour given at build time; `reset` returns to it.
    initial_behavior: Arc<Behavior>,
    // A std Mutex: one lock per request to pop the script or clone an Arc, never across an
    // await; default and script share it so a request takes it once.
    plan: Mutex<Plan>,
    /// API requests received since the last reset (control calls excluded).
    calls: AtomicU64,
    /// OTLP trace exports received since the last reset (`POST /v1/traces`, not API calls).
    trace_exports: AtomicU64,
    /// Numbers responses, for ids like `chatcmpl-mock-N`.
    sequence: AtomicU64,
    /// The last requests, for tests to inspect.
    recorder: Recorder,
    /// Turns true when the mock shuts down, releasing hanging requests (with HTTP/2 they run
    /// in tasks of their own, which aborting the connections does not reach).
    stop: watch::Sender<bool>,
}

impl Shared {
    pub fn new(name: String, expected_api_key: Option<String>, behavior: Behavior) -> Self {
        let initial_behavior = Arc::new(behavior);
        Self {
            name,
            expected_api_key,
            plan: Mutex::new(Plan {
                default: Arc::clone(&initial_behavior),
                script: VecDeque::new(),
            }),
            initial_behavior,
            calls: AtomicU64::new(0),
            trace_exports: AtomicU64::new(0),
            sequence: AtomicU64::new(0),
            recorder: Recorder::new(),
            stop: watch::Sender::new(false),
        }
    }

    /// Releases everything waiting in [`Shared::stopped`].
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Completes once the mock shuts down.
    pub async fn stopped(&self) {
        let mut stop = self.stop.subscribe();
        // Only errs when the sender is gone, and `self` owns it.
        let _ = stop.wait_for(|stopped| *stopped).await;
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        // Nothing panics while holding the lock, so a poisoned lock still holds a valid plan.
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts and records one API request. Returns its call number, 1-based.
    pub fn record(&self, parts: &Parts, body: &Bytes) -> u64 {
        self.recorder.push(parts, body);
        self.calls.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The behaviour for the next API request: the next scripted one, else the default.
    pub fn next_behavior(&self) -> Arc<Behavior> {
        let mut plan = self.plan();
        match plan.script.pop_front() {
            Some(scripted) => scripted,
            None => Arc::clone(&plan.default),
        }
    }

    /// The next response number, 1-based.
    pub fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Counts one OTLP trace export.
    pub fn count_trace_export(&self) {
        self.trace_exports.fetch_add(1, Ordering::Relaxed);
    }

    pub fn trace_exports(&self) -> u64 {
        self.trace_exports.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorder.snapshot()
    }

    pub fn behavior(&self) -> Behavior {
        Behavior::clone(&self.plan().default)
    }

    pub fn set_behavior(&self, behavior: Behavior) {
        self.plan().default = Arc::new(behavior);
    }

    pub fn push_script(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        let mut plan = self.plan();
        plan.script.extend(behaviors.into_iter().map(Arc::new));
    }

    /// How many scripted behaviours are still queued.
    pub fn scripted(&self) -> usize {
        self.plan().script.len()
    }

    /// Back to the state right after start-up: the build-time behaviour, no script, no calls,
    /// no recorded requests, response numbers from 1.
    pub fn reset(&self) {
        {
            let mut plan = self.plan();
            plan.default = Arc::clone(&self.initial_behavior);
            plan.script.clear();
        }
        self.calls.store(0, Ordering::Relaxed);
        self.trace_exports.store(0, Ordering::Relaxed);
        self.sequence.store(0, Ordering::Relaxed);
        self.recorder.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_consumed_before_the_default() {
        let shared = Shared::new("m".into(), None, Behavior::latency(5));
        shared.push_script([Behavior::status(500), Behavior::status(429)]);
        assert_eq!(shared.next_behavior().error_status, Some(500));
        assert_eq!(shared.next_behavior().error_status, Some(429));
        assert_eq!(shared.next_behavior().latency_ms, 5);
        assert_eq!(shared.next_behavior().latency_ms, 5);
    }

    #[test]
    fn reset_restores_the_initial_behavior() {
        let shared = Shared::new("m".into(), None, Behavior::latency(5));
        shared.set_behavior(Behavior::hang());
        shared.push_script([Behavior::status(500)]);
        assert_eq!(shared.next_sequence(), 1);
        shared.reset();
        assert_eq!(shared.scripted(), 0);
        assert_eq!(shared.behavior(), Behavior::latency(5));
        assert_eq!(shared.next_sequence(), 1);
        assert_eq!(shared.calls(), 0);
    }
}
