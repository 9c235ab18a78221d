//! The query cache: closed hour windows of the keyless and by-key cubes, kept in memory as
//! the store holds them (every instance's rows summed into one cell per dimension set), so
//! that a 7-day query reads from the store only the hours that are still open or changed.
//!
//! A closed hour changes only through a very late event (a merge row), a write retried
//! after a store outage, or another instance sharing the store. Each of those goes through
//! a store write, and every write bumps its hour window's version in the same transaction
//! ([`super::store::versioned_windows`]). A query reads the versions of its range first
//! (one small indexed read), then uses a cached hour only at the version it was cached at;
//! the rest is read from the store, and the closed hours among it are cached at the
//! versions just read. Cells read after their version can only be newer than it, so a
//! write that lands between the two reads makes the next query read that hour again,
//! never keep a stale one.
//!
//! What it must not do: hold the keyed cube (its cells grow with keys × targets, twenty
//! times the others for the benchmark's traffic; those queries read the store), or grow
//! past its byte bound (a full cache caches nothing more; hours past retention leave it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use switchyard_core::analytics::query::{Fold, SketchRef};
use switchyard_core::analytics::rollup::DEFAULT_GRACE_MS;
use switchyard_core::analytics::{Cube, Dims, Rollup, Tier};

use super::store::{StoredCell, VERSIONED_TIER, rollup_horizon};

/// The default bound on the cache's heap, bytes.
pub const DEFAULT_MAX_BYTES: usize = 6 << 20;

/// Names the cache keeps shared, at most; past it the table starts over (hours keep their
/// own references).
const NAMES_LIMIT: usize = 4_096;

/// Contiguous runs of hours to read, at most, before one read covers them all.
const MAX_READS: usize = 4;

/// One cached hour of one cube: its cells, as compact as the fold allows.
#[derive(Debug)]
pub struct Hour {
    /// The window's version when its cells were read.
    version: i64,
    /// The names its cells use; a cell's dimensions are indexes into it.
    names: Box<[Arc<str>]>,
    cells: Box<[Cell]>,
    /// Every cell's latency and time-to-first-token sketch buckets, one after the other:
    /// indexes here, counts in `counts` (decoded, so that a query adds them with no
    /// decoding: about twice the bytes of the stored encoding, and a third of the time).
    indexes: Box<[u16]>,
    /// The buckets' counts, aligned with `indexes`.
    counts: Box<[u32]>,
}

/// One cell of an hour: dimensions by name index, counters, and where its sketches are.
#[derive(Debug)]
struct Cell {
    dims: [u16; 5],
    /// Requests, errors, tokens in, out, cached, reasoning, cost unknown, cache hits,
    /// latency sum.
    counts: [u64; 9],
    cost_usd: f64,
    /// End of the latency sketch's buckets in `indexes` (they start where the previous
    /// cell's ttft buckets end).
    latency_end: u32,
    /// End of the time-to-first-token sketch's buckets.
    ttft_end: u32,
    /// Zero values of the latency and time-to-first-token sketches.
    zeros: [u32; 2],
}

impl Hour {
    /// An hour from its stored cells (any instances', any order): cells with the same
    /// dimensions are summed. None if it holds more names or bytes than the compact form
    /// indexes (never for real traffic: an hour is a few hundred cells).
    fn build(version: i64, cells: &[&StoredCell], names: &mut Names) -> Option<Hour> {
        let mut summed: HashMap<&Dims, Rollup> = HashMap::with_capacity(cells.len());
        for cell in cells {
            summed
                .entry(&cell.dims)
                .and_modify(|sum| sum.merge(&cell.rollup))
                .or_insert_with(|| cell.rollup.clone());
        }
        let mut summed: Vec<(&Dims, Rollup)> = summed.into_iter().collect();
        summed.sort_by(|a, b| a.0.cmp(b.0));
        let mut index: HashMap<&str, u16> = HashMap::new();
        let mut hour_names: Vec<Arc<str>> = Vec::new();
        let mut out = Vec::with_capacity(summed.len());
        let mut indexes = Vec::new();
        let mut counts = Vec::new();
        for (dims, rollup) in &summed {
            let mut ids = [0u16; 5];
            for (id, name) in ids.iter_mut().zip(dims.as_strs()) {
                *id = match index.get(name) {
                    Some(&id) => id,
                    None => {
                        let id = u16::try_from(hour_names.len()).ok()?;
                        hour_names.push(names.get(name));
                        index.insert(name, id);
                        id
                    }
                };
            }
            let mut add = |bins: &[(u16, u32)]| {
                indexes.extend(bins.iter().map(|&(index, _)| index));
                counts.extend(bins.iter().map(|&(_, count)| count));
                u32::try_from(indexes.len()).ok()
            };
            let latency_end = add(rollup.latency.bins())?;
            let ttft_end = add(rollup.ttft.bins())?;
            out.push(Cell {
                dims: ids,
                counts: rollup.counters(),
                cost_usd: rollup.cost_usd,
                latency_end,
                ttft_end,
                zeros: [rollup.latency.zeros(), rollup.ttft.zeros()],
            });
        }
        Some(Hour {
            version,
            names: hour_names.into_boxed_slice(),
            cells: out.into_boxed_slice(),
            indexes: indexes.into_boxed_slice(),
            counts: counts.into_boxed_slice(),
        })
    }

