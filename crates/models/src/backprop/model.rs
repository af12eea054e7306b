//! The whole decoder's host forward and backward: embedding, layers, final norm and loss.

use super::attn::Mask;
use super::layer::{HostLayer, LayerInputs, Saved, add_norm_grad};
use super::ops::{Norm, RopeTables};
use super::softcap;
use crate::config::Activation;
use crate::decoder::{CausalLm, DecoderInput};
use crate::error::{ModelError, Result};
use crate::loss::IGNORE_INDEX;
use crate::prepare::{Prepared, RotaryTables};
use burn::module::ParamId;
use kiln_cpu::Grads;
use kiln_cpu::Precision;
use kiln_cpu::QMatrix;
use kiln_cpu::bf16::{PackedWeight, matmul_bf16_packed};
use kiln_cpu::fastexp::{exp, sum};
use kiln_cpu::host::Storage;
use kiln_cpu::{MatMut, MatRef, Threads, matmul, matmul_in};
use kiln_lora::BaseWeight;
use kiln_lora::backprop::{HostLinear, LinearSaved};
use ndarray::{ArrayView, IxDyn};
use rayon::prelude::*;
use std::sync::Arc;

/// Counted rows per chunk of logits (`[CHUNK, vocab]` at a time).
const LOGIT_CHUNK: usize = 128;

/// What the head computes after the decoder's forward pass.
pub(super) enum HeadLoss<'a> {
    /// The summed NLL of the counted labels; gradients of `sum / normaliser`.
    Nll { normaliser: f64 },
    /// A loss of the counted labels' log-probabilities: given them (in the order of the
    /// labels), it returns the loss and its derivative by each.
    Logp(LogpLoss<'a>),
    /// The counted labels' log-probabilities only: no backward.
    LogpOnly,
    /// A sequence-classification head read at `rows` of the final normed hidden state: the
    /// loss gets the scores (`[rows, num_labels]`, row-major) and returns its value and its
    /// derivative by each score; the head's gradient and `∂L/∂hidden` follow.
    Score {
        head: &'a HostLinear,
        rows: &'a [usize],
        loss: LogpLoss<'a>,
    },
}

/// What the head pass leaves for the decoder's backward.
enum HeadPass {
    /// Log-probabilities only ([`HeadLoss::LogpOnly`]): no backward.
    Forward(Vec<f32>),
    /// The loss, the head's outputs (log-probabilities or scores) and `∂L/∂hidden`.
    Backward {
        loss: f64,
        outputs: Vec<f32>,
        dhidden: Vec<f32>,
    },
}

/// See [`HeadLoss::Logp`].
pub(super) type LogpLoss<'a> = Box<dyn FnOnce(&[f32]) -> (f64, Vec<f32>) + 'a>;

/// What [`HostModel::run`] returns.
pub(super) struct RunOut {
    /// The summed NLL ([`HeadLoss::Nll`]), the loss's value ([`HeadLoss::Logp`],
    /// [`HeadLoss::Score`]) or 0.
    pub loss: f64,
    /// Counted labels.
    pub tokens: usize,
    /// Their log-probabilities (empty for [`HeadLoss::Nll`]); the scores for
    /// [`HeadLoss::Score`].
    pub logps: Vec<f32>,
    pub grads: Grads,
}

/// The embedding table as the host passes read it.
enum HostTable {
    /// f32, read in place.
    Dense(Storage),
    /// In its storage format (frozen), dequantized a tile at a time.
    Frozen(Arc<QMatrix>),
}

/// The model's weights on the host for one call.
pub(super) struct HostModel {
    layers: Vec<HostLayer>,
    final_norm: Norm,
    final_id: Option<ParamId>,
    /// `[vocab, hidden]`, read in place.
    embed: HostTable,
    embed_id: Option<ParamId>,
    /// bf16 with a dense tied head: the embedding packed for the bf16 kernel (for the run when
    /// it is frozen, see `kiln_cpu::packed`; per call when it trains).
    embed_packed: Option<Arc<PackedWeight>>,
    head: Option<HostLinear>,
    embed_scale: Option<f32>,
    /// Gemma: `cap · tanh(logits / cap)` before the loss.
    final_softcap: Option<f32>,
    /// transformers' `nn.Embedding(padding_idx = pad_token_id)`: this row gets no gradient
    /// from the lookup (a tied head's product still gives it one).
    pad_token: Option<u32>,
    precision: Precision,
}

