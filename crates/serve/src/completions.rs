//! `POST /v1/chat/completions` and `POST /v1/completions`: request checks, the response cache,
//! and the answer as one JSON body or as server-sent events (`data: {chunk}` lines, then
//! `data: [DONE]`), in the shapes the `openai` Python client reads.
use crate::api::{ChatRequest, CompletionRequest, Prompt, SamplingParams};
use crate::cache::{CachedChoice, key as cache_key};
use crate::engine::{Event, Job};
use crate::error::ApiError;
use crate::state::{KeyId, Logged, Shared, unix_now};
use crate::text::TextStream;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kiln_data::{Message, Role};
use kiln_lora::RowMix;
use kiln_models::{FinishReason, GenerationConfig, Sampling};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::time::Instant;
use tokio::sync::mpsc;

/// OpenAI's default `max_tokens` of `/v1/completions`.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;
const MAX_N: usize = 16;
/// Choices of one request at most (prompts × `n`).
const MAX_CHOICES: usize = 64;
/// Adapters of one weighted mix at most.
const MAX_MIX: usize = 8;
const MAX_STOPS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// A checked request, ready for the engine.
#[derive(Debug)]
struct Prepared {
    kind: Kind,
    /// One prompt, or several for `/v1/completions` (choice `p * n + j` is sample `j` of
    /// prompt `p`, as OpenAI orders them).
    prompts: Vec<Vec<u32>>,
    /// The adapters and weights every row runs (empty: the base model).
    mix: RowMix,
    /// The adapter or mix for logs and the cache key, `None` for the base model.
    adapter: Option<String>,
    /// The `model` echoed in responses.
    model: String,
    route: Option<String>,
    config: GenerationConfig,
    stops: Vec<String>,
    n: usize,
    stream: bool,
    include_usage: bool,
    started: Instant,
    key: KeyId,
}

/// One finished choice.
#[derive(Debug)]
struct Choice {
    text: String,
    finish: &'static str,
    tokens: usize,
}

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::StopString => "stop",
        FinishReason::Length => "length",
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

pub(crate) async fn chat_completions(
    State(s): State<Shared>,
    Extension(key): Extension<KeyId>,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = async {
        let req: ChatRequest = parse(&s.read_body(body).await?)?;
        let template = s.template.as_ref().ok_or_else(|| {
            ApiError::invalid("this model has no chat template; use /v1/completions")
        })?;
        if req.messages.is_empty() {
            return Err(ApiError::invalid_param("messages", "messages is empty"));
        }
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            let role = Role::from_str(&m.role).map_err(|_| {
                ApiError::invalid_param("messages", format!("unknown role `{}`", m.role))
            })?;
            let content = match &m.content {
                None => String::new(),
                Some(c) => c.text().ok_or_else(|| {
                    ApiError::invalid_param("messages", "only text content is supported")
                })?,
            };
            messages.push(Message::new(role, content));
        }
        let route_text = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let text = template
            .render(&messages, true)
            .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
        let prompt = s
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| ApiError::invalid(format!("tokenizing the prompt: {e}")))?
            .get_ids()
            .to_vec();
        prepare(
            &s,
            Kind::Chat,
            &req.model,
            vec![prompt],
            &route_text,
            req.params,
            started,
            key,
        )
    }
    .await;
    match result {
        Ok(p) => run(s, p).await,
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn completions(
    State(s): State<Shared>,
    Extension(key): Extension<KeyId>,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = async {
        let req: CompletionRequest = parse(&s.read_body(body).await?)?;
        let (prompts, text) = match req.prompt {
            Prompt::Text(t) => (vec![encode(&s, &t)?], t),
            Prompt::Texts(v) => {
                let ids = v.iter().map(|t| encode(&s, t)).collect::<Result<_, _>>()?;
                (ids, v.into_iter().next().unwrap_or_default())
            }
            Prompt::Tokens(ids) => (vec![ids], String::new()),
            Prompt::TokenLists(v) => (v, String::new()),
        };
        if prompts.is_empty() {
            return Err(ApiError::invalid_param(
                "prompt",
                "the prompt list is empty",
            ));
        }
        if prompts.len() > 1 && req.model == "auto" {
            return Err(ApiError::invalid_param(
                "model",
                "model \"auto\" routes one prompt; send several prompts one request each",
            ));
        }
        prepare(
            &s,
            Kind::Text,
            &req.model,
            prompts,
            &text,
            req.params,
            started,
            key,
        )
    }
    .await;
    match result {
        Ok(p) => run(s, p).await,
        Err(e) => e.into_response(),
    }
}

fn encode(s: &Shared, text: &str) -> Result<Vec<u32>, ApiError> {
    Ok(s.tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::invalid(format!("tokenizing the prompt: {e}")))?
        .get_ids()
        .to_vec())
}

