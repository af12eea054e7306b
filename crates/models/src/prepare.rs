//! The one input preparation of a decoder forward: each token's position, the additive mask of
//! each attention kind (causal, key padding, sliding window, packed segments) and the rotary
//! tables, built once on the host from a [`DecoderInput`] and the [`KvCache`] it continues.
//!
//! Why one place: the burn-tensor forward ([`CausalLm::forward_hidden`]) and the fused CPU
//! training path (`backprop::HostModel::run`) used to derive these each on their own, and two
//! derivations drift (the fused path ignored `rope_per_row`). Both now take a [`Prepared`] and
//! only convert its host buffers (moved, not copied) into what their layers read: burn tensors,
//! or the host kernels' mask and tables.
use crate::config::AttentionKind;
use crate::decoder::{CausalLm, DecoderInput};
use crate::error::Result;
use crate::kv::KvCache;
use crate::mask::MaskSpec;
use crate::rope::Rope;

/// Rotary `cos` and `sin` of one call on the host.
///
/// # Shapes
/// - cos, sin: `[b · t, dim]` row-major
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RotaryTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// Number of channels that rotate.
    pub dim: usize,
}

impl RotaryTables {
    fn new(rope: &Rope, positions: &[i64], t: usize, per_row: bool) -> Self {
        let (cos, sin) = rope.host_tables_rows(positions, t, per_row);
        Self {
            cos,
            sin,
            dim: rope.dim(),
        }
    }
}

/// What every layer of one forward shares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prepared {
    pub batch: usize,
    /// New (query) tokens per row.
    pub queries: usize,
    /// Keys per row: cached plus new.
    pub keys: usize,
    /// `[b · t]`: each new token's position (continuing the cache's rows).
    pub positions: Vec<i64>,
    /// One additive mask per attention kind the layers use, `[b, t, keys]` row-major (0 where
    /// visible, [`crate::mask::MASKED`] elsewhere).
    pub masks: Vec<(AttentionKind, Vec<f32>)>,
    /// RoPE of full-attention layers (of all layers without `local`).
    pub global: RotaryTables,
    /// RoPE of sliding-window layers when it differs (Gemma 3).
    pub local: Option<RotaryTables>,
}

impl Prepared {
    /// Checks `input` (against the vocabulary and the cache) and builds its positions, masks
    /// and rotary tables. With a cache, `input` holds the new tokens only: positions continue
    /// each row's and the masks cover the cached keys (with their padding) then the new ones.
    ///
    /// # Errors
    /// [`crate::ModelError::Input`] for an input that does not fit its own shape or the
    /// vocabulary, a cache of other rows, or packed segments on top of a cache.
    pub fn new(lm: &CausalLm, input: &DecoderInput, cache: Option<&KvCache>) -> Result<Self> {
        let c = &lm.config;
        input.check(c.vocab_size)?;
        let empty = KvCache::default();
        let cache = cache.unwrap_or(&empty);
        cache.check_input(input)?;
        let (b, t) = (input.batch, input.seq_len);
        let past = cache.len();
        let positions = cache.positions(input);
        let key_padding = cache.key_padding(input);
        let spec = MaskSpec {
            batch: b,
            queries: t,
            keys: past + t,
            key_padding: key_padding.as_deref(),
            segments: input.segment_ids.as_deref(),
        };
        let mut masks: Vec<(AttentionKind, Vec<f32>)> = Vec::new();
        for kind in &c.layer_attention {
            if !masks.iter().any(|(k, _)| k == kind) {
                masks.push((*kind, spec.host(*kind)));
            }
        }
        let per_row = input.rope_per_row;
        let global = RotaryTables::new(&lm.rope, &positions, t, per_row);
        let local = lm
            .rope_local
            .as_ref()
            .map(|r| RotaryTables::new(r, &positions, t, per_row));
        Ok(Self {
            batch: b,
            queries: t,
            keys: past + t,
            positions,
            masks,
            global,
            local,
        })
    }

    /// For each layer (of `kinds`, the config's `layer_attention`): the index of its mask in
    /// [`Self::masks`] and whether it takes the local rotary tables.
    pub fn layer_slots(&self, kinds: &[AttentionKind]) -> Vec<(usize, bool)> {
        kinds
            .iter()
            .map(|kind| {
                let mask = self.masks.iter().position(|(k, _)| k == kind);
                let local = matches!(kind, AttentionKind::Sliding { .. }) && self.local.is_some();
                // `new` built a mask for every kind of the config.
                (mask.unwrap_or(0), local)
            })
            .collect()
    }
}
