use std::sync::atomic::{AtomicU64, Ordering};

use switchyard_core::config::RawConfig;

use super::*;
use crate::analytics::sqlite::SqliteStore;

/// 2026-11-29T23:59:00Z.
const LATE: u64 = 1_795_996_740_000;

fn config(toml_text: &str) -> BudgetConfig {
    let raw: RawConfig = toml::from_str(toml_text).unwrap();
    let env: HashMap<String, String> = HashMap::new();
    switchyard_core::config::validate(&raw, &env)
        .unwrap()
        .budgets
}

const PROVIDERS: &str = r#"
[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"

[[routes]]
model = "strong"
targets = [{ provider = "p", model = "big" }]

[[routes]]
model = "cheap"
targets = [{ provider = "p", model = "small" }]
"#;

struct Fixture {
    budgets: Arc<Budgets>,
    clock: Arc<AtomicU64>,
    store: Store,
}

fn fixture_on(budgets_toml: &str, store: Store) -> Fixture {
    let clock = Arc::new(AtomicU64::new(LATE));
    let now = Arc::clone(&clock);
    let mut registry = Registry::default();
    let budgets = Budgets::new(
        &config(&format!("{PROVIDERS}\n{budgets_toml}")),
        store.clone(),
        None,
        Duration::from_millis(100),
        Duration::from_secs(60),
        BudgetMetrics::register(&mut registry),
        Arc::new(move || now.load(Ordering::SeqCst)),
    )
    .unwrap();
    Fixture {
        budgets,
        clock,
        store,
    }
}

fn fixture(budgets_toml: &str) -> Fixture {
    fixture_on(
        budgets_toml,
        Store::Sqlite(Arc::new(SqliteStore::open(None).unwrap())),
    )
}

fn members<'a>(key: &'a str, team: Option<&'a str>, route: &'a str) -> Members<'a> {
    Members {
        key,
        team,
        route,
        model: "big",
        provider: "p",
    }
}

fn spender<'a>(key: &'a str, team: Option<&'a str>) -> Spender<'a> {
    Spender {
        key,
        team,
        own: None,
    }
}

async fn reserve(f: &Fixture, key: &str, usd: f64) -> Result<Option<Hold>, GatewayError> {
    f.budgets
        .reserve(&spender(key, None), &members(key, None, "strong"), usd)
        .await
}

fn spend_key(key: &str, time_ms: u64) -> SpendKey {
    SpendKey {
        bucket_ms: crate::analytics::spend::bucket(time_ms),
        key: key.to_owned(),
        team: String::new(),
        route: "strong".to_owned(),
        model: "big".to_owned(),
        provider: "p".to_owned(),
    }
}

fn totals(usd: f64) -> SpendTotals {
    SpendTotals {
        cost_nanos: to_nanos(usd),
        requests: 1,
        ..SpendTotals::default()
    }
}

#[tokio::test]
async fn a_reservation_over_the_limit_is_refused_by_name_and_room_returns_on_settling() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "org"
scope = "global"
amount_usd = 1.0
period = "daily"
"#,
    );
    let first = reserve(&f, "k1", 0.6).await.unwrap().unwrap();
    let refused = reserve(&f, "k2", 0.5).await.unwrap_err();
    assert_eq!(refused.kind, ErrorKind::QuotaExceeded);
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.code.as_deref(), Some("insufficient_quota"));
    assert!(
        refused.message.contains("Budget `org`"),
        "{}",
        refused.message
    );
    assert!(
        refused.message.contains("$0.600000 held"),
        "{}",
        refused.message
    );
    assert!(
        refused.retry_after.is_some(),
        "a daily budget says when it resets"
    );
    first.settle(0.1);
    let second = reserve(&f, "k2", 0.5).await.unwrap().unwrap();
    drop(second); // a failed attempt: released, nothing spent
    assert!(reserve(&f, "k2", 0.9).await.unwrap().is_some());
}

#[tokio::test]
async fn the_period_turns_at_local_midnight_on_the_clock() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "daily"
scope = "key"
amount_usd = 1.0
period = "daily"
"#,
    );
    reserve(&f, "k", 1.0).await.unwrap().unwrap().settle(1.0);
    assert!(reserve(&f, "k", 0.01).await.is_err(), "spent for today");
    assert!(
        reserve(&f, "other", 0.5).await.unwrap().is_some(),
        "a key budget is per key"
    );
    f.clock.store(LATE + 59_000, Ordering::SeqCst); // 23:59:59
    assert!(reserve(&f, "k", 0.01).await.is_err());
    f.clock.store(LATE + 60_000, Ordering::SeqCst); // midnight
    assert!(reserve(&f, "k", 0.99).await.unwrap().is_some(), "a new day");
}

