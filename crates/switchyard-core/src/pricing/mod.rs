//! What a request cost: the built-in price catalog, prices from the config, and the cost of
//! a normalised [`TokenUsage`].
//!
//! The catalog (`catalog.toml`, compiled in) holds the providers' published prices in USD
//! per million tokens, each with the date it was read and its source. A price is found by
//! the provider's family (its kind: `azure` is priced as `openai`, `gemini` as `google`)
//! and the exact model id or one of its aliases, never by a guess: a model the catalog does
//! not know has an unknown cost, which the gateway records as unknown (never as zero).
//! Local servers (`ollama`) cost nothing. The config's `[[prices]]` add or override prices
//! per configured provider, so the same model can cost differently at two providers.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::wire::TokenUsage;

/// The catalog as compiled in.
pub const CATALOG: &str = include_str!("catalog.toml");

/// What a model costs, in USD per million tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens (reasoning included unless `reasoning` is set).
    pub output: f64,
    /// Prompt tokens read from the provider's cache; `None`: billed as `input`.
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the provider's cache; `None`: billed as `input`.
    pub cache_write: Option<f64>,
    /// Reasoning tokens, when priced apart from output.
    pub reasoning: Option<f64>,
    /// When the price was read (`YYYY-MM-DD`), or `config` for a configured price.
    pub as_of: String,
}

impl ModelPrice {
    /// The cost of `usage` in USD.
    ///
    /// `usage.input` counts every prompt token, cache reads and writes included, so the
    /// uncached part is what remains after both; `usage.output` counts reasoning tokens.
    pub fn cost(&self, usage: &TokenUsage) -> f64 {
        let cached = usage.cached_input.min(usage.input);
        let written = usage.cache_write.min(usage.input - cached);
        let fresh = usage.input - cached - written;
        let reasoning = usage.reasoning.min(usage.output);
        let (answer, reasoning_cost) = match self.reasoning {
            Some(price) => (usage.output - reasoning, reasoning as f64 * price),
            None => (usage.output, 0.0),
        };
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + written as f64 * self.cache_write.unwrap_or(self.input)
            + answer as f64 * self.output
            + reasoning_cost)
            / 1_000_000.0
    }

    /// A price of nothing (local models).
    pub fn free() -> Self {
        ModelPrice {
            input: 0.0,
            output: 0.0,
            cached_input: None,
            cache_write: None,
            reasoning: None,
            as_of: "local".to_owned(),
        }
    }
}

/// One `[[price]]` of the catalog file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogEntry {
    provider: String,
    model: String,
    input: f64,
    #[serde(default)]
    output: f64,
    cached_input: Option<f64>,
    cache_write: Option<f64>,
    reasoning: Option<f64>,
    #[serde(default)]
    kind: Option<String>,
    as_of: String,
    #[allow(dead_code)]
    source: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    price: Vec<CatalogEntry>,
}

/// Prices by family, then model id (aliases included).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    families: HashMap<String, HashMap<String, Arc<ModelPrice>>>,
}

impl Catalog {
    /// The compiled-in catalog.
    pub fn builtin() -> Result<Self, String> {
        Self::parse(CATALOG)
    }

    /// Reads a catalog file; every number must be finite and non-negative, every date
    /// `YYYY-MM-DD`, and no model may be priced twice in one family.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|error| format!("price catalog: {error}"))?;
        let mut catalog = Catalog::default();
        for entry in file.price {
            let name = format!("{}/{}", entry.provider, entry.model);
            for (field, value) in [
                ("input", Some(entry.input)),
                ("output", Some(entry.output)),
                ("cached_input", entry.cached_input),
                ("cache_write", entry.cache_write),
                ("reasoning", entry.reasoning),
            ] {
                if let Some(value) = value
                    && !(value.is_finite() && value >= 0.0)
                {
                    return Err(format!("price catalog: {name}: {field} = {value}"));
                }
            }
            if !is_date(&entry.as_of) {
                return Err(format!(
                    "price catalog: {name}: as_of `{}` is not YYYY-MM-DD",
                    entry.as_of
                ));
            }
            if let Some(kind) = entry.kind.as_deref()
                && !matches!(kind, "chat" | "embedding")
            {
                return Err(format!("price catalog: {name}: unknown kind `{kind}`"));
            }
            let price = Arc::new(ModelPrice {
                input: entry.input,
                output: entry.output,
                cached_input: entry.cached_input,
                cache_write: entry.cache_write,
                reasoning: entry.reasoning,
                as_of: entry.as_of,
            });
            let family = catalog.families.entry(entry.provider.clone()).or_default();
            for model in std::iter::once(&entry.model).chain(&entry.aliases) {
                if family.insert(model.clone(), Arc::clone(&price)).is_some() {
                    return Err(format!(
                        "price catalog: {}/{model} is priced twice",
                        entry.provider
                    ));
                }
            }
        }
        Ok(catalog)
    }

    /// The price of `model` in `family`, by exact id or alias.
    pub fn get(&self, family: &str, model: &str) -> Option<&Arc<ModelPrice>> {
        self.families.get(family)?.get(model)
    }

    /// How many (family, model id or alias) pairs are priced.
    pub fn len(&self) -> usize {
        self.families.values().map(HashMap::len).sum()
    }

    /// Whether nothing is priced.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }
}

