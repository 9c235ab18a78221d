//! The alert history on disk: `alerts.db` (SQLite) in the data directory (in memory for
//! `:memory:`), or Postgres (`switchyard_alerts`, its own migrations table) when
//! `storage.postgres_url` is set. One row per alert, written whole on every change (an
//! upsert), its deliveries as JSON. Written by the evaluation task only, after each tick.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio_postgres::{Client, Config, NoTls};

use super::{AlertRecord, Delivery};
use crate::postgres::{Migrations, connection_config, describe};

/// The longest one Postgres call (connecting included) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// First key of the migration's advisory lock (analytics use `0x5357_0001` and `…02`,
/// keys `…03`).
const MIGRATION_LOCK: i32 = 0x5357_0004;

const COLUMNS: &str = "id, rule, metric, scope, member, severity, state, value, threshold, \
                       direction, started_at, resolved_at, message, notifications";

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    metric TEXT NOT NULL,
    scope TEXT NOT NULL,
    member TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    value REAL,
    threshold REAL NOT NULL,
    direction TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    resolved_at INTEGER,
    message TEXT NOT NULL,
    notifications TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_started_at ON alerts (started_at);
";

/// The Postgres schema, in order; a version is never edited once released.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "
CREATE TABLE IF NOT EXISTS switchyard_alerts (
    id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    metric TEXT NOT NULL,
    scope TEXT NOT NULL,
    member TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    value DOUBLE PRECISION,
    threshold DOUBLE PRECISION NOT NULL,
    direction TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    resolved_at BIGINT,
    message TEXT NOT NULL,
    notifications TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS switchyard_alerts_started_at ON switchyard_alerts (started_at);
",
)];

/// Where the history is kept.
pub enum AlertStore {
    /// `alerts.db`, or an in-memory database. A std mutex: calls run on the blocking pool.
    Sqlite(Arc<Mutex<Connection>>),
    /// Postgres.
    Postgres(Box<PostgresAlerts>),
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn notifications_json(record: &AlertRecord) -> String {
    serde_json::to_string(&record.notifications).unwrap_or_else(|_| "[]".to_owned())
}

fn notifications_of(text: &str) -> Vec<Delivery> {
    serde_json::from_str(text).unwrap_or_default()
}

impl AlertStore {
    /// Opens the store `storage` names (Postgres when a URL is set), creating its table.
    pub async fn open(storage: &switchyard_core::config::StorageConfig) -> Result<Self, String> {
        if let Some(url) = &storage.postgres_url {
            return Ok(AlertStore::Postgres(Box::new(
                PostgresAlerts::connect(url.expose()).await?,
            )));
        }
        let dir = storage.data_dir.clone();
        blocking(move || {
            open_sqlite(dir.as_deref()).map(|c| AlertStore::Sqlite(Arc::new(Mutex::new(c))))
        })
        .await
    }

