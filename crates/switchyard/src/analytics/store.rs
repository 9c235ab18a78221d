//! Where analytics are persisted: SQLite in the data directory (the embedded default), or
//! Postgres when instances are scaled out. Both keep the same two tables:
//!
//! - `rollups`: one row per (tier, window, cube, instance, route, provider, model, key,
//!   status class) with counters and two encoded [`Sketch`]es. Each instance writes its own
//!   rows, so instances never overwrite each other; queries add them up. The `cube` column
//!   holds [`Cube::code`]; it was `keyed` (false, true) before the by-key cube, and both
//!   stores migrate such a table by renaming it and deriving the by-key cells from the keyed
//!   ones ([`ByKeyBackfill`]).
//! - `requests`: the raw request log, one row per request event, trimmed by age and size.
//!
//! The store is chosen once at start; the calls are async (SQLite runs on the blocking
//! pool) and every failure is a [`StoreError`] naming the store.

use std::sync::Arc;

use serde::Serialize;
use switchyard_core::analytics::query::{Answer, Dim, Filter, Fold, Query, SketchRef, answer};
use switchyard_core::analytics::rollup::ANY_KEY;
use switchyard_core::analytics::{Cube, Dims, RequestEvent, Rollup, RollupRow, Sketch, Tier};
use switchyard_core::config::StorageConfig;

use super::hours::{Hour, HourCache, Lookup};
use super::postgres::PostgresStore;
use super::spend::{
    FeedbackRow, QualityLine, SpendColumn, SpendKey, SpendLine, SpendPoint, SpendTotals,
};
use super::sqlite::SqliteStore;

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[error("{store}: {message}")]
pub struct StoreError {
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// What went wrong.
    pub message: String,
}

impl StoreError {
    /// A failure of `store`.
    pub fn new(store: &'static str, message: impl std::fmt::Display) -> Self {
        StoreError {
            store,
            message: message.to_string(),
        }
    }
}

/// What one flush writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// Changed rollup cells.
    pub rollups: Vec<RollupRow>,
    /// New request log entries.
    pub requests: Vec<RequestEvent>,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.rollups.is_empty() && self.requests.is_empty()
    }
}

/// A stored rollup cell, summed over instances is up to the query.
#[derive(Debug, Clone)]
pub struct StoredCell {
    /// Window start, unix ms.
    pub bucket_ms: u64,
    /// Dimensions.
    pub dims: Dims,
    /// Aggregate.
    pub rollup: Rollup,
}

/// What a store reads for a query.
#[derive(Debug, Clone)]
pub struct CellsQuery {
    /// Resolution.
    pub tier: Tier,
    /// The cube read.
    pub cube: Cube,
    /// First window, unix ms.
    pub from_ms: u64,
    /// End (exclusive), unix ms.
    pub to_ms: u64,
    /// Dimension filters.
    pub filter: Filter,
    /// Read the latency sketches (else they come back empty).
    pub sketches: bool,
    /// Which dimensions (in `Dims::as_strs` order) the query uses; a store may give the
    /// others as [`CellsQuery::unused`].
    pub dims: [bool; 5],
}

/// One keyed cell read back for the by-key cube's backfill: tier code, window, instance,
/// key, aggregate.
pub type KeyedCell = (i16, i64, String, String, Rollup);

/// The by-key cube's cells derived from keyed cells (for a table written before that cube
/// existed): one per (tier, window, instance, key), with counters added and sketches merged,
/// exactly what the aggregator would have written. Keyed cells are added one at a time, so
/// a migration holds only the (few) by-key cells, never the whole keyed cube.
#[derive(Debug, Default)]
pub struct ByKeyBackfill(std::collections::BTreeMap<(i16, i64, String, String), Rollup>);

impl ByKeyBackfill {
    /// Adds one keyed cell.
    pub fn add(&mut self, (tier, bucket, instance, key, rollup): KeyedCell) {
        self.0
            .entry((tier, bucket, instance, key))
            .or_default()
            .merge(&rollup);
    }

    /// The by-key cells, in key order (deterministic writes).
    pub fn into_cells(self) -> Vec<KeyedCell> {
        self.0
            .into_iter()
            .map(|((tier, bucket, instance, key), rollup)| (tier, bucket, instance, key, rollup))
            .collect()
    }
}

