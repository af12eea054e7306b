//! The KTO recipe: model and tokenizer → unpaired records (or preference pairs, unpaired as TRL
//! does) → LoRA adapter (new, or continued from a PEFT adapter) → [`KtoTrainer`] steps
//! (checkpointed, and resumed exactly) → `metrics.jsonl`, `tensorboard/`, `loss_curve.png` and the adapter in
//! PEFT's format. The `dpo` example calls [`run_kto`] for `--loss kto` and
//! `--loss apo_zero_unpaired`; the run's options are [`DpoRun`]'s.
use crate::dpo_run::{DpoRun, chat_template, logged_losses, policy_trainer, start};
use crate::error::{Result, TrainError};
use crate::export::Export;
use crate::kto::{KtoStepMetrics, KtoTrainer};
use crate::logging::JsonlLogger;
use crate::plot::write_loss_curve;
use kiln_data::{FieldMap, PreferenceEncoder, UnpairedIds, read_unpaired, shuffled};
use kiln_models::Pretrained;
use std::path::PathBuf;

/// What a KTO run did.
#[derive(Debug, Clone)]
pub struct KtoSummary {
    /// Records read (pairs count twice: unpaired).
    pub records: usize,
    /// Desirable records among them.
    pub desirable: usize,
    /// Records left out because their prompt alone fills `max_length`.
    pub dropped: usize,
    pub history: Vec<KtoStepMetrics>,
    pub adapter_dir: PathBuf,
}

/// Reads and tokenizes the records of `run.data` as TRL's `KTOTrainer` does, shuffled once with
/// `run.seed` when asked (TRL keeps the file order: its KL pairs need a fixed order, which a
/// shuffle done once keeps).
fn load_records(run: &DpoRun, lm: &Pretrained) -> Result<Vec<UnpairedIds>> {
    let template = chat_template(run, lm)?;
    let eos = lm.extras.eos_token.as_deref();
    let encoder = PreferenceEncoder::new(&lm.tokenizer, template.as_ref(), eos);
    let records = read_unpaired(&run.data, &FieldMap::default())?;
    let ids = records
        .iter()
        .map(|(at, r)| encoder.encode_unpaired(r, at))
        .collect::<kiln_data::Result<Vec<_>>>()?;
    Ok(if run.shuffle {
        shuffled(ids, run.seed)
    } else {
        ids
    })
}

/// Trains a LoRA adapter with KTO (`run.dpo.loss_type` `kto` or `apo_zero_unpaired`, the
/// weights `run.dpo.desirable_weight`/`undesirable_weight`) and writes
/// `output_dir/{metrics.jsonl, tensorboard/, loss_curve.png, adapter/}` (and `checkpoints/step-N/` every
/// `save_steps`); `on_step` sees each step's metrics. With `resume`, the run continues from its
/// newest checkpoint.
pub fn run_kto(run: &DpoRun, mut on_step: impl FnMut(&KtoStepMetrics)) -> Result<KtoSummary> {
    if !run.dpo.loss_type.unpaired() {
        return Err(TrainError::option(
            "loss_type",
            "run_kto trains kto or apo_zero_unpaired",
        ));
    }
    let (run_dir, device, lm) = start(run)?;
    let records = load_records(run, &lm)?;
    let (n, desirable) = (records.len(), records.iter().filter(|r| r.label).count());
    let mut options = run.dpo.clone();
    options.pad_id = lm.eos_token_ids().first().copied().unwrap_or(0);
    let trainer = policy_trainer(run, lm.model, &device)?;
    let mut kto = KtoTrainer::new(trainer, records, options, run.max_steps)?;
    let (root, metrics) = (
        run_dir.checkpoint_dir(),
        run.output_dir.join("metrics.jsonl"),
    );
    let log = match run_dir.latest_checkpoint()?.filter(|_| run.resume) {
        Some(dir) => {
            kto = kto.resume(&device, &dir)?;
            tracing::info!("resumed from {}", dir.display());
            JsonlLogger::open_at(&metrics, kto.trainer.state.step)?
        }
        None => JsonlLogger::open(&metrics)?,
    };
    let tensorboard = run.output_dir.join("tensorboard");
    let mut log = log.with_tensorboard(&tensorboard, kto.trainer.state.step)?;
    kto.trainer.set_run_id(run_dir.id());
    let every = run.save_steps.filter(|&e| e > 0);
    while kto.trainer.state.step < run.max_steps {
        if let Some(m) = kto.step()? {
            log.write("train", &m)?;
            on_step(&m);
            if every.is_some_and(|e| m.step % e == 0) {
                kto.save_checkpoint(&root, run.save_total_limit)?;
            }
        }
    }
    drop(log);
    let curve = logged_losses(&metrics)?;
    write_loss_curve(&run.output_dir.join("loss_curve.png"), &curve, &[])?;
    let (dropped, history) = (kto.dropped, kto.history.clone());
    let adapter_dir = run.output_dir.join("adapter");
    kto.trainer.into_model().export(&adapter_dir)?;
    Ok(KtoSummary {
        records: n,
        desirable,
        dropped,
        history,
        adapter_dir,
    })
}
