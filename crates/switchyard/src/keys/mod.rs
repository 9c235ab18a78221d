//! Virtual keys: their store, the in-memory index the auth stage reads (a lookup on the
//! request path is a hash-map hit, never a query), and the operations of the admin API and
//! the CLI.
//!
//! # Layout
//! - this module: [`Keys`] (the index and the operations) and the rules every store
//!   follows: a change merges into the row as it is stored now, under the store's write lock,
//!   and a revoked key is neither changed nor rotated.
//! - `sqlite`: `keys.db` in the data directory (or in memory), for processes on one
//!   machine.
//! - `postgres`: `switchyard_keys` in Postgres, when `storage.postgres_url` is set, for
//!   instances on several machines.
//!
//! Every write bumps a version number in the same transaction. Each gateway polls that number
//! every [`POLL`] and reloads the index when it moved, so a key created, changed or revoked
//! by another process sharing the store (the CLI, another instance) takes effect within that
//! time; a write through this process's own admin API takes effect at once. While the store
//! cannot be reached, the index keeps serving the keys loaded last and writes fail.

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use switchyard_core::config::StorageConfig;
use switchyard_core::keys::{
    KeySettings, SECRET_PREFIX, Unusable, VirtualKey, display_prefix, hash_secret, secret_from,
};

use self::postgres::PostgresKeys;
use self::sqlite::SqliteKeys;

/// How often the index checks the store for changes made elsewhere.
pub const POLL: Duration = Duration::from_millis(250);

/// How often a reload that keeps failing is logged again as a warning (the poll runs four
/// times a second).
pub const WARN_AGAIN: Duration = Duration::from_secs(60);

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

/// The keys of one gateway.
pub struct Keys {
    /// Where the keys are kept.
    store: Store,
    /// What the auth stage reads: replaced whole on reload, never changed in place, so a
    /// lookup holds the lock only to clone an `Arc`.
    index: RwLock<Arc<Index>>,
    /// The store version the index was loaded at. An async lock, held through a whole reload
    /// (each store call is bounded in time), so that two reloads (the poll's and a write's)
    /// never install an older index over a newer one.
    loaded: tokio::sync::Mutex<i64>,
}

/// Where the keys are kept: chosen once, at start.
enum Store {
    /// `keys.db` (or SQLite in memory); its calls run on the blocking pool.
    Sqlite(Arc<SqliteKeys>),
    /// Shared Postgres.
    Postgres(Arc<PostgresKeys>),
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

/// A key's row as the stores keep it: settings as JSON text, times as signed integers.
#[derive(Debug, Clone)]
struct StoredKey {
    id: String,
    /// SHA-256 of the secret.
    hash: Vec<u8>,
    prefix: String,
    /// [`KeySettings`] as JSON: fields added to it later flow through unchanged.
    settings: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    revoked_at_ms: Option<i64>,
}

impl StoredKey {
    /// The key, or why the row cannot be used (written by hand, or by a newer version).
    fn into_key(self) -> Result<VirtualKey, String> {
        let hash = <[u8; 32]>::try_from(self.hash.as_slice())
            .map_err(|_| "its stored hash is not 32 bytes".to_owned())?;
        let settings: KeySettings = serde_json::from_str(&self.settings)
            .map_err(|error| format!("its stored settings are unreadable: {error}"))?;
        Ok(VirtualKey {
            id: self.id,
            hash,
            prefix: self.prefix,
            settings,
            created_at_ms: to_u64(self.created_at_ms),
            updated_at_ms: to_u64(self.updated_at_ms),
            revoked_at_ms: self.revoked_at_ms.map(to_u64),
        })
    }
}

/// One change, which a store applies in one transaction that also bumps the version, and
/// answers with the key's row as it is after the change.
#[derive(Debug, Clone)]
enum Write {
    /// A new key.
    Create(StoredKey),
    /// Settings fields to merge into the stored ones.
    Update {
        id: String,
        patch: Map<String, Value>,
        now_ms: i64,
    },
    /// Revoked for good (a key revoked twice keeps its first time).
    Revoke { id: String, now_ms: i64 },
    /// A new secret.
    Rotate {
        id: String,
        hash: [u8; 32],
        prefix: String,
        now_ms: i64,
    },
}

impl Write {
    /// The key it changes.
    fn id(&self) -> &str {
        match self {
            Write::Create(key) => &key.id,
            Write::Update { id, .. } | Write::Revoke { id, .. } | Write::Rotate { id, .. } => id,
        }
    }

