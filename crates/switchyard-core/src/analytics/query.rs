//! The analytics query: parsing `GET /admin/analytics` parameters and answering them from
//! rollup cells, wherever the cells come from (the live tier in memory, SQLite, Postgres,
//! D1).
//!
//! Parameters:
//! - `from`, `to`: unix seconds, RFC 3339, `now`, or a duration before now (`-15m`, `7d`).
//!   Default: the last hour.
//! - `interval`: the point width (`1s`, `5m`, `1h`, `1d`...); default: the finest that
//!   gives at most 360 points.
//! - `group_by`: comma-separated from `route,provider,model,key,status_class`.
//! - `metrics`: comma-separated (see [`Metric`]); default: requests, errors, p50, p95, p99.
//! - filters: `route`, `provider`, `model`, `key`, `status_class`.
//!
//! The resolution read is the coarsest tier whose retention still covers `from` and whose
//! window divides the interval.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::rollup::{Cube, Dims, Rollup, Tier};
use super::sketch::{DecodeError, Sketch, SketchSum};

/// Most points a series may have.
pub const MAX_POINTS: u64 = 10_000;

/// Points a default interval aims at, at most.
const DEFAULT_POINTS: u64 = 360;

/// Interval choices for the default.
const NICE_INTERVALS_S: [u64; 14] = [
    1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 10_800, 21_600, 43_200, 86_400,
];

/// A dimension to group or filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// Route.
    Route,
    /// Provider.
    Provider,
    /// Upstream model.
    Model,
    /// Principal (key).
    Key,
    /// Status class.
    StatusClass,
}

impl Dim {
    const ALL: [Dim; 5] = [
        Dim::Route,
        Dim::Provider,
        Dim::Model,
        Dim::Key,
        Dim::StatusClass,
    ];

    /// The parameter name.
    pub const fn name(self) -> &'static str {
        match self {
            Dim::Route => "route",
            Dim::Provider => "provider",
            Dim::Model => "model",
            Dim::Key => "key",
            Dim::StatusClass => "status_class",
        }
    }

    fn parse(name: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The position of this dimension in [`Dims::as_strs`].
    pub const fn index(self) -> usize {
        match self {
            Dim::Route => 0,
            Dim::Provider => 1,
            Dim::Model => 2,
            Dim::Key => 3,
            Dim::StatusClass => 4,
        }
    }

    /// This dimension of a cell.
    pub fn of(self, dims: &Dims) -> &str {
        match self {
            Dim::Route => &dims.route,
            Dim::Provider => &dims.provider,
            Dim::Model => &dims.model,
            Dim::Key => &dims.key,
            Dim::StatusClass => &dims.status_class,
        }
    }
}

/// A metric a query can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Requests.
    Requests,
    /// Requests per second over the point.
    Rps,
    /// Failed requests.
    Errors,
    /// errors / requests.
    ErrorRate,
    /// Latency quantiles and mean, milliseconds.
    LatencyQuantile(u8),
    /// Mean latency, milliseconds.
    LatencyAvg,
    /// Time-to-first-token quantiles, milliseconds.
    TtftQuantile(u8),
    /// Input tokens.
    TokensIn,
    /// Output tokens.
    TokensOut,
    /// Cached input tokens.
    TokensCached,
    /// Reasoning tokens.
    TokensReasoning,
    /// Cost in USD.
    Cost,
    /// Requests whose cost is unknown.
    CostUnknown,
    /// Cache hits.
    CacheHits,
    /// cache hits / requests.
    CacheHitRate,
}

const QUANTILES: [u8; 4] = [50, 90, 95, 99];

impl Metric {
    fn parse(name: &str) -> Option<Metric> {
        let quantile = |rest: &str| rest.parse::<u8>().ok().filter(|q| QUANTILES.contains(q));
        Some(match name {
            "requests" => Metric::Requests,
            "rps" => Metric::Rps,
            "errors" => Metric::Errors,
            "error_rate" => Metric::ErrorRate,
            "latency_avg" => Metric::LatencyAvg,
            "tokens_in" => Metric::TokensIn,
            "tokens_out" => Metric::TokensOut,
            "tokens_cached" => Metric::TokensCached,
            "tokens_reasoning" => Metric::TokensReasoning,
            "cost" => Metric::Cost,
            "cost_unknown" => Metric::CostUnknown,
            "cache_hits" => Metric::CacheHits,
            "cache_hit_rate" => Metric::CacheHitRate,
            _ => {
                if let Some(rest) = name.strip_prefix("ttft_p") {
                    Metric::TtftQuantile(quantile(rest)?)
                } else if let Some(rest) = name.strip_prefix('p') {
                    Metric::LatencyQuantile(quantile(rest)?)
                } else {
                    return None;
                }
            }
        })
    }

