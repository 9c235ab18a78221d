//! A stored answer, and its conversions: a streamed answer assembled into one complete
//! chat completion ([`StreamRecorder`]), and a stored completion replayed as chunks
//! ([`replay_chunks`]).
//!
//! An answer is stored once, as the OpenAI `chat.completion` JSON a non-streaming client
//! gets (or the endpoint's JSON answer). A streamed answer also keeps the lengths of its
//! content pieces (4 bytes each), so that a streaming client of a hit gets the same content
//! chunks the original stream had, without the cache holding every chunk's JSON (which is
//! about forty times the size of the text).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::GatewayError;
use crate::wire::{
    ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, Delta, FunctionCall,
    FunctionCallDelta, ResponseMessage, TokenUsage, ToolCall, ToolCallDelta,
};

/// Bytes counted per entry on top of its own data: the entry's fields, the store's node and
/// key. An estimate that errs high, so the byte budget is not overrun.
pub const ENTRY_OVERHEAD: u64 = 192;

/// An answer in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The answer as a non-streaming client gets it.
    pub body: Bytes,
    /// Byte lengths of the first choice's content pieces, when it was streamed.
    pub pieces: Vec<u32>,
    /// The usage the answer cost when it was made (what a hit saves).
    pub usage: TokenUsage,
    /// The provider that made it.
    pub provider: String,
    /// The upstream model that made it.
    pub model: String,
    /// The route it was stored under.
    pub route: String,
    /// The tenant scope it was stored under.
    pub scope: String,
    /// When it was stored (unix milliseconds).
    pub stored_unix_ms: u64,
    /// When it stops being served (unix milliseconds).
    pub expires_unix_ms: u64,
}

/// The encoded entry's header; the body follows it after a newline.
#[derive(Serialize, Deserialize)]
struct Header {
    v: u32,
    pieces: Vec<u32>,
    /// input, output, cached input, cache write, reasoning.
    usage: [u64; 5],
    provider: String,
    model: String,
    route: String,
    scope: String,
    stored: u64,
    expires: u64,
}

impl Entry {
    /// What the entry counts against the cache's byte budget.
    pub fn weight(&self) -> u64 {
        (self.body.len()
            + self.pieces.len() * 4
            + self.provider.len()
            + self.model.len()
            + self.route.len()
            + self.scope.len()) as u64
            + ENTRY_OVERHEAD
    }

    /// Whether it may be served at `now_unix_ms` to a request that accepts answers up to
    /// `max_age_ms` old.
    pub fn is_fresh(&self, now_unix_ms: u64, max_age_ms: Option<u64>) -> bool {
        now_unix_ms < self.expires_unix_ms
            && max_age_ms.is_none_or(|max| self.age_ms(now_unix_ms) <= max)
    }

    /// How old it is at `now_unix_ms`.
    pub fn age_ms(&self, now_unix_ms: u64) -> u64 {
        now_unix_ms.saturating_sub(self.stored_unix_ms)
    }

    /// Milliseconds left to live at `now_unix_ms`.
    pub fn ttl_left_ms(&self, now_unix_ms: u64) -> u64 {
        self.expires_unix_ms.saturating_sub(now_unix_ms)
    }

