//! A [`LoraLinear`]'s forward and backward pass on host memory, for kiln's fused CPU training
//! step (`kiln-models`' `backprop`).
//!
//! Why not burn's autodiff: on the CPU every op of the recorded graph allocates (and the kernel
//! zeroes) a fresh output, frozen weights are repacked on every product, and the backward of a
//! LoRA layer computes more than it needs. Here the frozen weight is read in place by `gemm`,
//! each adapter costs two thin products forward and four backward, and only the gradients of
//! parameters that train are computed. Same maths as [`LoraLinear::forward`]:
//! `y = x W + b + Σ_active (s · dropout(x) A) B`, with dropout masks drawn from burn's RNG in
//! the order and shape burn's `Dropout` draws them, so both paths train on the same masks
//! (and gradient checkpointing replays them, [`DropoutMasks`]). A DoRA adapter (alone on its
//! layer, without dropout) scales the sum column-wise by `m / ‖W + s·A B‖`, the norm detached
//! as in PEFT and computed from rank-sized products.

use crate::base::BaseWeight;
use crate::linear::LoraLinear;
use burn::module::ParamId;
use burn::tensor::{Device, Distribution, Tensor};
use kiln_cpu::Grads;
use kiln_cpu::Precision;
use kiln_cpu::QMatrix;
use kiln_cpu::bf16::{PackedB, PackedWeight, matmul_bf16_packed};
use kiln_cpu::host::{Storage, to_vec};
use kiln_cpu::scratch::with_scratch;
use kiln_cpu::{MatMut, MatRef, Threads, matmul, matmul_in};
use rayon::prelude::*;
use std::sync::Arc;

/// One running plain-LoRA adapter, copied to the host (adapters are small).
#[derive(Debug)]
struct HostAdapter {
    /// `[in, r]`
    a: Vec<f32>,
    /// `[r, out]`
    b: Vec<f32>,
    r: usize,
    scale: f32,
    /// `(lora_a, lora_b)` ids when the adapter trains.
    ids: Option<(ParamId, ParamId)>,
    /// Dropout's keep probability when it runs (training, on an autodiff device, `p > 0`).
    keep: Option<f64>,
    /// DoRA's magnitude and weight norm.
    dora: Option<HostDora>,
}

/// DoRA (Liu et al. 2024, <https://arxiv.org/abs/2402.09353>) as PEFT runs it:
/// `y = f ⊙ (x W + s·x A B) + b` with `f = m / ‖W + s·A B‖` per output column, the norm detached.
#[derive(Debug)]
struct HostDora {
    /// `m / ‖W + s·A B‖` `[out]`.
    factor: Vec<f32>,
    /// `‖W + s·A B‖` `[out]`.
    norm: Vec<f32>,
    /// The magnitude's id when it trains.
    id: Option<ParamId>,
}

/// A base weight as the host passes read it.
#[derive(Debug)]
enum HostWeight {
    /// `[in, out]` f32, read in place.
    Dense(Storage),
    /// `[out, in]` in its storage format, dequantized a tile at a time.
    Frozen(Arc<QMatrix>),
}

/// A [`LoraLinear`] ready for host forward and backward passes.
#[derive(Debug)]
pub struct HostLinear {
    weight: HostWeight,
    bias: Option<Vec<f32>>,
    adapters: Vec<HostAdapter>,
    weight_id: Option<ParamId>,
    /// The dense weight's parameter (trained or not): the key of its packed bf16 layouts.
    dense_id: Option<ParamId>,
    /// bf16 only, dense weights: the weight packed for the bf16 kernel (shared for the run
    /// when frozen, see [`kiln_cpu::packed`]; this call's own when it trains).
    packed: Option<Arc<PackedWeight>>,
    bias_id: Option<ParamId>,
    /// Where dropout masks are drawn (the weight's device).
    device: Device,
    /// bf16 rounds the products' inputs and outputs (see [`kiln_cpu::Precision`]).
    precision: Precision,
    pub d_in: usize,
    pub d_out: usize,
}

/// What the backward pass needs from the forward, besides the input, per adapter: `s · x A`
/// and the dropout mask scaled by `1 / keep` (`None` without dropout).
#[derive(Debug, Default)]
pub struct LinearSaved {
    u: Vec<Vec<f32>>,
    masks: Vec<Option<Vec<f32>>>,
    /// DoRA: `x W + s·x A B` `[m, out]` (the magnitude's gradient reads it).
    dora: Option<Vec<f32>>,
}

