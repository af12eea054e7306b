//! Matrix products with bf16 inputs and f32 accumulation, on the CPU's bf16 dot-product unit
//! when it has one.
//!
//! Why: [`Precision::Bf16`](crate::Precision) rounds a product's inputs to bf16; multiplying
//! them with the f32 [`matmul`] made bf16 training no faster than f32. CPUs with
//! AVX512-BF16 (Zen 4, Cooper Lake, Sapphire Rapids) multiply bf16 pairs at twice the f32 rate
//! per instruction and read half the bytes. This module packs the (already bf16-valued) f32
//! operands into bf16 pairs and runs its own `vdpbf16ps` micro-kernel (`avx512.rs`), chosen once
//! at run time; other CPUs get the f32 product, exactly what `Precision::Bf16` computed before.
//!
//! ```
//! use kiln_cpu::bf16::{matmul_bf16, pack_b, matmul_bf16_packed, bf16_backend};
//! use kiln_cpu::{MatMut, MatRef, Threads};
//! let (x, w) = (vec![1.5f32; 2 * 3], vec![0.25f32; 4 * 3]); // x [2, 3], w [4, 3]
//! let mut y = vec![0f32; 2 * 4];
//! // y = x · wᵀ
//! let wt = MatRef::new(&w, 4, 3).t();
//! matmul_bf16(MatMut::new(&mut y, 2, 4), MatRef::new(&x, 2, 3), wt, 1.0, false, Threads::All);
//! assert_eq!(y, vec![1.125; 8]);
//! // The same with the weight packed once, for products that reuse it.
//! let packed = pack_b(wt);
//! matmul_bf16_packed(MatMut::new(&mut y, 2, 4), MatRef::new(&x, 2, 3), &packed, 2.0, true, Threads::One);
//! assert_eq!(y, vec![3.375; 8]);
//! println!("bf16 products run on {}", bf16_backend());
//! ```
//!
//! # Measurements behind the choice
//!
//! `crates/cpu/benches/bf16_gemm.rs` (kiln), `crates/cpu/benches/onednn_bf16.cpp` (oneDNN), and
//! torch's `x @ w.T` on the same shapes.
//!
//! GFLOP/s with 2 threads, AMD EPYC (Zen 4, avx512_bf16, no AMX, 2 cores), 2026-12-07, while
//! other engineers' builds kept the load average at 5–9, so all numbers are lower bounds and the
//! ranges are two runs. torch's own 2048³ `--mode sgemm`: f32 29, bf16 84 (median 77). Not
//! measurable: OpenBLAS `cblas_sbgemm` (Debian's 0.3.21 and PyPI's scipy-openblas32 0.3.34 are
//! built without BUILD_BFLOAT16: no `sbgemm` symbol), oneDNN's `dnnl_sgemm` (f32 only). oneDNN's
//! bf16 matmul primitive (`brg:avx512_core_bf16`, C++ API, weights as W `[n, k]`) is slower than
//! the own kernel on every shape and would add a C++ library to the default build; hence the own
//! kernel.
//!
//! | m × k × n | f32 `matmul` | **kiln bf16, packed B** | kiln bf16 (packs B per call) | oneDNN 2.6 bf16 (packed W) | torch 2.15 bf16 | torch f32 |
//! |---|---|---|---|---|---|---|
//! | 1024 × 576 × 576 | 49–51 | **90–123** | 76–82 | 26–47 (39–46) | 45 | 19 |
//! | 1024 × 576 × 1536 | 48–71 | **99–134** | 90–112 | 42–60 (52–60) | 58 | 25 |
//! | 1024 × 1536 × 576 | 49–64 | **107–121** | 86–111 | 40–77 (34–73) | 79 | 40 |
//! | 256 × 576 × 1536 | 46–65 | **105–140** | 64–89 | 18–41 (21–49) | 50 | 14 |
//! | 1 × 576 × 1536 (decode) | 23–28 | **24–34** | 23 (runs f32; 1.1 packing B) | 2 (3–10) | 0.1 | 11 |
//! | 1024 × 576 × 49152 (head) | 50–61 | **105–109** | 87–110 | 53–96 (70–97) | 103 | 36 |
//!
//! # Not done yet
//! - An AMX-BF16 kernel (Sapphire Rapids and later; needs `arch_prctl(ARCH_REQ_XCOMP_PERM)` for
//!   the tile data): those CPUs also report avx512bf16, so they run the kernel here meanwhile.
//! - A GEMV kernel for decoding (m = 1 is load-bound in an 8 × 48 tile: 24–34 GFLOP/s).
//! - Single-thread numbers, and tuning of `MR`, `NR` and the task blocks on an idle machine.
#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;

use crate::gemm::{MatMut, MatRef, Threads, matmul};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::OnceLock;

