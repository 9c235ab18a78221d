//! The load generator: a closed loop of keep-alive HTTP/1.1 connections against one
//! loopback address.
//!
//! Each of the N connections is one task that sends the same request back to back: the next
//! request leaves when the previous response's body has been read to the end. A run has a
//! warm-up, whose requests are not recorded, then a measured window made of one or more
//! phases back to back (the chaos scenario uses three; the connections carry on across a
//! phase boundary). A request belongs to the phase it started in, and no request starts
//! after the last phase closes. Latency (µs, request sent to last body byte) of every 2xx
//! response goes into one HDR histogram per phase; the gateway's answers that took more
//! than one attempt (its `x-switchyard-attempts` header) also go into a second one, the
//! cost of a failover. Non-2xx responses and failures (connect errors, resets, timeouts,
//! truncated streams) are counted apart and never enter a histogram, so failing fast cannot
//! flatter latency.
//!
//! The generator runs on a runtime of its own ([`start_on_own_runtime`]): by default one
//! thread, so on a small machine it takes as little CPU from the processes under test as it
//! can. It only measures; it starts no processes and reads no `/proc`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::error::LoadError;

/// The largest latency the histograms can hold, in µs (one hour; longer ones saturate).
const HIGHEST_TRACKABLE_MICROS: u64 = 3_600_000_000;

/// Significant figures of the histograms: 1 µs resolution up to 1 ms.
const SIGNIFICANT_FIGURES: u8 = 3;

/// Pause after a failed connect, so a dead target costs a few errors, not a busy loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// The gateway's response header that says how many attempts a request took.
const ATTEMPTS_HEADER: &str = "x-switchyard-attempts";

/// How much of a failed response's body is kept to explain it.
const FAILURE_SNIPPET_BYTES: usize = 200;

/// What one scenario sends, where, and for how long.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// The server under load; always loopback (checked when the child starts).
    pub target: SocketAddr,
    /// Request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The JSON body, identical for every request.
    pub body: Bytes,
    /// Whether the body asks for SSE; then a 2xx body must end with `[DONE]`.
    pub stream: bool,
    /// Number of connections, each with one request in flight.
    pub concurrency: usize,
    /// Time from start before recording begins (connects happen here).
    pub warmup: Duration,
    /// Lengths of the measured phases, back to back after the warm-up; each gets a
    /// [`LoadOutcome`] of its own. A plain scenario has exactly one.
    pub phases: Vec<Duration>,
    /// Longest a connect or a request may take before it counts as an error.
    pub request_timeout: Duration,
    /// Make every request's body unique: a counter goes at the start of the first
    /// `"content":"` string (so a response cache misses every time).
    pub unique_bodies: bool,
}

impl LoadPlan {
    /// The whole measured window: every phase.
    pub fn measured(&self) -> Duration {
        self.phases.iter().sum()
    }
}

/// What one phase of a scenario measured.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Request sent to last body byte of each 2xx response, µs.
    pub latency: Histogram<u64>,
    /// Request sent to first body byte of each 2xx response, µs.
    pub first_byte: Histogram<u64>,
    /// Request sent to last body byte of each 2xx response the gateway says took more than
    /// one attempt (`x-switchyard-attempts` above 1), µs: the cost of a failover.
    pub retried_latency: Histogram<u64>,
    /// Complete 2xx responses.
    pub succeeded: u64,
    /// Complete responses with any other status.
    pub non_success: u64,
    /// Connects or requests that failed, timed out, or whose stream was cut short.
    pub errors: u64,
    /// Times a connection had to be replaced after the server closed or broke it.
    pub reconnects: u64,
    /// The phase's length; for the last phase, from its start to the last recorded
    /// response (at least the phase), since nothing new starts after it to fill the tail.
    pub elapsed: Duration,
    /// The first failure seen, to explain non-zero counts.
    pub first_failure: Option<String>,
}

impl LoadOutcome {
    /// Complete 2xx responses per second of the measured window.
    pub fn requests_per_second(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.succeeded as f64 / seconds
        } else {
            0.0
        }
    }
}

/// The outcomes of a run, one per phase of its plan, in order.
pub type PhaseOutcomes = Vec<LoadOutcome>;

