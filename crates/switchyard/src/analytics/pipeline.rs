//! The analytics background task: it drains the event channel every 50 ms into the
//! Prometheus metrics, the rollup [`Aggregator`] and the request log buffer, and writes to
//! the store every `analytics.flush_interval` (default 1 s), so a crash loses at most the
//! last interval. Rollups past retention and the request log past its age and size limits
//! are pruned every minute. On shutdown it drains what is left and flushes it.
//!
//! Store writes and retention passes run beside the draining, one of each at a time, so a
//! slow or stalled store never stops the metrics and rollups from taking events. A write
//! that fails is kept and retried on the next flush: rollup rows are compacted (a later
//! whole-window row replaces an earlier one; late merge rows add up), so an outage holds one
//! row per cell, not one per flush. The request log buffer is bounded
//! ([`MAX_PENDING_REQUESTS`], enforced at every drain, also while a write hangs); past it the
//! oldest entries are dropped and counted (`switchyard_analytics_lost_total`), never
//! silently.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use switchyard_core::analytics::rollup::DEFAULT_GRACE_MS;
use switchyard_core::analytics::{Aggregator, Cube, Dims, RequestEvent, RollupRow, Tier};
use switchyard_core::config::AnalyticsConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use switchyard_core::analytics::query::{Answer, Fold, Query};

use super::hours::{self, HourCache};
use super::store::{Batch, Retention, Store, StoreError};
use super::{Consumer, Metrics, SinkCounts};

/// How often the channel is drained. Draining in batches instead of waking per event keeps
/// a cross-thread wake-up (a futex call) off every request's path.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// How often retention is enforced.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Request log entries held while the store is failing, at most.
pub const MAX_PENDING_REQUESTS: usize = 50_000;

/// Rollup rows held while the store is failing, at most (after compaction).
pub const MAX_PENDING_ROLLUPS: usize = 200_000;

/// At most one log line in this long about buffered entries being dropped.
const LOSS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long shutdown waits for the final flush.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of the pipeline, for `/admin/analytics/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Successful store writes.
    pub flushes: AtomicU64,
    /// Failed store writes (retried).
    pub flush_failures: AtomicU64,
    /// Rollup rows written.
    pub rollup_rows_written: AtomicU64,
    /// Request log entries written.
    pub requests_logged: AtomicU64,
    /// Rollup rows and log entries waiting for the store.
    pub pending: AtomicU64,
    /// Log entries or rollup rows dropped because the store failed for too long.
    pub lost: AtomicU64,
    /// Rows removed by retention.
    pub pruned: AtomicU64,
    /// Heap bytes of the in-memory aggregation and the pending buffers.
    pub memory_bytes: AtomicU64,
}

/// The analytics subsystem: the store, the in-memory tiers and the background task.
#[derive(Debug)]
pub struct Analytics {
    /// The store.
    pub store: Store,
    /// This process's id in the store (each instance writes its own rollup rows).
    pub instance: Arc<str>,
    /// Live tiers and open windows.
    aggregator: Mutex<Aggregator>,
    /// Closed hours of the keyless and by-key cubes, for queries.
    pub hours: Arc<HourCache>,
    config: AnalyticsConfig,
    /// Counters.
    pub stats: PipelineStats,
    last_error: Mutex<Option<String>>,
    /// When the loss of buffered entries was last logged, and what was lost since.
    loss_log: Mutex<(Option<std::time::Instant>, u64)>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What `/admin/analytics/status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    store: &'static str,
    instance: String,
    flush_interval_ms: u64,
    flushes: u64,
    flush_failures: u64,
    rollup_rows_written: u64,
    requests_logged: u64,
    pending: u64,
    lost: u64,
    pruned: u64,
    memory_bytes: u64,
    query_cache: QueryCacheStatus,
    last_error: Option<String>,
}

/// The query cache's part of the status.
#[derive(Debug, Serialize)]
struct QueryCacheStatus {
    hours: usize,
    bytes: usize,
    max_bytes: usize,
    hits: u64,
    misses: u64,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A store write in flight, handing back its batch and result.
type Write = JoinHandle<(Arc<Batch>, Result<(), StoreError>)>;

/// A running retention pass.
type Prune = JoinHandle<Result<super::store::Pruned, StoreError>>;

#[derive(Default)]
struct Pending {
    rollups: Vec<RollupRow>,
    requests: Vec<RequestEvent>,
}

impl Pending {
    fn len(&self) -> usize {
        self.rollups.len() + self.requests.len()
    }

