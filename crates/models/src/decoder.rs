//! The decoder-only transformer of the Llama family (Llama, Mistral, Qwen2), Gemma 2, Gemma 3 and
//! Phi-3: one decoder whose knobs ([`DecoderConfig`]) select each family's variations, with module
//! fields named like the checkpoint keys (`model.layers.N.self_attn.q_proj`), so loading needs no
//! rename table and PEFT keys line up.
//!
//! References: transformers' `modeling_llama.py`, `modeling_gemma2.py`, `modeling_gemma3.py`,
//! `modeling_phi3.py`; Touvron et al. 2023, <https://arxiv.org/abs/2302.13971>; Gemma Team 2024,
//! <https://arxiv.org/abs/2408.00118>; Gemma Team 2025, <https://arxiv.org/abs/2503.19786>;
//! Abdin et al. 2024, <https://arxiv.org/abs/2404.14219>.
use crate::attention::Attention;
use crate::config::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::kv::{KvCache, LayerCache};
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
use crate::prepare::{Prepared, RotaryTables};
use crate::rope::Rope;
use burn::module::Module;
use burn::tensor::module::embedding;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use kiln_lora::kernels::frozen_linear_in;
use kiln_lora::{BaseWeight, LoraLinear};

/// One pre-norm transformer block.
///
/// Llama layout: `x + attn(input_layernorm(x))`, then `x + mlp(post_attention_layernorm(x))`.
/// Gemma layout (with `pre_feedforward_layernorm`): `x + post_attention_layernorm(attn(
/// input_layernorm(x)))`, then `x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))`.
/// The names are the checkpoints'; `post_attention_layernorm` means something else in each.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
    /// Gemma: norm of the MLP input.
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    /// Gemma: norm of the MLP output.
    pub post_feedforward_layernorm: Option<RmsNorm>,
}

impl DecoderLayer {
    /// The layer's norms with their module paths inside the layer, in checkpoint order.
    pub fn norms(&self) -> Vec<(&'static str, &RmsNorm)> {
        let a = &self.self_attn;
        [
            ("input_layernorm", Some(&self.input_layernorm)),
            (
                "post_attention_layernorm",
                Some(&self.post_attention_layernorm),
            ),
            (
                "pre_feedforward_layernorm",
                self.pre_feedforward_layernorm.as_ref(),
            ),
            (
                "post_feedforward_layernorm",
                self.post_feedforward_layernorm.as_ref(),
            ),
            ("self_attn.q_norm", a.q_norm.as_ref()),
            ("self_attn.k_norm", a.k_norm.as_ref()),
        ]
        .into_iter()
        .filter_map(|(n, norm)| norm.map(|norm| (n, norm)))
        .collect()
    }

    /// Same as [`Self::norms`], mutably.
    pub fn norms_mut(&mut self) -> Vec<(&'static str, &mut RmsNorm)> {
        let a = &mut self.self_attn;
        [
            ("input_layernorm", Some(&mut self.input_layernorm)),
            (
                "post_attention_layernorm",
                Some(&mut self.post_attention_layernorm),
            ),
            (
                "pre_feedforward_layernorm",
                self.pre_feedforward_layernorm.as_mut(),
            ),
            (
                "post_feedforward_layernorm",
                self.post_feedforward_layernorm.as_mut(),
            ),
            ("self_attn.q_norm", a.q_norm.as_mut()),
            ("self_attn.k_norm", a.k_norm.as_mut()),
        ]
        .into_iter()
        .filter_map(|(n, norm)| norm.map(|norm| (n, norm)))
        .collect()
    }

    /// # Shapes
    /// - x: `[b, t, hidden]`, output the same
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &(Tensor<4>, Tensor<4>),
        mask: &Tensor<4>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            &rope.0,
            &rope.1,
            mask,
            cache,
        );
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let x = x + self.post_attention_layernorm.forward(attn);
                let mlp = self.mlp.forward(pre.forward(x.clone()));
                x + post.forward(mlp)
            }
            _ => {
                let x = x + attn;
                let mlp = self
                    .mlp
                    .forward(self.post_attention_layernorm.forward(x.clone()));
                x + mlp
            }
        }
    }
}

