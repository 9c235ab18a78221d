//! The analytics pipeline end to end: requests through a real gateway reach the rollups and
//! the request log, the query API answers from them, a graceful shutdown flushes everything,
//! and a restarted gateway still has it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TestGateway, client, post_json};
use serde_json::{Value, json};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

const MASTER: &str = "sk-master-analytics";

async fn mock(name: &str) -> MockHandle {
    MockProvider::builder().name(name).spawn().await.unwrap()
}

fn config(mocks: &[&MockHandle]) -> String {
    let mut text = String::new();
    for mock in mocks {
        text.push_str(&format!(
            "[[providers]]\nname = \"{}\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"{}-*\"]\n",
            mock.name(),
            mock.base_url(),
            mock.name()
        ));
    }
    text
}

async fn chat(gateway: &TestGateway, model: &str) -> u16 {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "one two three"}]});
    let (status, _, _) = post_json(
        &gateway.url("/v1/chat/completions"),
        &body,
        &[("authorization", &format!("Bearer {MASTER}"))],
    )
    .await;
    status
}

async fn get(gateway: &TestGateway, path: &str) -> (u16, Value) {
    let response = client()
        .get(gateway.url(path))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls the query until its total request count reaches `count` (bounded), and returns it.
async fn until_requests(gateway: &TestGateway, path: &str, count: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(gateway, path).await;
        assert_eq!(status, 200, "{body}");
        if body["totals"]["requests"].as_u64() >= Some(count) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} requests from {path}, got {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_reach_the_rollups_and_the_request_log() {
    let alpha = mock("alpha").await;
    let beta = mock("beta").await;
    alpha.set_behavior(Behavior::status(500));
    let gateway = TestGateway::start(
        &config(&[&alpha, &beta]),
        &[("SWITCHYARD_MASTER_KEY", MASTER)],
    )
    .await;
    // beta serves 3; alpha fails 2 (500 from the provider: no other target serves alpha-*).
    for _ in 0..3 {
        assert_eq!(chat(&gateway, "beta-small").await, 200);
    }
    for _ in 0..2 {
        assert_ne!(chat(&gateway, "alpha-small").await, 200);
    }

    // The stored minute tier, grouped by provider.
    let body = until_requests(
        &gateway,
        "/admin/analytics?from=-10m&interval=1m&group_by=provider&metrics=requests,errors,error_rate,tokens_in,tokens_out,p50,p99",
        5,
    )
    .await;
    assert_eq!(body["resolution"], "1m");
    assert_eq!(body["totals"]["requests"], 5);
    assert_eq!(body["totals"]["errors"], 2);
    let series = body["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["group"]["provider"], "beta", "largest first");
    assert_eq!(series[0]["totals"]["requests"], 3);
    assert_eq!(series[0]["totals"]["errors"], 0);
    assert!(series[0]["totals"]["tokens_in"].as_u64().unwrap() > 0);
    assert!(series[0]["totals"]["p50"].as_f64().unwrap() > 0.0);
    assert_eq!(series[1]["totals"]["error_rate"], 1.0);
    // Ten minutes back, aligned down to the minute: 10 points, or 11 when not on the minute.
    let points = body["t"].as_array().unwrap().len();
    assert_eq!(
        series[0]["values"]["requests"].as_array().unwrap().len(),
        points
    );
    assert!(points == 10 || points == 11, "{points}");

    // The live 1 s tier from memory agrees.
    let live = until_requests(
        &gateway,
        "/admin/analytics?from=-2m&interval=1s&metrics=requests",
        5,
    )
    .await;
    assert_eq!(live["resolution"], "1s");
    assert_eq!(live["totals"]["requests"], 5);

    // The keyed cube: everything was sent with the master key.
    let (_, by_key) = get(
        &gateway,
        "/admin/analytics?from=-10m&interval=1m&group_by=key,status_class&metrics=requests",
    )
    .await;
    let groups: Vec<(String, String, u64)> = by_key["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["group"]["key"].as_str().unwrap().to_owned(),
                s["group"]["status_class"].as_str().unwrap().to_owned(),
                s["totals"]["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("master".into(), "2xx".into(), 3),
            ("master".into(), "5xx".into(), 2)
        ]
    );

    // The raw log, paged two at a time, newest first, with filters.
    let (status, page) = get(&gateway, "/admin/requests?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let mut seen = page["data"].as_array().unwrap().clone();
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(before) = cursor {
        let (_, next) = get(
            &gateway,
            &format!("/admin/requests?limit=2&before={before}"),
        )
        .await;
        seen.extend(next["data"].as_array().unwrap().iter().cloned());
        cursor = next["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 5, "every request once: {seen:?}");
    let times: Vec<u64> = seen
        .iter()
        .map(|r| r["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let first = &seen[0];
    assert!(first["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(first["key"], "master");
    assert!(first["stages"].as_array().is_some_and(|s| !s.is_empty()));
    let (_, failed) = get(&gateway, "/admin/requests?status=5xx&provider=alpha").await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 2);
    assert!(failed["next_cursor"].is_null());
    let (_, none) = get(&gateway, "/admin/requests?min_latency_ms=60000").await;
    assert_eq!(none["data"].as_array().unwrap().len(), 0);

    let (_, status) = get(&gateway, "/admin/analytics/status").await;
    assert_eq!(status["store"], "sqlite");
    assert!(status["flushes"].as_u64().unwrap() >= 1);
    assert_eq!(status["lost"], 0);
    gateway.stop().await;
}

#[tokio::test]
async fn bad_queries_get_openai_shaped_errors_naming_the_parameter() {
    let beta = mock("beta").await;
    let gateway = TestGateway::start(&config(&[&beta]), &[("SWITCHYARD_MASTER_KEY", MASTER)]).await;
    for (path, param) in [
        ("/admin/analytics?group_by=colour", "group_by"),
        ("/admin/analytics?metrics=p42", "metrics"),
        ("/admin/analytics?from=-3d&interval=1m", "interval"),
        ("/admin/analytics?from=yesterday", "from"),
        ("/admin/requests?limit=0", "limit"),
        ("/admin/requests?status=7xx", "status"),
        ("/admin/requests?before=nonsense", "before"),
        ("/admin/requests?colour=red", "colour"),
    ] {
        let (status, body) = get(&gateway, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{path}");
        assert_eq!(body["error"]["param"], param, "{path}: {body}");
    }
    // The admin key is required.
    let response = client()
        .get(gateway.url("/admin/analytics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    gateway.stop().await;
}

#[tokio::test]
async fn a_graceful_shutdown_flushes_and_a_restart_keeps_everything() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let beta = mock("beta").await;
    let env = [
        ("SWITCHYARD_MASTER_KEY", MASTER),
        ("SWITCHYARD_DATA_DIR", dir.as_str()),
    ];
    // A long flush interval: only the shutdown flush can have written these.
    let text = format!(
        "[analytics]\nflush_interval = \"60s\"\n{}",
        config(&[&beta])
    );
    let gateway = TestGateway::start(&text, &env).await;
    for _ in 0..4 {
        assert_eq!(chat(&gateway, "beta-small").await, 200);
    }
    gateway.stop().await;
    assert!(data.path().join("analytics.db").is_file());
    assert!(data.path().join("requests.db").is_file());

    let restarted = TestGateway::start(&text, &env).await;
    let (status, body) = get(
        &restarted,
        "/admin/analytics?from=-1h&interval=1m&metrics=requests,tokens_out",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["totals"]["requests"], 4, "{body}");
    let (_, hourly) = get(
        &restarted,
        "/admin/analytics?from=-1h&interval=1h&metrics=requests",
    )
    .await;
    assert_eq!(hourly["resolution"], "1h");
    assert_eq!(hourly["totals"]["requests"], 4, "{hourly}");
    let (_, log) = get(&restarted, "/admin/requests").await;
    assert_eq!(log["data"].as_array().unwrap().len(), 4);
    // New traffic adds to it (a new instance id: its rows sit beside the old ones).
    assert_eq!(chat(&restarted, "beta-small").await, 200);
    restarted.stop().await;
    let again = TestGateway::start(&text, &env).await;
    let (_, body) = get(
        &again,
        "/admin/analytics?from=-1h&interval=1m&metrics=requests",
    )
    .await;
    assert_eq!(body["totals"]["requests"], 5, "{body}");
    again.stop().await;
}

/// Two gateways sharing one Postgres: each writes its own rows, and either one's query
/// answers for both.
#[tokio::test]
async fn instances_sharing_postgres_answer_for_each_other() {
    let db = common::TestDb::new("sy_gateway_e2e").await;
    let url = db.url.clone();

    let beta = mock("beta").await;
    let text = config(&[&beta]);
    let env = [
        ("SWITCHYARD_MASTER_KEY", MASTER),
        ("SWITCHYARD_POSTGRES_URL", url.as_str()),
    ];
    let one = TestGateway::start(&text, &env).await;
    let two = TestGateway::start(&text, &env).await;
    for _ in 0..3 {
        assert_eq!(chat(&one, "beta-small").await, 200);
    }
    for _ in 0..2 {
        assert_eq!(chat(&two, "beta-small").await, 200);
    }
    let path = "/admin/analytics?from=-10m&interval=1m&metrics=requests,p50";
    let from_two = until_requests(&two, path, 5).await;
    assert_eq!(from_two["totals"]["requests"], 5, "{from_two}");
    let from_one = until_requests(&one, path, 5).await;
    assert_eq!(from_one["totals"], from_two["totals"]);
    let (_, status) = get(&one, "/admin/analytics/status").await;
    assert_eq!(status["store"], "postgres");
    // Both instances' log entries, from either.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, log) = get(&two, "/admin/requests").await;
        let instances: std::collections::HashSet<String> = log["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["instance"].as_str().unwrap().to_owned())
            .collect();
        if log["data"].as_array().unwrap().len() == 5 {
            assert_eq!(instances.len(), 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one.stop().await;
    two.stop().await;
    db.finish().await;
}

mod query_cache {
    //! The query cache answers exactly what the store answers without it: on a cold cache,
    //! from memory, after late and retried writes into cached hours, after a restart, and
    //! over a file written before window versions existed.

    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use serde_json::Value;
    use switchyard::analytics::hours::{DEFAULT_MAX_BYTES, HourCache};
    use switchyard::analytics::sqlite::SqliteStore;
    use switchyard::analytics::store::{Batch, Store};
    use switchyard_core::analytics::query::{Dim, Filter, Metric, Query};
    use switchyard_core::analytics::rollup::ANY_KEY;
    use switchyard_core::analytics::{Cube, Dims, Rollup, RollupRow, Tier};

    pub const HOUR: u64 = 3_600_000;
    /// An hour boundary; "now" in these tests is 20 minutes into the hour after `T0 + 6 h`.
    pub const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR;
    pub const NOW: u64 = T0 + 6 * HOUR + 20 * 60_000;

    fn dims(provider: &str, key: &str, status: &str) -> Dims {
        Dims {
            route: "chat".into(),
            provider: provider.into(),
            model: format!("{provider}-model").into(),
            key: key.into(),
            status_class: status.into(),
        }
    }

    fn cell(seed: u64, requests: u64) -> Rollup {
        let mut rollup = Rollup {
            requests,
            errors: requests / 7,
            tokens_in: requests * 11,
            tokens_out: requests * 5,
            // Multiples of 1/1024: sums are exact in any order.
            cost_usd: requests as f64 / 1024.0,
            cache_hits: requests / 3,
            ..Rollup::default()
        };
        for i in 0..requests {
            let latency = 1_000 * (1 + (seed * 7 + i * 13) % 400);
            rollup.latency.add(latency);
            rollup.latency_sum_us += latency;
            if i % 2 == 0 {
                rollup.ttft.add(latency / 3);
            }
        }
        rollup
    }

    /// The rows one instance writes for hour `bucket`: keyed cells and the keyless and
    /// by-key cells summed from them.
    pub fn hour_rows(bucket: u64, seed: u64, merge: bool) -> Vec<RollupRow> {
        let mut rows = Vec::new();
        let any: Arc<str> = Arc::from(ANY_KEY);
        let mut derived: std::collections::BTreeMap<(Cube, Dims), Rollup> = Default::default();
        for (p, provider) in ["alpha", "beta"].into_iter().enumerate() {
            for (k, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
                for (s, status) in ["2xx", "5xx"].into_iter().enumerate() {
                    let n = 1 + (seed + p as u64 * 5 + k as u64 * 3 + s as u64) % 9;
                    let keyed = dims(provider, key, status);
                    let rollup = cell(seed + bucket / HOUR + n, n);
                    for cube in [Cube::Keyless, Cube::ByKey] {
                        derived
                            .entry((cube, cube.dims_of(&keyed, &any)))
                            .or_default()
                            .merge(&rollup);
                    }
                    rows.push(RollupRow {
                        tier: Tier::Hour,
                        bucket_ms: bucket,
                        cube: Cube::Keyed,
                        dims: keyed,
                        rollup,
                        merge,
                    });
                }
            }
        }
        rows.extend(derived.into_iter().map(|((cube, dims), rollup)| RollupRow {
            tier: Tier::Hour,
            bucket_ms: bucket,
            cube,
            dims,
            rollup,
            merge,
        }));
        rows
    }

    pub fn batch(rows: Vec<RollupRow>) -> Arc<Batch> {
        Arc::new(Batch {
            rollups: rows,
            requests: vec![],
        })
    }

    /// The hourly queries the cache serves (keyless and by-key cubes) and one it leaves to
    /// the store (keyed).
    pub fn queries() -> Vec<Query> {
        let metrics = vec![
            Metric::Requests,
            Metric::Errors,
            Metric::LatencyQuantile(50),
            Metric::LatencyQuantile(99),
            Metric::TtftQuantile(50),
            Metric::TokensIn,
            Metric::Cost,
            Metric::CacheHitRate,
        ];
        let query = |group_by: Vec<Dim>, filter: Vec<(Dim, &str)>, interval_ms: u64| Query {
            from_ms: T0,
            to_ms: NOW,
            interval_ms,
            tier: Tier::Hour,
            group_by,
            metrics: metrics.clone(),
            filter: Filter {
                equals: filter.into_iter().map(|(d, v)| (d, v.to_owned())).collect(),
            },
        };
        vec![
            query(vec![Dim::Provider, Dim::Model], vec![], HOUR),
            query(vec![], vec![], 3 * HOUR),
            query(vec![Dim::StatusClass], vec![(Dim::Provider, "beta")], HOUR),
            query(vec![Dim::Key], vec![], HOUR),
            query(vec![], vec![(Dim::Key, "k2")], 2 * HOUR),
            query(vec![Dim::Key, Dim::Provider], vec![], HOUR),
        ]
    }

    /// Equal JSON, floats to 1e-9 relative (sums may be added in another order).
    pub fn assert_same(cached: &Value, uncached: &Value, path: &str) {
        match (cached, uncached) {
            (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert!(
                    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                    "{path}: {a} vs {b}"
                );
            }
            (Value::Array(a), Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "{path}: lengths");
                for (i, (a, b)) in a.iter().zip(b).enumerate() {
                    assert_same(a, b, &format!("{path}[{i}]"));
                }
            }
            (Value::Object(a), Value::Object(b)) => {
                assert_eq!(
                    a.keys().collect::<Vec<_>>(),
                    b.keys().collect::<Vec<_>>(),
                    "{path}: keys"
                );
                for (key, a) in a {
                    assert_same(a, &b[key], &format!("{path}.{key}"));
                }
            }
            (a, b) => assert_eq!(a, b, "{path}"),
        }
    }

    /// Every query answered through `cache` and without it, compared; returns the
    /// answers' total requests.
    pub async fn compare(store: &Store, cache: &Arc<HourCache>, label: &str) -> Vec<u64> {
        let mut totals = Vec::new();
        for query in queries() {
            let cached = store
                .answer_cached(cache, query.clone(), NOW)
                .await
                .unwrap();
            let uncached = store.answer(query.clone()).await.unwrap();
            let (cached, uncached) = (
                serde_json::to_value(&cached).unwrap(),
                serde_json::to_value(&uncached).unwrap(),
            );
            assert_same(&cached, &uncached, &format!("{label} {query:?}"));
            totals.push(cached["totals"]["requests"].as_u64().unwrap());
        }
        totals
    }

    #[tokio::test]
    async fn cached_answers_equal_the_stores_through_late_writes_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Sqlite(Arc::new(SqliteStore::open(Some(dir.path())).unwrap()));
        // Six closed hours and the open one, written by one instance.
        for h in 0..=6 {
            store
                .write("a", batch(hour_rows(T0 + h * HOUR, h, false)))
                .await
                .unwrap();
        }
        let cache = Arc::new(HourCache::new(DEFAULT_MAX_BYTES));
        let cold = compare(&store, &cache, "cold").await;
        // The keyless and by-key cubes' six closed hours are cached, the open one is not.
        assert_eq!(cache.len(), 12);
        let misses = cache.stats.misses.load(Ordering::Relaxed);
        let warm = compare(&store, &cache, "warm").await;
        assert_eq!(cold, warm);
        assert!(cache.stats.hits.load(Ordering::Relaxed) >= 30);
        assert_eq!(
            cache.stats.misses.load(Ordering::Relaxed) - misses,
            5,
            "only the open hour is read again, once per cached query"
        );

        // A very late event into a cached hour (a merge row), and a write retried after an
        // outage (whole-window rows replacing an instance's cells) into another.
        store
            .write("a", batch(hour_rows(T0 + 2 * HOUR, 40, true)))
            .await
            .unwrap();
        store
            .write("a", batch(hour_rows(T0 + 4 * HOUR, 41, false)))
            .await
            .unwrap();
        let late = compare(&store, &cache, "late").await;
        assert_ne!(late, warm, "the late writes count");

        // A second instance writing to the same file (its rows are added).
        store
            .write("b", batch(hour_rows(T0 + HOUR, 42, false)))
            .await
            .unwrap();
        let second = compare(&store, &cache, "second instance").await;
        assert_ne!(second, late);

        // A restart: the versions are in the file; a new cache fills from it.
        drop(store);
        let store = Store::Sqlite(Arc::new(SqliteStore::open(Some(dir.path())).unwrap()));
        let cache = Arc::new(HourCache::new(DEFAULT_MAX_BYTES));
        assert_eq!(compare(&store, &cache, "restarted").await, second);
        store
            .write("c", batch(hour_rows(T0 + 3 * HOUR, 43, true)))
            .await
            .unwrap();
        let after = compare(&store, &cache, "written after the restart").await;
        assert_ne!(after, second);

        // A file written before window versions: none are stored, the hours are cached at
        // version 0, and the next write into one still shows.
        drop(store);
        let connection = rusqlite::Connection::open(dir.path().join("analytics.db")).unwrap();
        connection
            .execute("DELETE FROM rollup_versions", [])
            .unwrap();
        drop(connection);
        let store = Store::Sqlite(Arc::new(SqliteStore::open(Some(dir.path())).unwrap()));
        let cache = Arc::new(HourCache::new(DEFAULT_MAX_BYTES));
        assert_eq!(compare(&store, &cache, "unversioned").await, after);
        store
            .write("c", batch(hour_rows(T0 + 5 * HOUR, 44, true)))
            .await
            .unwrap();
        assert_ne!(
            compare(&store, &cache, "unversioned, then written").await,
            after
        );
    }

    #[tokio::test]
    async fn a_full_cache_caches_nothing_more_and_still_answers() {
        let store = Store::Sqlite(Arc::new(SqliteStore::open(None).unwrap()));
        for h in 0..=6 {
            store
                .write("a", batch(hour_rows(T0 + h * HOUR, h, false)))
                .await
                .unwrap();
        }
        let cache = Arc::new(HourCache::new(4_096));
        compare(&store, &cache, "small cache").await;
        assert!(cache.heap_bytes() <= 4_096, "{} bytes", cache.heap_bytes());
        assert!(cache.len() < 12);
        compare(&store, &cache, "small cache, again").await;
    }
}
