//! OpenAI wire types: what clients send and what the gateway answers.
//!
//! These are the gateway's lingua franca. Provider adapters translate other wire formats to
//! and from them. Parsing goes through [`parse_body`], which names the offending field.

mod chat;
mod embeddings;
mod usage;

pub use chat::*;
pub use embeddings::*;
pub use usage::*;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::GatewayError;

/// Parses a JSON request body into `T`. Errors are 400s that name the field at fault
/// (`messages[0].content`) and say what was expected.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::invalid_request(
            "The request body is empty; expected a JSON object",
        ));
    }
    // Fast path: plain serde_json. Only a body that fails is parsed again with path
    // tracking, which costs on every field, to name the field at fault.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        body_error(&path, error.into_inner())
    })?;
    deserializer.end().map_err(|error| body_error(".", error))?;
    Ok(value)
}

fn body_error(path: &str, inner: serde_json::Error) -> GatewayError {
    let message = match inner.classify() {
        // The path is only where parsing stopped, not a field at fault: no `param`.
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            return GatewayError::invalid_request(format!(
                "The request body is not valid JSON: {inner}"
            ));
        }
        serde_json::error::Category::Io => "The request body could not be read".to_owned(),
        serde_json::error::Category::Data if path == "." => {
            let text = inner.to_string();
            if let Some(field) = text
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                return GatewayError::invalid_request(format!(
                    "The request body is missing the required field `{field}`"
                ))
                .with_param(field.to_owned());
            }
            format!("The request body must be a JSON object: {inner}")
        }
        serde_json::error::Category::Data => format!("Invalid value for `{path}`: {inner}"),
    };
    let error = GatewayError::invalid_request(message);
    if path == "." || path.is_empty() {
        error
    } else {
        error.with_param(path)
    }
}

/// `GET /v1/models` answer.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<ModelInfo>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The name clients send as `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds (0: unknown).
    pub created: u64,
    /// The provider, or `switchyard` for a configured route.
    pub owned_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_bodies_get_clear_messages() {
        let error = parse_body::<ChatRequest>(b"").unwrap_err();
        assert!(error.message.contains("empty"));
        let error = parse_body::<ChatRequest>(b"{\"model\": ").unwrap_err();
        assert!(
            error.message.contains("not valid JSON"),
            "{}",
            error.message
        );
        let error = parse_body::<ChatRequest>(b"[1,2]").unwrap_err();
        assert!(
            error.message.contains("must be a JSON object"),
            "{}",
            error.message
        );
        let error = parse_body::<ChatRequest>(
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]} trailing"#,
        )
        .unwrap_err();
        assert!(
            error.message.contains("not valid JSON"),
            "{}",
            error.message
        );
        let error = parse_body::<ChatRequest>(b"{}").unwrap_err();
        assert_eq!(error.param.as_deref(), Some("model"));
        assert!(
            error.message.contains("missing the required field `model`"),
            "{}",
            error.message
        );
        let error = parse_body::<ChatRequest>(b"{\"model\":\"\xff\"}").unwrap_err();
        assert_eq!(error.status(), 400);
    }

    #[test]
    fn syntax_errors_name_no_param() {
        let bodies: [&[u8]; 4] = [
            br#"{"model":"m","messages":[{"role":"user","content":"x"},]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}"#,
            br#"{"model":"m","temperature":0.5,"messages":[{"role":"user","content":"x"}]} x"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x" "#,
        ];
        for body in bodies {
            let error = parse_body::<ChatRequest>(body).unwrap_err();
            assert!(
                error.message.contains("not valid JSON"),
                "{}",
                error.message
            );
            assert_eq!(error.param, None, "{}", String::from_utf8_lossy(body));
        }
    }
}
