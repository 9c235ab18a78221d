//! The keys in Postgres, for gateways scaled out over several machines: the same table as
//! `keys.db`, prefixed because the database may be shared with other applications
//! (`switchyard_keys`, and `switchyard_keys_version`, whose one row every write bumps in its
//! transaction).
//!
//! **Migrations** run at connect (and on every reconnect of the writer, which is cheap):
//! versions are recorded in `switchyard_keys_migrations` (apart from the analytics store's,
//! so each store's versions are its own), and the missing ones are applied in one transaction
//! that first takes a transaction-scoped advisory lock, so instances starting together apply
//! each once.
//!
//! **Writes** lock the key's row (`SELECT … FOR UPDATE`) before reading it, so a change
//! merges into the row as another instance may just have left it, never into a stale copy;
//! the version row, bumped last, orders all writes.
//!
//! **Connections**: a writer (write transactions, one at a time) and a reader (the poll and
//! the loads, so a poll never waits behind a write that waits on another instance's row
//! lock). Each call, connecting included, gets [`CALL_TIMEOUT`]: an unreachable or hung
//! Postgres makes calls fail, never hang. A call that failed on its connection or timed out
//! drops it, and the next call connects again, so a Postgres restart needs no gateway
//! restart. Errors name what was being done, never the URL, and any password the URL
//! carries is scrubbed from them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, Config, NoTls, Row, Statement, Transaction};

use super::{KeyError, StoredKey, Write, not_revoked, patched};
use crate::postgres::{Migrations, connection_config, describe};

const STORE: &str = "postgres";

/// The longest one call (connecting, a poll, a load, a write) may take. It is also the
/// connect timeout when the URL sets none.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// First key of the migration's advisory lock (the analytics store uses `0x5357_0001` and
/// `…02`); the second is a hash of the schema, so deployments in other schemas of one
/// database do not wait on each other.
const MIGRATION_LOCK: i32 = 0x5357_0003;

/// The schema, in order; a version is never edited once released, only added after.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "
CREATE TABLE IF NOT EXISTS switchyard_keys (
    id TEXT PRIMARY KEY,
    hash BYTEA NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
CREATE TABLE IF NOT EXISTS switchyard_keys_version (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    version BIGINT NOT NULL
);
INSERT INTO switchyard_keys_version VALUES (1, 0) ON CONFLICT DO NOTHING;
",
)];

const COLUMNS: &str = "id, hash, prefix, settings, created_at_ms, updated_at_ms, revoked_at_ms";

const SELECT_VERSION: &str = "SELECT version FROM switchyard_keys_version";

/// The Postgres key store.
pub(super) struct PostgresKeys {
    config: Config,
    /// The URL's password, scrubbed from every message.
    secret: Option<Arc<str>>,
    /// Polls and loads.
    reader: Mutex<Option<Arc<Reader>>>,
    /// Write transactions; held for the length of one.
    writer: Mutex<Option<Client>>,
}

/// The reader connection with its two statements.
struct Reader {
    client: Client,
    version: Statement,
    rows: Statement,
}

/// Which connection a call uses (and drops when the call times out).
#[derive(Clone, Copy)]
enum Role {
    Reader,
    Writer,
}

impl PostgresKeys {
    /// Connects to `url` (`postgres://user:password@host:port/dbname?options`, any option
    /// tokio-postgres takes, e.g. `options=-csearch_path%3Dkeys` for another schema), and
    /// brings the schema up to date.
    pub(super) async fn connect(url: &str) -> Result<PostgresKeys, KeyError> {
        let (config, secret) = connection_config(url, CALL_TIMEOUT)
            .map_err(|message| KeyError::Store(format!("{STORE}: {message}")))?;
        let store = PostgresKeys {
            config,
            secret,
            reader: Mutex::new(None),
            writer: Mutex::new(None),
        };
        store
            .bounded(Role::Writer, "connecting", async {
                store.writer().await.map(drop)
            })
            .await?;
        store
            .bounded(Role::Reader, "connecting", async {
                store.reader().await.map(drop)
            })
            .await?;
        Ok(store)
    }

    /// The version, bumped by every write.
    pub(super) async fn version(&self) -> Result<i64, KeyError> {
        const WHAT: &str = "reading the key version";
        self.bounded(Role::Reader, WHAT, async {
            let reader = self.reader().await?;
            let result = reader
                .client
                .query_one(&reader.version, &[])
                .await
                .and_then(|row| row.try_get(0));
            self.read_result(&reader, result, WHAT).await
        })
        .await
    }

