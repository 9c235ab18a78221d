//! The canonical cache key of a request.
//!
//! Two requests share a key when they would get the same answer: the same endpoint, route
//! and tenant scope, and the same body once canonicalised. Canonical means that object keys
//! are sorted, whitespace is gone, and numbers are compared by value (`1`, `1.0` and `1e0`
//! are one number). Top-level fields that do not change the answer are left out:
//! `model` (the resolved route stands for it, so aliases of one route share answers),
//! `user`, `stream`, `stream_options`, `metadata` and `store`.
//!
//! The digest is SHA-256 over a length-framed encoding, so no two different requests can be
//! made to encode alike; the scope and route are part of it as well as kept in clear for
//! display and flushing.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::GatewayError;

/// Top-level fields left out of the key.
pub const IGNORED_FIELDS: [&str; 6] = [
    "model",
    "user",
    "stream",
    "stream_options",
    "metadata",
    "store",
];

/// A request's cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// SHA-256 of endpoint, scope, route and canonical body.
    pub digest: [u8; 32],
    /// The route the request resolved to.
    pub route: String,
    /// The tenant scope (`key:…`, `team:…` or `global`).
    pub scope: String,
}

impl CacheKey {
    /// The key of a JSON request `body` sent to `endpoint`, resolved to `route`, read within
    /// `scope`. Fails only when the body is not JSON (which parsing has already refused).
    pub fn new(
        endpoint: &str,
        scope: &str,
        route: &str,
        body: &[u8],
    ) -> Result<Self, GatewayError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|_| GatewayError::invalid_request("The request body is not valid JSON"))?;
        Ok(Self::from_value(endpoint, scope, route, &value))
    }

    /// The key of an already parsed request body.
    pub fn from_value(endpoint: &str, scope: &str, route: &str, body: &Value) -> Self {
        let mut hasher = Sha256::new();
        frame_str(&mut hasher, endpoint);
        frame_str(&mut hasher, scope);
        frame_str(&mut hasher, route);
        match body {
            Value::Object(map) => {
                let mut fields: Vec<(&String, &Value)> = map
                    .iter()
                    .filter(|(name, _)| !IGNORED_FIELDS.contains(&name.as_str()))
                    .collect();
                fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
                hasher.update(b"{");
                hasher.update((fields.len() as u64).to_le_bytes());
                for (name, value) in fields {
                    frame_str(&mut hasher, name);
                    canonical(&mut hasher, value);
                }
            }
            other => canonical(&mut hasher, other),
        }
        CacheKey {
            digest: hasher.finalize().into(),
            route: route.to_owned(),
            scope: scope.to_owned(),
        }
    }

    /// The digest in lower-case hex.
    pub fn hex(&self) -> String {
        hex(&self.digest)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn frame_str(hasher: &mut Sha256, text: &str) {
    hasher.update(b"\"");
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

fn canonical(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(true) => hasher.update(b"t"),
        Value::Bool(false) => hasher.update(b"f"),
        Value::Number(number) => {
            hasher.update(b"#");
            if let Some(integer) = number.as_i64() {
                hasher.update(integer.to_string().as_bytes());
            } else if let Some(integer) = number.as_u64() {
                hasher.update(integer.to_string().as_bytes());
            } else {
                let float = number.as_f64().unwrap_or(f64::NAN);
                // 2^53: every integral float below it is exactly an i64.
                if float.fract() == 0.0 && float.abs() < 9_007_199_254_740_992.0 {
                    hasher.update((float as i64).to_string().as_bytes());
                } else {
                    hasher.update(float.to_string().as_bytes());
                }
            }
            hasher.update(b";");
        }
        Value::String(text) => frame_str(hasher, text),
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_le_bytes());
            for item in items {
                canonical(hasher, item);
            }
        }
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> = map.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"{");
            hasher.update((fields.len() as u64).to_le_bytes());
            for (name, value) in fields {
                frame_str(hasher, name);
                canonical(hasher, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = "/v1/chat/completions";

    fn key(body: &str) -> [u8; 32] {
        CacheKey::new(CHAT, "key:a", "gpt", body.as_bytes())
            .unwrap()
            .digest
    }

    #[test]
    fn key_order_whitespace_and_number_spelling_do_not_matter() {
        let a =
            key(r#"{"model":"gpt","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
        let b = key(
            "{ \"temperature\": 0.0,\n  \"messages\": [ {\"content\": \"hi\", \"role\": \"user\"} ],\n \"model\": \"gpt\" }",
        );
        assert_eq!(a, b);
        assert_eq!(key(r#"{"n":1}"#), key(r#"{"n":1e0}"#));
        assert_eq!(key(r#"{"top_p":0.5}"#), key(r#"{"top_p":5e-1}"#));
    }

    #[test]
    fn fields_that_do_not_change_the_answer_are_left_out() {
        let base = key(r#"{"model":"gpt","messages":[]}"#);
        for extra in [
            r#""user":"u1""#,
            r#""stream":true"#,
            r#""stream_options":{"include_usage":true}"#,
            r#""metadata":{"trace":"x"}"#,
            r#""store":true"#,
        ] {
            assert_eq!(
                key(&format!(r#"{{"model":"gpt","messages":[],{extra}}}"#)),
                base,
                "{extra}"
            );
        }
        // The model name is stood for by the route: an alias of the same route shares.
        assert_eq!(key(r#"{"model":"alias","messages":[]}"#), base);
    }

    #[test]
    fn everything_that_changes_the_answer_is_in() {
        let base = key(r#"{"messages":[{"role":"user","content":"hi"}]}"#);
        for other in [
            r#"{"messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"messages":[{"role":"system","content":"hi"}]}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"tools":[]}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"seed":1}"#,
            r#"{"messages":[{"role":"user","content":"hi"}],"reasoning_effort":"low"}"#,
        ] {
            assert_ne!(key(other), base, "{other}");
        }
        // Nested `user` or `model` keys are content, not metadata.
        assert_ne!(
            key(r#"{"messages":[{"role":"user","content":"hi","name":"a"}]}"#),
            key(r#"{"messages":[{"role":"user","content":"hi","name":"b"}]}"#)
        );
    }

    #[test]
    fn scope_route_and_endpoint_separate_keys() {
        let body = br#"{"messages":[]}"#;
        let a = CacheKey::new(CHAT, "key:a", "gpt", body).unwrap();
        assert_ne!(a, CacheKey::new(CHAT, "key:b", "gpt", body).unwrap());
        assert_ne!(
            a.digest,
            CacheKey::new(CHAT, "key:a", "claude", body).unwrap().digest
        );
        assert_ne!(
            a.digest,
            CacheKey::new("/v1/embeddings", "key:a", "gpt", body)
                .unwrap()
                .digest
        );
        // Framing: moving a character between scope and route changes the key.
        assert_ne!(
            CacheKey::new(CHAT, "ab", "c", body).unwrap().digest,
            CacheKey::new(CHAT, "a", "bc", body).unwrap().digest
        );
    }

    #[test]
    fn strings_are_framed_so_values_cannot_run_together() {
        assert_ne!(key(r#"{"a":["x","y"]}"#), key(r#"{"a":["xy",""]}"#));
        assert_ne!(key(r#"{"a":"1"}"#), key(r#"{"a":1}"#));
        assert_ne!(key(r#"{"a":null}"#), key(r#"{"a":false}"#));
    }

    #[test]
    fn not_json_is_a_client_error() {
        assert!(CacheKey::new(CHAT, "s", "r", b"{not json").is_err());
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
        assert_eq!(
            CacheKey::new(CHAT, "s", "r", b"{}").unwrap().hex().len(),
            64
        );
    }
}
