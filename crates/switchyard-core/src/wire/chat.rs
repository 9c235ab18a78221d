//! OpenAI chat completion wire types: the request clients send, and the response and stream
//! chunks the gateway answers with.
//!
//! A parsed request keeps the client's body in `raw`, and an OpenAI-compatible upstream
//! receives that body with only its top level rewritten, so every field the gateway does not
//! model, at any depth, reaches it as sent (new OpenAI parameters keep working without a
//! gateway release). Requests built in code have no `raw` and are serialised from the typed
//! fields, which keep unknown top-level fields in `extra`. Translating adapters read the
//! typed fields and ignore `extra`.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Usage;
use crate::error::GatewayError;

/// `POST /v1/chat/completions` request body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Route name, `provider/model`, or a bare model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// Streaming options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Legacy output token limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Output token limit (reasoning models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Best-effort determinism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Presence penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Return log probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// How many top log probabilities per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u32>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `"none" | "auto" | "required" | {"type":"function","function":{"name"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Allow several tool calls in one turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// JSON mode or structured output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// End-user id, for abuse monitoring and per-user limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other field, passed through untouched to OpenAI-compatible upstreams.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The body exactly as the client sent it, set by [`ChatRequest::from_bytes`]. When set,
    /// an OpenAI-compatible upstream receives these bytes with only `model` and
    /// `stream_options` rewritten, so changing typed fields after parsing does not change
    /// what it receives. `None` for requests built in code (health probes).
    #[serde(skip)]
    pub raw: Option<Bytes>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl ChatRequest {
    /// Parses a request body, naming the offending field on error, and keeps a copy of the
    /// body in `raw` for passthrough. [`ChatRequest::from_bytes`] keeps it without copying.
    pub fn from_slice(body: &[u8]) -> Result<Self, GatewayError> {
        Self::from_bytes(Bytes::copy_from_slice(body))
    }

    /// Parses a request body, naming the offending field on error, and keeps the body in
    /// `raw` for passthrough.
    pub fn from_bytes(body: Bytes) -> Result<Self, GatewayError> {
        let mut request = Self::parse(&body)?;
        request.raw = Some(body);
        Ok(request)
    }

    fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let request: ChatRequest = super::parse_body(body)?;
        request.validate()?;
        Ok(request)
    }

    /// Checks what serde cannot: values in range and messages that make sense.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.model.is_empty() {
            return Err(
                GatewayError::invalid_request("`model` must not be empty").with_param("model")
            );
        }
        if self.messages.is_empty() {
            return Err(GatewayError::invalid_request(
                "`messages` must contain at least one message",
            )
            .with_param("messages"));
        }
        for (index, message) in self.messages.iter().enumerate() {
            let needs_content = match message.role {
                Role::Assistant => message.tool_calls.is_none(),
                _ => true,
            };
            if needs_content && message.content.is_none() {
                return Err(GatewayError::invalid_request(format!(
                    "messages[{index}]: a {} message needs `content`",
                    message.role.as_str()
                ))
                .with_param(format!("messages[{index}].content")));
            }
            if message.role == Role::Tool && message.tool_call_id.is_none() {
                return Err(GatewayError::invalid_request(format!(
                    "messages[{index}]: a tool message needs `tool_call_id`"
                ))
                .with_param(format!("messages[{index}].tool_call_id")));
            }
        }
        if let Some(n) = self.n
            && !(1..=128).contains(&n)
        {
            return Err(
                GatewayError::invalid_request("`n` must be between 1 and 128").with_param("n"),
            );
        }
        if let Some(temperature) = self.temperature
            && !(0.0..=2.0).contains(&temperature)
        {
            return Err(
                GatewayError::invalid_request("`temperature` must be between 0 and 2")
                    .with_param("temperature"),
            );
        }
        if let Some(top_p) = self.top_p
            && !(0.0..=1.0).contains(&top_p)
        {
            return Err(
                GatewayError::invalid_request("`top_p` must be between 0 and 1")
                    .with_param("top_p"),
            );
        }
        Ok(())
    }

    /// Whether the client asked for the final usage chunk on a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            .unwrap_or(false)
    }

    /// The output token limit the client asked for, under either name.
    pub fn output_limit(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with usage and no choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Other stream options, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions (older name).
    System,
    /// Instructions (newer name for reasoning models).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
    /// A legacy function result.
    Function,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => "function",
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Text or content parts. `None` only for an assistant message with tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Which call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Other fields (`refusal`, `audio`, ...), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A plain text message.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: Some(MessageContent::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: Map::new(),
        }
    }

    /// The message's text: the string content, or its text parts joined.
    pub fn text_content(&self) -> String {
        match &self.content {
            Some(content) => content.joined_text(),
            None => String::new(),
        }
    }
}

