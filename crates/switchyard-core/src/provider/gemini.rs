//! Google Gemini: `generateContent`, `streamGenerateContent?alt=sse` and `batchEmbedContents`.
//!
//! Translates both ways between the gateway's OpenAI wire types and Gemini's. System messages
//! become `systemInstruction`, assistant turns become `model` turns, and tool calls and tool
//! results become `functionCall` / `functionResponse` parts. Answers, stream fragments, usage
//! and errors come back in OpenAI's shape.
//!
//! Must not: do I/O or read a clock (time comes in as `CallInfo::now_unix`), or put the API
//! key in the URL. URLs end up in logs, so the key travels in the sensitive `x-goog-api-key`
//! header. Unlike the OpenAI adapter, fields the gateway does not model (`extra`) are dropped:
//! Gemini rejects unknown fields.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    CallInfo, Completion, SseEvent, StreamItem, UpstreamRequest, base_headers, chunk_bytes,
    parse_upstream, secret_header, stream_error, to_body,
};
use crate::config::Provider;
use crate::error::{ErrorKind, GatewayError, Origin};
use crate::wire::{
    ChatCompletion, ChatCompletionChunk, ChatMessage, ChatRequest, Choice, ChunkChoice,
    ContentPart, Delta, Embedding, EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage,
    FunctionCall, FunctionCallDelta, ImageUrl, MessageContent, ResponseFormat, ResponseMessage,
    Role, TokenUsage, Tool, ToolCall, ToolCallDelta,
};

// ---------------------------------------------------------------------------------------------
// URLs and headers
// ---------------------------------------------------------------------------------------------

/// `{base}/v1beta/models/{model}:{method}`.
fn model_url(call: &CallInfo<'_>, method: &str) -> String {
    format!(
        "{}/v1beta/models/{}:{method}",
        call.provider.base_url,
        path_segment(model_id(call.model))
    )
}

/// Gemini's own model names read `models/gemini-...`; accept them with or without the prefix.
fn model_id(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

/// Percent-encodes a model name into a single path segment, so that no model name can reach
/// another path or add a query string.
fn path_segment(text: &str) -> String {
    let mut segment = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            segment.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(segment, "%{byte:02X}");
        }
    }
    segment
}

fn headers(provider: &Provider) -> Result<http::HeaderMap, GatewayError> {
    let mut headers = base_headers(provider);
    if let Some(key) = &provider.api_key {
        headers.insert("x-goog-api-key", secret_header(key.expose())?);
    }
    Ok(headers)
}

/// Serialises a translated answer for the client.
fn response_body<T: Serialize>(value: &T) -> Result<Bytes, GatewayError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|_| GatewayError::internal("could not encode the translated response"))
}

// ---------------------------------------------------------------------------------------------
// Chat request
// ---------------------------------------------------------------------------------------------

/// `GenerateContentRequest`: the subset of it the gateway fills in.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest {
    /// The conversation, in alternating `user` / `model` turns.
    contents: Vec<Content>,
    /// Every system and developer message, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<PartList>,
    /// One entry holding every function declaration.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<GeminiTool>,
    /// From `tool_choice`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig>,
    /// Sampling and output settings; left out when the client set none.
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig,
}

/// One turn of the conversation.
#[derive(Debug, Serialize)]
struct Content {
    /// `user` or `model`.
    role: &'static str,
    /// What the turn says.
    parts: Vec<Part>,
}

/// Parts without a role: `systemInstruction`, and the content of an embedding request.
#[derive(Debug, Serialize)]
struct PartList {
    parts: Vec<Part>,
}

/// One part of a turn. Serialised externally tagged, which is exactly Gemini's shape:
/// `{"text": ...}`, `{"inlineData": {...}}`, ...
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
enum Part {
    Text(String),
    InlineData(Blob),
    FileData(FileData),
    FunctionCall(FunctionCallPart),
    FunctionResponse(FunctionResponsePart),
}

/// Base64 bytes sent inline.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob {
    mime_type: String,
    data: String,
}

/// A file Gemini fetches itself.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData {
    mime_type: String,
    file_uri: String,
}

/// A call the model made earlier in the conversation.
#[derive(Debug, Serialize)]
struct FunctionCallPart {
    name: String,
    /// Always a JSON object.
    args: Value,
}

