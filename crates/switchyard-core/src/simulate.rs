//! The what-if simulator's arithmetic: recorded requests replayed under another config's
//! routes and prices. Pure: the caller reads the request log and the config.
//!
//! Each answered request (status 200) is sent, in the simulation, to the target its route
//! would choose under the alternative config, with the request's own token counts:
//! - a route of the same name in the alternative config picks by its strategy: `priority`
//!   the lowest-priority target; `least-cost` the cheapest priced target for these tokens;
//!   `weighted` splits the request between targets by weight; `least-latency` and
//!   `least-busy` the target with the lowest observed mean latency (from the log itself, the
//!   provider performance this traffic saw), else the first;
//! - a route it lacks keeps the recorded provider and model, at the alternative prices;
//! - a cache hit stays a hit (it cost nothing and still does).
//!
//! Expected latency of a target is the mean the log recorded for that provider and model;
//! one the log never saw has none, and is reported as unknown.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::config::{Config, Target};
use crate::strategy::Strategy;
use crate::wire::TokenUsage;

/// One recorded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The route that served it.
    pub route: String,
    /// The provider that answered.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// Its usage.
    pub usage: TokenUsage,
    /// What it cost (`None`: unknown).
    pub cost_usd: Option<f64>,
    /// Its latency, microseconds.
    pub latency_us: u64,
    /// Served from the cache.
    pub hit: bool,
}

/// A provider's share of the traffic, recorded and simulated.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Shift {
    /// Requests it answered.
    pub recorded: f64,
    /// Requests it would answer.
    pub simulated: f64,
}

/// What the simulation found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Answered requests replayed.
    pub requests: u64,
    /// What they cost (priced requests only).
    pub recorded_usd: f64,
    /// What they would cost under the alternative.
    pub simulated_usd: f64,
    /// Requests whose recorded or simulated price is unknown (in neither figure).
    pub unpriced: u64,
    /// Mean latency recorded, milliseconds.
    pub recorded_latency_ms: Option<f64>,
    /// Mean latency expected under the alternative (requests to targets the log saw).
    pub simulated_latency_ms: Option<f64>,
    /// Simulated requests to targets the log never saw (no expected latency).
    pub latency_unknown: f64,
    /// Per provider.
    pub providers: BTreeMap<String, Shift>,
}

/// Replays `recorded` under `config`.
pub fn simulate(config: &Config, recorded: &[Recorded]) -> Report {
    let mut latency: HashMap<(&str, &str), (f64, f64)> = HashMap::new();
    for request in recorded {
        let entry = latency
            .entry((request.provider.as_str(), request.model.as_str()))
            .or_default();
        entry.0 += request.latency_us as f64;
        entry.1 += 1.0;
    }
    let mean_latency = |provider: &str, model: &str| {
        latency
            .get(&(provider, model))
            .map(|(sum, count)| sum / count)
    };
    let mut report = Report::default();
    let (mut recorded_latency, mut simulated_latency, mut simulated_known) = (0.0, 0.0, 0.0);
    for request in recorded {
        report.requests += 1;
        recorded_latency += request.latency_us as f64;
        report
            .providers
            .entry(request.provider.clone())
            .or_default()
            .recorded += 1.0;
        // (provider, model, share) the alternative sends it to.
        let shares: Vec<(String, String, f64)> = match config
            .routes
            .iter()
            .find(|route| route.name == request.route && !route.targets.is_empty())
        {
            None => vec![(request.provider.clone(), request.model.clone(), 1.0)],
            Some(route) => choose(route.strategy, &route.targets, |target| {
                (
                    config
                        .pricing
                        .cost(&target.provider.name, &target.model, &request.usage),
                    mean_latency(&target.provider.name, &target.model),
                )
            }),
        };
        let mut simulated = Some(0.0);
        for (provider, model, share) in &shares {
            report
                .providers
                .entry(provider.clone())
                .or_default()
                .simulated += share;
            match mean_latency(provider, model) {
                Some(mean) => {
                    simulated_latency += mean * share;
                    simulated_known += share;
                }
                None => report.latency_unknown += share,
            }
            if !request.hit {
                simulated = match (
                    simulated,
                    config.pricing.cost(provider, model, &request.usage),
                ) {
                    (Some(sum), Some(cost)) => Some(sum + cost * share),
                    _ => None,
                };
            }
        }
        match (request.cost_usd, simulated) {
            (Some(recorded_cost), Some(simulated_cost)) => {
                report.recorded_usd += recorded_cost;
                report.simulated_usd += simulated_cost;
            }
            _ => report.unpriced += 1,
        }
    }
    if report.requests > 0 {
        report.recorded_latency_ms = Some(recorded_latency / report.requests as f64 / 1_000.0);
    }
    if simulated_known > 0.0 {
        report.simulated_latency_ms = Some(simulated_latency / simulated_known / 1_000.0);
    }
    report
}