/// Message content: a string, or a list of typed parts (text, images, audio, files).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Multimodal parts.
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// All text in the content, parts joined without separators (as OpenAI concatenates).
    pub fn joined_text(&self) -> String {
        match self {
            MessageContent::Text(text) => text.clone(),
            MessageContent::Parts(parts) => parts
                .iter()
                .filter_map(|part| match part {
                    ContentPart::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }
}

// Hand-written so that a wrong type gets "expected a string or an array of content parts"
// instead of serde's opaque "did not match any variant of untagged enum".
impl<'de> Deserialize<'de> for MessageContent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = MessageContent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(value.to_owned()))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(MessageContent::Text(value))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(1));
                while let Some(part) = seq.next_element::<ContentPart>()? {
                    parts.push(part);
                }
                Ok(MessageContent::Parts(parts))
            }
        }
        deserializer.deserialize_any(ContentVisitor)
    }
}

/// One content part.
///
/// A part of a type the gateway does not know is not an error: it is kept as
/// [`ContentPart::Other`], which an OpenAI-compatible upstream receives untouched and a
/// translating adapter refuses by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image by URL or `data:` URL.
    ImageUrl {
        /// The image reference.
        image_url: ImageUrl,
    },
    /// Base64 audio input, passed through.
    InputAudio {
        /// `{data, format}`.
        input_audio: Value,
    },
    /// A file reference or inline file, passed through.
    File {
        /// `{file_id}` or `{filename, file_data}`.
        file: Value,
    },
    /// An assistant refusal part.
    Refusal {
        /// The refusal text.
        refusal: String,
    },
    /// A part of another type, kept as sent (its `type` field included).
    #[serde(untagged)]
    Other(Value),
}

impl ContentPart {
    /// The part's wire `type`.
    pub fn type_name(&self) -> &str {
        match self {
            ContentPart::Text { .. } => "text",
            ContentPart::ImageUrl { .. } => "image_url",
            ContentPart::InputAudio { .. } => "input_audio",
            ContentPart::File { .. } => "file",
            ContentPart::Refusal { .. } => "refusal",
            ContentPart::Other(part) => part.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}

/// The part types the gateway models, for deserialising: serde's internally tagged enum
/// gives good messages for a known type with wrong fields (`missing field `text``).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum KnownPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    InputAudio { input_audio: Value },
    File { file: Value },
    Refusal { refusal: String },
}

impl From<KnownPart> for ContentPart {
    fn from(part: KnownPart) -> Self {
        match part {
            KnownPart::Text { text } => ContentPart::Text { text },
            KnownPart::ImageUrl { image_url } => ContentPart::ImageUrl { image_url },
            KnownPart::InputAudio { input_audio } => ContentPart::InputAudio { input_audio },
            KnownPart::File { file } => ContentPart::File { file },
            KnownPart::Refusal { refusal } => ContentPart::Refusal { refusal },
        }
    }
}

// Hand-written so that an unknown `type` becomes `Other` while a known type with wrong fields
// still fails with serde's message. The part is buffered once, as serde's own internally
// tagged enums do.
impl<'de> Deserialize<'de> for ContentPart {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let part = Value::deserialize(deserializer)?;
        let Value::Object(fields) = &part else {
            return Err(de::Error::custom(
                "expected a content part: an object with a `type`",
            ));
        };
        match fields.get("type").and_then(Value::as_str) {
            Some("text" | "image_url" | "input_audio" | "file" | "refusal") | None => {
                KnownPart::deserialize(part)
                    .map(ContentPart::from)
                    .map_err(de::Error::custom)
            }
            Some(_) => Ok(ContentPart::Other(part)),
        }
    }
}

