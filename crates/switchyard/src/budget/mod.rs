//! Stage 4: spending budgets, and the spend ledger they rest on.
//!
//! **Reserve, then settle.** Before each attempt, failover asks [`Budgets::reserve`] to hold
//! the attempt's largest possible cost (the prompt estimate plus the output limit, at the
//! target's price) in every budget the attempt falls under: the key's own, its team's, the
//! route's, the model's, the provider's, the global one. A budget that cannot afford it
//! refuses, and the target is skipped (another provider may be under its own budget); when
//! no target is left, the answer is 429 `insufficient_quota` naming the budget. When the
//! request ends, its [`Hold`] settles to the actual cost. Budgets with action `downgrade`
//! never refuse: [`Budgets::downgrade`] moves the request to the cheaper route before it is
//! planned, once the budget could not afford it.
//!
//! **The bound.** A request is admitted only if `spent + reserved + its reservation ≤
//! limit`, so however many run at once, the settled spend passes the limit only by what
//! admitted requests cost beyond their reservations: nothing when they set `max_tokens`
//! and the prompt estimate (a quarter of the body's bytes) holds. On several instances the
//! same check runs in one Redis script, so the bound is the same.
//!
//! **Counters.** In memory for one instance; in Redis when `storage.redis_url` is set. A
//! period's counter starts from the ledger, so a restart (or Redis losing its data) loses at
//! most what was not yet flushed.
//!
//! **The ledger.** Every request's cost is added to an in-memory buffer (one cell per
//! 15-minute bucket, key, team, route, model and provider) that a task writes to the
//! analytics store every flush interval, and at shutdown. A failed write keeps the buffer for
//! the next flush: spend is never dropped.
//!
//! **Forecasts** ([`forecast`]): each member's end-of-period spend projected from its recent
//! rate, read from the ledger, in `/admin/budgets` and as `forecast` events.

pub mod forecast;
pub mod redis;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use jiff::tz::TimeZone;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use switchyard_core::budget::{
    BudgetScope, Ledger, Members, NANOS_PER_USD, Period, Reservation, Window, crossed, to_nanos,
    to_usd, window,
};
use switchyard_core::config::budgets::KEY_BUDGET;
use switchyard_core::config::{BudgetAction, BudgetConfig, BudgetFailMode, BudgetRule};
use switchyard_core::{ErrorKind, GatewayError, Origin};

use self::redis::{RedisCounters, Reserved, Slot};
use crate::analytics::spend::{SpendColumn, SpendKey, SpendTotals, column_of};
use crate::analytics::store::{Store, StoreError};
use crate::context::Principal;

/// Budget events kept for the admin API.
const RECENT_EVENTS: usize = 200;

/// Tries at seeding a Redis period before giving up on a reservation.
const SEED_ROUNDS: usize = 3;

/// Who is spending: the principal's label, team and own budget.
#[derive(Debug, Clone, Copy)]
pub struct Spender<'a> {
    /// A key id, `master` or `anonymous`.
    pub key: &'a str,
    /// The key's team.
    pub team: Option<&'a str>,
    /// The key's own budget: USD per period.
    pub own: Option<(f64, Period)>,
}

impl<'a> Spender<'a> {
    /// The spender behind `principal`.
    pub fn of(principal: &'a Principal) -> Self {
        match principal {
            Principal::Key(key) => Spender {
                key: &key.id,
                team: key.settings.team.as_deref(),
                own: key
                    .settings
                    .budget_usd
                    .map(|usd| (usd, key.settings.budget_period.unwrap_or(Period::Monthly))),
            },
            Principal::Anonymous | Principal::MasterKey => Spender {
                key: principal.label(),
                team: None,
                own: None,
            },
        }
    }
}

/// A configured budget, ready for the request path.
struct Rule {
    config: BudgetRule,
    name: Arc<str>,
    thresholds: Arc<[f64]>,
    limit: i64,
    /// The current period, recomputed (calendar arithmetic in the time zone) only when the
    /// clock leaves it.
    current: Mutex<Window>,
}

impl Rule {
    /// A hold of `amount` for `member` in the current period; `enforced`: it may refuse.
    fn charge(&self, member: &str, amount: i64, now_ms: u64, enforced: bool) -> Charge {
        let window = self.window(now_ms);
        Charge {
            counter: CounterKey {
                budget: Arc::clone(&self.name),
                member: member.to_owned(),
                start_ms: window.start_ms,
            },
            scope: self.config.scope,
            period: self.config.period,
            window,
            amount,
            limit: self.limit,
            enforced,
            thresholds: Arc::clone(&self.thresholds),
        }
    }

    fn window(&self, now_ms: u64) -> Window {
        let mut current = lock(&self.current);
        let inside = current.start_ms <= now_ms && current.end_ms.is_none_or(|end| now_ms < end);
        if !inside {
            *current = window(self.config.period, &self.config.timezone, now_ms);
        }
        *current
    }
}