/// Resolves the model and checks every field against the model's limits.
#[allow(clippy::too_many_arguments)]
fn prepare(
    s: &Shared,
    kind: Kind,
    model: &str,
    prompts: Vec<Vec<u32>>,
    route_text: &str,
    p: SamplingParams,
    started: Instant,
    key: KeyId,
) -> Result<Prepared, ApiError> {
    let (mix, adapter, route) = resolve_model(s, model, route_text)?;
    let context = s.engine.context_len;
    let too_long = |what: String| ApiError {
        code: Some("context_length_exceeded"),
        ..ApiError::invalid_param("messages", what)
    };
    for prompt in &prompts {
        if prompt.is_empty() {
            return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
        }
        if let Some(bad) = prompt
            .iter()
            .find(|&&id| id as usize >= s.engine.vocab_size)
        {
            return Err(ApiError::invalid_param(
                "prompt",
                format!("token id {bad} is outside the vocabulary"),
            ));
        }
        if prompt.len() >= context {
            return Err(too_long(format!(
                "the prompt has {} tokens; the model's context is {context}",
                prompt.len()
            )));
        }
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let room = context - longest;
    let max_tokens = match (p.max_tokens, kind) {
        (Some(0), _) => {
            return Err(ApiError::invalid_param(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        (Some(m), _) if m > room => {
            return Err(too_long(format!(
                "prompt ({longest} tokens) plus max_tokens ({m}) exceed the model's context of {context}"
            )));
        }
        (Some(m), _) => m,
        (None, Kind::Chat) => room,
        (None, Kind::Text) => COMPLETIONS_DEFAULT_MAX_TOKENS.min(room),
    };
    let temperature = p.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            "temperature must be in [0, 2]",
        ));
    }
    let top_p = p.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param("top_p", "top_p must be in (0, 1]"));
    }
    let n = p.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid_param(
            "n",
            format!("n must be in 1..={MAX_N}"),
        ));
    }
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::invalid_param(
            "n",
            format!(
                "{} prompts times n = {n} exceed {MAX_CHOICES} choices per request",
                prompts.len()
            ),
        ));
    }
    let stops = p.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid_param("stop", "at most 4 stop sequences"));
    }
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature,
            top_k: 0,
            top_p,
        }
    };
    let config = GenerationConfig {
        max_new_tokens: max_tokens,
        sampling,
        repetition_penalty: 1.0,
        seed: p.seed.unwrap_or_else(rand::random),
        eos_token_ids: s.eos.clone(),
        stop_strings: Vec::new(),
    };
    let model = match &route {
        Some(_) => adapter.clone().unwrap_or_else(|| "base".into()),
        None => model.to_string(),
    };
    // One series for every mix: the weights are the client's choice, the labels stay bounded.
    s.metrics.model(match &adapter {
        None => "base",
        Some(_) if mix.len() > 1 || mix.iter().any(|(_, w)| *w != 1.0) => "mix",
        Some(a) => a,
    });
    Ok(Prepared {
        kind,
        prompts,
        mix,
        adapter,
        model,
        route,
        config,
        stops,
        n,
        stream: p.stream,
        include_usage: p.stream_options.is_some_and(|o| o.include_usage),
        started,
        key,
    })
}