    /// The name in queries and answers.
    pub fn name(self) -> String {
        match self {
            Metric::Requests => "requests".into(),
            Metric::Rps => "rps".into(),
            Metric::Errors => "errors".into(),
            Metric::ErrorRate => "error_rate".into(),
            Metric::LatencyQuantile(q) => format!("p{q}"),
            Metric::LatencyAvg => "latency_avg".into(),
            Metric::TtftQuantile(q) => format!("ttft_p{q}"),
            Metric::TokensIn => "tokens_in".into(),
            Metric::TokensOut => "tokens_out".into(),
            Metric::TokensCached => "tokens_cached".into(),
            Metric::TokensReasoning => "tokens_reasoning".into(),
            Metric::Cost => "cost".into(),
            Metric::CostUnknown => "cost_unknown".into(),
            Metric::CacheHits => "cache_hits".into(),
            Metric::CacheHitRate => "cache_hit_rate".into(),
        }
    }

    /// The metric's value for an aggregate over `span_ms` (with its quantiles); `null`
    /// where it is undefined.
    pub fn value(self, sum: &Sum, quantiles: &Quantiles, span_ms: u64) -> Value {
        self.number(sum, quantiles, span_ms).into()
    }

    /// [`Metric::value`] without building a JSON value.
    pub fn number(self, sum: &Sum, quantiles: &Quantiles, span_ms: u64) -> Number {
        let rollup = &sum.counters;
        let ratio = |part: u64| {
            if rollup.requests == 0 {
                Number::Null
            } else {
                float(part as f64 / rollup.requests as f64)
            }
        };
        let millis = |micros: Option<f64>| micros.map_or(Number::Null, |us| float(us / 1_000.0));
        match self {
            Metric::Requests => Number::Count(rollup.requests),
            Metric::Rps => float(rollup.requests as f64 * 1_000.0 / span_ms.max(1) as f64),
            Metric::Errors => Number::Count(rollup.errors),
            Metric::ErrorRate => ratio(rollup.errors),
            Metric::LatencyQuantile(q) => millis(quantiles.latency[quantile_slot(q)]),
            Metric::LatencyAvg => millis(
                (rollup.requests > 0)
                    .then(|| rollup.latency_sum_us as f64 / rollup.requests as f64),
            ),
            Metric::TtftQuantile(q) => millis(quantiles.ttft[quantile_slot(q)]),
            Metric::TokensIn => Number::Count(rollup.tokens_in),
            Metric::TokensOut => Number::Count(rollup.tokens_out),
            Metric::TokensCached => Number::Count(rollup.tokens_cached),
            Metric::TokensReasoning => Number::Count(rollup.tokens_reasoning),
            Metric::Cost => float(rollup.cost_usd),
            Metric::CostUnknown => Number::Count(rollup.cost_unknown),
            Metric::CacheHits => Number::Count(rollup.cache_hits),
            Metric::CacheHitRate => ratio(rollup.cache_hits),
        }
    }
}

/// Latency and time-to-first-token quantiles of a [`Sum`], in [`QUANTILES`] order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantiles {
    /// p50, p90, p95, p99 of the latency, microseconds.
    pub latency: [Option<f64>; 4],
    /// p50, p90, p95, p99 of the time to first token, microseconds.
    pub ttft: [Option<f64>; 4],
}

impl Quantiles {
    /// Computed in one walk per sketch, for the sketches asked for (latency, ttft).
    pub fn of(sum: &Sum, (latency, ttft): (bool, bool)) -> Self {
        Quantiles::wanted(sum, &Wanted([latency; 4], [ttft; 4]))
    }