#[tokio::test]
async fn a_restart_starts_the_period_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let budgets_toml = r#"
[[budgets.limits]]
name = "monthly"
scope = "key"
amount_usd = 1.0
"#;
    {
        let store = Store::Sqlite(Arc::new(SqliteStore::open(Some(dir.path())).unwrap()));
        let f = fixture_on(budgets_toml, store);
        let hold = reserve(&f, "k", 0.9).await.unwrap().unwrap();
        hold.settle(0.8);
        f.budgets.record(spend_key("k", LATE), &totals(0.8));
        f.budgets.flush().await.unwrap();
    }
    let store = Store::Sqlite(Arc::new(SqliteStore::open(Some(dir.path())).unwrap()));
    let f = fixture_on(budgets_toml, store);
    let refused = reserve(&f, "k", 0.3).await.unwrap_err();
    assert!(
        refused.message.contains("$0.800000 spent"),
        "{}",
        refused.message
    );
    assert!(reserve(&f, "k", 0.2).await.unwrap().is_some());
}

#[tokio::test]
async fn unflushed_spend_counts_when_a_period_is_first_seen() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "monthly"
scope = "key"
amount_usd = 1.0
"#,
    );
    // Spend recorded before any budget counted this key (e.g. before the budget existed).
    f.budgets.record(spend_key("k", LATE), &totals(0.95));
    assert!(reserve(&f, "k", 0.1).await.is_err());
    let ledger = f
        .store
        .spent(Some(SpendColumn::Key), "k", 0, u64::MAX / 2)
        .await
        .unwrap();
    assert_eq!(ledger, to_nanos(0.95), "flushed on the way");
}

#[tokio::test]
async fn soft_thresholds_fire_once_each_on_the_way_up() {
    let f = fixture(
        r#"
[budgets]
thresholds = [0.5, 0.8]

[[budgets.limits]]
name = "team-budget"
scope = "team"
amount_usd = 10.0
"#,
    );
    let budgets = Arc::clone(&f.budgets);
    let ask = |usd| {
        let budgets = Arc::clone(&budgets);
        async move {
            budgets
                .reserve(
                    &spender("k", Some("t")),
                    &members("k", Some("t"), "strong"),
                    usd,
                )
                .await
                .unwrap()
                .unwrap()
        }
    };
    ask(4.0).await.settle(4.0);
    assert!(f.budgets.events().is_empty());
    ask(1.5).await.settle(1.5);
    let events = f.budgets.events();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].threshold, events[0].member.as_str()), (0.5, "t"));
    assert_eq!(events[0].kind, BudgetEventKind::Threshold);
    assert_eq!(events[0].forecast_usd, None);
    ask(0.1).await.settle(0.1);
    assert_eq!(f.budgets.events().len(), 1, "no repeat below the next mark");
    ask(2.5).await.settle(2.5);
    assert_eq!(f.budgets.events().len(), 2);
    assert_eq!(f.budgets.events()[1].threshold, 0.8);
}

#[tokio::test]
async fn budgets_cover_only_their_members_and_keys_carry_their_own() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "research"
scope = "team"
only = ["research"]
amount_usd = 0.5
"#,
    );
    let research = Spender {
        key: "k1",
        team: Some("research"),
        own: None,
    };
    let sales = Spender {
        key: "k2",
        team: Some("sales"),
        own: None,
    };
    fn of<'a>(spender: &Spender<'a>) -> Members<'a> {
        members(spender.key, spender.team, "strong")
    }
    assert!(
        f.budgets
            .reserve(&research, &of(&research), 0.6)
            .await
            .is_err()
    );
    assert!(
        f.budgets
            .reserve(&sales, &of(&sales), 0.6)
            .await
            .unwrap()
            .is_none(),
        "no budget covers sales"
    );
    let capped = Spender {
        key: "k3",
        team: None,
        own: Some((0.25, Period::Total)),
    };
    let refused = f
        .budgets
        .reserve(&capped, &of(&capped), 0.3)
        .await
        .unwrap_err();
    assert!(
        refused.message.contains("Budget `key-budget` of key `k3`"),
        "{}",
        refused.message
    );
    assert!(refused.retry_after.is_none(), "a total budget never resets");
}

