use proptest::prelude::*;

use super::*;

const SECOND: Nanos = 1_000_000_000;

/// Replays arrivals (gap since the previous one, units) and returns the admitted ones.
fn replay(policy: Policy, arrivals: &[(Nanos, u64)]) -> Vec<(Nanos, u64)> {
    let mut state = policy.new_state();
    let mut now = 1_000 * SECOND;
    let mut admitted = Vec::new();
    for &(gap, units) in arrivals {
        now += gap;
        if let Outcome::Admitted { .. } = policy.acquire(&mut state, now, units) {
            admitted.push((now, units));
        }
    }
    admitted
}

/// Units admitted in `[from, to)`.
fn admitted_in(admitted: &[(Nanos, u64)], from: Nanos, to: Nanos) -> u64 {
    admitted
        .iter()
        .filter(|(time, _)| *time >= from && *time < to)
        .map(|(_, units)| units)
        .sum()
}

fn arrivals() -> impl Strategy<Value = Vec<(Nanos, u64)>> {
    // Gaps from simultaneous to two seconds; mostly single units, some larger requests.
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0..SECOND / 100, 0..2 * SECOND],
            prop_oneof![Just(1u64), 1..20u64],
        ),
        1..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Over any interval, a token bucket admits at most `burst + amount × time / period`.
    #[test]
    fn token_bucket_never_exceeds_burst_plus_rate(
        arrivals in arrivals(),
        amount in 1u64..50,
        burst in 1u64..30,
        period_secs in 1u64..5,
    ) {
        let period = period_secs * SECOND;
        let policy = Policy::rate(Algorithm::TokenBucket, amount, period, Some(burst)).unwrap();
        let admitted = replay(policy, &arrivals);
        for (i, &(from, _)) in admitted.iter().enumerate() {
            for &(to, _) in &admitted[i..] {
                let count = admitted_in(&admitted, from, to + 1);
                let allowed = u128::from(burst)
                    + u128::from(amount) * u128::from(to - from) / u128::from(period);
                prop_assert!(
                    u128::from(count) <= allowed,
                    "{count} admitted in [{from}, {to}], at most {allowed} allowed"
                );
            }
        }
    }

    /// A window log never admits more than the limit in any window of its length.
    #[test]
    fn window_log_is_exact_in_every_window(
        arrivals in arrivals(),
        limit in 1u64..40,
        window_secs in 1u64..5,
    ) {
        let window = window_secs * SECOND;
        let policy = Policy::rate(Algorithm::WindowLog, limit, window, None).unwrap();
        let admitted = replay(policy, &arrivals);
        // The fullest windows start at an admission.
        for &(from, _) in &admitted {
            prop_assert!(admitted_in(&admitted, from, from + window) <= limit);
        }
    }

    /// A sliding-window counter never admits more than the limit in any aligned window, and
    /// never more than twice the limit in any sliding window.
    #[test]
    fn sliding_window_bounds(
        arrivals in arrivals(),
        limit in 1u64..40,
        window_secs in 1u64..5,
    ) {
        let window = window_secs * SECOND;
        let policy = Policy::rate(Algorithm::SlidingWindow, limit, window, None).unwrap();
        let admitted = replay(policy, &arrivals);
        for &(time, _) in &admitted {
            let aligned = time - time % window;
            prop_assert!(admitted_in(&admitted, aligned, aligned + window) <= limit);
            prop_assert!(admitted_in(&admitted, time, time + window) <= 2 * limit);
        }
    }

    /// A refused request asked to come back after `retry_after` is admitted then.
    #[test]
    fn retry_after_is_enough(
        arrivals in arrivals(),
        algorithm in prop_oneof![
            Just(Algorithm::TokenBucket),
            Just(Algorithm::SlidingWindow),
            Just(Algorithm::WindowLog),
        ],
        limit in 1u64..40,
        units in 1u64..10,
    ) {
        let policy = Policy::rate(algorithm, limit, 3 * SECOND, None).unwrap();
        let mut state = policy.new_state();
        let mut now = 1_000 * SECOND;
        for &(gap, n) in &arrivals {
            now += gap;
            policy.acquire(&mut state, now, n);
        }
        let mut probe = state.clone();
        match policy.acquire(&mut probe, now, units) {
            Outcome::Refused { retry_after: Some(wait), .. } => {
                let mut later = state.clone();
                let outcome = policy.acquire(&mut later, now + wait, units);
                prop_assert!(
                    matches!(outcome, Outcome::Admitted { .. }),
                    "{algorithm:?}: refused again after its retry_after of {wait} ns"
                );
            }
            Outcome::Refused { retry_after: None, .. } => prop_assert!(units > limit),
            Outcome::Admitted { .. } => {}
        }
    }

    /// Releasing what was charged gives the capacity back: charge then refund is a no-op for
    /// the next request.
    #[test]
    fn release_gives_back_what_was_charged(
        algorithm in prop_oneof![
            Just(Algorithm::TokenBucket),
            Just(Algorithm::SlidingWindow),
            Just(Algorithm::WindowLog),
        ],
        limit in 2u64..100,
        units in 1u64..100,
    ) {
        let units = units.min(limit);
        let policy = Policy::rate(algorithm, limit, 60 * SECOND, None).unwrap();
        let mut state = policy.new_state();
        let now = 1_000 * SECOND;
        let before = policy.peek(&state, now).0;
        let admitted = matches!(policy.acquire(&mut state, now, units), Outcome::Admitted { .. });
        prop_assert!(admitted);
        prop_assert_eq!(policy.peek(&state, now).0, before - units);
        policy.release(&mut state, now + 1, now, units);
        prop_assert!(policy.peek(&state, now + 1).0 >= before - 1);
    }
}