impl HostModel {
    pub fn new(lm: &CausalLm, input: &DecoderInput, precision: Precision) -> Option<Self> {
        let c = &lm.config;
        // Exact GELU (no family here uses it) has no host kernel.
        if matches!(c.activation, Activation::Gelu) {
            return None;
        }
        let (b, t) = (input.batch, input.seq_len);
        let layers = lm
            .model
            .layers
            .iter()
            .map(|l| HostLayer::new(l, b, t, c.activation, precision))
            .collect::<Option<Vec<_>>>()?;
        let (scale, eps) = (
            kiln_cpu::host::to_vec(&lm.model.norm.weight.val())?,
            lm.model.norm.eps() as f32,
        );
        let offset = if lm.model.norm.unit_offset() {
            1.0
        } else {
            0.0
        };
        let head = match &lm.lm_head {
            // The loss projects the counted rows in chunks; burn draws one mask for all of them.
            Some(h) => Some(
                HostLinear::new(h)
                    .filter(|h| !h.has_dropout())?
                    .with_precision(precision),
            ),
            None => None,
        };
        let e = &lm.model.embed_tokens;
        let embed = match e {
            BaseWeight::Dense(p) => HostTable::Dense(Storage::values(&p.val())?),
            BaseWeight::Frozen(f) => HostTable::Frozen(f.shared()),
        };
        let embed_packed = match (&embed, e) {
            (HostTable::Dense(t), BaseWeight::Dense(p))
                if precision == Precision::Bf16 && head.is_none() =>
            {
                Some(match e.trained_id() {
                    None => kiln_cpu::packed::frozen(p.id, t),
                    Some(_) => Arc::new(PackedWeight::default()),
                })
            }
            _ => None,
        };
        let w = &lm.model.norm.weight;
        Some(Self {
            layers,
            final_norm: Norm {
                scale: scale.iter().map(|w| w + offset).collect(),
                eps,
            },
            final_id: w.is_require_grad().then_some(w.id),
            embed,
            embed_id: e.trained_id(),
            embed_packed,
            pad_token: c.pad_token_id,
            head,
            embed_scale: c.embed_scale,
            final_softcap: c.final_softcap.map(|c| c as f32),
            precision,
        })
    }

    /// The decoder's forward, the head's loss (`head`) and, unless `head` asks for the
    /// log-probabilities only, the backward into every parameter that trains.
    pub fn run(
        &self,
        lm: &CausalLm,
        input: &DecoderInput,
        labels: &[i64],
        head: HeadLoss<'_>,
        checkpoint: bool,
    ) -> Result<RunOut> {
        let c = &lm.config;
        // Checks the input, as the burn path does.
        let prepared = Prepared::new(lm, input, None)?;
        let (b, t, d) = (input.batch, input.seq_len, c.hidden_size);
        if labels.len() != b * t {
            return Err(ModelError::Input(format!(
                "labels have {} entries, expected batch {b} x seq_len {t}",
                labels.len()
            )));
        }
        let view = HeadView::new(self);
        let counted = counted_labels(labels, b, t, view.vocab)?;
        let host_inputs = HostInputs::new(lm, prepared);
        let inputs = host_inputs.inputs();
        let backward = !matches!(head, HeadLoss::LogpOnly);

        let mut grads = Grads::default();
        let mut x = self.embed_rows(&input.ids, d);
        let mut saved: Vec<Saved> = Vec::with_capacity(self.layers.len());
        let mut kept = Vec::new();
        for (layer, inp) in self.layers.iter().zip(&inputs) {
            let (out, s) = layer.forward(x, inp, None);
            match (backward, checkpoint) {
                (false, _) => {}
                (true, true) => kept.push(HostLayer::checkpoint(s)),
                (true, false) => saved.push(s),
            }
            x = out;
        }
        let (hidden, rstd) = self.final_norm.forward(&x);
        let tokens = counted.len();
        let (loss, logps, dhidden) =
            match self.head_pass(&view, &hidden, &counted, head, &mut grads)? {
                HeadPass::Forward(logps) => {
                    return Ok(RunOut {
                        loss: 0.0,
                        tokens,
                        logps,
                        grads,
                    });
                }
                HeadPass::Backward {
                    loss,
                    outputs,
                    dhidden,
                } => (loss, outputs, dhidden),
            };
        let mut dx = vec![0f32; x.len()];
        let dw = self
            .final_norm
            .backward(&x, &rstd, &dhidden, &mut dx, self.final_id.is_some());
        add_norm_grad(&mut grads, self.final_id, dw);
        drop((x, hidden, dhidden));
        for (i, (layer, inp)) in self.layers.iter().zip(&inputs).enumerate().rev() {
            let s = match kept.pop() {
                Some((x, masks)) if checkpoint => layer.forward(x, inp, Some(&masks)).1,
                _ => saved.pop().unwrap_or_else(|| {
                    panic!("layer {i}: activations are saved when not checkpointing")
                }),
            };
            dx = layer.backward(&s, dx, inp, &mut grads);
        }
        self.embed_backward(&input.ids, &dx, d, &mut grads);
        Ok(RunOut {
            loss,
            tokens,
            logps,
            grads,
        })
    }

