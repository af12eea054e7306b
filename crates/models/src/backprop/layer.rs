//! One pre-norm decoder layer (Llama layout) forward and backward on host rows.
use super::attn::{self, Dims};
use super::ops::{Norm, RopeTables, gated, gated_backward};
use crate::config::Activation;
use crate::decoder::DecoderLayer;
use burn::module::ParamId;
use kiln_cpu::precision::{Precision, Stash};
use kiln_lora::backprop::{Grads, HostLinear, LinearSaved};
use kiln_lora::host::to_vec;

/// A decoder layer's weights, ready for host passes.
#[derive(Debug)]
pub(super) struct HostLayer {
    q: HostLinear,
    k: HostLinear,
    v: HostLinear,
    o: HostLinear,
    gate: HostLinear,
    up: HostLinear,
    down: HostLinear,
    norm1: Norm,
    norm2: Norm,
    /// Ids of the two norm weights when they train.
    norm_ids: [Option<ParamId>; 2],
    dims: Dims,
    activation: Activation,
    precision: Precision,
}

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
    lin: [LinearSaved; 7],
    /// After RoPE.
    q: Stash,
    k: Stash,
    v: Stash,
    attn: Stash,
    lse: Vec<f32>,
    h: Vec<f32>,
    n2: Stash,
    rstd2: Vec<f32>,
    gate: Stash,
    up: Stash,
}

fn norm(n: &crate::norm::RmsNorm) -> Option<(Norm, Option<ParamId>)> {
    let mut scale = to_vec(&n.weight.val())?;
    if n.unit_offset() {
        scale.iter_mut().for_each(|w| *w += 1.0);
    }
    let id = n.weight.is_require_grad().then_some(n.weight.id);
    Some((
        Norm {
            scale,
            eps: n.eps() as f32,
        },
        id,
    ))
}

impl HostLayer {
    /// The layer, or `None` when it is not the Llama layout this path covers (separate q/k/v
    /// and gate/up projections, no q/k norms, no sandwich norms, no soft-capping).
    pub fn new(
        layer: &DecoderLayer,
        batch: usize,
        t: usize,
        activation: Activation,
        precision: Precision,
    ) -> Option<Self> {
        let a = &layer.self_attn;
        let m = &layer.mlp;
        if layer.pre_feedforward_layernorm.is_some()
            || layer.post_feedforward_layernorm.is_some()
            || a.q_norm.is_some()
            || a.k_norm.is_some()
            || a.softcap.is_some()
            || a.num_kv_heads == 0
            || !a.num_heads.is_multiple_of(a.num_kv_heads)
        {
            return None;
        }
        let (n1, id1) = norm(&layer.input_layernorm)?;
        let (n2, id2) = norm(&layer.post_attention_layernorm)?;
        let linear =
            |l: &kiln_lora::LoraLinear| HostLinear::new(l).map(|h| h.with_precision(precision));
        Some(Self {
            q: linear(a.q_proj.as_ref()?)?,
            k: linear(a.k_proj.as_ref()?)?,
            v: linear(a.v_proj.as_ref()?)?,
            o: linear(&a.o_proj)?,
            gate: linear(m.gate_proj.as_ref()?)?,
            up: linear(m.up_proj.as_ref()?)?,
            down: linear(&m.down_proj)?,
            norm1: n1,
            norm2: n2,
            norm_ids: [id1, id2],
            dims: Dims {
                batch,
                t,
                heads: a.num_heads,
                kv_heads: a.num_kv_heads,
                head_dim: a.head_dim,
                scale: a.scale as f32,
                precision,
            },
            activation,
            precision,
        })
    }

    /// Whether a projection draws dropout masks (the layer cannot be recomputed).
    pub fn has_dropout(&self) -> bool {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
        .iter()
        .any(|l| l.has_dropout())
    }

