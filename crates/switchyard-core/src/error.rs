//! The gateway's one error model.
//!
//! Every failure on the request path, whether the client sent something wrong, a provider
//! answered with an error, or the gateway itself failed, becomes a [`GatewayError`]. It knows
//! its [`ErrorKind`] (and so its HTTP status and OpenAI error `type`), where it came from
//! ([`Origin`]) and whether another attempt could succeed. It turns into an OpenAI-shaped body
//! in exactly one place, [`GatewayError::to_body`].
//!
//! This module must not format internal details (paths, socket errors, panics) into client
//! messages: callers pass a message that is safe to show.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// What went wrong, in the client's terms. Each kind has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or asks for something impossible (400).
    InvalidRequest,
    /// No or wrong credentials (401).
    Authentication,
    /// Credentials are valid but not allowed to do this (403).
    PermissionDenied,
    /// Unknown model, route or path (404).
    NotFound,
    /// The HTTP method is not allowed on this path (405).
    MethodNotAllowed,
    /// The request body is over the configured limit (413).
    PayloadTooLarge,
    /// The body is not JSON (415).
    UnsupportedMediaType,
    /// A rate limit refused the request (429).
    RateLimited,
    /// A spending budget cannot afford the request (429, OpenAI's `insufficient_quota`).
    QuotaExceeded,
    /// The gateway failed in a way that is not the client's or the provider's fault (500).
    Internal,
    /// A provider answered with an error or with something the gateway could not read (502).
    BadGateway,
    /// The gateway or every provider is overloaded or unavailable (503).
    Unavailable,
    /// A deadline passed: connect, first byte, idle or total (504).
    Timeout,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::RateLimited | ErrorKind::QuotaExceeded => 429,
            ErrorKind::Internal => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// The OpenAI error `type` string that SDKs and dashboards expect.
    pub fn openai_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::QuotaExceeded => "insufficient_quota",
            ErrorKind::Internal => "api_error",
            ErrorKind::BadGateway | ErrorKind::Unavailable | ErrorKind::Timeout => "server_error",
        }
    }

    /// A short stable name for metrics and logs (`error class`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Authentication => "authentication",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::QuotaExceeded => "insufficient_quota",
            ErrorKind::Internal => "internal",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// Who caused the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The client's request.
    Client,
    /// A provider, by its configured name.
    Upstream(String),
    /// The gateway itself.
    Gateway,
}

/// One error on the request path. Cheap to build; the message is safe to show to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayError {
    /// What went wrong; decides the HTTP status.
    pub kind: ErrorKind,
    /// Who caused it.
    pub origin: Origin,
    /// A client-safe, human-readable message that names the problem.
    pub message: Cow<'static, str>,
    /// The request field at fault, as OpenAI's `param`.
    pub param: Option<String>,
    /// A machine-readable code, as OpenAI's `code`.
    pub code: Option<Cow<'static, str>>,
    /// Whether another attempt (on this or another provider) might succeed.
    pub retryable: bool,
    /// How long the provider asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The status the provider answered with, when the error came from one.
    pub upstream_status: Option<u16>,
}

impl GatewayError {
    /// A new error of `kind` from `origin`. Retryability defaults by kind.
    pub fn new(kind: ErrorKind, origin: Origin, message: impl Into<Cow<'static, str>>) -> Self {
        let retryable = matches!(
            kind,
            ErrorKind::RateLimited
                | ErrorKind::BadGateway
                | ErrorKind::Unavailable
                | ErrorKind::Timeout
        ) && origin != Origin::Client;
        GatewayError {
            kind,
            origin,
            message: message.into(),
            param: None,
            code: None,
            retryable,
            retry_after: None,
            upstream_status: None,
        }
    }

    /// A 400 caused by the client's request.
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidRequest, Origin::Client, message)
    }

    /// A 404 for an unknown model or route.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            Origin::Client,
            format!("The model `{model}` does not exist or is not served by this gateway"),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// A 500 whose details stay in the logs.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, Origin::Gateway, message)
    }

    /// Sets the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable code.
    pub fn with_code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Overrides retryability.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Sets the provider's requested back-off.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The OpenAI-shaped body: `{"error":{"message","type","param","code"}}`.
    pub fn to_body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorObject {
                message: &self.message,
                r#type: self.kind.openai_type(),
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        }
    }

    /// The body serialised to JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings cannot fail; fall back to a fixed body all the same.
        serde_json::to_vec(&self.to_body()).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"api_error","param":null,"code":null}}"#
                .to_vec()
        })
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Upstream(provider) => write!(
                f,
                "{} from provider {provider}: {}",
                self.kind.as_str(),
                self.message
            ),
            _ => write!(f, "{}: {}", self.kind.as_str(), self.message),
        }
    }
}

impl std::error::Error for GatewayError {}

/// OpenAI's error envelope.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// The error itself.
    pub error: ErrorObject<'a>,
}

/// OpenAI's error object. `param` and `code` are always present, `null` when unknown.
#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    /// Human-readable message.
    pub message: &'a str,
    /// OpenAI error type.
    #[serde(rename = "type")]
    pub r#type: &'a str,
    /// The request field at fault.
    pub param: Option<&'a str>,
    /// Machine-readable code.
    pub code: Option<&'a str>,
}

