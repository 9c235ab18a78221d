//! The Telegram bot against the testkit's mock Bot API (which records every call and checks
//! message texts as Telegram does) and the mock LLM provider, through a real gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TestGateway, client, logged_requests};
use serde_json::{Value, json};
use switchyard::telegram::api::BotApi;
use switchyard::telegram::chat::Editor;
use switchyard::telegram_cli::{TelegramArgs, TelegramCommand};
use switchyard_core::config::Secret;
use switchyard_testkit::mock::{MockHandle, MockProvider};
use switchyard_testkit::telegram::{BOT_ID, BotApiHandle, BotCall, MockBotApi, html};

const TOKEN: &str = "123456:test-token";
const SECRET: &str = "webhook_secret-1";
const ADMIN: i64 = 1;

struct Setup {
    provider: MockHandle,
    api: BotApiHandle,
    gateway: TestGateway,
}

/// A gateway with one mock provider (route `assistant`, and `other`) and the bot pointed at
/// a mock Bot API; `telegram` is added to the `[telegram]` section, `extra` after it.
async fn setup(telegram: &str, extra: &str) -> Setup {
    setup_with_env(telegram, extra, &[]).await
}

async fn setup_with_env(telegram: &str, extra: &str, env: &[(&str, &str)]) -> Setup {
    let provider = MockProvider::builder().spawn().await.unwrap();
    let api = MockBotApi::spawn(TOKEN).await.unwrap();
    let toml = format!(
        r#"
[[providers]]
name = "mock"
kind = "openai"
base_url = "{}/v1"
api_key_env = "MOCK_KEY"
models = ["mock-*"]

[[routes]]
model = "assistant"
[[routes.targets]]
provider = "mock"
model = "mock-1"

[[routes]]
model = "other"
[[routes.targets]]
provider = "mock"
model = "mock-2"

[telegram]
models = ["assistant", "other"]
admins = [{ADMIN}]
{telegram}

{extra}
"#,
        provider.base_url()
    );
    let api_url = api.base_url();
    let mut vars = vec![
        ("MOCK_KEY", "k"),
        ("TELEGRAM_BOT_TOKEN", TOKEN),
        ("TELEGRAM_API_URL", api_url.as_str()),
        ("TELEGRAM_WEBHOOK_SECRET", SECRET),
    ];
    vars.extend_from_slice(env);
    let gateway = TestGateway::start(&toml, &vars).await;
    Setup {
        provider,
        api,
        gateway,
    }
}

/// A text message update from `user` in a private chat with them.
fn private(update_id: i64, user: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id * 10,
            "date": 1_700_000_000,
            "from": { "id": user, "is_bot": false, "first_name": "User" },
            "chat": { "id": user, "type": "private" },
            "text": text,
        }
    })
}

async fn post_update(setup: &Setup, secret: Option<&str>, update: &Value) -> u16 {
    let mut request = client()
        .post(setup.gateway.url("/telegram/webhook"))
        .header("content-type", "application/json")
        .body(update.to_string());
    if let Some(secret) = secret {
        request = request.header("x-telegram-bot-api-secret-token", secret);
    }
    request.send().await.unwrap().status().as_u16()
}

/// What a sent message shows (its HTML parsed, when it is HTML).
fn visible(call: &BotCall) -> String {
    if call.body["parse_mode"] == "HTML" {
        html::parse(call.text()).unwrap()
    } else {
        call.text().to_owned()
    }
}

/// Posts an update with the right secret and waits until the bot has sent `messages`
/// messages in all; what they show.
async fn converse(setup: &Setup, update: Value, messages: usize) -> Vec<String> {
    assert_eq!(post_update(setup, Some(SECRET), &update).await, 200);
    setup
        .api
        .wait_for("sendMessage", messages)
        .await
        .iter()
        .map(visible)
        .collect()
}

