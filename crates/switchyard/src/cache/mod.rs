//! The response cache: answers kept in memory (moka's TinyLFU, byte-weighted, with a
//! TTL per entry), optionally behind them a shared tier in Redis, and single-flight for
//! identical misses.
//!
//! A lookup ([`ResponseCache::lookup`]) either serves a fresh answer ([`Lookup::Hit`]),
//! makes the caller the one request that goes upstream for its key ([`Lookup::Lead`],
//! whose [`Fill`] stores the answer and wakes the waiters), or lets it go upstream on its
//! own ([`Lookup::Miss`]: the request may not store, or it waited for a leader past the
//! lock timeout). Identical requests that arrive while a leader is out wait for its
//! answer; if the leader fails or is dropped, they stop waiting at once and one of them
//! leads the next try.
//!
//! Freshness is checked on every read against the entry's own expiry (milliseconds of
//! wall time, so it holds across instances sharing Redis); moka's expiry is only how the
//! memory of expired entries is reclaimed. Wall time is passed in, so tests are exact.

mod shared;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use switchyard_core::cache::{CacheKey, CacheStatus, Entry, Plan};
use switchyard_core::config::CacheConfig;
use tokio::sync::watch;

pub use shared::SharedCache;

/// A request's outcome at the cache.
pub enum Lookup {
    /// A fresh answer.
    Hit(Arc<Entry>),
    /// Go upstream, then store the answer through the fill (dropping it unfilled releases
    /// the waiters).
    Lead(Fill),
    /// Go upstream without storing.
    Miss,
}

/// The state of one in-flight fill, as its waiters see it.
#[derive(Clone)]
enum Flight {
    Pending,
    Done(Option<Arc<Entry>>),
}

/// The cache's Prometheus series; also the counters `GET /admin/cache` reports.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    lookups: Family<ResultLabels, Counter>,
    evictions: Family<CauseLabels, Counter>,
    stores: Counter,
    too_large: Counter,
    coalesced: Counter,
    shared_hits: Counter,
    shared_errors: Counter,
    entries: Gauge,
    bytes: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

impl CacheMetrics {
    /// Registers the cache's families.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = CacheMetrics {
            lookups: Family::default(),
            evictions: Family::default(),
            stores: Counter::default(),
            too_large: Counter::default(),
            coalesced: Counter::default(),
            shared_hits: Counter::default(),
            shared_errors: Counter::default(),
            entries: Gauge::default(),
            bytes: Gauge::default(),
        };
        registry.register(
            "switchyard_cache_requests",
            "Requests by response cache outcome (hit, miss, bypass, refresh)",
            metrics.lookups.clone(),
        );
        registry.register(
            "switchyard_cache_evictions",
            "Cached answers removed from memory, by cause (size: evicted for room; expired)",
            metrics.evictions.clone(),
        );
        registry.register(
            "switchyard_cache_stores",
            "Answers stored in the cache",
            metrics.stores.clone(),
        );
        registry.register(
            "switchyard_cache_too_large",
            "Answers not stored because they exceed cache.max_entry_kb",
            metrics.too_large.clone(),
        );
        registry.register(
            "switchyard_cache_coalesced",
            "Requests that waited for an identical in-flight request instead of going upstream",
            metrics.coalesced.clone(),
        );
        registry.register(
            "switchyard_cache_shared_hits",
            "Memory misses answered by the shared (Redis) tier",
            metrics.shared_hits.clone(),
        );
        registry.register(
            "switchyard_cache_shared_errors",
            "Shared (Redis) cache operations that failed or timed out (counted as misses)",
            metrics.shared_errors.clone(),
        );
        registry.register(
            "switchyard_cache_entries",
            "Answers held in memory",
            metrics.entries.clone(),
        );
        registry.register(
            "switchyard_cache_bytes",
            "Bytes of answers held in memory (the weight counted against cache.max_mb)",
            metrics.bytes.clone(),
        );
        metrics
    }

    fn lookup(&self, status: CacheStatus) -> u64 {
        self.lookups
            .get_or_create(&ResultLabels {
                result: status.as_event(),
            })
            .get()
    }

    fn eviction(&self, cause: &'static str) -> u64 {
        self.evictions.get_or_create(&CauseLabels { cause }).get()
    }
}