/// A tool's result.
#[derive(Debug, Serialize)]
struct FunctionResponsePart {
    /// Gemini matches results to calls by function name, not by id.
    name: String,
    /// Always a JSON object.
    response: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GeminiTool {
    function_declarations: Vec<FunctionDeclaration>,
}

#[derive(Debug, Serialize)]
struct FunctionDeclaration {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    function_calling_config: FunctionCallingConfig,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig {
    /// `AUTO`, `NONE` or `ANY`.
    mode: &'static str,
    /// With `ANY`, the one function a named `tool_choice` forces.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_function_names: Vec<String>,
}

/// `generationConfig`. Every field is optional so that Gemini's defaults apply to whatever the
/// client did not set.
#[derive(Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_logprobs: Option<bool>,
    /// How many top candidates per token (`top_logprobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    /// Standard JSON Schema (unlike `responseSchema`, which takes an OpenAPI subset).
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<Value>,
}

impl GenerationConfig {
    fn is_empty(&self) -> bool {
        *self == GenerationConfig::default()
    }
}

const USER: &str = "user";
const MODEL: &str = "model";

/// Builds the upstream `generateContent` (or streamed) request.
pub fn chat_request(
    call: &CallInfo<'_>,
    request: &ChatRequest,
) -> Result<UpstreamRequest, GatewayError> {
    let (system, contents) = conversation(&request.messages)?;
    let body = GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(PartList { parts: system }),
        tools: tools(request.tools.as_deref())?,
        tool_config: tool_config(request.tool_choice.as_ref())?,
        generation_config: generation_config(request),
    };
    let url = if request.stream {
        format!("{}?alt=sse", model_url(call, "streamGenerateContent"))
    } else {
        model_url(call, "generateContent")
    };
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url,
        headers: headers(call.provider)?,
        body: to_body(&body)?,
    })
}

/// Splits the messages into the system instruction's parts and the conversation's turns.
fn conversation(messages: &[ChatMessage]) -> Result<(Vec<Part>, Vec<Content>), GatewayError> {
    let mut system = Vec::new();
    let mut contents: Vec<Content> = Vec::with_capacity(messages.len());
    // Tool results name the call they answer by id; Gemini wants the function's name.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (index, message) in messages.iter().enumerate() {
        match message.role {
            Role::System | Role::Developer => {
                let text = message.text_content();
                if !text.is_empty() {
                    system.push(Part::Text(text));
                }
            }
            Role::User => {
                let parts = content_parts(message.content.as_ref(), index)?;
                push_turn(&mut contents, USER, parts);
            }
            Role::Assistant => {
                let mut parts = content_parts(message.content.as_ref(), index)?;
                for (position, call) in message.tool_calls.iter().flatten().enumerate() {
                    call_names.insert(call.id.as_str(), call.function.name.as_str());
                    parts.push(Part::FunctionCall(FunctionCallPart {
                        name: call.function.name.clone(),
                        args: call_arguments(&call.function.arguments, index, position)?,
                    }));
                }
                push_turn(&mut contents, MODEL, parts);
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or_default();
                let Some(name) = call_names.get(id) else {
                    return Err(GatewayError::invalid_request(format!(
                        "messages[{index}]: `tool_call_id` `{id}` does not match a tool call \
                         of an earlier assistant message"
                    ))
                    .with_param(format!("messages[{index}].tool_call_id")));
                };
                let part = function_response(name, message);
                push_turn(&mut contents, USER, vec![part]);
            }
            // The legacy function result names its function itself.
            Role::Function => {
                let Some(name) = message.name.as_deref() else {
                    return Err(GatewayError::invalid_request(format!(
                        "messages[{index}]: a function message needs `name`"
                    ))
                    .with_param(format!("messages[{index}].name")));
                };
                let part = function_response(name, message);
                push_turn(&mut contents, USER, vec![part]);
            }
        }
    }
    Ok((system, contents))
}

/// Appends a turn, merging it into the previous one when the role repeats: Gemini wants turns
/// to alternate, and wants all results of one round of tool calls in one turn.
fn push_turn(contents: &mut Vec<Content>, role: &'static str, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => contents.push(Content { role, parts }),
    }
}

