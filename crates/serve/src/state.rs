//! The state every handler shares (model engine, tokenizer, keys, cache, access log) and the
//! request markers the middleware and the completion endpoints exchange. Its own module so that
//! the routes (`server.rs`) and the completion endpoints (`completions.rs`) both depend on it and
//! not on each other.
use crate::auth::Keys;
use crate::cache::ResponseCache;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::route::Router as Routes;
use axum::body::Body;
use kiln_data::ChatTemplate;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokenizers::Tokenizer;

/// What every handler reads.
pub struct AppState {
    pub(crate) engine: Engine,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) template: Option<ChatTemplate>,
    pub(crate) eos: Vec<u32>,
    pub(crate) model_id: String,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) keys: Keys,
    pub(crate) cache: ResponseCache,
    pub(crate) routes: Option<Routes>,
    pub(crate) max_body: usize,
    pub(crate) log: Mutex<Box<dyn Write + Send>>,
    /// When the server started (Unix seconds): the `created` of the base model.
    pub(crate) started: u64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

pub(crate) type Shared = Arc<AppState>;

/// The key a request authenticated with (its id), for logs and token accounting.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyId(pub Option<String>);

/// Marks a response whose access-log line its handler writes (completions, which know tokens).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Logged;

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    /// Writes one access-log line: `fields` plus the time.
    pub(crate) fn access_log(&self, mut fields: serde_json::Value) {
        if let Some(o) = fields.as_object_mut() {
            o.insert("time".into(), json!(unix_now()));
        }
        if let Ok(mut out) = self.log.lock() {
            let _ = writeln!(out, "{fields}");
            let _ = out.flush();
        }
    }

    /// Reads a request body of at most `max_body` bytes.
    pub(crate) async fn read_body(&self, body: Body) -> std::result::Result<Vec<u8>, ApiError> {
        axum::body::to_bytes(body, self.max_body)
            .await
            .map(|b| b.to_vec())
            .map_err(|_| ApiError::too_large(self.max_body))
    }
}
