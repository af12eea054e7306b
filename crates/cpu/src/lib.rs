//! kiln-cpu: the CPU runtime under kiln's crates, with no model in it.
//!
//! - `gemm`: strided host matrices ([`MatRef`], [`MatMut`]) and the one f32 matrix product
//!   ([`matmul`]) kiln's kernels call; [`matmul_in`] picks it or the bf16 product by
//!   [`Precision`].
//! - [`bf16`]: products of bf16-valued operands with f32 accumulation on the CPU's bf16 unit
//!   ([`bf16::matmul_bf16`], AVX512-BF16), or the f32 product where there is none.
//! - [`quant`]: frozen weights kept in their storage format ([`QMatrix`]: ggml blocks from a
//!   GGUF file, f16/bf16, bitsandbytes' NF4/FP4/int8) and their products, dequantized a tile at
//!   a time; [`quant::quantize`] writes f32 into ggml's blocks (GGUF export).
//! - f32 or bf16 compute ([`Precision`]), bf16 rounding ([`round_bf16`], [`round_slice`],
//!   [`bf16_bits`], [`bf16_value`]) and storage of saved activations ([`Stash`]).
//! - [`fastexp`]: a libm-free vectorisable `e^x`.
//! - [`on_pool`]: runs a step on rayon's pool, so its kernels' parallel loops start inside it.
//! - [`io`]: the atomic file writer (temporary file, fsync, rename) every saved file goes through.
//! - With the `burn` feature, the bridge to burn's ndarray backend (the one crate of kiln that
//!   names burn-ndarray): `host` (views of its tensors as [`host::Storage`], and `x · W` on them
//!   through this crate's products), `grads` (gradients by parameter, filled by the fused
//!   backward pass outside burn's autodiff) and `packed` (bf16 layouts of frozen weights,
//!   packed once per run).
pub mod bf16;
mod error;
pub mod fastexp;
mod gemm;
#[cfg(feature = "burn")]
mod grads;
#[cfg(feature = "burn")]
pub mod host;
pub mod io;
#[cfg(feature = "burn")]
pub mod packed;
mod pool;
mod precision;
mod product;
pub mod quant;
pub mod scratch;

pub use error::{CpuError, Result};
pub use gemm::{MatMut, MatRef, Threads, dot, matmul};
#[cfg(feature = "burn")]
pub use grads::Grads;
pub use pool::on_pool;
pub use precision::{Precision, Stash, bf16_bits, bf16_value, round_bf16, round_slice};
pub use product::matmul_in;
pub use quant::{Bytes, QMatrix, QuantType};
