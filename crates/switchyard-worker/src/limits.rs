//! Rate limits at the edge: one Durable Object per counter, so that a limit holds across
//! every location of the edge, not per isolate.
//!
//! [`counters`] lists the counters a request is charged to: every `requests` limit of
//! `[rate_limits]` that applies to it (scopes key, user, team, ip, model and global), and a
//! virtual key's own `rpm`. Each is named `limit|value` (the Durable Object's name). The
//! object runs [`Counter::decide`]: the core's algorithm ([`Policy::acquire`]: GCRA token
//! bucket, sliding window, or window log) over its state, which it persists after each
//! admission so that an evicted object resumes where it left off.
//!
//! Not at the edge (yet): `tokens` and `concurrent` limits, the per-call `provider` and
//! `target` scopes, queueing, and load shedding. Counters are charged one after the other,
//! so a request refused by a later counter has already been charged to the earlier ones
//! (the native limiter is all-or-nothing).

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_core::clock::{Nanos, nanos};
use switchyard_core::config::RateLimitConfig;
use switchyard_core::error::{ErrorKind, GatewayError, Origin};
use switchyard_core::ratelimit::{Algorithm, Outcome, Policy, Scope, State, Unit, reset_text};

use crate::auth::Principal;

/// A [`Policy`] as it crosses to the Durable Object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicySpec {
    /// GCRA token bucket.
    TokenBucket {
        /// Nanoseconds per unit.
        interval: Nanos,
        /// Capacity.
        burst: u64,
    },
    /// Sliding-window counter.
    SlidingWindow {
        /// Units per window.
        limit: u64,
        /// Window, nanoseconds.
        window: Nanos,
    },
    /// Sliding-window log.
    WindowLog {
        /// Units per window.
        limit: u64,
        /// Window, nanoseconds.
        window: Nanos,
    },
}

impl PolicySpec {
    /// The spec of a rate policy; `None` for concurrency, which the edge does not count.
    pub fn of(policy: Policy) -> Option<Self> {
        match policy {
            Policy::TokenBucket { interval, burst } => {
                Some(PolicySpec::TokenBucket { interval, burst })
            }
            Policy::SlidingWindow { limit, window } => {
                Some(PolicySpec::SlidingWindow { limit, window })
            }
            Policy::WindowLog { limit, window } => Some(PolicySpec::WindowLog { limit, window }),
            Policy::Concurrency { .. } => None,
        }
    }

    /// The core policy.
    pub fn policy(self) -> Policy {
        match self {
            PolicySpec::TokenBucket { interval, burst } => Policy::TokenBucket { interval, burst },
            PolicySpec::SlidingWindow { limit, window } => Policy::SlidingWindow { limit, window },
            PolicySpec::WindowLog { limit, window } => Policy::WindowLog { limit, window },
        }
    }
}

/// One counter a request is charged to.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// The limit's name (in errors).
    pub limit: String,
    /// Its scope (in errors).
    pub scope: Scope,
    /// The Durable Object's name: `limit|value`.
    pub object: String,
    /// What the object asks of its counter.
    pub ask: Ask,
}

/// What the Worker sends to a counter's Durable Object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// The policy (the object resets its state when it changes).
    pub policy: PolicySpec,
    /// Units to charge.
    pub units: u64,
}

/// What the Durable Object answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Charged.
    pub admitted: bool,
    /// The limit's capacity.
    pub limit: u64,
    /// Units left after this request.
    pub remaining: u64,
    /// Nanoseconds until the counter is full again.
    pub reset: Nanos,
    /// When refused: nanoseconds until the same request could pass (`None`: never).
    pub retry_after: Option<Nanos>,
}

/// What a request reveals for choosing its counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// The route it resolved to.
    pub route: &'a str,
    /// The OpenAI `user` field, or the configured user header.
    pub user: Option<&'a str>,
    /// The client's IP (`CF-Connecting-IP`).
    pub ip: Option<&'a str>,
}

/// The counters a request is charged to, in config order, the key's own `rpm` last.
pub fn counters(
    config: &RateLimitConfig,
    principal: &Principal,
    subject: Subject<'_>,
) -> Vec<Charge> {
    let mut charges = Vec::new();
    for limit in &config.limits {
        if limit.unit != Unit::Requests || !limit.applies_to(subject.route) {
            continue;
        }
        let value = match limit.scope {
            Scope::Key => Some(principal.label().to_owned()),
            Scope::User => subject.user.map(str::to_owned),
            Scope::Team => match principal {
                Principal::Key(key) => key.settings.team.clone(),
                Principal::Master => None,
            },
            Scope::Ip => subject.ip.map(str::to_owned),
            Scope::Model => Some(subject.route.to_owned()),
            Scope::Global => Some("*".to_owned()),
            Scope::Provider | Scope::Target => None,
        };
        let (Some(value), Some(policy)) = (value, PolicySpec::of(limit.policy)) else {
            continue;
        };
        charges.push(Charge {
            limit: limit.name.clone(),
            scope: limit.scope,
            object: format!("{}|{value}", limit.name),
            ask: Ask { policy, units: 1 },
        });
    }
    if let Principal::Key(key) = principal
        && let Some(rpm) = key.settings.rpm
        && let Some(policy) = Policy::rate(
            Algorithm::TokenBucket,
            rpm,
            nanos(Duration::from_secs(60)),
            None,
        )
        .and_then(PolicySpec::of)
    {
        charges.push(Charge {
            limit: "key-rpm".to_owned(),
            scope: Scope::Key,
            object: format!("key-rpm|{}", key.id),
            ask: Ask { policy, units: 1 },
        });
    }
    charges
}

