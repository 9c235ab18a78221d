use std::sync::Arc;

use super::*;
use crate::analytics::rollup::ANY_KEY;

const NOW: u64 = 1_800_000_000_000;

fn parse(query: &str) -> Result<Query, QueryError> {
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    Query::parse(pairs, NOW)
}

fn dims(provider: &str, model: &str, key: &str, status: &str) -> Dims {
    Dims {
        route: Arc::from("chat"),
        provider: Arc::from(provider),
        model: Arc::from(model),
        key: Arc::from(key),
        status_class: Arc::from(status),
    }
}

fn rollup(requests: u64, errors: u64, latencies_ms: &[u64], cost: f64) -> Rollup {
    let mut r = Rollup {
        requests,
        errors,
        tokens_in: requests * 100,
        tokens_out: requests * 10,
        cost_usd: cost,
        latency_sum_us: latencies_ms.iter().sum::<u64>() * 1_000,
        ..Rollup::default()
    };
    for &ms in latencies_ms {
        r.latency.add(ms * 1_000);
    }
    r
}

#[test]
fn defaults_are_the_last_hour_at_a_resolution_that_fits() {
    let q = parse("").unwrap();
    assert_eq!(q.to_ms, NOW);
    assert_eq!(q.from_ms, NOW - 3_600_000);
    assert_eq!(
        q.interval_ms, 60_000,
        "the finest kept resolution an hour back"
    );
    assert_eq!(
        q.tier,
        Tier::Minute,
        "an hour back is older than the 1 s tier"
    );
    assert_eq!(q.metrics.len(), 5);
    assert!(!q.keyed());
}

#[test]
fn times_parse_in_every_accepted_form() {
    assert_eq!(parse_time("now", NOW), Some(NOW));
    assert_eq!(parse_time("-15m", NOW), Some(NOW - 900_000));
    assert_eq!(parse_time("now-1h", NOW), Some(NOW - 3_600_000));
    assert_eq!(parse_time("7d", NOW), Some(NOW - 7 * 86_400_000));
    assert_eq!(parse_time("1700000000", NOW), Some(1_700_000_000_000));
    assert_eq!(
        parse_time("2023-11-14T22:13:20Z", NOW),
        Some(1_700_000_000_000)
    );
    assert_eq!(parse_time("yesterday", NOW), None);
}

#[test]
fn the_tier_is_the_coarsest_that_covers_the_range_and_divides_the_interval() {
    assert_eq!(parse("from=-2m&interval=1s").unwrap().tier, Tier::Second);
    assert_eq!(parse("from=-2m&interval=1m").unwrap().tier, Tier::Minute);
    assert_eq!(parse("from=-2h&interval=1m").unwrap().tier, Tier::Minute);
    assert_eq!(parse("from=-3d&interval=1h").unwrap().tier, Tier::Hour);
    assert_eq!(parse("from=-7d").unwrap().tier, Tier::Hour);
    // Keyed queries never read the keyless live tier.
    assert_eq!(
        parse("from=-2m&interval=1s&group_by=key")
            .unwrap_err()
            .param,
        "interval"
    );
    assert_eq!(
        parse("from=-2m&interval=1m&key=master").unwrap().tier,
        Tier::Minute
    );
}

#[test]
fn bad_queries_name_the_parameter() {
    assert_eq!(parse("from=-3d&interval=1m").unwrap_err().param, "interval");
    assert_eq!(parse("interval=1500ms").unwrap_err().param, "interval");
    assert_eq!(parse("interval=soon").unwrap_err().param, "interval");
    assert_eq!(parse("from=-1h&to=-2h").unwrap_err().param, "from");
    assert_eq!(parse("from=whenever").unwrap_err().param, "from");
    assert_eq!(parse("group_by=colour").unwrap_err().param, "group_by");
    assert_eq!(parse("metrics=p42").unwrap_err().param, "metrics");
    assert_eq!(parse("colour=red").unwrap_err().param, "colour");
    assert_eq!(
        parse("from=-2m&interval=1s&to=now").unwrap().interval_ms,
        1_000
    );
    assert_eq!(
        parse("from=-24h&interval=1s").unwrap_err().param,
        "interval",
        "the 1 s tier only covers 5 minutes"
    );
}

#[test]
fn ranges_older_than_seven_days_are_clamped() {
    let q = parse("from=-30d&interval=1h").unwrap();
    assert!(q.from_ms >= NOW - 7 * 86_400_000 - 3_600_000);
    assert_eq!(parse("from=-30d&to=-20d").unwrap_err().param, "to");
}

