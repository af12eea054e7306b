//! Sequence classification and reward models on the decoder, as transformers'
//! `*ForSequenceClassification` (`GenericForSequenceClassification`, transformers 5.23): the
//! body's final normed hidden states go through a `score` linear head (`[num_labels, hidden]`,
//! no bias), read at one position per row: the rightmost token that is not `pad_token_id`
//! (whatever the padding side; position 0 when a row is all padding; the last position when
//! the model has no pad token, which transformers allows for one row only).
//!
//! The checkpoint layout is transformers': the body's keys (`model.*`) and `score.weight`, with
//! `num_labels` / `id2label` / `problem_type` in `config.json`. A new head on a causal LM is
//! drawn as transformers' `_init_weights` draws a new `nn.Linear`: N(0, `initializer_range`),
//! 0.02 by default. The body carries no language-model head (`lm_head` is not loaded).
use crate::config::DecoderConfig;
use crate::decoder::{CausalLm, DecoderInput};
use crate::error::{ModelError, Result};
use crate::load::build_causal_lm;
use crate::safetensors_source::SafetensorsWeights;
use crate::weights::WeightSource;
use burn::module::Module;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use kiln_cpu::QMatrix;
use kiln_lora::LoraLinear;
use kiln_lora::target::{AdapterTarget, OtherParam, OtherParamMut};
use std::path::Path;

/// The head's module path and its checkpoint key.
pub const SCORE: &str = "score";
const SCORE_KEY: &str = "score.weight";

/// transformers' `problem_type`: which loss the head's labels train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// MSE on the scores (`num_labels = 1`: on the one score per row).
    Regression,
    /// Cross-entropy over `num_labels` classes, one class id per row.
    SingleLabelClassification,
    /// Binary cross-entropy with logits per label.
    MultiLabelClassification,
}

impl std::str::FromStr for ProblemType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "regression" => Self::Regression,
            "single_label_classification" => Self::SingleLabelClassification,
            "multi_label_classification" => Self::MultiLabelClassification,
            _ => {
                return Err(ModelError::Input(format!(
                    "problem_type `{s}`: expected regression, single_label_classification or \
                     multi_label_classification"
                )));
            }
        })
    }
}

impl ProblemType {
    /// transformers' name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regression => "regression",
            Self::SingleLabelClassification => "single_label_classification",
            Self::MultiLabelClassification => "multi_label_classification",
        }
    }
}

/// The head's part of `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierConfig {
    pub num_labels: usize,
    /// Label names by id (`id2label`; `LABEL_i` when the config has none).
    pub id2label: Vec<String>,
    /// `None`: chosen from the labels as transformers does ([`Self::problem_type_for`]).
    pub problem_type: Option<ProblemType>,
    /// The token the pooled position skips (`pad_token_id`).
    pub pad_token_id: Option<u32>,
    /// The standard deviation of a new head's weights.
    pub initializer_range: f64,
}

impl ClassifierConfig {
    /// `num_labels` labels named `LABEL_i`, no pad token, transformers' default init (0.02).
    pub fn new(num_labels: usize) -> Self {
        Self {
            num_labels,
            id2label: (0..num_labels).map(|i| format!("LABEL_{i}")).collect(),
            problem_type: None,
            pad_token_id: None,
            initializer_range: 0.02,
        }
    }

    /// Reads `num_labels` (or the size of `id2label`; transformers' default is 2),
    /// `id2label`, `problem_type`, `pad_token_id` and `initializer_range` of `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let bad = |key: &str, reason: String| ModelError::Config {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        };
        let mut names = std::collections::BTreeMap::new();
        if let Some(map) = v.get("id2label").and_then(|m| m.as_object()) {
            for (k, name) in map {
                let id: usize = k
                    .parse()
                    .map_err(|_| bad("id2label", format!("key `{k}` is not a label id")))?;
                names.insert(id, name.as_str().unwrap_or_default().to_string());
            }
        }
        let num_labels = match v.get("num_labels").and_then(|n| n.as_u64()) {
            Some(n) => n as usize,
            None if !names.is_empty() => names.len(),
            None => 2,
        };
        if num_labels == 0 {
            return Err(bad("num_labels", "must be at least 1".into()));
        }
        if !names.is_empty()
            && (names.len() != num_labels || names.keys().last() != Some(&(num_labels - 1)))
        {
            return Err(bad(
                "id2label",
                format!("{} names for num_labels {num_labels}", names.len()),
            ));
        }
        let mut c = Self::new(num_labels);
        for (id, name) in names {
            c.id2label[id] = name;
        }
        c.problem_type = match v.get("problem_type").and_then(|p| p.as_str()) {
            Some(p) => Some(
                p.parse()
                    .map_err(|e: ModelError| bad("problem_type", e.to_string()))?,
            ),
            None => None,
        };
        c.pad_token_id = v
            .get("pad_token_id")
            .and_then(|p| p.as_u64())
            .map(|p| p as u32);
        if let Some(r) = v.get("initializer_range").and_then(|r| r.as_f64()) {
            c.initializer_range = r;
        }
        Ok(c)
    }

    /// The problem type: the configured one, else transformers' choice from the labels
    /// (`num_labels = 1`: regression; integer labels: single-label; else multi-label).
    pub fn problem_type_for(&self, integer_labels: bool) -> ProblemType {
        match (self.problem_type, self.num_labels, integer_labels) {
            (Some(p), _, _) => p,
            (None, 1, _) => ProblemType::Regression,
            (None, _, true) => ProblemType::SingleLabelClassification,
            (None, _, false) => ProblemType::MultiLabelClassification,
        }
    }
}

