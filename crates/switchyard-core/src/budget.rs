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

/// The spend ledger's bucket: 15 minutes (every time zone's midnight falls on a quarter hour,
/// so a period is a whole number of buckets).
pub const BUCKET_MS: u64 = 15 * 60 * 1000;

/// The half-life of the spend rate: spend three hours old weighs half as much as spend now.
/// Long enough that one burst moves the rate only a little (a dollar spent adds
/// `ln 2 / 3 h`, about $0.23 an hour, then fades), short enough that a quiet night brings it
/// well down by morning.
pub const RATE_HALF_LIFE_MS: u64 = 3 * 3_600_000;

/// How far back the spend rate reads: a day (eight half-lives; anything older would weigh
/// under 0.4 %), so a period that has just started has the rate from before it.
pub const RATE_HISTORY_MS: u64 = 24 * 3_600_000;

const HOUR_MS: f64 = 3_600_000.0;

/// Where the rate's history starts, `now_ms` being in the ledger bucket it is: whole buckets
/// only, so the spend a forecast needs bucket by bucket is from here on.
pub fn rate_history_start(now_ms: u64) -> u64 {
    (now_ms - now_ms % BUCKET_MS).saturating_sub(RATE_HISTORY_MS)
}

/// A member's spend in its current period and where it is heading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Spend in the period so far, nano-dollars.
    pub spent: i64,
    /// The recent spend rate, nano-dollars per hour (see [`forecast`]).
    pub rate_per_hour: f64,
    /// `spent + rate × the time left in the period`, nano-dollars; `None` for a `total`
    /// budget, whose period never ends.
    pub projected: Option<i64>,
}

