//! Budgets and the spend ledger over real sockets: a key over its budget gets OpenAI's
//! `insufficient_quota` naming the budget; concurrent requests near a limit never overspend,
//! on one instance and on two sharing the real Redis (with the ledger in the real Postgres);
//! a downgrade budget moves traffic to its cheaper route; streams settle to their cost and a
//! client that disconnects mid-stream settles to what was produced; the ledger survives a
//! restart; `/admin/spend` and `/admin/budgets` answer from it, with each member's spend
//! rate and forecast; two instances sharing Redis report a forecast past a budget once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{TestGateway, client, get_json, post_json};
use serde_json::{Value, json};
use switchyard_testkit::mock::{Behavior, MockHandle, MockProvider};

const MASTER: &str = "sk-master-for-budget-tests";
const REDIS: &str = "redis://127.0.0.1:6379/0";

/// $1000 per million tokens: a token costs a tenth of a cent, so figures are easy to read.
fn config(mock: &MockHandle, extra: &str) -> String {
    format!(
        "[server]\nmaster_key_env = \"TEST_MASTER\"\n\
         [[providers]]\nname = \"alpha\"\nkind = \"openai\"\nbase_url = \"{}/v1\"\n\
         models = [\"mock-*\"]\n\
         [[prices]]\nprovider = \"alpha\"\nmodel = \"mock-big\"\ninput = 1000.0\noutput = 1000.0\n\
         [[prices]]\nprovider = \"alpha\"\nmodel = \"mock-small\"\ninput = 10.0\noutput = 10.0\n\
         [[routes]]\nmodel = \"strong\"\ntargets = [{{ provider = \"alpha\", model = \"mock-big\" }}]\n\
         [[routes]]\nmodel = \"cheap\"\ntargets = [{{ provider = \"alpha\", model = \"mock-small\" }}]\n\
         {extra}",
        mock.base_url()
    )
}

async fn mock() -> MockHandle {
    MockProvider::builder().name("alpha").spawn().await.unwrap()
}

async fn gateway(text: &str, data_dir: Option<&str>) -> TestGateway {
    let mut env = vec![("TEST_MASTER", MASTER)];
    if let Some(dir) = data_dir {
        env.push(("SWITCHYARD_DATA_DIR", dir));
    }
    TestGateway::start(text, &env).await
}

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 20,
           "messages": [{"role": "user", "content": "hello there"}]})
}

async fn ask(
    gateway: &TestGateway,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let auth = format!("Bearer {key}");
    post_json(
        &gateway.url("/v1/chat/completions"),
        body,
        &[("authorization", auth.as_str())],
    )
    .await
}

