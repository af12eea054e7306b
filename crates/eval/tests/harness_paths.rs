//! Paths of the generation harness on the tiny random Llama: chat-template prompts, stop
//! strings, seeded sampling, the JSON Lines records and the throughput figures. Every expected
//! value comes from calling `kiln_models::generate` directly on the same token ids.
#![allow(clippy::unwrap_used)]
use std::path::PathBuf;

use kiln_data::{ChatTemplate, Message, Record, Role};
use kiln_eval::harness::write_records;
use kiln_eval::{EvalError, EvalExample, EvalMetric, EvalReport, HarnessConfig, evaluate};
use kiln_models::{CausalLm, DecoderConfig, GenerationConfig, SafetensorsWeights, Sampling};
use serde_json::Value;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn setup() -> (CausalLm, Tokenizer) {
    let dir = fixtures().join("tiny/llama");
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    let model =
        kiln_models::build_causal_lm(&config, &weights, &kiln_models::default_device()).unwrap();
    let tok = Tokenizer::from_file(fixtures().join("eval/tokenizer.json")).unwrap();
    (model, tok)
}

const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "A cat sat on the",
    "Question: What is two plus two? Answer:",
    "Rust is a language for",
];

fn raw_examples() -> Vec<EvalExample> {
    PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let rec = Record::PromptCompletion {
                prompt: (*p).into(),
                completion: " Paris".into(),
            };
            EvalExample::from_record(i, &rec).unwrap()
        })
        .collect()
}

fn config(metrics: &str, max_new_tokens: usize) -> HarnessConfig {
    let mut cfg = HarnessConfig {
        metrics: EvalMetric::parse_list(metrics).unwrap(),
        batch_size: 2,
        progress: false,
        ..Default::default()
    };
    cfg.generation.max_new_tokens = max_new_tokens;
    cfg
}

/// What `kiln_models::generate` gives for `ids` alone, decoded as the harness decodes.
fn generate_alone(
    model: &CausalLm,
    tok: &Tokenizer,
    ids: Vec<u32>,
    gen_cfg: &GenerationConfig,
) -> (String, usize) {
    let out = kiln_models::generate(model, &[ids], gen_cfg, Some(tok), &mut |_, _| {}).unwrap();
    (
        tok.decode(&out[0].tokens, true).unwrap(),
        out[0].tokens.len(),
    )
}

fn outputs(r: &EvalReport) -> Vec<String> {
    r.records.iter().map(|x| x.output.clone()).collect()
}

/// A ChatML-like template that also places the BOS token, as SmolLM2's and Qwen's do.
const CHATML: &str = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[test]
fn chat_prompts_are_rendered_with_the_template_and_generated_from() {
    let (model, tok) = setup();
    let template = ChatTemplate::new(CHATML, Some("<s>"), Some("</s>")).unwrap();
    let chat = Record::Conversation(vec![
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "The capital of France is"),
        Message::new(Role::Assistant, "Paris"),
    ]);
    let examples = vec![EvalExample::from_record(0, &chat).unwrap()];
    assert_eq!(examples[0].references, vec!["Paris".to_owned()]);
    let cfg = config("exact_match,perplexity", 6);
    let report = evaluate("chat", &model, &tok, Some(&template), &examples, &cfg).unwrap();
    let rendered = "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n\
                    The capital of France is<|im_end|>\n<|im_start|>assistant\n";
    let rec = &report.records[0];
    assert_eq!(rec.prompt, rendered);
    assert_eq!(rec.references, vec!["Paris".to_owned()]);
    // The harness encodes the rendered text without adding special tokens: the one BOS is
    // the template's (the tokenizer's post-processor would add a second one).
    let ids = tok.encode(rendered, false).unwrap().get_ids().to_vec();
    assert_eq!(ids[0], 1);
    assert_ne!(ids[1], 1);
    let (want, n) = generate_alone(&model, &tok, ids, &cfg.generation);
    assert_eq!(rec.output, want);
    assert_eq!(rec.generated_tokens, n);
    assert_eq!(rec.answer.as_deref(), Some(want.trim()));
    // Generating from the raw user text instead gives something else: the template mattered.
    let raw = tok
        .encode("The capital of France is", true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_ne!(generate_alone(&model, &tok, raw, &cfg.generation).0, want);
    // The reference NLL is scored after the same rendered prompt.
    let nll = rec.scores["nll"];
    assert!(nll.is_finite() && nll > 0.0, "{nll}");
    assert!((report.corpus["mean_nll"] - nll).abs() < 1e-12);
}

