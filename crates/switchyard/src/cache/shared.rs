//! The shared tier: cached answers in Redis, with the TTL in Redis too (`SET … PX`), under
//! `switchyard:cache:{route}:{digest}`. The route is escaped (`%` and `:`) so that a flush by
//! route or route prefix matches exactly the keys it means.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use switchyard_core::cache::{CacheKey, Entry};

/// Every cache key starts with this.
pub const PREFIX: &str = "switchyard:cache:";

/// Keys deleted per `UNLINK` during a flush.
const FLUSH_BATCH: usize = 500;

/// A handle on the Redis tier (cheap to clone).
#[derive(Clone)]
pub struct SharedCache {
    connection: ConnectionManager,
    timeout: Duration,
}

impl SharedCache {
    /// Connects lazily to `url`; operations wait at most `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let connection = crate::ratelimit::redis::connect_lazily(url, timeout)?;
        Ok(SharedCache {
            connection,
            timeout,
        })
    }

    /// The entry under `key`, if Redis has one.
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Entry>, String> {
        let mut connection = self.connection.clone();
        let name = redis_key(key);
        let bytes: Option<Vec<u8>> = tokio::time::timeout(self.timeout, connection.get(&name))
            .await
            .map_err(|_| format!("GET took longer than {:?}", self.timeout))?
            .map_err(|error| format!("GET: {error}"))?;
        match bytes {
            None => Ok(None),
            Some(bytes) => Entry::decode(&bytes)
                .map(Some)
                .map_err(|error| format!("{name} holds an unreadable entry: {error}")),
        }
    }

    /// Stores `entry` under `key` until its expiry.
    pub async fn set(&self, key: &CacheKey, entry: &Entry) -> Result<(), String> {
        let ttl_ms = entry.ttl_left_ms(super::unix_ms());
        if ttl_ms == 0 {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let options = redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(ttl_ms));
        let write = connection.set_options::<_, _, ()>(redis_key(key), entry.encode(), options);
        // Writes are off the request path: give them longer than a lookup.
        tokio::time::timeout(self.timeout.saturating_mul(10), write)
            .await
            .map_err(|_| "SET timed out".to_owned())?
            .map_err(|error| format!("SET: {error}"))
    }

    /// Deletes every cache key, or those of `route`, or of routes starting with `prefix`.
    pub async fn flush(&self, route: Option<&str>, prefix: Option<&str>) -> Result<u64, String> {
        let mut patterns = Vec::new();
        if let Some(route) = route {
            patterns.push(format!("{PREFIX}{}:*", glob_escape(&escape(route))));
        }
        if let Some(prefix) = prefix {
            patterns.push(format!("{PREFIX}{}*", glob_escape(&escape(prefix))));
        }
        if patterns.is_empty() {
            patterns.push(format!("{PREFIX}*"));
        }
        let mut removed = 0;
        for pattern in patterns {
            removed += self.flush_matching(&pattern).await?;
        }
        Ok(removed)
    }

    async fn flush_matching(&self, pattern: &str) -> Result<u64, String> {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(FLUSH_BATCH)
                .query_async(&mut connection)
                .await
                .map_err(|error| format!("SCAN: {error}"))?;
            if !keys.is_empty() {
                let count: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .map_err(|error| format!("UNLINK: {error}"))?;
                removed += count;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(removed);
            }
        }
    }
}

/// The Redis key of a cache key.
pub fn redis_key(key: &CacheKey) -> String {
    format!("{PREFIX}{}:{}", escape(&key.route), key.hex())
}

/// `%` → `%25`, `:` → `%3A`: a route name never runs into the digest.
fn escape(route: &str) -> String {
    route.replace('%', "%25").replace(':', "%3A")
}

/// Escapes Redis glob characters.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(character);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_routes_apart() {
        let key = CacheKey::new("/v1/chat/completions", "global", "a:b", b"{}").unwrap();
        assert!(redis_key(&key).starts_with("switchyard:cache:a%3Ab:"));
        assert_eq!(escape("50%"), "50%25");
        assert_eq!(glob_escape("gpt-4*[x]"), "gpt\\-4\\*\\[x\\]");
    }
}
