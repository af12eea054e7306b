//! The KV cache: every layer's cached keys and values ([`LayerCache`], grown in place on the
//! CPU) and the bookkeeping of the rows they belong to ([`KvCache`]: key padding, next
//! positions, rows joining and leaving a batch).
//!
//! Why not burn tensors alone: decoding appends one token per row and layer at every step, and
//! `Tensor::cat` copies the whole cache to do it (burn-ndarray's concatenation goes element by
//! element through a strided view): serving 32 rows of SmolLM2 spent 13% of every step there
//! (perf, `serve --precision bf16 --bf16-weights`). On the CPU backend the cache is a host
//! buffer with room to grow ([`HostKv`]): an append writes only the new keys and values, the
//! attention kernel reads each row's keys in place, and a buffer that fills up is reallocated
//! with half again as much room. Other backends (wgpu, cuda) keep burn tensors and
//! concatenate.
//!
//! A served batch changes its rows all the time: a finished sequence leaves (the rows after it
//! move up, the columns then padding in every row are dropped) and a prefilled one joins
//! (left-padded to the batch's length). Copying the whole cache for each took 12% of a
//! 32-client serving step (perf: `select_rows`, `join`, `drop_front` and the zeroing of their
//! fresh buffers). So the host buffer also keeps room at the front: dropping leading columns
//! moves a front offset, a joining row is written into rows added at the end (the batch's rows
//! padded into the front room when the newcomer is longer), and rows leave in place, each moved
//! row copying only its filled tokens.
use crate::decoder::DecoderInput;
use crate::error::{ModelError, Result};
use burn::tensor::{Int, Tensor, TensorData};

/// Cached keys and values of every layer, plus each row's key padding and next position: the
/// bookkeeping of a forward that continues the cache lives here (its positions, key padding and
/// the recording of new tokens), and the shared input preparation (`prepare.rs`) builds a
/// step's inputs from it.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// `[b][t_past]`: false where the cached key is padding.
    key_padding: Vec<Vec<bool>>,
    /// Position of the next token of each row.
    next_position: Vec<i64>,
}

impl KvCache {
    /// Number of cached tokens per row.
    pub fn len(&self) -> usize {
        self.key_padding.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of sequences (rows) the cache holds.
    pub fn rows(&self) -> usize {
        self.key_padding.len()
    }

    /// Bytes held for the cached keys and values (f32, with room to grow on the CPU).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(LayerCache::bytes).sum()
    }