/// The targets a request goes to under `strategy`, with their shares; `facts` gives a
/// target's price for the request and its observed mean latency.
fn choose(
    strategy: Strategy,
    targets: &[Target],
    facts: impl Fn(&Target) -> (Option<f64>, Option<f64>),
) -> Vec<(String, String, f64)> {
    let one = |target: &Target| vec![(target.provider.name.clone(), target.model.clone(), 1.0)];
    let first = targets.iter().min_by_key(|target| target.priority);
    let picked = match strategy {
        Strategy::Priority => first,
        Strategy::LeastCost => targets.iter().min_by(|a, b| {
            let cost = |t: &Target| facts(t).0.unwrap_or(f64::MAX);
            cost(a)
                .total_cmp(&cost(b))
                .then(a.priority.cmp(&b.priority))
        }),
        Strategy::LeastLatency | Strategy::LeastBusy => targets
            .iter()
            .filter_map(|target| facts(target).1.map(|latency| (target, latency)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(target, _)| target)
            .or(first),
        Strategy::Weighted => {
            let total: u32 = targets.iter().map(|target| target.weight).sum();
            if total == 0 {
                first
            } else {
                return targets
                    .iter()
                    .filter(|target| target.weight > 0)
                    .map(|target| {
                        (
                            target.provider.name.clone(),
                            target.model.clone(),
                            f64::from(target.weight) / f64::from(total),
                        )
                    })
                    .collect();
            }
        }
    };
    picked.map(one).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_toml, validate};

    fn config(strategy: &str) -> Config {
        let text = format!(
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"K\"\n\
             [[providers]]\nname = \"b\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:2/v1\"\napi_key_env = \"K\"\n\
             [[prices]]\nprovider = \"a\"\nmodel = \"m\"\ninput = 2.0\noutput = 2.0\n\
             [[prices]]\nprovider = \"b\"\nmodel = \"m\"\ninput = 1.0\noutput = 1.0\n\
             [[routes]]\nmodel = \"r\"\nstrategy = \"{strategy}\"\n\
             targets = [{{ provider = \"a\", model = \"m\", weight = 3 }}, {{ provider = \"b\", model = \"m\", weight = 1 }}]\n"
        );
        let env: HashMap<String, String> = HashMap::from([("K".to_owned(), "k".to_owned())]);
        validate(&parse_toml(&text).unwrap(), &env).unwrap()
    }

    fn recorded(provider: &str, latency_ms: u64, hit: bool) -> Recorded {
        let usage = TokenUsage {
            input: 500_000,
            output: 500_000,
            ..TokenUsage::default()
        };
        Recorded {
            route: "r".to_owned(),
            provider: provider.to_owned(),
            model: "m".to_owned(),
            cost_usd: Some(if hit {
                0.0
            } else if provider == "a" {
                2.0
            } else {
                1.0
            }),
            usage,
            latency_us: latency_ms * 1_000,
            hit,
        }
    }

    #[test]
    fn least_cost_moves_the_traffic_to_the_cheaper_provider_with_its_latency() {
        let log = [
            recorded("a", 100, false),
            recorded("a", 100, false),
            recorded("b", 300, false),
        ];
        let report = simulate(&config("least-cost"), &log);
        assert_eq!(report.requests, 3);
        assert!((report.recorded_usd - 5.0).abs() < 1e-9);
        assert!((report.simulated_usd - 3.0).abs() < 1e-9);
        assert_eq!(
            report.providers["b"],
            Shift {
                recorded: 1.0,
                simulated: 3.0
            }
        );
        assert_eq!(report.simulated_latency_ms, Some(300.0));
        assert!((report.recorded_latency_ms.unwrap() - 500.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn weighted_splits_and_hits_stay_free() {
        let log = [recorded("b", 300, false), recorded("b", 1, true)];
        let report = simulate(&config("weighted"), &log);
        // 3/4 at 2.0 and 1/4 at 1.0 for the miss; the hit still costs nothing.
        assert!((report.simulated_usd - 1.75).abs() < 1e-9, "{report:?}");
        assert!((report.providers["a"].simulated - 1.5).abs() < 1e-9);
        assert!(
            (report.latency_unknown - 1.5).abs() < 1e-9,
            "a was never seen"
        );
        let unknown_route = Recorded {
            route: "gone".to_owned(),
            ..recorded("a", 10, false)
        };
        let report = simulate(&config("priority"), &[unknown_route]);
        assert!(
            (report.simulated_usd - 2.0).abs() < 1e-9,
            "kept at its provider"
        );
    }
}
