//! The embedded analytics store: two SQLite files in the data directory, in WAL mode.
//!
//! - `analytics.db` holds the rollups (small: the minute tier for a day and the hour tier for
//!   a week).
//! - `requests.db` holds the raw request log. It is a file of its own so that its size can
//!   be measured and bounded exactly (pages in use × page size); trimming frees pages that
//!   SQLite reuses, so the file stops growing at about the configured limit.
//!
//! Each file has a writer connection and a reader connection (WAL lets reads run beside the
//! writer). With `data_dir = ":memory:"` each file is one in-memory connection.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use switchyard_core::analytics::query::{Dim, Fold, SketchRef};
use switchyard_core::analytics::rollup::ANY_KEY;
use switchyard_core::analytics::{Cube, Dims, Rollup, Tier};

use super::spend::{
    self, FeedbackRow, QualityLine, SpendColumn, SpendKey, SpendLine, SpendPoint, SpendTotals,
};
use super::store::{
    Batch, ByKeyBackfill, CellsQuery, LoggedRequest, Names, Param, Pruned, RequestsPage,
    RequestsQuery, Retention, StoreError, StoredCell, filter_value, number_placeholders,
    rollup_horizon, sketch_from, stages_from_json, stages_json, tags_from_json, tags_json, to_i64,
    to_u64, versioned_windows,
};

const STORE: &str = "sqlite";

/// Page cache of the rollup writer, KiB (SQLite's default is 2 MiB): its upserts revisit
/// the same recent pages.
const CACHE_KIB: i64 = 1024;

/// Page cache of the request log writer, KiB: it only appends.
const LOG_CACHE_KIB: i64 = 256;

/// Page cache of the reader connections, KiB: queries scan a range once, and the OS page
/// cache serves repeated reads.
const READER_CACHE_KIB: i64 = 256;

const ANALYTICS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollups (
    tier INTEGER NOT NULL,
    cube INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    instance TEXT NOT NULL,
    route TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    status_class TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    tokens_cached INTEGER NOT NULL,
    tokens_reasoning INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    cost_unknown INTEGER NOT NULL,
    cache_hits INTEGER NOT NULL,
    latency_sum_us INTEGER NOT NULL,
    latency BLOB NOT NULL,
    ttft BLOB NOT NULL,
    PRIMARY KEY (tier, cube, bucket, instance, route, provider, model, key, status_class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_versions (
    tier INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tier, bucket)
) WITHOUT ROWID;
";

const REQUESTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    instance TEXT NOT NULL,
    key TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    route TEXT,
    provider TEXT,
    model TEXT,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_class TEXT,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    tokens_cached INTEGER NOT NULL,
    tokens_reasoning INTEGER NOT NULL,
    cost_usd REAL,
    latency_us INTEGER NOT NULL,
    ttft_us INTEGER,
    upstream_us INTEGER,
    attempts INTEGER NOT NULL,
    cache TEXT NOT NULL,
    stages TEXT NOT NULL,
    saved_usd REAL,
    tags TEXT
);
CREATE INDEX IF NOT EXISTS requests_by_time ON requests (time_ms, id);
";

/// The SQLite analytics store.
#[derive(Debug)]
pub struct SqliteStore {
    analytics: Mutex<Connection>,
    analytics_read: Option<Mutex<Connection>>,
    requests: Mutex<Connection>,
    requests_read: Option<Mutex<Connection>>,
}

fn sql_error(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |error| StoreError::new(STORE, format!("{context}: {error}"))
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave a transaction half-applied (it rolls back
    // on drop), so a poisoned lock is still usable.
    connection
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open(path: Option<&Path>, schema: &str, cache_kib: i64) -> Result<Connection, StoreError> {
    let name = path.map_or_else(|| ":memory:".to_owned(), |p| p.display().to_string());
    let connection = match path {
        Some(path) => Connection::open(path),
        None => Connection::open_in_memory(),
    }
    .map_err(|error| StoreError::new(STORE, format!("cannot open {name}: {error}")))?;
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA busy_timeout = 5000; PRAGMA cache_size = -{cache_kib};"
        ))
        .map_err(|error| StoreError::new(STORE, format!("{name}: {error}")))?;
    connection
        .execute_batch(schema)
        .map_err(|error| StoreError::new(STORE, format!("{name}: creating tables: {error}")))?;
    Ok(connection)
}

/// Adds the spend ledger's columns that a ledger from an earlier version lacks.
fn migrate_spend(connection: &Connection) -> Result<(), StoreError> {
    for column in spend::ADDED_COLUMNS {
        let has: i64 = connection
            .query_row(
                "SELECT count(*) FROM pragma_table_info('spend') WHERE name = ?1",
                [column],
                |row| row.get(0),
            )
            .map_err(sql_error("reading the spend ledger's columns"))?;
        if has == 0 {
            connection
                .execute_batch(&format!(
                    "ALTER TABLE spend ADD COLUMN {column} BIGINT NOT NULL DEFAULT 0"
                ))
                .map_err(sql_error("adding a spend ledger column"))?;
        }
    }
    Ok(())
}

/// Adds the columns a request log from an earlier version lacks (`saved_usd`, `tags`).
fn migrate_requests(connection: &Connection) -> Result<(), StoreError> {
    for (column, sql) in [
        (
            "saved_usd",
            "ALTER TABLE requests ADD COLUMN saved_usd REAL;",
        ),
        ("tags", "ALTER TABLE requests ADD COLUMN tags TEXT;"),
    ] {
        let has: i64 = connection
            .query_row(
                "SELECT count(*) FROM pragma_table_info('requests') WHERE name = ?1",
                [column],
                |row| row.get(0),
            )
            .map_err(sql_error("reading the request log schema"))?;
        if has == 0 {
            connection
                .execute_batch(sql)
                .map_err(sql_error("adding a request log column"))?;
        }
    }
    Ok(())
}