/// One budget a reservation is charged to.
#[derive(Debug, Clone)]
struct Charge {
    /// Budget, member and period start: the counter's key.
    counter: CounterKey,
    scope: BudgetScope,
    period: Period,
    window: Window,
    /// Nano-dollars held.
    amount: i64,
    /// The budget's amount.
    limit: i64,
    /// Refuses when over (`reject`); a `downgrade` budget only counts here.
    enforced: bool,
    thresholds: Arc<[f64]>,
}

impl Charge {
    fn counter(&self) -> &CounterKey {
        &self.counter
    }

    fn budget(&self) -> &Arc<str> {
        &self.counter.budget
    }

    fn member(&self) -> &str {
        &self.counter.member
    }

    fn redis_key(&self) -> String {
        redis::key(self.budget(), self.member(), self.window.start_ms)
    }

    /// The Redis keys live for the rest of the period and a day; a `total` one for ever.
    fn ttl_ms(&self, now_ms: u64) -> u64 {
        self.window
            .end_ms
            .map_or(0, |end| end.saturating_sub(now_ms) + 86_400_000)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CounterKey {
    budget: Arc<str>,
    member: String,
    start_ms: u64,
}

/// The in-memory counters, hashed with foldhash seeded per process (as the rate limiter's
/// are): the default SipHash cost more than the rest of a reservation in the benchmark.
type CounterMap = HashMap<CounterKey, Ledger, foldhash::fast::RandomState>;

enum Counters {
    Memory(Mutex<CounterMap>),
    Redis(RedisCounters),
}

/// Why a budget refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    budget: Arc<str>,
    scope: BudgetScope,
    member: String,
    period: Period,
    limit: i64,
    spent: i64,
    reserved: i64,
    resets_at_ms: Option<u64>,
}

/// A downgrade decided before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downgrade {
    /// The budget that could not afford the request.
    pub budget: String,
    /// The route to send it to instead.
    pub route: String,
}

/// What a budget event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetEventKind {
    /// The spend crossed a soft threshold (found when a request settles).
    Threshold,
    /// The forecast of the period's spend reached the amount (found by the forecaster, once
    /// per member and period).
    Forecast,
}

/// A budget event: a soft threshold crossed (the spend of a budget passed a share of its
/// amount), or the spend forecast to pass the amount by the end of the period.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetEvent {
    /// When, unix ms.
    pub time_ms: u64,
    /// `threshold` or `forecast`.
    pub kind: BudgetEventKind,
    /// The budget.
    pub budget: String,
    /// Its scope.
    pub scope: &'static str,
    /// The member whose spend crossed it.
    pub member: String,
    /// The share crossed (0.8 = 80 %); 1 for a forecast (the amount).
    pub threshold: f64,
    /// Spend after the request that crossed it (a forecast: spend so far), USD.
    pub spent_usd: f64,
    /// A forecast event's projected spend at the end of the period, USD.
    pub forecast_usd: Option<f64>,
    /// The budget's amount, USD.
    pub amount_usd: f64,
    /// Its period.
    pub period: Period,
    /// When the period started, unix ms.
    pub period_start_ms: u64,
}

/// The budgets' Prometheus series.
#[derive(Debug, Clone)]
pub struct BudgetMetrics {
    refusals: Family<BudgetLabels, Counter>,
    downgrades: Family<BudgetLabels, Counter>,
    thresholds: Family<ThresholdLabels, Counter>,
    forecasts: Family<BudgetLabels, Counter>,
    store_errors: Counter,
    ledger_pending: Gauge,
    ledger_write_failures: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThresholdLabels {
    budget: String,
    threshold: String,
}

impl BudgetMetrics {
    /// Registers the budget series.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = BudgetMetrics {
            refusals: Family::default(),
            downgrades: Family::default(),
            thresholds: Family::default(),
            forecasts: Family::default(),
            store_errors: Counter::default(),
            ledger_pending: Gauge::default(),
            ledger_write_failures: Counter::default(),
        };
        registry.register(
            "switchyard_budget_refusals",
            "Requests refused because a budget could not afford them",
            metrics.refusals.clone(),
        );
        registry.register(
            "switchyard_budget_downgrades",
            "Requests moved to a cheaper route by a budget",
            metrics.downgrades.clone(),
        );
        registry.register(
            "switchyard_budget_threshold_events",
            "Soft budget thresholds crossed",
            metrics.thresholds.clone(),
        );
        registry.register(
            "switchyard_budget_forecast_events",
            "Budget members whose forecast spend reached the amount (once per member and period)",
            metrics.forecasts.clone(),
        );
        registry.register(
            "switchyard_budget_store_errors",
            "Budget checks or settlements the shared store (Redis) or the ledger did not answer",
            metrics.store_errors.clone(),
        );
        registry.register(
            "switchyard_spend_ledger_pending_cells",
            "Spend ledger cells waiting for the next flush",
            metrics.ledger_pending.clone(),
        );
        registry.register(
            "switchyard_spend_ledger_write_failures",
            "Spend ledger flushes that failed (their cells are kept and written at the next)",
            metrics.ledger_write_failures.clone(),
        );
        metrics
    }
}

