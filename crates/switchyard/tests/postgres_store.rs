//! The Postgres analytics store against a real Postgres (`127.0.0.1:5432`, user `postgres`,
//! database `test`, or `SWITCHYARD_TEST_POSTGRES_URL`). Each test works in a schema of its
//! own (dropped first and last), so tests run in parallel and re-runs start clean. An
//! unreachable Postgres fails the tests: CI starts one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::TestDb as Db;
use serde_json::Value;
use switchyard::analytics::postgres::PostgresStore;
use switchyard::analytics::store::{
    Batch, CellsQuery, Cursor, LoggedRequest, Pruned, RequestsQuery, Retention, Store, StoreError,
    StoredCell, rollup_horizon,
};
use switchyard_core::analytics::query::{Dim, Filter, Metric, Number, Query, answer};
use switchyard_core::analytics::rollup::DEFAULT_GRACE_MS;
use switchyard_core::analytics::{
    Aggregator, Cube, Dims, RequestEvent, Rollup, RollupRow, Sketch, Tier,
};
use switchyard_core::wire::TokenUsage;

/// The stores' cell read by its parts (sketches included), as the tests use it.
trait CellsAt {
    async fn cells_at(
        &self,
        tier: Tier,
        cube: Cube,
        from_ms: u64,
        to_ms: u64,
        filter: &Filter,
    ) -> Result<Vec<StoredCell>, StoreError>;
}

fn read(tier: Tier, cube: Cube, from_ms: u64, to_ms: u64, filter: &Filter) -> CellsQuery {
    CellsQuery {
        tier,
        cube,
        from_ms,
        to_ms,
        filter: filter.clone(),
        sketches: true,
        dims: [true; 5],
    }
}

impl CellsAt for PostgresStore {
    async fn cells_at(
        &self,
        tier: Tier,
        cube: Cube,
        from_ms: u64,
        to_ms: u64,
        filter: &Filter,
    ) -> Result<Vec<StoredCell>, StoreError> {
        self.cells(&read(tier, cube, from_ms, to_ms, filter)).await
    }
}

impl CellsAt for Store {
    async fn cells_at(
        &self,
        tier: Tier,
        cube: Cube,
        from_ms: u64,
        to_ms: u64,
        filter: &Filter,
    ) -> Result<Vec<StoredCell>, StoreError> {
        let Store::Postgres(store) = self else {
            panic!("these tests use Postgres");
        };
        store.cells(&read(tier, cube, from_ms, to_ms, filter)).await
    }
}

/// An hour boundary.
const T0: u64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;

/// A test's own schema, with the store under test connected to it.
trait StoreDb {
    async fn store(&self) -> PostgresStore;
}

impl StoreDb for Db {
    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).await.unwrap()
    }
}