    /// Only the quantiles `wanted` (the others stay `None`): a walk stops at the last one
    /// it needs.
    pub fn wanted(sum: &Sum, wanted: &Wanted) -> Self {
        let pick = |sketch: &SketchSum, mask: &[bool; 4]| {
            let mut levels = [0.0; 4];
            let mut n = 0;
            for (q, _) in QUANTILES.iter().zip(mask).filter(|(_, on)| **on) {
                levels[n] = f64::from(*q) / 100.0;
                n += 1;
            }
            let mut found = [None; 4];
            sketch.quantiles_into(&levels[..n], &mut found[..n]);
            let mut out = [None; 4];
            let mut from = found.into_iter();
            for (slot, _) in out.iter_mut().zip(mask).filter(|(_, on)| **on) {
                *slot = from.next().flatten();
            }
            out
        };
        Quantiles {
            latency: pick(&sum.latency, &wanted.0),
            ttft: pick(&sum.ttft, &wanted.1),
        }
    }
}

/// Which quantiles a query reads, in [`QUANTILES`] order: of the latency, of the time to
/// first token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted(pub [bool; 4], pub [bool; 4]);

impl Wanted {
    /// The quantiles `metrics` read.
    pub fn of(metrics: &[Metric]) -> Self {
        let mut wanted = Wanted::default();
        for metric in metrics {
            match *metric {
                Metric::LatencyQuantile(q) => wanted.0[quantile_slot(q)] = true,
                Metric::TtftQuantile(q) => wanted.1[quantile_slot(q)] = true,
                _ => {}
            }
        }
        wanted
    }
}

fn quantile_slot(q: u8) -> usize {
    QUANTILES.iter().position(|&x| x == q).unwrap_or(0)
}

/// A finite float rounded to 6 decimals, or `null`.
fn float(value: f64) -> Number {
    let rounded = (value * 1e6).round() / 1e6;
    if rounded.is_finite() {
        Number::Float(rounded)
    } else {
        Number::Null
    }
}

/// Cells must match every filter given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// (dimension, wanted value).
    pub equals: Vec<(Dim, String)>,
}

impl Filter {
    /// Whether a cell matches.
    pub fn matches(&self, dims: &Dims) -> bool {
        self.matches_strs(&dims.as_strs())
    }

    /// Whether a cell with these dimension values ([`Dims::as_strs`] order) matches.
    pub fn matches_strs(&self, dims: &[&str; 5]) -> bool {
        self.equals
            .iter()
            .all(|(dim, value)| dims[dim.index()] == value)
    }
}

/// A parsed analytics query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Start, unix ms, aligned to the interval.
    pub from_ms: u64,
    /// End (exclusive), unix ms.
    pub to_ms: u64,
    /// Point width, ms.
    pub interval_ms: u64,
    /// The tier read.
    pub tier: Tier,
    /// Grouping.
    pub group_by: Vec<Dim>,
    /// Metrics.
    pub metrics: Vec<Metric>,
    /// Filters.
    pub filter: Filter,
}

/// A query that cannot be answered, with the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct QueryError {
    /// The parameter.
    pub param: String,
    /// What is wrong.
    pub message: String,
}

fn error(param: impl Into<String>, message: impl Into<String>) -> QueryError {
    QueryError {
        param: param.into(),
        message: message.into(),
    }
}

/// Parses a point in time: unix seconds, RFC 3339, `now`, or a duration before now.
pub fn parse_time(text: &str, now_ms: u64) -> Option<u64> {
    let text = text.trim();
    if text == "now" {
        return Some(now_ms);
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return seconds.checked_mul(1_000);
    }
    let relative = text.strip_prefix("now-").or_else(|| text.strip_prefix('-'));
    if let Some(ago) = relative.map(humantime::parse_duration) {
        let ago = ago.ok()?;
        return Some(now_ms.saturating_sub(u64::try_from(ago.as_millis()).ok()?));
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return Some(now_ms.saturating_sub(u64::try_from(ago.as_millis()).ok()?));
    }
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

fn parse_list<T>(
    param: &'static str,
    text: &str,
    parse: impl Fn(&str) -> Option<T>,
    known: &str,
) -> Result<Vec<T>, QueryError> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            parse(name).ok_or_else(|| error(param, format!("unknown `{name}`; known: {known}")))
        })
        .collect()
}