    /// The head's forward, loss and backward down to the final hidden state (`[b·t, d]`).
    fn head_pass(
        &self,
        view: &HeadView<'_>,
        hidden: &[f32],
        counted: &[(usize, usize)],
        head: HeadLoss<'_>,
        grads: &mut Grads,
    ) -> Result<HeadPass> {
        let d = self.final_norm.scale.len();
        let tokens = counted.len();
        // Per counted label, the factor w of d loss / d logits = w · (softmax - onehot).
        let (loss, outputs, weights) = match head {
            HeadLoss::Nll { normaliser } => {
                (None, Vec::new(), vec![(1.0 / normaliser) as f32; tokens])
            }
            HeadLoss::LogpOnly => return Ok(HeadPass::Forward(view.logps(hidden, counted, d))),
            HeadLoss::Logp(f) => {
                let logps = view.logps(hidden, counted, d);
                let (loss, g) = f(&logps);
                if g.len() != tokens {
                    return Err(ModelError::Input(format!(
                        "the loss gave {} gradients for {tokens} counted labels",
                        g.len()
                    )));
                }
                (Some(loss), logps, g.iter().map(|g| -g).collect())
            }
            HeadLoss::Score { head, rows, loss } => {
                return self.score_pass(head, hidden, rows, loss, grads);
            }
        };
        let (nll, dhidden) = view.loss_backward(hidden, counted, &weights, d, grads);
        Ok(HeadPass::Backward {
            loss: loss.unwrap_or(nll),
            outputs,
            dhidden,
        })
    }

    /// [`HeadLoss::Score`]: the head on the pooled rows (rounded to the precision, as the
    /// head's product reads them), the loss of its scores, and the head's backward.
    ///
    /// # Shapes
    /// - hidden: `[b·t, d]`; scores `[rows, num_labels]`; dhidden `[b·t, d]` (zero off `rows`)
    fn score_pass(
        &self,
        head: &HostLinear,
        hidden: &[f32],
        rows: &[usize],
        loss: LogpLoss<'_>,
        grads: &mut Grads,
    ) -> Result<HeadPass> {
        let (m, d) = (rows.len(), head.d_in);
        let mut h = vec![0f32; m * d];
        for (dst, &r) in h.chunks_exact_mut(d).zip(rows) {
            dst.copy_from_slice(&hidden[r * d..][..d]);
        }
        self.precision.round(&mut h);
        let (mut scores, saved) = head.forward(&h, m);
        self.precision.round(&mut scores);
        let (value, dscores) = loss(&scores);
        if dscores.len() != scores.len() {
            return Err(ModelError::Input(format!(
                "the loss gave {} gradients for {} scores",
                dscores.len(),
                scores.len()
            )));
        }
        let mut dh = vec![0f32; m * d];
        head.backward(&h, &saved, &dscores, m, &mut dh, grads);
        let mut dhidden = vec![0f32; hidden.len()];
        for (src, &r) in dh.chunks_exact(d).zip(rows) {
            let dst = &mut dhidden[r * d..][..d];
            dst.iter_mut().zip(src).for_each(|(g, s)| *g += s);
        }
        Ok(HeadPass::Backward {
            loss: value,
            outputs: scores,
            dhidden,
        })
    }

