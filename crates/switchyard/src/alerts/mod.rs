//! Alerting: rules from `[alerts]` evaluated in the background, their notifications, and
//! their history.
//!
//! - **Evaluation** ([`spawn`]): a task ticks every `alerts.interval` (default 5 s). Each
//!   rule's values are read ([`sources`]) from the in-memory analytics (the live 1 s tier;
//!   the store's minute rollups for windows past 5 minutes or per key), the tracker's
//!   breakers and health checks, the budgets' spend and forecasts, the rate limiter's
//!   refusals and the analytics channel's drops, and fed to `core::alerts::Evaluator`, the
//!   pure pending → firing → resolved state machine. Nothing here runs on the request path.
//! - **Notifications** ([`notify`]): a fired or resolved alert goes to the rule's notifiers,
//!   each with a bounded queue and a worker that retries with backoff; a full queue drops
//!   and counts, never blocks.
//! - **History** ([`store`]): every alert (firing and resolved, with its deliveries) is kept
//!   in memory for `GET /admin/alerts` and written to `alerts.db` in the data directory, or
//!   to Postgres (`switchyard_alerts`) when `storage.postgres_url` is set. At start the
//!   history is read back, and alerts still firing are restored, so a restart does not
//!   notify an ongoing alert twice.
//!
//! Each instance evaluates its own rules over what it sees (its live tier, its breakers);
//! several instances behind a load balancer each alert on their own share.

pub mod notify;
pub mod sources;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use switchyard_core::alerts::{Evaluator, Phase, Transition, message};
use switchyard_core::config::{AlertConfig, AlertRule, StorageConfig};

use self::notify::{Notification, Notifier};
use self::sources::Samples;
use self::store::AlertStore;
use crate::app::AppState;

/// Resolved alerts older than this are deleted from the store.
const RETENTION_MS: u64 = 30 * 24 * 3_600_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One alert: a rule's member that fired, from firing to its resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Unique id.
    pub id: String,
    /// The rule's name.
    pub rule: String,
    /// What it measures (`error_rate`...).
    pub metric: String,
    /// `global`, `route`, `provider`, `model`, `key` or `budget`.
    pub scope: String,
    /// The member (`*` for a global rule; `budget/member` for budget metrics).
    pub member: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// The last value read (when it fired, then when it resolved); `null` when it resolved
    /// for lack of data.
    pub value: Option<f64>,
    /// The rule's threshold.
    pub threshold: f64,
    /// `above` or `below`.
    pub direction: String,
    /// When it fired, unix ms.
    pub started_at: u64,
    /// When it resolved, unix ms.
    pub resolved_at: Option<u64>,
    /// What the notifications said last.
    pub message: String,
    /// Each notification's delivery, oldest first.
    pub notifications: Vec<Delivery>,
}

/// One notification's delivery to one notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The notifier's name.
    pub notifier: String,
    /// `firing`, `resolved` or `test`.
    pub event: String,
    /// `queued`, `sent`, `failed` or `dropped` (the queue was full).
    pub outcome: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the outcome was known (queued: when queued), unix ms.
    pub at: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The delays waited before each retry, ms (a receiver's `Retry-After` shows here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry_delays_ms: Vec<u64>,
}

/// The alerts in memory: those firing, and the most recent resolved ones.
#[derive(Debug, Default)]
pub struct History {
    /// Firing alerts by id.
    firing: HashMap<String, AlertRecord>,
    /// (rule name, member) → the id of its firing alert.
    firing_ids: HashMap<(String, String), String>,
    /// Resolved alerts, newest last, at most `capacity`.
    resolved: VecDeque<AlertRecord>,
    capacity: usize,
    /// Ids changed since the last write to the store.
    dirty: Vec<String>,
    /// Changed alerts pushed out of `resolved` before they were written.
    evicted: Vec<AlertRecord>,
}

impl History {
    fn new(capacity: usize) -> Self {
        History {
            capacity,
            ..History::default()
        }
    }

    fn mark(&mut self, id: &str) {
        if !self.dirty.iter().any(|dirty| dirty == id) {
            self.dirty.push(id.to_owned());
        }
    }