/// The response cache of one instance.
pub struct ResponseCache {
    memory: moka::sync::Cache<[u8; 32], Arc<Entry>, foldhash::fast::RandomState>,
    shared: Option<SharedCache>,
    flights: Mutex<HashMap<[u8; 32], watch::Receiver<Flight>>>,
    metrics: CacheMetrics,
    config: CacheConfig,
    /// When it was built, for the hit rate since start.
    started: Instant,
    /// Shared-tier writes in flight (spawned), for tests and shutdown.
    pending_writes: Arc<AtomicU64>,
}

impl ResponseCache {
    /// The cache for `config`, with Redis behind it when `redis_url` is given and
    /// `cache.redis` is on. Must be called inside the tokio runtime when Redis is used.
    pub fn new(
        config: &CacheConfig,
        redis_url: Option<&str>,
        metrics: CacheMetrics,
    ) -> Result<Arc<Self>, String> {
        let evictions = metrics.evictions.clone();
        let memory = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_key: &[u8; 32], entry: &Arc<Entry>| {
                u32::try_from(entry.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(Expiry)
            .eviction_listener(move |_key, _entry, cause| {
                let cause = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                evictions.get_or_create(&CauseLabels { cause }).inc();
            })
            // The key is already a SHA-256 digest: the fastest good hasher will do.
            .build_with_hasher(foldhash::fast::RandomState::default());
        let shared = match redis_url {
            Some(url) if config.redis => Some(SharedCache::new(url, config.redis_timeout)?),
            _ => None,
        };
        Ok(Arc::new(ResponseCache {
            memory,
            shared,
            flights: Mutex::new(HashMap::new()),
            metrics,
            config: config.clone(),
            started: Instant::now(),
            pending_writes: Arc::new(AtomicU64::new(0)),
        }))
    }

    /// Counts a request's outcome.
    pub fn count(&self, status: CacheStatus) {
        self.metrics
            .lookups
            .get_or_create(&ResultLabels {
                result: status.as_event(),
            })
            .inc();
    }

    /// Looks `key` up under `plan` at `now_unix_ms` (see the module docs).
    pub async fn lookup(self: &Arc<Self>, key: &CacheKey, plan: &Plan, now_unix_ms: u64) -> Lookup {
        let max_age_ms = plan
            .max_age
            .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        if plan.lookup
            && let Some(entry) = self.memory_get(key, now_unix_ms, max_age_ms)
        {
            return Lookup::Hit(entry);
        }
        if !plan.store {
            if plan.lookup
                && let Some(entry) = self.shared_get(key, now_unix_ms, max_age_ms).await
            {
                return Lookup::Hit(entry);
            }
            return Lookup::Miss;
        }
        if !plan.lookup {
            // A refresh: it neither waits for nor blocks anyone.
            return Lookup::Lead(Fill::new(self, key, plan, None));
        }
        let joined = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&key.digest) {
                Some(receiver) => Err(receiver.clone()),
                None => {
                    let (sender, receiver) = watch::channel(Flight::Pending);
                    flights.insert(key.digest, receiver);
                    Ok(sender)
                }
            }
        };
        let mut waiting = match joined {
            Ok(sender) => {
                let fill = Fill::new(self, key, plan, Some(sender));
                // A leader that finished between our memory miss and taking the flight.
                let found = match self.memory_get(key, now_unix_ms, max_age_ms) {
                    Some(entry) => Some(entry),
                    None => self.shared_get(key, now_unix_ms, max_age_ms).await,
                };
                if let Some(entry) = found {
                    fill.finish(Some(Arc::clone(&entry)));
                    return Lookup::Hit(entry);
                }
                return Lookup::Lead(fill);
            }
            Err(receiver) => receiver,
        };
        let wait = waiting.wait_for(|flight| matches!(flight, Flight::Done(_)));
        match tokio::time::timeout(self.config.lock_timeout, wait).await {
            Ok(Ok(flight)) => match &*flight {
                Flight::Done(Some(entry)) => {
                    self.metrics.coalesced.inc();
                    Lookup::Hit(Arc::clone(entry))
                }
                // The leader failed (an error, a truncated stream, a client gone): every
                // waiter goes upstream at once, rather than one after another.
                Flight::Done(None) | Flight::Pending => Lookup::Miss,
            },
            // The leader was dropped without a word: the same.
            Ok(Err(_)) => Lookup::Miss,
            // Waited long enough: go upstream without storing.
            Err(_) => Lookup::Miss,
        }
    }

