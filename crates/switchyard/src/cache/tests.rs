use std::time::Duration;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use switchyard_core::cache::{CacheKey, Entry, Plan};
use switchyard_core::config::CacheConfig;
use switchyard_core::wire::TokenUsage;

use super::*;

const T0: u64 = 1_800_000_000_000;

fn cache_with(config: CacheConfig) -> Arc<ResponseCache> {
    let metrics = CacheMetrics::register(&mut Registry::default());
    ResponseCache::new(&config, None, metrics).unwrap()
}

fn cache() -> Arc<ResponseCache> {
    cache_with(CacheConfig {
        lock_timeout: Duration::from_secs(5),
        ..CacheConfig::default()
    })
}

fn key(text: &str) -> CacheKey {
    key_on("route", text)
}

fn key_on(route: &str, text: &str) -> CacheKey {
    CacheKey::new(
        "/v1/chat/completions",
        "key:k",
        route,
        format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}]}}"#).as_bytes(),
    )
    .unwrap()
}

fn plan(ttl_s: u64) -> Plan {
    Plan {
        lookup: true,
        store: true,
        ttl: Duration::from_secs(ttl_s),
        max_age: None,
    }
}

fn answer(size: usize) -> Entry {
    Entry {
        body: Bytes::from(vec![b'x'; size]),
        pieces: vec![],
        usage: TokenUsage {
            input: 3,
            output: 4,
            ..TokenUsage::default()
        },
        provider: "p".into(),
        model: "m".into(),
        route: String::new(),
        scope: String::new(),
        stored_unix_ms: 0,
        expires_unix_ms: 0,
    }
}

async fn lead(cache: &Arc<ResponseCache>, key: &CacheKey, plan: &Plan, now: u64) -> Fill {
    match cache.lookup(key, plan, now).await {
        Lookup::Lead(fill) => fill,
        Lookup::Hit(_) => panic!("expected to lead, got a hit"),
        Lookup::Miss => panic!("expected to lead, got a plain miss"),
    }
}

async fn is_hit(cache: &Arc<ResponseCache>, key: &CacheKey, plan: &Plan, now: u64) -> bool {
    match cache.lookup(key, plan, now).await {
        Lookup::Hit(_) => true,
        Lookup::Lead(_) | Lookup::Miss => false,
    }
}

#[tokio::test]
async fn a_stored_answer_is_served_until_its_ttl_to_the_millisecond() {
    let cache = cache();
    let key = key("hi");
    let plan = plan(10);
    lead(&cache, &key, &plan, T0).await.store(answer(100), T0);
    assert!(is_hit(&cache, &key, &plan, T0 + 9_999).await);
    match cache.lookup(&key, &plan, T0 + 1).await {
        Lookup::Hit(entry) => {
            assert_eq!(entry.route, "route");
            assert_eq!(entry.scope, "key:k");
            assert_eq!(entry.expires_unix_ms, T0 + 10_000);
            assert_eq!(entry.usage.output, 4);
        }
        _ => panic!("expected a hit"),
    }
    // At its expiry it is gone, and the next request leads a new fill.
    let fill = lead(&cache, &key, &plan, T0 + 10_000).await;
    drop(fill);
    assert!(!is_hit(&cache, &key, &plan, T0 + 10_001).await);
}

#[tokio::test]
async fn max_age_refuses_older_answers_without_evicting_them() {
    let cache = cache();
    let key = key("hi");
    lead(&cache, &key, &plan(60), T0)
        .await
        .store(answer(10), T0);
    let strict = Plan {
        max_age: Some(Duration::from_secs(5)),
        ..plan(5)
    };
    assert!(is_hit(&cache, &key, &strict, T0 + 5_000).await);
    let fill = lead(&cache, &key, &strict, T0 + 5_001).await;
    drop(fill);
    assert!(
        is_hit(&cache, &key, &plan(60), T0 + 5_001).await,
        "still there for others"
    );
}

#[tokio::test]
async fn no_store_and_refresh_plans() {
    let cache = cache();
    let key = key("hi");
    let no_store = Plan {
        store: false,
        ..plan(60)
    };
    assert!(matches!(
        cache.lookup(&key, &no_store, T0).await,
        Lookup::Miss
    ));
    lead(&cache, &key, &plan(60), T0)
        .await
        .store(answer(10), T0);
    assert!(
        is_hit(&cache, &key, &no_store, T0 + 1).await,
        "no-store may still read"
    );
    let refresh = Plan {
        lookup: false,
        ..plan(60)
    };
    let fill = lead(&cache, &key, &refresh, T0 + 2).await;
    fill.store(answer(20), T0 + 2);
    match cache.lookup(&key, &plan(60), T0 + 3).await {
        Lookup::Hit(entry) => assert_eq!(entry.body.len(), 20, "the refreshed answer"),
        _ => panic!("expected a hit"),
    }
}