/// The dropout masks one [`HostLinear::forward`] drew, per adapter, as bits (a mask value is 0
/// or `1 / keep`), so that gradient checkpointing's recompute of a layer applies the masks of
/// its first forward instead of drawing new ones from burn's RNG. One bit per input value: for
/// Gemma 3 270M's `[1024, 640]` inputs, 80 KB per projection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DropoutMasks(Vec<Option<PackedMask>>);

#[derive(Debug, Clone, PartialEq)]
struct PackedMask {
    bits: Vec<u64>,
    len: usize,
    /// The kept values' multiplier, `1 / keep`.
    value: f32,
}

impl PackedMask {
    fn pack(mask: &[f32]) -> Self {
        let mut bits = vec![0u64; mask.len().div_ceil(64)];
        let mut value = 0f32;
        for (i, &m) in mask.iter().enumerate() {
            if m != 0.0 {
                bits[i / 64] |= 1 << (i % 64);
                value = m;
            }
        }
        Self {
            bits,
            len: mask.len(),
            value,
        }
    }

    fn unpack(&self) -> Vec<f32> {
        (0..self.len)
            .map(|i| {
                if self.bits[i / 64] >> (i % 64) & 1 == 1 {
                    self.value
                } else {
                    0.0
                }
            })
            .collect()
    }
}

impl LinearSaved {
    /// The dropout masks of this forward, to replay with [`HostLinear::forward_replay`].
    pub fn dropout_masks(&self) -> DropoutMasks {
        DropoutMasks(
            self.masks
                .iter()
                .map(|m| m.as_deref().map(PackedMask::pack))
                .collect(),
        )
    }
}

impl HostLinear {
    /// The layer as the training forward runs it, or `None` when the host path does not cover
    /// it: not on the ndarray backend in f32, or a DoRA adapter with dropout or next to other
    /// running adapters.
    pub fn new(layer: &LoraLinear) -> Option<Self> {
        let weight = match &layer.weight {
            BaseWeight::Dense(w) => HostWeight::Dense(Storage::values(&w.val())?),
            BaseWeight::Frozen(f) => HostWeight::Frozen(f.shared()),
        };
        let (d_in, d_out) = (layer.d_in(), layer.d_out());
        let bias = match &layer.bias {
            Some(b) => Some(to_vec(&b.val())?),
            None => None,
        };
        let running = layer.has_unmerged_active_adapters();
        let mut adapters = Vec::new();
        let names = layer.active_adapters();
        for name in names.iter().filter(|_| running) {
            let Some(a) = layer.adapter(name) else {
                continue;
            };
            // burn's `Dropout::forward` runs under exactly these conditions (the input is on
            // the adapters' device).
            let dropout = a.dropout.training.is_enabled()
                && a.lora_a.val().device().is_autodiff()
                && a.dropout.prob > 0.0;
            // DoRA with dropout (its base term becomes `dropout(x) W`) or next to other
            // adapters (its base term is the running sum) stays on burn's autodiff.
            if a.is_dora() && (dropout || names.len() > 1) {
                return None;
            }
            let trains = a.lora_a.is_require_grad() || a.lora_b.is_require_grad();
            adapters.push(HostAdapter {
                a: to_vec(&a.lora_a.val())?,
                b: to_vec(&a.lora_b.val())?,
                r: a.rank(),
                scale: a.scale as f32,
                ids: trains.then_some((a.lora_a.id, a.lora_b.id)),
                keep: dropout.then_some(1.0 - a.dropout.prob),
                dora: None,
            });
            if let (Some(mag), Some(ad)) = (&a.magnitude, adapters.last_mut()) {
                let magnitude = to_vec(&mag.val())?;
                let norm = dora_norm(&weight, ad, d_in, d_out)?;
                let factor = magnitude.iter().zip(&norm).map(|(m, n)| m / n).collect();
                let id = mag.is_require_grad().then_some(mag.id);
                ad.dora = Some(HostDora { factor, norm, id });
            }
        }
        Some(Self {
            weight,
            bias,
            adapters,
            weight_id: layer.weight.trained_id(),
            dense_id: match &layer.weight {
                BaseWeight::Dense(w) => Some(w.id),
                BaseWeight::Frozen(_) => None,
            },
            packed: None,
            bias_id: layer
                .bias
                .as_ref()
                .filter(|b| b.is_require_grad())
                .map(|b| b.id),
            device: layer
                .adapters
                .first()
                .map_or_else(|| layer.weight.device(), |a| a.lora_a.val().device()),
            precision: Precision::F32,
            d_in,
            d_out,
        })
    }

