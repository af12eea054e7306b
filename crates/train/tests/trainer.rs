//! Trainer invariants on the tiny Llama fixture: accumulation equivalence, exact resume, atomic
//! checkpoints, frozen parameters, NaN policy.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_train::{
    Batch, MicroOutcome, NonFinitePolicy, Shuffled, TrainError, Trainer, latest_checkpoint,
    list_checkpoints,
};
use kiln_train::{params_to_host, restore_params};

fn max_abs_diff(a: &kiln_train::HostParams, b: &kiln_train::HostParams) -> f32 {
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    a.tensors
        .iter()
        .flat_map(|(k, (_, _, x))| {
            let y = &b.tensors[k].2;
            x.iter().zip(y).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

fn trained(trainer: &Trainer<kiln_models::CausalLm>) -> kiln_train::HostParams {
    params_to_host(trainer.model(), true).unwrap()
}

#[test]
fn two_micro_batches_of_4_equal_one_batch_of_8() {
    let _g = serial();
    let model = tiny_lora(4, 0.0, 1);
    let big: Vec<Batch> = vec![batch(0..8, 12)];
    let small: Vec<Batch> = vec![batch(0..4, 12), batch(4..8, 12)];
    // The halves count different numbers of label tokens, so a per-micro-batch mean would differ.
    assert_ne!(small[0].label_tokens(), small[1].label_tokens());
    let mut one = Trainer::new(model.clone(), &device(), options(1, 1e-3, 4)).unwrap();
    let mut two = Trainer::new(model, &device(), options(2, 1e-3, 4)).unwrap();
    for _ in 0..3 {
        let (MicroOutcome::Stepped(a), MicroOutcome::Stepped(b)) =
            (one.step(&big).unwrap(), two.step(&small).unwrap())
        else {
            panic!("both trainers step")
        };
        assert!(
            (a.loss - b.loss).abs() < 1e-5,
            "loss {} vs {}",
            a.loss,
            b.loss
        );
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-5 * a.grad_norm.max(1.0));
    }
    let diff = max_abs_diff(&trained(&one), &trained(&two));
    assert!(diff < 1e-5, "weights differ by {diff}");
    // And the weights did move. (Outside autodiff burn reports no parameter as requiring a
    // gradient, so the start values are taken by the trained paths.)
    let after = trained(&one);
    let mut start = params_to_host(&tiny_lora(4, 0.0, 1), false).unwrap();
    start.tensors.retain(|k, _| after.tensors.contains_key(k));
    assert!(max_abs_diff(&start, &after) > 1e-4);
}

/// `steps` optimizer steps on `data`: each step's (loss, grad norm), and the trainer.
fn train(
    model: kiln_models::CausalLm,
    options: kiln_train::TrainerOptions,
    data: &Vec<Batch>,
    steps: usize,
) -> (Vec<(f64, f64)>, Trainer<kiln_models::CausalLm>) {
    let mut trainer = Trainer::new(model, &device(), options).unwrap();
    let losses = (0..steps)
        .map(|_| match trainer.step(data).unwrap() {
            MicroOutcome::Stepped(m) => (m.loss, m.grad_norm),
            other => panic!("{other:?}"),
        })
        .collect();
    (losses, trainer)
}

/// kiln's fused CPU backward and burn's autodiff train the same weights: LoRA (with gradient
/// accumulation, clipping and checkpointed layers) and full fine-tuning, three steps each.
#[test]
fn fused_backward_trains_like_autodiff() {
    let _g = serial();
    let data: Vec<Batch> = vec![batch(0..4, 12), batch(4..8, 12)];
    for (what, model, checkpoint) in [
        ("lora", tiny_lora(4, 0.0, 1), false),
        ("lora, checkpointed", tiny_lora(4, 0.0, 1), true),
        ("full", tiny_full(), false),
    ] {
        let run = |backward| {
            let mut o = options(2, 1e-3, 4);
            o.backward = backward;
            o.gradient_checkpointing = checkpoint;
            let (losses, trainer) = train(model.clone(), o, &data, 3);
            (losses, trained(&trainer), trainer.fused_micro_batches())
        };
        let (fused, fused_params, n) = run(kiln_train::BackwardPath::Fused);
        let (auto, auto_params, m) = run(kiln_train::BackwardPath::Autodiff);
        assert_eq!((n, m), (6, 0), "{what}: fused micro-batches");
        for ((lf, nf), (la, na)) in fused.iter().zip(&auto) {
            assert!(
                (lf - la).abs() < 1e-5 * la.max(1.0),
                "{what}: loss {lf} vs {la}"
            );
            assert!(
                (nf - na).abs() < 1e-4 * na.max(1.0),
                "{what}: grad norm {nf} vs {na}"
            );
        }
        // AdamW divides by the gradient's running RMS, so a gradient entry at rounding level
        // can move its weight by a visible fraction of lr (1e-3) on either path; a wrong
        // gradient moves weights by about lr per step.
        let diff = max_abs_diff(&fused_params, &auto_params);
        assert!(diff < 1e-4, "{what}: weights differ by {diff}");
    }
}

fn data() -> Shuffled<Vec<Batch>> {
    Shuffled::new((0..3).map(|i| batch(i * 2..i * 2 + 2, 10)).collect(), 11)
}

/// Runs to `n` steps, stopping after `stop_after` micro-batches, checkpointing, and resuming
/// from the latest checkpoint with a freshly built model.
fn interrupted(stop_after_micro: usize, n: usize) -> kiln_train::HostParams {
    let root = tempfile::tempdir().unwrap();
    let data = data();
    let mut t = Trainer::new(tiny_lora(4, 0.1, 3), &device(), options(2, 1e-2, n)).unwrap();
    for _ in 0..stop_after_micro {
        t.micro_step(&data).unwrap();
    }
    t.save_checkpoint(root.path(), 2).unwrap();
    drop(t);
    let dir = latest_checkpoint(root.path()).unwrap().unwrap();
    // A different adapter init: the checkpoint must overwrite it.
    let mut t =
        Trainer::resume(tiny_lora(4, 0.1, 99), &device(), options(2, 1e-2, n), &dir).unwrap();
    while t.state.step < n {
        t.step(&data).unwrap();
    }
    trained(&t)
}

/// The values' bits by path (parameter ids differ between independently built models).
fn bits(h: &kiln_train::HostParams) -> Vec<(String, Vec<u32>)> {
    h.tensors
        .iter()
        .map(|(k, (_, _, v))| (k.clone(), v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

#[test]
fn resume_is_bit_identical_including_mid_accumulation() {
    let _g = serial();
    let n = 4;
    let data = data();
    let mut t = Trainer::new(tiny_lora(4, 0.1, 3), &device(), options(2, 1e-2, n)).unwrap();
    while t.state.step < n {
        t.step(&data).unwrap();
    }
    let straight = trained(&t);
    // Between steps (after 2 steps), and between the two micro-batches of step 3.
    for stop in [4, 5] {
        let resumed = interrupted(stop, n);
        assert_eq!(
            max_abs_diff(&straight, &resumed),
            0.0,
            "stop after {stop} micro-batches"
        );
        assert!(
            bits(&straight) == bits(&resumed),
            "stop after {stop}: not bit-identical"
        );
    }
}

#[test]
fn crash_mid_write_leaves_previous_checkpoint_latest() {
    let _g = serial();
    let root = tempfile::tempdir().unwrap();
    let data: Vec<Batch> = vec![batch(0..2, 8)];
    let mut t = Trainer::new(tiny_lora(2, 0.0, 5), &device(), options(1, 1e-3, 10)).unwrap();
    t.step(&data).unwrap();
    let first = t.save_checkpoint(root.path(), 3).unwrap();
    t.step(&data).unwrap();
    // A crash while writing step 2: files partly written in the temporary directory.
    let tmp = root.path().join(".tmp-step-00000002");
    t.write_checkpoint_files(&tmp).unwrap();
    std::fs::remove_file(tmp.join("optimizer.bpk")).unwrap();
    assert_eq!(latest_checkpoint(root.path()).unwrap(), Some(first.clone()));
    let resumed = Trainer::resume(
        tiny_lora(2, 0.0, 5),
        &device(),
        options(1, 1e-3, 10),
        &first,
    )
    .unwrap();
    assert_eq!(resumed.state.step, 1);
    // A complete checkpoint without its optimizer file is refused with the file's name.
    let err =
        Trainer::resume(tiny_lora(2, 0.0, 5), &device(), options(1, 1e-3, 10), &tmp).unwrap_err();
    assert!(err.to_string().contains("optimizer.bpk"), "{err}");
    // Later saves replace the leftover and prune to keep_last.
    for _ in 0..3 {
        t.save_checkpoint(root.path(), 3).unwrap();
        t.step(&data).unwrap();
    }
    let names: Vec<String> = list_checkpoints(root.path())
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["step-00000002", "step-00000003", "step-00000004"]);
}

#[test]
fn only_trainable_params_change_and_get_optimizer_state() {
    let _g = serial();
    let model = tiny_lora(2, 0.0, 8);
    let before = params_to_host(&model, false).unwrap();
    let mut t = Trainer::new(model, &device(), options(1, 1e-2, 10)).unwrap();
    let data: Vec<Batch> = vec![batch(0..2, 8)];
    t.step(&data).unwrap();
    t.step(&data).unwrap();
    let trainable = t.trainable();
    // 2 layers x (q, v) x (A, B)
    assert_eq!(trainable.len(), 8);
    assert!(trainable.iter().all(|p| p.path.contains(".adapters.")));
    let after = params_to_host(t.model(), false).unwrap();
    for (k, (_, _, v)) in &before.tensors {
        let changed = *v != after.tensors[k].2;
        assert_eq!(changed, k.contains(".adapters."), "{k}");
    }
    // AdamW keeps two moments per trainable parameter and nothing for frozen ones.
    let dir = tempfile::tempdir().unwrap();
    t.write_checkpoint_files(dir.path()).unwrap();
    let record = burn::optim::OptimizerRecord::load(dir.path().join("optimizer.bpk")).unwrap();
    assert_eq!(record.len(), 2 * trainable.len());
}

#[test]
fn full_fine_tuning_trains_every_parameter() {
    let _g = serial();
    let model = burn::module::Module::set_require_grad(tiny_model(), true);
    let mut t = Trainer::new(model, &device(), options(1, 1e-3, 10)).unwrap();
    let n = t.trainable().len();
    assert_eq!(n, kiln_train::param_infos(t.model()).len());
    t.step(&vec![batch(0..2, 8)]).unwrap();
    t.step(&vec![batch(0..2, 8)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    t.write_checkpoint_files(dir.path()).unwrap();
    let record = burn::optim::OptimizerRecord::load(dir.path().join("optimizer.bpk")).unwrap();
    assert_eq!(record.len(), 2 * n);
}

#[test]
fn loss_decreases_on_a_fixed_batch() {
    let _g = serial();
    let data: Vec<Batch> = vec![batch(0..4, 16)];
    let mut t = Trainer::new(tiny_lora(8, 0.0, 2), &device(), options(1, 1e-2, 100)).unwrap();
    let mut losses = Vec::new();
    for _ in 0..6 {
        if let MicroOutcome::Stepped(m) = t.step(&data).unwrap() {
            losses.push(m.loss);
        }
    }
    // Step 1 has lr 0 (warmup); afterwards the loss must go down.
    assert_eq!(losses.len(), 6);
    assert!(losses[5] < losses[1] - 0.05, "{losses:?}");
}

fn poisoned() -> kiln_models::CausalLm {
    let model = tiny_lora(2, 0.0, 4);
    // All parameters: outside autodiff none reports requiring a gradient.
    let mut host = params_to_host(&model, false).unwrap();
    let (_, (_, _, v)) = host
        .tensors
        .iter_mut()
        .find(|(k, _)| k.contains(".adapters."))
        .unwrap();
    v[0] = f32::NAN;
    // Keep the ids the model has.
    restore_params(model, &host).unwrap()
}

#[test]
fn non_finite_loss_stops_with_a_checkpoint_or_skips() {
    let _g = serial();
    let data: Vec<Batch> = vec![batch(0..2, 8)];
    let root = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(poisoned(), &device(), options(1, 1e-3, 3)).unwrap();
    let fit = kiln_train::FitOptions {
        total_steps: 3,
        output_dir: root.path().to_path_buf(),
        eval_every: None,
        eval_max_batches: None,
        save_every: None,
        keep_last: 1,
        save_at_end: true,
    };
    match kiln_train::fit(&mut t, &data, None, &fit) {
        Err(TrainError::NonFinite {
            what,
            step,
            checkpoint: Some(dir),
            ..
        }) => {
            assert_eq!((what, step), ("loss", 1));
            assert!(dir.join("state.json").is_file());
            assert_eq!(latest_checkpoint(&fit.checkpoint_dir()).unwrap(), Some(dir));
        }
        other => panic!("expected a NaN stop, got {other:?}"),
    }
    let mut opts = options(1, 1e-3, 3);
    opts.on_non_finite = NonFinitePolicy::Skip;
    let mut t = Trainer::new(poisoned(), &device(), opts).unwrap();
    let before = params_to_host(t.model(), true).unwrap();
    assert!(matches!(
        t.step(&data).unwrap(),
        MicroOutcome::Skipped { step: 1, .. }
    ));
    assert_eq!(t.state.skipped_steps, 1);
    assert_eq!(t.state.step, 0);
    assert_eq!(t.state.position, 1);
    let after = params_to_host(t.model(), true).unwrap();
    // Untouched, bit for bit (NaN included).
    assert!(bits(&before) == bits(&after));
}

#[test]
fn a_step_without_label_tokens_is_an_error() {
    let _g = serial();
    let mut b = batch(0..2, 8);
    b.labels.iter_mut().for_each(|l| *l = -100);
    let mut t = Trainer::new(tiny_lora(2, 0.0, 4), &device(), options(1, 1e-3, 3)).unwrap();
    let err = t.step(&vec![b]).unwrap_err().to_string();
    assert!(err.contains("no label token"), "{err}");
    let frozen = burn::module::Module::set_require_grad(tiny_model(), false);
    let err = Trainer::new(frozen, &device(), options(1, 1e-3, 3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no parameter trains"), "{err}");
}

/// `precision = bf16` trains on the fused path (LoRA and full fine-tuning): the losses stay
/// within bf16 rounding of f32's and differ from them (the option is not ignored), and the
/// loss still falls.
#[test]
fn bf16_trains_close_to_f32() {
    let _g = serial();
    let data: Vec<Batch> = vec![batch(0..4, 12), batch(4..8, 12)];
    for (what, model) in [("lora", tiny_lora(4, 0.0, 1)), ("full", tiny_full())] {
        let run = |precision| {
            let mut o = options(2, 1e-3, 4);
            o.precision = Some(precision);
            let (steps, trainer) = train(model.clone(), o, &data, 4);
            let losses: Vec<f64> = steps.iter().map(|&(loss, _)| loss).collect();
            (losses, trainer.fused_micro_batches())
        };
        let (f32s, _) = run(kiln_train::Precision::F32);
        let (bf16s, n) = run(kiln_train::Precision::Bf16);
        assert_eq!(n, 8, "{what}: fused micro-batches");
        for (a, b) in f32s.iter().zip(&bf16s) {
            assert!((a - b).abs() < 1e-2 * a, "{what}: bf16 loss {b} vs f32 {a}");
            assert!(a != b, "{what}: bf16 gave f32's loss {a}");
        }
        assert!(bf16s[3] < bf16s[0], "{what}: {bf16s:?}");
    }
}

/// bf16 where the fused path does not run is a typed error naming the option, at
/// construction with `backward = autodiff` and at the first step for a model the fused path
/// does not cover (DoRA with dropout).
#[test]
fn bf16_without_the_fused_path_is_an_error() {
    let _g = serial();
    let mut o = options(1, 1e-3, 2);
    o.precision = Some(kiln_train::Precision::Bf16);
    o.backward = kiln_train::BackwardPath::Autodiff;
    let err = Trainer::new(tiny_lora(2, 0.0, 4), &device(), o.clone()).unwrap_err();
    assert!(
        matches!(&err, TrainError::Option { key, .. } if key == "precision"),
        "{err}"
    );
    o.backward = kiln_train::BackwardPath::Fused;
    let dora = {
        use burn::module::Module;
        let mut model = tiny_model().set_require_grad(false);
        let spec = kiln_lora::AdapterSpec {
            r: 2,
            alpha: 4.0,
            scale: 2.0,
            dropout: 0.1,
            init: kiln_lora::InitLoraWeights::Random,
            use_dora: true,
        };
        let q = model.model.layers[0]
            .self_attn
            .qkv
            .get_mut("q_proj")
            .unwrap();
        q.add_adapter("default", &spec).unwrap();
        q.set_active(&["default".to_string()]);
        model
    };
    let mut t = Trainer::new(dora.clone(), &device(), o.clone()).unwrap();
    let ids: Vec<u32> = (0..16).map(|i| (i * 7) % 250 + 1).collect();
    let labels = ids.iter().map(|&i| i as i64).collect();
    let b = Batch::new(kiln_models::DecoderInput::new(ids, 2, 8), labels).unwrap();
    let err = t.step(&vec![b.clone()]).unwrap_err();
    assert!(
        matches!(&err, TrainError::Option { key, .. } if key == "precision"),
        "{err}"
    );
    // With the precision unset (the default: bf16 where the CPU has bf16 units and the fused
    // path runs) the same model trains, in f32 through burn's autodiff.
    o.precision = None;
    let mut t = Trainer::new(dora, &device(), o).unwrap();
    assert!(t.step(&vec![b]).is_ok());
    assert_eq!(t.fused_micro_batches(), 0);
}
