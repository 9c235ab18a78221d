//! The Anthropic Messages wire format: `POST /v1/messages` as JSON and as named SSE events,
//! and Anthropic's error shape.
//!
//! Pure functions from request JSON to response JSON or SSE events. Header checks
//! (`x-api-key`, `anthropic-version`) live in the dispatcher.

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::conversation::{Conversation, Reply, ToolChoice, halves, word_chunks};
use super::wire::{Rejection, array_field, content_text, flag, named_event, str_field};

/// Cache-read tokens reported when the system prompt contains `CACHED`.
const CACHE_READ_TOKENS: u64 = 5;
/// Cache-creation tokens reported when the system prompt contains `CACHED`.
const CACHE_CREATION_TOKENS: u64 = 3;

/// A Messages request, reduced to what the answer depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessagesRequest {
    pub model: String,
    pub stream: bool,
    /// The system prompt contains `CACHED`: report cache tokens, so tests can check that the
    /// gateway normalises them.
    pub cached: bool,
    pub conversation: Conversation,
}

/// Reads a Messages request. `max_tokens` is required, as Anthropic requires it.
pub(crate) fn parse_messages(body: &Value) -> Result<MessagesRequest, Rejection> {
    if !body.is_object() {
        return Err(Rejection::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let Some(model) = str_field(body, "model") else {
        return Err(Rejection::bad_request("model: Field required"));
    };
    match body.get("max_tokens") {
        None | Some(Value::Null) => {
            return Err(Rejection::bad_request("max_tokens: Field required"));
        }
        Some(value) if value.as_u64().is_none_or(|max_tokens| max_tokens == 0) => {
            return Err(Rejection::bad_request(
                "max_tokens: Input should be a positive integer",
            ));
        }
        Some(_) => {}
    }
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(Rejection::bad_request("messages: Field required"));
    };

    let mut conversation = Conversation::default();
    let system = content_text(body.get("system").unwrap_or(&Value::Null));
    conversation.add_prompt_text(&system);

    for message in messages {
        let content = message.get("content").unwrap_or(&Value::Null);
        let text = content_text(content);
        conversation.add_prompt_text(&text);
        let results = tool_result_texts(content);
        for result in &results {
            conversation.add_prompt_text(result);
        }
        let is_user = str_field(message, "role") == Some("user");
        if is_user && has_text(content) {
            conversation.last_user_text = text;
        }
        conversation.tool_result = (is_user && !results.is_empty()).then(|| results.concat());
    }

    let declared: Vec<String> = array_field(body, "tools")
        .iter()
        .filter_map(|tool| str_field(tool, "name"))
        .map(str::to_owned)
        .collect();
    conversation.choose_tool(&declared, tool_choice(body.get("tool_choice")));

    Ok(MessagesRequest {
        model: model.to_owned(),
        stream: flag(body, "stream"),
        cached: system.contains("CACHED"),
        conversation,
    })
}

/// Whether a message's content carries text: a string, or at least one text block.
fn has_text(content: &Value) -> bool {
    match content {
        Value::String(_) => true,
        Value::Array(blocks) => blocks
            .iter()
            .any(|block| str_field(block, "type") == Some("text")),
        _ => false,
    }
}

/// The texts of the `tool_result` blocks in a message's content.
fn tool_result_texts(content: &Value) -> Vec<String> {
    match content {
        Value::Array(blocks) => blocks
            .iter()
            .filter(|block| str_field(block, "type") == Some("tool_result"))
            .map(|block| content_text(block.get("content").unwrap_or(&Value::Null)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads `tool_choice`: `{"type": "auto" | "any" | "tool" | "none", "name"}`.
fn tool_choice(choice: Option<&Value>) -> ToolChoice {
    let Some(choice) = choice else {
        return ToolChoice::Auto;
    };
    match str_field(choice, "type") {
        Some("none") => ToolChoice::None,
        Some("any") => ToolChoice::Required,
        Some("tool") => str_field(choice, "name").map_or(ToolChoice::Required, |name| {
            ToolChoice::Named(name.to_owned())
        }),
        _ => ToolChoice::Auto,
    }
}

/// The `usage` object. With `cached`, part of the prompt is reported as cache reads and
/// writes, and `input_tokens` excludes them, as Anthropic reports it.
fn usage(request: &MessagesRequest, output_tokens: u64) -> Value {
    let prompt_tokens = request.conversation.prompt_tokens();
    let (cache_read, cache_creation) = if request.cached {
        (CACHE_READ_TOKENS, CACHE_CREATION_TOKENS)
    } else {
        (0, 0)
    };
    json!({
        "input_tokens": prompt_tokens.saturating_sub(cache_read + cache_creation),
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
    })
}

/// The stop reason for `reply`.
fn stop_reason(reply: &Reply) -> &'static str {
    match reply {
        Reply::Text(_) => "end_turn",
        Reply::ToolCall { .. } => "tool_use",
    }
}

/// The `message` object for response number `sequence`.
pub(crate) fn response(request: &MessagesRequest, reply: &Reply, sequence: u64) -> Value {
    let content = match reply {
        Reply::Text(text) => json!([{"type": "text", "text": text}]),
        Reply::ToolCall { name, arguments } => json!([{
            "type": "tool_use",
            "id": format!("toolu_mock_{sequence}"),
            "name": name,
            "input": arguments,
        }]),
    };
    json!({
        "id": format!("msg_mock_{sequence}"),
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": stop_reason(reply),
        "stop_sequence": null,
        "usage": usage(request, reply.completion_tokens()),
    })
}

/// The named SSE events of a streamed answer, from `message_start` to `message_stop`.
pub(crate) fn stream(request: &MessagesRequest, reply: &Reply, sequence: u64) -> Vec<Bytes> {
    let mut events = Vec::new();
    // Anthropic reports one output token in message_start; the real count comes at the end.
    let start_usage = usage(request, 1);
    events.push(named_event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": format!("msg_mock_{sequence}"),
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": start_usage,
        }}),
    ));

    let (block, deltas) = match reply {
        Reply::Text(text) => (
            json!({"type": "text", "text": ""}),
            word_chunks(text)
                .into_iter()
                .map(|word| json!({"type": "text_delta", "text": word}))
                .collect::<Vec<_>>(),
        ),
        Reply::ToolCall { name, arguments } => {
            let arguments = arguments.to_string();
            let (first, second) = halves(&arguments);
            (
                json!({"type": "tool_use", "id": format!("toolu_mock_{sequence}"),
                       "name": name, "input": {}}),
                vec![
                    json!({"type": "input_json_delta", "partial_json": first}),
                    json!({"type": "input_json_delta", "partial_json": second}),
                ],
            )
        }
    };
    events.push(named_event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ));
    events.push(named_event("ping", &json!({"type": "ping"})));
    for delta in deltas {
        events.push(named_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    events.push(named_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reply), "stop_sequence": null},
            "usage": {"output_tokens": reply.completion_tokens()},
        }),
    ));
    events.push(named_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    events
}

