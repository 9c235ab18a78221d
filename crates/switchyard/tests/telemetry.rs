//! Trace export over real sockets: a client's W3C `traceparent` is continued, the request
//! path's spans reach an OTLP/HTTP collector with the GenAI attributes, and provider requests
//! carry the trace context; with no `[telemetry]`, nothing is exported or propagated.
//!
//! Each test's gateway has its own exporter (the app state's, started from its
//! `[telemetry]`), which sends from the SDK's batch thread to the test's own collector. The
//! collector runs on a thread of its own, independent of the test's runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use common::{PROVIDER_KEYS, TestGateway, client, post_json, three_formats};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AttributeValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;
use serde_json::json;
use switchyard_core::config::{parse_toml, validate};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Most flushes to wait for a span that ends after its response was read.
const MAX_FLUSHES: usize = 200;

/// A tiny OTLP/HTTP collector: keeps every `POST /v1/traces` it receives.
struct Collector {
    url: String,
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<ExportTraceServiceRequest>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let kept = Arc::clone(&received);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: Bytes| {
                        let kept = Arc::clone(&kept);
                        async move {
                            let request = ExportTraceServiceRequest::decode(body).unwrap();
                            kept.lock().unwrap().push(request);
                            // An empty ExportTraceServiceResponse encodes to no bytes.
                            ([("content-type", "application/x-protobuf")], Bytes::new())
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Collector {
            url,
            received,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Export requests received so far.
    fn exports(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Every span received so far, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Span)> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource: &ResourceSpans| {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|resource| {
                        resource
                            .attributes
                            .iter()
                            .find(|kv| kv.key == "service.name")
                    })
                    .and_then(|kv| kv.value.as_ref()?.value.clone())
                    .map(|value| match value {
                        AttributeValue::StringValue(name) => name,
                        other => panic!("service.name is {other:?}"),
                    })
                    .unwrap_or_default();
                resource
                    .scope_spans
                    .iter()
                    .flat_map(|scope| &scope.spans)
                    .map(move |span| (service.clone(), span.clone()))
            })
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<AttributeValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(AttributeValue::StringValue(value)) => value,
        other => panic!("{key} of {} is {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(AttributeValue::IntValue(value)) => value,
        other => panic!("{key} of {} is {other:?}", span.name),
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|span| span.name == name).collect()
}

fn only<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(
        found.len(),
        1,
        "one `{name}` span expected among {:?}",
        spans.iter().map(|span| &span.name).collect::<Vec<_>>()
    );
    found[0]
}

fn is_error(span: &Span) -> bool {
    span.status
        .as_ref()
        .is_some_and(|status| status.code == StatusCode::Error as i32)
}

/// A gateway over `mock` whose spans go to `collector`, as `switchyard serve` would export
/// them with `[telemetry]` pointing there.
struct Traced {
    gateway: TestGateway,
}

impl Traced {
    async fn start(mock: &MockHandle, collector: &Collector, extra: &str) -> Self {
        let toml = three_formats(
            &mock.base_url(),
            &format!(
                "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"switchyard-test\"\n{extra}",
                collector.url
            ),
        );
        let gateway = TestGateway::start(&toml, PROVIDER_KEYS).await;
        assert!(gateway.state.telemetry.is_some());
        Traced { gateway }
    }

    /// Flushes until spans with each of `names` have arrived, and returns every span
    /// received. (A request's span ends when its response body is dropped, which may be just
    /// after the client has read it.)
    async fn spans_with(&self, collector: &Collector, names: &[&str]) -> Vec<Span> {
        for _ in 0..MAX_FLUSHES {
            let telemetry = self.gateway.state.telemetry.as_ref().unwrap();
            telemetry.flush().await.unwrap();
            let spans = collector.spans();
            if names
                .iter()
                .all(|name| spans.iter().any(|(_, span)| span.name == *name))
            {
                for (service, _) in &spans {
                    assert_eq!(service, "switchyard-test");
                }
                return spans.into_iter().map(|(_, span)| span).collect();
            }
            tokio::task::yield_now().await;
        }
        panic!("no spans named {names:?} after {MAX_FLUSHES} flushes");
    }

    async fn stop(self) {
        self.gateway.stop().await;
    }
}

async fn mock(name: &str) -> MockHandle {
    MockProvider::builder()
        .name(name)
        .expect_api_key("provider-key")
        .spawn()
        .await
        .unwrap()
}