/// What `model` names: the adapters and weights rows run, the adapter or mix for logs (`None`
/// for the base) and, for `"auto"`, the route taken.
type Resolved = (RowMix, Option<String>, Option<String>);

/// `model` → `"base"` (or the model's id), an adapter, `"auto"` (routed), or a weighted mix
/// `"mix:NAME=W,NAME=W"` ([`parse_mix`]).
fn resolve_model(s: &Shared, model: &str, text: &str) -> Result<Resolved, ApiError> {
    let unknown = |m: &str| {
        ApiError::not_found(
            format!("the model `{m}` does not exist (see GET /v1/models)"),
            "model_not_found",
        )
    };
    let one = |name: &str| vec![(name.to_string(), 1.0)];
    if model == "base" || model == s.model_id {
        return Ok((Vec::new(), None, None));
    }
    if model == "auto" {
        let routes = s.routes.as_ref().ok_or_else(|| unknown(model))?;
        let target = routes
            .pick(text)
            .map_err(|e| ApiError::internal(format!("routing: {e}")))?
            .to_string();
        s.metrics.route(&target);
        if target == "base" {
            return Ok((Vec::new(), None, Some(target)));
        }
        if !s.engine.has_adapter(&target) {
            return Err(unknown(&target));
        }
        return Ok((one(&target), Some(target.clone()), Some(target)));
    }
    if let Some(spec) = model.strip_prefix(MIX_PREFIX) {
        let mix = parse_mix(spec)?;
        if let Some((missing, _)) = mix.iter().find(|(n, _)| !s.engine.has_adapter(n)) {
            return Err(unknown(missing));
        }
        return Ok((mix, Some(model.to_string()), None));
    }
    if s.engine.has_adapter(model) {
        return Ok((one(model), Some(model.to_string()), None));
    }
    Err(unknown(model))
}

/// The prefix of a weighted mix in `model`.
pub(crate) const MIX_PREFIX: &str = "mix:";

/// Parses the part after `mix:` of `"mix:a=0.7,b=0.3"`: adapter names with finite weights
/// (`NAME` alone is weight 1), at most [`MAX_MIX`], each name once.
pub(crate) fn parse_mix(spec: &str) -> Result<RowMix, ApiError> {
    let bad = |why: String| {
        ApiError::invalid_param(
            "model",
            format!("weighted mix `mix:{spec}`: {why} (expected mix:NAME=WEIGHT,NAME=WEIGHT)"),
        )
    };
    let mut mix: RowMix = Vec::new();
    for part in spec.split(',') {
        let (name, weight) = match part.split_once('=') {
            Some((n, w)) => {
                let w: f32 = w
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("`{w}` is not a number")))?;
                (n.trim(), w)
            }
            None => (part.trim(), 1.0),
        };
        if name.is_empty() {
            return Err(bad("an adapter name is empty".into()));
        }
        if !weight.is_finite() {
            return Err(bad(format!("the weight of `{name}` is not finite")));
        }
        if mix.iter().any(|(n, _)| n == name) {
            return Err(bad(format!("`{name}` appears twice")));
        }
        mix.push((name.to_string(), weight));
    }
    if mix.len() > MAX_MIX {
        return Err(bad(format!("more than {MAX_MIX} adapters")));
    }
    Ok(mix)
}

