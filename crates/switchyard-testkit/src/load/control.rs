//! One-off HTTP calls to the children's control endpoints: the mock's `/__mock/*` API and
//! the gateway's `GET /admin/providers`.
//!
//! Each call opens a fresh loopback connection and closes it, so a control call never
//! shares (or waits behind) the load generator's connections and leaves nothing open when a
//! child is killed. Bounded by a timeout. This module knows nothing of what the calls mean.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one control call may take, connect included.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `method path` with an optional JSON body to `address` and returns the status and
/// the whole response body. Any failure is described in the error.
pub async fn call(
    address: SocketAddr,
    method: Method,
    path: &str,
    json_body: Option<&str>,
) -> Result<(StatusCode, Bytes), String> {
    tokio::time::timeout(CONTROL_TIMEOUT, exchange(address, method, path, json_body))
        .await
        .map_err(|_| format!("no answer within {CONTROL_TIMEOUT:?}"))?
}

/// Like [`call`], but a non-2xx status is an error and the body must be JSON.
pub async fn call_json(
    address: SocketAddr,
    method: Method,
    path: &str,
    json_body: Option<&str>,
) -> Result<serde_json::Value, String> {
    let (status, body) = call(address, method.clone(), path, json_body).await?;
    if !status.is_success() {
        return Err(format!(
            "{method} {path} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|error| format!("{method} {path} answered something that is not JSON: {error}"))
}

async fn exchange(
    address: SocketAddr,
    method: Method,
    path: &str,
    json_body: Option<&str>,
) -> Result<(StatusCode, Bytes), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect to {address}: {error}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake with {address}: {error}"))?;
    let driver = tokio::spawn(async move {
        // Its end shows up as an error on the request, if it matters.
        let _ = connection.await;
    });
    let body = Bytes::from(json_body.unwrap_or_default().to_owned());
    let host = HeaderValue::from_str(&address.to_string())
        .map_err(|error| format!("host header: {error}"))?;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = path
        .parse()
        .map_err(|error| format!("path {path:?}: {error}"))?;
    request.headers_mut().insert(HOST, host);
    if json_body.is_some() {
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("request to {address}{path}: {error}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("response from {address}{path}: {error}"))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockProvider;

    #[tokio::test]
    async fn talks_to_the_mock_control_api() {
        let mock = MockProvider::builder().spawn().await.unwrap();
        let address = mock.addr();
        let echo = call_json(
            address,
            Method::POST,
            "/__mock/behavior",
            Some(r#"{"error_status": 500}"#),
        )
        .await
        .unwrap();
        assert_eq!(echo["error_status"], 500);
        let calls = call_json(address, Method::GET, "/__mock/calls", None)
            .await
            .unwrap();
        assert_eq!(calls["calls"], 0);
        let error = call_json(address, Method::GET, "/__mock/nothing", None)
            .await
            .unwrap_err();
        assert!(error.contains("404"), "{error}");
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn a_dead_address_is_an_error_not_a_hang() {
        let address = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let error = call(address, Method::GET, "/", None).await.unwrap_err();
        assert!(error.contains("connect"), "{error}");
    }
}