/// Forecasts the end-of-period spend of one member from its spend per ledger bucket.
///
/// `buckets` are `(bucket start ms, nano-dollars)`, in any order, holding at least the
/// member's spend from the earlier of `window.start_ms` and [`rate_history_start`] on.
/// Spend before the history start may come folded into any entries between the period's
/// start and the history start (the store sends a month's first days as one row): the rate
/// never reads them, the spend does.
///
/// **The rate** is an exponentially weighted mean of the spend rate over the last day
/// ([`RATE_HISTORY_MS`]) with a half-life of [`RATE_HALF_LIFE_MS`], in continuous time:
/// a bucket that ended `a` ago and lasted `d` weighs `(1 - 2^(-d/h)) · 2^(-a/h)`. Empty
/// buckets count as a zero rate, so quiet hours lower it. The current bucket counts for
/// the part of it that has passed (its spend over its age, weighed by that age), so a
/// request a minute ago adds about as much as one in a full bucket, never its spend over a
/// minute. The sum is divided by the weight of the whole history (`1 - 2^(-span/h)`), so a
/// steady rate reads exactly as itself; a member that started spending an hour ago is
/// under-read for a few hours, which is the price of one burst not reading as a trend.
///
/// **The projection** is `spent + rate × (end − now)`; a `total` period has no end, so none.
pub fn forecast(window: Window, now_ms: u64, buckets: &[(u64, i64)]) -> Forecast {
    let current = now_ms - now_ms % BUCKET_MS;
    let history_start = rate_history_start(now_ms);
    let half_life = RATE_HALF_LIFE_MS as f64;
    // 1 - 2^(-ms/h), precise for short stretches.
    let weight_of = |ms: f64| -(-(ms / half_life) * std::f64::consts::LN_2).exp_m1();
    let mut spent: i64 = 0;
    let mut weighted = 0.0;
    let mut in_current: i64 = 0;
    for &(bucket_ms, nanos) in buckets {
        let nanos = nanos.max(0);
        let in_period =
            bucket_ms >= window.start_ms && window.end_ms.is_none_or(|end| bucket_ms < end);
        if in_period {
            spent = spent.saturating_add(nanos);
        }
        if bucket_ms < history_start || nanos == 0 {
            continue;
        }
        if bucket_ms >= current {
            // The bucket now running, or one ahead of this clock (another instance's).
            in_current = in_current.saturating_add(nanos);
            continue;
        }
        let width = BUCKET_MS as f64;
        let rate = nanos as f64 / (width / HOUR_MS);
        let age = (now_ms - (bucket_ms + BUCKET_MS)) as f64;
        weighted += rate * weight_of(width) * (-(age / half_life) * std::f64::consts::LN_2).exp();
    }
    let elapsed = now_ms - current;
    if in_current > 0 {
        // A spend at the very start of the bucket has been seen for a millisecond.
        let elapsed = elapsed.max(1) as f64;
        weighted += in_current as f64 / (elapsed / HOUR_MS) * weight_of(elapsed);
    }
    let span = (now_ms - history_start) as f64;
    let rate_per_hour = if span > 0.0 {
        weighted / weight_of(span)
    } else {
        0.0
    };
    let projected = window.end_ms.map(|end| {
        let hours_left = end.saturating_sub(now_ms) as f64 / HOUR_MS;
        spent.saturating_add((rate_per_hour * hours_left).round() as i64)
    });
    Forecast {
        spent,
        rate_per_hour,
        projected,
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

    const USD: i64 = 1_000_000_000;
    const HOUR: u64 = 3_600_000;
    const MINUTE: u64 = 60_000;

    /// 2026-11-29T00:00:00Z, and that day as a daily period.
    fn day() -> (u64, Window) {
        let start = ms("2026-11-29T00:00:00Z");
        (
            start,
            Window {
                start_ms: start,
                end_ms: Some(start + 24 * HOUR),
            },
        )
    }

    /// `usd` in each bucket of `[from, to)`.
    fn steady(from: u64, to: u64, usd: f64) -> Vec<(u64, i64)> {
        (from..to)
            .step_by(BUCKET_MS as usize)
            .map(|bucket| (bucket, (usd * USD as f64) as i64))
            .collect()
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= expected.abs() * 1e-9 + 1e-9
    }

    /// `2^x`.
    fn two(x: f64) -> f64 {
        2f64.powf(x)
    }

    fn usd_per_hour(forecast: &Forecast) -> f64 {
        forecast.rate_per_hour / USD as f64
    }

    #[test]
    fn no_spend_forecasts_nothing_and_a_total_period_has_no_end() {
        let (start, today) = day();
        let none = forecast(today, start + 12 * HOUR, &[]);
        assert_eq!(
            none,
            Forecast {
                spent: 0,
                rate_per_hour: 0.0,
                projected: Some(0)
            }
        );
        let total = Window {
            start_ms: 0,
            end_ms: None,
        };
        // The spend before the rate's history comes folded into one entry: spent, not a rate.
        let all = forecast(total, start + 12 * HOUR, &[(0, 70 * USD), (start, USD)]);
        assert_eq!(all.spent, 71 * USD);
        assert!(all.rate_per_hour > 0.0, "yesterday's dollar is recent");
        assert_eq!(all.projected, None, "a total budget never ends");
    }

    #[test]
    fn a_steady_rate_reads_as_itself_and_projects_to_the_end_of_the_period() {
        let (start, today) = day();
        let now = start + 12 * HOUR + 5 * MINUTE;
        // $1 a quarter hour ($4 an hour) since yesterday, a third of that in the five minutes
        // of the bucket now running.
        let mut series = steady(start - 24 * HOUR, start + 12 * HOUR, 1.0);
        series.push((start + 12 * HOUR, USD / 3));
        let f = forecast(today, now, &series);
        assert_eq!(f.spent, 48 * USD + USD / 3, "only today's buckets");
        assert!(close(usd_per_hour(&f), 4.0), "{f:?}");
        // 48.33 spent + 4 $/h × 11 h 55 min = 96: the day at $4 an hour.
        let projected = f.projected.unwrap();
        assert!((projected - 96 * USD).abs() < 1_000, "{f:?}");
    }

    #[test]
    fn a_burst_moves_the_rate_a_little_and_quiet_hours_halve_it() {
        let (start, today) = day();
        let burst = [(start + 9 * HOUR, 10 * USD)];
        // Just after it: $10 in a quarter hour is $40 an hour, weighed by one bucket's
        // weight, 1 - 2^(-1/12), over the day's, 1 - 2^(-8).
        let just_after = forecast(today, start + 9 * HOUR + 15 * MINUTE, &burst);
        let expected = 40.0 * (1.0 - two(-1.0 / 12.0)) / (1.0 - two(-8.0));
        assert!(close(usd_per_hour(&just_after), expected), "{just_after:?}");
        assert!(expected < 2.3, "not $40 an hour: {expected}");
        // Three quiet hours (one half-life) later, half of it.
        let quiet = forecast(today, start + 12 * HOUR + 15 * MINUTE, &burst);
        assert!(close(usd_per_hour(&quiet), expected / 2.0), "{quiet:?}");
        // 10 + 1.127 $/h × 11 h 45 min.
        let projected = 10.0 + expected / 2.0 * 11.75;
        assert!(
            (quiet.projected.unwrap() as f64 / USD as f64 - projected).abs() < 1e-6,
            "{quiet:?}"
        );
    }

    #[test]
    fn the_running_bucket_counts_for_the_part_that_has_passed() {
        let (start, today) = day();
        let now = start + 12 * HOUR + 5 * MINUTE;
        // $1 in the five minutes so far: $12 an hour over five minutes, weighed by five
        // minutes' weight, 1 - 2^(-5/180), over the whole history's (24 h 5 min).
        let history = 1.0 - two(-(24.0 * 60.0 + 5.0) / 180.0);
        let running = forecast(today, now, &[(start + 12 * HOUR, USD)]);
        let expected = 12.0 * (1.0 - two(-5.0 / 180.0)) / history;
        assert!(close(usd_per_hour(&running), expected), "{running:?}");
        // The same dollar in the bucket before: $4 an hour for a quarter hour, five minutes
        // old.
        let before = forecast(today, now, &[(start + 11 * HOUR + 45 * MINUTE, USD)]);
        let expected_before = 4.0 * (1.0 - two(-1.0 / 12.0)) * two(-5.0 / 180.0) / history;
        assert!(close(usd_per_hour(&before), expected_before), "{before:?}");
        // Either way about ln 2 / 3 h a dollar, never $12 an hour.
        let per_dollar = std::f64::consts::LN_2 / 3.0;
        for rate in [expected, expected_before] {
            assert!((rate / per_dollar - 1.0).abs() < 0.05, "{rate}");
        }
    }

    #[test]
    fn a_period_just_started_has_the_rate_from_before_it() {
        let (start, today) = day();
        let now = start + 10 * MINUTE;
        // Yesterday at $4 an hour to midnight, then $0.50 in the first ten minutes ($3 an
        // hour).
        let mut series = steady(start - 24 * HOUR, start, 1.0);
        series.push((start, USD / 2));
        let f = forecast(today, now, &series);
        assert_eq!(f.spent, USD / 2, "yesterday is not today's spend");
        let history = 1.0 - two(-(24.0 * 60.0 + 10.0) / 180.0);
        let yesterday = 4.0 * two(-10.0 / 180.0) * (1.0 - two(-8.0));
        let first_minutes = 3.0 * (1.0 - two(-10.0 / 180.0));
        let expected = (yesterday + first_minutes) / history;
        assert!(close(usd_per_hour(&f), expected), "{f:?}");
        let projected = 0.5 + expected * (23.0 + 50.0 / 60.0);
        assert!(
            (f.projected.unwrap() as f64 / USD as f64 - projected).abs() < 1e-6,
            "{f:?}"
        );
        // Without yesterday the first minutes alone read as a slow start.
        let fresh = forecast(today, now, &[(start, USD / 2)]);
        assert!(close(usd_per_hour(&fresh), first_minutes / history));
        assert!(usd_per_hour(&fresh) < 0.2);
    }

    #[test]
    fn spend_folded_before_the_history_counts_as_spent_but_not_as_rate() {
        let month = Window {
            start_ms: ms("2026-11-01T00:00:00Z"),
            end_ms: Some(ms("2026-12-01T00:00:00Z")),
        };
        let now = ms("2026-11-29T12:00:00Z");
        let f = forecast(
            month,
            now,
            &[
                (month.start_ms, 100 * USD),
                (ms("2026-10-31T23:45:00Z"), USD),
            ],
        );
        assert_eq!(
            f.spent,
            100 * USD,
            "last month's bucket is not this month's"
        );
        assert_eq!(f.rate_per_hour, 0.0);
        assert_eq!(f.projected, Some(100 * USD));
        assert_eq!(rate_history_start(now + 7 * MINUTE), now - 24 * HOUR);
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
