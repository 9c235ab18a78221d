//! `[budgets]`: validated spending budgets.
//!
//! ```toml
//! [budgets]
//! timezone = "Europe/Berlin"      # calendar periods start at local midnight (default UTC)
//! thresholds = [0.5, 0.8, 1.0]    # soft thresholds that emit budget events (the default)
//! on_store_error = "fail_open"    # Redis unreachable: admit (default) or `fail_closed` (503)
//!
//! [[budgets.limits]]
//! name = "research-monthly"
//! scope = "team"                  # key | team | route | model | provider | global
//! only = ["research"]             # members it covers; empty: each member has its own
//! amount_usd = 200.0
//! period = "monthly"              # daily | weekly | monthly | total
//! action = "reject"               # or "downgrade" with downgrade_to = "<route>"
//! ```

use jiff::tz::TimeZone;

use super::ConfigError;
use super::raw::{RawBudget, RawBudgets};
use crate::budget::{BudgetScope, Period};

/// The name of virtual keys' own budgets (`budget_usd` on a key).
pub const KEY_BUDGET: &str = "key-budget";

/// The soft thresholds used when the config names none.
pub const DEFAULT_THRESHOLDS: [f64; 3] = [0.5, 0.8, 1.0];

/// What happens to a request that its budget cannot afford.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetAction {
    /// Refused with 429 `insufficient_quota`, naming the budget.
    Reject,
    /// Sent to this (cheaper) route instead; the budget keeps counting what it spends there.
    Downgrade(String),
}

/// One validated budget.
#[derive(Debug, Clone)]
pub struct BudgetRule {
    /// Unique name, used in errors, events, metrics and the admin API.
    pub name: String,
    /// What it is counted per.
    pub scope: BudgetScope,
    /// The members it covers; empty: every member, each with its own budget.
    pub only: Vec<String>,
    /// USD per period.
    pub amount_usd: f64,
    /// When the spend starts again.
    pub period: Period,
    /// The time zone of the period's calendar.
    pub timezone: TimeZone,
    /// Over budget: refuse or downgrade.
    pub action: BudgetAction,
    /// Shares of the amount (ascending) whose crossing emits a budget event.
    pub thresholds: Vec<f64>,
}

impl BudgetRule {
    /// Whether the budget covers `member` of its scope.
    pub fn covers(&self, member: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|only| only == member)
    }
}

/// What to do when the shared budget store (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BudgetFailMode {
    /// Admit the request without a reservation (its spend is still recorded in the ledger).
    #[default]
    Open,
    /// Refuse with 503 until the store is back.
    Closed,
}

/// Validated `[budgets]`.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// The configured budgets, in config order.
    pub rules: Vec<BudgetRule>,
    /// The time zone of budgets that name none (and of keys' own budgets).
    pub timezone: TimeZone,
    /// Soft thresholds of budgets that name none.
    pub thresholds: Vec<f64>,
    /// Behaviour when Redis is unreachable.
    pub on_store_error: BudgetFailMode,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            rules: Vec::new(),
            timezone: TimeZone::UTC,
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            on_store_error: BudgetFailMode::Open,
        }
    }
}

fn timezone(name: &str, key: &str) -> Result<TimeZone, ConfigError> {
    TimeZone::get(name).map_err(|_| {
        ConfigError::new(
            key,
            format!("unknown time zone `{name}` (an IANA name such as `UTC` or `Europe/Berlin`)"),
        )
    })
}

fn thresholds(raw: &[f64], key: &str) -> Result<Vec<f64>, ConfigError> {
    let mut sorted = raw.to_vec();
    if sorted
        .iter()
        .any(|share| !share.is_finite() || *share <= 0.0 || *share > 10.0)
    {
        return Err(ConfigError::new(
            key,
            "each threshold is a share of the budget above 0 (0.8 = 80 %), at most 10",
        ));
    }
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    Ok(sorted)
}