/// `image_url` of a content part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    /// `https://...` or `data:image/png;base64,...`.
    pub url: String,
    /// `low | high | auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ImageUrl {
    /// Splits a `data:` URL into its media type and base64 payload.
    pub fn as_data_url(&self) -> Option<(&str, &str)> {
        let rest = self.url.strip_prefix("data:")?;
        let (meta, data) = rest.split_once(',')?;
        let media_type = meta.strip_suffix(";base64")?;
        Some((media_type, data))
    }
}

/// Stop sequences: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several sequences.
    Many(Vec<String>),
}

impl Stop {
    /// The sequences as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(one) => vec![one.clone()],
            Stop::Many(many) => many.clone(),
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// `function` (other types pass through to OpenAI-compatible upstreams only).
    #[serde(rename = "type")]
    pub kind: String,
    /// The function's declaration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDefinition>,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A function declaration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    /// The function name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Strict schema adherence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, echoed by the tool result.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Name and JSON-encoded arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_owned()
}

/// Function name and JSON-encoded arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function name.
    pub name: String,
    /// The arguments as a JSON string.
    #[serde(default)]
    pub arguments: String,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any valid JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// The schema of a `json_schema` response format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    /// Schema name.
    pub name: String,
    /// What the output is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Strict adherence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A non-streamed chat completion, as built by translating adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// Completion id.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The answers.
    pub choices: Vec<Choice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Backend fingerprint, when the provider gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position among `n` choices.
    pub index: u32,
    /// The assistant's message.
    pub message: ResponseMessage,
    /// `stop | length | tool_calls | content_filter`.
    pub finish_reason: Option<String>,
    /// Log probabilities (always present, `null` when not requested).
    pub logprobs: Option<Value>,
}

/// The assistant's message in a response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: String,
    /// The text; `null` when the answer is only tool calls.
    pub content: Option<String>,
    /// Tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A refusal, when the model refused.
    #[serde(default)]
    pub refusal: Option<String>,
}

/// One streamed chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// Completion id, the same in every chunk.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// Deltas; empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Usage, only in the final chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice's delta in a chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Position among `n` choices.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<String>,
    /// Log probabilities (`null` when not requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

/// New content in a chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant` on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New tool-call pieces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// New refusal text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// A piece of a streamed tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// Which tool call this piece belongs to.
    pub index: u32,
    /// The call id, on its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on its first piece.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name (first piece) and argument text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionCallDelta>,
}

