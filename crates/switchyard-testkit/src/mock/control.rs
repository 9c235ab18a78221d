//! The `/__mock/*` control API, for users outside the process (the Python SDK tests, the load
//! harness) who cannot hold a [`MockHandle`](super::MockHandle):
//!
//! - `POST /__mock/behavior`: body is a `Behavior`; sets the default behaviour.
//! - `GET /__mock/behavior`: the current default behaviour.
//! - `POST /__mock/script`: body is an array of `Behavior`; appended to the one-shot queue.
//! - `GET /__mock/calls`: `{"calls": N}`.
//! - `GET /__mock/trace_exports`: `{"trace_exports": N}`, OTLP exports to `POST /v1/traces`.
//! - `GET /__mock/requests`: the recorded requests, oldest first.
//! - `POST /__mock/reset`: back to the start-up state.
//!
//! Control calls are not counted, recorded or subject to behaviours. Errors are
//! `{"error": "<message>"}` with 400, or 404 for an unknown call.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::behavior::Behavior;
use super::body::{MockBody, json_response};
use super::state::Shared;

/// Handles `/__mock/{command}`.
pub(crate) fn handle(
    shared: &Shared,
    method: &Method,
    command: &str,
    body: &Bytes,
) -> Response<MockBody> {
    match (method.as_str(), command) {
        ("POST", "behavior") => match parse::<Behavior>(body).and_then(validated) {
            Ok(behavior) => {
                let echo = json!(behavior);
                shared.set_behavior(behavior);
                json_response(StatusCode::OK, &echo)
            }
            Err(message) => bad_request(&message),
        },
        ("GET", "behavior") => json_response(StatusCode::OK, &json!(shared.behavior())),
        ("POST", "script") => {
            let script: Result<Vec<Behavior>, String> = parse::<Vec<Behavior>>(body)
                .and_then(|script| script.into_iter().map(validated).collect());
            match script {
                Ok(script) => {
                    shared.push_script(script);
                    json_response(StatusCode::OK, &json!({"queued": shared.scripted()}))
                }
                Err(message) => bad_request(&message),
            }
        }
        ("GET", "calls") => json_response(StatusCode::OK, &json!({"calls": shared.calls()})),
        ("GET", "trace_exports") => json_response(
            StatusCode::OK,
            &json!({"trace_exports": shared.trace_exports()}),
        ),
        ("GET", "requests") => json_response(StatusCode::OK, &json!(shared.requests())),
        ("POST", "reset") => {
            shared.reset();
            json_response(StatusCode::OK, &json!({"reset": true}))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("unknown control call {method} /__mock/{command}")}),
        ),
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|error| format!("invalid body: {error}"))
}

fn validated(behavior: Behavior) -> Result<Behavior, String> {
    behavior.validate().map(|()| behavior)
}

fn bad_request(message: &str) -> Response<MockBody> {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": message}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::Value;

    async fn call(
        shared: &Shared,
        method: Method,
        command: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let response = handle(
            shared,
            &method,
            command,
            &Bytes::copy_from_slice(body.as_bytes()),
        );
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn behavior_script_calls_reset() {
        let shared = Shared::new("m".into(), None, Behavior::default());
        let (status, echo) = call(&shared, Method::POST, "behavior", r#"{"latency_ms": 7}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(echo["latency_ms"], 7);
        assert_eq!(shared.behavior().latency_ms, 7);

        let (_, queued) = call(
            &shared,
            Method::POST,
            "script",
            r#"[{"error_status": 500}, {"error_status": 429, "retry_after_s": 2}]"#,
        )
        .await;
        assert_eq!(queued, json!({"queued": 2}));
        assert_eq!(shared.next_behavior().error_status, Some(500));

        let (_, calls) = call(&shared, Method::GET, "calls", "").await;
        assert_eq!(calls, json!({"calls": 0}));
        let (_, reset) = call(&shared, Method::POST, "reset", "").await;
        assert_eq!(reset, json!({"reset": true}));
        assert_eq!(shared.scripted(), 0);
        assert_eq!(shared.behavior(), Behavior::default());
    }

    #[tokio::test]
    async fn bad_bodies_and_unknown_calls() {
        let shared = Shared::new("m".into(), None, Behavior::default());
        let (status, body) = call(&shared, Method::POST, "behavior", r#"{"latncy_ms": 7}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("latncy_ms"));
        let (status, _) = call(&shared, Method::POST, "script", r#"[{"error_rate": 3}]"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(shared.scripted(), 0);
        let (status, _) = call(&shared, Method::GET, "nothing", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