#[test]
fn answers_match_hand_computed_values() {
    let q = parse("from=1799996400&to=1800000000&interval=1h&group_by=provider&metrics=requests,errors,error_rate,p50,p99,latency_avg,tokens_in,cost,rps,cache_hit_rate,ttft_p50").unwrap();
    assert_eq!(q.tier, Tier::Hour);
    assert_eq!(q.from_ms, 1_799_996_400_000, "already on the hour");
    let hour = q.from_ms;
    let a1 = dims("openai", "gpt", "*", "2xx");
    let a2 = dims("openai", "gpt", "*", "5xx");
    let b = dims("groq", "llama", "*", "2xx");
    let keyed = dims("openai", "gpt", "master", "2xx");
    let cells = [
        (hour, &a1, rollup(3, 0, &[100, 200, 300], 0.3)),
        (hour, &a2, rollup(1, 1, &[1_000], 0.0)),
        (hour, &b, rollup(2, 0, &[50, 50], 0.02)),
        // The keyed cube is not read by a keyless query.
        (hour, &keyed, rollup(4, 1, &[1, 1, 1, 1], 9.0)),
        // Out of range.
        (hour - 3_600_000, &a1, rollup(7, 0, &[1], 1.0)),
    ];
    let answer = answer(&q, cells.iter().map(|(t, d, r)| (*t, *d, r)));
    assert_eq!(answer.resolution, "1h");
    assert_eq!(answer.totals["requests"], 6);
    assert_eq!(answer.totals["errors"], 1);
    assert_eq!(answer.totals["tokens_in"], 600);
    assert_eq!(answer.totals["cost"], serde_json::json!(0.32));
    assert_eq!(answer.series.len(), 2);
    let openai = &answer.series[0];
    assert_eq!(openai.group["provider"], "openai", "largest group first");
    assert_eq!(openai.totals["requests"], 4);
    assert_eq!(openai.totals["error_rate"], serde_json::json!(0.25));
    assert_eq!(openai.totals["latency_avg"], serde_json::json!(400.0));
    // Nearest rank: p50 of {100, 200, 300, 1000} is the 2nd value, p99 the 4th (±2%).
    let p50 = openai.totals["p50"].as_f64().unwrap();
    assert!((p50 - 200.0).abs() <= 4.0, "{p50}");
    let p99 = openai.totals["p99"].as_f64().unwrap();
    assert!((p99 - 1_000.0).abs() <= 20.0, "{p99}");
    assert_eq!(openai.totals["ttft_p50"], Value::Null, "no streams");
    assert_eq!(openai.totals["cache_hit_rate"], serde_json::json!(0.0));
    // 4 requests over the 1 h range (the range is the point here).
    assert_eq!(answer.t, [hour]);
    let values = serde_json::to_value(&openai.values).unwrap();
    assert_eq!(values["requests"], serde_json::json!([4]));
    let rps = values["rps"][0].as_f64().unwrap();
    assert!((rps - 4.0 / 3_600.0).abs() < 1e-6, "{rps}");
}

