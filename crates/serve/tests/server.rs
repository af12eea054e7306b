//! The server driven in-process (tower's `oneshot`) on the tiny Llama of
//! `fixtures/tiny/llama` (transformers' greedy tokens in `generate.json`, a PEFT LoRA adapter in
//! `peft/lora`) with a word-level tokenizer written here: token `i` is the word `t{i}`, so
//! prompts and outputs are exact id sequences.
#![allow(clippy::unwrap_used)]
use http_body_util::BodyExt;
use kiln_lora::{LoraModel, RowMix};
use kiln_models::{GenerationConfig, Pretrained, Sampling, default_device, generate};
use kiln_serve::axum::Router;
use kiln_serve::axum::body::Body;
use kiln_serve::axum::http::{Request, StatusCode};
use kiln_serve::{EngineOptions, RateLimits, ServeOptions, Server};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tower::ServiceExt;

const VOCAB: usize = 512;
/// The copied config's context, raised from 64 so long generations can be interrupted.
const CONTEXT: usize = 4096;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn word(i: usize) -> String {
    match i {
        0 => "<pad>".into(),
        1 => "<s>".into(),
        2 => "</s>".into(),
        3 => "<unk>".into(),
        _ => format!("t{i}"),
    }
}

/// The tiny llama with a tokenizer and a chat template, in a temporary directory.
fn model_dir() -> tempfile::TempDir {
    model_dir_of("tiny/llama")
}

