//! Windowed rollups of request events: counts, tokens, cost, cache hits and latency sketches
//! per time window and dimension set.
//!
//! Three tiers, each kept as long as it is useful:
//!
//! | tier | window | kept | where |
//! |------|--------|------|-------|
//! | [`Tier::Second`] | 1 s | 5 min | memory only (the live view) |
//! | [`Tier::Minute`] | 1 min | 24 h | store (SQLite / Postgres) |
//! | [`Tier::Hour`] | 1 h | 7 days | store |
//!
//! The minute and hour tiers are kept as three cubes ([`Cube`]): *keyed* cells hold every
//! dimension (route, provider, model, key, status class); *keyless* cells hold the same with
//! the key folded in (`*`), so that the common queries that do not split or filter by key
//! read a fraction of the rows; *by-key* cells hold only the key (the other dimensions
//! folded in, `*`), so that per-key queries (usage by key, top keys) read one cell per key
//! and window instead of one per key × route × provider × model × status class. The second
//! tier is keyless only.
//!
//! The [`Aggregator`] holds the open windows in memory. [`Aggregator::take_flush`] hands the
//! changed cells to the store as whole-window values (the store replaces its row, keyed by
//! instance), and evicts windows once they have closed. An event for a window that was
//! already evicted (a very late event) becomes a *merge* row that the store adds to what it
//! has. Nothing here does I/O or reads a clock: the caller passes the time.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::RequestEvent;
use super::query::{Fold, SketchRef};
use super::sketch::Sketch;

/// The key value of keyless cells, and the value of every dimension but the key in by-key
/// cells.
pub const ANY_KEY: &str = "*";

/// Which dimensions a stored cell keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cube {
    /// Route, provider, model and status class; the key is [`ANY_KEY`].
    Keyless,
    /// Every dimension.
    Keyed,
    /// The key only; the others are [`ANY_KEY`].
    ByKey,
}

impl Cube {
    /// The stored cubes.
    pub const ALL: [Cube; 3] = [Cube::Keyless, Cube::Keyed, Cube::ByKey];

    /// The stored code (0 and 1 are what the stores kept as `keyed` false and true before
    /// the by-key cube).
    pub const fn code(self) -> i16 {
        match self {
            Cube::Keyless => 0,
            Cube::Keyed => 1,
            Cube::ByKey => 2,
        }
    }

    /// The cube of a cell with these dimensions ([`Dims::as_strs`] order): keyless when its
    /// key is [`ANY_KEY`], by key when every other dimension is (a status class never is).
    pub fn of(dims: &[&str; 5]) -> Cube {
        let [route, provider, model, key, status_class] = *dims;
        if key == ANY_KEY {
            Cube::Keyless
        } else if [route, provider, model, status_class]
            .iter()
            .all(|&d| d == ANY_KEY)
        {
            Cube::ByKey
        } else {
            Cube::Keyed
        }
    }

    /// A cell's dimensions in this cube, from an event's keyed dimensions.
    pub fn dims_of(self, keyed: &Dims, any: &Arc<str>) -> Dims {
        match self {
            Cube::Keyless => Dims {
                key: Arc::clone(any),
                ..keyed.clone()
            },
            Cube::Keyed => keyed.clone(),
            Cube::ByKey => Dims {
                route: Arc::clone(any),
                provider: Arc::clone(any),
                model: Arc::clone(any),
                key: Arc::clone(&keyed.key),
                status_class: Arc::clone(any),
            },
        }
    }
}

/// Seconds of 1 s windows kept in memory.
pub const SECOND_WINDOWS: u64 = 300;

/// How long after a window closes it stays open for events still in flight.
pub const DEFAULT_GRACE_MS: u64 = 10_000;

/// A rollup resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// 1 s windows, 5 minutes, memory only.
    Second,
    /// 1 min windows, 24 hours.
    Minute,
    /// 1 h windows, 7 days.
    Hour,
}

impl Tier {
    /// All tiers, finest first.
    pub const ALL: [Tier; 3] = [Tier::Second, Tier::Minute, Tier::Hour];

    /// Window width in milliseconds.
    pub const fn width_ms(self) -> u64 {
        match self {
            Tier::Second => 1_000,
            Tier::Minute => 60_000,
            Tier::Hour => 3_600_000,
        }
    }

