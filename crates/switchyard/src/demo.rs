//! `switchyard demo`: the real gateway over three simulated providers, with a little steady
//! traffic, so that a newcomer sees it working with no API keys at all.
//!
//! The providers are in-process mock servers (from `switchyard-testkit`) on loopback ports,
//! each speaking a different wire format so that translation is exercised too:
//! - `swift` (OpenAI format): fast and reliable;
//! - `steady` (Anthropic format): slower and reliable;
//! - `flaky` (Gemini format): quick, but one request in four fails with a 500.
//!
//! Everything else is the production path: the same config validation, router, chain,
//! failover and transport as `switchyard serve`.

use std::collections::HashMap;
use std::time::Duration;

use switchyard_core::config::{
    self, RawAlertRule, RawAlerts, RawBudget, RawBudgets, RawConfig, RawLimit, RawPrice,
    RawProvider, RawRateLimits, RawRoute, RawRouteCache, RawTarget,
};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

use crate::app::AppState;
use crate::cli::{DemoArgs, ProcessEnv, announce};
use crate::server;

/// The demo providers: name, config kind, behaviour.
fn providers() -> [(&'static str, &'static str, Behavior); 3] {
    [
        (
            "swift",
            "openai",
            Behavior {
                latency_ms: 40,
                ttft_ms: 30,
                chunk_delay_ms: 20,
                ..Behavior::default()
            },
        ),
        (
            "steady",
            "anthropic",
            Behavior {
                latency_ms: 250,
                ttft_ms: 120,
                chunk_delay_ms: 40,
                ..Behavior::default()
            },
        ),
        (
            "flaky",
            "gemini",
            Behavior {
                latency_ms: 60,
                ttft_ms: 40,
                chunk_delay_ms: 25,
                error_rate: 0.25,
                ..Behavior::default()
            },
        ),
    ]
}

/// A demo route: name, strategy, and targets (provider, upstream model).
type DemoRoute = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The demo's routes.
const ROUTES: &[DemoRoute] = &[
    (
        "demo",
        "priority",
        &[
            ("flaky", "gemini-demo"),
            ("swift", "gpt-demo"),
            ("steady", "claude-demo"),
        ],
    ),
    ("fast", "priority", &[("swift", "gpt-demo")]),
    (
        "smart",
        "priority",
        &[("steady", "claude-demo"), ("swift", "gpt-demo")],
    ),
    (
        "quickest",
        "least-latency",
        &[
            ("steady", "claude-demo"),
            ("swift", "gpt-demo"),
            ("flaky", "gemini-demo"),
        ],
    ),
];

/// What the simulated models cost, USD per million input and output tokens: made-up figures
/// in the range of real ones, so that costs, the spend ledger and budgets show something.
const DEMO_PRICES: &[(&str, &str, f64, f64)] = &[
    ("swift", "gpt-demo", 0.15, 0.60),
    ("steady", "claude-demo", 3.00, 15.00),
    ("flaky", "gemini-demo", 0.30, 2.50),
];

/// The route whose answers the demo caches (for 30 s).
const CACHED_ROUTE: &str = "fast";

/// The route the demo rate-limits: 30 requests a minute with bursts of 5. The steady traffic
/// stays under it; a burst of [`BURST`] requests every [`BURST_EVERY`] rounds does not.
const LIMITED_ROUTE: &str = "quickest";
const BURST: usize = 8;
const BURST_EVERY: u64 = 80;

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let mut mocks: Vec<MockHandle> = Vec::new();
    for (name, _, behavior) in providers() {
        let mock = MockProvider::builder()
            .name(name)
            .behavior(behavior)
            .expect_api_key("demo-key")
            .spawn()
            .await
            .map_err(|error| format!("could not start the simulated provider {name}: {error}"))?;
        mocks.push(mock);
    }
    let raw = demo_config(&mocks);
    // The simulated providers' keys are fixed; only the master key and the trace collector
    // come from the process.
    let mut env: HashMap<String, String> =
        HashMap::from([("DEMO_KEY".to_owned(), "demo-key".to_owned())]);
    for name in [config::DEFAULT_MASTER_KEY_ENV, config::OTLP_ENDPOINT_ENV] {
        if let Some(value) = config::Env::var(&ProcessEnv, name) {
            env.insert(name.to_owned(), value);
        }
    }
    let config = config::validate(&raw, &env).map_err(|error| format!("demo config: {error}"))?;
    let listen = crate::cli::resolve_listen(Some(&args.listen), &config)?;
    let master_key = config.server.master_key.clone();
    crate::telemetry::init()?;
    let state = AppState::new(config).await?;
    let listener = server::bind(listen).await?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("could not read the listening address: {error}"))?;
    let base = format!("http://{local}");
    announce(&banner(&base, master_key.is_some()));
    if !args.no_traffic {
        tokio::spawn(traffic(
            base.clone(),
            master_key.map(|key| key.expose().to_owned()),
        ));
    }
    server::serve(listener, state, server::shutdown_signal()).await;
    for mock in &mocks {
        mock.shutdown().await;
    }
    Ok(())
}