impl CellsQuery {
    /// What `query` needs.
    pub fn of(query: &Query) -> Self {
        let (from_ms, to_ms) = query.bucket_range();
        CellsQuery {
            tier: query.tier,
            cube: query.cube(),
            from_ms,
            to_ms,
            filter: query.filter.clone(),
            sketches: query.needs_sketches(),
            dims: {
                let mut used = [false; 5];
                for dim in query
                    .group_by
                    .iter()
                    .chain(query.filter.equals.iter().map(|(d, _)| d))
                {
                    used[dim.index()] = true;
                }
                used
            },
        }
    }

    /// The value a store may give for dimension `at` when the query does not use it: the
    /// cube's own `*` where the cube folds that dimension in (so the cell still tells its
    /// cube, [`Cube::of`]), else empty.
    pub fn unused(&self, at: usize) -> &'static str {
        let key = Dim::Key.index();
        match self.cube {
            Cube::Keyless if at == key => ANY_KEY,
            Cube::ByKey if at != key => ANY_KEY,
            _ => "",
        }
    }
}

/// Retention limits for pruning.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Request log entries older than this (ms) go.
    pub request_log_max_age_ms: u64,
    /// The request log is trimmed to this many bytes.
    pub request_log_max_bytes: u64,
}

/// What a prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rollup rows past their tier's retention.
    pub rollups: u64,
    /// Request log rows past the age limit.
    pub requests_by_age: u64,
    /// Request log rows removed to get under the size limit.
    pub requests_by_size: u64,
}

/// A page request over the raw log, newest first.
#[derive(Debug, Clone, Default)]
pub struct RequestsQuery {
    /// Rows per page (1..=1000).
    pub limit: u32,
    /// Continue after this cursor (from a previous page's `next_cursor`).
    pub before: Option<Cursor>,
    /// Exact status, e.g. 429.
    pub status: Option<u16>,
    /// Status class, e.g. `5xx`.
    pub status_class: Option<(u16, u16)>,
    /// Only failed (`true`) or only successful (`false`) requests.
    pub error: Option<bool>,
    /// Provider.
    pub provider: Option<String>,
    /// Route.
    pub route: Option<String>,
    /// Upstream model.
    pub model: Option<String>,
    /// Principal.
    pub key: Option<String>,
    /// A tag of the key.
    pub tag: Option<String>,
    /// At least this latency, microseconds.
    pub min_latency_us: Option<u64>,
    /// At or after this time, unix ms.
    pub from_ms: Option<u64>,
    /// Before this time, unix ms.
    pub to_ms: Option<u64>,
}

/// A parameter of a request log condition, typed as its column.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// A BIGINT column (times, latencies, ids).
    BigInt(i64),
    /// An INTEGER column (status).
    Int(i32),
    /// A TEXT column.
    Text(String),
}

impl RequestsQuery {
    /// Rows per page, 1 to 1000.
    pub fn page_size(&self) -> u32 {
        self.limit.clamp(1, 1000)
    }

