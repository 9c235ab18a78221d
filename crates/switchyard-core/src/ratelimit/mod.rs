//! Rate limiting, pure: the algorithms and their state, with time passed in.
//!
//! A [`Policy`] says how one limit counts; a [`State`] is one counter of it (one key, one
//! user, one IP...). The same arithmetic runs in the native gateway's in-memory limiter, and
//! the Redis scripts mirror it, so a limit means the same thing on one instance or many.
//!
//! - **Token bucket** ([`Policy::TokenBucket`]), as GCRA: the state is one number, the
//!   theoretical arrival time. `amount` per `period` refill, `burst` capacity. Over any
//!   interval of length `t` it admits at most `burst + amount × t / period` units (the
//!   emission interval is rounded up, so never more).
//! - **Sliding window** ([`Policy::SlidingWindow`]), the sliding-window counter: the current
//!   and previous fixed windows, the previous one weighted by how much of it still overlaps
//!   the sliding window. Constant memory; it never admits more than the limit in any aligned
//!   window, and it assumes the previous window's traffic was even, so a burst at the very end
//!   of one window can let up to twice the limit through a sliding window across the edge.
//! - **Window log** ([`Policy::WindowLog`]): every admission's time, exact for any sliding
//!   window, memory proportional to the admissions in a window.
//! - **Concurrency** ([`Policy::Concurrency`]): requests in flight.
//!
//! Token limits reserve an estimate at admission and settle against the actual usage
//! afterwards: [`Policy::release`] refunds, [`Policy::charge`] adds.
//!
//! This crate defines no clock: `now` is [`Nanos`] from the caller's [`crate::clock::Clock`].

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use crate::clock::Nanos;

pub mod shed;

/// Which counter a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The API key the client presented (a virtual key, the master key, or anonymous).
    Key,
    /// The end user: the OpenAI `user` field, or a configured header.
    User,
    /// The virtual key's team: one counter its keys share (keys without a team are not
    /// counted).
    Team,
    /// The client's IP address.
    Ip,
    /// The route (model name) the request resolved to.
    Model,
    /// The provider a request is sent to (to stay under that provider's own quota).
    Provider,
    /// The provider target (provider and model) a request is sent to, for quotas that a
    /// provider sets per model.
    Target,
    /// One counter for everything.
    Global,
}

impl Scope {
    /// The config and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::User => "user",
            Scope::Team => "team",
            Scope::Ip => "ip",
            Scope::Model => "model",
            Scope::Provider => "provider",
            Scope::Target => "target",
            Scope::Global => "global",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        Ok(match value {
            "key" => Scope::Key,
            "user" => Scope::User,
            "team" => Scope::Team,
            "ip" => Scope::Ip,
            "model" | "route" => Scope::Model,
            "provider" => Scope::Provider,
            "target" => Scope::Target,
            "global" => Scope::Global,
            other => {
                return Err(format!(
                    "unknown scope `{other}` (expected key, user, team, ip, model, provider, target or global)"
                ));
            }
        })
    }
}

impl Scope {
    /// Whether the limit is charged before each provider call rather than at admission.
    pub fn is_per_call(self) -> bool {
        matches!(self, Scope::Provider | Scope::Target)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Requests.
    Requests,
    /// Tokens: input estimate plus the output limit at admission, settled to actual usage.
    Tokens,
    /// Requests in flight at once.
    Concurrent,
}

impl Unit {
    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::Concurrent => "concurrent",
        }
    }
}

/// The counting algorithm of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// GCRA token bucket, with burst capacity (the default).
    #[default]
    TokenBucket,
    /// Sliding-window counter (approximate, constant memory).
    SlidingWindow,
    /// Sliding-window log (exact).
    WindowLog,
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        Ok(match value {
            "token_bucket" | "token-bucket" => Algorithm::TokenBucket,
            "sliding_window" | "sliding-window" => Algorithm::SlidingWindow,
            "window_log" | "window-log" | "sliding_log" => Algorithm::WindowLog,
            other => {
                return Err(format!(
                    "unknown algorithm `{other}` (expected token_bucket, sliding_window or window_log)"
                ));
            }
        })
    }
}

