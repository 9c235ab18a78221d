//! The cost of every request over real sockets: `x-switchyard-cost-usd` on answers, the cost
//! in the request log for JSON and streamed answers alike, a cache hit costing 0 and
//! recording what it saved, and a model without a price recorded as unknown (header,
//! request log, `/metrics`), never as zero.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestGateway, client, get_text, post_json};
use serde_json::{Value, json};
use switchyard_testkit::mock::{MockHandle, MockProvider};

async fn setup() -> (MockHandle, TestGateway) {
    let mock = MockProvider::builder().name("alpha").spawn().await.unwrap();
    let text = format!(
        "[cache]\nenabled = true\n\
         [[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n\
         [[prices]]\nprovider = \"alpha\"\nmodel = \"mock-priced\"\ninput = 2.0\noutput = 8.0\n",
        mock.base_url()
    );
    (mock, TestGateway::start(&text, &[]).await)
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

async fn logged(gateway: &TestGateway, count: usize) -> Vec<Value> {
    common::logged_requests(gateway, None, count).await
}

fn expected_cost(usage: &Value) -> f64 {
    (usage["prompt_tokens"].as_f64().unwrap() * 2.0
        + usage["completion_tokens"].as_f64().unwrap() * 8.0)
        / 1e6
}

#[tokio::test]
async fn answers_carry_their_cost_and_hits_record_what_they_saved() {
    let (_mock, gateway) = setup().await;
    let url = gateway.url("/v1/chat/completions");
    let body = chat("mock-priced", "what does this cost");
    let (status, headers, answer) = post_json(&url, &body, &[]).await;
    assert_eq!(status, 200);
    let cost = expected_cost(&answer["usage"]);
    assert!(cost > 0.0);
    let header: f64 = headers["x-switchyard-cost-usd"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((header - cost).abs() < 1e-9, "{header} vs {cost}");

    let (_, headers, _) = post_json(&url, &body, &[]).await;
    assert_eq!(headers["x-switchyard-cache"], "HIT");
    assert_eq!(headers["x-switchyard-cost-usd"], "0");

    // A stream is priced too (it has no cost header: its headers leave before its usage).
    let response = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(
            json!({"model": "mock-priced", "stream": true,
                   "messages": [{"role": "user", "content": "stream the cost"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("x-switchyard-cost-usd").is_none());
    response.text().await.unwrap();

    let rows = logged(&gateway, 3).await;
    let by_cache = |cache: &str, stream: bool| {
        rows.iter()
            .find(|r| r["cache"] == cache && r["stream"] == stream)
            .unwrap_or_else(|| panic!("no {cache} row: {rows:?}"))
            .clone()
    };
    let miss = by_cache("miss", false);
    assert!(
        (miss["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{miss}"
    );
    assert!(miss["saved_usd"].is_null());
    let hit = by_cache("hit", false);
    assert_eq!(hit["cost_usd"], 0.0);
    assert!(
        (hit["saved_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{hit}"
    );
    let streamed = by_cache("miss", true);
    let tokens_in = streamed["tokens_in"].as_f64().unwrap();
    let tokens_out = streamed["tokens_out"].as_f64().unwrap();
    assert!(tokens_out > 0.0);
    let stream_cost = (tokens_in * 2.0 + tokens_out * 8.0) / 1e6;
    assert!((streamed["cost_usd"].as_f64().unwrap() - stream_cost).abs() < 1e-12);

    let metrics = get_text(&gateway.url("/metrics")).await;
    assert!(metrics.contains("switchyard_cost_usd_total{"), "{metrics}");
    assert!(metrics.contains("switchyard_cache_saved_usd_total{"));
}

#[tokio::test]
async fn a_model_without_a_price_is_unknown_not_free() {
    let (_mock, gateway) = setup().await;
    let url = gateway.url("/v1/chat/completions");
    let (status, headers, _) = post_json(&url, &chat("mock-unpriced", "free?"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-cost-usd"], "unknown");
    let rows = logged(&gateway, 1).await;
    assert!(rows[0]["cost_usd"].is_null(), "{}", rows[0]);
    let metrics = get_text(&gateway.url("/metrics")).await;
    assert!(
        metrics.contains("switchyard_cost_unknown_requests_total{route=\"mock-unpriced\",provider=\"alpha\",model=\"mock-unpriced\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stream_abandoned_before_its_usage_has_an_unknown_cost_not_a_free_one() {
    let mock = MockProvider::builder()
        .name("alpha")
        .behavior(switchyard_testkit::mock::Behavior {
            chunk_delay_ms: 50,
            ..Default::default()
        })
        .spawn()
        .await
        .unwrap();
    let text = format!(
        "[[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = [\"mock-*\"]\n\
         [[prices]]\nprovider = \"alpha\"\nmodel = \"mock-priced\"\ninput = 2.0\noutput = 8.0\n",
        mock.base_url()
    );
    let gateway = TestGateway::start(&text, &[]).await;
    let mut response = client()
        .post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            json!({"model": "mock-priced", "stream": true,
                   "messages": [{"role": "user", "content": "a long answer I will not wait for"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let _first = response.chunk().await.unwrap();
    drop(response);
    let rows = logged(&gateway, 1).await;
    let row = &rows[0];
    assert_eq!(row["error_class"], "client_closed", "{row}");
    // OpenAI streams report usage last: what was produced is estimated (so token limits are
    // settled to it), and the cost is unknown rather than a guess or zero.
    assert!(row["cost_usd"].is_null(), "{row}");
    assert!(row["tokens_in"].as_u64().unwrap() > 0, "{row}");
}