    fn memory_get(
        &self,
        key: &CacheKey,
        now_unix_ms: u64,
        max_age_ms: Option<u64>,
    ) -> Option<Arc<Entry>> {
        let entry = self.memory.get(&key.digest)?;
        // An expired entry is left to moka's expiry (removing it here could remove a fresh
        // one a refresh just put in its place).
        entry.is_fresh(now_unix_ms, max_age_ms).then_some(entry)
    }

    async fn shared_get(
        &self,
        key: &CacheKey,
        now_unix_ms: u64,
        max_age_ms: Option<u64>,
    ) -> Option<Arc<Entry>> {
        let shared = self.shared.as_ref()?;
        match shared.get(key).await {
            Ok(Some(entry)) if entry.is_fresh(now_unix_ms, max_age_ms) => {
                self.metrics.shared_hits.inc();
                let entry = Arc::new(entry);
                if max_age_ms.is_none() {
                    self.memory.insert(key.digest, Arc::clone(&entry));
                }
                Some(entry)
            }
            Ok(_) => None,
            Err(error) => {
                self.metrics.shared_errors.inc();
                tracing::warn!(error = %error, "response cache: shared tier lookup failed; counted as a miss");
                None
            }
        }
    }

    /// Stores `entry` under `key` in memory and, when configured, in Redis.
    fn store(&self, key: &CacheKey, entry: Arc<Entry>) -> bool {
        if entry.weight() > self.config.max_entry_bytes {
            self.metrics.too_large.inc();
            return false;
        }
        self.memory.insert(key.digest, Arc::clone(&entry));
        self.metrics.stores.inc();
        if let Some(shared) = &self.shared {
            let shared = shared.clone();
            let key = key.clone();
            let pending = Arc::clone(&self.pending_writes);
            let errors = self.metrics.shared_errors.clone();
            pending.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Err(error) = shared.set(&key, &entry).await {
                    errors.inc();
                    tracing::warn!(error = %error, "response cache: shared tier write failed");
                }
                pending.fetch_sub(1, Ordering::Relaxed);
            });
        }
        true
    }

    /// Shared-tier writes not finished yet.
    pub fn pending_writes(&self) -> u64 {
        self.pending_writes.load(Ordering::Relaxed)
    }

    /// Removes cached answers: all of them, or those of one `route`, or of routes whose name
    /// starts with `prefix`. Returns how many went from memory and from the shared tier.
    pub async fn flush(
        &self,
        route: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<Flushed, String> {
        let memory = match (route, prefix) {
            (None, None) => {
                let count = self.memory.entry_count();
                self.memory.invalidate_all();
                count
            }
            _ => {
                let doomed: Vec<Arc<[u8; 32]>> = self
                    .memory
                    .iter()
                    .filter(|(_, entry)| {
                        route.is_some_and(|route| entry.route == route)
                            || prefix.is_some_and(|prefix| entry.route.starts_with(prefix))
                    })
                    .map(|(key, _)| key)
                    .collect();
                for key in &doomed {
                    self.memory.invalidate(key.as_ref());
                }
                doomed.len() as u64
            }
        };
        self.memory.run_pending_tasks();
        let shared = match &self.shared {
            Some(shared) => Some(shared.flush(route, prefix).await?),
            None => None,
        };
        Ok(Flushed { memory, shared })
    }

    /// Reclaims expired entries and applies pending evictions (the sweep task calls it).
    pub fn sweep(&self) {
        self.memory.run_pending_tasks();
    }

    /// What `GET /admin/cache` shows.
    pub fn snapshot(&self) -> Snapshot {
        self.memory.run_pending_tasks();
        let hits = self.metrics.lookup(CacheStatus::Hit);
        let misses = self.metrics.lookup(CacheStatus::Miss);
        Snapshot {
            entries: self.memory.entry_count(),
            bytes: self.memory.weighted_size(),
            capacity_bytes: self.config.max_bytes,
            max_entry_bytes: self.config.max_entry_bytes,
            hits,
            misses,
            bypass: self.metrics.lookup(CacheStatus::Bypass),
            refresh: self.metrics.lookup(CacheStatus::Refresh),
            hit_rate: if hits + misses == 0 {
                None
            } else {
                Some(hits as f64 / (hits + misses) as f64)
            },
            stores: self.metrics.stores.get(),
            too_large: self.metrics.too_large.get(),
            coalesced: self.metrics.coalesced.get(),
            evictions: self.metrics.eviction("size"),
            expirations: self.metrics.eviction("expired"),
            in_flight_fills: self
                .flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            shared: self.shared.as_ref().map(|_| SharedSnapshot {
                hits: self.metrics.shared_hits.get(),
                errors: self.metrics.shared_errors.get(),
            }),
            scope: self.config.scope.as_str(),
            uptime_seconds: self.started.elapsed().as_secs(),
        }
    }

    /// Sets the scrape-time gauges.
    pub fn refresh_gauges(&self) {
        self.metrics
            .entries
            .set(i64::try_from(self.memory.entry_count()).unwrap_or(i64::MAX));
        self.metrics
            .bytes
            .set(i64::try_from(self.memory.weighted_size()).unwrap_or(i64::MAX));
    }
}

