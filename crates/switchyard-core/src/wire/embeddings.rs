//! OpenAI embeddings wire types.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// `POST /v1/embeddings` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    /// Route name, `provider/model`, or a bare model name.
    pub model: String,
    /// A string, an array of strings, or token arrays.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// Output dimensions, for models that can shorten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// End-user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The body exactly as the client sent it, set by [`EmbeddingsRequest::from_bytes`]. When
    /// set, an OpenAI-compatible upstream receives these bytes with only `model` rewritten.
    /// `None` for requests built in code.
    #[serde(skip)]
    pub raw: Option<Bytes>,
}

/// The `input` of an embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    One(String),
    /// Several texts.
    Many(Vec<String>),
    /// One pre-tokenised input.
    Tokens(Vec<u32>),
    /// Several pre-tokenised inputs.
    ManyTokens(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// The inputs as texts; `None` for token arrays, which only OpenAI-compatible APIs take.
    pub fn texts(&self) -> Option<Vec<&str>> {
        match self {
            EmbeddingInput::One(one) => Some(vec![one.as_str()]),
            EmbeddingInput::Many(many) => Some(many.iter().map(String::as_str).collect()),
            EmbeddingInput::Tokens(_) | EmbeddingInput::ManyTokens(_) => None,
        }
    }
}

impl EmbeddingsRequest {
    /// Parses and checks a request body, and keeps a copy of it in `raw` for passthrough.
    /// [`EmbeddingsRequest::from_bytes`] keeps it without copying.
    pub fn from_slice(body: &[u8]) -> Result<Self, GatewayError> {
        Self::from_bytes(Bytes::copy_from_slice(body))
    }

    /// Parses and checks a request body, and keeps it in `raw` for passthrough.
    pub fn from_bytes(body: Bytes) -> Result<Self, GatewayError> {
        let mut request = Self::parse(&body)?;
        request.raw = Some(body);
        Ok(request)
    }

    fn parse(body: &[u8]) -> Result<Self, GatewayError> {
        let request: EmbeddingsRequest = super::parse_body(body)?;
        if request.model.is_empty() {
            return Err(
                GatewayError::invalid_request("`model` must not be empty").with_param("model")
            );
        }
        let empty = match &request.input {
            EmbeddingInput::One(_) => false,
            EmbeddingInput::Many(many) => many.is_empty(),
            EmbeddingInput::Tokens(tokens) => tokens.is_empty(),
            EmbeddingInput::ManyTokens(many) => many.is_empty(),
        };
        if empty {
            return Err(
                GatewayError::invalid_request("`input` must not be empty").with_param("input")
            );
        }
        if let Some(format) = &request.encoding_format
            && format != "float"
            && format != "base64"
        {
            return Err(GatewayError::invalid_request(
                "`encoding_format` must be `float` or `base64`",
            )
            .with_param("encoding_format"));
        }
        Ok(request)
    }

    /// Whether the client wants base64-encoded vectors.
    pub fn wants_base64(&self) -> bool {
        self.encoding_format.as_deref() == Some("base64")
    }
}

/// An embeddings answer, as built by translating adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    /// Always `list`.
    pub object: String,
    /// One embedding per input.
    pub data: Vec<Embedding>,
    /// The model that answered.
    pub model: String,
    /// Input tokens.
    pub usage: EmbeddingsUsage,
}

/// One embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    /// Position of the input.
    pub index: u32,
    /// A float array, or base64 of little-endian f32s.
    pub embedding: Value,
}

/// Embeddings usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsUsage {
    /// Input tokens.
    #[serde(default, deserialize_with = "super::usage::count_or_zero")]
    pub prompt_tokens: u64,
    /// Same as `prompt_tokens`.
    #[serde(default, deserialize_with = "super::usage::count_or_zero")]
    pub total_tokens: u64,
}
