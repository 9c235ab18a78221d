//! The shared analytics store: Postgres, for gateways scaled out to several instances.
//!
//! It keeps the same two tables as the SQLite store, with the same columns and meaning,
//! prefixed because the database may be shared with other applications:
//!
//! - `switchyard_rollups`: one row per (tier, cube, window, instance, route, provider, model,
//!   key, status class) with the counters and two encoded
//!   [`Sketch`](switchyard_core::analytics::Sketch)es. Each instance writes only its own rows
//!   (the `instance` column is part of the primary key), so instances never overwrite each other;
//!   [`PostgresStore::cells`] returns every instance's rows and the query adds them up
//!   (sketches merge exactly, so quantiles over instances are as if one had seen it all).
//! - `switchyard_requests`: the raw request log, one row per request event, newest first by
//!   `(time_ms, id)`, trimmed by age and by an estimated size.
//!
//! **Migrations** run at connect (and again on every reconnect of the writer, which is cheap):
//! versions are recorded in `switchyard_schema_migrations`, and the missing ones are applied
//! in order inside one transaction that first takes a transaction-scoped advisory lock, so
//! two instances starting together apply each migration once. Re-running is a no-op.
//!
//! **Connections**: one writer connection (writes and prunes, each one transaction) and one
//! reader connection (queries, pipelined when concurrent). Each connection's I/O runs in a
//! spawned task that logs when it ends; the next call that finds its client closed connects
//! again, so a Postgres restart needs no gateway restart (only a call that meets the dropped
//! connection before its end is noticed fails). Errors name what was being done, never the
//! URL, and any password the URL carries is scrubbed from them.
//!
//! The request log's size is an estimate (row count × average stored row size, see
//! [`PostgresStore::request_log_bytes`]): Postgres keeps the space of deleted rows for reuse
//! instead of shrinking the table, so the table's disk size cannot tell when to stop.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use futures_util::TryStreamExt;
use futures_util::future::try_join_all;
use switchyard_core::analytics::query::Dim;
use switchyard_core::analytics::rollup::ANY_KEY;
use switchyard_core::analytics::{Cube, Dims, RequestEvent, Rollup, RollupRow, Tier};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, NoTls, Row, Statement, Transaction};

use super::spend::{
    self, FeedbackRow, QualityLine, SpendColumn, SpendKey, SpendLine, SpendPoint, SpendTotals,
};
use super::store::{
    Batch, ByKeyBackfill, CellsQuery, LoggedRequest, Names, Param, Pruned, RequestsPage,
    RequestsQuery, Retention, StoreError, StoredCell, filter_value, number_placeholders,
    rollup_horizon, sketch_from, stages_from_json, stages_json, tags_from_json, tags_json, to_i64,
    to_u64, versioned_windows,
};
use crate::postgres::{Migrations, connection_config, describe};

const STORE: &str = "postgres";

/// Connect timeout when the URL sets none (`connect_timeout=` in the URL overrides it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// First key of the advisory locks (the second is a hash of the schema, so instances of
/// other deployments in other schemas of the same database do not wait on each other).
const MIGRATION_LOCK: i32 = 0x5357_0001;
const PRUNE_LOCK: i32 = 0x5357_0002;

/// Upserts sent pipelined at a time.
const PIPELINE: usize = 256;

/// Request log rows per insert statement.
const REQUEST_CHUNK: usize = 1_000;

/// Prepared read statements kept per reader connection (there are a few dozen shapes).
const STATEMENT_CACHE: usize = 512;

/// Trim rounds at most per prune (each deletes the estimated share, then measures again).
const TRIM_ROUNDS: usize = 8;

/// Newest rows sampled for the average row size of the request log.
const SIZE_SAMPLE: i64 = 1_000;