    fn insert(&mut self, record: AlertRecord) {
        self.mark(&record.id);
        if record.state == "firing" {
            self.firing_ids.insert(
                (record.rule.clone(), record.member.clone()),
                record.id.clone(),
            );
            self.firing.insert(record.id.clone(), record);
        } else {
            self.push_resolved(record);
        }
    }

    fn push_resolved(&mut self, record: AlertRecord) {
        self.resolved.push_back(record);
        while self.resolved.len() > self.capacity {
            if let Some(old) = self.resolved.pop_front()
                && let Some(at) = self.dirty.iter().position(|id| *id == old.id)
            {
                self.dirty.remove(at);
                self.evicted.push(old);
            }
        }
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut AlertRecord> {
        if let Some(record) = self.firing.get_mut(id) {
            return Some(record);
        }
        self.resolved
            .iter_mut()
            .rev()
            .find(|record| record.id == id)
    }

    /// Moves the firing alert of (rule, member) to the resolved ones.
    fn resolve(
        &mut self,
        rule: &str,
        member: &str,
        at_ms: u64,
        value: Option<f64>,
        message: String,
    ) -> Option<AlertRecord> {
        let id = self
            .firing_ids
            .remove(&(rule.to_owned(), member.to_owned()))?;
        let mut record = self.firing.remove(&id)?;
        record.state = "resolved".to_owned();
        record.resolved_at = Some(at_ms);
        record.value = value;
        record.message = message;
        self.mark(&id);
        self.push_resolved(record.clone());
        Some(record)
    }

    /// Records a delivery's outcome on its alert (a test delivery has no alert).
    pub fn record_delivery(&mut self, id: &str, delivery: Delivery) {
        let Some(record) = self.get_mut(id) else {
            return;
        };
        match record
            .notifications
            .iter_mut()
            .rev()
            .find(|d| d.notifier == delivery.notifier && d.event == delivery.event)
        {
            Some(slot) => *slot = delivery,
            None => record.notifications.push(delivery),
        }
        self.mark(id);
    }

    fn take_dirty(&mut self) -> Vec<AlertRecord> {
        let ids = std::mem::take(&mut self.dirty);
        let mut changed = std::mem::take(&mut self.evicted);
        changed.extend(ids.iter().filter_map(|id| {
            self.firing
                .get(id)
                .or_else(|| self.resolved.iter().rev().find(|r| &r.id == id))
                .cloned()
        }));
        changed
    }

    /// What `GET /admin/alerts` shows: firing alerts (newest first) and the `limit` most
    /// recent alerts of any state (newest first).
    pub fn view(&self, limit: usize) -> AlertsView {
        let mut firing: Vec<AlertRecord> = self.firing.values().cloned().collect();
        firing.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(a.id.cmp(&b.id)));
        let mut recent: Vec<AlertRecord> = firing
            .iter()
            .cloned()
            .chain(self.resolved.iter().rev().take(limit).cloned())
            .collect();
        recent.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(a.id.cmp(&b.id)));
        recent.truncate(limit);
        AlertsView { firing, recent }
    }
}