    /// Heap bytes held (names are shared and counted by the cache's table).
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Hour>()
            + self.names.len() * std::mem::size_of::<Arc<str>>()
            + self.cells.len() * std::mem::size_of::<Cell>()
            + self.indexes.len() * std::mem::size_of::<u16>()
            + self.counts.len() * std::mem::size_of::<u32>()
    }

    /// Adds this hour's cells, at window `bucket_ms`, into a query's fold.
    pub fn fold_into(&self, bucket_ms: u64, fold: &mut Fold<'_>) {
        let mut start = 0usize;
        for cell in &self.cells {
            let latency_end = cell.latency_end as usize;
            let ttft_end = cell.ttft_end as usize;
            let name = |at: usize| -> &str {
                self.names
                    .get(usize::from(cell.dims[at]))
                    .map_or("", |name| name)
            };
            let counters = Rollup::from_counters(cell.counts, cell.cost_usd);
            let sketch = |zeros: u32, range: std::ops::Range<usize>| SketchRef::Sparse {
                zeros,
                indexes: self.indexes.get(range.clone()).unwrap_or_default(),
                counts: self.counts.get(range).unwrap_or_default(),
            };
            let latency = sketch(cell.zeros[0], start..latency_end);
            let ttft = sketch(cell.zeros[1], latency_end..ttft_end);
            start = ttft_end;
            // Sparse sketches are never malformed.
            let _ = fold.add(
                bucket_ms,
                [name(0), name(1), name(2), name(3), name(4)],
                &counters,
                latency,
                ttft,
            );
        }
    }
}

/// Names shared across hours, bounded.
#[derive(Debug, Default)]
struct Names(HashSet<Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(found) = self.0.get(name) {
            return Arc::clone(found);
        }
        if self.0.len() >= NAMES_LIMIT {
            self.0.clear();
        }
        let name: Arc<str> = Arc::from(name);
        self.0.insert(Arc::clone(&name));
        name
    }

    fn heap_bytes(&self) -> usize {
        self.0.iter().map(|n| n.len() + 32).sum()
    }
}

#[derive(Debug, Default)]
struct Inner {
    hours: HashMap<(Cube, u64), Arc<Hour>>,
    /// Heap bytes of `hours`.
    bytes: usize,
    names: Names,
}

/// What a query finds in the cache.
#[derive(Debug, Default)]
pub struct Lookup {
    /// Cached hours at their current version, by window start.
    pub cached: Vec<(u64, Arc<Hour>)>,
    /// Ranges `[from, to)` of windows to read from the store, in order.
    pub reads: Vec<(u64, u64)>,
}

/// Counters of the cache, for `/admin/analytics/status`.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Hours answered from memory.
    pub hits: AtomicU64,
    /// Hours read from the store (open, changed, or not cached yet).
    pub misses: AtomicU64,
}

/// The cache of closed hours (see the module's documentation).
#[derive(Debug)]
pub struct HourCache {
    /// A std mutex: held to look up or insert a few entries, never across an `.await`.
    inner: Mutex<Inner>,
    max_bytes: usize,
    /// Hits and misses.
    pub stats: CacheStats,
}

