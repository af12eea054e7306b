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
use crate::config::{AttentionKind, DecoderConfig};
use crate::error::{ModelError, Result};
use crate::kv::LayerCache;
use crate::mask::MaskSpec;
use crate::mlp::Mlp;
use crate::norm::RmsNorm;
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
                let real = self.attention_mask.as_ref().is_none_or(|m| m[k] != 0);
                out[k] = (next - if real { 0 } else { 1 }).max(0);
                if real {
                    next += 1;
                }
            }
        }
        out
    }
}

/// Cached keys and values of every layer plus the key padding seen so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// `[b][t_past]`: false where the cached key is padding.
    key_padding: Vec<Vec<bool>>,
    /// Position of the next token of each row.
    next_position: Vec<i64>,
}

impl KvCache {
    /// Number of cached tokens per row.
    pub fn len(&self) -> usize {
        self.key_padding.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sequences (rows) the cache holds.
    pub fn rows(&self) -> usize {
        self.key_padding.len()
    }

    /// Bytes held for the cached keys and values (f32, with room to grow on the CPU).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(LayerCache::bytes).sum()
    }

    /// A one-row cache holding the first `len` tokens of row `row` (its left padding dropped):
    /// the keys and values of a prompt's prefix, for another prompt that starts with the same
    /// tokens (prefix caching). Continuing from it with the rest of that prompt attends to
    /// exactly what a prefill of the whole prompt would.
    ///
    /// # Errors
    /// [`ModelError::Input`] for a row outside the cache, a `len` of 0 or past the row's
    /// tokens, or a row whose tokens do not start at position 0 right after its padding (a
    /// row extended by decoding after other rows joined has padding between its tokens).
    pub fn prefix(&self, row: usize, len: usize) -> Result<KvCache> {
        let pads = self
            .key_padding
            .get(row)
            .ok_or_else(|| ModelError::Input(format!("cache row {row} does not exist")))?;
        let start = pads.iter().take_while(|&&real| !real).count();
        let real = pads.len() - start;
        if len == 0
            || len > real
            || !pads[start..].iter().all(|&r| r)
            || self.next_position[row] != real as i64
        {
            return Err(ModelError::Input(format!(
                "cache row {row} ({real} tokens after {start} padding, next position {}) has no \
                 prefix of {len} tokens from position 0",
                self.next_position[row]
            )));
        }
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|l| l.prefix(row, start, len)))
            .collect();
        Ok(KvCache {
            layers,
            key_padding: vec![vec![true; len]],
            next_position: vec![len as i64],
        })
    }

    /// Keeps the rows `keep`, in that order, and drops the others (a finished sequence leaves a
    /// running batch). Key columns that are then padding in every row are dropped too.
    ///
    /// # Errors
    /// [`ModelError::Input`] for a row index outside the cache.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        if let Some(bad) = keep.iter().find(|&&r| r >= self.rows()) {
            return Err(ModelError::Input(format!(
                "cache row {bad} does not exist ({} rows)",
                self.rows()
            )));
        }
        if keep.is_empty() {
            *self = Self::default();
            return Ok(());
        }
        if keep.len() == self.rows() && keep.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        for layer in self.layers.iter_mut().flatten() {
            layer.retain_rows(keep);
        }
        self.key_padding = keep.iter().map(|&r| self.key_padding[r].clone()).collect();
        self.next_position = keep.iter().map(|&r| self.next_position[r]).collect();
        self.trim_padding();
        Ok(())
    }

    /// Appends the rows of `other` after this cache's rows (a prefilled sequence joins a running
    /// batch). The side with fewer cached tokens is left-padded with masked keys, so every row
    /// keeps its own positions and attends only to its own tokens.
    ///
    /// # Errors
    /// [`ModelError::Input`] when the caches come from models with different layer counts.
    pub fn append_rows(&mut self, other: KvCache) -> Result<()> {
        if other.rows() == 0 {
            return Ok(());
        }
        if self.rows() == 0 {
            *self = other;
            return Ok(());
        }
        if self.layers.len() != other.layers.len()
            || self
                .layers
                .iter()
                .zip(&other.layers)
                .any(|(a, b)| a.is_some() != b.is_some())
        {
            return Err(ModelError::Input(format!(
                "cannot join caches of {} and {} layers",
                self.layers.len(),
                other.layers.len()
            )));
        }
        let (ta, tb) = (self.len(), other.len());
        let t = ta.max(tb);
        // Left-pad the time axis with zeros (masked keys).
        for (slot, b) in self.layers.iter_mut().zip(other.layers) {
            if let (Some(a), Some(b)) = (slot.take(), b) {
                *slot = Some(a.join(b, t - ta, t - tb));
            }
        }
        let widen =
            |row: Vec<bool>, n: usize| std::iter::repeat_n(false, n).chain(row).collect::<Vec<_>>();
        self.key_padding = std::mem::take(&mut self.key_padding)
            .into_iter()
            .map(|r| widen(r, t - ta))
            .chain(other.key_padding.into_iter().map(|r| widen(r, t - tb)))
            .collect();
        self.next_position.extend(other.next_position);
        Ok(())
    }

    /// Drops the leading key columns that are padding in every row.
    fn trim_padding(&mut self) {
        let len = self.len();
        let n = (0..len)
            .take_while(|&c| self.key_padding.iter().all(|row| !row[c]))
            .count();
        if n == 0 || n == len {
            return;
        }
        for layer in self.layers.iter_mut().flatten() {
            layer.drop_front(n);
        }
        for row in &mut self.key_padding {
            row.drain(..n);
        }
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
        let c = &self.config;
        input.check(c.vocab_size)?;
        let device = self.device();
        let (b, t) = (input.batch, input.seq_len);
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(cache) = cache.as_deref()
            && past > 0
            && cache.key_padding.len() != b
        {
            return Err(ModelError::Input(format!(
                "cache holds {} rows, input has {b}",
                cache.key_padding.len()
            )));
        }
        if input.segment_ids.is_some() && past > 0 {
            return Err(ModelError::Input(
                "segment ids cannot be combined with a KV cache".into(),
            ));
        }
        // Positions continue from the cache when none are given.
        let positions = match (&input.position_ids, cache.as_deref()) {
            (None, Some(cache)) if past > 0 => {
                let mut p = vec![0i64; b * t];
                for r in 0..b {
                    let mut next = cache.next_position[r];
                    for i in 0..t {
                        let real = input
                            .attention_mask
                            .as_ref()
                            .is_none_or(|m| m[r * t + i] != 0);
                        p[r * t + i] = next;
                        if real {
                            next += 1;
                        }
                    }
                }
                p
            }
            _ => input.positions(0),
        };
        // Key padding over cached + new keys.
        let new_pad = |r: usize, i: usize| {
            input
                .attention_mask
                .as_ref()
                .is_none_or(|m| m[r * t + i] != 0)
        };
        let key_padding: Option<Vec<bool>> = {
            let any_pad = input
                .attention_mask
                .as_ref()
                .is_some_and(|m| m.contains(&0))
                || cache
                    .as_deref()
                    .is_some_and(|c| c.key_padding.iter().flatten().any(|k| !k));
            any_pad.then(|| {
                (0..b)
                    .flat_map(|r| {
                        let cached = cache
                            .as_deref()
                            .and_then(|c| c.key_padding.get(r).cloned())
                            .unwrap_or_default();
                        cached.into_iter().chain((0..t).map(move |i| new_pad(r, i)))
                    })
                    .collect()
            })
        };
        let spec = MaskSpec {
            batch: b,
            queries: t,
            keys: past + t,
            key_padding: key_padding.as_deref(),
            segments: input.segment_ids.as_deref(),
        };
        let mut masks: Vec<(AttentionKind, Tensor<4>)> = Vec::new();
        for kind in &c.layer_attention {
            if !masks.iter().any(|(k, _)| k == kind) {
                masks.push((*kind, spec.build(*kind, &device)));
            }
        }
        let per_row = input.rope_per_row;
        let tables = self.rope.tables(&positions, (b, t), per_row, &device);
        let local_tables = self
            .rope_local
            .as_ref()
            .map(|r| r.tables(&positions, (b, t), per_row, &device));

        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(
                input.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [b, t],
            ),
            &device,
        );
        let mut x = match &self.model.embed_tokens {
            BaseWeight::Dense(e) => embedding(e.val(), ids),
            BaseWeight::Frozen(f) => {
                // Rows dequantized on the host: the table itself is never widened.
                let d = f.matrix().cols();
                let mut rows = vec![0f32; b * t * d];
                f.matrix().gather_rows(&input.ids, &mut rows);
                Tensor::from_data(TensorData::new(rows, [b, t, d]), &device)
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
            let mask = Tensor::<3, Bool>::from_data(TensorData::new(is_pad, [b, t, 1]), &device)
                .expand([b, t, d]);
            x = x.clone().mask_where(mask, x.detach());
        }
        if let Some(scale) = c.embed_scale {
            x = x * scale;
        }
        if let Some(cache) = cache.as_deref_mut()
            && cache.layers.len() != self.model.layers.len()
        {
            cache.layers = vec![None; self.model.layers.len()];
        }
        for (i, layer) in self.model.layers.iter().enumerate() {
            let kind = c.layer_attention[i];
            let mask = &masks
                .iter()
                .find(|(k, _)| *k == kind)
                .expect("mask built for every kind")
                .1;
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let rope = match (kind, &local_tables) {
                (AttentionKind::Sliding { .. }, Some(local)) => local,
                _ => &tables,
            };
            x = layer.forward(x, rope, mask, slot);
        }
        if let Some(cache) = cache {
            if cache.key_padding.len() != b {
                cache.key_padding = vec![Vec::new(); b];
                cache.next_position = vec![0; b];
            }
            for r in 0..b {
                for i in 0..t {
                    cache.key_padding[r].push(new_pad(r, i));
                }
                cache.next_position[r] = positions[r * t + t - 1] + 1;
            }
        }
        Ok(self.model.norm.forward(x))
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