    /// The encoding for a shared store: a JSON header line, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let header = Header {
            v: 1,
            pieces: self.pieces.clone(),
            usage: [
                self.usage.input,
                self.usage.output,
                self.usage.cached_input,
                self.usage.cache_write,
                self.usage.reasoning,
            ],
            provider: self.provider.clone(),
            model: self.model.clone(),
            route: self.route.clone(),
            scope: self.scope.clone(),
            stored: self.stored_unix_ms,
            expires: self.expires_unix_ms,
        };
        let mut out = serde_json::to_vec(&header).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`Entry::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let split = bytes
            .iter()
            .position(|&byte| byte == b'\n')
            .ok_or("no header line")?;
        let header: Header = serde_json::from_slice(&bytes[..split])
            .map_err(|error| format!("bad header: {error}"))?;
        if header.v != 1 {
            return Err(format!("unknown entry version {}", header.v));
        }
        let [input, output, cached_input, cache_write, reasoning] = header.usage;
        Ok(Entry {
            body: Bytes::copy_from_slice(&bytes[split + 1..]),
            pieces: header.pieces,
            usage: TokenUsage {
                input,
                output,
                cached_input,
                cache_write,
                reasoning,
            },
            provider: header.provider,
            model: header.model,
            route: header.route,
            scope: header.scope,
            stored_unix_ms: header.stored,
            expires_unix_ms: header.expires,
        })
    }
}

/// One choice of a stream, so far.
#[derive(Default)]
struct ChoiceSoFar {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u32, ToolCall>,
    finish_reason: Option<String>,
}

/// Assembles a streamed chat answer, chunk by chunk, into the complete answer a
/// non-streaming client would have got. It gives up (and drops what it holds) when a chunk
/// is not a chat chunk, carries log probabilities, or the answer grows past its size cap.
pub struct StreamRecorder {
    id: String,
    created: u64,
    model: String,
    choices: BTreeMap<u32, ChoiceSoFar>,
    pieces: Vec<u32>,
    bytes: usize,
    max_bytes: usize,
    failed: bool,
}

impl StreamRecorder {
    /// A recorder that gives up once the answer it assembles (text, refusal, tool calls and
    /// the piece lengths: what the cache would hold, not the chunks' JSON, which is many times
    /// larger) passes `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        StreamRecorder {
            id: String::new(),
            created: 0,
            model: String::new(),
            choices: BTreeMap::new(),
            pieces: Vec::new(),
            bytes: 0,
            max_bytes,
            failed: false,
        }
    }

    /// Whether it is still recording.
    pub fn is_recording(&self) -> bool {
        !self.failed
    }

    /// Takes one chunk's JSON.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<ChatCompletionChunk>(chunk) else {
            return self.give_up();
        };
        if self.id.is_empty() {
            self.id = chunk.id;
            self.created = chunk.created;
            self.model = chunk.model;
        }
        for choice in chunk.choices {
            if choice.logprobs.as_ref().is_some_and(|l| !l.is_null()) {
                return self.give_up();
            }
            self.bytes += assembled_size(&choice.delta);
            if self.bytes > self.max_bytes {
                return self.give_up();
            }
            let so_far = self.choices.entry(choice.index).or_default();
            if let Some(content) = choice.delta.content
                && !content.is_empty()
            {
                if choice.index == 0 {
                    self.pieces
                        .push(u32::try_from(content.len()).unwrap_or(u32::MAX));
                }
                so_far.content.get_or_insert_default().push_str(&content);
            }
            if let Some(refusal) = &choice.delta.refusal {
                let refusal: &str = refusal;
                so_far.refusal.get_or_insert_default().push_str(refusal);
            }
            for piece in choice.delta.tool_calls.unwrap_or_default() {
                let call = so_far
                    .tool_calls
                    .entry(piece.index)
                    .or_insert_with(|| ToolCall {
                        id: String::new(),
                        kind: "function".to_owned(),
                        function: FunctionCall {
                            name: String::new(),
                            arguments: String::new(),
                        },
                    });
                if let Some(id) = piece.id {
                    call.id = id;
                }
                if let Some(kind) = piece.kind {
                    call.kind = kind;
                }
                if let Some(function) = piece.function {
                    if let Some(name) = &function.name {
                        call.function.name.push_str(name);
                    }
                    if let Some(arguments) = &function.arguments {
                        call.function.arguments.push_str(arguments);
                    }
                }
            }
            if choice.finish_reason.is_some() {
                so_far.finish_reason = choice.finish_reason;
            }
        }
    }
}

/// What one delta adds to the assembled answer, in bytes.
fn assembled_size(delta: &Delta) -> usize {
    let text = delta.content.as_ref().map_or(0, |c| c.len() + 4)
        + delta.refusal.as_ref().map_or(0, String::len);
    let calls: usize = delta
        .tool_calls
        .iter()
        .flatten()
        .map(|call| {
            call.id.as_ref().map_or(0, String::len)
                + call.function.as_ref().map_or(0, |f| {
                    f.name.as_ref().map_or(0, String::len)
                        + f.arguments.as_ref().map_or(0, String::len)
                })
        })
        .sum();
    text + calls
}

impl StreamRecorder {
    fn give_up(&mut self) {
        self.failed = true;
        self.choices.clear();
        self.pieces = Vec::new();
    }

