//! Target selection: the order in which a route's targets are tried, per routing strategy.
//!
//! The caller summarises each target as a [`CandidateView`] (availability from the breaker,
//! drain, cooldown and concurrency limit; priority; weight; load; latency and price) and
//! [`order`] returns the attempt order as indices. Unavailable targets never appear, so an
//! empty order means "fail fast". Randomness comes from the caller, which keeps this pure and
//! lets tests seed it. Choosing what counts as available, and walking the order with retries,
//! belong to the failover stage, not here.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a route orders its targets (`strategy = "..."` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Ordered fallback: lowest `priority` first, then config order.
    #[default]
    Priority,
    /// Weighted random, without replacement for the failover order.
    Weighted,
    /// Power of two choices on the peak-EWMA latency cost.
    LeastLatency,
    /// Fewest requests in flight.
    LeastBusy,
    /// Cheapest expected cost.
    LeastCost,
}

impl Strategy {
    /// Every strategy, in documentation order.
    pub const ALL: [Strategy; 5] = [
        Strategy::Priority,
        Strategy::Weighted,
        Strategy::LeastLatency,
        Strategy::LeastBusy,
        Strategy::LeastCost,
    ];

    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::Weighted => "weighted",
            Strategy::LeastLatency => "least-latency",
            Strategy::LeastBusy => "least-busy",
            Strategy::LeastCost => "least-cost",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    /// A message naming the valid strategies, for the config error.
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "unknown strategy `{name}`: expected one of priority, weighted, \
                     least-latency, least-busy, least-cost"
                )
            })
    }
}

/// What selection needs to know about one target at this moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CandidateView {
    /// The breaker would admit it, and it is not drained, cooling down after a 429 or at its
    /// concurrency limit. Unavailable candidates are left out of the order.
    pub available: bool,
    /// Lower is preferred (`priority`, and the tie-break for `least-busy` and `least-cost`).
    pub priority: u32,
    /// Relative share of traffic under `weighted`; 0 takes none while any other has weight.
    pub weight: u32,
    /// Requests in flight to this target now.
    pub in_flight: u32,
    /// [`crate::health::PeakEwma::cost_at`] (or `cost`): latency estimate × (in flight + 1),
    /// in nanoseconds.
    pub latency_cost: f64,
    /// Expected cost of this request on this target, in USD (`f64::MAX` when its price is
    /// unknown: an unpriced target is never taken for the cheapest).
    pub expected_cost: f64,
    /// Within the route's latency objective (or too little known to say, or no objective).
    pub meets_objective: bool,
}

/// The order in which to try `candidates` under `strategy`, as indices into `candidates`.
/// Only available candidates appear, each once; under `weighted`, those with weight 0 appear
/// only when every available candidate has weight 0 (then in config order). `random` must
/// return uniformly distributed `u64`s; only `weighted` and `least-latency` call it.
pub fn order(
    strategy: Strategy,
    candidates: &[CandidateView],
    random: &mut dyn FnMut() -> u64,
) -> Vec<usize> {
    let mut available: Vec<usize> = (0..candidates.len())
        .filter(|&index| candidates[index].available)
        .collect();
    match strategy {
        Strategy::Priority => {
            // A stable sort keeps config order among equal priorities.
            available.sort_by_key(|&index| candidates[index].priority);
            available
        }
        Strategy::Weighted => weighted(candidates, available, random),
        Strategy::LeastLatency => least_latency(candidates, available, random),
        Strategy::LeastBusy => {
            available.sort_by_key(|&index| {
                let candidate = &candidates[index];
                (candidate.in_flight, candidate.priority)
            });
            available
        }
        Strategy::LeastCost => {
            // Targets within the latency objective first: a cent is never worth a slow answer.
            available.sort_by(|&a, &b| {
                let (a, b) = (&candidates[a], &candidates[b]);
                b.meets_objective
                    .cmp(&a.meets_objective)
                    .then(compare_cost(a.expected_cost, b.expected_cost))
                    .then(a.priority.cmp(&b.priority))
            });
            available
        }
    }
}

