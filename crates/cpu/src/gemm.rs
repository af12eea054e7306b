//! Strided host matrices and the one matrix product every CPU kernel of kiln calls.
//!
//! Why `gemm` (the crate): it reads operands at any strides (a transposed weight is read in
//! place), has matrix-vector paths for decoding and splits work over rayon's threads; burn-ndarray's
//! `matrixmultiply` packs the whole right-hand side on every call. `x86-v4` compiles its AVX-512
//! micro-kernels too, picked at run time only on CPUs that report avx512f.

use ndarray::{ArrayView, IxDyn};

/// A read-only matrix at any element strides (a transposed weight is read in place).
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    ptr: *const f32,
    pub rows: usize,
    pub cols: usize,
    row_stride: isize,
    col_stride: isize,
    _data: std::marker::PhantomData<&'a [f32]>,
}

// SAFETY: a `MatRef` is a shared borrow of f32 data (see `PhantomData<&[f32]>`).
unsafe impl Send for MatRef<'_> {}
unsafe impl Sync for MatRef<'_> {}

impl<'a> MatRef<'a> {
    /// `data` as a row-major `[rows, cols]` matrix. Panics if `data` is too short (a kiln bug,
    /// never user data).
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "matrix [{rows}, {cols}] out of bounds"
        );
        Self {
            ptr: data.as_ptr(),
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
            _data: std::marker::PhantomData,
        }
    }

    /// Columns `c0..c0 + cols` of a row-major `[rows, stride]` buffer.
    pub fn columns(data: &'a [f32], rows: usize, stride: usize, c0: usize, cols: usize) -> Self {
        assert!(c0 + cols <= stride && data.len() >= rows * stride);
        Self {
            ptr: data[c0..].as_ptr(),
            rows,
            cols,
            row_stride: stride as isize,
            col_stride: 1,
            _data: std::marker::PhantomData,
        }
    }

    /// A 2-d view of an ndarray primitive (any strides), or `None` if it is not 2-d.
    pub fn of_view(v: &'a ArrayView<'_, f32, IxDyn>) -> Option<Self> {
        let (s, st) = (v.shape(), v.strides());
        (s.len() == 2).then(|| Self {
            ptr: v.as_ptr(),
            rows: s[0],
            cols: s[1],
            row_stride: st[0],
            col_stride: st[1],
            _data: std::marker::PhantomData,
        })
    }

    /// The transpose (a view).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Address of element (i, j), for kernels that read the view themselves. The caller keeps
    /// `i < rows` and `j < cols` before dereferencing it.
    pub(crate) fn at(&self, i: usize, j: usize) -> *const f32 {
        self.ptr
            .wrapping_offset(i as isize * self.row_stride + j as isize * self.col_stride)
    }

    /// `(row stride, column stride)` in elements.
    pub(crate) fn strides(&self) -> (isize, isize) {
        (self.row_stride, self.col_stride)
    }

    /// Columns `j0..j0 + len` of row `i` as a slice, when the view's columns are contiguous
    /// (`None` otherwise), for kernels that stream rows. Panics outside the view.
    pub(crate) fn row_run(&self, i: usize, j0: usize, len: usize) -> Option<&'a [f32]> {
        assert!(
            i < self.rows && j0 + len <= self.cols,
            "row run out of the view"
        );
        (self.col_stride == 1 || len <= 1).then(|| {
            // SAFETY: row i, columns j0..j0 + len lie inside the view (asserted above) and the
            // view borrows its data for 'a; consecutive columns are adjacent (stride 1).
            unsafe { std::slice::from_raw_parts(self.at(i, j0), len) }
        })
    }

    /// Rows `r0..r0 + rows` (a view).
    pub fn rows(self, r0: usize, rows: usize) -> Self {
        assert!(r0 + rows <= self.rows);
        Self {
            // SAFETY: row `r0` is inside the matrix (asserted above).
            ptr: unsafe { self.ptr.offset(r0 as isize * self.row_stride) },
            rows,
            ..self
        }
    }
}