/// The transformer body: embeddings, layers, final norm (`model.*` keys).
#[derive(Module, Debug)]
pub struct Model {
    /// `[vocab, hidden]`, dense or kept in the file's format.
    pub embed_tokens: BaseWeight,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

/// A causal language model: the body and the output projection.
#[derive(Module, Debug)]
pub struct CausalLm {
    pub model: Model,
    /// `None` when the output projection is tied to `model.embed_tokens`.
    pub lm_head: Option<LoraLinear>,
    #[module(skip)]
    pub config: DecoderConfig,
    /// RoPE of full-attention layers (of all layers without `rope_local`).
    #[module(skip)]
    pub rope: Rope,
    /// RoPE of sliding-window layers when it differs (Gemma 3).
    #[module(skip)]
    pub rope_local: Option<Rope>,
    /// Precision of inference's products by the weights ([`CausalLm::set_precision`]).
    #[module(skip)]
    pub precision: kiln_lora::Precision,
}

/// The token inputs of one forward pass, on the host.
///
/// Built with [`DecoderInput::new`] and the `with_*` methods, like burn's typed module inputs.
#[derive(Debug, Clone)]
pub struct DecoderInput {
    /// `[b * t]` row-major token ids.
    pub ids: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
    /// `[b * t]`: 1 for real tokens, 0 for padding.
    pub attention_mask: Option<Vec<u8>>,
    /// `[b * t]`: position of each token. Default: from the attention mask (see [`Self::positions`]).
    pub position_ids: Option<Vec<i64>>,
    /// `[b * t]`: packed-sequence segment of each token; attention never crosses segments.
    pub segment_ids: Option<Vec<u32>>,
    /// LongRoPE chooses its frequencies for each row by that row's positions, as the row would
    /// alone, instead of for the whole batch as transformers does: for batches of independent
    /// sequences at different lengths (a server). No effect on other rotary embeddings.
    pub rope_per_row: bool,
}

impl DecoderInput {
    /// Ids `[b * t]` of a batch of `b` rows of `t` tokens.
    pub fn new(ids: Vec<u32>, batch: usize, seq_len: usize) -> Self {
        Self {
            ids,
            batch,
            seq_len,
            attention_mask: None,
            position_ids: None,
            segment_ids: None,
            rope_per_row: false,
        }
    }

    /// A batch of one row.
    pub fn single(ids: &[u32]) -> Self {
        Self::new(ids.to_vec(), 1, ids.len())
    }

    pub fn with_attention_mask(mut self, mask: Vec<u8>) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    pub fn with_position_ids(mut self, positions: Vec<i64>) -> Self {
        self.position_ids = Some(positions);
        self
    }

    pub fn with_segment_ids(mut self, segments: Vec<u32>) -> Self {
        self.segment_ids = Some(segments);
        self
    }

    /// Sets [`Self::rope_per_row`].
    pub fn with_rope_per_row(mut self) -> Self {
        self.rope_per_row = true;
        self
    }

    pub(crate) fn check(&self, vocab: usize) -> Result<()> {
        let n = self.batch * self.seq_len;
        if n == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        let lens = [
            ("input ids", Some(self.ids.len())),
            ("attention_mask", self.attention_mask.as_ref().map(Vec::len)),
            ("position_ids", self.position_ids.as_ref().map(Vec::len)),
            ("segment_ids", self.segment_ids.as_ref().map(Vec::len)),
        ];
        for (name, len) in lens {
            if let Some(len) = len
                && len != n
            {
                return Err(ModelError::Input(format!(
                    "{name} has {len} entries, expected batch {} x seq_len {}",
                    self.batch, self.seq_len
                )));
            }
        }
        if let Some(bad) = self.ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }

    /// Whether token `k` (row-major over `[b, t]`) is real (not padding).
    pub(crate) fn is_real(&self, k: usize) -> bool {
        self.attention_mask.as_ref().is_none_or(|m| m[k] != 0)
    }