const METRIC_NAMES: &str = "requests, rps, errors, error_rate, p50, p90, p95, p99, latency_avg, \
     ttft_p50, ttft_p90, ttft_p95, ttft_p99, tokens_in, tokens_out, tokens_cached, \
     tokens_reasoning, cost, cost_unknown, cache_hits, cache_hit_rate";

impl Query {
    /// Parses query-string pairs at time `now_ms`.
    pub fn parse<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ms: u64,
    ) -> Result<Query, QueryError> {
        let mut from = None;
        let mut to = None;
        let mut interval = None;
        let mut group_by = Vec::new();
        let mut metrics = None;
        let mut filter = Filter::default();
        for (name, value) in params {
            match name {
                "from" => {
                    from = Some(parse_time(value, now_ms).ok_or_else(|| {
                        error(
                            "from",
                            format!(
                                "`{value}` is not a time (unix seconds, RFC 3339, `now` or `-15m`)"
                            ),
                        )
                    })?)
                }
                "to" => {
                    to = Some(parse_time(value, now_ms).ok_or_else(|| {
                        error(
                            "to",
                            format!(
                                "`{value}` is not a time (unix seconds, RFC 3339, `now` or `-15m`)"
                            ),
                        )
                    })?)
                }
                "interval" => {
                    let width = humantime::parse_duration(value)
                        .map_err(|e| error("interval", format!("`{value}`: {e}")))?;
                    interval = Some(width);
                }
                "group_by" => {
                    group_by = parse_list(
                        "group_by",
                        value,
                        Dim::parse,
                        "route, provider, model, key, status_class",
                    )?;
                }
                "metrics" => {
                    metrics = Some(parse_list("metrics", value, Metric::parse, METRIC_NAMES)?)
                }
                other => match Dim::parse(other) {
                    Some(dim) => filter.equals.push((dim, value.to_owned())),
                    None => {
                        return Err(error(
                            other,
                            format!(
                                "unknown parameter `{other}`; known: from, to, interval, group_by, metrics, route, provider, model, key, status_class"
                            ),
                        ));
                    }
                },
            }
        }
        let to_ms = to.unwrap_or(now_ms);
        let from_ms = from.unwrap_or(to_ms.saturating_sub(3_600_000));
        if from_ms >= to_ms {
            return Err(error("from", "must be before `to`"));
        }
        let oldest = now_ms.saturating_sub(Tier::Hour.retention_ms());
        let from_ms = from_ms.max(Tier::Hour.bucket(oldest));
        if from_ms >= to_ms {
            return Err(error("to", "is older than the 7 days analytics are kept"));
        }
        let keyed =
            group_by.contains(&Dim::Key) || filter.equals.iter().any(|(d, _)| *d == Dim::Key);
        // The live 1 s tier is keyless: keyed queries read the stored tiers.
        let covering = |tier: Tier| {
            !(keyed && tier == Tier::Second)
                && (from_ms >= now_ms.saturating_sub(tier.retention_ms()) || tier == Tier::Hour)
        };
        let interval_ms = match interval {
            Some(width) => {
                let ms = u64::try_from(width.as_millis()).unwrap_or(u64::MAX);
                if ms == 0 || ms % 1_000 != 0 {
                    return Err(error(
                        "interval",
                        "must be a whole number of seconds, at least 1s",
                    ));
                }
                ms
            }
            None => default_interval(to_ms - from_ms, |ms| {
                Tier::ALL
                    .into_iter()
                    .any(|t| covering(t) && ms % t.width_ms() == 0)
            }),
        };
        // The coarsest tier that fits reads the fewest cells; only the live 1 s tier is
        // per instance, so it is read only for intervals the stored tiers cannot give.
        let tier = Tier::ALL
            .into_iter()
            .rev()
            .find(|&t| covering(t) && interval_ms % t.width_ms() == 0)
            .ok_or_else(|| {
                let finest = Tier::ALL.into_iter().find(|&t| covering(t)).unwrap_or(Tier::Hour);
                error(
                    "interval",
                    format!(
                        "{} is finer than the data kept for this range: from {} back, the resolution is {}",
                        humantime::format_duration(Duration::from_millis(interval_ms)),
                        humantime::format_duration(Duration::from_millis(now_ms.saturating_sub(from_ms))),
                        finest.name()
                    ),
                )
            })?;
        let from_ms = from_ms - from_ms % interval_ms;
        if (to_ms - from_ms).div_ceil(interval_ms) > MAX_POINTS {
            return Err(error(
                "interval",
                format!("gives more than {MAX_POINTS} points for this range; use a wider one"),
            ));
        }
        Ok(Query {
            from_ms,
            to_ms,
            interval_ms,
            tier,
            group_by,
            metrics: metrics.unwrap_or_else(|| {
                vec![
                    Metric::Requests,
                    Metric::Errors,
                    Metric::LatencyQuantile(50),
                    Metric::LatencyQuantile(95),
                    Metric::LatencyQuantile(99),
                ]
            }),
            filter,
        })
    }

    /// Whether any metric asked for reads the latency sketches.
    pub fn needs_sketches(&self) -> bool {
        self.needs_latency() || self.needs_ttft()
    }

    /// Whether a latency quantile is asked for.
    pub fn needs_latency(&self) -> bool {
        self.metrics
            .iter()
            .any(|m| matches!(m, Metric::LatencyQuantile(_)))
    }

    /// Whether a time-to-first-token quantile is asked for.
    pub fn needs_ttft(&self) -> bool {
        self.metrics
            .iter()
            .any(|m| matches!(m, Metric::TtftQuantile(_)))
    }

    /// Whether the query needs a cube with keys (it splits or filters by key).
    pub fn keyed(&self) -> bool {
        self.group_by.contains(&Dim::Key) || self.filter.equals.iter().any(|(d, _)| *d == Dim::Key)
    }

    /// The cube read: by key when the key is the only dimension split or filtered by (a
    /// fraction of the keyed cube's cells), keyed when others are used with it, else keyless.
    pub fn cube(&self) -> Cube {
        if !self.keyed() {
            return Cube::Keyless;
        }
        let only_key = self
            .group_by
            .iter()
            .chain(self.filter.equals.iter().map(|(d, _)| d))
            .all(|d| *d == Dim::Key);
        if only_key { Cube::ByKey } else { Cube::Keyed }
    }

    /// The window starts read: `[from_ms, to_ms)` in the query's tier.
    pub fn bucket_range(&self) -> (u64, u64) {
        (self.from_ms, self.to_ms)
    }
}