/// The parts of a message's content. Empty texts are skipped (an assistant message with
/// tool calls often carries `""`, and Gemini rejects empty text parts).
fn content_parts(
    content: Option<&MessageContent>,
    message: usize,
) -> Result<Vec<Part>, GatewayError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(text)) if text.is_empty() => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(vec![Part::Text(text.clone())]),
        Some(MessageContent::Parts(parts)) => {
            let mut translated = Vec::with_capacity(parts.len());
            for (index, part) in parts.iter().enumerate() {
                let param = format!("messages[{message}].content[{index}]");
                match part {
                    ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                        if !text.is_empty() {
                            translated.push(Part::Text(text.clone()));
                        }
                    }
                    ContentPart::ImageUrl { image_url } => {
                        translated.push(image_part(image_url, &param)?);
                    }
                    ContentPart::InputAudio { input_audio } => {
                        translated.push(audio_part(input_audio, &param)?);
                    }
                    ContentPart::File { file } => translated.push(file_part(file, &param)?),
                }
            }
            Ok(translated)
        }
    }
}

/// A data URL becomes inline bytes; an http(s) URL becomes a file Gemini fetches itself.
fn image_part(image_url: &ImageUrl, param: &str) -> Result<Part, GatewayError> {
    if let Some((mime_type, data)) = data_url(&image_url.url) {
        return Ok(Part::InlineData(Blob {
            mime_type: mime_type.to_owned(),
            data: data.to_owned(),
        }));
    }
    let url = image_url.url.as_str();
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if scheme.is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https")) {
        return Ok(Part::FileData(FileData {
            mime_type: image_type_from_extension(url).to_owned(),
            file_uri: url.to_owned(),
        }));
    }
    Err(GatewayError::invalid_request(format!(
        "{param}: `image_url.url` must be an http(s) URL or a base64 `data:` URL"
    ))
    .with_param(format!("{param}.image_url.url")))
}

/// Gemini needs a media type for a fetched file; the URL's extension is all there is to go by.
fn image_type_from_extension(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path
        .rsplit_once('.')
        .map(|(_, extension)| extension)
        .filter(|extension| !extension.contains('/'))
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => "image/jpeg",
    }
}

/// `{data, format}` becomes inline `audio/<format>` bytes.
fn audio_part(input_audio: &Value, param: &str) -> Result<Part, GatewayError> {
    let data = input_audio.get("data").and_then(Value::as_str);
    let format = input_audio.get("format").and_then(Value::as_str);
    match (data, format) {
        (Some(data), Some(format)) if !format.is_empty() => Ok(Part::InlineData(Blob {
            mime_type: format!("audio/{format}"),
            data: data.to_owned(),
        })),
        _ => Err(GatewayError::invalid_request(format!(
            "{param}: `input_audio` needs base64 `data` and a `format`"
        ))
        .with_param(format!("{param}.input_audio"))),
    }
}

/// An inline file (`file_data` as a data URL) becomes inline bytes. OpenAI file ids mean
/// nothing to Gemini.
fn file_part(file: &Value, param: &str) -> Result<Part, GatewayError> {
    match file
        .get("file_data")
        .and_then(Value::as_str)
        .and_then(data_url)
    {
        Some((mime_type, data)) => Ok(Part::InlineData(Blob {
            mime_type: mime_type.to_owned(),
            data: data.to_owned(),
        })),
        None => Err(GatewayError::invalid_request(format!(
            "{param}: Gemini takes files inline only; send `file.file_data` as a base64 \
             `data:` URL (file ids are not supported)"
        ))
        .with_param(format!("{param}.file"))),
    }
}

/// Splits `data:<media type>;base64,<data>`.
fn data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    Some((meta.strip_suffix(";base64")?, data))
}

/// A tool call's JSON-encoded arguments as the object Gemini wants.
fn call_arguments(arguments: &str, message: usize, call: usize) -> Result<Value, GatewayError> {
    // Some clients send "" for a call without arguments.
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(object)) => Ok(Value::Object(object)),
        _ => Err(GatewayError::invalid_request(format!(
            "messages[{message}].tool_calls[{call}].function.arguments must be a JSON object"
        ))
        .with_param(format!(
            "messages[{message}].tool_calls[{call}].function.arguments"
        ))),
    }
}

