//! Grouped-query self-attention with rotary positions and an optional KV cache, plus the knobs of
//! Gemma (q/k norms, score scale, logit soft-capping) and Phi-3 (fused `qkv_proj`).
use crate::config::AttentionKind;
use crate::kv::LayerCache;
use crate::norm::RmsNorm;
use crate::proj::{QkvProj, projection_module};
use crate::rope::apply_rotary;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use kiln_lora::LoraLinear;

/// Multi-head attention where `num_heads / num_kv_heads` query heads share one key/value head.
///
/// The projections are the checkpoint's modules: `q_proj`, `k_proj`, `v_proj`, or Phi-3's fused
/// `qkv_proj` (output rows `[q; k; v]`) ([`QkvProj`]); [`crate::build_causal_lm`] builds the
/// layout the config names. Its [`Module`](burn::module::Module) visits them under those names
/// (see `proj.rs`).
#[derive(Debug, Clone)]
pub struct Attention {
    pub qkv: QkvProj,
    pub o_proj: LoraLinear,
    /// Gemma 3: RMSNorm over `head_dim` of every query head, before RoPE.
    pub q_norm: Option<RmsNorm>,
    /// Gemma 3: RMSNorm over `head_dim` of every key head, before RoPE.
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub kind: AttentionKind,
    /// Multiplier of `q · k` (`head_dim^-0.5`, or Gemma's `query_pre_attn_scalar^-0.5`).
    pub scale: f64,
    /// `cap · tanh(scores / cap)` before the mask (Gemma 2).
    pub softcap: Option<f64>,
}

projection_module!(Attention, qkv, [o_proj, q_norm, k_norm]);

impl Attention {
    /// The input projections, with their module names, in checkpoint order
    /// (`q_proj`, `k_proj`, `v_proj`, or `qkv_proj`).
    pub fn input_projections(&self) -> Vec<(&'static str, &LoraLinear)> {
        self.qkv.named()
    }

    /// Same as [`Self::input_projections`], mutably.
    pub fn input_projections_mut(&mut self) -> Vec<(&'static str, &mut LoraLinear)> {
        self.qkv.named_mut()
    }

    /// Queries, keys and values.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]`
    /// - output: `[b, t, heads * hd]`, `[b, t, kv_heads * hd]`, `[b, t, kv_heads * hd]`
    fn project(&self, x: Tensor<3>) -> [Tensor<3>; 3] {
        let (q_out, kv_out) = (
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        match &self.qkv {
            QkvProj::Fused { qkv_proj } => {
                let [b, t, _] = x.dims();
                let qkv = qkv_proj.forward(x); // [b, t, q_out + 2 * kv_out]
                let (k0, v0) = (q_out, q_out + kv_out);
                [
                    qkv.clone().slice([0..b, 0..t, 0..k0]),
                    qkv.clone().slice([0..b, 0..t, k0..v0]),
                    qkv.slice([0..b, 0..t, v0..v0 + kv_out]),
                ]
            }
            QkvProj::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => [
                q_proj.forward(x.clone()),
                k_proj.forward(x.clone()),
                v_proj.forward(x),
            ],
        }
    }

    /// Attends over the cached keys (if any) and the new tokens, and appends the new keys and
    /// values to the cache.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]`
    /// - cos, sin: `[b, 1, t, rotary_dim]`
    /// - mask: `[b, 1, t, t_past + t]` additive
    /// - output: `[b, t, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
        mask: &Tensor<4>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let [q, k, v] = self.project(x);
        // [b, t, heads * hd] -> [b, heads, t, hd]
        let q = q.reshape([b, t, h, hd]).swap_dims(1, 2);
        let k = k.reshape([b, t, kvh, hd]).swap_dims(1, 2);
        let v = v.reshape([b, t, kvh, hd]).swap_dims(1, 2);
        let q = match &self.q_norm {
            Some(n) => n.forward(q),
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(k),
            None => k,
        };
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        let out = match cache {
            Some(slot) => LayerCache::push(slot, k, v).attend(q, mask, self.scale, self.softcap),
            None => attend_any(q, k, v, mask, self.scale, self.softcap),
        };
        self.o_proj.forward(out)
    }
}