    /// Adds the lookup's gradient `dx` (`[ids, d]`) to a trained dense embedding's.
    fn embed_backward(&self, ids: &[u32], dx: &[f32], d: usize, grads: &mut Grads) {
        if let (Some(id), HostTable::Dense(embed)) = (self.embed_id, &self.embed) {
            let vocab = embed.view().shape()[0];
            let de = grads.slot(id, &[vocab, d]);
            let scale = self.embed_scale.unwrap_or(1.0);
            for (&tok, row) in ids.iter().zip(dx.chunks_exact(d)) {
                if Some(tok) == self.pad_token {
                    continue;
                }
                let dst = &mut de[tok as usize * d..][..d];
                dst.iter_mut().zip(row).for_each(|(g, r)| *g += r * scale);
            }
        }
    }

    /// Embedding rows of `ids` (times the embedding scale), `[ids, d]`.
    fn embed_rows(&self, ids: &[u32], d: usize) -> Vec<f32> {
        let scale = self.embed_scale.unwrap_or(1.0);
        let mut x = vec![0f32; ids.len() * d];
        let ev = match &self.embed {
            HostTable::Dense(e) => e.view(),
            HostTable::Frozen(q) => {
                q.gather_rows(ids, &mut x);
                if scale != 1.0 {
                    x.iter_mut().for_each(|v| *v *= scale);
                }
                return x;
            }
        };
        for (&id, row) in ids.iter().zip(x.chunks_exact_mut(d)) {
            let src = ev.index_axis(ndarray::Axis(0), id as usize);
            row.iter_mut()
                .zip(src.iter())
                .for_each(|(x, e)| *x = e * scale);
        }
        x
    }
}

/// The masks and RoPE tables of one call in the host kernels' form: the shared input
/// preparation ([`Prepared`], the one `forward_hidden` uses) with its buffers moved, not
/// copied.
struct HostInputs {
    masks: Vec<Mask>,
    global: RopeTables,
    local: Option<RopeTables>,
    /// Per layer: its mask's index and whether it takes `local`.
    slots: Vec<(usize, bool)>,
}

impl HostInputs {
    fn new(lm: &CausalLm, prepared: Prepared) -> Self {
        let (b, t) = (prepared.batch, prepared.queries);
        let slots = prepared.layer_slots(&lm.config.layer_attention);
        let tables = |r: RotaryTables| RopeTables {
            cos: r.cos,
            sin: r.sin,
            dim: r.dim,
        };
        Self {
            masks: prepared
                .masks
                .into_iter()
                .map(|(_, m)| Mask::new(m, b, t))
                .collect(),
            global: tables(prepared.global),
            local: prepared.local.map(tables),
            slots,
        }
    }

    /// Each layer's mask and RoPE tables.
    fn inputs(&self) -> Vec<LayerInputs<'_>> {
        self.slots
            .iter()
            .map(|&(mask, local)| LayerInputs {
                mask: &self.masks[mask],
                rope: match (&self.local, local) {
                    (Some(l), true) => l,
                    _ => &self.global,
                },
            })
            .collect()
    }
}

/// (row of the hidden state, target) of each counted label, in the order of `labels`
/// (row-major), as `causal_lm_loss_sum_hidden` shifts them.
fn counted_labels(labels: &[i64], b: usize, t: usize, vocab: usize) -> Result<Vec<(usize, usize)>> {
    let mut counted = Vec::new();
    for r in 0..b {
        for i in 1..t {
            let l = labels[r * t + i];
            if l == IGNORE_INDEX {
                continue;
            }
            if l < 0 || l as usize >= vocab {
                return Err(ModelError::Input(format!(
                    "label {l} at row {r}, position {i} is outside the vocabulary of {vocab}"
                )));
            }
            counted.push((r * t + i - 1, l as usize));
        }
    }
    Ok(counted)
}

/// The output head (a separate linear layer, or the tied embedding dense, packed or frozen) as
/// the loss passes read it.
struct HeadView<'a> {
    model: &'a HostModel,
    /// The tied table when dense, `[vocab, hidden]`.
    ev: Option<ArrayView<'a, f32, IxDyn>>,
    /// The tied table when frozen.
    frozen: Option<&'a Arc<QMatrix>>,
    vocab: usize,
}

impl<'a> HeadView<'a> {
    fn new(model: &'a HostModel) -> Self {
        let (ev, frozen) = match &model.embed {
            HostTable::Dense(e) => (Some(e.view()), None),
            HostTable::Frozen(q) => (None, Some(q)),
        };
        let vocab = match (&model.head, &ev, frozen) {
            (Some(h), _, _) => h.d_out,
            (None, Some(ev), _) => ev.shape()[0],
            (None, None, Some(q)) => q.rows(),
            (None, None, None) => unreachable!("a table is dense or frozen"),
        };
        Self {
            model,
            ev,
            frozen,
            vocab,
        }
    }