/// Brings a rollup table written before the by-key cube up to date, in one transaction: the
/// `keyed` column becomes `cube` (its 0 and 1 are the keyless and keyed codes), and the
/// by-key cells are derived from the keyed ones. Nothing to do on a current table.
fn migrate_rollups(connection: &mut Connection) -> Result<(), StoreError> {
    let old: i64 = connection
        .query_row(
            "SELECT count(*) FROM pragma_table_info('rollups') WHERE name = 'keyed'",
            [],
            |row| row.get(0),
        )
        .map_err(sql_error("reading the rollup schema"))?;
    if old == 0 {
        return Ok(());
    }
    let tx = connection
        .transaction()
        .map_err(sql_error("starting the rollup migration"))?;
    tx.execute_batch("ALTER TABLE rollups RENAME COLUMN keyed TO cube;")
        .map_err(sql_error("renaming rollups.keyed"))?;
    let keyed = {
        let mut select = tx
            .prepare(
                "SELECT requests, errors, tokens_in, tokens_out, tokens_cached, \
                 tokens_reasoning, cost_usd, cost_unknown, cache_hits, latency_sum_us, latency, \
                 ttft, tier, bucket, instance, key FROM rollups WHERE cube = ?1",
            )
            .map_err(sql_error("reading keyed rollups"))?;
        let rows = select
            .query_map(params![Cube::Keyed.code()], |row| {
                Ok((
                    row.get::<_, i16>(12)?,
                    row.get::<_, i64>(13)?,
                    row.get::<_, String>(14)?,
                    row.get::<_, String>(15)?,
                    read_rollup(row)?,
                ))
            })
            .map_err(sql_error("reading keyed rollups"))?;
        let mut backfill = ByKeyBackfill::default();
        for cell in rows {
            backfill.add(cell.map_err(sql_error("reading keyed rollups"))?);
        }
        backfill.into_cells()
    };
    {
        let mut insert = tx
            .prepare(
                "INSERT OR REPLACE INTO rollups VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                  ?17, ?18, ?19, ?20, ?21)",
            )
            .map_err(sql_error("preparing the by-key backfill"))?;
        for (tier, bucket, instance, key, rollup) in &keyed {
            let cell = params![
                tier,
                Cube::ByKey.code(),
                bucket,
                instance,
                ANY_KEY,
                ANY_KEY,
                ANY_KEY,
                key,
                ANY_KEY,
            ];
            let values = RollupValues::of(rollup);
            insert
                .execute(params_from_iter(cell.iter().chain(&values.params())))
                .map_err(sql_error("writing the by-key backfill"))?;
        }
    }
    tx.commit()
        .map_err(sql_error("committing the rollup migration"))?;
    tracing::info!(
        cells = keyed.len(),
        "migrated the sqlite rollups: keyed became cube, by-key cells derived"
    );
    Ok(())
}

fn reader(path: Option<&Path>) -> Result<Option<Mutex<Connection>>, StoreError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let connection = Connection::open(path).map_err(|error| {
        StoreError::new(STORE, format!("cannot open {}: {error}", path.display()))
    })?;
    connection
        .execute_batch(&format!(
            "PRAGMA busy_timeout = 5000; PRAGMA cache_size = -{READER_CACHE_KIB}; PRAGMA query_only = 1;"
        ))
        .map_err(|error| StoreError::new(STORE, format!("{}: {error}", path.display())))?;
    Ok(Some(Mutex::new(connection)))
}

