//! Products by a [`QMatrix`] that dequantize one tile of rows at a time.
//!
//! Each rayon task dequantizes `TILE` rows of the weight into a buffer of its own (a few hundred
//! KB, so it stays in cache while `gemm` reads it) and multiplies by it; the whole weight is
//! never widened. The forward `y = x · Wᵀ` gives each task its own block of output columns; the
//! backward `dx = dy · W` gives each task its own block of input columns (whole quantization
//! blocks), so every weight is dequantized exactly once per product and no two tasks write the
//! same output.
use super::{QMatrix, dots};
use crate::bf16;
use crate::gemm::{MatMut, MatRef, Threads, dot, matmul};
use crate::precision::Precision;
use crate::product::matmul_in;
use crate::scratch::with_scratch;
use rayon::prelude::*;

/// Weight rows dequantized per task of the forward product, and per step of the backward's.
const TILE: usize = 64;
/// [`TILE`] in bf16: two of the bf16 kernel's 48-column panels (64 would leave a third of the
/// second panel empty).
const BF16_TILE: usize = 96;
/// Input columns per task of the backward product (a multiple of every block size, 256).
const COL_TILE: usize = 512;
/// Rows of `x` up to which the forward takes dot products with one dequantized weight row at a
/// time (decoding): the row stays in L1 and no tile is written and read back, where a 64-row
/// tile and a matrix-vector product cost more than the dequantization itself.
const DOT_ROWS: usize = dots::MAX_ROWS;
/// Weight rows per task of the dot-product forward.
const DOT_CHUNK: usize = 32;

/// A raw output pointer handed to tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks that receive an `Out` write disjoint column blocks (see the callers).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the whole `Send` wrapper, not its field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

impl QMatrix {
    /// `y = x · Wᵀ` (or `y += x · Wᵀ` with `accumulate`), W being this `[n, k]` matrix. In
    /// bf16 each dequantized tile is rounded to bf16 as autocast casts a weight (the input
    /// must already hold bf16 values) and multiplied on the bf16 kernel
    /// ([`crate::bf16`]), `x` packed once for all tiles.
    ///
    /// # Shapes
    /// - x: `[m, k]` row-major
    /// - y: `[m, n]` row-major
    ///
    /// # Panics
    /// On mismatched lengths (a kiln bug, never user data).
    pub fn matmul_t(&self, x: &[f32], m: usize, y: &mut [f32], accumulate: bool, p: Precision) {
        let (n, k) = (self.rows, self.cols);
        assert!(x.len() >= m * k && y.len() >= m * n, "qmatmul_t shapes");
        if m == 0 || n == 0 {
            return;
        }
        let out = Out(y.as_mut_ptr());
        if m <= DOT_ROWS && p == Precision::F32 {
            self.matmul_t_dots(x, m, out, accumulate);
            return;
        }
        let xm = MatRef::new(x, m, k);
        if let (Precision::Bf16, Some(layout)) = (p, &self.bf16_layout) {
            let dst = MatMut::new(&mut y[..m * n], m, n);
            bf16::matmul_bf16_packed(dst, xm, layout, 1.0, accumulate, Threads::All);
            return;
        }
        let (tile_rows, packed) = match p {
            Precision::F32 => (TILE, None),
            Precision::Bf16 => (BF16_TILE, Some(bf16::pack_a(xm))),
        };
        let tiles = n.div_ceil(tile_rows);
        // The tile buffer is the thread's scratch (overwritten by the dequantization): a fresh
        // zeroed one per rayon split was a memset of the tile for every few tiles.
        (0..tiles).into_par_iter().for_each(|t| {
            with_scratch(tile_rows * k, |tile| {
                let (r0, rows) = (t * tile_rows, tile_rows.min(n - t * tile_rows));
                let w = &mut tile[..rows * k];
                self.dequantize_rows(r0, rows, w);
                // The bf16 kernel rounds the tile while packing it (the same rounding): doing
                // it here too cost 10% of a served decode step.
                if !packed.as_ref().is_some_and(bf16::PackedA::rounds_rhs) {
                    p.round(w);
                }
                // SAFETY: `y` holds m·n elements; this task alone writes columns r0..r0+rows.
                let dst = unsafe { MatMut::columns_raw(out.ptr(), m, n, r0, rows) };
                let wt = MatRef::new(w, rows, k).t();
                match &packed {
                    None => matmul(dst, xm, wt, 1.0, accumulate, Threads::One),
                    Some(xp) => {
                        bf16::matmul_bf16_packed_a(dst, xp, wt, 1.0, accumulate, Threads::One)
                    }
                }
            })
        });
    }