/// How one limit counts, with its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// GCRA: one unit every `interval` nanoseconds, at most `burst` at once.
    TokenBucket {
        /// Nanoseconds per unit (the period divided by the amount, rounded up).
        interval: Nanos,
        /// Capacity.
        burst: u64,
    },
    /// At most `limit` units per `window`, by the sliding-window counter.
    SlidingWindow {
        /// Units per window.
        limit: u64,
        /// Window length.
        window: Nanos,
    },
    /// At most `limit` units in any `window`, exactly.
    WindowLog {
        /// Units per window.
        limit: u64,
        /// Window length.
        window: Nanos,
    },
    /// At most `limit` at once.
    Concurrency {
        /// Most in flight.
        limit: u64,
    },
}

/// One counter's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// GCRA: the theoretical arrival time of the next unit.
    Bucket {
        /// Theoretical arrival time.
        tat: Nanos,
    },
    /// The sliding-window counter.
    Window {
        /// Start of the current fixed window (a multiple of the window length).
        start: Nanos,
        /// Units in the current window.
        current: u64,
        /// Units in the previous window.
        previous: u64,
    },
    /// The window log: (time, units), oldest first, and their sum.
    Log {
        /// Admissions in the window.
        entries: VecDeque<(Nanos, u64)>,
        /// Sum of their units.
        sum: u64,
    },
    /// Requests in flight.
    InFlight {
        /// How many.
        count: u64,
    },
}

/// What [`Policy::acquire`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Charged; `remaining` units left now, full again in `reset` nanoseconds.
    Admitted {
        /// Units left after this one.
        remaining: u64,
        /// Nanoseconds until the counter is back to its full capacity.
        reset: Nanos,
    },
    /// Not charged.
    Refused {
        /// Nanoseconds until the same request could be admitted; `None` when it never can
        /// (it asks for more than the limit's capacity, or waits on requests in flight).
        retry_after: Option<Nanos>,
        /// Nanoseconds until the counter is back to its full capacity.
        reset: Nanos,
    },
}

impl Policy {
    /// A rate policy: `amount` units per `period`, `burst` capacity for the token bucket
    /// (`None`: the amount). `None` when the numbers are zero.
    pub fn rate(
        algorithm: Algorithm,
        amount: u64,
        period: Nanos,
        burst: Option<u64>,
    ) -> Option<Self> {
        if amount == 0 || period == 0 {
            return None;
        }
        Some(match algorithm {
            Algorithm::TokenBucket => Policy::TokenBucket {
                interval: period.div_ceil(amount).max(1),
                burst: burst.unwrap_or(amount).max(1),
            },
            Algorithm::SlidingWindow => Policy::SlidingWindow {
                limit: amount,
                window: period,
            },
            Algorithm::WindowLog => Policy::WindowLog {
                limit: amount,
                window: period,
            },
        })
    }

    /// Most units one request can ever be granted at once.
    pub fn capacity(&self) -> u64 {
        match *self {
            Policy::TokenBucket { burst, .. } => burst,
            Policy::SlidingWindow { limit, .. }
            | Policy::WindowLog { limit, .. }
            | Policy::Concurrency { limit } => limit,
        }
    }

    /// A fresh counter.
    pub fn new_state(&self) -> State {
        match self {
            Policy::TokenBucket { .. } => State::Bucket { tat: 0 },
            Policy::SlidingWindow { .. } => State::Window {
                start: 0,
                current: 0,
                previous: 0,
            },
            Policy::WindowLog { .. } => State::Log {
                entries: VecDeque::new(),
                sum: 0,
            },
            Policy::Concurrency { .. } => State::InFlight { count: 0 },
        }
    }

