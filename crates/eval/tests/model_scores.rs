//! Model-based scores against lm-evaluation-harness 0.4.13 and transformers
//! (`tools/fixtures/eval_model.py` → `fixtures/eval/`), on the tiny random Llama.
#![allow(clippy::unwrap_used)]
use std::path::PathBuf;

use kiln_data::{Example, Record};
use kiln_eval::harness::write_records;
use kiln_eval::{
    ChoiceItem, CompareOptions, EvalError, EvalExample, EvalMetric, HarnessConfig, PairEncoder,
    choice_accuracy, compare, dataset_perplexity, evaluate, score_choices, score_pairs,
    sliding_window_perplexity,
};
use kiln_models::{CausalLm, DecoderConfig, DecoderInput, GenerationConfig, SafetensorsWeights};
use serde_json::Value;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures"))
}

fn setup() -> (CausalLm, Tokenizer, Value) {
    let dir = fixtures().join("tiny/llama");
    let config = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = SafetensorsWeights::open(&dir).unwrap();
    let model =
        kiln_models::build_causal_lm(&config, &weights, &kiln_models::default_device()).unwrap();
    let tok = Tokenizer::from_file(fixtures().join("eval/tokenizer.json")).unwrap();
    let text = std::fs::read_to_string(fixtures().join("eval/expected.json")).unwrap();
    (model, tok, serde_json::from_str(&text).unwrap())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn loglikelihood_equals_lm_eval() {
    let (model, tok, exp) = setup();
    let enc = PairEncoder::new(&tok, Some(1), Some(2)).unwrap();
    let mut pairs = Vec::new();
    for r in exp["loglik"].as_array().unwrap() {
        let p = enc
            .encode_pair(
                r["context"].as_str().unwrap(),
                r["continuation"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(p.context, ids(&r["context_ids"]), "{r}");
        assert_eq!(p.continuation, ids(&r["continuation_ids"]), "{r}");
        pairs.push(p);
    }
    // Batched with padding (3 rows per pass) and one at a time give the reference values.
    for bs in [3, 1] {
        let got = score_pairs(&model, &pairs, bs).unwrap();
        for (g, r) in got.iter().zip(exp["loglik"].as_array().unwrap()) {
            let want = r["logprob"].as_f64().unwrap();
            assert!((g.logprob - want).abs() < 1e-4, "{} vs {want}", g.logprob);
            assert_eq!(g.is_greedy, r["is_greedy"].as_bool().unwrap());
        }
    }
}

#[test]
fn greedy_continuation_is_flagged_greedy() {
    let (model, tok, _) = setup();
    let enc = PairEncoder::new(&tok, Some(1), Some(2)).unwrap();
    let context = enc.encode("The capital of France is").unwrap();
    let out = kiln_models::generate(
        &model,
        std::slice::from_ref(&context),
        &GenerationConfig {
            max_new_tokens: 3,
            ..Default::default()
        },
        None,
        &mut |_, _| {},
    )
    .unwrap();
    let pair = kiln_eval::TokenPair {
        context,
        continuation: out[0].tokens.clone(),
    };
    let mut other = pair.clone();
    other.continuation[2] = (other.continuation[2] + 1) % 400;
    let s = score_pairs(&model, &[pair, other], 2).unwrap();
    assert!(s[0].is_greedy);
    assert!(!s[1].is_greedy);
    assert!(s[0].logprob > s[1].logprob);
}

#[test]
fn multiple_choice_equals_lm_eval() {
    let (model, tok, exp) = setup();
    let enc = PairEncoder::new(&tok, Some(1), Some(2)).unwrap();
    let items: Vec<ChoiceItem> = serde_json::from_value(exp["choice"]["items"].clone()).unwrap();
    let res = score_choices(&model, &enc, &items, " ", 4).unwrap();
    for (r, e) in res.iter().zip(exp["choice"]["items"].as_array().unwrap()) {
        for (l, w) in r.logliks.iter().zip(e["logliks"].as_array().unwrap()) {
            assert!((l.logprob - w.as_f64().unwrap()).abs() < 1e-4);
        }
        assert_eq!(r.pred as u64, e["pred"].as_u64().unwrap());
        assert_eq!(r.pred_norm as u64, e["pred_norm"].as_u64().unwrap());
        assert_eq!(r.pred_bytes as u64, e["pred_bytes"].as_u64().unwrap());
    }
    let acc = choice_accuracy(&res).unwrap();
    let want = &exp["choice"]["accuracy"];
    assert_eq!(acc.acc, want["acc"].as_f64().unwrap());
    assert_eq!(acc.acc_norm, want["acc_norm"].as_f64().unwrap());
    assert_eq!(acc.acc_bytes, want["acc_bytes"].as_f64().unwrap());

    let bad = ChoiceItem {
        context: "x".into(),
        choices: vec!["a".into()],
        gold: 1,
    };
    assert!(matches!(
        score_choices(&model, &enc, &[bad], " ", 1),
        Err(EvalError::InvalidOption { .. })
    ));
}

#[test]
fn sliding_window_perplexity_equals_transformers_guide() {
    let (model, _, exp) = setup();
    let sw = &exp["sliding_window"];
    let text_ids = ids(&sw["ids"]);
    for run in sw["runs"].as_array().unwrap() {
        let (m, s) = (
            run["max_length"].as_u64().unwrap() as usize,
            run["stride"].as_u64().unwrap() as usize,
        );
        let p = sliding_window_perplexity(&model, &text_ids, m, s).unwrap();
        let want = run["mean_nll"].as_f64().unwrap();
        assert!(
            (p.mean_nll - want).abs() < 1e-5,
            "{m}/{s}: {} vs {want}",
            p.mean_nll
        );
        assert_eq!(p.tokens as u64, run["tokens"].as_u64().unwrap());
        assert!((p.perplexity / run["perplexity"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    }
    assert!(sliding_window_perplexity(&model, &text_ids, 16, 17).is_err());
    assert!(sliding_window_perplexity(&model, &text_ids[..1], 16, 8).is_err());
}

#[test]
fn dataset_perplexity_honours_label_masks() {
    let (model, _, exp) = setup();
    let examples: Vec<Example> = exp["dataset"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Example {
            input_ids: ids(&e["input_ids"]),
            labels: e["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect(),
        })
        .collect();
    for bs in [1, 2, 3] {
        let p = dataset_perplexity(&model, &examples, bs).unwrap();
        let want = exp["dataset"]["mean_nll"].as_f64().unwrap();
        assert!((p.mean_nll - want).abs() < 1e-5, "{} vs {want}", p.mean_nll);
    }
    // Same value through the training loss path (padded batch, kiln-models' loss).
    let t = examples.iter().map(Example::len).max().unwrap();
    let (mut all_ids, mut labels, mut mask) = (vec![], vec![], vec![]);
    for e in &examples {
        let pad = t - e.len();
        all_ids.extend(
            e.input_ids
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, pad)),
        );
        labels.extend(
            e.labels
                .iter()
                .copied()
                .chain(std::iter::repeat_n(-100, pad)),
        );
        mask.extend(std::iter::repeat_n(1u8, e.len()).chain(std::iter::repeat_n(0, pad)));
    }
    let input = DecoderInput::new(all_ids, examples.len(), t).with_attention_mask(mask);
    let ls = model.loss_sum(&input, &labels).unwrap();
    let mean = ls.sum.into_scalar::<f32>() as f64 / ls.tokens as f64;
    assert!((mean - exp["dataset"]["mean_nll"].as_f64().unwrap()).abs() < 1e-5);
}

fn examples(n: usize, answers: &[String]) -> Vec<EvalExample> {
    let prompts = [
        "The capital of France is",
        "A cat sat on the",
        "Question: What is two plus two? Answer:",
        "Rust is a language for",
        "In 2020 the population of",
    ];
    (0..n)
        .map(|i| {
            let rec = Record::PromptCompletion {
                prompt: prompts[i % prompts.len()].into(),
                completion: answers.get(i).cloned().unwrap_or_else(|| " Paris".into()),
            };
            EvalExample::from_record(i, &rec).unwrap()
        })
        .collect()
}

#[test]
fn harness_scores_generations_and_compares_runs() {
    let (model, tok, _) = setup();
    let mut cfg = HarnessConfig {
        metrics: EvalMetric::parse_list("exact_match,bleu,chrf,rouge,perplexity").unwrap(),
        batch_size: 2,
        progress: false,
        ..Default::default()
    };
    cfg.generation.max_new_tokens = 5;
    let first = evaluate("probe", &model, &tok, None, &examples(5, &[]), &cfg).unwrap();
    assert_eq!(first.n, 5);
    assert_eq!(first.generated_tokens, 25);
    assert_eq!(first.corpus["exact_match"], 0.0);
    // Each batch generates what the model generates for the prompt alone.
    let alone = kiln_models::generate(
        &model,
        &[tok
            .encode("A cat sat on the", true)
            .unwrap()
            .get_ids()
            .to_vec()],
        &cfg.generation,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        first.records[1].output,
        tok.decode(&alone[0].tokens, true).unwrap()
    );

    // With the outputs as references every generation metric is perfect.
    let answers: Vec<String> = first
        .records
        .iter()
        .map(|r| r.answer.clone().unwrap())
        .collect();
    let exs = examples(5, &answers);
    let a = evaluate("A", &model, &tok, None, &exs, &cfg).unwrap();
    assert_eq!(a.corpus["exact_match"], 1.0);
    assert!(
        (a.corpus["rouge1"] - 1.0).abs() < 1e-12 || answers.iter().any(|s| s.trim().is_empty())
    );
    // Reference perplexity: the token-weighted corpus value lies between the smallest and the
    // largest per-example mean NLL (the NLL itself is checked against transformers above).
    let ppl = a.corpus["perplexity"];
    assert!((ppl.ln() - a.corpus["mean_nll"]).abs() < 1e-12);
    let per: Vec<f64> = a.records.iter().map(|r| r.scores["nll"]).collect();
    let (lo, hi) = per
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    assert!(
        lo > 0.0 && lo <= a.corpus["mean_nll"] && a.corpus["mean_nll"] <= hi,
        "{per:?}"
    );

    // Self-comparison: all ties, zero delta, nothing changed.
    let same = compare(&a, &a, CompareOptions::default()).unwrap();
    for m in &same.metrics {
        assert_eq!((m.wins, m.losses, m.ties), (0, 0, 5), "{}", m.metric);
        assert_eq!(m.delta, 0.0);
    }
    assert!(same.changed.is_empty());

    // B generates fewer tokens: answers change, exact match drops, every change is a loss.
    let mut short = cfg.clone();
    short.generation.max_new_tokens = 2;
    let b = evaluate("B", &model, &tok, None, &exs, &short).unwrap();
    let c = compare(&a, &b, CompareOptions::default()).unwrap();
    let em = c
        .metrics
        .iter()
        .find(|m| m.metric == "exact_match")
        .unwrap();
    assert_eq!(em.losses, 5);
    assert!((em.delta + 1.0).abs() < 1e-12);
    assert!(em.ci_high <= -1.0 + 1e-12);
    let nll = c.metrics.iter().find(|m| m.metric == "nll").unwrap();
    assert!(!nll.higher_is_better);
    assert_eq!(
        nll.ties, 5,
        "the reference NLL does not depend on generation"
    );
    assert_eq!(c.changed.len(), 5);
    let md = c.to_markdown(2);
    assert!(md.contains("| exact_match ↑ |"), "{md}");
    assert!(md.contains("3 more in the JSON report"), "{md}");

    let dir = tempfile::tempdir().unwrap();
    c.write(dir.path()).unwrap();
    write_records(&dir.path().join("a.jsonl"), &a.records).unwrap();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("comparison.json")).unwrap())
            .unwrap();
    assert_eq!(json["changed"].as_array().unwrap().len(), 5);
    let lines = std::fs::read_to_string(dir.path().join("a.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 5);

    // Reports over different examples cannot be compared.
    let fewer = evaluate("C", &model, &tok, None, &exs[..3], &short).unwrap();
    assert!(matches!(
        compare(&a, &fewer, CompareOptions::default()),
        Err(EvalError::Incomparable { .. })
    ));
    assert!(matches!(
        evaluate("D", &model, &tok, None, &[], &cfg),
        Err(EvalError::Empty { .. })
    ));
    // Records without a reference, or of a kind the harness cannot prompt with, are errors.
    use kiln_data::{Message, Role};
    let no_answer = Record::Conversation(vec![Message::new(Role::User, "hi")]);
    assert!(matches!(
        EvalExample::from_record(7, &no_answer),
        Err(EvalError::NoReference { index: 7 })
    ));
    assert!(matches!(
        EvalExample::from_record(0, &Record::Text("x".into())),
        Err(EvalError::InvalidOption { .. })
    ));
    // A chat prompt without a chat template is an error, not a silent raw prompt.
    let chat = Record::Conversation(vec![
        Message::new(Role::User, "hi"),
        Message::new(Role::Assistant, "hello"),
    ]);
    let ex = EvalExample::from_record(0, &chat).unwrap();
    assert!(matches!(
        evaluate("E", &model, &tok, None, &[ex], &cfg),
        Err(EvalError::InvalidOption { .. })
    ));
}
