//! Quality tiers: a route that names tiers (other routes, cheapest first) sends each request
//! to one of them, chosen by a transparent classifier. A request is **hard**, and goes to the
//! strongest tier, when any of these holds (each threshold is in the config):
//!
//! - its prompt is longer than `max_prompt_tokens` (estimated at four characters a token);
//! - the conversation has more than `max_messages` messages;
//! - it asks for tools, or for output matching a JSON schema;
//! - it contains code (a fenced block, or several lines that look like code);
//! - it contains mathematics (LaTeX, or an equation with operators and digits);
//!
//! otherwise it is **easy** and goes to the cheapest tier. An `x-switchyard-tier` header
//! overrides the classifier (`cheap`, `strong`, or a tier's route name), and when the cheap
//! tier's recent feedback is below the route's `min_quality`, every request goes to the
//! strongest tier. Every decision carries its reason, for logs and a response header.

use crate::wire::{ChatRequest, ResponseFormat};

/// The classifier's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Classifier {
    /// Longer prompts (estimated tokens) are hard.
    pub max_prompt_tokens: u64,
    /// Longer conversations (messages) are hard.
    pub max_messages: usize,
    /// Requests for tools or a JSON schema are hard.
    pub tools_are_hard: bool,
    /// Prompts with code are hard.
    pub code_is_hard: bool,
    /// Prompts with mathematics are hard.
    pub math_is_hard: bool,
    /// The cheap tier's mean feedback score (0 to 1) below which everything goes to the
    /// strongest tier; `None`: feedback does not move traffic.
    pub min_quality: Option<f64>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            max_prompt_tokens: 1_000,
            max_messages: 8,
            tools_are_hard: true,
            code_is_hard: true,
            math_is_hard: true,
            min_quality: None,
        }
    }
}

/// Which tier a request goes to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Index into the route's tiers.
    pub tier: usize,
    /// Why, in a few words (`short prompt`, `tools requested`, `hint`, ...).
    pub reason: &'static str,
}

/// The features the classifier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Estimated prompt tokens (characters of message text / 4).
    pub prompt_tokens: u64,
    /// Messages in the conversation.
    pub messages: usize,
    /// Tools or a JSON schema requested.
    pub tools: bool,
    /// Code present.
    pub code: bool,
    /// Mathematics present.
    pub math: bool,
}

impl Features {
    /// Reads a chat request.
    pub fn of(request: &ChatRequest) -> Self {
        let mut characters = 0usize;
        let mut code = false;
        let mut math = false;
        for message in &request.messages {
            let text = message.text_content();
            characters += text.chars().count();
            code = code || has_code(&text);
            math = math || has_math(&text);
        }
        Features {
            prompt_tokens: (characters / 4) as u64,
            messages: request.messages.len(),
            tools: request
                .tools
                .as_ref()
                .is_some_and(|tools| !tools.is_empty())
                || matches!(
                    request.response_format,
                    Some(ResponseFormat::JsonSchema { .. })
                ),
            code,
            math,
        }
    }
}

/// Code: a fenced block, or at least three lines that end or begin like code.
fn has_code(text: &str) -> bool {
    if text.contains("```") {
        return true;
    }
    let code_lines = text
        .lines()
        .map(str::trim)
        .filter(|line| {
            line.ends_with(';')
                || line.ends_with('{')
                || line == &"}"
                || [
                    "def ",
                    "fn ",
                    "class ",
                    "import ",
                    "#include",
                    "function ",
                    "SELECT ",
                ]
                .iter()
                .any(|start| line.starts_with(start))
        })
        .count();
    code_lines >= 3
}

/// Mathematics: LaTeX, or an equation (`=` with digits and another operator around it).
fn has_math(text: &str) -> bool {
    const LATEX: [&str; 7] = ["$$", "\\frac", "\\int", "\\sum", "\\sqrt", "\\(", "\\["];
    if LATEX.iter().any(|mark| text.contains(mark)) {
        return true;
    }
    text.split(['\n', ',', ';']).any(|part| {
        part.contains('=')
            && part.chars().any(|c| c.is_ascii_digit())
            && part
                .chars()
                .any(|c| matches!(c, '+' | '*' | '^' | '/' | '∫' | '√'))
    })
}

