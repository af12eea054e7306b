//! One pre-norm decoder layer forward and backward on host rows: the Llama layout, Gemma's
//! sandwich norms and q/k norms, and Phi-3's fused `qkv_proj` / `gate_up_proj`.
use super::attn::{self, Dims};
use super::ops::{Norm, RopeTables, gated, gated_backward};
use crate::config::Activation;
use crate::decoder::DecoderLayer;
use crate::proj::{GateUpProj, QkvProj};
use burn::module::ParamId;
use kiln_cpu::Grads;
use kiln_cpu::host::to_vec;
use kiln_cpu::{Precision, Stash};
use kiln_lora::backprop::{DropoutMasks, HostLinear, LinearSaved};

/// A decoder layer's weights, ready for host passes.
#[derive(Debug)]
pub(super) struct HostLayer {
    qkv: Qkv,
    o: HostLinear,
    gate_up: GateUp,
    down: HostLinear,
    /// `input_layernorm`.
    norm_in: LayerNorm,
    /// Gemma 3: RMSNorm over `head_dim` of every query and key head, before RoPE.
    qk_norm: Option<[LayerNorm; 2]>,
    /// Gemma: `post_attention_layernorm`, the norm of the attention's output.
    attn_out: Option<LayerNorm>,
    /// The norm of the MLP's input: Llama's `post_attention_layernorm`, Gemma's
    /// `pre_feedforward_layernorm`.
    norm_mlp: LayerNorm,
    /// Gemma: `post_feedforward_layernorm`, the norm of the MLP's output.
    mlp_out: Option<LayerNorm>,
    dims: Dims,
    activation: Activation,
    precision: Precision,
}

/// An RMSNorm with its scale already offset, and its weight's id when it trains.
#[derive(Debug)]
struct LayerNorm {
    norm: Norm,
    id: Option<ParamId>,
}

impl LayerNorm {
    fn new(n: &crate::norm::RmsNorm) -> Option<Self> {
        let mut scale = to_vec(&n.weight.val())?;
        if n.unit_offset() {
            scale.iter_mut().for_each(|w| *w += 1.0);
        }
        let id = n.weight.is_require_grad().then_some(n.weight.id);
        let eps = n.eps() as f32;
        Some(Self {
            norm: Norm { scale, eps },
            id,
        })
    }

    /// Adds the gradient of the input to `dx`, the weight's to `grads`.
    fn backward(&self, x: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32], grads: &mut Grads) {
        let dw = self.norm.backward(x, rstd, dy, dx, self.id.is_some());
        add_norm_grad(grads, self.id, dw);
    }

    /// The gradient of the input alone (the weight's goes to `grads`).
    fn backward_new(&self, x: &[f32], rstd: &[f32], dy: &[f32], grads: &mut Grads) -> Vec<f32> {
        let mut dx = vec![0f32; x.len()];
        self.backward(x, rstd, dy, &mut dx, grads);
        dx
    }
}

/// The attention's input projections: separate, or Phi-3's fused `qkv_proj` (output columns
/// `[q | k | v]`, adapters on the fused module as PEFT puts them).
type Qkv = QkvProj<HostLinear>;

/// The MLP's input projections: separate, or Phi-3's fused `gate_up_proj` (`[gate | up]`).
type GateUp = GateUpProj<HostLinear>;

/// What a [`Qkv`] or [`GateUp`] forward keeps: one per projection, or one for the fused one.
type ProjSaved = Vec<LinearSaved>;

/// Per-call inputs shared by the layers: the mask and RoPE tables of the layer's kind.
pub(super) struct LayerInputs<'a> {
    pub mask: &'a attn::Mask,
    pub rope: &'a RopeTables,
}