#[test]
fn stop_strings_cut_the_output_where_they_first_occur() {
    let (model, tok) = setup();
    let examples = raw_examples();
    let free = evaluate(
        "free",
        &model,
        &tok,
        None,
        &examples,
        &config("exact_match", 12),
    )
    .unwrap();
    // Stop strings taken from the unrestricted greedy output of the second prompt (greedy, so
    // a stopped generation is a prefix of the unrestricted one). The tiny model continues
    // " the the" and then repeats a control character: its last character first occurs in
    // the middle of the text.
    let full = &free.records[1].output;
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    let stop = chars.last().unwrap().1.to_string();
    let cut = full.find(&stop).unwrap();
    assert!(cut > 0 && cut + stop.len() < full.len(), "{full:?}");

    let mut cfg = config("exact_match", 12);
    cfg.generation.stop_strings = vec![stop.clone()];
    let stopped = evaluate("stop", &model, &tok, None, &examples, &cfg).unwrap();
    let r = &stopped.records[1];
    assert_eq!(r.output, full[..cut], "stop {stop:?}");
    assert_eq!(r.finish.as_deref(), Some("stop_string"));
    assert!(r.generated_tokens < free.records[1].generated_tokens);
    // Every row either never produced the stop string (unchanged, ran to the length limit) or
    // is cut just before its first occurrence.
    for (a, b) in free.records.iter().zip(&stopped.records) {
        match a.output.find(&stop) {
            Some(at) => {
                assert_eq!(b.output, a.output[..at]);
                assert_eq!(b.finish.as_deref(), Some("stop_string"));
            }
            None => {
                assert_eq!(b.output, a.output);
                assert_eq!(b.finish.as_deref(), Some("length"));
            }
        }
    }
    // With two stop strings, the one occurring first in the text wins, not the one listed
    // first. Here the first generated token (" the") completes both "th" and "he" at once, so
    // the text generation stopped on contains both and the cut must go before "th".
    let (at_th, at_he) = (chars[1].0, chars[2].0);
    let (th, he) = (&full[at_th..chars[3].0], &full[at_he..chars[4].0]);
    assert_eq!((full.find(th), full.find(he)), (Some(at_th), Some(at_he)));
    let mut both = cfg.clone();
    both.generation.stop_strings = vec![he.to_owned(), th.to_owned()];
    let r2 = evaluate("both", &model, &tok, None, &examples, &both).unwrap();
    assert_eq!(r2.records[1].output, full[..at_th]);
    assert_eq!(r2.records[1].finish.as_deref(), Some("stop_string"));
    assert_eq!(r2.records[1].generated_tokens, 1);
    // An empty stop string would cut every output to nothing: refused.
    let mut empty = cfg.clone();
    empty.generation.stop_strings = vec![String::new()];
    assert!(matches!(
        evaluate("empty", &model, &tok, None, &examples, &empty),
        Err(EvalError::InvalidOption { .. })
    ));
}

#[test]
fn seeded_sampling_repeats_and_top_k_one_is_greedy() {
    let (model, tok) = setup();
    let examples = raw_examples();
    let greedy = evaluate("g", &model, &tok, None, &examples, &config("bleu", 8)).unwrap();
    let sampled = |seed: u64, top_k: usize| {
        let mut cfg = config("bleu", 8);
        cfg.generation.sampling = Sampling::Sample {
            temperature: 1.0,
            top_k,
            top_p: 1.0,
        };
        cfg.generation.seed = seed;
        evaluate("s", &model, &tok, None, &examples, &cfg).unwrap()
    };
    let a = sampled(7, 0);
    let b = sampled(7, 0);
    assert_eq!(a.records, b.records, "same seed, same outputs and scores");
    assert_ne!(
        outputs(&a),
        outputs(&sampled(8, 0)),
        "another seed samples differently"
    );
    assert_ne!(outputs(&a), outputs(&greedy), "sampling is not greedy here");
    // Top-k 1 keeps only the most likely token: sampling equals greedy decoding.
    assert_eq!(outputs(&sampled(7, 1)), outputs(&greedy));
    // Each sampled row equals `generate` on the same batch with the same seed.
    let mut gen_cfg = GenerationConfig {
        max_new_tokens: 8,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        },
        seed: 7,
        ..Default::default()
    };
    // The harness batches prompts longest first (2 per batch): prompts 2 and 3 go first.
    let ids = |i: usize| tok.encode(PROMPTS[i], true).unwrap().get_ids().to_vec();
    let mut order: Vec<usize> = (0..PROMPTS.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids(i).len()));
    let first: Vec<Vec<u32>> = order[..2].iter().map(|&i| ids(i)).collect();
    let out = kiln_models::generate(&model, &first, &gen_cfg, None, &mut |_, _| {}).unwrap();
    for (&i, g) in order[..2].iter().zip(&out) {
        assert_eq!(a.records[i].output, tok.decode(&g.tokens, true).unwrap());
    }
    gen_cfg.seed = 8;
    let other = kiln_models::generate(&model, &first, &gen_cfg, None, &mut |_, _| {}).unwrap();
    assert_ne!(out, other);
}

