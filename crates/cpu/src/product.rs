//! The product in a training precision: the f32 product of `gemm.rs` or the bf16 unit's of
//! `bf16/`, picked per product. A module of its own so that the f32 product and the bf16 kernel
//! (which falls back on it) do not depend on each other.
use crate::bf16::matmul_bf16;
use crate::gemm::{MatMut, MatRef, Threads, matmul};
use crate::precision::Precision;

/// Rows and columns of the result below which a bf16 product runs the f32 [`matmul`] (on the
/// same bf16 values): [`matmul_bf16`] packs both operands on every call, which
/// costs more than its bf16 unit saves when the result is thin (LoRA's rank-16 products, the
/// adapters' weight gradients) or small (attention's 64-query blocks). Measured: with every
/// product on the bf16 kernel, SmolLM2's LoRA step took 9.0–10.1 s against f32's 7.8–8.1 s,
/// a fifth of it in packing.
const BF16_MIN_SIDE: usize = 128;

/// `dst = alpha · a · b` (or `+=` with `accumulate`) in `precision`: the f32 [`matmul`] for
/// [`Precision::F32`], [`matmul_bf16`] (the bf16 unit, f32 accumulation) for
/// [`Precision::Bf16`] when the result has at least 128 rows and 128 columns (the f32
/// product on the same values otherwise, see `BF16_MIN_SIDE`). The one product kiln's
/// training step calls, so the choice of kernel lives here and not at every call site.
///
/// In bf16 both operands must already hold bf16 values (callers round them as autocast does):
/// the bf16 kernel rounds other values to nearest while its f32 fallback would use them as
/// they are, so an unrounded operand would give results that depend on the CPU.
pub fn matmul_in(
    precision: Precision,
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    threads: Threads,
) {
    match precision {
        Precision::F32 => matmul(dst, a, b, alpha, accumulate, threads),
        Precision::Bf16 if a.rows >= BF16_MIN_SIDE && b.cols >= BF16_MIN_SIDE => {
            matmul_bf16(dst, a, b, alpha, accumulate, threads)
        }
        Precision::Bf16 => matmul(dst, a, b, alpha, accumulate, threads),
    }
}