/// The 429 for a refused charge, in OpenAI's shape.
pub fn refusal(charge: &Charge, decision: &Decision) -> GatewayError {
    let message = match decision.retry_after {
        Some(wait) => format!(
            "Rate limit reached on `{}` ({} scope): {} requests. Try again in {}.",
            charge.limit,
            charge.scope,
            decision.limit,
            reset_text(wait)
        ),
        None => format!(
            "Request too large for `{}` ({} scope): the limit allows at most {} at once.",
            charge.limit, charge.scope, decision.limit
        ),
    };
    GatewayError::new(ErrorKind::RateLimited, Origin::Client, message)
        .with_code("rate_limit_exceeded")
        .with_retryable(decision.retry_after.is_some())
        .with_retry_after(decision.retry_after.map(Duration::from_nanos))
}

/// The `x-ratelimit-*` headers of the tightest decision (fewest remaining).
pub fn headers(decisions: &[Decision]) -> Vec<(&'static str, String)> {
    let Some(tightest) = decisions.iter().min_by_key(|d| d.remaining) else {
        return Vec::new();
    };
    vec![
        ("x-ratelimit-limit-requests", tightest.limit.to_string()),
        (
            "x-ratelimit-remaining-requests",
            tightest.remaining.to_string(),
        ),
        ("x-ratelimit-reset-requests", reset_text(tightest.reset)),
    ]
}

/// A counter's state as it is persisted (the core's [`State`], which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Saved {
    /// Token bucket.
    Bucket {
        /// Theoretical arrival time.
        tat: Nanos,
    },
    /// Sliding window.
    Window {
        /// Current window start.
        start: Nanos,
        /// Units in it.
        current: u64,
        /// Units in the previous one.
        previous: u64,
    },
    /// Window log.
    Log {
        /// (time, units), oldest first.
        entries: Vec<(Nanos, u64)>,
    },
}

/// The state one Durable Object keeps: the policy it counts under and the core's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The policy the state belongs to.
    pub policy: PolicySpec,
    /// The state.
    pub state: Saved,
}

impl Counter {
    /// Charges `ask` at `now` (unix nanoseconds), starting afresh when the policy changed
    /// (a config edit) or there was no counter yet.
    pub fn decide(counter: &mut Option<Counter>, ask: &Ask, now: Nanos) -> Decision {
        let policy = ask.policy.policy();
        let mut state = match counter.as_ref() {
            Some(counter) if counter.policy == ask.policy => load(&counter.state),
            _ => policy.new_state(),
        };
        let outcome = policy.acquire(&mut state, now, ask.units);
        *counter = save(&state).map(|state| Counter {
            policy: ask.policy,
            state,
        });
        match outcome {
            Outcome::Admitted { remaining, reset } => Decision {
                admitted: true,
                limit: policy.capacity(),
                remaining,
                reset,
                retry_after: None,
            },
            Outcome::Refused { retry_after, reset } => Decision {
                admitted: false,
                limit: policy.capacity(),
                remaining: 0,
                reset,
                retry_after,
            },
        }
    }
}

fn load(saved: &Saved) -> State {
    match saved {
        Saved::Bucket { tat } => State::Bucket { tat: *tat },
        Saved::Window {
            start,
            current,
            previous,
        } => State::Window {
            start: *start,
            current: *current,
            previous: *previous,
        },
        Saved::Log { entries } => State::Log {
            sum: entries.iter().map(|(_, units)| units).sum(),
            entries: entries.iter().copied().collect::<VecDeque<_>>(),
        },
    }
}