/// Name and argument text of a tool-call piece.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallDelta {
    /// The function name, on the first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More argument text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<ChatRequest, GatewayError> {
        ChatRequest::from_slice(value.to_string().as_bytes())
    }

    #[test]
    fn keeps_unknown_fields_for_passthrough() {
        let request = parse(json!({
            "model": "gpt-4o", "messages": [{"role":"user","content":"hi"}],
            "reasoning_effort": "low", "store": true
        }))
        .unwrap();
        assert_eq!(request.extra["reasoning_effort"], "low");
        let back = serde_json::to_value(&request).unwrap();
        assert_eq!(back["store"], true);
        assert!(back.get("stream").is_none(), "defaults are not invented");
    }

    #[test]
    fn content_parts_round_trip() {
        let body = json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"what is this"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}}
        ]}]});
        let request = parse(body.clone()).unwrap();
        assert_eq!(serde_json::to_value(&request).unwrap(), body);
        let Some(MessageContent::Parts(parts)) = &request.messages[0].content else {
            panic!("parts expected")
        };
        let ContentPart::ImageUrl { image_url } = &parts[1] else {
            panic!("image expected")
        };
        assert_eq!(image_url.as_data_url(), Some(("image/png", "AAAA")));
    }

    #[test]
    fn unknown_part_types_are_kept() {
        let video =
            json!({"type":"input_video","input_video":{"url":"https://example.test/a.mp4"}});
        let body = json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"watch"}, video.clone()
        ]}]});
        let request = parse(body.clone()).unwrap();
        let Some(MessageContent::Parts(parts)) = &request.messages[0].content else {
            panic!("parts expected")
        };
        assert_eq!(parts[1], ContentPart::Other(video));
        assert_eq!(parts[1].type_name(), "input_video");
        assert_eq!(request.messages[0].text_content(), "watch");
        // Serialised as sent: no invented tag.
        assert_eq!(serde_json::to_value(&request).unwrap(), body);
    }

    #[test]
    fn known_part_types_with_wrong_fields_fail_clearly() {
        let error = parse(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","txt":"x"}
        ]}]}))
        .unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(
            error.message.contains("missing field `text`"),
            "{}",
            error.message
        );
        assert_eq!(error.param.as_deref(), Some("messages[0].content[0]"));

        let error = parse(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"detail":"low"}}
        ]}]}))
        .unwrap_err();
        assert!(
            error.message.contains("missing field `url`"),
            "{}",
            error.message
        );

        let error = parse(json!({"model":"m","messages":[{"role":"user","content":[
            {"text":"no type"}
        ]}]}))
        .unwrap_err();
        assert!(
            error.message.contains("missing field `type`"),
            "{}",
            error.message
        );

        let error =
            parse(json!({"model":"m","messages":[{"role":"user","content":[5]}]})).unwrap_err();
        assert!(
            error.message.contains("expected a content part"),
            "{}",
            error.message
        );
        assert_eq!(error.param.as_deref(), Some("messages[0].content[0]"));
    }

    #[test]
    fn parsing_keeps_the_body() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#;
        let request = ChatRequest::from_slice(body).unwrap();
        assert_eq!(request.raw.as_deref(), Some(&body[..]));
        let request = ChatRequest::from_bytes(bytes::Bytes::from_static(body)).unwrap();
        assert_eq!(request.raw.as_deref(), Some(&body[..]));
        // `raw` is the gateway's, not a field a client can set or see.
        assert!(serde_json::to_value(&request).unwrap().get("raw").is_none());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let error =
            parse(json!({"model":"m","messages":[{"role":"user","content":5}]})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("messages[0].content"));
        assert!(
            error
                .message
                .contains("a string or an array of content parts"),
            "{}",
            error.message
        );

        let error =
            parse(json!({"model":"m","messages":[{"role":"robot","content":"x"}]})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("messages[0].role"));

        let error = parse(json!({"model":"m"})).unwrap_err();
        assert!(error.message.contains("messages"), "{}", error.message);

        let error = parse(json!({"model":"m","messages":[],"temperature":"hot"})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("temperature"));
    }

    #[test]
    fn semantic_checks() {
        let error = parse(json!({"model":"m","messages":[]})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("messages"));
        let error = parse(json!({"model":"m","messages":[{"role":"user"}]})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("messages[0].content"));
        let error =
            parse(json!({"model":"m","messages":[{"role":"tool","content":"x"}]})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("messages[0].tool_call_id"));
        let error = parse(json!({"model":"m","messages":[{"role":"user","content":"x"}],"n":0}))
            .unwrap_err();
        assert_eq!(error.param.as_deref(), Some("n"));
        assert!(parse(json!({"model":"m","messages":[
            {"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}
        ]}))
        .is_ok());
    }

    #[test]
    fn stream_usage_flag() {
        let request = parse(
            json!({"model":"m","messages":[{"role":"user","content":"x"}],
            "stream":true,"stream_options":{"include_usage":true}}),
        )
        .unwrap();
        assert!(request.wants_stream_usage());
    }
}
