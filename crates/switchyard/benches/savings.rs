//! Measured savings: one seeded reference trace replayed through the live gateway twice,
//! against mock providers with list prices and distinct latencies, under a baseline config
//! and an optimized one, reported side by side.
//!
//! `cargo bench -p switchyard --bench savings` (`-- --requests N`, default 600;
//! `-- --seed S`, default 7).
//!
//! **The trace** (`trace`): half the requests ask for `assistant` (meaning GPT-4o), half for
//! `llama` (Llama 3.3 70B, an open-weight model served by four providers). Prompts are 70%
//! easy (a short question) and 30% hard (code, mathematics, or a long document to
//! summarise), and 15% of requests repeat an earlier one exactly.
//!
//! **The providers**: mocks at 127.0.0.1 whose prices are the catalog's list prices
//! (`crates/switchyard-core/src/pricing/catalog.toml`, copied into `[[prices]]` because the
//! mocks are not at the vendors' URLs) and whose latencies differ (milliseconds, scaled down
//! ~5× from typical figures so the run is short):
//!
//! | provider | model | $/M in | $/M out | latency |
//! |---|---|---|---|---|
//! | openai | gpt-4o | 2.50 | 10.00 | 60 ms |
//! | openai-mini | gpt-4o-mini | 0.15 | 0.60 | 30 ms |
//! | together | Llama-3.3-70B-Instruct-Turbo | 0.88 | 0.88 | 50 ms |
//! | fireworks | llama-v3p3-70b-instruct | 0.90 | 0.90 | 45 ms |
//! | groq | llama-3.3-70b-versatile | 0.59 | 0.79 | 25 ms |
//! | deepinfra | Llama-3.3-70B-Instruct-Turbo | 0.13 | 0.39 | 180 ms |
//!
//! **Baseline**: `assistant` → GPT-4o, `llama` → Together (its first provider), priority
//! routing, no cache, no tiers. **Optimized**: `assistant` has tiers (GPT-4o mini, then
//! GPT-4o) with the classifier's default thresholds; `llama` is `least-cost` over the four
//! providers with a 100 ms p95 latency objective; both cache answers. Nothing in the
//! optimized config is fitted to the trace: the thresholds are the defaults, the objective
//! a round number above the baseline provider's latency.
//!
//! Costs are the gateway's own `x-switchyard-cost-usd` per answer (a cache hit costs 0);
//! the optimized run's `/admin/cost/savings` splits its saving into cache, tiering and
//! provider switching.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard::{AppState, server};
use switchyard_core::config::{parse_toml, validate};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (provider, model, $/M input, $/M output, latency ms).
const PROVIDERS: [(&str, &str, f64, f64, u64); 6] = [
    ("openai", "gpt-4o", 2.50, 10.00, 60),
    ("openai-mini", "gpt-4o-mini", 0.15, 0.60, 30),
    (
        "together",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        0.88,
        0.88,
        50,
    ),
    (
        "fireworks",
        "accounts/fireworks/models/llama-v3p3-70b-instruct",
        0.90,
        0.90,
        45,
    ),
    ("groq", "llama-3.3-70b-versatile", 0.59, 0.79, 25),
    (
        "deepinfra",
        "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        0.13,
        0.39,
        180,
    ),
];