/// Queues one job per prompt, each with `n` samples sharing its prefill, as one message (the
/// prompts are prefilled together); the receivers come in choice order (`p * n + j`). Dropping
/// a receiver cancels its sample.
fn submit(s: &Shared, p: &Prepared) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, ApiError> {
    let mut receivers = Vec::with_capacity(p.prompts.len() * p.n);
    let mut jobs = Vec::with_capacity(p.prompts.len());
    for prompt in &p.prompts {
        let mut events = Vec::with_capacity(p.n);
        for _ in 0..p.n {
            let (tx, rx) = mpsc::unbounded_channel();
            events.push(tx);
            receivers.push(rx);
        }
        jobs.push(Job {
            prompt: prompt.clone(),
            config: p.config.clone(),
            adapters: p.mix.clone(),
            events,
        });
    }
    s.engine.submit(jobs)?;
    Ok(receivers)
}

/// The prompt ids as bytes, prompts separated by `u32::MAX` (never a token id).
fn prompt_bytes(p: &Prepared) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, prompt) in p.prompts.iter().enumerate() {
        if i > 0 {
            out.extend(u32::MAX.to_le_bytes());
        }
        out.extend(prompt.iter().flat_map(|i| i.to_le_bytes()));
    }
    out
}

fn prompt_tokens(p: &Prepared) -> usize {
    p.prompts.iter().map(Vec::len).sum()
}

fn cache_key_of(p: &Prepared) -> Option<[u8; 32]> {
    if p.stream || p.config.sampling != Sampling::Greedy {
        return None;
    }
    let prompt = prompt_bytes(p);
    let stops = p.stops.join("\u{0}");
    Some(cache_key(&[
        p.adapter.as_deref().unwrap_or("").as_bytes(),
        &prompt,
        &(p.config.max_new_tokens as u64).to_le_bytes(),
        stops.as_bytes(),
        &(p.n as u64).to_le_bytes(),
    ]))
}

async fn run(s: Shared, p: Prepared) -> Response {
    if p.stream {
        return match submit(&s, &p) {
            Ok(rx) => stream(s, p, rx).await,
            Err(e) => e.into_response(),
        };
    }
    let key = cache_key_of(&p).filter(|_| s.cache.enabled());
    if let Some(k) = &key
        && let Some(hit) = s.cache.get(k)
    {
        s.metrics.cache(true);
        let choices = hit
            .into_iter()
            .map(|c| Choice {
                text: c.text,
                finish: c.finish_reason,
                tokens: c.completion_tokens,
            })
            .collect();
        return respond(&s, &p, choices, true);
    }
    if key.is_some() {
        s.metrics.cache(false);
    }
    let result = async {
        let receivers = submit(&s, &p)?;
        let mut choices = Vec::with_capacity(receivers.len());
        let mut first = true;
        for rx in receivers {
            choices.push(collect(&s, &p, rx, &mut first).await?);
        }
        Ok::<_, ApiError>(choices)
    }
    .await;
    match result {
        Ok(choices) => {
            if let Some(k) = key {
                s.cache.put(
                    k,
                    choices
                        .iter()
                        .map(|c| CachedChoice {
                            text: c.text.clone(),
                            finish_reason: c.finish,
                            completion_tokens: c.tokens,
                        })
                        .collect(),
                );
            }
            respond(&s, &p, choices, false)
        }
        Err(e) => e.into_response(),
    }
}

/// Reads one job to its end.
async fn collect(
    s: &Shared,
    p: &Prepared,
    mut rx: mpsc::UnboundedReceiver<Event>,
    first: &mut bool,
) -> Result<Choice, ApiError> {
    let mut text = TextStream::new(p.stops.clone());
    let mut out = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Token(id)) => {
                if std::mem::take(first) {
                    s.metrics.first_token(p.started.elapsed());
                }
                out.push_str(&text.push(&s.tokenizer, id));
                if text.stopped() {
                    // Dropping `rx` frees the row at the next decode step.
                    return Ok(Choice {
                        text: out,
                        finish: "stop",
                        tokens: text.tokens(),
                    });
                }
            }
            Some(Event::Done(f)) => {
                out.push_str(&text.finish(&s.tokenizer));
                return Ok(Choice {
                    text: out,
                    finish: finish_name(f),
                    tokens: text.tokens(),
                });
            }
            Some(Event::Failed(e)) => return Err(e),
            None => return Err(ApiError::unavailable()),
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
           "total_tokens": prompt + completion})
}