    /// A one-row cache holding the first `len` tokens of row `row` (its left padding dropped):
    /// the keys and values of a prompt's prefix, for another prompt that starts with the same
    /// tokens (prefix caching). Continuing from it with the rest of that prompt attends to
    /// exactly what a prefill of the whole prompt would.
    ///
    /// # Errors
    /// [`ModelError::Input`] for a row outside the cache, a `len` of 0 or past the row's
    /// tokens, or a row whose tokens do not start at position 0 right after its padding (a
    /// row extended by decoding after other rows joined has padding between its tokens).
    pub fn prefix(&self, row: usize, len: usize) -> Result<KvCache> {
        let pads = self
            .key_padding
            .get(row)
            .ok_or_else(|| ModelError::Input(format!("cache row {row} does not exist")))?;
        let start = pads.iter().take_while(|&&real| !real).count();
        let real = pads.len() - start;
        if len == 0
            || len > real
            || !pads[start..].iter().all(|&r| r)
            || self.next_position[row] != real as i64
        {
            return Err(ModelError::Input(format!(
                "cache row {row} ({real} tokens after {start} padding, next position {}) has no \
                 prefix of {len} tokens from position 0",
                self.next_position[row]
            )));
        }
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|l| l.prefix(row, start, len)))
            .collect();
        Ok(KvCache {
            layers,
            key_padding: vec![vec![true; len]],
            next_position: vec![len as i64],
        })
    }

    /// Keeps the rows `keep`, in that order, and drops the others (a finished sequence leaves a
    /// running batch). Key columns that are then padding in every row are dropped too.
    ///
    /// # Errors
    /// [`ModelError::Input`] for a row index outside the cache.
    pub fn retain_rows(&mut self, keep: &[usize]) -> Result<()> {
        if let Some(bad) = keep.iter().find(|&&r| r >= self.rows()) {
            return Err(ModelError::Input(format!(
                "cache row {bad} does not exist ({} rows)",
                self.rows()
            )));
        }
        if keep.is_empty() {
            *self = Self::default();
            return Ok(());
        }
        if keep.len() == self.rows() && keep.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok(());
        }
        for layer in self.layers.iter_mut().flatten() {
            layer.retain_rows(keep);
        }
        self.key_padding = keep.iter().map(|&r| self.key_padding[r].clone()).collect();
        self.next_position = keep.iter().map(|&r| self.next_position[r]).collect();
        self.trim_padding();
        Ok(())
    }

    /// Appends the rows of `other` after this cache's rows (a prefilled sequence joins a running
    /// batch). The side with fewer cached tokens is left-padded with masked keys, so every row
    /// keeps its own positions and attends only to its own tokens.
    ///
    /// # Errors
    /// [`ModelError::Input`] when the caches come from models with different layer counts.
    pub fn append_rows(&mut self, other: KvCache) -> Result<()> {
        if other.rows() == 0 {
            return Ok(());
        }
        if self.rows() == 0 {
            *self = other;
            return Ok(());
        }
        if self.layers.len() != other.layers.len()
            || self
                .layers
                .iter()
                .zip(&other.layers)
                .any(|(a, b)| a.is_some() != b.is_some())
        {
            return Err(ModelError::Input(format!(
                "cannot join caches of {} and {} layers",
                self.layers.len(),
                other.layers.len()
            )));
        }
        let (ta, tb) = (self.len(), other.len());
        let t = ta.max(tb);
        // Left-pad the time axis with zeros (masked keys).
        for (slot, b) in self.layers.iter_mut().zip(other.layers) {
            if let (Some(a), Some(b)) = (slot.take(), b) {
                *slot = Some(a.join(b, t - ta, t - tb));
            }
        }
        let widen =
            |row: Vec<bool>, n: usize| std::iter::repeat_n(false, n).chain(row).collect::<Vec<_>>();
        self.key_padding = std::mem::take(&mut self.key_padding)
            .into_iter()
            .map(|r| widen(r, t - ta))
            .chain(other.key_padding.into_iter().map(|r| widen(r, t - tb)))
            .collect();
        self.next_position.extend(other.next_position);
        Ok(())
    }

    /// Checks that `input` can continue this cache: the same rows, and no packed segments on
    /// top of cached keys.
    ///
    /// # Errors
    /// [`ModelError::Input`] otherwise.
    pub(crate) fn check_input(&self, input: &DecoderInput) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        if self.rows() != input.batch {
            return Err(ModelError::Input(format!(
                "cache holds {} rows, input has {}",
                self.rows(),
                input.batch
            )));
        }
        if input.segment_ids.is_some() {
            return Err(ModelError::Input(
                "segment ids cannot be combined with a KV cache".into(),
            ));
        }
        Ok(())
    }

    /// The positions of `input`'s tokens (`[b * t]`): the given ones, else each row's from its
    /// next position, advancing over real tokens only (a padding token takes the position of
    /// the next real one), else, with nothing cached, [`DecoderInput::positions`].
    pub(crate) fn positions(&self, input: &DecoderInput) -> Vec<i64> {
        if input.position_ids.is_some() || self.is_empty() {
            return input.positions(0);
        }
        let (b, t) = (input.batch, input.seq_len);
        let mut p = vec![0i64; b * t];
        for r in 0..b {
            let mut next = self.next_position[r];
            for i in 0..t {
                p[r * t + i] = next;
                if input.is_real(r * t + i) {
                    next += 1;
                }
            }
        }
        p
    }

    /// Key padding over the cached keys then `input`'s (`[b * (len + t)]`, false where the key
    /// is padding), or `None` when no key is padding.
    pub(crate) fn key_padding(&self, input: &DecoderInput) -> Option<Vec<bool>> {
        let new_pad = input
            .attention_mask
            .as_ref()
            .is_some_and(|m| m.contains(&0));
        let cached_pad = self.key_padding.iter().flatten().any(|k| !k);
        if !new_pad && !cached_pad {
            return None;
        }
        let t = input.seq_len;
        let mut out = Vec::with_capacity(input.batch * (self.len() + t));
        for r in 0..input.batch {
            if let Some(cached) = self.key_padding.get(r) {
                out.extend_from_slice(cached);
            }
            out.extend((0..t).map(|i| input.is_real(r * t + i)));
        }
        Some(out)
    }

    /// Layer `i`'s keys and values (`None` before its first forward), with a slot for each of
    /// `layers` layers.
    pub(crate) fn layer_slot(&mut self, i: usize, layers: usize) -> &mut Option<LayerCache> {
        if self.layers.len() != layers {
            self.layers = vec![None; layers];
        }
        &mut self.layers[i]
    }

    /// Records `input`'s tokens after a forward appended their keys and values to every layer:
    /// their key padding and, per row, the position after the last token (`positions` are the
    /// ones the forward used, [`Self::positions`]).
    pub(crate) fn advance(&mut self, input: &DecoderInput, positions: &[i64]) {
        let (b, t) = (input.batch, input.seq_len);
        if self.key_padding.len() != b {
            self.key_padding = vec![Vec::new(); b];
            self.next_position = vec![0; b];
        }
        for r in 0..b {
            self.key_padding[r].extend((0..t).map(|i| input.is_real(r * t + i)));
            self.next_position[r] = positions[r * t + t - 1] + 1;
        }
    }

    /// Drops the leading key columns that are padding in every row.
    fn trim_padding(&mut self) {
        let len = self.len();
        let n = (0..len)
            .take_while(|&c| self.key_padding.iter().all(|row| !row[c]))
            .count();
        if n == 0 || n == len {
            return;
        }
        for layer in self.layers.iter_mut().flatten() {
            layer.drop_front(n);
        }
        for row in &mut self.key_padding {
            row.drain(..n);
        }
    }
}