/// Runs `plan` on a new runtime in a thread of its own and hands back its outcomes.
///
/// `threads` = 1 gives a current-thread runtime; more gives a multi-thread runtime with that
/// many workers. `origin` is when the warm-up starts, so the caller can line its own
/// sampling (and, in the chaos scenario, its faults) up with the phases.
pub fn start_on_own_runtime(
    plan: LoadPlan,
    threads: u16,
    origin: Instant,
) -> Result<oneshot::Receiver<Result<PhaseOutcomes, LoadError>>, LoadError> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::from(threads));
        builder
    };
    let runtime = builder
        .enable_all()
        .thread_name("switchyard-load-worker")
        .build()
        .map_err(|error| LoadError::Generator(format!("building its runtime: {error}")))?;
    let (outcome_sender, outcome) = oneshot::channel();
    std::thread::Builder::new()
        .name("switchyard-load".to_owned())
        .spawn(move || {
            let result = runtime.block_on(generate(plan, origin));
            // The receiver is gone only when the harness is being interrupted.
            let _ = outcome_sender.send(result);
        })
        .map_err(|error| LoadError::Generator(format!("starting its thread: {error}")))?;
    Ok(outcome)
}

/// Runs `plan` on the current runtime: opens the connections, loads the target through the
/// warm-up and every phase, and returns once every connection has finished, with one
/// outcome per phase.
///
/// Bounded: no request starts after `origin + warmup + measured`, and each one in flight
/// then ends within `request_timeout`.
pub async fn generate(plan: LoadPlan, origin: Instant) -> Result<PhaseOutcomes, LoadError> {
    if plan.phases.is_empty() {
        return Err(LoadError::Generator(
            "a plan needs at least one phase".to_owned(),
        ));
    }
    let schedule = Arc::new(Schedule::new(origin + plan.warmup, &plan.phases));
    let tallies = (0..plan.phases.len())
        .map(|_| Tally::new())
        .collect::<Result<Vec<_>, _>>()?;
    let tally = Arc::new(Mutex::new(tallies));
    let template = Arc::new(RequestTemplate::new(&plan)?);
    let plan = Arc::new(plan);
    let mut connections = JoinSet::new();
    for _ in 0..plan.concurrency {
        connections.spawn(drive_connection(
            Arc::clone(&plan),
            Arc::clone(&template),
            Arc::clone(&schedule),
            Arc::clone(&tally),
        ));
    }
    while connections.join_next().await.is_some() {}
    let tallies = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    let last_phase = tallies.len().saturating_sub(1);
    let outcomes = tallies
        .into_iter()
        .enumerate()
        .map(|(phase, tally)| {
            let (start, end) = schedule.bounds(phase);
            // Only the last phase is stretched to its last response: an earlier phase's
            // stragglers overlap the next phase, whose requests keep the connections busy.
            let last = match tally.last_completion {
                Some(last) if phase == last_phase => last.max(end),
                _ => end,
            };
            LoadOutcome {
                latency: tally.latency,
                first_byte: tally.first_byte,
                retried_latency: tally.retried_latency,
                succeeded: tally.succeeded,
                non_success: tally.non_success,
                errors: tally.errors,
                reconnects: tally.reconnects,
                elapsed: last.saturating_duration_since(start),
                first_failure: tally.first_failure,
            }
        })
        .collect();
    Ok(outcomes)
}

/// When recording starts, where each phase ends, and when sending stops (the last end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    start: Instant,
    /// The end of each phase, ascending; never empty when built from a valid plan.
    ends: Vec<Instant>,
}

impl Schedule {
    /// Phases of the given lengths, back to back from `start`.
    pub fn new(start: Instant, phases: &[Duration]) -> Self {
        let mut at = start;
        let ends = phases
            .iter()
            .map(|length| {
                at += *length;
                at
            })
            .collect();
        Self { start, ends }
    }

    /// The first recorded instant.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The instant no request may start at or after.
    pub fn end(&self) -> Instant {
        self.ends.last().copied().unwrap_or(self.start)
    }

    /// The phase that `at` falls in: `None` during the warm-up and after the end.
    pub fn phase_of(&self, at: Instant) -> Option<usize> {
        if at < self.start {
            return None;
        }
        self.ends.iter().position(|end| at < *end)
    }

    /// Where phase `phase` starts and ends.
    pub fn bounds(&self, phase: usize) -> (Instant, Instant) {
        let start = match phase.checked_sub(1) {
            Some(previous) => self.ends.get(previous).copied().unwrap_or(self.start),
            None => self.start,
        };
        (start, self.ends.get(phase).copied().unwrap_or(start))
    }
}

