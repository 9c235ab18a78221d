//! Anthropic Messages (`POST /v1/messages`): translation to and from the OpenAI wire types.
//!
//! This module owns the mapping of requests, answers, stream events and error bodies. It does
//! no I/O and reads no clock: the transport sends what it builds, and `now_unix` comes in.
//!
//! # Requests
//! - `system` and `developer` messages, wherever they appear, are hoisted into the top-level
//!   `system` string (joined with a blank line), because Anthropic has no system role.
//! - Tool results become `tool_result` blocks in a user message. Anthropic wants user and
//!   assistant turns to alternate, so consecutive messages of the same role are merged.
//! - Images go as base64 or URL sources, PDFs sent inline (`file.file_data`) as `document`
//!   blocks. Audio, other files and file ids are refused with a 400 naming the part.
//! - `max_tokens` is required by Anthropic: the client's limit, or [`DEFAULT_MAX_TOKENS`].
//! - `temperature` above 1 is clamped to 1 (Anthropic's range is 0..1, OpenAI's 0..2).
//! - `response_format: json_schema` becomes a forced tool named after the schema, whose input
//!   is the schema. Its `tool_use` input comes back as the message content (a JSON string),
//!   with finish reason `stop` and no tool call, in streams too.
//! - `response_format: json_object` appends an instruction to `system`: Anthropic has no JSON
//!   mode, so the object is asked for, not guaranteed.
//! - `n > 1` and `logprobs` are refused with a 400: Anthropic has neither.
//! - `seed`, `presence_penalty`, `frequency_penalty`, `top_logprobs` and unmodelled fields
//!   (`reasoning_effort`, ...) have no Anthropic equivalent and are ignored.
//!
//! # Answers
//! - Ids become `chatcmpl-<msg id>`. Text blocks are joined; `thinking` and
//!   `redacted_thinking` blocks are dropped, and since Anthropic does not count thinking
//!   tokens apart, `reasoning` stays 0.
//! - Anthropic's `input_tokens` excludes cache reads and writes; the normalised input adds
//!   them back, so that `input` means all input tokens for every provider.
//! - Tool-call arguments keep the provider's key order (see [`compact_json`]).

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{
    CallInfo, Completion, SseEvent, StreamItem, UpstreamRequest, base_headers, chunk_bytes,
    parse_upstream, secret_header, stream_error, to_body,
};
use crate::config::Provider;
use crate::error::GatewayError;
use crate::wire::{
    ChatCompletion, ChatCompletionChunk, ChatMessage, ChatRequest, Choice, ChunkChoice,
    ContentPart, Delta, FunctionCall, FunctionCallDelta, MessageContent, ResponseFormat,
    ResponseMessage, Role, TokenUsage, ToolCall, ToolCallDelta,
};

/// The API version the translation is written against.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// `max_tokens` when the client sets no limit. Anthropic requires one; this is enough for a
/// long answer and within every current model's output limit.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// Appended to `system` for `response_format: json_object`.
const JSON_OBJECT_INSTRUCTION: &str = "Respond only with a single valid JSON object.";

/// Description of the tool forced for `response_format: json_schema`.
const JSON_SCHEMA_TOOL_DESCRIPTION: &str = "Respond with JSON matching this schema";

// ---------------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------------

/// The Messages request body.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<OutMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "is_false")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'a>>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Serialize)]
struct Metadata<'a> {
    user_id: &'a str,
}

/// One turn: `user` or `assistant`.
#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: OutContent<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutContent<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<OutBlock<'a>>),
}

impl<'a> OutContent<'a> {
    /// The content as blocks, for merging two turns. Anthropic rejects empty text blocks.
    fn into_blocks(self) -> Vec<OutBlock<'a>> {
        match self {
            OutContent::Text(text) if text.is_empty() => Vec::new(),
            OutContent::Text(text) => vec![OutBlock::Text { text }],
            OutContent::Blocks(blocks) => blocks,
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock<'a> {
    Text {
        text: Cow<'a, str>,
    },
    Image {
        source: Source<'a>,
    },
    Document {
        source: Source<'a>,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: String,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

#[derive(Serialize)]
struct OutTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Cow<'a, Value>,
}

#[derive(Serialize)]
struct OutToolChoice<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "is_false")]
    disable_parallel_tool_use: bool,
}

fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// The tool forced for `response_format: json_schema`, if the request asks for one.
fn schema_tool_name(request: &ChatRequest) -> Option<&str> {
    match &request.response_format {
        Some(ResponseFormat::JsonSchema { json_schema }) => Some(json_schema.name.as_str()),
        _ => None,
    }
}