    /// [`Self::matmul_t`] for a few rows of `x` in f32: dot products straight from the codes
    /// ([`dots`]) where the format has that kernel; otherwise each weight row is dequantized
    /// into a buffer of `k` floats and dotted with every row of `x`.
    fn matmul_t_dots(&self, x: &[f32], m: usize, out: Out, accumulate: bool) {
        let n = self.rows;
        let isa = dots::supported(self).then(dots::Isa::detected);
        (0..n.div_ceil(DOT_CHUNK)).into_par_iter().for_each_init(
            || vec![0f32; DOT_CHUNK * DOT_ROWS + self.cols],
            |buf, c| {
                let (r0, r1) = (c * DOT_CHUNK, ((c + 1) * DOT_CHUNK).min(n));
                let (buf, row) = buf.split_at_mut(DOT_CHUNK * DOT_ROWS);
                match isa {
                    Some(isa) => dots::dots(isa, self, x, m, r0, r1, buf),
                    None => self.dots_dequantized(x, m, (r0, r1), buf, row),
                }
                for (r, v) in (r0..r1).zip(buf.chunks_exact(m)) {
                    for (i, &v) in v.iter().enumerate() {
                        // SAFETY: `y` holds m·n elements; this task alone writes column r
                        // (its chunk of weight rows) of every row i.
                        unsafe {
                            let y = out.ptr().add(i * n + r);
                            *y = if accumulate { *y + v } else { v };
                        }
                    }
                }
            },
        );
    }

    /// `buf[(r - r0) · m + i] = x[i] · W[r]` through a dequantized row (`row`, `k` floats):
    /// the formats [`dots`] does not cover.
    fn dots_dequantized(
        &self,
        x: &[f32],
        m: usize,
        (r0, r1): (usize, usize),
        buf: &mut [f32],
        row: &mut [f32],
    ) {
        let k = self.cols;
        for r in r0..r1 {
            self.dequantize_rows(r, 1, row);
            for i in 0..m {
                buf[(r - r0) * m + i] = dot(&x[i * k..(i + 1) * k], row);
            }
        }
    }

    /// `dx = dy · W` (or `dx += dy · W` with `accumulate`), W being this `[n, k]` matrix: the
    /// input gradient of `y = x · Wᵀ`. bf16 as in [`Self::matmul_t`] (`dy` must hold bf16
    /// values).
    ///
    /// # Shapes
    /// - dy: `[m, n]` row-major
    /// - dx: `[m, k]` row-major
    pub fn matmul(&self, dy: &[f32], m: usize, dx: &mut [f32], accumulate: bool, p: Precision) {
        let (n, k) = (self.rows, self.cols);
        assert!(dy.len() >= m * n && dx.len() >= m * k, "qmatmul shapes");
        if m == 0 || k == 0 {
            return;
        }
        if n == 0 {
            if !accumulate {
                dx[..m * k].fill(0.0);
            }
            return;
        }
        // Column blocks of whole quantization blocks (row tiles hold entire rows otherwise).
        let col_tile = if self.stats.is_some() || self.row_map.is_some() || k <= COL_TILE {
            k
        } else {
            COL_TILE
        };
        let out = Out(dx.as_mut_ptr());
        let col_blocks = k.div_ceil(col_tile);
        if col_blocks == 1 {
            self.matmul_rows(dy, m, out, 0, k, accumulate, p, Threads::All);
            return;
        }
        (0..col_blocks).into_par_iter().for_each(|cb| {
            let c0 = cb * col_tile;
            let cols = col_tile.min(k - c0);
            self.matmul_rows(dy, m, out, c0, cols, accumulate, p, Threads::One);
        });
    }

    /// `dx[:, c0..c0+cols] (+)= dy · W[:, c0..c0+cols]`, over all rows of W in tiles.
    #[allow(clippy::too_many_arguments)]
    fn matmul_rows(
        &self,
        dy: &[f32],
        m: usize,
        out: Out,
        c0: usize,
        cols: usize,
        accumulate: bool,
        p: Precision,
        threads: Threads,
    ) {
        let k = self.cols;
        let tile_rows = match p {
            Precision::F32 => TILE,
            Precision::Bf16 => BF16_TILE,
        };
        // Scratch buffers, overwritten by the dequantization (see `matmul_t`).
        with_scratch(tile_rows * cols, |tile| {
            let mut full = if cols == k {
                Vec::new()
            } else {
                vec![0f32; tile_rows * k]
            };
            self.matmul_tiles(
                dy,
                m,
                out,
                (c0, cols),
                accumulate,
                p,
                threads,
                tile,
                &mut full,
            );
        });
    }