    /// The rows `chunk` of `hidden`, rounded to the head's precision, `[m, d]`.
    fn gather(&self, hidden: &[f32], chunk: &[(usize, usize)], d: usize) -> Vec<f32> {
        let mut h = vec![0f32; chunk.len() * d];
        for (dst, &(row, _)) in h.chunks_exact_mut(d).zip(chunk) {
            dst.copy_from_slice(&hidden[row * d..][..d]);
        }
        self.model.precision.round(&mut h);
        h
    }

    /// The logits of `m` rows `h` (rounded to the precision, as transformers upcasts bf16
    /// logits for the loss) and what a separate head saves for its backward. `buf` is reused
    /// by the tied head (its product overwrites it).
    ///
    /// # Shapes
    /// - h: `[m, d]`; output `[m, vocab]`
    fn logits(&self, h: &[f32], m: usize, buf: Vec<f32>) -> (Vec<f32>, Option<LinearSaved>) {
        let model = self.model;
        let embed = self.ev.as_ref().and_then(MatRef::of_view);
        let (mut y, saved) = match &model.head {
            Some(head) => {
                let (y, s) = head.forward(h, m);
                (y, Some(s))
            }
            None => {
                let (vocab, d) = (self.vocab, h.len() / m.max(1));
                let mut y = buf;
                y.resize(m * vocab, 0.0);
                let hm = MatRef::new(h, m, d);
                let dst = MatMut::new(&mut y, m, vocab);
                // In bf16 a dense tied head multiplies by the embedding packed into bf16 (once
                // per run when frozen); a frozen table rounds its own tiles.
                match (model.embed_packed.as_deref().zip(embed), embed) {
                    (_, None) => {
                        let q = self.frozen.expect("tied table");
                        q.matmul_t(h, m, &mut y, false, model.precision);
                    }
                    (None, Some(embed)) => {
                        matmul(dst, hm, embed.t(), 1.0, false, Threads::All);
                    }
                    (Some((p, embed)), _) => {
                        // `h` is rounded; the packed embedding is (bf16 only).
                        let w = p.forward(embed.t());
                        matmul_bf16_packed(dst, hm, w, 1.0, false, Threads::All);
                    }
                }
                (y, None)
            }
        };
        model.precision.round(&mut y);
        (y, saved)
    }

    /// The log-probability of each counted label under `hidden`'s logits (soft-capped where
    /// the model caps them).
    fn logps(&self, hidden: &[f32], counted: &[(usize, usize)], d: usize) -> Vec<f32> {
        let bf16 = self.model.precision == Precision::Bf16;
        let mut out = Vec::with_capacity(counted.len());
        let mut buf = Vec::new();
        for chunk in counted.chunks(LOGIT_CHUNK) {
            let h = self.gather(hidden, chunk, d);
            let (mut logits, _) = self.logits(&h, chunk.len(), buf);
            let cap = self.model.final_softcap;
            let rows: Vec<f32> = logits
                .par_chunks_mut(self.vocab)
                .zip(chunk.par_iter())
                .map(|(z, &(_, target))| {
                    if let Some(cap) = cap {
                        // The NLL with a zero weight leaves the row's values unused.
                        return -softcap::capped_nll_grad(z, target, 0.0, cap, bf16) as f32;
                    }
                    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let picked = z[target];
                    z.iter_mut().for_each(|v| *v = exp(*v - max));
                    picked - max - sum(z).ln()
                })
                .collect();
            out.extend(rows);
            buf = logits;
        }
        out
    }

