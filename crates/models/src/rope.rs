//! Rotary position embeddings (RoPE), in the "rotate half" layout of Hugging Face checkpoints.
//!
//! Frequencies are computed in f32 the way transformers computes them, so the angles match
//! bit for bit; `cos`/`sin` tables are built on the host for the positions of a batch.
//! With a partial rotary factor (Phi-3) only the first `rotary_dim` channels of a head rotate.
use crate::config::{DecoderConfig, RopeScaling};
use burn::tensor::{Device, Tensor, TensorData};

/// Inverse frequencies of one rotary embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// `[rotary_dim / 2]`
    inv_freq: Vec<f32>,
    /// LongRoPE: the frequencies used when a forward reaches past the original context
    /// (`max(position) + 1 > original`), and that length.
    long: Option<(Vec<f32>, usize)>,
    /// Multiplies `cos` and `sin` (LongRoPE's attention factor; 1 otherwise).
    attention_scaling: f32,
}

impl Rope {
    /// The rotary embedding of full-attention layers (of every layer unless
    /// [`Rope::local`] gives one).
    pub fn new(config: &DecoderConfig) -> Self {
        Self::with_params(config.rotary_dim, config.rope_theta, &config.rope_scaling)
    }

    /// The rotary embedding of sliding-window layers when it differs (Gemma 3).
    pub fn local(config: &DecoderConfig) -> Option<Self> {
        config
            .rope_local
            .as_ref()
            .map(|p| Self::with_params(config.rotary_dim, p.theta, &p.scaling))
    }

    /// Number of channels that rotate.
    pub fn dim(&self) -> usize {
        self.inv_freq.len() * 2
    }

    /// A rotary embedding over `dim` channels with base `theta`.
    pub fn with_params(dim: usize, theta: f64, scaling: &RopeScaling) -> Self {
        let base = theta as f32;
        let exponent = |i: usize| base.powf(i as f32 / dim as f32);
        let mut inv_freq: Vec<f32> = (0..dim).step_by(2).map(|i| 1.0 / exponent(i)).collect();
        let mut long = None;
        let mut attention_scaling = 1.0;
        match scaling {
            RopeScaling::Default => {}
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                // `1 / (ext_factor * base^(i / dim))`, all in f32.
                let with = |factors: &[f64]| -> Vec<f32> {
                    (0..dim)
                        .step_by(2)
                        .zip(factors)
                        .map(|(i, &f)| 1.0 / (f as f32 * exponent(i)))
                        .collect()
                };
                inv_freq = with(short_factor);
                long = Some((with(long_factor), *original_max_position_embeddings));
                attention_scaling = *attention_factor as f32;
            }
            RopeScaling::Linear { factor } => {
                let factor = *factor as f32;
                inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *original_max_position_embeddings as f32,
                );
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                    *f = if medium {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
        }
        Self {
            inv_freq,
            long,
            attention_scaling,
        }
    }

    /// LongRoPE's original context: past it the long frequencies apply (`None` for other
    /// kinds of rotary embedding).
    pub fn long_after(&self) -> Option<usize> {
        self.long.as_ref().map(|(_, original)| *original)
    }