    /// Writes `records` whole (insert or replace).
    pub async fn save(&self, records: Vec<AlertRecord>) -> Result<(), String> {
        match self {
            AlertStore::Sqlite(connection) => {
                let connection = Arc::clone(connection);
                blocking(move || {
                    let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                    let tx = connection
                        .transaction()
                        .map_err(|e| format!("alerts.db: starting a write: {e}"))?;
                    for record in &records {
                        tx.execute(
                            &format!(
                                "INSERT OR REPLACE INTO alerts ({COLUMNS}) \
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                            ),
                            params![
                                record.id,
                                record.rule,
                                record.metric,
                                record.scope,
                                record.member,
                                record.severity,
                                record.state,
                                record.value,
                                record.threshold,
                                record.direction,
                                to_i64(record.started_at),
                                record.resolved_at.map(to_i64),
                                record.message,
                                notifications_json(record),
                            ],
                        )
                        .map_err(|e| format!("alerts.db: writing an alert: {e}"))?;
                    }
                    tx.commit()
                        .map_err(|e| format!("alerts.db: committing: {e}"))
                })
                .await
            }
            AlertStore::Postgres(store) => store.save(&records).await,
        }
    }

    /// Every alert still firing, and the `limit` most recently started others, newest
    /// first.
    pub async fn load(&self, limit: usize) -> Result<Vec<AlertRecord>, String> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match self {
            AlertStore::Sqlite(connection) => {
                let connection = Arc::clone(connection);
                blocking(move || {
                    let connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                    let mut statement = connection
                        .prepare(&format!(
                            "SELECT {COLUMNS} FROM alerts WHERE state = 'firing' \
                             UNION ALL SELECT * FROM (SELECT {COLUMNS} FROM alerts \
                             WHERE state != 'firing' ORDER BY started_at DESC LIMIT ?1) \
                             ORDER BY started_at DESC"
                        ))
                        .map_err(|e| format!("alerts.db: reading the history: {e}"))?;
                    let rows = statement
                        .query_map(params![limit], |row| {
                            Ok(AlertRecord {
                                id: row.get(0)?,
                                rule: row.get(1)?,
                                metric: row.get(2)?,
                                scope: row.get(3)?,
                                member: row.get(4)?,
                                severity: row.get(5)?,
                                state: row.get(6)?,
                                value: row.get(7)?,
                                threshold: row.get(8)?,
                                direction: row.get(9)?,
                                started_at: to_u64(row.get(10)?),
                                resolved_at: row.get::<_, Option<i64>>(11)?.map(to_u64),
                                message: row.get(12)?,
                                notifications: notifications_of(&row.get::<_, String>(13)?),
                            })
                        })
                        .map_err(|e| format!("alerts.db: reading the history: {e}"))?;
                    rows.collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("alerts.db: reading an alert: {e}"))
                })
                .await
            }
            AlertStore::Postgres(store) => store.load(limit).await,
        }
    }

    /// Deletes alerts resolved before `before_ms`.
    pub async fn prune(&self, before_ms: u64) -> Result<(), String> {
        let before = to_i64(before_ms);
        match self {
            AlertStore::Sqlite(connection) => {
                let connection = Arc::clone(connection);
                blocking(move || {
                    connection
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .execute(
                            "DELETE FROM alerts WHERE resolved_at IS NOT NULL AND resolved_at < ?1",
                            params![before],
                        )
                        .map(drop)
                        .map_err(|e| format!("alerts.db: pruning: {e}"))
                })
                .await
            }
            AlertStore::Postgres(store) => {
                store
                    .call("pruning the alerts", async |client| {
                        client
                            .execute(
                                "DELETE FROM switchyard_alerts \
                                 WHERE resolved_at IS NOT NULL AND resolved_at < $1",
                                &[&before],
                            )
                            .await
                            .map(drop)
                    })
                    .await
            }
        }
    }
}

fn open_sqlite(dir: Option<&Path>) -> Result<Connection, String> {
    let connection = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
            Connection::open(dir.join("alerts.db"))
        }
        None => Connection::open_in_memory(),
    }
    .map_err(|e| format!("opening alerts.db: {e}"))?;
    connection
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")
        .and_then(|()| connection.execute_batch(SQLITE_SCHEMA))
        .map_err(|e| format!("creating the alerts table: {e}"))?;
    Ok(connection)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| format!("alerts.db: the blocking task failed: {error}"))?
}

/// The Postgres history: one connection, opened (and migrated) on first use and again
/// after a failure; each call bounded by [`CALL_TIMEOUT`].
pub struct PostgresAlerts {
    config: Config,
    /// The URL's password, scrubbed from every message.
    secret: Option<Arc<str>>,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl PostgresAlerts {
    async fn connect(url: &str) -> Result<Self, String> {
        let (config, secret) = connection_config(url, CALL_TIMEOUT)
            .map_err(|message| format!("alerts store: {message}"))?;
        let store = PostgresAlerts {
            config,
            secret,
            client: tokio::sync::Mutex::new(None),
        };
        store.call("connecting", async |_| Ok(())).await?;
        Ok(store)
    }

    /// Runs `work` on the connection (connecting first if needed), bounded; a failure
    /// drops the connection so that the next call starts afresh.
    async fn call<T>(
        &self,
        what: &str,
        work: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, String> {
        let mut slot = self.client.lock().await;
        let result = tokio::time::timeout(CALL_TIMEOUT, async {
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = Some(self.open().await?);
            }
            let Some(client) = slot.as_mut() else {
                return Err("the connection is missing".to_owned());
            };
            work(client)
                .await
                .map_err(|error| describe(self.secret.as_deref(), &error))
        })
        .await;
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", CALL_TIMEOUT.as_secs())),
        };
        if result.is_err() {
            *slot = None;
        }
        result.map_err(|error| format!("alerts store: postgres: {what}: {error}"))
    }