    /// The loop of [`Self::matmul_rows`] over tiles of W's rows, with its buffers.
    #[allow(clippy::too_many_arguments)]
    fn matmul_tiles(
        &self,
        dy: &[f32],
        m: usize,
        out: Out,
        (c0, cols): (usize, usize),
        accumulate: bool,
        p: Precision,
        threads: Threads,
        tile: &mut [f32],
        full: &mut [f32],
    ) {
        let (n, k) = (self.rows, self.cols);
        let tile_rows = tile.len() / cols.max(1);
        for t in 0..n.div_ceil(tile_rows) {
            let (r0, rows) = (t * tile_rows, tile_rows.min(n - t * tile_rows));
            let w = if cols == k {
                let w = &mut tile[..rows * k];
                self.dequantize_rows(r0, rows, w);
                w
            } else {
                self.dequantize_cols(r0, rows, c0, cols, full, tile);
                &mut tile[..rows * cols]
            };
            p.round(w);
            // SAFETY: `dx` holds m·k elements; this call alone writes columns c0..c0+cols.
            let dst = unsafe { MatMut::columns_raw(out.ptr(), m, k, c0, cols) };
            // bf16: `dy` holds bf16 values (the callers round it) and `w` was rounded above.
            matmul_in(
                p,
                dst,
                MatRef::columns(dy, m, n, r0, rows),
                MatRef::new(w, rows, cols),
                1.0,
                accumulate || t > 0,
                threads,
            );
        }
    }

    /// Rows `r0..r0+rows`, columns `c0..c0+cols` into `out` (`[rows, cols]`). Block formats with
    /// no row map decode only the blocks of those columns; others go through a full row.
    fn dequantize_cols(
        &self,
        r0: usize,
        rows: usize,
        c0: usize,
        cols: usize,
        full: &mut [f32],
        out: &mut [f32],
    ) {
        let (block, bytes) = self.ty.block_layout();
        if self.stats.is_none()
            && self.row_map.is_none()
            && c0.is_multiple_of(block)
            && cols.is_multiple_of(block)
        {
            let rb = self.row_bytes();
            let data = self.data.as_slice();
            for (i, o) in out[..rows * cols].chunks_exact_mut(cols).enumerate() {
                let start = (r0 + i) * rb + c0 / block * bytes;
                let src = &data[start..start + cols / block * bytes];
                super::ggml::dequantize_blocks(self.ty, src, o, false);
            }
            return;
        }
        let k = self.cols;
        self.dequantize_rows(r0, rows, &mut full[..rows * k]);
        for (o, row) in out[..rows * cols]
            .chunks_exact_mut(cols)
            .zip(full.chunks_exact(k))
        {
            o.copy_from_slice(&row[c0..c0 + cols]);
        }
    }

    /// `out[i] = W[ids[i]]`: the embedding lookup.
    ///
    /// # Shapes
    /// - out: `[ids.len(), k]` row-major
    ///
    /// # Panics
    /// On an id out of range (callers check ids against the vocabulary first).
    pub fn gather_rows(&self, ids: &[u32], out: &mut [f32]) {
        let k = self.cols;
        assert!(out.len() >= ids.len() * k, "gather shapes");
        out[..ids.len() * k]
            .par_chunks_mut(k.max(1))
            .zip(ids.par_iter())
            .for_each(|(row, &id)| self.dequantize_rows(id as usize, 1, row));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Bytes, QuantType};
    use super::*;

