use std::time::Duration;

use super::*;

const S: u64 = 1_000;

fn rule(metric: AlertMetric, threshold: f64, for_s: u64, cooldown_s: u64) -> AlertRule {
    AlertRule {
        name: "test-rule".to_owned(),
        metric,
        scope: AlertScope::Provider,
        member: None,
        budget: None,
        threshold,
        direction: metric.default_direction(),
        window: Duration::from_secs(60),
        for_duration: Duration::from_secs(for_s),
        cooldown: Duration::from_secs(cooldown_s),
        severity: Severity::Critical,
        notifiers: vec![0],
        min_requests: 1,
    }
}

fn read(values: &[(&str, f64)]) -> Reading {
    Reading {
        values: values.iter().map(|(m, v)| ((*m).to_owned(), *v)).collect(),
        absent_is_clear: false,
    }
}

/// Runs one tick per second from `from_s` to `to_s` (inclusive) with the same reading and
/// returns the changes.
fn ticks(
    evaluator: &mut Evaluator,
    config: &AlertRule,
    reading: &Reading,
    from_s: u64,
    to_s: u64,
) -> Vec<(u64, Change)> {
    (from_s..=to_s)
        .flat_map(|second| {
            evaluator
                .evaluate(0, config, reading, second * S)
                .into_iter()
                .map(move |change| (second, change))
        })
        .collect()
}

#[test]
fn an_outage_fires_once_after_its_for_duration_and_resolves_once() {
    let config = rule(AlertMetric::ErrorRate, 0.2, 10, 60);
    let mut evaluator = Evaluator::new();
    // Breaching from t=100 to t=200: pending for 10 s, then firing, with no repeat.
    let changes = ticks(&mut evaluator, &config, &read(&[("flaky", 0.5)]), 100, 200);
    assert_eq!(
        changes,
        vec![(
            110,
            Change {
                rule: 0,
                member: "flaky".to_owned(),
                transition: Transition::Fired {
                    at_ms: 110 * S,
                    value: 0.5
                },
            }
        )]
    );
    assert_eq!(
        evaluator.instance(0, "flaky").map(|i| i.phase),
        Some(Phase::Firing { since_ms: 110 * S })
    );
    // Recovered: one resolution, then silence.
    let changes = ticks(&mut evaluator, &config, &read(&[("flaky", 0.01)]), 201, 300);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes[0].1.transition,
        Transition::Resolved {
            since_ms: 110 * S,
            at_ms: 201 * S,
            value: Some(0.01)
        }
    );
}

#[test]
fn a_breach_shorter_than_for_never_fires() {
    let config = rule(AlertMetric::LatencyP95, 500.0, 30, 60);
    let mut evaluator = Evaluator::new();
    assert!(ticks(&mut evaluator, &config, &read(&[("*", 900.0)]), 0, 29).is_empty());
    assert!(matches!(
        evaluator.instance(0, "*").map(|i| i.phase),
        Some(Phase::Pending { since_ms: 0 })
    ));
    // One good tick resets the clock; the pending state is gone.
    assert!(ticks(&mut evaluator, &config, &read(&[("*", 100.0)]), 30, 30).is_empty());
    assert!(evaluator.instance(0, "*").is_none());
    assert!(ticks(&mut evaluator, &config, &read(&[("*", 900.0)]), 31, 60).is_empty());
    let changes = ticks(&mut evaluator, &config, &read(&[("*", 900.0)]), 61, 61);
    assert_eq!(changes.len(), 1);
}

#[test]
fn a_flapping_value_fires_at_most_once_per_cooldown() {
    let config = rule(AlertMetric::ErrorRate, 0.2, 0, 60);
    let mut evaluator = Evaluator::new();
    // Alternate breach and clear every second for two minutes.
    let mut fired = Vec::new();
    let mut resolved = Vec::new();
    for second in 0..120 {
        let value = if second % 2 == 0 { 0.9 } else { 0.0 };
        for change in evaluator.evaluate(0, &config, &read(&[("p", value)]), second * S) {
            match change.transition {
                Transition::Fired { at_ms, .. } => fired.push(at_ms / S),
                Transition::Resolved { at_ms, .. } => resolved.push(at_ms / S),
            }
        }
    }
    // Fired at 0, resolved at 1; the next breach may fire from 61 on: the first even
    // second is 62. Resolved at 63.
    assert_eq!(fired, vec![0, 62]);
    assert_eq!(resolved, vec![1, 63]);
}