    async fn open(&self) -> Result<Client, String> {
        let (mut client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|error| describe(self.secret.as_deref(), &error))?;
        let secret = self.secret.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(
                    error = describe(secret.as_deref(), &error),
                    "postgres alert store connection lost; connecting again on next use"
                );
            }
        });
        let migrations = Migrations {
            table: "switchyard_alerts_migrations",
            lock: MIGRATION_LOCK,
            store: "alerts",
            steps: MIGRATIONS,
        };
        let failed = |what: &str, error: &tokio_postgres::Error| {
            format!("{what}: {}", describe(self.secret.as_deref(), error))
        };
        let tx = client
            .transaction()
            .await
            .map_err(|e| failed("starting the alert migrations", &e))?;
        let pending = migrations
            .pending(&tx)
            .await
            .map_err(|(what, error)| failed(what, &error))?;
        for (version, sql) in pending {
            tx.batch_execute(sql)
                .await
                .map_err(|e| failed(&format!("applying alert migration {version}"), &e))?;
            migrations
                .record(&tx, version)
                .await
                .map_err(|e| failed(&format!("recording alert migration {version}"), &e))?;
        }
        tx.commit()
            .await
            .map_err(|e| failed("committing the alert migrations", &e))?;
        Ok(client)
    }

    async fn save(&self, records: &[AlertRecord]) -> Result<(), String> {
        self.call("writing alerts", async |client| {
            let tx = client.transaction().await?;
            for record in records {
                let started_at = to_i64(record.started_at);
                let resolved_at = record.resolved_at.map(to_i64);
                let notifications = notifications_json(record);
                tx.execute(
                    &format!(
                        "INSERT INTO switchyard_alerts ({COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, \
                         value = EXCLUDED.value, resolved_at = EXCLUDED.resolved_at, \
                         message = EXCLUDED.message, notifications = EXCLUDED.notifications"
                    ),
                    &[
                        &record.id,
                        &record.rule,
                        &record.metric,
                        &record.scope,
                        &record.member,
                        &record.severity,
                        &record.state,
                        &record.value,
                        &record.threshold,
                        &record.direction,
                        &started_at,
                        &resolved_at,
                        &record.message,
                        &notifications,
                    ],
                )
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn load(&self, limit: i64) -> Result<Vec<AlertRecord>, String> {
        self.call("reading the alert history", async |client| {
            let rows = client
                .query(
                    &format!(
                        "(SELECT {COLUMNS} FROM switchyard_alerts WHERE state = 'firing') \
                         UNION ALL (SELECT {COLUMNS} FROM switchyard_alerts \
                         WHERE state <> 'firing' ORDER BY started_at DESC LIMIT $1) \
                         ORDER BY started_at DESC"
                    ),
                    &[&limit],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(AlertRecord {
                        id: row.try_get(0)?,
                        rule: row.try_get(1)?,
                        metric: row.try_get(2)?,
                        scope: row.try_get(3)?,
                        member: row.try_get(4)?,
                        severity: row.try_get(5)?,
                        state: row.try_get(6)?,
                        value: row.try_get(7)?,
                        threshold: row.try_get(8)?,
                        direction: row.try_get(9)?,
                        started_at: to_u64(row.try_get(10)?),
                        resolved_at: row.try_get::<_, Option<i64>>(11)?.map(to_u64),
                        message: row.try_get(12)?,
                        notifications: notifications_of(&row.try_get::<_, String>(13)?),
                    })
                })
                .collect()
        })
        .await
    }
}
