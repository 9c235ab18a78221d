//! What the mock remembers about the requests it received, for tests to assert on.
//!
//! Requests are kept raw (method, URI, headers, body bytes: all cheap to clone) in a bounded
//! ring, and only turned into [`RecordedRequest`]s when someone asks. The hot path must not
//! parse, format or grow anything here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many requests the ring keeps; older ones are dropped first.
pub const RECORDED_REQUESTS: usize = 1000;

/// One API request the mock received, as a test sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string without `?`, when there was one.
    pub query: Option<String>,
    /// Headers by lowercase name; repeated headers are joined with `", "`. Values that are
    /// not UTF-8 are replaced lossily.
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON, or `null` when it is empty or not JSON.
    pub body: Value,
}

/// A request as received, kept until a test asks for it.
struct RawRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl RawRequest {
    fn to_recorded(&self) -> RecordedRequest {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &self.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        RecordedRequest {
            method: self.method.as_str().to_owned(),
            path: self.uri.path().to_owned(),
            query: self.uri.query().map(str::to_owned),
            headers,
            body: serde_json::from_slice(&self.body).unwrap_or(Value::Null),
        }
    }
}

/// The bounded ring of the last [`RECORDED_REQUESTS`] requests.
pub(crate) struct Recorder {
    // A std Mutex: the critical sections are a push or a copy, never an await, and a lock-free
    // queue would not make a bounded ring any cheaper at this size.
    ring: Mutex<VecDeque<RawRequest>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(RECORDED_REQUESTS)),
        }
    }

    /// Keeps one request, dropping the oldest when the ring is full.
    pub fn push(&self, parts: &Parts, body: &Bytes) {
        let request = RawRequest {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == RECORDED_REQUESTS {
            ring.pop_front();
        }
        ring.push_back(request);
    }

    /// The kept requests, oldest first.
    pub fn snapshot(&self) -> Vec<RecordedRequest> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().map(RawRequest::to_recorded).collect()
    }

    pub fn clear(&self) {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        let (parts, ()) = http::Request::post(uri)
            .header("X-Api-Key", "k")
            .header("accept", "a")
            .header("accept", "b")
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[test]
    fn records_lowercase_headers_query_and_json_body() {
        let recorder = Recorder::new();
        recorder.push(&parts("/v1/x?alt=sse"), &Bytes::from_static(b"{\"a\":1}"));
        recorder.push(&parts("/v1/y"), &Bytes::from_static(b"not json"));
        let requests = recorder.snapshot();
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path, "/v1/x");
        assert_eq!(requests[0].query.as_deref(), Some("alt=sse"));
        assert_eq!(requests[0].headers["x-api-key"], "k");
        assert_eq!(requests[0].headers["accept"], "a, b");
        assert_eq!(requests[0].body, serde_json::json!({"a": 1}));
        assert_eq!(requests[1].query, None);
        assert_eq!(requests[1].body, Value::Null);
    }

    #[test]
    fn ring_keeps_the_last_requests() {
        let recorder = Recorder::new();
        for index in 0..RECORDED_REQUESTS + 5 {
            recorder.push(&parts(&format!("/r/{index}")), &Bytes::new());
        }
        let requests = recorder.snapshot();
        assert_eq!(requests.len(), RECORDED_REQUESTS);
        assert_eq!(requests[0].path, "/r/5");
        recorder.clear();
        assert!(recorder.snapshot().is_empty());
    }
}