/// Keys and values of earlier tokens for one layer.
///
/// # Shapes
/// - keys, values: `[b, kv_heads, t_past, head_dim]`
#[derive(Debug, Clone)]
pub struct LayerCache {
    kv: Kv,
}

// One per layer of a cache, never in a large collection: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Kv {
    Tensors {
        k: Tensor<4>,
        v: Tensor<4>,
    },
    #[cfg(feature = "cpu")]
    Host(HostKv),
}

impl LayerCache {
    /// A cache holding `k` and `v` (`[b, kv_heads, t, head_dim]`).
    pub(crate) fn new(k: Tensor<4>, v: Tensor<4>) -> Self {
        #[cfg(feature = "cpu")]
        if let Some(h) = HostKv::of(&k, &v) {
            return Self { kv: Kv::Host(h) };
        }
        Self {
            kv: Kv::Tensors { k, v },
        }
    }

    /// Appends `k` and `v` (`[b, kv_heads, t, head_dim]`) to the layer's cache in `slot`
    /// (creating it on the first forward) and returns the cache.
    pub(crate) fn push(slot: &mut Option<Self>, k: Tensor<4>, v: Tensor<4>) -> &Self {
        match slot {
            Some(past) => {
                past.append(k, v);
                past
            }
            None => slot.insert(Self::new(k, v)),
        }
    }

    /// Appends `k` and `v` (`[b, kv_heads, t, head_dim]`) after the cached tokens.
    pub(crate) fn append(&mut self, k: Tensor<4>, v: Tensor<4>) {
        #[cfg(feature = "cpu")]
        if let Kv::Host(h) = &mut self.kv {
            if h.append(&k, &v) {
                return;
            }
            let (pk, pv) = h.tensors(&k.device());
            self.kv = Kv::Tensors { k: pk, v: pv };
        }
        if let Kv::Tensors { k: pk, v: pv } = &mut self.kv {
            *pk = Tensor::cat(vec![pk.clone(), k], 2);
            *pv = Tensor::cat(vec![pv.clone(), v], 2);
        }
    }

    /// Attention of `q` over the cached keys and values (see [`crate::attention::attend`]).
    ///
    /// # Shapes
    /// - q: `[b, heads, t, head_dim]`
    /// - mask: `[b, 1, t, t_past]` additive
    /// - output: `[b, t, heads · head_dim]`
    pub(crate) fn attend(
        &self,
        q: Tensor<4>,
        mask: &Tensor<4>,
        scale: f64,
        softcap: Option<f64>,
    ) -> Tensor<3> {
        match &self.kv {
            Kv::Tensors { k, v } => {
                crate::attention::attend_any(q, k.clone(), v.clone(), mask, scale, softcap)
            }
            #[cfg(feature = "cpu")]
            Kv::Host(h) => {
                let kv = crate::kernels::HostKeys {
                    k: &h.k[h.front * h.d..],
                    v: &h.v[h.front * h.d..],
                    heads: h.h,
                    len: h.len,
                    stride: h.cap,
                    head_dim: h.d,
                };
                match crate::kernels::try_attention_host(&q, &kv, mask, scale, softcap) {
                    Some(out) => out,
                    None => {
                        let (k, v) = h.tensors(&q.device());
                        crate::attention::attend(q, k, v, mask, scale, softcap)
                    }
                }
            }
        }
    }