/// Rows of a micro-tile (A is packed in panels of this many rows).
pub(crate) const MR: usize = 8;
/// Columns of a micro-tile (B is packed in panels of this many columns, three zmm).
pub(crate) const NR: usize = 48;
/// Bytes of packed A one task keeps hot (about half of Zen 4's 1 MB L2).
const A_BLOCK_BYTES: usize = 512 << 10;
/// Below this many rows of A, [`matmul_bf16`] (which packs B on every call) runs the f32
/// product: packing `k × n` values costs about as much as 16 rows of the f32 product.
const SMALL_M: usize = 16;
/// Most B panels one task covers.
const MAX_PANELS_PER_TASK: usize = 16;

/// The kernel behind the bf16 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Own micro-kernel on `vdpbf16ps` (x86-64 with avx512f and avx512bf16).
    Avx512Bf16,
    /// The f32 [`matmul`] on the bf16-valued f32 inputs (any CPU).
    F32Fallback,
}

impl Backend {
    /// The name [`bf16_backend`] reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Bf16 => "avx512bf16",
            Self::F32Fallback => "f32-fallback",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            Self::Avx512Bf16 => has_avx512bf16(),
            Self::F32Fallback => true,
        }
    }

    /// The fastest available backend, decided once per process. `KILN_BF16_BACKEND=f32-fallback`
    /// forces the fallback (to compare, or to rule the kernel out); naming an unavailable
    /// backend there is ignored.
    pub fn detected() -> Self {
        static CHOSEN: OnceLock<Backend> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let forced = std::env::var("KILN_BF16_BACKEND").ok();
            let all = [Self::Avx512Bf16, Self::F32Fallback];
            if let Some(b) = all
                .iter()
                .find(|b| forced.as_deref() == Some(b.name()) && b.available())
            {
                return *b;
            }
            if has_avx512bf16() {
                Self::Avx512Bf16
            } else {
                Self::F32Fallback
            }
        })
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512bf16() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512bf16() -> bool {
    false
}

/// The name of the kernel bf16 products run on here: `"avx512bf16"` or `"f32-fallback"`.
pub fn bf16_backend() -> &'static str {
    Backend::detected().name()
}

/// `dst = alpha · a · b`, or `dst += alpha · a · b` with `accumulate`, for operands whose values
/// are bf16 (kiln rounds them before; the kernel would round others to nearest, the fallback
/// would use them as they are), accumulating
/// in f32. Results differ from the f32 [`matmul`] by the order of the f32 additions (and
/// subnormal bf16 values count as zero on the bf16 unit). With fewer than 16 rows in `a` it
/// runs the f32 product (packing `b` would cost more than it saves: pack it once with
/// [`pack_b`] for decoding). Panics on mismatched shapes.
pub fn matmul_bf16(
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    threads: Threads,
) {
    matmul_bf16_on(Backend::detected(), dst, a, b, alpha, accumulate, threads);
}

/// [`matmul_bf16`] on a chosen backend. Panics if this CPU lacks it.
pub fn matmul_bf16_on(
    backend: Backend,
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    threads: Threads,
) {
    assert!(backend.available(), "{} not available", backend.name());
    check_shapes(&dst, (a.rows, a.cols), b.rows, b.cols);
    match backend {
        Backend::F32Fallback => matmul(dst, a, b, alpha, accumulate, threads),
        // Packing B would cost more than the product saves: a few rows (decoding).
        Backend::Avx512Bf16 if a.rows < SMALL_M => matmul(dst, a, b, alpha, accumulate, threads),
        Backend::Avx512Bf16 => {
            let words = pack::pack_b(&b, threads == Threads::All);
            run_pairs(dst, a, &words, b.cols, alpha, accumulate, threads);
        }
    }
}

/// A right-hand operand packed once for many products (a weight), in its backend's layout.
#[derive(Debug, Clone)]
pub struct PackedB {
    rows: usize,
    cols: usize,
    data: Packed,
}

#[derive(Debug, Clone)]
enum Packed {
    /// bf16 pairs in panels of `NR` columns (see `pack.rs`).
    Pairs(Vec<u32>),
    /// The values as a row-major f32 `[rows, cols]` copy, for the fallback.
    F32(Vec<f32>),
}

impl PackedB {
    /// `b` packed for `backend`. Panics if this CPU lacks it.
    pub fn on(backend: Backend, b: MatRef<'_>) -> Self {
        assert!(backend.available(), "{} not available", backend.name());
        let data = match backend {
            Backend::Avx512Bf16 => Packed::Pairs(pack::pack_b(&b, true)),
            Backend::F32Fallback => Packed::F32(pack::to_f32(&b)),
        };
        Self {
            rows: b.rows,
            cols: b.cols,
            data,
        }
    }

