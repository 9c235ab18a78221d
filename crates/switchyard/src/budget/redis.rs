//! The shared budget counters: one Redis hash per budget, member and period
//! (`switchyard:budget:{name}:{member}:{period start}` with `s`, the settled spend, `r`, the
//! reservations held, and `seeded`), plus a sorted set of the reservations held (`…:l`,
//! members `nonce:amount` scored by their expiry), so that an instance that dies with
//! requests in flight cannot hold budget for longer than the request timeout. Amounts are
//! nano-dollars (whole numbers, exact in Lua's doubles up to nine million dollars).
//!
//! A period's hash starts from the durable ledger: a script that finds it unseeded says so,
//! the caller reads the ledger and seeds it (taking the larger of what Redis and the ledger
//! hold, so nothing is counted twice), then tries again. That also restores the counters
//! after Redis loses its data. A period's forecast, once reported, is marked beside its hash
//! (`…:forecast`, `SET NX`), so one instance reports it.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

/// Reserves for every budget of a request, all or nothing.
///
/// `KEYS`: per budget, its hash then its lease set. `ARGV`: nonce, lease ms, count, then per
/// budget: amount, limit (-1: none), ttl ms (0: none). Returns `{1}` (reserved), `{0, i, s,
/// r}` (budget i refused) or `{2, i...}` (budgets i are not seeded: nothing done).
const RESERVE: &str = r"
local function int(x) return string.format('%d', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nonce = ARGV[1]
local lease = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local unseeded = {}
for i = 1, n do
  local h, l = KEYS[2 * i - 1], KEYS[2 * i]
  local expired = redis.call('ZRANGEBYSCORE', l, '-inf', now)
  if #expired > 0 then
    local back = 0
    for _, m in ipairs(expired) do
      back = back + tonumber(string.match(m, ':(%d+)$'))
    end
    redis.call('HINCRBY', h, 'r', int(-back))
    redis.call('ZREMRANGEBYSCORE', l, '-inf', now)
  end
  if redis.call('HEXISTS', h, 'seeded') == 0 then
    unseeded[#unseeded + 1] = i
  end
end
if #unseeded > 0 then
  local out = {2}
  for _, i in ipairs(unseeded) do out[#out + 1] = i end
  return out
end
for i = 1, n do
  local base = 3 + (i - 1) * 3
  local amount = tonumber(ARGV[base + 1])
  local limit = tonumber(ARGV[base + 2])
  if limit >= 0 then
    local h = KEYS[2 * i - 1]
    local s = tonumber(redis.call('HGET', h, 's') or '0')
    local r = math.max(tonumber(redis.call('HGET', h, 'r') or '0'), 0)
    if s + r + amount > limit then
      return {0, i, int(s), int(r)}
    end
  end
end
for i = 1, n do
  local base = 3 + (i - 1) * 3
  local amount = tonumber(ARGV[base + 1])
  local ttl = tonumber(ARGV[base + 3])
  local h, l = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HINCRBY', h, 'r', int(amount))
  redis.call('ZADD', l, int(now + lease), nonce .. ':' .. int(amount))
  if ttl > 0 then
    redis.call('PEXPIRE', h, int(ttl))
    redis.call('PEXPIRE', l, int(ttl))
  end
end
return {1}
";

/// Sets a period's starting spend from the ledger, once. `KEYS[1]`: the hash. `ARGV`:
/// the ledger's spend, ttl ms (0: none).
const SEED: &str = r"
if redis.call('HEXISTS', KEYS[1], 'seeded') == 0 then
  local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
  local ledger = tonumber(ARGV[1])
  if ledger > s then redis.call('HSET', KEYS[1], 's', ARGV[1]) end
  redis.call('HSET', KEYS[1], 'seeded', '1')
  if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
return 1
";

/// Settles a request: releases its reservations and adds its cost. `KEYS`: per budget, hash
/// then lease set. `ARGV`: nonce, count, then per budget: reserved amount, actual cost, ttl
/// ms. Returns the spend after, per budget.
const SETTLE: &str = r"
local function int(x) return string.format('%d', x) end
local nonce = ARGV[1]
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local amount = tonumber(ARGV[base + 1])
  local actual = tonumber(ARGV[base + 2])
  local ttl = tonumber(ARGV[base + 3])
  local h, l = KEYS[2 * i - 1], KEYS[2 * i]
  if redis.call('ZREM', l, nonce .. ':' .. int(amount)) == 1 then
    redis.call('HINCRBY', h, 'r', int(-amount))
  end
  local after = redis.call('HINCRBY', h, 's', int(actual))
  if ttl > 0 then redis.call('PEXPIRE', h, int(ttl)) end
  out[i] = after
end
return out
";

/// Reads a period's figures: `KEYS[1]` the hash. Returns `{seeded, s, r}`.
const PEEK: &str = r"
local h = redis.call('HMGET', KEYS[1], 'seeded', 's', 'r')
return {h[1] and 1 or 0, tonumber(h[2] or '0'), math.max(tonumber(h[3] or '0'), 0)}
";

/// One budget of a reservation, as the scripts take it.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The hash's key (the lease set's is this plus `:l`).
    pub key: String,
    /// Nano-dollars to hold.
    pub amount: i64,
    /// The limit; `None` when it only counts.
    pub limit: Option<i64>,
    /// How long the keys live (the rest of the period and a day); zero: for ever.
    pub ttl_ms: u64,
}

/// What Redis said to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Every slot held.
    Held,
    /// Slot `index` cannot afford it: its spend and reservations.
    Refused {
        /// Index into the slots.
        index: usize,
        /// Settled spend.
        spent: i64,
        /// Held by requests in flight.
        reserved: i64,
    },
    /// These slots' periods must be seeded from the ledger first.
    Unseeded(Vec<usize>),
}

/// The Redis side of the budgets.
#[derive(Clone)]
pub struct RedisCounters {
    connection: ConnectionManager,
    reserve: Script,
    seed: Script,
    settle: Script,
    peek: Script,
    /// How long a reservation outlives its instance.
    lease: Duration,
}

impl RedisCounters {
    /// Counters in the Redis at `url`, connected lazily.
    pub fn new(url: &str, timeout: Duration, lease: Duration) -> Result<Self, String> {
        Ok(RedisCounters {
            connection: crate::ratelimit::redis::connect_lazily(url, timeout)?,
            reserve: Script::new(RESERVE),
            seed: Script::new(SEED),
            settle: Script::new(SETTLE),
            peek: Script::new(PEEK),
            lease,
        })
    }

    /// Reserves every slot or none.
    pub async fn reserve(
        &self,
        nonce: &str,
        slots: &[Slot],
    ) -> Result<Reserved, redis::RedisError> {
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .arg(nonce)
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(slots.len());
        for slot in slots {
            invocation
                .key(&slot.key)
                .key(format!("{}:l", slot.key))
                .arg(slot.amount)
                .arg(slot.limit.unwrap_or(-1))
                .arg(slot.ttl_ms);
        }
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = invocation.invoke_async(&mut connection).await?;
        let index = |at: usize| {
            reply
                .get(at)
                .and_then(|i| usize::try_from(*i).ok())
                .and_then(|i| i.checked_sub(1))
                .unwrap_or(0)
        };
        Ok(match reply.first() {
            Some(1) => Reserved::Held,
            Some(2) => Reserved::Unseeded((1..reply.len()).map(index).collect()),
            _ => Reserved::Refused {
                index: index(1),
                spent: reply.get(2).copied().unwrap_or(0),
                reserved: reply.get(3).copied().unwrap_or(0),
            },
        })
    }

    /// Seeds a period from the ledger's `spent`, unless it already is.
    pub async fn seed(&self, key: &str, spent: i64, ttl_ms: u64) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .seed
            .key(key)
            .arg(spent)
            .arg(ttl_ms)
            .invoke_async(&mut connection)
            .await?;
        Ok(())
    }

    /// Settles: per slot `(reserved amount, actual cost)`; returns the spend after, per slot.
    pub async fn settle(
        &self,
        nonce: &str,
        slots: &[(Slot, i64)],
    ) -> Result<Vec<i64>, redis::RedisError> {
        let mut invocation = self.settle.prepare_invoke();
        invocation.arg(nonce).arg(slots.len());
        for (slot, actual) in slots {
            invocation
                .key(&slot.key)
                .key(format!("{}:l", slot.key))
                .arg(slot.amount)
                .arg(*actual)
                .arg(slot.ttl_ms);
        }
        let mut connection = self.connection.clone();
        invocation.invoke_async(&mut connection).await
    }

    /// A period's `(seeded, spent, reserved)`.
    pub async fn peek(&self, key: &str) -> Result<(bool, i64, i64), redis::RedisError> {
        let mut connection = self.connection.clone();
        let reply: Vec<i64> = self.peek.key(key).invoke_async(&mut connection).await?;
        Ok((
            reply.first() == Some(&1),
            reply.get(1).copied().unwrap_or(0),
            reply.get(2).copied().unwrap_or(0),
        ))
    }
}

impl RedisCounters {
    /// Sets `key` unless it exists (`SET NX`, for `ttl_ms`; zero: for ever); whether this
    /// call set it. The instances agree this way on which of them reports a forecast.
    pub async fn claim(&self, key: &str, ttl_ms: u64) -> Result<bool, redis::RedisError> {
        let mut command = redis::cmd("SET");
        command.arg(key).arg(1).arg("NX");
        if ttl_ms > 0 {
            command.arg("PX").arg(ttl_ms);
        }
        let mut connection = self.connection.clone();
        let reply: Option<String> = command.query_async(&mut connection).await?;
        Ok(reply.is_some())
    }
}

/// The hash key of `budget`'s period starting at `start_ms` for `member`.
pub fn key(budget: &str, member: &str, start_ms: u64) -> String {
    format!("switchyard:budget:{budget}:{member}:{start_ms}")
}
