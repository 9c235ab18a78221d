//! The OpenAI wire format, which every OpenAI-compatible API (Azure included) shares:
//! chat completions (JSON and SSE), embeddings, the model list and the error shape.
//!
//! Pure functions from request JSON to response JSON or SSE events. The dispatcher owns
//! routing, authentication and pacing; nothing here does I/O.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{Value, json};

use super::conversation::{Conversation, Reply, ToolChoice, halves, word_chunks, word_count};
use super::embedding;
use super::wire::{Rejection, array_field, content_text, data_event, flag, str_field};

/// Most choices one request may ask for, as in OpenAI's API.
const MAX_CHOICES: u64 = 128;
/// Vector length when the request does not say (kept small: tests read these).
const DEFAULT_DIMENSIONS: u64 = 8;
/// Longest vector the mock computes.
const MAX_DIMENSIONS: u64 = 4096;
/// The fixed model list (the mock cannot know the gateway's configured names).
const MODELS: [&str; 3] = ["mock-small", "mock-large", "mock-embed"];

/// A chat completion request, reduced to what the answer depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatRequest {
    /// Echoed in the response; Azure's deployment name when the request came that way.
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`: a final usage chunk, and `"usage": null` before it.
    pub include_usage: bool,
    /// `n`: how many choices to return.
    pub choices: u64,
    pub conversation: Conversation,
}

/// Reads a chat completion request. `deployment` is Azure's, which names the model.
pub(crate) fn parse_chat(body: &Value, deployment: Option<&str>) -> Result<ChatRequest, Rejection> {
    if !body.is_object() {
        return Err(Rejection::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let model = match deployment.or_else(|| str_field(body, "model")) {
        Some(model) => model.to_owned(),
        None => {
            return Err(Rejection::bad_request("you must provide a model parameter"));
        }
    };
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(Rejection::bad_request("'messages' is a required property"));
    };
    if messages.is_empty() {
        return Err(Rejection::bad_request(
            "'messages' must contain at least one message",
        ));
    }
    let choices = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => match n.as_u64() {
            Some(n @ 1..=MAX_CHOICES) => n,
            _ => {
                return Err(Rejection::bad_request(format!(
                    "'n' must be an integer between 1 and {MAX_CHOICES}"
                )));
            }
        },
    };

    let mut conversation = Conversation::default();
    let mut trailing_tool_results: Vec<String> = Vec::new();
    for message in messages {
        let role = str_field(message, "role").unwrap_or_default();
        let text = content_text(message.get("content").unwrap_or(&Value::Null));
        conversation.add_prompt_text(&text);
        if role == "tool" {
            trailing_tool_results.push(text);
            continue;
        }
        trailing_tool_results.clear();
        if role == "user" {
            conversation.last_user_text = text;
        }
    }
    if !trailing_tool_results.is_empty() {
        conversation.tool_result = Some(trailing_tool_results.concat());
    }

    let declared: Vec<String> = array_field(body, "tools")
        .iter()
        .filter_map(|tool| tool.get("function").and_then(|f| str_field(f, "name")))
        .map(str::to_owned)
        .collect();
    conversation.choose_tool(&declared, tool_choice(body.get("tool_choice")));

    Ok(ChatRequest {
        model,
        stream: flag(body, "stream"),
        include_usage: body
            .get("stream_options")
            .is_some_and(|options| flag(options, "include_usage")),
        choices,
        conversation,
    })
}

/// Reads `tool_choice`: `"none"`, `"auto"`, `"required"` or `{"type":"function","function":
/// {"name"}}`.
fn tool_choice(choice: Option<&Value>) -> ToolChoice {
    match choice {
        Some(Value::String(mode)) if mode == "none" => ToolChoice::None,
        Some(Value::String(mode)) if mode == "required" => ToolChoice::Required,
        Some(named @ Value::Object(_)) => named
            .get("function")
            .and_then(|function| str_field(function, "name"))
            .map_or(ToolChoice::Auto, |name| ToolChoice::Named(name.to_owned())),
        _ => ToolChoice::Auto,
    }
}

/// The `usage` object for `completion_tokens` across all choices.
fn usage(request: &ChatRequest, completion_tokens: u64) -> Value {
    let prompt_tokens = request.conversation.prompt_tokens();
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// The tool call id for response number `sequence`.
fn tool_call_id(sequence: u64) -> String {
    format!("call_mock_{sequence}")
}

/// The finish reason for `reply`.
fn finish_reason(reply: &Reply) -> &'static str {
    match reply {
        Reply::Text(_) => "stop",
        Reply::ToolCall { .. } => "tool_calls",
    }
}

/// A `chat.completion` object. `sequence` numbers the response, `created` is unix seconds.
pub(crate) fn chat_response(
    request: &ChatRequest,
    reply: &Reply,
    sequence: u64,
    created: u64,
) -> Value {
    let message = match reply {
        Reply::Text(text) => json!({"role": "assistant", "content": text, "refusal": null}),
        Reply::ToolCall { name, arguments } => json!({
            "role": "assistant",
            "content": null,
            "refusal": null,
            "tool_calls": [{
                "id": tool_call_id(sequence),
                "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()},
            }],
        }),
    };
    let choices: Vec<Value> = (0..request.choices)
        .map(|index| {
            json!({
                "index": index,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason(reply),
            })
        })
        .collect();
    json!({
        "id": format!("chatcmpl-mock-{sequence}"),
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "system_fingerprint": "fp_mock",
        "choices": choices,
        "usage": usage(request, reply.completion_tokens() * request.choices),
    })
}

/// The `chat.completion.chunk` events of a streamed answer, `data: [DONE]` included.
pub(crate) fn chat_stream(
    request: &ChatRequest,
    reply: &Reply,
    sequence: u64,
    created: u64,
) -> Vec<Bytes> {
    let id = format!("chatcmpl-mock-{sequence}");
    let chunk = |index: u64, delta: Value, finish_reason: Option<&str>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": request.model,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": index,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if request.include_usage {
            chunk["usage"] = Value::Null;
        }
        data_event(&chunk, "\n")
    };

    let mut events = Vec::new();
    for index in 0..request.choices {
        events.push(chunk(
            index,
            json!({"role": "assistant", "content": ""}),
            None,
        ));
        match reply {
            Reply::Text(text) => {
                for word in word_chunks(text) {
                    events.push(chunk(index, json!({"content": word}), None));
                }
            }
            Reply::ToolCall { name, arguments } => {
                events.push(chunk(
                    index,
                    json!({"tool_calls": [{
                        "index": 0,
                        "id": tool_call_id(sequence),
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]}),
                    None,
                ));
                let arguments = arguments.to_string();
                let (first, second) = halves(&arguments);
                for piece in [first, second] {
                    events.push(chunk(
                        index,
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                        None,
                    ));
                }
            }
        }
        events.push(chunk(index, json!({}), Some(finish_reason(reply))));
    }
    if request.include_usage {
        let usage_chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": request.model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage(request, reply.completion_tokens() * request.choices),
        });
        events.push(data_event(&usage_chunk, "\n"));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// Answers an embeddings request: one deterministic vector per input.
pub(crate) fn embeddings(body: &Value, deployment: Option<&str>) -> Result<Value, Rejection> {
    let Some(model) = deployment.or_else(|| str_field(body, "model")) else {
        return Err(Rejection::bad_request("you must provide a model parameter"));
    };
    let inputs = embedding_inputs(body.get("input"))?;
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64() {
            Some(dimensions @ 1..=MAX_DIMENSIONS) => dimensions,
            _ => {
                return Err(Rejection::bad_request(format!(
                    "'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}"
                )));
            }
        },
    };
    let base64 = match str_field(body, "encoding_format") {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Rejection::bad_request(format!(
                "'encoding_format' must be 'float' or 'base64', got '{other}'"
            )));
        }
    };

    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += input.tokens;
            let vector = embedding::vector(&input.text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect();
                Value::String(BASE64.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

/// One embedding input: the text its vector is derived from, and its token count.
struct EmbeddingInput {
    text: String,
    tokens: u64,
}

/// Reads `input`: a string, an array of strings, an array of token ids, or an array of arrays
/// of token ids. Token arrays are hashed by their decimal form.
fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput>, Rejection> {
    let from_text = |text: &str| EmbeddingInput {
        text: text.to_owned(),
        tokens: word_count(text).max(1),
    };
    let from_tokens = |tokens: &[Value]| -> Option<EmbeddingInput> {
        let ids: Option<Vec<String>> = tokens
            .iter()
            .map(|token| token.as_u64().map(|id| id.to_string()))
            .collect();
        ids.map(|ids| EmbeddingInput {
            text: ids.join(" "),
            tokens: ids.len() as u64,
        })
    };
    let invalid = || {
        Rejection::bad_request(
            "'input' must be a string, an array of strings, or an array of token arrays",
        )
    };
    match input {
        Some(Value::String(text)) => Ok(vec![from_text(text)]),
        Some(Value::Array(items)) if items.is_empty() => Err(invalid()),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => from_tokens(items)
            .map(|input| vec![input])
            .ok_or_else(invalid),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Some(from_text(text)),
                Value::Array(tokens) => from_tokens(tokens),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

/// The fixed model list.
pub(crate) fn models() -> Value {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard-mock"}))
        .collect();
    json!({"object": "list", "data": data})
}

/// An error body in OpenAI's shape, its `type` and `code` chosen by `status`.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Value {
    let (kind, code) = match status.as_u16() {
        401 => ("authentication_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("not_found_error", None),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> ChatRequest {
        parse_chat(&body, None).unwrap()
    }

    #[test]
    fn parses_messages_into_a_conversation() {
        let request = chat(json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
            ],
        }));
        assert_eq!(request.model, "gpt-x");
        assert_eq!(request.conversation.last_user_text, "hello there");
        assert_eq!(request.conversation.prompt_tokens(), 4);
        assert_eq!(request.choices, 1);
        assert!(!request.stream);
    }

    #[test]
    fn azure_deployment_names_the_model() {
        let request = parse_chat(
            &json!({"messages": [{"role": "user", "content": "x"}]}),
            Some("my-deployment"),
        )
        .unwrap();
        assert_eq!(request.model, "my-deployment");
    }

    #[test]
    fn rejects_missing_fields() {
        let missing_model = parse_chat(&json!({"messages": []}), None).unwrap_err();
        assert_eq!(missing_model.status, StatusCode::BAD_REQUEST);
        assert!(parse_chat(&json!({"model": "m"}), None).is_err());
        assert!(
            parse_chat(
                &json!({"model": "m", "n": 0, "messages": [{"role": "user", "content": "x"}]}),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn tool_results_and_tool_choice() {
        let tools = json!([{"type": "function", "function": {"name": "a"}},
                           {"type": "function", "function": {"name": "b"}}]);
        let request = chat(json!({
            "model": "m",
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "b"}},
            "messages": [{"role": "user", "content": "go"}],
        }));
        assert_eq!(request.conversation.tool_to_call.as_deref(), Some("b"));

        let request = chat(json!({
            "model": "m",
            "tools": tools,
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": null, "tool_calls": []},
                {"role": "tool", "tool_call_id": "c", "content": "42"},
            ],
        }));
        assert_eq!(request.conversation.tool_result.as_deref(), Some("42"));

        let request = chat(json!({
            "model": "m", "tools": tools, "tool_choice": "none",
            "messages": [{"role": "user", "content": "go"}],
        }));
        assert_eq!(request.conversation.tool_to_call, None);
    }

    #[test]
    fn response_has_n_choices_and_usage() {
        let request = chat(json!({
            "model": "m", "n": 2,
            "messages": [{"role": "user", "content": "hi"}],
        }));
        let reply = request.conversation.reply("alpha", None);
        let response = chat_response(&request, &reply, 7, 1);
        assert_eq!(response["id"], "chatcmpl-mock-7");
        assert_eq!(response["choices"].as_array().unwrap().len(), 2);
        assert_eq!(
            response["choices"][1]["message"]["content"],
            "alpha says: hi"
        );
        assert_eq!(response["usage"]["prompt_tokens"], 1);
        assert_eq!(response["usage"]["completion_tokens"], 6);
        assert_eq!(response["usage"]["total_tokens"], 7);
    }

    #[test]
    fn stream_with_usage_ends_with_usage_chunk_and_done() {
        let request = chat(json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}],
        }));
        let reply = request.conversation.reply("alpha", None);
        let events = chat_stream(&request, &reply, 1, 1);
        // role, 3 words, finish, usage, [DONE]
        assert_eq!(events.len(), 7);
        assert_eq!(events[6], "data: [DONE]\n\n");
        let usage: Value = serde_json::from_slice(&events[5][6..]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        let first: Value = serde_json::from_slice(&events[0][6..]).unwrap();
        assert_eq!(first["usage"], Value::Null);
        assert!(first.get("usage").is_some());
    }

    #[test]
    fn embeddings_are_deterministic_and_encodable() {
        let float = embeddings(&json!({"model": "e", "input": ["a b", [1, 2]]}), None).unwrap();
        assert_eq!(float["data"].as_array().unwrap().len(), 2);
        assert_eq!(float["data"][0]["embedding"].as_array().unwrap().len(), 8);
        assert_eq!(float["usage"]["prompt_tokens"], 4);

        let encoded = embeddings(
            &json!({"model": "e", "input": "a b", "encoding_format": "base64", "dimensions": 3}),
            None,
        )
        .unwrap();
        let bytes = BASE64
            .decode(encoded["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        assert_eq!(decoded, embedding::vector("a b", 3));
        assert!(embeddings(&json!({"model": "e", "input": 5}), None).is_err());
    }

    #[test]
    fn error_shape_by_status() {
        let body = error_body(StatusCode::UNAUTHORIZED, "bad key");
        assert_eq!(
            body,
            json!({"error": {"message": "bad key", "type": "authentication_error",
                             "param": null, "code": "invalid_api_key"}})
        );
        assert_eq!(
            error_body(StatusCode::BAD_GATEWAY, "x")["error"]["type"],
            "server_error"
        );
        assert_eq!(
            error_body(StatusCode::BAD_REQUEST, "x")["error"]["type"],
            "invalid_request_error"
        );
    }
}