    /// How long windows of this tier are kept, in milliseconds.
    pub const fn retention_ms(self) -> u64 {
        match self {
            Tier::Second => SECOND_WINDOWS * 1_000,
            Tier::Minute => 24 * 3_600_000,
            Tier::Hour => 7 * 24 * 3_600_000,
        }
    }

    /// `1s`, `1m`, `1h`.
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Second => "1s",
            Tier::Minute => "1m",
            Tier::Hour => "1h",
        }
    }

    /// The stored code.
    pub const fn code(self) -> i16 {
        match self {
            Tier::Second => 1,
            Tier::Minute => 2,
            Tier::Hour => 3,
        }
    }

    /// The window that holds `time_ms`.
    pub const fn bucket(self, time_ms: u64) -> u64 {
        time_ms - time_ms % self.width_ms()
    }
}

/// The dimensions of a cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dims {
    /// Route name (empty when none was resolved).
    pub route: Arc<str>,
    /// Provider (empty when none was tried).
    pub provider: Arc<str>,
    /// Upstream model.
    pub model: Arc<str>,
    /// Principal (key); [`ANY_KEY`] in keyless cells.
    pub key: Arc<str>,
    /// `2xx`, `4xx`, `5xx`...
    pub status_class: Arc<str>,
}

impl Dims {
    /// Route, provider, model, key and status class, in that order.
    pub fn as_strs(&self) -> [&str; 5] {
        [
            &self.route,
            &self.provider,
            &self.model,
            &self.key,
            &self.status_class,
        ]
    }
}

/// The aggregate of the events of one cell.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollup {
    /// Requests.
    pub requests: u64,
    /// Requests that failed (any error class, client errors included).
    pub errors: u64,
    /// Input tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// Input tokens read from a provider's prompt cache.
    pub tokens_cached: u64,
    /// Reasoning tokens.
    pub tokens_reasoning: u64,
    /// Known cost in USD.
    pub cost_usd: f64,
    /// Requests with tokens whose cost is unknown.
    pub cost_unknown: u64,
    /// Requests answered from the response cache.
    pub cache_hits: u64,
    /// Sum of latencies, microseconds.
    pub latency_sum_us: u64,
    /// Whole-request latency, microseconds.
    pub latency: Sketch,
    /// Time to first token of streams, microseconds.
    pub ttft: Sketch,
}

impl Rollup {
    /// Adds one event.
    pub fn observe(&mut self, event: &RequestEvent) {
        self.requests += 1;
        if event.error_class.is_some() {
            self.errors += 1;
        }
        self.tokens_in += event.usage.input;
        self.tokens_out += event.usage.output;
        self.tokens_cached += event.usage.cached_input;
        self.tokens_reasoning += event.usage.reasoning;
        match event.cost_usd {
            Some(cost) => self.cost_usd += cost,
            None if event.usage.input + event.usage.output > 0 => self.cost_unknown += 1,
            None => {}
        }
        if event.cache == "hit" {
            self.cache_hits += 1;
        }
        self.latency_sum_us = self.latency_sum_us.saturating_add(event.latency_us);
        self.latency.add(event.latency_us);
        if let Some(ttft) = event.ttft_us {
            self.ttft.add(ttft);
        }
    }

    /// Adds another cell's aggregate.
    pub fn merge(&mut self, other: &Rollup) {
        self.merge_counters(other);
        self.latency.merge(&other.latency);
        self.ttft.merge(&other.ttft);
    }

    /// Adds another cell's counters, leaving the sketches alone.
    pub fn merge_counters(&mut self, other: &Rollup) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.tokens_cached += other.tokens_cached;
        self.tokens_reasoning += other.tokens_reasoning;
        self.cost_usd += other.cost_usd;
        self.cost_unknown += other.cost_unknown;
        self.cache_hits += other.cache_hits;
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
    }

    /// Heap bytes held by the sketches.
    pub fn heap_bytes(&self) -> usize {
        self.latency.heap_bytes() + self.ttft.heap_bytes()
    }

    /// The counters in the stores' column order: requests, errors, tokens in, out, cached and
    /// reasoning, requests of unknown cost, cache hits, and the latency sum (µs).
    pub fn counters(&self) -> [u64; 9] {
        [
            self.requests,
            self.errors,
            self.tokens_in,
            self.tokens_out,
            self.tokens_cached,
            self.tokens_reasoning,
            self.cost_unknown,
            self.cache_hits,
            self.latency_sum_us,
        ]
    }

    /// A rollup of [`Rollup::counters`] and a cost, with empty sketches.
    pub fn from_counters(counters: [u64; 9], cost_usd: f64) -> Self {
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
        ] = counters;
        Rollup {
            requests,
            errors,
            tokens_in,
            tokens_out,
            tokens_cached,
            tokens_reasoning,
            cost_usd,
            cost_unknown,
            cache_hits,
            latency_sum_us,
            ..Rollup::default()
        }
    }
}