    /// Position ids: the given ones, else per segment when packed, else
    /// `cumsum(attention_mask) - 1` clamped at 0 (as transformers' `generate` does; equal to
    /// `0..t` without padding), offset by `past` cached tokens.
    pub fn positions(&self, past: usize) -> Vec<i64> {
        if let Some(p) = &self.position_ids {
            return p.clone();
        }
        let (b, t) = (self.batch, self.seq_len);
        let mut out = vec![0i64; b * t];
        for r in 0..b {
            let mut next = past as i64;
            for i in 0..t {
                let k = r * t + i;
                if let Some(seg) = &self.segment_ids
                    && i > 0
                    && seg[k] != seg[k - 1]
                {
                    next = 0;
                }
                let real = self.is_real(k);
                out[k] = (next - if real { 0 } else { 1 }).max(0);
                if real {
                    next += 1;
                }
            }
        }
        out
    }
}

impl CausalLm {
    /// Runs the body and returns the final hidden states.
    ///
    /// With a cache, `input` holds only the new tokens; cached keys are attended to and the
    /// cache grows by `t`.
    ///
    /// # Shapes
    /// - output: `[b, t, hidden]`
    pub fn forward_hidden(
        &self,
        input: &DecoderInput,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        let prepared = Prepared::new(self, input, cache.as_deref())?;
        let device = self.device();
        let (b, t, keys) = (prepared.batch, prepared.queries, prepared.keys);
        let slots = prepared.layer_slots(&self.config.layer_attention);
        let Prepared {
            positions,
            masks,
            global,
            local,
            ..
        } = prepared;
        // The host buffers moved into tensors: nothing is copied.
        let masks: Vec<Tensor<4>> = masks
            .into_iter()
            .map(|(_, m)| Tensor::from_data(TensorData::new(m, [b, 1, t, keys]), &device))
            .collect();
        let tensors = |r: RotaryTables| {
            let shape = [b, 1, t, r.dim];
            (
                Tensor::<4>::from_data(TensorData::new(r.cos, shape), &device),
                Tensor::<4>::from_data(TensorData::new(r.sin, shape), &device),
            )
        };
        let global = tensors(global);
        let local = local.map(tensors);

        let mut x = self.embed(input, &device);
        let n_layers = self.model.layers.len();
        for (i, (layer, &(mask, is_local))) in self.model.layers.iter().zip(&slots).enumerate() {
            let slot = cache.as_deref_mut().map(|c| c.layer_slot(i, n_layers));
            let rope = match (&local, is_local) {
                (Some(l), true) => l,
                _ => &global,
            };
            x = layer.forward(x, rope, &masks[mask], slot);
        }
        if let Some(cache) = cache {
            cache.advance(input, &positions);
        }
        Ok(self.model.norm.forward(x))
    }

    /// The embedded (and scaled) tokens of `input`.
    ///
    /// # Shapes
    /// - output: `[b, t, hidden]`
    fn embed(&self, input: &DecoderInput, device: &Device) -> Tensor<3> {
        let c = &self.config;
        let (b, t) = (input.batch, input.seq_len);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(
                input.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [b, t],
            ),
            device,
        );
        let mut x = match &self.model.embed_tokens {
            BaseWeight::Dense(e) => embedding(e.val(), ids),
            BaseWeight::Frozen(f) => {
                // Rows dequantized on the host: the table itself is never widened.
                let d = f.matrix().cols();
                let mut rows = vec![0f32; b * t * d];
                f.matrix().gather_rows(&input.ids, &mut rows);
                Tensor::from_data(TensorData::new(rows, [b, t, d]), device)
            }
        };
        if let Some(pad) = c.pad_token_id
            && self.model.embed_tokens.is_require_grad()
            && input.ids.contains(&pad)
        {
            // transformers builds `nn.Embedding(padding_idx = pad_token_id)`: the lookup of the
            // pad token passes no gradient to its row. Same values, detached there.
            let d = x.dims()[2];
            let is_pad = input.ids.iter().map(|&i| i == pad).collect::<Vec<_>>();
            let mask = Tensor::<3, Bool>::from_data(TensorData::new(is_pad, [b, t, 1]), device)
                .expand([b, t, d]);
            x = x.clone().mask_where(mask, x.detach());
        }
        if let Some(scale) = c.embed_scale {
            x = x * scale;
        }
        x
    }

    /// Projects hidden states to vocabulary logits, soft-capped when the config says so
    /// (`final_logit_softcapping`). Every path to logits (forward, loss, generation) goes
    /// through here.
    ///
    /// # Shapes
    /// - hidden: `[b, t, hidden]`
    /// - output: `[b, t, vocab]`
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let logits = self.project(hidden);
        match self.config.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Sets the precision of inference's products by the weights (every projection and the
    /// output head; outside autodiff, on the CPU backend): `Bf16` multiplies as a model loaded
    /// with `torch_dtype=torch.bfloat16` does (each product's input, weight and output rounded
    /// to bf16, f32 accumulation), on the bf16 kernel where the CPU has one; norms, attention,
    /// the residual stream and adapters' low-rank products stay f32. `F32` is the default and
    /// the reference. Training has its own precision option and ignores this.
    pub fn set_precision(&mut self, precision: kiln_lora::Precision) {
        use kiln_lora::target::AdapterTarget;
        self.precision = precision;
        self.visit_linears_mut(&mut |_, l| l.set_precision(precision));
    }

