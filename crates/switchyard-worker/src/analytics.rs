//! Analytics at the edge: every request event becomes one row of the D1 table
//! `request_events`, written off the response path (`waitUntil`) in batches; and
//! `GET /admin/analytics` is answered from those rows with the core's query
//! ([`Query::parse`], [`Fold`]), so the dashboard reads the same answer shape from a Worker
//! as from the native gateway.
//!
//! The native gateway stores rollups; the Worker stores raw events and rolls them up per
//! query (each event is one cell of each cube at its second), which is right for the edge's
//! volumes per account and keeps writes to one insert per request.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use switchyard_core::analytics::query::SketchRef;
use switchyard_core::analytics::rollup::ANY_KEY;
use switchyard_core::analytics::{Aggregator, Query, RequestEvent, query::Fold};
use switchyard_core::analytics::{Answer, Cube, Dims, Rollup, Tier};
use switchyard_core::wire::TokenUsage;

/// The D1 schema (`schema.sql`): request events, and virtual keys (the native stores'
/// columns, the hash as hex). Idempotent; the Worker runs it once per isolate before its
/// first D1 use.
pub const SCHEMA_SQL: &str = include_str!("../schema.sql");

/// The statements of [`SCHEMA_SQL`], comments left out, one at a time (D1 prepares one
/// statement per call).
pub fn schema_statements() -> Vec<String> {
    let code: Vec<&str> = SCHEMA_SQL
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect();
    code.join("\n")
        .split(';')
        .map(|statement| statement.trim().to_owned())
        .filter(|statement| !statement.is_empty())
        .collect()
}

/// The insert of one [`EventRow`], its parameters in [`EventRow::params`] order.
pub const INSERT: &str = "INSERT INTO request_events (time_unix_ms, request_id, principal, \
    endpoint, route, provider, model, stream, status, error_class, tokens_in, tokens_out, \
    tokens_cached, tokens_reasoning, cost_usd, saved_usd, latency_us, ttft_us, upstream_us, \
    attempts, cache, rate_limit) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
    ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)";

/// The read of the events that can fall in a query's range (an event counts when it
/// finished; it is stored under when it arrived, so the range is widened by the longest
/// request the Worker allows).
pub const SELECT: &str = "SELECT * FROM request_events WHERE time_unix_ms >= ?1 AND \
    time_unix_ms < ?2 ORDER BY time_unix_ms LIMIT ?3";

/// Most events one query reads.
pub const MAX_ROWS: u32 = 100_000;

/// How far before a query's start an event may have arrived and still end in it.
pub const LONGEST_REQUEST_MS: u64 = 15 * 60 * 1000;

/// One stored event. Times and counts are `i64`/`f64` because that is what D1 speaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// Arrival, unix ms.
    pub time_unix_ms: i64,
    /// `x-request-id`.
    pub request_id: String,
    /// `master` or a key id.
    pub principal: String,
    /// Path.
    pub endpoint: String,
    /// Route.
    pub route: Option<String>,
    /// Provider.
    pub provider: Option<String>,
    /// Upstream model.
    pub model: Option<String>,
    /// 1 for a stream.
    pub stream: i64,
    /// Status sent.
    pub status: i64,
    /// Error kind, when it failed.
    pub error_class: Option<String>,
    /// Input tokens.
    pub tokens_in: i64,
    /// Output tokens.
    pub tokens_out: i64,
    /// Cached input tokens.
    pub tokens_cached: i64,
    /// Reasoning tokens.
    pub tokens_reasoning: i64,
    /// Cost, USD.
    pub cost_usd: Option<f64>,
    /// Saved by a cache hit, USD.
    pub saved_usd: Option<f64>,
    /// Whole request, µs.
    pub latency_us: i64,
    /// Time to first token, µs.
    pub ttft_us: Option<i64>,
    /// In provider calls, µs.
    pub upstream_us: Option<i64>,
    /// Attempts.
    pub attempts: i64,
    /// Cache outcome.
    pub cache: String,
    /// The limit that refused it.
    pub rate_limit: Option<String>,
}

