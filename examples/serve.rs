//! Serve a model over an OpenAI-compatible HTTP API, with LoRA adapters chosen per request.
//!
//! ```text
//! cargo run --release --features serve --example serve -- --model ~/.cache/kiln/SmolLM2-135M-Instruct.Q4_1.gguf --quantize stored \
//!     --adapter census=runs/census/adapter --port 8080 --api-key sk-local
//! curl -s localhost:8080/v1/chat/completions -H 'Authorization: Bearer sk-local' \
//!     -d '{"model": "census", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'
//! ```
use anyhow::{Context, Result};
use clap::Parser;
use kiln::models::fetch::resolve_model;
use kiln::models::{Pretrained, parse_device};
use kiln::serve::{EngineOptions, RateLimits, ServeOptions, Server, tokio};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "OpenAI-compatible server: /v1/chat/completions, /v1/completions, /v1/models")]
struct Args {
    /// Model directory or .gguf file. Default: $KILN_MODEL, else the cached SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<PathBuf>,
    /// PEFT adapter to serve as a model, `NAME=DIR`; repeat for several.
    #[arg(long = "adapter", value_parser = parse_named)]
    adapters: Vec<(String, PathBuf)>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Accepted Bearer key; repeat for several. None: no authentication.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Requests per minute per key.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute per key.
    #[arg(long)]
    tpm: Option<u64>,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests waiting for a slot at most; more get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Rules for `model: "auto"` (see kiln_serve::route).
    #[arg(long)]
    router: Option<PathBuf>,
    /// Response cache for greedy requests, in MiB (0: off).
    #[arg(long, default_value_t = 16)]
    cache_mib: usize,
    /// Keys and values of prompt prefixes kept for later prompts that start the same way
    /// (prefix caching: a shared system prompt is prefilled once), in MiB (0: off).
    #[arg(long, default_value_t = 64)]
    prefix_cache_mib: usize,
    /// Access log file (one JSON line per request). Default: standard error.
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// cpu, wgpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: String,
    /// How to hold the model's matrices: f32, stored (a GGUF's own blocks), nf4, fp4 or int8.
    #[arg(long, default_value = "f32")]
    quantize: kiln::models::Quantization,
    /// Precision of the products by the weights: f32 (the reference) or bf16 (as a model loaded
    /// with `torch_dtype=torch.bfloat16` multiplies, on the CPU's bf16 unit where it has one).
    #[arg(long, default_value = "f32")]
    precision: kiln::lora::Precision,
    /// With `--precision bf16` and quantized matrices (`--quantize stored|nf4|fp4|int8`): also
    /// hold every matrix in the bf16 kernel's layout (2 bytes per weight more), so a batch of
    /// decoding rows multiplies by it directly instead of dequantizing and packing each weight
    /// at every step (PyTorch serves bf16 weights the same way).
    #[arg(long)]
    bf16_weights: bool,
}

fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected NAME=DIR"))?;
    Ok((name.to_string(), PathBuf::from(dir)))
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

/// Resolves on Ctrl-C or SIGTERM: the server stops accepting, finishes running streams, exits.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    eprintln!("shutting down: finishing running requests");
}

async fn run(args: Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let path = resolve_model(args.model.as_deref(), true)?;
    let mut lm = Pretrained::load_as(&path, &device, args.quantize)?;
    lm.model.set_precision(args.precision);
    if args.bf16_weights {
        let bytes = lm.model.hold_bf16_weights()?;
        eprintln!(
            "holding the weights in bf16 too: {:.0} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    let model_id = path
        .file_stem()
        .map_or("kiln".into(), |s| s.to_string_lossy().into_owned());
    let server = Server::new(
        lm,
        ServeOptions {
            model_id,
            engine: EngineOptions {
                max_batch: args.max_batch,
                max_queue: args.max_queue,
                prefix_cache_bytes: args.prefix_cache_mib << 20,
            },
            api_keys: args.api_keys,
            rate_limits: RateLimits {
                requests_per_minute: args.rpm,
                tokens_per_minute: args.tpm,
            },
            cache_bytes: args.cache_mib << 20,
            access_log: args.access_log,
            router: args.router,
            ..Default::default()
        },
    )?;
    for (name, dir) in args.adapters {
        server
            .load_adapter(&name, dir.clone())
            .await
            .map_err(|e| anyhow::anyhow!("adapter {name} ({}): {e}", dir.display()))?;
        eprintln!("adapter `{name}` loaded from {}", dir.display());
    }
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    // The bound address (`--port 0` picks a free port; scripts read it from this line).
    let bound = listener.local_addr().map_or(addr, |a| a.to_string());
    eprintln!("serving {} on http://{bound}", path.display());
    kiln::serve::axum::serve(listener, server.router())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    server.join();
    Ok(())
}