    /// Keeps the rows `keep`, in that order, in place when every kept row stays or moves up
    /// (`keep[i] >= i`, no repeats: the rows after a dropped one, or the last rows filling the
    /// holes), else as [`Self::select_rows`].
    pub(crate) fn retain_rows(&mut self, keep: &[usize]) {
        #[cfg(feature = "cpu")]
        if let Kv::Host(h) = &mut self.kv
            && h.retain_rows(keep)
        {
            return;
        }
        *self = self.select_rows(keep);
    }

    /// The rows `rows`, in that order (repeats allowed).
    pub(crate) fn select_rows(&self, rows: &[usize]) -> Self {
        let kv = match &self.kv {
            Kv::Tensors { k, v } => {
                let idx = Tensor::<1, Int>::from_data(
                    TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
                    &k.device(),
                );
                Kv::Tensors {
                    k: k.clone().select(0, idx.clone()),
                    v: v.clone().select(0, idx),
                }
            }
            #[cfg(feature = "cpu")]
            Kv::Host(h) => Kv::Host(h.select_rows(rows)),
        };
        Self { kv }
    }

    /// This cache's rows then `other`'s, each side left-padded with zero keys to the longer
    /// (`pad_self`, `pad_other` tokens).
    pub(crate) fn join(self, other: Self, pad_self: usize, pad_other: usize) -> Self {
        let (this, other) = match (self.kv, other.kv) {
            #[cfg(feature = "cpu")]
            (Kv::Host(a), Kv::Host(b)) => {
                return Self {
                    kv: Kv::Host(HostKv::join(a, &b, pad_self, pad_other)),
                };
            }
            (a, b) => (Self { kv: a }, Self { kv: b }),
        };
        let device = [&this.kv, &other.kv]
            .into_iter()
            .find_map(|kv| match kv {
                Kv::Tensors { k, .. } => Some(k.device()),
                #[cfg(feature = "cpu")]
                Kv::Host(_) => None,
            })
            .unwrap_or_default();
        let (ak, av) = this.into_tensors(&device);
        let (bk, bv) = other.into_tensors(&device);
        let pad = |x: Tensor<4>, n: usize| {
            if n == 0 {
                return x;
            }
            let [b, h, _, d] = x.dims();
            Tensor::cat(vec![Tensor::zeros([b, h, n, d], &x.device()), x], 2)
        };
        Self {
            kv: Kv::Tensors {
                k: Tensor::cat(vec![pad(ak, pad_self), pad(bk, pad_other)], 0),
                v: Tensor::cat(vec![pad(av, pad_self), pad(bv, pad_other)], 0),
            },
        }
    }

    /// Drops the first `n` cached tokens of every row.
    pub(crate) fn drop_front(&mut self, n: usize) {
        match &mut self.kv {
            Kv::Tensors { k, v } => {
                let [b, h, len, d] = k.dims();
                *k = k.clone().slice([0..b, 0..h, n..len, 0..d]);
                *v = v.clone().slice([0..b, 0..h, n..len, 0..d]);
            }
            #[cfg(feature = "cpu")]
            Kv::Host(hk) => hk.drop_front(n),
        }
    }

    /// Tokens `start..start + len` of row `row`, copied (not a view of this cache).
    pub(crate) fn prefix(&self, row: usize, start: usize, len: usize) -> Self {
        let kv = match &self.kv {
            Kv::Tensors { k, v } => {
                let [_, h, _, d] = k.dims();
                let cut = |x: &Tensor<4>| {
                    let part = x
                        .clone()
                        .slice([row..row + 1, 0..h, start..start + len, 0..d]);
                    Tensor::from_data(part.into_data(), &x.device())
                };
                Kv::Tensors {
                    k: cut(k),
                    v: cut(v),
                }
            }
            #[cfg(feature = "cpu")]
            Kv::Host(h) => Kv::Host(h.part(row, start, len)),
        };
        Self { kv }
    }