fn new_id(kind: Kind) -> String {
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    };
    format!(
        "{prefix}-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Accounting and the access-log line of a finished completion.
fn finish_request(s: &Shared, p: &Prepared, completion: usize, cached: bool, status: u16) {
    let prompt = prompt_tokens(p);
    s.metrics.tokens(prompt, completion);
    if let Some(id) = &p.key.0 {
        s.keys.add_tokens(id, prompt + completion);
    }
    let digest = Sha256::digest(prompt_bytes(p));
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    s.access_log(json!({
        "method": "POST",
        "path": match p.kind { Kind::Chat => "/v1/chat/completions", Kind::Text => "/v1/completions" },
        "status": status,
        "key": p.key.0,
        "model": p.model,
        "adapter": p.adapter,
        "route": p.route,
        "prompt_sha256": hash,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "prompts": p.prompts.len(),
        "n": p.n,
        "stream": p.stream,
        "cached": cached,
        "latency_ms": p.started.elapsed().as_secs_f64() * 1e3,
    }));
}

fn respond(s: &Shared, p: &Prepared, choices: Vec<Choice>, cached: bool) -> Response {
    let completion: usize = choices.iter().map(|c| c.tokens).sum();
    finish_request(s, p, completion, cached, 200);
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| match p.kind {
            Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": c.text},
                                  "logprobs": null, "finish_reason": c.finish}),
            Kind::Text => json!({"index": i, "text": c.text, "logprobs": null,
                                  "finish_reason": c.finish}),
        })
        .collect();
    let object = match p.kind {
        Kind::Chat => "chat.completion",
        Kind::Text => "text_completion",
    };
    let mut body = json!({
        "id": new_id(p.kind), "object": object, "created": unix_now(), "model": p.model,
        "choices": choices, "usage": usage(prompt_tokens(p), completion),
    });
    if let Some(route) = &p.route {
        body["kiln"] = json!({"route": route});
    }
    let mut response = Json(body).into_response();
    response.extensions_mut().insert(Logged);
    response
}

/// One streamed chunk for choice `index`: a text delta, or the end with its finish reason.
fn chunk(p: &Prepared, id: &str, index: usize, text: Option<&str>, finish: Option<&str>) -> Value {
    let choice = match p.kind {
        Kind::Chat => {
            let delta = match text {
                Some(t) => json!({"content": t}),
                None => json!({}),
            };
            json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        Kind::Text => json!({"index": index, "text": text.unwrap_or(""), "logprobs": null,
                              "finish_reason": finish}),
    };
    let object = match p.kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Text => "text_completion",
    };
    let mut c = json!({"id": id, "object": object, "created": unix_now(), "model": p.model,
                       "choices": [choice]});
    if let Some(route) = &p.route {
        c["kiln"] = json!({"route": route});
    }
    c
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Forwards the events of every choice into one channel, tagged with the choice index; stops
/// (dropping the job's receiver, which cancels the job) once the stream's reader is gone.
fn merge(
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
) -> mpsc::UnboundedReceiver<(usize, Event)> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, mut job) in receivers.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    e = job.recv() => match e {
                        Some(e) => if tx.send((i, e)).is_err() { return },
                        None => return,
                    },
                }
            }
        });
    }
    rx
}

/// The state of a streamed response.
struct Streaming {
    s: Shared,
    p: Prepared,
    id: String,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    texts: Vec<TextStream>,
    open: usize,
    first: bool,
    /// Frames ready to send.
    pending: std::collections::VecDeque<Bytes>,
    ended: bool,
}