    /// Rows (`k`) of the packed matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`n`) of the packed matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of storage.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Packed::Pairs(w) => w.len() * 4,
            Packed::F32(v) => v.len() * 4,
        }
    }

    /// The backend it was packed for.
    pub fn backend(&self) -> Backend {
        match self.data {
            Packed::Pairs(_) => Backend::Avx512Bf16,
            Packed::F32(_) => Backend::F32Fallback,
        }
    }
}

/// A weight `W` (`[in, out]`) packed for both products of a linear layer, each layout made
/// on first use and kept: `x · W` (forward) and `dy · Wᵀ` (the input gradient).
///
/// Why: packing costs as much as a product of about 50 rows (it reads the weight at a stride
/// and rounds every value); a training step used to pack every weight twice per micro-batch
/// and the tied head once per 128 counted rows, which made bf16 slower than f32. Frozen
/// weights are packed once per run (the caller keeps this), trained ones once per step.
#[derive(Debug, Default)]
pub struct PackedWeight {
    fwd: OnceLock<PackedB>,
    bwd: OnceLock<PackedB>,
}

impl PackedWeight {
    /// `w` (`[in, out]`) packed as the right-hand side of `x · W`. `w` must be the matrix this
    /// was first called with (the caller's cache key says so).
    pub fn forward(&self, w: MatRef<'_>) -> &PackedB {
        self.fwd.get_or_init(|| pack_b(w))
    }

    /// `w` (`[in, out]`) packed as the right-hand side of `dy · Wᵀ`.
    pub fn backward(&self, w: MatRef<'_>) -> &PackedB {
        self.bwd.get_or_init(|| pack_b(w.t()))
    }

    /// Bytes held by the layouts made so far.
    pub fn bytes(&self) -> usize {
        [&self.fwd, &self.bwd]
            .iter()
            .filter_map(|l| l.get())
            .map(PackedB::bytes)
            .sum()
    }
}

/// `b` packed for [`Backend::detected`].
pub fn pack_b(b: MatRef<'_>) -> PackedB {
    PackedB::on(Backend::detected(), b)
}

/// [`matmul_bf16`] with a packed right-hand operand (on the backend it was packed for).
pub fn matmul_bf16_packed(
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: &PackedB,
    alpha: f32,
    accumulate: bool,
    threads: Threads,
) {
    check_shapes(&dst, (a.rows, a.cols), b.rows, b.cols);
    match &b.data {
        Packed::F32(v) => {
            let bm = MatRef::new(v, b.rows, b.cols);
            matmul(dst, a, bm, alpha, accumulate, threads);
        }
        Packed::Pairs(words) => run_pairs(dst, a, words, b.cols, alpha, accumulate, threads),
    }
}

fn check_shapes(dst: &MatMut<'_>, (m, ak): (usize, usize), k: usize, n: usize) {
    assert!(
        ak == k && dst.rows == m && dst.cols == n,
        "matmul_bf16 [{m}, {ak}] x [{k}, {n}] -> [{}, {}]",
        dst.rows,
        dst.cols
    );
}

thread_local! {
    /// Packed A of the calling thread's last product, kept to skip the allocation.
    static A_SCRATCH: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// A raw destination pointer shared by the tasks of one product.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: the tasks write disjoint blocks of the destination (see `run_pairs`).
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

/// The product on the bf16 kernel, B already packed (`n` columns, `a.cols` rows).
fn run_pairs(
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b_words: &[u32],
    n: usize,
    alpha: f32,
    accumulate: bool,
    threads: Threads,
) {
    // Taken out of the cell (not borrowed) so a nested product on this thread gets its own.
    let mut a_words = A_SCRATCH.take();
    pack::pack_a(&a, &mut a_words, threads == Threads::All);
    let k = a.cols;
    run_packed(
        dst,
        &a_words,
        (a.rows, k),
        b_words,
        n,
        alpha,
        accumulate,
        threads,
    );
    A_SCRATCH.set(a_words);
}

/// A left-hand operand packed once for products by several right-hand operands (the tiles of
/// a weight that is dequantized a tile at a time), in the layout of [`Backend::detected`].
#[derive(Debug)]
pub struct PackedA<'a> {
    data: PackedLhs<'a>,
}

#[derive(Debug)]
enum PackedLhs<'a> {
    /// bf16 pairs in panels of `MR` rows (see `pack.rs`), `[rows, cols]` before packing.
    Pairs {
        words: Vec<u32>,
        rows: usize,
        cols: usize,
    },
    /// The operand itself, for the f32 product (the fallback, or too few rows to pack).
    Borrowed(MatRef<'a>),
}