    /// Bytes held for the keys and values (with a host buffer's room to grow).
    pub(crate) fn bytes(&self) -> usize {
        match &self.kv {
            Kv::Tensors { k, v } => 4 * (k.shape().num_elements() + v.shape().num_elements()),
            #[cfg(feature = "cpu")]
            Kv::Host(h) => 4 * (h.k.len() + h.v.len()),
        }
    }

    fn into_tensors(self, device: &burn::tensor::Device) -> (Tensor<4>, Tensor<4>) {
        match self.kv {
            Kv::Tensors { k, v } => (k, v),
            #[cfg(feature = "cpu")]
            Kv::Host(h) => h.tensors(device),
        }
    }
}

/// Keys and values in host buffers `[b, heads, cap, d]` in which tokens `front..front + len`
/// of each row and head are filled (room before them and after).
#[cfg(feature = "cpu")]
#[derive(Debug, Clone)]
struct HostKv {
    k: Vec<f32>,
    v: Vec<f32>,
    b: usize,
    h: usize,
    cap: usize,
    front: usize,
    len: usize,
    d: usize,
}

#[cfg(feature = "cpu")]
impl HostKv {
    /// Room for `len` tokens and half again (at least 32 more): decoding appends for a while
    /// before the buffer is copied into a larger one.
    fn room(len: usize) -> usize {
        len + len / 2 + 32
    }

    fn empty(b: usize, h: usize, cap: usize, d: usize) -> Self {
        Self {
            k: vec![0.0; b * h * cap * d],
            v: vec![0.0; b * h * cap * d],
            b,
            h,
            cap,
            front: 0,
            len: 0,
            d,
        }
    }

    /// Block `(row, head)`'s first filled token.
    fn at(&self, block: usize) -> usize {
        (block * self.cap + self.front) * self.d
    }

    /// `k` and `v` in host buffers, when both are f32 CPU tensors of one shape.
    fn of(k: &Tensor<4>, v: &Tensor<4>) -> Option<Self> {
        let [b, h, t, d] = k.dims();
        if v.dims() != [b, h, t, d] {
            return None;
        }
        let mut kv = Self::empty(b, h, Self::room(t), d);
        kv.append(k, v).then_some(kv)
    }

    /// Writes `k`, `v` (`[b, h, t, d]`) after the filled tokens, growing the buffers when they
    /// are full; `false` (nothing written) when they are not f32 CPU tensors of this shape.
    fn append(&mut self, k: &Tensor<4>, v: &Tensor<4>) -> bool {
        use kiln_cpu::host::Storage;
        let [b, h, t, d] = k.dims();
        if [b, h, d] != [self.b, self.h, self.d] || v.dims() != k.dims() {
            return false;
        }
        let (Some(ks), Some(vs)) = (Storage::of(k), Storage::of(v)) else {
            return false;
        };
        let (kv, vv) = (ks.view(), vs.view());
        let (kc, vc) = (kv.as_standard_layout(), vv.as_standard_layout());
        let (Some(kx), Some(vx)) = (kc.as_slice(), vc.as_slice()) else {
            return false;
        };
        if self.front + self.len + t > self.cap {
            self.regrow(Self::room(self.len + t));
        }
        let (len, td) = (self.len, t * d);
        for block in 0..b * h {
            let at = self.at(block) + len * d;
            self.k[at..at + td].copy_from_slice(&kx[block * td..][..td]);
            self.v[at..at + td].copy_from_slice(&vx[block * td..][..td]);
        }
        self.len += t;
        true
    }

    /// Copies the filled tokens into buffers of room `cap`, `front` tokens of it before them.
    fn regrow_with_front(&mut self, cap: usize, front: usize) {
        let mut next = Self::empty(self.b, self.h, cap, self.d);
        (next.front, next.len) = (front, self.len);
        let n = self.len * self.d;
        for block in 0..self.b * self.h {
            let (from, to) = (self.at(block), next.at(block));
            next.k[to..to + n].copy_from_slice(&self.k[from..from + n]);
            next.v[to..to + n].copy_from_slice(&self.v[from..from + n]);
        }
        *self = next;
    }

    fn regrow(&mut self, cap: usize) {
        self.regrow_with_front(cap, 0);
    }