    /// What follows `WHERE true` in either store: the conditions with `?` placeholders,
    /// newest first, and a limit one row over the page (that row tells whether there is a
    /// next page); and the parameters in placeholder order. `has_tag` is the store's
    /// condition that the `tags` array holds the tag in its one `?` (JSON functions differ).
    pub fn sql_tail(&self, has_tag: &str) -> (String, Vec<Param>) {
        let mut sql = String::new();
        let mut params = Vec::new();
        let mut condition = |clause: &str, values: Vec<Param>| {
            sql.push_str(clause);
            params.extend(values);
        };
        if let Some(cursor) = self.before {
            condition(
                " AND (time_ms, id) < (?, ?)",
                vec![
                    Param::BigInt(to_i64(cursor.time_ms)),
                    Param::BigInt(cursor.id),
                ],
            );
        }
        if let Some(status) = self.status {
            condition(" AND status = ?", vec![Param::Int(i32::from(status))]);
        }
        if let Some((low, high)) = self.status_class {
            condition(
                " AND status >= ? AND status <= ?",
                vec![Param::Int(i32::from(low)), Param::Int(i32::from(high))],
            );
        }
        match self.error {
            Some(true) => condition(" AND error_class IS NOT NULL", vec![]),
            Some(false) => condition(" AND error_class IS NULL", vec![]),
            None => {}
        }
        for (column, value) in [
            ("provider", &self.provider),
            ("route", &self.route),
            ("model", &self.model),
            ("key", &self.key),
        ] {
            if let Some(value) = value {
                condition(
                    &format!(" AND {column} = ?"),
                    vec![Param::Text(value.clone())],
                );
            }
        }
        if let Some(tag) = &self.tag {
            condition(has_tag, vec![Param::Text(tag.clone())]);
        }
        for (clause, value) in [
            (" AND latency_us >= ?", self.min_latency_us),
            (" AND time_ms >= ?", self.from_ms),
            (" AND time_ms < ?", self.to_ms),
        ] {
            if let Some(value) = value {
                condition(clause, vec![Param::BigInt(to_i64(value))]);
            }
        }
        sql.push_str(&format!(
            " ORDER BY time_ms DESC, id DESC LIMIT {}",
            self.page_size() + 1
        ));
        (sql, params)
    }
}

/// Numbers `?` placeholders in order with `sigil` (`?1, ?2` for SQLite, `$1, $2` for
/// Postgres). The SQL must hold no other `?`.
pub fn number_placeholders(sql: &str, sigil: char) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push(sigil);
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// A position in the log: (time, row id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Unix ms.
    pub time_ms: u64,
    /// Row id.
    pub id: i64,
}

impl Cursor {
    /// The opaque text form.
    pub fn encode(self) -> String {
        format!("{}-{}", self.time_ms, self.id)
    }