impl PackedA<'_> {
    /// Whether [`matmul_bf16_packed_a`] rounds its right-hand operand to bf16 itself (it packs
    /// it into bf16 pairs, rounding to nearest even): a caller that made that operand only for
    /// the product need not round it first (the same values either way).
    pub fn rounds_rhs(&self) -> bool {
        matches!(self.data, PackedLhs::Pairs { .. })
    }
}

/// `a` packed for [`matmul_bf16_packed_a`] (on all of rayon's threads when large). Same
/// values contract as [`matmul_bf16`].
pub fn pack_a(a: MatRef<'_>) -> PackedA<'_> {
    let data = match Backend::detected() {
        Backend::Avx512Bf16 if a.rows >= SMALL_M => {
            let mut words = Vec::new();
            pack::pack_a(&a, &mut words, true);
            PackedLhs::Pairs {
                words,
                rows: a.rows,
                cols: a.cols,
            }
        }
        _ => PackedLhs::Borrowed(a),
    };
    PackedA { data }
}

/// [`matmul_bf16`] with a left-hand operand packed by [`pack_a`]; `b` is packed per call.
pub fn matmul_bf16_packed_a(
    dst: MatMut<'_>,
    a: &PackedA<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    threads: Threads,
) {
    match &a.data {
        PackedLhs::Borrowed(a) => matmul_bf16(dst, *a, b, alpha, accumulate, threads),
        PackedLhs::Pairs { words, rows, cols } => {
            check_shapes(&dst, (*rows, *cols), b.rows, b.cols);
            let b_words = pack::pack_b(&b, threads == Threads::All);
            let (m, k) = (*rows, *cols);
            run_packed(
                dst,
                words,
                (m, k),
                &b_words,
                b.cols,
                alpha,
                accumulate,
                threads,
            );
        }
    }
}

/// The product on the bf16 kernel, both operands packed: A (`m × k`) by `pack::pack_a`, B
/// (`k × n`) by `pack::pack_b`.
#[allow(clippy::too_many_arguments)]
fn run_packed(
    mut dst: MatMut<'_>,
    a_words: &[u32],
    (m, k): (usize, usize),
    b_words: &[u32],
    n: usize,
    alpha: f32,
    accumulate: bool,
    threads: Threads,
) {
    let kp = pack::pairs(k);
    if m == 0 || n == 0 || kp == 0 {
        if kp == 0 && !accumulate {
            // An empty sum: dst = 0, through the f32 product which handles it.
            let a = MatRef::new(&[], m, 0);
            matmul(dst, a, MatRef::new(&[], 0, n), alpha, false, threads);
        }
        return;
    }
    assert!(b_words.len() >= n.div_ceil(NR) * NR * kp && a_words.len() >= m * kp);
    let par = threads == Threads::All;
    let (c, ldc) = dst.raw();
    let c = DstPtr(c);
    // Tasks: blocks of `mc` rows × `nc` columns.
    let mc = (A_BLOCK_BYTES / (kp * 4)).max(MR) / MR * MR;
    let (m_blocks, n_panels) = (m.div_ceil(mc), n.div_ceil(NR));
    let want_tasks = if par {
        4 * rayon::current_num_threads()
    } else {
        1
    };
    let per_task = (n_panels * m_blocks)
        .div_ceil(want_tasks)
        .clamp(1, MAX_PANELS_PER_TASK);
    let nc = per_task * NR;
    let n_blocks = n.div_ceil(nc);
    let task = |t: usize| {
        let (i0, j0) = ((t % m_blocks) * mc, (t / m_blocks) * nc);
        run_block(
            kp,
            a_words,
            (m, i0, i0 + mc),
            b_words,
            (n, j0, j0 + nc),
            c,
            ldc,
            alpha,
            accumulate,
        );
    };
    if par {
        (0..m_blocks * n_blocks).into_par_iter().for_each(task);
    } else {
        (0..m_blocks * n_blocks).for_each(task);
    }
}

/// One task's block on the kernel of this CPU (only reached when `Avx512Bf16` is available).
#[allow(clippy::too_many_arguments)]
fn run_block(
    kp: usize,
    a: &[u32],
    rows: (usize, usize, usize),
    b: &[u32],
    cols: (usize, usize, usize),
    c: DstPtr,
    ldc: usize,
    alpha: f32,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(has_avx512bf16());
        // SAFETY: the CPU has the features (asserted above); `a` and `b` were packed by
        // `pack_a` / `pack_b` with `kp` pairs; `c` is the destination, whose view covers m × n
        // at stride `ldc`, and the tasks' blocks (rows × cols) are disjoint.
        unsafe {
            avx512::block(
                kp,
                a.as_ptr(),
                rows,
                b.as_ptr(),
                cols,
                c.0,
                ldc,
                alpha,
                accumulate,
            )
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kp, a, rows, b, cols, c, ldc, alpha, accumulate);
        unreachable!("the bf16 kernel only exists on x86-64");
    }
}