    fn select_rows(&self, rows: &[usize]) -> Self {
        let mut out = Self::empty(rows.len(), self.h, self.cap, self.d);
        (out.front, out.len) = (self.front, self.len);
        let row = self.h * self.cap * self.d;
        for (i, &r) in rows.iter().enumerate() {
            out.k[i * row..(i + 1) * row].copy_from_slice(&self.k[r * row..(r + 1) * row]);
            out.v[i * row..(i + 1) * row].copy_from_slice(&self.v[r * row..(r + 1) * row]);
        }
        out
    }

    /// [`LayerCache::retain_rows`] in place: `false` (nothing changed) unless every `keep[i]`
    /// is a row, at least `i`, and no row repeats. Copying in increasing `i` then never reads a
    /// row already overwritten.
    fn retain_rows(&mut self, keep: &[usize]) -> bool {
        if self.h == 0 {
            return false;
        }
        let mut seen = vec![false; self.b];
        for (i, &r) in keep.iter().enumerate() {
            if r < i || r >= self.b || std::mem::replace(&mut seen[r], true) {
                return false;
            }
        }
        // A row's filled tokens, every head: from its first head's front to its last head's end.
        let span = ((self.h - 1) * self.cap + self.len) * self.d;
        for (i, &r) in keep.iter().enumerate() {
            if r != i {
                let (from, to) = (self.at(r * self.h), self.at(i * self.h));
                self.k.copy_within(from..from + span, to);
                self.v.copy_within(from..from + span, to);
            }
        }
        self.b = keep.len();
        let n = self.b * self.h * self.cap * self.d;
        self.k.truncate(n);
        self.v.truncate(n);
        true
    }

    /// `a`'s rows then `b`'s, left-padded with zero keys by `pad_a` and `pad_b` tokens. In
    /// `a`'s buffers when its front room holds `pad_a` (`b`'s rows written into rows added at
    /// the end, whose zeroed room `Vec` grows by doubling); otherwise into new buffers with
    /// room at the front too, so the next longer newcomer usually fits.
    fn join(mut a: Self, b: &Self, pad_a: usize, pad_b: usize) -> Self {
        let len = a.len + pad_a;
        if pad_a > a.front {
            let room = Self::room(len);
            a.regrow_with_front(room + pad_a + 32, pad_a + 32);
        }
        let d = a.d;
        a.front -= pad_a;
        for block in 0..a.b * a.h {
            let at = a.at(block);
            a.k[at..at + pad_a * d].fill(0.0);
            a.v[at..at + pad_a * d].fill(0.0);
        }
        a.len = len;
        let first = a.b * a.h;
        a.b += b.b;
        let n = a.b * a.h * a.cap * d;
        a.k.resize(n, 0.0);
        a.v.resize(n, 0.0);
        let m = b.len * d;
        for block in 0..b.b * b.h {
            let (from, to) = (b.at(block), a.at(first + block) + pad_b * d);
            a.k[to..to + m].copy_from_slice(&b.k[from..from + m]);
            a.v[to..to + m].copy_from_slice(&b.v[from..from + m]);
        }
        a
    }

    /// Drops the first `n` filled tokens: the front offset moves past them.
    fn drop_front(&mut self, n: usize) {
        self.front += n;
        self.len -= n;
    }

    /// Tokens `start..start + len` of row `row`, in buffers of exactly that room.
    fn part(&self, row: usize, start: usize, len: usize) -> Self {
        let mut out = Self::empty(1, self.h, len, self.d);
        out.len = len;
        let n = len * self.d;
        for head in 0..self.h {
            let from = self.at(row * self.h + head) + start * self.d;
            out.k[head * n..(head + 1) * n].copy_from_slice(&self.k[from..from + n]);
            out.v[head * n..(head + 1) * n].copy_from_slice(&self.v[from..from + n]);
        }
        out
    }

    /// The filled tokens as tensors `[b, h, len, d]` on `device`.
    fn tensors(&self, device: &burn::tensor::Device) -> (Tensor<4>, Tensor<4>) {
        let n = self.len * self.d;
        let filled = |buf: &[f32]| {
            let mut out = Vec::with_capacity(self.b * self.h * n);
            for block in 0..self.b * self.h {
                out.extend_from_slice(&buf[self.at(block)..][..n]);
            }
            Tensor::from_data(
                TensorData::new(out, [self.b, self.h, self.len, self.d]),
                device,
            )
        };
        (filled(&self.k), filled(&self.v))
    }
}