#[tokio::test]
async fn memory_stays_within_its_byte_budget_and_counts_evictions() {
    let cache = cache_with(CacheConfig {
        max_bytes: 64 * 1024,
        max_entry_bytes: 16 * 1024,
        ..CacheConfig::default()
    });
    for i in 0..200 {
        let key = key(&format!("q{i}"));
        lead(&cache, &key, &plan(60), T0)
            .await
            .store(answer(1_000), T0);
    }
    let snapshot = cache.snapshot();
    assert!(snapshot.bytes <= 64 * 1024, "{} bytes", snapshot.bytes);
    assert!(
        snapshot.entries > 10 && snapshot.entries < 200,
        "{}",
        snapshot.entries
    );
    assert!(snapshot.evictions > 0);
    assert_eq!(snapshot.stores, 200);

    // An answer above max_entry_kb is not stored, and its waiters are released.
    let big = key("big");
    lead(&cache, &big, &plan(60), T0)
        .await
        .store(answer(20_000), T0);
    assert_eq!(cache.snapshot().too_large, 1);
    let fill = lead(&cache, &big, &plan(60), T0).await;
    drop(fill);
    assert_eq!(cache.snapshot().in_flight_fills, 0);
}

#[tokio::test]
async fn identical_misses_wait_for_the_leader_and_get_its_answer() {
    let cache = cache();
    let key = key("hot");
    let fill = lead(&cache, &key, &plan(60), T0).await;
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let cache = Arc::clone(&cache);
            let key = key.clone();
            tokio::spawn(async move { is_hit(&cache, &key, &plan(60), T0).await })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(cache.snapshot().in_flight_fills, 1);
    fill.store(answer(10), T0);
    for waiter in waiters {
        assert!(waiter.await.unwrap(), "a waiter got the leader's answer");
    }
    let snapshot = cache.snapshot();
    assert_eq!(snapshot.coalesced, 8);
    assert_eq!(snapshot.in_flight_fills, 0, "no flight leaks");
}

#[tokio::test]
async fn a_failed_leader_releases_its_waiters_at_once() {
    let cache = cache();
    let key = key("hot");
    let fill = lead(&cache, &key, &plan(60), T0).await;
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let (c, k) = (Arc::clone(&cache), key.clone());
            tokio::spawn(async move { matches!(c.lookup(&k, &plan(60), T0).await, Lookup::Miss) })
        })
        .collect();
    tokio::task::yield_now().await;
    // The leader's request failed (or its client left): dropping the fill wakes every
    // waiter, which goes upstream on its own at once, rather than one after another.
    drop(fill);
    for waiter in waiters {
        assert!(waiter.await.unwrap(), "a plain miss");
    }
    assert_eq!(cache.snapshot().in_flight_fills, 0);
    // The next request leads a new fill.
    drop(lead(&cache, &key, &plan(60), T0).await);
}

#[tokio::test]
async fn waiters_get_an_answer_too_large_to_keep() {
    let cache = cache_with(CacheConfig {
        max_entry_bytes: 1_000,
        lock_timeout: Duration::from_secs(5),
        ..CacheConfig::default()
    });
    let key = key("big");
    let fill = lead(&cache, &key, &plan(60), T0).await;
    let (c, k) = (Arc::clone(&cache), key.clone());
    let waiter = tokio::spawn(async move { is_hit(&c, &k, &plan(60), T0).await });
    tokio::task::yield_now().await;
    fill.store(answer(5_000), T0);
    assert!(waiter.await.unwrap(), "served the leader's answer");
    assert_eq!(cache.snapshot().too_large, 1);
    assert_eq!(cache.snapshot().entries, 0, "but not kept");
}

#[tokio::test(start_paused = true)]
async fn waiters_give_up_after_the_lock_timeout() {
    let cache = cache_with(CacheConfig {
        lock_timeout: Duration::from_secs(2),
        ..CacheConfig::default()
    });
    let key = key("slow");
    let _fill = lead(&cache, &key, &plan(60), T0).await;
    let started = tokio::time::Instant::now();
    assert!(matches!(
        cache.lookup(&key, &plan(60), T0).await,
        Lookup::Miss
    ));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test]
async fn flush_all_by_route_or_by_prefix() {
    let cache = cache();
    for route in ["gpt-4o", "gpt-4o-mini", "claude"] {
        let key = key_on(route, "x");
        lead(&cache, &key, &plan(60), T0)
            .await
            .store(answer(10), T0);
    }
    let flushed = cache.flush(Some("gpt-4o"), None).await.unwrap();
    assert_eq!(flushed.memory, 1);
    assert!(
        !is_hit(
            &cache,
            &key_on("gpt-4o", "x"),
            &Plan {
                store: false,
                ..plan(60)
            },
            T0
        )
        .await
    );
    assert!(is_hit(&cache, &key_on("gpt-4o-mini", "x"), &plan(60), T0).await);
    assert_eq!(cache.flush(None, Some("gpt")).await.unwrap().memory, 1);
    assert!(is_hit(&cache, &key_on("claude", "x"), &plan(60), T0).await);
    assert_eq!(cache.flush(None, None).await.unwrap().memory, 1);
    assert_eq!(cache.snapshot().entries, 0);
}
