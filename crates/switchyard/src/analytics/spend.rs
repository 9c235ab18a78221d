//! The spend ledger's rows: what each request cost, summed per 15-minute bucket and per key,
//! team, route, model and provider. It lives beside the rollups (the `spend` table in
//! `analytics.db`, `switchyard_spend` in Postgres), is written by the budget engine (never
//! dropped: a failed write is retried at the next flush), and is never pruned: budgets with
//! period `total` read it back to the beginning. A row is about 100 bytes, and there is one
//! per bucket per combination that spent anything.
//!
//! Budget periods start at local midnights, and every time zone's midnight falls on a
//! quarter hour, so the spend of any period is an exact sum of buckets.

use serde::Serialize;

/// The bucket width (15 minutes; the budget forecasts read buckets of the same width).
pub const BUCKET_MS: u64 = switchyard_core::budget::BUCKET_MS;

/// The bucket holding `time_ms`.
pub fn bucket(time_ms: u64) -> u64 {
    time_ms - time_ms % BUCKET_MS
}

/// One ledger cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpendKey {
    /// Start of the 15-minute bucket, unix ms.
    pub bucket_ms: u64,
    /// The principal (a key id, `master`, `anonymous`).
    pub key: String,
    /// The key's team; empty for none.
    pub team: String,
    /// The route; empty for none.
    pub route: String,
    /// The upstream model.
    pub model: String,
    /// The provider.
    pub provider: String,
}

/// What one cell adds up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpendTotals {
    /// Spend, nano-dollars.
    pub cost_nanos: i64,
    /// What cache hits saved, nano-dollars.
    pub saved_nanos: i64,
    /// Requests.
    pub requests: i64,
    /// Requests whose cost is unknown (no price for the model, or a cut stream).
    pub unpriced: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// What the requests would have cost at the default provider of the route the client
    /// asked for (its strongest tier, for a tiered route), with no cache: the baseline of
    /// the savings report, nano-dollars.
    pub baseline_nanos: i64,
    /// What the requests that went upstream would have cost at the default provider of the
    /// route that served them.
    pub default_nanos: i64,
    /// The part of `baseline_nanos` that cache hits account for.
    pub hit_baseline_nanos: i64,
}

impl SpendTotals {
    /// Adds `other` in.
    pub fn add(&mut self, other: &SpendTotals) {
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
        self.saved_nanos = self.saved_nanos.saturating_add(other.saved_nanos);
        self.requests = self.requests.saturating_add(other.requests);
        self.unpriced = self.unpriced.saturating_add(other.unpriced);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.baseline_nanos = self.baseline_nanos.saturating_add(other.baseline_nanos);
        self.default_nanos = self.default_nanos.saturating_add(other.default_nanos);
        self.hit_baseline_nanos = self
            .hit_baseline_nanos
            .saturating_add(other.hit_baseline_nanos);
    }
}

/// A ledger dimension, as a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendColumn {
    /// The principal.
    Key,
    /// The team.
    Team,
    /// The route.
    Route,
    /// The upstream model.
    Model,
    /// The provider.
    Provider,
}

impl SpendColumn {
    /// Reads a `group_by` value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "key" => SpendColumn::Key,
            "team" => SpendColumn::Team,
            "route" => SpendColumn::Route,
            "model" => SpendColumn::Model,
            "provider" => SpendColumn::Provider,
            _ => return None,
        })
    }

    /// The column name (the same in SQLite and Postgres; never from user input).
    pub fn column(self) -> &'static str {
        match self {
            SpendColumn::Key => "key",
            SpendColumn::Team => "team",
            SpendColumn::Route => "route",
            SpendColumn::Model => "model",
            SpendColumn::Provider => "provider",
        }
    }
}

/// The budget scopes that are a ledger column (`global` is the sum of everything).
pub fn column_of(scope: switchyard_core::budget::BudgetScope) -> Option<SpendColumn> {
    use switchyard_core::budget::BudgetScope;
    match scope {
        BudgetScope::Key => Some(SpendColumn::Key),
        BudgetScope::Team => Some(SpendColumn::Team),
        BudgetScope::Route => Some(SpendColumn::Route),
        BudgetScope::Model => Some(SpendColumn::Model),
        BudgetScope::Provider => Some(SpendColumn::Provider),
        BudgetScope::Global => None,
    }
}