/// Maps a provider's HTTP error status to the gateway's kind and retryability.
///
/// 4xx answers that describe the client's request keep their meaning; a provider rejecting
/// the gateway's own credentials is the operator's problem, so it becomes a 502 rather than
/// telling the client its key is wrong.
pub fn kind_for_upstream_status(status: u16) -> (ErrorKind, bool) {
    match status {
        400 | 422 => (ErrorKind::InvalidRequest, false),
        401 | 403 => (ErrorKind::BadGateway, false),
        404 => (ErrorKind::NotFound, false),
        408 => (ErrorKind::Timeout, true),
        409 => (ErrorKind::BadGateway, true),
        413 => (ErrorKind::PayloadTooLarge, false),
        429 => (ErrorKind::RateLimited, true),
        500..=599 => {
            if status == 503 || status == 529 {
                (ErrorKind::Unavailable, true)
            } else if status == 504 {
                (ErrorKind::Timeout, true)
            } else {
                (ErrorKind::BadGateway, true)
            }
        }
        _ => (ErrorKind::BadGateway, false),
    }
}

/// The gateway error for a provider rejecting the gateway's own credentials: a 502 that is
/// not retried, with a fixed message. The provider's own text is left out because it may echo
/// part of the key (OpenAI: "Incorrect API key provided: sk-proj-****WXYZ"); the native crate
/// logs the provider's answer separately. `status` is what the provider answered with (401,
/// 403, or Gemini's 400 for an invalid key).
pub fn upstream_credentials_rejected(
    provider: &str,
    status: u16,
    retry_after: Option<Duration>,
) -> GatewayError {
    let mut error = GatewayError::new(
        ErrorKind::BadGateway,
        Origin::Upstream(provider.to_owned()),
        format!("provider {provider} rejected the gateway's credentials ({status})"),
    )
    .with_retryable(false)
    .with_retry_after(retry_after)
    .with_code("upstream_authentication_failed");
    error.upstream_status = Some(status);
    error
}

/// Builds the gateway error for a provider's error answer, given the message and code that a
/// wire-format adapter extracted from the body.
pub fn upstream_error(
    provider: &str,
    status: u16,
    message: Option<String>,
    code: Option<String>,
    retry_after: Option<Duration>,
) -> GatewayError {
    if status == 401 || status == 403 {
        return upstream_credentials_rejected(provider, status, retry_after);
    }
    let (kind, retryable) = kind_for_upstream_status(status);
    let content_policy = code
        .as_deref()
        .is_some_and(|c| c.contains("content_policy"))
        || message
            .as_deref()
            .is_some_and(|m| m.contains("content management policy"));
    let detail = message.unwrap_or_else(|| "no error message".to_owned());
    let message = format!("provider {provider} returned {status}: {detail}");
    let mut error = GatewayError::new(kind, Origin::Upstream(provider.to_owned()), message)
        .with_retryable(retryable && !content_policy)
        .with_retry_after(retry_after);
    error.upstream_status = Some(status);
    error.code = code.map(Cow::Owned);
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape_with_null_fields() {
        let error = GatewayError::invalid_request("bad");
        let body: serde_json::Value = serde_json::from_slice(&error.to_json()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}})
        );
    }

    #[test]
    fn client_errors_are_never_retryable() {
        for kind in [
            ErrorKind::RateLimited,
            ErrorKind::Timeout,
            ErrorKind::BadGateway,
        ] {
            assert!(!GatewayError::new(kind, Origin::Client, "x").retryable);
            assert!(GatewayError::new(kind, Origin::Upstream("p".into()), "x").retryable);
        }
    }

    #[test]
    fn upstream_statuses_map_to_kinds() {
        let cases = [
            (400, 400, false),
            (401, 502, false),
            (403, 502, false),
            (404, 404, false),
            (408, 504, true),
            (422, 400, false),
            (429, 429, true),
            (500, 502, true),
            (502, 502, true),
            (503, 503, true),
            (504, 504, true),
            (529, 503, true),
        ];
        for (upstream, status, retryable) in cases {
            let error = upstream_error("p", upstream, Some("m".into()), None, None);
            assert_eq!(error.status(), status, "upstream {upstream}");
            assert_eq!(error.retryable, retryable, "upstream {upstream}");
            assert_eq!(error.upstream_status, Some(upstream));
        }
    }

    #[test]
    fn content_policy_refusals_are_not_retried() {
        let error = upstream_error(
            "p",
            400,
            Some("flagged".into()),
            Some("content_policy_violation".into()),
            None,
        );
        assert!(!error.retryable);
        assert_eq!(error.code.as_deref(), Some("content_policy_violation"));
    }

    #[test]
    fn upstream_auth_failures_do_not_blame_the_client() {
        let error = upstream_error("openai", 401, Some("Incorrect API key".into()), None, None);
        assert_eq!(error.status(), 502);
        assert!(error.message.contains("provider openai"));
        assert_eq!(
            error.code.as_deref(),
            Some("upstream_authentication_failed")
        );
    }

    #[test]
    fn upstream_auth_failures_never_echo_the_provider_message() {
        for status in [401, 403] {
            let error = upstream_error(
                "openai",
                status,
                Some("Incorrect API key provided: sk-proj-****WXYZ".into()),
                Some("invalid_api_key".into()),
                None,
            );
            assert_eq!(
                error.message,
                format!("provider openai rejected the gateway's credentials ({status})")
            );
            assert!(!String::from_utf8_lossy(&error.to_json()).contains("WXYZ"));
            assert_eq!(
                error.code.as_deref(),
                Some("upstream_authentication_failed")
            );
            assert!(!error.retryable);
            assert_eq!(error.upstream_status, Some(status));
        }
    }
}
