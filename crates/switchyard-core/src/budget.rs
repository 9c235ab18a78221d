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

/// How a budget's spend is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// One budget's spend in its current period.
#[derive(Debug, Clone, PartialEq)]
pub struct Ledger {
    /// The period the figures belong to.
    pub window: Window,
    /// Settled spend, USD.
    pub spent: f64,
    /// Reservations of requests still running, USD.
    pub reserved: f64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverBudget {
    /// The budget, USD.
    pub limit: f64,
    /// Settled spend so far.
    pub spent: f64,
    /// Held by running requests.
    pub reserved: f64,
}

/// A reservation taken from a ledger, to settle when the request ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    /// USD held.
    pub amount: f64,
    /// The period it was taken in.
    pub window: Window,
}

impl Ledger {
    /// An empty ledger for `window`.
    pub fn new(window: Window) -> Self {
        Ledger {
            window,
            spent: 0.0,
            reserved: 0.0,
        }
    }

    /// Moves to `current` when the period has turned: the spend starts again from zero, and
    /// what running requests reserved in the old period stays with it.
    pub fn roll(&mut self, current: Window) {
        if current != self.window {
            *self = Ledger::new(current);
        }
    }

    /// Holds `amount` for a request if the budget allows it.
    pub fn reserve(&mut self, limit: f64, amount: f64) -> Result<Reservation, OverBudget> {
        let amount = amount.max(0.0);
        if self.spent + self.reserved + amount > limit {
            return Err(OverBudget {
                limit,
                spent: self.spent,
                reserved: self.reserved,
            });
        }
        self.reserved += amount;
        Ok(Reservation {
            amount,
            window: self.window,
        })
    }

    /// Ends a request: its reservation is released and its `actual` cost is spent. A
    /// reservation from a period that has since turned is already gone with that period, and
    /// its cost counts for the period it ran in (the durable ledger keeps it).
    pub fn settle(&mut self, reservation: Reservation, actual: f64) {
        if reservation.window != self.window {
            return;
        }
        self.reserved = (self.reserved - reservation.amount).max(0.0);
        self.spent += actual.max(0.0);
    }

    /// The share of `limit` spent, for soft thresholds (0.8 = 80 %).
    pub fn used(&self, limit: f64) -> f64 {
        if limit <= 0.0 {
            1.0
        } else {
            self.spent / limit
        }
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
        let mut ledger = Ledger::new(Window {
            start_ms: 0,
            end_ms: None,
        });
        let a = ledger.reserve(1.0, 0.6).unwrap();
        let refused = ledger.reserve(1.0, 0.5).unwrap_err();
        assert_eq!((refused.spent, refused.reserved), (0.0, 0.6));
        ledger.settle(a, 0.1);
        assert!((ledger.spent - 0.1).abs() < 1e-12);
        assert!(ledger.reserved.abs() < 1e-12);
        assert!(ledger.reserve(1.0, 0.5).is_ok(), "room came back");
        assert!((ledger.used(1.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn a_new_period_starts_from_zero() {
        let day1 = Window {
            start_ms: 0,
            end_ms: Some(10),
        };
        let day2 = Window {
            start_ms: 10,
            end_ms: Some(20),
        };
        let mut ledger = Ledger::new(day1);
        let late = ledger.reserve(1.0, 0.9).unwrap();
        let small = ledger.reserve(1.0, 0.0).unwrap();
        ledger.settle(small, 0.05);
        ledger.roll(day2);
        assert_eq!((ledger.spent, ledger.reserved), (0.0, 0.0));
        assert!(ledger.reserve(1.0, 1.0).is_ok());
        ledger.settle(late, 0.9);
        assert!(
            (ledger.reserved - 1.0).abs() < 1e-12,
            "the old period's request settles there"
        );
    }

    proptest! {
        /// However requests interleave, the settled spend passes the limit by at most what
        /// admitted requests cost beyond their reservations.
        #[test]
        fn spend_never_passes_the_limit_by_more_than_the_underestimates(
            steps in proptest::collection::vec((0.0f64..0.5, 0.0f64..2.0, any::<bool>()), 1..200)
        ) {
            let limit = 1.0;
            let mut ledger = Ledger::new(Window { start_ms: 0, end_ms: None });
            let mut running: Vec<(Reservation, f64)> = Vec::new();
            let mut excess = 0.0;
            for (reserve, ratio, finish_one) in steps {
                if let Ok(reservation) = ledger.reserve(limit, reserve) {
                    running.push((reservation, reserve * ratio));
                }
                if finish_one && let Some((reservation, actual)) = running.pop() {
                    excess += (actual - reservation.amount).max(0.0);
                    ledger.settle(reservation, actual);
                }
                prop_assert!(ledger.spent + ledger.reserved <= limit + excess + 1e-9);
            }
        }
    }
}
