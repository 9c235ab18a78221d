//! The Worker's configuration: the same TOML file as the native gateway, held in the
//! `SWITCHYARD_CONFIG_TOML` var (wrangler.toml `[vars]`), with the secrets it names
//! (`api_key_env`, `master_key_env`) read from the Worker's secrets and vars. Without that
//! var, providers are discovered from the API keys present, as `switchyard serve` does with
//! no config file.
//!
//! Validation is the core's pure pass, so a Worker config is checked exactly as a native one.
//! At the edge a master key is required: a Worker is reachable from the whole internet.

use switchyard_core::config::{self, Config, ConfigError, Env};

/// The var holding the TOML config.
pub const CONFIG_VAR: &str = "SWITCHYARD_CONFIG_TOML";

/// Builds the validated config from the TOML text (if any) and the Worker's environment.
pub fn load(toml: Option<&str>, env: &dyn Env) -> Result<Config, ConfigError> {
    let raw = match toml.map(str::trim).filter(|text| !text.is_empty()) {
        Some(text) => config::parse_toml(text)?,
        None => config::discover(env),
    };
    let config = config::validate(&raw, env)?;
    if config.server.master_key.is_none() {
        return Err(ConfigError {
            key: "server.master_key_env".to_owned(),
            message: format!(
                "the Worker needs a master key: set the secret with `npx wrangler secret put {}`",
                config::DEFAULT_MASTER_KEY_ENV
            ),
        });
    }
    if config.providers.is_empty() {
        return Err(ConfigError {
            key: "providers".to_owned(),
            message: format!(
                "no provider is configured: set {CONFIG_VAR} or a provider API key secret \
                 (e.g. `npx wrangler secret put OPENAI_API_KEY`)"
            ),
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const TOML: &str = r#"
[[providers]]
name = "alpha"
kind = "openai"
base_url = "http://127.0.0.1:9000/v1"
api_key_env = "ALPHA_KEY"
"#;

    #[test]
    fn a_toml_config_resolves_its_secrets_from_the_environment() {
        let config = load(
            Some(TOML),
            &env(&[("ALPHA_KEY", "k"), ("SWITCHYARD_MASTER_KEY", "m")]),
        )
        .unwrap();
        assert_eq!(config.providers[0].name, "alpha");
        assert_eq!(config.providers[0].api_key.as_ref().unwrap().expose(), "k");
    }

    #[test]
    fn no_master_key_is_an_error_naming_the_secret() {
        let error = load(Some(TOML), &env(&[("ALPHA_KEY", "k")])).unwrap_err();
        assert_eq!(error.key, "server.master_key_env");
        assert!(error.message.contains("wrangler secret put"));
    }

    #[test]
    fn without_a_config_providers_come_from_their_keys() {
        let config = load(
            None,
            &env(&[("OPENAI_API_KEY", "sk"), ("SWITCHYARD_MASTER_KEY", "m")]),
        )
        .unwrap();
        assert_eq!(config.providers.len(), 1);
        let error = load(Some("  "), &env(&[("SWITCHYARD_MASTER_KEY", "m")])).unwrap_err();
        assert_eq!(error.key, "providers");
    }

    #[test]
    fn a_bad_config_names_the_key() {
        let error = load(Some("[server]\nlisen = \"x\"\n"), &env(&[])).unwrap_err();
        assert!(error.to_string().contains("lisen"), "{error}");
    }
}
