//! A layer's base weight: a burn tensor, or a frozen matrix kept in its storage format.
//!
//! Why two kinds: a 7B model is 28 GB in f32 and about 4 GB as a Q4_0 GGUF holds it. A frozen
//! base (LoRA, QLoRA) never needs its f32 values all at once: kiln's CPU kernels multiply by it
//! a dequantized tile at a time (`kiln_cpu::quant`), and other backends get one layer's weight
//! dequantized for one product and dropped. A base that trains (full fine-tuning,
//! `modules_to_save`) or absorbs a merged adapter becomes a dense f32 tensor.
use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
    Param, ParamId,
};
use burn::tensor::{Device, Tensor, TensorData};
use kiln_cpu::QMatrix;
use std::sync::Arc;

/// The base weight of a [`crate::LoraLinear`] or an embedding table.
///
/// Layouts differ by kind: a linear layer's `Dense` tensor is `[in, out]` (burn's layout, one
/// product with no transpose) while a `Frozen` matrix is `[out, in]` as PyTorch and the files
/// store it; an embedding table is `[vocab, hidden]` in both kinds.
#[derive(Module, Debug)]
pub enum BaseWeight {
    /// A burn tensor in f32, trainable when asked.
    Dense(Param<Tensor<2>>),
    /// A frozen matrix in its storage format (ggml blocks, f16/bf16, NF4/FP4/int8).
    Frozen(Frozen),
}

/// A frozen matrix and the device its dequantized values go to.
///
/// Its [`Module`] implementation is written by hand: burn's derive treats both fields as
/// constants, so `to_device`/`fork` left `device` behind (an adapter added after
/// `model.to_device(&wgpu)` went to the old device, DoRA's norm was computed there) and
/// `devices()` did not report it. The matrix stays on the host whatever the device; products
/// dequantize it onto their input's device (`frozen_op.rs`).
#[derive(Clone, Debug)]
pub struct Frozen {
    matrix: Arc<QMatrix>,
    device: Device,
}

impl Frozen {
    /// The same matrix for layers on `device`, keeping this one's autodiff association as
    /// burn's tensors keep theirs when they move.
    fn moved(mut self, device: &Device) -> Self {
        self.device = device.clone().with_autodiff_context_from(&self.device);
        self
    }
}

impl Module for Frozen {
    fn collect_devices(&self, mut devices: Devices) -> Devices {
        if !devices.contains(&self.device) {
            devices.push(self.device.clone());
        }
        devices
    }

    fn fork(self, device: &Device) -> Self {
        self.moved(device)
    }

    fn to_device(self, device: &Device) -> Self {
        self.moved(device)
    }

    fn train(self) -> Self {
        self
    }

    fn valid(&self) -> Self {
        self.clone()
    }

    fn materialize(self) -> Self {
        self
    }

    fn visit<V: ModuleVisitor>(&self, _visitor: &mut V) {}

    fn map<M: ModuleMapper>(self, _mapper: &mut M) -> Self {
        self
    }
}

impl ModuleDisplayDefault for Frozen {
    fn content(&self, content: Content) -> Option<Content> {
        let [rows, cols] = self.matrix.shape();
        content
            .set_top_level_type("Frozen")
            .add_formatted(&format!(
                "{} [{rows}, {cols}]",
                self.matrix.quant_type().name()
            ))
            .optional()
    }
}

impl ModuleDisplay for Frozen {}

impl Frozen {
    /// Wraps `matrix` for layers on `device`.
    pub fn new(matrix: QMatrix, device: &Device) -> Self {
        Self {
            matrix: Arc::new(matrix),
            device: device.clone(),
        }
    }

    /// The matrix, in its storage format and PyTorch's layout.
    pub fn matrix(&self) -> &QMatrix {
        &self.matrix
    }

    /// A shared handle to the matrix (host kernels keep one for a step).
    pub fn shared(&self) -> Arc<QMatrix> {
        Arc::clone(&self.matrix)
    }

    /// The shared handle itself (an autodiff operation clones it into its backward state).
    pub(crate) fn handle(&self) -> &Arc<QMatrix> {
        &self.matrix
    }

    /// Also holds the matrix in the bf16 kernel's layout ([`QMatrix::hold_bf16_layout`]): bf16
    /// inference products of more than a few rows skip the per-product dequantization. A
    /// matrix shared with another holder (a clone of this layer) is copied first (its codes
    /// stay shared); returns the bytes the layout adds.
    pub fn hold_bf16_layout(&mut self) -> usize {
        let m = Arc::make_mut(&mut self.matrix);
        let before = m.bf16_layout_bytes();
        m.hold_bf16_layout();
        m.bf16_layout_bytes() - before
    }

