//! Virtual keys: their store (SQLite in the data directory), the in-memory index the auth
//! stage reads (a lookup on the request path is a hash-map hit, never a query), and the
//! operations of the admin API and the CLI.
//!
//! Every write bumps a version number in the same transaction. Each gateway polls that number
//! every [`POLL`] and reloads the index when it moved, so a key created, changed or revoked
//! by another process on the same data directory (the CLI, another instance) takes effect
//! within that time; a write through this process's own admin API takes effect at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use subtle::ConstantTimeEq;
use switchyard_core::keys::{
    KeySettings, SECRET_PREFIX, Unusable, VirtualKey, display_prefix, hash_secret, secret_from,
};

/// How often the index checks the store for changes made elsewhere.
pub const POLL: Duration = Duration::from_millis(250);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS keys_version (one INTEGER PRIMARY KEY CHECK (one = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO keys_version VALUES (1, 0);
";

/// What went wrong with a key operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    /// No key has that id.
    #[error("there is no key with id `{0}`")]
    NotFound(String),
    /// The request was malformed.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error("key store: {0}")]
    Store(String),
}

fn store_error(what: &'static str) -> impl Fn(rusqlite::Error) -> KeyError {
    move |error| KeyError::Store(format!("{what}: {error}"))
}

/// The keys of one gateway.
pub struct Keys {
    connection: Mutex<Connection>,
    index: RwLock<Arc<Index>>,
    /// The store version the index was loaded at.
    version: Mutex<i64>,
}

#[derive(Default)]
struct Index {
    by_hash: HashMap<[u8; 32], Arc<VirtualKey>>,
    by_id: HashMap<String, Arc<VirtualKey>>,
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No such key.
    Unknown,
    /// A key that no longer works.
    Unusable(Unusable),
}

fn now_ms() -> u64 {
    crate::cache::unix_ms()
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|error| KeyError::Store(format!("no random numbers from the system: {error}")))?;
    Ok(bytes)
}

