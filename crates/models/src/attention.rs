//! Grouped-query self-attention with rotary positions and an optional KV cache.
use crate::config::AttentionKind;
use crate::rope::apply_rotary;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use kiln_lora::LoraLinear;

/// Keys and values of earlier tokens for one layer.
///
/// # Shapes
/// - k, v: `[b, kv_heads, t_past, head_dim]`
#[derive(Debug, Clone)]
pub struct LayerCache {
    pub k: Tensor<4>,
    pub v: Tensor<4>,
}

/// Multi-head attention where `num_heads / num_kv_heads` query heads share one key/value head.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub num_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
    #[module(skip)]
    pub kind: AttentionKind,
}

impl Attention {
    /// Attends over the cached keys (if any) and the new tokens, and appends the new keys and
    /// values to the cache.
    ///
    /// # Shapes
    /// - x: `[b, t, hidden]`
    /// - cos, sin: `[b, 1, t, head_dim]`
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
        let groups = h / kvh;
        // [b, t, heads * hd] -> [b, heads, t, hd]
        let q = self
            .q_proj
            .forward(x.clone())
            .reshape([b, t, h, hd])
            .swap_dims(1, 2);
        let k = self
            .k_proj
            .forward(x.clone())
            .reshape([b, t, kvh, hd])
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, t, kvh, hd])
            .swap_dims(1, 2);
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some(past) => (
                        Tensor::cat(vec![past.k, k], 2),
                        Tensor::cat(vec![past.v, v], 2),
                    ),
                    None => (k, v),
                };
                *slot = Some(LayerCache {
                    k: k.clone(),
                    v: v.clone(),
                });
                (k, v)
            }
            None => (k, v),
        };
        let tk = k.dims()[2];
        // Query heads of one group are adjacent (transformers' `repeat_kv`), so the group folds
        // into the query axis and keys are never repeated: [b, kvh, groups * t, hd].
        let q = q.reshape([b, kvh, groups * t, hd]);
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
        // [b, kvh, groups, t, tk] + [b, 1, 1, t, tk]
        let scores = scores.reshape([b, kvh, groups, t, tk]) + mask.clone().unsqueeze_dim::<5>(1);
        let probs = softmax(scores, 4).reshape([b, kvh, groups * t, tk]);
        let out = probs.matmul(v); // [b, kvh, groups * t, hd]
        let out = out
            .reshape([b, h, t, hd])
            .swap_dims(1, 2)
            .reshape([b, t, h * hd]);
        self.o_proj.forward(out)
    }
}