impl HourCache {
    /// An empty cache bounded to `max_bytes` of heap.
    pub fn new(max_bytes: usize) -> Self {
        HourCache {
            inner: Mutex::new(Inner::default()),
            max_bytes,
            stats: CacheStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a query on `tier` and `cube` can use the cache.
    pub fn covers(tier: Tier, cube: Cube) -> bool {
        tier == VERSIONED_TIER && cube != Cube::Keyed
    }

    /// The hours of `[from_ms, to_ms)` (window starts of the versioned tier) cached at the
    /// `versions` just read from the store (in window order; a window without one is at 0),
    /// and the ranges to read for the others.
    pub fn lookup(&self, cube: Cube, from_ms: u64, to_ms: u64, versions: &[(u64, i64)]) -> Lookup {
        let width = VERSIONED_TIER.width_ms();
        let mut lookup = Lookup::default();
        let inner = self.lock();
        let mut versions = versions.iter().peekable();
        let mut bucket = VERSIONED_TIER.bucket(from_ms);
        let mut hits = 0;
        while bucket < to_ms {
            while versions.next_if(|(b, _)| *b < bucket).is_some() {}
            let version = versions
                .next_if(|(b, _)| *b == bucket)
                .map_or(0, |&(_, v)| v);
            match inner.hours.get(&(cube, bucket)) {
                Some(hour) if hour.version == version => {
                    lookup.cached.push((bucket, Arc::clone(hour)));
                    hits += 1;
                }
                _ => match lookup.reads.last_mut() {
                    Some((_, end)) if *end == bucket => *end = bucket + width,
                    _ => lookup.reads.push((bucket, bucket + width)),
                },
            }
            bucket += width;
        }
        drop(inner);
        let misses: u64 = lookup.reads.iter().map(|(a, b)| (b - a) / width).sum();
        self.stats.hits.fetch_add(hits, Ordering::Relaxed);
        self.stats.misses.fetch_add(misses, Ordering::Relaxed);
        if lookup.reads.len() > MAX_READS
            && let (Some(&(first, _)), Some(&(_, last))) =
                (lookup.reads.first(), lookup.reads.last())
        {
            // One read over them all (the cached hours inside are skipped when folding).
            lookup.reads = vec![(first, last)];
        }
        lookup
    }

    /// Caches the hours among `cells` (one cube's, read in full from the store, every
    /// dimension, no filter) that closed before `now_ms` (plus the grace for events in
    /// flight), at the `versions` read before them. Hours past retention leave the cache
    /// here too. Returns the hours built, to fold in place of the cells.
    pub fn fill(
        &self,
        cube: Cube,
        reads: &[(u64, u64)],
        cells: &[StoredCell],
        versions: &[(u64, i64)],
        now_ms: u64,
    ) -> Vec<(u64, Arc<Hour>)> {
        let width = VERSIONED_TIER.width_ms();
        let closed_before = VERSIONED_TIER.bucket(now_ms.saturating_sub(DEFAULT_GRACE_MS));
        let mut by_hour: HashMap<u64, Vec<&StoredCell>> = HashMap::new();
        for cell in cells {
            by_hour.entry(cell.bucket_ms).or_default().push(cell);
        }
        let version_of = |bucket: u64| {
            versions
                .binary_search_by_key(&bucket, |&(b, _)| b)
                .map_or(0, |at| versions[at].1)
        };
        let mut built = Vec::new();
        let mut inner = self.lock();
        let horizon = rollup_horizon(VERSIONED_TIER, now_ms);
        let Inner {
            hours,
            bytes,
            names,
        } = &mut *inner;
        hours.retain(|&(_, bucket), hour| {
            let keep = bucket >= horizon;
            if !keep {
                *bytes = bytes.saturating_sub(hour.heap_bytes());
            }
            keep
        });
        for &(from, to) in reads {
            let mut bucket = from;
            while bucket < to && bucket < closed_before {
                let empty = Vec::new();
                let hour_cells = by_hour.get(&bucket).unwrap_or(&empty);
                if let Some(hour) = Hour::build(version_of(bucket), hour_cells, names) {
                    let hour = Arc::new(hour);
                    let size = hour.heap_bytes();
                    let replaced = hours.get(&(cube, bucket)).map_or(0, |h| h.heap_bytes());
                    let after = bytes.saturating_sub(replaced) + size;
                    if after + names.heap_bytes() <= self.max_bytes {
                        *bytes = after;
                        hours.insert((cube, bucket), Arc::clone(&hour));
                    }
                    built.push((bucket, hour));
                }
                bucket += width;
            }
        }
        built
    }

    /// Heap bytes held: the hours and the shared names.
    pub fn heap_bytes(&self) -> usize {
        let inner = self.lock();
        inner.bytes + inner.names.heap_bytes()
    }

    /// The bound on [`HourCache::heap_bytes`].
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Hours held.
    pub fn len(&self) -> usize {
        self.lock().hours.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