#[test]
fn token_bucket_bursts_then_refills() {
    // 60 per minute, burst 10: ten at once, then one per second.
    let policy = Policy::rate(Algorithm::TokenBucket, 60, 60 * SECOND, Some(10)).unwrap();
    let mut state = policy.new_state();
    let now = 100 * SECOND;
    for expected_remaining in (0..10).rev() {
        match policy.acquire(&mut state, now, 1) {
            Outcome::Admitted { remaining, .. } => assert_eq!(remaining, expected_remaining),
            refused => panic!("refused within the burst: {refused:?}"),
        }
    }
    let Outcome::Refused {
        retry_after: Some(wait),
        reset,
    } = policy.acquire(&mut state, now, 1)
    else {
        panic!("admitted past the burst")
    };
    assert_eq!(wait, SECOND);
    assert_eq!(reset, 10 * SECOND);
    assert!(matches!(
        policy.acquire(&mut state, now + SECOND, 1),
        Outcome::Admitted { remaining: 0, .. }
    ));
    // More than the burst can ever hold is refused for good.
    assert!(matches!(
        policy.acquire(&mut state, now + 100 * SECOND, 11),
        Outcome::Refused {
            retry_after: None,
            ..
        }
    ));
    assert!(policy.is_idle(&state, now + 100 * SECOND));
}

#[test]
fn token_settlement_refunds_and_charges() {
    // 1000 tokens per minute. Reserve 600, use 100: 500 come back.
    let policy = Policy::rate(Algorithm::TokenBucket, 1_000, 60 * SECOND, None).unwrap();
    let mut state = policy.new_state();
    let now = 100 * SECOND;
    assert!(matches!(
        policy.acquire(&mut state, now, 600),
        Outcome::Admitted { remaining: 400, .. }
    ));
    policy.release(&mut state, now, now, 500);
    assert_eq!(policy.peek(&state, now).0, 900);
    // Use 300 more than reserved: the bucket goes into debt and the next request waits.
    policy.charge(&mut state, now, 1_000);
    assert_eq!(policy.peek(&state, now).0, 0);
    let Outcome::Refused {
        retry_after: Some(wait),
        ..
    } = policy.acquire(&mut state, now, 1)
    else {
        panic!("admitted while in debt")
    };
    assert_eq!(
        wait,
        6 * SECOND + 60_000_000,
        "100 tokens of debt plus one, at 60 ms each"
    );
}

#[test]
fn sliding_window_weighs_the_previous_window() {
    let policy = Policy::rate(Algorithm::SlidingWindow, 10, 10 * SECOND, None).unwrap();
    let mut state = policy.new_state();
    // Ten in the window [100 s, 110 s).
    for _ in 0..10 {
        assert!(matches!(
            policy.acquire(&mut state, 105 * SECOND, 1),
            Outcome::Admitted { .. }
        ));
    }
    let refused = policy.acquire(&mut state, 109 * SECOND, 1);
    assert!(
        matches!(refused, Outcome::Refused { retry_after: Some(wait), .. } if wait == 2 * SECOND),
        "{refused:?}"
    );
    // At 111 s the previous window still weighs 9 of 10: one more fits, not two.
    assert!(matches!(
        policy.acquire(&mut state, 111 * SECOND, 1),
        Outcome::Admitted { remaining: 0, .. }
    ));
    assert!(matches!(
        policy.acquire(&mut state, 111 * SECOND, 1),
        Outcome::Refused { .. }
    ));
    // A refund lands in the window it was charged in.
    policy.release(&mut state, 111 * SECOND, 105 * SECOND, 5);
    assert_eq!(policy.peek(&state, 111 * SECOND).0, 4);
    assert!(policy.is_idle(&state, 130 * SECOND));
    assert!(!policy.is_idle(&state, 125 * SECOND));
}

#[test]
fn window_log_retry_after_waits_for_the_oldest_entry() {
    let policy = Policy::rate(Algorithm::WindowLog, 3, 10 * SECOND, None).unwrap();
    let mut state = policy.new_state();
    for at in [100, 102, 104] {
        assert!(matches!(
            policy.acquire(&mut state, at * SECOND, 1),
            Outcome::Admitted { .. }
        ));
    }
    assert_eq!(
        policy.acquire(&mut state, 105 * SECOND, 2),
        Outcome::Refused {
            retry_after: Some(7 * SECOND),
            reset: 9 * SECOND,
        }
    );
    assert!(matches!(
        policy.acquire(&mut state, 112 * SECOND, 2),
        Outcome::Admitted { remaining: 0, .. }
    ));
}

#[test]
fn concurrency_counts_in_flight() {
    let policy = Policy::Concurrency { limit: 2 };
    let mut state = policy.new_state();
    assert!(matches!(
        policy.acquire(&mut state, 0, 1),
        Outcome::Admitted { remaining: 1, .. }
    ));
    assert!(matches!(
        policy.acquire(&mut state, 0, 1),
        Outcome::Admitted { remaining: 0, .. }
    ));
    assert_eq!(
        policy.acquire(&mut state, 0, 1),
        Outcome::Refused {
            retry_after: None,
            reset: 0
        }
    );
    policy.release(&mut state, 5, 0, 1);
    assert!(matches!(
        policy.acquire(&mut state, 5, 1),
        Outcome::Admitted { .. }
    ));
    assert!(!policy.is_idle(&state, 5));
}

#[test]
fn reset_spelling_matches_openai() {
    assert_eq!(reset_text(0), "0ms");
    assert_eq!(reset_text(20_000_000), "20ms");
    assert_eq!(reset_text(SECOND), "1s");
    assert_eq!(reset_text(1_500_000_000), "2s");
    assert_eq!(reset_text(360 * SECOND), "6m0s");
    assert_eq!(reset_text(3_723 * SECOND), "1h2m3s");
}