    /// `cos` and `sin` tables for the given positions.
    ///
    /// LongRoPE picks its long frequencies for the whole call when `max(positions) + 1` exceeds
    /// the original context, as transformers' `dynamic_rope_update` does; with `per_row`, each
    /// row picks by its own positions, as it would alone (a server batching independent
    /// requests).
    ///
    /// # Shapes
    /// - positions: `[b * t]`, row-major over `[b, t]`
    /// - output: two tensors `[b, 1, t, rotary_dim]`
    pub fn tables(
        &self,
        positions: &[i64],
        (b, t): (usize, usize),
        per_row: bool,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let (cos, sin) = self.host_tables_rows(positions, t, per_row);
        let shape = [b, 1, t, self.dim()];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// [`Self::tables`] on the host: `cos`, `sin` `[b · t, rotary_dim]` row-major, each row of
    /// `t` positions choosing LongRoPE's frequencies by its own positions when `per_row`.
    pub(crate) fn host_tables_rows(
        &self,
        positions: &[i64],
        t: usize,
        per_row: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        if !(per_row && self.long.is_some()) {
            return self.host_tables(positions);
        }
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions.len() * self.dim()),
            Vec::with_capacity(positions.len() * self.dim()),
        );
        for row in positions.chunks(t.max(1)) {
            let (c, s) = self.host_tables(row);
            cos.extend(c);
            sin.extend(s);
        }
        (cos, sin)
    }

    /// [`Self::tables`] on the host for one call: `cos`, `sin` `[positions, rotary_dim]`
    /// row-major.
    pub fn host_tables(&self, positions: &[i64]) -> (Vec<f32>, Vec<f32>) {
        let inv_freq = match &self.long {
            Some((long, original))
                if positions
                    .iter()
                    .max()
                    .is_some_and(|&m| m + 1 > *original as i64) =>
            {
                long
            }
            _ => &self.inv_freq,
        };
        let half = inv_freq.len();
        let dim = half * 2;
        let scale = self.attention_scaling;
        let mut cos = vec![0f32; positions.len() * dim];
        let mut sin = vec![0f32; positions.len() * dim];
        for (row, &p) in positions.iter().enumerate() {
            let p = p as f32;
            for (j, &f) in inv_freq.iter().enumerate() {
                let angle = f * p;
                let (s, c) = (angle as f64).sin_cos();
                let (c, s) = (c as f32 * scale, s as f32 * scale);
                let base = row * dim;
                cos[base + j] = c;
                cos[base + half + j] = c;
                sin[base + j] = s;
                sin[base + half + j] = s;
            }
        }
        (cos, sin)
    }
}

/// Rotates `x` by the tables of [`Rope::tables`]: `x * cos + rotate_half(x) * sin` on the first
/// `rotary_dim` channels; the others pass unchanged (partial rotary).
///
/// # Shapes
/// - x: `[b, heads, t, head_dim]`
/// - cos, sin: `[b, 1, t, rotary_dim]`
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    match crate::kernels::try_rotary(&x, cos, sin) {
        Some(y) => y,
        None => apply_rotary_tensors(x, cos, sin),
    }
}

/// [`apply_rotary`] with burn's tensor ops (every backend, and autodiff).
fn apply_rotary_tensors(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let rd = cos.dims()[3];
    if rd < d {
        let rot = x.clone().slice([0..b, 0..h, 0..t, 0..rd]);
        let pass = x.slice([0..b, 0..h, 0..t, rd..d]);
        return Tensor::cat(vec![apply_rotary_tensors(rot, cos, sin), pass], 3);
    }
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The CPU kernel is taken and equals the tensor path, full and partial rotary, on a
    /// transposed (non-contiguous) input as the attention passes it.
    #[test]
    fn rotary_kernel_equals_tensor_path() {
        use burn::tensor::{Device, Distribution};
        let dev = Device::default();
        let (b, h, t, d) = (2, 3, 5, 8);
        let x =
            Tensor::<4>::random([b, t, h, d], Distribution::Normal(0.0, 1.0), &dev).swap_dims(1, 2);
        for rd in [8, 4] {
            let cos = Tensor::<4>::random([b, 1, t, rd], Distribution::Normal(0.0, 1.0), &dev);
            let sin = Tensor::<4>::random([b, 1, t, rd], Distribution::Normal(0.0, 1.0), &dev);
            let fast = crate::kernels::try_rotary(&x, &cos, &sin);
            #[cfg(feature = "cpu")]
            assert!(fast.is_some());
            let Some(fast) = fast else { continue };
            let want: Vec<f32> = apply_rotary_tensors(x.clone(), &cos, &sin)
                .into_data()
                .try_into_vec()
                .unwrap();
            let got: Vec<f32> = fast.into_data().try_into_vec().unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "rotary_dim {rd}: max |diff| {worst}");
        }
    }

    #[test]
    fn default_frequencies_match_the_formula() {
        let r = Rope::with_params(8, 10_000.0, &RopeScaling::Default);
        let expected = [1.0, 0.1, 0.01, 0.001];
        for (a, e) in r.inv_freq.iter().zip(expected) {
            assert!((a - e).abs() / e < 1e-6, "{a} vs {e}");
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32.0,
        };
        let plain = Rope::with_params(16, 10_000.0, &RopeScaling::Default);
        let r = Rope::with_params(16, 10_000.0, &s);
        // wavelength 2π < 32/4: untouched; the lowest frequency (wavelength ≫ 8) is divided by 8.
        assert_eq!(r.inv_freq[0], plain.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert_eq!(r.inv_freq[last], plain.inv_freq[last] / 8.0);
    }
}
