//! The server driven in-process (tower's `oneshot`) on the tiny Llama of
//! `fixtures/tiny/llama` (transformers' greedy tokens in `generate.json`, a PEFT LoRA adapter in
//! `peft/lora`) with a word-level tokenizer written here: token `i` is the word `t{i}`, so
//! prompts and outputs are exact id sequences.
#![allow(clippy::unwrap_used)]
use http_body_util::BodyExt;
use kiln_lora::LoraModel;
use kiln_models::{GenerationConfig, Pretrained, default_device, generate};
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
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny/llama");
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = json!(CONTEXT);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let vocab: serde_json::Map<String, Value> = (0..VOCAB).map(|i| (word(i), json!(i))).collect();
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
    let dir = model_dir();
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
    let dir = model_dir();
    let lm = Pretrained::load(dir.path(), &default_device()).unwrap();
    let eos = lm.eos_token_ids();
    let mut lora = LoraModel::new(lm.model);
    if let Some(a) = adapter {
        lora.load_adapter(a, "a").unwrap();
    }
    let config = GenerationConfig {
        max_new_tokens: max_new,
        eos_token_ids: eos,
        ..Default::default()
    };
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
    let h = start(ServeOptions {
        engine: EngineOptions {
            max_batch: 8,
            max_queue: 16,
        },
        ..Default::default()
    });
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
    let mut tasks = Vec::new();
    for p in &prompts {
        for model in ["base", "lora"] {
            let app = h.app.clone();
            let body = json!({"model": model, "prompt": p, "max_tokens": max, "temperature": 0});
            tasks.push(tokio::spawn(async move {
                let req = Request::post("/v1/completions")
                    .body(Body::from(body.to_string()))
                    .unwrap();
                let resp = app.oneshot(req).await.unwrap();
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                serde_json::from_slice::<Value>(&bytes).unwrap()
            }));
        }
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
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
        (json!({"model": "base", "prompt": ["a", "b"]}), 400, None),
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