/// A tool result: its content when that is a JSON object, else the text wrapped in one,
/// because Gemini's `response` must be an object.
fn function_response(name: &str, message: &ChatMessage) -> Part {
    let text = message.text_content();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => json!({ "content": text }),
    };
    Part::FunctionResponse(FunctionResponsePart {
        name: name.to_owned(),
        response,
    })
}

fn tools(tools: Option<&[Tool]>) -> Result<Vec<GeminiTool>, GatewayError> {
    let tools = tools.unwrap_or_default();
    if tools.is_empty() {
        return Ok(Vec::new());
    }
    let mut declarations = Vec::with_capacity(tools.len());
    for (index, tool) in tools.iter().enumerate() {
        if tool.kind != "function" {
            return Err(GatewayError::invalid_request(format!(
                "tools[{index}]: Gemini supports only `function` tools, not `{}`",
                tool.kind
            ))
            .with_param(format!("tools[{index}].type")));
        }
        let Some(function) = &tool.function else {
            return Err(GatewayError::invalid_request(format!(
                "tools[{index}]: a function tool needs `function`"
            ))
            .with_param(format!("tools[{index}].function")));
        };
        declarations.push(FunctionDeclaration {
            name: function.name.clone(),
            description: function.description.clone(),
            parameters: function.parameters.clone(),
        });
    }
    Ok(vec![GeminiTool {
        function_declarations: declarations,
    }])
}

fn tool_config(tool_choice: Option<&Value>) -> Result<Option<ToolConfig>, GatewayError> {
    let Some(tool_choice) = tool_choice else {
        return Ok(None);
    };
    let named = || {
        (tool_choice.get("type")?.as_str()? == "function")
            .then(|| tool_choice.get("function")?.get("name")?.as_str())
            .flatten()
    };
    let (mode, allowed_function_names) = match tool_choice.as_str() {
        Some("auto") => ("AUTO", Vec::new()),
        Some("none") => ("NONE", Vec::new()),
        Some("required") => ("ANY", Vec::new()),
        _ => match named() {
            Some(name) => ("ANY", vec![name.to_owned()]),
            None => {
                return Err(GatewayError::invalid_request(
                    "`tool_choice` must be \"auto\", \"none\", \"required\" or \
                     {\"type\":\"function\",\"function\":{\"name\":...}}",
                )
                .with_param("tool_choice"));
            }
        },
    };
    Ok(Some(ToolConfig {
        function_calling_config: FunctionCallingConfig {
            mode,
            allowed_function_names,
        },
    }))
}

fn generation_config(request: &ChatRequest) -> GenerationConfig {
    let (response_mime_type, response_json_schema) = match &request.response_format {
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            (Some("application/json"), json_schema.schema.clone())
        }
        Some(ResponseFormat::Text) | None => (None, None),
    };
    GenerationConfig {
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.output_limit(),
        stop_sequences: request.stop.as_ref().map(|stop| stop.to_vec()),
        candidate_count: request.n,
        seed: request.seed,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
        response_logprobs: request.logprobs,
        logprobs: request.top_logprobs,
        response_mime_type,
        response_json_schema,
    }
}

// ---------------------------------------------------------------------------------------------
// Chat response
// ---------------------------------------------------------------------------------------------

/// `GenerateContentResponse`, also the shape of each stream fragment.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    /// Why the prompt was refused, when it was.
    prompt_feedback: Option<PromptFeedback>,
    /// Cumulative in a stream: the last one counts.
    usage_metadata: Option<UsageMetadata>,
    model_version: Option<String>,
    response_id: Option<String>,
    /// Only in stream fragments, when the stream fails midway.
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
    /// Left out by Gemini when it is 0.
    #[serde(default)]
    index: u32,
    logprobs_result: Option<LogprobsResult>,
}

#[derive(Debug, Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<ResponsePart>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResponsePart {
    text: Option<String>,
    /// A reasoning summary, not part of the answer.
    #[serde(default)]
    thought: bool,
    function_call: Option<ResponseFunctionCall>,
}

#[derive(Debug, Deserialize)]
struct ResponseFunctionCall {
    /// Set by some Gemini models; used as the tool call's id when present.
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

impl ResponseFunctionCall {
    /// The arguments as OpenAI's compact JSON string.
    fn arguments(&self) -> String {
        self.args
            .as_ref()
            .map_or_else(|| "{}".to_owned(), Value::to_string)
    }