fn is_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit())
}

/// The catalog family a provider kind is priced under: `None` when it has no published
/// prices of its own (OpenRouter resells many; a custom OpenAI-compatible server).
pub fn family(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "openai" | "azure" => "openai",
        "anthropic" => "anthropic",
        "gemini" => "google",
        "groq" => "groq",
        "mistral" => "mistral",
        "deepseek" => "deepseek",
        "together" => "together",
        "fireworks" => "fireworks",
        "xai" => "xai",
        "deepinfra" => "deepinfra",
        _ => return None,
    })
}

/// Prices for the configured providers: the config's own first, then the catalog's.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    catalog: Catalog,
    /// Configured prices: provider name → model → price.
    configured: HashMap<String, HashMap<String, Arc<ModelPrice>>>,
    /// Provider name → the catalog family of its kind (absent: none).
    families: HashMap<String, &'static str>,
    /// Providers whose models cost nothing (local servers).
    free: Vec<String>,
}

/// Where a price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The config's `[[prices]]` or a target's `input_price` / `output_price`.
    Config,
    /// The built-in catalog.
    Catalog,
    /// A local provider: free.
    Local,
}

impl Pricing {
    /// Pricing over `catalog` for providers `(name, kind, official)`: `official` when the
    /// provider is the vendor's own API (its preset base URL; always for Azure). A provider
    /// of an OpenAI-compatible kind at another URL (vLLM, a proxy) is priced only by the
    /// config: its models are not at the vendor's list prices.
    pub fn new<'p>(
        catalog: Catalog,
        providers: impl IntoIterator<Item = (&'p str, &'p str, bool)>,
    ) -> Self {
        let mut pricing = Pricing {
            catalog,
            ..Pricing::default()
        };
        for (name, kind, official) in providers {
            if kind == "ollama" {
                pricing.free.push(name.to_owned());
            } else if let Some(family) = family(kind).filter(|_| official || kind == "azure") {
                pricing.families.insert(name.to_owned(), family);
            }
        }
        pricing
    }

    /// Sets the price of `model` at provider `provider` (a configured provider's name).
    pub fn configure(&mut self, provider: &str, model: &str, price: ModelPrice) {
        self.configured
            .entry(provider.to_owned())
            .or_default()
            .insert(model.to_owned(), Arc::new(price));
    }

    /// Whether `model` at `provider` has a configured price.
    pub fn is_configured(&self, provider: &str, model: &str) -> bool {
        self.configured
            .get(provider)
            .is_some_and(|models| models.contains_key(model))
    }

    /// The price of `model` at the configured provider `provider`, and where it came from.
    pub fn price(&self, provider: &str, model: &str) -> Option<(Arc<ModelPrice>, Source)> {
        if let Some(price) = self.configured.get(provider).and_then(|m| m.get(model)) {
            return Some((Arc::clone(price), Source::Config));
        }
        if self.free.iter().any(|name| name == provider) {
            return Some((Arc::new(ModelPrice::free()), Source::Local));
        }
        let family = self.families.get(provider)?;
        self.catalog
            .get(family, model)
            .map(|price| (Arc::clone(price), Source::Catalog))
    }

    /// The cost of `usage` by `model` at `provider`; `None` when the price is unknown.
    pub fn cost(&self, provider: &str, model: &str, usage: &TokenUsage) -> Option<f64> {
        self.price(provider, model)
            .map(|(price, _)| price.cost(usage))
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}

#[cfg(test)]
mod tests;
