//! Budgets: calendar periods in a time zone, and the arithmetic of reserving a request's
//! largest possible cost before it runs and settling to its actual cost after.
//!
//! A request is admitted only if `spent + reserved + its reservation <= limit`, so however
//! many run at once, the settled spend can pass the limit only by what the admitted requests
//! cost beyond their reservations (a reservation is the prompt estimate plus `max_tokens` at
//! the model's price: an underestimated prompt is the one way past it). Time comes in as
//! unix milliseconds; nothing here reads a clock.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, ZonedDateTime as Zoned};

/// What a budget is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    /// The virtual key (its id; `master` and `anonymous` for the others).
    Key,
    /// The key's team (a key with no team is not covered).
    Team,
    /// The route the request was sent on (a fallback route counts as itself).
    Route,
    /// The upstream model.
    Model,
    /// The provider.
    Provider,
    /// Everything.
    Global,
}

impl BudgetScope {
    /// Reads the config spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "key" => BudgetScope::Key,
            "team" => BudgetScope::Team,
            "route" => BudgetScope::Route,
            "model" => BudgetScope::Model,
            "provider" => BudgetScope::Provider,
            "global" => BudgetScope::Global,
            _ => return None,
        })
    }

    /// The config spelling, also the ledger's column for it.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Key => "key",
            BudgetScope::Team => "team",
            BudgetScope::Route => "route",
            BudgetScope::Model => "model",
            BudgetScope::Provider => "provider",
            BudgetScope::Global => "global",
        }
    }
}

/// Who and what one attempt is for: the members of each scope it is charged to.
#[derive(Debug, Clone, Copy)]
pub struct Members<'a> {
    /// The principal's label (a key id, `master`, `anonymous`).
    pub key: &'a str,
    /// The key's team.
    pub team: Option<&'a str>,
    /// The route of the attempt.
    pub route: &'a str,
    /// The upstream model.
    pub model: &'a str,
    /// The provider.
    pub provider: &'a str,
}

impl<'a> Members<'a> {
    /// The member of `scope`, `None` when the request has none (no team).
    pub fn of(&self, scope: BudgetScope) -> Option<&'a str> {
        match scope {
            BudgetScope::Key => Some(self.key),
            BudgetScope::Team => self.team,
            BudgetScope::Route => Some(self.route),
            BudgetScope::Model => Some(self.model),
            BudgetScope::Provider => Some(self.provider),
            BudgetScope::Global => Some("*"),
        }
    }
}

/// Budgets count in nano-dollars (1e-9 USD), integers that add exactly on every store: one
/// token of the cheapest priced model is still several of them, and an `i64` holds 9.2
/// billion dollars.
pub const NANOS_PER_USD: f64 = 1e9;

/// USD to nano-dollars, rounded up (a reservation never rounds below its cost).
pub fn to_nanos(usd: f64) -> i64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * NANOS_PER_USD).ceil().min(i64::MAX as f64) as i64
    } else {
        0
    }
}

/// Nano-dollars to USD.
pub fn to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// The shares in `thresholds` that `before → after` (spend in nano-dollars) crossed upward.
pub fn crossed(thresholds: &[f64], limit: i64, before: i64, after: i64) -> Vec<f64> {
    thresholds
        .iter()
        .copied()
        .filter(|share| {
            let mark = (limit as f64 * share).ceil() as i64;
            before < mark && after >= mark
        })
        .collect()
}

/// How a budget's spend is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// From local midnight.
    Daily,
    /// From local midnight on Monday.
    Weekly,
    /// From local midnight on the 1st.
    Monthly,
    /// Never.
    Total,
}

impl Period {
    /// Reads `daily`, `weekly`, `monthly` or `total`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "daily" => Period::Daily,
            "weekly" => Period::Weekly,
            "monthly" => Period::Monthly,
            "total" => Period::Total,
            _ => return None,
        })
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }
}

/// The stretch of time one budget period covers: `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// Start (unix ms); 0 for `total`.
    pub start_ms: u64,
    /// End (unix ms); `None` for `total`.
    pub end_ms: Option<u64>,
}

