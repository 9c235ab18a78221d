//! Budget benchmark: what holding and settling a request's budgets costs, next to baselines
//! measured in the same run.
//!
//! `cargo bench -p switchyard --bench budget` (the Redis part needs Redis on
//! 127.0.0.1:6379; it is skipped with a note when Redis does not answer).
//!
//! - memory: one attempt's reservation in three budgets (global, per key, per team; 1 000
//!   keys in 10 teams, cycled) and its settlement, next to the rate limiter's admission and
//!   settlement of three limits, the stage just before it on the request path.
//! - redis: the same reservation (one script call) next to one `PING` on the same kind of
//!   connection: one round trip. Settlements go to a background task and are not timed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::analytics::sqlite::SqliteStore;
use switchyard::analytics::store::Store;
use switchyard::budget::{BudgetMetrics, Budgets, Spender};
use switchyard::ratelimit::{RateLimitMetrics, RateLimiter, Subject};
use switchyard_core::budget::Members;
use switchyard_core::clock::Clock;
use switchyard_core::config::{Config, parse_toml, validate};
use switchyard_core::ratelimit::shed::Priority;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"
[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[budgets.limits]]
name = "bench-global-RUN"
scope = "global"
amount_usd = 1000000000.0

[[budgets.limits]]
name = "bench-key-RUN"
scope = "key"
amount_usd = 1000000000.0

[[budgets.limits]]
name = "bench-team-RUN"
scope = "team"
amount_usd = 1000000000.0

[[rate_limits.limits]]
scope = "key"
requests = 1000000000
per = "1m"

[[rate_limits.limits]]
scope = "key"
tokens = 1000000000000
per = "1m"

[[rate_limits.limits]]
scope = "global"
concurrent = 1000000
"#;

fn config() -> Config {
    let text = CONFIG.replace("RUN", &format!("{:x}", fastrand::u32(..)));
    validate(
        &parse_toml(&text).unwrap(),
        &HashMap::<String, String>::new(),
    )
    .unwrap()
}

fn budgets(config: &Config, redis: Option<&str>) -> Arc<Budgets> {
    let mut registry = prometheus_client::registry::Registry::default();
    Budgets::new(
        &config.budgets,
        Store::Sqlite(Arc::new(SqliteStore::open(None).unwrap())),
        redis,
        Duration::from_millis(500),
        Duration::from_secs(60),
        BudgetMetrics::register(&mut registry),
        Arc::new(switchyard::cache::unix_ms),
    )
    .unwrap()
}

struct Who {
    key: String,
    team: String,
}

fn people() -> Vec<Who> {
    (0..1_000)
        .map(|i| Who {
            key: format!("key_{i:04}"),
            team: format!("team_{}", i % 10),
        })
        .collect()
}

/// Nanoseconds per reservation (and settlement, when `settle`), best of 5 rounds.
async fn time_holds(budgets: &Arc<Budgets>, people: &[Who], n: usize, settle: bool) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for i in 0..n {
            let who = black_box(&people[i % people.len()]);
            let spender = Spender {
                key: &who.key,
                team: Some(&who.team),
                own: None,
            };
            let members = Members {
                key: &who.key,
                team: Some(&who.team),
                route: "gpt-4o",
                model: "gpt-4o",
                provider: "p",
            };
            let hold = budgets.reserve(&spender, &members, 0.01).await.unwrap();
            if settle && let Some(hold) = hold {
                hold.settle(0.002);
            } else {
                std::mem::forget(hold);
            }
        }
        best = best.min(started.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let people = people();
    runtime.block_on(async {
        let config = config();
        // Baseline: the rate limiter's admission of three limits, and its settlement.
        let mut registry = prometheus_client::registry::Registry::default();
        let limiter = Arc::new(
            RateLimiter::new(
                &config.rate_limits,
                None,
                Duration::from_secs(60),
                Arc::new(switchyard::tracker::TokioClock::new()) as Arc<dyn Clock>,
                RateLimitMetrics::register(&mut registry),
            )
            .unwrap(),
        );
        let subjects: Vec<Subject> = people
            .iter()
            .map(|who| Subject {
                key: who.key.clone(),
                user: None,
                team: Some(who.team.clone()),
                ip: None,
                model: "gpt-4o".to_owned(),
                priority: Priority::Normal,
                tokens: 1_200,
                own: Default::default(),
            })
            .collect();
        let far = tokio::time::Instant::now() + Duration::from_secs(600);
        let mut limit_ns = f64::MAX;
        for _ in 0..5 {
            let n = 200_000;
            let started = Instant::now();
            for i in 0..n {
                let admission = limiter
                    .admit(black_box(&subjects[i % subjects.len()]), far)
                    .await
                    .unwrap();
                admission.settle(900);
            }
            limit_ns = limit_ns.min(started.elapsed().as_nanos() as f64 / n as f64);
        }

        let memory = budgets(&config, None);
        // Warm: every period seeded from the ledger once.
        time_holds(&memory, &people, people.len(), true).await;
        let budget_ns = time_holds(&memory, &people, 200_000, true).await;
        println!(
            "memory: reserve + settle in 3 budgets {budget_ns:.0} ns; rate limiter (3 limits) \
             {limit_ns:.0} ns; ratio {:.2}",
            budget_ns / limit_ns
        );

        let url = "redis://127.0.0.1:6379/0";
        let Ok(client) = redis::Client::open(url) else {
            println!("redis: skipped (bad URL)");
            return;
        };
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
            println!("redis: skipped (no Redis on 127.0.0.1:6379)");
            return;
        };
        let mut ping_ns = f64::MAX;
        for _ in 0..5 {
            let n = 5_000;
            let started = Instant::now();
            for _ in 0..n {
                let _: String = redis::cmd("PING")
                    .query_async(&mut connection)
                    .await
                    .unwrap();
            }
            ping_ns = ping_ns.min(started.elapsed().as_nanos() as f64 / n as f64);
        }
        let shared = budgets(&config, Some(url));
        time_holds(&shared, &people, people.len(), false).await;
        let redis_ns = time_holds(&shared, &people, 5_000, false).await;
        println!(
            "redis: reserve in 3 budgets {:.1} µs; PING {:.1} µs; ratio {:.2}",
            redis_ns / 1e3,
            ping_ns / 1e3,
            redis_ns / ping_ns
        );
    });
}