impl Streaming {
    /// Turns the next event into frames; `false` when the stream is over.
    fn advance(&mut self, event: Option<(usize, Event)>) -> bool {
        let Some((i, e)) = event else {
            return self.end(None);
        };
        match e {
            Event::Token(id) => {
                if std::mem::take(&mut self.first) {
                    self.s.metrics.first_token(self.p.started.elapsed());
                }
                let Some(text) = self.texts.get_mut(i) else {
                    return true;
                };
                if text.stopped() {
                    return true;
                }
                let delta = text.push(&self.s.tokenizer, id);
                if !delta.is_empty() {
                    self.pending
                        .push_back(sse(&chunk(&self.p, &self.id, i, Some(&delta), None)));
                }
                if text.stopped() {
                    self.pending
                        .push_back(sse(&chunk(&self.p, &self.id, i, None, Some("stop"))));
                    return self.close_choice();
                }
                true
            }
            Event::Done(f) => {
                if self.texts.get(i).is_some_and(TextStream::stopped) {
                    return true;
                }
                let rest = self.texts[i].finish(&self.s.tokenizer);
                if !rest.is_empty() {
                    self.pending
                        .push_back(sse(&chunk(&self.p, &self.id, i, Some(&rest), None)));
                }
                self.pending.push_back(sse(&chunk(
                    &self.p,
                    &self.id,
                    i,
                    None,
                    Some(finish_name(f)),
                )));
                self.close_choice()
            }
            Event::Failed(e) => self.end(Some(e)),
        }
    }

    fn close_choice(&mut self) -> bool {
        self.open -= 1;
        if self.open == 0 {
            return self.end(None);
        }
        true
    }

    /// The usage chunk (if asked), an error object if one ended the stream, and `[DONE]`.
    fn end(&mut self, error: Option<ApiError>) -> bool {
        if self.ended {
            return false;
        }
        self.ended = true;
        let completion: usize = self.texts.iter().map(TextStream::tokens).sum();
        if let Some(e) = &error {
            self.pending.push_back(sse(&e.body()));
        } else if self.open > 0 {
            self.pending.push_back(sse(&ApiError::unavailable().body()));
        }
        if self.p.include_usage {
            let mut c = chunk(&self.p, &self.id, 0, None, None);
            c["choices"] = json!([]);
            c["usage"] = usage(prompt_tokens(&self.p), completion);
            self.pending.push_back(sse(&c));
        }
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        let status = error.map_or(200, |e| e.status.as_u16());
        finish_request(&self.s, &self.p, completion, false, status);
        false
    }
}

impl Drop for Streaming {
    /// A client that went away before the end: logged with nginx's 499 (client closed).
    fn drop(&mut self) {
        if !self.ended {
            self.ended = true;
            let completion: usize = self.texts.iter().map(TextStream::tokens).sum();
            finish_request(&self.s, &self.p, completion, false, 499);
        }
    }
}

/// Streams the response. The first event is awaited before the headers go out, so a request
/// that fails at once (an adapter removed meanwhile) still gets its status code.
async fn stream(
    s: Shared,
    p: Prepared,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
) -> Response {
    let mut events = merge(receivers);
    let first = events.recv().await;
    if let Some((_, Event::Failed(e))) = &first {
        return e.clone().into_response();
    }
    let n = p.prompts.len() * p.n;
    let id = new_id(p.kind);
    let mut st = Streaming {
        texts: (0..n).map(|_| TextStream::new(p.stops.clone())).collect(),
        s,
        p,
        id,
        events,
        open: n,
        first: true,
        pending: Default::default(),
        ended: false,
    };
    if st.p.kind == Kind::Chat {
        for i in 0..n {
            let mut c = chunk(&st.p, &st.id, i, Some(""), None);
            c["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            st.pending.push_back(sse(&c));
        }
    }
    let more = st.advance(first);
    let body = futures_util::stream::unfold((st, more), |(mut st, mut more)| async move {
        loop {
            if let Some(frame) = st.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(frame), (st, more)));
            }
            if !more {
                return None;
            }
            let e = st.events.recv().await;
            more = st.advance(e);
        }
    });
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response();
    response.extensions_mut().insert(Logged);
    response
}
