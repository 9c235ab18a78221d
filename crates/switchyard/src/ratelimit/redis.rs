//! The shared limiter store: counters in Redis, so that every gateway instance enforces one
//! limit together. One admission is one round trip: a Lua script checks every limit the
//! request is subject to and, only if all admit it, charges them all, atomically. Time is
//! Redis's own (`TIME`), so instances with skewed clocks still agree.
//!
//! The scripts mirror `switchyard_core::ratelimit` in microseconds:
//! - token bucket: GCRA, the key holds the theoretical arrival time;
//! - sliding window: a hash of the current window's start and the current and previous
//!   counts;
//! - window log: a sorted set of `time:nonce:units` members scored by time;
//! - concurrency: a sorted set of leases (one per request in flight) scored by their expiry,
//!   so an instance that dies with requests in flight cannot leak slots for longer than the
//!   request timeout.
//!
//! Keys are `switchyard:rl:{limit}:{algorithm}:{counter}` and expire when idle.

use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use switchyard_core::ratelimit::Policy;

/// Checks and charges every limit of a request, all or nothing.
///
/// `KEYS[i]`: the counter of limit i. `ARGV`: nonce, count, then per limit: kind, units, p1,
/// p2, p3. Returns `{admitted, refusing limit (1-based), retry_after_us (-1: never), now_us,
/// remaining_1, reset_us_1, ...}`.
const ADMIT: &str = r"
local function int(x) return string.format('%d', x) end
local function num(x) return string.format('%.3f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nonce = ARGV[1]
local n = tonumber(ARGV[2])
local out = {1, 0, 0, now}
local writes = {}
for i = 1, n do
  local base = 2 + (i - 1) * 5
  local kind = ARGV[base + 1]
  local units = tonumber(ARGV[base + 2])
  local p1 = tonumber(ARGV[base + 3])
  local p2 = tonumber(ARGV[base + 4])
  local p3 = tonumber(ARGV[base + 5])
  local key = KEYS[i]
  local ok, retry, remaining, reset = true, 0, 0, 0
  if kind == 'b' then
    local interval, burst = p1, p2
    local tat = tonumber(redis.call('GET', key) or '0')
    local new_tat = math.max(tat, now) + units * interval
    local tolerance = interval * burst
    local allowed_at = new_tat - tolerance
    if units > burst then
      ok, retry, reset = false, -1, math.max(tat - now, 0)
    elseif allowed_at > now then
      ok, retry, reset = false, allowed_at - now, math.max(tat - now, 0)
    else
      remaining = math.floor((tolerance - (new_tat - now)) / interval + 1e-9)
      reset = new_tat - now
      writes[#writes + 1] = {'b', key, new_tat, new_tat - now}
    end
  elseif kind == 'w' then
    local limit, window = p1, p2
    local h = redis.call('HMGET', key, 's', 'c', 'p')
    local s, c, p = tonumber(h[1] or 0), tonumber(h[2] or 0), tonumber(h[3] or 0)
    local aligned = now - (now % window)
    if aligned ~= s then
      if aligned == s + window then p = c else p = 0 end
      c = 0
      s = aligned
    end
    local used = math.ceil(p * (window - (now - s)) / window) + c
    if c > 0 then reset = s + 2 * window - now elseif p > 0 then reset = s + window - now end
    if units > limit then
      ok, retry = false, -1
    elseif used + units <= limit then
      remaining = limit - used - units
      reset = s + 2 * window - now
      writes[#writes + 1] = {'w', key, s, c + units, p, 2 * window}
    else
      ok = false
      if c + units <= limit and p > 0 then
        local needed = window - math.floor((limit - c - units) * window / p)
        retry = math.max(s + needed - now, 1)
      elseif c == 0 then
        retry = math.max(s + window - now, 1)
      else
        local needed = window - math.min(math.floor((limit - units) * window / c), window)
        retry = math.max(s + window + needed - now, 1)
      end
    end
  elseif kind == 'l' then
    local limit, window, weighted = p1, p2, p3
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - window))
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local sum = 0
    if weighted == 1 then
      for j = 1, #entries, 2 do
        sum = sum + tonumber(string.match(entries[j], ':(%d+)$'))
      end
    else
      sum = #entries / 2
    end
    if #entries > 0 then reset = math.max(tonumber(entries[#entries]) + window - now, 0) end
    if units > limit then
      ok, retry = false, -1
    elseif sum + units <= limit then
      remaining = limit - sum - units
      reset = window
      writes[#writes + 1] = {'l', key, now, int(now) .. ':' .. nonce .. ':' .. int(units), window}
    else
      ok = false
      retry = window
      local freed = 0
      for j = 1, #entries, 2 do
        if weighted == 1 then
          freed = freed + tonumber(string.match(entries[j], ':(%d+)$'))
        else
          freed = freed + 1
        end
        if sum - freed + units <= limit then
          retry = math.max(tonumber(entries[j + 1]) + window - now, 1)
          break
        end
      end
    end
  elseif kind == 'c' then
    local limit, ttl = p1, p2
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
    local count = redis.call('ZCARD', key)
    if count + units > limit then
      ok, retry = false, -1
    else
      remaining = limit - count - units
      writes[#writes + 1] = {'c', key, now + ttl, nonce, ttl}
    end
  end
  if not ok then
    return {0, i, math.ceil(retry), now}
  end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset)
end
for _, w in ipairs(writes) do
  if w[1] == 'b' then
    redis.call('SET', w[2], num(w[3]), 'PX', int(math.ceil(w[4] / 1000) + 1000))
  elseif w[1] == 'w' then
    redis.call('HSET', w[2], 's', int(w[3]), 'c', int(w[4]), 'p', int(w[5]))
    redis.call('PEXPIRE', w[2], int(math.ceil(w[6] / 1000) + 1000))
  elseif w[1] == 'l' then
    redis.call('ZADD', w[2], int(w[3]), w[4])
    redis.call('PEXPIRE', w[2], int(math.ceil(w[5] / 1000) + 1000))
  else
    redis.call('ZADD', w[2], int(w[3]), w[4])
    redis.call('PEXPIRE', w[2], int(math.ceil(w[5] / 1000) + 1000))
  end
end
return out
";

/// Settles charges, of any number of requests: refunds (negative units), extra usage
/// (positive), ends of requests in flight. `ARGV`: count, then per charge: kind, delta, p1,
/// p2, charged_at_us, nonce.
const SETTLE: &str = r"
local function int(x) return string.format('%d', x) end
local function num(x) return string.format('%.3f', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
for i = 1, n do
  local base = 1 + (i - 1) * 6
  local kind = ARGV[base + 1]
  local delta = tonumber(ARGV[base + 2])
  local p1 = tonumber(ARGV[base + 3])
  local p2 = tonumber(ARGV[base + 4])
  local at = tonumber(ARGV[base + 5])
  local nonce = ARGV[base + 6]
  local key = KEYS[i]
  if kind == 'b' then
    local interval = p1
    local tat = tonumber(redis.call('GET', key) or '0')
    if delta < 0 then
      tat = math.max(tat + delta * interval, math.min(now, tat))
    else
      tat = math.max(tat, now) + delta * interval
    end
    if tat > now then
      redis.call('SET', key, num(tat), 'PX', int(math.ceil((tat - now) / 1000) + 1000))
    end
  elseif kind == 'w' then
    local window = p2
    local h = redis.call('HMGET', key, 's', 'c', 'p')
    if h[1] then
      local s, c, p = tonumber(h[1]), tonumber(h[2] or 0), tonumber(h[3] or 0)
      local aligned = now - (now % window)
      if aligned ~= s then
        if aligned == s + window then p = c else p = 0 end
        c = 0
        s = aligned
      end
      local charged = at - (at % window)
      if delta < 0 then
        if charged == s then c = math.max(c + delta, 0) elseif charged + window == s then p = math.max(p + delta, 0) end
      else
        c = c + delta
      end
      redis.call('HSET', key, 's', int(s), 'c', int(c), 'p', int(p))
      redis.call('PEXPIRE', key, int(math.ceil(2 * window / 1000) + 1000))
    end
  elseif kind == 'l' then
    local reserved, window = p1, p2
    if delta < 0 then
      local member = int(at) .. ':' .. nonce .. ':' .. int(reserved)
      if redis.call('ZREM', key, member) == 1 and reserved + delta > 0 then
        redis.call('ZADD', key, int(at), int(at) .. ':' .. nonce .. ':' .. int(reserved + delta))
      end
    else
      redis.call('ZADD', key, int(now), int(now) .. ':' .. nonce .. '+:' .. int(delta))
      redis.call('PEXPIRE', key, int(math.ceil(window / 1000) + 1000))
    end
  elseif kind == 'c' then
    redis.call('ZREM', key, nonce)
  end
end
return 1
";

/// One limit of an admission, as the scripts take it.
#[derive(Debug, Clone)]
pub struct Check {
    /// The Redis key.
    pub key: String,
    /// The policy.
    pub policy: Policy,
    /// Units to charge.
    pub units: u64,
    /// Whether units vary per request (tokens), for the window log's sum.
    pub weighted: bool,
}

/// One charge to settle: `delta` units (negative: a refund or the end of a request in
/// flight) on `check`, charged at `at` (Redis microseconds) by admission `nonce`.
#[derive(Debug, Clone)]
pub struct Settlement {
    /// The counter and its policy.
    pub check: Check,
    /// Units to add (positive) or give back (negative).
    pub delta: i64,
    /// When the charge was made.
    pub at: u64,
    /// The admission's id.
    pub nonce: String,
}

/// What Redis decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// All charged; per limit (remaining, reset in microseconds); Redis's time.
    Admitted {
        /// Per check: units left and microseconds to full.
        limits: Vec<(u64, u64)>,
        /// Redis's clock at admission, microseconds.
        now_us: u64,
    },
    /// Nothing charged: check `index` refused.
    Refused {
        /// Index into the checks.
        index: usize,
        /// Microseconds until it could pass; `None`: never.
        retry_after_us: Option<u64>,
    },
}

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    admit: Script,
    settle: Script,
    /// Lease length for concurrency slots: the request timeout plus a margin.
    lease: Duration,
}

/// A connection to Redis at `url` that connects on first use and again after a failure, so
/// that an unreachable Redis stops nothing from starting. Commands wait at most `timeout`.
/// Must be called inside the tokio runtime (the manager spawns its reader task at once).
pub fn connect_lazily(url: &str, timeout: Duration) -> Result<ConnectionManager, String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("a Redis connection must be made inside the tokio runtime".to_owned());
    }
    let client = redis::Client::open(url)
        .map_err(|error| format!("storage.redis_url is not a valid Redis URL: {error}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|error| format!("redis: {error}"))
}

impl RedisStore {
    /// A store for `url`; it connects lazily, so an unreachable Redis does not stop the
    /// gateway from starting (the configured fail mode applies meanwhile).
    pub fn new(url: &str, timeout: Duration, lease: Duration) -> Result<Self, String> {
        let connection = connect_lazily(url, timeout)?;
        Ok(RedisStore {
            connection,
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            lease,
        })
    }

    /// Connects and loads the scripts, so that the first requests do not pay for it.
    pub async fn warm_up(&self) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        self.admit.load_async(&mut connection).await?;
        self.settle.load_async(&mut connection).await?;
        Ok(())
    }

    /// Checks and charges `checks` in one round trip.
    pub async fn admit(
        &self,
        nonce: &str,
        checks: &[Check],
    ) -> Result<Decision, redis::RedisError> {
        let mut invocation = self.admit.prepare_invoke();
        invocation.arg(nonce).arg(checks.len());
        for check in checks {
            invocation.key(&check.key);
            let (kind, p1, p2) = self.params(&check.policy);
            invocation
                .arg(kind)
                .arg(check.units)
                .arg(p1)
                .arg(p2)
                .arg(u8::from(check.weighted));
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        let field = |i: usize| reply.get(i).copied().unwrap_or(0);
        let now_us = u64::try_from(field(3)).unwrap_or(0);
        if field(0) == 1 {
            let limits = (0..checks.len())
                .map(|i| {
                    (
                        u64::try_from(field(4 + 2 * i)).unwrap_or(0),
                        u64::try_from(field(5 + 2 * i)).unwrap_or(0),
                    )
                })
                .collect();
            Ok(Decision::Admitted { limits, now_us })
        } else {
            let index = usize::try_from(field(1)).unwrap_or(1).saturating_sub(1);
            let retry = field(2);
            Ok(Decision::Refused {
                index,
                retry_after_us: u64::try_from(retry).ok(),
            })
        }
    }

    /// Settles any number of charges, of any requests, in one round trip.
    pub async fn settle(&self, settlements: &[Settlement]) -> Result<(), redis::RedisError> {
        if settlements.is_empty() {
            return Ok(());
        }
        let mut invocation = self.settle.prepare_invoke();
        invocation.arg(settlements.len());
        for settlement in settlements {
            let check = &settlement.check;
            invocation.key(&check.key);
            let (kind, p1, p2) = self.params(&check.policy);
            // The window log's p1 is the reserved amount, to find the member.
            let p1 = if kind == "l" { check.units as f64 } else { p1 };
            invocation
                .arg(kind)
                .arg(settlement.delta)
                .arg(p1)
                .arg(p2)
                .arg(settlement.at)
                .arg(&settlement.nonce);
        }
        let mut connection = self.connection.clone();
        let _: i64 = invocation.invoke_async(&mut connection).await?;
        Ok(())
    }

    /// The script's kind letter and numbers for a policy, in microseconds.
    fn params(&self, policy: &Policy) -> (&'static str, f64, f64) {
        let micros = |nanos: u64| nanos as f64 / 1_000.0;
        match *policy {
            Policy::TokenBucket { interval, burst } => ("b", micros(interval), burst as f64),
            Policy::SlidingWindow { limit, window } => ("w", limit as f64, micros(window).ceil()),
            Policy::WindowLog { limit, window } => ("l", limit as f64, micros(window).ceil()),
            Policy::Concurrency { limit } => (
                "c",
                limit as f64,
                u64::try_from(self.lease.as_micros()).unwrap_or(u64::MAX) as f64,
            ),
        }
    }

    /// The kind letter of a policy, part of its keys (a changed algorithm gets fresh keys
    /// instead of a type error).
    pub fn kind(policy: &Policy) -> &'static str {
        match policy {
            Policy::TokenBucket { .. } => "b",
            Policy::SlidingWindow { .. } => "w",
            Policy::WindowLog { .. } => "l",
            Policy::Concurrency { .. } => "c",
        }
    }
}