    fn heap_bytes(&self) -> usize {
        self.rollups
            .iter()
            .map(|r| std::mem::size_of::<RollupRow>() + r.rollup.heap_bytes())
            .sum::<usize>()
            + self.requests.len() * (std::mem::size_of::<RequestEvent>() + 128)
    }
}

/// One row per cell: a later whole-window row replaces an earlier one, merge rows add up.
fn compact(rows: Vec<RollupRow>) -> Vec<RollupRow> {
    let mut at: HashMap<(Tier, u64, Cube, Dims, bool), usize> = HashMap::new();
    let mut out: Vec<RollupRow> = Vec::with_capacity(rows.len());
    for row in rows {
        let key = (
            row.tier,
            row.bucket_ms,
            row.cube,
            row.dims.clone(),
            row.merge,
        );
        match at.get(&key) {
            Some(&index) if row.merge => out[index].rollup.merge(&row.rollup),
            Some(&index) => out[index] = row,
            None => {
                at.insert(key, out.len());
                out.push(row);
            }
        }
    }
    out
}

impl Analytics {
    /// The subsystem over an opened store.
    pub fn new(store: Store, config: AnalyticsConfig) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        let instance = format!(
            "{}{}{}-{:08x}",
            host,
            if host.is_empty() { "" } else { "-" },
            std::process::id(),
            fastrand::u32(..)
        );
        let (stop, _) = watch::channel(false);
        Analytics {
            store,
            instance: Arc::from(instance),
            aggregator: Mutex::new(Aggregator::new()),
            hours: Arc::new(HourCache::new(hours::DEFAULT_MAX_BYTES)),
            config,
            stats: PipelineStats::default(),
            last_error: Mutex::new(None),
            loss_log: Mutex::new((None, 0)),
            stop,
            task: Mutex::new(None),
        }
    }

