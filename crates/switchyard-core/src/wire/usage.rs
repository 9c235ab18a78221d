//! Token usage: OpenAI's wire shape, and the normalised form every adapter produces.
//!
//! Providers are loose with usage (`"cached_tokens": null` from some OpenAI-compatible
//! servers), and a count the gateway cannot read must never fail an answer the provider
//! already produced, so every count reads `null` and absence as 0.

use serde::{Deserialize, Deserializer, Serialize};

/// OpenAI's `usage` object. `prompt_tokens` includes cached tokens, and `completion_tokens`
/// includes reasoning tokens, as OpenAI counts them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens, cached ones included.
    #[serde(default, deserialize_with = "count_or_zero")]
    pub prompt_tokens: u64,
    /// Output tokens, reasoning included.
    #[serde(default, deserialize_with = "count_or_zero")]
    pub completion_tokens: u64,
    /// Sum of the two.
    #[serde(default, deserialize_with = "count_or_zero")]
    pub total_tokens: u64,
    /// Cached-input breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Reasoning breakdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    /// DeepSeek's count of prompt tokens read from its cache (it reports them here rather
    /// than in `prompt_tokens_details`). Read, never sent.
    #[serde(
        default,
        deserialize_with = "count_or_zero",
        skip_serializing_if = "is_zero"
    )]
    pub prompt_cache_hit_tokens: u64,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Input tokens read from the provider's prompt cache.
    #[serde(default, deserialize_with = "count_or_zero")]
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache (Anthropic bills these apart).
    /// Not an OpenAI field; sent only when non-zero.
    #[serde(
        default,
        deserialize_with = "count_or_zero",
        skip_serializing_if = "is_zero"
    )]
    pub cache_creation_tokens: u64,
}

/// `usage.completion_tokens_details`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    /// Output tokens spent on hidden reasoning.
    #[serde(default, deserialize_with = "count_or_zero")]
    pub reasoning_tokens: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Reads a token count, taking `null` as 0 (with `#[serde(default)]`, absence is 0 too).
pub(crate) fn count_or_zero<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(deserializer)?.unwrap_or(0))
}

/// Usage normalised across providers: the unit of metering, cost and analytics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// All input tokens, cache reads and writes included.
    pub input: u64,
    /// All output tokens, reasoning included.
    pub output: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_write: u64,
    /// Output tokens spent on reasoning.
    pub reasoning: u64,
}

impl TokenUsage {
    /// The normalised form of OpenAI's usage.
    pub fn from_openai(usage: &Usage) -> Self {
        let details = usage.prompt_tokens_details.as_ref();
        TokenUsage {
            input: usage.prompt_tokens,
            output: usage.completion_tokens,
            cached_input: details
                .map_or(0, |d| d.cached_tokens)
                .max(usage.prompt_cache_hit_tokens),
            cache_write: details.map_or(0, |d| d.cache_creation_tokens),
            reasoning: usage
                .completion_tokens_details
                .as_ref()
                .map_or(0, |d| d.reasoning_tokens),
        }
    }

    /// OpenAI's wire shape of this usage.
    pub fn to_openai(self) -> Usage {
        Usage {
            prompt_tokens: self.input,
            completion_tokens: self.output,
            total_tokens: self.input + self.output,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: self.cached_input,
                cache_creation_tokens: self.cache_write,
            }),
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: self.reasoning,
            }),
            prompt_cache_hit_tokens: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_and_missing_counts_are_zero() {
        let usage: Usage = serde_json::from_value(json!({
            "prompt_tokens": 10,
            "completion_tokens": null,
            "total_tokens": null,
            "prompt_tokens_details": {"cached_tokens": null, "audio_tokens": null},
            "completion_tokens_details": {"reasoning_tokens": null}
        }))
        .unwrap();
        assert_eq!(
            TokenUsage::from_openai(&usage),
            TokenUsage {
                input: 10,
                ..TokenUsage::default()
            }
        );
        let usage: Usage = serde_json::from_value(json!({"prompt_tokens_details": null})).unwrap();
        assert_eq!(usage, Usage::default());
    }
}