/// A writable matrix at any row stride (a column block of a wider buffer).
#[derive(Debug)]
pub struct MatMut<'a> {
    ptr: *mut f32,
    pub rows: usize,
    pub cols: usize,
    row_stride: usize,
    _data: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> MatMut<'a> {
    /// `data` as a row-major `[rows, cols]` matrix.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "matrix [{rows}, {cols}] out of bounds"
        );
        Self {
            ptr: data.as_mut_ptr(),
            rows,
            cols,
            row_stride: cols,
            _data: std::marker::PhantomData,
        }
    }

    /// Columns `c0..c0 + cols` of a row-major `[rows, stride]` buffer.
    ///
    /// # Safety
    /// Several of these may alias one buffer (one per head, written by parallel tasks): the
    /// caller makes sure their column ranges are disjoint and that `base` holds `rows · stride`
    /// elements.
    pub unsafe fn columns_raw(
        base: *mut f32,
        rows: usize,
        stride: usize,
        c0: usize,
        cols: usize,
    ) -> Self {
        assert!(c0 + cols <= stride);
        Self {
            // SAFETY: per the contract, `base` holds rows · stride elements and c0 < stride.
            ptr: unsafe { base.add(c0) },
            rows,
            cols,
            row_stride: stride,
            _data: std::marker::PhantomData,
        }
    }
}

impl MatMut<'_> {
    /// The first element and the row stride (columns are at unit stride), for kernels that
    /// write the view themselves within its `rows × cols`.
    pub(crate) fn raw(&mut self) -> (*mut f32, usize) {
        (self.ptr, self.row_stride)
    }
}

/// How a product uses threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (callers that already run one task per head).
    One,
    /// All of rayon's threads.
    All,
}

/// `dst = alpha · a · b`, or `dst += alpha · a · b` with `accumulate`. Panics on mismatched
/// shapes (a kiln bug, never user data).
pub fn matmul(
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    threads: Threads,
) {
    assert!(
        a.cols == b.rows && dst.rows == a.rows && dst.cols == b.cols,
        "matmul [{}, {}] x [{}, {}] -> [{}, {}]",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        dst.rows,
        dst.cols
    );
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: row r of dst holds `n` elements at unit stride.
                unsafe { std::slice::from_raw_parts_mut(dst.ptr.add(r * dst.row_stride), n) }
                    .fill(0.0);
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: the three matrices are live views of the stated shapes and strides (their
    // constructors check the bounds); gemm reads and writes within them only.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            1,
            dst.row_stride as isize,
            accumulate,
            a.ptr,
            a.col_stride,
            a.row_stride,
            b.ptr,
            b.col_stride,
            b.row_stride,
            if accumulate { 1.0 } else { 0.0 },
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `Σ a·b` with eight running sums, so the compiler vectorises it (the decoding products of
/// frozen matrices and the inference RMS norm use it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Plain, transposed, column-block and accumulated products against a naive loop.
    #[test]
    fn matmul_equals_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // [n, k]
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|l| a[i * k + l] * bt[j * k + l]).sum::<f32>() * 2.0;
            }
        }
        // dst is columns 1..4 of a [m, 5] buffer, accumulated onto ones.
        let mut buf = vec![1f32; m * 5];
        let dst = unsafe { MatMut::columns_raw(buf.as_mut_ptr(), m, 5, 1, n) };
        let b = MatRef::new(&bt, n, k).t();
        matmul(dst, MatRef::new(&a, m, k), b, 2.0, true, Threads::One);
        for i in 0..m {
            assert_eq!(buf[i * 5], 1.0);
            assert_eq!(buf[i * 5 + 4], 1.0);
            for j in 0..n {
                let got = buf[i * 5 + 1 + j];
                assert!((got - 1.0 - want[i * n + j]).abs() < 1e-5, "{got}");
            }
        }
    }
}