pub(super) fn validate(
    raw: &RawBudgets,
    route_exists: &dyn Fn(&str) -> bool,
) -> Result<BudgetConfig, ConfigError> {
    let default_zone = match &raw.timezone {
        Some(name) => timezone(name, "budgets.timezone")?,
        None => TimeZone::UTC,
    };
    let default_thresholds = match &raw.thresholds {
        Some(list) => thresholds(list, "budgets.thresholds")?,
        None => DEFAULT_THRESHOLDS.to_vec(),
    };
    let on_store_error = match raw.on_store_error.as_deref() {
        None | Some("fail_open") => BudgetFailMode::Open,
        Some("fail_closed") => BudgetFailMode::Closed,
        Some(other) => {
            return Err(ConfigError::new(
                "budgets.on_store_error",
                format!("unknown mode `{other}` (fail_open or fail_closed)"),
            ));
        }
    };
    let mut rules: Vec<BudgetRule> = Vec::with_capacity(raw.limits.len());
    for (index, budget) in raw.limits.iter().enumerate() {
        let key = format!("budgets.limits[{index}]");
        let rule = validate_rule(
            budget,
            &key,
            &default_zone,
            &default_thresholds,
            route_exists,
        )?;
        if rules.iter().any(|existing| existing.name == rule.name) {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!("duplicate budget name `{}`", rule.name),
            ));
        }
        rules.push(rule);
    }
    Ok(BudgetConfig {
        rules,
        timezone: default_zone,
        thresholds: default_thresholds,
        on_store_error,
    })
}

fn validate_rule(
    raw: &RawBudget,
    key: &str,
    default_zone: &TimeZone,
    default_thresholds: &[f64],
    route_exists: &dyn Fn(&str) -> bool,
) -> Result<BudgetRule, ConfigError> {
    let scope = BudgetScope::parse(&raw.scope).ok_or_else(|| {
        ConfigError::new(
            format!("{key}.scope"),
            format!(
                "unknown scope `{}` (key, team, route, model, provider or global)",
                raw.scope
            ),
        )
    })?;
    let name = raw.name.trim().to_owned();
    if name.trim().is_empty() || name.len() > 64 {
        return Err(ConfigError::new(
            format!("{key}.name"),
            "must be 1 to 64 characters",
        ));
    }
    if name == KEY_BUDGET {
        return Err(ConfigError::new(
            format!("{key}.name"),
            format!("`{KEY_BUDGET}` is the name of virtual keys' own budgets; choose another"),
        ));
    }
    let amount_usd = raw.amount_usd;
    if !amount_usd.is_finite() || amount_usd < 0.0 {
        return Err(ConfigError::new(
            format!("{key}.amount_usd"),
            "must be a non-negative number of US dollars",
        ));
    }
    let period = match raw.period.as_deref() {
        None => Period::Monthly,
        Some(text) => Period::parse(text).ok_or_else(|| {
            ConfigError::new(
                format!("{key}.period"),
                format!("unknown period `{text}` (daily, weekly, monthly or total)"),
            )
        })?,
    };
    let zone = match &raw.timezone {
        Some(name) => timezone(name, &format!("{key}.timezone"))?,
        None => default_zone.clone(),
    };
    let action = match (raw.action.as_deref(), &raw.downgrade_to) {
        (None | Some("reject"), None) => BudgetAction::Reject,
        (None | Some("downgrade"), Some(route)) => {
            if matches!(scope, BudgetScope::Model | BudgetScope::Provider) {
                return Err(ConfigError::new(
                    format!("{key}.action"),
                    "a model or provider budget cannot downgrade (the model and provider are \
                     chosen after the route); use `reject`, which skips that target",
                ));
            }
            if !route_exists(route) {
                return Err(ConfigError::new(
                    format!("{key}.downgrade_to"),
                    format!("`{route}` is not a configured route"),
                ));
            }
            BudgetAction::Downgrade(route.clone())
        }
        (Some("downgrade"), None) => {
            return Err(ConfigError::new(
                format!("{key}.downgrade_to"),
                "action `downgrade` needs the route to downgrade to",
            ));
        }
        (Some("reject"), Some(_)) => {
            return Err(ConfigError::new(
                format!("{key}.downgrade_to"),
                "only a budget with action `downgrade` has a route to downgrade to",
            ));
        }
        (Some(other), _) => {
            return Err(ConfigError::new(
                format!("{key}.action"),
                format!("unknown action `{other}` (reject or downgrade)"),
            ));
        }
    };
    let thresholds = match &raw.thresholds {
        Some(list) => thresholds(list, &format!("{key}.thresholds"))?,
        None => default_thresholds.to_vec(),
    };
    Ok(BudgetRule {
        name,
        scope,
        only: raw.only.clone(),
        amount_usd,
        period,
        timezone: zone,
        action,
        thresholds,
    })
}