#[test]
fn a_breach_during_the_cooldown_waits_and_fires_when_it_ends() {
    let config = rule(AlertMetric::ErrorRate, 0.2, 0, 60);
    let mut evaluator = Evaluator::new();
    assert_eq!(
        ticks(&mut evaluator, &config, &read(&[("p", 0.9)]), 0, 0).len(),
        1
    );
    assert_eq!(
        ticks(&mut evaluator, &config, &read(&[("p", 0.0)]), 1, 1).len(),
        1
    );
    // Breaching again at once: pending through the cooldown, firing when it ends.
    let changes = ticks(&mut evaluator, &config, &read(&[("p", 0.9)]), 2, 100);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0, 61);
}

#[test]
fn each_member_has_its_own_state() {
    let config = rule(AlertMetric::ErrorRate, 0.2, 5, 60);
    let mut evaluator = Evaluator::new();
    let both = read(&[("a", 0.9), ("b", 0.1)]);
    let changes = ticks(&mut evaluator, &config, &both, 0, 10);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].1.member, "a");
    // b starts failing later, a recovers.
    let changes = ticks(
        &mut evaluator,
        &config,
        &read(&[("a", 0.0), ("b", 0.9)]),
        11,
        20,
    );
    let summary: Vec<(u64, &str, bool)> = changes
        .iter()
        .map(|(at, c)| {
            (
                *at,
                c.member.as_str(),
                matches!(c.transition, Transition::Fired { .. }),
            )
        })
        .collect();
    assert_eq!(summary, vec![(11, "a", false), (16, "b", true)]);
}

#[test]
fn no_data_keeps_the_state_then_resolves_after_an_hour() {
    let config = rule(AlertMetric::ErrorRate, 0.2, 0, 60);
    let mut evaluator = Evaluator::new();
    assert_eq!(
        ticks(&mut evaluator, &config, &read(&[("p", 0.9)]), 0, 0).len(),
        1
    );
    // No requests at all: still firing (an open breaker leaves a dead provider no traffic).
    let nothing = read(&[]);
    let hour = NO_DATA_RESOLVE_MS / S;
    assert!(ticks(&mut evaluator, &config, &nothing, 1, hour - 1).is_empty());
    let changes = ticks(&mut evaluator, &config, &nothing, hour, hour + 10);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].1.transition,
        Transition::Resolved {
            since_ms: 0,
            at_ms: hour * S,
            value: None
        }
    );
    assert!(message(&config, "p", &changes[0].1.transition).contains("no data"));
}

#[test]
fn a_pending_breach_without_data_for_a_window_is_dropped() {
    let config = rule(AlertMetric::ErrorRate, 0.2, 120, 60);
    let mut evaluator = Evaluator::new();
    assert!(ticks(&mut evaluator, &config, &read(&[("p", 0.9)]), 0, 10).is_empty());
    assert!(ticks(&mut evaluator, &config, &read(&[]), 11, 70).is_empty());
    assert!(evaluator.instance(0, "p").is_some());
    assert!(ticks(&mut evaluator, &config, &read(&[]), 71, 71).is_empty());
    assert!(evaluator.instance(0, "p").is_none());
}

#[test]
fn a_state_metric_whose_member_disappears_resolves() {
    let config = rule(AlertMetric::BudgetUsed, 0.8, 0, 0);
    let mut evaluator = Evaluator::new();
    let over = Reading {
        values: vec![("daily/*".to_owned(), 0.95)],
        absent_is_clear: true,
    };
    assert_eq!(ticks(&mut evaluator, &config, &over, 0, 5).len(), 1);
    // A new period: the member has no spend and is not listed.
    let gone = Reading {
        values: vec![],
        absent_is_clear: true,
    };
    let changes = ticks(&mut evaluator, &config, &gone, 6, 10);
    assert_eq!(changes.len(), 1);
    assert!(matches!(
        changes[0].1.transition,
        Transition::Resolved { value: Some(_), .. }
    ));
}