/// Builds the upstream request: `POST {base_url}/v1/messages`.
pub fn chat_request(
    call: &CallInfo<'_>,
    request: &ChatRequest,
) -> Result<UpstreamRequest, GatewayError> {
    let provider = call.provider;
    if request.n.is_some_and(|n| n > 1) {
        return Err(GatewayError::invalid_request(format!(
            "provider {} (Anthropic) does not support n > 1",
            provider.name
        ))
        .with_param("n"));
    }
    if request.logprobs == Some(true) {
        return Err(GatewayError::invalid_request(format!(
            "provider {} (Anthropic) does not support logprobs",
            provider.name
        ))
        .with_param("logprobs"));
    }

    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<OutMessage<'_>> = Vec::with_capacity(request.messages.len());
    for (index, message) in request.messages.iter().enumerate() {
        let (role, content) = match message.role {
            Role::System | Role::Developer => {
                let text = message.text_content();
                if !text.is_empty() {
                    system.push(text);
                }
                continue;
            }
            Role::User => ("user", user_content(provider, index, message)?),
            Role::Assistant => ("assistant", assistant_content(provider, index, message)?),
            Role::Tool => {
                let Some(tool_use_id) = message.tool_call_id.as_deref() else {
                    return Err(GatewayError::invalid_request(format!(
                        "messages[{index}]: a tool message needs `tool_call_id`"
                    ))
                    .with_param(format!("messages[{index}].tool_call_id")));
                };
                let result = OutBlock::ToolResult {
                    tool_use_id,
                    content: message.text_content(),
                };
                ("user", OutContent::Blocks(vec![result]))
            }
            Role::Function => {
                return Err(GatewayError::invalid_request(format!(
                    "messages[{index}]: provider {} (Anthropic) does not accept legacy \
                     `function` messages; send `tool` messages instead",
                    provider.name
                ))
                .with_param(format!("messages[{index}].role")));
            }
        };
        push_turn(&mut messages, role, content);
    }

    if matches!(request.response_format, Some(ResponseFormat::JsonObject)) {
        system.push(JSON_OBJECT_INSTRUCTION.to_owned());
    }

    let mut tools = client_tools(provider, request)?;
    let mut tool_choice = client_tool_choice(request)?;
    if let Some(ResponseFormat::JsonSchema { json_schema }) = &request.response_format {
        if tools.iter().any(|tool| tool.name == json_schema.name) {
            return Err(GatewayError::invalid_request(format!(
                "`response_format.json_schema.name` ({}) must differ from the names of \
                 `tools`: provider {} (Anthropic) receives the schema as a tool",
                json_schema.name, provider.name
            ))
            .with_param("response_format.json_schema.name"));
        }
        tools.push(OutTool {
            name: &json_schema.name,
            description: Some(JSON_SCHEMA_TOOL_DESCRIPTION),
            input_schema: json_schema
                .schema
                .as_ref()
                .map_or_else(|| Cow::Owned(empty_object_schema()), Cow::Borrowed),
        });
        tool_choice = Some(OutToolChoice {
            kind: "tool",
            name: Some(&json_schema.name),
            disable_parallel_tool_use: false,
        });
    }
    if request.parallel_tool_calls == Some(false) && !tools.is_empty() {
        // `none` has no such flag; every other choice takes it.
        let choice = tool_choice.get_or_insert(OutToolChoice {
            kind: "auto",
            name: None,
            disable_parallel_tool_use: false,
        });
        if choice.kind != "none" {
            choice.disable_parallel_tool_use = true;
        }
    }

    let body = MessagesRequest {
        model: call.model,
        max_tokens: request.output_limit().unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        tools,
        tool_choice,
        temperature: request.temperature.map(|temperature| temperature.min(1.0)),
        top_p: request.top_p,
        stop_sequences: request
            .stop
            .as_ref()
            .map(|stop| stop.to_vec())
            .unwrap_or_default(),
        stream: request.stream,
        metadata: request.user.as_deref().map(|user_id| Metadata { user_id }),
    };

    let mut headers = base_headers(provider);
    if let Some(key) = &provider.api_key {
        headers.insert("x-api-key", secret_header(key.expose())?);
    }
    // A configured `anthropic-version` header wins, so operators can move ahead of us.
    if !headers.contains_key("anthropic-version") {
        headers.insert(
            "anthropic-version",
            http::HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    Ok(UpstreamRequest {
        method: http::Method::POST,
        url: format!("{}/v1/messages", provider.base_url),
        headers,
        body: to_body(&body)?,
    })
}

/// Appends a turn, merging it into the previous one when both have the same role.
fn push_turn<'a>(messages: &mut Vec<OutMessage<'a>>, role: &'static str, content: OutContent<'a>) {
    match messages.last_mut() {
        Some(last) if last.role == role => {
            let previous = std::mem::replace(&mut last.content, OutContent::Blocks(Vec::new()));
            let mut blocks = previous.into_blocks();
            blocks.extend(content.into_blocks());
            last.content = OutContent::Blocks(blocks);
        }
        _ => messages.push(OutMessage { role, content }),
    }
}

fn user_content<'a>(
    provider: &Provider,
    index: usize,
    message: &'a ChatMessage,
) -> Result<OutContent<'a>, GatewayError> {
    match &message.content {
        None => Ok(OutContent::Text(Cow::Borrowed(""))),
        Some(MessageContent::Text(text)) => Ok(OutContent::Text(Cow::Borrowed(text))),
        Some(MessageContent::Parts(parts)) => {
            let blocks = parts
                .iter()
                .enumerate()
                .map(|(part_index, part)| part_block(provider, index, part_index, part))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(OutContent::Blocks(blocks))
        }
    }
}

fn assistant_content<'a>(
    provider: &Provider,
    index: usize,
    message: &'a ChatMessage,
) -> Result<OutContent<'a>, GatewayError> {
    let content = user_content(provider, index, message)?;
    let Some(tool_calls) = message
        .tool_calls
        .as_ref()
        .filter(|calls| !calls.is_empty())
    else {
        return Ok(content);
    };
    let mut blocks = content.into_blocks();
    for (call_index, call) in tool_calls.iter().enumerate() {
        blocks.push(OutBlock::ToolUse {
            id: &call.id,
            name: &call.function.name,
            input: tool_arguments(index, call_index, &call.function.arguments)?,
        });
    }
    Ok(OutContent::Blocks(blocks))
}

/// Parses a tool call's JSON-encoded arguments into the object Anthropic wants as `input`.
fn tool_arguments(index: usize, call_index: usize, arguments: &str) -> Result<Value, GatewayError> {
    let param = || format!("messages[{index}].tool_calls[{call_index}].function.arguments");
    // Some clients send "" for a tool without parameters.
    if arguments.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(GatewayError::invalid_request(format!(
            "`{}` must encode a JSON object",
            param()
        ))
        .with_param(param())),
        Err(error) => Err(GatewayError::invalid_request(format!(
            "`{}` is not valid JSON: {error}",
            param()
        ))
        .with_param(param())),
    }
}

fn part_block<'a>(
    provider: &Provider,
    index: usize,
    part_index: usize,
    part: &'a ContentPart,
) -> Result<OutBlock<'a>, GatewayError> {
    let refuse = |what: &str| {
        let param = format!("messages[{index}].content[{part_index}]");
        GatewayError::invalid_request(format!(
            "{param}: provider {} (Anthropic) does not accept {what}",
            provider.name
        ))
        .with_param(param)
    };
    match part {
        ContentPart::Text { text } => Ok(OutBlock::Text {
            text: Cow::Borrowed(text),
        }),
        // A refusal the assistant gave earlier is text in the conversation.
        ContentPart::Refusal { refusal } => Ok(OutBlock::Text {
            text: Cow::Borrowed(refusal),
        }),
        ContentPart::ImageUrl { image_url } => {
            if let Some((media_type, data)) = image_url.as_data_url() {
                Ok(OutBlock::Image {
                    source: Source::Base64 { media_type, data },
                })
            } else if image_url.url.starts_with("https://") || image_url.url.starts_with("http://")
            {
                Ok(OutBlock::Image {
                    source: Source::Url {
                        url: &image_url.url,
                    },
                })
            } else {
                Err(refuse(
                    "this image URL; send an http(s) URL or a base64 `data:` URL",
                ))
            }
        }
        ContentPart::File { file } => {
            let data_url = file.get("file_data").and_then(Value::as_str);
            match data_url.and_then(split_data_url) {
                Some((media_type @ "application/pdf", data)) => Ok(OutBlock::Document {
                    source: Source::Base64 { media_type, data },
                }),
                _ => Err(refuse(
                    "this file; only PDF files sent inline as a base64 `file_data` URL are supported",
                )),
            }
        }
        ContentPart::InputAudio { .. } => Err(refuse("audio input (`input_audio`)")),
        ContentPart::Other(_) => Err(refuse(&format!(
            "content parts of type `{}`",
            part.type_name()
        ))),
    }
}