/// One cell on its way to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupRow {
    /// Resolution.
    pub tier: Tier,
    /// Window start, unix ms.
    pub bucket_ms: u64,
    /// Which dimensions are kept.
    pub cube: Cube,
    /// Dimensions.
    pub dims: Dims,
    /// The aggregate.
    pub rollup: Rollup,
    /// True: add to the stored row (a late event for an evicted window). False: the whole
    /// window so far; replace the stored row.
    pub merge: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CellKey {
    tier: Tier,
    bucket_ms: u64,
    cube: Cube,
    dims: Dims,
}

#[derive(Debug)]
struct OpenCell {
    rollup: Rollup,
    dirty: bool,
    late: bool,
}

/// A live-tier cell once its second has passed: counters and encoded sketches, about half
/// the memory of a cell still taking events (the live tier holds 300 seconds of them).
#[derive(Debug)]
struct SealedCell {
    dims: Dims,
    /// The counters; its sketches are empty.
    counters: Rollup,
    latency: Box<[u8]>,
    ttft: Box<[u8]>,
}

/// One second of the live tier: cells taking events, and sealed ones. A late event for a
/// sealed cell opens a new cell beside it; queries add both up.
#[derive(Debug, Default)]
struct Window {
    open: HashMap<Dims, Rollup>,
    sealed: Vec<SealedCell>,
}

impl Window {
    fn seal(&mut self) {
        let sealed = self.open.drain().map(|(dims, mut counters)| {
            let latency = std::mem::take(&mut counters.latency)
                .encode()
                .into_boxed_slice();
            let ttft = std::mem::take(&mut counters.ttft)
                .encode()
                .into_boxed_slice();
            SealedCell {
                dims,
                counters,
                latency,
                ttft,
            }
        });
        self.sealed.extend(sealed);
        self.sealed.shrink_to_fit();
        self.open.shrink_to_fit();
    }

    fn requests(&self) -> u64 {
        self.open.values().map(|r| r.requests).sum::<u64>()
            + self.sealed.iter().map(|c| c.counters.requests).sum::<u64>()
    }
}

/// Interned names bounded in count: past the bound new names are still interned, but the
/// table starts over (cells keep their own references).
const INTERNER_LIMIT: usize = 4_096;

/// The in-memory side of analytics: the live 1 s tier and the open minute and hour windows.
#[derive(Debug, Default)]
pub struct Aggregator {
    seconds: VecDeque<(u64, Window)>,
    open: HashMap<CellKey, OpenCell>,
    /// Per stored tier (minute, hour): windows before this were flushed and evicted.
    evicted_before: [u64; 2],
    names: HashSet<Arc<str>>,
    events: u64,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Aggregator::default()
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(found) = self.names.get(name) {
            return Arc::clone(found);
        }
        if self.names.len() >= INTERNER_LIMIT {
            self.names.clear();
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert(Arc::clone(&name));
        name
    }

    /// The time an event counts at: when it finished (unix ms).
    pub fn event_time_ms(event: &RequestEvent) -> u64 {
        event.time_unix_ms + event.latency_us / 1_000
    }

