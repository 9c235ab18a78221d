//! Pieces the three wire formats share: which format a request speaks, how a request is
//! rejected, what an answer is before it becomes HTTP, and SSE framing.
//!
//! Pure: no I/O, no clock. The per-format files build on these.

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

use super::{anthropic, gemini, openai};

/// The provider wire format a request speaks; it decides the shape of error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Wire {
    /// The error body this wire format sends with `status`.
    pub fn error_body(self, status: StatusCode, message: &str) -> Value {
        match self {
            Wire::OpenAi => openai::error_body(status, message),
            Wire::Anthropic => anthropic::error_body(status, message),
            Wire::Gemini => gemini::error_body(status, message),
        }
    }
}

/// A request the provider refuses, before or instead of answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub status: StatusCode,
    pub message: String,
}

impl Rejection {
    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

/// A successful answer, before it becomes an HTTP response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// One JSON document (`application/json`).
    Json(Value),
    /// Server-sent events, each already framed (`text/event-stream`).
    Events(Vec<Bytes>),
}

/// Frames one SSE event with only a `data:` line, ending with a blank line.
pub(crate) fn data_event(data: &Value, line_end: &str) -> Bytes {
    let data = data.to_string();
    let mut event = String::with_capacity(data.len() + 6 + 2 * line_end.len());
    event.push_str("data: ");
    event.push_str(&data);
    event.push_str(line_end);
    event.push_str(line_end);
    Bytes::from(event)
}

/// Frames one SSE event with an `event:` name and a `data:` line.
pub(crate) fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The text of a message's content: a string, or the concatenation of its text parts (parts
/// with a string `text` and no type other than `"text"`, which covers OpenAI content parts,
/// Anthropic text blocks and Gemini parts).
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part.get("type").is_none_or(|kind| kind == "text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The string at `key`, if present and a string.
pub(crate) fn str_field<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

/// The array at `key`, or an empty slice when absent or not an array.
pub(crate) fn array_field<'a>(object: &'a Value, key: &str) -> &'a [Value] {
    object
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Whether `key` is `true`.
pub(crate) fn flag(object: &Value, key: &str) -> bool {
    object.get(key).and_then(Value::as_bool).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_text_reads_strings_and_text_parts() {
        assert_eq!(content_text(&json!("hi")), "hi");
        assert_eq!(
            content_text(&json!([
                {"type": "text", "text": "a "},
                {"type": "image_url", "image_url": {"url": "x"}},
                {"text": "b"},
                {"type": "tool_result", "content": "ignored"}
            ])),
            "a b"
        );
        assert_eq!(content_text(&Value::Null), "");
    }

    #[test]
    fn sse_framing() {
        assert_eq!(data_event(&json!({"a": 1}), "\n"), "data: {\"a\":1}\n\n");
        assert_eq!(data_event(&json!(1), "\r\n"), "data: 1\r\n\r\n");
        assert_eq!(
            named_event("ping", &json!({"type": "ping"})),
            "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        );
    }
}
