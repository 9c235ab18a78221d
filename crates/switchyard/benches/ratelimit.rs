//! Rate-limit admission benchmark: what one admission check costs, in memory and against
//! Redis, each next to a baseline measured in the same run.
//!
//! `cargo bench -p switchyard --bench ratelimit` (needs Redis on 127.0.0.1:6379 for the
//! Redis part; it is skipped with a note when Redis does not answer).
//!
//! - memory: the full admission of one request against three limits (a per-key request
//!   bucket, a per-key token bucket, a global concurrency cap) and its settlement, next to
//!   the floor of any keyed counter: a mutex-guarded `HashMap<String, u64>` increment.
//! - redis: the same admission and settlement (one script call each) next to one `PING` on
//!   the same kind of connection: one round trip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::ratelimit::{RateLimitMetrics, RateLimiter, Subject};
use switchyard_core::clock::Clock;
use switchyard_core::config::{parse_toml, validate};
use switchyard_core::ratelimit::shed::Priority;
use switchyard_core::ratelimit::{Algorithm, Policy};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LIMITS: &str = r#"
[[rate_limits.limits]]
name = "bench-rpm-RUN"
scope = "key"
requests = 1000000000
per = "1m"
[[rate_limits.limits]]
name = "bench-tpm-RUN"
scope = "key"
tokens = 1000000000000
per = "1m"
[[rate_limits.limits]]
name = "bench-concurrency-RUN"
scope = "global"
concurrent = 1000000
"#;

/// The first limit alone: a per-key request bucket.
const ONE_LIMIT: &str = r#"
[[rate_limits.limits]]
name = "bench-rpm-RUN"
scope = "key"
requests = 1000000000
per = "1m"
"#;

fn limiter(redis: Option<&str>) -> Arc<RateLimiter> {
    limiter_with(LIMITS, redis)
}

fn limiter_with(limits: &str, redis: Option<&str>) -> Arc<RateLimiter> {
    let run = format!("{:x}", fastrand::u32(..));
    let mut text = limits.replace("RUN", &run);
    text.push_str(
        "[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
    );
    let config = validate(
        &parse_toml(&text).unwrap(),
        &HashMap::<String, String>::new(),
    )
    .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    Arc::new(
        RateLimiter::new(
            &config.rate_limits,
            redis,
            Duration::from_secs(60),
            Arc::new(switchyard::tracker::TokioClock::new()) as Arc<dyn Clock>,
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
        tokens: 1_200,
        own: Default::default(),
    }
}

/// Nanoseconds per iteration of `body`, best of `rounds` rounds of `n`.
fn per_op(rounds: usize, n: u64, mut body: impl FnMut(u64)) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        for i in 0..n {
            body(i);
        }
        best = best.min(started.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

/// Nanoseconds per admission and settlement, best of 5 rounds of 200 000, cycling through
/// `subjects`.
async fn time_admissions(
    limiter: &Arc<RateLimiter>,
    subjects: &[Subject],
    deadline: tokio::time::Instant,
) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let n = 200_000usize;
        let started = Instant::now();
        for i in 0..n {
            let subject = black_box(&subjects[i % subjects.len()]);
            let admission = limiter.admit(subject, deadline).await.unwrap();
            admission.settle(900);
        }
        best = best.min(started.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let far = || tokio::time::Instant::now() + Duration::from_secs(600);

    // Floor: a keyed counter behind a mutex.
    let map: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new());
    map.lock().unwrap().insert("key-1".to_owned(), 0);
    let baseline = per_op(5, 2_000_000, |_| {
        let mut map = map.lock().unwrap();
        *map.get_mut(black_box("key-1")).unwrap() += 1;
    });

    // The pure algorithm.
    let policy = Policy::rate(Algorithm::TokenBucket, 1_000_000_000, 60_000_000_000, None).unwrap();
    let mut state = policy.new_state();
    let gcra = per_op(5, 2_000_000, |i| {
        black_box(policy.acquire(&mut state, 1_000_000_000 + i * 50, 1));
    });

    // The full admission and settlement: three limits, one key; one limit; three limits over
    // 10 000 keys (each request a different one).
    let memory = limiter(None);
    let single = limiter_with(ONE_LIMIT, None);
    let one = subject("key-1");
    let subjects: Vec<Subject> = (0..10_000).map(|i| subject(&format!("key-{i}"))).collect();
    let deadline = far();
    let admit = runtime.block_on(time_admissions(
        &memory,
        std::slice::from_ref(&one),
        deadline,
    ));
    let admit_one_limit = runtime.block_on(time_admissions(
        &single,
        std::slice::from_ref(&one),
        deadline,
    ));
    let admit_many = runtime.block_on(time_admissions(&memory, &subjects, deadline));
    println!("## Rate-limit admission in memory (ns per request, best of 5)\n");
    println!("| what | ns | × baseline |");
    println!("|---|---:|---:|");
    println!("| baseline: mutex + HashMap<String, u64> increment | {baseline:.0} | 1.0 |");
    println!(
        "| GCRA step alone (core) | {gcra:.0} | {:.2} |",
        gcra / baseline
    );
    println!(
        "| admit + settle, 1 limit (per-key requests) | {admit_one_limit:.0} | {:.1} |",
        admit_one_limit / baseline
    );
    println!(
        "| admit + settle, 3 limits, one key | {admit:.0} | {:.1} |",
        admit / baseline
    );
    println!(
        "| admit + settle, 3 limits, 10 000 keys | {admit_many:.0} | {:.1} |",
        admit_many / baseline
    );

    // Redis.
    let url = "redis://127.0.0.1:6379/0";
    // The Redis connection manager needs the runtime to exist when it is created.
    let redis = runtime.block_on(async { limiter(Some(url)) });
    runtime.block_on(redis.warm_up());
    let client = redis::Client::open(url).unwrap();
    let reachable = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()
        .and_then(Result::ok)
    });
    let Some(mut connection) = reachable else {
        println!("\nRedis on 127.0.0.1:6379 did not answer: the Redis part is skipped.");
        return;
    };
    let (ping, admitted) = runtime.block_on(async {
        let n = 5_000;
        let mut ping = Vec::with_capacity(n);
        let mut admitted = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let _: String = redis::cmd("PING")
                .query_async(&mut connection)
                .await
                .unwrap();
            ping.push(started.elapsed());
            let started = Instant::now();
            let admission = redis.admit(&one, far()).await.unwrap();
            admitted.push(started.elapsed());
            admission.settle(900);
            // The settlement runs in a task of its own; let it go before the next sample.
            tokio::task::yield_now().await;
        }
        ping.sort();
        admitted.sort();
        (ping, admitted)
    });
    println!("\n## Rate-limit admission against Redis (µs, 5 000 sequential requests)\n");
    println!("| what | p50 | p99 | p50 × PING |");
    println!("|---|---:|---:|---:|");
    let us = |d: Duration| d.as_nanos() as f64 / 1_000.0;
    println!(
        "| baseline: PING (one round trip) | {:.1} | {:.1} | 1.0 |",
        us(percentile(&ping, 0.5)),
        us(percentile(&ping, 0.99))
    );
    println!(
        "| admit, 3 limits (one script call) | {:.1} | {:.1} | {:.2} |",
        us(percentile(&admitted, 0.5)),
        us(percentile(&admitted, 0.99)),
        us(percentile(&admitted, 0.5)) / us(percentile(&ping, 0.5))
    );
}