/// Everything the connections of one scenario record.
struct Tally {
    latency: Histogram<u64>,
    first_byte: Histogram<u64>,
    retried_latency: Histogram<u64>,
    succeeded: u64,
    non_success: u64,
    errors: u64,
    reconnects: u64,
    last_completion: Option<Instant>,
    first_failure: Option<String>,
}

impl Tally {
    fn new() -> Result<Self, LoadError> {
        let histogram = || {
            Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_MICROS, SIGNIFICANT_FIGURES)
                .map_err(|error| LoadError::Generator(format!("creating a histogram: {error}")))
        };
        Ok(Self {
            latency: histogram()?,
            first_byte: histogram()?,
            retried_latency: histogram()?,
            succeeded: 0,
            non_success: 0,
            errors: 0,
            reconnects: 0,
            last_completion: None,
            first_failure: None,
        })
    }

    fn note_failure(&mut self, failure: impl FnOnce() -> String) {
        if self.first_failure.is_none() {
            self.first_failure = Some(failure());
        }
    }
}

/// Locks the shared tallies (one per phase). A std Mutex: every section is a few counter
/// updates or one histogram record, never across an await, and with one generator thread it
/// is never contended.
fn lock(tally: &Mutex<Vec<Tally>>) -> std::sync::MutexGuard<'_, Vec<Tally>> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies `update` to the tally of phase `phase`, if there is one.
fn in_phase(tally: &Mutex<Vec<Tally>>, phase: usize, update: impl FnOnce(&mut Tally)) {
    if let Some(tally) = lock(tally).get_mut(phase) {
        update(tally);
    }
}

/// The request every connection sends, built once.
struct RequestTemplate {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    /// Where a unique counter goes in the body, when bodies are unique.
    unique_at: Option<usize>,
    sent: std::sync::atomic::AtomicU64,
}

