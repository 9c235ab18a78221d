//! The wire-independent part of an answer: what the mock says, and how many tokens it counts.
//!
//! Each wire format reads its request into a [`Conversation`]; this module decides the
//! [`Reply`] and the token counts, so the three formats answer the same prompt the same way
//! and a test can predict the answer whichever provider the gateway picked.

use serde_json::{Value, json};

/// How the request limits tool use, read from the wire's own `tool_choice` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    /// The model may call a tool (the wire's default).
    Auto,
    /// The model must call some tool (`required`, `any`, `ANY`).
    Required,
    /// The model must call this tool.
    Named(String),
    /// The model must not call a tool.
    None,
}

/// A request reduced to what the mock's answer depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Conversation {
    /// Whitespace-separated words across every message text, the system prompt included.
    pub prompt_words: u64,
    /// Text of the last user message that has text (tool results do not count as text).
    pub last_user_text: String,
    /// Text of the tool results when the conversation's last message is a tool result.
    pub tool_result: Option<String>,
    /// The tool the mock calls, when tools are declared and the choice allows a call.
    pub tool_to_call: Option<String>,
}

impl Conversation {
    /// Counts the words of one message text into the prompt.
    pub fn add_prompt_text(&mut self, text: &str) {
        self.prompt_words += word_count(text);
    }

    /// Picks the tool to call from the declared tool names and the request's choice.
    pub fn choose_tool(&mut self, declared: &[String], choice: ToolChoice) {
        self.tool_to_call = match choice {
            _ if declared.is_empty() => None,
            ToolChoice::None => None,
            ToolChoice::Named(name) => Some(name),
            ToolChoice::Auto | ToolChoice::Required => declared.first().cloned(),
        };
    }

    /// Prompt tokens: the prompt's word count, at least 1 as with any real tokenizer.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_words.max(1)
    }

    /// The mock's deterministic reply. `name` is the provider's name, `answer` the behaviour's
    /// override of the answer text.
    pub fn reply(&self, name: &str, answer: Option<&str>) -> Reply {
        if let Some(result) = &self.tool_result {
            return Reply::Text(answer.map_or_else(
                || format!("{name} got tool result: {result}"),
                str::to_owned,
            ));
        }
        if let Some(tool) = &self.tool_to_call {
            return Reply::ToolCall {
                name: tool.clone(),
                arguments: json!({ "input": self.last_user_text }),
            };
        }
        Reply::Text(answer.map_or_else(
            || format!("{name} says: {}", self.last_user_text),
            str::to_owned,
        ))
    }
}

/// What the assistant answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// A text answer.
    Text(String),
    /// A call to one tool with JSON arguments.
    ToolCall { name: String, arguments: Value },
}

impl Reply {
    /// Completion tokens: words of the answer text, or of the serialised tool arguments.
    pub fn completion_tokens(&self) -> u64 {
        match self {
            Reply::Text(text) => word_count(text),
            Reply::ToolCall { arguments, .. } => word_count(&arguments.to_string()),
        }
    }
}

/// Whitespace-separated words in `text`.
pub(crate) fn word_count(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Splits `text` into stream chunks of one word each. Each chunk carries the whitespace before
/// its word, and the last one any trailing whitespace, so the chunks concatenate to `text`.
pub(crate) fn word_chunks(text: &str) -> Vec<&str> {
    let last_word_end = text.trim_end().len();
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut previous_is_word = false;
    for (index, character) in text.char_indices() {
        let is_word = !character.is_whitespace();
        // A chunk ends where a word ends, unless only whitespace follows.
        if !is_word && previous_is_word && index < last_word_end {
            chunks.push(&text[start..index]);
            start = index;
        }
        previous_is_word = is_word;
    }
    if start < text.len() {
        chunks.push(&text[start..]);
    }
    chunks
}

/// Splits `text` into two pieces at a character boundary near the middle (tool arguments are
/// streamed in two pieces).
pub(crate) fn halves(text: &str) -> (&str, &str) {
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    text.split_at(middle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_one_word_each_and_concatenate_to_the_text() {
        assert_eq!(
            word_chunks("alpha says: hi there"),
            vec!["alpha", " says:", " hi", " there"]
        );
        assert_eq!(word_chunks("  a  b "), vec!["  a", "  b "]);
        assert_eq!(word_chunks("one"), vec!["one"]);
        assert!(word_chunks("").is_empty());
        for text in ["x y\tz", " héllo wörld ", "a\n\nb", "   "] {
            assert_eq!(word_chunks(text).concat(), text);
        }
    }

    #[test]
    fn halves_respect_char_boundaries() {
        let (left, right) = halves("{\"input\":\"é\"}");
        assert_eq!(format!("{left}{right}"), "{\"input\":\"é\"}");
        assert_eq!(halves(""), ("", ""));
    }

    #[test]
    fn reply_prefers_tool_result_then_tool_call_then_text() {
        let mut conversation = Conversation {
            last_user_text: "weather in Paris".into(),
            ..Conversation::default()
        };
        assert_eq!(
            conversation.reply("alpha", None),
            Reply::Text("alpha says: weather in Paris".into())
        );
        assert_eq!(
            conversation.reply("alpha", Some("fixed")),
            Reply::Text("fixed".into())
        );

        conversation.choose_tool(&["get_weather".into(), "other".into()], ToolChoice::Auto);
        assert_eq!(
            conversation.reply("alpha", None),
            Reply::ToolCall {
                name: "get_weather".into(),
                arguments: json!({"input": "weather in Paris"}),
            }
        );

        conversation.tool_result = Some("sunny".into());
        assert_eq!(
            conversation.reply("alpha", None),
            Reply::Text("alpha got tool result: sunny".into())
        );
    }

    #[test]
    fn tool_choice_rules() {
        let declared = vec!["first".to_owned(), "second".to_owned()];
        let mut conversation = Conversation::default();
        conversation.choose_tool(&declared, ToolChoice::Named("second".into()));
        assert_eq!(conversation.tool_to_call.as_deref(), Some("second"));
        conversation.choose_tool(&declared, ToolChoice::Required);
        assert_eq!(conversation.tool_to_call.as_deref(), Some("first"));
        conversation.choose_tool(&declared, ToolChoice::None);
        assert_eq!(conversation.tool_to_call, None);
        conversation.choose_tool(&[], ToolChoice::Named("x".into()));
        assert_eq!(conversation.tool_to_call, None);
    }

    #[test]
    fn token_counts() {
        let mut conversation = Conversation::default();
        assert_eq!(conversation.prompt_tokens(), 1);
        conversation.add_prompt_text("be brief");
        conversation.add_prompt_text("hello  there\nfriend");
        assert_eq!(conversation.prompt_tokens(), 5);
        assert_eq!(Reply::Text("a b c".into()).completion_tokens(), 3);
    }
}