impl SqliteStore {
    /// Opens (creating them if needed) the files in `data_dir`, or in-memory databases.
    pub fn open(data_dir: Option<&Path>) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = data_dir {
            std::fs::create_dir_all(dir).map_err(|error| {
                StoreError::new(
                    STORE,
                    format!(
                        "cannot create the data directory {}: {error}",
                        dir.display()
                    ),
                )
            })?;
        }
        let analytics_path = data_dir.map(|d| d.join("analytics.db"));
        let requests_path = data_dir.map(|d| d.join("requests.db"));
        let mut analytics = open(analytics_path.as_deref(), ANALYTICS_SCHEMA, CACHE_KIB)?;
        migrate_rollups(&mut analytics)?;
        analytics
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS spend ({}) WITHOUT ROWID;",
                spend::TABLE_COLUMNS
            ))
            .map_err(sql_error("creating the spend ledger"))?;
        migrate_spend(&analytics)?;
        analytics
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS feedback ({}); \
                 CREATE INDEX IF NOT EXISTS feedback_by_time ON feedback (time_ms);",
                spend::FEEDBACK_COLUMNS
            ))
            .map_err(sql_error("creating the feedback table"))?;
        let requests = open(requests_path.as_deref(), REQUESTS_SCHEMA, LOG_CACHE_KIB)?;
        migrate_requests(&requests)?;
        Ok(SqliteStore {
            analytics: Mutex::new(analytics),
            analytics_read: reader(analytics_path.as_deref())?,
            requests: Mutex::new(requests),
            requests_read: reader(requests_path.as_deref())?,
        })
    }

    fn analytics_reader(&self) -> MutexGuard<'_, Connection> {
        lock(self.analytics_read.as_ref().unwrap_or(&self.analytics))
    }

    fn requests_reader(&self) -> MutexGuard<'_, Connection> {
        lock(self.requests_read.as_ref().unwrap_or(&self.requests))
    }

    /// Writes a flush in one transaction per file.
    pub fn write(&self, instance: &str, batch: &Batch) -> Result<(), StoreError> {
        if !batch.rollups.is_empty() {
            let mut connection = lock(&self.analytics);
            let tx = connection
                .transaction()
                .map_err(sql_error("starting a rollup write"))?;
            {
                let mut select = tx
                    .prepare_cached(
                        "SELECT requests, errors, tokens_in, tokens_out, tokens_cached, \
                         tokens_reasoning, cost_usd, cost_unknown, cache_hits, latency_sum_us, \
                         latency, ttft FROM rollups WHERE tier = ?1 AND cube = ?2 AND bucket = ?3 \
                         AND instance = ?4 AND route = ?5 AND provider = ?6 AND model = ?7 \
                         AND key = ?8 AND status_class = ?9",
                    )
                    .map_err(sql_error("preparing a rollup read"))?;
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO rollups VALUES \
                         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                          ?17, ?18, ?19, ?20, ?21)",
                    )
                    .map_err(sql_error("preparing a rollup write"))?;
                for row in &batch.rollups {
                    let d = &row.dims;
                    let key = params![
                        row.tier.code(),
                        row.cube.code(),
                        to_i64(row.bucket_ms),
                        instance,
                        &*d.route,
                        &*d.provider,
                        &*d.model,
                        &*d.key,
                        &*d.status_class
                    ];
                    let mut rollup = row.rollup.clone();
                    if row.merge {
                        let stored = select
                            .query_row(key, read_rollup)
                            .optional()
                            .map_err(sql_error("reading a rollup to merge"))?;
                        if let Some(stored) = stored {
                            rollup.merge(&stored);
                        }
                    }
                    let values = RollupValues::of(&rollup);
                    upsert
                        .execute(params_from_iter(key.iter().chain(&values.params())))
                        .map_err(sql_error("writing a rollup"))?;
                }
                let mut bump = tx
                    .prepare_cached(
                        "INSERT INTO rollup_versions VALUES (?1, ?2, 1) \
                         ON CONFLICT (tier, bucket) DO UPDATE SET version = version + 1",
                    )
                    .map_err(sql_error("preparing a rollup version bump"))?;
                for (tier, bucket) in versioned_windows(&batch.rollups) {
                    bump.execute(params![tier.code(), to_i64(bucket)])
                        .map_err(sql_error("bumping a rollup version"))?;
                }
            }
            tx.commit().map_err(sql_error("committing rollups"))?;
        }
        if !batch.requests.is_empty() {
            let mut connection = lock(&self.requests);
            let tx = connection
                .transaction()
                .map_err(sql_error("starting a request log write"))?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO requests (time_ms, request_id, instance, key, endpoint, \
                         route, provider, model, stream, status, error_class, tokens_in, \
                         tokens_out, tokens_cached, tokens_reasoning, cost_usd, latency_us, \
                         ttft_us, upstream_us, attempts, cache, stages, saved_usd, tags) VALUES \
                         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                          ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)",
                    )
                    .map_err(sql_error("preparing a request log write"))?;
                for event in &batch.requests {
                    insert
                        .execute(params![
                            to_i64(event.time_unix_ms),
                            event.request_id,
                            instance,
                            event.principal,
                            event.endpoint,
                            event.route,
                            event.provider,
                            event.model,
                            event.stream,
                            event.status,
                            event.error_class,
                            to_i64(event.usage.input),
                            to_i64(event.usage.output),
                            to_i64(event.usage.cached_input),
                            to_i64(event.usage.reasoning),
                            event.cost_usd,
                            to_i64(event.latency_us),
                            event.ttft_us.map(to_i64),
                            event.upstream_us.map(to_i64),
                            event.attempts,
                            event.cache,
                            stages_json(&event.stages),
                            event.saved_usd,
                            tags_json(&event.tags),
                        ])
                        .map_err(sql_error("writing the request log"))?;
                }
            }
            tx.commit()
                .map_err(sql_error("committing the request log"))?;
        }
        Ok(())
    }

    /// Runs a query's cell read, handing each row to `visit` (columns: the rollup's 12,
    /// then bucket, route, provider, model, key, status class).
    fn each_cell(
        &self,
        read: &CellsQuery,
        mut visit: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), StoreError> {
        let sketches = if read.sketches {
            "latency, ttft"
        } else {
            "x'', x''"
        };
        // Dimensions the query does not use are not read (a constant is cheaper).
        let columns = ["route", "provider", "model", "key", "status_class"]
            .iter()
            .enumerate()
            .map(|(at, column)| {
                if read.dims[at] {
                    (*column).to_owned()
                } else {
                    format!("'{}'", read.unused(at))
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!(
            "SELECT requests, errors, tokens_in, tokens_out, tokens_cached, tokens_reasoning, \
             cost_usd, cost_unknown, cache_hits, latency_sum_us, {sketches}, bucket, {columns} \
             FROM rollups WHERE tier = ?1 AND cube = ?2 AND bucket >= ?3 AND bucket < ?4",
        );
        let mut values = vec![
            Value::Integer(i64::from(read.tier.code())),
            Value::Integer(i64::from(read.cube.code())),
            Value::Integer(to_i64(read.from_ms)),
            Value::Integer(to_i64(read.to_ms)),
        ];
        for dim in [
            Dim::Route,
            Dim::Provider,
            Dim::Model,
            Dim::Key,
            Dim::StatusClass,
        ] {
            if let Some(value) = filter_value(&read.filter, dim) {
                values.push(Value::Text(value.to_owned()));
                sql.push_str(&format!(" AND {} = ?{}", dim.name(), values.len()));
            }
        }
        let connection = self.analytics_reader();
        let mut statement = connection
            .prepare_cached(&sql)
            .map_err(sql_error("preparing an analytics query"))?;
        let mut rows = statement
            .query(params_from_iter(values))
            .map_err(sql_error("running an analytics query"))?;
        while let Some(row) = rows
            .next()
            .map_err(sql_error("reading an analytics query"))?
        {
            visit(row).map_err(sql_error("reading an analytics query"))?;
        }
        Ok(())
    }

    /// The cells a query reads.
    pub fn cells(&self, read: &CellsQuery) -> Result<Vec<StoredCell>, StoreError> {
        let mut names = Names::default();
        let mut cells = Vec::new();
        self.each_cell(read, |row| {
            cells.push(read_cell(row, &mut names)?);
            Ok(())
        })?;
        Ok(cells)
    }

    /// Streams a query's cells into `fold`, straight from the rows: no cell is built and
    /// no sketch decoded on its own.
    pub fn fold(&self, read: &CellsQuery, fold: &mut Fold<'_>) -> Result<(), StoreError> {
        self.each_cell(read, |row| {
            let text = |i: usize| -> rusqlite::Result<&str> { Ok(row.get_ref(i)?.as_str()?) };
            let dims = [text(13)?, text(14)?, text(15)?, text(16)?, text(17)?];
            let latency = row.get_ref(10)?.as_blob()?;
            let ttft = row.get_ref(11)?.as_blob()?;
            let added = fold.add(
                to_u64(row.get(12)?),
                dims,
                &read_counters(row)?,
                SketchRef::Encoded(latency),
                SketchRef::Encoded(ttft),
            );
            if let Err(error) = added {
                tracing::warn!(%error, "skipping a malformed stored sketch");
            }
            Ok(())
        })
    }

    /// The versions of `tier`'s windows in `[from_ms, to_ms)` that were ever written
    /// (see [`versioned_windows`]), in window order.
    pub fn versions(
        &self,
        tier: Tier,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        let connection = self.analytics_reader();
        let mut statement = connection
            .prepare_cached(
                "SELECT bucket, version FROM rollup_versions \
                 WHERE tier = ?1 AND bucket >= ?2 AND bucket < ?3 ORDER BY bucket",
            )
            .map_err(sql_error("preparing a rollup version read"))?;
        let rows = statement
            .query_map(
                params![tier.code(), to_i64(from_ms), to_i64(to_ms)],
                |row| Ok((to_u64(row.get(0)?), row.get(1)?)),
            )
            .map_err(sql_error("reading rollup versions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_error("reading rollup versions"))
    }

    /// A page of the request log, newest first.
    pub fn requests(&self, query: &RequestsQuery) -> Result<RequestsPage, StoreError> {
        let mut sql = String::from(
            "SELECT id, time_ms, request_id, instance, key, endpoint, route, provider, model, \
             stream, status, error_class, tokens_in, tokens_out, tokens_cached, \
             tokens_reasoning, cost_usd, latency_us, ttft_us, upstream_us, attempts, cache, \
             stages, saved_usd, tags FROM requests WHERE true",
        );
        let (tail, params) = query.sql_tail(
            " AND EXISTS (SELECT 1 FROM json_each(requests.tags) WHERE json_each.value = ?)",
        );
        sql.push_str(&number_placeholders(&tail, '?'));
        let values: Vec<Value> = params
            .into_iter()
            .map(|param| match param {
                Param::BigInt(n) => Value::Integer(n),
                Param::Int(n) => Value::Integer(i64::from(n)),
                Param::Text(text) => Value::Text(text),
            })
            .collect();
        let limit = query.page_size();
        let connection = self.requests_reader();
        let mut statement = connection
            .prepare_cached(&sql)
            .map_err(sql_error("preparing a request log query"))?;
        let rows = statement
            .query_map(params_from_iter(values), |row| {
                let id: i64 = row.get(0)?;
                let logged = LoggedRequest {
                    time_ms: to_u64(row.get(1)?),
                    request_id: row.get(2)?,
                    instance: row.get(3)?,
                    key: row.get(4)?,
                    endpoint: row.get(5)?,
                    route: row.get(6)?,
                    provider: row.get(7)?,
                    model: row.get(8)?,
                    stream: row.get(9)?,
                    status: row.get(10)?,
                    error_class: row.get(11)?,
                    tokens_in: to_u64(row.get(12)?),
                    tokens_out: to_u64(row.get(13)?),
                    tokens_cached: to_u64(row.get(14)?),
                    tokens_reasoning: to_u64(row.get(15)?),
                    cost_usd: row.get(16)?,
                    latency_us: to_u64(row.get(17)?),
                    ttft_us: row.get::<_, Option<i64>>(18)?.map(to_u64),
                    upstream_us: row.get::<_, Option<i64>>(19)?.map(to_u64),
                    attempts: row.get(20)?,
                    cache: row.get(21)?,
                    stages: stages_from_json(&row.get::<_, String>(22)?),
                    saved_usd: row.get(23)?,
                    tags: tags_from_json(row.get::<_, Option<String>>(24)?.as_deref()),
                };
                Ok((id, logged))
            })
            .map_err(sql_error("running a request log query"))?;
        let data = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_error("reading the request log"))?;
        Ok(RequestsPage::from_rows(data, limit))
    }

    /// Deletes rollups past their tier's retention and trims the request log by age, then
    /// by size.
    pub fn prune(&self, now_ms: u64, retention: Retention) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        {
            let connection = lock(&self.analytics);
            for tier in [Tier::Minute, Tier::Hour] {
                let removed = connection
                    .execute(
                        "DELETE FROM rollups WHERE tier = ?1 AND bucket < ?2",
                        params![tier.code(), to_i64(rollup_horizon(tier, now_ms))],
                    )
                    .map_err(sql_error("pruning rollups"))?;
                pruned.rollups += removed as u64;
                connection
                    .execute(
                        "DELETE FROM rollup_versions WHERE tier = ?1 AND bucket < ?2",
                        params![tier.code(), to_i64(rollup_horizon(tier, now_ms))],
                    )
                    .map_err(sql_error("pruning rollup versions"))?;
            }
        }
        let connection = lock(&self.requests);
        let oldest = now_ms.saturating_sub(retention.request_log_max_age_ms);
        pruned.requests_by_age = connection
            .execute(
                "DELETE FROM requests WHERE time_ms < ?1",
                params![to_i64(oldest)],
            )
            .map_err(sql_error("pruning the request log by age"))?
            as u64;
        // Once over the limit, trim to 90% of it (so that trimming is not on every flush).
        // Pages free up only when emptied, so the share to delete is estimated, then
        // checked again.
        let target = retention.request_log_max_bytes / 10 * 9;
        let mut used = used_bytes(&connection)?;
        if used > retention.request_log_max_bytes {
            for _ in 0..8 {
                if used <= target {
                    break;
                }
                let rows: i64 = connection
                    .query_row("SELECT count(*) FROM requests", [], |row| row.get(0))
                    .map_err(sql_error("counting the request log"))?;
                if rows == 0 {
                    break;
                }
                let share = (used - target) as f64 / used as f64;
                let remove = ((rows as f64 * share).ceil() as i64).max(1);
                pruned.requests_by_size += connection
                    .execute(
                        "DELETE FROM requests WHERE id IN \
                         (SELECT id FROM requests ORDER BY time_ms, id LIMIT ?1)",
                        params![remove],
                    )
                    .map_err(sql_error("trimming the request log"))?
                    as u64;
                used = used_bytes(&connection)?;
            }
        }
        Ok(pruned)
    }

    /// Bytes the request log uses (pages in use, free pages excluded).
    pub fn request_log_bytes(&self) -> Result<u64, StoreError> {
        used_bytes(&lock(&self.requests))
    }

    /// Adds cells into the spend ledger, in one transaction.
    pub fn write_spend(&self, rows: &[(SpendKey, SpendTotals)]) -> Result<(), StoreError> {
        let mut connection = lock(&self.analytics);
        let tx = connection
            .transaction()
            .map_err(sql_error("starting a spend write"))?;
        {
            let mut upsert = tx
                .prepare_cached(&spend::upsert_sql("spend", false))
                .map_err(sql_error("preparing a spend write"))?;
            for (key, totals) in rows {
                upsert
                    .execute(params![
                        to_i64(key.bucket_ms),
                        key.key,
                        key.team,
                        key.route,
                        key.model,
                        key.provider,
                        totals.cost_nanos,
                        totals.saved_nanos,
                        totals.requests,
                        totals.unpriced,
                        totals.input_tokens,
                        totals.output_tokens,
                        totals.baseline_nanos,
                        totals.default_nanos,
                        totals.hit_baseline_nanos,
                    ])
                    .map_err(sql_error("writing the spend ledger"))?;
            }
        }
        tx.commit().map_err(sql_error("committing a spend write"))
    }

    /// The spend in `[from_ms, to_ms)`, of `member` of `column` (everything with none).
    pub fn spent(
        &self,
        column: Option<SpendColumn>,
        member: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<i64, StoreError> {
        let connection = self.analytics_reader();
        let mut statement = connection
            .prepare_cached(&spend::spent_sql("spend", column, false))
            .map_err(sql_error("preparing a spend read"))?;
        let (from, to) = (to_i64(from_ms), to_i64(to_ms));
        let result = match column {
            Some(_) => statement.query_row(params![from, to, member], |row| row.get(0)),
            None => statement.query_row(params![from, to], |row| row.get(0)),
        };
        result.map_err(sql_error("reading the spend ledger"))
    }

    /// Stores a feedback score.
    pub fn write_feedback(&self, row: &FeedbackRow) -> Result<(), StoreError> {
        lock(&self.analytics)
            .prepare_cached(&spend::feedback_insert_sql("feedback", false))
            .and_then(|mut insert| {
                insert.execute(params![
                    to_i64(row.time_ms),
                    row.request_id,
                    row.key,
                    row.route,
                    row.tier,
                    row.model,
                    row.score,
                ])
            })
            .map(|_| ())
            .map_err(sql_error("storing feedback"))
    }

    /// Feedback in `[from_ms, to_ms)` per route, tier and model.
    pub fn quality(&self, from_ms: u64, to_ms: u64) -> Result<Vec<QualityLine>, StoreError> {
        let connection = self.analytics_reader();
        let mut statement = connection
            .prepare_cached(&spend::quality_sql("feedback", false))
            .map_err(sql_error("preparing a quality report"))?;
        let rows = statement
            .query_map(params![to_i64(from_ms), to_i64(to_ms)], |row| {
                Ok(spend::quality_line(
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .map_err(sql_error("reading a quality report"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_error("reading a quality report"))
    }

    /// The spend in `[from_ms, to_ms)` grouped by `column`, largest first.
    pub fn spend_report(
        &self,
        column: SpendColumn,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SpendLine>, StoreError> {
        let connection = self.analytics_reader();
        let mut statement = connection
            .prepare_cached(&spend::report_sql("spend", column, false))
            .map_err(sql_error("preparing a spend report"))?;
        let rows = statement
            .query_map(params![to_i64(from_ms), to_i64(to_ms)], |row| {
                Ok(SpendLine {
                    member: row.get(0)?,
                    totals: spend::totals_from([
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                        row.get(8)?,
                        row.get(9)?,
                    ]),
                })
            })
            .map_err(sql_error("reading a spend report"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_error("reading a spend report"))
    }

    /// The spend per member of `column` and bucket over `[from_ms, to_ms)`, the buckets
    /// before `detail_from_ms` folded into one row at `from_ms` (see `spend::series_sql`).
    pub fn spend_series(
        &self,
        column: Option<SpendColumn>,
        from_ms: u64,
        detail_from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SpendPoint>, StoreError> {
        let connection = self.analytics_reader();
        let mut statement = connection
            .prepare_cached(&spend::series_sql("spend", column, false))
            .map_err(sql_error("preparing a spend series"))?;
        let rows = statement
            .query_map(
                params![to_i64(from_ms), to_i64(detail_from_ms), to_i64(to_ms)],
                |row| {
                    Ok(SpendPoint {
                        member: row.get(0)?,
                        bucket_ms: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                        cost_nanos: row.get(2)?,
                    })
                },
            )
            .map_err(sql_error("reading a spend series"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql_error("reading a spend series"))
    }
}

fn used_bytes(connection: &Connection) -> Result<u64, StoreError> {
    let pragma = |name: &str| -> Result<i64, StoreError> {
        connection
            .query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .map_err(sql_error("measuring the request log"))
    };
    let pages = pragma("page_count")? - pragma("freelist_count")?;
    Ok(to_u64(pages) * to_u64(pragma("page_size")?))
}

/// Reads a cell: the rollup in columns 0..12, then bucket and dimensions.
fn read_cell(row: &rusqlite::Row<'_>, names: &mut Names) -> rusqlite::Result<StoredCell> {
    let mut text = |i: usize| -> rusqlite::Result<std::sync::Arc<str>> {
        Ok(names.get(row.get_ref(i)?.as_str()?))
    };
    Ok(StoredCell {
        dims: Dims {
            route: text(13)?,
            provider: text(14)?,
            model: text(15)?,
            key: text(16)?,
            status_class: text(17)?,
        },
        bucket_ms: to_u64(row.get(12)?),
        rollup: read_rollup(row)?,
    })
}

/// Reads a rollup's counters from columns 0..10 (its sketches are left empty).
fn read_counters(row: &rusqlite::Row<'_>) -> rusqlite::Result<Rollup> {
    let int = |i: usize| row.get::<_, i64>(i).map(to_u64);
    Ok(Rollup {
        requests: int(0)?,
        errors: int(1)?,
        tokens_in: int(2)?,
        tokens_out: int(3)?,
        tokens_cached: int(4)?,
        tokens_reasoning: int(5)?,
        cost_usd: row.get(6)?,
        cost_unknown: int(7)?,
        cache_hits: int(8)?,
        latency_sum_us: int(9)?,
        ..Rollup::default()
    })
}

/// A rollup's value columns, in table order after the key columns (`requests` to `ttft`),
/// ready to bind; the one place that lists them for writing.
struct RollupValues {
    counts: [i64; 6],
    cost_usd: f64,
    rest: [i64; 3],
    latency: Vec<u8>,
    ttft: Vec<u8>,
}

impl RollupValues {
    fn of(rollup: &Rollup) -> Self {
        // The table has the cost between the token counters and the rest.
        let [
            requests,
            errors,
            tokens_in,
            tokens_out,
            cached,
            reasoning,
            unknown,
            hits,
            latency,
        ] = rollup.counters().map(to_i64);
        RollupValues {
            counts: [requests, errors, tokens_in, tokens_out, cached, reasoning],
            cost_usd: rollup.cost_usd,
            rest: [unknown, hits, latency],
            latency: rollup.latency.encode(),
            ttft: rollup.ttft.encode(),
        }
    }

    fn params(&self) -> [&dyn rusqlite::ToSql; 12] {
        let [
            requests,
            errors,
            tokens_in,
            tokens_out,
            tokens_cached,
            tokens_reasoning,
        ] = &self.counts;
        let [cost_unknown, cache_hits, latency_sum_us] = &self.rest;
        [
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

/// Reads a whole rollup from columns 0..12.
fn read_rollup(row: &rusqlite::Row<'_>) -> rusqlite::Result<Rollup> {
    Ok(Rollup {
        latency: sketch_from(row.get_ref(10)?.as_blob()?),
        ttft: sketch_from(row.get_ref(11)?.as_blob()?),
        ..read_counters(row)?
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use switchyard_core::analytics::query::{Query, answer};
    use switchyard_core::analytics::{Aggregator, RequestEvent, RollupRow};
    use switchyard_core::wire::TokenUsage;

    use crate::analytics::store::Cursor;

    use super::*;

    const HOUR: u64 = 3_600_000;
    const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR;

    /// A served request event (also used by the pipeline's tests).
    pub(crate) fn event(
        time_ms: u64,
        provider: &str,
        status: u16,
        latency_ms: u64,
    ) -> RequestEvent {
        RequestEvent {
            time_unix_ms: time_ms,
            request_id: format!("req_{time_ms}_{provider}"),
            principal: "master".to_owned(),
            tags: Vec::new(),
            endpoint: "/v1/chat/completions".to_owned(),
            route: Some("chat".to_owned()),
            provider: Some(provider.to_owned()),
            model: Some("m".to_owned()),
            stream: false,
            status,
            error_class: (status >= 400).then(|| "bad_gateway".to_owned()),
            usage: TokenUsage {
                input: 7,
                output: 3,
                ..TokenUsage::default()
            },
            cost_usd: None,
            saved_usd: None,
            latency_us: latency_ms * 1_000,
            ttft_us: None,
            upstream_us: Some(latency_ms * 900),
            attempts: 1,
            cache: "none",
            rate_limit: None,
            stages: vec![("auth", 3), ("upstream", latency_ms * 900)],
        }
    }

    fn rows(events: &[RequestEvent], now: u64) -> Vec<RollupRow> {
        let mut aggregator = Aggregator::new();
        for event in events {
            aggregator.observe(event);
        }
        aggregator.take_flush(now, 10_000)
    }

    fn query(store: &SqliteStore, text: &str, now: u64) -> serde_json::Value {
        let pairs: Vec<(&str, &str)> = text
            .split('&')
            .map(|p| p.split_once('=').unwrap())
            .collect();
        let query = Query::parse(pairs, now).unwrap();
        let cells = store.cells(&CellsQuery::of(&query)).unwrap();
        serde_json::to_value(answer(
            &query,
            cells.iter().map(|c| (c.bucket_ms, &c.dims, &c.rollup)),
        ))
        .unwrap()
    }

    #[test]
    fn instances_add_up_rewrites_replace_and_late_rows_merge() {
        let store = SqliteStore::open(None).unwrap();
        let first = [
            event(T0 + 1_000, "a", 200, 100),
            event(T0 + 2_000, "a", 502, 300),
        ];
        store
            .write(
                "one",
                &Batch {
                    rollups: rows(&first, T0 + 5_000),
                    requests: vec![],
                },
            )
            .unwrap();
        // The same instance rewrites its window with more in it: replaced, not added.
        let more = [
            first[0].clone(),
            first[1].clone(),
            event(T0 + 3_000, "a", 200, 200),
        ];
        store
            .write(
                "one",
                &Batch {
                    rollups: rows(&more, T0 + 5_000),
                    requests: vec![],
                },
            )
            .unwrap();
        // Another instance, same window: added.
        let other = [event(T0 + 4_000, "b", 200, 1_000)];
        store
            .write(
                "two",
                &Batch {
                    rollups: rows(&other, T0 + 5_000),
                    requests: vec![],
                },
            )
            .unwrap();
        let now = T0 + 10 * 60_000;
        let answer = query(
            &store,
            "from=1799996400&interval=1m&metrics=requests,errors,p50,p99",
            now,
        );
        assert_eq!(answer["totals"]["requests"], 4);
        assert_eq!(answer["totals"]["errors"], 1);
        // Nearest rank over {100, 200, 300, 1000}: p50 = 200, p99 = 1000 (±2%).
        let p50 = answer["totals"]["p50"].as_f64().unwrap();
        assert!((p50 - 200.0).abs() <= 4.0, "{p50}");
        let p99 = answer["totals"]["p99"].as_f64().unwrap();
        assert!((p99 - 1_000.0).abs() <= 20.0, "{p99}");

        // A late merge row adds to what is stored.
        let mut late = rows(&[event(T0 + 5_000, "b", 200, 50)], T0 + 6_000);
        for row in &mut late {
            row.merge = true;
        }
        store
            .write(
                "two",
                &Batch {
                    rollups: late,
                    requests: vec![],
                },
            )
            .unwrap();
        let answer = query(
            &store,
            "from=1799996400&interval=1h&group_by=provider&metrics=requests",
            now,
        );
        assert_eq!(answer["totals"]["requests"], 5);
        assert_eq!(answer["series"][0]["group"]["provider"], "a");
        assert_eq!(answer["series"][1]["totals"]["requests"], 2);
    }

    #[test]
    fn a_request_log_from_before_savings_gains_the_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(Some(dir.path())).unwrap();
            store
                .write(
                    "one",
                    &Batch {
                        rollups: vec![],
                        requests: vec![event(T0, "a", 200, 10)],
                    },
                )
                .unwrap();
            // Back to the layout of a log written before `saved_usd`.
            lock(&store.requests)
                .execute_batch("ALTER TABLE requests DROP COLUMN saved_usd;")
                .unwrap();
        }
        for _ in 0..2 {
            let store = SqliteStore::open(Some(dir.path())).unwrap();
            let mut hit = event(T0 + 1_000, "a", 200, 1);
            hit.cache = "hit";
            hit.cost_usd = Some(0.0);
            hit.saved_usd = Some(0.0125);
            store
                .write(
                    "one",
                    &Batch {
                        rollups: vec![],
                        requests: vec![hit],
                    },
                )
                .unwrap();
            let page = store.requests(&RequestsQuery::default()).unwrap();
            for row in &page.data {
                let expected = (row.time_ms != T0).then_some(0.0125);
                assert_eq!(row.saved_usd, expected, "the old row has none");
            }
        }
    }

    #[test]
    fn a_request_log_from_before_saved_usd_and_tags_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join("requests.db")).unwrap();
            let schema = REQUESTS_SCHEMA.replace(
                "stages TEXT NOT NULL,\n    saved_usd REAL,\n    tags TEXT",
                "stages TEXT NOT NULL",
            );
            assert_ne!(schema, REQUESTS_SCHEMA, "the old schema is made");
            old.execute_batch(&schema).unwrap();
            old.execute(
                "INSERT INTO requests (time_ms, request_id, instance, key, endpoint, stream, \
                 status, tokens_in, tokens_out, tokens_cached, tokens_reasoning, latency_us, \
                 attempts, cache, stages) VALUES (?1, 'old', 'one', 'k', '/v1/chat/completions', \
                 0, 200, 1, 1, 0, 0, 10, 1, 'none', '[]')",
                [to_i64(T0)],
            )
            .unwrap();
        }
        let store = SqliteStore::open(Some(dir.path())).unwrap();
        let mut tagged = event(T0 + 1_000, "a", 200, 1);
        tagged.tags = vec!["ci".to_owned()];
        store
            .write(
                "one",
                &Batch {
                    rollups: vec![],
                    requests: vec![tagged],
                },
            )
            .unwrap();
        let query = RequestsQuery {
            limit: 10,
            ..RequestsQuery::default()
        };
        let rows = store.requests(&query).unwrap().data;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].tags, ["ci"]);
        assert_eq!(
            (rows[1].request_id.as_str(), rows[1].tags.len()),
            ("old", 0)
        );
        assert_eq!(rows[1].saved_usd, None);
    }

    #[test]
    fn a_table_from_before_the_by_key_cube_is_migrated_once() {
        let mut events = vec![
            event(T0 + 1_000, "a", 200, 100),
            event(T0 + 2_000, "b", 502, 300),
            event(T0 + 61_000, "a", 200, 200),
            event(T0 + 62_000, "b", 200, 1_000),
        ];
        events[1].principal = "sk-two".to_owned();
        events[3].principal = "sk-two".to_owned();
        let batch = || Batch {
            rollups: rows(&events, T0 + 5 * 60_000),
            requests: vec![],
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(Some(dir.path())).unwrap();
            store.write("one", &batch()).unwrap();
            store.write("two", &batch()).unwrap();
            // Back to the layout of a file written before the by-key cube.
            lock(&store.analytics)
                .execute_batch(
                    "DELETE FROM rollups WHERE cube = 2; \
                     ALTER TABLE rollups RENAME COLUMN cube TO keyed;",
                )
                .unwrap();
        }
        let fresh = SqliteStore::open(None).unwrap();
        fresh.write("one", &batch()).unwrap();
        fresh.write("two", &batch()).unwrap();
        let now = T0 + 10 * 60_000;
        let texts = [
            "from=1799996400&interval=1m&group_by=key&metrics=requests,errors,p50,p99,ttft_p50,cost",
            "from=1799996400&interval=1h&key=sk-two&metrics=requests,p95",
            "from=1799996400&interval=1h&group_by=provider&metrics=requests,p50",
            "from=1799996400&interval=1m&group_by=key,provider&metrics=requests,p50",
        ];
        for reopen in 0..2 {
            // The second open finds the table current and changes nothing.
            let migrated = SqliteStore::open(Some(dir.path())).unwrap();
            for text in texts {
                let expected = query(&fresh, text, now);
                assert_eq!(query(&migrated, text, now), expected, "{text} ({reopen})");
            }
            let by_key: i64 = lock(&migrated.analytics)
                .query_row("SELECT count(*) FROM rollups WHERE cube = 2", [], |row| {
                    row.get(0)
                })
                .unwrap();
            // Two keys, two minutes (and the one hour), two instances.
            assert_eq!(by_key, 2 * (2 + 1) * 2);
        }
        let answer = query(&fresh, texts[0], now);
        assert_eq!(answer["totals"]["requests"], 8);
        assert_eq!(answer["series"][0]["totals"]["requests"], 4);
    }

    #[test]
    fn retention_prunes_tiers_and_trims_the_log_by_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(Some(dir.path())).unwrap();
        let events: Vec<RequestEvent> = (0..2_000u64)
            .map(|i| event(T0 + i * 60_000, "a", 200, 10))
            .collect();
        let mut aggregator = Aggregator::new();
        let mut all_rows = Vec::new();
        for event in &events {
            aggregator.observe(event);
            all_rows.extend(aggregator.take_flush(event.time_unix_ms + 1, 10_000));
        }
        store
            .write(
                "one",
                &Batch {
                    rollups: all_rows,
                    requests: events.clone(),
                },
            )
            .unwrap();
        let last = T0 + 1_999 * 60_000;
        let now = last + 60_000;
        let generous = Retention {
            request_log_max_age_ms: 7 * 24 * HOUR,
            request_log_max_bytes: 1 << 30,
        };
        let pruned = store.prune(now, generous).unwrap();
        // 2000 minutes ≈ 33 h: the minute tier keeps 24 h (+1 window), the hour tier all.
        assert!(pruned.rollups > 0);
        assert_eq!(pruned.requests_by_age + pruned.requests_by_size, 0);
        let answer = query(&store, "from=-25h&interval=1h&metrics=requests", now);
        // now = T0 + 2000 min; 25 h back is minute 500, aligned down to the hour: minute
        // 480. One event per minute from 480 to 1999.
        assert_eq!(answer["totals"]["requests"], 2_000 - 480, "{answer}");

        // By age: keep the last 10 hours.
        let ten_hours = Retention {
            request_log_max_age_ms: 10 * HOUR,
            ..generous
        };
        let pruned = store.prune(now, ten_hours).unwrap();
        assert_eq!(pruned.requests_by_age, 2_000 - 600);
        let page = store
            .requests(&RequestsQuery {
                limit: 1000,
                ..RequestsQuery::default()
            })
            .unwrap();
        assert_eq!(page.data.len(), 600);
        assert_eq!(page.data.last().unwrap().time_ms, now - 10 * HOUR);

        // By size: trimmed to 90% of the limit, oldest first.
        let used = store.request_log_bytes().unwrap();
        let limit = used / 2;
        let pruned = store
            .prune(
                now,
                Retention {
                    request_log_max_bytes: limit,
                    ..ten_hours
                },
            )
            .unwrap();
        assert!(pruned.requests_by_size > 0);
        assert!(
            store.request_log_bytes().unwrap() <= limit,
            "trimmed under the limit"
        );
        let page = store
            .requests(&RequestsQuery {
                limit: 1000,
                ..RequestsQuery::default()
            })
            .unwrap();
        assert_eq!(page.data.first().unwrap().time_ms, last, "the newest stay");
        assert_eq!(page.data.len() as u64, 600 - pruned.requests_by_size);
    }

    #[test]
    fn the_log_pages_with_filters_and_a_stable_cursor() {
        let store = SqliteStore::open(None).unwrap();
        // Two entries share a millisecond: the id breaks the tie.
        let mut events: Vec<RequestEvent> = (0..7u64)
            .map(|i| event(T0 + i * 1_000, "a", 200, i))
            .collect();
        events.push(event(T0 + 6_000, "b", 429, 1));
        events[0].tags = vec!["Team".to_owned(), "50%_off".to_owned()];
        events[1].tags = vec!["a\"team".to_owned()];
        store
            .write(
                "one",
                &Batch {
                    rollups: vec![],
                    requests: events,
                },
            )
            .unwrap();
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .requests(&RequestsQuery {
                    limit: 3,
                    before,
                    ..RequestsQuery::default()
                })
                .unwrap();
            seen.extend(page.data.iter().map(|r| (r.time_ms, r.provider.clone())));
            match page.next_cursor {
                Some(cursor) => before = Cursor::decode(&cursor),
                None => break,
            }
        }
        assert_eq!(seen.len(), 8);
        assert_eq!(
            seen[0],
            (T0 + 6_000, Some("b".to_owned())),
            "newest, last written first"
        );
        let only = |query: RequestsQuery| store.requests(&query).unwrap().data.len();
        let base = RequestsQuery {
            limit: 100,
            ..RequestsQuery::default()
        };
        assert_eq!(
            only(RequestsQuery {
                status: Some(429),
                ..base.clone()
            }),
            1
        );
        assert_eq!(
            only(RequestsQuery {
                status_class: Some((400, 499)),
                ..base.clone()
            }),
            1
        );
        assert_eq!(
            only(RequestsQuery {
                error: Some(false),
                ..base.clone()
            }),
            7
        );
        assert_eq!(
            only(RequestsQuery {
                provider: Some("a".into()),
                ..base.clone()
            }),
            7
        );
        assert_eq!(
            only(RequestsQuery {
                min_latency_us: Some(5_000),
                ..base.clone()
            }),
            2
        );
        assert_eq!(
            only(RequestsQuery {
                from_ms: Some(T0 + 5_000),
                to_ms: Some(T0 + 6_000),
                ..base.clone()
            }),
            1
        );
        // A tag matches whole, case and all.
        for (tag, matches) in [
            ("Team", 1),
            ("50%_off", 1),
            ("team", 0),
            ("50%", 0),
            ("a\"team", 1),
        ] {
            let query = RequestsQuery {
                tag: Some(tag.to_owned()),
                ..base.clone()
            };
            assert_eq!(only(query), matches, "{tag}");
        }
        let oldest = store.requests(&base).unwrap().data.pop().unwrap();
        assert_eq!(oldest.tags, ["Team", "50%_off"]);
        let entry = &store.requests(&base).unwrap().data[0];
        assert!(entry.tags.is_empty());
        assert_eq!(
            entry.stages,
            vec![("auth".to_owned(), 3), ("upstream".to_owned(), 900)]
        );
        assert_eq!(entry.instance, "one");
    }
}