fn default_interval(span_ms: u64, available: impl Fn(u64) -> bool) -> u64 {
    NICE_INTERVALS_S
        .into_iter()
        .map(|s| s * 1_000)
        .find(|&ms| span_ms.div_ceil(ms) <= DEFAULT_POINTS && available(ms))
        .unwrap_or(86_400_000)
}

/// The answer: totals over the whole range, and one series per group. Series are columnar:
/// `t` lists the point times once, and each series has one array per metric, aligned with
/// `t` (what chart libraries such as uPlot take as they are).
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// Range start, unix ms.
    pub from_ms: u64,
    /// Range end, unix ms.
    pub to_ms: u64,
    /// Point width, ms.
    pub interval_ms: u64,
    /// The stored resolution read (`1s`, `1m`, `1h`).
    pub resolution: &'static str,
    /// Grouping.
    pub group_by: Vec<Dim>,
    /// Metric names, in the order asked.
    pub metrics: Vec<String>,
    /// Point start times, unix ms: one per interval from `from_ms`, empty ones included.
    pub t: Vec<u64>,
    /// Over everything matched.
    pub totals: Map<String, Value>,
    /// One per group, largest by requests first.
    pub series: Vec<Series>,
}

/// One group's time series.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// The group's dimension values.
    pub group: Map<String, Value>,
    /// Over the whole range.
    pub totals: Map<String, Value>,
    /// Per metric, one value per point of `t`.
    pub values: Columns,
}

/// One metric's value at a point: held without allocation, serialised as JSON's number or
/// `null` exactly as [`Metric::value`] gives it (a series has thousands of them, so the
/// answer is written straight from these rather than through a `serde_json::Value` each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// Undefined (no requests, no latencies).
    Null,
    /// A count.
    Count(u64),
    /// A finite float, already rounded to 6 decimals.
    Float(f64),
}

