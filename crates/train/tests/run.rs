//! The run loop and the files people look at: metrics.jsonl, TensorBoard events, loss curve,
//! model card, adapter export, early stopping.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_train::read_tfrecords;
use kiln_train::{
    Batch, BatchSource, EarlyStopping, FitOptions, JsonlLogger, Progress, SftConfig,
    TensorBoardWriter, Trainer, TrainingMetadata, fit,
};
use serde_json::Value;

fn fit_options(dir: &std::path::Path, total: usize) -> FitOptions {
    FitOptions {
        total_steps: total,
        output_dir: dir.to_path_buf(),
        eval_every: Some(1),
        eval_max_batches: None,
        save_every: Some(2),
        keep_last: 1,
        save_at_end: true,
    }
}

#[test]
fn fit_writes_metrics_events_curve_and_card() {
    let _g = serial();
    let out = tempfile::tempdir().unwrap();
    let train: Vec<Batch> = vec![batch(0..2, 12), batch(2..4, 12)];
    let val: Vec<Batch> = vec![batch(4..6, 12)];
    let mut t = Trainer::new(tiny_lora(4, 0.0, 1), &device(), options(1, 1e-2, 3)).unwrap();
    t.add_callback(Box::new(
        JsonlLogger::open(&out.path().join("metrics.jsonl")).unwrap(),
    ));
    let tb = TensorBoardWriter::create(&out.path().join("tensorboard")).unwrap();
    let tb_path = tb.path().to_path_buf();
    t.add_callback(Box::new(tb));
    t.add_callback(Box::new(Progress::hidden()));
    let summary = fit(
        &mut t,
        &train,
        Some(&val as &dyn BatchSource),
        &fit_options(out.path(), 3),
    )
    .unwrap();
    assert_eq!(summary.steps, 3);
    assert!(!summary.stopped_early);

    let text = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train_lines: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "train").collect();
    let eval_lines: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "eval").collect();
    assert_eq!(train_lines.len(), 3);
    assert_eq!(eval_lines.len(), 3);
    for (i, l) in train_lines.iter().enumerate() {
        assert_eq!(l["step"], i + 1);
        for k in ["loss", "lr", "grad_norm", "tokens_per_s", "elapsed"] {
            assert!(l[k].as_f64().unwrap().is_finite(), "{k}: {l}");
        }
        assert!(l["tokens"].as_u64().unwrap() > 0);
    }
    let ppl = eval_lines[2]["val_perplexity"].as_f64().unwrap();
    let loss = eval_lines[2]["val_loss"].as_f64().unwrap();
    assert!((ppl - loss.exp()).abs() < 1e-9 * ppl);
    assert_eq!(summary.final_eval.as_ref().unwrap().val_loss, loss);

    // TensorBoard: version record + one per step + one per eval, all CRCs valid.
    let records = read_tfrecords(&std::fs::read(&tb_path).unwrap()).unwrap();
    assert_eq!(records.len(), 1 + 3 + 3);
    assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
    assert!(records[1].windows(10).any(|w| w == b"train/loss"));
    // For tools/read_tensorboard.py: KILN_TB_OUT=DIR keeps a copy of the event file.
    if let Ok(keep) = std::env::var("KILN_TB_OUT") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(
            &tb_path,
            std::path::Path::new(&keep).join(tb_path.file_name().unwrap()),
        )
        .unwrap();
    }

    // One checkpoint kept (keep_last 1): the final one.
    let ckpts = kiln_train::list_checkpoints(&out.path().join("checkpoints")).unwrap();
    assert_eq!(ckpts.len(), 1);
    assert!(ckpts[0].ends_with("step-00000003"));
    assert!(out.path().join("loss_curve.png").is_file());

    let mut config = SftConfig::new("fixtures/tiny/llama");
    config.max_steps = Some(3);
    let mut meta = TrainingMetadata::new(&config, &summary);
    meta.train_examples = 4;
    meta.write(out.path()).unwrap();
    let card = std::fs::read_to_string(out.path().join("README.md")).unwrap();
    // No Hub id known for a local directory: no `base_model:` front matter (the Hub rejects a
    // path there), the file named in the text.
    assert!(!card.contains("base_model:"), "{card}");
    assert!(
        card.contains("Base model file: `fixtures/tiny/llama`"),
        "{card}"
    );
    config.base_model_id = Some("HuggingFaceTB/SmolLM2-135M".into());
    let mut with_id = TrainingMetadata::new(&config, &summary);
    with_id.evaluation.push(kiln_train::EvalRow {
        metric: "exact match".into(),
        before: Some(0.35),
        after: 0.65,
    });
    let card2 = with_id.model_card();
    assert!(
        card2.starts_with("---\nbase_model: HuggingFaceTB/SmolLM2-135M\n"),
        "{card2}"
    );
    assert!(
        card2.contains("| exact match | 0.3500 | 0.6500 |"),
        "{card2}"
    );
    assert!(card.contains("validation loss"));
    let back: TrainingMetadata = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("training_metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(back, meta);
}