fn cost(headers: &reqwest::header::HeaderMap) -> f64 {
    headers["x-switchyard-cost-usd"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn create_key(gateway: &TestGateway, settings: Value) -> (String, String) {
    common::create_key(gateway, MASTER, settings).await
}

async fn spend(gateway: &TestGateway, query: &str) -> Value {
    get_json(&gateway.url(&format!("/admin/spend?{query}")), Some(MASTER)).await
}

fn line<'a>(report: &'a Value, member: &str) -> &'a Value {
    report["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|line| line["member"] == member)
        .unwrap_or_else(|| panic!("no line for {member}: {report}"))
}

#[tokio::test]
async fn a_key_over_its_budget_is_refused_with_insufficient_quota_naming_the_budget() {
    let mock = mock().await;
    let gateway = gateway(&config(&mock, ""), None).await;
    let (id, secret) = create_key(
        &gateway,
        json!({"name": "capped", "team": "research", "budget_usd": 0.05, "budget_period": "daily"}),
    )
    .await;
    let mut spent = 0.0;
    let mut refused = None;
    for _ in 0..20 {
        let (status, headers, body) = ask(&gateway, &secret, &chat("strong")).await;
        if status == 200 {
            spent += cost(&headers);
        } else {
            refused = Some((status, headers, body));
            break;
        }
    }
    let (status, headers, body) = refused.expect("the budget ran out");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota");
    assert_eq!(body["error"]["code"], "insufficient_quota");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`key-budget`") && message.contains(&id),
        "{message}"
    );
    assert!(
        headers.get("retry-after").is_some(),
        "a daily budget resets"
    );
    // Refused once the worst case of the next request (its prompt estimate and 20 output
    // tokens, 0.045 here) no longer fits: the budget is never passed.
    assert!(
        spent > 0.0 && spent + 0.045 > 0.05 && spent <= 0.05,
        "spent {spent}"
    );
    // The master key has no budget of its own.
    assert_eq!(ask(&gateway, MASTER, &chat("strong")).await.0, 200);

    let by_key = spend(&gateway, "group_by=key&from=-1h").await;
    let mine = line(&by_key, &id);
    assert!(
        (mine["cost_usd"].as_f64().unwrap() - spent).abs() < 1e-6,
        "{by_key}"
    );
    let by_team = spend(&gateway, "group_by=team").await;
    assert!((line(&by_team, "research")["cost_usd"].as_f64().unwrap() - spent).abs() < 1e-6);
    let budgets = get_json(&gateway.url("/admin/budgets"), Some(MASTER)).await;
    let key_budget = &budgets["keys"][0];
    assert_eq!(key_budget["id"], id.as_str());
    assert!(
        (key_budget["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-6,
        "{budgets}"
    );

    // The admin API's auth: no key is 401, a virtual key is 403.
    let anonymous = client()
        .get(gateway.url("/admin/spend?group_by=key"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let virtual_key = client()
        .get(gateway.url("/admin/budgets"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(virtual_key.status(), 403);
    let bad = spend(&gateway, "group_by=color").await;
    assert_eq!(bad["error"]["param"], "group_by", "{bad}");
}

/// Fires `count` requests at once, spread over `gateways`; returns the statuses and the sum
/// of the answered ones' costs.
async fn burst(gateways: &[&TestGateway], count: usize) -> (Vec<u16>, f64) {
    let mut tasks = Vec::new();
    for i in 0..count {
        let url = gateways[i % gateways.len()].url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let (status, headers, _) = post_json(
                &url,
                &chat("strong"),
                &[("authorization", &format!("Bearer {MASTER}"))],
            )
            .await;
            (status, if status == 200 { cost(&headers) } else { 0.0 })
        }));
    }
    let mut statuses = Vec::new();
    let mut total = 0.0;
    for task in tasks {
        let (status, cost) = task.await.unwrap();
        statuses.push(status);
        total += cost;
    }
    (statuses, total)
}

/// Sends requests one at a time, alternating over `gateways`, until one is refused; returns
/// what the answered ones cost.
async fn until_refused(gateways: &[&TestGateway]) -> f64 {
    let mut total = 0.0;
    for i in 0..200 {
        let (status, headers, body) =
            ask(gateways[i % gateways.len()], MASTER, &chat("strong")).await;
        if status == 429 {
            assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
            return total;
        }
        assert_eq!(status, 200, "{body}");
        total += cost(&headers);
    }
    panic!("never refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_near_the_limit_never_overspend() {
    let mock = mock().await;
    mock.set_behavior(Behavior::latency(30));
    let gateway = gateway(
        &config(
            &mock,
            "[[budgets.limits]]\nname = \"org\"\nscope = \"global\"\namount_usd = 0.2\n",
        ),
        None,
    )
    .await;
    let (statuses, total) = burst(&[&gateway], 40).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        admitted >= 3,
        "reservations make room for some: {statuses:?}"
    );
    assert!(admitted < 40, "and refuse the rest");
    // Then one at a time up to the limit: the spend ends within one reservation (0.045) of it,
    // never past it.
    let total = total + until_refused(&[&gateway]).await;
    assert!(total <= 0.2 + 1e-9 && total > 0.2 - 0.045, "spent {total}");
    let report = spend(&gateway, "group_by=route").await;
    assert!(
        (report["total"]["cost_usd"].as_f64().unwrap() - total).abs() < 1e-6,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_budget_in_redis_and_the_ledger_in_postgres() {
    let mock = mock().await;
    mock.set_behavior(Behavior::latency(30));
    let db = common::TestDb::new("switchyard_test_budgets").await;
    let url = db.url.clone();
    // A budget name of this run's own, so earlier runs' Redis counters do not count.
    let name = format!("shared-{:x}", fastrand::u64(..));
    let text = config(
        &mock,
        &format!(
            "[storage]\nredis_url = \"{REDIS}\"\npostgres_url = \"{url}\"\n\
             [[budgets.limits]]\nname = \"{name}\"\nscope = \"global\"\namount_usd = 0.2\n"
        ),
    );
    let a = gateway(&text, None).await;
    let b = gateway(&text, None).await;
    assert_eq!(a.state.budgets.store_kind(), "redis");
    let (statuses, total) = burst(&[&a, &b], 40).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert!((3..40).contains(&admitted), "{statuses:?}");
    let total = total + until_refused(&[&a, &b]).await;
    assert!(
        total <= 0.2 + 1e-9 && total > 0.2 - 0.045,
        "two instances spent {total}"
    );
    let refused = ask(&b, MASTER, &chat("strong")).await;
    assert_eq!(refused.0, 429, "{}", refused.2);
    assert!(
        refused.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&name)
    );

    // Both instances' spend is in the one ledger, whichever is asked.
    a.state.budgets.flush().await.unwrap();
    let report = spend(&b, "group_by=provider").await;
    assert!(
        (report["total"]["cost_usd"].as_f64().unwrap() - total).abs() < 1e-6,
        "{report}"
    );

    // A third instance starting now counts from Redis, not from zero.
    let c = gateway(&text, None).await;
    assert_eq!(ask(&c, MASTER, &chat("strong")).await.0, 429);
    for instance in [a, b, c] {
        instance.stop().await;
    }
    db.finish().await;
}

#[tokio::test]
async fn a_downgrade_budget_moves_traffic_to_the_cheaper_route() {
    let mock = mock().await;
    let gateway = gateway(
        &config(
            &mock,
            "[[budgets.limits]]\nname = \"soft\"\nscope = \"route\"\nonly = [\"strong\"]\n\
             amount_usd = 0.05\naction = \"downgrade\"\ndowngrade_to = \"cheap\"\n",
        ),
        None,
    )
    .await;
    let mut models = Vec::new();
    for _ in 0..12 {
        let (status, headers, _) = ask(&gateway, MASTER, &chat("strong")).await;
        assert_eq!(status, 200);
        models.push(headers["x-switchyard-model"].to_str().unwrap().to_owned());
        if let Some(budget) = headers.get("x-switchyard-budget-downgrade") {
            assert_eq!(budget, "soft");
            assert_eq!(headers["x-switchyard-route"], "cheap");
        }
    }
    assert_eq!(models[0], "mock-big");
    assert_eq!(models.last().unwrap(), "mock-small", "{models:?}");
    let report = spend(&gateway, "group_by=route").await;
    assert!(line(&report, "strong")["cost_usd"].as_f64().unwrap() <= 0.05 + 1e-9);
    assert!(line(&report, "cheap")["requests"].as_i64().unwrap() > 0);
}

async fn stream(gateway: &TestGateway, key: &str) -> reqwest::Response {
    client()
        .post(gateway.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(
            json!({"model": "strong", "stream": true, "max_tokens": 20,
                   "messages": [{"role": "user", "content": "stream some words please"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn streams_settle_to_their_cost_and_a_disconnect_to_what_was_produced() {
    let mock = mock().await;
    let gateway = gateway(&config(&mock, ""), None).await;
    let (id, secret) = create_key(
        &gateway,
        json!({"name": "streamer", "budget_usd": 1.0, "budget_period": "total"}),
    )
    .await;
    let text = stream(&gateway, &secret).await.text().await.unwrap();
    assert!(text.contains("[DONE]"));
    let rows = common::logged_requests(&gateway, Some(MASTER), 1).await;
    let streamed = rows[0]["cost_usd"].as_f64().unwrap();
    assert!(streamed > 0.0);

    // Cut the next one after its first chunk: it settles to the estimate of what it produced.
    mock.set_behavior(Behavior {
        chunk_delay_ms: 200,
        ..Behavior::default()
    });
    let mut response = stream(&gateway, &secret).await;
    response.chunk().await.unwrap().unwrap();
    drop(response);
    let rows = common::logged_requests(&gateway, Some(MASTER), 2).await;
    assert_eq!(rows[0]["error_class"], "client_closed", "{rows:?}");

    let spent = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let report = spend(&gateway, "group_by=key").await;
            let mine = line(&report, &id);
            if mine["requests"] == 2 {
                return mine.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let cut = spent["cost_usd"].as_f64().unwrap() - streamed;
    assert!(cut > 0.0, "a cut stream is not free: {spent}");
    assert_eq!(
        spent["unpriced_requests"], 0,
        "its estimate was priced: {spent}"
    );
    // Its reservation was released: the rest of the budget is all there.
    let budgets = get_json(&gateway.url("/admin/budgets"), Some(MASTER)).await;
    let used = budgets["keys"][0]["spent_usd"].as_f64().unwrap();
    assert!(
        (used - spent["cost_usd"].as_f64().unwrap()).abs() < 1e-6,
        "{budgets}"
    );
}

#[tokio::test]
async fn the_ledger_and_the_periods_spend_survive_a_restart() {
    let mock = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let text = config(
        &mock,
        "[[budgets.limits]]\nname = \"monthly\"\nscope = \"global\"\namount_usd = 0.05\n",
    );
    let first = gateway(&text, Some(&data_dir)).await;
    let mut spent = 0.0;
    loop {
        let (status, headers, _) = ask(&first, MASTER, &chat("strong")).await;
        if status != 200 {
            break;
        }
        spent += cost(&headers);
    }
    first.stop().await;

    let second = gateway(&text, Some(&data_dir)).await;
    let report = spend(&second, "group_by=model").await;
    assert!((line(&report, "mock-big")["cost_usd"].as_f64().unwrap() - spent).abs() < 1e-6);
    let (status, _, body) = ask(&second, MASTER, &chat("strong")).await;
    assert_eq!(status, 429, "the period's spend came back: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`monthly`")
    );
}

#[tokio::test]
async fn a_teams_keys_share_its_limits_and_its_budget() {
    let mock = mock().await;
    let gateway = gateway(
        &config(
            &mock,
            "[[rate_limits.limits]]\nname = \"team-rpm\"\nscope = \"team\"\nrequests = 3\nper = \"1h\"\n\
             [[budgets.limits]]\nname = \"research-budget\"\nscope = \"team\"\nonly = [\"research\"]\n\
             amount_usd = 1.0\n",
        ),
        None,
    )
    .await;
    let (_, first) = create_key(&gateway, json!({"name": "a", "team": "research"})).await;
    let (_, second) = create_key(&gateway, json!({"name": "b", "team": "research"})).await;
    let (_, loner) = create_key(&gateway, json!({"name": "c"})).await;
    for key in [&first, &second, &first] {
        assert_eq!(ask(&gateway, key, &chat("strong")).await.0, 200);
    }
    let (status, _, body) = ask(&gateway, &second, &chat("strong")).await;
    assert_eq!(
        status, 429,
        "the team's third request used its limit: {body}"
    );
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(
        ask(&gateway, &loner, &chat("strong")).await.0,
        200,
        "no team, no team limit"
    );

    let budgets = get_json(&gateway.url("/admin/budgets"), Some(MASTER)).await;
    let research = &budgets["budgets"][0];
    assert_eq!(research["name"], "research-budget");
    assert_eq!(research["members"][0]["member"], "research", "{budgets}");
    let report = spend(&gateway, "group_by=team").await;
    let shared = line(&report, "research");
    assert_eq!(shared["requests"], 3, "{report}");
    assert!(
        (research["members"][0]["spent_usd"].as_f64().unwrap()
            - shared["cost_usd"].as_f64().unwrap())
        .abs()
            < 1e-9
    );
}

#[tokio::test]
async fn an_unreachable_redis_admits_or_refuses_as_configured() {
    let mock = mock().await;
    for (mode, expected) in [("fail_open", 200), ("fail_closed", 503)] {
        let gateway = gateway(
            &config(
                &mock,
                &format!(
                    "[storage]\nredis_url = \"redis://127.0.0.1:1/0\"\n\
                     [budgets]\non_store_error = \"{mode}\"\n\
                     [[budgets.limits]]\nname = \"org\"\nscope = \"global\"\namount_usd = 1.0\n"
                ),
            ),
            None,
        )
        .await;
        let (status, _, body) = ask(&gateway, MASTER, &chat("strong")).await;
        assert_eq!(status, expected, "{mode}: {body}");
        if expected == 503 {
            assert_eq!(body["error"]["code"], "budget_store_unavailable", "{body}");
        }
        let metrics = client()
            .get(gateway.url("/metrics"))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("switchyard_budget_store_errors_total 1"),
            "{mode}: {metrics}"
        );
    }
}

#[tokio::test]
async fn admin_budgets_shows_each_members_rate_and_forecast() {
    let mock = mock().await;
    let gateway = gateway(
        &config(
            &mock,
            "[[budgets.limits]]\nname = \"team-daily\"\nscope = \"team\"\namount_usd = 100.0\n\
             period = \"daily\"\n\
             [[budgets.limits]]\nname = \"lifetime\"\nscope = \"global\"\namount_usd = 100.0\n\
             period = \"total\"\n",
        ),
        None,
    )
    .await;
    let (id, secret) = create_key(
        &gateway,
        json!({"name": "k", "team": "research", "budget_usd": 10.0, "budget_period": "monthly"}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(ask(&gateway, &secret, &chat("strong")).await.0, 200);
    }
    let budgets = get_json(&gateway.url("/admin/budgets"), Some(MASTER)).await;
    let research = &budgets["budgets"][0]["members"][0];
    assert_eq!(research["member"], "research", "{budgets}");
    let spent = research["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0, "{budgets}");
    // Spend just now projects past itself for the rest of the day.
    assert!(
        research["rate_usd_per_hour"].as_f64().unwrap() > 0.0,
        "{budgets}"
    );
    assert!(
        research["forecast_usd"].as_f64().unwrap() >= spent,
        "{budgets}"
    );
    let lifetime = &budgets["budgets"][1]["members"][0];
    assert_eq!(lifetime["member"], "*");
    assert!(
        lifetime["forecast_usd"].is_null(),
        "a total budget has no end to forecast: {budgets}"
    );
    let own = &budgets["keys"][0];
    assert_eq!(own["id"], id.as_str());
    assert!(own["forecast_usd"].as_f64().unwrap() >= own["spent_usd"].as_f64().unwrap());
    assert!(
        own["rate_usd_per_hour"].as_f64().unwrap() > 0.0,
        "{budgets}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_report_a_forecast_once() {
    let db = common::TestDb::new("switchyard_test_budget_forecasts").await;
    let mock = mock().await;
    // A budget name of this run's own, so earlier runs' marks in Redis do not count.
    let name = format!("forecast-{:x}", fastrand::u64(..));
    let text = config(
        &mock,
        &format!(
            "[storage]\nredis_url = \"{REDIS}\"\npostgres_url = \"{}\"\n\
             [[budgets.limits]]\nname = \"{name}\"\nscope = \"global\"\namount_usd = 0.5\n\
             period = \"daily\"\n",
            db.url
        ),
    );
    let a = gateway(&text, None).await;
    let b = gateway(&text, None).await;
    // A dollar spent now: past the amount already, so past it by any forecast.
    a.state.budgets.record(
        switchyard::analytics::spend::SpendKey {
            bucket_ms: switchyard::analytics::spend::bucket(now_ms()),
            key: "k".to_owned(),
            team: String::new(),
            route: "strong".to_owned(),
            model: "mock-big".to_owned(),
            provider: "alpha".to_owned(),
        },
        &switchyard::analytics::spend::SpendTotals {
            cost_nanos: 1_000_000_000,
            requests: 1,
            ..Default::default()
        },
    );
    a.state.budgets.flush().await.unwrap();
    for instance in [&a, &b, &a, &b] {
        instance.state.budgets.forecast_round(&[]).await.unwrap();
    }
    // Each instance's start-up round may have run meanwhile too; between them, one event.
    let forecasts: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|instance| instance.state.budgets.events())
        .filter(|event| event.budget == name)
        .collect();
    assert_eq!(forecasts.len(), 1, "{forecasts:?}");
    assert!(forecasts[0].forecast_usd.unwrap() >= 1.0);
    let series = format!("switchyard_budget_forecast_events_total{{budget=\"{name}\"}} 1");
    let mut counted = 0;
    for instance in [&a, &b] {
        let metrics = client()
            .get(instance.url("/metrics"))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        counted += usize::from(metrics.contains(&series));
    }
    assert_eq!(counted, 1, "counted where it was reported");
    let shown = get_json(&b.url("/admin/budgets"), Some(MASTER)).await;
    let events = shown["events"].as_array().unwrap();
    assert!(
        events.is_empty() || events[0]["kind"] == "forecast",
        "{shown}"
    );
    for instance in [a, b] {
        instance.stop().await;
    }
    db.finish().await;
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}