    /// Adds an event to every tier.
    pub fn observe(&mut self, event: &RequestEvent) {
        self.events += 1;
        let time = Self::event_time_ms(event);
        let any = self.intern(ANY_KEY);
        let keyed = Dims {
            route: self.intern(event.route.as_deref().unwrap_or_default()),
            provider: self.intern(event.provider.as_deref().unwrap_or_default()),
            model: self.intern(event.model.as_deref().unwrap_or_default()),
            key: self.intern(&event.principal),
            status_class: self.intern(event.status_class()),
        };
        let cells = Cube::ALL.map(|cube| (cube, cube.dims_of(&keyed, &any)));
        self.observe_second(time, &cells[0].1, event);
        for (slot, tier) in [Tier::Minute, Tier::Hour].into_iter().enumerate() {
            let bucket_ms = tier.bucket(time);
            let late = bucket_ms < self.evicted_before[slot];
            for (cube, dims) in &cells {
                let key = CellKey {
                    tier,
                    bucket_ms,
                    cube: *cube,
                    dims: dims.clone(),
                };
                let cell = self.open.entry(key).or_insert_with(|| OpenCell {
                    rollup: Rollup::default(),
                    dirty: false,
                    late,
                });
                cell.rollup.observe(event);
                cell.dirty = true;
            }
        }
    }

    fn observe_second(&mut self, time: u64, dims: &Dims, event: &RequestEvent) {
        let bucket = Tier::Second.bucket(time);
        let position = self.seconds.iter().rposition(|&(b, _)| b <= bucket);
        let at = match position {
            Some(at) if self.seconds[at].0 == bucket => at,
            Some(at) => {
                self.seconds.insert(at + 1, (bucket, Window::default()));
                // A window two seconds back gets few late events: seal it.
                if at + 1 == self.seconds.len() - 1 && at >= 1 {
                    self.seconds[at - 1].1.seal();
                }
                at + 1
            }
            None => {
                let oldest_kept = self.seconds.back().map_or(0, |&(newest, _)| {
                    newest.saturating_sub((SECOND_WINDOWS - 1) * 1_000)
                });
                if bucket < oldest_kept {
                    // Older than the live view; the stored tiers still count it.
                    return;
                }
                self.seconds.push_front((bucket, Window::default()));
                0
            }
        };
        self.seconds[at]
            .1
            .open
            .entry(dims.clone())
            .or_default()
            .observe(event);
        while let (Some(&(oldest, _)), Some(&(newest, _))) =
            (self.seconds.front(), self.seconds.back())
        {
            if newest - oldest < SECOND_WINDOWS * 1_000 {
                break;
            }
            self.seconds.pop_front();
        }
    }

    /// Events observed since start.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The changed cells since the last call, as rows for the store; windows that closed
    /// more than `grace_ms` before `now_ms` are evicted after their last rows are taken.
    pub fn take_flush(&mut self, now_ms: u64, grace_ms: u64) -> Vec<RollupRow> {
        let horizon = now_ms.saturating_sub(grace_ms);
        let cutoffs = [Tier::Minute.bucket(horizon), Tier::Hour.bucket(horizon)];
        let mut rows = Vec::new();
        self.open.retain(|key, cell| {
            let closed = key.bucket_ms < cutoffs[usize::from(key.tier == Tier::Hour)];
            if cell.dirty {
                rows.push(RollupRow {
                    tier: key.tier,
                    bucket_ms: key.bucket_ms,
                    cube: key.cube,
                    dims: key.dims.clone(),
                    rollup: if cell.late || closed {
                        std::mem::take(&mut cell.rollup)
                    } else {
                        cell.rollup.clone()
                    },
                    merge: cell.late,
                });
                cell.dirty = false;
            }
            !(cell.late || closed)
        });
        for (slot, cutoff) in cutoffs.into_iter().enumerate() {
            self.evicted_before[slot] = self.evicted_before[slot].max(cutoff);
        }
        rows.sort_by_key(|r| (r.tier, r.bucket_ms));
        rows
    }

    /// Folds the live 1 s cells in `[from_ms, to_ms)` into a query's answer.
    pub fn fold_seconds(&self, from_ms: u64, to_ms: u64, fold: &mut Fold<'_>) {
        for (bucket, window) in &self.seconds {
            if *bucket < from_ms || *bucket >= to_ms {
                continue;
            }
            for (dims, rollup) in &window.open {
                // In-memory sketches cannot be malformed.
                let _ = fold.add(
                    *bucket,
                    dims.as_strs(),
                    rollup,
                    SketchRef::Decoded(&rollup.latency),
                    SketchRef::Decoded(&rollup.ttft),
                );
            }
            for cell in &window.sealed {
                // Encoded here, by `Sketch::encode`.
                let _ = fold.add(
                    *bucket,
                    cell.dims.as_strs(),
                    &cell.counters,
                    SketchRef::Encoded(&cell.latency),
                    SketchRef::Encoded(&cell.ttft),
                );
            }
        }
    }