#[tokio::test]
async fn an_update_gets_typing_then_the_answer() {
    let setup = setup("streaming = \"message\"", "").await;
    let sent = converse(&setup, private(1, 7, "hello there"), 1).await;
    assert_eq!(sent, ["mock says: hello there"]);
    let methods = setup.api.methods();
    let typing = methods.iter().position(|m| m == "sendChatAction").unwrap();
    let answer = methods.iter().position(|m| m == "sendMessage").unwrap();
    assert!(typing < answer, "{methods:?}");
    assert_eq!(
        setup.api.calls_to("sendChatAction")[0].body,
        json!({ "chat_id": 7, "action": "typing" })
    );
    let message = &setup.api.calls_to("sendMessage")[0];
    assert_eq!(message.body["chat_id"], 7);
    assert_eq!(message.body["parse_mode"], "HTML");
    assert_eq!(message.status, 200);
    // Through the chain: the provider saw the Telegram user, analytics logged the request.
    let asked = &setup.provider.requests()[0];
    assert_eq!(asked.body["user"], "tg:7");
    assert_eq!(asked.body["model"], "mock-1");
    let logged = logged_requests(&setup.gateway, None, 1).await;
    assert_eq!(logged[0]["route"], "assistant", "{}", logged[0]);
    assert_eq!(logged[0]["status"], 200);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_401_and_nothing_happens() {
    let setup = setup("", "").await;
    assert_eq!(
        post_update(&setup, Some("wrong"), &private(1, 7, "hi")).await,
        401
    );
    assert_eq!(post_update(&setup, None, &private(2, 7, "hi")).await, 401);
    assert_eq!(
        post_update(
            &setup,
            Some(&SECRET[..SECRET.len() - 1]),
            &private(3, 7, "hi")
        )
        .await,
        401,
        "a prefix of the secret is not the secret"
    );
    assert_eq!(setup.provider.calls(), 0, "no LLM call");
    assert!(setup.api.calls().is_empty(), "no Bot API call");
    setup.gateway.stop().await;
}

#[tokio::test]
async fn a_redelivered_update_is_handled_once() {
    let setup = setup("streaming = \"message\"", "").await;
    let update = private(5, 7, "once");
    assert_eq!(post_update(&setup, Some(SECRET), &update).await, 200);
    assert_eq!(post_update(&setup, Some(SECRET), &update).await, 200);
    // A later update, to know the first ones are done.
    let sent = converse(&setup, private(6, 7, "twice"), 2).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.contains(&"mock says: once".to_owned()));
    assert_eq!(setup.provider.calls(), 2);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn a_5000_character_answer_arrives_as_two_valid_messages() {
    let setup = setup("streaming = \"message\"\nmemory_tokens = 100000", "").await;
    let paragraph = "lorem ipsum dolor sit amet ".repeat(20);
    let prompt = [paragraph.trim(); 10].join("\n\n");
    assert!(prompt.len() > 5000);
    let sent = converse(&setup, private(1, 7, &prompt), 2).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    for call in setup.api.calls_to("sendMessage") {
        assert_eq!(call.status, 200, "{}", call.text());
        assert_eq!(call.body["parse_mode"], "HTML");
        assert!(call.text().chars().count() <= 4096);
    }
    let whole = sent.join("\n\n");
    assert_eq!(
        whole,
        format!("mock says: {prompt}"),
        "split on a paragraph"
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn markdown_edge_cases_always_give_valid_html() {
    let setup = setup("streaming = \"message\"", "").await;
    let edge = "**bold *nested `co*de` here** and *unbalanced and _under \
                2 < 3 & 4 > 1 snake_case_name `code with <tags> & amps`\n\
                ```rust\nfn main() { let x = a < b && c > d; }\n";
    converse(&setup, private(1, 7, edge), 1).await;
    let call = &setup.api.calls_to("sendMessage")[0];
    assert_eq!(call.status, 200, "Telegram took it: {}", call.body["text"]);
    assert_eq!(call.body["parse_mode"], "HTML");
    let html_text = call.body["text"].as_str().unwrap();
    assert!(html::parse(html_text).is_ok());
    assert!(
        html_text.contains("<b>bold *nested <code>co*de</code> here</b>"),
        "{html_text}"
    );
    assert!(html_text.contains("2 &lt; 3 &amp; 4 &gt; 1"), "{html_text}");
    assert!(
        html_text.contains("<pre><code class=\"language-rust\">"),
        "{html_text}"
    );
    assert!(html_text.contains("snake_case_name"), "{html_text}");
    setup.gateway.stop().await;
}

#[tokio::test]
async fn refused_entities_are_resent_as_plain_text() {
    let setup = setup("streaming = \"message\"", "").await;
    setup.api.push_failure(
        "sendMessage",
        400,
        json!({ "description": "Bad Request: can't parse entities: unsupported start tag" }),
    );
    converse(&setup, private(1, 7, "**hi**"), 2).await;
    let calls = setup.api.calls_to("sendMessage");
    assert_eq!(calls[0].status, 400);
    assert_eq!(calls[0].body["parse_mode"], "HTML");
    assert_eq!(calls[1].status, 200);
    assert!(calls[1].body.get("parse_mode").is_none(), "plain text");
    assert_eq!(calls[1].text(), "mock says: **hi**");
    setup.gateway.stop().await;
}

#[tokio::test(start_paused = true)]
async fn telegram_429_is_retried_after_retry_after() {
    let api = MockBotApi::spawn(TOKEN).await.unwrap();
    let client = BotApi::new(&api.base_url(), &Secret::new(TOKEN)).unwrap();
    api.push_failure("sendMessage", 429, json!({ "retry_after": 3 }));
    let sent = client.send_message(7, "hello", false, None).await.unwrap();
    assert_eq!(sent.chat.id, 7);
    let calls = api.calls_to("sendMessage");
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [429, 200]
    );
    assert!(calls[1].at.duration_since(calls[0].at) >= Duration::from_secs(3));
    // More 429s than the retries allowed: the error comes back.
    for _ in 0..4 {
        api.push_failure("sendChatAction", 429, json!({ "retry_after": 1 }));
    }
    let error = client.send_typing(7).await.unwrap_err();
    assert!(matches!(
        error,
        switchyard::telegram::api::BotApiError::Refused { code: 429, .. }
    ));
    assert_eq!(api.calls_to("sendChatAction").len(), 4);
}

#[tokio::test]
async fn a_429_while_answering_is_retried() {
    let setup = setup("streaming = \"message\"", "").await;
    setup
        .api
        .push_failure("sendMessage", 429, json!({ "retry_after": 1 }));
    converse(&setup, private(1, 7, "patience"), 2).await;
    let calls = setup.api.calls_to("sendMessage");
    assert_eq!(calls[0].status, 429);
    assert_eq!(calls[1].status, 200);
    assert_eq!(calls[1].text(), "mock says: patience");
    setup.gateway.stop().await;
}

#[tokio::test(start_paused = true)]
async fn streamed_answers_are_edited_at_most_once_per_interval() {
    let api = MockBotApi::spawn(TOKEN).await.unwrap();
    let client = BotApi::new(&api.base_url(), &Secret::new(TOKEN)).unwrap();
    let mut editor = Editor::new(&client, 7, None, Duration::from_secs(1));
    let mut text = String::new();
    // A token every 100 ms for 3.5 s.
    for n in 0..35 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text.push_str(&format!("w{n} "));
        editor.show(&text).await;
    }
    let calls: Vec<_> = api
        .calls()
        .into_iter()
        .filter(|c| c.method == "sendMessage" || c.method == "editMessageText")
        .collect();
    assert_eq!(calls[0].method, "sendMessage");
    assert!(
        (3..=5).contains(&calls.len()),
        "one message and an edit a second: {}",
        calls.len()
    );
    for pair in calls.windows(2) {
        assert!(pair[1].at.duration_since(pair[0].at) >= Duration::from_secs(1));
    }
    assert!(calls.iter().all(|c| c.status == 200));
    assert_eq!(editor.message(), Some(1));
}

#[tokio::test]
async fn streamed_answers_end_as_the_whole_answer_in_html() {
    let setup = setup("streaming = \"edits\"", "").await;
    assert_eq!(
        post_update(&setup, Some(SECRET), &private(1, 7, "stream *this*")).await,
        200
    );
    let done = setup
        .api
        .wait_until(|calls| {
            calls
                .iter()
                .any(|c| c.body["parse_mode"] == "HTML" && c.status == 200)
        })
        .await;
    assert!(done, "{:?}", setup.api.methods());
    let last = setup.api.calls().into_iter().next_back().unwrap();
    assert_eq!(last.text(), "mock says: stream <i>this</i>");
    assert_eq!(
        setup.api.calls_to("sendMessage").len(),
        1,
        "one message, edited"
    );
    assert!(setup.provider.requests()[0].body["stream"] == true);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn admin_commands_are_refused_to_others() {
    let setup = setup("", "").await;
    for (n, command) in [
        "/stats",
        "/providers",
        "/drain mock",
        "/enable mock",
        "/alerts",
    ]
    .iter()
    .enumerate()
    {
        let sent = converse(&setup, private(n as i64 + 1, 2, command), n + 1).await;
        assert!(
            sent[n].contains("for this bot's admins only"),
            "{command}: {}",
            sent[n]
        );
    }
    assert!(!setup.gateway.state.tracker.snapshot()[0].drained);
    // The admin may.
    let sent = converse(&setup, private(10, ADMIN, "/drain mock"), 6).await;
    assert!(sent[5].contains("drained"), "{}", sent[5]);
    assert!(setup.gateway.state.tracker.snapshot()[0].drained);
    let sent = converse(&setup, private(11, ADMIN, "/enable mock"), 7).await;
    assert!(sent[6].contains("back in rotation"), "{}", sent[6]);
    let sent = converse(&setup, private(12, ADMIN, "/stats"), 8).await;
    assert!(
        sent[7].contains("1h") && sent[7].contains("7d") && sent[7].contains("requests"),
        "{}",
        sent[7]
    );
    let sent = converse(&setup, private(13, ADMIN, "/providers"), 9).await;
    assert!(
        sent[8].contains("mock") && sent[8].contains("in rotation"),
        "{}",
        sent[8]
    );
    let sent = converse(&setup, private(14, ADMIN, "/alerts"), 10).await;
    assert!(sent[9].contains("not configured"), "{}", sent[9]);
    assert_eq!(setup.provider.calls(), 0);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn alerts_shows_the_configured_rules() {
    let setup = setup(
        "streaming = \"message\"",
        "[[alerts.rules]]\nname = \"mock-errors\"\nmetric = \"error_rate\"\nscope = \"provider\"\nthreshold = 0.5\n",
    )
    .await;
    let sent = converse(&setup, private(1, ADMIN, "/alerts"), 1).await;
    assert!(
        sent[0].contains("Alerts: 1 rules") && sent[0].contains("Nothing is firing"),
        "{}",
        sent[0]
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn polling_advances_the_offset() {
    let setup = setup(
        "mode = \"polling\"\npoll_timeout = \"1s\"\nstreaming = \"message\"",
        "",
    )
    .await;
    let unnumbered = |user: i64, text: &str| {
        let mut update = private(0, user, text);
        update.as_object_mut().unwrap().remove("update_id");
        update
    };
    let first = setup.api.push_update(unnumbered(7, "one"));
    let second = setup.api.push_update(unnumbered(8, "two"));
    let sent = setup.api.wait_for("sendMessage", 2).await;
    assert_eq!(sent.len(), 2);
    let confirmed = setup
        .api
        .wait_until(|calls| {
            calls
                .iter()
                .any(|c| c.method == "getUpdates" && c.body["offset"] == second + 1)
        })
        .await;
    assert!(confirmed, "{:?}", setup.api.calls_to("getUpdates"));
    let offsets: Vec<i64> = setup
        .api
        .calls_to("getUpdates")
        .iter()
        .map(|c| c.body["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert!(first < second);
    assert_eq!(setup.provider.calls(), 2, "each update once");
    // Webhooks are not taken in polling mode.
    assert_eq!(
        post_update(&setup, Some(SECRET), &private(9, 7, "x")).await,
        404
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn the_per_user_rate_limit_gets_a_friendly_message() {
    let setup = setup(
        "streaming = \"message\"",
        "[[rate_limits.limits]]\nname = \"per-user\"\nscope = \"user\"\nrequests = 1\nper = \"1h\"\n",
    )
    .await;
    let sent = converse(&setup, private(1, 7, "first"), 1).await;
    assert_eq!(sent[0], "mock says: first");
    let sent = converse(&setup, private(2, 7, "second"), 2).await;
    assert!(
        sent[1].starts_with("You are sending messages faster than this bot allows.")
            && sent[1].contains("You can continue in"),
        "{}",
        sent[1]
    );
    // Another Telegram user has a limit of their own.
    let sent = converse(&setup, private(3, 8, "third"), 3).await;
    assert_eq!(sent[2], "mock says: third");
    assert_eq!(setup.provider.calls(), 2);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn conversations_are_remembered_per_chat_and_reset() {
    let setup = setup("streaming = \"message\"", "").await;
    converse(&setup, private(1, 7, "my name is Ada"), 1).await;
    converse(&setup, private(2, 8, "unrelated"), 2).await;
    converse(&setup, private(3, 7, "what is my name"), 3).await;
    let messages = setup.provider.requests()[2].body["messages"].clone();
    assert_eq!(
        messages,
        json!([
            { "role": "user", "content": "my name is Ada" },
            { "role": "assistant", "content": "mock says: my name is Ada" },
            { "role": "user", "content": "what is my name" },
        ])
    );
    let sent = converse(&setup, private(4, 7, "/reset"), 4).await;
    assert!(sent[3].contains("forgotten"));
    converse(&setup, private(5, 7, "again"), 5).await;
    assert_eq!(
        setup.provider.requests()[3].body["messages"],
        json!([{ "role": "user", "content": "again" }])
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn model_switches_among_the_allowed_routes_and_usage_is_reported() {
    let setup = setup("streaming = \"message\"", "").await;
    let sent = converse(&setup, private(1, 7, "/model"), 1).await;
    assert!(
        sent[0].contains("assistant (current)") && sent[0].contains("other"),
        "{}",
        sent[0]
    );
    let sent = converse(&setup, private(2, 7, "/model gpt-5"), 2).await;
    assert!(
        sent[1].contains("not one of this bot's models"),
        "{}",
        sent[1]
    );
    let sent = converse(&setup, private(3, 7, "/model other"), 3).await;
    assert!(sent[2].contains("now uses other"), "{}", sent[2]);
    converse(&setup, private(4, 7, "hi"), 4).await;
    assert_eq!(setup.provider.requests()[0].body["model"], "mock-2");
    let sent = converse(&setup, private(5, 7, "/usage"), 5).await;
    assert!(sent[4].contains("Today (UTC): 1 requests"), "{}", sent[4]);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn groups_get_answers_only_to_mentions_replies_and_commands() {
    let setup = setup("streaming = \"message\"", "").await;
    let group = |id: i64, text: &str, reply_to_bot: bool| {
        let mut update = json!({
            "update_id": id,
            "message": {
                "message_id": id * 10, "date": 0,
                "from": { "id": 7, "is_bot": false, "first_name": "User" },
                "chat": { "id": -100, "type": "supergroup" },
                "text": text,
            }
        });
        if reply_to_bot {
            update["message"]["reply_to_message"] = json!({
                "message_id": 1, "date": 0, "chat": { "id": -100, "type": "supergroup" },
                "from": { "id": BOT_ID, "is_bot": true, "first_name": "Switchyard" },
            });
        }
        update
    };
    assert_eq!(
        post_update(&setup, Some(SECRET), &group(1, "chatter", false)).await,
        200
    );
    assert_eq!(
        post_update(&setup, Some(SECRET), &group(2, "/help@another_bot", false)).await,
        200
    );
    let sent = converse(&setup, group(3, "@switchyard_bot what's up", false), 1).await;
    assert_eq!(sent[0], "mock says: what's up");
    let reply = &setup.api.calls_to("sendMessage")[0];
    assert_eq!(reply.body["reply_parameters"]["message_id"], 30);
    let sent = converse(&setup, group(4, "and then?", true), 2).await;
    assert_eq!(sent[1], "mock says: and then?");
    let sent = converse(&setup, group(5, "/help@switchyard_bot", false), 3).await;
    assert!(sent[2].contains("/model"));
    assert_eq!(
        setup.provider.calls(),
        2,
        "chatter and the other bot's command ignored"
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn the_allowlist_keeps_others_out() {
    let setup = setup("streaming = \"message\"\nallowed_users = [7]", "").await;
    let sent = converse(&setup, private(1, 8, "let me in"), 1).await;
    assert_eq!(sent[0], "Sorry, this bot is private.");
    let sent = converse(&setup, private(2, 7, "hello"), 2).await;
    assert_eq!(sent[1], "mock says: hello");
    assert_eq!(setup.provider.calls(), 1);
    setup.gateway.stop().await;
}

#[tokio::test]
async fn the_per_user_daily_budget_says_when_to_come_back() {
    let setup = setup(
        "streaming = \"message\"\nuser_daily_budget_usd = 0.000001",
        "[[prices]]\nprovider = \"mock\"\nmodel = \"mock-1\"\ninput = 1000\noutput = 1000\n",
    )
    .await;
    converse(&setup, private(1, 7, "spend"), 1).await;
    let sent = converse(&setup, private(2, 7, "more"), 2).await;
    assert!(
        sent[1].contains("daily budget") && sent[1].contains("00:00 UTC"),
        "{}",
        sent[1]
    );
    assert_eq!(setup.provider.calls(), 1);
    setup.gateway.stop().await;
}

fn cli_args(api: &BotApiHandle, dir: &std::path::Path, command: TelegramCommand) -> TelegramArgs {
    TelegramArgs {
        command,
        token: Some(TOKEN.to_owned()),
        api_url: api.base_url(),
        data_dir: Some(dir.to_path_buf()),
        config: None,
        secret: None,
    }
}

#[tokio::test]
async fn the_cli_sets_the_webhook_with_a_stored_secret_the_gateway_checks() {
    let api = MockBotApi::spawn(TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = "https://gateway.example.com/telegram/webhook";
    let printed = switchyard::telegram_cli::execute(&cli_args(
        &api,
        dir.path(),
        TelegramCommand::SetWebhook {
            url: url.to_owned(),
            drop_pending_updates: false,
        },
    ))
    .await
    .unwrap();
    let secret = std::fs::read_to_string(dir.path().join("telegram-webhook-secret"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(secret.len(), 64);
    assert!(!printed.join("\n").contains(&secret), "never printed");
    let webhook = api.webhook().unwrap();
    assert_eq!(webhook["url"], url);
    assert_eq!(webhook["secret_token"], secret.as_str());
    assert_eq!(webhook["allowed_updates"], json!(["message"]));

    let info =
        switchyard::telegram_cli::execute(&cli_args(&api, dir.path(), TelegramCommand::Info))
            .await
            .unwrap()
            .join("\n");
    assert!(
        info.contains("@switchyard_bot") && info.contains(url),
        "{info}"
    );
    assert!(info.contains("allowed updates:  message"), "{info}");

    // A gateway on that data directory takes the stored secret.
    let provider = MockProvider::builder().spawn().await.unwrap();
    let toml = format!(
        "[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"K\"\nmodels = [\"mock-*\"]\n\
         [telegram]\nmodels = [\"mock-1\"]\nstreaming = \"message\"\n",
        provider.base_url()
    );
    let dir_text = dir.path().to_str().unwrap();
    let api_url = api.base_url();
    let gateway = TestGateway::start(
        &toml,
        &[
            ("K", "k"),
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_API_URL", &api_url),
            ("SWITCHYARD_DATA_DIR", dir_text),
        ],
    )
    .await;
    let post = |secret: String| {
        client()
            .post(gateway.url("/telegram/webhook"))
            .header("x-telegram-bot-api-secret-token", secret)
            .body(private(1, 7, "via webhook").to_string())
            .send()
    };
    assert_eq!(post("nope".into()).await.unwrap().status(), 401);
    assert_eq!(post(secret.clone()).await.unwrap().status(), 200);
    let sent = api.wait_for("sendMessage", 1).await;
    assert_eq!(sent[0].text(), "mock says: via webhook");
    gateway.stop().await;

    switchyard::telegram_cli::execute(&cli_args(&api, dir.path(), TelegramCommand::DeleteWebhook))
        .await
        .unwrap();
    assert!(api.webhook().is_none());
    let refused = switchyard::telegram_cli::execute(&cli_args(
        &api,
        dir.path(),
        TelegramCommand::SetWebhook {
            url: "http://insecure/telegram/webhook".into(),
            drop_pending_updates: false,
        },
    ))
    .await
    .unwrap_err();
    assert!(refused.contains("https://"), "{refused}");
}

#[tokio::test]
async fn webhook_mode_without_a_secret_does_not_start() {
    let raw = switchyard_core::config::parse_toml(
        "[[providers]]\nname = \"m\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"K\"\nmodels = [\"m-*\"]\n[telegram]\nmodels = [\"m-1\"]\n",
    )
    .unwrap();
    let env: std::collections::HashMap<String, String> = [
        ("K", "k"),
        ("TELEGRAM_BOT_TOKEN", TOKEN),
        ("SWITCHYARD_DATA_DIR", ":memory:"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let config = switchyard_core::config::validate(&raw, &env).unwrap();
    let error = switchyard::AppState::new(config).await.err().unwrap();
    assert!(error.contains("set-webhook"), "{error}");
}

#[tokio::test]
async fn errors_never_show_the_token() {
    // Nothing listens on port 1.
    let client = BotApi::new("http://127.0.0.1:1", &Secret::new(TOKEN)).unwrap();
    let error = client.get_me().await.unwrap_err().to_string();
    assert!(
        error.contains("getMe") && !error.contains("test-token"),
        "{error}"
    );
    assert!(!format!("{client:?}").contains("test-token"));
    let api = MockBotApi::spawn("another:token").await.unwrap();
    let client = BotApi::new(&api.base_url(), &Secret::new(TOKEN)).unwrap();
    let error = client.get_me().await.unwrap_err().to_string();
    assert!(
        error.contains("Unauthorized") && !error.contains("test-token"),
        "{error}"
    );
}

#[tokio::test]
async fn alerts_reach_the_admin_chats_through_the_bots_client() {
    // A Telegram notifier that names nothing sends with the bot's token, to the bot's Bot
    // API, to the admins' chats.
    let setup = setup(
        "",
        "[[alerts.notifiers]]\nname = \"admins\"\nkind = \"telegram\"\n",
    )
    .await;
    let answer = client()
        .post(setup.gateway.url("/admin/alerts/test"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{}", answer.text().await.unwrap());
    let sent = setup.api.wait_for("sendMessage", 1).await;
    assert_eq!(sent[0].body["chat_id"], ADMIN);
    assert!(!sent[0].text().is_empty());
    // A refusal is reported by the test endpoint (one attempt; real alerts are retried
    // after Telegram's `retry_after`, see the notifier's own tests).
    setup
        .api
        .push_failure("sendMessage", 429, json!({"retry_after": 1}));
    let answer = client()
        .post(setup.gateway.url("/admin/alerts/test"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer: Value = answer.parse().unwrap();
    let delivery = &answer["results"][0];
    assert_eq!(delivery["outcome"], "failed", "{answer}");
    assert!(
        delivery["error"].as_str().unwrap().contains("429"),
        "{answer}"
    );
    assert!(!answer.to_string().contains("test-token"), "{answer}");
    setup.gateway.stop().await;
}
