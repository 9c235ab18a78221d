//! The config file as written: plain serde structs that reject unknown keys.
//!
//! Nothing here is checked beyond types; [`super::validate`] turns a [`RawConfig`] into a
//! [`super::Config`]. Durations are humantime strings (`"10s"`, `"2m"`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The whole TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Listener, client auth and request limits.
    #[serde(default)]
    pub server: RawServer,
    /// Transport timeouts towards providers.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// The providers the gateway may call.
    #[serde(default)]
    pub providers: Vec<RawProvider>,
    /// Named routes: a model name clients ask for, and the targets that serve it.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[server]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on, e.g. `127.0.0.1:8080`. `--listen` overrides it.
    pub listen: Option<String>,
    /// Environment variable holding the master key clients must present.
    /// Default: `SWITCHYARD_MASTER_KEY`, when set.
    pub master_key_env: Option<String>,
    /// Request body limit in bytes. Default 10 MiB.
    pub max_body_bytes: Option<usize>,
    /// Time allowed to read a request's headers. Default 10s.
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    /// Deadline for a whole request, streams included. Default 10m.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    /// How long in-flight requests may run after SIGTERM. Default 30s.
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
}

/// `[upstream]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// TCP + TLS connect timeout. Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Time from sending a request to the provider's response headers. Default 120s.
    #[serde(default, with = "humantime_serde")]
    pub first_byte_timeout: Option<Duration>,
    /// Longest silence between two chunks of a response body. Default 120s.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

/// `[[providers]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Unique name; clients can address `name/model`.
    pub name: String,
    /// Wire format or preset: `openai`, `azure`, `anthropic`, `gemini`, `groq`, ...
    pub kind: String,
    /// API root. Presets have a default; `openai`-kind providers default to OpenAI's.
    pub base_url: Option<String>,
    /// Environment variable holding the API key. Never the key itself.
    pub api_key_env: Option<String>,
    /// Azure OpenAI `api-version`.
    pub api_version: Option<String>,
    /// Model names this provider serves, `*` as wildcard. Used for bare model names.
    pub models: Option<Vec<String>>,
    /// Extra static headers sent with every request (not for secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `[[routes]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The model name clients ask for.
    pub model: String,
    /// Where it goes, tried in order.
    #[serde(default)]
    pub targets: Vec<RawTarget>,
}

/// One target of a route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// A provider's name.
    pub provider: String,
    /// The model name at that provider (the Azure deployment for `azure`).
    pub model: String,
}