fn chat(model: &str, text: &str) -> serde_json::Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn a_client_trace_is_continued_through_every_stage_to_the_provider() {
    let mock = mock("alpha").await;
    let collector = Collector::start();
    let traced = Traced::start(
        &mock,
        &collector,
        "[[routes]]\nmodel = \"smart\"\ntargets = [ { provider = \"openai\", model = \"mock-large\" } ]\n",
    )
    .await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, _, body) = post_json(
        &traced.gateway.url("/v1/chat/completions"),
        &chat("smart", "hello there"),
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let spans = traced
        .spans_with(&collector, &["POST /v1/chat/completions"])
        .await;

    for span in &spans {
        assert_eq!(hex(&span.trace_id), CLIENT_TRACE, "{}", span.name);
    }
    let root = only(&spans, "POST /v1/chat/completions");
    assert_eq!(hex(&root.parent_span_id), CLIENT_SPAN);
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(text(root, "http.request.method"), "POST");
    assert_eq!(text(root, "http.route"), "/v1/chat/completions");
    assert_eq!(int(root, "http.response.status_code"), 200);

    for stage in ["auth", "parse", "route", "upstream"] {
        assert_eq!(
            only(&spans, stage).parent_span_id,
            root.span_id,
            "{stage} is a child of the request"
        );
    }
    let upstream = only(&spans, "upstream");
    let call = only(&spans, "chat mock-large");
    assert_eq!(call.parent_span_id, upstream.span_id);
    let translate = only(&spans, "translate");
    assert_eq!(translate.parent_span_id, call.span_id);
    // Every span lies within its parent's time (they are made from the request path's
    // monotonic laps), and the stages follow one another.
    let within = |child: &Span, parent: &Span| {
        assert!(
            parent.start_time_unix_nano <= child.start_time_unix_nano
                && child.start_time_unix_nano <= child.end_time_unix_nano
                && child.end_time_unix_nano <= parent.end_time_unix_nano,
            "{} lies within {}",
            child.name,
            parent.name
        );
    };
    for stage in ["auth", "parse", "route", "upstream"] {
        within(only(&spans, stage), root);
    }
    within(call, upstream);
    within(translate, call);
    assert!(only(&spans, "auth").end_time_unix_nano <= only(&spans, "parse").start_time_unix_nano);
    assert!(only(&spans, "route").end_time_unix_nano <= upstream.start_time_unix_nano);

    assert_eq!(call.kind, SpanKind::Client as i32);
    assert!(!is_error(call));
    assert_eq!(text(call, "gen_ai.operation.name"), "chat");
    assert_eq!(text(call, "gen_ai.provider.name"), "openai");
    assert_eq!(text(call, "gen_ai.request.model"), "mock-large");
    assert_eq!(text(call, "switchyard.provider"), "openai");
    assert_eq!(text(call, "server.address"), "127.0.0.1");
    assert_eq!(int(call, "server.port"), i64::from(mock.addr().port()));
    assert_eq!(int(call, "http.response.status_code"), 200);
    assert_eq!(
        int(call, "gen_ai.usage.input_tokens"),
        body["usage"]["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        int(call, "gen_ai.usage.output_tokens"),
        body["usage"]["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(attribute(call, "error.type"), None);

    // The provider got the gateway's own span as parent, in the client's trace; nothing else
    // of the client's headers.
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].headers["traceparent"],
        format!("00-{CLIENT_TRACE}-{}-01", hex(&call.span_id))
    );
    traced.stop().await;
}

#[tokio::test]
async fn every_failover_attempt_is_a_provider_call_span() {
    let mock = mock("alpha").await;
    mock.push_script(Behavior::status(500));
    let collector = Collector::start();
    let traced = Traced::start(
        &mock,
        &collector,
        "[[routes]]\nmodel = \"pair\"\ntargets = [ { provider = \"openai\", model = \"mock-a\" }, { provider = \"openai\", model = \"mock-b\" } ]\n",
    )
    .await;
    // No traceparent: the gateway starts a trace of its own.
    let (status, headers, body) = post_json(
        &traced.gateway.url("/v1/chat/completions"),
        &chat("pair", "hello"),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-attempts"], "2");
    let spans = traced
        .spans_with(&collector, &["POST /v1/chat/completions"])
        .await;
    let root = only(&spans, "POST /v1/chat/completions");
    assert!(root.parent_span_id.is_empty(), "a new trace has no parent");
    for span in &spans {
        assert_eq!(span.trace_id, root.trace_id, "{}", span.name);
    }

    let upstream = only(&spans, "upstream");
    let failed = only(&spans, "chat mock-a");
    let served = only(&spans, "chat mock-b");
    for call in [failed, served] {
        assert_eq!(call.parent_span_id, upstream.span_id);
        assert_eq!(text(call, "gen_ai.operation.name"), "chat");
    }
    assert!(is_error(failed));
    assert_eq!(int(failed, "http.response.status_code"), 500);
    assert!(attribute(failed, "error.type").is_some());
    assert_eq!(attribute(failed, "gen_ai.usage.output_tokens"), None);
    assert!(!is_error(served));
    assert_eq!(int(served, "http.response.status_code"), 200);
    assert_eq!(attribute(served, "error.type"), None);

    // Each attempt carried its own span as the parent.
    let sent: Vec<String> = mock
        .requests()
        .iter()
        .map(|request| request.headers["traceparent"].clone())
        .collect();
    let trace = hex(&root.trace_id);
    assert_eq!(
        sent,
        [
            format!("00-{trace}-{}-01", hex(&failed.span_id)),
            format!("00-{trace}-{}-01", hex(&served.span_id)),
        ]
    );
    traced.stop().await;
}

#[tokio::test]
async fn a_stream_and_embeddings_have_their_provider_call_spans() {
    let mock = mock("alpha").await;
    let collector = Collector::start();
    let traced = Traced::start(&mock, &collector, "").await;

    let response = client()
        .post(traced.gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            json!({"model": "mock-small", "stream": true,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "count to three"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text_body = response.text().await.unwrap();
    let usage: serde_json::Value = common::sse_data(&text_body)
        .iter()
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .find(|chunk| !chunk["usage"].is_null())
        .map(|chunk| chunk["usage"].clone())
        .unwrap();
    let (status, _, _) = post_json(
        &traced.gateway.url("/v1/embeddings"),
        &json!({"model": "mock-embed", "input": "hello"}),
        &[],
    )
    .await;
    assert_eq!(status, 200);

    let spans = traced
        .spans_with(
            &collector,
            &["POST /v1/chat/completions", "POST /v1/embeddings"],
        )
        .await;
    // The stream's call span stays open until the stream ends, so it has the usage.
    let stream = only(&spans, "chat mock-small");
    assert_eq!(
        int(stream, "gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        only(&spans, "POST /v1/chat/completions").trace_id,
        stream.trace_id
    );
    let embeddings = only(&spans, "embeddings mock-embed");
    assert_eq!(text(embeddings, "gen_ai.operation.name"), "embeddings");
    assert_eq!(int(embeddings, "http.response.status_code"), 200);
    traced.stop().await;
}

#[tokio::test]
async fn the_clients_sampling_decision_is_followed() {
    let mock = mock("alpha").await;
    let collector = Collector::start();
    let traced = Traced::start(&mock, &collector, "").await;
    // Flag 00: the client did not sample this trace, so neither does the gateway.
    let (status, _, _) = post_json(
        &traced.gateway.url("/v1/chat/completions"),
        &chat("mock-small", "hello"),
        &[(
            "traceparent",
            &format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"),
        )],
    )
    .await;
    assert_eq!(status, 200);
    let sent = &mock.requests()[0].headers["traceparent"];
    assert!(
        sent.starts_with(&format!("00-{CLIENT_TRACE}-")) && sent.ends_with("-00"),
        "{sent}"
    );
    // A request of a trace of the gateway's own is sampled (ratio 1): its spans arrive, the
    // unsampled trace's never do.
    let (status, _, _) = post_json(
        &traced.gateway.url("/v1/embeddings"),
        &json!({"model": "mock-embed", "input": "hi"}),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let spans = traced
        .spans_with(&collector, &["POST /v1/embeddings"])
        .await;
    assert!(spans.iter().all(|span| hex(&span.trace_id) != CLIENT_TRACE));
    assert!(
        spans.iter().all(|span| !span.name.starts_with("chat")),
        "{:?}",
        spans.iter().map(|span| &span.name).collect::<Vec<_>>()
    );
    traced.stop().await;
}

#[tokio::test]
async fn without_telemetry_nothing_is_exported_or_propagated() {
    let mock = mock("alpha").await;
    let collector = Collector::start();
    let toml = three_formats(&mock.base_url(), "");
    let env: HashMap<String, String> = PROVIDER_KEYS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(
        validate(&parse_toml(&toml).unwrap(), &env)
            .unwrap()
            .telemetry,
        None
    );
    // Spans enabled, as under RUST_LOG=debug: still nothing goes upstream.
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
        ),
    );
    let gateway = TestGateway::start(&toml, PROVIDER_KEYS).await;
    let (status, _, _) = post_json(
        &gateway.url("/v1/chat/completions"),
        &chat("mock-small", "hello"),
        &[(
            "traceparent",
            &format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
        )],
    )
    .await;
    assert_eq!(status, 200);
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert!(
        !recorded[0].headers.contains_key("traceparent"),
        "{:?}",
        recorded[0].headers
    );
    gateway.stop().await;
    assert_eq!(collector.exports(), 0);
}

#[tokio::test]
async fn a_failed_request_marks_its_root_and_call_spans() {
    let mock = mock("alpha").await;
    for _ in 0..4 {
        mock.push_script(Behavior::status(500));
    }
    let collector = Collector::start();
    let traced = Traced::start(
        &mock,
        &collector,
        "[[routes]]\nmodel = \"lone\"\ntargets = [ { provider = \"openai\", model = \"mock-a\" } ]\n",
    )
    .await;
    let (status, _, body) = post_json(
        &traced.gateway.url("/v1/chat/completions"),
        &chat("lone", "hello"),
        &[],
    )
    .await;
    assert!(status >= 500, "{status} {body}");
    let spans = traced
        .spans_with(&collector, &["POST /v1/chat/completions"])
        .await;
    let root = only(&spans, "POST /v1/chat/completions");
    assert!(is_error(root));
    assert_eq!(int(root, "http.response.status_code"), i64::from(status));
    assert!(attribute(root, "error.type").is_some());
    let calls = named(&spans, "chat mock-a");
    assert!(!calls.is_empty());
    for call in calls {
        assert!(is_error(call));
        assert_eq!(int(call, "http.response.status_code"), 500);
    }
    traced.stop().await;
}