#[test]
fn early_stopping_stops_when_validation_loss_stops_improving() {
    let _g = serial();
    let out = tempfile::tempdir().unwrap();
    // Training on data unrelated to the validation batch at a large lr makes it worse.
    let train: Vec<Batch> = vec![batch(0..2, 12)];
    let val: Vec<Batch> = vec![batch(7..9, 12)];
    let mut opts = options(1, 0.5, 20);
    opts.early_stopping = Some(EarlyStopping {
        patience: 1,
        min_delta: 10.0,
    });
    let mut t = Trainer::new(tiny_lora(4, 0.0, 1), &device(), opts).unwrap();
    let summary = fit(
        &mut t,
        &train,
        Some(&val as &dyn BatchSource),
        &fit_options(out.path(), 20),
    )
    .unwrap();
    // With min_delta 10 no evaluation counts as an improvement after the first.
    assert!(summary.stopped_early);
    assert_eq!(summary.steps, 2);
}

#[test]
fn generation_metrics_at_the_end_use_the_trained_model() {
    use kiln_data::Record;
    use kiln_eval::{EvalExample, EvalMetric, HarnessConfig, evaluate};
    use kiln_train::GenerationEvalCallback;
    let _g = serial();
    let out = tempfile::tempdir().unwrap();
    let tok = kiln_data::tokenizers::Tokenizer::from_file(fixture("eval/tokenizer.json")).unwrap();
    let records: Vec<Record> = ["The capital of France is", "A cat sat on the", "Rust is"]
        .iter()
        .map(|p| Record::PromptCompletion {
            prompt: (*p).into(),
            completion: " Paris".into(),
        })
        .collect();
    let mut cfg = HarnessConfig {
        metrics: EvalMetric::parse_list("exact_match,rouge,perplexity").unwrap(),
        progress: false,
        ..Default::default()
    };
    cfg.generation.max_new_tokens = 4;
    let train: Vec<Batch> = vec![batch(0..2, 12)];
    let mut t = Trainer::new(tiny_lora(4, 0.0, 1), &device(), options(1, 5e-2, 2)).unwrap();
    t.add_callback(Box::new(
        JsonlLogger::open(&out.path().join("metrics.jsonl")).unwrap(),
    ));
    t.add_callback(Box::new(
        GenerationEvalCallback::new(
            &records,
            Some(2),
            tok.clone(),
            None,
            cfg.clone(),
            out.path().to_path_buf(),
        )
        .unwrap(),
    ));
    let mut opts = fit_options(out.path(), 2);
    opts.eval_every = None;
    fit(&mut t, &train, None, &opts).unwrap();

    let text = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let line: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["kind"] == "generation_eval")
        .unwrap();
    assert_eq!(line["step"], 2);
    assert_eq!(line["n"], 2);
    // The callback saw the trained weights: its perplexity is the trained model's, not the base's.
    use burn::module::Module;
    let trained = t.into_model().valid();
    let exs: Vec<EvalExample> = records[..2]
        .iter()
        .enumerate()
        .map(|(i, r)| EvalExample::from_record(i, r).unwrap())
        .collect();
    let direct = evaluate("x", &trained, &tok, None, &exs, &cfg).unwrap();
    let base = evaluate("base", &tiny_lora(4, 0.0, 1), &tok, None, &exs, &cfg).unwrap();
    let ppl = line["perplexity"].as_f64().unwrap();
    assert!((ppl - direct.corpus["perplexity"]).abs() < 1e-9 * ppl);
    assert!((ppl - base.corpus["perplexity"]).abs() > 1e-6 * ppl);
    let records_file = std::fs::read_to_string(out.path().join("eval_generation.jsonl")).unwrap();
    assert_eq!(records_file.lines().count(), 2);
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("eval_generation.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["corpus"]["exact_match"], line["exact_match"]);
}