    /// The call's own id, or one made from its place in the answer.
    fn id(&self, candidate: u32, position: u32) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("call_{candidate}_{position}"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    /// Visible output only; thoughts are counted apart.
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
}

impl UsageMetadata {
    fn normalise(&self) -> TokenUsage {
        TokenUsage {
            input: self.prompt_token_count,
            // Thoughts are billed as output, as OpenAI's reasoning tokens are.
            output: self
                .candidates_token_count
                .saturating_add(self.thoughts_token_count),
            cached_input: self.cached_content_token_count,
            cache_write: 0,
            reasoning: self.thoughts_token_count,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogprobsResult {
    /// The top candidates at each step (`logprobs` of them).
    #[serde(default)]
    top_candidates: Vec<TopCandidates>,
    /// The token chosen at each step.
    #[serde(default)]
    chosen_candidates: Vec<LogprobCandidate>,
}

#[derive(Debug, Deserialize)]
struct TopCandidates {
    #[serde(default)]
    candidates: Vec<LogprobCandidate>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogprobCandidate {
    #[serde(default)]
    token: String,
    #[serde(default)]
    log_probability: f64,
}

/// OpenAI's `logprobs` object (`{"content": [...], "refusal": null}`) for Gemini's result.
fn openai_logprobs(result: &LogprobsResult) -> Value {
    let entry = |candidate: &LogprobCandidate| {
        json!({
            "token": candidate.token,
            "logprob": candidate.log_probability,
            "bytes": candidate.token.as_bytes(),
        })
    };
    let content: Vec<Value> = result
        .chosen_candidates
        .iter()
        .enumerate()
        .map(|(step, chosen)| {
            let top: Vec<Value> = result
                .top_candidates
                .get(step)
                .map(|top| top.candidates.iter().map(entry).collect())
                .unwrap_or_default();
            let mut value = entry(chosen);
            value["top_logprobs"] = Value::Array(top);
            value
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// What a candidate's parts amount to: visible text (thoughts left out) and function calls.
fn split_parts(content: Option<&CandidateContent>) -> (String, Vec<&ResponseFunctionCall>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in content.map(|content| content.parts.as_slice()).unwrap_or_default() {
        if let Some(call) = &part.function_call {
            calls.push(call);
        } else if let Some(piece) = &part.text
            && !part.thought
        {
            text.push_str(piece);
        }
    }
    (text, calls)
}

/// OpenAI's finish reason for Gemini's. A choice that called functions finishes with
/// `tool_calls` unless it was cut short or filtered, so that clients run the tools.
fn finish_reason(reason: &str, made_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if made_calls => "tool_calls",
        _ => "stop",
    }
}

fn completion_id(response_id: Option<&str>, request_id: &str) -> String {
    format!("chatcmpl-{}", response_id.unwrap_or(request_id))
}

/// The error for an answer without candidates: a refused prompt is the client's to fix (and
/// pointless to retry elsewhere with the same words); anything else is the provider's fault.
fn no_candidates(provider: &Provider, feedback: Option<&PromptFeedback>) -> GatewayError {
    match feedback.and_then(|feedback| feedback.block_reason.as_deref()) {
        Some(reason) => GatewayError::new(
            ErrorKind::InvalidRequest,
            Origin::Upstream(provider.name.clone()),
            format!(
                "provider {} blocked the prompt (block reason: {reason})",
                provider.name
            ),
        )
        .with_code("content_policy_violation")
        .with_retryable(false),
        None => GatewayError::new(
            ErrorKind::BadGateway,
            Origin::Upstream(provider.name.clone()),
            format!("provider {} answered without any candidates", provider.name),
        ),
    }
}

fn choice(candidate: &Candidate) -> Choice {
    let (text, calls) = split_parts(candidate.content.as_ref());
    let tool_calls: Vec<ToolCall> = calls
        .iter()
        .zip(0u32..)
        .map(|(call, position)| ToolCall {
            id: call.id(candidate.index, position),
            kind: "function".to_owned(),
            function: FunctionCall {
                name: call.name.clone(),
                arguments: call.arguments(),
            },
        })
        .collect();
    let made_calls = !tool_calls.is_empty();
    // OpenAI sends `null` content beside tool calls, and a string otherwise.
    let content = if text.is_empty() && made_calls {
        None
    } else {
        Some(text)
    };
    Choice {
        index: candidate.index,
        message: ResponseMessage {
            role: "assistant".to_owned(),
            content,
            tool_calls: made_calls.then_some(tool_calls),
            refusal: None,
        },
        finish_reason: Some(
            finish_reason(
                candidate.finish_reason.as_deref().unwrap_or("STOP"),
                made_calls,
            )
            .to_owned(),
        ),
        logprobs: candidate.logprobs_result.as_ref().map(openai_logprobs),
    }
}

/// Translates a `generateContent` answer into an OpenAI chat completion.
pub fn chat_response(
    call: &CallInfo<'_>,
    _request: &ChatRequest,
    body: &[u8],
) -> Result<Completion, GatewayError> {
    let response: GenerateContentResponse = parse_upstream(call.provider, body)?;
    if response.candidates.is_empty() {
        return Err(no_candidates(
            call.provider,
            response.prompt_feedback.as_ref(),
        ));
    }
    let usage = response
        .usage_metadata
        .as_ref()
        .map(UsageMetadata::normalise)
        .unwrap_or_default();
    let completion = ChatCompletion {
        id: completion_id(response.response_id.as_deref(), call.request_id),
        object: "chat.completion".to_owned(),
        created: call.now_unix,
        model: response
            .model_version
            .unwrap_or_else(|| call.model.to_owned()),
        choices: response.candidates.iter().map(choice).collect(),
        usage: Some(usage.to_openai()),
        system_fingerprint: None,
    };
    Ok(Completion {
        body: response_body(&completion)?,
        usage,
    })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Google's error envelope.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<GoogleError>,
}

/// `{"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED"}`.
#[derive(Deserialize)]
struct GoogleError {
    message: Option<String>,
    status: Option<String>,
}

/// Gemini answers with the envelope, or sometimes with a one-element array of it.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorBody {
    One(ErrorEnvelope),
    Many(Vec<ErrorEnvelope>),
}

/// Message and code (Google's `status`, e.g. `RESOURCE_EXHAUSTED`) of an error body.
pub fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    let error = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody::One(envelope)) => envelope.error,
        Ok(ErrorBody::Many(envelopes)) => envelopes.into_iter().find_map(|e| e.error),
        Err(_) => None,
    };
    match error {
        Some(error) if error.message.is_some() || error.status.is_some() => {
            (error.message, error.status)
        }
        _ => (super::openai::plain_text(body), None),
    }
}

// ---------------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------------

/// Turns `streamGenerateContent?alt=sse` fragments into OpenAI chunks.
///
/// Gemini sends whole `GenerateContentResponse`s with the new text of each candidate, complete
/// function calls, and growing usage, but no end-of-stream marker: a stream is complete only
/// once every choice has sent its finish reason.
#[derive(Debug)]
pub struct GeminiStream {
    /// The provider, for errors.
    provider: Arc<Provider>,
    /// The chunks' id, fixed by the first fragment so that every chunk carries the same one.
    id: Option<String>,
    /// The chunks' model, fixed by the first fragment for the same reason.
    model: Option<String>,
    /// Fallback id suffix when Gemini sends no `responseId`.
    request_id: String,
    /// Fallback model when Gemini sends no `modelVersion`.
    requested_model: String,
    /// `created` of every chunk.
    created: u64,
    /// Whether the client asked for the final usage chunk.
    client_wants_usage: bool,
    /// Per choice index, what has been sent so far.
    choices: BTreeMap<u32, ChoiceProgress>,
    /// The latest usage seen (Gemini's counts grow as the stream goes).
    usage: Option<TokenUsage>,
    /// `[DONE]` was produced.
    done: bool,
}

/// What one choice has sent so far.
#[derive(Debug, Default)]
struct ChoiceProgress {
    /// The first chunk (with `role`) went out.
    started: bool,
    /// Tool calls sent, which is also the index of the next one.
    tool_calls: u32,
    /// Its finish reason went out.
    finished: bool,
}

impl GeminiStream {
    /// A decoder for a stream answering `request`.
    pub fn new(call: &CallInfo<'_>, request: &ChatRequest) -> Self {
        GeminiStream {
            provider: Arc::clone(call.provider),
            id: None,
            model: None,
            request_id: call.request_id.to_owned(),
            requested_model: call.model.to_owned(),
            created: call.now_unix,
            client_wants_usage: request.wants_stream_usage(),
            choices: BTreeMap::new(),
            usage: None,
            done: false,
        }
    }

    /// Decodes one fragment into one chunk per candidate.
    pub fn decode(
        &mut self,
        event: SseEvent<'_>,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        let data = event.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return Ok(());
        }
        let fragment: GenerateContentResponse = parse_upstream(&self.provider, data.as_bytes())?;
        if let Some(error) = &fragment.error {
            let message = serde_json::from_value::<GoogleError>(error.clone())
                .ok()
                .and_then(|error| error.message.or(error.status))
                .unwrap_or_else(|| "unknown error".to_owned());
            return Err(stream_error(
                &self.provider,
                format!(
                    "provider {} failed mid-stream: {message}",
                    self.provider.name
                ),
            ));
        }
        if let Some(usage) = &fragment.usage_metadata {
            self.usage = Some(usage.normalise());
        }
        if fragment.candidates.is_empty() {
            if fragment
                .prompt_feedback
                .as_ref()
                .is_some_and(|feedback| feedback.block_reason.is_some())
            {
                return Err(no_candidates(
                    &self.provider,
                    fragment.prompt_feedback.as_ref(),
                ));
            }
            return Ok(());
        }
        let id = self
            .id
            .get_or_insert_with(|| {
                completion_id(fragment.response_id.as_deref(), &self.request_id)
            })
            .clone();
        let model = self
            .model
            .get_or_insert_with(|| {
                fragment
                    .model_version
                    .clone()
                    .unwrap_or_else(|| self.requested_model.clone())
            })
            .clone();
        for candidate in &fragment.candidates {
            let progress = self.choices.entry(candidate.index).or_default();
            let (text, calls) = split_parts(candidate.content.as_ref());
            let mut tool_calls = Vec::with_capacity(calls.len());
            for call in calls {
                tool_calls.push(ToolCallDelta {
                    index: progress.tool_calls,
                    id: Some(call.id(candidate.index, progress.tool_calls)),
                    kind: Some("function".to_owned()),
                    function: Some(FunctionCallDelta {
                        name: Some(call.name.clone()),
                        arguments: Some(call.arguments()),
                    }),
                });
                progress.tool_calls = progress.tool_calls.saturating_add(1);
            }
            let finish = candidate
                .finish_reason
                .as_deref()
                .map(|reason| finish_reason(reason, progress.tool_calls > 0));
            let content = !text.is_empty() || !tool_calls.is_empty();
            let role = (!progress.started).then(|| "assistant".to_owned());
            let logprobs = candidate.logprobs_result.as_ref().map(openai_logprobs);
            if !content && role.is_none() && finish.is_none() && logprobs.is_none() {
                // Nothing new for the client (a fragment holding only thoughts).
                continue;
            }
            progress.started = true;
            progress.finished |= finish.is_some();
            let chunk = ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk".to_owned(),
                created: self.created,
                model: model.clone(),
                choices: vec![ChunkChoice {
                    index: candidate.index,
                    delta: Delta {
                        role,
                        content: (!text.is_empty()).then_some(text),
                        tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                        refusal: None,
                    },
                    finish_reason: finish.map(str::to_owned),
                    logprobs,
                }],
                usage: None,
            };
            out.push(StreamItem::Chunk {
                data: chunk_bytes(&chunk)?,
                content,
            });
        }
        Ok(())
    }