/// What a flush removed.
#[derive(Debug, Serialize)]
pub struct Flushed {
    /// Entries removed from this instance's memory.
    pub memory: u64,
    /// Keys removed from Redis, when the shared tier is on.
    pub shared: Option<u64>,
}

/// `GET /admin/cache`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Answers held in memory.
    pub entries: u64,
    /// Their weight in bytes.
    pub bytes: u64,
    /// The byte budget (`cache.max_mb`).
    pub capacity_bytes: u64,
    /// The largest answer stored.
    pub max_entry_bytes: u64,
    /// Requests served from the cache.
    pub hits: u64,
    /// Requests looked up and not found.
    pub misses: u64,
    /// Requests that did not use the cache.
    pub bypass: u64,
    /// Requests that refreshed their answer.
    pub refresh: u64,
    /// hits / (hits + misses), since start.
    pub hit_rate: Option<f64>,
    /// Answers stored.
    pub stores: u64,
    /// Answers too large to store.
    pub too_large: u64,
    /// Requests that waited for an identical one instead of going upstream.
    pub coalesced: u64,
    /// Entries evicted for room.
    pub evictions: u64,
    /// Entries removed because they expired.
    pub expirations: u64,
    /// Keys with a request upstream that others may wait for.
    pub in_flight_fills: usize,
    /// The Redis tier, when on.
    pub shared: Option<SharedSnapshot>,
    /// Who may read an answer.
    pub scope: &'static str,
    /// Seconds since the counters started.
    pub uptime_seconds: u64,
}