/// `GET /admin/alerts`.
#[derive(Debug, Serialize)]
pub struct AlertsView {
    /// Alerts firing now, newest first.
    pub firing: Vec<AlertRecord>,
    /// The most recent alerts, firing or resolved, newest first.
    pub recent: Vec<AlertRecord>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
    severity: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    rule: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct NotifierLabels {
    pub(crate) notifier: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub(crate) notifier: String,
    pub(crate) outcome: &'static str,
}

/// Alerting's Prometheus series, in a registry of their own that `/metrics` appends.
#[derive(Debug)]
pub struct AlertMetrics {
    registry: Registry,
    firing: Family<RuleLabels, Gauge>,
    pending: Family<RuleLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    evaluation_errors: Family<NotifierLabelsRule, Counter>,
    pub(crate) notifications: Family<OutcomeLabels, Counter>,
    pub(crate) retries: Family<NotifierLabels, Counter>,
    pub(crate) dropped: Family<NotifierLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierLabelsRule {
    rule: String,
}

impl AlertMetrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let firing = Family::<RuleLabels, Gauge>::default();
        registry.register(
            "switchyard_alerts_firing",
            "Alerts firing now, by rule and severity (one per member)",
            firing.clone(),
        );
        let pending = Family::<RuleLabels, Gauge>::default();
        registry.register(
            "switchyard_alerts_pending",
            "Breaches waiting for their rule's `for` (or cooldown), by rule and severity",
            pending.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "switchyard_alert_transitions",
            "Alerts that fired or resolved, by rule",
            transitions.clone(),
        );
        let evaluation_errors = Family::<NotifierLabelsRule, Counter>::default();
        registry.register(
            "switchyard_alert_evaluation_errors",
            "Rule evaluations that could not read their values (the store failed), by rule",
            evaluation_errors.clone(),
        );
        let notifications = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "switchyard_alert_notifications",
            "Notifications by notifier and outcome (sent, failed, dropped)",
            notifications.clone(),
        );
        let retries = Family::<NotifierLabels, Counter>::default();
        registry.register(
            "switchyard_alert_notification_retries",
            "Delivery attempts retried, by notifier",
            retries.clone(),
        );
        let dropped = Family::<NotifierLabels, Counter>::default();
        registry.register(
            "switchyard_alert_notifications_dropped",
            "Notifications dropped because the notifier's queue was full, by notifier",
            dropped.clone(),
        );
        AlertMetrics {
            registry,
            firing,
            pending,
            transitions,
            evaluation_errors,
            notifications,
            retries,
            dropped,
        }
    }
}

/// The alerting subsystem: rules, their state, the notifiers and the history.
pub struct Alerts {
    config: AlertConfig,
    evaluator: Mutex<Evaluator>,
    /// Shared with the notifiers' workers, which record their deliveries in it.
    history: Arc<Mutex<History>>,
    notifiers: Vec<Notifier>,
    store: AlertStore,
    metrics: Arc<AlertMetrics>,
    samples: Mutex<Samples>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// When retention last ran (unix ms).
    pruned_at: Mutex<u64>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("rules", &self.config.rules.len())
            .field("notifiers", &self.notifiers.len())
            .finish_non_exhaustive()
    }
}