fn event(i: u64, time_ms: u64, latency_ms: u64) -> RequestEvent {
    RequestEvent {
        time_unix_ms: time_ms,
        request_id: format!("req_{i:03}"),
        principal: format!("k{}", i % 2),
        // `%` and `_` are LIKE's wildcards: a tag filter matches them literally.
        tags: if i.is_multiple_of(3) {
            vec!["team-a".to_owned(), "50%_off".to_owned()]
        } else {
            Vec::new()
        },
        endpoint: "/v1/chat/completions".to_owned(),
        route: Some("chat".to_owned()),
        provider: Some("p1".to_owned()),
        model: Some("m1".to_owned()),
        stream: false,
        status: 200,
        error_class: None,
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

fn failed(mut event: RequestEvent, status: u16, class: &str) -> RequestEvent {
    event.status = status;
    event.error_class = Some(class.to_owned());
    event
}

fn rollups(rows: Vec<RollupRow>) -> Batch {
    Batch {
        rollups: rows,
        requests: vec![],
    }
}

fn dims(route: &str, key: &str) -> Dims {
    Dims {
        route: route.into(),
        provider: "p1".into(),
        model: "m1".into(),
        key: key.into(),
        status_class: "2xx".into(),
    }
}

fn row(tier: Tier, bucket_ms: u64, keyed: bool, requests: u64, merge: bool) -> RollupRow {
    let mut rollup = Rollup::default();
    for i in 0..requests {
        rollup.requests += 1;
        rollup.latency_sum_us += 1_000 * (i + 1);
        rollup.latency.add(1_000 * (i + 1));
    }
    RollupRow {
        tier,
        bucket_ms,
        cube: if keyed { Cube::Keyed } else { Cube::Keyless },
        dims: dims("chat", if keyed { "k1" } else { "*" }),
        rollup,
        merge,
    }
}

fn query(group_by: Vec<Dim>, filter: Filter) -> Query {
    Query {
        from_ms: T0,
        to_ms: T0 + 3_600_000,
        interval_ms: 60_000,
        tier: Tier::Minute,
        group_by,
        metrics: vec![
            Metric::Requests,
            Metric::Errors,
            Metric::LatencyQuantile(50),
            Metric::LatencyQuantile(99),
            Metric::TtftQuantile(50),
            Metric::TokensIn,
            Metric::Cost,
        ],
        filter,
    }
}

fn float(value: &Value) -> f64 {
    value.as_f64().unwrap()
}

/// What [`answer`] reports for a sketch's quantile: milliseconds, 6 decimals.
fn millis(sketch: &Sketch, q: f64) -> f64 {
    (sketch.quantile(q).unwrap() / 1_000.0 * 1e6).round() / 1e6
}

fn total_requests(cells: &[StoredCell]) -> u64 {
    cells.iter().map(|c| c.rollup.requests).sum()
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let db = Db::new("switchyard_test_migrations").await;
    // Three instances starting together, then a restart.
    let (a, b, c) = tokio::join!(
        PostgresStore::connect(&db.url),
        PostgresStore::connect(&db.url),
        PostgresStore::connect(&db.url)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    drop((a, b, c));
    let store = db.store().await;
    let versions: Vec<i32> = db
        .admin
        .query(
            &format!(
                "SELECT version FROM {}.switchyard_schema_migrations ORDER BY version",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    let tables: Vec<String> = db
        .admin
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
             ORDER BY 1",
            &[&db.schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "switchyard_feedback",
            "switchyard_requests",
            "switchyard_rollup_versions",
            "switchyard_rollups",
            "switchyard_schema_migrations",
            "switchyard_spend"
        ]
    );
    let indexes: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 \
             AND indexname = 'switchyard_requests_by_time'",
            &[&db.schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 1);
    // Usable, and empty.
    let cells = store
        .cells_at(
            Tier::Minute,
            Cube::Keyless,
            0,
            u64::MAX / 2,
            &Filter::default(),
        )
        .await
        .unwrap();
    assert!(cells.is_empty());
    drop(store);
    db.finish().await;
}

#[tokio::test]
async fn two_instances_are_summed_by_a_query() {
    let db = Db::new("switchyard_test_two_instances").await;
    let store = Store::Postgres(Arc::new(db.store().await));
    // Instance a served latencies 1..=60 ms, instance b 61..=100 ms, in the same minute
    // and with the same dimensions; every tenth request failed.
    let mut all_latency = Sketch::new();
    let mut all_ttft = Sketch::new();
    for (instance, range) in [("a", 1..=60u64), ("b", 61..=100u64)] {
        let mut aggregator = Aggregator::new();
        for i in range {
            let mut e = event(i, T0 + 1_000, i);
            e.ttft_us = Some(i * 500);
            if i % 10 == 0 {
                e = failed(e, 502, "upstream_error");
            }
            all_latency.add(i * 1_000);
            all_ttft.add(i * 500);
            aggregator.observe(&e);
        }
        let rows = aggregator.take_flush(T0 + 2_000, DEFAULT_GRACE_MS);
        assert!(rows.iter().all(|r| !r.merge));
        store
            .write(instance, Arc::new(rollups(rows)))
            .await
            .unwrap();
    }

    let q = query(vec![], Filter::default());
    let cells = store
        .cells_at(Tier::Minute, q.cube(), q.from_ms, q.to_ms, &q.filter)
        .await
        .unwrap();
    // One row per instance and status class: each instance's rows are kept apart.
    assert_eq!(cells.len(), 4);
    let result = answer(&q, cells.iter().map(|c| (c.bucket_ms, &c.dims, &c.rollup)));
    let totals = &result.totals;
    assert_eq!(totals["requests"], 100);
    assert_eq!(totals["errors"], 10);
    assert_eq!(totals["tokens_in"], 1_000);
    assert!((float(&totals["cost"]) - 0.1).abs() < 1e-9);
    // Nearest rank over all 100: p50 is the 50th value, p99 the 99th (within 2%).
    let p50 = float(&totals["p50"]);
    let p99 = float(&totals["p99"]);
    assert!((p50 - 50.0).abs() <= 1.0, "p50 {p50}");
    assert!((p99 - 99.0).abs() <= 1.98, "p99 {p99}");
    assert_eq!(p50, millis(&all_latency, 0.5));
    assert_eq!(p99, millis(&all_latency, 0.99));
    assert_eq!(float(&totals["ttft_p50"]), millis(&all_ttft, 0.5));
    // One minute point carries it all.
    assert_eq!(result.series.len(), 1);
    assert_eq!(
        result.series[0].values.get("requests").unwrap()[0],
        Number::Count(100)
    );

    // The by-key cube, grouped by key: 50 each, across both instances.
    let q = query(vec![Dim::Key], Filter::default());
    let cells = store
        .cells_at(Tier::Minute, q.cube(), q.from_ms, q.to_ms, &q.filter)
        .await
        .unwrap();
    let result = answer(&q, cells.iter().map(|c| (c.bucket_ms, &c.dims, &c.rollup)));
    let mut by_key: Vec<(String, u64)> = result
        .series
        .iter()
        .map(|s| {
            (
                s.group["key"].as_str().unwrap().to_owned(),
                s.totals["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    by_key.sort();
    assert_eq!(by_key, [("k0".to_owned(), 50), ("k1".to_owned(), 50)]);

    // Filters are applied by the store: only the failed cells come back.
    let filter = Filter {
        equals: vec![(Dim::StatusClass, "5xx".to_owned())],
    };
    let q = query(vec![], filter);
    let cells = store
        .cells_at(Tier::Minute, Cube::Keyless, q.from_ms, q.to_ms, &q.filter)
        .await
        .unwrap();
    assert_eq!(cells.len(), 2);
    assert!(cells.iter().all(|c| &*c.dims.status_class == "5xx"));
    let result = answer(&q, cells.iter().map(|c| (c.bucket_ms, &c.dims, &c.rollup)));
    assert_eq!(result.totals["requests"], 10);
    assert_eq!(result.totals["errors"], 10);
    for (dim, value, expected) in [
        (Dim::Route, "chat", 4),
        (Dim::Route, "other", 0),
        (Dim::Provider, "p1", 4),
        (Dim::Model, "m2", 0),
    ] {
        let filter = Filter {
            equals: vec![(dim, value.to_owned())],
        };
        let cells = store
            .cells_at(Tier::Minute, Cube::Keyless, T0, T0 + 60_000, &filter)
            .await
            .unwrap();
        assert_eq!(cells.len(), expected, "{dim:?} = {value}");
    }
    let keyed = Filter {
        equals: vec![(Dim::Key, "k1".to_owned())],
    };
    let cells = store
        .cells_at(Tier::Minute, Cube::Keyed, T0, T0 + 60_000, &keyed)
        .await
        .unwrap();
    assert_eq!(total_requests(&cells), 50);
    // The window bounds: [from, to).
    let cells = store
        .cells_at(
            Tier::Minute,
            Cube::Keyless,
            T0 + 60_000,
            T0 + 120_000,
            &Filter::default(),
        )
        .await
        .unwrap();
    assert!(cells.is_empty());
    // The hour tier has the same totals.
    let cells = store
        .cells_at(
            Tier::Hour,
            Cube::Keyless,
            T0,
            T0 + 3_600_000,
            &Filter::default(),
        )
        .await
        .unwrap();
    assert_eq!(total_requests(&cells), 100);

    let Store::Postgres(store) = store else {
        unreachable!()
    };
    drop(Arc::into_inner(store).unwrap());
    db.finish().await;
}

#[tokio::test]
async fn a_flush_replaces_the_instance_row() {
    let db = Db::new("switchyard_test_replace").await;
    let store = db.store().await;
    let mut aggregator = Aggregator::new();
    for i in 0..3 {
        aggregator.observe(&event(i, T0 + 1_000, 10));
    }
    let first = aggregator.take_flush(T0 + 2_000, DEFAULT_GRACE_MS);
    store.write("a", &rollups(first)).await.unwrap();
    for i in 3..5 {
        aggregator.observe(&event(i, T0 + 3_000, 20));
    }
    // Whole windows so far: 5 requests, not 3 + 5.
    let second = aggregator.take_flush(T0 + 4_000, DEFAULT_GRACE_MS);
    store.write("a", &rollups(second.clone())).await.unwrap();
    let keyless = |cells: Vec<StoredCell>| -> Vec<Rollup> {
        cells
            .into_iter()
            .filter(|c| &*c.dims.key == "*")
            .map(|c| c.rollup)
            .collect()
    };
    let cells = store
        .cells_at(
            Tier::Minute,
            Cube::Keyless,
            T0,
            T0 + 60_000,
            &Filter::default(),
        )
        .await
        .unwrap();
    let stored = keyless(cells);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].requests, 5);
    assert_eq!(stored[0].latency.count(), 5);
    assert_eq!(stored[0].latency_sum_us, 3 * 10_000 + 2 * 20_000);
    // Every aggregate column round-trips.
    let sent = second
        .iter()
        .find(|r| r.tier == Tier::Minute && r.cube == Cube::Keyless)
        .unwrap();
    assert_eq!(stored[0], sent.rollup);

    // Another instance's row for the same cell is kept beside it.
    let mut other = Aggregator::new();
    other.observe(&event(9, T0 + 1_000, 10));
    store
        .write(
            "b",
            &rollups(other.take_flush(T0 + 2_000, DEFAULT_GRACE_MS)),
        )
        .await
        .unwrap();
    let cells = store
        .cells_at(
            Tier::Minute,
            Cube::Keyless,
            T0,
            T0 + 60_000,
            &Filter::default(),
        )
        .await
        .unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(total_requests(&cells), 6);

    // The same cell twice in one batch: the last one wins, as written in order.
    let mut twice = row(Tier::Minute, T0, false, 7, false);
    let mut last = row(Tier::Minute, T0, false, 9, false);
    twice.dims = sent.dims.clone();
    last.dims = sent.dims.clone();
    store.write("a", &rollups(vec![twice, last])).await.unwrap();
    let cells = store
        .cells_at(
            Tier::Minute,
            Cube::Keyless,
            T0,
            T0 + 60_000,
            &Filter::default(),
        )
        .await
        .unwrap();
    assert_eq!(total_requests(&cells), 10);
    drop(store);
    db.finish().await;
}

#[tokio::test]
async fn merge_rows_add_to_the_stored_row() {
    let db = Db::new("switchyard_test_merge").await;
    let store = db.store().await;
    let mut aggregator = Aggregator::new();
    for i in 0..3 {
        aggregator.observe(&event(i, T0 + 1_000, 10 * (i + 1)));
    }
    store
        .write(
            "a",
            &rollups(aggregator.take_flush(T0 + 2_000, DEFAULT_GRACE_MS)),
        )
        .await
        .unwrap();
    // Instance b has the same cell; merging into a's row must leave it alone.
    let mut other = Aggregator::new();
    other.observe(&event(50, T0 + 1_000, 500));
    store
        .write(
            "b",
            &rollups(other.take_flush(T0 + 2_000, DEFAULT_GRACE_MS)),
        )
        .await
        .unwrap();
    // The minute closes and is evicted; two late events become merge rows.
    assert!(
        aggregator
            .take_flush(T0 + 60_000 + DEFAULT_GRACE_MS, DEFAULT_GRACE_MS)
            .is_empty()
    );
    for (i, late) in [(3u64, 40u64), (4, 50)] {
        let mut e = event(i, T0 + 5_000, late);
        e.cost_usd = Some(0.5);
        aggregator.observe(&e);
        let rows = aggregator.take_flush(T0 + 61_000 + DEFAULT_GRACE_MS, DEFAULT_GRACE_MS);
        let minute: Vec<&RollupRow> = rows.iter().filter(|r| r.tier == Tier::Minute).collect();
        assert!(minute.iter().all(|r| r.merge && r.rollup.requests == 1));
        store.write("a", &rollups(rows)).await.unwrap();
    }
    let stored: Vec<(String, i64, f64)> = db
        .admin
        .query(
            &format!(
                "SELECT instance, requests, cost_usd FROM {}.switchyard_rollups \
                 WHERE tier = 2 AND cube = 0 ORDER BY instance",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(stored.len(), 2);
    assert_eq!((stored[0].0.as_str(), stored[0].1), ("a", 5));
    assert!((stored[0].2 - (0.003 + 1.0)).abs() < 1e-9);
    assert_eq!((stored[1].0.as_str(), stored[1].1), ("b", 1));

    let cells = store
        .cells_at(
            Tier::Minute,
            Cube::Keyless,
            T0,
            T0 + 60_000,
            &Filter::default(),
        )
        .await
        .unwrap();
    let mut merged = Rollup::default();
    for cell in &cells {
        merged.merge(&cell.rollup);
    }
    assert_eq!(merged.requests, 6);
    // The sketches were merged (decoded and added), not overwritten.
    assert_eq!(merged.latency.count(), 6);
    assert_eq!(
        merged.latency_sum_us,
        (10 + 20 + 30 + 40 + 50 + 500) * 1_000
    );
    let mut expected = Sketch::new();
    for ms in [10u64, 20, 30, 40, 50, 500] {
        expected.add(ms * 1_000);
    }
    assert_eq!(merged.latency, expected);
    // The hour tier was still open: its rows were replaced with the whole hour.
    let cells = store
        .cells_at(
            Tier::Hour,
            Cube::Keyless,
            T0,
            T0 + 3_600_000,
            &Filter::default(),
        )
        .await
        .unwrap();
    assert_eq!(total_requests(&cells), 6);

    // A merge row for a cell never stored is written as it is.
    let mut fresh = row(Tier::Minute, T0 + 120_000, false, 2, true);
    fresh.dims = dims("fresh", "*");
    store
        .write("a", &rollups(vec![fresh.clone()]))
        .await
        .unwrap();
    let filter = Filter {
        equals: vec![(Dim::Route, "fresh".to_owned())],
    };
    let cells = store
        .cells_at(Tier::Minute, Cube::Keyless, T0, T0 + 3_600_000, &filter)
        .await
        .unwrap();
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0].bucket_ms, T0 + 120_000);
    assert_eq!(cells[0].rollup, fresh.rollup);
    drop(store);
    db.finish().await;
}

/// Everything the log pages hold for a query, following the cursor; with the page sizes.
async fn all_pages(store: &PostgresStore, mut query: RequestsQuery) -> (Vec<String>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let page = store.requests(&query).await.unwrap();
        sizes.push(page.data.len());
        ids.extend(page.data.into_iter().map(|r| r.request_id));
        match page.next_cursor {
            Some(cursor) => query.before = Some(Cursor::decode(&cursor).unwrap()),
            None => return (ids, sizes),
        }
        assert!(sizes.len() < 100, "the cursor does not advance");
    }
}

#[tokio::test]
async fn the_request_log_pages_with_filters_and_a_cursor() {
    let db = Db::new("switchyard_test_request_log").await;
    let store = db.store().await;
    // 25 requests; two at each second, so the row id breaks ties.
    let events: Vec<RequestEvent> = (0..25u64)
        .map(|i| {
            let mut e = event(i, T0 + (i / 2) * 1_000, 10 * (i + 1));
            if i % 5 == 0 {
                e = failed(e, 500, "upstream_error");
            } else if i % 7 == 0 {
                e = failed(e, 429, "rate_limited");
            }
            e.provider = Some(if i % 2 == 0 { "p1" } else { "p2" }.to_owned());
            e.route = (i % 3 != 0).then(|| "chat".to_owned());
            e.principal = format!("k{}", i % 4);
            e.stream = i % 2 == 1;
            e.ttft_us = e.stream.then_some(i * 100);
            e.upstream_us = Some(i * 900);
            e.cost_usd = (i % 3 != 1).then_some(0.25 * i as f64);
            e.saved_usd = (i % 3 == 0).then_some(0.125 * i as f64);
            e.usage.cached_input = i;
            e.usage.reasoning = 2 * i;
            e.attempts = 1 + (i % 3) as u32;
            e.stages = vec![("auth", i), ("upstream", 10 * i)];
            e
        })
        .collect();
    let (first, second) = events.split_at(15);
    for (instance, part) in [("a", first), ("b", second)] {
        let batch = Batch {
            rollups: vec![],
            requests: part.to_vec(),
        };
        store.write(instance, &batch).await.unwrap();
    }
    // Newest first; at the same time, the later written first.
    let mut newest_first: Vec<(usize, &RequestEvent)> = events.iter().enumerate().collect();
    newest_first.sort_by_key(|&(at, e)| std::cmp::Reverse((e.time_unix_ms, at)));
    let expect = |keep: &dyn Fn(&RequestEvent) -> bool| -> Vec<String> {
        newest_first
            .iter()
            .filter(|(_, e)| keep(e))
            .map(|(_, e)| e.request_id.clone())
            .collect()
    };

    let (ids, sizes) = all_pages(
        &store,
        RequestsQuery {
            limit: 10,
            ..RequestsQuery::default()
        },
    )
    .await;
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(ids, expect(&|_| true));

    // The first page's cursor points at its last row.
    let page = store
        .requests(&RequestsQuery {
            limit: 10,
            ..RequestsQuery::default()
        })
        .await
        .unwrap();
    let cursor = Cursor::decode(page.next_cursor.as_deref().unwrap()).unwrap();
    assert_eq!(cursor.time_ms, page.data[9].time_ms);

    // Every field comes back as written.
    let e = &events[21];
    let logged = page
        .data
        .iter()
        .find(|r| r.request_id == e.request_id)
        .expect("on the first page");
    assert_eq!(
        *logged,
        LoggedRequest {
            time_ms: e.time_unix_ms,
            request_id: e.request_id.clone(),
            instance: "b".to_owned(),
            key: "k1".to_owned(),
            endpoint: "/v1/chat/completions".to_owned(),
            route: None,
            provider: Some("p2".to_owned()),
            model: Some("m1".to_owned()),
            stream: true,
            status: 429,
            error_class: Some("rate_limited".to_owned()),
            tokens_in: 10,
            tokens_out: 5,
            tokens_cached: 21,
            tokens_reasoning: 42,
            cost_usd: Some(5.25),
            latency_us: 220_000,
            ttft_us: Some(2_100),
            upstream_us: Some(18_900),
            attempts: 1,
            cache: "none".to_owned(),
            stages: vec![("auth".to_owned(), 21), ("upstream".to_owned(), 210)],
            saved_usd: Some(2.625),
            tags: vec!["team-a".to_owned(), "50%_off".to_owned()],
        }
    );

    type Case = (RequestsQuery, Box<dyn Fn(&RequestEvent) -> bool>);
    let base = RequestsQuery {
        limit: 3,
        ..RequestsQuery::default()
    };
    let cases: Vec<Case> = vec![
        (
            RequestsQuery {
                status: Some(429),
                ..base.clone()
            },
            Box::new(|e| e.status == 429),
        ),
        (
            RequestsQuery {
                status_class: Some((500, 599)),
                ..base.clone()
            },
            Box::new(|e| e.status >= 500),
        ),
        (
            RequestsQuery {
                error: Some(true),
                ..base.clone()
            },
            Box::new(|e| e.error_class.is_some()),
        ),
        (
            RequestsQuery {
                error: Some(false),
                ..base.clone()
            },
            Box::new(|e| e.error_class.is_none()),
        ),
        (
            RequestsQuery {
                provider: Some("p2".to_owned()),
                ..base.clone()
            },
            Box::new(|e| e.provider.as_deref() == Some("p2")),
        ),
        (
            RequestsQuery {
                route: Some("chat".to_owned()),
                ..base.clone()
            },
            Box::new(|e| e.route.as_deref() == Some("chat")),
        ),
        (
            RequestsQuery {
                model: Some("m1".to_owned()),
                ..base.clone()
            },
            Box::new(|_| true),
        ),
        (
            RequestsQuery {
                model: Some("nope".to_owned()),
                ..base.clone()
            },
            Box::new(|_| false),
        ),
        (
            RequestsQuery {
                key: Some("k3".to_owned()),
                ..base.clone()
            },
            Box::new(|e| e.principal == "k3"),
        ),
        (
            RequestsQuery {
                min_latency_us: Some(150_000),
                ..base.clone()
            },
            Box::new(|e| e.latency_us >= 150_000),
        ),
        (
            RequestsQuery {
                tag: Some("50%_off".to_owned()),
                ..base.clone()
            },
            Box::new(|e| e.tags.iter().any(|t| t == "50%_off")),
        ),
        (
            RequestsQuery {
                tag: Some("50%".to_owned()),
                ..base.clone()
            },
            Box::new(|_| false),
        ),
        (
            RequestsQuery {
                tag: Some("team".to_owned()),
                ..base.clone()
            },
            Box::new(|_| false),
        ),
        (
            RequestsQuery {
                tag: Some("TEAM-A".to_owned()),
                ..base.clone()
            },
            Box::new(|_| false),
        ),
        (
            RequestsQuery {
                from_ms: Some(T0 + 3_000),
                to_ms: Some(T0 + 9_000),
                ..base.clone()
            },
            Box::new(|e| e.time_unix_ms >= T0 + 3_000 && e.time_unix_ms < T0 + 9_000),
        ),
        (
            RequestsQuery {
                provider: Some("p1".to_owned()),
                error: Some(false),
                from_ms: Some(T0 + 2_000),
                limit: 2,
                ..RequestsQuery::default()
            },
            Box::new(|e| {
                e.provider.as_deref() == Some("p1")
                    && e.error_class.is_none()
                    && e.time_unix_ms >= T0 + 2_000
            }),
        ),
    ];
    for (query, keep) in cases {
        let expected = expect(&*keep);
        let (ids, sizes) = all_pages(&store, query.clone()).await;
        assert_eq!(ids, expected, "{query:?}");
        let limit = query.limit as usize;
        assert_eq!(
            sizes.len(),
            expected.len().div_ceil(limit).max(1),
            "{query:?}"
        );
    }
    drop(store);
    db.finish().await;
}

#[tokio::test]
async fn prune_removes_old_rollups_and_old_log_entries() {
    let db = Db::new("switchyard_test_prune_age").await;
    let store = db.store().await;
    let now = T0 + 10 * 86_400_000 + 123_456;
    let minute_horizon = rollup_horizon(Tier::Minute, now);
    let hour_horizon = rollup_horizon(Tier::Hour, now);
    let rows = vec![
        // Gone: one window before each horizon, in both cubes.
        row(Tier::Minute, minute_horizon - 60_000, false, 1, false),
        row(Tier::Minute, minute_horizon - 60_000, true, 1, false),
        row(Tier::Hour, hour_horizon - 3_600_000, false, 1, false),
        // Kept: at the horizon and after.
        row(Tier::Minute, minute_horizon, false, 2, false),
        row(Tier::Minute, Tier::Minute.bucket(now), true, 3, false),
        row(Tier::Hour, hour_horizon, false, 4, false),
    ];
    let requests = vec![
        event(0, now - 7_200_000, 10),
        event(1, now - 3_600_001, 10),
        event(2, now - 3_600_000, 10),
        event(3, now - 60_000, 10),
    ];
    store
        .write(
            "a",
            &Batch {
                rollups: rows,
                requests,
            },
        )
        .await
        .unwrap();
    let retention = Retention {
        request_log_max_age_ms: 3_600_000,
        request_log_max_bytes: u64::MAX,
    };
    let pruned = store.prune(now, retention).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            rollups: 3,
            requests_by_age: 2,
            requests_by_size: 0,
        }
    );
    let minute = store
        .cells_at(Tier::Minute, Cube::Keyless, 0, now, &Filter::default())
        .await
        .unwrap();
    assert_eq!(minute.len(), 1);
    assert_eq!(minute[0].bucket_ms, minute_horizon);
    let keyed = store
        .cells_at(Tier::Minute, Cube::Keyed, 0, now, &Filter::default())
        .await
        .unwrap();
    assert_eq!(total_requests(&keyed), 3);
    let hour = store
        .cells_at(Tier::Hour, Cube::Keyless, 0, now, &Filter::default())
        .await
        .unwrap();
    assert_eq!(total_requests(&hour), 4);
    let (ids, _) = all_pages(
        &store,
        RequestsQuery {
            limit: 10,
            ..RequestsQuery::default()
        },
    )
    .await;
    assert_eq!(ids, ["req_003", "req_002"]);
    // Nothing more to do.
    assert_eq!(
        store.prune(now, retention).await.unwrap(),
        Pruned::default()
    );
    drop(store);
    db.finish().await;
}

#[tokio::test]
async fn prune_trims_the_oldest_log_entries_to_ninety_percent_of_the_size_limit() {
    let db = Db::new("switchyard_test_prune_size").await;
    let store = db.store().await;
    let events: Vec<RequestEvent> = (0..200u64).map(|i| event(i, T0 + i, 10)).collect();
    store
        .write(
            "a",
            &Batch {
                rollups: vec![],
                requests: events,
            },
        )
        .await
        .unwrap();
    let used = store.request_log_bytes().await.unwrap();
    // Rows of this shape are some 200 bytes as stored.
    assert!(used > 200 * 100 && used < 200 * 1_000, "{used}");
    let limit = used / 2;
    let retention = Retention {
        request_log_max_age_ms: u64::MAX,
        request_log_max_bytes: limit,
    };
    let pruned = store.prune(T0 + 1_000, retention).await.unwrap();
    // Down to 90% of the limit: 45% of the rows are kept (all rows are the same size).
    let target = limit / 10 * 9;
    let share = (used - target) as f64 / used as f64;
    let expected = (200.0 * share).ceil() as u64;
    assert_eq!(
        pruned,
        Pruned {
            rollups: 0,
            requests_by_age: 0,
            requests_by_size: expected,
        }
    );
    assert!((105..=115).contains(&expected), "{expected}");
    let after = store.request_log_bytes().await.unwrap();
    assert!(after <= target, "{after} > {target}");
    // The oldest went.
    let (ids, _) = all_pages(
        &store,
        RequestsQuery {
            limit: 1000,
            ..RequestsQuery::default()
        },
    )
    .await;
    let kept: Vec<String> = (expected..200)
        .rev()
        .map(|i| format!("req_{i:03}"))
        .collect();
    assert_eq!(ids, kept);
    // Under the limit now: nothing more goes.
    assert_eq!(
        store.prune(T0 + 1_000, retention).await.unwrap(),
        Pruned::default()
    );
    drop(store);
    db.finish().await;
}

#[tokio::test]
async fn prune_by_size_measures_again_when_newer_rows_are_larger() {
    let db = Db::new("switchyard_test_prune_size_mixed").await;
    let store = db.store().await;
    // Small old rows, then rows with many stages: deleting the oldest raises the average.
    let stages: Vec<(&'static str, u64)> = vec![("stage", 123_456); 40];
    let events: Vec<RequestEvent> = (0..200u64)
        .map(|i| {
            let mut e = event(i, T0 + i, 10);
            if i >= 100 {
                e.stages.clone_from(&stages);
            }
            e
        })
        .collect();
    store
        .write(
            "a",
            &Batch {
                rollups: vec![],
                requests: events,
            },
        )
        .await
        .unwrap();
    let used = store.request_log_bytes().await.unwrap();
    let retention = Retention {
        request_log_max_age_ms: u64::MAX,
        request_log_max_bytes: used / 2,
    };
    let pruned = store.prune(T0 + 1_000, retention).await.unwrap();
    let target = used / 2 / 10 * 9;
    let after = store.request_log_bytes().await.unwrap();
    assert!(after <= target, "{after} > {target}");
    // All the small rows went, and some large ones: the oldest first.
    assert!(pruned.requests_by_size > 100, "{pruned:?}");
    let (ids, _) = all_pages(
        &store,
        RequestsQuery {
            limit: 1000,
            ..RequestsQuery::default()
        },
    )
    .await;
    let kept: Vec<String> = (pruned.requests_by_size..200)
        .rev()
        .map(|i| format!("req_{i:03}"))
        .collect();
    assert_eq!(ids, kept);
    drop(store);
    db.finish().await;
}

#[tokio::test]
async fn a_dropped_connection_is_reopened_on_the_next_call() {
    let db = Db::new("switchyard_test_reconnect").await;
    let store = db.store().await;
    store
        .write("a", &rollups(vec![row(Tier::Minute, T0, false, 1, false)]))
        .await
        .unwrap();
    // As a Postgres restart would: end the store's sessions (waiting until they are gone).
    let terminated: i64 = db
        .admin
        .query_one(
            "WITH mine AS MATERIALIZED \
             (SELECT pid FROM pg_stat_activity WHERE application_name = $1) \
             SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM mine",
            &[&db.schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(terminated, 2, "the writer and the reader");
    // A call may still meet the old connection before its end is noticed; the next one
    // connects again.
    let filter = Filter::default();
    if let Err(error) = store
        .cells_at(Tier::Minute, Cube::Keyless, T0, T0 + 60_000, &filter)
        .await
    {
        eprintln!("the first read after the drop failed: {error}");
    }
    let cells = store
        .cells_at(Tier::Minute, Cube::Keyless, T0, T0 + 60_000, &filter)
        .await
        .unwrap();
    assert_eq!(total_requests(&cells), 1);
    let batch = rollups(vec![row(Tier::Minute, T0, false, 2, false)]);
    if let Err(error) = store.write("a", &batch).await {
        eprintln!("the first write after the drop failed: {error}");
    }
    store.write("a", &batch).await.unwrap();
    let cells = store
        .cells_at(Tier::Minute, Cube::Keyless, T0, T0 + 60_000, &filter)
        .await
        .unwrap();
    assert_eq!(total_requests(&cells), 2);
    // New sessions replaced the ended ones.
    let sessions: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&db.schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sessions, 2);
    drop(store);
    db.finish().await;
}

#[tokio::test]
async fn errors_never_show_the_password() {
    // Nothing listens on port 1.
    let error = PostgresStore::connect("postgres://switchyard:hunter2-secret@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert_eq!(error.store, "postgres");
    assert!(error.message.contains("connecting"), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    let error = PostgresStore::connect("postgres://switchyard:hunter2-secret@127.0.0.1:port/test")
        .await
        .unwrap_err();
    assert!(error.message.contains("invalid postgres_url"), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(!format!("{error:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_table_from_before_the_by_key_cube_is_migrated() {
    let db = Db::new("switchyard_test_by_key_migration").await;
    let store = Arc::new(db.store().await);
    let mut aggregator = Aggregator::new();
    for i in 0..40u64 {
        let mut e = event(i, T0 + 1_000 + i * 2_000, i + 1);
        e.ttft_us = Some(i * 300);
        if i % 7 == 0 {
            e = failed(e, 502, "upstream_error");
        }
        aggregator.observe(&e);
    }
    let rows = aggregator.take_flush(T0 + 3 * 60_000, DEFAULT_GRACE_MS);
    for instance in ["a", "b"] {
        store.write(instance, &rollups(rows.clone())).await.unwrap();
    }
    let queries = [
        query(vec![Dim::Key], Filter::default()),
        query(
            vec![],
            Filter {
                equals: vec![(Dim::Key, "k1".to_owned())],
            },
        ),
    ];
    let queries = &queries;
    let answers = |store: Arc<PostgresStore>| async move {
        let mut out = Vec::new();
        for q in queries {
            assert_eq!(q.cube(), Cube::ByKey);
            let cells = store
                .cells_at(Tier::Minute, q.cube(), q.from_ms, q.to_ms, &q.filter)
                .await
                .unwrap();
            out.push(
                serde_json::to_value(answer(
                    q,
                    cells.iter().map(|c| (c.bucket_ms, &c.dims, &c.rollup)),
                ))
                .unwrap(),
            );
        }
        out
    };
    let expected = answers(Arc::clone(&store)).await;
    assert_eq!(expected[0]["totals"]["requests"], 80);
    drop(store);
    // Back to schema version 1: `keyed BOOLEAN`, no by-key cells.
    db.admin
        .batch_execute(&format!(
            "SET search_path TO {0}; \
             DELETE FROM switchyard_rollups WHERE cube = 2; \
             ALTER TABLE switchyard_rollups ALTER COLUMN cube TYPE BOOLEAN USING cube <> 0; \
             ALTER TABLE switchyard_rollups RENAME COLUMN cube TO keyed; \
             DELETE FROM switchyard_schema_migrations WHERE version = 2; \
             RESET search_path;",
            db.schema
        ))
        .await
        .unwrap();
    let store = Arc::new(db.store().await);
    assert_eq!(answers(Arc::clone(&store)).await, expected);
    let by_key: i64 = db
        .admin
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.switchyard_rollups WHERE cube = 2",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // What the aggregator wrote for each of the two instances.
    let written = rows.iter().filter(|r| r.cube == Cube::ByKey).count();
    assert_eq!(written, 2 * (2 + 1), "two keys, two minutes and one hour");
    assert_eq!(by_key, 2 * written as i64);
    let store = Arc::into_inner(store).unwrap();
    drop(store);
    db.finish().await;
}

/// Writes a small ledger and reads the budget forecasts' series from `store`: per member and
/// quarter hour from the detail start, one folded row before it, nothing outside the range.
async fn spend_series_on(store: &Store) {
    use switchyard::analytics::spend::{BUCKET_MS, SpendColumn, SpendKey, SpendPoint, SpendTotals};
    let cell = |bucket: u64, key: &str, team: &str, route: &str, nanos: i64| {
        (
            SpendKey {
                bucket_ms: T0 + bucket * BUCKET_MS,
                key: key.to_owned(),
                team: team.to_owned(),
                route: route.to_owned(),
                model: "m".to_owned(),
                provider: "p".to_owned(),
            },
            SpendTotals {
                cost_nanos: nanos,
                requests: 1,
                ..SpendTotals::default()
            },
        )
    };
    store
        .write_spend(vec![
            cell(0, "a", "red", "r1", 1), // before the range
            cell(1, "a", "red", "r1", 10),
            cell(2, "a", "red", "r2", 20),
            cell(2, "b", "red", "r1", 40),
            cell(3, "b", "", "r1", 80),
            cell(4, "a", "red", "r1", 100),
            cell(4, "a", "red", "r2", 200),
            cell(5, "b", "blue", "r1", 400),
            cell(6, "a", "red", "r1", 800), // past the range
        ])
        .await
        .unwrap();
    let point = |member: &str, bucket: u64, cost_nanos: i64| SpendPoint {
        member: member.to_owned(),
        bucket_ms: T0 + bucket * BUCKET_MS,
        cost_nanos,
    };
    let (from, detail, to) = (T0 + BUCKET_MS, T0 + 3 * BUCKET_MS, T0 + 6 * BUCKET_MS);
    // By team: buckets 1 and 2 fold into one row at the range's start.
    let by_team = store
        .spend_series(Some(SpendColumn::Team), from, detail, to)
        .await
        .unwrap();
    assert_eq!(
        by_team,
        vec![
            point("", 3, 80),
            point("blue", 5, 400),
            point("red", 1, 70),
            point("red", 4, 300),
        ]
    );
    let by_key = store
        .spend_series(Some(SpendColumn::Key), from, detail, to)
        .await
        .unwrap();
    assert_eq!(
        by_key,
        vec![
            point("a", 1, 30),
            point("a", 4, 300),
            point("b", 1, 40),
            point("b", 3, 80),
            point("b", 5, 400),
        ]
    );
    // Everything (global), all in detail.
    let all = store.spend_series(None, from, from, to).await.unwrap();
    assert_eq!(
        all,
        vec![
            point("", 1, 10),
            point("", 2, 60),
            point("", 3, 80),
            point("", 4, 300),
            point("", 5, 400),
        ]
    );
    assert!(
        store
            .spend_series(Some(SpendColumn::Route), to, to, to + BUCKET_MS)
            .await
            .unwrap()
            .iter()
            .all(|point| point.bucket_ms == to),
        "only the range asked"
    );
}

#[tokio::test]
async fn the_spend_series_of_a_budget_forecast_in_sqlite_and_postgres() {
    let sqlite = Store::Sqlite(Arc::new(
        switchyard::analytics::sqlite::SqliteStore::open(None).unwrap(),
    ));
    spend_series_on(&sqlite).await;
    let db = Db::new("switchyard_test_spend_series").await;
    let postgres = Store::Postgres(Arc::new(db.store().await));
    spend_series_on(&postgres).await;
    drop(postgres);
    db.finish().await;
}

mod query_cache {
    //! The query cache of one instance sees what another instance sharing the store writes
    //! into the hours it holds, and answers exactly what the store answers without it.

    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use serde_json::Value;
    use switchyard::analytics::hours::{DEFAULT_MAX_BYTES, HourCache};
    use switchyard::analytics::store::{Batch, Store};
    use switchyard_core::analytics::query::{Dim, Filter, Metric, Query};
    use switchyard_core::analytics::rollup::ANY_KEY;
    use switchyard_core::analytics::{Cube, Dims, Rollup, RollupRow, Tier};

    use super::{Db, StoreDb};

    const HOUR: u64 = 3_600_000;
    const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR;
    /// 20 minutes into the hour after `T0 + 4 h`.
    const NOW: u64 = T0 + 4 * HOUR + 20 * 60_000;

    /// The rows one instance writes for an hour: keyed cells, and the keyless and by-key
    /// cells summed from them.
    fn hour_rows(bucket: u64, seed: u64, merge: bool) -> Arc<Batch> {
        let any: Arc<str> = Arc::from(ANY_KEY);
        let mut rows = Vec::new();
        let mut derived: std::collections::BTreeMap<(Cube, Dims), Rollup> = Default::default();
        for (p, provider) in ["alpha", "beta"].into_iter().enumerate() {
            for (k, key) in ["k1", "k2"].into_iter().enumerate() {
                let n = 1 + (seed + p as u64 * 3 + k as u64) % 7;
                let mut rollup = Rollup {
                    requests: n,
                    errors: n / 3,
                    tokens_in: n * 10,
                    cost_usd: n as f64 / 512.0,
                    ..Rollup::default()
                };
                for i in 0..n {
                    let latency = 1_000 * (1 + (seed * 11 + i * 17) % 300);
                    rollup.latency.add(latency);
                    rollup.latency_sum_us += latency;
                    rollup.ttft.add(latency / 2);
                }
                let keyed = Dims {
                    route: "chat".into(),
                    provider: provider.into(),
                    model: "m".into(),
                    key: key.into(),
                    status_class: "2xx".into(),
                };
                for cube in [Cube::Keyless, Cube::ByKey] {
                    derived
                        .entry((cube, cube.dims_of(&keyed, &any)))
                        .or_default()
                        .merge(&rollup);
                }
                rows.push((Cube::Keyed, keyed, rollup));
            }
        }
        rows.extend(derived.into_iter().map(|((cube, dims), r)| (cube, dims, r)));
        Arc::new(Batch {
            rollups: rows
                .into_iter()
                .map(|(cube, dims, rollup)| RollupRow {
                    tier: Tier::Hour,
                    bucket_ms: bucket,
                    cube,
                    dims,
                    rollup,
                    merge,
                })
                .collect(),
            requests: vec![],
        })
    }

    fn queries() -> Vec<Query> {
        let query = |group_by: Vec<Dim>, filter: Vec<(Dim, &str)>| Query {
            from_ms: T0,
            to_ms: NOW,
            interval_ms: HOUR,
            tier: Tier::Hour,
            group_by,
            metrics: vec![
                Metric::Requests,
                Metric::Errors,
                Metric::LatencyQuantile(50),
                Metric::LatencyQuantile(99),
                Metric::TtftQuantile(95),
                Metric::Cost,
            ],
            filter: Filter {
                equals: filter.into_iter().map(|(d, v)| (d, v.to_owned())).collect(),
            },
        };
        vec![
            query(vec![Dim::Provider, Dim::Model], vec![]),
            query(vec![], vec![(Dim::Provider, "beta")]),
            query(vec![Dim::Key], vec![]),
        ]
    }

    /// Every query through `cache` and without it: the same JSON (costs are multiples of
    /// 1/512, so sums are exact in any order). Returns the total requests of each.
    async fn compare(store: &Store, cache: &Arc<HourCache>, label: &str) -> Vec<u64> {
        let mut totals = Vec::new();
        for query in queries() {
            let cached = store
                .answer_cached(cache, query.clone(), NOW)
                .await
                .unwrap();
            let uncached = store.answer(query).await.unwrap();
            let cached: Value = serde_json::to_value(&cached).unwrap();
            assert_eq!(cached, serde_json::to_value(&uncached).unwrap(), "{label}");
            totals.push(cached["totals"]["requests"].as_u64().unwrap());
        }
        totals
    }

    #[tokio::test]
    async fn a_cache_sees_another_instances_writes_and_restarts_clean() {
        let db = Db::new("switchyard_test_query_cache").await;
        let a = Store::Postgres(Arc::new(db.store().await));
        let b = Store::Postgres(Arc::new(db.store().await));
        for h in 0..=4 {
            a.write("a", hour_rows(T0 + h * HOUR, h, false))
                .await
                .unwrap();
        }
        let (cache_a, cache_b) = (
            Arc::new(HourCache::new(DEFAULT_MAX_BYTES)),
            Arc::new(HourCache::new(DEFAULT_MAX_BYTES)),
        );
        let cold = compare(&a, &cache_a, "cold").await;
        assert_eq!(cache_a.len(), 8, "four closed hours of two cubes");
        assert_eq!(compare(&a, &cache_a, "warm").await, cold);
        assert!(cache_a.stats.hits.load(Ordering::Relaxed) >= 12);
        assert_eq!(compare(&b, &cache_b, "b cold").await, cold);

        // Instance b: its own rows in a closed hour (a write retried after an outage), and
        // a very late event into another (a merge row).
        b.write("b", hour_rows(T0 + HOUR, 20, false)).await.unwrap();
        b.write("b", hour_rows(T0 + 3 * HOUR, 21, true))
            .await
            .unwrap();
        let shared = compare(&a, &cache_a, "after b wrote").await;
        assert_ne!(shared, cold, "b's writes count on a");
        assert_eq!(compare(&b, &cache_b, "b after its writes").await, shared);

        // Instance a merges into an hour b has cached.
        a.write("a", hour_rows(T0 + 2 * HOUR, 22, true))
            .await
            .unwrap();
        let merged = compare(&b, &cache_b, "b after a merged").await;
        assert_ne!(merged, shared);
        assert_eq!(compare(&a, &cache_a, "a after it merged").await, merged);

        // A restart of a: a new connection and an empty cache.
        drop(a);
        let a = Store::Postgres(Arc::new(db.store().await));
        let cache_a = Arc::new(HourCache::new(DEFAULT_MAX_BYTES));
        assert_eq!(compare(&a, &cache_a, "restarted").await, merged);
        drop((a, b));
        db.finish().await;
    }
}

#[tokio::test]
async fn connections_carry_a_statement_timeout_beside_the_urls_options() {
    let db = Db::new("sy_statement_timeout").await;
    let (config, _) =
        switchyard::postgres::connection_config(&db.url, std::time::Duration::from_secs(3))
            .unwrap();
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let shown = |row: tokio_postgres::Row| row.get::<_, String>(0);
    let timeout = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap();
    assert_eq!(shown(timeout), "1min");
    // The URL's own options (the test schema's search path) still apply.
    let path = client.query_one("SHOW search_path", &[]).await.unwrap();
    assert!(shown(path).contains("sy_statement_timeout"));
    drop(client);
    db.finish().await;
}