#[tokio::test]
async fn an_exhausted_budget_refuses_even_requests_of_unknown_price() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "zero"
scope = "global"
amount_usd = 0.0
"#,
    );
    assert!(reserve(&f, "k", 0.0).await.is_err());
}

#[tokio::test]
async fn a_downgrade_budget_sends_requests_to_the_cheaper_route_once_it_cannot_afford_them() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "soft"
scope = "route"
only = ["strong"]
amount_usd = 1.0
action = "downgrade"
downgrade_to = "cheap"
"#,
    );
    let who = spender("k", None);
    assert_eq!(
        f.budgets.downgrade(&who, "strong", 0.5).await.unwrap(),
        None
    );
    // It only counts: the reservation is never refused.
    reserve(&f, "k", 0.7).await.unwrap().unwrap().settle(0.7);
    let downgrade = f.budgets.downgrade(&who, "strong", 0.5).await.unwrap();
    assert_eq!(
        downgrade,
        Some(Downgrade {
            budget: "soft".to_owned(),
            route: "cheap".to_owned()
        })
    );
    assert_eq!(f.budgets.downgrade(&who, "cheap", 0.5).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_hold_more_than_the_limit() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "org"
scope = "global"
amount_usd = 1.0
"#,
    );
    let budgets = Arc::clone(&f.budgets);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let budgets = Arc::clone(&budgets);
            tokio::spawn(async move {
                let key = format!("k{i}");
                budgets
                    .reserve(&spender(&key, None), &members(&key, None, "strong"), 0.1)
                    .await
            })
        })
        .collect();
    let mut held = Vec::new();
    for task in tasks {
        if let Ok(Some(hold)) = task.await.unwrap() {
            held.push(hold);
        }
    }
    assert_eq!(held.len(), 10, "exactly the limit's worth is held");
    for hold in held {
        hold.settle(0.1);
    }
    assert!(reserve(&f, "late", 0.0).await.is_err(), "spent in full");
}

/// 2026-11-29T12:00:00Z.
const NOON: u64 = LATE - (11 * 3_600 + 59 * 60) * 1_000;

/// Spends `usd` as `key` in every quarter hour of `[from, to)`.
fn spend_steadily(f: &Fixture, key: &str, from: u64, to: u64, usd: f64) {
    for time in (from..to).step_by(crate::analytics::spend::BUCKET_MS as usize) {
        f.budgets.record(spend_key(key, time), &totals(usd));
    }
}

#[tokio::test]
async fn a_forecast_past_the_amount_is_reported_once_per_member_and_period() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "daily"
scope = "key"
amount_usd = 60.0
period = "daily"