    /// Every key's row.
    pub(super) async fn rows(&self) -> Result<Vec<StoredKey>, KeyError> {
        const WHAT: &str = "reading the keys";
        self.bounded(Role::Reader, WHAT, async {
            let reader = self.reader().await?;
            let result = match reader.client.query(&reader.rows, &[]).await {
                Ok(rows) => rows.iter().map(stored_key).collect(),
                Err(error) => Err(error),
            };
            self.read_result(&reader, result, WHAT).await
        })
        .await
    }

    /// Applies `write` and bumps the version in one transaction.
    pub(super) async fn apply(&self, write: &Write) -> Result<StoredKey, KeyError> {
        self.bounded(Role::Writer, write.what(), async {
            let mut slot = self.writer().await?;
            let Some(client) = slot.as_mut() else {
                return Err(KeyError::Store(format!(
                    "{STORE}: the writer connection is missing"
                )));
            };
            let result = self.transact(client, write).await;
            if matches!(result, Err(KeyError::Store(_))) {
                // Whatever went wrong, the next write starts on a fresh connection.
                *slot = None;
            }
            result
        })
        .await
    }

    async fn transact(&self, client: &mut Client, write: &Write) -> Result<StoredKey, KeyError> {
        let tx = client
            .transaction()
            .await
            .map_err(self.failed("starting a key write"))?;
        match write {
            Write::Create(key) => {
                tx.execute(
                    &format!(
                        "INSERT INTO switchyard_keys ({COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, NULL)"
                    ),
                    &[
                        &key.id,
                        &key.hash,
                        &key.prefix,
                        &key.settings,
                        &key.created_at_ms,
                        &key.updated_at_ms,
                    ],
                )
                .await
                .map_err(self.failed("inserting a key"))?;
            }
            Write::Update { id, patch, now_ms } => {
                let (stored, revoked) = self.locked(&tx, id).await?;
                let settings = patched(id, &stored, revoked, patch)?;
                tx.execute(
                    "UPDATE switchyard_keys SET settings = $2, updated_at_ms = $3 WHERE id = $1",
                    &[id, &settings, now_ms],
                )
                .await
                .map_err(self.failed("updating a key"))?;
            }
            Write::Revoke { id, now_ms } => {
                self.locked(&tx, id).await?;
                tx.execute(
                    "UPDATE switchyard_keys SET revoked_at_ms = coalesce(revoked_at_ms, $2), \
                     updated_at_ms = $2 WHERE id = $1",
                    &[id, now_ms],
                )
                .await
                .map_err(self.failed("revoking a key"))?;
            }
            Write::Rotate {
                id,
                hash,
                prefix,
                now_ms,
            } => {
                not_revoked(id, self.locked(&tx, id).await?.1)?;
                tx.execute(
                    "UPDATE switchyard_keys SET hash = $2, prefix = $3, updated_at_ms = $4 \
                     WHERE id = $1",
                    &[id, &&hash[..], prefix, now_ms],
                )
                .await
                .map_err(self.failed("rotating a key"))?;
            }
        }
        tx.execute(
            "UPDATE switchyard_keys_version SET version = version + 1",
            &[],
        )
        .await
        .map_err(self.failed("bumping the key version"))?;
        let row = tx
            .query_one(
                &format!("SELECT {COLUMNS} FROM switchyard_keys WHERE id = $1"),
                &[&write.id()],
            )
            .await
            .and_then(|row| stored_key(&row))
            .map_err(self.failed("reading the key back"))?;
        tx.commit()
            .await
            .map_err(self.failed("committing a key write"))?;
        Ok(row)
    }