fn save(state: &State) -> Option<Saved> {
    match state {
        State::Bucket { tat } => Some(Saved::Bucket { tat: *tat }),
        State::Window {
            start,
            current,
            previous,
        } => Some(Saved::Window {
            start: *start,
            current: *current,
            previous: *previous,
        }),
        State::Log { entries, .. } => Some(Saved::Log {
            entries: entries.iter().copied().collect(),
        }),
        State::InFlight { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use switchyard_core::config::{self, Config};
    use switchyard_core::keys::{KeySettings, VirtualKey};

    use super::*;

    fn config(limits: &str) -> Config {
        let toml = format!(
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             api_key_env = \"A\"\n{limits}"
        );
        let env: HashMap<String, String> = [("A".to_owned(), "k".to_owned())].into();
        config::validate(&config::parse_toml(&toml).unwrap(), &env).unwrap()
    }

    fn key(rpm: Option<u64>, team: Option<&str>) -> Principal {
        Principal::Key(Arc::new(VirtualKey {
            id: "key_1".into(),
            hash: [0; 32],
            prefix: String::new(),
            settings: KeySettings {
                name: "k".into(),
                rpm,
                team: team.map(str::to_owned),
                ..KeySettings::default()
            },
            created_at_ms: 0,
            updated_at_ms: 0,
            revoked_at_ms: None,
        }))
    }

    #[test]
    fn a_request_is_charged_to_the_request_limits_that_apply_to_it() {
        let config = config(
            r#"
[[rate_limits.limits]]
name = "per-key"
scope = "key"
requests = 3
per = "1m"
only = ["limited"]

[[rate_limits.limits]]
name = "team"
scope = "team"
requests = 10
per = "1m"
algorithm = "sliding_window"

[[rate_limits.limits]]
name = "tokens"
scope = "global"
tokens = 1000
per = "1m"
"#,
        );
        let subject = |route| Subject {
            route,
            user: None,
            ip: Some("1.2.3.4"),
        };
        let master = counters(&config.rate_limits, &Principal::Master, subject("limited"));
        assert_eq!(
            master.iter().map(|c| c.object.as_str()).collect::<Vec<_>>(),
            ["per-key|master"]
        );
        let keyed = counters(
            &config.rate_limits,
            &key(Some(60), Some("red")),
            subject("other"),
        );
        assert_eq!(
            keyed.iter().map(|c| c.object.as_str()).collect::<Vec<_>>(),
            ["team|red", "key-rpm|key_1"]
        );
        assert!(matches!(
            keyed[0].ask.policy,
            PolicySpec::SlidingWindow { limit: 10, .. }
        ));
    }

    #[test]
    fn the_counter_refuses_past_its_capacity_and_refills_with_time() {
        let ask = Ask {
            policy: PolicySpec::of(
                Policy::rate(
                    Algorithm::TokenBucket,
                    2,
                    nanos(Duration::from_secs(60)),
                    None,
                )
                .unwrap(),
            )
            .unwrap(),
            units: 1,
        };
        let mut counter = None;
        let t0 = 1_000_000_000_000;
        assert!(Counter::decide(&mut counter, &ask, t0).admitted);
        let second = Counter::decide(&mut counter, &ask, t0);
        assert!(second.admitted);
        assert_eq!(second.remaining, 0);
        let third = Counter::decide(&mut counter, &ask, t0);
        assert!(!third.admitted);
        let wait = third.retry_after.unwrap();
        assert!(wait > 0 && wait <= nanos(Duration::from_secs(30)));
        // The persisted form carries the state across a restart of the object.
        let json = serde_json::to_string(&counter).unwrap();
        let mut restored: Option<Counter> = serde_json::from_str(&json).unwrap();
        assert!(!Counter::decide(&mut restored, &ask, t0).admitted);
        assert!(Counter::decide(&mut restored, &ask, t0 + wait).admitted);
    }

    #[test]
    fn a_changed_policy_starts_a_fresh_counter() {
        let window = |limit| Ask {
            policy: PolicySpec::SlidingWindow {
                limit,
                window: nanos(Duration::from_secs(60)),
            },
            units: 1,
        };
        let mut counter = None;
        assert!(Counter::decide(&mut counter, &window(1), 0).admitted);
        assert!(!Counter::decide(&mut counter, &window(1), 1).admitted);
        assert!(Counter::decide(&mut counter, &window(5), 2).admitted);
    }

    #[test]
    fn refusals_are_429_with_retry_after_and_headers_show_the_tightest() {
        let charge = Charge {
            limit: "per-key".into(),
            scope: Scope::Key,
            object: "per-key|master".into(),
            ask: Ask {
                policy: PolicySpec::WindowLog {
                    limit: 1,
                    window: 1,
                },
                units: 1,
            },
        };
        let decision = Decision {
            admitted: false,
            limit: 3,
            remaining: 0,
            reset: 2_000_000_000,
            retry_after: Some(1_500_000_000),
        };
        let error = refusal(&charge, &decision);
        assert_eq!(error.status(), 429);
        assert!(error.to_body().error.message.contains("per-key"));
        let loose = Decision {
            remaining: 9,
            ..decision
        };
        let headers = headers(&[loose, decision]);
        assert!(headers.contains(&("x-ratelimit-remaining-requests", "0".to_owned())));
        assert!(headers.contains(&("x-ratelimit-reset-requests", "2s".to_owned())));
    }
}
