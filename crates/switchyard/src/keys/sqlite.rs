//! `keys.db`: the keys in SQLite, in the data directory (or in memory), shared by the
//! processes of one machine (a gateway, the CLI). Every call blocks; `Keys` runs them on the
//! blocking pool.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{KeyError, StoredKey, Write, not_revoked, patched};

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

const COLUMNS: &str = "id, hash, prefix, settings, created_at_ms, updated_at_ms, revoked_at_ms";

fn store_error(what: &'static str) -> impl Fn(rusqlite::Error) -> KeyError {
    move |error| KeyError::Store(format!("{what}: {error}"))
}

/// The SQLite key store.
pub(super) struct SqliteKeys {
    /// One connection: calls are rare (a poll, an admin write) and short. A std mutex, as
    /// calls run on the blocking pool; SQLite's own lock orders writers across processes.
    connection: Mutex<Connection>,
}

impl SqliteKeys {
    /// Opens (creating it if needed) `keys.db` in `data_dir`, or an in-memory store.
    pub(super) fn open(data_dir: Option<&Path>) -> Result<Self, KeyError> {
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
        Ok(SqliteKeys {
            connection: Mutex::new(connection),
        })
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-call leaves at worst an open transaction, rolled back when dropped.
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn version(&self) -> Result<i64, KeyError> {
        Ok(self
            .connection()
            .query_row("SELECT version FROM keys_version", [], |row| row.get(0))
            .optional()
            .map_err(store_error("reading the key version"))?
            .unwrap_or(0))
    }

    pub(super) fn rows(&self) -> Result<Vec<StoredKey>, KeyError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare_cached(&format!("SELECT {COLUMNS} FROM keys"))
            .map_err(store_error("reading keys"))?;
        statement
            .query_map([], stored_key)
            .map_err(store_error("reading keys"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(store_error("reading a key"))
    }

    /// Applies `write` and bumps the version in one transaction.
    pub(super) fn apply(&self, write: &Write) -> Result<StoredKey, KeyError> {
        let mut connection = self.connection();
        // IMMEDIATE: the write lock is taken before the row is read, so two writers (this
        // process and the CLI, say) cannot both read, merge and overwrite.
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(store_error("starting a key write"))?;
        match write {
            Write::Create(key) => {
                tx.execute(
                    &format!("INSERT INTO keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)"),
                    params![
                        key.id,
                        key.hash,
                        key.prefix,
                        key.settings,
                        key.created_at_ms,
                        key.updated_at_ms,
                    ],
                )
                .map_err(store_error("inserting a key"))?;
            }
            Write::Update { id, patch, now_ms } => {
                let (stored, revoked) = stored_settings(&tx, id)?;
                let settings = patched(id, &stored, revoked, patch)?;
                tx.execute(
                    "UPDATE keys SET settings = ?2, updated_at_ms = ?3 WHERE id = ?1",
                    params![id, settings, now_ms],
                )
                .map_err(store_error("updating a key"))?;
            }
            Write::Revoke { id, now_ms } => {
                stored_settings(&tx, id)?;
                tx.execute(
                    "UPDATE keys SET revoked_at_ms = coalesce(revoked_at_ms, ?2), \
                     updated_at_ms = ?2 WHERE id = ?1",
                    params![id, now_ms],
                )
                .map_err(store_error("revoking a key"))?;
            }
            Write::Rotate {
                id,
                hash,
                prefix,
                now_ms,
            } => {
                not_revoked(id, stored_settings(&tx, id)?.1)?;
                tx.execute(
                    "UPDATE keys SET hash = ?2, prefix = ?3, updated_at_ms = ?4 WHERE id = ?1",
                    params![id, &hash[..], prefix, now_ms],
                )
                .map_err(store_error("rotating a key"))?;
            }
        }
        tx.execute("UPDATE keys_version SET version = version + 1", [])
            .map_err(store_error("bumping the key version"))?;
        let row = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM keys WHERE id = ?1"),
                params![write.id()],
                stored_key,
            )
            .map_err(store_error("reading the key back"))?;
        tx.commit().map_err(store_error("committing a key write"))?;
        Ok(row)
    }
}

fn stored_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        id: row.get(0)?,
        hash: row.get(1)?,
        prefix: row.get(2)?,
        settings: row.get(3)?,
        created_at_ms: row.get(4)?,
        updated_at_ms: row.get(5)?,
        revoked_at_ms: row.get(6)?,
    })
}

/// A key's stored settings (JSON) and whether it is revoked, read in `tx`.
fn stored_settings(tx: &Transaction<'_>, id: &str) -> Result<(String, bool), KeyError> {
    tx.query_row(
        "SELECT settings, revoked_at_ms IS NOT NULL FROM keys WHERE id = ?1",
        params![id],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
    )
    .optional()
    .map_err(store_error("reading a key"))?
    .ok_or_else(|| KeyError::NotFound(id.to_owned()))
}
