//! Float32 register tiles on AVX2 over the 16-column panels of [`super::dense::DensePanels`]:
//! 6 rows by 16 columns (12 accumulators, 2 weight vectors, 1 broadcast), the bias loaded into
//! the accumulators, each row summed in `k` order (a row's bits do not depend on its tile).
//!
//! `gemm`'s AVX2 micro-kernel has the same shape, but it reads the activations (in place or
//! packed) through one pointer advanced by the row stride before each broadcast and carried
//! into the next `k` step: six dependent additions a step, as many cycles as the step's 12
//! FMAs take on a CPU with two 256-bit FMA pipes (B16's products at 58-65% of a Zen 3's FMA
//! peak). Here each row's address is computed from the step's index, and the only chain
//! carried from step to step is the index itself. Kernel bench on a Zen 3 (B16's four shapes
//! at 197 and 1,576 rows, the two alternated call by call, two runs): medians 2-12% above
//! `gemm` on the same panels. Blocking `k` by 128, 256 or 512 (the panel's block kept in L1
//! across the row tiles) did not help there.

use std::arch::x86_64::*;

/// Rows per register tile.
pub(crate) const MR: usize = 6;

/// Columns per panel (two 8-lane vectors).
pub(crate) const WIDTH: usize = 16;

/// One block of a product: rows of the activations `a` (`k` values each, at stride `lda`), a
/// panel `b` (`k` rows of [`WIDTH`] values), the bias of its columns, and the output `c` (at
/// stride `ldc`), of which `cols <= WIDTH` columns are valid.
#[derive(Clone, Copy)]
pub(crate) struct Block<'a> {
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub k: usize,
    pub bias: &'a [f32; WIDTH],
    pub c: *mut f32,
    pub ldc: usize,
    pub cols: usize,
}

/// `R` rows of the block's output: `c[r, j] = bias[j] + sum_kk a[r, kk] b[kk, j]` for `r < R`,
/// `j < cols`, summed in `kk` order.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `R` rows, `b` its `k` rows and `c` room for `R` rows of
/// `cols` values (see [`Block`]).
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(op: Block) {
    let Block { a, lda, b, k, bias, c, ldc, cols } = op;
    let (b0, b1) = (_mm256_loadu_ps(bias.as_ptr()), _mm256_loadu_ps(bias.as_ptr().add(8)));
    let mut acc0 = [b0; R];
    let mut acc1 = [b1; R];
    let rows: [*const f32; R] = std::array::from_fn(|r| a.add(r * lda));
    for kk in 0..k {
        let w = b.add(kk * WIDTH);
        let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
        for r in 0..R {
            let x = _mm256_broadcast_ss(&*rows[r].add(kk));
            acc0[r] = _mm256_fmadd_ps(x, w0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(x, w1, acc1[r]);
        }
    }
    for r in 0..R {
        let row = c.add(r * ldc);
        if cols == WIDTH {
            _mm256_storeu_ps(row, acc0[r]);
            _mm256_storeu_ps(row.add(8), acc1[r]);
        } else {
            let mut v = [0f32; WIDTH];
            _mm256_storeu_ps(v.as_mut_ptr(), acc0[r]);
            _mm256_storeu_ps(v.as_mut_ptr().add(8), acc1[r]);
            std::ptr::copy_nonoverlapping(v.as_ptr(), row, cols);
        }
    }
}

/// The block's `rows` rows (any number), [`MR`] at a time.
///
/// # Safety
/// As [`tile`], for `rows` rows of `a` and `c`.
pub(crate) unsafe fn tiles(op: Block, rows: usize) {
    let mut r0 = 0;
    while r0 < rows {
        let op = Block { a: op.a.add(r0 * op.lda), c: op.c.add(r0 * op.ldc), ..op };
        match rows - r0 {
            1 => tile::<1>(op),
            2 => tile::<2>(op),
            3 => tile::<3>(op),
            4 => tile::<4>(op),
            5 => tile::<5>(op),
            _ => tile::<6>(op),
        }
        r0 += MR;
    }
}
