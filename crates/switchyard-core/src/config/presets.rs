//! Built-in provider kinds: their wire format, default base URL, key variable and the model
//! names they serve by default.

use crate::provider::WireFormat;

/// One built-in provider kind.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// The `kind` in the config, and the provider's name when found in the environment.
    pub kind: &'static str,
    /// How requests are encoded.
    pub wire: WireFormat,
    /// The API root when the config gives none. `None`: `base_url` is required.
    pub base_url: Option<&'static str>,
    /// The variable the provider's own SDKs read the key from.
    pub key_env: Option<&'static str>,
    /// The variable that overrides the base URL.
    pub base_url_env: Option<&'static str>,
    /// Model-name patterns served by default (for bare model names).
    pub models: &'static [&'static str],
}

/// Every built-in kind, in the order providers found in the environment are listed (and so
/// the order in which a bare model name is matched).
pub const PRESETS: &[Preset] = &[
    Preset {
        kind: "openai",
        wire: WireFormat::OpenAi,
        base_url: Some("https://api.openai.com/v1"),
        key_env: Some("OPENAI_API_KEY"),
        base_url_env: Some("OPENAI_BASE_URL"),
        models: &[
            "gpt-*",
            "chatgpt-*",
            "o1",
            "o1-*",
            "o3",
            "o3-*",
            "o4-*",
            "text-embedding-*",
            "omni-moderation-*",
        ],
    },
    Preset {
        kind: "anthropic",
        wire: WireFormat::Anthropic,
        base_url: Some("https://api.anthropic.com"),
        key_env: Some("ANTHROPIC_API_KEY"),
        base_url_env: Some("ANTHROPIC_BASE_URL"),
        models: &["claude-*"],
    },
    Preset {
        kind: "gemini",
        wire: WireFormat::Gemini,
        base_url: Some("https://generativelanguage.googleapis.com"),
        key_env: Some("GEMINI_API_KEY"),
        base_url_env: Some("GEMINI_BASE_URL"),
        models: &["gemini-*", "gemma-*", "text-embedding-004", "embedding-*"],
    },
    Preset {
        kind: "groq",
        wire: WireFormat::OpenAi,
        base_url: Some("https://api.groq.com/openai/v1"),
        key_env: Some("GROQ_API_KEY"),
        base_url_env: None,
        models: &[
            "llama-*",
            "llama3-*",
            "meta-llama/*",
            "openai/gpt-oss-*",
            "qwen/*",
            "moonshotai/*",
        ],
    },
    Preset {
        kind: "mistral",
        wire: WireFormat::OpenAi,
        base_url: Some("https://api.mistral.ai/v1"),
        key_env: Some("MISTRAL_API_KEY"),
        base_url_env: None,
        models: &[
            "mistral-*",
            "open-mistral-*",
            "open-mixtral-*",
            "codestral-*",
            "pixtral-*",
            "ministral-*",
            "magistral-*",
            "devstral-*",
        ],
    },
    Preset {
        kind: "deepseek",
        wire: WireFormat::OpenAi,
        base_url: Some("https://api.deepseek.com/v1"),
        key_env: Some("DEEPSEEK_API_KEY"),
        base_url_env: None,
        models: &["deepseek-chat", "deepseek-reasoner"],
    },
    Preset {
        kind: "openrouter",
        wire: WireFormat::OpenAi,
        base_url: Some("https://openrouter.ai/api/v1"),
        key_env: Some("OPENROUTER_API_KEY"),
        base_url_env: None,
        models: &[],
    },
    Preset {
        kind: "together",
        wire: WireFormat::OpenAi,
        base_url: Some("https://api.together.xyz/v1"),
        key_env: Some("TOGETHER_API_KEY"),
        base_url_env: None,
        models: &[],
    },
    Preset {
        kind: "fireworks",
        wire: WireFormat::OpenAi,
        base_url: Some("https://api.fireworks.ai/inference/v1"),
        key_env: Some("FIREWORKS_API_KEY"),
        base_url_env: None,
        models: &["accounts/fireworks/models/*"],
    },
    Preset {
        kind: "xai",
        wire: WireFormat::OpenAi,
        base_url: Some("https://api.x.ai/v1"),
        key_env: Some("XAI_API_KEY"),
        base_url_env: None,
        models: &["grok-*"],
    },
    Preset {
        kind: "ollama",
        wire: WireFormat::OpenAi,
        base_url: Some("http://localhost:11434/v1"),
        key_env: None,
        base_url_env: Some("OLLAMA_BASE_URL"),
        models: &[],
    },
    Preset {
        kind: "azure",
        wire: WireFormat::Azure,
        base_url: None,
        key_env: None,
        base_url_env: None,
        models: &[],
    },
];

/// The preset for a `kind`.
pub fn preset(kind: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|preset| preset.kind == kind)
}

/// The list of valid kinds, for error messages.
pub fn kind_names() -> String {
    PRESETS
        .iter()
        .map(|preset| preset.kind)
        .collect::<Vec<_>>()
        .join(", ")
}