/// The config the demo runs with, pointing at the mocks.
fn demo_config(mocks: &[MockHandle]) -> RawConfig {
    let providers = providers()
        .iter()
        .zip(mocks)
        .map(|((name, kind, _), mock)| RawProvider {
            name: (*name).to_owned(),
            kind: (*kind).to_owned(),
            base_url: Some(match *kind {
                "openai" => format!("{}/v1", mock.base_url()),
                _ => mock.base_url(),
            }),
            api_key_env: Some("DEMO_KEY".to_owned()),
            models: Some(vec![]),
            ..RawProvider::default()
        })
        .collect();
    let routes = ROUTES
        .iter()
        .map(|(name, strategy, targets)| RawRoute {
            model: (*name).to_owned(),
            strategy: Some((*strategy).to_owned()),
            targets: targets
                .iter()
                .map(|(provider, model)| RawTarget {
                    provider: (*provider).to_owned(),
                    model: (*model).to_owned(),
                    ..RawTarget::default()
                })
                .collect(),
            // One route caches, so that hits and misses show up in the demo's analytics.
            cache: (*name == CACHED_ROUTE).then(|| RawRouteCache {
                enabled: Some(true),
                ttl: Some(Duration::from_secs(30)),
                sampled: None,
            }),
            ..RawRoute::default()
        })
        .collect();
    let prices = DEMO_PRICES
        .iter()
        .map(|(provider, model, input, output)| RawPrice {
            provider: (*provider).to_owned(),
            model: (*model).to_owned(),
            input: *input,
            output: Some(*output),
            ..RawPrice::default()
        })
        .collect();
    // A daily cap over everything, and a small daily budget that moves `smart` to `fast`
    // once spent, so that budgets, their events and a downgrade show up within minutes.
    let budgets = RawBudgets {
        limits: vec![
            RawBudget {
                name: "demo-daily".to_owned(),
                scope: "global".to_owned(),
                amount_usd: 5.0,
                period: Some("daily".to_owned()),
                ..RawBudget::default()
            },
            RawBudget {
                name: "smart-soft".to_owned(),
                scope: "route".to_owned(),
                only: vec!["smart".to_owned()],
                amount_usd: 0.01,
                period: Some("daily".to_owned()),
                downgrade_to: Some("fast".to_owned()),
                ..RawBudget::default()
            },
        ],
        ..RawBudgets::default()
    };
    let rate_limits = RawRateLimits {
        limits: vec![RawLimit {
            name: Some("quickest-rpm".to_owned()),
            scope: "model".to_owned(),
            only: vec![LIMITED_ROUTE.to_owned()],
            requests: Some(30),
            per: Some(Duration::from_secs(60)),
            burst: Some(5),
            ..RawLimit::default()
        }],
        ..RawRateLimits::default()
    };
    RawConfig {
        providers,
        routes,
        prices,
        budgets,
        rate_limits,
        alerts: demo_alerts(),
        ..RawConfig::default()
    }
}

/// Alert rules that the demo's traffic trips, sent to the log (no notifier is configured):
/// a provider's p95 latency over 30 s wanders around 200 ms as the mix of streamed and plain
/// requests changes (failover hides `flaky`'s errors from the clients, and so from an error
/// rate), so `slow-provider` fires and resolves now and then; `smart-soft` is spent within
/// minutes, which fires `smart-budget` once for the day; `refusals` fires after each burst over
/// `quickest`'s rate limit.
fn demo_alerts() -> RawAlerts {
    RawAlerts {
        interval: Some(Duration::from_secs(2)),
        rules: vec![
            RawAlertRule {
                name: "slow-provider".to_owned(),
                metric: "latency_p95".to_owned(),
                scope: Some("provider".to_owned()),
                threshold: Some(200.0),
                window: Some(Duration::from_secs(30)),
                for_duration: Some(Duration::from_secs(4)),
                cooldown: Some(Duration::from_secs(30)),
                min_requests: Some(5),
                ..RawAlertRule::default()
            },
            // The bursts over `quickest`'s limit (see LIMITED_ROUTE) trip this one within
            // seconds of the start.
            RawAlertRule {
                name: "refusals".to_owned(),
                metric: "rate_limited_rate".to_owned(),
                scope: Some("global".to_owned()),
                threshold: Some(0.05),
                window: Some(Duration::from_secs(60)),
                cooldown: Some(Duration::from_secs(60)),
                severity: Some("info".to_owned()),
                ..RawAlertRule::default()
            },
            RawAlertRule {
                name: "smart-budget".to_owned(),
                metric: "budget_used".to_owned(),
                budget: Some("smart-soft".to_owned()),
                threshold: Some(0.8),
                severity: Some("info".to_owned()),
                ..RawAlertRule::default()
            },
        ],
        ..RawAlerts::default()
    }
}