#[cfg(all(test, feature = "cpu"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn random(b: usize, t: usize, dev: &Device) -> Tensor<4> {
        Tensor::random([b, 2, t, 8], Distribution::Normal(0.0, 1.0), dev)
    }

    fn tensors_of(c: &LayerCache) -> (Vec<f32>, Vec<f32>, [usize; 4]) {
        let (k, v) = c.clone().into_tensors(&Device::default());
        let dims = k.dims();
        let host = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        (host(k), host(v), dims)
    }

    /// The host buffers (appends past their room, rows selected with a repeat, joins with
    /// padding on either side, dropped front tokens, rows kept in place, newcomers padded into
    /// the front room or not fitting it, a copied prefix) hold exactly what burn's
    /// tensor operations on the same keys give, and attention reads them in place as it reads
    /// the tensors.
    #[test]
    fn host_buffers_equal_the_tensor_operations() {
        let dev = Device::default();
        let (k, v) = (random(2, 5, &dev), random(2, 5, &dev));
        let mut host = LayerCache::new(k.clone(), v.clone());
        assert!(matches!(host.kv, Kv::Host(_)));
        let mut reference = LayerCache {
            kv: Kv::Tensors { k, v },
        };
        // 60 single tokens: the room of 5 + 2 + 32 fills and the buffers regrow.
        for _ in 0..60 {
            let (k, v) = (random(2, 1, &dev), random(2, 1, &dev));
            host.append(k.clone(), v.clone());
            reference.append(k, v);
        }
        assert_eq!(tensors_of(&host), tensors_of(&reference));
        let (host, reference) = (
            host.select_rows(&[1, 0, 1]),
            reference.select_rows(&[1, 0, 1]),
        );
        assert_eq!(tensors_of(&host), tensors_of(&reference));
        let (k, v) = (random(1, 70, &dev), random(1, 70, &dev));
        let other = LayerCache::new(k.clone(), v.clone());
        let other_ref = LayerCache {
            kv: Kv::Tensors { k, v },
        };
        let mut host = host.join(other.clone(), 5, 0);
        let mut reference = reference.join(other_ref.clone(), 5, 0);
        assert_eq!(tensors_of(&host), tensors_of(&reference));
        assert_eq!(
            tensors_of(&other.clone().join(host.clone(), 0, 0)),
            tensors_of(&other_ref.join(reference.clone(), 0, 0))
        );
        host.drop_front(3);
        reference.drop_front(3);
        assert_eq!(tensors_of(&host), tensors_of(&reference));
        // In place: the last row fills the hole of a dropped one; then a repeat (not in place).
        for keep in [&[0, 3, 2][..], &[0, 1, 1]] {
            host.retain_rows(keep);
            reference.retain_rows(keep);
            assert_eq!(tensors_of(&host), tensors_of(&reference));
        }
        // A newcomer 2 tokens longer pads the batch into its front room; one 60 longer does not
        // fit there; a shorter one is padded itself.
        for extra in [2usize, 60, 0] {
            let t = tensors_of(&host).2[2] + extra;
            let t_new = if extra == 0 { t - 4 } else { t };
            let (k, v) = (random(1, t_new, &dev), random(1, t_new, &dev));
            let pads = (extra, t - t_new);
            host = host.join(LayerCache::new(k.clone(), v.clone()), pads.0, pads.1);
            let other = LayerCache {
                kv: Kv::Tensors { k, v },
            };
            reference = reference.join(other, pads.0, pads.1);
            assert_eq!(tensors_of(&host), tensors_of(&reference));
        }
        host.drop_front(1);
        reference.drop_front(1);
        assert_eq!(tensors_of(&host), tensors_of(&reference));
        assert_eq!(
            tensors_of(&host.prefix(2, 1, 5)),
            tensors_of(&reference.prefix(2, 1, 5))
        );
        let [b, _, t, _] = tensors_of(&host).2;
        let q = Tensor::<4>::random([b, 4, 2, 8], Distribution::Normal(0.0, 1.0), &dev);
        let mask = Tensor::<4>::zeros([b, 1, 2, t], &dev);
        let got = host.attend(q.clone(), &mask, 0.3, None);
        let want = reference.attend(q, &mask, 0.3, None);
        assert_eq!(
            got.into_data().try_to_vec::<f32>().unwrap(),
            want.into_data().try_to_vec::<f32>().unwrap()
        );
        assert!(host.bytes() >= 4 * 2 * b * 2 * t * 8);
    }
}
