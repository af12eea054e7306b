//! API keys (`Authorization: Bearer KEY`) with per-key rate limits over fixed one-minute
//! windows: requests per minute, and tokens (prompt + completion) per minute counted when a
//! request finishes. Logs and metrics name a key by a short hash, never by the key itself.
use crate::error::ApiError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Per-key limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
}

const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Window {
    start: Instant,
    requests: u64,
    tokens: u64,
}

/// The accepted keys and their usage.
#[derive(Debug)]
pub struct Keys {
    keys: Vec<String>,
    limits: RateLimits,
    windows: Mutex<HashMap<String, Window>>,
}

/// Short stable id of a key for logs: the first 12 hex digits of its SHA-256.
pub fn key_id(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without stopping at the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Keys {
    /// No keys: every request is accepted and nothing is limited.
    pub fn new(keys: Vec<String>, limits: RateLimits) -> Self {
        Self {
            keys,
            limits,
            windows: Mutex::default(),
        }
    }

    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks the `Authorization` header and counts one request against the key's window.
    /// Returns the key's id, or `None` when no keys are configured.
    ///
    /// # Errors
    /// 401 for a missing or unknown key, 429 when the key's window is used up.
    pub fn admit(&self, authorization: Option<&str>) -> Result<Option<String>, ApiError> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let given = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        let key = self
            .keys
            .iter()
            .find(|k| same(k, given))
            .ok_or_else(ApiError::unauthorized)?;
        let id = key_id(key);
        let mut windows = self
            .windows
            .lock()
            .map_err(|_| ApiError::internal("rate limiter poisoned"))?;
        let now = Instant::now();
        let w = windows.entry(id.clone()).or_insert(Window {
            start: now,
            requests: 0,
            tokens: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            *w = Window {
                start: now,
                requests: 0,
                tokens: 0,
            };
        }
        let retry = (WINDOW - now.duration_since(w.start)).as_secs() + 1;
        if self
            .limits
            .requests_per_minute
            .is_some_and(|max| w.requests >= max)
        {
            return Err(ApiError::too_many(format!(
                "rate limit of {} requests per minute reached; retry in {retry} s",
                self.limits.requests_per_minute.unwrap_or_default()
            )));
        }
        if self
            .limits
            .tokens_per_minute
            .is_some_and(|max| w.tokens >= max)
        {
            return Err(ApiError::too_many(format!(
                "rate limit of {} tokens per minute reached; retry in {retry} s",
                self.limits.tokens_per_minute.unwrap_or_default()
            )));
        }
        w.requests += 1;
        Ok(Some(id))
    }

    /// Counts `tokens` against key `id`'s current window.
    pub fn add_tokens(&self, id: &str, tokens: usize) {
        if let Ok(mut windows) = self.windows.lock()
            && let Some(w) = windows.get_mut(id)
        {
            w.tokens += tokens as u64;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_limits() {
        let keys = Keys::new(
            vec!["k1".into(), "k2".into()],
            RateLimits {
                requests_per_minute: Some(2),
                tokens_per_minute: Some(10),
            },
        );
        assert_eq!(keys.admit(None).unwrap_err().status.as_u16(), 401);
        assert_eq!(
            keys.admit(Some("Bearer nope")).unwrap_err().status.as_u16(),
            401
        );
        assert_eq!(keys.admit(Some("k1")).unwrap_err().status.as_u16(), 401);
        let id = keys.admit(Some("Bearer k1")).unwrap().unwrap();
        assert_eq!(id, key_id("k1"));
        assert_eq!(id.len(), 12);
        keys.admit(Some("Bearer k1")).unwrap();
        assert_eq!(
            keys.admit(Some("Bearer k1")).unwrap_err().status.as_u16(),
            429
        );
        // Another key has its own window; tokens use it up.
        let id2 = keys.admit(Some("Bearer k2")).unwrap().unwrap();
        keys.add_tokens(&id2, 10);
        let err = keys.admit(Some("Bearer k2")).unwrap_err();
        assert_eq!(err.status.as_u16(), 429);
        assert!(err.message.contains("tokens per minute"), "{}", err.message);
        let open = Keys::new(Vec::new(), RateLimits::default());
        assert_eq!(open.admit(None).unwrap(), None);
    }
}
