//! Response bodies: a whole buffer, or SSE events paced by the behaviour and optionally cut
//! short by aborting the connection.
//!
//! An unpaced stream goes out as one buffer, in one write: the load harness measures the mock
//! as its baseline, and a stream with no delays gains nothing from separate frames.

use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use futures_util::stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;

use super::server::ConnectionAbort;

/// A stream of body frames that may end in an abort.
type EventStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, ConnectionAbort>> + Send>>;

/// The body of every mock response.
pub(crate) type MockBody = Either<Full<Bytes>, StreamBody<EventStream>>;

/// How a stream's events are spaced out and whether it is cut short.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pacing {
    /// Before the first event, after the headers.
    pub time_to_first_event: Duration,
    /// Between two events.
    pub between_events: Duration,
    /// Send this many events, then abort the connection.
    pub abort_after: Option<u32>,
}

impl Pacing {
    fn is_immediate(&self) -> bool {
        self.time_to_first_event.is_zero()
            && self.between_events.is_zero()
            && self.abort_after.is_none()
    }
}

/// A body of one buffer.
pub(crate) fn full(bytes: impl Into<Bytes>) -> MockBody {
    Either::Left(Full::new(bytes.into()))
}

/// A body of SSE events, paced.
pub(crate) fn events(events: Vec<Bytes>, pacing: Pacing) -> MockBody {
    if pacing.is_immediate() {
        let mut buffer = BytesMut::with_capacity(events.iter().map(Bytes::len).sum());
        for event in &events {
            buffer.extend_from_slice(event);
        }
        return full(buffer.freeze());
    }
    let state = PacedEvents {
        events: events.into_iter(),
        sent: 0,
        pacing,
        aborted: false,
    };
    Either::Right(StreamBody::new(Box::pin(stream::unfold(state, next_frame))))
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A 200 `text/event-stream` response of `events`, paced.
pub(crate) fn event_stream_response(events: Vec<Bytes>, pacing: Pacing) -> Response<MockBody> {
    let mut response = Response::new(self::events(events, pacing));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Where a paced stream is.
struct PacedEvents {
    events: std::vec::IntoIter<Bytes>,
    sent: u32,
    pacing: Pacing,
    aborted: bool,
}

/// Produces the next frame: waits its delay, or aborts once `abort_after` events went out
/// (or the events ran out, so an aborted stream is always incomplete).
async fn next_frame(
    mut state: PacedEvents,
) -> Option<(Result<Frame<Bytes>, ConnectionAbort>, PacedEvents)> {
    if state.aborted {
        return None;
    }
    let at_limit = state
        .pacing
        .abort_after
        .is_some_and(|limit| state.sent >= limit);
    let next = if at_limit { None } else { state.events.next() };
    match next {
        Some(event) => {
            let delay = if state.sent == 0 {
                state.pacing.time_to_first_event
            } else {
                state.pacing.between_events
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            state.sent += 1;
            Some((Ok(Frame::data(event)), state))
        }
        None if state.pacing.abort_after.is_some() => {
            // Return Pending once so hyper flushes the head and the events already sent; an
            // error straight away could make it drop them unwritten.
            tokio::task::yield_now().await;
            state.aborted = true;
            Some((Err(ConnectionAbort), state))
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn sample() -> Vec<Bytes> {
        vec![
            Bytes::from_static(b"a"),
            Bytes::from_static(b"b"),
            Bytes::from_static(b"c"),
        ]
    }

    #[tokio::test]
    async fn unpaced_events_are_one_buffer() {
        let body = events(sample(), Pacing::default());
        assert!(matches!(body, Either::Left(_)));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
    }

    #[tokio::test(start_paused = true)]
    async fn paced_events_wait_and_keep_order() {
        let started = tokio::time::Instant::now();
        let pacing = Pacing {
            time_to_first_event: Duration::from_millis(100),
            between_events: Duration::from_millis(10),
            abort_after: None,
        };
        let body = events(sample(), pacing).collect().await.unwrap().to_bytes();
        assert_eq!(body, "abc");
        assert_eq!(started.elapsed(), Duration::from_millis(120));
    }

    #[tokio::test]
    async fn abort_after_events_ends_in_an_error() {
        let pacing = Pacing {
            abort_after: Some(2),
            ..Pacing::default()
        };
        let mut body = events(sample(), pacing);
        let mut received = Vec::new();
        let error = loop {
            match body.frame().await {
                Some(Ok(frame)) => received.push(frame.into_data().unwrap()),
                Some(Err(error)) => break error,
                None => panic!("the stream ended without aborting"),
            }
        };
        assert_eq!(
            received,
            [Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert!(error.to_string().contains("abort"));

        // More than there are: all events, then still an abort.
        let pacing = Pacing {
            abort_after: Some(10),
            ..Pacing::default()
        };
        let collected = events(sample(), pacing).collect().await;
        assert!(collected.is_err());
    }
}