/// A Redis settlement, sent to the task that applies them.
struct Settlement {
    nonce: String,
    charges: Vec<Charge>,
    actual: i64,
}

/// The budgets of one gateway.
pub struct Budgets {
    rules: Vec<Rule>,
    timezone: TimeZone,
    thresholds: Arc<[f64]>,
    fail_mode: BudgetFailMode,
    store: Store,
    counters: Counters,
    pending: Mutex<HashMap<SpendKey, SpendTotals>>,
    /// Serialises flushes (the periodic one, shutdown and admin reads).
    flushing: tokio::sync::Mutex<()>,
    metrics: BudgetMetrics,
    recent: Mutex<VecDeque<BudgetEvent>>,
    /// The (budget, member, period) whose forecast was reported, with the period's end (to
    /// forget them after): once per period, however the forecast moves.
    forecasted: Mutex<HashMap<CounterKey, Option<u64>>>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    settlements: Option<tokio::sync::mpsc::UnboundedSender<Settlement>>,
    key_budget: Arc<str>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a store failure does to a request.
enum Failed {
    /// Admit without a reservation (fail open).
    Admit,
    /// Refuse with this error (fail closed).
    Refuse(GatewayError),
}

impl Budgets {
    /// Budgets from `config`, counted in Redis at `redis_url` (else in memory), with the
    /// ledger in `store`. A reservation in Redis outlives a crashed instance by at most
    /// `lease`. Must be called inside the tokio runtime when Redis is used.
    pub fn new(
        config: &BudgetConfig,
        store: Store,
        redis_url: Option<&str>,
        timeout: Duration,
        lease: Duration,
        metrics: BudgetMetrics,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Arc<Self>, String> {
        let rules = config
            .rules
            .iter()
            .map(|rule| Rule {
                name: Arc::from(rule.name.as_str()),
                thresholds: Arc::from(rule.thresholds.as_slice()),
                limit: to_nanos(rule.amount_usd),
                current: Mutex::new(Window {
                    start_ms: u64::MAX,
                    end_ms: Some(0),
                }),
                config: rule.clone(),
            })
            .collect();
        let (counters, receiver) = match redis_url {
            Some(url) => {
                let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                (
                    Counters::Redis(RedisCounters::new(url, timeout, lease)?),
                    Some((sender, receiver)),
                )
            }
            None => (Counters::Memory(Mutex::new(CounterMap::default())), None),
        };
        let (settlements, receiver) = match receiver {
            Some((sender, receiver)) => (Some(sender), Some(receiver)),
            None => (None, None),
        };
        let budgets = Arc::new(Budgets {
            rules,
            timezone: config.timezone.clone(),
            thresholds: Arc::from(config.thresholds.as_slice()),
            fail_mode: config.on_store_error,
            store,
            counters,
            pending: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
            metrics,
            recent: Mutex::new(VecDeque::new()),
            forecasted: Mutex::new(HashMap::new()),
            clock,
            settlements,
            key_budget: Arc::from(KEY_BUDGET),
        });
        if let Some(receiver) = receiver {
            tokio::spawn(apply_settlements(Arc::downgrade(&budgets), receiver));
        }
        Ok(budgets)
    }

    /// `memory` or `redis`.
    pub fn store_kind(&self) -> &'static str {
        match self.counters {
            Counters::Memory(_) => "memory",
            Counters::Redis(_) => "redis",
        }
    }

    /// Whether any budget may move requests to a cheaper route.
    pub fn downgrades(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| matches!(rule.config.action, BudgetAction::Downgrade(_)))
    }