/// The period containing `now_ms` in `zone` (calendar days, weeks from Monday, months; a
/// midnight skipped by a daylight-saving change starts at the first instant that exists).
pub fn window(period: Period, zone: &TimeZone, now_ms: u64) -> Window {
    if period == Period::Total {
        return Window {
            start_ms: 0,
            end_ms: None,
        };
    }
    let now = Timestamp::from_millisecond(i64::try_from(now_ms).unwrap_or(i64::MAX))
        .unwrap_or(Timestamp::MAX)
        .to_zoned_datetime(zone.clone());
    let first_day = match period {
        Period::Daily => now.date(),
        Period::Weekly => {
            let back = i64::from(now.weekday().to_monday_zero_offset());
            now.date().checked_sub(back.days()).unwrap_or(now.date())
        }
        Period::Monthly | Period::Total => now.date().first_of_month(),
    };
    let start = local_midnight(first_day, zone);
    let next_day = match period {
        Period::Daily => first_day.checked_add(1.day()),
        Period::Weekly => first_day.checked_add(1.week()),
        Period::Monthly | Period::Total => first_day.checked_add(1.month()),
    };
    let end = next_day.ok().and_then(|day| local_midnight(day, zone));
    Window {
        start_ms: start.map_or(0, millis),
        end_ms: end.map(millis),
    }
}

fn local_midnight(day: jiff::civil::Date, zone: &TimeZone) -> Option<Zoned> {
    day.to_zoned_datetime(zone.clone())
        .ok()?
        .start_of_day()
        .ok()
}

fn millis(zoned: Zoned) -> u64 {
    u64::try_from(zoned.timestamp().as_millisecond()).unwrap_or(0)
}

/// One budget's spend in its current period, in nano-dollars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// The period the figures belong to.
    pub window: Window,
    /// Settled spend.
    pub spent: i64,
    /// Reservations of requests still running.
    pub reserved: i64,
}

/// Why a reservation was refused (nano-dollars).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// The budget.
    pub limit: i64,
    /// Settled spend so far.
    pub spent: i64,
    /// Held by running requests.
    pub reserved: i64,
}

/// A reservation taken from a ledger, to settle when the request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Nano-dollars held.
    pub amount: i64,
    /// The period it was taken in.
    pub window: Window,
}

impl Ledger {
    /// A ledger for `window` that starts from `spent` (what the durable ledger holds).
    pub fn new(window: Window, spent: i64) -> Self {
        Ledger {
            window,
            spent,
            reserved: 0,
        }
    }

    /// Whether the ledger still belongs to the period `current`.
    pub fn is_current(&self, current: Window) -> bool {
        self.window == current
    }

    /// Holds `amount` for a request if `limit` allows it; with no limit (a budget that only
    /// counts, or a downgrade budget already taken into account), it always does.
    pub fn reserve(&mut self, limit: Option<i64>, amount: i64) -> Result<Reservation, OverBudget> {
        let amount = amount.max(0);
        if let Some(limit) = limit
            && self
                .spent
                .saturating_add(self.reserved)
                .saturating_add(amount)
                > limit
        {
            return Err(OverBudget {
                limit,
                spent: self.spent,
                reserved: self.reserved,
            });
        }
        self.reserved = self.reserved.saturating_add(amount);
        Ok(Reservation {
            amount,
            window: self.window,
        })
    }