/// Splits `data:<media type>;base64,<data>`.
fn split_data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    Some((meta.strip_suffix(";base64")?, data))
}

fn client_tools<'a>(
    provider: &Provider,
    request: &'a ChatRequest,
) -> Result<Vec<OutTool<'a>>, GatewayError> {
    let Some(tools) = &request.tools else {
        return Ok(Vec::new());
    };
    tools
        .iter()
        .enumerate()
        .map(|(index, tool)| {
            if tool.kind != "function" {
                return Err(GatewayError::invalid_request(format!(
                    "tools[{index}]: provider {} (Anthropic) only accepts `function` tools, \
                     not `{}`",
                    provider.name, tool.kind
                ))
                .with_param(format!("tools[{index}].type")));
            }
            let Some(function) = &tool.function else {
                return Err(GatewayError::invalid_request(format!(
                    "tools[{index}]: a function tool needs `function`"
                ))
                .with_param(format!("tools[{index}].function")));
            };
            Ok(OutTool {
                name: &function.name,
                description: function.description.as_deref(),
                input_schema: function
                    .parameters
                    .as_ref()
                    .map_or_else(|| Cow::Owned(empty_object_schema()), Cow::Borrowed),
            })
        })
        .collect()
}

fn client_tool_choice(request: &ChatRequest) -> Result<Option<OutToolChoice<'_>>, GatewayError> {
    let Some(choice) = &request.tool_choice else {
        return Ok(None);
    };
    let simple = |kind| {
        Ok(Some(OutToolChoice {
            kind,
            name: None,
            disable_parallel_tool_use: false,
        }))
    };
    match choice {
        Value::String(mode) if mode == "auto" => simple("auto"),
        Value::String(mode) if mode == "none" => simple("none"),
        Value::String(mode) if mode == "required" => simple("any"),
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("function") => {
            match object
                .get("function")
                .and_then(|function| function.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => Ok(Some(OutToolChoice {
                    kind: "tool",
                    name: Some(name),
                    disable_parallel_tool_use: false,
                })),
                None => Err(GatewayError::invalid_request(
                    "`tool_choice.function.name` is required",
                )
                .with_param("tool_choice.function.name")),
            }
        }
        _ => Err(GatewayError::invalid_request(
            "`tool_choice` must be \"none\", \"auto\", \"required\" or \
             {\"type\":\"function\",\"function\":{\"name\":...}}",
        )
        .with_param("tool_choice")),
    }
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// Anthropic's usage. `input_tokens` excludes cache reads and writes. In streams each field
/// is cumulative and may be absent or null, hence the options.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Takes the fields a later event reports; they replace earlier (cumulative) counts.
    fn update(&mut self, later: &AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    fn normalised(&self) -> TokenUsage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_write = self.cache_creation_input_tokens.unwrap_or(0);
        TokenUsage {
            input: self.input_tokens.unwrap_or(0) + cache_read + cache_write,
            output: self.output_tokens.unwrap_or(0),
            cached_input: cache_read,
            cache_write,
            reasoning: 0,
        }
    }
}

/// A Messages answer. Only what the translation reads.
#[derive(Deserialize)]
struct MessagesResponse<'a> {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default, borrow)]
    content: Vec<ResponseBlock<'a>>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// One content block. A struct rather than a tagged enum: `RawValue` cannot sit inside one,
/// and unknown block types (server tools, citations...) must not fail the answer.
#[derive(Deserialize)]
struct ResponseBlock<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
}

/// OpenAI's finish reason for Anthropic's stop reason. `tool_use` is `stop` when the only
/// tool used was the `json_schema` one, whose input became the content.
fn finish_reason(stop_reason: &str, made_tool_calls: bool) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" if made_tool_calls => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and anything newer.
        _ => "stop",
    }
}

/// Compacts JSON text without reordering it. `serde_json::Value` (without the
/// `preserve_order` feature, which the core does not enable) would sort object keys, and the
/// arguments and structured output should keep the order the model wrote them in, as they do
/// in streams. The input is valid JSON (a `RawValue`), so only whitespace outside strings goes.
fn compact_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

/// Translates a successful answer into an OpenAI chat completion.
pub fn chat_response(
    call: &CallInfo<'_>,
    request: &ChatRequest,
    body: &[u8],
) -> Result<Completion, GatewayError> {
    let response: MessagesResponse<'_> = parse_upstream(call.provider, body)?;
    let schema_tool = schema_tool_name(request);

    let mut text = String::new();
    let mut structured: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in &response.content {
        match block.kind.as_str() {
            "text" => text.push_str(block.text.as_deref().unwrap_or_default()),
            "tool_use" => {
                let input = block
                    .input
                    .map_or_else(|| "{}".to_owned(), |raw| compact_json(raw.get()));
                let name = block.name.clone().unwrap_or_default();
                if schema_tool.is_some_and(|schema| schema == name) {
                    structured = Some(input);
                } else {
                    tool_calls.push(ToolCall {
                        id: block.id.clone().unwrap_or_default(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name,
                            arguments: input,
                        },
                    });
                }
            }
            // thinking, redacted_thinking, server tools: not part of an OpenAI answer.
            _ => {}
        }
    }

    let content = match structured {
        // The client asked for JSON only; any preamble would make it unparseable.
        Some(json) => Some(json),
        None if text.is_empty() && !tool_calls.is_empty() => None,
        None => Some(text),
    };
    let usage = response.usage.unwrap_or_default().normalised();
    let completion = ChatCompletion {
        id: format!("chatcmpl-{}", response.id),
        object: "chat.completion".to_owned(),
        created: call.now_unix,
        model: response.model,
        choices: vec![Choice {
            index: 0,
            finish_reason: response
                .stop_reason
                .as_deref()
                .map(|reason| finish_reason(reason, !tool_calls.is_empty()).to_owned()),
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                refusal: None,
            },
            logprobs: None,
        }],
        usage: Some(usage.to_openai()),
        system_fingerprint: None,
    };
    Ok(Completion {
        body: to_body(&completion)?,
        usage,
    })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: AnthropicError,
}