/// A decoder with a `score` head: `AutoModelForSequenceClassification`'s layout.
#[derive(Module, Debug)]
pub struct SequenceClassifier {
    /// The body (no `lm_head`).
    pub lm: CausalLm,
    /// `[hidden] → [num_labels]`, no bias; a [`LoraLinear`] so that PEFT's `modules_to_save`
    /// trains and saves it as any other module.
    pub score: LoraLinear,
    #[module(skip)]
    pub head: ClassifierConfig,
}

/// A checkpoint's weights without the head's (the body is built from the rest).
struct BodyWeights<'a>(&'a dyn WeightSource);

impl WeightSource for BodyWeights<'_> {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn names(&self) -> Vec<String> {
        let mut n = self.0.names();
        n.retain(|k| k != SCORE_KEY);
        n
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.shape(name)
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.0.load_f32(name)
    }
    fn dtype(&self, name: &str) -> Option<String> {
        self.0.dtype(name)
    }
    fn load_stored(&self, name: &str) -> Result<Option<QMatrix>> {
        self.0.load_stored(name)
    }
    fn release(&self, name: &str) {
        self.0.release(name)
    }
}

impl SequenceClassifier {
    /// A new head of `head.num_labels` labels on a causal LM, drawn N(0,
    /// `head.initializer_range`) from the device's RNG (seed it for a repeatable head). The
    /// language-model head is dropped.
    pub fn from_causal_lm(mut lm: CausalLm, mut head: ClassifierConfig) -> Self {
        let device = lm.device();
        let (d, n) = (lm.config.hidden_size, head.num_labels);
        let std = head.initializer_range;
        let w = Tensor::<2>::random([d, n], Distribution::Normal(0.0, std), &device);
        lm.lm_head = None;
        if head.pad_token_id.is_none() {
            head.pad_token_id = lm.config.pad_token_id;
        }
        Self {
            lm,
            score: LoraLinear::new(w, None),
            head,
        }
    }

    /// The head on `lm` from PyTorch-layout values `[num_labels, hidden]`.
    ///
    /// # Errors
    /// [`ModelError::ShapeMismatch`] naming `path` and `score.weight` when the values do not fit.
    pub fn with_score(
        mut lm: CausalLm,
        head: ClassifierConfig,
        score: Vec<f32>,
        path: &Path,
    ) -> Result<Self> {
        let (d, n) = (lm.config.hidden_size, head.num_labels);
        if score.len() != n * d {
            return Err(ModelError::ShapeMismatch {
                path: path.to_path_buf(),
                key: SCORE_KEY.into(),
                expected: vec![n, d],
                found: vec![score.len()],
            });
        }
        let device = lm.device();
        let w = Tensor::<2>::from_data(TensorData::new(score, [n, d]), &device).transpose();
        lm.lm_head = None;
        Ok(Self {
            lm,
            score: LoraLinear::new(w, None),
            head,
        })
    }