    /// A key's stored settings (JSON) and whether it is revoked, its row locked until `tx`
    /// ends: a concurrent writer of the same key waits, then reads what this one wrote.
    async fn locked(&self, tx: &Transaction<'_>, id: &str) -> Result<(String, bool), KeyError> {
        let row = tx
            .query_opt(
                "SELECT settings, revoked_at_ms IS NOT NULL FROM switchyard_keys \
                 WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(self.failed("reading a key"))?
            .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
        Ok((
            row.try_get(0).map_err(self.failed("reading a key"))?,
            row.try_get(1).map_err(self.failed("reading a key"))?,
        ))
    }

    /// Runs `call` for at most [`CALL_TIMEOUT`]. A connection that stopped answering may
    /// never answer again, so on a timeout the next call of that `role` connects anew.
    async fn bounded<T>(
        &self,
        role: Role,
        what: &str,
        call: impl Future<Output = Result<T, KeyError>>,
    ) -> Result<T, KeyError> {
        if let Ok(result) = tokio::time::timeout(CALL_TIMEOUT, call).await {
            return result;
        }
        // The call's guards were dropped with it; a busy slot is another call's, which is
        // itself bounded and drops a hung connection when it times out.
        match role {
            Role::Reader => {
                if let Ok(mut slot) = self.reader.try_lock() {
                    *slot = None;
                }
            }
            Role::Writer => {
                if let Ok(mut slot) = self.writer.try_lock() {
                    *slot = None;
                }
            }
        }
        Err(KeyError::Store(format!(
            "{STORE}: {what}: no answer within {} s",
            CALL_TIMEOUT.as_secs()
        )))
    }

    /// A read's outcome; a failed read drops its connection (the next read connects and
    /// prepares again, which also recovers from tables recreated under prepared statements).
    async fn read_result<T>(
        &self,
        reader: &Arc<Reader>,
        result: Result<T, tokio_postgres::Error>,
        what: &str,
    ) -> Result<T, KeyError> {
        result.map_err(|error| {
            if let Ok(mut slot) = self.reader.try_lock()
                && slot
                    .as_ref()
                    .is_some_and(|current| Arc::ptr_eq(current, reader))
            {
                *slot = None;
            }
            self.error(what, &error)
        })
    }

    fn error(&self, context: &str, error: &(dyn std::error::Error + 'static)) -> KeyError {
        KeyError::Store(format!(
            "{STORE}: {context}: {}",
            describe(self.secret.as_deref(), error)
        ))
    }

    fn failed<'a>(&'a self, context: &'a str) -> impl Fn(tokio_postgres::Error) -> KeyError + 'a {
        move |error| self.error(context, &error)
    }

    /// A new connection whose I/O runs in a spawned task.
    async fn open(&self, role: &'static str) -> Result<Client, KeyError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|error| self.error(&format!("connecting the {role}"), &error))?;
        let secret = self.secret.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(
                    role,
                    error = describe(secret.as_deref(), &error),
                    "postgres key store connection lost; connecting again on next use"
                );
            }
        });
        Ok(client)
    }

    /// The reader connection, connected (and its statements prepared) if it was not or is
    /// closed.
    async fn reader(&self) -> Result<Arc<Reader>, KeyError> {
        let mut slot = self.reader.lock().await;
        if let Some(reader) = slot.as_ref()
            && !reader.client.is_closed()
        {
            return Ok(Arc::clone(reader));
        }
        *slot = None;
        let client = self.open("reader").await?;
        let version = client
            .prepare(SELECT_VERSION)
            .await
            .map_err(self.failed("preparing the key version read"))?;
        let rows = client
            .prepare(&format!("SELECT {COLUMNS} FROM switchyard_keys"))
            .await
            .map_err(self.failed("preparing the key read"))?;
        let reader = Arc::new(Reader {
            client,
            version,
            rows,
        });
        *slot = Some(Arc::clone(&reader));
        Ok(reader)
    }

    /// The writer slot, its connection opened (and the schema migrated) if it was not or is
    /// closed.
    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, KeyError> {
        let mut slot = self.writer.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            let mut client = self.open("writer").await?;
            self.migrate(&mut client).await?;
            *slot = Some(client);
        }
        Ok(slot)
    }

    /// Applies the migrations not yet recorded, in order, in one transaction under an
    /// advisory lock (held until it commits), so concurrent starts apply each once.
    async fn migrate(&self, client: &mut Client) -> Result<(), KeyError> {
        let migrations = Migrations {
            table: "switchyard_keys_migrations",
            lock: MIGRATION_LOCK,
            store: "keys",
            steps: MIGRATIONS,
        };
        let tx = client
            .transaction()
            .await
            .map_err(self.failed("starting the key migrations"))?;
        let pending = migrations
            .pending(&tx)
            .await
            .map_err(|(what, error)| self.error(what, &error))?;
        for (version, sql) in pending {
            tx.batch_execute(sql).await.map_err(|error| {
                self.error(&format!("applying key migration {version}"), &error)
            })?;
            migrations.record(&tx, version).await.map_err(|error| {
                self.error(&format!("recording key migration {version}"), &error)
            })?;
        }
        tx.commit()
            .await
            .map_err(self.failed("committing the key migrations"))
    }
}

fn stored_key(row: &Row) -> Result<StoredKey, tokio_postgres::Error> {
    Ok(StoredKey {
        id: row.try_get(0)?,
        hash: row.try_get(1)?,
        prefix: row.try_get(2)?,
        settings: row.try_get(3)?,
        created_at_ms: row.try_get(4)?,
        updated_at_ms: row.try_get(5)?,
        revoked_at_ms: row.try_get(6)?,
    })
}