#[derive(Deserialize)]
struct AnthropicError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Message and code (Anthropic's `error.type`) of `{"type":"error","error":{...}}`. Other
/// bodies (a proxy's HTML, an OpenAI-style body) fall back to the OpenAI reader, which
/// handles plain text too.
pub fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => (envelope.error.message, envelope.error.kind),
        Err(_) => super::openai::error_details(body),
    }
}

// ---------------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------------

/// The data of one stream event. One struct for every event type, so that the name may come
/// from either the `event:` line or the `type` field.
#[derive(Deserialize)]
struct EventData {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<StartMessage>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    content_block: Option<StartBlock>,
    #[serde(default)]
    delta: Option<EventDelta>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    #[serde(default)]
    error: Option<AnthropicError>,
}

/// `message_start.message`.
#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

/// `content_block_start.content_block`.
#[derive(Deserialize)]
struct StartBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

/// `content_block_delta.delta` or `message_delta.delta`.
#[derive(Deserialize)]
struct EventDelta {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

/// What the deltas of an open content block become.
#[derive(Debug, Clone, Copy)]
enum BlockOutput {
    /// Text deltas become content.
    Text,
    /// A client tool call: argument pieces of the OpenAI tool call at `ordinal`.
    ToolCall { ordinal: u32, sent_arguments: bool },
    /// The `json_schema` tool: its input pieces become content.
    StructuredOutput { sent: bool },
    /// Thinking and server-side blocks: dropped.
    Ignored,
}

/// Anthropic stream events → OpenAI chunks.
#[derive(Debug)]
pub struct AnthropicStream {
    /// For error messages and `stream_error`.
    provider: Arc<Provider>,
    /// The client asked for the final usage chunk (`stream_options.include_usage`).
    client_wants_usage: bool,
    /// Name of the tool forced for `json_schema`, whose input streams out as content.
    schema_tool: Option<String>,
    /// `chatcmpl-<msg id>`, shared by every chunk.
    id: String,
    /// The model named by `message_start`.
    model: String,
    /// `created` of every chunk.
    created: u64,
    /// Whether a chunk went out yet: the first one carries `role: assistant`.
    role_sent: bool,
    /// Open content blocks by Anthropic's index (blocks come one after another, so this
    /// holds one entry at a time in practice).
    open_blocks: Vec<(u32, BlockOutput)>,
    /// Client tool calls started so far: the next one's OpenAI `index`.
    tool_calls: u32,
    /// Usage reported so far; `None` until an event carries some.
    usage: Option<AnthropicUsage>,
    /// `message_stop` arrived.
    done: bool,
}

impl AnthropicStream {
    /// A decoder for a stream answering `request`.
    pub fn new(call: &CallInfo<'_>, request: &ChatRequest) -> Self {
        AnthropicStream {
            provider: Arc::clone(call.provider),
            client_wants_usage: request.wants_stream_usage(),
            schema_tool: schema_tool_name(request).map(str::to_owned),
            // Replaced by the message id at `message_start`.
            id: format!("chatcmpl-{}", call.request_id),
            model: call.model.to_owned(),
            created: call.now_unix,
            role_sent: false,
            open_blocks: Vec::new(),
            tool_calls: 0,
            usage: None,
            done: false,
        }
    }

    /// Decodes one event.
    pub fn decode(
        &mut self,
        event: SseEvent<'_>,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        let data = event.data.trim();
        if data.is_empty() || self.done {
            return Ok(());
        }
        let data: EventData = parse_upstream(&self.provider, data.as_bytes())?;
        let name = match event.event {
            "" | "message" => data.kind.as_deref().unwrap_or_default(),
            name => name,
        };
        match name {
            "message_start" => {
                if let Some(message) = data.message {
                    if let Some(id) = message.id {
                        self.id = format!("chatcmpl-{id}");
                    }
                    if let Some(model) = message.model {
                        self.model = model;
                    }
                    if let Some(usage) = &message.usage {
                        self.record_usage(usage);
                    }
                }
            }
            "content_block_start" => self.block_start(data, out)?,
            "content_block_delta" => self.block_delta(data, out)?,
            "content_block_stop" => self.block_stop(data.index.unwrap_or(0), out)?,
            "message_delta" => {
                if let Some(usage) = &data.usage {
                    self.record_usage(usage);
                }
                if let Some(stop_reason) = data.delta.and_then(|delta| delta.stop_reason) {
                    let reason = finish_reason(&stop_reason, self.tool_calls > 0);
                    self.push_chunk(Delta::default(), Some(reason), false, out)?;
                }
            }
            "message_stop" => {
                self.done = true;
                if self.client_wants_usage {
                    let chunk = ChatCompletionChunk {
                        id: self.id.clone(),
                        object: "chat.completion.chunk".to_owned(),
                        created: self.created,
                        model: self.model.clone(),
                        choices: Vec::new(),
                        usage: Some(self.usage.unwrap_or_default().normalised().to_openai()),
                    };
                    out.push(StreamItem::Chunk {
                        data: chunk_bytes(&chunk)?,
                        content: false,
                    });
                }
                out.push(StreamItem::Done);
            }
            "error" => {
                let error = data.error.unwrap_or(AnthropicError {
                    kind: None,
                    message: None,
                });
                let message = format!(
                    "provider {} failed mid-stream: {}",
                    self.provider.name,
                    error.message.as_deref().unwrap_or("unknown error")
                );
                let failure = stream_error(&self.provider, message);
                return Err(match error.kind {
                    Some(kind) => failure.with_code(kind),
                    None => failure,
                });
            }
            // `ping`, and event types added after this was written.
            _ => {}
        }
        Ok(())
    }

