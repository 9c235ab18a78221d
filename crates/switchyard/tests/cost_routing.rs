//! Cost-aware routing over real sockets: `least-cost` sends an open-weight model to the
//! cheapest of the providers serving it (prices from `[[prices]]`, input and output apart),
//! and a route's latency objective moves traffic off a cheap provider once it turns slow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestGateway, get_json, post_json};
use serde_json::json;
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

async fn mock(name: &str) -> MockHandle {
    MockProvider::builder().name(name).spawn().await.unwrap()
}

fn provider(mock: &MockHandle) -> String {
    format!(
        "[[providers]]\nname = \"{0}\"\nkind = \"openai\"\nbase_url = \"{1}/v1\"\nmodels = []\n",
        mock.name(),
        mock.base_url()
    )
}

/// Three providers of one model: the dearest listed first, so that config order is not
/// what picks the cheapest.
async fn setup(objective: &str) -> (Vec<MockHandle>, TestGateway) {
    let mocks = vec![
        mock("fireworks").await,
        mock("together").await,
        mock("groq").await,
    ];
    let mut text: String = mocks.iter().map(provider).collect();
    for (name, input, output) in [
        ("fireworks", 0.90, 0.90),
        ("together", 0.88, 0.88),
        ("groq", 0.59, 0.79),
    ] {
        text.push_str(&format!(
            "[[prices]]\nprovider = \"{name}\"\nmodel = \"llama-70b\"\ninput = {input}\noutput = {output}\n"
        ));
    }
    text.push_str(&format!(
        "[[routes]]\nmodel = \"llama\"\nstrategy = \"least-cost\"\n{objective}\n\
         targets = [{{ provider = \"fireworks\", model = \"llama-70b\" }}, \
         {{ provider = \"together\", model = \"llama-70b\" }}, \
         {{ provider = \"groq\", model = \"llama-70b\" }}]\n"
    ));
    let gateway = TestGateway::start(&text, &[]).await;
    (mocks, gateway)
}

