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
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    CallInfo, Completion, SseEvent, StreamItem, UpstreamRequest, base_headers, chunk_bytes,
    parse_upstream, path_segment, secret_header, stream_error, to_body,
};
use crate::config::Provider;
use crate::error::{ErrorKind, GatewayError, Origin};
use crate::wire::{
    ChatCompletion, ChatCompletionChunk, ChatMessage, ChatRequest, Choice, ChunkChoice,
    ContentPart, Delta, Embedding, EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage,
    FunctionCall, FunctionCallDelta, ImageUrl, MessageContent, ResponseFormat, ResponseMessage,
    Role, TokenUsage, Tool, ToolCall, ToolCallDelta, count_or_zero,
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
    /// Standard JSON Schema (not the OpenAPI subset of `parameters`), so that the schemas
    /// OpenAI clients send (`additionalProperties`, `$ref`...) are accepted as they are.
    #[serde(
        rename = "parametersJsonSchema",
        skip_serializing_if = "Option::is_none"
    )]
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
                    ContentPart::Other(_) => {
                        return Err(GatewayError::invalid_request(format!(
                            "{param}: Gemini does not accept content parts of type `{}`",
                            part.type_name()
                        ))
                        .with_param(param));
                    }
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

    /// The call's own id, or one made from the request id and its place in the answer, so
    /// that ids stay unique across a conversation, as OpenAI's are.
    fn id(&self, request_id: &str, candidate: u32, position: u32) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("call_{request_id}_{candidate}_{position}"))
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
    #[serde(default, deserialize_with = "count_or_zero")]
    prompt_token_count: u64,
    /// Visible output only; thoughts are counted apart.
    #[serde(default, deserialize_with = "count_or_zero")]
    candidates_token_count: u64,
    #[serde(default, deserialize_with = "count_or_zero")]
    thoughts_token_count: u64,
    #[serde(default, deserialize_with = "count_or_zero")]
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
    for part in content
        .map(|content| content.parts.as_slice())
        .unwrap_or_default()
    {
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

fn choice(candidate: &Candidate, request_id: &str) -> Choice {
    let (text, calls) = split_parts(candidate.content.as_ref());
    let tool_calls: Vec<ToolCall> = calls
        .iter()
        .zip(0u32..)
        .map(|(call, position)| ToolCall {
            id: call.id(request_id, candidate.index, position),
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
        choices: response
            .candidates
            .iter()
            .map(|candidate| choice(candidate, call.request_id))
            .collect(),
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

/// `{"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED", "details": [...]}`.
#[derive(Deserialize)]
struct GoogleError {
    message: Option<String>,
    status: Option<String>,
    /// `google.rpc` detail objects; read loosely, only for their `reason`.
    #[serde(default)]
    details: Option<Value>,
}

/// Gemini answers with the envelope, or sometimes with a one-element array of it. `Many`
/// comes first because serde would also read an array into the struct, by position.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorBody {
    Many(Vec<ErrorEnvelope>),
    One(ErrorEnvelope),
}

fn google_error(body: &[u8]) -> Option<GoogleError> {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody::One(envelope)) => envelope.error,
        Ok(ErrorBody::Many(envelopes)) => envelopes.into_iter().find_map(|e| e.error),
        Err(_) => None,
    }
}

/// Whether an error body says the gateway's API key is invalid. Gemini says so with a 400
/// INVALID_ARGUMENT whose details carry the reason `API_KEY_INVALID`.
pub fn rejects_api_key(body: &[u8]) -> bool {
    let Some(error) = google_error(body) else {
        return false;
    };
    let reason = error
        .details
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|detail| detail.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"));
    reason
        || error
            .message
            .as_deref()
            .is_some_and(|message| message.contains("API key not valid"))
}

/// Message and code (Google's `status`, e.g. `RESOURCE_EXHAUSTED`) of an error body.
pub fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    match google_error(body) {
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
            .get_or_insert_with(|| completion_id(fragment.response_id.as_deref(), &self.request_id))
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
                    id: Some(call.id(&self.request_id, candidate.index, progress.tool_calls)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::test_support::{golden, golden_sse, provider};
    use crate::provider::{
        StreamDecoder, chat_request as dispatch_request, chat_response as dispatch_response,
        embeddings_request as dispatch_embeddings_request,
        embeddings_response as dispatch_embeddings_response, error_response,
    };
    use crate::wire::StreamOptions;
    use pretty_assertions::assert_eq;

    fn call<'a>(provider: &'a Arc<Provider>, model: &'a str) -> CallInfo<'a> {
        CallInfo {
            provider,
            model,
            now_unix: 1_700_000_000,
            request_id: "req-1",
        }
    }

    fn chat(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    fn body_of(upstream: &UpstreamRequest) -> Value {
        serde_json::from_slice(&upstream.body).unwrap()
    }

    fn minimal(extra: Value) -> ChatRequest {
        let mut request = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (key, value) in extra.as_object().unwrap() {
            request[key] = value.clone();
        }
        chat(request)
    }

    // --- request -----------------------------------------------------------------------------

    #[test]
    fn request_translates_to_generate_content() {
        let gemini = provider("gemini");
        let request = chat(golden("gemini/request.in.json"));
        let upstream = dispatch_request(&call(&gemini, "gemini-2.5-flash"), &request).unwrap();
        assert_eq!(upstream.method, http::Method::POST);
        assert_eq!(
            upstream.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(upstream.headers["content-type"], "application/json");
        assert_eq!(upstream.headers["x-goog-api-key"], "test-key");
        assert!(upstream.headers["x-goog-api-key"].is_sensitive());
        assert!(upstream.headers.get("authorization").is_none());
        assert!(!upstream.url.contains("test-key"));
        assert_eq!(body_of(&upstream), golden("gemini/request.out.json"));
    }

    #[test]
    fn stream_request_asks_for_sse_and_keeps_the_key_out_of_the_url() {
        let gemini = provider("gemini");
        let mut request = chat(golden("gemini/request.in.json"));
        request.stream = true;
        let upstream = dispatch_request(&call(&gemini, "gemini-2.5-flash"), &request).unwrap();
        assert_eq!(
            upstream.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert!(!upstream.url.contains("key"));
        assert_eq!(upstream.headers["x-goog-api-key"], "test-key");
        assert!(upstream.headers["x-goog-api-key"].is_sensitive());
        // The body is the same as for a non-streamed call: Gemini has no `stream` field.
        assert_eq!(body_of(&upstream), golden("gemini/request.out.json"));
    }

    #[test]
    fn model_names_stay_one_path_segment() {
        let gemini = provider("gemini");
        let request = minimal(json!({}));
        let upstream =
            dispatch_request(&call(&gemini, "models/gemini-2.0-flash"), &request).unwrap();
        assert_eq!(
            upstream.url,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        );
        let upstream = dispatch_request(&call(&gemini, "a/../b?key=x"), &request).unwrap();
        assert_eq!(
            upstream.url,
            "https://generativelanguage.googleapis.com/v1beta/models/a%2F..%2Fb%3Fkey%3Dx:generateContent"
        );
    }

    #[test]
    fn unknown_part_types_are_refused_by_name() {
        let gemini = provider("gemini");
        let request = chat(json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Watch"},
                {"type": "input_video", "input_video": {"url": "https://example.test/a.mp4"}}
            ]}
        ]}));
        let error = dispatch_request(&call(&gemini, "m"), &request).unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.param.as_deref(), Some("messages[1].content[1]"));
        assert!(
            error
                .message
                .contains("Gemini does not accept content parts of type `input_video`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn invalid_api_key_is_an_upstream_credentials_failure() {
        let gemini = provider("gemini");
        let array = golden("gemini/error.array.json").to_string();
        let error = error_response(&gemini, 400, None, array.as_bytes());
        assert_eq!(error.status(), 502);
        assert!(!error.retryable);
        assert_eq!(
            error.code.as_deref(),
            Some("upstream_authentication_failed")
        );
        assert_eq!(
            error.message,
            "provider gemini rejected the gateway's credentials (400)"
        );
        assert_eq!(error.origin, Origin::Upstream("gemini".to_owned()));
        // The reason alone is enough, and so is the message alone.
        let by_reason = br#"{"error":{"code":400,"message":"Bad key.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#;
        assert_eq!(error_response(&gemini, 400, None, by_reason).status(), 502);
        let by_message =
            br#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(error_response(&gemini, 400, None, by_message).status(), 502);
        // Any other INVALID_ARGUMENT is still the client's.
        let other = br#"{"error":{"code":400,"message":"Invalid JSON payload.","status":"INVALID_ARGUMENT","details":[{"reason":"BAD_FIELD"}]}}"#;
        let error = error_response(&gemini, 400, None, other);
        assert_eq!(error.status(), 400);
        assert!(error.message.contains("Invalid JSON payload."));
    }

    #[test]
    fn null_usage_counts_are_zero() {
        let gemini = provider("gemini");
        let body = br#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Hi"}]},"finishReason":"STOP","index":0}],
            "usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"thoughtsTokenCount":null,"cachedContentTokenCount":null},
            "modelVersion":"gemini-2.0-flash","responseId":"r1"}"#;
        let request = minimal(json!({}));
        let completion = dispatch_response(&call(&gemini, "m"), &request, body).unwrap();
        assert_eq!(
            completion.usage,
            TokenUsage {
                input: 5,
                output: 1,
                ..TokenUsage::default()
            }
        );
    }

    #[test]
    fn minimal_request_sends_no_generation_config() {
        let gemini = provider("gemini");
        let upstream = dispatch_request(&call(&gemini, "m"), &minimal(json!({}))).unwrap();
        assert_eq!(
            body_of(&upstream),
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        );
    }

    #[test]
    fn sampling_logprobs_and_json_mode() {
        let gemini = provider("gemini");
        let request = minimal(json!({
            "max_tokens": 10, "max_completion_tokens": 99, "stop": "###",
            "presence_penalty": 0.5, "frequency_penalty": -0.5,
            "logprobs": true, "top_logprobs": 3,
            "response_format": {"type": "json_object"}
        }));
        let upstream = dispatch_request(&call(&gemini, "m"), &request).unwrap();
        assert_eq!(
            body_of(&upstream)["generationConfig"],
            json!({
                "maxOutputTokens": 99,
                "stopSequences": ["###"],
                "presencePenalty": 0.5,
                "frequencyPenalty": -0.5,
                "responseLogprobs": true,
                "logprobs": 3,
                "responseMimeType": "application/json"
            })
        );
        let upstream = dispatch_request(
            &call(&gemini, "m"),
            &minimal(json!({"response_format": {"type": "text"}})),
        )
        .unwrap();
        assert!(body_of(&upstream).get("generationConfig").is_none());
    }

    #[test]
    fn tool_choice_modes() {
        let gemini = provider("gemini");
        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")] {
            let upstream = dispatch_request(
                &call(&gemini, "m"),
                &minimal(json!({"tool_choice": choice})),
            )
            .unwrap();
            assert_eq!(
                body_of(&upstream)["toolConfig"],
                json!({"functionCallingConfig": {"mode": mode}}),
                "{choice}"
            );
        }
        for bad in [json!("sometimes"), json!({"type": "function"}), json!(3)] {
            let error =
                dispatch_request(&call(&gemini, "m"), &minimal(json!({"tool_choice": bad})))
                    .unwrap_err();
            assert_eq!(error.status(), 400);
            assert_eq!(error.param.as_deref(), Some("tool_choice"));
        }
    }

    #[test]
    fn audio_files_and_empty_texts() {
        let gemini = provider("gemini");
        let request = chat(json!({"model": "m", "messages": [
            {"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
                {"type": "text", "text": ""},
                {"type": "image_url", "image_url": {"url": "http://example.test/x"}},
                {"type": "image_url", "image_url": {"url": "https://example.test/a.b/pic.GIF#frag"}}
            ]},
            {"role": "user", "content": "and this?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "now", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "[1, 2]"}]},
            {"role": "function", "name": "legacy", "content": "{\"ok\":true}"}
        ]}));
        let upstream = dispatch_request(&call(&gemini, "m"), &request).unwrap();
        assert_eq!(
            body_of(&upstream)["contents"],
            json!([
                {"role": "user", "parts": [
                    {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                    {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "http://example.test/x"}},
                    {"fileData": {"mimeType": "image/gif", "fileUri": "https://example.test/a.b/pic.GIF#frag"}},
                    {"text": "and this?"}
                ]},
                {"role": "model", "parts": [{"functionCall": {"name": "now", "args": {}}}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "now", "response": {"content": "[1, 2]"}}},
                    {"functionResponse": {"name": "legacy", "response": {"ok": true}}}
                ]}
            ])
        );
    }

    fn request_error(value: Value) -> GatewayError {
        let gemini = provider("gemini");
        dispatch_request(&call(&gemini, "m"), &chat(value)).unwrap_err()
    }

    #[test]
    fn untranslatable_requests_name_the_field() {
        let cases = [
            (
                json!({"model": "m", "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "tool", "tool_call_id": "nope", "content": "x"}
                ]}),
                "messages[1].tool_call_id",
            ),
            (
                json!({"model": "m", "messages": [
                    {"role": "assistant", "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{not json"}}
                    ]}
                ]}),
                "messages[0].tool_calls[1].function.arguments",
            ),
            (
                json!({"model": "m", "messages": [
                    {"role": "assistant", "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                    ]}
                ]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "web_search"}]}),
                "tools[1].type",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "x"},
                    {"type": "image_url", "image_url": {"url": "ftp://example.test/a.png"}}
                ]}]}),
                "messages[0].content[1].image_url.url",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "file", "file": {"file_id": "file-123"}}
                ]}]}),
                "messages[0].content[0].file",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": "AAAA"}}
                ]}]}),
                "messages[0].content[0].input_audio",
            ),
        ];
        for (request, param) in cases {
            let error = request_error(request);
            assert_eq!(error.status(), 400, "{param}");
            assert_eq!(error.origin, Origin::Client, "{param}");
            assert!(!error.retryable, "{param}");
            assert_eq!(error.param.as_deref(), Some(param));
        }
    }

    // --- response ----------------------------------------------------------------------------

    #[test]
    fn response_translates_text_calls_and_usage() {
        let gemini = provider("gemini");
        let body = golden("gemini/response.json").to_string();
        let request = minimal(json!({}));
        let completion = dispatch_response(
            &call(&gemini, "gemini-2.5-flash"),
            &request,
            body.as_bytes(),
        )
        .unwrap();
        let translated: Value = serde_json::from_slice(&completion.body).unwrap();
        assert_eq!(translated, golden("gemini/response.out.json"));
        assert_eq!(
            completion.usage,
            TokenUsage {
                input: 120,
                output: 75,
                cached_input: 100,
                cache_write: 0,
                reasoning: 45
            }
        );
    }

    #[test]
    fn response_without_ids_or_finish_reason_uses_fallbacks() {
        let gemini = provider("gemini");
        let body = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"}}]}}]}"#;
        let completion =
            chat_response(&call(&gemini, "gemini-x"), &minimal(json!({})), body).unwrap();
        let translated: Value = serde_json::from_slice(&completion.body).unwrap();
        assert_eq!(
            translated,
            json!({
                "id": "chatcmpl-req-1", "object": "chat.completion", "created": 1_700_000_000,
                "model": "gemini-x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_req-1_0_0", "type": "function",
                                    "function": {"name": "f", "arguments": "{}"}}],
                    "refusal": null},
                    "finish_reason": "tool_calls", "logprobs": null}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                          "prompt_tokens_details": {"cached_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}}
            })
        );
        assert_eq!(completion.usage, TokenUsage::default());
    }

    #[test]
    fn finish_reasons_map_to_openai() {
        let cases = [
            ("STOP", false, "stop"),
            ("STOP", true, "tool_calls"),
            ("MAX_TOKENS", false, "length"),
            ("MAX_TOKENS", true, "length"),
            ("SAFETY", false, "content_filter"),
            ("RECITATION", false, "content_filter"),
            ("BLOCKLIST", false, "content_filter"),
            ("PROHIBITED_CONTENT", false, "content_filter"),
            ("SPII", false, "content_filter"),
            ("IMAGE_SAFETY", true, "content_filter"),
            ("MALFORMED_FUNCTION_CALL", false, "stop"),
            ("OTHER", false, "stop"),
        ];
        for (reason, made_calls, expected) in cases {
            assert_eq!(finish_reason(reason, made_calls), expected, "{reason}");
        }
    }

    #[test]
    fn logprobs_become_openai_logprobs() {
        let gemini = provider("gemini");
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Hi!"}]},"finishReason":"STOP",
            "logprobsResult":{
                "topCandidates":[{"candidates":[{"token":"Hi","logProbability":-0.25},{"token":"Hey","logProbability":-1.5}]}],
                "chosenCandidates":[{"token":"Hi","logProbability":-0.25},{"token":"!","logProbability":-0.5}]}}]}"#;
        let completion = chat_response(&call(&gemini, "m"), &minimal(json!({})), body).unwrap();
        let translated: Value = serde_json::from_slice(&completion.body).unwrap();
        assert_eq!(
            translated["choices"][0]["logprobs"],
            json!({"content": [
                {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
                    {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
                    {"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]}
                ]},
                {"token": "!", "logprob": -0.5, "bytes": [33], "top_logprobs": []}
            ], "refusal": null})
        );
    }

    #[test]
    fn blocked_prompt_is_a_content_policy_400() {
        let gemini = provider("gemini");
        let body = golden("gemini/response.blocked.json").to_string();
        let error =
            chat_response(&call(&gemini, "m"), &minimal(json!({})), body.as_bytes()).unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.code.as_deref(), Some("content_policy_violation"));
        assert!(!error.retryable);
        assert_eq!(error.origin, Origin::Upstream("gemini".to_owned()));
        assert!(
            error.message.contains("blocked the prompt"),
            "{}",
            error.message
        );
        assert!(error.message.contains("SAFETY"), "{}", error.message);
    }

    #[test]
    fn unreadable_or_empty_answers_are_retryable_502s() {
        let gemini = provider("gemini");
        for body in [
            &b"<html>oops</html>"[..],
            br#"{"candidates": "many"}"#,
            b"{}",
        ] {
            let error = chat_response(&call(&gemini, "m"), &minimal(json!({})), body).unwrap_err();
            assert_eq!(error.status(), 502, "{}", String::from_utf8_lossy(body));
            assert!(error.retryable);
        }
    }

    // --- stream ------------------------------------------------------------------------------

    fn stream_request(wants_usage: bool) -> ChatRequest {
        let mut request = chat(golden("gemini/request.in.json"));
        request.stream = true;
        if wants_usage {
            request.stream_options = Some(StreamOptions {
                include_usage: Some(true),
                ..Default::default()
            });
        }
        request
    }

    /// Feeds a transcript through the decoder; returns the items and the result of `finish`.
    fn run_stream(
        transcript: &[(String, String)],
        request: &ChatRequest,
    ) -> (
        Vec<StreamItem>,
        Result<(), GatewayError>,
        Option<TokenUsage>,
    ) {
        let gemini = provider("gemini");
        let mut decoder = StreamDecoder::new(&call(&gemini, "gemini-2.5-flash"), request);
        let mut out = Vec::new();
        for (event, data) in transcript {
            decoder.decode(SseEvent { event, data }, &mut out).unwrap();
        }
        let finished = decoder.finish(&mut out);
        (out, finished, decoder.usage())
    }

    /// The chunks as JSON, the content flags, and whether the list ends with `[DONE]`.
    fn chunks(items: &[StreamItem]) -> (Vec<Value>, Vec<bool>, bool) {
        let mut values = Vec::new();
        let mut flags = Vec::new();
        let mut done = false;
        for item in items {
            match item {
                StreamItem::Chunk { data, content } => {
                    assert!(!done, "a chunk after [DONE]");
                    values.push(serde_json::from_slice(data).unwrap());
                    flags.push(*content);
                }
                StreamItem::Done => done = true,
            }
        }
        (values, flags, done)
    }

    #[test]
    fn stream_translates_fragments_and_appends_usage_when_asked() {
        let transcript = golden_sse("gemini/stream.sse");
        assert_eq!(transcript.len(), 3);
        let expected = golden("gemini/stream.out.json");
        let expected = expected.as_array().unwrap();
        let usage = TokenUsage {
            input: 12,
            output: 10,
            cached_input: 0,
            cache_write: 0,
            reasoning: 4,
        };

        let (items, finished, seen) = run_stream(&transcript, &stream_request(true));
        finished.unwrap();
        let (values, flags, done) = chunks(&items);
        assert_eq!(values, expected.as_slice());
        assert_eq!(flags, [true, true, true, false]);
        assert!(done);
        assert_eq!(items.last(), Some(&StreamItem::Done));
        assert_eq!(seen, Some(usage));

        let (items, finished, seen) = run_stream(&transcript, &stream_request(false));
        finished.unwrap();
        let (values, flags, done) = chunks(&items);
        assert_eq!(values, expected[..3]);
        assert_eq!(flags, [true, true, true]);
        assert!(done);
        assert_eq!(seen, Some(usage), "usage is metered even when not sent");
    }

    #[test]
    fn stream_with_function_calls() {
        let transcript = golden_sse("gemini/stream_tools.sse");
        let (items, finished, usage) = run_stream(&transcript, &stream_request(false));
        finished.unwrap();
        let (values, flags, done) = chunks(&items);
        assert_eq!(Value::Array(values), golden("gemini/stream_tools.out.json"));
        assert_eq!(flags, [true, true]);
        assert!(done);
        assert_eq!(
            usage,
            Some(TokenUsage {
                input: 30,
                output: 12,
                ..TokenUsage::default()
            })
        );
    }

    #[test]
    fn stream_cut_before_finish_reason_fails_in_finish() {
        let transcript = golden_sse("gemini/stream.sse");
        let (items, finished, _) = run_stream(&transcript[..2], &stream_request(true));
        let error = finished.unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.retryable);
        assert!(
            error
                .message
                .contains("provider gemini ended the stream before finishing"),
            "{}",
            error.message
        );
        assert!(!items.contains(&StreamItem::Done));

        let (items, finished, _) = run_stream(&[], &stream_request(false));
        assert!(finished.is_err());
        assert!(items.is_empty());
    }

    #[test]
    fn stream_error_fragment_fails_the_stream() {
        let gemini = provider("gemini");
        let mut decoder = GeminiStream::new(&call(&gemini, "m"), &stream_request(false));
        let mut out = Vec::new();
        let error = decoder
            .decode(
                SseEvent {
                    event: "message",
                    data: r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
                },
                &mut out,
            )
            .unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.retryable);
        assert!(
            error.message.contains("The model is overloaded."),
            "{}",
            error.message
        );
        assert!(out.is_empty());
    }

    #[test]
    fn stream_blocked_prompt_is_a_content_policy_error() {
        let gemini = provider("gemini");
        let mut decoder = GeminiStream::new(&call(&gemini, "m"), &stream_request(false));
        let mut out = Vec::new();
        let error = decoder
            .decode(
                SseEvent {
                    event: "message",
                    data: r#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"}}"#,
                },
                &mut out,
            )
            .unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.code.as_deref(), Some("content_policy_violation"));
        assert!(!error.retryable);
    }

    // --- embeddings --------------------------------------------------------------------------

    fn embeddings(value: Value) -> EmbeddingsRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn embeddings_request_batches_texts() {
        let gemini = provider("gemini");
        let request = embeddings(golden("gemini/embeddings.request.in.json"));
        let upstream =
            dispatch_embeddings_request(&call(&gemini, "text-embedding-004"), &request).unwrap();
        assert_eq!(
            upstream.url,
            "https://generativelanguage.googleapis.com/v1beta/models/text-embedding-004:batchEmbedContents"
        );
        assert_eq!(upstream.headers["x-goog-api-key"], "test-key");
        assert!(upstream.headers["x-goog-api-key"].is_sensitive());
        assert_eq!(
            body_of(&upstream),
            golden("gemini/embeddings.request.out.json")
        );

        let single = embeddings(json!({"model": "embed", "input": "one"}));
        let upstream =
            dispatch_embeddings_request(&call(&gemini, "models/text-embedding-004"), &single)
                .unwrap();
        assert_eq!(
            body_of(&upstream),
            json!({"requests": [{"model": "models/text-embedding-004",
                                 "content": {"parts": [{"text": "one"}]}}]})
        );
    }

    #[test]
    fn embeddings_of_token_ids_are_refused() {
        let gemini = provider("gemini");
        for input in [json!([1, 2, 3]), json!([[1, 2], [3]])] {
            let request = embeddings(json!({"model": "embed", "input": input}));
            let error = dispatch_embeddings_request(&call(&gemini, "text-embedding-004"), &request)
                .unwrap_err();
            assert_eq!(error.status(), 400);
            assert_eq!(error.param.as_deref(), Some("input"));
            assert!(error.message.contains("text only"), "{}", error.message);
        }
    }

    #[test]
    fn embeddings_response_as_floats_with_estimated_usage() {
        let gemini = provider("gemini");
        let request = embeddings(golden("gemini/embeddings.request.in.json"));
        let body = golden("gemini/embeddings.response.json").to_string();
        let completion = dispatch_embeddings_response(
            &call(&gemini, "text-embedding-004"),
            &request,
            body.as_bytes(),
        )
        .unwrap();
        let translated: Value = serde_json::from_slice(&completion.body).unwrap();
        assert_eq!(translated, golden("gemini/embeddings.response.out.json"));
        // "hello world" + "bonjour" = 18 characters, ceil(18 / 4) = 5.
        assert_eq!(
            completion.usage,
            TokenUsage {
                input: 5,
                ..TokenUsage::default()
            }
        );
    }

    #[test]
    fn embeddings_response_as_base64() {
        let gemini = provider("gemini");
        let mut request = embeddings(golden("gemini/embeddings.request.in.json"));
        request.encoding_format = Some("base64".to_owned());
        let body = golden("gemini/embeddings.response.json").to_string();
        let completion = embeddings_response(
            &call(&gemini, "text-embedding-004"),
            &request,
            body.as_bytes(),
        )
        .unwrap();
        let translated: Value = serde_json::from_slice(&completion.body).unwrap();
        // 0.25, -0.5, 1.0 as little-endian f32: 00 00 80 3E, 00 00 00 BF, 00 00 80 3F.
        assert_eq!(translated["data"][0]["embedding"], "AACAPgAAAL8AAIA/");
        let expected: [[f32; 3]; 2] = [[0.25, -0.5, 1.0], [0.125, 0.0, -2.0]];
        for (index, floats) in expected.iter().enumerate() {
            let text = translated["data"][index]["embedding"].as_str().unwrap();
            let bytes = BASE64.decode(text).unwrap();
            let decoded: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes(chunk.try_into().unwrap()))
                .collect();
            assert_eq!(decoded, floats.as_slice());
            assert_eq!(translated["data"][index]["index"], index);
        }
        assert_eq!(
            translated["usage"],
            json!({"prompt_tokens": 5, "total_tokens": 5})
        );
    }

    #[test]
    fn embeddings_count_mismatch_or_garbage_is_a_502() {
        let gemini = provider("gemini");
        let request = embeddings(golden("gemini/embeddings.request.in.json"));
        for body in [&br#"{"embeddings":[{"values":[1.0]}]}"#[..], b"not json"] {
            let error = embeddings_response(&call(&gemini, "e"), &request, body).unwrap_err();
            assert_eq!(error.status(), 502);
            assert!(error.retryable);
        }
    }

    // --- errors ------------------------------------------------------------------------------

    #[test]
    fn error_bodies_as_object_array_or_text() {
        let object = golden("gemini/error.json").to_string();
        assert_eq!(
            error_details(object.as_bytes()),
            (
                Some("Resource has been exhausted (e.g. check quota).".to_owned()),
                Some("RESOURCE_EXHAUSTED".to_owned())
            )
        );
        let array = golden("gemini/error.array.json").to_string();
        assert_eq!(
            error_details(array.as_bytes()),
            (
                Some("API key not valid. Please pass a valid API key.".to_owned()),
                Some("INVALID_ARGUMENT".to_owned())
            )
        );
        assert_eq!(
            error_details(b"Bad Gateway"),
            (Some("Bad Gateway".to_owned()), None)
        );
        assert_eq!(
            error_details(br#"{"unexpected":true}"#),
            (Some(r#"{"unexpected":true}"#.to_owned()), None)
        );
        assert_eq!(error_details(b""), (None, None));
    }

    #[test]
    fn resource_exhausted_is_a_retryable_429() {
        let gemini = provider("gemini");
        let body = golden("gemini/error.json").to_string();
        let error = error_response(
            &gemini,
            429,
            Some(std::time::Duration::from_secs(30)),
            body.as_bytes(),
        );
        assert_eq!(error.status(), 429);
        assert!(error.retryable);
        assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(30)));
        assert_eq!(error.code.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert!(
            error.message.contains("Resource has been exhausted"),
            "{}",
            error.message
        );
    }
}