    /// A Q4_0 `[n, k]` matrix with varied scales and codes.
    fn q4(n: usize, k: usize) -> QMatrix {
        let mut data = Vec::new();
        for r in 0..n {
            for b in 0..k / 32 {
                let d = half::f16::from_f32(0.01 + 0.003 * ((r * 7 + b) % 11) as f32);
                data.extend_from_slice(&d.to_le_bytes());
                data.extend((0..16).map(|j| ((r * 5 + b * 3 + j * 7) % 256) as u8));
            }
        }
        QMatrix::new(QuantType::Q4_0, n, k, Bytes::Owned(data.into())).unwrap()
    }

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, bt: bool) -> Vec<f32> {
        // a [m, k]; b [n, k] when bt else [k, n]
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|l| a[i * k + l] * if bt { b[j * k + l] } else { b[l * n + j] })
                    .sum();
            }
        }
        y
    }

    fn close(a: &[f32], b: &[f32]) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }

    /// `matmul_t` and `matmul` (accumulating onto ones) of an `[n, k]` Q4_0 matrix against the
    /// naive products of its dequantized values, rounded to bf16 in bf16 (as are the inputs).
    fn check_products(m: usize, n: usize, k: usize, p: Precision) {
        let w = q4(n, k);
        let round = |v: f32| match p {
            Precision::F32 => v,
            Precision::Bf16 => crate::precision::round_bf16(v),
        };
        let dense: Vec<f32> = w.to_f32().into_iter().map(round).collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| round(((i * 13 % 17) as f32 - 8.0) / 7.0))
            .collect();
        let mut y = vec![1f32; m * n];
        w.matmul_t(&x, m, &mut y, false, p);
        close(&y, &naive(&x, &dense, m, k, n, true));
        let dy: Vec<f32> = (0..m * n)
            .map(|i| round(((i * 7 % 11) as f32 - 5.0) / 3.0))
            .collect();
        let mut dx = vec![1f32; m * k];
        w.matmul(&dy, m, &mut dx, true, p);
        let want: Vec<f32> = naive(&dy, &dense, m, n, k, false)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        close(&dx, &want);
    }

    /// n spans two tiles and a remainder; k spans two column blocks and a remainder.
    #[test]
    fn products_equal_the_dense_products() {
        check_products(3, 150, 1088, Precision::F32);
        // Decoding's dot-product path (m ≤ 4) and the tile path just above it.
        for m in [1, 4, 5] {
            check_products(m, 70, 288, Precision::F32);
        }
    }

    /// In bf16 (on the bf16 kernel where the CPU has one) the products equal the dense
    /// products of the bf16-rounded weight, through several tiles, columns blocks and the
    /// packed-once input (m ≥ 16).
    #[test]
    fn bf16_products_equal_the_rounded_dense_products() {
        check_products(20, 250, 1088, Precision::Bf16);
    }

    /// With the bf16 layout held, `matmul_t` in bf16 equals the naive product of the rounded
    /// weight (from 5 rows, under the kernel's packing threshold, to 40, and accumulating), and
    /// equals the tile path bit for bit (the same kernel sums each output in the same order);
    /// f32 products ignore the layout.
    #[test]
    fn held_bf16_layout_gives_the_tile_paths_products() {
        let (n, k) = (250, 1088);
        let tiles = q4(n, k);
        let mut held = tiles.clone();
        held.hold_bf16_layout();
        assert!(held.bf16_layout_bytes() >= n * k * 2);
        assert_eq!(tiles.bf16_layout_bytes(), 0);
        let r = crate::precision::round_bf16;
        let dense: Vec<f32> = tiles.to_f32().into_iter().map(r).collect();
        for m in [5, 20, 40] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| r(((i * 13 % 17) as f32 - 8.0) / 7.0))
                .collect();
            let (mut a, mut b) = (vec![1f32; m * n], vec![1f32; m * n]);
            held.matmul_t(&x, m, &mut a, true, Precision::Bf16);
            tiles.matmul_t(&x, m, &mut b, true, Precision::Bf16);
            let want: Vec<f32> = naive(&x, &dense, m, k, n, true)
                .iter()
                .map(|v| v + 1.0)
                .collect();
            close(&a, &want);
            if m >= 16 {
                assert_eq!(a, b, "{m} rows");
            }
            let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
            held.matmul_t(&x, m, &mut a, false, Precision::F32);
            tiles.matmul_t(&x, m, &mut b, false, Precision::F32);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn gather_and_row_maps_read_the_mapped_rows() {
        let w = q4(4, 64);
        let dense = w.to_f32();
        let mapped = w.clone().with_row_map(vec![2, 0, 3, 1]).unwrap();
        let mut out = vec![0f32; 2 * 64];
        mapped.gather_rows(&[0, 3], &mut out);
        assert_eq!(&out[..64], &dense[128..192]);
        assert_eq!(&out[64..], &dense[64..128]);
        // Products through the map equal products by the reordered dense matrix.
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let mut y = vec![0f32; 4];
        mapped.matmul_t(&x, 1, &mut y, false, Precision::F32);
        let reordered: Vec<f32> = [2, 0, 3, 1]
            .iter()
            .flat_map(|&r| dense[r * 64..(r + 1) * 64].to_vec())
            .collect();
        close(&y, &naive(&x, &reordered, 1, 64, 4, true));
    }
}