/// An error body in Anthropic's shape, its `type` chosen by `status`.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Value {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> MessagesRequest {
        parse_messages(&body).unwrap()
    }

    #[test]
    fn max_tokens_is_required() {
        let error = parse_messages(&json!({
            "model": "claude", "messages": [{"role": "user", "content": "hi"}],
        }))
        .unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(error.message.contains("max_tokens"));
    }

    #[test]
    fn reads_system_blocks_and_tool_results() {
        let request = parse(json!({
            "model": "claude", "max_tokens": 100,
            "system": [{"type": "text", "text": "be brief"}],
            "tools": [{"name": "lookup", "input_schema": {}}],
            "messages": [
                {"role": "user", "content": "find it"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t", "name": "lookup", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t",
                     "content": [{"type": "text", "text": "found"}]}]},
            ],
        }));
        assert_eq!(request.conversation.last_user_text, "find it");
        assert_eq!(request.conversation.tool_result.as_deref(), Some("found"));
        assert_eq!(request.conversation.prompt_tokens(), 5);
        assert_eq!(
            request.conversation.reply("beta", None),
            Reply::Text("beta got tool result: found".into())
        );
    }

    #[test]
    fn cached_system_prompt_reports_cache_tokens() {
        let request = parse(json!({
            "model": "claude", "max_tokens": 10,
            "system": "CACHED one two three four five six seven eight nine",
            "messages": [{"role": "user", "content": "hi"}],
        }));
        let reply = request.conversation.reply("a", None);
        let usage = &response(&request, &reply, 1)["usage"];
        assert_eq!(usage["cache_read_input_tokens"], 5);
        assert_eq!(usage["cache_creation_input_tokens"], 3);
        assert_eq!(usage["input_tokens"], 11 - 8);
    }

    #[test]
    fn tool_use_response_and_stream() {
        let request = parse(json!({
            "model": "claude", "max_tokens": 10,
            "tools": [{"name": "first"}, {"name": "second"}],
            "tool_choice": {"type": "tool", "name": "second"},
            "messages": [{"role": "user", "content": "go"}],
        }));
        let reply = request.conversation.reply("a", None);
        let body = response(&request, &reply, 4);
        assert_eq!(body["stop_reason"], "tool_use");
        assert_eq!(body["content"][0]["id"], "toolu_mock_4");
        assert_eq!(body["content"][0]["name"], "second");
        assert_eq!(body["content"][0]["input"], json!({"input": "go"}));

        let events = stream(&request, &reply, 4);
        let partial: String = events
            .iter()
            .filter_map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                let data = text.split_once("data: ")?.1;
                let value: Value = serde_json::from_str(data.trim_end()).unwrap();
                value["delta"]["partial_json"].as_str().map(str::to_owned)
            })
            .collect();
        assert_eq!(partial, r#"{"input":"go"}"#);
    }

    #[test]
    fn stream_event_names_in_order() {
        let request = parse(json!({
            "model": "claude", "max_tokens": 10, "stream": true,
            "messages": [{"role": "user", "content": "hi"}],
        }));
        let reply = request.conversation.reply("a", None);
        let names: Vec<String> = stream(&request, &reply, 1)
            .iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                text.lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
    }

    #[test]
    fn error_types_by_status() {
        assert_eq!(
            error_body(StatusCode::from_u16(529).unwrap(), "busy"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
        assert_eq!(
            error_body(StatusCode::INTERNAL_SERVER_ERROR, "x")["error"]["type"],
            "api_error"
        );
    }
}