    /// Whether any budget can apply to `spender`'s requests.
    pub fn applies_to(&self, spender: &Spender<'_>) -> bool {
        !self.rules.is_empty() || spender.own.is_some()
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The budgets an attempt is charged to, holding `amount` nano-dollars each.
    fn charges(
        &self,
        spender: &Spender<'_>,
        members: &Members<'_>,
        amount: i64,
        now_ms: u64,
    ) -> Vec<Charge> {
        // Every request holds something, so that an exhausted budget refuses even requests
        // whose price is unknown.
        let amount = amount.max(1);
        let mut charges = Vec::new();
        for rule in &self.rules {
            let Some(member) = members.of(rule.config.scope) else {
                continue;
            };
            if !rule.config.covers(member) {
                continue;
            }
            let enforced = rule.config.action == BudgetAction::Reject;
            charges.push(rule.charge(member, amount, now_ms, enforced));
        }
        if let Some((usd, period)) = spender.own {
            let window = window(period, &self.timezone, now_ms);
            charges.push(Charge {
                counter: CounterKey {
                    budget: Arc::clone(&self.key_budget),
                    member: spender.key.to_owned(),
                    start_ms: window.start_ms,
                },
                scope: BudgetScope::Key,
                period,
                window,
                amount,
                limit: to_nanos(usd),
                enforced: true,
                thresholds: Arc::clone(&self.thresholds),
            });
        }
        charges
    }

    /// The spend the ledger holds for a charge's budget, member and period.
    async fn ledger_spent(&self, charge: &Charge) -> Result<i64, StoreError> {
        let to = charge.window.end_ms.unwrap_or(u64::MAX / 2);
        let column = column_of(charge.scope);
        self.store
            .spent(column, charge.member(), charge.window.start_ms, to)
            .await
    }

    fn store_failed(&self, what: &str, error: &dyn std::fmt::Display) -> Failed {
        self.metrics.store_errors.inc();
        tracing::warn!(%error, "budgets: {what} failed");
        match self.fail_mode {
            BudgetFailMode::Open => Failed::Admit,
            BudgetFailMode::Closed => Failed::Refuse(
                GatewayError::new(
                    ErrorKind::Unavailable,
                    Origin::Gateway,
                    "Budgets cannot be checked right now (their store is unreachable and the \
                     gateway is set to fail closed)",
                )
                .with_code("budget_store_unavailable")
                .with_retry_after(Some(Duration::from_secs(1))),
            ),
        }
    }

    /// Holds `amount_usd` for an attempt in every budget it falls under. `Ok(None)`: no
    /// budget applies (or the store failed and the gateway fails open).
    pub async fn reserve(
        self: &Arc<Self>,
        spender: &Spender<'_>,
        members: &Members<'_>,
        amount_usd: f64,
    ) -> Result<Option<Hold>, GatewayError> {
        let now = self.now_ms();
        let charges = self.charges(spender, members, to_nanos(amount_usd), now);
        if charges.is_empty() {
            return Ok(None);
        }
        let outcome = match &self.counters {
            Counters::Memory(map) => self.reserve_in_memory(map, &charges).await,
            Counters::Redis(redis) => self.reserve_in_redis(redis, &charges, now).await,
        };
        match outcome {
            Ok(Ok(nonce)) => Ok(Some(Hold {
                budgets: Arc::clone(self),
                charges,
                nonce,
                settled: false,
            })),
            Ok(Err(refusal)) => {
                self.metrics
                    .refusals
                    .get_or_create(&BudgetLabels {
                        budget: refusal.budget.to_string(),
                    })
                    .inc();
                Err(refusal_error(&refusal, now))
            }
            Err(Failed::Admit) => Ok(None),
            Err(Failed::Refuse(error)) => Err(error),
        }
    }

    async fn reserve_in_memory(
        &self,
        map: &Mutex<CounterMap>,
        charges: &[Charge],
    ) -> Result<Result<String, Refusal>, Failed> {
        // Periods seen for the first time start from the ledger (read outside the lock).
        let missing: Vec<&Charge> = {
            let map = lock(map);
            charges
                .iter()
                .filter(|charge| !map.contains_key(charge.counter()))
                .collect()
        };
        if !missing.is_empty() {
            // This instance's own unflushed spend belongs in the starting figure too.
            if let Err(error) = self.flush().await {
                return Err(self.store_failed("writing the ledger", &error));
            }
        }
        for charge in missing {
            let spent = match self.ledger_spent(charge).await {
                Ok(spent) => spent,
                Err(error) => return Err(self.store_failed("reading the ledger", &error)),
            };
            lock(map)
                .entry(charge.counter().clone())
                .or_insert_with(|| Ledger::new(charge.window, spent));
        }
        let mut map = lock(map);
        let mut taken: Vec<&Charge> = Vec::with_capacity(charges.len());
        for charge in charges {
            // Pruned since the seeding only if its period ended meanwhile.
            if !map.contains_key(charge.counter()) {
                map.insert(charge.counter().clone(), Ledger::new(charge.window, 0));
            }
            let Some(ledger) = map.get_mut(charge.counter()) else {
                continue;
            };
            match ledger.reserve(charge.enforced.then_some(charge.limit), charge.amount) {
                Ok(_) => taken.push(charge),
                Err(over) => {
                    for done in taken {
                        if let Some(ledger) = map.get_mut(done.counter()) {
                            ledger.reserved = ledger.reserved.saturating_sub(done.amount).max(0);
                        }
                    }
                    return Ok(Err(refusal(charge, over.spent, over.reserved)));
                }
            }
        }
        Ok(Ok(String::new()))
    }

    async fn reserve_in_redis(
        &self,
        redis: &RedisCounters,
        charges: &[Charge],
        now: u64,
    ) -> Result<Result<String, Refusal>, Failed> {
        let nonce = nonce();
        let slots: Vec<Slot> = charges
            .iter()
            .map(|charge| Slot {
                key: charge.redis_key(),
                amount: charge.amount,
                limit: charge.enforced.then_some(charge.limit),
                ttl_ms: charge.ttl_ms(now),
            })
            .collect();
        for _ in 0..SEED_ROUNDS {
            match redis.reserve(&nonce, &slots).await {
                Ok(Reserved::Held) => return Ok(Ok(nonce)),
                Ok(Reserved::Refused {
                    index,
                    spent,
                    reserved,
                }) => {
                    let Some(charge) = charges.get(index) else {
                        return Err(self.store_failed("a reservation", &"a malformed reply"));
                    };
                    return Ok(Err(refusal(charge, spent, reserved)));
                }
                Ok(Reserved::Unseeded(indexes)) => {
                    for index in indexes {
                        let (Some(charge), Some(slot)) = (charges.get(index), slots.get(index))
                        else {
                            continue;
                        };
                        let spent = match self.ledger_spent(charge).await {
                            Ok(spent) => spent,
                            Err(error) => {
                                return Err(self.store_failed("reading the ledger", &error));
                            }
                        };
                        if let Err(error) = redis.seed(&slot.key, spent, slot.ttl_ms).await {
                            return Err(self.store_failed("seeding a budget in Redis", &error));
                        }
                    }
                }
                Err(error) => return Err(self.store_failed("a reservation in Redis", &error)),
            }
        }
        Err(self.store_failed("a reservation in Redis", &"its periods would not seed"))
    }

    /// The cheaper route to send a request to, when a `downgrade` budget it falls under
    /// (key, team, route or global scope) cannot afford `amount_usd` more.
    pub async fn downgrade(
        &self,
        spender: &Spender<'_>,
        route: &str,
        amount_usd: f64,
    ) -> Result<Option<Downgrade>, GatewayError> {
        let now = self.now_ms();
        let amount = to_nanos(amount_usd).max(1);
        for rule in &self.rules {
            let BudgetAction::Downgrade(cheaper) = &rule.config.action else {
                continue;
            };
            if cheaper == route {
                continue;
            }
            let member = match rule.config.scope {
                BudgetScope::Key => Some(spender.key),
                BudgetScope::Team => spender.team,
                BudgetScope::Route => Some(route),
                BudgetScope::Global => Some("*"),
                // Not known before planning; validation keeps them from downgrading.
                BudgetScope::Model | BudgetScope::Provider => None,
            };
            let Some(member) = member.filter(|member| rule.config.covers(member)) else {
                continue;
            };
            let charge = rule.charge(member, amount, now, false);
            let used = match self.used(&charge, now).await {
                Ok(used) => used,
                Err(error) => match self.store_failed("a budget check", &error) {
                    Failed::Admit => continue,
                    Failed::Refuse(error) => return Err(error),
                },
            };
            if used.saturating_add(amount) > rule.limit {
                self.metrics
                    .downgrades
                    .get_or_create(&BudgetLabels {
                        budget: rule.name.to_string(),
                    })
                    .inc();
                tracing::debug!(budget = %rule.name, from = route, to = %cheaper, "budget downgrade");
                return Ok(Some(Downgrade {
                    budget: rule.name.to_string(),
                    route: cheaper.clone(),
                }));
            }
        }
        Ok(None)
    }

    /// A charge's budget's spend plus reservations now.
    async fn used(&self, charge: &Charge, now: u64) -> Result<i64, String> {
        match &self.counters {
            Counters::Memory(map) => {
                let known = lock(map)
                    .get(charge.counter())
                    .map(|ledger| ledger.spent.saturating_add(ledger.reserved));
                match known {
                    Some(used) => Ok(used),
                    None => {
                        let spent = self
                            .ledger_spent(charge)
                            .await
                            .map_err(|error| error.to_string())?;
                        let mut map = lock(map);
                        let ledger = map
                            .entry(charge.counter().clone())
                            .or_insert_with(|| Ledger::new(charge.window, spent));
                        Ok(ledger.spent.saturating_add(ledger.reserved))
                    }
                }
            }
            Counters::Redis(redis) => {
                let key = charge.redis_key();
                let (seeded, spent, reserved) =
                    redis.peek(&key).await.map_err(|error| error.to_string())?;
                if seeded {
                    return Ok(spent.saturating_add(reserved));
                }
                let from_ledger = self
                    .ledger_spent(charge)
                    .await
                    .map_err(|error| error.to_string())?;
                redis
                    .seed(&key, from_ledger, charge.ttl_ms(now))
                    .await
                    .map_err(|error| error.to_string())?;
                Ok(from_ledger.max(spent).saturating_add(reserved))
            }
        }
    }

    /// Settles a hold: releases its reservations and spends `actual` nano-dollars.
    fn settle(&self, hold: &mut Hold, actual: i64) {
        let actual = actual.max(0);
        let charges = std::mem::take(&mut hold.charges);
        match &self.counters {
            Counters::Memory(map) => {
                let mut crossings = Vec::new();
                {
                    let mut map = lock(map);
                    for charge in &charges {
                        let Some(ledger) = map.get_mut(charge.counter()) else {
                            continue;
                        };
                        let reservation = Reservation {
                            amount: charge.amount,
                            window: charge.window,
                        };
                        if let Some((before, after)) = ledger.settle(reservation, actual) {
                            crossings.push((charge.clone(), before, after));
                        }
                    }
                }
                for (charge, before, after) in crossings {
                    self.thresholds(&charge, before, after);
                }
            }
            Counters::Redis(_) => {
                if let Some(sender) = &self.settlements {
                    // Unbounded: a settlement is never dropped; the task drains them as fast
                    // as Redis takes them.
                    let _ = sender.send(Settlement {
                        nonce: std::mem::take(&mut hold.nonce),
                        charges,
                        actual,
                    });
                }
            }
        }
    }

    /// Emits an event for each soft threshold that `before → after` crossed.
    fn thresholds(&self, charge: &Charge, before: i64, after: i64) {
        for threshold in crossed(&charge.thresholds, charge.limit, before, after) {
            let event = BudgetEvent {
                time_ms: self.now_ms(),
                kind: BudgetEventKind::Threshold,
                budget: charge.budget().to_string(),
                scope: charge.scope.as_str(),
                member: charge.member().to_owned(),
                threshold,
                spent_usd: to_usd(after),
                forecast_usd: None,
                amount_usd: to_usd(charge.limit),
                period: charge.period,
                period_start_ms: charge.window.start_ms,
            };
            tracing::warn!(
                budget = %event.budget,
                member = %event.member,
                threshold,
                spent_usd = event.spent_usd,
                amount_usd = event.amount_usd,
                "budget threshold crossed"
            );
            self.metrics
                .thresholds
                .get_or_create(&ThresholdLabels {
                    budget: event.budget.clone(),
                    threshold: format!("{threshold}"),
                })
                .inc();
            self.push_event(event);
        }
    }

    /// Keeps `event` among the recent ones.
    fn push_event(&self, event: BudgetEvent) {
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(event);
    }

    /// The most recent budget events, oldest first.
    pub fn events(&self) -> Vec<BudgetEvent> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// Adds a request's spend to the ledger buffer (written at the next flush).
    pub fn record(&self, key: SpendKey, totals: &SpendTotals) {
        let mut pending = lock(&self.pending);
        pending.entry(key).or_default().add(totals);
        self.metrics
            .ledger_pending
            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
    }

    /// Writes the buffered spend to the ledger. On failure the cells go back into the
    /// buffer (added to what came in meanwhile) for the next flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let _flushing = self.flushing.lock().await;
        let cells = std::mem::take(&mut *lock(&self.pending));
        if cells.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<(SpendKey, SpendTotals)> = cells.into_iter().collect();
        rows.sort_by(|a, b| {
            (
                a.0.bucket_ms,
                &a.0.key,
                &a.0.team,
                &a.0.route,
                &a.0.model,
                &a.0.provider,
            )
                .cmp(&(
                    b.0.bucket_ms,
                    &b.0.key,
                    &b.0.team,
                    &b.0.route,
                    &b.0.model,
                    &b.0.provider,
                ))
        });
        match self.store.write_spend(rows.clone()).await {
            Ok(()) => {
                self.metrics
                    .ledger_pending
                    .set(i64::try_from(lock(&self.pending).len()).unwrap_or(i64::MAX));
                Ok(())
            }
            Err(error) => {
                self.metrics.ledger_write_failures.inc();
                let mut pending = lock(&self.pending);
                for (key, totals) in rows {
                    pending.entry(key).or_default().add(&totals);
                }
                Err(error)
            }
        }
    }