    /// The upstream body ended. Without `message_stop` the answer may be cut short, so that
    /// is an error, never a silent success.
    pub fn finish(&mut self, _out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        if self.done {
            Ok(())
        } else {
            Err(stream_error(
                &self.provider,
                format!(
                    "provider {} ended the stream before message_stop",
                    self.provider.name
                ),
            ))
        }
    }

    /// Usage seen so far (complete once `message_stop` arrived).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage.map(|usage| usage.normalised())
    }

    fn record_usage(&mut self, usage: &AnthropicUsage) {
        self.usage
            .get_or_insert_with(AnthropicUsage::default)
            .update(usage);
    }

    fn block_start(
        &mut self,
        data: EventData,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        let index = data.index.unwrap_or(0);
        let Some(block) = data.content_block else {
            return Ok(());
        };
        let output = match block.kind.as_str() {
            "text" => {
                if let Some(text) = block.text.filter(|text| !text.is_empty()) {
                    self.push_content(text, out)?;
                }
                BlockOutput::Text
            }
            "tool_use" => {
                let name = block.name.unwrap_or_default();
                if self.schema_tool.as_deref() == Some(name.as_str()) {
                    BlockOutput::StructuredOutput { sent: false }
                } else {
                    let ordinal = self.tool_calls;
                    self.tool_calls += 1;
                    let delta = Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: ordinal,
                            id: block.id,
                            kind: Some("function".to_owned()),
                            function: Some(FunctionCallDelta {
                                name: Some(name),
                                arguments: Some(String::new()),
                            }),
                        }]),
                        ..Delta::default()
                    };
                    self.push_chunk(delta, None, true, out)?;
                    BlockOutput::ToolCall {
                        ordinal,
                        sent_arguments: false,
                    }
                }
            }
            _ => BlockOutput::Ignored,
        };
        self.open_blocks.retain(|(open, _)| *open != index);
        self.open_blocks.push((index, output));
        Ok(())
    }

    fn block_delta(
        &mut self,
        data: EventData,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        let index = data.index.unwrap_or(0);
        let Some(delta) = data.delta else {
            return Ok(());
        };
        let Some((_, output)) = self.open_blocks.iter_mut().find(|(open, _)| *open == index) else {
            // A delta for a block that never started: nothing to attach it to.
            return Ok(());
        };
        match (delta.kind.as_deref(), *output) {
            (Some("text_delta"), BlockOutput::Text) => {
                if let Some(text) = delta.text.filter(|text| !text.is_empty()) {
                    self.push_content(text, out)?;
                }
            }
            (Some("input_json_delta"), BlockOutput::ToolCall { ordinal, .. }) => {
                if let Some(piece) = delta.partial_json.filter(|piece| !piece.is_empty()) {
                    *output = BlockOutput::ToolCall {
                        ordinal,
                        sent_arguments: true,
                    };
                    self.push_arguments(ordinal, piece, out)?;
                }
            }
            (Some("input_json_delta"), BlockOutput::StructuredOutput { .. }) => {
                if let Some(piece) = delta.partial_json.filter(|piece| !piece.is_empty()) {
                    *output = BlockOutput::StructuredOutput { sent: true };
                    self.push_content(piece, out)?;
                }
            }
            // thinking_delta, signature_delta, citations_delta, ...
            _ => {}
        }
        Ok(())
    }

    fn block_stop(&mut self, index: u32, out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        let Some(slot) = self.open_blocks.iter().position(|(open, _)| *open == index) else {
            return Ok(());
        };
        let (_, output) = self.open_blocks.swap_remove(slot);
        // A tool without parameters streams no input at all; OpenAI clients parse the
        // arguments, so they get the empty object Anthropic means.
        match output {
            BlockOutput::ToolCall {
                ordinal,
                sent_arguments: false,
            } => self.push_arguments(ordinal, "{}".to_owned(), out),
            BlockOutput::StructuredOutput { sent: false } => {
                self.push_content("{}".to_owned(), out)
            }
            _ => Ok(()),
        }
    }

    fn push_content(
        &mut self,
        text: String,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        let delta = Delta {
            content: Some(text),
            ..Delta::default()
        };
        self.push_chunk(delta, None, true, out)
    }

    fn push_arguments(
        &mut self,
        ordinal: u32,
        arguments: String,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        let delta = Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index: ordinal,
                id: None,
                kind: None,
                function: Some(FunctionCallDelta {
                    name: None,
                    arguments: Some(arguments),
                }),
            }]),
            ..Delta::default()
        };
        self.push_chunk(delta, None, true, out)
    }

    fn push_chunk(
        &mut self,
        mut delta: Delta,
        finish_reason: Option<&str>,
        content: bool,
        out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        if !self.role_sent {
            self.role_sent = true;
            delta.role = Some("assistant".to_owned());
        }
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
                logprobs: None,
            }],
            usage: None,
        };
        out.push(StreamItem::Chunk {
            data: chunk_bytes(&chunk)?,
            content,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::test_support::{golden, golden_sse, provider};
    use crate::provider::{StreamDecoder, chat_request as dispatch_request, error_response};
    use pretty_assertions::assert_eq;
    use serde_json::json;

    const MODEL: &str = "claude-sonnet-4-5";

    fn call(provider: &Arc<Provider>) -> CallInfo<'_> {
        CallInfo {
            provider,
            model: MODEL,
            now_unix: 1_700_000_000,
            request_id: "req-1",
        }
    }

    fn parse_request(value: Value) -> ChatRequest {
        serde_json::from_value(value).unwrap()
    }

    /// A one-message request with `extra` fields merged in.
    fn simple_request(extra: Value) -> ChatRequest {
        let mut value = json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]});
        for (key, field) in extra.as_object().unwrap() {
            value[key] = field.clone();
        }
        parse_request(value)
    }

    fn translate(request: &ChatRequest) -> Result<Value, GatewayError> {
        let anthropic = provider("anthropic");
        let upstream = dispatch_request(&call(&anthropic), request)?;
        Ok(serde_json::from_slice(&upstream.body).unwrap())
    }

    fn rejection(request: Value) -> GatewayError {
        translate(&parse_request(request)).unwrap_err()
    }

    #[test]
    fn request_translates_conversation_tools_and_sampling() {
        let anthropic = provider("anthropic");
        let request = parse_request(golden("anthropic/request.in.json"));
        let upstream = dispatch_request(&call(&anthropic), &request).unwrap();
        assert_eq!(upstream.method, http::Method::POST);
        assert_eq!(upstream.url, "https://api.anthropic.com/v1/messages");
        assert_eq!(upstream.headers["x-api-key"], "test-key");
        assert!(upstream.headers["x-api-key"].is_sensitive());
        assert_eq!(upstream.headers["anthropic-version"], "2023-06-01");
        assert_eq!(upstream.headers["content-type"], "application/json");
        assert!(upstream.headers.get("authorization").is_none());
        let body: Value = serde_json::from_slice(&upstream.body).unwrap();
        assert_eq!(body, golden("anthropic/request.out.json"));
    }

    #[test]
    fn configured_headers_are_sent_and_may_pin_the_version() {
        let mut configured = (*provider("anthropic")).clone();
        configured.headers = vec![
            ("anthropic-version".to_owned(), "2024-01-01".to_owned()),
            (
                "anthropic-beta".to_owned(),
                "files-api-2025-04-14".to_owned(),
            ),
        ];
        let configured = Arc::new(configured);
        let upstream = chat_request(&call(&configured), &simple_request(json!({}))).unwrap();
        assert_eq!(upstream.headers["anthropic-version"], "2024-01-01");
        assert_eq!(upstream.headers["anthropic-beta"], "files-api-2025-04-14");
    }

    #[test]
    fn output_limit_defaults_to_4096() {
        let body = translate(&simple_request(json!({}))).unwrap();
        assert_eq!(
            body,
            json!({
                "model": MODEL,
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": "hi"}]
            })
        );
        let body = translate(&simple_request(
            json!({"max_completion_tokens": 100, "max_tokens": 200, "stream": true}),
        ))
        .unwrap();
        assert_eq!(body["max_tokens"], 100);
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn tool_choice_and_parallel_tool_calls() {
        let tools = json!([{"type": "function", "function": {"name": "lookup"}}]);
        let cases = [
            (json!("auto"), None, json!({"type": "auto"})),
            (json!("none"), None, json!({"type": "none"})),
            (json!("required"), None, json!({"type": "any"})),
            (
                json!({"type": "function", "function": {"name": "lookup"}}),
                None,
                json!({"type": "tool", "name": "lookup"}),
            ),
            (
                Value::Null,
                Some(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (
                json!("required"),
                Some(false),
                json!({"type": "any", "disable_parallel_tool_use": true}),
            ),
            (json!("none"), Some(false), json!({"type": "none"})),
            (json!("auto"), Some(true), json!({"type": "auto"})),
            (Value::Null, None, Value::Null),
        ];
        for (choice, parallel, expected) in cases {
            let mut extra = json!({"tools": tools});
            if !choice.is_null() {
                extra["tool_choice"] = choice.clone();
            }
            if let Some(parallel) = parallel {
                extra["parallel_tool_calls"] = json!(parallel);
            }
            let body = translate(&simple_request(extra)).unwrap();
            assert_eq!(
                body.get("tool_choice").cloned().unwrap_or(Value::Null),
                expected,
                "tool_choice {choice}, parallel_tool_calls {parallel:?}"
            );
        }

        // Without tools there is nothing to run in parallel: no tool_choice is invented.
        let body = translate(&simple_request(json!({"parallel_tool_calls": false}))).unwrap();
        assert!(body.get("tool_choice").is_none());

        let error = translate(&simple_request(
            json!({"tools": tools, "tool_choice": "sometimes"}),
        ))
        .unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.param.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn json_schema_becomes_a_forced_tool() {
        let schema = json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
            "required": ["city", "temp_c"]
        });
        let body = translate(&simple_request(json!({
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
            "tool_choice": "auto",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "weather_report", "strict": true, "schema": schema}
            }
        })))
        .unwrap();
        assert_eq!(
            body["tools"],
            json!([
                {"name": "lookup", "input_schema": {"type": "object", "properties": {}}},
                {
                    "name": "weather_report",
                    "description": "Respond with JSON matching this schema",
                    "input_schema": schema
                }
            ])
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "weather_report"})
        );
        assert!(body.get("system").is_none());

        let error = rejection(json!({
            "model": "smart",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "weather_report"}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "weather_report"}}
        }));
        assert_eq!(
            error.param.as_deref(),
            Some("response_format.json_schema.name")
        );
    }

    #[test]
    fn json_object_appends_an_instruction_to_system() {
        let json_mode = json!({"type": "json_object"});
        let body = translate(&simple_request(json!({"response_format": json_mode}))).unwrap();
        assert_eq!(
            body["system"],
            "Respond only with a single valid JSON object."
        );

        let request = parse_request(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "List three colours."}
            ],
            "response_format": json_mode
        }));
        let body = translate(&request).unwrap();
        assert_eq!(
            body["system"],
            "Be brief.\n\nRespond only with a single valid JSON object."
        );
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "List three colours."}])
        );
    }

    #[test]
    fn options_anthropic_lacks_are_rejected() {
        let error = translate(&simple_request(json!({"n": 2}))).unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.param.as_deref(), Some("n"));
        assert_eq!(
            error.message,
            "provider anthropic (Anthropic) does not support n > 1"
        );
        assert!(translate(&simple_request(json!({"n": 1}))).is_ok());

        let error = translate(&simple_request(json!({"logprobs": true}))).unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.param.as_deref(), Some("logprobs"));
        assert!(translate(&simple_request(json!({"logprobs": false}))).is_ok());

        let error = translate(&simple_request(
            json!({"tools": [{"type": "web_search_preview"}]}),
        ))
        .unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.param.as_deref(), Some("tools[0].type"));
    }

    #[test]
    fn unknown_part_types_are_refused_by_name() {
        let error = rejection(json!({
            "model": "smart",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Watch"},
                {"type": "input_video", "input_video": {"url": "https://example.test/a.mp4"}}
            ]}]
        }));
        assert_eq!(error.status(), 400);
        assert_eq!(error.param.as_deref(), Some("messages[0].content[1]"));
        assert!(
            error
                .message
                .contains("(Anthropic) does not accept content parts of type `input_video`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn parts_anthropic_does_not_accept_are_named() {
        let error = rejection(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Transcribe."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is said?"},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
                ]}
            ]
        }));
        assert_eq!(error.status(), 400);
        assert_eq!(error.param.as_deref(), Some("messages[1].content[1]"));
        assert!(
            error.message.contains("messages[1].content[1]")
                && error.message.contains("(Anthropic) does not accept audio"),
            "{}",
            error.message
        );

        let text_file = json!({"filename": "a.txt", "file_data": "data:text/plain;base64,aGk="});
        let error = rejection(json!({
            "model": "smart",
            "messages": [{"role": "user", "content": [{"type": "file", "file": text_file}]}]
        }));
        assert_eq!(error.param.as_deref(), Some("messages[0].content[0]"));

        let error = rejection(json!({
            "model": "smart",
            "messages": [{"role": "function", "name": "f", "content": "42"}]
        }));
        assert_eq!(error.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn pdf_files_become_documents() {
        let body = translate(&parse_request(json!({
            "model": "smart",
            "messages": [{"role": "user", "content": [
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
                {"type": "text", "text": "Summarise."}
            ]}]
        })))
        .unwrap();
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
                {"type": "text", "text": "Summarise."}
            ]}])
        );
    }

    #[test]
    fn invalid_tool_arguments_are_rejected() {
        let conversation = |arguments: &str| {
            json!({
                "model": "smart",
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    {"role": "assistant", "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": arguments}}
                    ]}
                ]
            })
        };
        for arguments in ["{\"city\": \"Rome\"", "[\"Rome\"]"] {
            let error = rejection(conversation(arguments));
            assert_eq!(error.status(), 400, "{arguments}");
            assert_eq!(
                error.param.as_deref(),
                Some("messages[1].tool_calls[1].function.arguments"),
                "{arguments}"
            );
        }
        // No content and no arguments: only tool_use blocks, with an empty input.
        let body = translate(&parse_request(conversation(""))).unwrap();
        assert_eq!(
            body["messages"][1],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}}
            ]})
        );
    }

    fn respond(request: &ChatRequest, body: &[u8]) -> Result<Completion, GatewayError> {
        let anthropic = provider("anthropic");
        crate::provider::chat_response(&call(&anthropic), request, body)
    }

    fn body_json(completion: &Completion) -> Value {
        serde_json::from_slice(&completion.body).unwrap()
    }

    #[test]
    fn response_translates_text_tool_calls_and_cache_usage() {
        let body = golden("anthropic/response.json").to_string();
        let completion = respond(&simple_request(json!({})), body.as_bytes()).unwrap();
        assert_eq!(
            body_json(&completion),
            golden("anthropic/response.out.json")
        );
        assert_eq!(
            completion.usage,
            TokenUsage {
                input: 1150,
                output: 45,
                cached_input: 1000,
                cache_write: 30,
                reasoning: 0
            }
        );
    }

    #[test]
    fn response_drops_thinking() {
        let body = golden("anthropic/response_thinking.json").to_string();
        let completion = respond(&simple_request(json!({})), body.as_bytes()).unwrap();
        assert_eq!(
            body_json(&completion),
            golden("anthropic/response_thinking.out.json")
        );
        assert_eq!(completion.usage.input, 10);
        assert_eq!(completion.usage.output, 50);
    }

    #[test]
    fn json_schema_response_becomes_content_in_the_model_key_order() {
        let request = simple_request(json!({
            "response_format": {"type": "json_schema", "json_schema": {"name": "weather_report"}}
        }));
        // Pretty-printed on purpose, keys not sorted, and a string holding spaces and quotes.
        let body = r#"{
            "id": "msg_01Schema", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather_report",
                         "input": {"temp_c": 21, "city": "Paris", "note": "mild, \"sunny\" "}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 90, "output_tokens": 20}
        }"#;
        let completion = respond(&request, body.as_bytes()).unwrap();
        let choice = &body_json(&completion)["choices"][0];
        assert_eq!(
            choice["message"],
            json!({
                "role": "assistant",
                "content": "{\"temp_c\":21,\"city\":\"Paris\",\"note\":\"mild, \\\"sunny\\\" \"}",
                "refusal": null
            })
        );
        assert_eq!(choice["finish_reason"], "stop");
    }

    #[test]
    fn finish_reasons() {
        let cases = [
            ("end_turn", false, "stop"),
            ("stop_sequence", false, "stop"),
            ("pause_turn", false, "stop"),
            ("max_tokens", false, "length"),
            ("max_tokens", true, "length"),
            ("tool_use", true, "tool_calls"),
            ("tool_use", false, "stop"),
            ("refusal", false, "content_filter"),
        ];
        for (stop_reason, made_tool_calls, expected) in cases {
            assert_eq!(
                finish_reason(stop_reason, made_tool_calls),
                expected,
                "{stop_reason}"
            );
        }
    }

    #[test]
    fn unreadable_response_is_a_retryable_502() {
        let error = respond(&simple_request(json!({})), b"<html>oops</html>").unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.retryable);
    }

    /// Runs a transcript through the decoder. `finish` is left to the caller.
    fn decode_all(
        request: &ChatRequest,
        events: &[(String, String)],
    ) -> (StreamDecoder, Vec<StreamItem>) {
        let anthropic = provider("anthropic");
        let mut decoder = StreamDecoder::new(&call(&anthropic), request);
        let mut out = Vec::new();
        for (event, data) in events {
            decoder.decode(SseEvent { event, data }, &mut out).unwrap();
        }
        (decoder, out)
    }

    /// Chunks as (JSON, content flag); asserts the stream ends with exactly one `Done`.
    fn chunks(items: &[StreamItem]) -> Vec<(Value, bool)> {
        assert_eq!(items.last(), Some(&StreamItem::Done));
        items[..items.len() - 1]
            .iter()
            .map(|item| match item {
                StreamItem::Chunk { data, content } => {
                    (serde_json::from_slice(data).unwrap(), *content)
                }
                StreamItem::Done => panic!("Done before the end"),
            })
            .collect()
    }

    fn streaming(include_usage: bool) -> ChatRequest {
        simple_request(json!({
            "stream": true,
            "stream_options": {"include_usage": include_usage}
        }))
    }

    #[test]
    fn stream_translates_text_and_tool_calls() {
        let expected: Vec<Value> =
            serde_json::from_value(golden("anthropic/stream.out.json")).unwrap();
        let flags = [true, true, true, true, true, false, false];
        let events = golden_sse("anthropic/stream.sse");

        let (mut decoder, mut items) = decode_all(&streaming(true), &events);
        decoder.finish(&mut items).unwrap();
        let (values, content): (Vec<Value>, Vec<bool>) = chunks(&items).into_iter().unzip();
        assert_eq!(values, expected);
        assert_eq!(content, flags);
        let usage = TokenUsage {
            input: 2520,
            output: 89,
            cached_input: 2048,
            cache_write: 0,
            reasoning: 0,
        };
        assert_eq!(decoder.usage(), Some(usage));

        // Without include_usage: the same chunks minus the usage chunk; usage is still metered.
        let (mut decoder, mut items) = decode_all(&streaming(false), &events);
        decoder.finish(&mut items).unwrap();
        let (values, content): (Vec<Value>, Vec<bool>) = chunks(&items).into_iter().unzip();
        assert_eq!(values, expected[..6]);
        assert_eq!(content, flags[..6]);
        assert_eq!(decoder.usage(), Some(usage));
    }

    #[test]
    fn stream_event_names_may_come_from_the_data() {
        // Without `event:` lines the SSE parser reports `message`; `type` names the event.
        let events: Vec<(String, String)> = golden_sse("anthropic/stream.sse")
            .into_iter()
            .map(|(_, data)| ("message".to_owned(), data))
            .collect();
        let (_, items) = decode_all(&streaming(true), &events);
        let (values, _): (Vec<Value>, Vec<bool>) = chunks(&items).into_iter().unzip();
        let expected: Vec<Value> =
            serde_json::from_value(golden("anthropic/stream.out.json")).unwrap();
        assert_eq!(values, expected);
    }

    #[test]
    fn stream_json_schema_input_becomes_content() {
        let request = simple_request(json!({
            "stream": true,
            "response_format": {"type": "json_schema", "json_schema": {"name": "weather_report"}}
        }));
        let (mut decoder, mut items) =
            decode_all(&request, &golden_sse("anthropic/stream_json_schema.sse"));
        decoder.finish(&mut items).unwrap();
        let head = json!({
            "id": "chatcmpl-msg_01Schema",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "claude-sonnet-4-5-20250929"
        });
        let chunk = |choice: Value| {
            let mut chunk = head.clone();
            chunk["choices"] = json!([choice]);
            chunk
        };
        assert_eq!(
            chunks(&items),
            vec![
                (
                    chunk(
                        json!({"index": 0, "delta": {"role": "assistant", "content": "{\"city\": \"Paris\","}, "finish_reason": null})
                    ),
                    true
                ),
                (
                    chunk(
                        json!({"index": 0, "delta": {"content": " \"temp_c\": 21}"}, "finish_reason": null})
                    ),
                    true
                ),
                (
                    chunk(json!({"index": 0, "delta": {}, "finish_reason": "stop"})),
                    false
                ),
            ]
        );
        assert_eq!(
            decoder.usage().map(|usage| (usage.input, usage.output)),
            Some((90, 20))
        );
    }

    #[test]
    fn stream_skips_thinking_and_gives_parameterless_tools_an_empty_object() {
        let events: Vec<(String, String)> = [
            ("message_start", r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-opus-4-1","usage":{"input_tokens":5,"output_tokens":1}}}"#),
            ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Need the time."}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ("content_block_start", r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_now","name":"now","input":{}}}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#),
            ("content_block_stop", r#"{"type":"content_block_stop","index":1}"#),
            ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":30}}"#),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .into_iter()
        .map(|(event, data)| (event.to_owned(), data.to_owned()))
        .collect();
        let (mut decoder, mut items) = decode_all(&streaming(false), &events);
        decoder.finish(&mut items).unwrap();
        let deltas: Vec<(Value, Value, bool)> = chunks(&items)
            .into_iter()
            .map(|(chunk, content)| {
                let choice = &chunk["choices"][0];
                (
                    choice["delta"].clone(),
                    choice["finish_reason"].clone(),
                    content,
                )
            })
            .collect();
        assert_eq!(
            deltas,
            vec![
                (
                    json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "toolu_now", "type": "function", "function": {"name": "now", "arguments": ""}}]}),
                    Value::Null,
                    true
                ),
                (
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                    Value::Null,
                    true
                ),
                (json!({}), json!("tool_calls"), false),
            ]
        );
    }

    #[test]
    fn stream_without_message_stop_fails_in_finish() {
        let mut events = golden_sse("anthropic/stream.sse");
        let last = events.pop().unwrap();
        assert_eq!(last.0, "message_stop");
        let (mut decoder, mut items) = decode_all(&streaming(true), &events);
        assert!(!items.contains(&StreamItem::Done));
        let error = decoder.finish(&mut items).unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.retryable);
        assert_eq!(
            error.message,
            "provider anthropic ended the stream before message_stop"
        );
        // What was seen is still metered.
        assert_eq!(decoder.usage().map(|usage| usage.output), Some(89));
    }

    #[test]
    fn stream_error_event_fails_the_stream() {
        let anthropic = provider("anthropic");
        let mut decoder = StreamDecoder::new(&call(&anthropic), &streaming(false));
        let mut out = Vec::new();
        let error = decoder
            .decode(
                SseEvent {
                    event: "error",
                    data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                },
                &mut out,
            )
            .unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.retryable);
        assert_eq!(
            error.message,
            "provider anthropic failed mid-stream: Overloaded"
        );
        assert_eq!(error.code.as_deref(), Some("overloaded_error"));
        assert!(out.is_empty());
    }

    #[test]
    fn error_bodies() {
        let anthropic = provider("anthropic");
        let error = error_response(
            &anthropic,
            529,
            None,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(error.status(), 503);
        assert!(error.retryable);
        assert_eq!(error.code.as_deref(), Some("overloaded_error"));
        assert_eq!(error.message, "provider anthropic returned 529: Overloaded");

        let error = error_response(
            &anthropic,
            400,
            None,
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#,
        );
        assert_eq!(error.status(), 400);
        assert!(!error.retryable);
        assert_eq!(error.code.as_deref(), Some("invalid_request_error"));

        assert_eq!(
            error_details(b"<html>502 Bad Gateway</html>"),
            (Some("<html>502 Bad Gateway</html>".to_owned()), None)
        );
        assert_eq!(error_details(b""), (None, None));
    }
}