/// The schema, in order; a version is never edited once released, only added after.
/// Version 2 is followed by [`BY_KEY_BACKFILL`] in the same transaction.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
CREATE TABLE IF NOT EXISTS switchyard_rollups (
    tier SMALLINT NOT NULL,
    keyed BOOLEAN NOT NULL,
    bucket BIGINT NOT NULL,
    instance TEXT NOT NULL,
    route TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    status_class TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    tokens_cached BIGINT NOT NULL,
    tokens_reasoning BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    cost_unknown BIGINT NOT NULL,
    cache_hits BIGINT NOT NULL,
    latency_sum_us BIGINT NOT NULL,
    latency BYTEA NOT NULL,
    ttft BYTEA NOT NULL,
    PRIMARY KEY (tier, keyed, bucket, instance, route, provider, model, key, status_class)
);
CREATE TABLE IF NOT EXISTS switchyard_requests (
    id BIGSERIAL PRIMARY KEY,
    time_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    key TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    route TEXT,
    provider TEXT,
    model TEXT,
    stream BOOLEAN NOT NULL,
    status INTEGER NOT NULL,
    error_class TEXT,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    tokens_cached BIGINT NOT NULL,
    tokens_reasoning BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION,
    latency_us BIGINT NOT NULL,
    ttft_us BIGINT,
    upstream_us BIGINT,
    attempts BIGINT NOT NULL,
    cache TEXT NOT NULL,
    stages TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS switchyard_requests_by_time ON switchyard_requests (time_ms, id);
",
    ),
    // The by-key cube: `keyed` (false, true) becomes `cube` (0, 1; 2 for by key).
    (
        2,
        "
ALTER TABLE switchyard_rollups RENAME COLUMN keyed TO cube;
ALTER TABLE switchyard_rollups ALTER COLUMN cube TYPE SMALLINT USING cube::int::smallint;
",
    ),
    // What a cache hit saved.
    (
        3,
        "
ALTER TABLE switchyard_requests ADD COLUMN IF NOT EXISTS saved_usd DOUBLE PRECISION;
",
    ),
    // The spend ledger (see `spend::TABLE_COLUMNS`, which this must match).
    (
        4,
        "
CREATE TABLE IF NOT EXISTS switchyard_spend (
    bucket_ms BIGINT NOT NULL,
    key TEXT NOT NULL,
    team TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    saved_nanos BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    unpriced BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    PRIMARY KEY (bucket_ms, key, team, route, model, provider)
);
",
    ),
    // What the savings report compares the spend with.
    (
        5,
        "
ALTER TABLE switchyard_spend ADD COLUMN IF NOT EXISTS baseline_nanos BIGINT NOT NULL DEFAULT 0;
ALTER TABLE switchyard_spend ADD COLUMN IF NOT EXISTS default_nanos BIGINT NOT NULL DEFAULT 0;
ALTER TABLE switchyard_spend ADD COLUMN IF NOT EXISTS hit_baseline_nanos BIGINT NOT NULL DEFAULT 0;
",
    ),
    // Quality feedback (see `spend::FEEDBACK_COLUMNS`, which this must match).
    (
        6,
        "
CREATE TABLE IF NOT EXISTS switchyard_feedback (
    time_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    key TEXT NOT NULL,
    route TEXT NOT NULL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS switchyard_feedback_by_time ON switchyard_feedback (time_ms);
",
    ),
    // Rollup window versions, bumped by every write into an hour window (the query cache
    // checks them; see `store::versioned_windows`).
    (
        7,
        "
CREATE TABLE IF NOT EXISTS switchyard_rollup_versions (
    tier SMALLINT NOT NULL,
    bucket BIGINT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (tier, bucket)
);
",
    ),
    // The virtual key's tags on each logged request (a JSON array, NULL when none).
    (
        8,
        "ALTER TABLE switchyard_requests ADD COLUMN IF NOT EXISTS tags TEXT;",
    ),
];

/// The migration after which the by-key cells are derived from the keyed ones.
const BY_KEY_BACKFILL: i32 = 2;

/// The primary key of `switchyard_rollups`, in parameter order.
const KEY_COLUMNS: [&str; 9] = [
    "tier",
    "cube",
    "bucket",
    "instance",
    "route",
    "provider",
    "model",
    "key",
    "status_class",
];

/// The aggregate columns of `switchyard_rollups`, in the order [`read_rollup`] reads them.
const VALUE_COLUMNS: [&str; 12] = [
    "requests",
    "errors",
    "tokens_in",
    "tokens_out",
    "tokens_cached",
    "tokens_reasoning",
    "cost_usd",
    "cost_unknown",
    "cache_hits",
    "latency_sum_us",
    "latency",
    "ttft",
];

/// The request log's columns as [`LoggedRequest`] reads them (after `id`).
const REQUEST_COLUMNS: &str = "id, time_ms, request_id, instance, key, endpoint, route, \
     provider, model, stream, status, error_class, tokens_in, tokens_out, tokens_cached, \
     tokens_reasoning, cost_usd, latency_us, ttft_us, upstream_us, attempts, cache, stages, \
     saved_usd, tags";

/// Appends a request log chunk: one array per column, unnested into rows (one statement
/// and one round trip per chunk, whatever its length).
const INSERT_REQUESTS: &str = "INSERT INTO switchyard_requests (time_ms, request_id, \
     instance, key, endpoint, route, provider, model, stream, status, error_class, tokens_in, \
     tokens_out, tokens_cached, tokens_reasoning, cost_usd, latency_us, ttft_us, upstream_us, \
     attempts, cache, stages, saved_usd, tags) \
     SELECT time_ms, request_id, $1::text, key, endpoint, route, provider, model, stream, \
     status, error_class, tokens_in, tokens_out, tokens_cached, tokens_reasoning, cost_usd, \
     latency_us, ttft_us, upstream_us, attempts, cache, stages, saved_usd, tags \
     FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
     $8::text[], $9::bool[], $10::int4[], $11::text[], $12::int8[], $13::int8[], $14::int8[], \
     $15::int8[], $16::float8[], $17::int8[], $18::int8[], $19::int8[], $20::int8[], \
     $21::text[], $22::text[], $23::float8[], $24::text[]) \
     AS r(time_ms, request_id, key, endpoint, route, provider, model, stream, status, \
     error_class, tokens_in, tokens_out, tokens_cached, tokens_reasoning, cost_usd, latency_us, \
     ttft_us, upstream_us, attempts, cache, stages, saved_usd, tags)";

/// The request log's estimated size: exact row count × the average stored row size
/// (`pg_column_size` of the row: tuple header and data, TOAST-compressed as stored) over the
/// newest [`SIZE_SAMPLE`] rows. Indexes, free space and dead rows are not counted: Postgres
/// does not give space back on `DELETE`, so the table's disk size would never go down.
/// The count is an index-only scan in the usual case; the sample reads the newest rows by
/// index.
const LOG_SIZE: &str = "SELECT (SELECT count(*) FROM switchyard_requests), \
     (SELECT coalesce(avg(pg_column_size(s.*)), 0)::float8 FROM \
      (SELECT * FROM switchyard_requests ORDER BY time_ms DESC, id DESC LIMIT $1) s)";

