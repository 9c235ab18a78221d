//! Who is calling: the master key (a Worker secret) or a virtual key.
//!
//! Virtual keys live in the D1 table `keys`, with the columns of the native stores; the
//! secret's SHA-256 is kept as lowercase hex (`hash`), because D1 rows cross into JavaScript
//! where text is simpler than blobs. A presented `sk-sy-…` secret is hashed
//! ([`switchyard_core::keys::hash_secret`], as the native gateway does) and looked up by that
//! hash: the secret itself is never stored or compared. The master key is compared through
//! the digests of both sides, so the comparison's time tells nothing about the key.

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use switchyard_core::config::CacheScope;
use switchyard_core::error::{ErrorKind, GatewayError, Origin};
use switchyard_core::keys::{KeySettings, SECRET_PREFIX, Unusable, VirtualKey, hash_secret};

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The master key.
    Master,
    /// A virtual key.
    Key(Arc<VirtualKey>),
}

impl Principal {
    /// The label in analytics and per-key limits: `master`, or the virtual key's id.
    pub fn label(&self) -> &str {
        match self {
            Principal::Master => "master",
            Principal::Key(key) => &key.id,
        }
    }

    /// The tenant scope of cached answers, as the native gateway derives it.
    pub fn cache_scope(&self, scope: CacheScope) -> String {
        match (scope, self) {
            (CacheScope::Global, _) => "global".to_owned(),
            (CacheScope::Team, Principal::Key(key)) if key.settings.team.is_some() => {
                format!("team:{}", key.settings.team.as_deref().unwrap_or_default())
            }
            _ => format!("key:{}", self.label()),
        }
    }

    /// Whether it may call `/admin/*` (virtual keys may not).
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Master)
    }

    /// Whether it may call `route`.
    pub fn allows(&self, route: &str) -> bool {
        match self {
            Principal::Master => true,
            Principal::Key(key) => key.allows(route),
        }
    }
}

/// The secret a request presents: `Authorization: Bearer …`, else `x-api-key` (Anthropic
/// SDKs), trimmed; `None` when absent or empty.
pub fn presented<'a>(
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|value| {
        let value = value.trim();
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
    });
    bearer
        .or(x_api_key.map(str::trim))
        .filter(|secret| !secret.is_empty())
}

/// Whether `presented` is the master key, compared through digests.
pub fn is_master(presented: &str, master: &str) -> bool {
    let a: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(master.as_bytes()).into();
    // Digests of different secrets differ early or late at random: this leaks nothing.
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether a presented secret has the shape of a virtual key (only those are looked up).
pub fn is_virtual(presented: &str) -> bool {
    presented.starts_with(SECRET_PREFIX)
}

/// The lookup key of a presented secret: its SHA-256 in lowercase hex.
pub fn hash_hex(presented: &str) -> String {
    switchyard_core::cache::key::hex(&hash_secret(presented.as_bytes()))
}

/// A `keys` row as D1 returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyRow {
    /// `key_…`.
    pub id: String,
    /// SHA-256 of the secret, lowercase hex.
    pub hash: String,
    /// Display prefix.
    pub prefix: String,
    /// [`KeySettings`] as JSON.
    pub settings: String,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub updated_at_ms: i64,
    /// Unix ms, when revoked.
    pub revoked_at_ms: Option<i64>,
}

impl KeyRow {
    /// The key, or why the row cannot be used.
    pub fn into_key(self) -> Result<VirtualKey, String> {
        let mut hash = [0u8; 32];
        if self.hash.len() != 64 {
            return Err(format!(
                "key {}: its stored hash is not 64 hex digits",
                self.id
            ));
        }
        for (slot, pair) in hash.iter_mut().zip(self.hash.as_bytes().chunks(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| "hash is not text".to_owned())?;
            *slot = u8::from_str_radix(text, 16)
                .map_err(|_| format!("key {}: its stored hash is not hex", self.id))?;
        }
        let settings: KeySettings = serde_json::from_str(&self.settings).map_err(|error| {
            format!(
                "key {}: its stored settings are unreadable: {error}",
                self.id
            )
        })?;
        let ms = |value: i64| u64::try_from(value).unwrap_or(0);
        Ok(VirtualKey {
            id: self.id,
            hash,
            prefix: self.prefix,
            settings,
            created_at_ms: ms(self.created_at_ms),
            updated_at_ms: ms(self.updated_at_ms),
            revoked_at_ms: self.revoked_at_ms.map(ms),
        })
    }
}

/// The 401 for a missing, unknown or unusable key, in OpenAI's shape.
pub fn refused(why: Option<Unusable>) -> GatewayError {
    let message = match why {
        None => {
            "Invalid API key: pass the master key or a virtual key as `Authorization: Bearer <key>`"
        }
        Some(Unusable::Revoked) => "This API key was revoked",
        Some(Unusable::Disabled) => "This API key is disabled",
        Some(Unusable::Expired) => "This API key has expired",
    };
    GatewayError::new(ErrorKind::Authentication, Origin::Client, message)
        .with_code("invalid_api_key")
}

/// The 403 for a key calling a route it may not use.
pub fn forbidden_route(route: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::PermissionDenied,
        Origin::Client,
        format!("This API key may not call `{route}`"),
    )
    .with_param("model")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presented_secret_comes_from_bearer_or_x_api_key() {
        assert_eq!(presented(Some("Bearer  abc "), None), Some("abc"));
        assert_eq!(presented(None, Some("xyz")), Some("xyz"));
        assert_eq!(presented(Some("Basic abc"), None), None);
        assert_eq!(presented(Some("Bearer "), None), None);
    }

    #[test]
    fn the_master_key_matches_only_itself() {
        assert!(is_master("m-key", "m-key"));
        assert!(!is_master("m-kez", "m-key"));
        assert!(!is_master("", "m-key"));
    }

    #[test]
    fn a_row_round_trips_to_the_key_the_secret_hashes_to() {
        let secret = switchyard_core::keys::secret_from(&[7; 32]);
        assert!(is_virtual(&secret));
        let row = KeyRow {
            id: "key_1".into(),
            hash: hash_hex(&secret),
            prefix: "sk-sy-…".into(),
            settings: r#"{"name":"ci","team":"red","models":["chat*"]}"#.into(),
            created_at_ms: 1,
            updated_at_ms: 2,
            revoked_at_ms: None,
        };
        let key = row.into_key().unwrap();
        assert_eq!(key.hash, hash_secret(secret.as_bytes()));
        let principal = Principal::Key(Arc::new(key));
        assert_eq!(principal.label(), "key_1");
        assert_eq!(principal.cache_scope(CacheScope::Team), "team:red");
        assert!(principal.allows("chat-fast"));
        assert!(!principal.allows("other"));
        assert!(!principal.is_admin());
    }

    #[test]
    fn malformed_rows_are_errors_naming_the_key() {
        let row = KeyRow {
            id: "key_2".into(),
            hash: "zz".into(),
            prefix: String::new(),
            settings: "{}".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
            revoked_at_ms: None,
        };
        assert!(row.into_key().unwrap_err().contains("key_2"));
    }

    #[test]
    fn refusals_are_401_and_403() {
        assert_eq!(refused(None).status(), 401);
        assert_eq!(refused(Some(Unusable::Revoked)).status(), 401);
        assert_eq!(forbidden_route("x").status(), 403);
    }
}
