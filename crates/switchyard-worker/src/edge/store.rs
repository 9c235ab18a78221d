//! The Worker's stores: virtual keys and request events in D1 (binding `DB`), cached answers
//! in KV (binding `CACHE`), and the rate-limit counters' Durable Objects (binding
//! `RATE_LIMITER`).
//!
//! Events are buffered per isolate and written in one D1 batch by a `waitUntil` task, off
//! the response path: requests that end while a write is pending join the next batch.

use std::cell::{Cell, RefCell};

use switchyard_core::analytics::{Query, RequestEvent};
use switchyard_core::cache::Entry;
use switchyard_core::error::{ErrorKind, GatewayError, Origin};
use switchyard_core::keys::VirtualKey;
use worker::wasm_bindgen::JsValue;
use worker::{
    Context, D1Database, Env, Headers, Method, Request, RequestInit, Response, console_error,
};

use super::{internal, json_response, now_ms};
use crate::analytics::{self, EventRow, MAX_ROWS, Param};
use crate::auth::KeyRow;
use crate::limits::{Ask, Decision};

/// The D1 binding.
pub const DB: &str = "DB";
/// The KV binding of the response cache.
pub const CACHE: &str = "CACHE";
/// The Durable Object binding of the rate-limit counters.
pub const RATE_LIMITER: &str = "RATE_LIMITER";

thread_local! {
    /// Events waiting for the next D1 batch.
    static PENDING: RefCell<Vec<EventRow>> = const { RefCell::new(Vec::new()) };
    /// Whether this isolate already made sure the D1 tables exist.
    static SCHEMA_READY: Cell<bool> = const { Cell::new(false) };
}

fn binding_missing(name: &str, error: worker::Error) -> GatewayError {
    GatewayError::new(
        ErrorKind::Internal,
        Origin::Gateway,
        format!("the Worker has no usable `{name}` binding (see wrangler.toml): {error}"),
    )
}

async fn database(env: &Env) -> Result<D1Database, GatewayError> {
    let db = env.d1(DB).map_err(|error| binding_missing(DB, error))?;
    if !SCHEMA_READY.with(Cell::get) {
        for statement in analytics::schema_statements() {
            db.prepare(statement).run().await.map_err(|error| {
                GatewayError::internal(format!("could not create the D1 tables: {error}"))
            })?;
        }
        SCHEMA_READY.with(|ready| ready.set(true));
    }
    Ok(db)
}

/// The virtual key whose secret hashes to `hash_hex`, if any.
pub async fn find_key(env: &Env, hash_hex: &str) -> Result<Option<VirtualKey>, GatewayError> {
    let db = database(env).await?;
    let row: Option<KeyRow> = db
        .prepare("SELECT * FROM keys WHERE hash = ?1")
        .bind(&[JsValue::from_str(hash_hex)])
        .map_err(internal)?
        .first(None)
        .await
        .map_err(|error| GatewayError::internal(format!("could not read the keys: {error}")))?;
    match row.map(KeyRow::into_key) {
        None => Ok(None),
        Some(Ok(key)) => Ok(Some(key)),
        Some(Err(problem)) => {
            console_error!("unusable key row: {problem}");
            Ok(None)
        }
    }
}

/// Queues `event` and makes sure a batch write follows, after the response.
pub fn record(ctx: &Context, env: &Env, event: &RequestEvent) {
    queue(event);
    let env = env.clone();
    ctx.wait_until(async move { flush(&env).await });
}

/// Queues `event` for the next batch.
pub fn queue(event: &RequestEvent) {
    PENDING.with(|pending| pending.borrow_mut().push(EventRow::of(event)));
}

/// Writes every queued event in one D1 batch (a no-op when another flush took them).
pub async fn flush(env: &Env) {
    let rows = PENDING.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
    if rows.is_empty() {
        return;
    }
    let count = rows.len();
    let written = async {
        let db = database(env).await?;
        let statements = rows
            .iter()
            .map(|row| {
                let params: Vec<JsValue> = row
                    .params()
                    .iter()
                    .map(|param| match param {
                        Param::Null => JsValue::NULL,
                        Param::Number(number) => JsValue::from_f64(*number),
                        Param::Text(text) => JsValue::from_str(text),
                    })
                    .collect();
                db.prepare(analytics::INSERT).bind(&params)
            })
            .collect::<worker::Result<Vec<_>>>()
            .map_err(internal)?;
        db.batch(statements).await.map_err(internal)?;
        Ok::<(), GatewayError>(())
    };
    if let Err(error) = written.await {
        // Analytics never fail a request; the loss is logged with its size.
        console_error!("dropped {count} request events: {}", error.message);
    }
}