/// What the backward pass needs from the forward. The residual stream (`x`, `h`) and the
/// per-row statistics stay f32; the products' inputs and outputs are kept in the step's
/// precision (bf16 halves them).
pub(super) struct Saved {
    x: Vec<f32>,
    n1: Stash,
    rstd1: Vec<f32>,
    qkv: ProjSaved,
    o: LinearSaved,
    gate_up: ProjSaved,
    down: LinearSaved,
    /// Gemma 3: q and k before their norms, and the norms' statistics.
    qk_raw: Option<[(Stash, Vec<f32>); 2]>,
    /// After RoPE.
    q: Stash,
    k: Stash,
    v: Stash,
    attn: Stash,
    lse: Vec<f32>,
    /// Gemma: the attention's output before its norm, and the norm's statistics.
    o_raw: Option<(Stash, Vec<f32>)>,
    h: Vec<f32>,
    n2: Stash,
    rstd2: Vec<f32>,
    gate: Stash,
    up: Stash,
    /// Gemma: the MLP's output before its norm, and the norm's statistics.
    y_raw: Option<(Stash, Vec<f32>)>,
}

impl HostLayer {
    /// The layer, or `None` when this path does not cover it (a DoRA adapter, a backend other
    /// than ndarray, heads that do not group).
    pub fn new(
        layer: &DecoderLayer,
        batch: usize,
        t: usize,
        activation: Activation,
        precision: Precision,
    ) -> Option<Self> {
        let a = &layer.self_attn;
        let m = &layer.mlp;
        if a.num_kv_heads == 0 || !a.num_heads.is_multiple_of(a.num_kv_heads) {
            return None;
        }
        let linear =
            |l: &kiln_lora::LoraLinear| HostLinear::new(l).map(|h| h.with_precision(precision));
        let qkv = a.qkv.as_ref().try_map_each(|_, l| linear(l))?;
        let gate_up = m.gate_up.as_ref().try_map_each(|_, l| linear(l))?;
        let qk_norm = match (&a.q_norm, &a.k_norm) {
            (Some(q), Some(k)) => Some([LayerNorm::new(q)?, LayerNorm::new(k)?]),
            (None, None) => None,
            _ => return None,
        };
        // Gemma's sandwich: `post_attention_layernorm` normalises the attention's output and
        // `pre_feedforward_layernorm` the MLP's input (as `DecoderLayer::forward`).
        let post = LayerNorm::new(&layer.post_attention_layernorm)?;
        let (attn_out, norm_mlp, mlp_out) = match (
            &layer.pre_feedforward_layernorm,
            &layer.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(out)) => {
                (Some(post), LayerNorm::new(pre)?, Some(LayerNorm::new(out)?))
            }
            _ => (None, post, None),
        };
        Some(Self {
            qkv,
            o: linear(&a.o_proj)?,
            gate_up,
            down: linear(&m.down_proj)?,
            norm_in: LayerNorm::new(&layer.input_layernorm)?,
            qk_norm,
            attn_out,
            norm_mlp,
            mlp_out,
            dims: Dims {
                batch,
                t,
                heads: a.num_heads,
                kv_heads: a.num_kv_heads,
                head_dim: a.head_dim,
                scale: a.scale as f32,
                softcap: a.softcap.map(|c| c as f32),
                precision,
            },
            activation,
            precision,
        })
    }

    /// `[q, k, v]` of the normed input `n1` (`[n, hidden]`).
    fn project_qkv(&self, n1: &[f32], n: usize, r: &Replay<'_>) -> ([Vec<f32>; 3], ProjSaved) {
        match &self.qkv {
            Qkv::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => {
                let (q, sq) = q_proj.forward_replay(n1, n, r.get(0));
                let (k, sk) = k_proj.forward_replay(n1, n, r.get(1));
                let (v, sv) = v_proj.forward_replay(n1, n, r.get(2));
                ([q, k, v], vec![sq, sk, sv])
            }
            Qkv::Fused { qkv_proj: l } => {
                let (y, s) = l.forward_replay(n1, n, r.get(0));
                let (qw, kw) = (self.dims.q_width(), self.dims.kv_width());
                (split_columns(&y, [qw, kw, kw]), vec![s])
            }
        }
    }

    /// Backward of [`Self::project_qkv`]: adds to `dn1`.
    fn project_qkv_backward(
        &self,
        n1: &[f32],
        saved: &ProjSaved,
        d: [&[f32]; 3],
        dn1: &mut [f32],
        grads: &mut Grads,
    ) {
        let n = self.dims.batch * self.dims.t;
        match &self.qkv {
            Qkv::Separate { .. } => {
                for (((_, l), s), d) in self.qkv.named().into_iter().zip(saved).zip(d) {
                    l.backward(n1, s, d, n, dn1, grads);
                }
            }
            Qkv::Fused { qkv_proj: l } => {
                let (qw, kw) = (self.dims.q_width(), self.dims.kv_width());
                let dy = join_columns(d, n, [qw, kw, kw]);
                l.backward(n1, &saved[0], &dy, n, dn1, grads);
            }
        }
    }

    /// `[gate, up]` of the normed input `n2`.
    fn project_gate_up(&self, n2: &[f32], n: usize, r: &Replay<'_>) -> ([Vec<f32>; 2], ProjSaved) {
        let first = self.qkv_count() + 1;
        match &self.gate_up {
            GateUp::Separate { gate_proj, up_proj } => {
                let (g, sg) = gate_proj.forward_replay(n2, n, r.get(first));
                let (u, su) = up_proj.forward_replay(n2, n, r.get(first + 1));
                ([g, u], vec![sg, su])
            }
            GateUp::Fused { gate_up_proj: l } => {
                let (y, s) = l.forward_replay(n2, n, r.get(first));
                let half = l.d_out / 2;
                (split_columns(&y, [half, half]), vec![s])
            }
        }
    }

    /// Backward of [`Self::project_gate_up`]: adds to `dn2`.
    fn project_gate_up_backward(
        &self,
        n2: &[f32],
        saved: &ProjSaved,
        d: [&[f32]; 2],
        dn2: &mut [f32],
        grads: &mut Grads,
    ) {
        let n = self.dims.batch * self.dims.t;
        match &self.gate_up {
            GateUp::Separate { .. } => {
                for (((_, l), s), d) in self.gate_up.named().into_iter().zip(saved).zip(d) {
                    l.backward(n2, s, d, n, dn2, grads);
                }
            }
            GateUp::Fused { gate_up_proj: l } => {
                let half = l.d_out / 2;
                let dy = join_columns(d, n, [half, half]);
                l.backward(n2, &saved[0], &dy, n, dn2, grads);
            }
        }
    }

    /// How many projections [`Self::project_qkv`] runs.
    fn qkv_count(&self) -> usize {
        match &self.qkv {
            Qkv::Separate { .. } => 3,
            Qkv::Fused { .. } => 1,
        }
    }

    /// The layer's output `[b·t, hidden]` and what its backward needs. With `replay` (from
    /// [`Self::checkpoint`]) the adapters apply the dropout masks of an earlier forward of the
    /// same input instead of drawing new ones.
    pub fn forward(
        &self,
        x: Vec<f32>,
        inputs: &LayerInputs<'_>,
        replay: Option<&[DropoutMasks]>,
    ) -> (Vec<f32>, Saved) {
        let r = Replay(replay);
        let n = self.dims.batch * self.dims.t;
        let hd = self.dims.head_dim;
        let p = self.precision;
        // Products' inputs are rounded once here (HostLinear expects them so).
        let (mut n1, rstd1) = self.norm_in.norm.forward(&x);
        p.round(&mut n1);
        let ([mut q, mut k, v], qkv) = self.project_qkv(&n1, n, &r);
        let qk_raw = self.qk_norm.as_ref().map(|[qn, kn]| {
            // Over `head_dim`: every head of every row is a row of the norm. In bf16 the
            // projections' outputs are bf16 tensors in autocast.
            p.round(&mut q);
            p.round(&mut k);
            let (q1, rq) = qn.norm.forward(&q);
            let (k1, rk) = kn.norm.forward(&k);
            let (qr, kr) = (std::mem::replace(&mut q, q1), std::mem::replace(&mut k, k1));
            [(p.stash(qr), rq), (p.stash(kr), rk)]
        });
        inputs.rope.rotate(&mut q, hd, false);
        inputs.rope.rotate(&mut k, hd, false);
        p.round(&mut q);
        p.round(&mut k);
        let (mut attn, lse) = attn::forward(self.dims, &q, &k, &v, inputs.mask);
        p.round(&mut attn);
        let (mut o, so) = self.o.forward_replay(&attn, n, r.get(self.qkv_count()));
        let o_raw = self.attn_out.as_ref().map(|norm| sandwich(norm, &mut o, p));
        let mut h = x.clone();
        h.iter_mut().zip(&o).for_each(|(h, o)| *h += o);
        drop(o);
        let (mut n2, rstd2) = self.norm_mlp.norm.forward(&h);
        p.round(&mut n2);
        let ([gate, up], gate_up) = self.project_gate_up(&n2, n, &r);
        let act = gated(self.activation, self.precision, &gate, &up);
        let down_at = self.qkv_count() + 1 + gate_up_count(&self.gate_up);
        let (mut y, sd) = self.down.forward_replay(&act, n, r.get(down_at));
        drop(act);
        let y_raw = self.mlp_out.as_ref().map(|norm| sandwich(norm, &mut y, p));
        let mut out = h.clone();
        out.iter_mut().zip(&y).for_each(|(o, y)| *o += y);
        let saved = Saved {
            x,
            n1: p.stash(n1),
            rstd1,
            qkv,
            o: so,
            gate_up,
            down: sd,
            qk_raw,
            q: p.stash(q),
            k: p.stash(k),
            v: p.stash(v),
            attn: p.stash(attn),
            lse,
            o_raw,
            h,
            n2: p.stash(n2),
            rstd2,
            gate: p.stash(gate),
            up: p.stash(up),
            y_raw,
        };
        (out, saved)
    }

    /// The gradient of the layer's input from that of its output; parameter gradients go to
    /// `grads`.
    pub fn backward(
        &self,
        s: &Saved,
        dout: Vec<f32>,
        inputs: &LayerInputs<'_>,
        grads: &mut Grads,
    ) -> Vec<f32> {
        let n = self.dims.batch * self.dims.t;
        let hd = self.dims.head_dim;
        // out = h + [mlp_out](down(act(gate) · up))
        let dy = match (&self.mlp_out, &s.y_raw) {
            (Some(norm), Some((y, r))) => Some(norm.backward_new(&y.get(), r, &dout, grads)),
            _ => None,
        };
        let (gate, up) = (s.gate.get(), s.up.get());
        let act = gated(self.activation, self.precision, &gate, &up);
        let mut dact = vec![0f32; act.len()];
        let dy_ref = dy.as_deref().unwrap_or(&dout);
        self.down
            .backward(&act, &s.down, dy_ref, n, &mut dact, grads);
        drop((act, dy));
        let (dgate, dup) = gated_backward(self.activation, self.precision, &gate, &up, &dact);
        drop((dact, gate, up));
        let n2 = s.n2.get();
        let mut dn2 = vec![0f32; n2.len()];
        self.project_gate_up_backward(&n2, &s.gate_up, [&dgate, &dup], &mut dn2, grads);
        drop((n2, dgate, dup));
        let mut dh = dout;
        self.norm_mlp.backward(&s.h, &s.rstd2, &dn2, &mut dh, grads);
        drop(dn2);
        // h = x + [attn_out](o_proj(attention(rope([q_norm](q)), rope([k_norm](k)), v)))
        let do_ = match (&self.attn_out, &s.o_raw) {
            (Some(norm), Some((o, r))) => Some(norm.backward_new(&o.get(), r, &dh, grads)),
            _ => None,
        };
        let attn = s.attn.get();
        let mut dattn = vec![0f32; attn.len()];
        let do_ref = do_.as_deref().unwrap_or(&dh);
        self.o.backward(&attn, &s.o, do_ref, n, &mut dattn, grads);
        drop(do_);
        let (mut dq, mut dk, dv) = attn::backward(
            self.dims,
            &s.q.get(),
            &s.k.get(),
            &s.v.get(),
            inputs.mask,
            &attn,
            &s.lse,
            &dattn,
        );
        drop((dattn, attn));
        inputs.rope.rotate(&mut dq, hd, true);
        inputs.rope.rotate(&mut dk, hd, true);
        if let (Some([qn, kn]), Some([(q, rq), (k, rk)])) = (&self.qk_norm, &s.qk_raw) {
            dq = qn.backward_new(&q.get(), rq, &dq, grads);
            dk = kn.backward_new(&k.get(), rk, &dk, grads);
        }
        let n1 = s.n1.get();
        let mut dn1 = vec![0f32; n1.len()];
        self.project_qkv_backward(&n1, &s.qkv, [&dq, &dk, &dv], &mut dn1, grads);
        drop(n1);
        let mut dx = dh;
        self.norm_in.backward(&s.x, &s.rstd1, &dn1, &mut dx, grads);
        dx
    }

    /// What gradient checkpointing keeps of a forward: the layer's input and the dropout
    /// masks its adapters drew (bits), in the order [`Self::forward`] replays them.
    pub fn checkpoint(saved: Saved) -> (Vec<f32>, Vec<DropoutMasks>) {
        let masks = saved
            .qkv
            .iter()
            .chain([&saved.o])
            .chain(&saved.gate_up)
            .chain([&saved.down])
            .map(LinearSaved::dropout_masks)
            .collect();
        (saved.x, masks)
    }
}

