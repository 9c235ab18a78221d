//! Cost-aware routing over real sockets: `least-cost` sends an open-weight model to the
//! cheapest of the providers serving it (prices from `[[prices]]`, input and output apart),
//! and a route's latency objective moves traffic off a cheap provider once it turns slow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestGateway, post_json};
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