    /// The summed NLL of the counted labels and the gradient with respect to the final hidden
    /// states (`[b·t, d]`, zero on rows that predict nothing) of the loss whose gradient on the
    /// logits of counted label i is `weights[i] · (softmax - onehot)` (`1 / normaliser` for
    /// the mean NLL).
    fn loss_backward(
        &self,
        hidden: &[f32],
        counted: &[(usize, usize)],
        weights: &[f32],
        d: usize,
        grads: &mut Grads,
    ) -> (f64, Vec<f32>) {
        let model = self.model;
        let vocab = self.vocab;
        let mut dhidden = vec![0f32; hidden.len()];
        let mut loss = 0f64;
        let embed = self.ev.as_ref().and_then(MatRef::of_view);
        let packed = model.embed_packed.as_deref().zip(embed);
        // The tied head's logits buffer, reused by every chunk.
        let mut tied_logits = Vec::new();
        let bf16 = model.precision == Precision::Bf16;
        for (chunk, w) in counted.chunks(LOGIT_CHUNK).zip(weights.chunks(LOGIT_CHUNK)) {
            let m = chunk.len();
            let h = self.gather(hidden, chunk, d);
            let (mut logits, head_saved) = self.logits(&h, m, std::mem::take(&mut tied_logits));
            // log-softmax, loss, and d logits = w · (softmax - onehot) in place.
            loss += logits
                .par_chunks_mut(vocab)
                .zip(chunk.par_iter().zip(w.par_iter()))
                .map(|(z, (&(_, target), &inv))| {
                    if let Some(cap) = model.final_softcap {
                        return softcap::capped_nll_grad(z, target, inv, cap, bf16);
                    }
                    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let picked = z[target];
                    // z ← e^(z - max), then softmax · inv = z · (inv / Σ): one exp per logit.
                    z.iter_mut().for_each(|v| *v = exp(*v - max));
                    let sum = sum(z);
                    let nll = (max + sum.ln() - picked) as f64;
                    let k = inv / sum;
                    z.iter_mut().for_each(|v| *v *= k);
                    z[target] -= inv;
                    nll
                })
                .sum::<f64>();
            let mut dh = vec![0f32; m * d];
            match (&model.head, head_saved) {
                (Some(head), Some(s)) => head.backward(&h, &s, &logits, m, &mut dh, grads),
                _ => self.tied_backward(&h, &mut logits, m, &mut dh, grads),
            }
            for (src, &(row, _)) in dh.chunks_exact(d).zip(chunk) {
                dhidden[row * d..][..d]
                    .iter_mut()
                    .zip(src)
                    .for_each(|(g, s)| *g += s);
            }
            if model.head.is_none() {
                tied_logits = logits;
            }
        }
        if let (Some(_), Some(id)) = (packed, model.embed_id) {
            // The tied head's embedding gradient is one bf16 product over every chunk (this
            // call's grads hold nothing else for it yet).
            model.precision.round(grads.slot(id, &[vocab, d]));
        }
        (loss, dhidden)
    }

    /// The tied head's backward of `m` rows: `dh = dlogits · E`, and `dE += dlogitsᵀ · h` when
    /// the embedding trains.
    ///
    /// # Shapes
    /// - h: `[m, d]`, dlogits: `[m, vocab]`, dh: `[m, d]`
    fn tied_backward(
        &self,
        h: &[f32],
        dlogits: &mut [f32],
        m: usize,
        dh: &mut [f32],
        grads: &mut Grads,
    ) {
        let model = self.model;
        let (vocab, d) = (self.vocab, h.len() / m.max(1));
        let hm = MatRef::new(h, m, d);
        let embed = self.ev.as_ref().and_then(MatRef::of_view);
        let de = model.embed_id.map(|id| grads.slot(id, &[vocab, d]));
        match (model.embed_packed.as_deref().zip(embed), embed) {
            (_, None) => {
                // A frozen table: no gradient of its own, bf16 as the dense path.
                let q = self.frozen.expect("tied table");
                model.precision.round(dlogits);
                q.matmul(dlogits, m, dh, false, model.precision);
                model.precision.round(dh);
            }
            (None, Some(embed)) => {
                let dl = MatRef::new(dlogits, m, vocab);
                matmul(MatMut::new(dh, m, d), dl, embed, 1.0, false, Threads::All);
                if let Some(de) = de {
                    let dst = MatMut::new(de, vocab, d);
                    matmul(dst, dl.t(), hm, 1.0, true, Threads::All);
                }
            }
            (Some((p, embed)), _) => {
                // bf16: the logits' gradient enters the head's product as bf16; the products'
                // results are rounded once they are complete.
                model.precision.round(dlogits);
                let dl = MatRef::new(dlogits, m, vocab);
                let dst = MatMut::new(dh, m, d);
                let w = p.backward(embed.t());
                matmul_bf16_packed(dst, dl, w, 1.0, false, Threads::All);
                if let Some(de) = de {
                    let dst = MatMut::new(de, vocab, d);
                    let p = model.precision;
                    matmul_in(p, dst, dl.t(), hm, 1.0, true, Threads::All);
                }
                model.precision.round(dh);
            }
        }
    }
}