impl Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Number::Null => serializer.serialize_unit(),
            Number::Count(n) => serializer.serialize_u64(n),
            Number::Float(x) => serializer.serialize_f64(x),
        }
    }
}

impl From<Number> for Value {
    fn from(number: Number) -> Value {
        match number {
            Number::Null => Value::Null,
            Number::Count(n) => n.into(),
            Number::Float(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
        }
    }
}

/// A series' metric columns, serialised as a JSON object (keys in name order, as a
/// `serde_json::Map` would write them).
#[derive(Debug, Clone, Default)]
pub struct Columns(Vec<(String, Vec<Number>)>);

impl Columns {
    /// The column of a metric by name.
    pub fn get(&self, name: &str) -> Option<&[Number]> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, column)| column.as_slice())
    }
}

impl Serialize for Columns {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, column) in &self.0 {
            map.serialize_entry(name, column)?;
        }
        map.end()
    }
}

/// The counters and latency sums of a point, a group or the whole answer.
#[derive(Debug, Clone, Default)]
pub struct Sum {
    /// The counters (its own sketches stay empty: the sums below hold the latencies).
    pub counters: Rollup,
    /// Latencies.
    pub latency: SketchSum,
    /// Times to first token.
    pub ttft: SketchSum,
}

impl Sum {
    fn add_sum(&mut self, other: &Sum) {
        self.counters.merge_counters(&other.counters);
        self.latency.add_sum(&other.latency);
        self.ttft.add_sum(&other.ttft);
    }
}

/// A cell's sketch, decoded or as stored.
#[derive(Debug, Clone, Copy)]
pub enum SketchRef<'a> {
    /// In memory.
    Decoded(&'a Sketch),
    /// [`Sketch::encode`]'s bytes, straight from a store.
    Encoded(&'a [u8]),
    /// A sketch's parts (see [`SketchSum::add_sparse`]).
    Sparse {
        /// Values of zero.
        zeros: u32,
        /// Bucket indexes, ascending.
        indexes: &'a [u16],
        /// Their counts.
        counts: &'a [u32],
    },
}

impl SketchSum {
    fn add_ref(&mut self, sketch: SketchRef<'_>) -> Result<(), DecodeError> {
        match sketch {
            SketchRef::Decoded(sketch) => {
                self.add(sketch);
                Ok(())
            }
            SketchRef::Encoded(bytes) => self.add_encoded(bytes),
            SketchRef::Sparse {
                zeros,
                indexes,
                counts,
            } => {
                self.add_sparse(zeros, indexes, counts);
                Ok(())
            }
        }
    }
}

/// Folds cells into an [`Answer`] one at a time, so a store can stream its rows through it
/// without building them: a cell costs its counters and one addition per sketch bucket.
/// Cells of other cubes than [`Query::cube`] are told by their dimensions ([`Cube::of`]) and
/// skipped.
#[derive(Debug)]
pub struct Fold<'q> {
    query: &'q Query,
    cube: Cube,
    /// Whether the latency and time-to-first-token sketches are read.
    sketches: (bool, bool),
    points: usize,
    /// Group values' hash → indexes into `groups`.
    index: HashMap<u64, Vec<usize>, foldhash::fast::FixedState>,
    /// Hashes the group values (foldhash: a cell's lookup hashed with SipHash was a tenth
    /// of a cached 7-day query).
    hasher: foldhash::fast::FixedState,
    /// The group of the last cell added: cells come sorted by their dimensions, so the
    /// next one often falls in it too.
    last: Option<usize>,
    groups: Vec<Group>,
    /// Points before this one are final ([`Fold::seal_before`]).
    sealed: usize,
    /// The quantiles the metrics read.
    wanted: Wanted,
    /// Sketch sums' buffers of sealed points, for the next points.
    pool: Vec<Vec<u64>>,
}

/// One group's points as they are folded.
#[derive(Debug)]
struct Group {
    /// Its dimension values, in `group_by` order.
    values: Vec<String>,
    /// One sum per point; a sealed point keeps its counters, its sketches move to `total`.
    slots: Vec<Sum>,
    /// The quantiles of each sealed point.
    quantiles: Vec<Quantiles>,
    /// The sealed points' sketches, summed.
    total: Sum,
}