    /// The in-memory aggregation (the live 1 s tier).
    pub fn aggregator(&self) -> MutexGuard<'_, Aggregator> {
        lock(&self.aggregator)
    }

    /// The status document.
    pub fn status(&self) -> Status {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Status {
            store: self.store.kind(),
            instance: self.instance.to_string(),
            flush_interval_ms: u64::try_from(self.config.flush_interval.as_millis())
                .unwrap_or(u64::MAX),
            flushes: load(&self.stats.flushes),
            flush_failures: load(&self.stats.flush_failures),
            rollup_rows_written: load(&self.stats.rollup_rows_written),
            requests_logged: load(&self.stats.requests_logged),
            pending: load(&self.stats.pending),
            lost: load(&self.stats.lost),
            pruned: load(&self.stats.pruned),
            memory_bytes: load(&self.stats.memory_bytes),
            query_cache: QueryCacheStatus {
                hours: self.hours.len(),
                bytes: self.hours.heap_bytes(),
                max_bytes: self.hours.max_bytes(),
                hits: load(&self.hours.stats.hits),
                misses: load(&self.hours.stats.misses),
            },
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Answers a parsed query: the live 1 s tier from memory, the stored tiers from the
    /// store, closed hours from the query cache.
    pub async fn answer(&self, query: Query) -> Result<Answer, StoreError> {
        if query.tier == Tier::Second {
            let (from, to) = query.bucket_range();
            let mut fold = Fold::new(&query);
            self.aggregator().fold_seconds(from, to, &mut fold);
            return Ok(fold.finish());
        }
        self.store.answer_cached(&self.hours, query, now_ms()).await
    }

    /// Heap bytes of the subsystem now, outside the background task's buffers: the
    /// aggregation and the query cache.
    pub fn heap_bytes(&self) -> usize {
        lock(&self.aggregator).heap_bytes() + self.hours.heap_bytes()
    }

    /// Starts the background task.
    pub fn spawn(
        self: &Arc<Self>,
        receiver: mpsc::Receiver<RequestEvent>,
        metrics: Arc<Metrics>,
        counts: Arc<SinkCounts>,
        configured_routes: HashSet<String>,
    ) {
        let consumer = Consumer::new(self.config.metrics_max_series, configured_routes);
        let task = tokio::spawn(Arc::clone(self).run(
            receiver,
            consumer,
            metrics,
            counts,
            self.stop.subscribe(),
        ));
        *lock(&self.task) = Some(task);
    }

    /// Drains the channel, writes everything to the store and stops the task. Call once
    /// no more requests are in flight.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = lock(&self.task).take();
        if let Some(task) = task
            && tokio::time::timeout(FINAL_FLUSH_TIMEOUT + Duration::from_secs(1), task)
                .await
                .is_err()
        {
            tracing::error!("analytics: the final flush did not finish in time");
        }
    }

    fn retention(&self) -> Retention {
        Retention {
            request_log_max_age_ms: u64::try_from(self.config.request_log_max_age.as_millis())
                .unwrap_or(u64::MAX),
            request_log_max_bytes: self.config.request_log_max_bytes,
        }
    }

    /// Moves waiting events into the metrics, the aggregation and the log buffer. False
    /// once every sender is gone.
    fn drain(
        &self,
        receiver: &mut mpsc::Receiver<RequestEvent>,
        consumer: &mut Consumer,
        metrics: &Metrics,
        counts: &SinkCounts,
        pending: &mut Pending,
    ) -> bool {
        let mut aggregator = lock(&self.aggregator);
        loop {
            match receiver.try_recv() {
                Ok(event) => {
                    consumer.observe(metrics, &event);
                    aggregator.observe(&event);
                    if self.config.request_log {
                        pending.requests.push(event);
                    }
                    counts.processed.fetch_add(1, Ordering::Relaxed);
                }
                Err(empty_or_closed) => {
                    drop(aggregator);
                    // Bounded while a write is still running, too (a stalled store).
                    self.bound(pending);
                    return empty_or_closed == mpsc::error::TryRecvError::Empty;
                }
            }
        }
    }

    /// Takes the changed cells and the buffered log into one batch.
    fn take_batch(&self, pending: &mut Pending) -> Batch {
        let rows = lock(&self.aggregator).take_flush(now_ms(), DEFAULT_GRACE_MS);
        pending.rollups.extend(rows);
        Batch {
            rollups: compact(std::mem::take(&mut pending.rollups)),
            requests: std::mem::take(&mut pending.requests),
        }
    }

    /// Handles a finished write: counts it, or keeps the batch for the next try.
    fn finish_write(
        &self,
        batch: Arc<Batch>,
        result: Result<(), StoreError>,
        pending: &mut Pending,
    ) {
        match result {
            Ok(()) => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rollup_rows_written
                    .fetch_add(batch.rollups.len() as u64, Ordering::Relaxed);
                self.stats
                    .requests_logged
                    .fetch_add(batch.requests.len() as u64, Ordering::Relaxed);
            }
            Err(error) => {
                self.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, rows = batch.rollups.len(), requests = batch.requests.len(), "analytics: store write failed; will retry");
                *lock(&self.last_error) = Some(error.to_string());
                let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| Batch {
                    rollups: shared.rollups.clone(),
                    requests: shared.requests.clone(),
                });
                let newer_rollups = std::mem::take(&mut pending.rollups);
                pending.rollups = batch.rollups;
                pending.rollups.extend(newer_rollups);
                pending.rollups = compact(std::mem::take(&mut pending.rollups));
                let newer_requests = std::mem::take(&mut pending.requests);
                pending.requests = batch.requests;
                pending.requests.extend(newer_requests);
                self.bound(pending);
            }
        }
    }

    /// Drops the oldest pending entries past the bounds, counting them.
    fn bound(&self, pending: &mut Pending) {
        let excess = pending.requests.len().saturating_sub(MAX_PENDING_REQUESTS)
            + pending.rollups.len().saturating_sub(MAX_PENDING_ROLLUPS);
        if excess > 0 {
            self.stats.lost.fetch_add(excess as u64, Ordering::Relaxed);
            // Checked at every drain while the store stalls: logged at most every 10 s.
            let mut log = lock(&self.loss_log);
            log.1 += excess as u64;
            if log.0.is_none_or(|at| at.elapsed() >= LOSS_LOG_INTERVAL) {
                tracing::error!(
                    dropped = log.1,
                    "analytics: the store has failed or stalled for too long; dropping the oldest buffered entries"
                );
                *log = (Some(std::time::Instant::now()), 0);
            }
        }
        let requests = pending.requests.len().saturating_sub(MAX_PENDING_REQUESTS);
        pending.requests.drain(..requests);
        let rollups = pending.rollups.len().saturating_sub(MAX_PENDING_ROLLUPS);
        pending.rollups.drain(..rollups);
    }

    fn update_gauges(&self, pending: &Pending) {
        self.stats
            .pending
            .store(pending.len() as u64, Ordering::Relaxed);
        let memory = self.heap_bytes() + pending.heap_bytes();
        self.stats
            .memory_bytes
            .store(memory as u64, Ordering::Relaxed);
    }

    async fn run(
        self: Arc<Self>,
        mut receiver: mpsc::Receiver<RequestEvent>,
        mut consumer: Consumer,
        metrics: Arc<Metrics>,
        counts: Arc<SinkCounts>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut pending = Pending::default();
        let mut drain = tokio::time::interval(DRAIN_INTERVAL);
        let mut flush = tokio::time::interval(self.config.flush_interval);
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        for timer in [&mut drain, &mut flush, &mut prune] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut writing: Option<Write> = None;
        // Retention runs beside the draining, like writes: a slow or stalled store never
        // stops the metrics and the rollups from taking events.
        let mut pruning: Option<Prune> = None;
        loop {
            let idle = writing.is_none();
            let prune_idle = pruning.is_none();
            tokio::select! {
                _ = drain.tick() => {
                    if !self.drain(&mut receiver, &mut consumer, &metrics, &counts, &mut pending) {
                        break;
                    }
                }
                _ = flush.tick(), if idle => {
                    let batch = self.take_batch(&mut pending);
                    self.update_gauges(&pending);
                    if !batch.is_empty() {
                        let batch = Arc::new(batch);
                        let store = self.store.clone();
                        let instance = Arc::clone(&self.instance);
                        writing = Some(tokio::spawn(async move {
                            let result = store.write(&instance, Arc::clone(&batch)).await;
                            (batch, result)
                        }));
                    }
                }
                joined = async {
                    match writing.as_mut() {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                } => {
                    writing = None;
                    match joined {
                        Ok((batch, result)) => self.finish_write(batch, result, &mut pending),
                        Err(error) => {
                            // The write task itself failed (it panicked); its batch is gone.
                            self.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(%error, "analytics: a store write task failed");
                        }
                    }
                    self.update_gauges(&pending);
                }
                _ = prune.tick(), if prune_idle => {
                    let store = self.store.clone();
                    let retention = self.retention();
                    pruning = Some(tokio::spawn(async move { store.prune(now_ms(), retention).await }));
                }
                joined = async {
                    match pruning.as_mut() {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                } => {
                    pruning = None;
                    match joined {
                        Ok(Ok(pruned)) => {
                            let total = pruned.rollups + pruned.requests_by_age + pruned.requests_by_size;
                            self.stats.pruned.fetch_add(total, Ordering::Relaxed);
                            if total > 0 {
                                tracing::debug!(?pruned, "analytics: retention applied");
                            }
                        }
                        Ok(Err(error)) => tracing::warn!(%error, "analytics: pruning failed"),
                        Err(error) => tracing::error!(%error, "analytics: a pruning task failed"),
                    }
                }
                _ = stop.changed() => break,
            }
        }
        // A retention pass still running would hold the store's writer from the final flush.
        if let Some(pruning) = pruning {
            pruning.abort();
        }
        self.final_flush(receiver, consumer, &metrics, &counts, pending, writing)
            .await;
    }

    async fn final_flush(
        &self,
        mut receiver: mpsc::Receiver<RequestEvent>,
        mut consumer: Consumer,
        metrics: &Metrics,
        counts: &SinkCounts,
        mut pending: Pending,
        writing: Option<Write>,
    ) {
        if let Some(handle) = writing
            && let Ok((batch, result)) = handle.await
        {
            self.finish_write(batch, result, &mut pending);
        }
        self.drain(&mut receiver, &mut consumer, metrics, counts, &mut pending);
        let deadline = tokio::time::Instant::now() + FINAL_FLUSH_TIMEOUT;
        let mut batch = Arc::new(self.take_batch(&mut pending));
        for attempt in 1..=3 {
            if batch.is_empty() {
                break;
            }
            let write = self.store.write(&self.instance, Arc::clone(&batch));
            match tokio::time::timeout_at(deadline, write).await {
                Ok(Ok(())) => {
                    self.finish_write(Arc::clone(&batch), Ok(()), &mut pending);
                    tracing::info!(
                        rollups = batch.rollups.len(),
                        requests = batch.requests.len(),
                        "analytics: flushed on shutdown"
                    );
                    return;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, attempt, "analytics: final flush failed");
                }
                Err(_) => break,
            }
            batch = Arc::new(Batch {
                rollups: batch.rollups.clone(),
                requests: batch.requests.clone(),
            });
        }
        if !batch.is_empty() {
            let lost = (batch.rollups.len() + batch.requests.len()) as u64;
            self.stats.lost.fetch_add(lost, Ordering::Relaxed);
            tracing::error!(
                rollups = batch.rollups.len(),
                requests = batch.requests.len(),
                "analytics: the store is unavailable at shutdown; these were not saved"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    fn row(bucket: u64, requests: u64, merge: bool) -> RollupRow {
        let name: StdArc<str> = StdArc::from("x");
        RollupRow {
            tier: Tier::Minute,
            bucket_ms: bucket,
            cube: Cube::Keyless,
            dims: Dims {
                route: name.clone(),
                provider: name.clone(),
                model: name.clone(),
                key: name.clone(),
                status_class: name,
            },
            rollup: switchyard_core::analytics::Rollup {
                requests,
                ..Default::default()
            },
            merge,
        }
    }

    #[test]
    fn draining_bounds_the_request_log_buffer_even_while_a_write_runs() {
        let store = Store::Sqlite(Arc::new(
            super::super::sqlite::SqliteStore::open(None).unwrap(),
        ));
        let analytics = Analytics::new(
            store,
            AnalyticsConfig {
                flush_interval: Duration::from_secs(1),
                request_log: true,
                request_log_max_age: Duration::from_secs(3600),
                request_log_max_bytes: 1 << 20,
                metrics_max_series: 1000,
            },
        );
        let extra = 10;
        let (sender, mut receiver) = mpsc::channel(MAX_PENDING_REQUESTS + extra);
        for i in 0..MAX_PENDING_REQUESTS + extra {
            let mut event = super::super::sqlite::tests::event(1_800_000_000_000, "a", 200, 1);
            event.request_id = format!("req_{i}");
            sender.try_send(event).unwrap();
        }
        // No write has taken the buffer (a stalled store): draining alone keeps it bounded.
        let mut pending = Pending::default();
        let open = analytics.drain(
            &mut receiver,
            &mut Consumer::new(1000, HashSet::new()),
            &Metrics::new(),
            &SinkCounts::default(),
            &mut pending,
        );
        assert!(open);
        assert_eq!(pending.requests.len(), MAX_PENDING_REQUESTS);
        assert_eq!(
            pending.requests[0].request_id,
            format!("req_{extra}"),
            "the oldest go"
        );
        assert_eq!(analytics.stats.lost.load(Ordering::Relaxed), extra as u64);
    }

    #[test]
    fn compaction_keeps_the_latest_whole_window_and_adds_merges() {
        let rows = vec![
            row(0, 1, false),
            row(60_000, 5, false),
            row(0, 3, false),
            row(0, 2, true),
            row(0, 4, true),
        ];
        let compacted = compact(rows);
        assert_eq!(compacted.len(), 3);
        assert_eq!(compacted[0].rollup.requests, 3, "latest whole window");
        assert_eq!(compacted[1].rollup.requests, 5);
        assert!(compacted[2].merge);
        assert_eq!(compacted[2].rollup.requests, 6, "merges add up");
    }
}
