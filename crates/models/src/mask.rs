//! Attention masks: causal, key padding, sliding window and packed-sequence segments, built on
//! the host once per forward ([`crate::prepare::Prepared`]) and shared by every layer of the
//! same attention kind.
use crate::config::AttentionKind;

/// Added to the scores of keys a query must not see (transformers uses the dtype's minimum).
pub const MASKED: f32 = f32::MIN;

/// What a query may attend to, on the host.
#[derive(Debug, Clone)]
pub struct MaskSpec<'a> {
    pub batch: usize,
    /// Number of new (query) tokens.
    pub queries: usize,
    /// Number of keys: cached plus new.
    pub keys: usize,
    /// `[b, keys]`: false where the key is padding. `None`: no padding.
    pub key_padding: Option<&'a [bool]>,
    /// `[b, keys]`: packed-sequence segment of each key; queries see only their own segment.
    pub segments: Option<&'a [u32]>,
}

impl MaskSpec<'_> {
    /// The additive mask `[b, queries, keys]` row-major (0 where visible, [`MASKED`]
    /// elsewhere) for one attention kind. Query `i` sits at key index `keys - queries + i`.
    pub fn host(&self, kind: AttentionKind) -> Vec<f32> {
        let (b, tq, tk) = (self.batch, self.queries, self.keys);
        let past = tk - tq;
        let mut data = vec![0f32; b * tq * tk];
        for r in 0..b {
            for i in 0..tq {
                let qi = past + i;
                let row = &mut data[(r * tq + i) * tk..(r * tq + i + 1) * tk];
                for (j, v) in row.iter_mut().enumerate() {
                    let mut visible = j <= qi;
                    if let AttentionKind::Sliding { window } = kind {
                        visible &= qi - j.min(qi) < window;
                    }
                    if let Some(pad) = self.key_padding {
                        visible &= pad[r * tk + j];
                    }
                    if let Some(seg) = self.segments {
                        visible &= seg[r * tk + j] == seg[r * tk + qi];
                    }
                    if !visible {
                        *v = MASKED;
                    }
                }
            }
        }
        data
    }
}