impl Group {
    fn is(&self, group_by: &[Dim], dims: &[&str; 5]) -> bool {
        self.values
            .iter()
            .zip(group_by)
            .all(|(value, dim)| value == dims[dim.index()])
    }
}

impl<'q> Fold<'q> {
    /// An empty fold for `query`.
    pub fn new(query: &'q Query) -> Self {
        Fold {
            query,
            cube: query.cube(),
            sketches: (query.needs_latency(), query.needs_ttft()),
            points: usize::try_from((query.to_ms - query.from_ms).div_ceil(query.interval_ms))
                .unwrap_or(0),
            index: HashMap::default(),
            hasher: foldhash::fast::FixedState::default(),
            last: None,
            groups: Vec::new(),
            sealed: 0,
            wanted: Wanted::of(&query.metrics),
            pool: Vec::new(),
        }
    }

    /// Adds one cell (dimensions in [`Dims::as_strs`] order). Cells outside the range, that
    /// fail a filter, or that belong to the other cube are skipped. A malformed stored
    /// sketch is an error after the counters are added.
    pub fn add(
        &mut self,
        bucket: u64,
        dims: [&str; 5],
        counters: &Rollup,
        latency: SketchRef<'_>,
        ttft: SketchRef<'_>,
    ) -> Result<(), DecodeError> {
        let query = self.query;
        if bucket < query.from_ms
            || bucket >= query.to_ms
            || Cube::of(&dims) != self.cube
            || !query.filter.matches_strs(&dims)
        {
            return Ok(());
        }
        let found = match self.last {
            Some(last) if self.groups[last].is(&query.group_by, &dims) => Some(last),
            _ => None,
        };
        let group = match found {
            Some(group) => group,
            None => self.group_of(dims),
        };
        self.last = Some(group);
        let point = usize::try_from((bucket - query.from_ms) / query.interval_ms).unwrap_or(0);
        debug_assert!(point >= self.sealed, "a cell added to a sealed point");
        let Some(slot) = self.groups[group].slots.get_mut(point) else {
            return Ok(());
        };
        slot.counters.merge_counters(counters);
        // A point's first sketch reuses a sealed point's buffer.
        for (wanted, sum) in [
            (self.sketches.0, &mut slot.latency),
            (self.sketches.1, &mut slot.ttft),
        ] {
            if wanted
                && sum.is_unallocated()
                && let Some(buffer) = self.pool.pop()
            {
                sum.give_buffer(buffer);
            }
        }
        // Only the sketches a metric reads are added (a sum of the other stays empty).
        if self.sketches.0 {
            slot.latency.add_ref(latency)?;
        }
        if self.sketches.1 {
            slot.ttft.add_ref(ttft)?;
        }
        Ok(())
    }

    /// The group of a cell with these dimensions, added if new.
    fn group_of(&mut self, dims: [&str; 5]) -> usize {
        let query = self.query;
        let mut hasher = self.hasher.build_hasher();
        for dim in &query.group_by {
            dims[dim.index()].hash(&mut hasher);
        }
        let hash = hasher.finish();
        let candidates = self.index.entry(hash).or_default();
        let groups = &self.groups;
        let found = candidates
            .iter()
            .copied()
            .find(|&g| groups[g].is(&query.group_by, &dims));
        if let Some(group) = found {
            return group;
        }
        let values = query
            .group_by
            .iter()
            .map(|dim| dims[dim.index()].to_owned())
            .collect();
        self.groups.push(Group {
            values,
            slots: vec![Sum::default(); self.points],
            // Sealed points without cells: no quantiles.
            quantiles: vec![Quantiles::default(); self.sealed],
            total: Sum::default(),
        });
        candidates.push(self.groups.len() - 1);
        self.groups.len() - 1
    }