    /// Ends a request: its reservation is released and its `actual` cost is spent; returns
    /// the spend before and after. A reservation from a period that has since turned settles
    /// nothing here: its cost belongs to the period it ran in (the durable ledger keeps it).
    pub fn settle(&mut self, reservation: Reservation, actual: i64) -> Option<(i64, i64)> {
        if reservation.window != self.window {
            return None;
        }
        let before = self.spent;
        self.reserved = self.reserved.saturating_sub(reservation.amount).max(0);
        self.spent = self.spent.saturating_add(actual.max(0));
        Some((before, self.spent))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(text: &str) -> u64 {
        u64::try_from(text.parse::<Timestamp>().unwrap().as_millisecond()).unwrap()
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    #[test]
    fn periods_follow_the_local_calendar() {
        let utc = TimeZone::UTC;
        let now = ms("2026-11-29T15:30:00Z"); // a Sunday
        assert_eq!(
            window(Period::Daily, &utc, now),
            Window {
                start_ms: ms("2026-11-29T00:00:00Z"),
                end_ms: Some(ms("2026-11-30T00:00:00Z"))
            }
        );
        assert_eq!(
            window(Period::Weekly, &utc, now),
            Window {
                start_ms: ms("2026-11-23T00:00:00Z"),
                end_ms: Some(ms("2026-11-30T00:00:00Z"))
            }
        );
        assert_eq!(
            window(Period::Monthly, &utc, now),
            Window {
                start_ms: ms("2026-11-01T00:00:00Z"),
                end_ms: Some(ms("2026-12-01T00:00:00Z"))
            }
        );
        assert_eq!(
            window(Period::Total, &utc, now),
            Window {
                start_ms: 0,
                end_ms: None
            }
        );
        // In Tokyo it is already Monday 00:30: a new day and a new week.
        let tokyo = zone("Asia/Tokyo");
        let monday = window(Period::Weekly, &tokyo, ms("2026-11-29T15:30:00Z"));
        assert_eq!(monday.start_ms, ms("2026-11-29T15:00:00Z"));
    }

    #[test]
    fn a_month_across_a_daylight_saving_change_keeps_local_midnights() {
        let new_york = zone("America/New_York");
        // March 2026: EST (-05:00) at the start, EDT (-04:00) at the end.
        let march = window(Period::Monthly, &new_york, ms("2026-03-15T12:00:00Z"));
        assert_eq!(march.start_ms, ms("2026-03-01T05:00:00Z"));
        assert_eq!(march.end_ms, Some(ms("2026-04-01T04:00:00Z")));
        // The day of the change is 23 hours long.
        let day = window(Period::Daily, &new_york, ms("2026-03-08T12:00:00Z"));
        assert_eq!(day.end_ms.unwrap() - day.start_ms, 23 * 3_600_000);
    }

    #[test]
    fn reservations_hold_room_and_settle_to_the_actual_cost() {
        let mut ledger = Ledger::new(
            Window {
                start_ms: 0,
                end_ms: None,
            },
            0,
        );
        let a = ledger.reserve(Some(100), 60).unwrap();
        let refused = ledger.reserve(Some(100), 50).unwrap_err();
        assert_eq!((refused.spent, refused.reserved), (0, 60));
        assert_eq!(ledger.settle(a, 10), Some((0, 10)));
        assert_eq!((ledger.spent, ledger.reserved), (10, 0));
        assert!(ledger.reserve(Some(100), 50).is_ok(), "room came back");
        assert!(
            ledger.reserve(None, 1_000).is_ok(),
            "no limit: it only counts"
        );
    }

    #[test]
    fn a_new_period_starts_from_what_the_ledger_holds() {
        let day1 = Window {
            start_ms: 0,
            end_ms: Some(10),
        };
        let day2 = Window {
            start_ms: 10,
            end_ms: Some(20),
        };
        let mut old = Ledger::new(day1, 0);
        let late = old.reserve(Some(100), 90).unwrap();
        let mut ledger = Ledger::new(day2, 5);
        assert!(!old.is_current(day2));
        assert!(ledger.reserve(Some(100), 95).is_ok());
        assert_eq!(
            ledger.settle(late, 90),
            None,
            "the old period's request settles there"
        );
        assert_eq!((ledger.spent, ledger.reserved), (5, 95));
    }

    #[test]
    fn nanos_round_up_and_thresholds_fire_once_on_the_way_up() {
        assert_eq!(to_nanos(0.000_000_15), 150);
        assert_eq!(to_nanos(1e-10), 1, "a cost never rounds to nothing");
        assert_eq!(to_nanos(-1.0), 0);
        assert_eq!(to_nanos(f64::NAN), 0);
        assert!((to_usd(2_500_000_000) - 2.5).abs() < 1e-12);
        let limit = to_nanos(10.0);
        let marks = [0.5, 0.8, 1.0];
        assert_eq!(
            crossed(&marks, limit, to_nanos(4.0), to_nanos(8.5)),
            vec![0.5, 0.8]
        );
        assert!(crossed(&marks, limit, to_nanos(8.5), to_nanos(9.0)).is_empty());
        assert_eq!(
            crossed(&marks, limit, to_nanos(9.0), to_nanos(10.0)),
            vec![1.0]
        );
        assert!(crossed(&marks, limit, to_nanos(10.0), to_nanos(12.0)).is_empty());
    }

    proptest! {
        /// However requests interleave, the settled spend passes the limit by at most what
        /// admitted requests cost beyond their reservations.
        #[test]
        fn spend_never_passes_the_limit_by_more_than_the_underestimates(
            steps in proptest::collection::vec((0.0f64..0.5, 0.0f64..2.0, any::<bool>()), 1..200)
        ) {
            let limit = 1_000_000;
            let mut ledger = Ledger::new(Window { start_ms: 0, end_ms: None }, 0);
            let mut running: Vec<(Reservation, i64)> = Vec::new();
            let mut excess = 0;
            for (reserve, ratio, finish_one) in steps {
                let reserve = to_nanos(reserve / 1_000.0);
                if let Ok(reservation) = ledger.reserve(Some(limit), reserve) {
                    running.push((reservation, (reserve as f64 * ratio) as i64));
                }
                if finish_one && let Some((reservation, actual)) = running.pop() {
                    excess += (actual - reservation.amount).max(0);
                    ledger.settle(reservation, actual);
                }
                prop_assert!(ledger.spent + ledger.reserved <= limit + excess);
            }
        }
    }
}
