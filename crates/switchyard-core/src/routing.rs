//! Model addressing: which targets serve the `model` a client asked for.
//!
//! In order: a configured route name; then `provider/model`, which goes straight to that
//! provider; then a bare model name, which goes to every provider whose model patterns match
//! it, in config order (the first is preferred, the others are failover). Resolution is pure
//! and allocation-free for configured routes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Provider, Route, Target};
use crate::error::GatewayError;
use crate::strategy::Strategy;
use crate::wire::{ModelInfo, ModelList};

/// The resolved targets for one request.
#[derive(Debug, Clone)]
pub enum Resolution<'a> {
    /// A configured route.
    Route(&'a Route),
    /// `provider/model` or a bare model name.
    Direct {
        /// The name the client used.
        name: &'a str,
        /// The matching targets.
        targets: Vec<Target>,
    },
}

impl Resolution<'_> {
    /// The route name, as reported in headers and analytics.
    pub fn route_name(&self) -> &str {
        match self {
            Resolution::Route(route) => &route.name,
            Resolution::Direct { name, .. } => name,
        }
    }

    /// The targets, in config order.
    pub fn targets(&self) -> &[Target] {
        match self {
            Resolution::Route(route) => &route.targets,
            Resolution::Direct { targets, .. } => targets,
        }
    }

    /// How to choose among the targets (`priority` for direct names: config order).
    pub fn strategy(&self) -> Strategy {
        match self {
            Resolution::Route(route) => route.strategy,
            Resolution::Direct { .. } => Strategy::Priority,
        }
    }

    /// The route's latency objective (none for direct names).
    pub fn objective(&self) -> crate::config::Objective {
        match self {
            Resolution::Route(route) => route.objective,
            Resolution::Direct { .. } => crate::config::Objective::default(),
        }
    }

    /// Routes to fall back to, in order, when every target failed.
    pub fn fallbacks(&self) -> &[String] {
        match self {
            Resolution::Route(route) => &route.fallbacks,
            Resolution::Direct { .. } => &[],
        }
    }
}

/// Resolves model names against the config. Built once at start-up.
#[derive(Debug, Clone)]
pub struct ModelRouter {
    routes: HashMap<String, Route>,
    route_order: Vec<String>,
    providers: Vec<Arc<Provider>>,
}

impl ModelRouter {
    /// Indexes the config's routes and providers.
    pub fn new(config: &Config) -> Self {
        ModelRouter {
            routes: config
                .routes
                .iter()
                .map(|route| (route.name.clone(), route.clone()))
                .collect(),
            route_order: config
                .routes
                .iter()
                .map(|route| route.name.clone())
                .collect(),
            providers: config.providers.clone(),
        }
    }