    /// The whole matrix dequantized as a burn tensor on `device`, in the stored layout
    /// (`[rows, cols]`).
    pub fn dequantized(&self, device: &Device) -> Tensor<2> {
        let [r, c] = self.matrix.shape();
        Tensor::from_data(TensorData::new(self.matrix.to_f32(), [r, c]), device)
    }
}

impl BaseWeight {
    /// A dense frozen weight.
    pub fn dense(w: Tensor<2>) -> Self {
        BaseWeight::Dense(Param::from_tensor(w).set_require_grad(false))
    }

    /// A frozen matrix kept as stored.
    pub fn frozen(matrix: QMatrix, device: &Device) -> Self {
        BaseWeight::Frozen(Frozen::new(matrix, device))
    }

    /// The device the layer lives on.
    pub fn device(&self) -> Device {
        match self {
            BaseWeight::Dense(w) => w.val().device(),
            BaseWeight::Frozen(f) => f.device.clone(),
        }
    }

    /// The frozen matrix, when the weight is kept as stored.
    pub fn as_frozen(&self) -> Option<&Frozen> {
        match self {
            BaseWeight::Frozen(f) => Some(f),
            BaseWeight::Dense(_) => None,
        }
    }

    /// The dense parameter, when the weight is a burn tensor.
    pub fn as_dense(&self) -> Option<&Param<Tensor<2>>> {
        match self {
            BaseWeight::Dense(w) => Some(w),
            BaseWeight::Frozen(_) => None,
        }
    }

    /// Whether the weight trains.
    pub fn is_require_grad(&self) -> bool {
        matches!(self, BaseWeight::Dense(w) if w.is_require_grad())
    }

    /// The parameter id of a dense weight that trains.
    pub fn trained_id(&self) -> Option<ParamId> {
        match self {
            BaseWeight::Dense(w) if w.is_require_grad() => Some(w.id),
            _ => None,
        }
    }

    /// Makes the weight a dense f32 tensor (dequantizing a frozen one, in `layout`) so that it
    /// can train or absorb a merge; a dense weight is left as it is.
    pub fn densify(&mut self, layout: Layout) {
        if let BaseWeight::Frozen(_) = self {
            *self = BaseWeight::dense(self.values(layout));
        }
    }

    /// `[rows, cols]` of the dense form in `layout`.
    pub fn dims(&self, layout: Layout) -> [usize; 2] {
        match (self, layout) {
            (BaseWeight::Dense(w), _) => w.shape().dims::<2>(),
            (BaseWeight::Frozen(f), Layout::Linear) => [f.matrix.cols(), f.matrix.rows()],
            (BaseWeight::Frozen(f), Layout::Table) => f.matrix.shape(),
        }
    }

    /// The values as a dense tensor in `layout`: the parameter itself, or a frozen matrix
    /// dequantized for this call (merges, DoRA's norm, saving; never the products).
    pub fn values(&self, layout: Layout) -> Tensor<2> {
        match (self, layout) {
            (BaseWeight::Dense(w), _) => w.val(),
            (BaseWeight::Frozen(f), Layout::Linear) => f.dequantized(&f.device).transpose(),
            (BaseWeight::Frozen(f), Layout::Table) => f.dequantized(&f.device),
        }
    }

    /// Replaces the values by a dense tensor in `layout` (a frozen weight becomes dense),
    /// keeping the parameter's id and whether it trains.
    pub fn replace(&mut self, value: Tensor<2>, layout: Layout) {
        self.densify(layout);
        if let BaseWeight::Dense(w) = self {
            replace_value(w, value);
        }
    }

    /// Lets the weight train (dequantized to a dense tensor first) or freezes it.
    pub fn set_trainable(&mut self, trainable: bool, layout: Layout) {
        if trainable {
            self.densify(layout);
        }
        if let BaseWeight::Dense(w) = self {
            *w = w.clone().set_require_grad(trainable);
        }
    }

    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        match self {
            BaseWeight::Dense(w) => w.shape().num_elements(),
            BaseWeight::Frozen(f) => f.matrix.rows() * f.matrix.cols(),
        }
    }
}

/// How the dense form of a weight is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A linear layer: dense `[in, out]`, frozen `[out, in]`.
    Linear,
    /// An embedding table: `[vocab, hidden]` in both forms.
    Table,
}

/// Replaces a parameter's value, keeping its id and whether it trains.
pub(crate) fn replace_value<const D: usize>(p: &mut Param<Tensor<D>>, value: Tensor<D>) {
    let trainable = p.is_require_grad();
    let value = value.detach();
    *p = p.clone().map(|_| {
        if trainable {
            value.require_grad()
        } else {
            value
        }
    });
}