impl Keys {
    /// Opens (creating it if needed) `keys.db` in `data_dir`, or an in-memory store.
    pub fn open(data_dir: Option<&Path>) -> Result<Arc<Self>, KeyError> {
        let connection = match data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|error| {
                    KeyError::Store(format!("cannot create {}: {error}", dir.display()))
                })?;
                Connection::open(dir.join("keys.db"))
            }
            None => Connection::open_in_memory(),
        }
        .map_err(store_error("opening keys.db"))?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")
            .map_err(store_error("configuring keys.db"))?;
        connection
            .execute_batch(SCHEMA)
            .map_err(store_error("creating the keys table"))?;
        let keys = Arc::new(Keys {
            connection: Mutex::new(connection),
            index: RwLock::new(Arc::new(Index::default())),
            version: Mutex::new(-1),
        });
        keys.reload()?;
        Ok(keys)
    }

    /// The key a client presented, if it is one of ours and works at `now_ms`.
    pub fn authenticate(&self, presented: &[u8], now_ms: u64) -> Result<Arc<VirtualKey>, Refused> {
        let hash = hash_secret(presented);
        let index = Arc::clone(&self.index.read().unwrap_or_else(PoisonError::into_inner));
        let key = index.by_hash.get(&hash).ok_or(Refused::Unknown)?;
        // The map found it by hash; compare in constant time all the same.
        if !bool::from(key.hash.ct_eq(&hash)) {
            return Err(Refused::Unknown);
        }
        key.check(now_ms).map_err(Refused::Unusable)?;
        Ok(Arc::clone(key))
    }

    /// Whether `presented` looks like a virtual key.
    pub fn is_virtual(presented: &[u8]) -> bool {
        presented.starts_with(SECRET_PREFIX.as_bytes())
    }

    /// Every key, newest first.
    pub fn list(&self) -> Vec<Arc<VirtualKey>> {
        let index = Arc::clone(&self.index.read().unwrap_or_else(PoisonError::into_inner));
        let mut keys: Vec<Arc<VirtualKey>> = index.by_id.values().cloned().collect();
        keys.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
        keys
    }

    /// One key.
    pub fn get(&self, id: &str) -> Result<Arc<VirtualKey>, KeyError> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))
    }

    /// Creates a key; returns it and its secret (the only time the secret is seen).
    pub fn create(&self, settings: KeySettings) -> Result<(Arc<VirtualKey>, String), KeyError> {
        validate(&settings)?;
        let secret = secret_from(&random::<32>()?);
        let id = format!("key_{}", switchyard_core::cache::key::hex(&random::<8>()?));
        let now = now_ms();
        let key = VirtualKey {
            id,
            hash: hash_secret(secret.as_bytes()),
            prefix: display_prefix(&secret),
            settings,
            created_at_ms: now,
            updated_at_ms: now,
            revoked_at_ms: None,
        };
        self.write(|tx| {
            tx.execute(
                "INSERT INTO keys VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
                params![
                    key.id,
                    &key.hash[..],
                    key.prefix,
                    settings_json(&key.settings)?,
                    to_i64(now),
                    to_i64(now),
                ],
            )
            .map_err(store_error("inserting a key"))?;
            Ok(())
        })?;
        Ok((self.get(&key.id)?, secret))
    }

    /// Changes some settings of a key: `patch` is a JSON object of [`KeySettings`] fields
    /// (`null` clears an optional one).
    pub fn update(&self, id: &str, patch: &Value) -> Result<Arc<VirtualKey>, KeyError> {
        let Value::Object(patch) = patch else {
            return Err(KeyError::Invalid(
                "the body must be a JSON object".to_owned(),
            ));
        };
        let patch = patch.clone();
        self.write(|tx| {
            // Merged into the row as it is in the store now (another process may have changed
            // it since this one last loaded), inside the write transaction.
            let (stored, revoked) = stored_settings(tx, id)?;
            if revoked {
                return Err(KeyError::Invalid(format!("key `{id}` is revoked")));
            }
            let mut merged: Value = serde_json::from_str(&stored)
                .map_err(|error| KeyError::Store(format!("key `{id}`: {error}")))?;
            if let Value::Object(fields) = &mut merged {
                fields.extend(patch);
            }
            let settings: KeySettings = serde_json::from_value(merged)
                .map_err(|error| KeyError::Invalid(format!("invalid key settings: {error}")))?;
            validate(&settings)?;
            tx.execute(
                "UPDATE keys SET settings = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![id, settings_json(&settings)?, to_i64(now_ms())],
            )
            .map_err(store_error("updating a key"))?;
            Ok(())
        })?;
        self.get(id)
    }

    /// Revokes a key for good.
    pub fn revoke(&self, id: &str) -> Result<Arc<VirtualKey>, KeyError> {
        let now = to_i64(now_ms());
        self.write(|tx| {
            stored_settings(tx, id)?;
            tx.execute(
                "UPDATE keys SET revoked_at_ms = coalesce(revoked_at_ms, ?2), updated_at_ms = ?2 \
                 WHERE id = ?1",
                params![id, now],
            )
            .map_err(store_error("revoking a key"))?;
            Ok(())
        })?;
        self.get(id)
    }

    /// Gives a key a new secret (the old one stops working); returns the new secret.
    pub fn rotate(&self, id: &str) -> Result<(Arc<VirtualKey>, String), KeyError> {
        let secret = secret_from(&random::<32>()?);
        let hash = hash_secret(secret.as_bytes());
        let prefix = display_prefix(&secret);
        self.write(|tx| {
            if stored_settings(tx, id)?.1 {
                return Err(KeyError::Invalid(format!("key `{id}` is revoked")));
            }
            tx.execute(
                "UPDATE keys SET hash = ?2, prefix = ?3, updated_at_ms = ?4 WHERE id = ?1",
                params![id, &hash[..], prefix, to_i64(now_ms())],
            )
            .map_err(store_error("rotating a key"))?;
            Ok(())
        })?;
        Ok((self.get(id)?, secret))
    }

    /// Runs `change` and bumps the version in one transaction, then reloads the index.
    fn write(
        &self,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(), KeyError>,
    ) -> Result<(), KeyError> {
        {
            let mut connection = self
                .connection
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // IMMEDIATE: the write lock is taken before the row is read, so two writers (this
            // process and the CLI, say) cannot both read, merge and overwrite.
            let tx = connection
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(store_error("starting a key write"))?;
            change(&tx)?;
            tx.execute("UPDATE keys_version SET version = version + 1", [])
                .map_err(store_error("bumping the key version"))?;
            tx.commit().map_err(store_error("committing a key write"))?;
        }
        self.reload().map(|_| ())
    }

    /// Reloads the index if the store changed since the last load; returns whether it did.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let version: i64 = connection
            .query_row("SELECT version FROM keys_version", [], |row| row.get(0))
            .optional()
            .map_err(store_error("reading the key version"))?
            .unwrap_or(0);
        let mut loaded = self.version.lock().unwrap_or_else(PoisonError::into_inner);
        if *loaded == version {
            return Ok(false);
        }
        let mut statement = connection
            .prepare_cached(
                "SELECT id, hash, prefix, settings, created_at_ms, updated_at_ms, revoked_at_ms \
                 FROM keys",
            )
            .map_err(store_error("reading keys"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, Vec<u8>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                ))
            })
            .map_err(store_error("reading keys"))?;
        let mut index = Index::default();
        for row in rows {
            let (id, hash, prefix, settings, created, updated, revoked) =
                row.map_err(store_error("reading a key"))?;
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                tracing::warn!(id, "skipping a key whose stored hash is not 32 bytes");
                continue;
            };
            let settings: KeySettings = match serde_json::from_str(&settings) {
                Ok(settings) => settings,
                Err(error) => {
                    tracing::warn!(id, %error, "skipping a key whose stored settings are unreadable");
                    continue;
                }
            };
            let key = Arc::new(VirtualKey {
                id: id.clone(),
                hash,
                prefix,
                settings,
                created_at_ms: to_u64(created),
                updated_at_ms: to_u64(updated),
                revoked_at_ms: revoked.map(to_u64),
            });
            // A revoked key is kept for listing, but its secret no longer finds it.
            if key.revoked_at_ms.is_none() {
                index.by_hash.insert(hash, Arc::clone(&key));
            }
            index.by_id.insert(id, key);
        }
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
        *loaded = version;
        Ok(true)
    }
}