    /// Forgets in-memory counters of periods that have ended.
    fn prune(&self) {
        if let Counters::Memory(map) = &self.counters {
            let now = self.now_ms();
            lock(map).retain(|_, ledger| ledger.window.end_ms.is_none_or(|end| end > now));
        }
    }

    /// Flushes the ledger every `interval` until the budgets are dropped.
    pub fn spawn_flusher(self: &Arc<Self>, interval: Duration) {
        self.spawn_rounds(
            interval,
            "could not write the spend ledger; keeping the spend for the next flush",
            "the spend ledger is being written again",
            |budgets| async move {
                let flushed = budgets.flush().await;
                budgets.prune();
                flushed
            },
        );
    }

    /// Runs `round` every `interval` (the first at once) until the budgets are dropped,
    /// warning once when rounds start failing and saying once when they work again.
    fn spawn_rounds<R, F>(
        self: &Arc<Self>,
        interval: Duration,
        failing_message: &'static str,
        recovered_message: &'static str,
        round: R,
    ) where
        R: Fn(Arc<Budgets>) -> F + Send + 'static,
        F: std::future::Future<Output = Result<(), StoreError>> + Send,
    {
        let budgets = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                ticker.tick().await;
                let Some(budgets) = budgets.upgrade() else {
                    return;
                };
                match round(budgets).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("{recovered_message}");
                    }
                    Ok(()) => {}
                    Err(error) if !failing => {
                        failing = true;
                        tracing::warn!(%error, "{failing_message}");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// The ledger's spend grouped by `column` over `[from_ms, to_ms)` (this instance's
    /// buffer flushed first).
    pub async fn report(
        &self,
        column: SpendColumn,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<crate::analytics::spend::SpendLine>, StoreError> {
        self.flush().await?;
        self.store.spend_report(column, from_ms, to_ms).await
    }

    /// The budgets and their current periods, for `GET /admin/budgets`: spend, rate and
    /// forecast per member from the ledger (this instance's buffer flushed first; others' lag
    /// by at most their flush interval), keys with their own budget included.
    pub async fn snapshot(
        &self,
        keys: &[Arc<switchyard_core::keys::VirtualKey>],
    ) -> Result<Snapshot, StoreError> {
        self.flush().await?;
        let now = self.now_ms();
        let mut budgets = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let forecasts = self.rule_forecasts(rule, now).await?;
            budgets.push(BudgetView {
                name: rule.name.to_string(),
                scope: rule.config.scope.as_str(),
                only: rule.config.only.clone(),
                amount_usd: rule.config.amount_usd,
                period: rule.config.period,
                timezone: rule.config.timezone.iana_name().unwrap_or("UTC").to_owned(),
                action: match &rule.config.action {
                    BudgetAction::Reject => "reject",
                    BudgetAction::Downgrade(_) => "downgrade",
                },
                downgrade_to: match &rule.config.action {
                    BudgetAction::Reject => None,
                    BudgetAction::Downgrade(route) => Some(route.clone()),
                },
                thresholds: rule.config.thresholds.clone(),
                period_start_ms: forecasts.window.start_ms,
                period_end_ms: forecasts.window.end_ms,
                members: forecasts
                    .members
                    .into_iter()
                    .map(|(member, forecast)| MemberView {
                        member,
                        spent_usd: to_usd(forecast.spent),
                        used: if rule.limit > 0 {
                            forecast.spent as f64 / rule.limit as f64
                        } else {
                            1.0
                        },
                        rate_usd_per_hour: forecast.rate_per_hour / NANOS_PER_USD,
                        forecast_usd: forecast.projected.map(to_usd),
                    })
                    .collect(),
            });
        }
        let key_budgets = self
            .key_forecasts(keys, now)
            .await?
            .into_iter()
            .map(|key| {
                let spent = to_usd(key.forecast.spent);
                KeyBudgetView {
                    id: key.key.id.clone(),
                    name: key.key.settings.name.clone(),
                    amount_usd: key.amount_usd,
                    period: key.period,
                    period_start_ms: key.window.start_ms,
                    period_end_ms: key.window.end_ms,
                    spent_usd: spent,
                    used: if key.amount_usd > 0.0 {
                        spent / key.amount_usd
                    } else {
                        1.0
                    },
                    rate_usd_per_hour: key.forecast.rate_per_hour / NANOS_PER_USD,
                    forecast_usd: key.forecast.projected.map(to_usd),
                }
            })
            .collect();
        Ok(Snapshot {
            counters: self.store_kind(),
            timezone: self.timezone.iana_name().unwrap_or("UTC").to_owned(),
            budgets,
            keys: key_budgets,
            events: self.events(),
        })
    }
}

/// Applies Redis settlements in order; ends when the budgets are dropped.
async fn apply_settlements(
    budgets: Weak<Budgets>,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<Settlement>,
) {
    while let Some(settlement) = receiver.recv().await {
        let Some(budgets) = budgets.upgrade() else {
            return;
        };
        let Counters::Redis(redis) = &budgets.counters else {
            return;
        };
        let now = budgets.now_ms();
        let slots: Vec<(Slot, i64)> = settlement
            .charges
            .iter()
            .map(|charge| {
                (
                    Slot {
                        key: charge.redis_key(),
                        amount: charge.amount,
                        limit: None,
                        ttl_ms: charge.ttl_ms(now),
                    },
                    settlement.actual,
                )
            })
            .collect();
        match redis.settle(&settlement.nonce, &slots).await {
            Ok(after) => {
                for (charge, after) in settlement.charges.iter().zip(after) {
                    budgets.thresholds(charge, after - settlement.actual, after);
                }
            }
            Err(error) => {
                budgets.metrics.store_errors.inc();
                tracing::warn!(
                    %error,
                    "could not settle budgets in Redis; the reservation expires with its lease and the ledger keeps the spend"
                );
            }
        }
    }
}

fn refusal(charge: &Charge, spent: i64, reserved: i64) -> Refusal {
    Refusal {
        budget: Arc::clone(charge.budget()),
        scope: charge.scope,
        member: charge.member().to_owned(),
        period: charge.period,
        limit: charge.limit,
        spent,
        reserved,
        resets_at_ms: charge.window.end_ms,
    }
}

/// The 429 of a refusal: OpenAI's `insufficient_quota`, naming the budget.
fn refusal_error(refusal: &Refusal, now_ms: u64) -> GatewayError {
    let whose = match refusal.scope {
        BudgetScope::Global => String::new(),
        scope => format!(" of {} `{}`", scope.as_str(), refusal.member),
    };
    let per = match refusal.period {
        Period::Total => "in total".to_owned(),
        period => format!("per {} period", period.as_str()),
    };
    let resets = refusal
        .resets_at_ms
        .and_then(|end| {
            let at = jiff::Timestamp::from_millisecond(i64::try_from(end).ok()?).ok()?;
            Some(format!("; it resets at {at}"))
        })
        .unwrap_or_default();
    let mut error = GatewayError::new(
        ErrorKind::QuotaExceeded,
        Origin::Client,
        format!(
            "Budget `{}`{whose} cannot afford this request: ${:.6} spent and ${:.6} held by \
             requests in flight, of ${:.2} {per}{resets}",
            refusal.budget,
            to_usd(refusal.spent),
            to_usd(refusal.reserved),
            to_usd(refusal.limit),
        ),
    )
    .with_code("insufficient_quota");
    if let Some(end) = refusal.resets_at_ms {
        error = error.with_retry_after(Some(Duration::from_millis(end.saturating_sub(now_ms))));
    }
    error
}

fn nonce() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// An attempt's reservations, settled when the request ends; dropped unsettled (a failed
/// attempt), they are released and nothing is spent.
pub struct Hold {
    budgets: Arc<Budgets>,
    charges: Vec<Charge>,
    nonce: String,
    settled: bool,
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("charges", &self.charges)
            .finish_non_exhaustive()
    }
}