fn gate_up_count(g: &GateUp) -> usize {
    match g {
        GateUp::Separate { .. } => 2,
        GateUp::Fused { .. } => 1,
    }
}

/// The dropout masks a recomputed forward replays, one per projection in forward order.
struct Replay<'a>(Option<&'a [DropoutMasks]>);

impl<'a> Replay<'a> {
    fn get(&self, i: usize) -> Option<&'a DropoutMasks> {
        self.0.and_then(|r| r.get(i))
    }
}

/// Gemma's norm of a block's output: replaces `y` by `norm(y)` (rounded in bf16, as
/// transformers' norm returns its input's dtype) and returns the input kept for the backward
/// pass with the norm's statistics.
fn sandwich(norm: &LayerNorm, y: &mut Vec<f32>, p: Precision) -> (Stash, Vec<f32>) {
    p.round(y); // bf16: the projection's output is a bf16 tensor in autocast
    let (mut normed, rstd) = norm.norm.forward(y);
    p.round(&mut normed);
    (p.stash(std::mem::replace(y, normed)), rstd)
}

/// Splits the columns of a row-major `[rows, Σ widths]` matrix into one matrix per width.
fn split_columns<const N: usize>(y: &[f32], widths: [usize; N]) -> [Vec<f32>; N] {
    let total: usize = widths.iter().sum();
    let rows = y.len() / total.max(1);
    let mut out = widths.map(|w| Vec::with_capacity(rows * w));
    for row in y.chunks_exact(total) {
        let mut c0 = 0;
        for (o, w) in out.iter_mut().zip(widths) {
            o.extend_from_slice(&row[c0..c0 + w]);
            c0 += w;
        }
    }
    out
}

/// The inverse of [`split_columns`].
fn join_columns<const N: usize>(parts: [&[f32]; N], rows: usize, widths: [usize; N]) -> Vec<f32> {
    let total: usize = widths.iter().sum();
    let mut y = Vec::with_capacity(rows * total);
    for r in 0..rows {
        for (p, w) in parts.iter().zip(widths) {
            y.extend_from_slice(&p[r * w..][..w]);
        }
    }
    y
}

/// Adds a norm weight's gradient. A unit-offset scale `1 + w` has the same gradient as `w`.
pub(super) fn add_norm_grad(grads: &mut Grads, id: Option<ParamId>, dw: Option<Vec<f32>>) {
    if let (Some(id), Some(dw)) = (id, dw) {
        grads.add(id, &[dw.len()], &dw);
    }
}