    /// Holds every quantized matrix (projections, the output head or tied embedding table)
    /// also in the bf16 kernel's layout, 2 bytes per weight more, so bf16 products of more than
    /// a few rows (a batch of decoding rows, prefill) multiply by it directly instead of
    /// dequantizing and packing it at every product ([`kiln_cpu::QMatrix::hold_bf16_layout`]).
    /// Training and f32 products do not use it. Returns the bytes added.
    ///
    /// # Errors
    /// [`ModelError::Input`] unless [`Self::set_precision`] chose `Bf16` (the layouts would
    /// only cost memory), or when no matrix is quantized (all held dense: nothing to hold).
    pub fn hold_bf16_weights(&mut self) -> Result<usize> {
        use kiln_lora::target::AdapterTarget;
        if self.precision != kiln_lora::Precision::Bf16 {
            return Err(ModelError::Input(
                "bf16 weights serve bf16 products: set the precision to bf16 first".into(),
            ));
        }
        let mut bytes = 0;
        self.visit_linears_mut(&mut |_, l| bytes += l.hold_bf16_layout());
        if self.lm_head.is_none()
            && let BaseWeight::Frozen(f) = &mut self.model.embed_tokens
        {
            bytes += f.hold_bf16_layout();
        }
        if bytes == 0 {
            return Err(ModelError::Input(
                "no quantized matrix to hold in bf16 (every weight is held dense in f32)".into(),
            ));
        }
        Ok(bytes)
    }

    /// The output projection without soft-capping.
    fn project(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let p = self.precision;
                let embed = match &self.model.embed_tokens {
                    BaseWeight::Dense(e) => e.val(), // [vocab, d]
                    // A tied table is `[out = vocab, in = d]`: the frozen linear product.
                    BaseWeight::Frozen(f) => return frozen_linear_in(hidden, f, None, p),
                };
                let [b, t, d] = hidden.dims();
                let head = embed.clone().transpose(); // a view: nothing copied
                if let Some(logits) = kiln_lora::kernels::try_linear_in(&hidden, &head, None, p) {
                    return logits;
                }
                if b * t < d {
                    // Few rows (decoding, the counted positions of a loss): `E · hᵀ` reads the
                    // embedding as stored. `h · Eᵀ` would make burn-ndarray copy the transposed
                    // `[d, vocab]` matrix (113 MB for SmolLM2) on every call.
                    let v = embed.dims()[0];
                    let ht = hidden.reshape([b * t, d]).transpose();
                    embed.matmul(ht).transpose().reshape([b, t, v])
                } else {
                    hidden.matmul(embed.transpose().unsqueeze())
                }
            }
        }
    }

    /// The cached length at which decoding must drop its KV cache and recompute the whole
    /// sequence: LongRoPE's original context, where the next token switches every position to
    /// the long frequencies (transformers' Phi-3 `prepare_inputs_for_generation` recomputes the
    /// cache there, once). `None` for every other rotary embedding.
    pub fn recompute_cache_at(&self) -> Option<usize> {
        self.rope.long_after()
    }

    /// Training forward: logits of every position.
    ///
    /// # Shapes
    /// - output: `[b, t, vocab]`
    pub fn forward(&self, input: &DecoderInput) -> Result<Tensor<3>> {
        Ok(self.logits(self.forward_hidden(input, None)?))
    }

    /// Summed loss of `labels` (shifted, `-100` ignored), projecting only the counted positions
    /// to the vocabulary ([`crate::loss::causal_lm_loss_sum_hidden`]).
    ///
    /// # Shapes
    /// - labels: `[b * t]` row-major
    pub fn loss_sum(&self, input: &DecoderInput, labels: &[i64]) -> Result<crate::loss::LossSum> {
        let hidden = self.forward_hidden(input, None)?;
        crate::loss::causal_lm_loss_sum_hidden(hidden, labels, |h| self.logits(h))
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        match &self.model.embed_tokens {
            BaseWeight::Dense(e) => e.val().device(),
            // A frozen table keeps no device: the first layer's tensors tell.
            BaseWeight::Frozen(_) => self.model.norm.weight.val().device(),
        }
    }
}