impl Hold {
    /// Settles to the request's actual cost in USD.
    pub fn settle(mut self, actual_usd: f64) {
        self.settled = true;
        let budgets = Arc::clone(&self.budgets);
        budgets.settle(&mut self, to_nanos(actual_usd));
    }

    /// The reservation, USD (the same in each budget).
    pub fn amount_usd(&self) -> f64 {
        self.charges
            .first()
            .map_or(0.0, |charge| to_usd(charge.amount))
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            let budgets = Arc::clone(&self.budgets);
            budgets.settle(self, 0);
        }
    }
}

/// `GET /admin/budgets`.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Where the counters are: `memory` or `redis`.
    pub counters: &'static str,
    /// The default time zone.
    pub timezone: String,
    /// The configured budgets.
    pub budgets: Vec<BudgetView>,
    /// Keys with a budget of their own.
    pub keys: Vec<KeyBudgetView>,
    /// Recent budget events (thresholds and forecasts), oldest first.
    pub events: Vec<BudgetEvent>,
}

/// One configured budget now.
#[derive(Debug, Serialize)]
pub struct BudgetView {
    /// Its name.
    pub name: String,
    /// Its scope.
    pub scope: &'static str,
    /// The members it covers (empty: each).
    pub only: Vec<String>,
    /// USD per period.
    pub amount_usd: f64,
    /// The period.
    pub period: Period,
    /// Its calendar's time zone.
    pub timezone: String,
    /// `reject` or `downgrade`.
    pub action: &'static str,
    /// The route it downgrades to.
    pub downgrade_to: Option<String>,
    /// Soft thresholds.
    pub thresholds: Vec<f64>,
    /// The current period, unix ms.
    pub period_start_ms: u64,
    /// Its end (none for `total`).
    pub period_end_ms: Option<u64>,
    /// Members with spend this period or in the last day (the rate's history), largest
    /// spend first.
    pub members: Vec<MemberView>,
}

/// A member's spend this period and where it is heading.
#[derive(Debug, Serialize)]
pub struct MemberView {
    /// The member (`*` for global).
    pub member: String,
    /// USD spent.
    pub spent_usd: f64,
    /// Share of the amount spent.
    pub used: f64,
    /// The recent spend rate (exponentially weighted, a three-hour half-life), USD an hour.
    pub rate_usd_per_hour: f64,
    /// The spend projected at the end of the period (spent + rate × time left), USD; none
    /// for a `total` budget, which never ends.
    pub forecast_usd: Option<f64>,
}

/// A key's own budget now.
#[derive(Debug, Serialize)]
pub struct KeyBudgetView {
    /// The key's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// USD per period.
    pub amount_usd: f64,
    /// The period.
    pub period: Period,
    /// The current period, unix ms.
    pub period_start_ms: u64,
    /// Its end.
    pub period_end_ms: Option<u64>,
    /// USD spent.
    pub spent_usd: f64,
    /// Share of the amount spent.
    pub used: f64,
    /// The recent spend rate, USD an hour.
    pub rate_usd_per_hour: f64,
    /// The spend projected at the end of the period, USD; none for `total`.
    pub forecast_usd: Option<f64>,
}

#[cfg(test)]
mod tests;