/// The Redis tier's counters.
#[derive(Debug, Serialize)]
pub struct SharedSnapshot {
    /// Memory misses it answered.
    pub hits: u64,
    /// Failed or timed-out operations.
    pub errors: u64,
}

/// Tells moka when an entry's memory can be reclaimed: at its own expiry.
struct Expiry;

impl moka::Expiry<[u8; 32], Arc<Entry>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        entry: &Arc<Entry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(entry.ttl_left_ms(unix_ms())))
    }

    fn expire_after_update(
        &self,
        _key: &[u8; 32],
        entry: &Arc<Entry>,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(entry.ttl_left_ms(unix_ms())))
    }
}

/// Wall time in unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The right to store one key's answer, held by the request that went upstream for it.
/// Dropping it without [`Fill::store`] (an error, a truncated stream, a client gone) wakes
/// the waiters with nothing, and they carry on without it.
pub struct Fill {
    cache: Arc<ResponseCache>,
    key: CacheKey,
    ttl: Duration,
    flight: Option<watch::Sender<Flight>>,
    /// The answer must be a chat completion (so that it can be replayed as a stream).
    chat: bool,
}

impl Fill {
    fn new(
        cache: &Arc<ResponseCache>,
        key: &CacheKey,
        plan: &Plan,
        flight: Option<watch::Sender<Flight>>,
    ) -> Self {
        Fill {
            cache: Arc::clone(cache),
            key: key.clone(),
            ttl: plan.ttl,
            flight,
            chat: false,
        }
    }

    /// Requires the stored answer to be a standard chat completion.
    pub fn for_chat(mut self) -> Self {
        self.chat = true;
        self
    }

    /// How long the answer will live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The largest answer the cache takes, for recorders to give up early.
    pub fn max_bytes(&self) -> usize {
        usize::try_from(self.cache.config.max_entry_bytes).unwrap_or(usize::MAX)
    }

    /// Hands the answer to the waiters without keeping it: an answer from a fallback route
    /// serves the requests that waited for it, but is not what the route asked for stands
    /// for once its own targets are back.
    pub fn hand_over(self, mut entry: Entry, now_unix_ms: u64) {
        entry.stored_unix_ms = now_unix_ms;
        entry.expires_unix_ms = now_unix_ms;
        entry.route = self.key.route.clone();
        entry.scope = self.key.scope.clone();
        self.finish(Some(Arc::new(entry)));
    }

    /// Stores the complete answer and hands it to the waiters.
    pub fn store(self, mut entry: Entry, now_unix_ms: u64) {
        entry.stored_unix_ms = now_unix_ms;
        entry.expires_unix_ms =
            now_unix_ms.saturating_add(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        entry.route = self.key.route.clone();
        entry.scope = self.key.scope.clone();
        if self.chat
            && serde_json::from_slice::<switchyard_core::wire::ChatCompletion>(&entry.body).is_err()
        {
            // It could not be replayed to a streaming client: serve it, do not keep it.
            tracing::debug!(route = %self.key.route, "not caching an answer that is not a standard chat completion");
            return self.finish(None);
        }
        let entry = Arc::new(entry);
        // Waiters get the answer even when it is too large to keep.
        self.cache.store(&self.key, Arc::clone(&entry));
        self.finish(Some(entry));
    }

    fn finish(mut self, entry: Option<Arc<Entry>>) {
        self.release(entry);
    }

    fn release(&mut self, entry: Option<Arc<Entry>>) {
        let Some(sender) = self.flight.take() else {
            return;
        };
        {
            let mut flights = self
                .cache
                .flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if flights
                .get(&self.key.digest)
                .is_some_and(|receiver| receiver.same_channel(&sender.subscribe()))
            {
                flights.remove(&self.key.digest);
            }
        }
        sender.send_replace(Flight::Done(entry));
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.release(None);
    }
}

#[cfg(test)]
mod tests;