    /// What it does, for error messages.
    fn what(&self) -> &'static str {
        match self {
            Write::Create(_) => "creating a key",
            Write::Update { .. } => "updating a key",
            Write::Revoke { .. } => "revoking a key",
            Write::Rotate { .. } => "rotating a key",
        }
    }
}

/// The settings (JSON) that `patch` makes of the `stored` ones, read under the write lock.
/// A revoked key cannot be changed.
fn patched(
    id: &str,
    stored: &str,
    revoked: bool,
    patch: &Map<String, Value>,
) -> Result<String, KeyError> {
    not_revoked(id, revoked)?;
    let mut merged: Value = serde_json::from_str(stored)
        .map_err(|error| KeyError::Store(format!("key `{id}`: {error}")))?;
    if let Value::Object(fields) = &mut merged {
        fields.extend(patch.clone());
    }
    let settings: KeySettings = serde_json::from_value(merged)
        .map_err(|error| KeyError::Invalid(format!("invalid key settings: {error}")))?;
    validate(&settings)?;
    settings_json(&settings)
}

/// Refuses a change to a revoked key (revoking is for good).
fn not_revoked(id: &str, revoked: bool) -> Result<(), KeyError> {
    if revoked {
        return Err(KeyError::Invalid(format!("key `{id}` is revoked")));
    }
    Ok(())
}

impl Store {
    /// The version, bumped by every write.
    async fn version(&self) -> Result<i64, KeyError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.version()).await
            }
            Store::Postgres(store) => store.version().await,
        }
    }

    /// Every key's row.
    async fn rows(&self) -> Result<Vec<StoredKey>, KeyError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.rows()).await
            }
            Store::Postgres(store) => store.rows().await,
        }
    }

    /// Applies `write` and bumps the version, in one transaction.
    async fn apply(&self, write: Write) -> Result<StoredKey, KeyError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.apply(&write)).await
            }
            Store::Postgres(store) => store.apply(&write).await,
        }
    }
}