/// Weighted random without replacement: each next target is drawn in proportion to its
/// weight among those not yet drawn.
fn weighted(
    candidates: &[CandidateView],
    available: Vec<usize>,
    random: &mut dyn FnMut() -> u64,
) -> Vec<usize> {
    let mut pool: Vec<(usize, u64)> = available
        .iter()
        .map(|&index| (index, u64::from(candidates[index].weight)))
        .filter(|&(_, weight)| weight > 0)
        .collect();
    if pool.is_empty() {
        return available;
    }
    let mut total: u64 = pool.iter().map(|&(_, weight)| weight).sum();
    let mut order = Vec::with_capacity(pool.len());
    while pool.len() > 1 {
        let mut point = below(random, total);
        // The last entry also takes any remainder, so the loop always picks one.
        let mut position = pool.len() - 1;
        for (i, &(_, weight)) in pool.iter().enumerate() {
            if point < weight {
                position = i;
                break;
            }
            point -= weight;
        }
        let (index, weight) = pool.remove(position);
        total -= weight;
        order.push(index);
    }
    order.extend(pool.into_iter().map(|(index, _)| index));
    order
}

/// Power of two choices for the first target, then the rest by ascending latency cost.
fn least_latency(
    candidates: &[CandidateView],
    mut available: Vec<usize>,
    random: &mut dyn FnMut() -> u64,
) -> Vec<usize> {
    let by_cost = |&a: &usize, &b: &usize| {
        compare_cost(candidates[a].latency_cost, candidates[b].latency_cost).then(a.cmp(&b))
    };
    let count = available.len() as u64;
    if count < 2 {
        return available;
    }
    let first = below(random, count) as usize;
    let mut second = below(random, count - 1) as usize;
    if second >= first {
        second += 1;
    }
    let winner = match by_cost(&available[first], &available[second]) {
        Ordering::Greater => second,
        Ordering::Less | Ordering::Equal => first,
    };
    let winner = available.remove(winner);
    available.sort_by(by_cost);
    available.insert(0, winner);
    available
}

/// Orders costs ascending, with NaN (an unknown cost) last and -0 equal to 0, so that ties
/// fall through to the next key.
fn compare_cost(a: f64, b: f64) -> Ordering {
    let known = |cost: f64| if cost.is_nan() { f64::INFINITY } else { cost };
    // Without NaN, every pair compares.
    known(a).partial_cmp(&known(b)).unwrap_or(Ordering::Equal)
}