impl Alerts {
    /// Opens the history store, reads the history back (restoring alerts still firing),
    /// and starts one delivery worker per notifier. `clock` gives unix milliseconds.
    pub async fn new(
        config: &AlertConfig,
        storage: &StorageConfig,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Arc<Self>, String> {
        let store = AlertStore::open(storage).await?;
        let metrics = Arc::new(AlertMetrics::new());
        for rule in &config.rules {
            let labels = RuleLabels {
                rule: rule.name.clone(),
                severity: rule.severity.as_str(),
            };
            metrics.firing.get_or_create(&labels).set(0);
            metrics.pending.get_or_create(&labels).set(0);
        }
        let history = Arc::new(Mutex::new(History::new(config.history)));
        let notifiers = config
            .notifiers
            .iter()
            .map(|notifier| Notifier::spawn(notifier, Arc::clone(&history), Arc::clone(&metrics)))
            .collect::<Result<Vec<_>, String>>()?;
        let alerts = Arc::new(Alerts {
            config: config.clone(),
            evaluator: Mutex::new(Evaluator::new()),
            history,
            notifiers,
            store,
            metrics,
            samples: Mutex::new(Samples::default()),
            clock,
            pruned_at: Mutex::new(0),
        });
        alerts.restore().await?;
        Ok(alerts)
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Reads the history back: the most recent alerts, and those still firing, whose
    /// rule's state is restored (a rule no longer configured resolves them).
    async fn restore(&self) -> Result<(), String> {
        let records = self.store.load(self.config.history).await?;
        let now = self.now_ms();
        let mut orphans = Vec::new();
        {
            let mut evaluator = lock(&self.evaluator);
            let mut history = lock(&self.history);
            // Oldest first, so that the newest resolved ones stay within the capacity.
            for mut record in records.into_iter().rev() {
                if record.state == "firing" {
                    let rule = self.config.rules.iter().position(|rule| {
                        rule.name == record.rule && rule.metric.as_str() == record.metric
                    });
                    match rule {
                        Some(index) => evaluator.restore_firing(
                            index,
                            &record.member,
                            record.started_at,
                            record.value,
                        ),
                        None => {
                            record.state = "resolved".to_owned();
                            record.resolved_at = Some(now);
                            record.message = format!(
                                "{} (resolved: the rule is no longer configured)",
                                record.message
                            );
                            orphans.push(record.clone());
                        }
                    }
                }
                history.insert(record);
            }
            history.dirty.clear();
            history.evicted.clear();
        }
        if !orphans.is_empty() {
            self.store.save(orphans).await?;
        }
        self.refresh_gauges();
        Ok(())
    }

    /// The configured rules.
    pub fn rules(&self) -> &[AlertRule] {
        &self.config.rules
    }

    /// What `GET /admin/alerts` shows.
    pub fn view(&self, limit: usize) -> AlertsView {
        lock(&self.history).view(limit)
    }

    /// The notifiers' names, in config order.
    pub fn notifier_names(&self) -> Vec<&str> {
        self.notifiers.iter().map(|n| n.name()).collect()
    }

    /// Sends a test notification to every notifier, or to the one named, with one attempt
    /// each, and waits for the outcomes (at most each notifier's timeout, plus a second).
    /// `None` when no notifier has that name.
    pub async fn test(&self, only: Option<&str>) -> Option<Vec<Delivery>> {
        let chosen: Vec<&Notifier> = self
            .notifiers
            .iter()
            .filter(|n| only.is_none_or(|name| n.name() == name))
            .collect();
        if chosen.is_empty() {
            return None;
        }
        let now = self.now_ms();
        let record = AlertRecord {
            id: format!("test-{now:x}"),
            rule: "test".to_owned(),
            metric: "test".to_owned(),
            scope: "global".to_owned(),
            member: "*".to_owned(),
            severity: "info".to_owned(),
            state: "firing".to_owned(),
            value: None,
            threshold: 0.0,
            direction: "above".to_owned(),
            started_at: now,
            resolved_at: None,
            message: "[TEST] A test notification from Switchyard: this notifier works.".to_owned(),
            notifications: Vec::new(),
        };
        let notification = Arc::new(Notification {
            event: "test",
            alert: record,
            timestamp_ms: now,
        });
        let waits = chosen
            .into_iter()
            .map(|notifier| notifier.test(Arc::clone(&notification), now));
        Some(futures_util::future::join_all(waits).await)
    }

    /// One evaluation round: reads every rule's values, advances the state machine,
    /// notifies what fired or resolved, and writes the changed alerts to the store.
    pub async fn tick(&self, app: &AppState) {
        let now = self.now_ms();
        let mut reads = sources::TickReads::default();
        self.sample(app, now);
        let samples = lock(&self.samples).clone();
        for (index, rule) in self.config.rules.iter().enumerate() {
            let reading = sources::read(app, rule, now, &samples, &mut reads).await;
            let reading = match reading {
                Ok(reading) => reading,
                Err(error) => {
                    self.metrics
                        .evaluation_errors
                        .get_or_create(&NotifierLabelsRule {
                            rule: rule.name.clone(),
                        })
                        .inc();
                    tracing::debug!(rule = %rule.name, %error, "alert rule could not be evaluated");
                    continue;
                }
            };
            let changes = lock(&self.evaluator).evaluate(index, rule, &reading, now);
            for change in changes {
                self.apply(rule, &change.member, &change.transition, now);
            }
        }
        self.refresh_gauges();
        self.persist(now).await;
    }

    /// Takes this tick's samples of the counters that windowed metrics difference.
    fn sample(&self, app: &AppState, now: u64) {
        let needs_refusals = self
            .config
            .rules
            .iter()
            .any(|r| r.metric == switchyard_core::alerts::AlertMetric::RateLimitedRate);
        let longest = self
            .config
            .rules
            .iter()
            .map(|r| r.window)
            .max()
            .unwrap_or(Duration::ZERO);
        let sample = sources::Sample::take(app, now, needs_refusals);
        lock(&self.samples).push(sample, longest);
    }

    /// Records a fired or resolved alert and queues its notifications.
    fn apply(&self, rule: &AlertRule, member: &str, transition: &Transition, now: u64) {
        let text = message(rule, member, transition);
        let (event, record) = match *transition {
            Transition::Fired { at_ms, value } => {
                let record = AlertRecord {
                    id: format!("{at_ms:x}-{:08x}", fastrand::u32(..)),
                    rule: rule.name.clone(),
                    metric: rule.metric.as_str().to_owned(),
                    scope: rule.scope.as_str().to_owned(),
                    member: member.to_owned(),
                    severity: rule.severity.as_str().to_owned(),
                    state: "firing".to_owned(),
                    value: Some(value),
                    threshold: rule.threshold,
                    direction: rule.direction.as_str().to_owned(),
                    started_at: at_ms,
                    resolved_at: None,
                    message: text,
                    notifications: Vec::new(),
                };
                lock(&self.history).insert(record.clone());
                ("firing", record)
            }
            Transition::Resolved { at_ms, value, .. } => {
                let resolved = lock(&self.history).resolve(&rule.name, member, at_ms, value, text);
                let Some(record) = resolved else {
                    return;
                };
                ("resolved", record)
            }
        };
        self.metrics
            .transitions
            .get_or_create(&TransitionLabels {
                rule: rule.name.clone(),
                state: event,
            })
            .inc();
        let notification = Arc::new(Notification {
            event,
            alert: record,
            timestamp_ms: now,
        });
        for &index in &rule.notifiers {
            if let Some(notifier) = self.notifiers.get(index) {
                let delivery = notifier.enqueue(Arc::clone(&notification), now);
                lock(&self.history).record_delivery(&notification.alert.id, delivery);
            }
        }
    }

    fn refresh_gauges(&self) {
        let mut counts: HashMap<usize, (i64, i64)> = HashMap::new();
        for (rule, _, instance) in lock(&self.evaluator).instances() {
            let count = counts.entry(rule).or_default();
            match instance.phase {
                Phase::Firing { .. } => count.0 += 1,
                Phase::Pending { .. } => count.1 += 1,
                Phase::Inactive => {}
            }
        }
        for (index, rule) in self.config.rules.iter().enumerate() {
            let (firing, pending) = counts.get(&index).copied().unwrap_or_default();
            let labels = RuleLabels {
                rule: rule.name.clone(),
                severity: rule.severity.as_str(),
            };
            self.metrics.firing.get_or_create(&labels).set(firing);
            self.metrics.pending.get_or_create(&labels).set(pending);
        }
    }

    /// Writes the alerts changed since the last call; a failed write keeps them for the
    /// next. Prunes old resolved alerts once an hour.
    pub async fn persist(&self, now: u64) {
        let changed = lock(&self.history).take_dirty();
        if !changed.is_empty()
            && let Err(error) = self.store.save(changed.clone()).await
        {
            tracing::warn!(%error, "could not write the alert history; retrying on the next tick");
            let mut history = lock(&self.history);
            for record in &changed {
                history.mark(&record.id);
            }
        }
        let due = {
            let mut pruned_at = lock(&self.pruned_at);
            let due = now.saturating_sub(*pruned_at) >= 3_600_000;
            if due {
                *pruned_at = now;
            }
            due
        };
        if due && let Err(error) = self.store.prune(now.saturating_sub(RETENTION_MS)).await {
            tracing::warn!(%error, "could not prune the alert history");
        }
    }

    /// Appends alerting's series to a `/metrics` exposition (before its `# EOF`).
    pub fn render_metrics(&self, text: &mut String) {
        if let Some(stripped) = text.strip_suffix("# EOF\n") {
            text.truncate(stripped.len());
        }
        if prometheus_client::encoding::text::encode(text, &self.metrics.registry).is_err() {
            tracing::error!("could not encode the alert metrics");
        }
    }
}

/// Starts the evaluation task: one round every `alerts.interval`, ended when the gateway's
/// state is dropped. Does nothing without rules.
pub fn spawn(app: &AppState) {
    if app.alerts.rules().is_empty() {
        return;
    }
    let interval = app.alerts.config.interval;
    let weak = app.downgrade();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(app) = AppState::upgrade(&weak) else {
                return;
            };
            let alerts = Arc::clone(&app.alerts);
            alerts.tick(&app).await;
        }
    });
}

#[cfg(test)]
mod tests;