async fn served_by(gateway: &TestGateway) -> String {
    let (status, headers, body) = post_json(
        &gateway.url("/v1/chat/completions"),
        &json!({"model": "llama", "max_tokens": 50,
                "messages": [{"role": "user", "content": "which provider is cheapest"}]}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    headers["x-switchyard-provider"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn least_cost_sends_the_model_to_its_cheapest_provider() {
    let (_mocks, gateway) = setup("").await;
    for _ in 0..5 {
        assert_eq!(served_by(&gateway).await, "groq");
    }
}

#[tokio::test]
async fn a_cheap_provider_over_the_latency_objective_loses_the_traffic() {
    let (mocks, gateway) = setup("objective = { latency_p95 = \"60ms\" }").await;
    assert_eq!(served_by(&gateway).await, "groq");
    mocks[2].set_behavior(Behavior::latency(120));
    let mut providers = Vec::new();
    for _ in 0..16 {
        providers.push(served_by(&gateway).await);
    }
    // Ten recent samples (the fast one included) are enough evidence; from then on the
    // next cheapest serves.
    let switched = providers.iter().position(|p| p == "together").unwrap();
    assert!((8..=10).contains(&switched), "{providers:?}");
    assert!(
        providers[..switched].iter().all(|p| p == "groq"),
        "{providers:?}"
    );
    assert!(
        providers[switched..].iter().all(|p| p == "together"),
        "{providers:?}"
    );
}

/// The savings report: provider switching (least-cost away from the route's default
/// provider), tiering (easy prompts to the cheap tier) and the cache, each priced from the
/// requests' own token counts, adding up to the baseline minus what was spent.
#[tokio::test]
async fn the_savings_report_says_where_the_money_was_saved() {
    let mocks = [
        mock("fireworks").await,
        mock("together").await,
        mock("groq").await,
        mock("mini").await,
        mock("maxi").await,
    ];
    let mut text: String = mocks.iter().map(provider).collect();
    for (name, model, input, output) in [
        ("fireworks", "llama-70b", 0.90, 0.90),
        ("together", "llama-70b", 0.88, 0.88),
        ("groq", "llama-70b", 0.59, 0.79),
        ("mini", "small", 0.15, 0.60),
        ("maxi", "large", 2.50, 10.00),
    ] {
        text.push_str(&format!(
            "[[prices]]\nprovider = \"{name}\"\nmodel = \"{model}\"\ninput = {input}\noutput = {output}\n"
        ));
    }
    text.push_str(
        "[[routes]]\nmodel = \"llama\"\nstrategy = \"least-cost\"\ncache = { enabled = true }\n\
         targets = [{ provider = \"fireworks\", model = \"llama-70b\" }, \
         { provider = \"together\", model = \"llama-70b\" }, \
         { provider = \"groq\", model = \"llama-70b\" }]\n\
         [[routes]]\nmodel = \"assistant\"\ntiers = [\"assistant-cheap\", \"assistant-strong\"]\n\
         [[routes]]\nmodel = \"assistant-cheap\"\ntargets = [{ provider = \"mini\", model = \"small\" }]\n\
         [[routes]]\nmodel = \"assistant-strong\"\ntargets = [{ provider = \"maxi\", model = \"large\" }]\n",
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let url = gateway.url("/v1/chat/completions");
    let ask = |model: &str, prompt: &str| json!({"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": prompt}]});
    let cost = |headers: &reqwest::header::HeaderMap| -> f64 {
        headers["x-switchyard-cost-usd"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // One llama request at groq, then the same again from the cache.
    let (_, headers, body) = post_json(&url, &ask("llama", "tell me a fact"), &[]).await;
    assert_eq!(headers["x-switchyard-provider"], "groq");
    let llama_cost = cost(&headers);
    let usage = &body["usage"];
    let (input, output) = (
        usage["prompt_tokens"].as_f64().unwrap(),
        usage["completion_tokens"].as_f64().unwrap(),
    );
    let at_fireworks = (input * 0.90 + output * 0.90) / 1e6;
    let (_, headers, _) = post_json(&url, &ask("llama", "tell me a fact"), &[]).await;
    assert_eq!(headers["x-switchyard-cache"], "HIT");
    // One easy prompt to the tiered route: served by the cheap tier.
    let (_, headers, body) = post_json(&url, &ask("assistant", "hello there"), &[]).await;
    assert_eq!(headers["x-switchyard-tier"], "assistant-cheap");
    let easy_cost = cost(&headers);
    let usage = &body["usage"];
    let at_maxi = (usage["prompt_tokens"].as_f64().unwrap() * 2.50
        + usage["completion_tokens"].as_f64().unwrap() * 10.00)
        / 1e6;

    gateway.state.budgets.flush().await.unwrap();
    let report = get_json(&gateway.url("/admin/cost/savings?from=-1h"), None).await;
    let total = &report["total"];
    let figure = |name: &str| total[name].as_f64().unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-8;
    assert!(
        close(figure("actual_usd"), llama_cost + easy_cost),
        "{report}"
    );
    assert!(
        close(figure("provider_switching_usd"), at_fireworks - llama_cost),
        "{report}"
    );
    assert!(
        close(figure("cache_usd"), at_fireworks),
        "a hit saves the baseline: {report}"
    );
    assert!(
        close(figure("tiering_usd"), at_maxi - easy_cost),
        "{report}"
    );
    assert!(close(
        figure("saved_usd"),
        figure("cache_usd") + figure("tiering_usd") + figure("provider_switching_usd")
    ));
    assert!(
        close(figure("baseline_usd"), 2.0 * at_fireworks + at_maxi),
        "{report}"
    );
    assert_eq!(total["requests"], 3);
    assert!(report["saved_share"].as_f64().unwrap() > 0.5, "{report}");
}

/// `switchyard cost simulate` replays the recorded request log under another config, offline.
#[tokio::test]
async fn the_simulator_replays_recorded_traffic_under_another_config() {
    let dear = mock("dear").await;
    let cheap = mock("cheap").await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let prices = "[[prices]]\nprovider = \"dear\"\nmodel = \"m\"\ninput = 2.0\noutput = 2.0\n\
                  [[prices]]\nprovider = \"cheap\"\nmodel = \"m\"\ninput = 1.0\noutput = 1.0\n";
    let recorded = format!(
        "{}{}{prices}[[routes]]\nmodel = \"r\"\ntargets = [{{ provider = \"dear\", model = \"m\" }}]\n",
        provider(&dear),
        provider(&cheap)
    );
    let gateway = TestGateway::start(&recorded, &[("SWITCHYARD_DATA_DIR", &data_dir)]).await;
    let mut spent = 0.0;
    for i in 0..5 {
        let (status, headers, _) = post_json(
            &gateway.url("/v1/chat/completions"),
            &json!({"model": "r", "messages": [{"role": "user", "content": format!("question {i}")}]}),
            &[],
        )
        .await;
        assert_eq!(status, 200);
        spent += headers["x-switchyard-cost-usd"]
            .to_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
    }
    gateway.stop().await;

    let alternative = dir.path().join("alternative.toml");
    std::fs::write(
        &alternative,
        format!(
            "{}{}{prices}[[routes]]\nmodel = \"r\"\nstrategy = \"least-cost\"\n\
             targets = [{{ provider = \"dear\", model = \"m\" }}, {{ provider = \"cheap\", model = \"m\" }}]\n",
            provider(&dear),
            provider(&cheap)
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["cost", "simulate", "--config"])
        .arg(&alternative)
        .args(["--data-dir", &data_dir, "--from", "1h", "--json"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["requests"], 5, "{report}");
    assert!(
        (report["recorded_usd"].as_f64().unwrap() - spent).abs() < 1e-9,
        "{report}"
    );
    assert!(
        (report["simulated_usd"].as_f64().unwrap() - spent / 2.0).abs() < 1e-9,
        "{report}"
    );
    assert_eq!(report["providers"]["cheap"]["simulated"], 5.0);
    assert_eq!(report["providers"]["dear"]["recorded"], 5.0);
    assert_eq!(report["truncated"], false);
}
