//! Anthropic wire format. (Being written; see the adapter contract in `provider/mod.rs`.)

use super::{CallInfo, Completion, SseEvent, StreamItem, UpstreamRequest};
use crate::error::GatewayError;
use crate::wire::{ChatRequest, TokenUsage};

/// Builds the upstream request.
pub fn chat_request(
    _call: &CallInfo<'_>,
    _request: &ChatRequest,
) -> Result<UpstreamRequest, GatewayError> {
    Err(GatewayError::internal("not yet"))
}

/// Translates a successful answer.
pub fn chat_response(
    _call: &CallInfo<'_>,
    _request: &ChatRequest,
    _body: &[u8],
) -> Result<Completion, GatewayError> {
    Err(GatewayError::internal("not yet"))
}

/// Message and code of an error body.
pub fn error_details(body: &[u8]) -> (Option<String>, Option<String>) {
    (super::openai::plain_text(body), None)
}

/// Stream decoder.
#[derive(Debug)]
pub struct AnthropicStream;

impl AnthropicStream {
    /// A decoder for a stream answering `request`.
    pub fn new(_call: &CallInfo<'_>, _request: &ChatRequest) -> Self {
        AnthropicStream
    }
    /// Decodes one event.
    pub fn decode(
        &mut self,
        _event: SseEvent<'_>,
        _out: &mut Vec<StreamItem>,
    ) -> Result<(), GatewayError> {
        Err(GatewayError::internal("not yet"))
    }
    /// The upstream body ended.
    pub fn finish(&mut self, _out: &mut Vec<StreamItem>) -> Result<(), GatewayError> {
        Err(GatewayError::internal("not yet"))
    }
    /// Usage seen so far.
    pub fn usage(&self) -> Option<TokenUsage> {
        None
    }
}