    /// Tries to charge `units` at `now`. A refusal changes nothing.
    pub fn acquire(&self, state: &mut State, now: Nanos, units: u64) -> Outcome {
        match (*self, state) {
            (Policy::TokenBucket { interval, burst }, State::Bucket { tat }) => {
                let tolerance = mul(interval, burst);
                let new_tat = (*tat).max(now).saturating_add(mul(interval, units));
                let reset = new_tat.saturating_sub(now);
                if units > burst {
                    return Outcome::Refused {
                        retry_after: None,
                        reset: tat.saturating_sub(now),
                    };
                }
                let allowed_at = new_tat.saturating_sub(tolerance);
                if allowed_at > now {
                    return Outcome::Refused {
                        retry_after: Some(allowed_at - now),
                        reset: tat.saturating_sub(now),
                    };
                }
                *tat = new_tat;
                Outcome::Admitted {
                    remaining: (tolerance - reset) / interval,
                    reset,
                }
            }
            (Policy::SlidingWindow { limit, window }, state @ State::Window { .. }) => {
                roll(state, now, window);
                let State::Window {
                    start,
                    current,
                    previous,
                } = state
                else {
                    return refused_never();
                };
                let elapsed = now - *start;
                let used = weighted(*previous, window - elapsed, window) + *current;
                let reset = if *current > 0 {
                    (*start + 2 * window).saturating_sub(now)
                } else if *previous > 0 {
                    (*start + window).saturating_sub(now)
                } else {
                    0
                };
                if units > limit {
                    return Outcome::Refused {
                        retry_after: None,
                        reset,
                    };
                }
                if used + units <= limit {
                    *current += units;
                    return Outcome::Admitted {
                        remaining: limit - used - units,
                        reset: (*start + 2 * window).saturating_sub(now),
                    };
                }
                let retry_after =
                    window_retry(*start, *current, *previous, limit, units, window, now);
                Outcome::Refused {
                    retry_after: Some(retry_after),
                    reset,
                }
            }
            (Policy::WindowLog { limit, window }, State::Log { entries, sum }) => {
                expire(entries, sum, now, window);
                let reset = entries
                    .back()
                    .map_or(0, |(time, _)| (time + window).saturating_sub(now));
                if units > limit {
                    return Outcome::Refused {
                        retry_after: None,
                        reset,
                    };
                }
                if *sum + units <= limit {
                    match entries.back_mut() {
                        Some((time, n)) if *time == now => *n += units,
                        _ => entries.push_back((now, units)),
                    }
                    *sum += units;
                    return Outcome::Admitted {
                        remaining: limit - *sum,
                        reset: window,
                    };
                }
                // Enough of the oldest entries must leave the window to make room.
                let mut freed = 0;
                let mut retry_after = window;
                for (time, n) in entries.iter() {
                    freed += n;
                    if *sum - freed + units <= limit {
                        retry_after = (time + window).saturating_sub(now).max(1);
                        break;
                    }
                }
                Outcome::Refused {
                    retry_after: Some(retry_after),
                    reset,
                }
            }
            (Policy::Concurrency { limit }, State::InFlight { count }) => {
                if *count + units <= limit {
                    *count += units;
                    Outcome::Admitted {
                        remaining: limit - *count,
                        reset: 0,
                    }
                } else {
                    Outcome::Refused {
                        retry_after: None,
                        reset: 0,
                    }
                }
            }
            // A state of another policy (the config changed under it): start afresh.
            (policy, state) => {
                *state = policy.new_state();
                policy.acquire(state, now, units)
            }
        }
    }

    /// Gives back `units` charged at `charged_at`: a refund of an over-estimate, a request
    /// admitted with other limits that refused it, or the end of a request in flight.
    pub fn release(&self, state: &mut State, now: Nanos, charged_at: Nanos, units: u64) {
        match (*self, state) {
            (Policy::TokenBucket { interval, .. }, State::Bucket { tat }) => {
                *tat = tat.saturating_sub(mul(interval, units)).max(now.min(*tat));
            }
            (Policy::SlidingWindow { window, .. }, state @ State::Window { .. }) => {
                roll(state, now, window);
                if let State::Window {
                    start,
                    current,
                    previous,
                } = state
                {
                    let charged_window = charged_at - charged_at % window;
                    if charged_window == *start {
                        *current = current.saturating_sub(units);
                    } else if charged_window + window == *start {
                        *previous = previous.saturating_sub(units);
                    }
                }
            }
            (Policy::WindowLog { window, .. }, State::Log { entries, sum }) => {
                expire(entries, sum, now, window);
                let mut left = units;
                for (time, n) in entries.iter_mut().rev() {
                    if *time == charged_at && left > 0 {
                        let take = left.min(*n);
                        *n -= take;
                        *sum -= take;
                        left -= take;
                    }
                }
                entries.retain(|(_, n)| *n > 0);
            }
            (Policy::Concurrency { .. }, State::InFlight { count }) => {
                *count = count.saturating_sub(units);
            }
            _ => {}
        }
    }

    /// Charges `units` more at `now`, whatever the limit says: usage beyond the reservation.
    /// The counter may go past its limit; later requests wait for it to drain.
    pub fn charge(&self, state: &mut State, now: Nanos, units: u64) {
        if units == 0 {
            return;
        }
        match (*self, state) {
            (Policy::TokenBucket { interval, .. }, State::Bucket { tat }) => {
                *tat = (*tat).max(now).saturating_add(mul(interval, units));
            }
            (Policy::SlidingWindow { window, .. }, state @ State::Window { .. }) => {
                roll(state, now, window);
                if let State::Window { current, .. } = state {
                    *current = current.saturating_add(units);
                }
            }
            (Policy::WindowLog { window, .. }, State::Log { entries, sum }) => {
                expire(entries, sum, now, window);
                entries.push_back((now, units));
                *sum = sum.saturating_add(units);
            }
            (Policy::Concurrency { .. }, State::InFlight { count }) => {
                *count = count.saturating_add(units);
            }
            _ => {}
        }
    }