/// Chooses among `tiers` tiers (cheapest first). `hint`: the `x-switchyard-tier` header, as
/// an index already resolved by [`resolve_hint`]. `cheap_quality`: the cheap tier's recent
/// mean feedback, if enough is known.
pub fn choose(
    classifier: &Classifier,
    features: &Features,
    tiers: usize,
    hint: Option<usize>,
    cheap_quality: Option<f64>,
) -> Choice {
    let strongest = tiers.saturating_sub(1);
    if let Some(tier) = hint {
        return Choice {
            tier: tier.min(strongest),
            reason: "hint",
        };
    }
    if let (Some(minimum), Some(quality)) = (classifier.min_quality, cheap_quality)
        && quality < minimum
    {
        return Choice {
            tier: strongest,
            reason: "cheap tier below min_quality",
        };
    }
    let hard = if features.prompt_tokens > classifier.max_prompt_tokens {
        Some("long prompt")
    } else if features.messages > classifier.max_messages {
        Some("long conversation")
    } else if classifier.tools_are_hard && features.tools {
        Some("tools or schema requested")
    } else if classifier.code_is_hard && features.code {
        Some("code")
    } else if classifier.math_is_hard && features.math {
        Some("math")
    } else {
        None
    };
    match hard {
        Some(reason) => Choice {
            tier: strongest,
            reason,
        },
        None => Choice {
            tier: 0,
            reason: "easy",
        },
    }
}

/// Reads an `x-switchyard-tier` header: `cheap` (the first tier), `strong` (the last), or a
/// tier's route name. `None`: not one of them.
pub fn resolve_hint(hint: &str, tiers: &[String]) -> Option<usize> {
    match hint.trim() {
        "cheap" => Some(0),
        "strong" => Some(tiers.len().saturating_sub(1)),
        name => tiers.iter().position(|tier| tier == name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ChatRequest;

    fn request(json: &str) -> ChatRequest {
        ChatRequest::from_slice(json.as_bytes()).unwrap()
    }

    fn features(content: &str) -> Features {
        let body = serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": content}]
        });
        Features::of(&request(&body.to_string()))
    }

    #[test]
    fn the_classifier_names_why_a_request_is_hard() {
        let classifier = Classifier::default();
        let decide = |features: &Features| choose(&classifier, features, 2, None, None);
        assert_eq!(
            decide(&features("What is the capital of France?")),
            Choice {
                tier: 0,
                reason: "easy"
            }
        );
        assert_eq!(
            decide(&features(&"word ".repeat(1_000))).reason,
            "long prompt"
        );
        let code = "Fix this:\n```rust\nfn main() {}\n```";
        assert_eq!(
            decide(&features(code)),
            Choice {
                tier: 1,
                reason: "code"
            }
        );
        let unfenced = "import os\ndef main():\n    x = 1;\n    y = 2;\n";
        assert_eq!(decide(&features(unfenced)).reason, "code");
        assert_eq!(
            decide(&features("Solve 3x^2 + 2 = 14 for x")).reason,
            "math"
        );
        assert_eq!(decide(&features("Compute \\int_0^1 x dx")).reason, "math");
        assert_eq!(decide(&features("Meet me at 5, ok?")).reason, "easy");
        let tools = request(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],
                "tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#,
        );
        assert_eq!(
            decide(&Features::of(&tools)).reason,
            "tools or schema requested"
        );
        let deep = Features {
            messages: 9,
            ..Features::default()
        };
        assert_eq!(decide(&deep).reason, "long conversation");
        let lenient = Classifier {
            code_is_hard: false,
            ..Classifier::default()
        };
        assert_eq!(choose(&lenient, &features(code), 2, None, None).tier, 0);
    }

    #[test]
    fn hints_and_poor_feedback_override_the_classifier() {
        let tiers = ["mini".to_owned(), "mid".to_owned(), "max".to_owned()];
        assert_eq!(resolve_hint("cheap", &tiers), Some(0));
        assert_eq!(resolve_hint("strong", &tiers), Some(2));
        assert_eq!(resolve_hint("mid", &tiers), Some(1));
        assert_eq!(resolve_hint("best", &tiers), None);
        let classifier = Classifier {
            min_quality: Some(0.7),
            ..Classifier::default()
        };
        let easy = Features::default();
        assert_eq!(choose(&classifier, &easy, 3, Some(1), Some(0.1)).tier, 1);
        let poor = choose(&classifier, &easy, 3, None, Some(0.5));
        assert_eq!(
            (poor.tier, poor.reason),
            (2, "cheap tier below min_quality")
        );
        assert_eq!(choose(&classifier, &easy, 3, None, Some(0.9)).tier, 0);
        assert_eq!(
            choose(&classifier, &easy, 3, None, None).tier,
            0,
            "unknown quality"
        );
    }
}