/// The Postgres analytics store.
pub struct PostgresStore {
    config: Config,
    /// The URL's password, scrubbed from every message.
    secret: Option<Arc<str>>,
    writer: Mutex<Option<Writer>>,
    reader: Mutex<Option<Arc<Reader>>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// The writer connection with its prepared statements.
struct Writer {
    client: Client,
    /// Reads a stored rollup row to merge into, locking it.
    select: Statement,
    /// Writes a rollup row, replacing the stored one.
    upsert: Statement,
    /// Appends a chunk of the request log.
    insert: Statement,
}

/// The reader connection with the read statements prepared so far.
struct Reader {
    client: Client,
    statements: StdMutex<HashMap<String, Statement>>,
}

impl Reader {
    async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let cached = lock(&self.statements).get(sql).cloned();
        if let Some(statement) = cached {
            return Ok(statement);
        }
        let statement = self.client.prepare(sql).await?;
        let mut cache = lock(&self.statements);
        if cache.len() >= STATEMENT_CACHE {
            cache.clear();
        }
        cache.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The cache holds no invariant a panic could break.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/dbname?options`, any option
    /// tokio-postgres takes, e.g. `options=-csearch_path%3Danalytics` for another schema),
    /// and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let (config, secret) = connection_config(url, CONNECT_TIMEOUT)
            .map_err(|message| StoreError::new(STORE, message))?;
        let store = PostgresStore {
            config,
            secret,
            writer: Mutex::new(None),
            reader: Mutex::new(None),
        };
        drop(store.writer().await?);
        store.reader().await?;
        Ok(store)
    }

    fn error(&self, context: &str, error: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::new(
            STORE,
            format!("{context}: {}", describe(self.secret.as_deref(), error)),
        )
    }

    fn failed<'a>(&'a self, context: &'a str) -> impl Fn(tokio_postgres::Error) -> StoreError + 'a {
        move |error| self.error(context, &error)
    }

    /// A new connection whose I/O runs in a spawned task.
    async fn open(&self, role: &'static str) -> Result<Client, StoreError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|error| self.error(&format!("connecting the {role}"), &error))?;
        let secret = self.secret.clone();
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::debug!(role, "postgres analytics connection closed"),
                Err(error) => tracing::warn!(
                    role,
                    error = describe(secret.as_deref(), &error),
                    "postgres analytics connection lost; reconnecting on next use"
                ),
            }
        });
        Ok(client)
    }

    /// The writer connection, connected (and the schema migrated) if it was not or is closed.
    async fn writer(&self) -> Result<MappedMutexGuard<'_, Writer>, StoreError> {
        let mut slot = self.writer.lock().await;
        if slot.as_ref().is_none_or(|writer| writer.client.is_closed()) {
            *slot = None;
            let mut client = self.open("writer").await?;
            self.migrate(&mut client).await?;
            let select = client
                .prepare(&rollup_select_sql())
                .await
                .map_err(self.failed("preparing the rollup read"))?;
            let upsert = client
                .prepare(&rollup_upsert_sql())
                .await
                .map_err(self.failed("preparing the rollup write"))?;
            let insert = client
                .prepare(INSERT_REQUESTS)
                .await
                .map_err(self.failed("preparing the request log write"))?;
            *slot = Some(Writer {
                client,
                select,
                upsert,
                insert,
            });
        }
        MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| StoreError::new(STORE, "the writer connection is missing"))
    }

    /// The reader connection, connected if it was not or is closed.
    /// Runs a read on the reader connection with a cached prepared statement; errors say
    /// which step failed for `what`.
    async fn read(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Vec<Row>, StoreError> {
        let reader = self.reader().await?;
        let statement = reader
            .statement(sql)
            .await
            .map_err(|error| self.error(&format!("preparing {what}"), &error))?;
        reader
            .client
            .query(&statement, params)
            .await
            .map_err(|error| self.error(&format!("running {what}"), &error))
    }

    async fn reader(&self) -> Result<Arc<Reader>, StoreError> {
        let mut slot = self.reader.lock().await;
        if let Some(reader) = slot.as_ref()
            && !reader.client.is_closed()
        {
            return Ok(Arc::clone(reader));
        }
        let reader = Arc::new(Reader {
            client: self.open("reader").await?,
            statements: StdMutex::new(HashMap::new()),
        });
        *slot = Some(Arc::clone(&reader));
        Ok(reader)
    }

    /// Applies the migrations not yet recorded, in order, in one transaction under an
    /// advisory lock (held until it commits), so concurrent starts apply each once.
    async fn migrate(&self, client: &mut Client) -> Result<(), StoreError> {
        let migrations = Migrations {
            table: "switchyard_schema_migrations",
            lock: MIGRATION_LOCK,
            store: "analytics",
            steps: MIGRATIONS,
        };
        let tx = client
            .transaction()
            .await
            .map_err(self.failed("starting the migrations"))?;
        let pending = migrations
            .pending(&tx)
            .await
            .map_err(|(what, error)| self.error(what, &error))?;
        for (version, sql) in pending {
            tx.batch_execute(sql)
                .await
                .map_err(|error| self.error(&format!("applying migration {version}"), &error))?;
            if version == BY_KEY_BACKFILL {
                self.backfill_by_key(&tx).await?;
            }
            migrations
                .record(&tx, version)
                .await
                .map_err(|error| self.error(&format!("recording migration {version}"), &error))?;
        }
        tx.commit()
            .await
            .map_err(self.failed("committing the migrations"))
    }

    /// Derives the by-key cells of a table written before that cube, from its keyed cells
    /// (merged in Rust: sketches cannot be added in SQL).
    async fn backfill_by_key(&self, tx: &Transaction<'_>) -> Result<(), StoreError> {
        let select = format!(
            "SELECT {}, tier, bucket, instance, key FROM switchyard_rollups WHERE cube = $1",
            VALUE_COLUMNS.join(", ")
        );
        // Streamed: only the by-key cells are held, never the whole keyed cube.
        let rows = tx
            .query_raw(&select, [Cube::Keyed.code()])
            .await
            .map_err(self.failed("reading keyed rollups"))?;
        let mut rows = std::pin::pin!(rows);
        let mut backfill = ByKeyBackfill::default();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(self.failed("reading keyed rollups"))?
        {
            let cell = (|| {
                Ok::<_, tokio_postgres::Error>((
                    row.try_get::<_, i16>(12)?,
                    row.try_get::<_, i64>(13)?,
                    row.try_get::<_, String>(14)?,
                    row.try_get::<_, String>(15)?,
                    read_rollup(&row, 0)?,
                ))
            })()
            .map_err(self.failed("reading keyed rollups"))?;
            backfill.add(cell);
        }
        let cells = backfill.into_cells();
        let upsert = tx
            .prepare(&rollup_upsert_sql())
            .await
            .map_err(self.failed("preparing the by-key backfill"))?;
        let any: Arc<str> = Arc::from(ANY_KEY);
        for (tier, bucket, instance, key, rollup) in &cells {
            let Some(tier) = Tier::ALL.into_iter().find(|t| t.code() == *tier) else {
                continue;
            };
            let row = RollupRow {
                tier,
                bucket_ms: to_u64(*bucket),
                cube: Cube::ByKey,
                dims: Dims {
                    route: Arc::clone(&any),
                    provider: Arc::clone(&any),
                    model: Arc::clone(&any),
                    key: Arc::from(key.as_str()),
                    status_class: Arc::clone(&any),
                },
                rollup: Rollup::default(),
                merge: false,
            };
            tx.execute(&upsert, &RollupParams::new(instance, &row, rollup).all())
                .await
                .map_err(self.failed("writing the by-key backfill"))?;
        }
        tracing::info!(
            cells = cells.len(),
            "migrated the postgres rollups: by-key cells derived"
        );
        Ok(())
    }

    /// Writes a flush in one transaction: replace rows overwrite this instance's stored row,
    /// merge rows are added to it (read under a row lock, merged in Rust, written back), and
    /// the log entries are appended.
    pub async fn write(&self, instance: &str, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer().await?;
        let Writer {
            client,
            select,
            upsert,
            insert,
        } = &mut *writer;
        let tx = client
            .transaction()
            .await
            .map_err(self.failed("starting a write"))?;
        // Replace rows go out pipelined; a merge row waits for those before it, as its
        // read-modify-write must see them.
        let mut replaces: Vec<&RollupRow> = Vec::new();
        for row in &batch.rollups {
            if !row.merge {
                replaces.push(row);
                continue;
            }
            self.replace(&tx, upsert, instance, &replaces).await?;
            replaces.clear();
            let key = RollupParams::new(instance, row, &row.rollup);
            let stored = tx
                .query_opt(&*select, &key.key())
                .await
                .map_err(self.failed("reading a rollup to merge"))?;
            let mut rollup = row.rollup.clone();
            if let Some(stored) = stored {
                rollup.merge(&read_rollup(&stored, 0).map_err(self.failed("reading a rollup"))?);
            }
            tx.execute(&*upsert, &RollupParams::new(instance, row, &rollup).all())
                .await
                .map_err(self.failed("writing a merged rollup"))?;
        }
        self.replace(&tx, upsert, instance, &replaces).await?;
        for chunk in batch.requests.chunks(REQUEST_CHUNK) {
            let columns = RequestColumns::new(chunk);
            tx.execute(&*insert, &columns.params(&instance))
                .await
                .map_err(self.failed("writing the request log"))?;
        }
        // Last, so that the version rows (shared with the other instances) stay locked only
        // until the commit; in window order, so that concurrent writers cannot deadlock.
        let windows = versioned_windows(&batch.rollups);
        if !windows.is_empty() {
            let tiers: Vec<i16> = windows.iter().map(|(tier, _)| tier.code()).collect();
            let buckets: Vec<i64> = windows.iter().map(|&(_, b)| to_i64(b)).collect();
            tx.execute(
                "INSERT INTO switchyard_rollup_versions (tier, bucket, version) \
                 SELECT tier, bucket, 1 FROM unnest($1::smallint[], $2::bigint[]) AS w (tier, bucket) \
                 ORDER BY tier, bucket \
                 ON CONFLICT (tier, bucket) \
                 DO UPDATE SET version = switchyard_rollup_versions.version + 1",
                &[&tiers, &buckets],
            )
            .await
            .map_err(self.failed("bumping rollup versions"))?;
        }
        tx.commit().await.map_err(self.failed("committing a write"))
    }

    /// Upserts replace rows, pipelined. A cell given twice keeps its last value, as if they
    /// were written one after the other; the earlier ones are not sent.
    async fn replace(
        &self,
        tx: &Transaction<'_>,
        upsert: &Statement,
        instance: &str,
        rows: &[&RollupRow],
    ) -> Result<(), StoreError> {
        let mut last = HashMap::with_capacity(rows.len());
        for (at, row) in rows.iter().enumerate() {
            last.insert((row.tier, row.cube, row.bucket_ms, &row.dims), at);
        }
        let params: Vec<RollupParams<'_>> = rows
            .iter()
            .enumerate()
            .filter(|(at, row)| {
                last.get(&(row.tier, row.cube, row.bucket_ms, &row.dims)) == Some(at)
            })
            .map(|(_, row)| RollupParams::new(instance, row, &row.rollup))
            .collect();
        for chunk in params.chunks(PIPELINE) {
            let sets: Vec<[&(dyn ToSql + Sync); 21]> =
                chunk.iter().map(RollupParams::all).collect();
            try_join_all(sets.iter().map(|set| tx.execute(upsert, set)))
                .await
                .map_err(self.failed("writing rollups"))?;
        }
        Ok(())
    }

    /// Cells of one tier and cube in `[from_ms, to_ms)` matching the filter: every
    /// instance's rows, one cell each (the query sums them).
    pub async fn cells(&self, read: &CellsQuery) -> Result<Vec<StoredCell>, StoreError> {
        let mut columns = VALUE_COLUMNS.join(", ");
        if !read.sketches {
            columns = columns.replace("latency, ttft", "''::bytea, ''::bytea");
        }
        let mut sql = format!(
            "SELECT {columns}, bucket, route, provider, model, key, status_class \
             FROM switchyard_rollups \
             WHERE tier = $1 AND cube = $2 AND bucket >= $3 AND bucket < $4"
        );
        let (code, cube, filter) = (read.tier.code(), read.cube.code(), &read.filter);
        let (from, to) = (to_i64(read.from_ms), to_i64(read.to_ms));
        let wanted: Vec<(Dim, &str)> = [
            Dim::Route,
            Dim::Provider,
            Dim::Model,
            Dim::Key,
            Dim::StatusClass,
        ]
        .into_iter()
        .filter_map(|dim| filter_value(filter, dim).map(|value| (dim, value)))
        .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&code, &cube, &from, &to];
        for (dim, value) in &wanted {
            params.push(value);
            sql.push_str(&format!(" AND {} = ${}", dim.name(), params.len()));
        }
        let rows = self.read(&sql, &params, "an analytics query").await?;
        let mut names = Names::default();
        rows.iter()
            .map(|row| {
                let mut text = |at: usize| row.try_get::<_, &str>(at).map(|name| names.get(name));
                Ok(StoredCell {
                    bucket_ms: to_u64(row.try_get(12)?),
                    dims: Dims {
                        route: text(13)?,
                        provider: text(14)?,
                        model: text(15)?,
                        key: text(16)?,
                        status_class: text(17)?,
                    },
                    rollup: read_rollup(row, 0)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(self.failed("reading an analytics query"))
    }

    /// The versions of `tier`'s windows in `[from_ms, to_ms)` that were ever written, in
    /// window order: one small indexed read.
    pub async fn versions(
        &self,
        tier: Tier,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        let (code, from, to) = (tier.code(), to_i64(from_ms), to_i64(to_ms));
        let rows = self
            .read(
                "SELECT bucket, version FROM switchyard_rollup_versions \
                 WHERE tier = $1 AND bucket >= $2 AND bucket < $3 ORDER BY bucket",
                &[&code, &from, &to],
                "a rollup version read",
            )
            .await?;
        rows.iter()
            .map(|row| Ok((to_u64(row.try_get(0)?), row.try_get(1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(self.failed("reading rollup versions"))
    }

    /// A page of the request log, newest first, continuing after `query.before`.
    pub async fn requests(&self, query: &RequestsQuery) -> Result<RequestsPage, StoreError> {
        let mut sql = format!("SELECT {REQUEST_COLUMNS} FROM switchyard_requests WHERE true");
        let (tail, params) = query.sql_tail(" AND tags::jsonb @> jsonb_build_array(?::text)");
        sql.push_str(&number_placeholders(&tail, '$'));
        let values: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|param| -> Box<dyn ToSql + Sync + Send> {
                match param {
                    Param::BigInt(n) => Box::new(n),
                    Param::Int(n) => Box::new(n),
                    Param::Text(text) => Box::new(text),
                }
            })
            .collect();
        let limit = query.page_size();
        let params: Vec<&(dyn ToSql + Sync)> = values
            .iter()
            .map(|value| &**value as &(dyn ToSql + Sync))
            .collect();
        let rows = self.read(&sql, &params, "a request log query").await?;
        let data = rows
            .iter()
            .map(read_request)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.failed("reading the request log"))?;
        Ok(RequestsPage::from_rows(data, limit))
    }

    /// Adds cells into the spend ledger, in one transaction (rows in key order, so that
    /// instances writing the same cells together cannot deadlock).
    pub async fn write_spend(&self, rows: &[(SpendKey, SpendTotals)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer().await?;
        let tx = writer
            .client
            .transaction()
            .await
            .map_err(self.failed("starting a spend write"))?;
        let upsert = tx
            .prepare(&spend::upsert_sql("switchyard_spend", true))
            .await
            .map_err(self.failed("preparing a spend write"))?;
        for (key, totals) in rows {
            tx.execute(
                &upsert,
                &[
                    &to_i64(key.bucket_ms),
                    &key.key,
                    &key.team,
                    &key.route,
                    &key.model,
                    &key.provider,
                    &totals.cost_nanos,
                    &totals.saved_nanos,
                    &totals.requests,
                    &totals.unpriced,
                    &totals.input_tokens,
                    &totals.output_tokens,
                    &totals.baseline_nanos,
                    &totals.default_nanos,
                    &totals.hit_baseline_nanos,
                ],
            )
            .await
            .map_err(self.failed("writing the spend ledger"))?;
        }
        tx.commit()
            .await
            .map_err(self.failed("committing a spend write"))
    }

    /// The spend in `[from_ms, to_ms)`, of `member` of `column` (everything with none), every
    /// instance's included.
    pub async fn spent(
        &self,
        column: Option<SpendColumn>,
        member: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<i64, StoreError> {
        let sql = spend::spent_sql("switchyard_spend", column, true);
        let (from, to) = (to_i64(from_ms), to_i64(to_ms));
        let rows = match column {
            Some(_) => {
                self.read(&sql, &[&from, &to, &member], "a spend read")
                    .await?
            }
            None => self.read(&sql, &[&from, &to], "a spend read").await?,
        };
        rows.first()
            .map(|row| row.try_get::<_, i64>(0))
            .transpose()
            .map_err(self.failed("reading the spend ledger"))
            .map(Option::unwrap_or_default)
    }

    /// Stores a feedback score.
    pub async fn write_feedback(&self, row: &FeedbackRow) -> Result<(), StoreError> {
        let writer = self.writer().await?;
        writer
            .client
            .execute(
                &spend::feedback_insert_sql("switchyard_feedback", true),
                &[
                    &to_i64(row.time_ms),
                    &row.request_id,
                    &row.key,
                    &row.route,
                    &row.tier,
                    &row.model,
                    &row.score,
                ],
            )
            .await
            .map(|_| ())
            .map_err(self.failed("storing feedback"))
    }

    /// Feedback in `[from_ms, to_ms)` per route, tier and model, every instance's.
    pub async fn quality(&self, from_ms: u64, to_ms: u64) -> Result<Vec<QualityLine>, StoreError> {
        let rows = self
            .read(
                &spend::quality_sql("switchyard_feedback", true),
                &[&to_i64(from_ms), &to_i64(to_ms)],
                "a quality report",
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(spend::quality_line(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                ))
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(self.failed("reading a quality report"))
    }

    /// The spend in `[from_ms, to_ms)` grouped by `column`, largest first.
    pub async fn spend_report(
        &self,
        column: SpendColumn,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SpendLine>, StoreError> {
        let sql = spend::report_sql("switchyard_spend", column, true);
        let rows = self
            .read(&sql, &[&to_i64(from_ms), &to_i64(to_ms)], "a spend report")
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SpendLine {
                    member: row.try_get(0)?,
                    totals: spend::totals_from([
                        row.try_get(1)?,
                        row.try_get(2)?,
                        row.try_get(3)?,
                        row.try_get(4)?,
                        row.try_get(5)?,
                        row.try_get(6)?,
                        row.try_get(7)?,
                        row.try_get(8)?,
                        row.try_get(9)?,
                    ]),
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(self.failed("reading a spend report"))
    }

    /// The spend per member of `column` and bucket over `[from_ms, to_ms)`, every instance's
    /// included, the buckets before `detail_from_ms` folded into one row at `from_ms` (see
    /// `spend::series_sql`).
    pub async fn spend_series(
        &self,
        column: Option<SpendColumn>,
        from_ms: u64,
        detail_from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SpendPoint>, StoreError> {
        let sql = spend::series_sql("switchyard_spend", column, true);
        let rows = self
            .read(
                &sql,
                &[&to_i64(from_ms), &to_i64(detail_from_ms), &to_i64(to_ms)],
                "a spend series",
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(SpendPoint {
                    member: row.try_get(0)?,
                    bucket_ms: u64::try_from(row.try_get::<_, i64>(1)?).unwrap_or(0),
                    cost_nanos: row.try_get(2)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(self.failed("reading a spend series"))
    }

    /// Deletes rollups past their tier's retention and trims the request log by age, then
    /// by its estimated size (see [`PostgresStore::request_log_bytes`]): once over the limit,
    /// the oldest rows go until it is at about 90% of it. One transaction, under an advisory
    /// lock so that instances pruning together do not trim twice.
    pub async fn prune(&self, now_ms: u64, retention: Retention) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        let mut writer = self.writer().await?;
        let tx = writer
            .client
            .transaction()
            .await
            .map_err(self.failed("starting a prune"))?;
        // A first prune over a long backlog deletes many rows at once: it gets longer than
        // the connection's statement timeout.
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}; \
             SELECT pg_advisory_xact_lock({PRUNE_LOCK}, hashtext(coalesce(current_schema(), '')))",
            crate::postgres::PRUNE_STATEMENT_TIMEOUT.as_millis()
        ))
        .await
        .map_err(self.failed("locking for a prune"))?;
        for tier in [Tier::Minute, Tier::Hour] {
            pruned.rollups += tx
                .execute(
                    "DELETE FROM switchyard_rollups WHERE tier = $1 AND bucket < $2",
                    &[&tier.code(), &to_i64(rollup_horizon(tier, now_ms))],
                )
                .await
                .map_err(self.failed("pruning rollups"))?;
            tx.execute(
                "DELETE FROM switchyard_rollup_versions WHERE tier = $1 AND bucket < $2",
                &[&tier.code(), &to_i64(rollup_horizon(tier, now_ms))],
            )
            .await
            .map_err(self.failed("pruning rollup versions"))?;
        }
        let oldest = to_i64(now_ms.saturating_sub(retention.request_log_max_age_ms));
        pruned.requests_by_age = tx
            .execute(
                "DELETE FROM switchyard_requests WHERE time_ms < $1",
                &[&oldest],
            )
            .await
            .map_err(self.failed("pruning the request log by age"))?;
        // Once over the limit, trim to 90% of it (so that trimming is not on every flush).
        // The share to delete is computed from the estimate, then checked again: the
        // average row size is re-sampled once rows are gone.
        let target = retention.request_log_max_bytes / 10 * 9;
        let (mut rows, mut used) = self.log_size(&tx).await?;
        if used > retention.request_log_max_bytes {
            for _ in 0..TRIM_ROUNDS {
                if used <= target || rows == 0 {
                    break;
                }
                let share = (used - target) as f64 / used as f64;
                let remove = ((rows as f64 * share).ceil() as i64).max(1);
                pruned.requests_by_size += tx
                    .execute(
                        "DELETE FROM switchyard_requests WHERE id IN \
                         (SELECT id FROM switchyard_requests ORDER BY time_ms, id LIMIT $1)",
                        &[&remove],
                    )
                    .await
                    .map_err(self.failed("trimming the request log"))?;
                (rows, used) = self.log_size(&tx).await?;
            }
        }
        tx.commit()
            .await
            .map_err(self.failed("committing a prune"))?;
        Ok(pruned)
    }

    /// The request log's estimated size in bytes: the row count × the average stored row
    /// size of the newest rows (row data only: indexes, free space and dead rows are not
    /// counted, as Postgres keeps the space of deleted rows for reuse).
    pub async fn request_log_bytes(&self) -> Result<u64, StoreError> {
        let reader = self.reader().await?;
        let row = reader
            .client
            .query_one(LOG_SIZE, &[&SIZE_SAMPLE])
            .await
            .map_err(self.failed("measuring the request log"))?;
        read_log_size(&row)
            .map(|(_, bytes)| bytes)
            .map_err(self.failed("measuring the request log"))
    }

    /// (rows, estimated bytes) of the request log, inside a prune.
    async fn log_size(&self, tx: &Transaction<'_>) -> Result<(i64, u64), StoreError> {
        let row = tx
            .query_one(LOG_SIZE, &[&SIZE_SAMPLE])
            .await
            .map_err(self.failed("measuring the request log"))?;
        read_log_size(&row).map_err(self.failed("measuring the request log"))
    }
}

/// Reads one of this instance's rollup rows by key, locking it until the write commits.
fn rollup_select_sql() -> String {
    let key: Vec<String> = KEY_COLUMNS
        .iter()
        .enumerate()
        .map(|(at, column)| format!("{column} = ${}", at + 1))
        .collect();
    format!(
        "SELECT {} FROM switchyard_rollups WHERE {} FOR UPDATE",
        VALUE_COLUMNS.join(", "),
        key.join(" AND ")
    )
}

/// Writes a rollup row ([`KEY_COLUMNS`] then [`VALUE_COLUMNS`]), replacing the stored one.
fn rollup_upsert_sql() -> String {
    let columns: Vec<&str> = KEY_COLUMNS.iter().chain(&VALUE_COLUMNS).copied().collect();
    let values: Vec<String> = (1..=columns.len()).map(|at| format!("${at}")).collect();
    let updates: Vec<String> = VALUE_COLUMNS
        .iter()
        .map(|column| format!("{column} = EXCLUDED.{column}"))
        .collect();
    format!(
        "INSERT INTO switchyard_rollups ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
        columns.join(", "),
        values.join(", "),
        KEY_COLUMNS.join(", "),
        updates.join(", ")
    )
}

/// (rows, estimated bytes) from [`LOG_SIZE`]'s row.
fn read_log_size(row: &Row) -> Result<(i64, u64), tokio_postgres::Error> {
    let rows: i64 = row.try_get(0)?;
    let average: f64 = row.try_get(1)?;
    Ok((rows, (rows.max(0) as f64 * average).round() as u64))
}

/// The parameters of a rollup row: the key, then the aggregate, in column order.
struct RollupParams<'a> {
    tier: i16,
    cube: i16,
    bucket: i64,
    instance: &'a str,
    dims: [&'a str; 5],
    counts: [i64; 9],
    cost_usd: f64,
    latency: Vec<u8>,
    ttft: Vec<u8>,
}

impl<'a> RollupParams<'a> {
    fn new(instance: &'a str, row: &'a RollupRow, rollup: &Rollup) -> Self {
        let d = &row.dims;
        RollupParams {
            tier: row.tier.code(),
            cube: row.cube.code(),
            bucket: to_i64(row.bucket_ms),
            instance,
            dims: [
                &*d.route,
                &*d.provider,
                &*d.model,
                &*d.key,
                &*d.status_class,
            ],
            counts: rollup.counters().map(to_i64),
            cost_usd: rollup.cost_usd,
            latency: rollup.latency.encode(),
            ttft: rollup.ttft.encode(),
        }
    }

    /// [`KEY_COLUMNS`].
    fn key(&self) -> [&(dyn ToSql + Sync); 9] {
        let [route, provider, model, key, status_class] = &self.dims;
        [
            &self.tier,
            &self.cube,
            &self.bucket,
            &self.instance,
            route,
            provider,
            model,
            key,
            status_class,
        ]
    }

    /// [`KEY_COLUMNS`] then [`VALUE_COLUMNS`].
    fn all(&self) -> [&(dyn ToSql + Sync); 21] {
        let [route, provider, model, key, status_class] = &self.dims;
        let [
            requests,
            errors,
            tokens_in,
            tokens_out,
            tokens_cached,
            tokens_reasoning,
            cost_unknown,
            cache_hits,
            latency_sum_us,
        ] = &self.counts;
        [
            &self.tier,
            &self.cube,
            &self.bucket,
            &self.instance,
            route,
            provider,
            model,
            key,
            status_class,
            requests,
            errors,
            tokens_in,
            tokens_out,
            tokens_cached,
            tokens_reasoning,
            &self.cost_usd,
            cost_unknown,
            cache_hits,
            latency_sum_us,
            &self.latency,
            &self.ttft,
        ]
    }
}

/// A chunk of the request log as one array per column, for [`INSERT_REQUESTS`].
struct RequestColumns<'a> {
    time_ms: Vec<i64>,
    request_id: Vec<&'a str>,
    key: Vec<&'a str>,
    endpoint: Vec<&'a str>,
    route: Vec<Option<&'a str>>,
    provider: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    stream: Vec<bool>,
    status: Vec<i32>,
    error_class: Vec<Option<&'a str>>,
    tokens_in: Vec<i64>,
    tokens_out: Vec<i64>,
    tokens_cached: Vec<i64>,
    tokens_reasoning: Vec<i64>,
    cost_usd: Vec<Option<f64>>,
    latency_us: Vec<i64>,
    ttft_us: Vec<Option<i64>>,
    upstream_us: Vec<Option<i64>>,
    attempts: Vec<i64>,
    cache: Vec<&'a str>,
    stages: Vec<String>,
    saved_usd: Vec<Option<f64>>,
    tags: Vec<Option<String>>,
}

impl<'a> RequestColumns<'a> {
    fn new(events: &'a [RequestEvent]) -> Self {
        RequestColumns {
            time_ms: events.iter().map(|e| to_i64(e.time_unix_ms)).collect(),
            request_id: events.iter().map(|e| e.request_id.as_str()).collect(),
            key: events.iter().map(|e| e.principal.as_str()).collect(),
            endpoint: events.iter().map(|e| e.endpoint.as_str()).collect(),
            route: events.iter().map(|e| e.route.as_deref()).collect(),
            provider: events.iter().map(|e| e.provider.as_deref()).collect(),
            model: events.iter().map(|e| e.model.as_deref()).collect(),
            stream: events.iter().map(|e| e.stream).collect(),
            status: events.iter().map(|e| i32::from(e.status)).collect(),
            error_class: events.iter().map(|e| e.error_class.as_deref()).collect(),
            tokens_in: events.iter().map(|e| to_i64(e.usage.input)).collect(),
            tokens_out: events.iter().map(|e| to_i64(e.usage.output)).collect(),
            tokens_cached: events
                .iter()
                .map(|e| to_i64(e.usage.cached_input))
                .collect(),
            tokens_reasoning: events.iter().map(|e| to_i64(e.usage.reasoning)).collect(),
            cost_usd: events.iter().map(|e| e.cost_usd).collect(),
            latency_us: events.iter().map(|e| to_i64(e.latency_us)).collect(),
            ttft_us: events.iter().map(|e| e.ttft_us.map(to_i64)).collect(),
            upstream_us: events.iter().map(|e| e.upstream_us.map(to_i64)).collect(),
            attempts: events.iter().map(|e| i64::from(e.attempts)).collect(),
            cache: events.iter().map(|e| e.cache).collect(),
            stages: events.iter().map(|e| stages_json(&e.stages)).collect(),
            saved_usd: events.iter().map(|e| e.saved_usd).collect(),
            tags: events.iter().map(|e| tags_json(&e.tags)).collect(),
        }
    }

    fn params<'p>(&'p self, instance: &'p &str) -> [&'p (dyn ToSql + Sync); 24] {
        [
            instance,
            &self.time_ms,
            &self.request_id,
            &self.key,
            &self.endpoint,
            &self.route,
            &self.provider,
            &self.model,
            &self.stream,
            &self.status,
            &self.error_class,
            &self.tokens_in,
            &self.tokens_out,
            &self.tokens_cached,
            &self.tokens_reasoning,
            &self.cost_usd,
            &self.latency_us,
            &self.ttft_us,
            &self.upstream_us,
            &self.attempts,
            &self.cache,
            &self.stages,
            &self.saved_usd,
            &self.tags,
        ]
    }
}

/// Reads a rollup from [`VALUE_COLUMNS`] at `at..at + 12`.
fn read_rollup(row: &Row, at: usize) -> Result<Rollup, tokio_postgres::Error> {
    let int = |i: usize| row.try_get::<_, i64>(at + i).map(to_u64);
    Ok(Rollup {
        requests: int(0)?,
        errors: int(1)?,
        tokens_in: int(2)?,
        tokens_out: int(3)?,
        tokens_cached: int(4)?,
        tokens_reasoning: int(5)?,
        cost_usd: row.try_get(at + 6)?,
        cost_unknown: int(7)?,
        cache_hits: int(8)?,
        latency_sum_us: int(9)?,
        latency: sketch_from(row.try_get::<_, &[u8]>(at + 10)?),
        ttft: sketch_from(row.try_get::<_, &[u8]>(at + 11)?),
    })
}

/// Reads a log row of [`REQUEST_COLUMNS`]: (id, entry).
fn read_request(row: &Row) -> Result<(i64, LoggedRequest), tokio_postgres::Error> {
    let id: i64 = row.try_get(0)?;
    let int = |i: usize| row.try_get::<_, i64>(i).map(to_u64);
    let optional = |i: usize| row.try_get::<_, Option<i64>>(i).map(|v| v.map(to_u64));
    let logged = LoggedRequest {
        time_ms: int(1)?,
        request_id: row.try_get(2)?,
        instance: row.try_get(3)?,
        key: row.try_get(4)?,
        endpoint: row.try_get(5)?,
        route: row.try_get(6)?,
        provider: row.try_get(7)?,
        model: row.try_get(8)?,
        stream: row.try_get(9)?,
        status: u16::try_from(row.try_get::<_, i32>(10)?).unwrap_or(0),
        error_class: row.try_get(11)?,
        tokens_in: int(12)?,
        tokens_out: int(13)?,
        tokens_cached: int(14)?,
        tokens_reasoning: int(15)?,
        cost_usd: row.try_get(16)?,
        latency_us: int(17)?,
        ttft_us: optional(18)?,
        upstream_us: optional(19)?,
        attempts: u32::try_from(row.try_get::<_, i64>(20)?).unwrap_or(u32::MAX),
        cache: row.try_get(21)?,
        stages: stages_from_json(row.try_get(22)?),
        saved_usd: row.try_get(23)?,
        tags: tags_from_json(row.try_get(24)?),
    };
    Ok((id, logged))
}