fn llama_targets() -> String {
    PROVIDERS[2..]
        .iter()
        .map(|(provider, model, ..)| {
            format!("{{ provider = \"{provider}\", model = \"{model}\" }}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn providers(mocks: &[MockHandle]) -> String {
    let mut text = String::new();
    for ((name, model, input, output, _), mock) in PROVIDERS.iter().zip(mocks) {
        text.push_str(&format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = []\n\
             [[prices]]\nprovider = \"{name}\"\nmodel = \"{model}\"\ninput = {input}\noutput = {output}\n",
            mock.base_url()
        ));
    }
    text
}

fn baseline(mocks: &[MockHandle]) -> String {
    format!(
        "{}[[routes]]\nmodel = \"assistant\"\ntargets = [{{ provider = \"openai\", model = \"gpt-4o\" }}]\n\
         [[routes]]\nmodel = \"llama\"\nstrategy = \"priority\"\ntargets = [{}]\n",
        providers(mocks),
        llama_targets()
    )
}

fn optimized(mocks: &[MockHandle]) -> String {
    format!(
        "{}[[routes]]\nmodel = \"assistant\"\ntiers = [\"assistant-mini\", \"assistant-4o\"]\n\
         [[routes]]\nmodel = \"assistant-mini\"\ncache = {{ enabled = true }}\n\
         targets = [{{ provider = \"openai-mini\", model = \"gpt-4o-mini\" }}]\n\
         [[routes]]\nmodel = \"assistant-4o\"\ncache = {{ enabled = true }}\n\
         targets = [{{ provider = \"openai\", model = \"gpt-4o\" }}]\n\
         [[routes]]\nmodel = \"llama\"\nstrategy = \"least-cost\"\ncache = {{ enabled = true }}\n\
         objective = {{ latency_p95 = \"100ms\" }}\ntargets = [{}]\n",
        providers(mocks),
        llama_targets()
    )
}

const TOPICS: [&str; 12] = [
    "photosynthesis",
    "the Roman empire",
    "black holes",
    "sourdough bread",
    "the stock market",
    "volcanoes",
    "jazz music",
    "the immune system",
    "electric cars",
    "honeybees",
    "glaciers",
    "the printing press",
];

/// One request of the trace.
#[derive(Clone)]
struct Ask {
    model: &'static str,
    prompt: String,
    hard: bool,
}

/// The seeded reference trace.
fn trace(requests: usize, seed: u64) -> Vec<Ask> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out: Vec<Ask> = Vec::with_capacity(requests);
    for i in 0..requests {
        if i > 10 && rng.f64() < 0.15 {
            let earlier = out[rng.usize(..out.len())].clone();
            out.push(earlier);
            continue;
        }
        let model = if rng.bool() { "assistant" } else { "llama" };
        let topic = TOPICS[rng.usize(..TOPICS.len())];
        let n = rng.u32(1..1_000);
        let (prompt, hard) = match rng.f64() {
            x if x < 0.70 => (
                format!("In two sentences, what is interesting about {topic}? ({n})"),
                false,
            ),
            x if x < 0.80 => (
                format!(
                    "Why does this fail ({n})?\n```python\ndef area(r):\n    return 3.14 * r ** 2\nprint(area('{topic}'))\n```"
                ),
                true,
            ),
            x if x < 0.90 => (
                format!("Solve 3x^2 + {n}x = 12 and explain each step about {topic}"),
                true,
            ),
            _ => (
                format!(
                    "Summarise this report: {}",
                    format!("The findings on {topic} in section {n} show steady progress. ")
                        .repeat(90)
                ),
                true,
            ),
        };
        out.push(Ask {
            model,
            prompt,
            hard,
        });
    }
    out
}

struct Run {
    cost: f64,
    latencies: Vec<Duration>,
    errors: usize,
    cheap_tier: usize,
    assistant: usize,
    hits: usize,
    providers: HashMap<String, usize>,
    savings: Value,
}

async fn replay(config: &str, asks: &[Ask], concurrency: usize) -> Run {
    let env: HashMap<String, String> =
        HashMap::from([("SWITCHYARD_DATA_DIR".to_owned(), ":memory:".to_owned())]);
    let config = validate(&parse_toml(config).unwrap(), &env).unwrap();
    let flush = config.analytics.flush_interval;
    let state = AppState::new(config).await.unwrap();
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for ask in asks {
        let permit = Arc::clone(&gate).acquire_owned().await.unwrap();
        let client = client.clone();
        let url = format!("{base}/v1/chat/completions");
        let body = json!({"model": ask.model, "max_tokens": 300,
                          "messages": [{"role": "user", "content": ask.prompt}]});
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let latency = started.elapsed();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let outcome = (
                response.status().as_u16(),
                header("x-switchyard-cost-usd").and_then(|c| c.parse::<f64>().ok()),
                header("x-switchyard-tier"),
                header("x-switchyard-cache"),
                header("x-switchyard-provider"),
                latency,
            );
            response.bytes().await.unwrap();
            drop(permit);
            outcome
        }));
    }
    let mut run = Run {
        cost: 0.0,
        latencies: Vec::new(),
        errors: 0,
        cheap_tier: 0,
        assistant: 0,
        hits: 0,
        providers: HashMap::new(),
        savings: Value::Null,
    };
    for (task, ask) in tasks.into_iter().zip(asks) {
        let (status, cost, tier, cache, provider, latency) = task.await.unwrap();
        run.latencies.push(latency);
        if status != 200 {
            run.errors += 1;
            continue;
        }
        run.cost += cost.unwrap_or(0.0);
        if ask.model == "assistant" {
            run.assistant += 1;
            run.cheap_tier += usize::from(tier.as_deref() == Some("assistant-mini"));
        }
        run.hits += usize::from(cache.as_deref() == Some("HIT"));
        *run.providers
            .entry(provider.unwrap_or_default())
            .or_default() += 1;
    }
    tokio::time::sleep(flush * 2).await;
    run.savings = serde_json::from_str(
        &client
            .get(format!("{base}/admin/cost/savings?from=-1h"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let _ = stop.send(());
    let _ = serving.await;
    run
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1_000.0
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    switchyard::install_crypto_provider();
    let requests = usize::try_from(arg("--requests", 600)).unwrap();
    let seed = arg("--seed", 7);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut mocks = Vec::new();
        for (name, .., latency) in PROVIDERS {
            mocks.push(
                MockProvider::builder()
                    .name(name)
                    .behavior(Behavior::latency(latency))
                    .spawn()
                    .await
                    .unwrap(),
            );
        }
        let asks = trace(requests, seed);
        let hard = asks.iter().filter(|a| a.hard).count();
        println!(
            "trace: {requests} requests (seed {seed}), {hard} hard, concurrency 8"
        );
        let base = replay(&baseline(&mocks), &asks, 8).await;
        let best = replay(&optimized(&mocks), &asks, 8).await;
        println!("| | baseline | optimized |");
        println!("|---|---|---|");
        println!("| cost (USD) | {:.6} | {:.6} |", base.cost, best.cost);
        for (label, p) in [("p50 latency (ms)", 0.5), ("p95 latency (ms)", 0.95)] {
            let mut a = base.latencies.clone();
            let mut b = best.latencies.clone();
            a.sort();
            b.sort();
            println!("| {label} | {:.1} | {:.1} |", percentile(&a, p), percentile(&b, p));
        }
        println!(
            "| error rate | {:.2}% | {:.2}% |",
            100.0 * base.errors as f64 / requests as f64,
            100.0 * best.errors as f64 / requests as f64
        );
        println!(
            "| assistant requests on the cheap tier | {:.1}% | {:.1}% |",
            100.0 * base.cheap_tier as f64 / base.assistant.max(1) as f64,
            100.0 * best.cheap_tier as f64 / best.assistant.max(1) as f64
        );
        println!("| cache hits | {} | {} |", base.hits, best.hits);
        let mut providers: Vec<_> = best.providers.iter().collect();
        providers.sort();
        println!("optimized traffic by provider: {providers:?}");
        println!(
            "cost reduction: {:.1}%",
            100.0 * (1.0 - best.cost / base.cost)
        );
        let total = &best.savings["total"];
        println!(
            "optimized run's /admin/cost/savings: baseline ${:.6}, actual ${:.6}; cache ${:.6}, tiering ${:.6}, provider switching ${:.6}",
            total["baseline_usd"].as_f64().unwrap_or(0.0),
            total["actual_usd"].as_f64().unwrap_or(0.0),
            total["cache_usd"].as_f64().unwrap_or(0.0),
            total["tiering_usd"].as_f64().unwrap_or(0.0),
            total["provider_switching_usd"].as_f64().unwrap_or(0.0),
        );
        for mock in &mocks {
            mock.shutdown().await;
        }
    });
}
