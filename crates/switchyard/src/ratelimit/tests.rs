use std::collections::HashMap;

use switchyard_core::clock::ManualClock;
use switchyard_core::config::{RawConfig, validate};

use super::*;

const SECOND: Nanos = 1_000_000_000;

fn config(limits: &str) -> RateLimitConfig {
    let raw: RawConfig = toml::from_str(limits).unwrap();
    validate(&raw, &HashMap::<String, String>::new())
        .unwrap()
        .rate_limits
}

fn limiter(limits: &str, clock: &Arc<ManualClock>) -> Arc<RateLimiter> {
    let mut registry = Registry::default();
    Arc::new(
        RateLimiter::new(
            &config(limits),
            None,
            Duration::from_secs(60),
            Arc::clone(clock) as Arc<dyn Clock>,
            RateLimitMetrics::register(&mut registry),
        )
        .unwrap(),
    )
}

fn subject(key: &str) -> Subject {
    Subject {
        key: key.to_owned(),
        user: None,
        team: None,
        ip: None,
        model: "gpt-4o".to_owned(),
        priority: Priority::Normal,
        tokens: 100,
        own: Default::default(),
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

#[tokio::test]
async fn all_or_nothing_across_limits() {
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    let limiter = limiter(
        r#"
[[rate_limits.limits]]
name = "per-key"
scope = "key"
requests = 3
per = "1m"
[[rate_limits.limits]]
name = "global"
scope = "global"
requests = 4
per = "1m"
"#,
        &clock,
    );
    let mut admitted = Vec::new();
    for _ in 0..3 {
        admitted.push(limiter.admit(&subject("a"), far()).await.unwrap());
    }
    let (refusal, headers) = limiter.admit(&subject("a"), far()).await.unwrap_err();
    assert!(matches!(
        refusal,
        Refusal::Limited {
            limit: 0,
            retry_after: Some(_),
            ..
        }
    ));
    assert_eq!(headers.requests.map(|f| f.remaining), Some(0));
    // Key `a`'s refusal did not charge the global limit: one more request fits for `b`.
    let b = limiter.admit(&subject("b"), far()).await.unwrap();
    assert_eq!(b.headers().requests.map(|f| f.remaining), Some(0));
    let (refusal, _) = limiter.admit(&subject("c"), far()).await.unwrap_err();
    assert!(matches!(refusal, Refusal::Limited { limit: 1, .. }));
    let error = limiter.error(&refusal);
    assert_eq!(error.status(), 429);
    assert_eq!(error.code.as_deref(), Some("rate_limit_exceeded"));
    assert!(error.message.contains("`global`"), "{}", error.message);
    assert!(error.retry_after.is_some());
    let snapshot = limiter.snapshot(10);
    assert_eq!(snapshot.top_offenders.len(), 2);
    assert_eq!(snapshot.top_offenders[0].refusals, 1);
}

#[tokio::test]
async fn tokens_are_reserved_then_settled() {
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    let limiter = limiter(
        r#"
[[rate_limits.limits]]
name = "tpm"
scope = "key"
tokens = 1000
per = "1m"
"#,
        &clock,
    );
    let mut big = subject("k");
    big.tokens = 800;
    let first = limiter.admit(&big, far()).await.unwrap();
    assert_eq!(first.headers().tokens.map(|f| f.remaining), Some(200));
    // Not enough left for another 800 until the first one settles at its real usage.
    assert!(limiter.admit(&big, far()).await.is_err());
    first.settle(150);
    let second = limiter.admit(&big, far()).await.unwrap();
    assert_eq!(second.headers().tokens.map(|f| f.remaining), Some(50));
    // Dropped unsettled (no usage known): the reservation stands.
    drop(second);
    assert!(limiter.admit(&big, far()).await.is_err());
    // A request bigger than the whole limit is refused for good, with no Retry-After.
    let mut huge = subject("k");
    huge.tokens = 5_000;
    let (refusal, _) = limiter.admit(&huge, far()).await.unwrap_err();
    let error = limiter.error(&refusal);
    assert!(error.retry_after.is_none());
    assert!(
        error.message.contains("needs 5000 tokens"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn concurrency_is_held_until_settled() {
    let clock = Arc::new(ManualClock::new(SECOND));
    let limiter = limiter(
        r#"
[[rate_limits.limits]]
scope = "user"
concurrent = 1
"#,
        &clock,
    );
    let mut alice = subject("k");
    alice.user = Some("alice".to_owned());
    let first = limiter.admit(&alice, far()).await.unwrap();
    assert!(limiter.admit(&alice, far()).await.is_err());
    // Another user, and a request without a user, are not held back.
    let mut bob = alice.clone();
    bob.user = Some("bob".to_owned());
    assert!(limiter.admit(&bob, far()).await.is_ok());
    assert!(limiter.admit(&subject("k"), far()).await.is_ok());
    first.settle(10);
    assert!(limiter.admit(&alice, far()).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_queue_waits_for_room_within_its_bounds() {
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    let limiter = limiter(
        r#"
[[rate_limits.limits]]
scope = "key"
requests = 1
per = "1s"
queue = "2s"
"#,
        &clock,
    );
    let _first = limiter.admit(&subject("k"), far()).await.unwrap();
    // The second waits ~1 s of (paused) time, then passes once the clock has moved on.
    let waiter = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move { limiter.admit(&subject("k"), far()).await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    assert_eq!(limiter.snapshot(0).limits[0].queued_now, 1);
    clock.advance(Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(waiter.await.unwrap().is_ok());
    assert_eq!(limiter.snapshot(0).limits[0].queued_now, 0);
    // A wait past the request's deadline is refused at once.
    let soon = Instant::now() + Duration::from_millis(100);
    assert!(limiter.admit(&subject("k"), soon).await.is_err());
}

#[tokio::test]
async fn shedding_refuses_low_priority_first() {
    let clock = Arc::new(ManualClock::new(SECOND));
    let limiter = limiter("[rate_limits]\nmax_in_flight = 10\n", &clock);
    let mut low = subject("batch");
    low.priority = Priority::Low;
    let mut high = subject("vip");
    high.priority = Priority::High;
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(limiter.admit(&subject("k"), far()).await.unwrap());
    }
    // 7 in flight: low (70%) is shed, normal (90%) and high still pass.
    let (refusal, _) = limiter.admit(&low, far()).await.unwrap_err();
    assert!(matches!(refusal, Refusal::Shed));
    assert_eq!(limiter.error(&refusal).status(), 503);
    held.push(limiter.admit(&subject("k"), far()).await.unwrap());
    held.push(limiter.admit(&subject("k"), far()).await.unwrap());
    assert!(limiter.admit(&subject("k"), far()).await.is_err());
    held.push(limiter.admit(&high, far()).await.unwrap());
    assert!(limiter.admit(&high, far()).await.is_err());
    assert_eq!(limiter.snapshot(0).in_flight, 10);
    held.clear();
    assert_eq!(limiter.snapshot(0).in_flight, 0);
    assert!(limiter.admit(&low, far()).await.is_ok());
}

#[tokio::test]
async fn limits_apply_only_where_configured() {
    let clock = Arc::new(ManualClock::new(SECOND));
    let limiter = limiter(
        r#"
[[rate_limits.limits]]
scope = "model"
requests = 1
per = "1h"
only = ["gpt-4o"]
[[rate_limits.limits]]
scope = "ip"
requests = 1
per = "1h"
"#,
        &clock,
    );
    let mut other = subject("k");
    other.model = "mini".to_owned();
    for _ in 0..3 {
        assert!(
            limiter.admit(&other, far()).await.is_ok(),
            "no limit on `mini`"
        );
    }
    assert!(limiter.admit(&subject("k"), far()).await.is_ok());
    assert!(
        limiter.admit(&subject("k2"), far()).await.is_err(),
        "per model, not per key"
    );
    let mut from_ip = other.clone();
    from_ip.ip = Some("10.0.0.1".parse().unwrap());
    assert!(limiter.admit(&from_ip, far()).await.is_ok());
    assert!(limiter.admit(&from_ip, far()).await.is_err());
    from_ip.ip = Some("10.0.0.2".parse().unwrap());
    assert!(limiter.admit(&from_ip, far()).await.is_ok());
    clock.advance(Duration::from_secs(7200));
    assert_eq!(limiter.sweep(), 0, "idle counters are forgotten");
}

#[tokio::test(start_paused = true)]
async fn one_key_cannot_fill_the_queue() {
    let clock = Arc::new(ManualClock::new(1_000 * SECOND));
    // A global limit, a queue of 4: each key may hold one place.
    let limiter = limiter(
        r#"
[[rate_limits.limits]]
scope = "global"
requests = 1
per = "10s"
queue = "30s"
max_queued = 4
"#,
        &clock,
    );
    let _first = limiter.admit(&subject("a"), far()).await.unwrap();
    let waiting = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move { limiter.admit(&subject("a"), far()).await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    assert_eq!(limiter.snapshot(0).limits[0].queued_now, 1);
    // Key `a` already waits: its next request is refused at once instead of queueing.
    let (refusal, _) = limiter.admit(&subject("a"), far()).await.unwrap_err();
    assert!(matches!(refusal, Refusal::Limited { .. }));
    // Another key still gets a place.
    let other = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move { limiter.admit(&subject("b"), far()).await.map(|_| ()) })
    };
    tokio::task::yield_now().await;
    assert_eq!(limiter.snapshot(0).limits[0].queued_now, 2);
    waiting.abort();
    other.abort();
    let _ = waiting.await;
    let _ = other.await;
    assert_eq!(
        limiter.snapshot(0).limits[0].queued_now,
        0,
        "places are given back"
    );
    assert!(lock(&limiter.queued_by_key).is_empty());
}
