//! The HTTP side: routes, authentication, metrics and the access log. The shared state is in
//! [`crate::state`]; the completion endpoints live in [`crate::completions`].
use crate::auth::{Keys, RateLimits};
use crate::cache::ResponseCache;
use crate::engine::{Engine, EngineOptions};
use crate::error::{ApiError, Result, ServeError};
use crate::metrics::Metrics;
use crate::route::Router as Routes;
use crate::state::{AppState, KeyId, Logged, Shared, unix_now};
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path as UrlPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use kiln_data::ChatTemplate;
use kiln_models::Pretrained;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The name the base model answers to besides `"base"` (e.g. the file stem).
    pub model_id: String,
    pub engine: EngineOptions,
    /// Accepted Bearer keys; empty: no authentication.
    pub api_keys: Vec<String>,
    pub rate_limits: RateLimits,
    /// Bytes of cached greedy responses at most (0: no cache).
    pub cache_bytes: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Access log file (one JSON line per request); `None`: standard error.
    pub access_log: Option<PathBuf>,
    /// Rules for `model: "auto"`.
    pub router: Option<PathBuf>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            model_id: "kiln".into(),
            engine: EngineOptions::default(),
            api_keys: Vec::new(),
            rate_limits: RateLimits::default(),
            cache_bytes: 16 << 20,
            max_body_bytes: 1 << 20,
            access_log: None,
            router: None,
        }
    }
}

/// A running server: the scheduler thread and the state the routes share.
#[derive(Debug)]
pub struct Server {
    state: Shared,
    scheduler: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Takes the model, starts the scheduler and prepares the routes.
    ///
    /// # Errors
    /// [`ServeError`] for an unreadable chat template, router file or access log.
    pub fn new(lm: Pretrained, options: ServeOptions) -> Result<Self> {
        let template = ChatTemplate::select(
            None,
            lm.extras.chat_template.as_deref(),
            lm.extras.chat_template_origin.as_deref(),
            lm.extras.bos_token.as_deref(),
            lm.extras.eos_token.as_deref(),
        )?;
        let eos = lm.eos_token_ids();
        let routes = options
            .router
            .as_deref()
            .map(Routes::from_file)
            .transpose()?;
        let log: Box<dyn Write + Send> = match &options.access_log {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| ServeError::Io {
                        what: p.display().to_string(),
                        source,
                    })?,
            ),
            None => Box::new(std::io::stderr()),
        };
        let metrics = Arc::new(Metrics::default());
        let (engine, scheduler) = Engine::start(lm.model, options.engine, metrics.clone());
        let state = Arc::new(AppState {
            engine,
            tokenizer: lm.tokenizer,
            template,
            eos,
            model_id: options.model_id,
            metrics,
            keys: Keys::new(options.api_keys, options.rate_limits),
            cache: ResponseCache::new(options.cache_bytes),
            routes,
            max_body: options.max_body_bytes,
            log: Mutex::new(log),
            started: unix_now(),
        });
        Ok(Self {
            state,
            scheduler: Some(scheduler),
        })
    }

    /// Loads a PEFT adapter directory as `name` (also possible at run time over HTTP).
    ///
    /// # Errors
    /// The API error the HTTP endpoint would answer (unknown directory, another base...).
    pub async fn load_adapter(
        &self,
        name: &str,
        dir: PathBuf,
    ) -> std::result::Result<(), ApiError> {
        check_adapter_name(name)?;
        self.state.engine.load_adapter(name, dir).await
    }

    /// The routes, ready for `axum::serve`.
    pub fn router(&self) -> axum::Router {
        let api = axum::Router::new()
            .route("/v1/models", get(models))
            .route(
                "/v1/chat/completions",
                post(crate::completions::chat_completions),
            )
            .route("/v1/completions", post(crate::completions::completions))
            .route("/v1/adapters", post(load_adapter))
            .route("/v1/adapters/{name}", delete(unload_adapter))
            .route_layer(middleware::from_fn_with_state(
                self.state.clone(),
                authenticate,
            ));
        axum::Router::new()
            .route("/", get(chat_page))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .merge(api)
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(self.state.clone(), observe))
            // Bodies are read by the handlers up to `max_body_bytes`, answering 413 in JSON.
            .layer(DefaultBodyLimit::disable())
            .with_state(self.state.clone())
    }

    /// Waits for the scheduler to finish its running rows once every route is gone.
    pub fn join(mut self) {
        let scheduler = self.scheduler.take();
        drop(self);
        if let Some(h) = scheduler {
            let _ = h.join();
        }
    }
}

/// Adapter names: 1 to 64 of `[A-Za-z0-9._-]`, not one of the names the base answers to.
pub(crate) fn check_adapter_name(name: &str) -> std::result::Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !matches!(name, "base" | "auto");
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_param(
            "name",
            format!("adapter name `{name}` must be 1-64 of A-Z a-z 0-9 . _ - and not base/auto"),
        ))
    }
}

/// Bearer keys and the per-key request limit, on `/v1/*`.
async fn authenticate(State(s): State<Shared>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match s.keys.admit(header) {
        Ok(id) => {
            req.extensions_mut().insert(KeyId(id));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Request metrics, and the access-log line of responses whose handler does not write one.
async fn observe(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    s.metrics.request(&endpoint, status, started.elapsed());
    if response.extensions().get::<Logged>().is_none() {
        s.access_log(json!({
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": started.elapsed().as_secs_f64() * 1e3,
        }));
    }
    response
}

async fn health(State(s): State<Shared>) -> Response {
    Json(json!({
        "status": "ok",
        "model": s.model_id,
        "queue_depth": s.engine.queue_depth(),
    }))
    .into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(s.engine.queue_depth()),
    )
        .into_response()
}

async fn not_found() -> Response {
    ApiError::not_found("no such route", "not_found").into_response()
}

async fn models(State(s): State<Shared>) -> Response {
    let entry = |id: &str, parent: Option<&str>| {
        json!({"id": id, "object": "model", "created": s.started, "owned_by": "kiln",
               "root": s.model_id, "parent": parent})
    };
    let mut data = vec![entry("base", None)];
    data.extend(s.engine.adapters().iter().map(|a| entry(a, Some("base"))));
    if s.routes.is_some() {
        data.push(entry("auto", Some("base")));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn load_adapter(State(s): State<Shared>, body: Body) -> Response {
    let result = async {
        let bytes = s.read_body(body).await?;
        let req: crate::api::LoadAdapterRequest = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
        check_adapter_name(&req.name)?;
        s.engine.load_adapter(&req.name, req.path).await?;
        Ok::<_, ApiError>(req.name)
    }
    .await;
    match result {
        Ok(name) => (
            StatusCode::CREATED,
            Json(json!({"id": name, "object": "model", "created": unix_now(),
                        "owned_by": "kiln", "parent": "base"})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn unload_adapter(State(s): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    match s.engine.unload_adapter(&name).await {
        Ok(()) => Json(json!({"id": name, "object": "model", "deleted": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn chat_page() -> Html<&'static str> {
    Html(include_str!("chat.html"))
}