/// A tiny fixture model (`fixtures/<name>`) with a word-level tokenizer over its vocabulary
/// (at most [`VOCAB`] words) and a chat template, in a temporary directory.
fn model_dir_of(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join(name);
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = json!(CONTEXT);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    if src.join("generation_config.json").is_file() {
        std::fs::copy(
            src.join("generation_config.json"),
            dir.path().join("generation_config.json"),
        )
        .unwrap();
    }
    let words = VOCAB.min(config["vocab_size"].as_u64().unwrap() as usize);
    let vocab: serde_json::Map<String, Value> = (0..words).map(|i| (word(i), json!(i))).collect();
    let added: Vec<Value> = (0..4)
        .map(|i| {
            json!({"id": i, "content": word(i), "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let template = "{% for m in messages %}t10 {{ m.content }} t11 {% endfor %}\
                    {% if add_generation_prompt %}t12{% endif %}";
    let tc = json!({"eos_token": "</s>", "bos_token": "<s>", "chat_template": template});
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    dir
}

fn text_of(ids: &[u32]) -> String {
    ids.iter()
        .filter(|&&i| i > 3)
        .map(|&i| word(i as usize))
        .collect::<Vec<_>>()
        .join(" ")
}

fn lora_dir() -> PathBuf {
    fixtures().join("tiny/llama/peft/lora")
}

struct Harness {
    _dir: tempfile::TempDir,
    app: Router,
    server: Server,
}

fn start(options: ServeOptions) -> Harness {
    start_on("tiny/llama", options)
}

/// Batches of up to 8 rows, a queue of 16.
fn batches_of_8() -> ServeOptions {
    ServeOptions {
        engine: EngineOptions {
            max_batch: 8,
            max_queue: 16,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A server on fixture `name` running batches of up to 8 rows, with the fixture's PEFT LoRA
/// adapter loaded as `lora` (its directory returned).
async fn start_with_lora(name: &str) -> (Harness, PathBuf) {
    let adapter = fixtures().join(name).join("peft/lora");
    let h = start_on(name, batches_of_8());
    let (status, _) = h
        .post("/v1/adapters", json!({"name": "lora", "path": adapter}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    (h, adapter)
}

fn start_on(name: &str, options: ServeOptions) -> Harness {
    let dir = model_dir_of(name);
    let lm = Pretrained::load(dir.path(), &default_device()).unwrap();
    let server = Server::new(
        lm,
        ServeOptions {
            access_log: Some(dir.path().join("access.log")),
            ..options
        },
    )
    .unwrap();
    Harness {
        app: server.router(),
        _dir: dir,
        server,
    }
}

impl Harness {
    fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self._dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Body,
        auth: Option<&str>,
    ) -> (StatusCode, Vec<u8>) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(k) = auth {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    /// Sends every completion request at once (each on its own task, so they share decode
    /// steps) and returns the responses in the order of `bodies`.
    async fn completions_at_once(&self, bodies: Vec<Value>) -> Vec<Value> {
        let tasks: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                let app = self.app.clone();
                tokio::spawn(async move {
                    let req = Request::post("/v1/completions")
                        .body(Body::from(body.to_string()))
                        .unwrap();
                    let resp = app.oneshot(req).await.unwrap();
                    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                    serde_json::from_slice::<Value>(&bytes).unwrap()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let (status, bytes) = self
            .send("POST", uri, Body::from(body.to_string()), None)
            .await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, uri: &str) -> (StatusCode, String) {
        let (status, bytes) = self.send("GET", uri, Body::empty(), None).await;
        (status, String::from_utf8(bytes).unwrap())
    }

    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .parse()
            .unwrap()
    }
}

/// Offline reference: kiln's `generate` on the same model, with an adapter or not.
fn offline(prompt: &[u32], max_new: usize, adapter: Option<&Path>) -> Vec<u32> {
    offline_on("tiny/llama", prompt, max_new, adapter)
}

fn offline_on(name: &str, prompt: &[u32], max_new: usize, adapter: Option<&Path>) -> Vec<u32> {
    offline_sampled(name, prompt, max_new, adapter, None)
}

/// [`offline_on`], sampled at temperature 1 with `seed` when given (as the server samples a
/// request with that seed).
fn offline_sampled(
    name: &str,
    prompt: &[u32],
    max_new: usize,
    adapter: Option<&Path>,
    seed: Option<u64>,
) -> Vec<u32> {
    let dir = model_dir_of(name);
    let lm = Pretrained::load(dir.path(), &default_device()).unwrap();
    let eos = lm.eos_token_ids();
    let mut lora = LoraModel::new(lm.model);
    if let Some(a) = adapter {
        lora.load_adapter(a, "a").unwrap();
    }
    let mut config = GenerationConfig {
        max_new_tokens: max_new,
        eos_token_ids: eos,
        ..Default::default()
    };
    if let Some(seed) = seed {
        config.seed = seed;
        config.sampling = Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
    }
    generate(
        &lora.model,
        &[prompt.to_vec()],
        &config,
        None,
        &mut |_, _| {},
    )
    .unwrap()[0]
        .tokens
        .clone()
}

fn reference() -> (Vec<u32>, Vec<u32>) {
    let g: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny/llama/generate.json")).unwrap(),
    )
    .unwrap();
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    (ids(&g["prompt_ids"][0]), ids(&g["greedy_new_ids"][0]))
}

/// Parses a server-sent-event body into its JSON chunks; asserts the framing and `[DONE]`.
fn sse_chunks(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let frames: Vec<&str> = text.trim_end().split("\n\n").collect();
    assert_eq!(*frames.last().unwrap(), "data: [DONE]");
    frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_completion_equals_transformers_and_generate() {
    let h = start(ServeOptions::default());
    let (prompt, want) = reference();
    assert_eq!(
        offline(&prompt, want.len(), None),
        want,
        "kiln generate vs transformers"
    );
    let (status, body) = h
        .post(
            "/v1/completions",
            json!({"model": "base", "prompt": prompt, "max_tokens": 10, "temperature": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], text_of(&want));
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15})
    );
    // The same prompt as text, streamed: the chunks add up to the same text.
    let text_prompt = text_of(&prompt);
    let req = json!({"model": "base", "prompt": text_prompt, "max_tokens": 10, "temperature": 0,
                     "stream": true, "stream_options": {"include_usage": true}});
    let (status, bytes) = h
        .send("POST", "/v1/completions", Body::from(req.to_string()), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&bytes);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == id && c["object"] == "text_completion")
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text_of(&want));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streamed_equals_unstreamed_and_generate() {
    let h = start(ServeOptions::default());
    let messages = json!([{"role": "system", "content": "t100 t101"}, {"role": "user", "content": "t300 t42"}]);
    let prompt = [10, 100, 101, 11, 10, 300, 42, 11, 12];
    let want = offline(&prompt, 12, None);
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            json!({"model": "base", "messages": messages, "max_tokens": 12, "temperature": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let message = &body["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], text_of(&want));
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len());
    let req = json!({"model": "base", "messages": messages, "max_tokens": 12, "temperature": 0, "stream": true});
    let (_, bytes) = h
        .send(
            "POST",
            "/v1/chat/completions",
            Body::from(req.to_string()),
            None,
        )
        .await;
    let chunks = sse_chunks(&bytes);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, message["content"].as_str().unwrap());
    let last = &chunks.last().unwrap()["choices"][0];
    assert_eq!(last["delta"], json!({}));
    assert_eq!(last["finish_reason"], body["choices"][0]["finish_reason"]);
    // A stop string ends the text before it, as OpenAI's API does.
    let words: Vec<&str> = message["content"].as_str().unwrap().split(' ').collect();
    if words.len() > 3 {
        let stop = format!(" {}", words[2]);
        let (_, stopped) = h
            .post("/v1/chat/completions", json!({"model": "base", "messages": messages, "max_tokens": 12, "temperature": 0, "stop": stop}))
            .await;
        let text = stopped["choices"][0]["message"]["content"]
            .as_str()
            .unwrap();
        let full = message["content"].as_str().unwrap();
        assert_eq!(text, &full[..full.find(&stop).unwrap()]);
        assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_hot_load_mix_in_one_batch_and_unload() {
    let h = start(batches_of_8());
    let (_, models) = h.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    let (status, _) = h
        .post("/v1/adapters", json!({"name": "lora", "path": lora_dir()}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, models) = h.get("/v1/models").await;
    assert!(models.contains("\"lora\""), "{models}");
    let (status, err) = h
        .post("/v1/adapters", json!({"name": "lora", "path": lora_dir()}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");

    let prompts: Vec<Vec<u32>> = vec![
        vec![375, 213, 209, 240, 141],
        vec![20, 30, 40],
        vec![7, 8, 9, 10, 11, 12, 13],
    ];
    let max = 24;
    // Every prompt with and without the adapter, all at once: rows of both kinds share steps.
    let bodies = prompts
        .iter()
        .flat_map(|p| {
            ["base", "lora"].map(
                |model| json!({"model": model, "prompt": p, "max_tokens": max, "temperature": 0}),
            )
        })
        .collect();
    let got = h.completions_at_once(bodies).await;
    for (i, p) in prompts.iter().enumerate() {
        let base = offline(p, max, None);
        let lora = offline(p, max, Some(&lora_dir()));
        assert_ne!(base, lora, "the adapter changes the output of prompt {i}");
        assert_eq!(
            got[2 * i]["choices"][0]["text"],
            text_of(&base),
            "base, prompt {i}"
        );
        assert_eq!(
            got[2 * i + 1]["choices"][0]["text"],
            text_of(&lora),
            "lora, prompt {i}"
        );
    }
    // Some decode steps ran several rows (the batch really mixed them).
    let steps = h.metric("kiln_decode_batch_rows_count").await;
    let single = h.metric("kiln_decode_batch_rows_bucket{le=\"1\"}").await;
    assert!(single < steps, "{single} of {steps} steps had one row");

    let (status, _) = h
        .send("DELETE", "/v1/adapters/lora", Body::empty(), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = h
        .post(
            "/v1/completions",
            json!({"model": "lora", "prompt": [5], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "model_not_found");
    let (status, _) = h
        .send("DELETE", "/v1/adapters/lora", Body::empty(), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An adapter trained for another base is refused with a 400 and the server keeps serving.
    let other = fixtures().join("tiny/gemma3/peft/lora");
    let (status, err) = h
        .post("/v1/adapters", json!({"name": "g", "path": other}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["param"], "path");
    let (status, _) = h
        .post(
            "/v1/completions",
            json!({"model": "base", "prompt": [5], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Gemma 3's sliding-window layers (window 4 in two of its three layers, soft-capping, q/k
/// norms) in a running batch: prompts longer than the window and of different lengths, so rows
/// sit left-padded in the shared KV cache and join while others decode, with and without a PEFT
/// adapter. Seeded sampling (the tiny random model's greedy output repeats one token, sampling
/// shows any change of the logits): every row sampled in the mixed batch equals the same
/// request sent alone, and the alone run equals `generate`'s greedy tokens at temperature 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma_sliding_window_rows_in_a_mixed_batch_equal_each_alone() {
    let name = "tiny/gemma3";
    let (h, adapter) = start_with_lora(name).await;
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51],
        vec![1, 90, 17, 18, 19, 20],
        vec![1, 200, 201, 202, 203, 204, 205, 206, 207],
    ];
    let max = 20;
    let body = |p: &Vec<u32>, model: &str, temperature: f32| {
        json!({"model": model, "prompt": p, "max_tokens": max, "temperature": temperature,
               "seed": 11})
    };
    let text = |r: &Value| r["choices"][0]["text"].as_str().unwrap().to_string();
    let bodies = prompts
        .iter()
        .flat_map(|p| ["base", "lora"].map(|model| body(p, model, 1.0)))
        .collect();
    let mixed: Vec<String> = h
        .completions_at_once(bodies)
        .await
        .iter()
        .map(text)
        .collect();
    let steps = h.metric("kiln_decode_batch_rows_count").await;
    let single = h.metric("kiln_decode_batch_rows_bucket{le=\"1\"}").await;
    assert!(single < steps, "{single} of {steps} steps had one row");
    for (i, p) in prompts.iter().enumerate() {
        assert!(p.len() > 4, "prompt {i} is longer than the window");
        for (j, model) in ["base", "lora"].into_iter().enumerate() {
            let (status, alone) = h.post("/v1/completions", body(p, model, 1.0)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(mixed[2 * i + j], text(&alone), "{model}, prompt {i}");
            let (_, greedy) = h.post("/v1/completions", body(p, model, 0.0)).await;
            let a = (model == "lora").then_some(adapter.as_path());
            assert_eq!(text(&greedy), text_of(&offline_on(name, p, max, a)));
        }
        assert_ne!(
            mixed[2 * i],
            mixed[2 * i + 1],
            "the adapter changes prompt {i}"
        );
    }
}

/// Rows leaving a running batch at different steps (each request its own `max_tokens`): the
/// last running rows move into the holes finished ones leave, their cache rows and adapters
/// with them. Seeded sampling over a base/adapter mix: every row equals the same request sent
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_finishing_at_different_steps_equal_each_alone() {
    let name = "tiny/llama";
    let (h, _) = start_with_lora(name).await;
    let body = |i: usize, max: usize| {
        let prompt: Vec<u32> = (0..3 + i as u32 % 4)
            .map(|t| 1 + 7 * i as u32 + t)
            .collect();
        let model = if i.is_multiple_of(2) { "base" } else { "lora" };
        json!({"model": model, "prompt": prompt, "max_tokens": max, "temperature": 1.0,
               "seed": 5 + i})
    };
    let maxes = [2, 12, 4, 12, 1, 7, 12, 3];
    let bodies = maxes.iter().enumerate().map(|(i, &m)| body(i, m)).collect();
    let mixed = h.completions_at_once(bodies).await;
    let text = |r: &Value| r["choices"][0]["text"].as_str().unwrap().to_string();
    for (i, &m) in maxes.iter().enumerate() {
        assert_eq!(mixed[i]["usage"]["completion_tokens"], m, "request {i}");
        let (status, alone) = h.post("/v1/completions", body(i, m)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text(&mixed[i]), text(&alone), "request {i}");
    }
}

/// Phi-3 with LongRoPE (original context 8) in a running batch: rows cross the original
/// context at different steps (one prompt is already past it), each row choosing its rotary
/// frequencies by its own positions and a crossing row recomputing its cache whole, as
/// `generate` does for a sequence alone. Seeded sampling, streamed concurrently: every row
/// equals `generate` run alone with that seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longrope_rows_cross_the_original_context_as_each_alone() {
    let name = "tiny/phi3_longrope";
    let h = start_on(name, batches_of_8());
    let prompts: Vec<Vec<u32>> = vec![
        vec![5, 6, 7],
        vec![20, 21, 22, 23, 24, 25],
        vec![40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50],
        vec![60, 61, 62, 63, 64, 65, 66, 67],
    ];
    let max = 14;
    let bodies = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({"model": "base", "prompt": p, "max_tokens": max, "temperature": 1.0,
                   "seed": 100 + i})
        })
        .collect();
    let got = h.completions_at_once(bodies).await;
    let steps = h.metric("kiln_decode_batch_rows_count").await;
    let single = h.metric("kiln_decode_batch_rows_bucket{le=\"1\"}").await;
    assert!(single < steps, "{single} of {steps} steps had one row");
    for (i, p) in prompts.iter().enumerate() {
        let want = offline_sampled(name, p, max, None, Some(100 + i as u64));
        assert!(
            p.len() + want.len() > 9,
            "prompt {i} crosses the original context"
        );
        assert_eq!(
            got[i]["choices"][0]["text"].as_str().unwrap(),
            text_of(&want),
            "prompt {i}"
        );
    }
}

/// `model: "auto"` routed by a classification head where no rule matches: a 2-label head on the
/// tiny Llama (a new `score` head and LoRA, saved as PEFT's SEQ_CLS adapter with `score` in
/// `modules_to_save`, as `reward_model`'s recipe writes it) sends each chat to the adapter of
/// its label; the label is the head's argmax on the last user message, computed here from the
/// adapter loaded on its own. A keyword rule still wins over the classifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classification_head_routes_auto_requests() {
    use kiln_lora::{LoraConfig, TargetModules};
    use kiln_models::DecoderInput;
    use kiln_models::classifier::{ClassifierConfig, SequenceClassifier};
    let dir = model_dir();
    let lm = Pretrained::load(dir.path(), &default_device()).unwrap();
    lm.model.device().seed(11);
    let cls = SequenceClassifier::from_causal_lm(lm.model, ClassifierConfig::new(2));
    let mut config = LoraConfig::new(
        4,
        8.0,
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    );
    config.modules_to_save = Some(vec!["score".into()]);
    config.task_type = Some("SEQ_CLS".into());
    let head = LoraModel::with_adapter(cls, "default", config).unwrap();
    let adapter = tempfile::tempdir().unwrap();
    head.save_adapter(adapter.path(), "default").unwrap();
    // Each candidate text's label, from the saved adapter on a fresh copy of the base.
    let lm = Pretrained::load(dir.path(), &default_device()).unwrap();
    let mut fresh = LoraModel::new(SequenceClassifier::from_causal_lm(
        lm.model,
        ClassifierConfig::new(2),
    ));
    fresh.load_adapter(adapter.path(), "default").unwrap();
    let label = |text: &str| {
        let ids: Vec<u32> = text.split(' ').map(|w| w[1..].parse().unwrap()).collect();
        let s = fresh.model.scores(&DecoderInput::single(&ids)).unwrap();
        usize::from(s[1] > s[0])
    };
    let texts: Vec<String> = (0..40)
        .map(|i| format!("t{} t{}", 20 + 7 * i, 30 + 3 * i))
        .collect();
    let first = |l: usize| texts.iter().find(|t| label(t) == l).cloned().unwrap();
    let (to_lora, to_base) = (first(0), first(1));

    let router = tempfile::NamedTempFile::new().unwrap();
    let toml = format!(
        "[[rule]]\nadapter = \"base\"\nkeywords = [\"t99\"]\n[classifier]\nbase = {:?}\n\
         adapter = {:?}\nlabels = [\"lora\", \"base\"]\n",
        dir.path(),
        adapter.path()
    );
    std::fs::write(router.path(), toml).unwrap();
    let h = start(ServeOptions {
        router: Some(router.path().to_path_buf()),
        ..Default::default()
    });
    let (status, _) = h
        .post("/v1/adapters", json!({"name": "lora", "path": lora_dir()}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let auto = |content: &str| {
        json!({"model": "auto", "messages": [{"role": "user", "content": content}],
               "max_tokens": 4, "temperature": 0})
    };
    let (_, r) = h.post("/v1/chat/completions", auto(&to_lora)).await;
    assert_eq!(r["kiln"]["route"], "lora", "{to_lora}: {r}");
    assert_eq!(r["model"], "lora");
    let (_, r) = h.post("/v1/chat/completions", auto(&to_base)).await;
    assert_eq!(r["kiln"]["route"], "base", "{to_base}: {r}");
    // The rule is tried first.
    let (_, r) = h
        .post("/v1/chat/completions", auto(&format!("{to_lora} t99")))
        .await;
    assert_eq!(r["kiln"]["route"], "base");
    // A classifier file with one label, or a missing adapter, is refused naming the file.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        format!(
            "[classifier]\nbase = {:?}\nadapter = {:?}\nlabels = [\"lora\"]\n",
            dir.path(),
            adapter.path()
        ),
    )
    .unwrap();
    let err = kiln_serve::route::Router::from_file(bad.path()).unwrap_err();
    assert!(err.to_string().contains("two labels"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let h = start(ServeOptions {
        max_body_bytes: 64 << 10,
        ..Default::default()
    });
    let check = |status: StatusCode, body: &[u8], want: u16| {
        assert_eq!(status.as_u16(), want, "{}", String::from_utf8_lossy(body));
        let v: Value = serde_json::from_slice(body).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(v["error"]["type"].is_string(), "{v}");
        v
    };
    let (s, b) = h
        .send("POST", "/v1/completions", Body::from("{not json"), None)
        .await;
    check(s, &b, 400);
    let (s, b) = h
        .send(
            "POST",
            "/v1/completions",
            Body::from(vec![b'"', 0xff, 0xfe, b'"']),
            None,
        )
        .await;
    check(s, &b, 400);
    let big = format!(
        "{{\"model\": \"base\", \"prompt\": \"{}\"}}",
        "t5 ".repeat(4 << 20)
    );
    let (s, b) = h
        .send("POST", "/v1/completions", Body::from(big), None)
        .await;
    check(s, &b, 413);
    let cases = [
        (
            json!({"model": "nope", "prompt": "t5"}),
            404,
            Some("model_not_found"),
        ),
        (
            json!({"model": "base", "prompt": "t5", "max_tokens": 0}),
            400,
            None,
        ),
        (
            json!({"model": "base", "prompt": "t5", "max_tokens": CONTEXT}),
            400,
            Some("context_length_exceeded"),
        ),
        (
            json!({"model": "base", "prompt": vec![5; CONTEXT + 1]}),
            400,
            Some("context_length_exceeded"),
        ),
        (
            json!({"model": "base", "prompt": [VOCAB as u32]}),
            400,
            None,
        ),
        (
            json!({"model": "base", "prompt": "t5", "temperature": 3}),
            400,
            None,
        ),
        (json!({"model": "base", "prompt": "t5", "n": 0}), 400, None),
        (json!({"model": "base", "prompt": []}), 400, None),
        (json!({"model": "base"}), 400, None),
    ];
    for (req, status, code) in cases {
        let (s, b) = h
            .send("POST", "/v1/completions", Body::from(req.to_string()), None)
            .await;
        let v = check(s, &b, status);
        if let Some(code) = code {
            assert_eq!(v["error"]["code"], code, "{req}");
        }
    }
    let (s, b) = h
        .send(
            "POST",
            "/v1/chat/completions",
            Body::from(json!({"model": "base", "messages": []}).to_string()),
            None,
        )
        .await;
    check(s, &b, 400);
    let (s, b) = h
        .send(
            "POST",
            "/v1/chat/completions",
            Body::from(
                json!({"model": "base", "messages": [{"role": "wizard", "content": "x"}]})
                    .to_string(),
            ),
            None,
        )
        .await;
    check(s, &b, 400);
    let (s, b) = h.send("GET", "/v2/nothing", Body::empty(), None).await;
    check(s, &b, 404);
    let (status, health) = h.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(health.contains("\"ok\""));
    // Every request got one access-log line.
    assert_eq!(h.log().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_gives_429_and_a_dropped_stream_frees_its_slot() {
    let h = start(ServeOptions {
        engine: EngineOptions {
            max_batch: 1,
            max_queue: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    let long = json!({"model": "base", "prompt": [5, 6], "max_tokens": CONTEXT - 2, "temperature": 0, "stream": true});
    let req = Request::post("/v1/completions")
        .body(Body::from(long.to_string()))
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    let mut running = resp.into_body();
    // The first frame arrived: this request holds the only batch slot.
    running.frame().await.unwrap().unwrap();
    let app = h.app.clone();
    let queued = tokio::spawn(async move {
        let req = Request::post("/v1/completions")
            .body(Body::from(long.to_string()))
            .unwrap();
        app.oneshot(req).await.unwrap()
    });
    for _ in 0..200 {
        if h.metric("kiln_queue_depth").await >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (status, err) = h
        .post(
            "/v1/completions",
            json!({"model": "base", "prompt": [5], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{err}");
    assert_eq!(err["error"]["type"], "rate_limit_error");
    // Disconnecting the running client frees the slot: the queued request starts.
    drop(running);
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), queued)
        .await
        .expect("the queued request started after the disconnect")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    for _ in 0..300 {
        if h.metric("kiln_batch_size").await == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(h.metric("kiln_batch_size").await, 0.0);
    let cancelled: Vec<Value> = h.log().into_iter().filter(|l| l["status"] == 499).collect();
    assert_eq!(cancelled.len(), 2, "both streams logged as cancelled");
    assert!(
        cancelled
            .iter()
            .all(|l| l["completion_tokens"].as_u64().unwrap() < (CONTEXT - 2) as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_limits_cache_seeds_and_routing() {
    let router = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        router.path(),
        "[[rule]]\nadapter = \"lora\"\nkeywords = [\"t77\"]\n",
    )
    .unwrap();
    let h = start(ServeOptions {
        api_keys: vec!["secret".into()],
        rate_limits: RateLimits {
            requests_per_minute: Some(8),
            tokens_per_minute: None,
        },
        router: Some(router.path().to_path_buf()),
        ..Default::default()
    });
    h.server.load_adapter("lora", lora_dir()).await.unwrap();
    let body = |v: Value| Body::from(v.to_string());
    let greedy = json!({"model": "base", "prompt": [20, 30], "max_tokens": 6, "temperature": 0});
    let (s, _) = h
        .send("POST", "/v1/completions", body(greedy.clone()), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = h
        .send(
            "POST",
            "/v1/completions",
            body(greedy.clone()),
            Some("wrong"),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.get("/health").await.0,
        StatusCode::OK,
        "health needs no key"
    );
    // 1, 2: the same greedy request; the second comes from the cache.
    let (_, a) = h
        .send(
            "POST",
            "/v1/completions",
            body(greedy.clone()),
            Some("secret"),
        )
        .await;
    let (_, b) = h
        .send(
            "POST",
            "/v1/completions",
            body(greedy.clone()),
            Some("secret"),
        )
        .await;
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&a).unwrap(),
        serde_json::from_slice(&b).unwrap(),
    );
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(
        a["choices"][0]["text"],
        text_of(&offline(&[20, 30], 6, None))
    );
    assert_eq!(h.metric("kiln_cache_hits_total").await, 1.0);
    assert_eq!(h.metric("kiln_cache_misses_total").await, 1.0);
    // 3, 4: sampling with a seed repeats; 5: n = 2 greedy gives two equal choices.
    let sampled = json!({"model": "base", "prompt": [20, 30], "max_tokens": 8, "temperature": 1.0, "seed": 5});
    let (_, x) = h
        .send(
            "POST",
            "/v1/completions",
            body(sampled.clone()),
            Some("secret"),
        )
        .await;
    let (_, y) = h
        .send("POST", "/v1/completions", body(sampled), Some("secret"))
        .await;
    let (x, y): (Value, Value) = (
        serde_json::from_slice(&x).unwrap(),
        serde_json::from_slice(&y).unwrap(),
    );
    assert_eq!(x["choices"][0]["text"], y["choices"][0]["text"]);
    let two =
        json!({"model": "base", "prompt": [20, 30], "max_tokens": 4, "temperature": 0, "n": 2});
    let (_, t) = h
        .send("POST", "/v1/completions", body(two), Some("secret"))
        .await;
    let t: Value = serde_json::from_slice(&t).unwrap();
    assert_eq!(t["choices"][0]["text"], t["choices"][1]["text"]);
    assert_eq!(t["choices"][1]["index"], 1);
    assert_eq!(t["usage"]["completion_tokens"], 8);
    // 6, 7: model "auto" routes by keyword.
    let auto = |content: &str| json!({"model": "auto", "messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0});
    let (_, r) = h
        .send(
            "POST",
            "/v1/chat/completions",
            body(auto("t77 t30")),
            Some("secret"),
        )
        .await;
    let r: Value = serde_json::from_slice(&r).unwrap();
    assert_eq!(r["kiln"]["route"], "lora");
    assert_eq!(r["model"], "lora");
    let lora = offline(&[10, 77, 30, 11, 12], 6, Some(&lora_dir()));
    assert_eq!(r["choices"][0]["message"]["content"], text_of(&lora));
    let (_, r) = h
        .send(
            "POST",
            "/v1/chat/completions",
            body(auto("t78 t30")),
            Some("secret"),
        )
        .await;
    let r: Value = serde_json::from_slice(&r).unwrap();
    assert_eq!(r["kiln"]["route"], "base");
    // 8 requests used the minute's window.
    let (_, m) = h
        .send("GET", "/v1/models", Body::empty(), Some("secret"))
        .await;
    assert!(String::from_utf8(m).unwrap().contains("\"auto\""));
    let (s, e) = h
        .send("POST", "/v1/completions", body(greedy), Some("secret"))
        .await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&e)
    );
    let metrics = h.get("/metrics").await.1;
    assert!(
        metrics.contains("kiln_route_requests_total{route=\"lora\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kiln_requests_total{endpoint=\"/v1/completions\",status=\"401\"} 2"),
        "{metrics}"
    );
    let log = h.log();
    let routed = log.iter().find(|l| l["route"] == "lora").unwrap();
    assert_eq!(routed["adapter"], "lora");
    assert_eq!(routed["key"], kiln_serve::auth::key_id("secret"));
    assert_eq!(routed["prompt_tokens"], 5);
}

/// A server on an ephemeral loopback port, driven over real TCP connections.
struct Tcp {
    addr: std::net::SocketAddr,
    h: Harness,
}

impl Tcp {
    async fn start(options: ServeOptions) -> Self {
        let h = start(options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = h.app.clone();
        tokio::spawn(async move { kiln_serve::axum::serve(listener, app).await.unwrap() });
        Self { addr, h }
    }

    /// One HTTP/1.1 request (`Connection: close`); the status and the body, de-chunked.
    async fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let addr = self.addr;
        let raw = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).unwrap();
            raw
        })
        .await
        .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return (status, body.to_string());
        }
        let (mut rest, mut out) = (body, String::new());
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                return (status, out);
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, &body.to_string()).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Texts of the choices of a completion, by `index`.
    async fn texts(&self, body: Value) -> Vec<String> {
        let (status, v) = self.post("/v1/completions", body).await;
        assert_eq!(status, 200, "{v}");
        choice_texts(&v["choices"])
    }
}

/// `choices[i].text` ordered by `index`; asserts the indices are `0..len`.
fn choice_texts(choices: &Value) -> Vec<String> {
    let choices = choices.as_array().unwrap();
    let mut out = vec![None; choices.len()];
    for c in choices {
        out[c["index"].as_u64().unwrap() as usize] = Some(c["text"].as_str().unwrap().to_string());
    }
    out.into_iter().map(Option::unwrap).collect()
}

/// Streamed choices assembled by `index`, with each finish reason.
fn streamed_texts(body: &str) -> (Vec<String>, Vec<String>, Value) {
    let chunks = sse_chunks(body.as_bytes());
    let mut texts: Vec<String> = Vec::new();
    let mut finish: Vec<String> = Vec::new();
    let mut usage = Value::Null;
    for c in &chunks {
        if !c["usage"].is_null() {
            usage = c["usage"].clone();
        }
        for choice in c["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
                finish.resize(i + 1, String::new());
            }
            texts[i].push_str(choice["text"].as_str().unwrap_or(""));
            if let Some(f) = choice["finish_reason"].as_str() {
                finish[i] = f.to_string();
            }
        }
    }
    (texts, finish, usage)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_prompts_give_choices_equal_to_each_prompt_alone() {
    let t = Tcp::start(ServeOptions::default()).await;
    let prompts: Vec<Vec<u32>> = vec![vec![375, 213, 209, 240, 141], vec![20, 30, 40], vec![7, 8]];
    let n = 2;
    let sampled = |prompt: Value| {
        json!({"model": "base", "prompt": prompt, "max_tokens": 8, "temperature": 0.9,
               "seed": 11, "n": n})
    };
    // Each prompt alone, n samples each (seeds 11 and 12).
    let mut alone = Vec::new();
    for p in &prompts {
        alone.extend(t.texts(sampled(json!(p))).await);
    }
    let forwards = t.h.metric("kiln_prefill_forwards_total").await;
    let prefills = t.h.metric("kiln_prefills_total").await;
    let (status, all) = t.post("/v1/completions", sampled(json!(prompts))).await;
    assert_eq!(status, 200, "{all}");
    // The three prompts (lengths 5, 3, 2) were prefilled together, left-padded, in one forward.
    assert_eq!(
        t.h.metric("kiln_prefill_forwards_total").await,
        forwards + 1.0
    );
    assert_eq!(t.h.metric("kiln_prefills_total").await, prefills + 3.0);
    // OpenAI's order: choice `p * n + j` is sample `j` of prompt `p`.
    assert_eq!(choice_texts(&all["choices"]), alone);
    assert_ne!(alone[0], alone[1], "the two samples of a prompt differ");
    let lens: usize = prompts.iter().map(Vec::len).sum();
    assert_eq!(all["usage"]["prompt_tokens"], lens, "{}", all["usage"]);
    assert_eq!(all["usage"]["completion_tokens"], 8 * n * prompts.len());
    // The same prompts as text, and streamed: the same choices.
    let texts: Vec<String> = prompts.iter().map(|p| text_of(p)).collect();
    assert_eq!(t.texts(sampled(json!(texts))).await, alone);
    let mut req = sampled(json!(prompts));
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, body) = t.request("POST", "/v1/completions", &req.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let (streamed, finish, usage) = streamed_texts(&body);
    assert_eq!(streamed, alone);
    assert_eq!(finish, vec!["length"; alone.len()]);
    assert_eq!(usage, all["usage"]);
    // Greedy: each choice is kiln's `generate` of its prompt.
    let greedy = t
        .texts(json!({"model": "base", "prompt": prompts, "max_tokens": 8, "temperature": 0}))
        .await;
    for (p, got) in prompts.iter().zip(&greedy) {
        assert_eq!(*got, text_of(&offline(p, 8, None)));
    }
    let (status, err) = t
        .post(
            "/v1/completions",
            json!({"model": "base", "prompt": ["t5", ""]}),
        )
        .await;
    assert_eq!((status, &err["error"]["param"]), (400, &json!("prompt")));
    let (status, _) = t
        .post(
            "/v1/completions",
            json!({"model": "base", "prompt": vec![vec![5]; 9], "n": 8}),
        )
        .await;
    assert_eq!(status, 400, "9 prompts x n = 8 exceed 64 choices");
}

/// Prefix caching: a prompt that starts with the whole blocks of an earlier prompt runs only
/// the rest (counted in the metrics), prompts with the same kept prefix and rest lengths run
/// together, a cold prompt beside them runs in its own forward, and every answer equals kiln's
/// `generate` of its prompt alone (greedy) or the same seeded request (sampled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_sharing_a_beginning_reuse_its_prefill() {
    let t = Tcp::start(ServeOptions::default()).await;
    let shared: Vec<u32> = (0..40).map(|i| 5 + (i * 37) % 300).collect();
    let with = |rest: &[u32]| [shared.as_slice(), rest].concat();
    let greedy = |prompt: Value| json!({"model": "base", "prompt": prompt, "max_tokens": 6, "temperature": 0});
    let metric = |name: &'static str| t.h.metric(name);
    let first = with(&[11, 12, 13, 14, 15]);
    assert_eq!(
        t.texts(greedy(json!(first))).await,
        vec![text_of(&offline(&first, 6, None))]
    );
    assert_eq!(metric("kiln_prefix_cache_hits_total").await, 0.0);
    assert!(metric("kiln_prefix_cache_bytes").await > 0.0);
    // 45 tokens kept as 32 (two blocks; a token is always left to run).
    let (tokens, hits) = (metric("kiln_prefill_tokens_total").await, 0.0);
    let second = with(&[300, 301, 302]);
    assert_eq!(
        t.texts(greedy(json!(second))).await,
        vec![text_of(&offline(&second, 6, None))]
    );
    assert_eq!(metric("kiln_prefix_cache_hits_total").await, hits + 32.0);
    assert_eq!(metric("kiln_prefill_tokens_total").await, tokens + 11.0);
    // Two warm prompts with equal rests share a forward; a cold one runs beside them.
    let (a, b) = (with(&[20, 21, 22, 23]), with(&[30, 31, 32, 33]));
    let cold: Vec<u32> = vec![9, 8, 7, 6, 5];
    let forwards = metric("kiln_prefill_forwards_total").await;
    let hits = metric("kiln_prefix_cache_hits_total").await;
    let got = t.texts(greedy(json!([a, cold, b]))).await;
    let want: Vec<String> = [&a, &cold, &b]
        .iter()
        .map(|p| text_of(&offline(p, 6, None)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(metric("kiln_prefill_forwards_total").await, forwards + 2.0);
    assert_eq!(metric("kiln_prefix_cache_hits_total").await, hits + 64.0);
    // Sampled with a seed: the same choices with the prefix kept as after it is gone.
    let sampled = json!({"model": "base", "prompt": with(&[40, 41]), "max_tokens": 8,
                         "temperature": 0.9, "seed": 3, "n": 2});
    let warm = t.texts(sampled.clone()).await;
    let fresh = Tcp::start(ServeOptions::default()).await;
    assert_eq!(fresh.texts(sampled).await, warm);
    assert_eq!(fresh.h.metric("kiln_prefix_cache_hits_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_samples_share_one_prefill_and_equal_seeded_single_requests() {
    let t = Tcp::start(ServeOptions {
        engine: EngineOptions {
            max_batch: 4,
            max_queue: 8,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let req = |n: usize, seed: u64| {
        json!({"model": "base", "prompt": [20, 30, 40, 50], "max_tokens": 10,
               "temperature": 1.0, "seed": seed, "n": n})
    };
    let prefills = t.h.metric("kiln_prefills_total").await;
    let tokens = t.h.metric("kiln_prefill_tokens_total").await;
    // n = 6 > max_batch: the request's samples still join together, from one prefill.
    let forwards = t.h.metric("kiln_prefill_forwards_total").await;
    let together = t.texts(req(6, 40)).await;
    assert_eq!(t.h.metric("kiln_prefills_total").await, prefills + 1.0);
    assert_eq!(
        t.h.metric("kiln_prefill_forwards_total").await,
        forwards + 1.0
    );
    assert_eq!(t.h.metric("kiln_prefill_tokens_total").await, tokens + 4.0);
    // Sample j of a request with seed s draws as a single request with seed s + j.
    let mut single = Vec::new();
    for j in 0..6 {
        single.extend(t.texts(req(1, 40 + j)).await);
    }
    assert_eq!(together, single);
    assert_eq!(t.h.metric("kiln_prefills_total").await, prefills + 7.0);
    let distinct: std::collections::BTreeSet<&String> = together.iter().collect();
    assert!(distinct.len() > 1, "{together:?}");
    // Streamed with n = 3 while another request runs: the same samples.
    let mut streamed = req(3, 40);
    streamed["stream"] = json!(true);
    let streamed = streamed.to_string();
    let (a, b) = tokio::join!(
        t.request("POST", "/v1/completions", &streamed),
        t.texts(req(2, 41)),
    );
    assert_eq!(streamed_texts(&a.1).0, together[..3]);
    assert_eq!(b, together[1..3]);
}

/// Integer tensor `key` of a safetensors file (the fixture batch's ids, as transformers wrote them).
fn read_i64(path: &Path, key: &str) -> Vec<i64> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(key)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn read_f32(path: &Path, key: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(key)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn mix_dir() -> PathBuf {
    fixtures().join("tiny/llama/peft/mix")
}

/// The weighted mix of `tools/fixtures/weighted_mix.py`, as a row's adapters.
fn peft_mix() -> RowMix {
    vec![("lora".into(), 0.7), ("rslora".into(), -0.4)]
}

#[test]
fn row_mixes_equal_peft_weighted_cat_adapter() {
    let base_dir = fixtures().join("tiny/llama");
    let batch = base_dir.join("expected.safetensors");
    let (b, t, vocab) = (2, 12, VOCAB);
    let ids: Vec<u32> = read_i64(&batch, "input_ids")
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let mask: Vec<u8> = read_i64(&batch, "attention_mask")
        .into_iter()
        .map(|m| m as u8)
        .collect();
    let input = kiln_models::DecoderInput::new(ids, b, t)
        .with_attention_mask(mask.clone())
        .with_position_ids(read_i64(&batch, "position_ids"));
    let mut want = kiln_lora::read_safetensors(&mix_dir().join("expected.safetensors")).unwrap();
    let base = read_f32(&batch, "logits");
    let (mix, lora_alone) = (
        want.remove("logits").unwrap().data,
        want.remove("logits_lora").unwrap().data,
    );

    let dir = model_dir();
    let lm = Pretrained::load(dir.path(), &default_device()).unwrap();
    let mut model = LoraModel::new(lm.model);
    for name in ["lora", "rslora"] {
        model
            .load_adapter(&base_dir.join("peft").join(name), name)
            .unwrap();
    }
    model.set_active(&[]).unwrap();
    let lora = vec![("lora".to_string(), 1.0)];
    // Each case: the rows' mixes and, per row, the PEFT logits it must equal.
    let cases: [(Vec<RowMix>, [&[f32]; 2]); 3] = [
        (vec![peft_mix(), peft_mix()], [&mix, &mix]),
        (vec![peft_mix(), Vec::new()], [&mix, &base]),
        (vec![lora, peft_mix()], [&lora_alone, &mix]),
    ];
    for (rows, refs) in cases {
        model.set_row_mixes(Some(&rows)).unwrap();
        let got: Vec<f32> = model
            .model
            .forward(&input)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let mut worst = 0f32;
        for r in 0..b {
            for i in (0..t).filter(|&i| mask[r * t + i] == 1) {
                let k = (r * t + i) * vocab;
                for v in k..k + vocab {
                    worst = worst.max((got[v] - refs[r][v]).abs());
                }
            }
        }
        eprintln!("rows {rows:?}: max |kiln - PEFT| {worst:.2e}");
        assert!(worst <= 1e-4, "rows {rows:?}: max |kiln - PEFT| {worst}");
    }
    // A DoRA adapter only runs alone at weight 1.
    model
        .load_adapter(&base_dir.join("peft/dora"), "dora")
        .unwrap();
    let dora_mix = vec![vec![("dora".to_string(), 0.5)]];
    assert!(model.set_row_mixes(Some(&dora_mix)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_mix_equals_peft_greedy_in_a_mixed_batch() {
    let t = Tcp::start(ServeOptions::default()).await;
    let peft = fixtures().join("tiny/llama/peft");
    for name in ["lora", "rslora", "dora"] {
        t.h.server
            .load_adapter(name, peft.join(name))
            .await
            .unwrap();
    }
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(mix_dir().join("generate.json")).unwrap())
            .unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mix = "mix:lora=0.7,rslora=-0.4";
    let req = |model: &str, prompt: &Value| json!({"model": model, "prompt": prompt, "max_tokens": 10, "temperature": 0});
    for (prompt, want) in g["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(g["greedy_new_ids"].as_array().unwrap())
    {
        // The mix shares decode steps with rows of the base and of one adapter.
        let (m, base, lora) = tokio::join!(
            t.texts(req(mix, prompt)),
            t.texts(req("base", prompt)),
            t.texts(req("lora", prompt)),
        );
        assert_eq!(m[0], text_of(&ids(want)), "PEFT's greedy tokens of the mix");
        let p = ids(prompt);
        assert_eq!(base[0], text_of(&offline(&p, 10, None)));
        assert_eq!(lora[0], text_of(&offline(&p, 10, Some(&lora_dir()))));
        assert_ne!(m, lora);
    }
    // `mix:NAME` alone is the adapter at weight 1.
    let p = json!([20, 30, 40]);
    assert_eq!(
        t.texts(req("mix:lora", &p)).await,
        t.texts(req("lora", &p)).await
    );
    let steps = t.h.metric("kiln_decode_batch_rows_count").await;
    let single = t.h.metric("kiln_decode_batch_rows_bucket{le=\"1\"}").await;
    assert!(single < steps, "{single} of {steps} steps had one row");
    for (model, status, code) in [
        ("mix:lora=abc", 400, None),
        ("mix:lora=1,lora=2", 400, None),
        ("mix:", 400, None),
        ("mix:nope=1", 404, Some("model_not_found")),
        ("mix:dora=0.5,lora=0.5", 400, None),
    ] {
        let (s, e) = t.post("/v1/completions", req(model, &p)).await;
        assert_eq!(s, status, "{model}: {e}");
        assert_eq!(
            e["error"]["param"],
            if code.is_some() {
                Value::Null
            } else {
                json!("model")
            },
            "{e}"
        );
        if let Some(c) = code {
            assert_eq!(e["error"]["code"], c);
        }
    }
}
