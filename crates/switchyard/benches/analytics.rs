//! Analytics benchmark: fills a SQLite store with the rollups of 7 days of synthetic traffic
//! at 1000 requests per second, times the query API's work on it, and measures the memory of
//! the analytics subsystem at steady state in a fresh process.
//!
//! `cargo bench -p switchyard --bench analytics` (add `-- --quick` for a smaller run).
//!
//! Traffic shape: 4 routes with 2 provider/model targets each, 20 keys, 97% 2xx, 2% 4xx,
//! 1% 5xx, log-normal latencies around a per-target median. The stored cells are the ones
//! the aggregator would have written for that traffic: per minute for the last 24 h and per
//! hour for 7 days, keyless, keyed and by key.
//!
//! Each query is timed three ways, interleaved run by run so that they share the machine's
//! conditions: the handler's path (parse the query string, `Analytics::answer` with its
//! query cache of closed hours, serialise the JSON body), the same path without the cache
//! (`Store::answer`: read and fold every stored cell, what main did), and SQLite's own
//! aggregate scan of the rows the uncached path reads (the baseline: on a shared machine
//! the ratios are the figures to compare across runs). The first, cold run of each query
//! (which fills the cache) is reported apart. The load average is printed with them.
//!
//! Memory: the analytics subsystem's heap (the aggregator, as `/admin/analytics/status`
//! reports it in `memory_bytes`, which includes the query cache) and the process's RSS
//! growth. It uses the gateway's allocator (mimalloc), so that the RSS matches the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::analytics::Analytics;
use switchyard::analytics::sqlite::SqliteStore;
use switchyard::analytics::store::{Batch, CellsQuery, Retention, Store};
use switchyard_core::analytics::query::Query;
use switchyard_core::analytics::rollup::ANY_KEY;
use switchyard_core::analytics::{Aggregator, Cube, Dims, RequestEvent, Rollup, RollupRow, Tier};
use switchyard_core::config::AnalyticsConfig;
use switchyard_core::wire::TokenUsage;
use tokio::runtime::Runtime;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RPS: u64 = 1_000;
const ROUTES: usize = 4;
const TARGETS_PER_ROUTE: usize = 2;
const KEYS: usize = 20;
const STATUS: [(&str, f64); 3] = [("2xx", 0.97), ("4xx", 0.02), ("5xx", 0.01)];

#[derive(Clone)]
struct Combo {
    route: usize,
    target: usize,
    key: usize,
    status: usize,
    share: f64,
}

fn combos() -> Vec<Combo> {
    let mut out = Vec::new();
    for route in 0..ROUTES {
        for target in 0..TARGETS_PER_ROUTE {
            for key in 0..KEYS {
                // Keys have Zipf-like shares; the first target takes 70% of a route.
                let key_share = 1.0 / (key as f64 + 1.0);
                let target_share = if target == 0 { 0.7 } else { 0.3 };
                for (status, (_, status_share)) in STATUS.iter().enumerate() {
                    out.push(Combo {
                        route,
                        target,
                        key,
                        status,
                        share: key_share * target_share * status_share,
                    });
                }
            }
        }
    }
    let total: f64 = out.iter().map(|c| c.share).sum();
    for combo in &mut out {
        combo.share /= total;
    }
    out
}

fn dims(combo: &Combo, keyed: bool) -> Dims {
    Dims {
        route: Arc::from(format!("route-{}", combo.route)),
        provider: Arc::from(format!(
            "provider-{}",
            combo.route * TARGETS_PER_ROUTE + combo.target
        )),
        model: Arc::from(format!("model-{}", combo.target)),
        key: Arc::from(if keyed {
            format!("sk-sy-key-{:02}", combo.key)
        } else {
            ANY_KEY.to_owned()
        }),
        status_class: Arc::from(STATUS[combo.status].0),
    }
}

/// Normal quantiles for 16 evenly spaced probabilities (a log-normal's spread).
const Z: [f64; 16] = [
    -1.86, -1.32, -1.01, -0.77, -0.57, -0.40, -0.24, -0.08, 0.08, 0.24, 0.40, 0.57, 0.77, 1.01,
    1.32, 1.86,
];

fn rollup(combo: &Combo, requests: u64) -> Rollup {
    let median_us = 300_000.0 * (1.0 + (combo.route * TARGETS_PER_ROUTE + combo.target) as f64);
    let mut r = Rollup {
        requests,
        errors: if combo.status > 0 { requests } else { 0 },
        tokens_in: requests * 400,
        tokens_out: requests * 150,
        cost_usd: requests as f64 * 0.0004,
        cache_hits: requests / 10,
        ..Rollup::default()
    };
    let per = requests / Z.len() as u64;
    let mut left = requests;
    for (i, z) in Z.iter().enumerate() {
        let n = if i + 1 == Z.len() { left } else { per };
        left -= n;
        let value = (median_us * (0.6 * z + fastrand::f64() * 0.02).exp()) as u64;
        r.latency.add_n(value, u32::try_from(n).unwrap_or(u32::MAX));
        r.latency_sum_us += value * n;
        r.ttft
            .add_n(value / 4, u32::try_from(n / 2).unwrap_or(u32::MAX));
    }
    r
}