#[test]
fn a_resumed_run_drops_the_metrics_written_after_its_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("metrics.jsonl");
    let mut text = String::new();
    for step in 1..=5 {
        text += &format!("{{\"kind\":\"train\",\"step\":{step},\"loss\":1.0}}\n");
        if step % 2 == 0 {
            text += &format!("{{\"kind\":\"eval\",\"step\":{step},\"val_loss\":2.0}}\n");
        }
    }
    text += "not json: kept\n";
    std::fs::write(&path, &text).unwrap();
    // Resumed from the checkpoint of step 3: steps 4 and 5 are gone, the rest untouched.
    drop(JsonlLogger::open_at(&path, 3).unwrap());
    let kept = std::fs::read_to_string(&path).unwrap();
    let steps: Vec<u64> = kept
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 2, 3]);
    assert!(kept.ends_with("not json: kept\n"), "{kept}");
    // Nothing later: the file is left as it is.
    drop(JsonlLogger::open_at(&path, 9).unwrap());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);

    // TensorBoard: the resumed run's file starts with a restart marker at step 4
    // (Event.step = 4, session_log { status: START }); a new run's does not.
    let tb = TensorBoardWriter::create_at(&out.path().join("tb"), 3).unwrap();
    let tb_path = tb.path().to_path_buf();
    drop(tb);
    let records = read_tfrecords(&std::fs::read(&tb_path).unwrap()).unwrap();
    assert_eq!(records.len(), 2);
    let marker = &records[1];
    assert!(
        marker.windows(2).any(|w| w == [0x10, 4]),
        "step 4: {marker:?}"
    );
    assert!(marker.ends_with(&[0x3a, 0x02, 0x08, 0x01]), "{marker:?}");
    let fresh = TensorBoardWriter::create_at(&out.path().join("tb2"), 0).unwrap();
    let fresh_path = fresh.path().to_path_buf();
    drop(fresh);
    assert_eq!(
        read_tfrecords(&std::fs::read(fresh_path).unwrap())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_conversation_without_an_assistant_turn_names_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    let good = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let bad = r#"{"messages": [{"role": "user", "content": "no answer"}]}"#;
    std::fs::write(&path, format!("{good}\n{good}\n{bad}\n{good}\n")).unwrap();
    let options: kiln_train::DataOptions =
        serde_json::from_value(serde_json::json!({ "train": [path] })).unwrap();
    let tok = kiln_data::tokenizers::Tokenizer::from_file(fixture("eval/tokenizer.json")).unwrap();
    let template = kiln_data::ChatTemplate::alpaca(None).unwrap();
    let err = kiln_train::prepare_data(&options, 1, 0, &tok, Some(&template), 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:3", path.display())) && err.contains("no assistant message"),
        "{err}"
    );
}
