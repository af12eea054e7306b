//! The KTO recipe: model and tokenizer → unpaired records (or preference pairs, unpaired as TRL
//! does) → LoRA adapter (new, or continued from a PEFT adapter) → [`KtoTrainer`] steps
//! (checkpointed, and resumed exactly) → `metrics.jsonl`, `tensorboard/`, `loss_curve.png` and the adapter in
//! PEFT's format. The `dpo` example calls [`run_kto`] for `--loss kto` and
//! `--loss apo_zero_unpaired`; the run's options are [`DpoRun`]'s.
use crate::dpo_run::DpoRun;
use crate::error::{Result, TrainError};
use crate::kto::{KtoStepMetrics, KtoTrainer};
use crate::model::CausalModel;
use crate::recipe::{Recipe, RecipeTrainer, pad_id};
use burn::tensor::Device;
use kiln_data::{FieldMap, PreferenceEncoder, UnpairedIds, read_unpaired, shuffled};
use kiln_models::Pretrained;
use std::path::{Path, PathBuf};

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
fn load_records(recipe: &Recipe<'_>, run: &DpoRun, lm: &Pretrained) -> Result<Vec<UnpairedIds>> {
    let template = recipe.chat_template(lm)?;
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

impl<M: CausalModel> RecipeTrainer for KtoTrainer<M> {
    type Metrics = KtoStepMetrics;
    fn steps_done(&self) -> usize {
        self.trainer.state.step
    }
    fn step(&mut self) -> Result<Option<KtoStepMetrics>> {
        KtoTrainer::step(self)
    }
    fn set_run_id(&mut self, id: &str) {
        self.trainer.set_run_id(id);
    }
    fn save_checkpoint(&mut self, root: &Path, keep: usize) -> Result<()> {
        KtoTrainer::save_checkpoint(self, root, keep).map(drop)
    }
    fn resume(self, device: &Device, dir: &Path) -> Result<Self> {
        KtoTrainer::resume(self, device, dir)
    }
}

/// Trains a LoRA adapter with KTO (`run.dpo.loss_type` `kto` or `apo_zero_unpaired`, the
/// weights `run.dpo.desirable_weight`/`undesirable_weight`) and writes
/// `output_dir/{metrics.jsonl, tensorboard/, loss_curve.png, adapter/}` (and `checkpoints/step-N/` every
/// `save_steps`); `on_step` sees each step's metrics. With `resume`, the run continues from its
/// newest checkpoint.
pub fn run_kto(run: &DpoRun, on_step: impl FnMut(&KtoStepMetrics)) -> Result<KtoSummary> {
    if !run.dpo.loss_type.unpaired() {
        return Err(TrainError::option(
            "loss_type",
            "run_kto trains kto or apo_zero_unpaired",
        ));
    }
    let recipe = Recipe::open(run.settings())?;
    let lm = recipe.load_model()?;
    let records = load_records(&recipe, run, &lm)?;
    let (n, desirable) = (records.len(), records.iter().filter(|r| r.label).count());
    let mut options = run.dpo.clone();
    options.pad_id = pad_id(&lm);
    let trainer = recipe.settings.policy_trainer(lm.model, &recipe.device)?;
    let kto = KtoTrainer::new(trainer, records, options, run.max_steps)?;
    let kto = recipe.train(kto, on_step)?;
    let (dropped, history) = (kto.dropped, kto.history.clone());
    let adapter_dir = recipe.save_adapter(&kto.trainer.into_model())?;
    Ok(KtoSummary {
        records: n,
        desirable,
        dropped,
        history,
        adapter_dir,
    })
}