    /// Units left now, and nanoseconds until the counter is full again, without charging.
    pub fn peek(&self, state: &State, now: Nanos) -> (u64, Nanos) {
        let mut copy = state.clone();
        match self.acquire(&mut copy, now, 0) {
            Outcome::Admitted { remaining, reset } => (remaining, reset),
            Outcome::Refused { reset, .. } => (0, reset),
        }
    }

    /// Whether the counter is back to a fresh one's state at `now` (it can be forgotten).
    pub fn is_idle(&self, state: &State, now: Nanos) -> bool {
        match (*self, state) {
            (_, State::Bucket { tat }) => *tat <= now,
            (Policy::SlidingWindow { window, .. }, State::Window { start, .. }) => {
                now >= start.saturating_add(2 * window)
            }
            (Policy::WindowLog { window, .. }, State::Log { entries, .. }) => entries
                .back()
                .is_none_or(|(time, _)| time.saturating_add(window) <= now),
            (_, State::InFlight { count }) => *count == 0,
            _ => true,
        }
    }
}

fn refused_never() -> Outcome {
    Outcome::Refused {
        retry_after: None,
        reset: 0,
    }
}

/// `a × b`, saturating.
fn mul(a: u64, b: u64) -> u64 {
    a.saturating_mul(b)
}

/// `count × part / whole`, rounded up (so the estimate never undercounts).
fn weighted(count: u64, part: Nanos, whole: Nanos) -> u64 {
    if count == 0 || whole == 0 {
        return 0;
    }
    let value = (u128::from(count) * u128::from(part)).div_ceil(u128::from(whole));
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Moves the sliding-window counter to the fixed window holding `now`.
fn roll(state: &mut State, now: Nanos, window: Nanos) {
    if let State::Window {
        start,
        current,
        previous,
    } = state
    {
        let aligned = now - now % window;
        if aligned == *start {
            return;
        }
        if aligned == start.saturating_add(window) {
            *previous = *current;
        } else {
            *previous = 0;
        }
        *current = 0;
        *start = aligned;
    }
}

/// When a sliding-window counter refusing `units` at `now` would admit them.
fn window_retry(
    start: Nanos,
    current: u64,
    previous: u64,
    limit: u64,
    units: u64,
    window: Nanos,
    now: Nanos,
) -> Nanos {
    // Within this window: the previous window's weight must fall far enough.
    if current + units <= limit && previous > 0 {
        let room = limit - current - units;
        // previous × (window − e) / window ≤ room  ⇔  e ≥ window − room × window / previous
        let needed = window
            - (u128::from(room) * u128::from(window) / u128::from(previous)).min(u128::from(window))
                as u64;
        let at = start + needed;
        if at > now {
            return at - now;
        }
        return 1;
    }
    // In the next window the current one becomes the previous one, and must weigh little
    // enough (it is not empty: otherwise this request would have fitted).
    let next = start + window;
    if current == 0 {
        return next.saturating_sub(now).max(1);
    }
    let room = limit.saturating_sub(units);
    let needed = window
        - (u128::from(room) * u128::from(window) / u128::from(current)).min(u128::from(window))
            as u64;
    (next + needed).saturating_sub(now).max(1)
}

/// Drops window-log entries that have left the window.
fn expire(entries: &mut VecDeque<(Nanos, u64)>, sum: &mut u64, now: Nanos, window: Nanos) {
    while let Some((time, n)) = entries.front() {
        if time.saturating_add(window) <= now {
            *sum -= n;
            entries.pop_front();
        } else {
            break;
        }
    }
}

/// A duration in OpenAI's `x-ratelimit-reset-*` spelling: `1s`, `6m0s`, `1h2m3s`, `20ms`.
pub fn reset_text(nanos: Nanos) -> String {
    let millis = nanos.div_ceil(1_000_000);
    if millis < 1_000 {
        return format!("{millis}ms");
    }
    let total_secs = millis.div_ceil(1_000);
    let (hours, minutes, seconds) = (total_secs / 3600, (total_secs / 60) % 60, total_secs % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests;