    /// The upstream body ended. Gemini has no end marker, so a stream in which some choice
    /// never sent its finish reason was cut short, and fails rather than look complete.
    pub fn finish(&mut self, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        if self.choices.is_empty() || self.choices.values().any(|choice| !choice.finished) {
            return Err(stream_error(
                &self.provider,
                format!(
                    "provider {} ended the stream before finishing",
                    self.provider.name
                ),
            ));
        }
        self.done = true;
        if self.client_wants_usage {
            let chunk = ChatCompletionChunk {
                id: self
                    .id
                    .clone()
                    .unwrap_or_else(|| completion_id(None, &self.request_id)),
                object: "chat.completion.chunk".to_owned(),
                created: self.created,
                model: self
                    .model
                    .clone()
                    .unwrap_or_else(|| self.requested_model.clone()),
                choices: Vec::new(),
                usage: Some(self.usage.unwrap_or_default().to_openai()),
            };
            out.push(StreamItem::Chunk {
                data: chunk_bytes(&chunk)?,
                content: false,
            });
        }
        out.push(StreamItem::Done);
        Ok(())
    }

    /// Usage reported so far (the last `usageMetadata` seen).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
struct BatchEmbedRequest {
    requests: Vec<EmbedContentRequest>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedContentRequest {
    /// `models/<model>`, repeated in each request as the batch API requires.
    model: String,
    content: PartList,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_dimensionality: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct BatchEmbedResponse {
    #[serde(default)]
    embeddings: Vec<EmbeddingValues>,
}

#[derive(Debug, Deserialize)]
struct EmbeddingValues {
    /// f64, so that float answers pass through digit for digit.
    #[serde(default)]
    values: Vec<f64>,
}

/// Builds the upstream `batchEmbedContents` request: one request per input text.
pub fn embeddings_request(
    call: &CallInfo<'_>,
    request: &EmbeddingsRequest,
) -> Result<UpstreamRequest, GatewayError> {
    let Some(texts) = request.input.texts() else {
        return Err(GatewayError::invalid_request(format!(
            "provider {} (Gemini) embeds text only; send `input` as a string or an array of \
             strings, not token ids",
            call.provider.name
        ))
        .with_param("input"));
    };
    let model = format!("models/{}", model_id(call.model));
    let body = BatchEmbedRequest {
        requests: texts
            .into_iter()
            .map(|text| EmbedContentRequest {
                model: model.clone(),
                content: PartList {
                    parts: vec![Part::Text(text.to_owned())],
                },
                output_dimensionality: request.dimensions,
            })
            .collect(),
    };
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: model_url(call, "batchEmbedContents"),
        headers: headers(call.provider)?,
        body: to_body(&body)?,
    })
}

/// Gemini reports no token count for embeddings, so usage is an estimate: one token per four
/// characters of input, rounded up (`ceil(chars / 4)` over all inputs together).
fn estimated_tokens(request: &EmbeddingsRequest) -> u64 {
    let characters: usize = request
        .input
        .texts()
        .unwrap_or_default()
        .iter()
        .map(|text| text.chars().count())
        .sum();
    u64::try_from(characters).unwrap_or(u64::MAX).div_ceil(4)
}

/// Little-endian f32 bytes in standard base64, as OpenAI's `encoding_format: base64`.
fn base64_floats(values: &[f64]) -> String {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for value in values {
        // Narrowing is the point: OpenAI's base64 vectors are f32.
        bytes.extend_from_slice(&(*value as f32).to_le_bytes());
    }
    BASE64.encode(bytes)
}

/// Translates a `batchEmbedContents` answer into an OpenAI embeddings list. `usage` is the
/// estimate of [`estimated_tokens`], because Gemini does not count embedding tokens.
pub fn embeddings_response(
    call: &CallInfo<'_>,
    request: &EmbeddingsRequest,
    body: &[u8],
) -> Result<Completion, GatewayError> {
    let response: BatchEmbedResponse = parse_upstream(call.provider, body)?;
    let inputs = request.input.texts().map_or(0, |texts| texts.len());
    if response.embeddings.len() != inputs {
        return Err(GatewayError::new(
            ErrorKind::BadGateway,
            Origin::Upstream(call.provider.name.clone()),
            format!(
                "provider {} returned {} embeddings for {inputs} inputs",
                call.provider.name,
                response.embeddings.len()
            ),
        ));
    }
    let base64 = request.wants_base64();
    let data = response
        .embeddings
        .iter()
        .zip(0u32..)
        .map(|(embedding, index)| Embedding {
            object: "embedding".to_owned(),
            index,
            embedding: if base64 {
                Value::String(base64_floats(&embedding.values))
            } else {
                json!(embedding.values)
            },
        })
        .collect();
    let tokens = estimated_tokens(request);
    let answer = EmbeddingsResponse {
        object: "list".to_owned(),
        data,
        model: call.model.to_owned(),
        usage: EmbeddingsUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    Ok(Completion {
        body: response_body(&answer)?,
        usage: TokenUsage {
            input: tokens,
            ..TokenUsage::default()
        },
    })
}