    /// Declares that no cell before `time_ms` is still to come: the points that end by
    /// then are final. Their quantiles are computed and their sketches added to their
    /// group's total now, and the sketch sums' buffers are reused by the next points, so a
    /// caller that adds cells in time order holds the sketch sums of a point or two, not of
    /// the whole range (a 7-day hourly query held several MB of them). Cells of a sealed
    /// point must not be added afterwards.
    pub fn seal_before(&mut self, time_ms: u64) {
        let query = self.query;
        let upto = usize::try_from(time_ms.saturating_sub(query.from_ms) / query.interval_ms)
            .unwrap_or(usize::MAX)
            .min(self.points);
        if upto <= self.sealed {
            return;
        }
        for group in &mut self.groups {
            for slot in &mut group.slots[self.sealed..upto] {
                group.quantiles.push(Quantiles::wanted(slot, &self.wanted));
                group.total.latency.add_sum(&slot.latency);
                group.total.ttft.add_sum(&slot.ttft);
                for sum in [&mut slot.latency, &mut slot.ttft] {
                    if let Some(buffer) = sum.take_buffer() {
                        self.pool.push(buffer);
                    }
                }
            }
        }
        self.sealed = upto;
    }

    /// The answer.
    pub fn finish(self) -> Answer {
        let query = self.query;
        let names: Vec<String> = query.metrics.iter().map(|m| m.name()).collect();
        let wanted = self.wanted;
        let sealed = self.sealed;
        let totals_of = |sum: &Sum, span: u64| -> Map<String, Value> {
            let quantiles = Quantiles::wanted(sum, &wanted);
            names
                .iter()
                .zip(&query.metrics)
                .map(|(name, m)| (name.clone(), m.value(sum, &quantiles, span)))
                .collect()
        };
        let range = query.to_ms - query.from_ms;
        let mut all = Sum::default();
        let mut series: Vec<(u64, Vec<String>, Series)> = self
            .groups
            .into_iter()
            .map(|group| {
                let Group {
                    values: group,
                    slots,
                    mut quantiles,
                    mut total,
                } = group;
                // Sealed points: their counters (their sketches are in `total` already).
                for slot in slots.iter().take(sealed) {
                    total.counters.merge_counters(&slot.counters);
                }
                for slot in slots.iter().skip(sealed) {
                    total.add_sum(slot);
                    quantiles.push(Quantiles::wanted(slot, &wanted));
                }
                all.add_sum(&total);
                let mut values: Vec<(String, Vec<Number>)> = names
                    .iter()
                    .zip(&query.metrics)
                    .map(|(name, m)| {
                        let column: Vec<Number> = slots
                            .iter()
                            .zip(&quantiles)
                            .map(|(slot, quantiles)| m.number(slot, quantiles, query.interval_ms))
                            .collect();
                        (name.clone(), column)
                    })
                    .collect();
                // In name order, as a JSON map; a metric asked twice is written once.
                values.sort_by(|a, b| a.0.cmp(&b.0));
                values.dedup_by(|a, b| a.0 == b.0);
                let values = Columns(values);
                let labels = query
                    .group_by
                    .iter()
                    .zip(&group)
                    .map(|(d, v)| (d.name().to_owned(), Value::from(v.as_str())))
                    .collect();
                (
                    total.counters.requests,
                    group,
                    Series {
                        group: labels,
                        totals: totals_of(&total, range),
                        values,
                    },
                )
            })
            .collect();
        series.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        Answer {
            from_ms: query.from_ms,
            to_ms: query.to_ms,
            interval_ms: query.interval_ms,
            resolution: query.tier.name(),
            group_by: query.group_by.clone(),
            metrics: names.clone(),
            t: (0..self.points as u64)
                .map(|i| query.from_ms + i * query.interval_ms)
                .collect(),
            totals: totals_of(&all, range),
            series: series.into_iter().map(|(_, _, s)| s).collect(),
        }
    }
}

/// Folds in-memory cells into the answer (see [`Fold`]).
pub fn answer<'a>(
    query: &Query,
    cells: impl IntoIterator<Item = (u64, &'a Dims, &'a Rollup)>,
) -> Answer {
    let mut fold = Fold::new(query);
    for (bucket, dims, rollup) in cells {
        // Decoded sketches cannot be malformed.
        let _ = fold.add(
            bucket,
            dims.as_strs(),
            rollup,
            SketchRef::Decoded(&rollup.latency),
            SketchRef::Decoded(&rollup.ttft),
        );
    }
    fold.finish()
}

#[cfg(test)]
mod tests;