/// A key's stored settings (JSON) and whether it is revoked, read in `tx`.
fn stored_settings(tx: &rusqlite::Transaction<'_>, id: &str) -> Result<(String, bool), KeyError> {
    tx.query_row(
        "SELECT settings, revoked_at_ms IS NOT NULL FROM keys WHERE id = ?1",
        params![id],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
    )
    .optional()
    .map_err(store_error("reading a key"))?
    .ok_or_else(|| KeyError::NotFound(id.to_owned()))
}

fn validate(settings: &KeySettings) -> Result<(), KeyError> {
    if settings.name.trim().is_empty() {
        return Err(KeyError::Invalid("a key needs a name".to_owned()));
    }
    if settings.rpm == Some(0) || settings.tpm == Some(0) {
        return Err(KeyError::Invalid(
            "rpm and tpm must be at least 1 (leave them out for no limit of the key's own)"
                .to_owned(),
        ));
    }
    Ok(())
}

fn settings_json(settings: &KeySettings) -> Result<String, KeyError> {
    serde_json::to_string(settings).map_err(|error| KeyError::Store(error.to_string()))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(name: &str) -> KeySettings {
        KeySettings {
            name: name.to_owned(),
            enabled: true,
            ..KeySettings::default()
        }
    }

    #[test]
    fn a_created_key_authenticates_by_its_secret_only() {
        let keys = Keys::open(None).unwrap();
        let (key, secret) = keys.create(settings("ci")).unwrap();
        assert!(secret.starts_with("sk-sy-"));
        assert!(key.id.starts_with("key_"));
        let now = now_ms();
        assert_eq!(
            keys.authenticate(secret.as_bytes(), now).unwrap().id,
            key.id
        );
        assert_eq!(
            keys.authenticate(b"sk-sy-wrong", now).unwrap_err(),
            Refused::Unknown
        );
        // Only the hash is stored.
        let stored: Vec<u8> = keys
            .connection
            .lock()
            .unwrap()
            .query_row("SELECT hash FROM keys", [], |row| row.get(0))
            .unwrap();
        assert_eq!(stored, hash_secret(secret.as_bytes()).to_vec());
        let everything: String = keys
            .connection
            .lock()
            .unwrap()
            .query_row("SELECT id || prefix || settings FROM keys", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert!(
            !everything.contains(&secret[10..]),
            "no secret in the store"
        );
    }

    #[test]
    fn revoked_rotated_disabled_and_expired_keys_are_refused() {
        let keys = Keys::open(None).unwrap();
        let now = now_ms();
        let (key, secret) = keys.create(settings("a")).unwrap();
        let (_, rotated) = keys.rotate(&key.id).unwrap();
        assert_eq!(
            keys.authenticate(secret.as_bytes(), now).unwrap_err(),
            Refused::Unknown
        );
        assert!(keys.authenticate(rotated.as_bytes(), now).is_ok());
        keys.update(&key.id, &json!({"enabled": false})).unwrap();
        assert_eq!(
            keys.authenticate(rotated.as_bytes(), now).unwrap_err(),
            Refused::Unusable(Unusable::Disabled)
        );
        keys.update(&key.id, &json!({"enabled": true, "expires_at_ms": now - 1}))
            .unwrap();
        assert_eq!(
            keys.authenticate(rotated.as_bytes(), now).unwrap_err(),
            Refused::Unusable(Unusable::Expired)
        );
        keys.update(&key.id, &json!({"expires_at_ms": null}))
            .unwrap();
        assert!(keys.authenticate(rotated.as_bytes(), now).is_ok());
        let revoked = keys.revoke(&key.id).unwrap();
        assert!(revoked.revoked_at_ms.is_some());
        assert_eq!(
            keys.authenticate(rotated.as_bytes(), now).unwrap_err(),
            Refused::Unknown
        );
        assert!(keys.rotate(&key.id).is_err(), "a revoked key stays revoked");
        assert_eq!(keys.list().len(), 1, "still listed");
    }

    #[test]
    fn bad_settings_and_unknown_ids_are_errors() {
        let keys = Keys::open(None).unwrap();
        assert!(matches!(
            keys.create(settings(" ")),
            Err(KeyError::Invalid(_))
        ));
        let (key, _) = keys.create(settings("a")).unwrap();
        assert!(matches!(
            keys.update(&key.id, &json!({"bogus": 1})),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            keys.update(&key.id, &json!({"rpm": 0})),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            keys.update(&key.id, &json!([1])),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            keys.revoke("key_nope"),
            Err(KeyError::NotFound(_))
        ));
    }

    #[test]
    fn changes_merge_into_the_stored_row_not_a_stale_copy() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Keys::open(Some(dir.path())).unwrap();
        let (key, secret) = gateway.create(settings("shared")).unwrap();
        let cli = Keys::open(Some(dir.path())).unwrap();
        cli.update(&key.id, &json!({"enabled": false})).unwrap();
        // The gateway has not reloaded yet; its change must not undo the CLI's.
        let patched = gateway.update(&key.id, &json!({"rpm": 5})).unwrap();
        assert!(!patched.settings.enabled, "still disabled");
        assert_eq!(patched.settings.rpm, Some(5));
        assert!(gateway.authenticate(secret.as_bytes(), now_ms()).is_err());
        cli.revoke(&key.id).unwrap();
        assert!(gateway.rotate(&key.id).is_err(), "revoked elsewhere");
        assert!(gateway.update(&key.id, &json!({"enabled": true})).is_err());
    }

    #[test]
    fn another_process_on_the_same_directory_sees_changes_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Keys::open(Some(dir.path())).unwrap();
        let cli = Keys::open(Some(dir.path())).unwrap();
        let (key, secret) = cli.create(settings("from the cli")).unwrap();
        let now = now_ms();
        assert!(
            gateway.authenticate(secret.as_bytes(), now).is_err(),
            "not yet polled"
        );
        assert!(gateway.reload().unwrap());
        assert!(gateway.authenticate(secret.as_bytes(), now).is_ok());
        assert!(!gateway.reload().unwrap(), "nothing new");
        cli.revoke(&key.id).unwrap();
        assert!(gateway.reload().unwrap());
        assert!(gateway.authenticate(secret.as_bytes(), now).is_err());
    }
}