/// Attention on the CPU kernel where it applies ([`crate::kernels::try_attention`]), else with
/// burn's tensor ops ([`attend`]).
///
/// # Shapes
/// As [`attend`].
pub(crate) fn attend_any(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &Tensor<4>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<3> {
    match crate::kernels::try_attention(&q, &k, &v, mask, scale, softcap) {
        Some(out) => out,
        None => attend(q, k, v, mask, scale, softcap),
    }
}

/// Attention with burn's tensor ops (every backend, and autodiff).
///
/// # Shapes
/// - q: `[b, heads, t, hd]`
/// - k, v: `[b, kv_heads, t_keys, hd]`
/// - mask: `[b, 1, t, t_keys]` additive
/// - output: `[b, t, heads · hd]`
pub(crate) fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: &Tensor<4>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<3> {
    let [b, h, t, hd] = q.dims();
    let [_, kvh, tk, _] = k.dims();
    let groups = h / kvh;
    // Query heads of one group are adjacent (transformers' `repeat_kv`), so the group folds
    // into the query axis and keys are never repeated: [b, kvh, groups * t, hd].
    let q = q.reshape([b, kvh, groups * t, hd]);
    let mut scores = q.matmul(k.swap_dims(2, 3)) * scale;
    if let Some(cap) = softcap {
        scores = (scores / cap).tanh() * cap;
    }
    // [b, kvh, groups, t, tk] + [b, 1, 1, t, tk]
    let scores = scores.reshape([b, kvh, groups, t, tk]) + mask.clone().unsqueeze_dim::<5>(1);
    let probs = softmax(scores, 4).reshape([b, kvh, groups * t, tk]);
    let out = probs.matmul(v); // [b, kvh, groups * t, hd]
    out.reshape([b, h, t, hd])
        .swap_dims(1, 2)
        .reshape([b, t, h * hd])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mask::MASKED;
    use burn::tensor::{Device, Distribution, TensorData};

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    /// The CPU kernel is taken and equals the tensor path: grouped heads, a causal mask with
    /// past keys, a padded key, query rows that see nothing (a whole block and single rows),
    /// with and without soft-capping.
    #[test]
    fn attention_kernel_equals_tensor_path() {
        let dev = Device::default();
        // 70 queries: two blocks of the kernel.
        let (b, h, kvh, t, past, hd) = (2, 6, 2, 70, 3, 12);
        let tk = past + t;
        let q = Tensor::<4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<4>::random([b, kvh, tk, hd], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<4>::random([b, kvh, tk, hd], Distribution::Normal(0.0, 1.0), &dev);
        let mut m = vec![0f32; b * t * tk];
        for r in 0..b {
            for i in 0..t {
                for j in 0..tk {
                    // Row 0: causal with a padded key. Row 1: queries 0..66 see nothing (a
                    // whole block, then two rows of the next).
                    let hidden = j > past + i || (r == 0 && j == 2) || (r == 1 && i < 66);
                    if hidden {
                        m[(r * t + i) * tk + j] = MASKED;
                    }
                }
            }
        }
        let mask = Tensor::<4>::from_data(TensorData::new(m, [b, 1, t, tk]), &dev);
        for softcap in [None, Some(2.0)] {
            let fast = crate::kernels::try_attention(&q, &k, &v, &mask, 0.3, softcap);
            #[cfg(feature = "cpu")]
            assert!(fast.is_some());
            let Some(fast) = fast else { continue };
            let want = host(attend(q.clone(), k.clone(), v.clone(), &mask, 0.3, softcap));
            let got = host(fast);
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "softcap {softcap:?}: max |diff| {worst}");
        }
    }
}