/// The SQL that sums one member's spend in a range: `?1`/`$1` from, `?2`/`$2` to (exclusive),
/// `?3`/`$3` the member when a column is given. `table` and the placeholder style vary.
pub fn spent_sql(table: &str, column: Option<SpendColumn>, dollar: bool) -> String {
    let p = |n: u8| {
        if dollar {
            format!("${n}")
        } else {
            format!("?{n}")
        }
    };
    let member = column.map_or(String::new(), |column| {
        format!(" AND {} = {}", column.column(), p(3))
    });
    format!(
        "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) FROM {table} WHERE bucket_ms >= {} AND bucket_ms < {}{member}",
        p(1),
        p(2)
    )
}

/// The SQL of a spend report grouped by `column` over `[from, to)`.
pub fn report_sql(table: &str, column: SpendColumn, dollar: bool) -> String {
    let (from, to) = if dollar { ("$1", "$2") } else { ("?1", "?2") };
    let column = column.column();
    format!(
        "SELECT {column}, CAST(SUM(cost_nanos) AS BIGINT), CAST(SUM(saved_nanos) AS BIGINT), \
         CAST(SUM(requests) AS BIGINT), CAST(SUM(unpriced) AS BIGINT), \
         CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), \
         CAST(SUM(baseline_nanos) AS BIGINT), CAST(SUM(default_nanos) AS BIGINT), \
         CAST(SUM(hit_baseline_nanos) AS BIGINT) FROM {table} \
         WHERE bucket_ms >= {from} AND bucket_ms < {to} GROUP BY {column} \
         ORDER BY SUM(cost_nanos) DESC, {column}"
    )
}

/// The SQL of the spend series the budget forecasts read: the spend per member of `column`
/// (an empty member with none) and bucket over `[?1, ?3)`, the buckets before `?2` folded
/// into one row at `?1`, so a month's series is a day of buckets and one row for the rest.
/// `$n` with `dollar`.
pub fn series_sql(table: &str, column: Option<SpendColumn>, dollar: bool) -> String {
    let (from, detail, to) = if dollar {
        ("$1", "$2", "$3")
    } else {
        ("?1", "?2", "?3")
    };
    let member = column.map_or("CAST('' AS TEXT)", SpendColumn::column);
    format!(
        "SELECT {member}, CASE WHEN bucket_ms < {detail} THEN {from} ELSE bucket_ms END, \
         CAST(SUM(cost_nanos) AS BIGINT) FROM {table} \
         WHERE bucket_ms >= {from} AND bucket_ms < {to} GROUP BY 1, 2 ORDER BY 1, 2"
    )
}

/// The SQL that adds one cell into the ledger.
pub fn upsert_sql(table: &str, dollar: bool) -> String {
    let p: Vec<String> = (1..=15)
        .map(|n| {
            if dollar {
                format!("${n}")
            } else {
                format!("?{n}")
            }
        })
        .collect();
    format!(
        "INSERT INTO {table} (bucket_ms, key, team, route, model, provider, cost_nanos, \
         saved_nanos, requests, unpriced, input_tokens, output_tokens, baseline_nanos, \
         default_nanos, hit_baseline_nanos) VALUES ({}) \
         ON CONFLICT (bucket_ms, key, team, route, model, provider) DO UPDATE SET \
         cost_nanos = {table}.cost_nanos + excluded.cost_nanos, \
         saved_nanos = {table}.saved_nanos + excluded.saved_nanos, \
         requests = {table}.requests + excluded.requests, \
         unpriced = {table}.unpriced + excluded.unpriced, \
         input_tokens = {table}.input_tokens + excluded.input_tokens, \
         output_tokens = {table}.output_tokens + excluded.output_tokens, \
         baseline_nanos = {table}.baseline_nanos + excluded.baseline_nanos, \
         default_nanos = {table}.default_nanos + excluded.default_nanos, \
         hit_baseline_nanos = {table}.hit_baseline_nanos + excluded.hit_baseline_nanos",
        p.join(", ")
    )
}

/// The ledger table's columns after its key.
pub const TABLE_COLUMNS: &str = "
    bucket_ms BIGINT NOT NULL,
    key TEXT NOT NULL,
    team TEXT NOT NULL,
    route TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    cost_nanos BIGINT NOT NULL,
    saved_nanos BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    unpriced BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    baseline_nanos BIGINT NOT NULL DEFAULT 0,
    default_nanos BIGINT NOT NULL DEFAULT 0,
    hit_baseline_nanos BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_ms, key, team, route, model, provider)";

/// The columns added after the ledger first shipped, for stores created before them.
pub const ADDED_COLUMNS: [&str; 3] = ["baseline_nanos", "default_nanos", "hit_baseline_nanos"];

