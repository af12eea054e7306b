//! One low-rank adapter: the factors A and B, DoRA's magnitude, dropout and the scale.
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::InitLoraWeights;
use crate::error::{LoraError, Result};
use crate::init;
use crate::svd::svd_top_r;

/// A low-rank adapter `scale · (x A) B` on a linear layer with weight `[in, out]`.
///
/// The factors are stored in burn's `[in, out]` orientation, i.e. transposed with respect to
/// PEFT's `lora_A.weight [r, in]` and `lora_B.weight [out, r]`; saving and loading transpose.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// A `[in, r]`.
    pub lora_a: Param<Tensor<2>>,
    /// B `[r, out]`.
    pub lora_b: Param<Tensor<2>>,
    /// DoRA magnitude `[out]` (PEFT's `lora_magnitude_vector`), `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Dropout on the adapter input (active only in training on an autodiff device).
    pub dropout: Dropout,
    /// Adapter name (PEFT's adapter name, `default` by default).
    pub name: String,
    /// `lora_alpha` for this module.
    pub alpha: f64,
    /// `alpha / r`, or `alpha / √r` with rsLoRA.
    pub scale: f64,
}

/// What a new adapter on one layer looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    /// Rank.
    pub r: usize,
    /// Alpha.
    pub alpha: f64,
    /// Scale applied to `x A B`.
    pub scale: f64,
    /// Dropout probability on the adapter input.
    pub dropout: f64,
    /// Initialisation.
    pub init: InitLoraWeights,
    /// DoRA.
    pub use_dora: bool,
}

impl LoraAdapter {
    /// Builds an adapter from PEFT-layout factors, checking shapes against the layer.
    ///
    /// # Shapes
    /// - `lora_a`: `[in, r]`, `lora_b`: `[r, out]`, `magnitude`: `[out]`
    pub fn from_factors(
        name: &str,
        lora_a: Tensor<2>,
        lora_b: Tensor<2>,
        magnitude: Option<Tensor<1>>,
        alpha: f64,
        scale: f64,
        dropout: f64,
    ) -> Self {
        Self {
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            magnitude: magnitude.map(Param::from_tensor),
            // `LoraConfig::validate` rejects other values; burn's dropout would panic on them.
            dropout: DropoutConfig::new(if (0.0..1.0).contains(&dropout) {
                dropout
            } else {
                0.0
            })
            .init(),
            name: name.to_string(),
            alpha,
            scale,
        }
    }

    /// Creates a fresh adapter for a base weight `[in, out]` as PEFT initialises it. `dense`
    /// gives the base weight's values (dequantized for a frozen matrix); only PiSSA and DoRA
    /// call it.
    ///
    /// Returns the adapter and, for PiSSA, the residual base weight that must replace the layer's
    /// weight (`W - scale · A B`). Random values come from `rng` on the host (see
    /// [`crate::manual_seed`]), so every backend gets the same adapter.
    pub fn init(
        name: &str,
        spec: &AdapterSpec,
        [d_in, d_out]: [usize; 2],
        device: &Device,
        dense: &dyn Fn() -> Tensor<2>,
        rng: &mut rand::rngs::StdRng,
    ) -> Result<(Self, Option<Tensor<2>>)> {
        let r = spec.r;
        let mut kaiming = |fan_in: usize, shape: [usize; 2]| {
            // torch `kaiming_uniform_(a=√5)`: gain √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√fan_in.
            init::uniform(rng, shape, 1.0 / (fan_in as f64).sqrt(), device)
        };
        let mut residual = None;
        let (a, b) = match &spec.init {
            InitLoraWeights::Kaiming => {
                (kaiming(d_in, [d_in, r]), Tensor::zeros([r, d_out], device))
            }
            InitLoraWeights::Random => (kaiming(d_in, [d_in, r]), kaiming(r, [r, d_out])),
            InitLoraWeights::Gaussian => (
                // PEFT: `normal_(lora_A, std=1 / r)`.
                init::normal(rng, [d_in, r], 1.0 / r as f64, device),
                Tensor::zeros([r, d_out], device),
            ),
            InitLoraWeights::Pissa => {
                let (a, b, res) = pissa(&dense(), r, spec.scale)?;
                residual = Some(res);
                (a, b)
            }
            InitLoraWeights::Other(o) => {
                return Err(LoraError::Config {
                    field: "init_lora_weights".into(),
                    reason: format!("`{o}` is not supported for new adapters"),
                });
            }
        };
        let magnitude = spec.use_dora.then(|| {
            let base = residual.clone().unwrap_or_else(dense);
            dora_weight_norm(&base, &a, &b, spec.scale)
        });
        let adapter = Self::from_factors(
            name,
            a.detach(),
            b.detach(),
            magnitude,
            spec.alpha,
            spec.scale,
            spec.dropout,
        );
        Ok((adapter, residual))
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.lora_a.shape().dims::<2>()[1]
    }