    /// The complete answer (body and content pieces), when the stream finished every choice
    /// and nothing made the recorder give up.
    pub fn finish(self, usage: TokenUsage) -> Option<(Bytes, Vec<u32>)> {
        if self.failed
            || self.choices.is_empty()
            || self.choices.values().any(|c| c.finish_reason.is_none())
        {
            return None;
        }
        let completion = ChatCompletion {
            id: self.id,
            object: "chat.completion".to_owned(),
            created: self.created,
            model: self.model,
            choices: self
                .choices
                .into_iter()
                .map(|(index, choice)| Choice {
                    index,
                    message: ResponseMessage {
                        role: "assistant".to_owned(),
                        content: choice.content,
                        tool_calls: (!choice.tool_calls.is_empty())
                            .then(|| choice.tool_calls.into_values().collect()),
                        refusal: choice.refusal,
                    },
                    finish_reason: choice.finish_reason,
                    logprobs: None,
                })
                .collect(),
            usage: Some(usage.to_openai()),
            system_fingerprint: None,
        };
        let body = serde_json::to_vec(&completion).ok()?;
        Some((Bytes::from(body), self.pieces))
    }
}

/// Content pieces of a text that was not streamed: cut after about this many bytes, at
/// the next whitespace.
const REPLAY_PIECE: usize = 48;

/// The chunks (JSON, unframed) that stream a stored chat completion `body`: per choice a
/// role chunk, its content in `pieces` (the first choice's original pieces when they fit
/// the text, else cuts at whitespace), its refusal, one chunk per tool call, and a finish
/// chunk; then, when `include_usage`, the usage chunk. The caller sends `[DONE]` after.
pub fn replay_chunks(
    body: &[u8],
    pieces: &[u32],
    include_usage: bool,
) -> Result<Vec<Bytes>, GatewayError> {
    let completion: ChatCompletion = serde_json::from_slice(body)
        .map_err(|error| GatewayError::internal(format!("cached answer is unreadable: {error}")))?;
    let chunk = |choices: Vec<ChunkChoice>, usage| ChatCompletionChunk {
        id: completion.id.clone(),
        object: "chat.completion.chunk".to_owned(),
        created: completion.created,
        model: completion.model.clone(),
        choices,
        usage,
    };
    let delta_chunk = |index: u32, delta: Delta, finish_reason: Option<String>| {
        chunk(
            vec![ChunkChoice {
                index,
                delta,
                finish_reason,
                logprobs: None,
            }],
            None,
        )
    };
    let mut chunks = Vec::new();
    for choice in &completion.choices {
        let message = &choice.message;
        chunks.push(delta_chunk(
            choice.index,
            Delta {
                role: Some("assistant".to_owned()),
                // As OpenAI streams it: an empty text to start a text answer, nothing for one
                // that is only tool calls or a refusal.
                content: message.content.as_ref().map(|_| String::new()),
                ..Delta::default()
            },
            None,
        ));
        if let Some(content) = message.content.as_deref().filter(|c| !c.is_empty()) {
            let own = if choice.index == 0 { pieces } else { &[] };
            for piece in split_content(content, own) {
                chunks.push(delta_chunk(
                    choice.index,
                    Delta {
                        content: Some(piece.to_owned()),
                        ..Delta::default()
                    },
                    None,
                ));
            }
        }
        if let Some(refusal) = &message.refusal {
            chunks.push(delta_chunk(
                choice.index,
                Delta {
                    refusal: Some(refusal.clone()),
                    ..Delta::default()
                },
                None,
            ));
        }
        for (index, call) in message.tool_calls.iter().flatten().enumerate() {
            chunks.push(delta_chunk(
                choice.index,
                Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        id: Some(call.id.clone()),
                        kind: Some(call.kind.clone()),
                        function: Some(FunctionCallDelta {
                            name: Some(call.function.name.clone()),
                            arguments: Some(call.function.arguments.clone()),
                        }),
                    }]),
                    ..Delta::default()
                },
                None,
            ));
        }
        chunks.push(delta_chunk(
            choice.index,
            Delta::default(),
            Some(
                choice
                    .finish_reason
                    .clone()
                    .unwrap_or_else(|| "stop".to_owned()),
            ),
        ));
    }
    if include_usage && let Some(usage) = &completion.usage {
        chunks.push(chunk(Vec::new(), Some(usage.clone())));
    }
    chunks
        .iter()
        .map(|chunk| serde_json::to_vec(chunk).map(Bytes::from))
        .collect::<Result<_, _>>()
        .map_err(|error| GatewayError::internal(format!("cannot replay a cached answer: {error}")))
}