    /// The layer's output `[b·t, hidden]` and what its backward needs.
    pub fn forward(&self, x: Vec<f32>, inputs: &LayerInputs<'_>) -> (Vec<f32>, Saved) {
        let n = self.dims.batch * self.dims.t;
        let hd = self.dims.head_dim;
        let p = self.precision;
        // Products' inputs are rounded once here (HostLinear expects them so).
        let (mut n1, rstd1) = self.norm1.forward(&x);
        p.round(&mut n1);
        let (mut q, sq) = self.q.forward(&n1, n);
        let (mut k, sk) = self.k.forward(&n1, n);
        let (v, sv) = self.v.forward(&n1, n);
        inputs.rope.rotate(&mut q, hd, false);
        inputs.rope.rotate(&mut k, hd, false);
        p.round(&mut q);
        p.round(&mut k);
        let (mut attn, lse) = attn::forward(self.dims, &q, &k, &v, inputs.mask);
        p.round(&mut attn);
        let (o, so) = self.o.forward(&attn, n);
        let mut h = x.clone();
        h.iter_mut().zip(&o).for_each(|(h, o)| *h += o);
        let (mut n2, rstd2) = self.norm2.forward(&h);
        p.round(&mut n2);
        let (gate, sg) = self.gate.forward(&n2, n);
        let (up, su) = self.up.forward(&n2, n);
        let act = gated(self.activation, self.precision, &gate, &up);
        let (y, sd) = self.down.forward(&act, n);
        let mut out = h.clone();
        out.iter_mut().zip(&y).for_each(|(o, y)| *o += y);
        let saved = Saved {
            x,
            n1: p.stash(n1),
            rstd1,
            lin: [sq, sk, sv, so, sg, su, sd],
            q: p.stash(q),
            k: p.stash(k),
            v: p.stash(v),
            attn: p.stash(attn),
            lse,
            h,
            n2: p.stash(n2),
            rstd2,
            gate: p.stash(gate),
            up: p.stash(up),
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
        let [sq, sk, sv, so, sg, su, sd] = &s.lin;
        // out = h + down(act(gate) · up)
        let (gate, up) = (s.gate.get(), s.up.get());
        let act = gated(self.activation, self.precision, &gate, &up);
        let mut dact = vec![0f32; act.len()];
        self.down.backward(&act, sd, &dout, n, &mut dact, grads);
        drop(act);
        let (dgate, dup) = gated_backward(self.activation, self.precision, &gate, &up, &dact);
        drop((dact, gate, up));
        let n2 = s.n2.get();
        let mut dn2 = vec![0f32; n2.len()];
        self.gate.backward(&n2, sg, &dgate, n, &mut dn2, grads);
        self.up.backward(&n2, su, &dup, n, &mut dn2, grads);
        drop(n2);
        let mut dh = dout;
        let dw = self
            .norm2
            .backward(&s.h, &s.rstd2, &dn2, &mut dh, self.norm_ids[1].is_some());
        add_norm_grad(grads, self.norm_ids[1], dw);
        // h = x + o_proj(attention(rope(q), rope(k), v))
        let attn = s.attn.get();
        let mut dattn = vec![0f32; attn.len()];
        self.o.backward(&attn, so, &dh, n, &mut dattn, grads);
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
        let n1 = s.n1.get();
        let mut dn1 = vec![0f32; n1.len()];
        self.q.backward(&n1, sq, &dq, n, &mut dn1, grads);
        self.k.backward(&n1, sk, &dk, n, &mut dn1, grads);
        self.v.backward(&n1, sv, &dv, n, &mut dn1, grads);
        drop(n1);
        let mut dx = dh;
        let dw = self
            .norm1
            .backward(&s.x, &s.rstd1, &dn1, &mut dx, self.norm_ids[0].is_some());
        add_norm_grad(grads, self.norm_ids[0], dw);
        dx
    }

    /// The layer's input kept by [`Self::forward`] (gradient checkpointing keeps only this).
    pub fn input(saved: Saved) -> Vec<f32> {
        saved.x
    }
}

/// Adds a norm weight's gradient. A unit-offset scale `1 + w` has the same gradient as `w`.
pub(super) fn add_norm_grad(grads: &mut Grads, id: Option<ParamId>, dw: Option<Vec<f32>>) {
    if let (Some(id), Some(dw)) = (id, dw) {
        grads.add(id, &[dw.len()], &dw);
    }
}
