//! kiln-serve: an OpenAI-compatible HTTP server for kiln models.
//!
//! - `POST /v1/chat/completions`, `POST /v1/completions` (JSON or server-sent events),
//!   `GET /v1/models`; errors in OpenAI's JSON shape ([`ApiError`]).
//! - Adapters per request: `model` is `"base"`, the name of a loaded PEFT adapter, or `"auto"`
//!   (routed by [`route::Router`] rules); `POST /v1/adapters {name, path}` and
//!   `DELETE /v1/adapters/NAME` load and remove adapters while serving.
//! - Continuous batching ([`EngineOptions`]): one scheduler thread owns the model; requests join the
//!   running decode batch, each with its own rows of the KV cache and its own adapter.
//! - Operations: Bearer keys with per-key limits, a response cache for greedy requests,
//!   `GET /metrics` (Prometheus), one JSON access-log line per request, `GET /health`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kiln_serve::{ServeOptions, Server};
//! let device = burn::tensor::Device::default();
//! let lm = kiln_models::Pretrained::load(std::path::Path::new("model.gguf"), &device)?;
//! let server = Server::new(lm, ServeOptions::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, server.router()).await?;
//! # Ok(()) }
//! ```
mod api;
pub mod auth;
mod cache;
mod completions;
mod engine;
mod error;
mod metrics;
mod prefix;
pub mod route;
mod server;
mod state;
mod text;

pub use auth::RateLimits;
/// The HTTP stack, for `axum::serve` and tests.
pub use axum;
pub use engine::EngineOptions;
pub use error::{ApiError, Result, ServeError};
pub use server::{ServeOptions, Server};
pub use tokio;