/// A bound parameter of [`INSERT`].
#[derive(Debug, Clone, PartialEq)]
pub enum Param<'a> {
    /// SQL NULL.
    Null,
    /// A number (D1 numbers are JavaScript numbers).
    Number(f64),
    /// Text.
    Text(&'a str),
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl EventRow {
    /// The row of an event.
    pub fn of(event: &RequestEvent) -> Self {
        EventRow {
            time_unix_ms: to_i64(event.time_unix_ms),
            request_id: event.request_id.clone(),
            principal: event.principal.clone(),
            endpoint: event.endpoint.clone(),
            route: event.route.clone(),
            provider: event.provider.clone(),
            model: event.model.clone(),
            stream: i64::from(event.stream),
            status: i64::from(event.status),
            error_class: event.error_class.clone(),
            tokens_in: to_i64(event.usage.input),
            tokens_out: to_i64(event.usage.output),
            tokens_cached: to_i64(event.usage.cached_input),
            tokens_reasoning: to_i64(event.usage.reasoning),
            cost_usd: event.cost_usd,
            saved_usd: event.saved_usd,
            latency_us: to_i64(event.latency_us),
            ttft_us: event.ttft_us.map(to_i64),
            upstream_us: event.upstream_us.map(to_i64),
            attempts: i64::from(event.attempts),
            cache: event.cache.to_owned(),
            rate_limit: event.rate_limit.clone(),
        }
    }

    /// The parameters of [`INSERT`] for this row.
    pub fn params(&self) -> [Param<'_>; 22] {
        // D1 numbers are doubles: counts and times stay exact below 2^53.
        #[allow(clippy::cast_precision_loss)]
        let number = |value: i64| Param::Number(value as f64);
        fn text(value: &Option<String>) -> Param<'_> {
            value.as_deref().map_or(Param::Null, Param::Text)
        }
        let real = |value: Option<f64>| value.map_or(Param::Null, Param::Number);
        [
            number(self.time_unix_ms),
            Param::Text(&self.request_id),
            Param::Text(&self.principal),
            Param::Text(&self.endpoint),
            text(&self.route),
            text(&self.provider),
            text(&self.model),
            number(self.stream),
            number(self.status),
            text(&self.error_class),
            number(self.tokens_in),
            number(self.tokens_out),
            number(self.tokens_cached),
            number(self.tokens_reasoning),
            real(self.cost_usd),
            real(self.saved_usd),
            number(self.latency_us),
            self.ttft_us.map_or(Param::Null, number),
            self.upstream_us.map_or(Param::Null, number),
            number(self.attempts),
            Param::Text(&self.cache),
            text(&self.rate_limit),
        ]
    }

    /// The event again (the fields analytics reads).
    pub fn event(&self) -> RequestEvent {
        RequestEvent {
            time_unix_ms: to_u64(self.time_unix_ms),
            request_id: self.request_id.clone(),
            principal: self.principal.clone(),
            tags: Vec::new(),
            endpoint: self.endpoint.clone(),
            route: self.route.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            stream: self.stream != 0,
            status: u16::try_from(self.status).unwrap_or(0),
            error_class: self.error_class.clone(),
            usage: TokenUsage {
                input: to_u64(self.tokens_in),
                output: to_u64(self.tokens_out),
                cached_input: to_u64(self.tokens_cached),
                cache_write: 0,
                reasoning: to_u64(self.tokens_reasoning),
            },
            cost_usd: self.cost_usd,
            saved_usd: self.saved_usd,
            latency_us: to_u64(self.latency_us),
            ttft_us: self.ttft_us.map(to_u64),
            upstream_us: self.upstream_us.map(to_u64),
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            cache: cache_name(&self.cache),
            rate_limit: self.rate_limit.clone(),
            stages: Vec::new(),
        }
    }
}

/// The event's `&'static` spelling of a stored cache outcome.
fn cache_name(stored: &str) -> &'static str {
    match stored {
        "hit" => "hit",
        "miss" => "miss",
        "bypass" => "bypass",
        "refresh" => "refresh",
        _ => "none",
    }
}

/// The `[from, to)` range of arrival times to read for `query`.
pub fn read_range(query: &Query) -> (u64, u64) {
    (
        query.from_ms.saturating_sub(LONGEST_REQUEST_MS),
        query.to_ms,
    )
}