    /// The same layer computing in `precision`: in bf16 the adapters' matrices are rounded
    /// here and a dense weight is packed into bf16 (rounded as autocast casts it) at its first
    /// product, once per run when it is frozen and once per call when it trains. The input `x` of [`Self::forward`] and [`Self::backward`] must then already
    /// be bf16 values: the caller rounds it once, since several projections often share one
    /// input (q, k, v) and inputs saved as bf16 for the backward pass need no second rounding.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        if let (Precision::Bf16, HostWeight::Dense(w)) = (precision, &self.weight) {
            self.packed = Some(match (self.weight_id, self.dense_id) {
                (None, Some(id)) => kiln_cpu::packed::frozen(id, w),
                _ => Arc::new(PackedWeight::default()),
            });
        }
        for a in &mut self.adapters {
            precision.round(&mut a.a);
            precision.round(&mut a.b);
        }
        self
    }

    /// Calls `f` with the dense weight `[in, out]` read in place (f32; bf16 products read
    /// [`Self::packed_weight`]).
    ///
    /// # Panics
    /// For a frozen weight (a kiln bug: its products go through [`QMatrix`]).
    fn with_weight<R>(&self, f: impl FnOnce(MatRef<'_>) -> R) -> R {
        let HostWeight::Dense(weight) = &self.weight else {
            unreachable!("frozen weights multiply through their own kernels")
        };
        let wv = weight.view();
        f(MatRef::of_view(&wv).expect("weights are 2-d"))
    }

    /// The dense weight packed for `x · W`, or for `dy · Wᵀ` with `transposed` (bf16 only).
    fn packed_weight(&self, transposed: bool) -> &PackedB {
        let (HostWeight::Dense(weight), Some(p)) = (&self.weight, &self.packed) else {
            unreachable!("packed only for dense weights in bf16")
        };
        let wv = weight.view();
        let w = MatRef::of_view(&wv).expect("weights are 2-d");
        if transposed {
            p.backward(w)
        } else {
            p.forward(w)
        }
    }

    /// Whether an adapter draws dropout masks (a forward pass then consumes burn's RNG, so it
    /// cannot be recomputed).
    pub fn has_dropout(&self) -> bool {
        self.adapters.iter().any(|a| a.keep.is_some())
    }

    /// Whether any parameter of the layer trains.
    pub fn trains(&self) -> bool {
        self.weight_id.is_some()
            || self.bias_id.is_some()
            || self
                .adapters
                .iter()
                .any(|a| a.ids.is_some() || a.dora.as_ref().is_some_and(|d| d.id.is_some()))
    }

    /// `y = x W + b + Σ (s · x A) B` for `m` rows (`x` in this layer's precision, see
    /// [`Self::with_precision`]).
    ///
    /// # Shapes
    /// - x: `[m, in]` row-major; output `[m, out]`
    pub fn forward(&self, x: &[f32], m: usize) -> (Vec<f32>, LinearSaved) {
        self.forward_replay(x, m, None)
    }

    /// [`Self::forward`] applying the dropout masks an earlier forward of the same input
    /// drew (`replay`, from [`LinearSaved::dropout_masks`]) instead of drawing new ones.
    ///
    /// # Shapes
    /// - x: `[m, in]` row-major; output `[m, out]`
    pub fn forward_replay(
        &self,
        x: &[f32],
        m: usize,
        replay: Option<&DropoutMasks>,
    ) -> (Vec<f32>, LinearSaved) {
        let (k, n) = (self.d_in, self.d_out);
        debug_assert!(self.precision.holds(x), "bf16 input not rounded");
        let mut y = vec![0f32; m * n];
        match &self.weight {
            HostWeight::Dense(_) if self.packed.is_some() => matmul_bf16_packed(
                MatMut::new(&mut y, m, n),
                MatRef::new(x, m, k),
                self.packed_weight(false),
                1.0,
                false,
                Threads::All,
            ),
            HostWeight::Dense(_) => self.with_weight(|w| {
                matmul_in(
                    self.precision,
                    MatMut::new(&mut y, m, n),
                    MatRef::new(x, m, k),
                    w,
                    1.0,
                    false,
                    Threads::All,
                )
            }),
            HostWeight::Frozen(q) => q.matmul_t(x, m, &mut y, false, self.precision),
        }
        if let Some(b) = &self.bias {
            y.chunks_exact_mut(n)
                .for_each(|row| row.iter_mut().zip(b).for_each(|(y, b)| *y += b));
        }
        let mut saved = LinearSaved::default();
        for (i, ad) in self.adapters.iter().enumerate() {
            let mask = match replay {
                Some(r) => r.0.get(i).and_then(Option::as_ref).map(PackedMask::unpack),
                None => ad.keep.map(|keep| self.dropout_mask(keep, m)),
            };
            let dropped = mask.as_ref().map(|mask| self.dropped(x, mask));
            let mut u = vec![0f32; m * ad.r];
            let a = MatRef::new(&ad.a, k, ad.r);
            matmul_in(
                self.precision,
                MatMut::new(&mut u, m, ad.r),
                MatRef::new(dropped.as_deref().unwrap_or(x), m, k),
                a,
                ad.scale,
                false,
                Threads::All,
            );
            self.precision.round(&mut u);
            // bf16: PEFT's `result + lora_B(u) * scaling` adds two bf16 tensors.
            self.precision.round(&mut y);
            let b = MatRef::new(&ad.b, ad.r, n);
            match &ad.dora {
                None => self.add_product(&mut y, m, n, MatRef::new(&u, m, ad.r), b, 1.0),
                Some(dora) => {
                    saved.dora = Some(self.dora_forward(dora, &mut y, MatRef::new(&u, m, ad.r), b));
                }
            }
            saved.u.push(u);
            saved.masks.push(mask);
        }
        self.precision.round(&mut y);
        (y, saved)
    }

    /// DoRA's output from `y = x W + b`: `y ← f ⊙ (x W + u B) + b`; returns `x W + u B`.
    fn dora_forward(
        &self,
        dora: &HostDora,
        y: &mut [f32],
        u: MatRef<'_>,
        b: MatRef<'_>,
    ) -> Vec<f32> {
        let n = self.d_out;
        let m = y.len() / n.max(1);
        let mut sum = vec![0f32; m * n];
        self.add_product(&mut sum, m, n, u, b, 1.0);
        for (y, s) in y.chunks_exact_mut(n).zip(sum.chunks_exact_mut(n)) {
            for (o, (y, s)) in y.iter_mut().zip(s.iter_mut()).enumerate() {
                let bias = self.bias.as_ref().map_or(0.0, |b| b[o]);
                *s += *y - bias;
                *y = dora.factor[o] * *s + bias;
            }
        }
        sum
    }

    /// burn's `Dropout` mask for an `[m, in]` input: Bernoulli(keep) draws from the device's
    /// RNG, times `1 / keep` (`x · mask · (1/keep)` rounds as `x · (mask · 1/keep)` since the
    /// mask is 0 or 1).
    fn dropout_mask(&self, keep: f64, m: usize) -> Vec<f32> {
        let draws =
            Tensor::<2>::random([m, self.d_in], Distribution::Bernoulli(keep), &self.device);
        let inv = (1.0 / keep) as f32;
        let mut mask = to_vec(&draws).expect("f32 on the CPU");
        mask.iter_mut().for_each(|v| *v *= inv);
        mask
    }

    /// `x · mask` elementwise, rounded in bf16 (the adapter's product takes it as bf16).
    fn dropped(&self, x: &[f32], mask: &[f32]) -> Vec<f32> {
        let mut d = apply_mask(x, mask);
        self.precision.round(&mut d);
        d
    }

    /// `dst += alpha · a b` for a contiguous `[rows, cols]` `dst`; in bf16 the product (of
    /// bf16 operands, through [`matmul_in`]) is rounded before it is added, as autocast's bf16
    /// products give their gradients.
    #[allow(clippy::too_many_arguments)]
    fn add_product(
        &self,
        dst: &mut [f32],
        rows: usize,
        cols: usize,
        a: MatRef<'_>,
        b: MatRef<'_>,
        alpha: f32,
    ) {
        match self.precision {
            Precision::F32 => matmul(
                MatMut::new(dst, rows, cols),
                a,
                b,
                alpha,
                true,
                Threads::All,
            ),
            Precision::Bf16 => with_scratch(rows * cols, |t| {
                matmul_in(
                    Precision::Bf16,
                    MatMut::new(t, rows, cols),
                    a,
                    b,
                    alpha,
                    false,
                    Threads::All,
                );
                add_rounded(dst, t);
            }),
        }
    }

    /// Backward of [`Self::forward`]: adds `dy Wᵀ + Σ s · (dy Bᵀ) Aᵀ` to `dx` and the gradients
    /// of the parameters that train to `grads`. In bf16 the products read the same rounded
    /// inputs and weights as the forward, `dy` is rounded, and so is every product's result
    /// (autocast runs a bf16 product's backward in bf16); the sums stay f32.
    ///
    /// # Shapes
    /// - x: `[m, in]`, dy: `[m, out]`, dx: `[m, in]`, all row-major
    pub fn backward(
        &self,
        x: &[f32],
        saved: &LinearSaved,
        dy: &[f32],
        m: usize,
        dx: &mut [f32],
        grads: &mut Grads,
    ) {
        let (k, n) = (self.d_in, self.d_out);
        debug_assert!(self.precision.holds(x), "bf16 input not rounded");
        let dy_out = &*self.precision.input(dy);
        // DoRA: y = f ⊙ (x W + u B) + b. The magnitude gets Σ_rows dy ⊙ (x W + u B) / ‖·‖;
        // everything upstream of f sees f ⊙ dy; the bias sees dy.
        let dora = self.adapters.iter().find_map(|a| a.dora.as_ref());
        let scaled = dora.map(|dora| {
            if let (Some(id), Some(sum)) = (dora.id, &saved.dora) {
                let dm = grads.slot(id, &[n]);
                for (d, s) in dy_out.chunks_exact(n).zip(sum.chunks_exact(n)) {
                    for (o, g) in dm.iter_mut().enumerate() {
                        *g += d[o] * s[o] / dora.norm[o];
                    }
                }
            }
            let mut g = dy_out.to_vec();
            g.chunks_exact_mut(n)
                .for_each(|row| row.iter_mut().zip(&dora.factor).for_each(|(g, f)| *g *= f));
            self.precision.round(&mut g);
            g
        });
        let dy = scaled.as_deref().unwrap_or(dy_out);
        let (xm, dym) = (MatRef::new(x, m, k), MatRef::new(dy, m, n));
        match &self.weight {
            HostWeight::Dense(_) if self.packed.is_some() => with_scratch(m * k, |t| {
                let w = self.packed_weight(true);
                matmul_bf16_packed(MatMut::new(t, m, k), dym, w, 1.0, false, Threads::All);
                add_rounded(dx, t);
            }),
            HostWeight::Dense(_) => {
                self.with_weight(|w| self.add_product(dx, m, k, dym, w.t(), 1.0))
            }
            HostWeight::Frozen(q) => match self.precision {
                Precision::F32 => q.matmul(dy, m, dx, true, Precision::F32),
                Precision::Bf16 => with_scratch(m * k, |t| {
                    q.matmul(dy, m, t, false, Precision::Bf16);
                    add_rounded(dx, t);
                }),
            },
        }
        for ((ad, u), mask) in self.adapters.iter().zip(&saved.u).zip(&saved.masks) {
            let r = ad.r;
            // du = dy Bᵀ [m, r]; the adapter's input gradient is s · du Aᵀ (times the mask).
            let mut du = vec![0f32; m * r];
            let b = MatRef::new(&ad.b, r, n);
            matmul_in(
                self.precision,
                MatMut::new(&mut du, m, r),
                dym,
                b.t(),
                1.0,
                false,
                Threads::All,
            );
            self.precision.round(&mut du);
            let (a, dum) = (MatRef::new(&ad.a, k, r), MatRef::new(&du, m, r));
            match mask {
                None => self.add_product(dx, m, k, dum, a.t(), ad.scale),
                Some(mask) => {
                    let mut dxd = vec![0f32; m * k];
                    let dst = MatMut::new(&mut dxd, m, k);
                    matmul_in(
                        self.precision,
                        dst,
                        dum,
                        a.t(),
                        ad.scale,
                        false,
                        Threads::All,
                    );
                    self.precision.round(&mut dxd);
                    for ((dx, g), mk) in dx.iter_mut().zip(&dxd).zip(mask) {
                        *dx += g * mk;
                    }
                }
            }
            if let Some((a_id, b_id)) = ad.ids {
                // dA = s · dropout(x)ᵀ du [in, r]; dB = uᵀ dy [r, out] (u already carries s).
                let dropped = mask.as_ref().map(|mask| self.dropped(x, mask));
                let input = dropped.as_ref().map_or(xm, |d| MatRef::new(d, m, k));
                self.add_product(grads.slot(a_id, &[k, r]), k, r, input.t(), dum, ad.scale);
                let um = MatRef::new(u, m, r);
                self.add_product(grads.slot(b_id, &[r, n]), r, n, um.t(), dym, 1.0);
            }
        }
        if let Some(id) = self.weight_id {
            self.add_product(grads.slot(id, &[k, n]), k, n, xm.t(), dym, 1.0);
        }
        if let Some(id) = self.bias_id {
            let db = grads.slot(id, &[n]);
            for row in dy_out.chunks_exact(n) {
                db.iter_mut().zip(row).for_each(|(g, d)| *g += d);
            }
        }
    }
}