    /// Loads a `*ForSequenceClassification` checkpoint directory: `config.json` (the decoder's
    /// keys and the head's, see [`ClassifierConfig::from_file`]) and its safetensors with
    /// `score.weight`.
    ///
    /// # Errors
    /// [`ModelError::MissingWeights`] without `score.weight`, [`ModelError::ShapeMismatch`]
    /// when it is not `[num_labels, hidden]`, and the body's load errors.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let mut config = DecoderConfig::from_file(&config_path)?;
        let head = ClassifierConfig::from_file(&config_path)?;
        let weights = SafetensorsWeights::open(dir)?;
        let expected = vec![head.num_labels, config.hidden_size];
        match weights.shape(SCORE_KEY) {
            None => {
                return Err(ModelError::MissingWeights {
                    path: dir.to_path_buf(),
                    keys: vec![SCORE_KEY.into()],
                });
            }
            Some(found) if found != expected => {
                return Err(ModelError::ShapeMismatch {
                    path: dir.to_path_buf(),
                    key: SCORE_KEY.into(),
                    expected,
                    found,
                });
            }
            Some(_) => {}
        }
        let score = weights.load_f32(SCORE_KEY)?;
        // A classification checkpoint has no `lm_head`: build the body as a tied model so that
        // none is looked for (nothing here projects to the vocabulary).
        config.tie_word_embeddings = true;
        let lm = build_causal_lm(&config, &BodyWeights(&weights), device)?;
        Self::with_score(lm, head, score, dir)
    }

    /// The pooled position of each row (row-major index into `[b * t]`): the rightmost token
    /// that is not the pad token (0 when the row is all padding), or the last position when the
    /// model has no pad token.
    ///
    /// # Errors
    /// [`ModelError::Input`] for more than one row without a pad token, as transformers.
    pub fn pooled_rows(&self, input: &DecoderInput) -> Result<Vec<usize>> {
        let (b, t) = (input.batch, input.seq_len);
        if input.ids.len() != b * t || t == 0 {
            return Err(ModelError::Input(format!(
                "{} ids for batch {b} x seq_len {t}",
                input.ids.len()
            )));
        }
        let Some(pad) = self.head.pad_token_id else {
            if b != 1 {
                return Err(ModelError::Input(
                    "a batch of more than one row needs a pad token (pad_token_id)".into(),
                ));
            }
            return Ok(vec![t - 1]);
        };
        Ok((0..b)
            .map(|r| {
                let row = &input.ids[r * t..][..t];
                r * t + row.iter().rposition(|&id| id != pad).unwrap_or(0)
            })
            .collect())
    }

    /// The scores of each row at its pooled position.
    ///
    /// # Shapes
    /// - output: `[b, num_labels]`
    pub fn forward(&self, input: &DecoderInput) -> Result<Tensor<2>> {
        let rows = self.pooled_rows(input)?;
        self.forward_at(input, &rows)
    }

    /// The scores at the given `rows` of the final hidden state (a value model's score at
    /// every token, as TRL's PPO reads it).
    ///
    /// # Shapes
    /// - rows: `[m]`, row-major indices into `[b * t]`; output: `[m, num_labels]`
    ///
    /// # Errors
    /// [`ModelError::Input`] for a row outside `[b * t]`, and the decoder's errors.
    pub fn forward_at(&self, input: &DecoderInput, rows: &[usize]) -> Result<Tensor<2>> {
        let (b, t) = (input.batch, input.seq_len);
        if let Some(&r) = rows.iter().find(|&&r| r >= b * t) {
            return Err(ModelError::Input(format!(
                "score row {r} is outside batch {b} x seq_len {t}"
            )));
        }
        let hidden = self.lm.forward_hidden(input, None)?;
        let [b, t, d] = hidden.dims();
        let device = hidden.device();
        let m = rows.len();
        let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [m]), &device);
        let pooled = hidden.reshape([b * t, d]).select(0, index);
        Ok(self.score.forward(pooled))
    }

    /// [`Self::forward`]'s values on the host, row-major `[b * num_labels]`.
    pub fn scores(&self, input: &DecoderInput) -> Result<Vec<f32>> {
        let rows = self.pooled_rows(input)?;
        self.scores_at(input, &rows)
    }

    /// [`Self::forward_at`]'s values on the host, row-major `[m * num_labels]`.
    pub fn scores_at(&self, input: &DecoderInput, rows: &[usize]) -> Result<Vec<f32>> {
        self.forward_at(input, rows)?
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| ModelError::Backend {
                what: "scores".into(),
                reason: format!("{e:?}"),
            })
    }
}

/// The body's modules under their paths, then `score` (the output layer, which PEFT's
/// `all-linear` leaves out and `modules_to_save = ["score"]` trains in full).
impl AdapterTarget for SequenceClassifier {
    fn visit_linears(&self, f: &mut dyn FnMut(&str, &LoraLinear)) {
        self.lm.visit_linears(f);
        f(SCORE, &self.score);
    }

    fn visit_linears_mut(&mut self, f: &mut dyn FnMut(&str, &mut LoraLinear)) {
        self.lm.visit_linears_mut(f);
        f(SCORE, &mut self.score);
    }

    fn visit_other_params(&self, f: &mut dyn FnMut(&str, &str, OtherParam<'_>)) {
        self.lm.visit_other_params(f);
    }

    fn visit_other_params_mut(&mut self, f: &mut dyn FnMut(&str, &str, OtherParamMut<'_>)) {
        self.lm.visit_other_params_mut(f);
    }

    fn output_layer(&self) -> Option<&str> {
        Some(SCORE)
    }

    fn legacy_path_prefixes(&self) -> &[(&'static str, &'static str)] {
        self.lm.legacy_path_prefixes()
    }

    fn skipped_path_prefixes(&self) -> &[&'static str] {
        self.lm.skipped_path_prefixes()
    }
}