    /// Parses [`Cursor::encode`]'s form.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (time, id) = text.split_once('-')?;
        Some(Cursor {
            time_ms: time.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

/// One logged request as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedRequest {
    /// Arrival, unix ms.
    pub time_ms: u64,
    /// Request id.
    pub request_id: String,
    /// The instance that served it.
    pub instance: String,
    /// Principal.
    pub key: String,
    /// The virtual key's tags.
    pub tags: Vec<String>,
    /// Endpoint path.
    pub endpoint: String,
    /// Route.
    pub route: Option<String>,
    /// Provider.
    pub provider: Option<String>,
    /// Upstream model.
    pub model: Option<String>,
    /// Streamed.
    pub stream: bool,
    /// HTTP status.
    pub status: u16,
    /// Error class.
    pub error_class: Option<String>,
    /// Input tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// Cached input tokens.
    pub tokens_cached: u64,
    /// Reasoning tokens.
    pub tokens_reasoning: u64,
    /// Cost, USD, when known.
    pub cost_usd: Option<f64>,
    /// What a cache hit saved, USD.
    pub saved_usd: Option<f64>,
    /// Whole request, microseconds.
    pub latency_us: u64,
    /// Time to first token, microseconds.
    pub ttft_us: Option<u64>,
    /// Upstream time, microseconds.
    pub upstream_us: Option<u64>,
    /// Attempts.
    pub attempts: u32,
    /// Cache outcome.
    pub cache: String,
    /// Stage durations, microseconds, in order.
    pub stages: Vec<(String, u64)>,
}

/// A page of the log.
#[derive(Debug, Clone, Serialize)]
pub struct RequestsPage {
    /// Newest first.
    pub data: Vec<LoggedRequest>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl RequestsPage {
    /// A page from the rows read with [`RequestsQuery::sql_tail`]'s limit, (row id, entry)
    /// newest first: the extra row, if any, is dropped and says there is a next page.
    pub fn from_rows(mut rows: Vec<(i64, LoggedRequest)>, page_size: u32) -> Self {
        let page_size = page_size as usize;
        let next_cursor = if rows.len() > page_size {
            rows.truncate(page_size);
            rows.last().map(|(id, logged)| {
                Cursor {
                    time_ms: logged.time_ms,
                    id: *id,
                }
                .encode()
            })
        } else {
            None
        };
        RequestsPage {
            data: rows.into_iter().map(|(_, logged)| logged).collect(),
            next_cursor,
        }
    }
}

/// The stages as stored (JSON text).
pub fn stages_json(stages: &[(&'static str, u64)]) -> String {
    serde_json::to_string(stages).unwrap_or_else(|_| "[]".to_owned())
}

/// The tags as stored: a JSON array, NULL when there are none.
pub fn tags_json(tags: &[String]) -> Option<String> {
    (!tags.is_empty()).then(|| serde_json::to_string(tags).unwrap_or_else(|_| "[]".to_owned()))
}

/// The tags read back.
pub fn tags_from_json(text: Option<&str>) -> Vec<String> {
    text.and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// The stages read back.
pub fn stages_from_json(text: &str) -> Vec<(String, u64)> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Decodes a stored sketch; a malformed one reads as empty and is logged, so one bad row
/// does not fail a query.
pub fn sketch_from(bytes: &[u8]) -> Sketch {
    Sketch::decode(bytes).unwrap_or_else(|error| {
        tracing::warn!(%error, "skipping a malformed stored sketch");
        Sketch::new()
    })
}

/// The filter value a cell must have for `dim`, if the query filters on it.
pub fn filter_value(filter: &Filter, dim: Dim) -> Option<&str> {
    filter
        .equals
        .iter()
        .find(|(d, _)| *d == dim)
        .map(|(_, v)| v.as_str())
}

/// Names read back from a store, shared: cells of one query repeat a handful of names
/// thousands of times, so each is allocated once.
#[derive(Debug, Default)]
pub struct Names(std::collections::HashMap<Box<str>, Arc<str>>);

impl Names {
    /// The shared copy of `name`.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(found) = self.0.get(name) {
            return Arc::clone(found);
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(Box::from(name), Arc::clone(&shared));
        shared
    }
}

/// The tier whose windows carry a version: the one the query cache keeps
/// ([`super::hours`]).
pub const VERSIONED_TIER: Tier = Tier::Hour;

/// The windows whose version a write of `rows` bumps: the distinct [`VERSIONED_TIER`]
/// windows it touches, in order (so that writers sharing a store lock version rows in the
/// same order and cannot deadlock). A version changes with every write into its window, in
/// the write's own transaction: a reader that sees a version also sees every row written
/// before it.
pub fn versioned_windows(rows: &[RollupRow]) -> Vec<(Tier, u64)> {
    let mut windows: Vec<(Tier, u64)> = rows
        .iter()
        .filter(|row| row.tier == VERSIONED_TIER)
        .map(|row| (row.tier, row.bucket_ms))
        .collect();
    windows.sort_unstable();
    windows.dedup();
    windows
}

/// Milliseconds as the stores' signed 64-bit integers.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Back from the stores' signed integers (negatives read as 0).
pub fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The analytics store.
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded SQLite files (or SQLite in memory).
    Sqlite(Arc<SqliteStore>),
    /// Shared Postgres.
    Postgres(Arc<PostgresStore>),
}

impl Store {
    /// Opens the configured store: Postgres when a URL is set, else SQLite in the data
    /// directory (or in memory). Creates the tables (runs the migrations) if needed.
    pub async fn open(storage: &StorageConfig) -> Result<Store, StoreError> {
        match &storage.postgres_url {
            Some(url) => Ok(Store::Postgres(Arc::new(
                PostgresStore::connect(url.expose()).await?,
            ))),
            None => {
                let dir = storage.data_dir.clone();
                let store = blocking(move || SqliteStore::open(dir.as_deref())).await?;
                Ok(Store::Sqlite(Arc::new(store)))
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Writes a flush: rollup rows (replacing this instance's rows, or adding merge rows)
    /// and log entries, in one transaction.
    pub async fn write(&self, instance: &str, batch: Arc<Batch>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                let instance = instance.to_owned();
                blocking(move || store.write(&instance, &batch)).await
            }
            Store::Postgres(store) => store.write(instance, &batch).await,
        }
    }

    /// The cells a query reads: its tier and cube in its range, matching its filter, every
    /// instance's rows included. The latency sketches are read only when a metric needs
    /// them.
    pub async fn cells(&self, query: &Query) -> Result<Vec<StoredCell>, StoreError> {
        let read = CellsQuery::of(query);
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.cells(&read)).await
            }
            Store::Postgres(store) => store.cells(&read).await,
        }
    }

    /// Answers an analytics query from the stored tiers. SQLite streams its rows into the
    /// fold on the blocking pool; Postgres returns its rows and they are folded here.
    pub async fn answer(&self, query: Query) -> Result<Answer, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || {
                    let mut fold = Fold::new(&query);
                    store.fold(&CellsQuery::of(&query), &mut fold)?;
                    Ok(fold.finish())
                })
                .await
            }
            Store::Postgres(store) => {
                let cells = store.cells(&CellsQuery::of(&query)).await?;
                Ok(answer(
                    &query,
                    cells.iter().map(|c| (c.bucket_ms, &c.dims, &c.rollup)),
                ))
            }
        }
    }

    /// The versions of `tier`'s windows in `[from_ms, to_ms)` (a window never written has
    /// none; treat it as 0), in window order.
    pub async fn versions(
        &self,
        tier: Tier,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(u64, i64)>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.versions(tier, from_ms, to_ms)).await
            }
            Store::Postgres(store) => store.versions(tier, from_ms, to_ms).await,
        }
    }

    /// Answers an analytics query, the closed hours from `cache` where it holds them at
    /// their current version (see [`super::hours`]); queries the cache does not cover go to
    /// [`Store::answer`]. The answer is the same either way.
    pub async fn answer_cached(
        &self,
        cache: &Arc<HourCache>,
        query: Query,
        now_ms: u64,
    ) -> Result<Answer, StoreError> {
        let cube = query.cube();
        if !HourCache::covers(query.tier, cube) {
            return self.answer(query).await;
        }
        let (from, to) = query.bucket_range();
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                let cache = Arc::clone(cache);
                let work = move || {
                    let versions = store.versions(VERSIONED_TIER, from, to)?;
                    let lookup = cache.lookup(cube, from, to, &versions);
                    let mut cells = Vec::new();
                    for &(from, to) in &lookup.reads {
                        cells.extend(store.cells(&whole_cells(cube, from, to))?);
                    }
                    Ok(fold_cached(
                        &query, &cache, lookup, &cells, &versions, now_ms,
                    ))
                };
                // On a worker of the multi-threaded runtime the query runs on this thread
                // while its other tasks move to another: no wake-up of another thread on
                // the query's path (on a loaded machine, milliseconds at the tail).
                // Elsewhere (a current-thread runtime) it goes to the blocking pool.
                if tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread
                {
                    tokio::task::block_in_place(work)
                } else {
                    blocking(work).await
                }
            }
            Store::Postgres(store) => {
                let versions = store.versions(VERSIONED_TIER, from, to).await?;
                let lookup = cache.lookup(cube, from, to, &versions);
                let reads: Vec<CellsQuery> = lookup
                    .reads
                    .iter()
                    .map(|&(from, to)| whole_cells(cube, from, to))
                    .collect();
                // Pipelined on the reader connection.
                let cells: Vec<StoredCell> =
                    futures_util::future::try_join_all(reads.iter().map(|read| store.cells(read)))
                        .await?
                        .into_iter()
                        .flatten()
                        .collect();
                Ok(fold_cached(
                    &query, cache, lookup, &cells, &versions, now_ms,
                ))
            }
        }
    }

    /// A page of the request log.
    pub async fn requests(&self, query: RequestsQuery) -> Result<RequestsPage, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.requests(&query)).await
            }
            Store::Postgres(store) => store.requests(&query).await,
        }
    }

    /// Deletes what is past retention.
    pub async fn prune(&self, now_ms: u64, retention: Retention) -> Result<Pruned, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.prune(now_ms, retention)).await
            }
            Store::Postgres(store) => store.prune(now_ms, retention).await,
        }
    }
}