#[test]
fn points_are_zero_filled_and_keyed_queries_read_the_keyed_cube() {
    let q = parse(
        "from=1799999400&to=1800000000&interval=1m&key=master&provider=openai&metrics=requests,p50",
    )
    .unwrap();
    assert_eq!(q.cube(), Cube::Keyed, "a dimension besides the key");
    assert_eq!((q.to_ms - q.from_ms) / q.interval_ms, 10);
    let keyed = dims("openai", "gpt", "master", "2xx");
    let other = dims("openai", "gpt", "sk-other", "2xx");
    let keyless = dims("openai", "gpt", "*", "2xx");
    let by_key = by_key("master");
    let cells = [
        (q.from_ms + 120_000, &keyed, rollup(2, 0, &[10, 10], 0.0)),
        (q.from_ms + 120_000, &other, rollup(5, 0, &[10], 0.0)),
        (q.from_ms + 120_000, &keyless, rollup(7, 0, &[10], 0.0)),
        (q.from_ms + 120_000, &by_key, rollup(11, 0, &[10], 0.0)),
    ];
    let answer = answer(&q, cells.iter().map(|(t, d, r)| (*t, *d, r)));
    assert_eq!(answer.totals["requests"], 2);
    assert_eq!(answer.t.len(), 10);
    assert_eq!(answer.t[2], q.from_ms + 120_000);
    let values = serde_json::to_value(&answer.series[0].values).unwrap();
    assert_eq!(
        values["requests"],
        serde_json::json!([0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
    );
    assert_eq!(values["p50"][0], Value::Null);
    assert!(values["p50"][2].as_f64().is_some());
}

fn by_key(key: &str) -> Dims {
    let any: Arc<str> = Arc::from(ANY_KEY);
    Dims {
        route: any.clone(),
        provider: any.clone(),
        model: any.clone(),
        key: Arc::from(key),
        status_class: any,
    }
}

#[test]
fn queries_on_the_key_alone_read_the_by_key_cube() {
    for text in [
        "from=-7d&interval=1h&group_by=key",
        "from=-7d&interval=7d&key=master&metrics=requests",
        "from=-1d&interval=1d&group_by=key&key=master",
    ] {
        assert_eq!(parse(text).unwrap().cube(), Cube::ByKey, "{text}");
    }
    for text in [
        "from=-7d&interval=1h&group_by=key,provider",
        "from=-7d&interval=1h&group_by=key&status_class=5xx",
        "from=-7d&interval=1h&group_by=route&key=master",
    ] {
        assert_eq!(parse(text).unwrap().cube(), Cube::Keyed, "{text}");
    }
    assert_eq!(
        parse("from=-7d&group_by=provider").unwrap().cube(),
        Cube::Keyless
    );

    let q = parse("from=1799996400&to=1800000000&interval=1h&group_by=key&metrics=requests,p50")
        .unwrap();
    let hour = q.from_ms;
    let (master, other) = (by_key("master"), by_key("sk-other"));
    let keyed = dims("openai", "gpt", "master", "2xx");
    let keyless = dims("openai", "gpt", "*", "2xx");
    let cells = [
        (hour, &master, rollup(3, 0, &[100, 200, 300], 0.0)),
        (hour, &other, rollup(1, 0, &[50], 0.0)),
        // The other cubes hold the same traffic again: not read.
        (hour, &keyed, rollup(3, 0, &[100, 200, 300], 0.0)),
        (hour, &keyless, rollup(4, 0, &[1], 0.0)),
    ];
    let answer = answer(&q, cells.iter().map(|(t, d, r)| (*t, *d, r)));
    assert_eq!(answer.totals["requests"], 4);
    assert_eq!(answer.series.len(), 2);
    assert_eq!(answer.series[0].group["key"], "master");
    assert_eq!(answer.series[0].totals["requests"], 3);
    let p50 = answer.series[0].totals["p50"].as_f64().unwrap();
    assert!((p50 - 200.0).abs() <= 4.0, "{p50}");
}

#[test]
fn an_empty_store_answers_empty_series_and_zero_totals() {
    let q = parse("from=-1h").unwrap();
    let answer = answer(&q, std::iter::empty());
    assert!(answer.series.is_empty());
    assert_eq!(answer.totals["requests"], 0);
    assert_eq!(answer.totals["p50"], Value::Null);
}

#[test]
fn each_quantile_reads_its_own_sketch() {
    let hour = 1_799_996_400_000;
    let cell = dims("openai", "gpt", "*", "2xx");
    let mut r = rollup(3, 0, &[100, 200, 300], 0.0);
    for ms in [10, 20, 30] {
        r.ttft.add(ms * 1_000);
    }
    for (metrics, name, expected) in [
        ("ttft_p99", "ttft_p99", 30.0),
        ("p99", "p99", 300.0),
        ("p50,ttft_p50", "ttft_p50", 20.0),
        ("p50,ttft_p50", "p50", 200.0),
    ] {
        let q = parse(&format!(
            "from=1799996400&to=1800000000&interval=1h&metrics={metrics}"
        ))
        .unwrap();
        let answer = answer(&q, [(hour, &cell, &r)]);
        let got = answer.totals[name].as_f64().unwrap();
        assert!(
            (got - expected).abs() <= expected * 0.02,
            "{metrics}: {got}"
        );
        let point = serde_json::to_value(&answer.series[0].values).unwrap()[name][0]
            .as_f64()
            .unwrap();
        assert_eq!(point, got, "{metrics}");
    }
}

#[test]
fn sealing_points_in_time_order_answers_the_same() {
    // 12 hours, three groups appearing at different times, points of 1 h and of 3 h.
    let from = NOW - NOW % 3_600_000 - 12 * 3_600_000;
    let mut cells = Vec::new();
    for h in 0..12u64 {
        for (p, provider) in ["a", "b", "c"].into_iter().enumerate() {
            if (h + p as u64) % 4 == 3 {
                continue;
            }
            let latencies: Vec<u64> = (0..=h + p as u64).map(|i| 10 + i * 37 % 500).collect();
            let mut cell = rollup(latencies.len() as u64, h % 2, &latencies, 0.25);
            cell.ttft.add(1_000 * (h + 1));
            cells.push((
                from + h * 3_600_000,
                dims(provider, "m", ANY_KEY, "2xx"),
                cell,
            ));
        }
    }
    for interval in [3_600_000, 3 * 3_600_000] {
        let query = Query {
            from_ms: from,
            to_ms: from + 12 * 3_600_000,
            interval_ms: interval,
            tier: Tier::Hour,
            group_by: vec![Dim::Provider],
            metrics: ["requests", "p50", "p99", "ttft_p95", "latency_avg", "cost"]
                .into_iter()
                .filter_map(Metric::parse)
                .collect(),
            filter: Filter::default(),
        };
        let whole = answer(&query, cells.iter().map(|(t, d, r)| (*t, d, r)));
        let mut fold = Fold::new(&query);
        for (t, d, r) in &cells {
            fold.seal_before(*t);
            fold.add(
                *t,
                d.as_strs(),
                r,
                SketchRef::Decoded(&r.latency),
                SketchRef::Decoded(&r.ttft),
            )
            .unwrap();
        }
        let sealed = fold.finish();
        assert_eq!(
            serde_json::to_value(&sealed).unwrap(),
            serde_json::to_value(&whole).unwrap(),
            "interval {interval}"
        );
    }
}