/// Runs SQLite work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, KeyError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| KeyError::Store(format!("key store task failed: {error}")))?
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
    /// Blocking: call it at start-up or on the blocking pool.
    pub fn open(data_dir: Option<&Path>) -> Result<Arc<Self>, KeyError> {
        let store = SqliteKeys::open(data_dir)?;
        let version = store.version()?;
        let rows = store.rows()?;
        Ok(Self::loaded(Store::Sqlite(Arc::new(store)), version, rows))
    }

    /// Connects to Postgres at `url`, creates or migrates the tables, and loads the keys.
    pub async fn connect(url: &str) -> Result<Arc<Self>, KeyError> {
        let store = PostgresKeys::connect(url).await?;
        let version = store.version().await?;
        let rows = store.rows().await?;
        Ok(Self::loaded(
            Store::Postgres(Arc::new(store)),
            version,
            rows,
        ))
    }

    /// The configured store: Postgres when `storage.postgres_url` is set, else `keys.db` in
    /// the data directory (in memory without one).
    pub async fn open_storage(storage: &StorageConfig) -> Result<Arc<Self>, KeyError> {
        match &storage.postgres_url {
            Some(url) => Self::connect(url.expose()).await,
            None => {
                let dir = storage.data_dir.clone();
                blocking(move || Self::open(dir.as_deref())).await
            }
        }
    }

    fn loaded(store: Store, version: i64, rows: Vec<StoredKey>) -> Arc<Self> {
        let keys = Keys {
            store,
            index: RwLock::new(Arc::new(Index::default())),
            loaded: tokio::sync::Mutex::new(version),
        };
        keys.install(rows);
        Arc::new(keys)
    }

    /// `sqlite` or `postgres`.
    pub fn store_kind(&self) -> &'static str {
        match self.store {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// The key a client presented, if it is one of ours and works at `now_ms`.
    pub fn authenticate(&self, presented: &[u8], now_ms: u64) -> Result<Arc<VirtualKey>, Refused> {
        let hash = hash_secret(presented);
        let index = self.index();
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

    /// Every key, newest first, as loaded last.
    pub fn list(&self) -> Vec<Arc<VirtualKey>> {
        let index = self.index();
        let mut keys: Vec<Arc<VirtualKey>> = index.by_id.values().cloned().collect();
        keys.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
        keys
    }

    /// One key, as loaded last.
    pub fn get(&self, id: &str) -> Result<Arc<VirtualKey>, KeyError> {
        self.index()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))
    }

    fn index(&self) -> Arc<Index> {
        // The lock guards only an `Arc` swap: a panic cannot leave it half-done.
        Arc::clone(&self.index.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Creates a key; returns it and its secret (the only time the secret is seen).
    pub async fn create(
        &self,
        settings: KeySettings,
    ) -> Result<(Arc<VirtualKey>, String), KeyError> {
        validate(&settings)?;
        let secret = secret_from(&random::<32>()?);
        let id = format!("key_{}", switchyard_core::cache::key::hex(&random::<8>()?));
        let now = to_i64(now_ms());
        let row = StoredKey {
            id,
            hash: hash_secret(secret.as_bytes()).to_vec(),
            prefix: display_prefix(&secret),
            settings: settings_json(&settings)?,
            created_at_ms: now,
            updated_at_ms: now,
            revoked_at_ms: None,
        };
        Ok((self.write(Write::Create(row)).await?, secret))
    }

    /// Changes some settings of a key: `patch` is a JSON object of [`KeySettings`] fields
    /// (`null` clears an optional one), merged into the row as it is in the store now
    /// (another process may have changed it since this one last loaded).
    pub async fn update(&self, id: &str, patch: &Value) -> Result<Arc<VirtualKey>, KeyError> {
        let Value::Object(patch) = patch else {
            return Err(KeyError::Invalid(
                "the body must be a JSON object".to_owned(),
            ));
        };
        self.write(Write::Update {
            id: id.to_owned(),
            patch: patch.clone(),
            now_ms: to_i64(now_ms()),
        })
        .await
    }

    /// Revokes a key for good.
    pub async fn revoke(&self, id: &str) -> Result<Arc<VirtualKey>, KeyError> {
        self.write(Write::Revoke {
            id: id.to_owned(),
            now_ms: to_i64(now_ms()),
        })
        .await
    }

    /// Gives a key a new secret (the old one stops working); returns the new secret. A
    /// revoked key cannot be rotated.
    pub async fn rotate(&self, id: &str) -> Result<(Arc<VirtualKey>, String), KeyError> {
        let secret = secret_from(&random::<32>()?);
        let write = Write::Rotate {
            id: id.to_owned(),
            hash: hash_secret(secret.as_bytes()),
            prefix: display_prefix(&secret),
            now_ms: to_i64(now_ms()),
        };
        Ok((self.write(write).await?, secret))
    }

    /// Applies `write` in the store, then reloads the index so the change takes effect here
    /// at once. Answers the key as the transaction left it.
    async fn write(&self, write: Write) -> Result<Arc<VirtualKey>, KeyError> {
        let row = self.store.apply(write).await?;
        let key = Arc::new(row.into_key().map_err(KeyError::Store)?);
        // The change is saved: if the store went away just now, the poll reloads later, and
        // the caller must not be told that it failed.
        if let Err(error) = self.reload().await {
            tracing::warn!(
                %error,
                id = key.id,
                "a key change was saved but the keys could not be reloaded yet"
            );
        }
        Ok(key)
    }

    /// Reloads the index if the store changed since the last load; returns whether it did.
    /// On failure the index keeps the keys loaded last.
    pub async fn reload(&self) -> Result<bool, KeyError> {
        let mut loaded = self.loaded.lock().await;
        let version = self.store.version().await?;
        if *loaded == version {
            return Ok(false);
        }
        // Read after the version: the rows are at least that new (if newer, the next poll
        // reloads once more).
        let rows = self.store.rows().await?;
        self.install(rows);
        *loaded = version;
        Ok(true)
    }

    /// Replaces the index with one built from `rows`.
    fn install(&self, rows: Vec<StoredKey>) {
        let mut index = Index::default();
        for row in rows {
            let id = row.id.clone();
            let key = match row.into_key() {
                Ok(key) => Arc::new(key),
                Err(reason) => {
                    tracing::warn!(id, reason, "skipping a stored key");
                    continue;
                }
            };
            // A revoked key is kept for listing, but its secret no longer finds it.
            if key.revoked_at_ms.is_none() {
                index.by_hash.insert(key.hash, Arc::clone(&key));
            }
            index.by_id.insert(id, key);
        }
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(index);
    }
}

/// Which failed reloads are worth a warning: the first of a run of failures, then one every
/// [`WARN_AGAIN`] while it lasts (not four a second); and how long a run lasted once over.
#[derive(Debug, Default)]
pub struct ReloadFailures {
    /// When the current run of failures began.
    since: Option<Instant>,
    /// When it was last warned about.
    warned_at: Option<Instant>,
}

impl ReloadFailures {
    /// A reload failed at `now`: `Some(how long reloads have been failing)` when this one
    /// is to be logged as a warning.
    pub fn failed(&mut self, now: Instant) -> Option<Duration> {
        let since = *self.since.get_or_insert(now);
        if self
            .warned_at
            .is_some_and(|warned| now.saturating_duration_since(warned) < WARN_AGAIN)
        {
            return None;
        }
        self.warned_at = Some(now);
        Some(now.saturating_duration_since(since))
    }

    /// A reload succeeded at `now`: how long reloads had been failing, if they had.
    pub fn succeeded(&mut self, now: Instant) -> Option<Duration> {
        self.warned_at = None;
        self.since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }
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
    if settings
        .budget_usd
        .is_some_and(|usd| !usd.is_finite() || usd < 0.0)
    {
        return Err(KeyError::Invalid(
            "budget_usd must be a non-negative number of US dollars".to_owned(),
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

    #[tokio::test]
    async fn a_created_key_authenticates_by_its_secret_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::open(Some(dir.path())).unwrap();
        let (key, secret) = keys.create(settings("ci")).await.unwrap();
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
        let stored = rusqlite::Connection::open(dir.path().join("keys.db")).unwrap();
        let hash: Vec<u8> = stored
            .query_row("SELECT hash FROM keys", [], |row| row.get(0))
            .unwrap();
        assert_eq!(hash, hash_secret(secret.as_bytes()).to_vec());
        let everything: String = stored
            .query_row("SELECT id || prefix || settings FROM keys", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert!(
            !everything.contains(&secret[10..]),
            "no secret in the store"
        );
    }

    #[tokio::test]
    async fn revoked_rotated_disabled_and_expired_keys_are_refused() {
        let keys = Keys::open(None).unwrap();
        let now = now_ms();
        let (key, secret) = keys.create(settings("a")).await.unwrap();
        let (_, rotated) = keys.rotate(&key.id).await.unwrap();
        assert_eq!(
            keys.authenticate(secret.as_bytes(), now).unwrap_err(),
            Refused::Unknown
        );
        assert!(keys.authenticate(rotated.as_bytes(), now).is_ok());
        keys.update(&key.id, &json!({"enabled": false}))
            .await
            .unwrap();
        assert_eq!(
            keys.authenticate(rotated.as_bytes(), now).unwrap_err(),
            Refused::Unusable(Unusable::Disabled)
        );
        keys.update(&key.id, &json!({"enabled": true, "expires_at_ms": now - 1}))
            .await
            .unwrap();
        assert_eq!(
            keys.authenticate(rotated.as_bytes(), now).unwrap_err(),
            Refused::Unusable(Unusable::Expired)
        );
        keys.update(&key.id, &json!({"expires_at_ms": null}))
            .await
            .unwrap();
        assert!(keys.authenticate(rotated.as_bytes(), now).is_ok());
        let revoked = keys.revoke(&key.id).await.unwrap();
        assert!(revoked.revoked_at_ms.is_some());
        assert_eq!(
            keys.authenticate(rotated.as_bytes(), now).unwrap_err(),
            Refused::Unknown
        );
        assert!(
            keys.rotate(&key.id).await.is_err(),
            "a revoked key stays revoked"
        );
        let again = keys.revoke(&key.id).await.unwrap();
        assert_eq!(
            again.revoked_at_ms, revoked.revoked_at_ms,
            "revoked at its first time"
        );
        assert_eq!(keys.list().len(), 1, "still listed");
    }

    #[tokio::test]
    async fn bad_settings_and_unknown_ids_are_errors() {
        let keys = Keys::open(None).unwrap();
        assert!(matches!(
            keys.create(settings(" ")).await,
            Err(KeyError::Invalid(_))
        ));
        let (key, _) = keys.create(settings("a")).await.unwrap();
        for patch in [json!({"bogus": 1}), json!({"rpm": 0}), json!([1])] {
            assert!(
                matches!(
                    keys.update(&key.id, &patch).await,
                    Err(KeyError::Invalid(_))
                ),
                "{patch}"
            );
        }
        assert!(matches!(
            keys.revoke("key_nope").await,
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            keys.rotate("key_nope").await,
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(keys.get("key_nope"), Err(KeyError::NotFound(_))));
    }

    #[tokio::test]
    async fn changes_merge_into_the_stored_row_not_a_stale_copy() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Keys::open(Some(dir.path())).unwrap();
        let (key, secret) = gateway.create(settings("shared")).await.unwrap();
        let cli = Keys::open(Some(dir.path())).unwrap();
        cli.update(&key.id, &json!({"enabled": false}))
            .await
            .unwrap();
        // The gateway has not reloaded yet; its change must not undo the CLI's.
        let patched = gateway.update(&key.id, &json!({"rpm": 5})).await.unwrap();
        assert!(!patched.settings.enabled, "still disabled");
        assert_eq!(patched.settings.rpm, Some(5));
        assert!(gateway.authenticate(secret.as_bytes(), now_ms()).is_err());
        cli.revoke(&key.id).await.unwrap();
        assert!(gateway.rotate(&key.id).await.is_err(), "revoked elsewhere");
        assert!(
            gateway
                .update(&key.id, &json!({"enabled": true}))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn another_process_on_the_same_directory_sees_changes_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = Keys::open(Some(dir.path())).unwrap();
        let cli = Keys::open(Some(dir.path())).unwrap();
        let (key, secret) = cli.create(settings("from the cli")).await.unwrap();
        let now = now_ms();
        assert!(
            gateway.authenticate(secret.as_bytes(), now).is_err(),
            "not yet polled"
        );
        assert!(gateway.reload().await.unwrap());
        assert!(gateway.authenticate(secret.as_bytes(), now).is_ok());
        assert!(!gateway.reload().await.unwrap(), "nothing new");
        cli.revoke(&key.id).await.unwrap();
        assert!(gateway.reload().await.unwrap());
        assert!(gateway.authenticate(secret.as_bytes(), now).is_err());
    }

    #[tokio::test]
    async fn the_configured_store_is_sqlite_without_a_postgres_url() {
        let storage = StorageConfig {
            data_dir: None,
            postgres_url: None,
            redis_url: None,
        };
        let keys = Keys::open_storage(&storage).await.unwrap();
        assert_eq!(keys.store_kind(), "sqlite");
        assert!(keys.list().is_empty());
    }

    #[test]
    fn an_unreadable_row_is_skipped_not_fatal() {
        let row = StoredKey {
            id: "key_x".to_owned(),
            hash: vec![0; 32],
            prefix: "sk-sy-…".to_owned(),
            settings: r#"{"name":"x"}"#.to_owned(),
            created_at_ms: 1,
            updated_at_ms: 2,
            revoked_at_ms: None,
        };
        assert_eq!(row.clone().into_key().unwrap().settings.name, "x");
        let short = StoredKey {
            hash: vec![0; 31],
            ..row.clone()
        };
        assert!(short.into_key().unwrap_err().contains("32 bytes"));
        let unreadable = StoredKey {
            settings: "{".to_owned(),
            ..row
        };
        assert!(unreadable.into_key().unwrap_err().contains("unreadable"));
    }

    #[test]
    fn a_patch_merges_over_the_stored_fields_and_never_revives_a_revoked_key() {
        let stored = settings_json(&KeySettings {
            team: Some("a".to_owned()),
            rpm: Some(5),
            ..settings("n")
        })
        .unwrap();
        let patch = |value: Value| match value {
            Value::Object(fields) => fields,
            _ => unreachable!(),
        };
        let merged: KeySettings = serde_json::from_str(
            &patched(
                "key_1",
                &stored,
                false,
                &patch(json!({"rpm": null, "tpm": 9})),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(merged.team.as_deref(), Some("a"), "untouched fields stay");
        assert_eq!((merged.rpm, merged.tpm), (None, Some(9)));
        assert!(matches!(
            patched("key_1", &stored, true, &patch(json!({"tpm": 9}))),
            Err(KeyError::Invalid(message)) if message.contains("revoked")
        ));
        assert!(matches!(
            patched("key_1", &stored, false, &patch(json!({"name": ""}))),
            Err(KeyError::Invalid(_))
        ));
    }

    #[test]
    fn a_run_of_failed_reloads_warns_once_then_once_a_minute() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut failures = ReloadFailures::default();
        assert_eq!(failures.succeeded(at(0)), None, "nothing was failing");
        assert_eq!(failures.failed(at(0)), Some(Duration::ZERO));
        for tick in 1..240 {
            assert_eq!(failures.failed(at(tick * 250)), None, "tick {tick}");
        }
        assert_eq!(
            failures.failed(at(60_000)),
            Some(Duration::from_secs(60)),
            "a minute on: warned again, with how long it has lasted"
        );
        assert_eq!(failures.failed(at(60_250)), None);
        assert_eq!(
            failures.succeeded(at(61_000)),
            Some(Duration::from_secs(61))
        );
        assert_eq!(
            failures.failed(at(62_000)),
            Some(Duration::ZERO),
            "a new run warns at once"
        );
    }
}