impl RequestTemplate {
    fn new(plan: &LoadPlan) -> Result<Self, LoadError> {
        let uri: Uri = plan
            .path
            .parse()
            .map_err(|error| LoadError::Generator(format!("path {:?}: {error}", plan.path)))?;
        let host = HeaderValue::from_str(&plan.target.to_string())
            .map_err(|error| LoadError::Generator(format!("host header: {error}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(HOST, host);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(if plan.stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        let unique_at = if plan.unique_bodies {
            let marker = b"\"content\":\"";
            let at = plan
                .body
                .windows(marker.len())
                .position(|window| window == marker)
                .ok_or_else(|| {
                    LoadError::Generator(
                        "unique bodies need a \"content\":\"...\" string in the body".to_owned(),
                    )
                })?;
            Some(at + marker.len())
        } else {
            None
        };
        Ok(Self {
            uri,
            headers,
            body: plan.body.clone(),
            unique_at,
            sent: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        // Full has an exact size, so hyper writes Content-Length from it.
        let body = match self.unique_at {
            None => self.body.clone(),
            Some(at) => {
                let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut body = Vec::with_capacity(self.body.len() + 24);
                body.extend_from_slice(&self.body[..at]);
                body.extend_from_slice(format!("#{n} ").as_bytes());
                body.extend_from_slice(&self.body[at..]);
                Bytes::from(body)
            }
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// One client connection: the request handle and the task driving its socket.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A connection dropped mid-request (timeout) must not keep its socket alive.
        self.driver.abort();
    }
}

async fn connect(target: SocketAddr, timeout: Duration) -> Result<Connection, String> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| format!("connect timed out after {timeout:?}"))?
        .map_err(|error| format!("connect: {error}"))?;
    // Small requests and responses: never wait on Nagle for the rest of a write.
    stream
        .set_nodelay(true)
        .map_err(|error| format!("TCP_NODELAY: {error}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    let driver = tokio::spawn(async move {
        // The connection's end shows up as an error on the next request; nothing to do here.
        let _ = connection.await;
    });
    Ok(Connection { sender, driver })
}

/// The loop of one connection: request, read the whole response, record, repeat.
async fn drive_connection(
    plan: Arc<LoadPlan>,
    template: Arc<RequestTemplate>,
    schedule: Arc<Schedule>,
    tally: Arc<Mutex<Vec<Tally>>>,
) {
    let mut connection: Option<Connection> = None;
    let mut connected_before = false;
    while Instant::now() < schedule.end() {
        let mut current = match connection.take() {
            Some(current) if !current.sender.is_closed() => current,
            _ => match connect(plan.target, plan.request_timeout).await {
                Ok(fresh) => {
                    let phase = schedule
                        .phase_of(Instant::now())
                        .filter(|_| connected_before);
                    if let Some(phase) = phase {
                        in_phase(&tally, phase, |tally| tally.reconnects += 1);
                    }
                    connected_before = true;
                    fresh
                }
                Err(failure) => {
                    if let Some(phase) = schedule.phase_of(Instant::now()) {
                        in_phase(&tally, phase, |tally| {
                            tally.errors += 1;
                            tally.note_failure(|| failure);
                        });
                    }
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        if current.sender.ready().await.is_err() {
            // The server closed the idle connection; the next turn replaces it.
            continue;
        }
        let started = Instant::now();
        if started >= schedule.end() {
            break;
        }
        let recorded = schedule.phase_of(started);
        let result = tokio::time::timeout(
            plan.request_timeout,
            exchange(&mut current.sender, template.request(), plan.stream),
        )
        .await;
        let finished = Instant::now();
        let keep = matches!(result, Ok(Ok(_)));
        if let Some(phase) = recorded {
            in_phase(&tally, phase, |tally| {
                record(tally, started, finished, result, plan.request_timeout);
            });
        }
        if keep {
            connection = Some(current);
        }
    }
}

/// Adds one request's result to its phase's tally.
fn record(
    tally: &mut Tally,
    started: Instant,
    finished: Instant,
    result: Result<Result<Exchange, String>, tokio::time::error::Elapsed>,
    timeout: Duration,
) {
    tally.last_completion = Some(finished);
    match result {
        Ok(Ok(exchange)) if exchange.status.is_success() && exchange.complete => {
            tally.succeeded += 1;
            tally
                .latency
                .saturating_record(micros(finished.saturating_duration_since(started)));
            let first_byte = exchange.first_byte.unwrap_or(finished);
            tally
                .first_byte
                .saturating_record(micros(first_byte.saturating_duration_since(started)));
            if exchange.attempts.is_some_and(|attempts| attempts > 1) {
                tally
                    .retried_latency
                    .saturating_record(micros(finished.saturating_duration_since(started)));
            }
        }
        Ok(Ok(exchange)) if exchange.status.is_success() => {
            tally.errors += 1;
            tally.note_failure(|| "a 2xx stream ended without `data: [DONE]`".to_owned());
        }
        Ok(Ok(exchange)) => {
            tally.non_success += 1;
            tally.note_failure(|| {
                format!(
                    "HTTP {}: {}",
                    exchange.status,
                    String::from_utf8_lossy(&exchange.snippet).trim()
                )
            });
        }
        Ok(Err(failure)) => {
            tally.errors += 1;
            tally.note_failure(|| failure);
        }
        Err(_) => {
            tally.errors += 1;
            tally.note_failure(|| format!("request timed out after {timeout:?}"));
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What one request/response exchange looked like.
struct Exchange {
    status: http::StatusCode,
    /// When the first non-empty body chunk arrived.
    first_byte: Option<Instant>,
    /// The gateway's `x-switchyard-attempts` header, when the response has one.
    attempts: Option<u32>,
    /// False when a stream ended without its `[DONE]` event.
    complete: bool,
    /// The start of a non-2xx body.
    snippet: Vec<u8>,
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    stream: bool,
) -> Result<Exchange, String> {
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("request: {error}"))?;
    let status = response.status();
    let attempts = response
        .headers()
        .get(ATTEMPTS_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let mut body = response.into_body();
    let mut first_byte = None;
    let mut snippet = Vec::new();
    // The last bytes of the body: enough to hold `[DONE]` and the SSE framing around it.
    let mut tail = Vec::with_capacity(64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| format!("response body: {error}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        first_byte.get_or_insert_with(Instant::now);
        if !status.is_success() && snippet.len() < FAILURE_SNIPPET_BYTES {
            let room = FAILURE_SNIPPET_BYTES - snippet.len();
            snippet.extend_from_slice(&data[..data.len().min(room)]);
        }
        if stream {
            keep_tail(&mut tail, data);
        }
    }
    let complete = !stream || ends_with_done(&tail);
    Ok(Exchange {
        status,
        first_byte,
        attempts,
        complete,
        snippet,
    })
}

const TAIL_BYTES: usize = 32;

fn keep_tail(tail: &mut Vec<u8>, data: &[u8]) {
    let data = &data[data.len().saturating_sub(TAIL_BYTES)..];
    tail.extend_from_slice(data);
    let excess = tail.len().saturating_sub(TAIL_BYTES);
    tail.drain(..excess);
}

/// Whether an SSE body's last event is OpenAI's `data: [DONE]` terminator.
fn ends_with_done(tail: &[u8]) -> bool {
    let trimmed = tail.trim_ascii_end();
    trimmed.ends_with(b"[DONE]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Response, StatusCode};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    /// A throwaway HTTP/1.1 responder: the path picks the behaviour.
    async fn responder() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|request: Request<Incoming>| async move {
                        let path = request.uri().path().to_owned();
                        let _ = request.into_body().collect().await;
                        let (status, body) = match path.as_str() {
                            "/json" | "/retried" => (StatusCode::OK, "{\"ok\":true}"),
                            "/sse" => (StatusCode::OK, "data: {\"x\":1}\n\ndata: [DONE]\n\n"),
                            "/cut" => (StatusCode::OK, "data: {\"x\":1}\n\n"),
                            _ => (StatusCode::SERVICE_UNAVAILABLE, "{\"error\":\"busy\"}"),
                        };
                        let attempts = if path == "/retried" { "2" } else { "1" };
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(status)
                                .header(ATTEMPTS_HEADER, attempts)
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        address
    }

    fn plan(target: SocketAddr, path: &str, stream: bool) -> LoadPlan {
        LoadPlan {
            target,
            path: path.to_owned(),
            body: Bytes::from_static(b"{}"),
            stream,
            concurrency: 4,
            warmup: Duration::from_millis(50),
            phases: vec![Duration::from_millis(200)],
            request_timeout: Duration::from_secs(5),
            unique_bodies: false,
        }
    }

    /// The one outcome of a single-phase plan.
    fn single(outcomes: Result<PhaseOutcomes, LoadError>) -> LoadOutcome {
        let mut outcomes = outcomes.unwrap();
        assert_eq!(outcomes.len(), 1);
        outcomes.pop().unwrap()
    }

    #[test]
    fn unique_bodies_differ_by_a_counter_in_the_first_content() {
        let target = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut plan = plan(target, "/v1/chat/completions", false);
        plan.body = Bytes::from_static(br#"{"messages":[{"role":"user","content":"hi"}]}"#);
        let body = |request: Request<Full<Bytes>>| {
            let full = request.into_body();
            let bytes =
                futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(full))
                    .unwrap()
                    .unwrap()
                    .to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let same = RequestTemplate::new(&plan).unwrap();
        assert_eq!(body(same.request()), body(same.request()));
        plan.unique_bodies = true;
        let unique = RequestTemplate::new(&plan).unwrap();
        assert_eq!(
            body(unique.request()),
            r##"{"messages":[{"role":"user","content":"#0 hi"}]}"##
        );
        assert_eq!(
            body(unique.request()),
            r##"{"messages":[{"role":"user","content":"#1 hi"}]}"##
        );
        plan.body = Bytes::from_static(b"{}");
        assert!(
            RequestTemplate::new(&plan).is_err(),
            "nowhere to put the counter"
        );
    }

    #[test]
    fn schedule_places_instants_in_their_phase() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let schedule = Schedule::new(start, &[ms(100), ms(50), ms(100)]);
        assert_eq!(schedule.start(), start);
        assert_eq!(schedule.end(), start + ms(250));
        assert_eq!(schedule.phase_of(start.checked_sub(ms(1)).unwrap()), None);
        assert_eq!(schedule.phase_of(start), Some(0));
        assert_eq!(schedule.phase_of(start + ms(99)), Some(0));
        assert_eq!(schedule.phase_of(start + ms(100)), Some(1));
        assert_eq!(schedule.phase_of(start + ms(149)), Some(1));
        assert_eq!(schedule.phase_of(start + ms(150)), Some(2));
        assert_eq!(schedule.phase_of(start + ms(250)), None);
        assert_eq!(schedule.bounds(0), (start, start + ms(100)));
        assert_eq!(schedule.bounds(1), (start + ms(100), start + ms(150)));
        assert_eq!(schedule.bounds(2), (start + ms(150), start + ms(250)));
    }

    #[tokio::test]
    async fn a_plan_without_phases_is_refused() {
        let mut empty = plan(SocketAddr::from(([127, 0, 0, 1], 9)), "/json", false);
        empty.phases.clear();
        assert!(generate(empty, Instant::now()).await.is_err());
    }

    #[tokio::test]
    async fn every_phase_gets_its_own_outcome() {
        let target = responder().await;
        let mut phased = plan(target, "/json", false);
        phased.phases = vec![Duration::from_millis(100), Duration::from_millis(150)];
        assert_eq!(phased.measured(), Duration::from_millis(250));
        let outcomes = generate(phased, Instant::now()).await.unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|outcome| outcome.succeeded > 0));
        // An earlier phase lasts exactly its length; the last one covers its stragglers.
        assert_eq!(outcomes[0].elapsed, Duration::from_millis(100));
        assert!(outcomes[1].elapsed >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn keep_alive_requests_are_recorded() {
        let target = responder().await;
        let outcome = single(generate(plan(target, "/json", false), Instant::now()).await);
        assert!(outcome.succeeded > 0);
        assert_eq!(outcome.latency.len(), outcome.succeeded);
        assert_eq!((outcome.errors, outcome.non_success), (0, 0));
        assert_eq!(outcome.reconnects, 0);
        assert!(outcome.elapsed >= Duration::from_millis(200));
        assert!(outcome.requests_per_second() > 0.0);
    }

    #[tokio::test]
    async fn responses_after_a_failover_are_measured_apart() {
        let target = responder().await;
        let first_try = single(generate(plan(target, "/json", false), Instant::now()).await);
        assert_eq!(first_try.retried_latency.len(), 0);
        let retried = single(generate(plan(target, "/retried", false), Instant::now()).await);
        assert!(retried.succeeded > 0);
        assert_eq!(retried.retried_latency.len(), retried.succeeded);
    }

    #[tokio::test]
    async fn complete_streams_count_and_cut_ones_are_errors() {
        let target = responder().await;
        let complete = single(generate(plan(target, "/sse", true), Instant::now()).await);
        assert!(complete.succeeded > 0);
        assert_eq!(complete.first_byte.len(), complete.succeeded);
        assert_eq!(complete.errors, 0);

        let cut = single(generate(plan(target, "/cut", true), Instant::now()).await);
        assert_eq!(cut.succeeded, 0);
        assert!(cut.errors > 0);
        assert!(cut.first_failure.unwrap().contains("[DONE]"));
    }

    #[tokio::test]
    async fn non_success_statuses_are_counted_apart() {
        let target = responder().await;
        let outcome = single(generate(plan(target, "/busy", false), Instant::now()).await);
        assert_eq!(outcome.succeeded, 0);
        assert!(outcome.non_success > 0);
        assert_eq!(outcome.latency.len(), 0);
        let failure = outcome.first_failure.unwrap();
        assert!(
            failure.contains("503") && failure.contains("busy"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn a_dead_target_gives_errors_and_still_stops() {
        // Bind and drop to get a port that nothing listens on.
        let target = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let outcome = single(generate(plan(target, "/json", false), Instant::now()).await);
        assert_eq!(outcome.succeeded, 0);
        assert!(outcome.errors > 0);
        assert!(outcome.first_failure.unwrap().starts_with("connect"));
    }

    #[test]
    fn the_stream_tail_keeps_the_last_bytes() {
        let mut tail = Vec::new();
        keep_tail(&mut tail, b"data: {\"a\":1}\n\n");
        keep_tail(&mut tail, &[b'x'; 100]);
        keep_tail(&mut tail, b"data: [DONE]\n\n");
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(ends_with_done(&tail));
        assert!(!ends_with_done(b"data: {\"a\":1}\n\n"));
    }

    #[test]
    fn own_runtime_delivers_the_outcome() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let target = runtime.block_on(responder());
        // The responder lives on `runtime`, which must keep running while the generator's
        // own runtime loads it.
        let outcome = runtime.block_on(async {
            let receiver =
                start_on_own_runtime(plan(target, "/json", false), 2, Instant::now()).unwrap();
            single(receiver.await.unwrap())
        });
        assert!(outcome.succeeded > 0);
    }
}