impl Store {
    /// Adds cells into the spend ledger.
    pub async fn write_spend(&self, rows: Vec<(SpendKey, SpendTotals)>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.write_spend(&rows)).await
            }
            Store::Postgres(store) => store.write_spend(&rows).await,
        }
    }

    /// The spend of `member` of `column` (everything with none) in `[from_ms, to_ms)`.
    pub async fn spent(
        &self,
        column: Option<SpendColumn>,
        member: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                let member = member.to_owned();
                blocking(move || store.spent(column, &member, from_ms, to_ms)).await
            }
            Store::Postgres(store) => store.spent(column, member, from_ms, to_ms).await,
        }
    }

    /// Stores a feedback score.
    pub async fn write_feedback(&self, row: FeedbackRow) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.write_feedback(&row)).await
            }
            Store::Postgres(store) => store.write_feedback(&row).await,
        }
    }

    /// Feedback in `[from_ms, to_ms)` per route, tier and model.
    pub async fn quality(&self, from_ms: u64, to_ms: u64) -> Result<Vec<QualityLine>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.quality(from_ms, to_ms)).await
            }
            Store::Postgres(store) => store.quality(from_ms, to_ms).await,
        }
    }

    /// The spend in `[from_ms, to_ms)` grouped by `column`.
    pub async fn spend_report(
        &self,
        column: SpendColumn,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SpendLine>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.spend_report(column, from_ms, to_ms)).await
            }
            Store::Postgres(store) => store.spend_report(column, from_ms, to_ms).await,
        }
    }

    /// The spend per member of `column` (one empty member with none) and ledger bucket over
    /// `[from_ms, to_ms)`, the buckets before `detail_from_ms` folded into one row at
    /// `from_ms`: what the budget forecasts read, one query for all of a budget's members.
    pub async fn spend_series(
        &self,
        column: Option<SpendColumn>,
        from_ms: u64,
        detail_from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<SpendPoint>, StoreError> {
        match self {
            Store::Sqlite(store) => {
                let store = Arc::clone(store);
                blocking(move || store.spend_series(column, from_ms, detail_from_ms, to_ms)).await
            }
            Store::Postgres(store) => {
                store
                    .spend_series(column, from_ms, detail_from_ms, to_ms)
                    .await
            }
        }
    }
}

