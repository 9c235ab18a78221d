//! Failover against scripted attempts, with a hand-driven clock for breakers and cooldowns
//! and tokio's paused clock for backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use switchyard_core::clock::ManualClock;
use switchyard_core::config::{Config, parse_toml, validate};

use super::*;

/// The `[routing]` section most tests use.
const ROUTING: &str = r#"
[routing]
max_attempts = 3
retry_budget = 1.0
[routing.breaker]
consecutive_failures = 2
cooldown = "10s"
"#;

const CONFIG: &str = r#"

[[providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[[providers]]
name = "b"
kind = "openai"
base_url = "http://127.0.0.1:2/v1"
[[providers]]
name = "c"
kind = "openai"
base_url = "http://127.0.0.1:3/v1"

[[routes]]
model = "pair"
fallbacks = ["backup"]
targets = [ { provider = "a", model = "m" }, { provider = "b", model = "m" } ]

[[routes]]
model = "solo"
targets = [ { provider = "a", model = "m" } ]

[[routes]]
model = "backup"
targets = [ { provider = "c", model = "m" } ]
"#;

struct Harness {
    config: Config,
    tracker: Tracker,
    clock: Arc<ManualClock>,
}

fn harness(routing: &str) -> Harness {
    let routing = if routing.is_empty() { ROUTING } else { routing };
    let text = format!("{routing}\n{CONFIG}");
    let config = validate(
        &parse_toml(&text).unwrap(),
        &HashMap::<String, String>::new(),
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let tracker = Tracker::new(&config, clock.clone());
    Harness {
        config,
        tracker,
        clock,
    }
}

fn plan<'a>(config: &'a Config, name: &str) -> Vec<PlannedRoute<'a>> {
    let route = config.routes.iter().find(|r| r.name == name).unwrap();
    let mut plan = vec![PlannedRoute {
        name: &route.name,
        targets: &route.targets,
        strategy: route.strategy,
        objective: route.objective,
    }];
    for fallback in &route.fallbacks {
        let route = config.routes.iter().find(|r| &r.name == fallback).unwrap();
        plan.push(PlannedRoute {
            name: &route.name,
            targets: &route.targets,
            strategy: route.strategy,
            objective: route.objective,
        });
    }
    plan
}

fn facts() -> RequestFacts {
    RequestFacts {
        stream: false,
        input_tokens: 10,
        max_output_tokens: None,
        deadline: Instant::now() + Duration::from_secs(60),
    }
}

fn upstream(kind: ErrorKind, provider: &str) -> GatewayError {
    GatewayError::new(kind, Origin::Upstream(provider.into()), "scripted")
}

/// Runs one request; `script` answers per provider name (default: success). Returns the
/// provider that served (or the error status), the attempts, and who was called.
async fn request(
    harness: &Harness,
    route: &str,
    script: &dyn Fn(&str) -> Result<(), GatewayError>,
) -> (Result<(String, String), u16>, u32, Vec<String>) {
    let called = Mutex::new(Vec::new());
    let plan = plan(&harness.config, route);
    // A client-origin error is the adapter refusing to build the request; anything else is
    // the provider's answer.
    let result = run(
        &harness.tracker,
        &harness.config.routing,
        &plan,
        facts(),
        None,
        |target| match script(&target.provider.name) {
            Err(error) if error.origin == Origin::Client => Err(error),
            outcome => Ok(outcome),
        },
        |target, outcome| {
            called.lock().unwrap().push(target.provider.name.clone());
            async move { outcome }
        },
    )
    .await;
    let called = called.into_inner().unwrap();
    match result {
        Ok(served) => {
            let attempts = served.attempts;
            (
                Ok((served.target.provider.name.clone(), served.route.to_owned())),
                attempts,
                called,
            )
        }
        Err(failed) => (Err(failed.error.status()), failed.attempts, called),
    }
}

#[tokio::test]
async fn retryable_errors_move_on_at_once() {
    let harness = harness("");
    let (result, attempts, called) = request(&harness, "pair", &|p| {
        if p == "a" {
            Err(upstream(ErrorKind::Unavailable, p))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(result, Ok(("b".into(), "pair".into())));
    assert_eq!(attempts, 2);
    assert_eq!(called, ["a", "b"]);
}

#[tokio::test]
async fn a_non_retryable_error_is_the_answer() {
    let harness = harness("");
    let bad_request = |p: &str| {
        Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            Origin::Upstream(p.into()),
            "no",
        ))
    };
    let (result, attempts, called) = request(&harness, "pair", &bad_request).await;
    assert_eq!(result, Err(400));
    assert_eq!(attempts, 1);
    assert_eq!(called, ["a"]);
}

#[tokio::test]
async fn a_target_that_cannot_express_the_request_is_skipped() {
    let harness = harness("");
    let (result, _, called) = request(&harness, "pair", &|p| {
        if p == "a" {
            Err(GatewayError::invalid_request("n > 1"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(result, Ok(("b".into(), "pair".into())));
    assert_eq!(
        called,
        ["b"],
        "nothing was sent to the target that could not express it"
    );
}

#[tokio::test]
async fn a_refusal_costs_no_attempt_and_no_retry_budget() {
    let harness = harness("[routing]\nretry_budget = 0.0\nmin_retries_per_second = 0\n");
    let (result, attempts, called) = request(&harness, "pair", &|p| {
        if p == "a" {
            Err(GatewayError::invalid_request("n > 1"))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(result, Ok(("b".into(), "pair".into())));
    assert_eq!((attempts, called), (1, vec!["b".to_owned()]));
}

#[tokio::test]
async fn the_request_deadline_is_not_held_against_targets() {
    let harness = harness("");
    let deadline_timeout = |p: &str| {
        Err(upstream(ErrorKind::Timeout, p).with_code(crate::transport::REQUEST_DEADLINE))
    };
    for _ in 0..3 {
        let (result, _, _) = request(&harness, "pair", &deadline_timeout).await;
        assert_eq!(result, Err(504));
    }
    // Two failures would have opened a breaker; these did not count.
    let (_, _, called) = request(&harness, "pair", &|_| Ok(())).await;
    assert_eq!(called, ["a"]);
}

#[tokio::test]
async fn fallback_routes_follow_when_every_target_failed() {
    let harness = harness("");
    let (result, attempts, called) = request(&harness, "pair", &|p| {
        if p == "c" {
            Ok(())
        } else {
            Err(upstream(ErrorKind::BadGateway, p))
        }
    })
    .await;
    assert_eq!(result, Ok(("c".into(), "backup".into())));
    assert_eq!(attempts, 3);
    assert_eq!(called, ["a", "b", "c"]);
}

#[tokio::test]
async fn an_open_breaker_skips_the_target_until_its_probe() {
    let harness = harness("");
    let failing_a = |p: &str| {
        if p == "a" {
            Err(upstream(ErrorKind::BadGateway, p))
        } else {
            Ok(())
        }
    };
    // Two consecutive failures open a's breaker.
    for _ in 0..2 {
        let (result, _, called) = request(&harness, "pair", &failing_a).await;
        assert_eq!(result, Ok(("b".into(), "pair".into())));
        assert_eq!(called, ["a", "b"]);
    }
    // Open: a costs nothing, b answers with one attempt.
    let (result, attempts, called) = request(&harness, "pair", &failing_a).await;
    assert_eq!(result, Ok(("b".into(), "pair".into())));
    assert_eq!((attempts, called), (1, vec!["b".to_owned()]));

    // After the cooldown one probe goes to a; its success closes the breaker.
    harness.clock.advance(Duration::from_secs(10));
    let (result, _, called) = request(&harness, "pair", &|_| Ok(())).await;
    assert_eq!(result, Ok(("a".into(), "pair".into())));
    assert_eq!(called, ["a"]);
    let (_, _, called) = request(&harness, "pair", &|_| Ok(())).await;
    assert_eq!(called, ["a"]);
}

#[tokio::test]
async fn retry_after_cools_a_target_down() {
    let harness = harness("");
    let limited = |p: &str| {
        if p == "a" {
            Err(upstream(ErrorKind::RateLimited, p).with_retry_after(Some(Duration::from_secs(30))))
        } else {
            Ok(())
        }
    };
    let (_, _, called) = request(&harness, "pair", &limited).await;
    assert_eq!(called, ["a", "b"]);
    let (_, _, called) = request(&harness, "pair", &|_| Ok(())).await;
    assert_eq!(called, ["b"], "a is cooling down for 30 s");
    harness.clock.advance(Duration::from_secs(31));
    let (_, _, called) = request(&harness, "pair", &|_| Ok(())).await;
    assert_eq!(called, ["a"]);
}

#[tokio::test]
async fn the_retry_budget_bounds_retries() {
    let harness = harness("[routing]\nretry_budget = 0.0\nmin_retries_per_second = 0\n");
    let (result, attempts, called) = request(&harness, "pair", &|p| {
        if p == "a" {
            Err(upstream(ErrorKind::BadGateway, p))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(result, Err(502));
    assert_eq!((attempts, called), (1, vec!["a".to_owned()]));
}

#[tokio::test(start_paused = true)]
async fn a_single_target_is_retried_with_backoff() {
    let harness = harness("");
    let calls = Mutex::new(0);
    let started = Instant::now();
    let (result, attempts, called) = request(&harness, "solo", &|p| {
        let mut calls = calls.lock().unwrap();
        *calls += 1;
        if *calls < 2 {
            Err(upstream(ErrorKind::Unavailable, p))
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(result, Ok(("a".into(), "solo".into())));
    assert_eq!((attempts, called.len()), (2, 2));
    // Equal jitter: the first backoff is between half and all of the 25 ms base.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_micros(12_500) && waited <= Duration::from_millis(25),
        "{waited:?}"
    );
}

#[tokio::test]
async fn drained_providers_are_skipped_and_nothing_left_is_a_fast_503() {
    let harness = harness("");
    assert!(harness.tracker.set_drained("a", true));
    let (_, _, called) = request(&harness, "pair", &|_| Ok(())).await;
    assert_eq!(called, ["b"]);
    assert!(harness.tracker.set_drained("b", true));
    assert!(harness.tracker.set_drained("c", true));
    let (result, attempts, called) = request(&harness, "pair", &|_| Ok(())).await;
    assert_eq!(result, Err(503));
    assert_eq!(attempts, 0);
    assert!(called.is_empty());
    assert!(!harness.tracker.set_drained("nope", true));
}
