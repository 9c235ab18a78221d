//! The Gemini wire format: `generateContent`, `streamGenerateContent` (SSE with `alt=sse`,
//! a JSON array without it), `embedContent`, `batchEmbedContents`, and Gemini's error shape.
//!
//! Pure functions from request JSON to response JSON. The dispatcher owns routing (the model
//! comes from the path), the `key` / `x-goog-api-key` check and pacing.

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::conversation::{Conversation, Reply, ToolChoice, word_chunks};
use super::embedding;
use super::wire::{Rejection, array_field, content_text, str_field};

/// Most candidates one request may ask for.
const MAX_CANDIDATES: u64 = 8;
/// Vector length when the request does not say.
const DEFAULT_DIMENSIONS: u64 = 8;
/// Longest vector the mock computes.
const MAX_DIMENSIONS: u64 = 4096;

/// A generateContent request, reduced to what the answer depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenerateRequest {
    /// From the path, echoed as `modelVersion`.
    pub model: String,
    /// `generationConfig.candidateCount`.
    pub candidates: u64,
    pub conversation: Conversation,
}

/// Reads a generateContent request for `model`.
pub(crate) fn parse_generate(body: &Value, model: &str) -> Result<GenerateRequest, Rejection> {
    if !body.is_object() {
        return Err(Rejection::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let contents = array_field(body, "contents");
    if contents.is_empty() {
        return Err(Rejection::bad_request(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    let candidates = match body
        .get("generationConfig")
        .and_then(|config| config.get("candidateCount"))
    {
        None | Some(Value::Null) => 1,
        Some(count) => match count.as_u64() {
            Some(count @ 1..=MAX_CANDIDATES) => count,
            _ => {
                return Err(Rejection::bad_request(format!(
                    "* GenerateContentRequest.generation_config.candidate_count: must be between 1 and {MAX_CANDIDATES}"
                )));
            }
        },
    };

    let mut conversation = Conversation::default();
    if let Some(system) = body.get("systemInstruction") {
        conversation.add_prompt_text(&content_text(system.get("parts").unwrap_or(&Value::Null)));
    }
    for content in contents {
        let parts = content.get("parts").unwrap_or(&Value::Null);
        let text = content_text(parts);
        conversation.add_prompt_text(&text);
        let results: Vec<String> = array_field(content, "parts")
            .iter()
            .filter_map(|part| part.get("functionResponse"))
            .map(|response| function_response_text(response.get("response")))
            .collect();
        for result in &results {
            conversation.add_prompt_text(result);
        }
        let is_user = str_field(content, "role").is_none_or(|role| role == "user");
        let has_text = array_field(content, "parts")
            .iter()
            .any(|part| part.get("text").is_some_and(Value::is_string));
        if is_user && has_text {
            conversation.last_user_text = text;
        }
        conversation.tool_result = (!results.is_empty()).then(|| results.concat());
    }

    let declared: Vec<String> = array_field(body, "tools")
        .iter()
        .flat_map(|tool| array_field(tool, "functionDeclarations"))
        .filter_map(|declaration| str_field(declaration, "name"))
        .map(str::to_owned)
        .collect();
    conversation.choose_tool(&declared, tool_choice(body));

    Ok(GenerateRequest {
        model: model.to_owned(),
        candidates,
        conversation,
    })
}

/// The text of a `functionResponse.response`: the value of its only string field (what
/// gateways usually wrap a tool's text in, e.g. `{"result": "sunny"}`), a plain string, or
/// else the compact JSON.
fn function_response_text(response: Option<&Value>) -> String {
    match response {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Object(fields)) if fields.len() == 1 => match fields.values().next() {
            Some(Value::String(text)) => text.clone(),
            _ => Value::Object(fields.clone()).to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// Reads `toolConfig.functionCallingConfig`: mode `NONE` forbids calls, mode `ANY` with
/// `allowedFunctionNames` forces the first allowed one.
fn tool_choice(body: &Value) -> ToolChoice {
    let Some(config) = body
        .get("toolConfig")
        .and_then(|config| config.get("functionCallingConfig"))
    else {
        return ToolChoice::Auto;
    };
    match str_field(config, "mode") {
        Some("NONE") => ToolChoice::None,
        Some("ANY") => array_field(config, "allowedFunctionNames")
            .first()
            .and_then(Value::as_str)
            .map_or(ToolChoice::Required, |name| {
                ToolChoice::Named(name.to_owned())
            }),
        _ => ToolChoice::Auto,
    }
}

/// The `usageMetadata` object.
fn usage_metadata(request: &GenerateRequest, reply: &Reply) -> Value {
    let prompt = request.conversation.prompt_tokens();
    let candidates = reply.completion_tokens() * request.candidates;
    json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
    })
}

/// One `GenerateContentResponse` whose candidates each carry `part`.
fn chunk(request: &GenerateRequest, part: Value, finish: Option<&Reply>, sequence: u64) -> Value {
    let candidates: Vec<Value> = (0..request.candidates)
        .map(|index| {
            let mut candidate = json!({
                "content": {"role": "model", "parts": [part]},
                "index": index,
            });
            if finish.is_some() {
                candidate["finishReason"] = json!("STOP");
            }
            candidate
        })
        .collect();
    let mut response = Map::new();
    response.insert("candidates".into(), Value::Array(candidates));
    if let Some(reply) = finish {
        response.insert("usageMetadata".into(), usage_metadata(request, reply));
    }
    response.insert("modelVersion".into(), json!(request.model));
    response.insert("responseId".into(), json!(format!("mock-{sequence}")));
    Value::Object(response)
}

/// The part that carries a whole reply.
fn reply_part(reply: &Reply) -> Value {
    match reply {
        Reply::Text(text) => json!({"text": text}),
        Reply::ToolCall { name, arguments } => {
            json!({"functionCall": {"name": name, "args": arguments}})
        }
    }
}

/// The `GenerateContentResponse` for a non-streamed request.
pub(crate) fn response(request: &GenerateRequest, reply: &Reply, sequence: u64) -> Value {
    chunk(request, reply_part(reply), Some(reply), sequence)
}

/// The responses of a streamed answer: one per word, the last with `finishReason` and
/// `usageMetadata`. A function call comes whole in one response.
pub(crate) fn stream(request: &GenerateRequest, reply: &Reply, sequence: u64) -> Vec<Value> {
    let Reply::Text(text) = reply else {
        return vec![response(request, reply, sequence)];
    };
    let words = word_chunks(text);
    if words.is_empty() {
        return vec![response(request, reply, sequence)];
    }
    let last = words.len() - 1;
    words
        .into_iter()
        .enumerate()
        .map(|(position, word)| {
            let finish = (position == last).then_some(reply);
            chunk(request, json!({"text": word}), finish, sequence)
        })
        .collect()
}

/// Answers `batchEmbedContents`: one vector per request.
pub(crate) fn batch_embed(body: &Value) -> Result<Value, Rejection> {
    let requests = array_field(body, "requests");
    if requests.is_empty() {
        return Err(Rejection::bad_request(
            "* BatchEmbedContentsRequest.requests: requests is not specified",
        ));
    }
    let embeddings = requests
        .iter()
        .map(|request| embed_values(request).map(|values| json!({"values": values})))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({"embeddings": embeddings}))
}

/// Answers `embedContent`: one vector.
pub(crate) fn embed(body: &Value) -> Result<Value, Rejection> {
    let values = embed_values(body)?;
    Ok(json!({"embedding": {"values": values}}))
}

/// The vector for one `{content: {parts}, outputDimensionality?}` request.
fn embed_values(request: &Value) -> Result<Vec<f32>, Rejection> {
    let Some(content) = request.get("content") else {
        return Err(Rejection::bad_request(
            "* EmbedContentRequest.content: content is not specified",
        ));
    };
    let text = content_text(content.get("parts").unwrap_or(&Value::Null));
    let dimensions = match request.get("outputDimensionality") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(value) => match value.as_u64() {
            Some(dimensions @ 1..=MAX_DIMENSIONS) => dimensions,
            _ => {
                return Err(Rejection::bad_request(format!(
                    "* EmbedContentRequest.output_dimensionality: must be between 1 and {MAX_DIMENSIONS}"
                )));
            }
        },
    };
    if text.is_empty() {
        return Err(Rejection::bad_request(
            "* EmbedContentRequest.content: contains an empty Part",
        ));
    }
    Ok(embedding::vector(&text, dimensions))
}

/// An error body in Gemini's shape (Google's RPC status), its `status` chosen by `status`.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Value {
    let rpc_status = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if status.is_client_error() => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    };
    json!({"error": {"code": status.as_u16(), "message": message, "status": rpc_status}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> GenerateRequest {
        parse_generate(&body, "gemini-x").unwrap()
    }

    #[test]
    fn reads_contents_and_system_instruction() {
        let request = parse(json!({
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "contents": [{"role": "user", "parts": [{"text": "hello "}, {"text": "there"}]}],
        }));
        assert_eq!(request.conversation.last_user_text, "hello there");
        assert_eq!(request.conversation.prompt_tokens(), 4);
        let reply = request.conversation.reply("gamma", None);
        let body = response(&request, &reply, 3);
        assert_eq!(
            body["candidates"][0]["content"]["parts"][0]["text"],
            "gamma says: hello there"
        );
        assert_eq!(body["candidates"][0]["finishReason"], "STOP");
        assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 4);
        assert_eq!(body["usageMetadata"]["totalTokenCount"], 8);
        assert_eq!(body["responseId"], "mock-3");
        assert_eq!(body["modelVersion"], "gemini-x");
    }

    #[test]
    fn function_calls_and_responses() {
        let tools = json!([{"functionDeclarations": [{"name": "lookup"}, {"name": "other"}]}]);
        let request = parse(json!({
            "tools": tools,
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["other"]}},
            "contents": [{"role": "user", "parts": [{"text": "find"}]}],
        }));
        let reply = request.conversation.reply("g", None);
        let body = response(&request, &reply, 1);
        assert_eq!(
            body["candidates"][0]["content"]["parts"][0],
            json!({"functionCall": {"name": "other", "args": {"input": "find"}}})
        );

        let request = parse(json!({
            "tools": tools,
            "contents": [
                {"role": "user", "parts": [{"text": "find"}]},
                {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {}}}]},
                {"role": "user", "parts": [{"functionResponse":
                    {"name": "lookup", "response": {"result": "found"}}}]},
            ],
        }));
        assert_eq!(request.conversation.tool_result.as_deref(), Some("found"));
        assert_eq!(request.conversation.last_user_text, "find");
    }

    #[test]
    fn stream_is_one_word_per_response_and_the_last_finishes() {
        let request = parse(json!({"contents": [{"parts": [{"text": "hi"}]}]}));
        let reply = request.conversation.reply("g", None);
        let chunks = stream(&request, &reply, 1);
        assert_eq!(chunks.len(), 3);
        assert!(chunks[0].get("usageMetadata").is_none());
        assert!(chunks[0]["candidates"][0].get("finishReason").is_none());
        assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(chunks[2]["usageMetadata"]["promptTokenCount"], 1);
        let text: String = chunks
            .iter()
            .map(|chunk| {
                chunk["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(text, "g says: hi");
    }

    #[test]
    fn embeddings_and_errors() {
        let body = batch_embed(&json!({"requests": [
            {"model": "models/e", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/e", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 3},
        ]}))
        .unwrap();
        assert_eq!(body["embeddings"][0]["values"].as_array().unwrap().len(), 8);
        assert_eq!(body["embeddings"][1]["values"].as_array().unwrap().len(), 3);
        assert!(batch_embed(&json!({})).is_err());

        assert_eq!(
            error_body(StatusCode::TOO_MANY_REQUESTS, "slow down"),
            json!({"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}})
        );
        assert_eq!(
            error_body(StatusCode::UNAUTHORIZED, "x")["error"]["status"],
            "UNAUTHENTICATED"
        );
    }
}
