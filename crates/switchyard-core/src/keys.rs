//! Virtual keys: what a key is allowed to do, and how its secret is made, shown and stored.
//!
//! A key's secret is `sk-sy-` followed by 43 URL-safe base64 characters (32 random bytes
//! from the operating system's generator, passed in: this crate does no I/O). It is shown
//! once, when the key is created or rotated; only its SHA-256 is stored (a 256-bit random
//! secret needs no slow hash: there is nothing to brute-force), with a short display prefix
//! so people can tell their keys apart.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ratelimit::shed::Priority;

/// Every virtual key starts with this.
pub const SECRET_PREFIX: &str = "sk-sy-";

/// A new key's secret from 32 random bytes.
pub fn secret_from(random: &[u8; 32]) -> String {
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + 43);
    secret.push_str(SECRET_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(random, &mut secret);
    secret
}

/// What is stored of a secret.
pub fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// The part of a secret shown in listings: `sk-sy-AbCd…wXyZ`.
pub fn display_prefix(secret: &str) -> String {
    let head: String = secret.chars().take(SECRET_PREFIX.len() + 4).collect();
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}…{tail}")
}

/// What a key may do: the fields its owner sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    /// A name for people.
    pub name: String,
    /// Who it belongs to (free text: an email, a service).
    #[serde(default)]
    pub owner: Option<String>,
    /// The team it belongs to.
    #[serde(default)]
    pub team: Option<String>,
    /// Free labels, for analytics and filtering.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Routes or models it may call (`*` wildcards); empty: all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Its class for load shedding: `low`, `normal` (default) or `high`.
    #[serde(default)]
    pub priority: PriorityName,
    /// Its own limit of requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Its own limit of tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Its own spending budget, USD per `budget_period` (the `key-budget` budget).
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// The period of `budget_usd` (default monthly, in `budgets.timezone`).
    #[serde(default)]
    pub budget_period: Option<crate::budget::Period>,
    /// When it stops working (unix milliseconds).
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Whether it works now.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A priority class as written in the API and the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorityName {
    /// Shed first.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Shed last.
    High,
}

impl PriorityName {
    /// The limiter's class.
    pub fn priority(self) -> Priority {
        match self {
            PriorityName::Low => Priority::Low,
            PriorityName::Normal => Priority::Normal,
            PriorityName::High => Priority::High,
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PriorityName::Low => "low",
            PriorityName::Normal => "normal",
            PriorityName::High => "high",
        }
    }

    /// Reads the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "low" => PriorityName::Low,
            "normal" => PriorityName::Normal,
            "high" => PriorityName::High,
            _ => return None,
        })
    }
}

/// A virtual key as the gateway holds it (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualKey {
    /// Stable id (`key_…`), used in the admin API, analytics and limits.
    pub id: String,
    /// SHA-256 of the secret.
    #[serde(skip)]
    pub hash: [u8; 32],
    /// The secret's display form.
    pub prefix: String,
    /// What it may do.
    #[serde(flatten)]
    pub settings: KeySettings,
    /// When it was created (unix ms).
    pub created_at_ms: u64,
    /// When it last changed (unix ms).
    pub updated_at_ms: u64,
    /// When it was revoked (unix ms); a revoked key never works again.
    pub revoked_at_ms: Option<u64>,
}

/// Why a key does not work now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// Revoked.
    Revoked,
    /// Disabled by its owner.
    Disabled,
    /// Past its expiry.
    Expired,
}

impl VirtualKey {
    /// Whether it works at `now_ms`.
    pub fn check(&self, now_ms: u64) -> Result<(), Unusable> {
        if self.revoked_at_ms.is_some() {
            Err(Unusable::Revoked)
        } else if !self.settings.enabled {
            Err(Unusable::Disabled)
        } else if self.settings.expires_at_ms.is_some_and(|at| now_ms >= at) {
            Err(Unusable::Expired)
        } else {
            Ok(())
        }
    }

    /// Whether it may call `route` (a route name, `provider/model`, or a bare model).
    pub fn allows(&self, route: &str) -> bool {
        self.settings.models.is_empty()
            || self
                .settings
                .models
                .iter()
                .any(|pattern| crate::config::glob_match(pattern, route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(settings: KeySettings) -> VirtualKey {
        VirtualKey {
            id: "key_1".into(),
            hash: [0; 32],
            prefix: String::new(),
            settings,
            created_at_ms: 0,
            updated_at_ms: 0,
            revoked_at_ms: None,
        }
    }

    #[test]
    fn secrets_are_prefixed_high_entropy_and_hashed() {
        let secret = secret_from(&[7; 32]);
        assert!(secret.starts_with("sk-sy-"));
        assert_eq!(secret.len(), 6 + 43);
        assert_ne!(secret_from(&[8; 32]), secret);
        assert_eq!(
            hash_secret(secret.as_bytes()),
            hash_secret(secret.as_bytes())
        );
        assert_ne!(hash_secret(b"sk-sy-a"), hash_secret(b"sk-sy-b"));
        let shown = display_prefix(&secret);
        assert!(shown.starts_with("sk-sy-") && shown.contains('…'));
        assert!(
            shown.chars().count() < 20,
            "shows little of the secret: {shown}"
        );
    }

    #[test]
    fn revoked_disabled_and_expired_keys_do_not_work() {
        let mut k = key(KeySettings {
            enabled: true,
            expires_at_ms: Some(100),
            ..KeySettings::default()
        });
        assert_eq!(k.check(99), Ok(()));
        assert_eq!(k.check(100), Err(Unusable::Expired));
        k.settings.enabled = false;
        assert_eq!(k.check(0), Err(Unusable::Disabled));
        k.revoked_at_ms = Some(1);
        assert_eq!(k.check(0), Err(Unusable::Revoked));
    }

    #[test]
    fn model_allow_list() {
        let open = key(KeySettings::default());
        assert!(open.allows("anything"));
        let narrow = key(KeySettings {
            models: vec!["gpt-4o*".into(), "fast".into()],
            ..KeySettings::default()
        });
        assert!(narrow.allows("gpt-4o-mini") && narrow.allows("fast"));
        assert!(!narrow.allows("claude-sonnet-4-5"));
    }

    #[test]
    fn settings_read_from_json_with_defaults() {
        let settings: KeySettings =
            serde_json::from_str(r#"{"name":"ci","priority":"high","models":["fast"]}"#).unwrap();
        assert!(settings.enabled);
        assert_eq!(settings.priority.priority(), Priority::High);
        assert!(serde_json::from_str::<KeySettings>(r#"{"name":"x","bogus":1}"#).is_err());
    }
}