/// `content` cut by the recorded `pieces` when they add up to it on character boundaries,
/// else after every [`REPLAY_PIECE`] bytes at the next whitespace.
fn split_content<'c>(content: &'c str, pieces: &[u32]) -> Vec<&'c str> {
    let total: u64 = pieces.iter().map(|&p| u64::from(p)).sum();
    if !pieces.is_empty() && total == content.len() as u64 {
        let mut out = Vec::with_capacity(pieces.len());
        let mut at = 0usize;
        for &piece in pieces {
            let end = at + piece as usize;
            match content.get(at..end) {
                Some(text) => out.push(text),
                None => return split_content(content, &[]),
            }
            at = end;
        }
        return out;
    }
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut since = 0usize;
    for (at, character) in content.char_indices() {
        since += character.len_utf8();
        if since >= REPLAY_PIECE && character.is_whitespace() {
            let end = at + character.len_utf8();
            out.push(&content[start..end]);
            start = end;
            since = 0;
        }
    }
    if start < content.len() {
        out.push(&content[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn chunk(choices: Value) -> Vec<u8> {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
            "model": "gpt-4o", "choices": choices
        })
        .to_string()
        .into_bytes()
    }

    fn usage() -> TokenUsage {
        TokenUsage {
            input: 10,
            output: 3,
            ..TokenUsage::default()
        }
    }

    fn recorded(chunks: &[Vec<u8>]) -> Option<(Bytes, Vec<u32>)> {
        let mut recorder = StreamRecorder::new(1 << 20);
        for c in chunks {
            recorder.push(c);
        }
        recorder.finish(usage())
    }

    fn text_stream() -> Vec<Vec<u8>> {
        vec![
            chunk(
                json!([{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]),
            ),
            chunk(json!([{"index":0,"delta":{"content":"Hel"},"finish_reason":null}])),
            chunk(json!([{"index":0,"delta":{"content":"lo é"},"finish_reason":null}])),
            chunk(json!([{"index":0,"delta":{},"finish_reason":"stop"}])),
        ]
    }

    #[test]
    fn a_stream_assembles_into_the_completion_a_json_client_gets() {
        let (body, pieces) = recorded(&text_stream()).unwrap();
        let completion: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(completion["object"], "chat.completion");
        assert_eq!(completion["id"], "chatcmpl-1");
        assert_eq!(completion["choices"][0]["message"]["content"], "Hello é");
        assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
        assert_eq!(completion["usage"]["prompt_tokens"], 10);
        assert_eq!(completion["usage"]["completion_tokens"], 3);
        assert_eq!(pieces, vec![3, 5]);
    }

    #[test]
    fn replay_gives_back_the_same_content_chunks() {
        let (body, pieces) = recorded(&text_stream()).unwrap();
        let chunks = replay_chunks(&body, &pieces, false).unwrap();
        let parsed: Vec<Value> = chunks
            .iter()
            .map(|c| serde_json::from_slice(c).unwrap())
            .collect();
        let contents: Vec<&str> = parsed
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(contents, vec!["", "Hel", "lo é"]);
        assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            parsed.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        for chunk in &parsed {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], "chatcmpl-1");
            let _: ChatCompletionChunk = serde_json::from_value(chunk.clone()).unwrap();
        }
        let with_usage = replay_chunks(&body, &pieces, true).unwrap();
        let last: Value = serde_json::from_slice(with_usage.last().unwrap()).unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 13);
    }

    #[test]
    fn a_json_answer_replays_as_a_stream_that_reassembles_to_it() {
        let text = "A longer answer that goes on for quite a while, so that it is cut into several pieces at whitespace when it is streamed.";
        let completion = json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 9, "model": "m",
            "choices": [{"index":0,"message":{"role":"assistant","content":text,
                "tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
                "finish_reason":"tool_calls","logprobs":null}],
            "usage": {"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}
        });
        let chunks = replay_chunks(completion.to_string().as_bytes(), &[], true).unwrap();
        assert!(chunks.len() > 4, "cut into pieces");
        let mut recorder = StreamRecorder::new(1 << 20);
        for c in &chunks {
            recorder.push(c);
        }
        let (body, _) = recorder.finish(usage()).unwrap();
        let back: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(back["choices"][0]["message"]["content"], text);
        assert_eq!(
            back["choices"][0]["message"]["tool_calls"],
            completion["choices"][0]["message"]["tool_calls"]
        );
        assert_eq!(back["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn tool_call_pieces_and_several_choices_assemble() {
        let (body, _) = recorded(&[
            chunk(json!([{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"get","arguments":""}}]},"finish_reason":null}])),
            chunk(json!([{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":"}}]},"finish_reason":null}])),
            chunk(json!([{"index":1,"delta":{"content":"second"},"finish_reason":"stop"}])),
            chunk(json!([{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"2}"}}]},"finish_reason":"tool_calls"}])),
        ])
        .unwrap();
        let completion: ChatCompletion = serde_json::from_slice(&body).unwrap();
        let call = &completion.choices[0].message.tool_calls.as_ref().unwrap()[0];
        assert_eq!(
            (call.id.as_str(), call.function.name.as_str()),
            ("c1", "get")
        );
        assert_eq!(call.function.arguments, "{\"x\":2}");
        assert_eq!(
            completion.choices[1].message.content.as_deref(),
            Some("second")
        );
    }

    #[test]
    fn unfinished_foreign_or_oversized_streams_are_not_stored() {
        let mut unfinished = text_stream();
        unfinished.pop();
        assert!(
            recorded(&unfinished).is_none(),
            "no finish_reason: truncated"
        );
        let mut foreign = text_stream();
        foreign.insert(1, b"{\"not\":\"a chunk\"}".to_vec());
        assert!(recorded(&foreign).is_none());
        let mut logprobs = text_stream();
        logprobs.insert(1, chunk(json!([{"index":0,"delta":{"content":"x"},"logprobs":{"content":[]},"finish_reason":null}])));
        assert!(recorded(&logprobs).is_none());
        let mut small = StreamRecorder::new(10);
        for c in text_stream() {
            small.push(&c);
        }
        assert!(!small.is_recording());
        assert!(small.finish(usage()).is_none());
        assert!(recorded(&[]).is_none());
    }

    #[test]
    fn the_size_cap_counts_the_answer_not_the_chunks_json() {
        let mut chunks = vec![chunk(
            json!([{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]),
        )];
        for _ in 0..1_000 {
            chunks.push(chunk(
                json!([{"index":0,"delta":{"content":"ab"},"finish_reason":null}]),
            ));
        }
        chunks.push(chunk(
            json!([{"index":0,"delta":{},"finish_reason":"stop"}]),
        ));
        let json_bytes: usize = chunks.iter().map(Vec::len).sum();
        let mut recorder = StreamRecorder::new(10_000);
        for c in &chunks {
            recorder.push(c);
        }
        assert!(
            json_bytes > 10 * 10_000,
            "the chunks' JSON is far over the cap"
        );
        let (body, pieces) = recorder.finish(usage()).unwrap();
        assert_eq!(pieces.len(), 1_000);
        assert!(body.len() < 10_000);
    }

    #[test]
    fn pieces_that_do_not_fit_fall_back_to_whitespace_cuts() {
        assert_eq!(
            split_content("héllo", &[2, 4]),
            vec!["héllo"],
            "not on a char boundary"
        );
        assert_eq!(split_content("abc", &[1, 1]), vec!["abc"], "do not add up");
        assert_eq!(split_content("abc", &[1, 2]), vec!["a", "bc"]);
    }

    #[test]
    fn entries_round_trip_through_their_encoding() {
        let entry = Entry {
            body: Bytes::from_static(b"{\"x\":\"line\\nbreak\"}\n"),
            pieces: vec![1, 2],
            usage: TokenUsage {
                input: 1,
                output: 2,
                cached_input: 3,
                cache_write: 4,
                reasoning: 5,
            },
            provider: "p".into(),
            model: "m".into(),
            route: "r".into(),
            scope: "key:k".into(),
            stored_unix_ms: 10,
            expires_unix_ms: 20,
        };
        assert_eq!(Entry::decode(&entry.encode()).unwrap(), entry);
        assert!(Entry::decode(b"garbage").is_err());
        assert!(Entry::decode(b"{\"v\":2}\nbody").is_err());
        assert!(entry.weight() > entry.body.len() as u64);
    }

    #[test]
    fn freshness_and_max_age() {
        let entry = Entry {
            body: Bytes::new(),
            pieces: vec![],
            usage: TokenUsage::default(),
            provider: String::new(),
            model: String::new(),
            route: String::new(),
            scope: String::new(),
            stored_unix_ms: 1_000,
            expires_unix_ms: 11_000,
        };
        assert!(entry.is_fresh(10_999, None));
        assert!(!entry.is_fresh(11_000, None), "expired at its expiry");
        assert!(entry.is_fresh(3_000, Some(2_000)));
        assert!(
            !entry.is_fresh(3_001, Some(2_000)),
            "older than the request accepts"
        );
        assert_eq!(entry.age_ms(3_500), 2_500);
        assert_eq!(entry.ttl_left_ms(10_000), 1_000);
    }
}