    /// Whether this is a DoRA adapter.
    pub fn is_dora(&self) -> bool {
        self.magnitude.is_some()
    }

    /// `scale · A B`, the adapter's weight delta in the layer's `[in, out]` layout.
    /// Only for merging; the forward never builds it.
    pub fn delta_weight(&self) -> Tensor<2> {
        self.lora_a
            .val()
            .matmul(self.lora_b.val())
            .mul_scalar(self.scale)
    }

    /// `scale · (x A) B` on an input the caller already passed through dropout.
    ///
    /// # Shapes
    /// - x: `[..., in]` -> `[..., out]`
    pub fn lora_path<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = linear_nb(x, self.lora_a.val()).mul_scalar(self.scale); // [..., r]
        linear_nb(h, self.lora_b.val())
    }

    /// Number of parameters of the adapter.
    pub fn num_params(&self) -> usize {
        Module::num_params(self)
    }

    /// Sets whether the factors (and magnitude) train.
    pub fn set_trainable(self, trainable: bool) -> Self {
        Self {
            lora_a: self.lora_a.set_require_grad(trainable),
            lora_b: self.lora_b.set_require_grad(trainable),
            magnitude: self.magnitude.map(|m| m.set_require_grad(trainable)),
            ..self
        }
    }
}

/// `x W` without bias for any rank of `x`.
pub(crate) fn linear_nb<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    crate::kernels::linear(x, w, None)
}

/// DoRA's weight norm: the L2 norm of each output row of `W + scale · B A` (PyTorch layout), i.e.
/// each column of `W + scale · A B` in burn's `[in, out]` layout. Detached, as PEFT does.
///
/// # Shapes
/// - weight `[in, out]`, a `[in, r]`, b `[r, out]` -> `[out]`
pub fn dora_weight_norm(weight: &Tensor<2>, a: &Tensor<2>, b: &Tensor<2>, scale: f64) -> Tensor<1> {
    let w = weight.clone().detach()
        + a.clone()
            .detach()
            .matmul(b.clone().detach())
            .mul_scalar(scale);
    column_norm(w)
}

/// L2 norm of each column of `[in, out]` (each output row in PyTorch layout), detached.
///
/// # Shapes
/// - w `[in, out]` -> `[out]`
pub fn column_norm(w: Tensor<2>) -> Tensor<1> {
    w.detach().square().sum_dim(0).sqrt().squeeze_dim::<1>(0)
}

/// PiSSA (PEFT `pissa_init`): `W^T = U S V^T`; `lora_B = U_r √(S_r/scale)`,
/// `lora_A = √(S_r/scale) V_r^T`; the base keeps `W - scale · A B`.
fn pissa(weight: &Tensor<2>, r: usize, scale: f64) -> Result<(Tensor<2>, Tensor<2>, Tensor<2>)> {
    let [d_in, d_out] = weight.dims();
    if r > d_in.min(d_out) {
        return Err(LoraError::Config {
            field: "r".into(),
            reason: format!(
                "PiSSA needs r <= min(in, out) = {}, found {r}",
                d_in.min(d_out)
            ),
        });
    }
    let device = weight.device();
    let data: Vec<f32> = weight
        .clone()
        .transpose()
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .map_err(|e| LoraError::State(format!("PiSSA: reading the base weight: {e:?}")))?;
    // PyTorch layout [out, in] = U S V^T.
    let (u, s, vt) = svd_top_r(&data, d_out, d_in, r);
    let mut b = vec![0f32; d_out * r]; // lora_B.weight [out, r]
    let mut a = vec![0f32; r * d_in]; // lora_A.weight [r, in]
    for k in 0..r {
        let root = (s[k] / scale).sqrt();
        for o in 0..d_out {
            b[o * r + k] = (u[o * r + k] * root) as f32;
        }
        for i in 0..d_in {
            a[k * d_in + i] = (vt[k * d_in + i] * root) as f32;
        }
    }
    let a = Tensor::<2>::from_data(TensorData::new(a, [r, d_in]), &device).transpose(); // [in, r]
    let b = Tensor::<2>::from_data(TensorData::new(b, [d_out, r]), &device).transpose(); // [r, out]
    let residual = weight.clone() - a.clone().matmul(b.clone()).mul_scalar(scale);
    Ok((a, b, residual))
}