/// `GET /admin/analytics`: the core's query over the stored events.
pub async fn analytics(env: &Env, pairs: &[(String, String)]) -> Result<Response, GatewayError> {
    let query = Query::parse(
        pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
        now_ms(),
    )
    .map_err(|error| {
        GatewayError::invalid_request(error.message.clone()).with_param(error.param.clone())
    })?;
    let (from, to) = analytics::read_range(&query);
    let db = database(env).await?;
    // Unix milliseconds and the row cap are exact as doubles.
    #[allow(clippy::cast_precision_loss)]
    let params = [
        JsValue::from_f64(from as f64),
        JsValue::from_f64(to as f64),
        JsValue::from_f64(f64::from(MAX_ROWS)),
    ];
    let rows: Vec<EventRow> = db
        .prepare(analytics::SELECT)
        .bind(&params)
        .map_err(internal)?
        .all()
        .await
        .and_then(|result| result.results())
        .map_err(|error| GatewayError::internal(format!("could not read the events: {error}")))?;
    let answer = analytics::answer(&query, &rows);
    let body = serde_json::to_vec(&answer)
        .map_err(|_| GatewayError::internal("could not encode the analytics answer"))?;
    json_response(body).map_err(internal)
}

/// The cached answer under `key`, if KV has one.
pub async fn cache_get(env: &Env, key: &str) -> Result<Option<Entry>, GatewayError> {
    let kv = env
        .kv(CACHE)
        .map_err(|error| binding_missing(CACHE, error))?;
    let bytes =
        kv.get(key).bytes().await.map_err(|error| {
            GatewayError::internal(format!("could not read the cache: {error}"))
        })?;
    Ok(bytes.and_then(|bytes| match Entry::decode(&bytes) {
        Ok(entry) => Some(entry),
        Err(problem) => {
            console_error!("unreadable cache entry {key}: {problem}");
            None
        }
    }))
}

/// Stores `entry` under `key` after the response (see [`cache_store`]).
pub fn cache_put(ctx: &Context, env: &Env, key: String, entry: &Entry) {
    let env = env.clone();
    let entry = entry.clone();
    ctx.wait_until(async move { cache_store(&env, key, entry).await });
}

/// Stores `entry` under `key`; KV expires it at its TTL (at least the 60 seconds KV allows;
/// the entry's own expiry is checked on every read). A failure is logged, never fatal.
pub async fn cache_store(env: &Env, key: String, entry: Entry) {
    let bytes = entry.encode();
    let ttl_s = entry
        .expires_unix_ms
        .saturating_sub(entry.stored_unix_ms)
        .div_ceil(1_000)
        .max(60);
    let stored = match env.kv(CACHE) {
        Ok(kv) => match kv.put_bytes(&key, &bytes) {
            Ok(put) => put
                .expiration_ttl(ttl_s)
                .execute()
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        },
        Err(error) => Err(error.to_string()),
    };
    if let Err(error) = stored {
        console_error!("could not store a cached answer: {error}");
    }
}

/// Charges one counter's Durable Object.
pub async fn charge(env: &Env, object: &str, ask: &Ask) -> Result<Decision, GatewayError> {
    let failed = |error: worker::Error| {
        GatewayError::new(
            ErrorKind::Unavailable,
            Origin::Gateway,
            format!("the rate limiter could not be reached: {error}"),
        )
    };
    let namespace = env
        .durable_object(RATE_LIMITER)
        .map_err(|error| binding_missing(RATE_LIMITER, error))?;
    let stub = namespace
        .id_from_name(object)
        .and_then(|id| id.get_stub())
        .map_err(failed)?;
    let body = serde_json::to_string(ask)
        .map_err(|_| GatewayError::internal("could not encode a rate-limit charge"))?;
    let headers = Headers::new();
    headers
        .set("content-type", "application/json")
        .map_err(internal)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from_str(&body)));
    let request = Request::new_with_init("https://rate-limiter/charge", &init).map_err(internal)?;
    let mut response = stub.fetch_with_request(request).await.map_err(failed)?;
    response.json::<Decision>().await.map_err(failed)
}