/// The cells of one window: keyed, plus the keyless and by-key cubes merged from them.
fn window(tier: Tier, bucket_ms: u64, combos: &[Combo]) -> Vec<RollupRow> {
    let total = RPS * tier.width_ms() / 1_000;
    let mut rows = Vec::new();
    let mut keyless: std::collections::HashMap<Dims, Rollup> = std::collections::HashMap::new();
    let mut by_key: std::collections::HashMap<Dims, Rollup> = std::collections::HashMap::new();
    let any: Arc<str> = Arc::from(ANY_KEY);
    for combo in combos {
        let requests = (total as f64 * combo.share).round() as u64;
        if requests == 0 {
            continue;
        }
        let cell = rollup(combo, requests);
        keyless.entry(dims(combo, false)).or_default().merge(&cell);
        by_key
            .entry(Cube::ByKey.dims_of(&dims(combo, true), &any))
            .or_default()
            .merge(&cell);
        rows.push(RollupRow {
            tier,
            bucket_ms,
            cube: Cube::Keyed,
            dims: dims(combo, true),
            rollup: cell,
            merge: false,
        });
    }
    for (cube, cells) in [(Cube::Keyless, keyless), (Cube::ByKey, by_key)] {
        rows.extend(cells.into_iter().map(|(dims, rollup)| RollupRow {
            tier,
            bucket_ms,
            cube,
            dims,
            rollup,
            merge: false,
        }));
    }
    rows
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn fill(store: &SqliteStore, now: u64, quick: bool) -> (usize, Duration) {
    let combos = combos();
    let started = Instant::now();
    let mut rows = 0;
    let hours = if quick { 24 } else { 7 * 24 };
    for h in 0..=hours {
        let bucket = Tier::Hour.bucket(now) - h * 3_600_000;
        let batch = Batch {
            rollups: window(Tier::Hour, bucket, &combos),
            requests: vec![],
        };
        rows += batch.rollups.len();
        store.write("bench", &batch).unwrap();
    }
    let minutes = if quick { 120 } else { 24 * 60 };
    for chunk in (0..=minutes).collect::<Vec<u64>>().chunks(60) {
        let mut batch = Batch::default();
        for &m in chunk {
            let bucket = Tier::Minute.bucket(now) - m * 60_000;
            batch.rollups.extend(window(Tier::Minute, bucket, &combos));
        }
        rows += batch.rollups.len();
        store.write("bench", &batch).unwrap();
    }
    (rows, started.elapsed())
}

fn parse(text: &str, now: u64) -> Query {
    let pairs: Vec<(&str, &str)> = text
        .split('&')
        .map(|p| p.split_once('=').unwrap())
        .collect();
    Query::parse(pairs, now).unwrap()
}

/// The analytics subsystem over `store`, as the gateway builds it.
fn analytics(store: &Arc<SqliteStore>) -> Analytics {
    Analytics::new(
        Store::Sqlite(Arc::clone(store)),
        AnalyticsConfig {
            flush_interval: Duration::from_secs(1),
            request_log: true,
            request_log_max_age: Duration::from_secs(7 * 86_400),
            request_log_max_bytes: 1 << 30,
            metrics_max_series: switchyard_core::config::DEFAULT_METRICS_MAX_SERIES,
        },
    )
}

/// The handler's path (`handlers::analytics::analytics`): parse the query string, answer
/// (the query cache, then the store), serialise the JSON body. Returns the body's length.
fn handler_path(runtime: &Runtime, analytics: &Analytics, text: &str) -> usize {
    let query = parse(text, now_ms());
    let answer = runtime.block_on(analytics.answer(query)).unwrap();
    serde_json::to_vec(&answer).unwrap().len()
}

/// The same without the query cache (main's path before it): parse, read and fold every
/// stored cell, serialise.
fn uncached_path(runtime: &Runtime, analytics: &Analytics, text: &str) -> usize {
    let query = parse(text, now_ms());
    let answer = runtime.block_on(analytics.store.answer(query)).unwrap();
    serde_json::to_vec(&answer).unwrap().len()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn time_queries(store: &Arc<SqliteStore>, dir: &Path, runs: usize) -> Analytics {
    // The baseline, timed in the same run: SQLite's own aggregate scan of exactly the rows
    // each query reads (counts and blob lengths summed in C, nothing decoded in Rust).
    let raw = rusqlite::Connection::open(dir.join("analytics.db")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let analytics = analytics(store);
    let all = "requests,errors,p50,p95,p99,ttft_p50,tokens_in,tokens_out,cost,cache_hit_rate";
    let queries = [
        format!("from=-7d&interval=1h&group_by=provider,model&metrics={all}"),
        format!("from=-7d&interval=1d&metrics={all}"),
        "from=-7d&interval=1h&group_by=key&metrics=requests,cost,p95".to_owned(),
        "from=-7d&interval=7d&group_by=key&metrics=requests,cost".to_owned(),
        format!("from=-7d&interval=1h&provider=provider-0&metrics={all}"),
        format!("from=-24h&interval=1m&metrics={all}"),
        format!("from=-1h&interval=1m&group_by=route&metrics={all}"),
    ];
    println!(
        "queries, {runs} runs each, the three paths interleaved run by run; load average at the \
         start {}:\n  handler path (parse, answer through the query cache, JSON) | the same \
         without the cache (main's path) | SQLite's own scan of the rows the store path reads",
        load_average()
    );
    // `BENCH_ONLY=N` runs only the N-th query (for profiling).
    let only: Option<usize> = std::env::var("BENCH_ONLY")
        .ok()
        .and_then(|n| n.parse().ok());
    // `BENCH_CACHED_ONLY=1` times only the handler path (for profiling it).
    let cached_only = std::env::var_os("BENCH_CACHED_ONLY").is_some();
    for (n, text) in queries.iter().enumerate() {
        if only.is_some_and(|only| only != n) {
            continue;
        }
        // The first query fills the cache (cold): timed apart.
        let started = Instant::now();
        let bytes = handler_path(&runtime, &analytics, text);
        let cold = started.elapsed();
        let query = parse(text, now_ms());
        let read = CellsQuery::of(&query);
        let mut cached = Vec::with_capacity(runs);
        let mut uncached = Vec::with_capacity(runs);
        let mut scans = Vec::with_capacity(runs);
        let mut rows = 0i64;
        for _ in 0..runs {
            let started = Instant::now();
            let same = handler_path(&runtime, &analytics, text);
            cached.push(started.elapsed());
            if cached_only {
                continue;
            }
            let started = Instant::now();
            let without = uncached_path(&runtime, &analytics, text);
            uncached.push(started.elapsed());
            assert!(same.abs_diff(without) < 64, "{same} vs {without} bytes");
            let started = Instant::now();
            rows = raw
                .query_row(
                    "SELECT count(*), sum(requests), sum(length(latency)), sum(length(ttft)) \
                     FROM rollups WHERE tier = ?1 AND cube = ?2 AND bucket >= ?3 AND bucket < ?4",
                    rusqlite::params![
                        read.tier.code(),
                        read.cube.code(),
                        read.from_ms as i64,
                        read.to_ms as i64
                    ],
                    |row| row.get(0),
                )
                .unwrap();
            scans.push(started.elapsed());
        }
        if cached_only {
            cached.sort_unstable();
            println!(
                "  {text}\n    cached p50 {:?} p99 {:?}",
                percentile(&cached, 0.5),
                percentile(&cached, 0.99)
            );
            continue;
        }
        for times in [&mut cached, &mut uncached, &mut scans] {
            times.sort_unstable();
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let line = |times: &[Duration]| {
            format!(
                "{:>6.3} {:>6.3} {:>6.3}",
                ms(percentile(times, 0.5)),
                ms(percentile(times, 0.95)),
                ms(percentile(times, 0.99))
            )
        };
        let ratio = |times: &[Duration]| {
            percentile(times, 0.5).as_secs_f64() / percentile(&scans, 0.5).as_secs_f64()
        };
        println!(
            "  {text}\n    {rows} rows, {bytes} B; p50/p95/p99 ms: cached {} ({:.2}x scan; cold {:.3}) \
             | uncached {} ({:.1}x) | scan {}",
            line(&cached),
            ratio(&cached),
            ms(cold),
            line(&uncached),
            ratio(&uncached),
            line(&scans),
        );
    }
    let status = analytics
        .hours
        .stats
        .hits
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "  query cache: {} hours, {:.2} MiB, {status} hours served from it; load average at the \
         end {}",
        analytics.hours.len(),
        analytics.hours.heap_bytes() as f64 / 1_048_576.0,
        load_average()
    );
    analytics
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Steady state in a fresh process: the store over the filled files, the aggregator fed
/// 1000 events per second of event time for 6 minutes with a flush every second (rollups and
/// request log), then the 7-day queries.
fn memory(dir: &Path, quick: bool) {
    let before = rss_bytes();
    let store = Arc::new(SqliteStore::open(Some(dir)).unwrap());
    let combos = combos();
    let mut aggregator = Aggregator::new();
    let start = now_ms() - 6 * 60_000;
    let seconds = if quick { 60 } else { 360 };
    for s in 0..seconds {
        let mut events = Vec::with_capacity(RPS as usize);
        for i in 0..RPS {
            let pick = fastrand::f64();
            let mut acc = 0.0;
            let combo = combos
                .iter()
                .find(|c| {
                    acc += c.share;
                    acc >= pick
                })
                .unwrap_or(&combos[0]);
            let d = dims(combo, true);
            events.push(RequestEvent {
                time_unix_ms: start + s * 1_000 + i,
                request_id: format!("req_{s}_{i}"),
                principal: d.key.to_string(),
                tags: Vec::new(),
                endpoint: "/v1/chat/completions".to_owned(),
                route: Some(d.route.to_string()),
                provider: Some(d.provider.to_string()),
                model: Some(d.model.to_string()),
                stream: i % 2 == 0,
                status: [200, 429, 502][combo.status],
                error_class: (combo.status > 0).then(|| "upstream_error".to_owned()),
                usage: TokenUsage {
                    input: 400,
                    output: 150,
                    ..TokenUsage::default()
                },
                cost_usd: Some(0.0004),
                saved_usd: None,
                latency_us: 200_000 + fastrand::u64(..1_000_000),
                ttft_us: Some(50_000 + fastrand::u64(..200_000)),
                upstream_us: Some(190_000),
                attempts: 1,
                cache: "miss",
                rate_limit: None,
                stages: vec![("auth", 2), ("route", 1), ("upstream", 190_000)],
            });
        }
        for event in &events {
            aggregator.observe(event);
        }
        let rollups = aggregator.take_flush(start + (s + 1) * 1_000, 10_000);
        if std::env::var_os("BENCH_NO_WRITES").is_some() {
            continue;
        }
        store
            .write(
                "steady",
                &Batch {
                    rollups,
                    requests: events,
                },
            )
            .unwrap();
    }
    let ingesting = rss_bytes();
    let now = now_ms();
    let analytics = time_queries(&store, dir, 20);
    store
        .prune(
            now,
            Retention {
                request_log_max_age_ms: 7 * 86_400_000,
                request_log_max_bytes: 1 << 30,
            },
        )
        .unwrap();
    let after = rss_bytes();
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    let cache = analytics.hours.heap_bytes() as u64;
    let heap = aggregator.heap_bytes() as u64;
    println!(
        "memory at steady state: analytics heap {:.2} MiB (`memory_bytes`: aggregator {:.2} MiB \
         with {} open cells and a 1 s tier of {} windows, query cache {:.2} MiB in {} hours); \
         process RSS growth over the store opened: {:.2} MiB after 1000 rps of ingestion, \
         {:.2} MiB after the queries above too",
        mib(heap + cache),
        mib(heap),
        aggregator.open_cells(),
        aggregator.second_requests().len(),
        mib(cache),
        analytics.hours.len(),
        mib(ingesting.saturating_sub(before)),
        mib(after.saturating_sub(before)),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(at) = args.iter().position(|a| a == "--memory") {
        memory(Path::new(&args[at + 1]), quick);
        return;
    }
    // For profiling: `--fill DIR` fills a store and keeps it, `--query DIR` only queries it.
    if let Some(at) = args.iter().position(|a| a == "--fill") {
        let store = SqliteStore::open(Some(Path::new(&args[at + 1]))).unwrap();
        let (rows, took) = fill(&store, now_ms(), quick);
        println!("filled {rows} rows in {:.1} s", took.as_secs_f64());
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--query") {
        let store = Arc::new(SqliteStore::open(Some(Path::new(&args[at + 1]))).unwrap());
        time_queries(&store, Path::new(&args[at + 1]), 100);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(Some(dir.path())).unwrap());
    let now = now_ms();
    let (rows, took) = fill(&store, now, quick);
    let size = std::fs::metadata(dir.path().join("analytics.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "filled {rows} rollup rows ({} of traffic at {RPS} rps) in {:.1} s ({:.0} rows/s); analytics.db {:.1} MiB",
        if quick { "24 h" } else { "7 days" },
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        size as f64 / 1_048_576.0
    );
    drop(time_queries(
        &store,
        dir.path(),
        if quick { 50 } else { 200 },
    ));
    drop(store);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--memory", dir.path().to_str().unwrap()])
        .args(quick.then_some("--quick"))
        .status()
        .unwrap();
    assert!(status.success());
}