    /// Requests per live 1 s window, oldest first.
    pub fn second_requests(&self) -> Vec<(u64, u64)> {
        self.seconds
            .iter()
            .map(|(bucket, window)| (*bucket, window.requests()))
            .collect()
    }

    /// Open cells held in memory.
    pub fn open_cells(&self) -> usize {
        self.open.len()
    }

    /// Approximate heap bytes held (cells, sketches and the name table).
    pub fn heap_bytes(&self) -> usize {
        let cell = std::mem::size_of::<CellKey>() + std::mem::size_of::<OpenCell>() + 8;
        let second_cell = std::mem::size_of::<Dims>() + std::mem::size_of::<Rollup>() + 16;
        let sealed_cell = std::mem::size_of::<SealedCell>();
        let open: usize = self
            .open
            .values()
            .map(|c| cell + c.rollup.heap_bytes())
            .sum();
        let seconds: usize = self
            .seconds
            .iter()
            .map(|(_, window)| {
                window
                    .open
                    .values()
                    .map(|r| second_cell + r.heap_bytes())
                    .sum::<usize>()
                    + window
                        .sealed
                        .iter()
                        .map(|c| sealed_cell + c.latency.len() + c.ttft.len())
                        .sum::<usize>()
            })
            .sum();
        let names: usize = self.names.iter().map(|n| n.len() + 32).sum();
        open + seconds + names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TokenUsage;

    pub(crate) fn event(
        time_ms: u64,
        route: &str,
        key: &str,
        status: u16,
        latency_ms: u64,
    ) -> RequestEvent {
        RequestEvent {
            time_unix_ms: time_ms,
            request_id: format!("req_{time_ms}"),
            principal: key.to_owned(),
            tags: Vec::new(),
            endpoint: "/v1/chat/completions".to_owned(),
            route: Some(route.to_owned()),
            provider: Some("p".to_owned()),
            model: Some("m".to_owned()),
            stream: false,
            status,
            error_class: (status >= 400).then(|| "upstream_error".to_owned()),
            usage: TokenUsage {
                input: 10,
                output: 5,
                ..TokenUsage::default()
            },
            cost_usd: Some(0.001),
            saved_usd: None,
            latency_us: latency_ms * 1_000,
            ttft_us: None,
            upstream_us: None,
            attempts: 1,
            cache: "none",
            rate_limit: None,
            stages: vec![],
        }
    }

    const T0: u64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;

    #[test]
    fn counters_round_trip_without_sketches() {
        let rollup = Rollup {
            requests: 1,
            errors: 2,
            tokens_in: 3,
            tokens_out: 4,
            tokens_cached: 5,
            tokens_reasoning: 6,
            cost_usd: 0.5,
            cost_unknown: 7,
            cache_hits: 8,
            latency_sum_us: 9,
            ..Rollup::default()
        };
        assert_eq!(rollup.counters(), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(Rollup::from_counters(rollup.counters(), 0.5), rollup);
    }

    #[test]
    fn an_event_lands_in_every_cube_of_both_stored_tiers() {
        let mut agg = Aggregator::new();
        agg.observe(&event(T0 + 1_500, "r", "k1", 200, 20));
        agg.observe(&event(T0 + 2_500, "r", "k2", 502, 40));
        let rows = agg.take_flush(T0 + 3_000, DEFAULT_GRACE_MS);
        // minute: keyless (1 status class 2xx + 1 5xx) + keyed (2) + by key (2); hour: the
        // same.
        assert_eq!(rows.len(), 12);
        let keyless_2xx: Vec<_> = rows
            .iter()
            .filter(|r| r.cube == Cube::Keyless && &*r.dims.status_class == "2xx")
            .collect();
        assert_eq!(keyless_2xx.len(), 2);
        assert!(
            keyless_2xx
                .iter()
                .all(|r| &*r.dims.key == ANY_KEY && !r.merge)
        );
        let errors: u64 = rows
            .iter()
            .filter(|r| r.cube == Cube::Keyed && r.tier == Tier::Hour)
            .map(|r| r.rollup.errors)
            .sum();
        assert_eq!(errors, 1);
        // By key: one cell per key and window, everything but the key folded in.
        let by_key: Vec<_> = rows
            .iter()
            .filter(|r| r.cube == Cube::ByKey && r.tier == Tier::Minute)
            .collect();
        assert_eq!(by_key.len(), 2);
        for row in &by_key {
            let dims = row.dims.as_strs();
            assert_eq!(Cube::of(&dims), Cube::ByKey);
            assert_eq!([dims[0], dims[1], dims[2], dims[4]], [ANY_KEY; 4]);
            assert_eq!(row.rollup.requests, 1);
        }
        let k2 = by_key.iter().find(|r| &*r.dims.key == "k2").unwrap();
        assert_eq!((k2.rollup.errors, k2.rollup.latency.count()), (1, 1));
        for row in &rows {
            assert_eq!(Cube::of(&row.dims.as_strs()), row.cube);
        }
        // Nothing changed: nothing to flush.
        assert!(agg.take_flush(T0 + 4_000, DEFAULT_GRACE_MS).is_empty());
    }

    #[test]
    fn flushed_rows_are_whole_windows_until_the_window_closes() {
        let mut agg = Aggregator::new();
        agg.observe(&event(T0 + 1_000, "r", "k", 200, 10));
        let first = agg.take_flush(T0 + 2_000, DEFAULT_GRACE_MS);
        assert!(first.iter().all(|r| r.rollup.requests == 1));
        agg.observe(&event(T0 + 3_000, "r", "k", 200, 10));
        let second = agg.take_flush(T0 + 4_000, DEFAULT_GRACE_MS);
        assert!(second.iter().all(|r| r.rollup.requests == 2 && !r.merge));
        // The minute closes (plus grace): its cells go; the hour stays open.
        assert_eq!(agg.open_cells(), 6);
        agg.take_flush(T0 + 60_000 + DEFAULT_GRACE_MS, DEFAULT_GRACE_MS);
        assert_eq!(agg.open_cells(), 3);
        // A late event for the evicted minute becomes a merge row, then leaves memory.
        agg.observe(&event(T0 + 5_000, "r", "k", 200, 10));
        let late = agg.take_flush(T0 + 61_000 + DEFAULT_GRACE_MS, DEFAULT_GRACE_MS);
        let minute: Vec<_> = late.iter().filter(|r| r.tier == Tier::Minute).collect();
        assert_eq!(minute.len(), 3);
        assert!(minute.iter().all(|r| r.merge && r.rollup.requests == 1));
        let hour: Vec<_> = late.iter().filter(|r| r.tier == Tier::Hour).collect();
        assert!(hour.iter().all(|r| !r.merge && r.rollup.requests == 3));
        assert_eq!(agg.open_cells(), 3);
    }

    #[test]
    fn the_second_tier_keeps_five_minutes() {
        let mut agg = Aggregator::new();
        for s in 0..400u64 {
            agg.observe(&event(T0 + s * 1_000, "r", "k", 200, 0));
        }
        let kept: Vec<u64> = agg.second_requests().iter().map(|&(b, _)| b).collect();
        assert_eq!(kept.len(), SECOND_WINDOWS as usize);
        assert_eq!(kept.first(), Some(&(T0 + 100_000)));
        // Out of order within the window is fine; older than the window is left to the
        // stored tiers.
        agg.observe(&event(T0 + 150_000, "r", "k", 200, 0));
        agg.observe(&event(T0 + 10_000, "r", "k", 200, 0));
        let at_150: u64 = agg
            .second_requests()
            .iter()
            .filter(|&&(b, _)| b == T0 + 150_000)
            .map(|&(_, n)| n)
            .sum();
        assert_eq!(at_150, 2);
        assert!(
            agg.second_requests()
                .iter()
                .all(|&(b, _)| b >= T0 + 100_000)
        );
    }

    #[test]
    fn events_count_at_their_end_time() {
        let mut agg = Aggregator::new();
        // Arrived in one minute, finished in the next.
        agg.observe(&event(T0 + 59_000, "r", "k", 200, 2_000));
        let rows = agg.take_flush(T0 + 62_000, DEFAULT_GRACE_MS);
        assert!(
            rows.iter()
                .filter(|r| r.tier == Tier::Minute)
                .all(|r| r.bucket_ms == T0 + 60_000)
        );
    }
}