/// Everything a cube holds in `[from_ms, to_ms)` of the versioned tier: every dimension,
/// both sketches, no filter (what the cache keeps serves any query on the cube).
fn whole_cells(cube: Cube, from_ms: u64, to_ms: u64) -> CellsQuery {
    CellsQuery {
        tier: VERSIONED_TIER,
        cube,
        from_ms,
        to_ms,
        filter: Filter::default(),
        sketches: true,
        dims: [true; 5],
    }
}

/// Folds a query from the cached hours and the cells read for the others (caching the
/// closed ones), each window once.
fn fold_cached(
    query: &Query,
    cache: &HourCache,
    lookup: Lookup,
    cells: &[StoredCell],
    versions: &[(u64, i64)],
    now_ms: u64,
) -> Answer {
    let built = cache.fill(query.cube(), &lookup.reads, cells, versions, now_ms);
    let mut hours: Vec<(u64, Arc<Hour>)> = built;
    hours.extend(lookup.cached);
    hours.sort_by_key(|(bucket, _)| *bucket);
    hours.dedup_by_key(|(bucket, _)| *bucket);
    let mut fold = Fold::new(query);
    // The cells of the hours not held as `Hour`s (the open one) first, then the hours in
    // time order, each point sealed once its last hour is in: the fold then holds the
    // sketch sums of one point at a time.
    for cell in cells {
        if hours
            .binary_search_by_key(&cell.bucket_ms, |(bucket, _)| *bucket)
            .is_err()
        {
            // Decoded sketches cannot be malformed.
            let _ = fold.add(
                cell.bucket_ms,
                cell.dims.as_strs(),
                &cell.rollup,
                SketchRef::Decoded(&cell.rollup.latency),
                SketchRef::Decoded(&cell.rollup.ttft),
            );
        }
    }
    for (bucket, hour) in &hours {
        fold.seal_before(*bucket);
        hour.fold_into(*bucket, &mut fold);
    }
    fold.finish()
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::new("sqlite", format!("store task failed: {error}")))?
}

/// The oldest window each stored tier keeps at `now_ms` (one extra window of slack).
pub fn rollup_horizon(tier: Tier, now_ms: u64) -> u64 {
    tier.bucket(now_ms.saturating_sub(tier.retention_ms() + tier.width_ms()))
}
