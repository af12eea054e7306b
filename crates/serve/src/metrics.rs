//! Counters and histograms rendered in Prometheus' text exposition format at `GET /metrics`.
//! Hand-written (a dozen series) instead of a metrics crate: nothing else needs one.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// A cumulative histogram of seconds with fixed bucket bounds.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in microseconds.
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if s <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

const LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Metrics {
    /// `(endpoint, status) -> count`.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// `model or adapter -> completion requests`.
    models: Mutex<BTreeMap<String, u64>>,
    /// `route -> requests routed by model "auto"`.
    routes: Mutex<BTreeMap<String, u64>>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    ttft: Histogram,
    token_latency: Histogram,
    request_latency: Histogram,
    batch_hist: Histogram,
    batch_size: AtomicUsize,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    prefills: AtomicU64,
    prefill_forwards: AtomicU64,
    prefill_tokens: AtomicU64,
    prefix_queries: AtomicU64,
    prefix_hits: AtomicU64,
    prefix_bytes: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            models: Mutex::default(),
            routes: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY),
            token_latency: Histogram::new(LATENCY),
            request_latency: Histogram::new(LATENCY),
            batch_hist: Histogram::new(BATCH),
            batch_size: AtomicUsize::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            prefills: AtomicU64::new(0),
            prefill_forwards: AtomicU64::new(0),
            prefill_tokens: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            prefix_bytes: AtomicUsize::new(0),
        }
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key.to_string()).or_default() += 1;
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16, latency: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_default() += 1;
        }
        self.request_latency.observe(latency);
    }

    pub fn model(&self, model: &str) {
        bump(&self.models, model);
    }

    pub fn route(&self, route: &str) {
        bump(&self.routes, route);
    }

    pub fn tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
    }

    pub fn first_token(&self, ttft: Duration) {
        self.ttft.observe(ttft);
    }

    /// One decode step of `rows` rows that took `d`: the per-token latency of each row.
    pub fn observe_step(&self, d: Duration, rows: usize) {
        self.token_latency.observe(d);
        self.batch_hist.observe(Duration::from_secs(rows as u64));
    }

    /// One prefill forward of `prompts` prompts holding `tokens` tokens (each prompt's
    /// prefill is shared by all its samples).
    pub fn prefill(&self, prompts: usize, tokens: usize) {
        self.prefills.fetch_add(prompts as u64, Ordering::Relaxed);
        self.prefill_forwards.fetch_add(1, Ordering::Relaxed);
        self.prefill_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// A prompt of `prompt` tokens looked up in the prefix cache, `hit` of them found.
    pub fn prefix_lookup(&self, prompt: usize, hit: usize) {
        self.prefix_queries
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.prefix_hits.fetch_add(hit as u64, Ordering::Relaxed);
    }

    pub fn set_prefix_cache_bytes(&self, bytes: usize) {
        self.prefix_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn set_batch_size(&self, rows: usize) {
        self.batch_size.store(rows, Ordering::Relaxed);
    }

    pub fn cache(&self, hit: bool) {
        let c = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text; `queue_depth` is read from the engine at scrape time.
    pub fn render(&self, queue_depth: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP kiln_requests_total HTTP requests by endpoint and status.\n# TYPE kiln_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((e, s), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "kiln_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}"
                );
            }
        }
        let labelled = |out: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        map: &Mutex<BTreeMap<String, u64>>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Ok(m) = map.lock() {
                for (k, n) in m.iter() {
                    let k = k.replace('\\', "\\\\").replace('"', "\\\"");
                    let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {n}");
                }
            }
        };
        labelled(
            &mut out,
            "kiln_model_requests_total",
            "Completion requests by model (base or adapter).",
            "model",
            &self.models,
        );
        labelled(
            &mut out,
            "kiln_route_requests_total",
            "Requests for model \"auto\" by chosen route.",
            "route",
            &self.routes,
        );
        let counters = [
            (
                "kiln_prompt_tokens_total",
                "Prompt tokens processed.",
                &self.prompt_tokens,
            ),
            (
                "kiln_completion_tokens_total",
                "Tokens generated.",
                &self.completion_tokens,
            ),
            (
                "kiln_cache_hits_total",
                "Greedy requests answered from the response cache.",
                &self.cache_hits,
            ),
            (
                "kiln_cache_misses_total",
                "Cacheable requests not in the response cache.",
                &self.cache_misses,
            ),
            (
                "kiln_prefills_total",
                "Prompt prefills run (one per prompt, shared by its n samples).",
                &self.prefills,
            ),
            (
                "kiln_prefill_forwards_total",
                "Prefill forward passes (prompts queued together share one).",
                &self.prefill_forwards,
            ),
            (
                "kiln_prefill_tokens_total",
                "Prompt tokens run through the model in prefills (without padding).",
                &self.prefill_tokens,
            ),
            (
                "kiln_prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache (vLLM's prefix_cache_queries).",
                &self.prefix_queries,
            ),
            (
                "kiln_prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache and not run again.",
                &self.prefix_hits,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP kiln_queue_depth Requests waiting for a batch slot.\n# TYPE kiln_queue_depth gauge\nkiln_queue_depth {queue_depth}"
        );
        let _ = writeln!(
            out,
            "# HELP kiln_prefix_cache_bytes Keys and values kept for prompt prefixes.\n# TYPE kiln_prefix_cache_bytes gauge\nkiln_prefix_cache_bytes {}",
            self.prefix_bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kiln_batch_size Sequences in the running decode batch.\n# TYPE kiln_batch_size gauge\nkiln_batch_size {}",
            self.batch_size.load(Ordering::Relaxed)
        );
        self.ttft.render(
            &mut out,
            "kiln_time_to_first_token_seconds",
            "Time from request to first token.",
        );
        self.token_latency.render(
            &mut out,
            "kiln_token_latency_seconds",
            "Duration of one decode step (the latency of each token after the first).",
        );
        self.request_latency.render(
            &mut out,
            "kiln_request_duration_seconds",
            "Duration of HTTP requests.",
        );
        // Batch sizes are counted in a histogram whose "seconds" are rows.
        self.batch_hist
            .render(&mut out, "kiln_decode_batch_rows", "Rows per decode step.");
        out
    }
}