fn banner(base: &str, auth: bool) -> String {
    let auth_header = if auth {
        " -H \"Authorization: Bearer $SWITCHYARD_MASTER_KEY\""
    } else {
        ""
    };
    format!(
        "switchyard listening on {base}\n\
         \n\
         Switchyard demo: three simulated providers, no API keys needed.\n\
         \x20 swift  (OpenAI format)    fast, reliable\n\
         \x20 steady (Anthropic format) slower, reliable\n\
         \x20 flaky  (Gemini format)    fails 1 request in 4; route `demo` fails over from it\n\
         Routes: demo, fast, smart, quickest (least-latency). Background traffic is running.\n\
         Route `quickest` is limited to 30 requests a minute (bursts of 5); the traffic sends\n\
         a burst now and then, so some of it gets 429.\n\
         Route `fast` caches answers for 30 s: send the same request twice and look for\n\
         `x-switchyard-cache: HIT`.\n\
         \n\
         Try:\n\
         \x20 curl {base}/v1/chat/completions{auth_header} -H 'content-type: application/json' \\\n\
         \x20   -d '{{\"model\":\"demo\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}' -i\n\
         \x20 curl -N {base}/v1/chat/completions{auth_header} \\\n\
         \x20   -d '{{\"model\":\"smart\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Stream to me\"}}]}}'\n\
         \x20 curl {base}/v1/models{auth_header}\n\
         \x20 curl {base}/admin/providers{auth_header}   # breakers, latency, errors per provider\n\
         \x20 curl {base}/admin/cache{auth_header}       # cache entries, hits, misses\n\
         \x20 curl '{base}/admin/spend?group_by=route'{auth_header}  # what each route cost\n\
         \x20 curl {base}/admin/budgets{auth_header}     # budgets (`smart` moves to `fast` past $0.01 a day)\n\
         \x20 curl {base}/admin/alerts{auth_header}      # alerts (also in the log): slow providers, budgets\n\
         Dashboard: {base}/dashboard/ (sign in with the master key)\n\
         Or point any OpenAI SDK at base_url={base}/v1.\n\
         Press Ctrl-C to stop."
    )
}

/// Steady background traffic: a request every 750 ms, cycling routes, streamed and not.
async fn traffic(base: String, master_key: Option<String>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "demo traffic disabled: could not build a client");
            return;
        }
    };
    let prompts = [
        "What is a switchyard?",
        "Summarise the benefits of failover",
        "Write a haiku about latency",
        "Explain circuit breakers briefly",
    ];
    let url = format!("{base}/v1/chat/completions");
    let key = master_key.as_deref();
    let mut interval = tokio::time::interval(Duration::from_millis(750));
    let mut sent: u64 = 0;
    let mut failed: u64 = 0;
    for round in 0u64.. {
        interval.tick().await;
        let (route, _, _) = ROUTES[(round % ROUTES.len() as u64) as usize];
        // Each route sees every prompt in turn, so cached answers come round again.
        let prompt = prompts[((round / ROUTES.len() as u64) % prompts.len() as u64) as usize];
        let mut outcomes = vec![send(&client, &url, key, route, prompt, round % 3 == 0).await];
        // Now and then (first after a few seconds) a burst that the rate limit partly refuses.
        if round % BURST_EVERY == 8 {
            let burst = (0..BURST).map(|_| send(&client, &url, key, LIMITED_ROUTE, prompt, false));
            outcomes.extend(futures_util::future::join_all(burst).await);
        }
        for ok in outcomes {
            sent += 1;
            if !ok {
                failed += 1;
            }
            if sent.is_multiple_of(40) {
                tracing::info!(sent, failed, "demo traffic");
            }
        }
    }
}

/// One demo request; true when it was answered in full with a success.
async fn send(
    client: &reqwest::Client,
    url: &str,
    master_key: Option<&str>,
    route: &str,
    prompt: &str,
    stream: bool,
) -> bool {
    let body = serde_json::json!({
        "model": route,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    });
    let mut request = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if let Some(key) = master_key {
        request = request.bearer_auth(key);
    }
    match request.send().await {
        Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
        Err(_) => false,
    }
}