/// `dst += round_bf16(t)` elementwise: a bf16 product's result added to an f32 sum. On all
/// of rayon's threads for a layer's activations (it reads 8 and writes 4 bytes per value: on
/// one thread it was the serial part after every bf16 input-gradient product).
fn add_rounded(dst: &mut [f32], t: &[f32]) {
    let add = |(d, t): (&mut [f32], &[f32])| {
        d.iter_mut()
            .zip(t)
            .for_each(|(d, t)| *d += kiln_cpu::round_bf16(*t));
    };
    const CHUNK: usize = 1 << 14;
    if dst.len() <= CHUNK {
        add((dst, t));
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(t.par_chunks(CHUNK))
            .for_each(add);
    }
}

/// DoRA's weight norm `‖W + s·A B‖` per output column, detached, as
/// `‖W_o‖² + 2s (Aᵀ W)_o · B_o + s² B_oᵀ (Aᵀ A) B_o`: products of the adapter's rank, no
/// `[in, out]` copy of the sum (a frozen `W` is read a tile at a time).
fn dora_norm(weight: &HostWeight, ad: &HostAdapter, k: usize, n: usize) -> Option<Vec<f32>> {
    let (r, s) = (ad.r, ad.scale);
    let a = MatRef::new(&ad.a, k, r);
    let mut atw = vec![0f32; r * n]; // Aᵀ W [r, out]
    let mut wsq = vec![0f32; n];
    match weight {
        HostWeight::Dense(w) => {
            let wv = w.view();
            let wm = MatRef::of_view(&wv)?;
            matmul(
                MatMut::new(&mut atw, r, n),
                a.t(),
                wm,
                1.0,
                false,
                Threads::All,
            );
            for row in wv.outer_iter() {
                wsq.iter_mut()
                    .zip(row.iter())
                    .for_each(|(q, v)| *q += v * v);
            }
        }
        HostWeight::Frozen(q) => {
            // Rows of the stored `[out, in]` matrix are W's columns.
            let mut at = vec![0f32; r * k];
            for (i, row) in ad.a.chunks_exact(r).enumerate() {
                row.iter().enumerate().for_each(|(j, v)| at[j * k + i] = *v);
            }
            q.matmul_t(&at, r, &mut atw, false, Precision::F32);
            let ids: Vec<u32> = (0..n as u32).collect();
            let mut buf = vec![0f32; 64 * k];
            for (c, chunk) in ids.chunks(64).enumerate() {
                let buf = &mut buf[..chunk.len() * k];
                q.gather_rows(chunk, buf);
                for (j, row) in buf.chunks_exact(k).enumerate() {
                    wsq[c * 64 + j] = row.iter().map(|v| v * v).sum();
                }
            }
        }
    }
    let mut g = vec![0f32; r * r]; // Aᵀ A
    matmul(
        MatMut::new(&mut g, r, r),
        a.t(),
        a,
        1.0,
        false,
        Threads::All,
    );
    let b = &ad.b; // [r, out]
    let norm = (0..n)
        .map(|o| {
            let cross: f32 = (0..r).map(|j| atw[j * n + o] * b[j * n + o]).sum();
            let quad: f32 = (0..r)
                .map(|j| b[j * n + o] * (0..r).map(|l| g[j * r + l] * b[l * n + o]).sum::<f32>())
                .sum();
            (wsq[o] + 2.0 * s * cross + s * s * quad).sqrt()
        })
        .collect();
    Some(norm)
}

/// `x · mask` elementwise.
fn apply_mask(x: &[f32], mask: &[f32]) -> Vec<f32> {
    x.iter().zip(mask).map(|(x, m)| x * m).collect()
}
