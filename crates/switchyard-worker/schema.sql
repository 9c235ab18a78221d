-- The Worker's D1 tables. The Worker runs these (idempotent) statements once per isolate
-- before its first D1 use; `npx wrangler d1 execute switchyard --remote --file schema.sql`
-- creates them ahead of time.

-- One row per request (see src/analytics.rs).
CREATE TABLE IF NOT EXISTS request_events (
    time_unix_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    route TEXT,
    provider TEXT,
    model TEXT,
    stream INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error_class TEXT,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    tokens_cached INTEGER NOT NULL,
    tokens_reasoning INTEGER NOT NULL,
    cost_usd REAL,
    saved_usd REAL,
    latency_us INTEGER NOT NULL,
    ttft_us INTEGER,
    upstream_us INTEGER,
    attempts INTEGER NOT NULL,
    cache TEXT NOT NULL,
    rate_limit TEXT
);
CREATE INDEX IF NOT EXISTS request_events_time ON request_events (time_unix_ms);

-- Virtual keys: the native stores' columns, the secret's SHA-256 as lowercase hex.
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