[[budgets.limits]]
name = "lifetime"
scope = "global"
amount_usd = 1.0
period = "total"
"#,
    );
    f.clock.store(NOON, Ordering::SeqCst);
    let midnight = NOON - 12 * 3_600_000;
    // `k` spends $1 a quarter hour from midnight: $48 by noon, at about $4 an hour.
    spend_steadily(&f, "k", midnight, NOON, 1.0);
    f.budgets.record(spend_key("small", midnight), &totals(0.1));
    f.budgets.flush().await.unwrap();

    let events = f.budgets.forecast_round(&[]).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.kind, BudgetEventKind::Forecast);
    assert_eq!(
        (event.budget.as_str(), event.member.as_str()),
        ("daily", "k")
    );
    assert_eq!(event.period_start_ms, midnight);
    assert!((event.spent_usd - 48.0).abs() < 1e-9);
    // Twelve hours at $4 an hour, read over a day's history of which half was quiet:
    // 4 (1 - 2^-4) / (1 - 2^-8) an hour.
    let rate = 4.0 * (1.0 - 2f64.powi(-4)) / (1.0 - 2f64.powi(-8));
    let expected = 48.0 + rate * 12.0;
    assert!(
        (event.forecast_usd.unwrap() - expected).abs() < 1e-6,
        "{event:?}"
    );
    assert_eq!(
        f.budgets.events().len(),
        1,
        "among the recent events; the total budget has no forecast though spent past"
    );
    let json = serde_json::to_value(event).unwrap();
    assert_eq!(json["kind"], "forecast");

    // A minute later: still past, not reported again.
    f.clock.store(NOON + 60_000, Ordering::SeqCst);
    assert!(f.budgets.forecast_round(&[]).await.unwrap().is_empty());
    // Six quiet hours bring the forecast under the amount (48 + 0.94 × 6)...
    f.clock.store(NOON + 6 * 3_600_000, Ordering::SeqCst);
    let snapshot = f.budgets.snapshot(&[]).await.unwrap();
    let k = &snapshot.budgets[0].members[0];
    assert_eq!(k.member, "k");
    assert!(k.forecast_usd.unwrap() < 60.0, "{k:?}");
    assert!(f.budgets.forecast_round(&[]).await.unwrap().is_empty());
    // ... and a burst takes it past again: the same period, so still no second event.
    spend_steadily(
        &f,
        "k",
        NOON + 6 * 3_600_000 - 3_600_000,
        NOON + 6 * 3_600_000,
        2.0,
    );
    f.budgets.flush().await.unwrap();
    let snapshot = f.budgets.snapshot(&[]).await.unwrap();
    assert!(snapshot.budgets[0].members[0].forecast_usd.unwrap() >= 60.0);
    assert!(f.budgets.forecast_round(&[]).await.unwrap().is_empty());

    // A new day is a new period: spending at that pace again is reported again.
    let tomorrow = midnight + 24 * 3_600_000;
    f.clock.store(tomorrow + 12 * 3_600_000, Ordering::SeqCst);
    spend_steadily(&f, "k", tomorrow, tomorrow + 12 * 3_600_000, 1.0);
    f.budgets.flush().await.unwrap();
    let events = f.budgets.forecast_round(&[]).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].period_start_ms, tomorrow);
}

#[tokio::test]
async fn the_snapshot_shows_each_members_rate_and_forecast_and_keys_their_own() {
    let f = fixture(
        r#"
[[budgets.limits]]
name = "teams"
scope = "team"
amount_usd = 100.0
period = "daily"

[[budgets.limits]]
name = "org"
scope = "global"
amount_usd = 1000.0
period = "daily"
"#,
    );
    f.clock.store(NOON, Ordering::SeqCst);
    let midnight = NOON - 12 * 3_600_000;
    let before = f.budgets.snapshot(&[]).await.unwrap();
    assert!(before.budgets[0].members.is_empty());
    let everyone = &before.budgets[1].members;
    assert_eq!(everyone.len(), 1, "the global member, spend or not");
    assert_eq!(
        (everyone[0].member.as_str(), everyone[0].forecast_usd),
        ("*", Some(0.0))
    );
    // A steady dollar a quarter hour for a day: $4 an hour.
    for time in
        (midnight - 12 * 3_600_000..NOON).step_by(crate::analytics::spend::BUCKET_MS as usize)
    {
        let mut cell = spend_key("k", time);
        cell.team = "research".to_owned();
        f.budgets.record(cell, &totals(1.0));
    }
    let key = Arc::new(switchyard_core::keys::VirtualKey {
        id: "k".to_owned(),
        hash: [0; 32],
        prefix: "sk-sy-k".to_owned(),
        settings: switchyard_core::keys::KeySettings {
            name: "k".to_owned(),
            budget_usd: Some(50.0),
            budget_period: Some(Period::Daily),
            enabled: true,
            ..Default::default()
        },
        created_at_ms: 0,
        updated_at_ms: 0,
        revoked_at_ms: None,
    });
    let snapshot = f.budgets.snapshot(&[key]).await.unwrap();
    let research = &snapshot.budgets[0].members[0];
    assert_eq!(research.member, "research");
    assert!((research.spent_usd - 48.0).abs() < 1e-9);
    assert!(
        (research.rate_usd_per_hour - 4.0).abs() < 1e-9,
        "{research:?}"
    );
    assert!((research.forecast_usd.unwrap() - 96.0).abs() < 1e-6);
    let everyone = &snapshot.budgets[1].members[0];
    assert!((everyone.forecast_usd.unwrap() - 96.0).abs() < 1e-6);
    let own = &snapshot.keys[0];
    assert!((own.forecast_usd.unwrap() - 96.0).abs() < 1e-6, "{own:?}");
    assert!((own.rate_usd_per_hour - 4.0).abs() < 1e-9);
}