#[test]
fn below_rules_fire_when_the_value_drops() {
    let config = rule(AlertMetric::CacheHitRate, 0.5, 0, 60);
    assert_eq!(config.direction, Direction::Below);
    let mut evaluator = Evaluator::new();
    assert!(ticks(&mut evaluator, &config, &read(&[("*", 0.7)]), 0, 5).is_empty());
    let changes = ticks(&mut evaluator, &config, &read(&[("*", 0.2)]), 6, 6);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        message(&config, "*", &changes[0].1.transition),
        "[CRITICAL] test-rule firing: cache_hit_rate of provider * is 20.0% (below 50.0%)"
    );
}

#[test]
fn a_restored_firing_alert_is_not_notified_again() {
    let config = rule(AlertMetric::ErrorRate, 0.2, 0, 60);
    let mut evaluator = Evaluator::new();
    evaluator.restore_firing(0, "p", 5 * S, Some(0.7));
    assert!(ticks(&mut evaluator, &config, &read(&[("p", 0.9)]), 10, 20).is_empty());
    let changes = ticks(&mut evaluator, &config, &read(&[("p", 0.0)]), 21, 21);
    assert_eq!(
        changes[0].1.transition,
        Transition::Resolved {
            since_ms: 5 * S,
            at_ms: 21 * S,
            value: Some(0.0)
        }
    );
}

#[test]
fn members_that_never_breach_hold_no_state() {
    let config = rule(AlertMetric::ErrorRate, 0.2, 0, 60);
    let mut evaluator = Evaluator::new();
    let many: Vec<(String, f64)> = (0..1_000).map(|i| (format!("key-{i}"), 0.0)).collect();
    let reading = Reading {
        values: many,
        absent_is_clear: false,
    };
    evaluator.evaluate(0, &config, &reading, 0);
    assert_eq!(evaluator.instances().count(), 0);
}

#[test]
fn retry_delays_double_and_honour_what_the_receiver_asked() {
    let base = Duration::from_millis(500);
    let max = Duration::from_secs(60);
    let delays: Vec<u128> = (1..=9)
        .map(|attempt| retry_delay(attempt, base, max, None).as_millis())
        .collect();
    assert_eq!(
        delays,
        vec![
            500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000
        ]
    );
    assert_eq!(
        retry_delay(1, base, max, Some(Duration::from_secs(3))),
        Duration::from_secs(3)
    );
    assert_eq!(
        retry_delay(1, base, max, Some(Duration::from_secs(600))),
        max
    );
}

#[test]
fn messages_name_the_rule_member_value_and_threshold() {
    let mut config = rule(AlertMetric::ErrorRate, 0.2, 0, 60);
    config.name = "provider-errors".to_owned();
    let fired = Transition::Fired {
        at_ms: 0,
        value: 0.42,
    };
    assert_eq!(
        message(&config, "flaky", &fired),
        "[CRITICAL] provider-errors firing: error_rate of provider flaky is 42.0% (above 20.0%)"
    );
    let resolved = Transition::Resolved {
        since_ms: 0,
        at_ms: 130_000,
        value: Some(0.01),
    };
    assert_eq!(
        message(&config, "flaky", &resolved),
        "[RESOLVED] provider-errors: error_rate of provider flaky is 1.0% (threshold above \
         20.0%); fired for 2m 10s"
    );
    config.scope = AlertScope::Global;
    config.metric = AlertMetric::CostPerHour;
    config.threshold = 2.0;
    let fired = Transition::Fired {
        at_ms: 0,
        value: 3.5,
    };
    assert_eq!(
        message(&config, "*", &fired),
        "[CRITICAL] provider-errors firing: cost_per_hour is $3.5000/h (above $2.0000/h)"
    );
}

#[test]
fn every_metric_parses_back_from_its_name() {
    for metric in AlertMetric::ALL {
        assert_eq!(AlertMetric::parse(metric.as_str()), Some(metric));
        assert!(metric.scopes().contains(&metric.default_scope()));
    }
    assert_eq!(AlertMetric::parse("p95"), None);
}
