//! Quality tiers over real sockets: a tiered route sends easy prompts to its cheap tier and
//! hard ones (code, tools, long prompts) to its strong tier, saying which and why; the client
//! can hint a tier; feedback on answers is filed per route and tier, and a cheap tier whose
//! feedback falls below the route's `min_quality` loses its traffic to the strong tier.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{TestGateway, get_json, post_json};
use serde_json::{Value, json};
use switchyard_testkit::mock::{MockHandle, MockProvider};

async fn setup() -> (Vec<MockHandle>, TestGateway) {
    let mini = MockProvider::builder().name("mini").spawn().await.unwrap();
    let maxi = MockProvider::builder().name("maxi").spawn().await.unwrap();
    let text = format!(
        "[[providers]]\nname = \"mini\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = []\n\
         [[providers]]\nname = \"maxi\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\nmodels = []\n\
         [[routes]]\nmodel = \"assistant\"\ntiers = [\"assistant-cheap\", \"assistant-strong\"]\n\
         classifier = {{ max_prompt_tokens = 200, min_quality = 0.5 }}\n\
         [[routes]]\nmodel = \"assistant-cheap\"\ntargets = [{{ provider = \"mini\", model = \"small\" }}]\n\
         [[routes]]\nmodel = \"assistant-strong\"\ntargets = [{{ provider = \"maxi\", model = \"large\" }}]\n",
        mini.base_url(),
        maxi.base_url()
    );
    (vec![mini, maxi], TestGateway::start(&text, &[]).await)
}

async fn ask(
    gateway: &TestGateway,
    prompt: &str,
    hint: Option<&str>,
) -> (u16, String, String, String, Value) {
    let mut headers = Vec::new();
    if let Some(hint) = hint {
        headers.push(("x-switchyard-tier", hint));
    }
    let (status, headers, body) = post_json(
        &gateway.url("/v1/chat/completions"),
        &json!({"model": "assistant", "messages": [{"role": "user", "content": prompt}]}),
        &headers,
    )
    .await;
    let header = |name: &str| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (
        status,
        header("x-switchyard-tier"),
        header("x-switchyard-tier-reason"),
        header("x-request-id"),
        body,
    )
}

async fn rate(gateway: &TestGateway, request_id: &str, score: f64) -> (u16, Value) {
    let (status, _, body) = post_json(
        &gateway.url("/v1/feedback"),
        &json!({"request_id": request_id, "score": score}),
        &[],
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn easy_prompts_go_cheap_and_hard_ones_strong_with_the_reason() {
    let (_mocks, gateway) = setup().await;
    let (status, tier, reason, _, body) =
        ask(&gateway, "What is the capital of France?", None).await;
    assert_eq!(
        (status, tier.as_str(), reason.as_str()),
        (200, "assistant-cheap", "easy"),
        "{body}"
    );
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("mini says")
    );

    let code = "Why does this fail?\n```python\nprint(1/0)\n```";
    let (_, tier, reason, _, body) = ask(&gateway, code, None).await;
    assert_eq!(
        (tier.as_str(), reason.as_str()),
        ("assistant-strong", "code")
    );
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("maxi says")
    );

    let long = "please summarise this ".repeat(60);
    assert_eq!(ask(&gateway, &long, None).await.2, "long prompt");

    let (_, tier, reason, _, _) = ask(&gateway, "hello", Some("strong")).await;
    assert_eq!(
        (tier.as_str(), reason.as_str()),
        ("assistant-strong", "hint")
    );
    let (status, _, _, _, body) = ask(&gateway, "hello", Some("premium")).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "x-switchyard-tier", "{body}");
}

#[tokio::test]
async fn poor_feedback_on_the_cheap_tier_moves_traffic_to_the_strong_one() {
    let (_mocks, gateway) = setup().await;
    let (status, body) = rate(&gateway, "no-such-request", 1.0).await;
    assert_eq!(status, 404, "{body}");
    let (_, _, _, id, _) = ask(&gateway, "hi", None).await;
    assert_eq!(
        rate(&gateway, &id, 1.5).await.0,
        400,
        "a score is from 0 to 1"
    );
    let (status, filed) = rate(&gateway, &id, 0.1).await;
    assert_eq!(status, 200, "{filed}");
    assert_eq!(
        (
            filed["route"].as_str(),
            filed["tier"].as_str(),
            filed["model"].as_str()
        ),
        (Some("assistant"), Some("assistant-cheap"), Some("small"))
    );
    // Nineteen more poor scores: twenty is enough evidence.
    for i in 0..19 {
        let (_, tier, _, id, _) = ask(&gateway, &format!("question {i}"), None).await;
        assert_eq!(tier, "assistant-cheap");
        assert_eq!(rate(&gateway, &id, 0.2).await.0, 200);
    }
    let (_, tier, reason, _, _) = ask(&gateway, "another easy one", None).await;
    assert_eq!(
        (tier.as_str(), reason.as_str()),
        ("assistant-strong", "cheap tier below min_quality")
    );
    let quality = get_json(&gateway.url("/admin/quality"), None).await;
    let cheap = quality["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["tier"] == "assistant-cheap")
        .unwrap();
    assert_eq!(cheap["scores"], 20, "{quality}");
    assert!((cheap["mean"].as_f64().unwrap() - (0.1 + 19.0 * 0.2) / 20.0).abs() < 1e-9);
    // The scores are stored too, per route, tier and model.
    let stored = &quality["stored"][0];
    assert_eq!(
        (
            stored["route"].as_str(),
            stored["tier"].as_str(),
            stored["model"].as_str()
        ),
        (Some("assistant"), Some("assistant-cheap"), Some("small")),
        "{quality}"
    );
    assert_eq!(stored["scores"], 20);
    assert!((stored["mean"].as_f64().unwrap() - (0.1 + 19.0 * 0.2) / 20.0).abs() < 1e-9);
}