/// A uniform draw in `0..bound` (`bound > 0`), by multiplying rather than by modulo, which
/// would favour small values.
fn below(random: &mut dyn FnMut() -> u64, bound: u64) -> u64 {
    ((u128::from(random()) * u128::from(bound)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::strategy::Strategy as _;

    // Both globs export a `Strategy`; ours is the one meant by the bare name.
    use super::Strategy;
    use super::*;

    /// splitmix64: a small seeded generator, so that tests are reproducible.
    fn seeded(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// A random source for strategies that must not use one.
    fn no_random() -> impl FnMut() -> u64 {
        || -> u64 { unreachable!("this strategy must not draw random numbers") }
    }

    /// Returns `values` in order, and fails the test if asked for more.
    fn scripted(values: &[u64]) -> impl FnMut() -> u64 + '_ {
        let mut values = values.iter().copied();
        move || {
            values
                .next()
                .unwrap_or_else(|| unreachable!("more random draws than expected"))
        }
    }

    fn up(priority: u32) -> CandidateView {
        CandidateView {
            available: true,
            priority,
            weight: 1,
            meets_objective: true,
            ..CandidateView::default()
        }
    }

    fn down(priority: u32) -> CandidateView {
        CandidateView {
            available: false,
            ..up(priority)
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for strategy in Strategy::ALL {
            assert_eq!(strategy.to_string().parse::<Strategy>(), Ok(strategy));
            let json = serde_json::to_string(&strategy).unwrap();
            assert_eq!(json, format!("\"{strategy}\""));
            assert_eq!(serde_json::from_str::<Strategy>(&json).unwrap(), strategy);
        }
        assert_eq!(Strategy::default(), Strategy::Priority);
        assert_eq!(
            "fastest".parse::<Strategy>().unwrap_err(),
            "unknown strategy `fastest`: expected one of priority, weighted, least-latency, \
             least-busy, least-cost"
        );
        assert!("Least-Latency".parse::<Strategy>().is_err());
    }

    #[test]
    fn priority_is_ascending_with_config_order_for_ties() {
        let candidates = [up(2), up(1), down(0), up(1), up(0)];
        assert_eq!(
            order(Strategy::Priority, &candidates, &mut no_random()),
            [4, 1, 3, 0]
        );
    }

    #[test]
    fn nothing_available_is_an_empty_order_for_every_strategy() {
        let candidates = [down(0), down(1)];
        for strategy in Strategy::ALL {
            assert!(order(strategy, &candidates, &mut no_random()).is_empty());
            assert!(order(strategy, &[], &mut no_random()).is_empty());
        }
    }

    #[test]
    fn a_single_available_target_needs_no_randomness() {
        let candidates = [down(0), up(1), down(2)];
        for strategy in Strategy::ALL {
            assert_eq!(order(strategy, &candidates, &mut no_random()), [1]);
        }
    }

    #[test]
    fn weighted_draws_in_proportion_without_replacement() {
        let weights = [3, 0, 1, 6];
        let candidates: Vec<CandidateView> = weights
            .iter()
            .map(|&weight| CandidateView { weight, ..up(0) })
            .collect();
        // A draw at the very bottom of the range picks the first by weight each time.
        assert_eq!(order(Strategy::Weighted, &candidates, &mut || 0), [0, 2, 3]);
        // At the very top, the last.
        assert_eq!(
            order(Strategy::Weighted, &candidates, &mut || u64::MAX),
            [3, 2, 0]
        );
        // Three tenths of the way in is the start of index 2's share (3 | 1 | 6).
        assert_eq!(
            order(
                Strategy::Weighted,
                &candidates,
                &mut scripted(&[u64::MAX / 10 * 3 + 10, 0])
            ),
            [2, 0, 3]
        );
    }

    #[test]
    fn weighted_skips_zero_weights_unless_all_are_zero() {
        let mut candidates = [
            CandidateView { weight: 0, ..up(0) },
            CandidateView { weight: 5, ..up(0) },
            CandidateView { weight: 0, ..up(0) },
        ];
        let mut random = seeded(7);
        for _ in 0..100 {
            assert_eq!(order(Strategy::Weighted, &candidates, &mut random), [1]);
        }
        candidates[1].available = false;
        assert_eq!(
            order(Strategy::Weighted, &candidates, &mut no_random()),
            [0, 2]
        );
    }

    #[test]
    fn least_latency_picks_the_cheaper_of_two_then_sorts_the_rest() {
        let costs = [30.0, 10.0, 20.0, 40.0];
        let candidates: Vec<CandidateView> = costs
            .iter()
            .map(|&latency_cost| CandidateView {
                latency_cost,
                ..up(0)
            })
            .collect();
        // Draws 0 and 0: positions 0 and 1 (the second skips the first), 10 beats 30.
        assert_eq!(
            order(Strategy::LeastLatency, &candidates, &mut || 0),
            [1, 2, 0, 3]
        );
        // Draws at the top: positions 3 and 2, 20 beats 40; the rest ascending.
        assert_eq!(
            order(Strategy::LeastLatency, &candidates, &mut || u64::MAX),
            [2, 1, 0, 3]
        );
        // Positions 3 and 0: 30 beats 40, even though 10 exists. That is the point of two
        // choices: the best target does not take every request.
        assert_eq!(
            order(
                Strategy::LeastLatency,
                &candidates,
                &mut scripted(&[u64::MAX, 0])
            ),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn least_latency_breaks_ties_by_index_and_puts_unknown_costs_last() {
        let candidates = [
            CandidateView {
                latency_cost: f64::NAN,
                ..up(0)
            },
            CandidateView {
                latency_cost: 5.0,
                ..up(0)
            },
            down(0),
            CandidateView {
                latency_cost: 5.0,
                ..up(0)
            },
        ];
        // Positions 2 and 1 of [0, 1, 3]: indices 3 and 1 tie, the lower index wins.
        assert_eq!(
            order(
                Strategy::LeastLatency,
                &candidates,
                &mut scripted(&[u64::MAX, u64::MAX])
            ),
            [1, 3, 0]
        );
        // Positions 0 and 1: NaN loses to 5.
        assert_eq!(
            order(Strategy::LeastLatency, &candidates, &mut || 0),
            [1, 3, 0]
        );
    }

    #[test]
    fn least_busy_orders_by_in_flight_then_priority_then_index() {
        let candidates = [
            CandidateView {
                in_flight: 3,
                ..up(0)
            },
            CandidateView {
                in_flight: 1,
                ..up(5)
            },
            CandidateView {
                in_flight: 1,
                ..up(2)
            },
            CandidateView {
                in_flight: 0,
                ..down(0)
            },
            CandidateView {
                in_flight: 1,
                ..up(2)
            },
        ];
        assert_eq!(
            order(Strategy::LeastBusy, &candidates, &mut no_random()),
            [2, 4, 1, 0]
        );
    }

    #[test]
    fn least_cost_orders_by_cost_then_priority_then_index() {
        let candidates = [
            CandidateView {
                expected_cost: 0.02,
                ..up(0)
            },
            CandidateView {
                expected_cost: f64::NAN,
                ..up(0)
            },
            CandidateView {
                expected_cost: 0.001,
                ..up(3)
            },
            CandidateView {
                expected_cost: 0.001,
                ..up(1)
            },
            CandidateView {
                expected_cost: 0.0,
                ..down(0)
            },
            CandidateView {
                expected_cost: 0.001,
                ..up(1)
            },
        ];
        assert_eq!(
            order(Strategy::LeastCost, &candidates, &mut no_random()),
            [3, 5, 2, 0, 1]
        );
        // Negative zero is no cheaper than zero: priority decides.
        let zeros = [
            CandidateView {
                expected_cost: 0.0,
                ..up(0)
            },
            CandidateView {
                expected_cost: -0.0,
                ..up(1)
            },
        ];
        assert_eq!(order(Strategy::LeastCost, &zeros, &mut no_random()), [0, 1]);
        // Over the latency objective: tried only after every target within it, however cheap.
        let slow_but_cheap = [
            CandidateView {
                expected_cost: 0.001,
                meets_objective: false,
                ..up(0)
            },
            CandidateView {
                expected_cost: 0.03,
                ..up(0)
            },
            CandidateView {
                expected_cost: 0.02,
                ..up(0)
            },
        ];
        assert_eq!(
            order(Strategy::LeastCost, &slow_but_cheap, &mut no_random()),
            [2, 1, 0]
        );
    }

    #[test]
    fn draws_are_unbiased_at_the_edges() {
        assert_eq!(below(&mut || 0, 3), 0);
        assert_eq!(below(&mut || u64::MAX, 3), 2);
        assert_eq!(below(&mut || u64::MAX / 3 + 1, 3), 1);
        assert_eq!(below(&mut || u64::MAX, 1), 0);
    }

    fn candidate() -> impl prop::strategy::Strategy<Value = CandidateView> {
        (
            prop::bool::weighted(0.7),
            0u32..4,
            0u32..5,
            0u32..4,
            prop_oneof![0.0f64..100.0, Just(f64::NAN), Just(0.0)],
            prop_oneof![0.0f64..1.0, Just(f64::NAN), Just(0.5)],
        )
            .prop_map(
                |(available, priority, weight, in_flight, latency_cost, expected_cost)| {
                    CandidateView {
                        available,
                        priority,
                        weight,
                        in_flight,
                        latency_cost,
                        expected_cost,
                        meets_objective: priority % 2 == 0,
                    }
                },
            )
    }

    fn any_strategy() -> impl prop::strategy::Strategy<Value = Strategy> {
        prop::sample::select(Strategy::ALL.to_vec())
    }

    proptest! {
        /// Every available candidate appears exactly once and no unavailable one does (under
        /// `weighted`, zero weights are left out while any available weight is positive).
        #[test]
        fn orders_are_permutations_of_the_available(
            strategy in any_strategy(),
            candidates in prop::collection::vec(candidate(), 0..8),
            seed in any::<u64>(),
        ) {
            let mut got = order(strategy, &candidates, &mut seeded(seed));
            let any_weight = candidates.iter().any(|c| c.available && c.weight > 0);
            let expected: Vec<usize> = (0..candidates.len())
                .filter(|&i| candidates[i].available)
                .filter(|&i| {
                    strategy != Strategy::Weighted || !any_weight || candidates[i].weight > 0
                })
                .collect();
            got.sort_unstable();
            prop_assert_eq!(got, expected);
        }

        /// `priority` never skips a healthy first target: it starts with the available
        /// candidate of the lowest priority number, the first in config order among equals,
        /// and never goes back to a lower number.
        #[test]
        fn priority_starts_with_the_best_available(
            candidates in prop::collection::vec(candidate(), 1..8),
        ) {
            let got = order(Strategy::Priority, &candidates, &mut no_random());
            let best = (0..candidates.len())
                .filter(|&i| candidates[i].available)
                .min_by_key(|&i| (candidates[i].priority, i));
            prop_assert_eq!(got.first().copied(), best);
            for pair in got.windows(2) {
                let (a, b) = (&candidates[pair[0]], &candidates[pair[1]]);
                prop_assert!(a.priority < b.priority || (a.priority == b.priority && pair[0] < pair[1]));
            }
        }

        /// The first pick under `least-latency` is never the single most expensive target,
        /// and the rest are ascending.
        #[test]
        fn least_latency_never_leads_with_the_worst(
            costs in prop::collection::vec(0.0f64..100.0, 2..8),
            seed in any::<u64>(),
        ) {
            let candidates: Vec<CandidateView> = costs
                .iter()
                .map(|&latency_cost| CandidateView { latency_cost, ..up(0) })
                .collect();
            let got = order(Strategy::LeastLatency, &candidates, &mut seeded(seed));
            let worst = costs.iter().copied().fold(f64::MIN, f64::max);
            let worst_count = costs.iter().filter(|&&cost| cost == worst).count();
            if worst_count == 1 {
                prop_assert!(costs[got[0]] < worst);
            }
            for pair in got[1..].windows(2) {
                prop_assert!(costs[pair[0]] <= costs[pair[1]]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Over many draws, how often each target comes first matches its share of the
        /// weight among available targets.
        #[test]
        fn weighted_first_picks_converge_to_the_weights(
            weights in prop::collection::vec(0u32..20, 1..6),
            unavailable in any::<usize>(),
            seed in any::<u64>(),
        ) {
            const DRAWS: u32 = 20_000;
            let mut candidates: Vec<CandidateView> = weights
                .iter()
                .map(|&weight| CandidateView { weight, ..up(0) })
                .collect();
            if candidates.len() > 1 {
                candidates[unavailable % weights.len()].available = false;
            }
            let total: u32 = candidates.iter().filter(|c| c.available).map(|c| c.weight).sum();
            prop_assume!(total > 0);
            let mut firsts = vec![0u32; candidates.len()];
            let mut random = seeded(seed);
            for _ in 0..DRAWS {
                let got = order(Strategy::Weighted, &candidates, &mut random);
                firsts[got[0]] += 1;
            }
            for (index, candidate) in candidates.iter().enumerate() {
                let expected = if candidate.available {
                    f64::from(candidate.weight) / f64::from(total)
                } else {
                    0.0
                };
                let observed = f64::from(firsts[index]) / f64::from(DRAWS);
                // Six standard deviations at worst (p = 0.5) is about 0.021.
                prop_assert!(
                    (observed - expected).abs() < 0.025,
                    "index {index}: observed {observed}, expected {expected}"
                );
            }
        }
    }
}
