//! Float32 register tiles on AVX2 over the 16-column panels of [`super::dense::DensePanels`]:
//! 6 rows by 16 columns (12 accumulators, 2 weight vectors, 1 broadcast), the bias loaded into
//! the accumulators, each row summed in `k` order (a row's bits do not depend on its tile).
//!
//! `gemm`'s AVX2 micro-kernel has the same shape, but it reads the activations (in place or
//! packed) through one pointer advanced by the row stride before each broadcast and carried
//! into the next `k` step: six dependent additions a step, as many cycles as the step's 12
//! FMAs take on a CPU with two 256-bit FMA pipes (B16's products at 58-65% of a Zen 3's FMA
//! peak). Here each row's address is computed from the step's index, and the only chain
//! carried from step to step is the index itself. Kernel bench on a Zen 3
//! (B16's four shapes at 197 and 1,576 rows, the two alternated call by call): medians 2-10%
//! above `gemm` on the same panels. Blocking `k` by 128, 256 or 512 (the panel's block kept in L1
//! across the row tiles) did not help there.

use std::arch::x86_64::*;

/// Rows per register tile.
pub(crate) const MR: usize = 6;

/// Columns per panel (two 8-lane vectors).
pub(crate) const WIDTH: usize = 16;

/// `R` rows of the output's panel columns: `c[r, j] = bias[j] + sum_kk a[r, kk] b[kk, j]` for
/// `r < R`, `j < cols`, summed in `kk` order.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `R` rows of `k` values at stride `lda`, `b` holds `k`
/// rows of [`WIDTH`] values, `bias` [`WIDTH`] values, and `c` has room for `R` rows of
/// `cols <= WIDTH` values at stride `ldc`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<const R: usize>(
    a: *const f32,
    lda: usize,
    b: *const f32,
    k: usize,
    bias: &[f32; WIDTH],
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
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

/// [`tile`] over `rows` rows (any number), [`MR`] at a time.
///
/// # Safety
/// As [`tile`], for `rows` rows of `a` and `c`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tiles(
    a: *const f32,
    lda: usize,
    rows: usize,
    b: *const f32,
    k: usize,
    bias: &[f32; WIDTH],
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let mut r0 = 0;
    while r0 < rows {
        let (a, c) = (a.add(r0 * lda), c.add(r0 * ldc));
        match rows - r0 {
            1 => tile::<1>(a, lda, b, k, bias, c, ldc, cols),
            2 => tile::<2>(a, lda, b, k, bias, c, ldc, cols),
            3 => tile::<3>(a, lda, b, k, bias, c, ldc, cols),
            4 => tile::<4>(a, lda, b, k, bias, c, ldc, cols),
            5 => tile::<5>(a, lda, b, k, bias, c, ldc, cols),
            _ => tile::<6>(a, lda, b, k, bias, c, ldc, cols),
        }
        r0 += MR;
    }
}