#[test]
fn jsonl_records_equal_the_report() {
    let (model, tok) = setup();
    let mut examples = raw_examples();
    // A second reference on one example: every reference is written.
    examples[1].references.push(" mat".into());
    let mut cfg = config("exact_match,numeric_match,bleu,chrf,rouge,perplexity", 5);
    cfg.extractor = "first_line".parse().unwrap();
    let report = evaluate("jsonl", &model, &tok, None, &examples, &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    write_records(&path, &report.records).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), examples.len());
    let keys = [
        "answer",
        "finish",
        "generated_tokens",
        "index",
        "output",
        "prompt",
        "references",
        "scores",
    ];
    let score_keys = [
        "bleu",
        "chrf",
        "exact_match",
        "nll",
        "numeric_match",
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
    ];
    for (i, (line, rec)) in lines.iter().zip(&report.records).enumerate() {
        let obj = line.as_object().unwrap();
        let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, keys);
        assert_eq!(line["index"], i);
        assert_eq!(line["prompt"], PROMPTS[i]);
        assert_eq!(line["prompt"], rec.prompt.as_str());
        let refs: Vec<&str> = line["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(refs, rec.references);
        assert_eq!(refs, examples[i].references);
        assert_eq!(line["output"], rec.output.as_str());
        assert_eq!(line["answer"].as_str(), rec.answer.as_deref());
        assert_eq!(line["finish"].as_str(), rec.finish.as_deref());
        assert_eq!(line["generated_tokens"], rec.generated_tokens);
        let scores = line["scores"].as_object().unwrap();
        let mut got: Vec<&str> = scores.keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, score_keys);
        for (k, v) in &rec.scores {
            let w = scores[k].as_f64().unwrap();
            assert!((w - v).abs() <= 1e-12 * v.abs().max(1.0), "{k}: {w} vs {v}");
        }
    }
    // The per-example values average to the corpus values where the corpus is a mean.
    for key in ["exact_match", "numeric_match", "rouge1", "rougeL"] {
        let mean = report.records.iter().map(|r| r.scores[key]).sum::<f64>() / 4.0;
        assert!((mean - report.corpus[key]).abs() < 1e-12, "{key}");
    }
}

#[test]
fn throughput_and_token_counts_are_consistent() {
    let (model, tok) = setup();
    let examples = raw_examples();
    let mut cfg = config("exact_match", 7);
    cfg.progress = true; // the bar is drawn (hidden when stderr is not a terminal)
    let r = evaluate("speed", &model, &tok, None, &examples, &cfg).unwrap();
    assert!(r.seconds > 0.0 && r.seconds.is_finite());
    assert!(r.tokens_per_s.is_finite() && r.tokens_per_s > 0.0);
    assert_eq!(r.tokens_per_s, r.generated_tokens as f64 / r.seconds);
    // No EOS and no stop string: every row runs to the limit.
    assert_eq!(r.generated_tokens, 4 * 7);
    for (i, rec) in r.records.iter().enumerate() {
        assert_eq!(rec.generated_tokens, 7);
        assert_eq!(rec.finish.as_deref(), Some("length"));
        let ids = tok.encode(PROMPTS[i], true).unwrap().get_ids().to_vec();
        let (want, n) = generate_alone(&model, &tok, ids, &cfg.generation);
        assert_eq!(
            (rec.output.as_str(), rec.generated_tokens),
            (want.as_str(), n)
        );
    }
    assert_eq!(
        r.generated_tokens,
        r.records.iter().map(|x| x.generated_tokens).sum::<usize>()
    );
    // With an EOS id (the third token the first prompt generates): that row stops on it and
    // its count includes the EOS token.
    let ids = tok.encode(PROMPTS[0], true).unwrap().get_ids().to_vec();
    let tokens = kiln_models::generate(&model, &[ids], &cfg.generation, None, &mut |_, _| {})
        .unwrap()
        .remove(0)
        .tokens;
    let eos = tokens[2];
    let first = tokens.iter().position(|&t| t == eos).unwrap();
    let mut with_eos = cfg.clone();
    with_eos.generation.eos_token_ids = vec![eos];
    let e = evaluate("eos", &model, &tok, None, &examples, &with_eos).unwrap();
    assert_eq!(e.records[0].finish.as_deref(), Some("eos"));
    assert_eq!(e.records[0].generated_tokens, first + 1);
    assert_eq!(
        e.records[0].output,
        tok.decode(&tokens[..=first], true).unwrap()
    );
    assert_eq!(
        e.generated_tokens,
        e.records.iter().map(|x| x.generated_tokens).sum::<usize>()
    );
    // Perplexity alone generates nothing: zero tokens, zero throughput, empty outputs.
    let p = evaluate(
        "ppl",
        &model,
        &tok,
        None,
        &examples,
        &config("perplexity", 7),
    )
    .unwrap();
    assert_eq!((p.generated_tokens, p.tokens_per_s), (0, 0.0));
    assert!(
        p.records
            .iter()
            .all(|x| x.output.is_empty() && x.finish.is_none())
    );
}