/// A report line's totals from the columns after the member, in the order of
/// [`report_sql`].
pub fn totals_from(values: [i64; 9]) -> SpendTotals {
    let [
        cost,
        saved,
        requests,
        unpriced,
        input,
        output,
        baseline,
        default,
        hit_baseline,
    ] = values;
    SpendTotals {
        cost_nanos: cost,
        saved_nanos: saved,
        requests,
        unpriced,
        input_tokens: input,
        output_tokens: output,
        baseline_nanos: baseline,
        default_nanos: default,
        hit_baseline_nanos: hit_baseline,
    }
}

/// One quality feedback score, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackRow {
    /// When it was given, unix ms.
    pub time_ms: u64,
    /// The rated request.
    pub request_id: String,
    /// The key that gave it.
    pub key: String,
    /// The route asked for.
    pub route: String,
    /// The tier that served (empty for an untiered route).
    pub tier: String,
    /// The model that answered.
    pub model: String,
    /// 0 (bad) to 1 (good).
    pub score: f64,
}

/// Feedback summed per route, tier and model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QualityLine {
    /// The route asked for.
    pub route: String,
    /// The tier (`null` for an untiered route).
    pub tier: Option<String>,
    /// The model.
    pub model: String,
    /// Scores.
    pub scores: i64,
    /// Their mean.
    pub mean: f64,
}

/// The feedback table's columns.
pub const FEEDBACK_COLUMNS: &str = "
    time_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    key TEXT NOT NULL,
    route TEXT NOT NULL,
    tier TEXT NOT NULL,
    model TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL";

/// The SQL of the quality report over `[from, to)`.
pub fn quality_sql(table: &str, dollar: bool) -> String {
    let (from, to) = if dollar { ("$1", "$2") } else { ("?1", "?2") };
    format!(
        "SELECT route, tier, model, CAST(count(*) AS BIGINT), CAST(avg(score) AS DOUBLE PRECISION) \
         FROM {table} WHERE time_ms >= {from} AND time_ms < {to} \
         GROUP BY route, tier, model ORDER BY route, tier, model"
    )
}

/// The SQL that stores one score.
pub fn feedback_insert_sql(table: &str, dollar: bool) -> String {
    let p: Vec<String> = (1..=7)
        .map(|n| {
            if dollar {
                format!("${n}")
            } else {
                format!("?{n}")
            }
        })
        .collect();
    format!(
        "INSERT INTO {table} (time_ms, request_id, key, route, tier, model, score) VALUES ({})",
        p.join(", ")
    )
}

/// A quality line from its columns.
pub fn quality_line(
    route: String,
    tier: String,
    model: String,
    scores: i64,
    mean: f64,
) -> QualityLine {
    QualityLine {
        route,
        tier: Some(tier).filter(|tier| !tier.is_empty()),
        model,
        scores,
        mean,
    }
}

/// One line of a spend report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpendLine {
    /// The member of the grouping column (empty: none, e.g. keys without a team).
    pub member: String,
    /// Its totals.
    #[serde(flatten)]
    pub totals: SpendTotals,
}

/// One point of a spend series: a member's spend in one bucket (or folded buckets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendPoint {
    /// The member of the grouping column (empty: none, or no column).
    pub member: String,
    /// The bucket's start, unix ms (the range's start for the folded row).
    pub bucket_ms: u64,
    /// Spend, nano-dollars.
    pub cost_nanos: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_quarter_hours_and_the_sql_names_only_known_columns() {
        assert_eq!(bucket(BUCKET_MS * 3 + 5), BUCKET_MS * 3);
        assert_eq!(
            spent_sql("spend", Some(SpendColumn::Team), true),
            "SELECT CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) FROM spend WHERE bucket_ms >= $1 AND bucket_ms < $2 AND team = $3"
        );
        assert!(spent_sql("spend", None, false).ends_with("bucket_ms < ?2"));
        assert!(upsert_sql("spend", false).contains("?15)"));
        assert_eq!(
            series_sql("spend", Some(SpendColumn::Route), false),
            "SELECT route, CASE WHEN bucket_ms < ?2 THEN ?1 ELSE bucket_ms END, \
             CAST(SUM(cost_nanos) AS BIGINT) FROM spend \
             WHERE bucket_ms >= ?1 AND bucket_ms < ?3 GROUP BY 1, 2 ORDER BY 1, 2"
        );
        assert!(series_sql("spend", None, true).starts_with("SELECT CAST('' AS TEXT), "));
        assert_eq!(SpendColumn::parse("provider"), Some(SpendColumn::Provider));
        assert_eq!(SpendColumn::parse("key; DROP TABLE spend"), None);
    }
}