    /// A configured route by name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.get(name)
    }

    /// The targets for `model`, or a 404 in OpenAI's shape.
    pub fn resolve<'a>(&'a self, model: &'a str) -> Result<Resolution<'a>, GatewayError> {
        if let Some(route) = self.routes.get(model) {
            return Ok(Resolution::Route(route));
        }
        if let Some((prefix, rest)) = model.split_once('/')
            && let Some(provider) = self.providers.iter().find(|p| p.name == prefix)
        {
            if rest.is_empty() {
                return Err(GatewayError::model_not_found(model));
            }
            return Ok(Resolution::Direct {
                name: model,
                targets: vec![Target::direct(Arc::clone(provider), rest.to_owned(), 0)],
            });
        }
        let targets: Vec<Target> = self
            .providers
            .iter()
            .filter(|provider| provider.serves(model))
            .zip(0u32..)
            .map(|(provider, position)| {
                Target::direct(Arc::clone(provider), model.to_owned(), position)
            })
            .collect();
        if targets.is_empty() {
            return Err(GatewayError::model_not_found(model));
        }
        Ok(Resolution::Direct {
            name: model,
            targets,
        })
    }

    /// What `GET /v1/models` lists: every route, then every exact model name a provider
    /// declares, as `provider/model`.
    pub fn list(&self) -> ModelList {
        let mut data: Vec<ModelInfo> = self
            .route_order
            .iter()
            .map(|name| ModelInfo {
                id: name.clone(),
                object: "model",
                created: 0,
                owned_by: "switchyard".to_owned(),
            })
            .collect();
        for provider in &self.providers {
            for model in provider.models.iter().filter(|m| !m.contains('*')) {
                data.push(ModelInfo {
                    id: format!("{}/{model}", provider.name),
                    object: "model",
                    created: 0,
                    owned_by: provider.name.clone(),
                });
            }
        }
        ModelList {
            object: "list",
            data,
        }
    }

    /// The configured providers.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{parse_toml, validate};

    fn router() -> ModelRouter {
        let text = r#"
[[providers]]
name = "openai"
kind = "openai"
api_key_env = "K"
[[providers]]
name = "anthropic"
kind = "anthropic"
api_key_env = "K"
[[providers]]
name = "backup"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
models = ["gpt-4o", "local-*"]
[[providers]]
name = "vllm"
kind = "openai"
base_url = "http://127.0.0.1:2/v1"
[[routes]]
model = "smart"
targets = [ { provider = "anthropic", model = "claude-sonnet-4-5" }, { provider = "openai", model = "gpt-4o" } ]
"#;
        let env: HashMap<String, String> = [("K".to_owned(), "k".to_owned())].into();
        ModelRouter::new(&validate(&parse_toml(text).unwrap(), &env).unwrap())
    }

    fn names(resolution: &Resolution<'_>) -> Vec<String> {
        resolution
            .targets()
            .iter()
            .map(|t| format!("{}:{}", t.provider.name, t.model))
            .collect()
    }

    #[test]
    fn routes_win() {
        let router = router();
        let resolved = router.resolve("smart").unwrap();
        assert_eq!(resolved.route_name(), "smart");
        assert_eq!(
            names(&resolved),
            ["anthropic:claude-sonnet-4-5", "openai:gpt-4o"]
        );
    }

    #[test]
    fn provider_prefix_goes_straight_there() {
        let router = router();
        let resolved = router.resolve("anthropic/claude-3-5-haiku-latest").unwrap();
        assert_eq!(names(&resolved), ["anthropic:claude-3-5-haiku-latest"]);
        // A slash whose prefix is not a provider is part of a bare model name.
        assert!(router.resolve("meta-llama/Llama-3").is_err());
        assert_eq!(router.resolve("openai/").unwrap_err().status(), 404);
    }

    #[test]
    fn bare_models_match_patterns_in_order() {
        let router = router();
        // `vllm` is `kind = "openai"` at its own URL: OpenAI's patterns are not its own.
        assert_eq!(
            names(&router.resolve("gpt-4o").unwrap()),
            ["openai:gpt-4o", "backup:gpt-4o"]
        );
        assert_eq!(
            names(&router.resolve("vllm/gpt-4o").unwrap()),
            ["vllm:gpt-4o"]
        );
        assert_eq!(
            names(&router.resolve("local-llama").unwrap()),
            ["backup:local-llama"]
        );
        let error = router.resolve("nope").unwrap_err();
        assert_eq!(error.status(), 404);
        assert_eq!(error.code.as_deref(), Some("model_not_found"));
    }

    #[test]
    fn listing_has_routes_and_exact_models() {
        let ids: Vec<String> = router().list().data.into_iter().map(|m| m.id).collect();
        assert_eq!(ids[0], "smart");
        assert!(ids.contains(&"backup/gpt-4o".to_owned()), "{ids:?}");
        assert!(ids.contains(&"openai/o1".to_owned()), "{ids:?}");
        assert!(!ids.iter().any(|id| id.contains('*')), "{ids:?}");
    }
}