/// Answers `query` from stored rows: each event is one cell of every cube at the second it
/// finished (as the native live tier counts it).
pub fn answer(query: &Query, rows: &[EventRow]) -> Answer {
    let mut fold = Fold::new(query);
    let any: Arc<str> = Arc::from(ANY_KEY);
    for row in rows {
        let event = row.event();
        let bucket = Tier::Second.bucket(Aggregator::event_time_ms(&event));
        let keyed = Dims {
            route: Arc::from(event.route.as_deref().unwrap_or_default()),
            provider: Arc::from(event.provider.as_deref().unwrap_or_default()),
            model: Arc::from(event.model.as_deref().unwrap_or_default()),
            key: Arc::from(event.principal.as_str()),
            status_class: Arc::from(event.status_class()),
        };
        let mut rollup = Rollup::default();
        rollup.observe(&event);
        for cube in Cube::ALL {
            let dims = cube.dims_of(&keyed, &any);
            // In-memory sketches cannot be malformed.
            let _ = fold.add(
                bucket,
                dims.as_strs(),
                &rollup,
                SketchRef::Decoded(&rollup.latency),
                SketchRef::Decoded(&rollup.ttft),
            );
        }
    }
    fold.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: u64, route: &str, status: u16, cost: Option<f64>) -> RequestEvent {
        RequestEvent {
            time_unix_ms: time,
            request_id: format!("r{time}"),
            principal: "master".into(),
            tags: Vec::new(),
            endpoint: "/v1/chat/completions".into(),
            route: Some(route.into()),
            provider: Some("alpha".into()),
            model: Some("m".into()),
            stream: false,
            status,
            error_class: (status >= 400).then(|| "bad_gateway".to_owned()),
            usage: TokenUsage {
                input: 10,
                output: 5,
                ..TokenUsage::default()
            },
            cost_usd: cost,
            saved_usd: None,
            latency_us: 2_000,
            ttft_us: None,
            upstream_us: Some(1_500),
            attempts: 1,
            cache: "miss",
            rate_limit: None,
            stages: vec![],
        }
    }

    #[test]
    fn the_schema_has_the_columns_the_insert_names() {
        let statements = schema_statements();
        assert_eq!(statements.len(), 3);
        assert!(
            statements
                .iter()
                .all(|s| s.trim_start().starts_with("CREATE"))
        );
        let columns = INSERT
            .split_once('(')
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(columns, _)| columns)
            .unwrap();
        for column in columns.split(',') {
            assert!(statements[0].contains(column.trim()), "{column}");
        }
    }

    #[test]
    fn an_event_round_trips_through_its_row() {
        let original = event(1_000, "chat", 200, Some(0.25));
        let row = EventRow::of(&original);
        assert_eq!(row.params().len(), INSERT.matches('?').count());
        assert_eq!(row.event(), original);
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(serde_json::from_str::<EventRow>(&json).unwrap(), row);
    }

    #[test]
    fn the_query_api_answers_from_stored_rows() {
        let now = 1_700_000_000_000;
        let rows: Vec<EventRow> = [
            event(now - 60_000, "chat", 200, Some(0.5)),
            event(now - 30_000, "chat", 502, None),
            event(now - 20_000, "other", 200, Some(0.25)),
        ]
        .iter()
        .map(EventRow::of)
        .collect();
        let query = Query::parse(
            [
                ("from", "-1h"),
                ("group_by", "route"),
                ("metrics", "requests,errors,cost"),
            ],
            now,
        )
        .unwrap();
        let (from, to) = read_range(&query);
        assert!(from < query.from_ms && to == query.to_ms);
        let answer = answer(&query, &rows);
        assert_eq!(answer.totals["requests"], 3);
        assert_eq!(answer.totals["errors"], 1);
        assert_eq!(answer.series.len(), 2);
        assert_eq!(answer.series[0].group["route"], "chat");
        let by_key = Query::parse([("from", "-1h"), ("group_by", "key")], now).unwrap();
        assert_eq!(
            super::answer(&by_key, &rows).series[0].group["key"],
            "master"
        );
    }
}
