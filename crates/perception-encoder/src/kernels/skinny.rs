//! `y = x W + b` for few rows of `x` (a short text, a batch of attention-pool queries).
//!
//! A general GEMM packs the whole weight on every call, which dominates when `x` has a handful
//! of rows. Here the weight `(k, n)` is streamed once: columns are split into blocks across
//! threads, and each block accumulates all rows while reading each weight row once.
//! Variants for AVX-512 and AVX2 (with FMA) are chosen at run time; others use plain code.

use rayon::prelude::*;

/// Rows up to which the skinny kernel beats the general GEMM on the shapes PE uses.
pub(crate) const MAX_ROWS: usize = 16;

const BLOCK: usize = 256;
const PREFETCH_ROWS: usize = 8;

/// The operands of one call.
#[derive(Clone, Copy)]
struct Problem<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    w: &'a [f32],
    n: usize,
    bias: Option<&'a [f32]>,
}

/// Each output row of the block set to the bias (or zero), the sums' starting value.
#[inline(always)]
fn start_rows(p: &Problem, j0: usize, out: &mut [f32]) {
    let width = out.len() / p.m;
    for row in out.chunks_exact_mut(width) {
        match p.bias {
            Some(b) => row.copy_from_slice(&b[j0..j0 + width]),
            None => row.fill(0.0),
        }
    }
}

#[inline(always)]
fn body<const FMA: bool>(p: &Problem, j0: usize, out: &mut [f32]) {
    let Problem { x, m, k, w, n, .. } = *p;
    let width = out.len() / m;
    start_rows(p, j0, out);
    for kk in 0..k {
        let wrow = &w[kk * n + j0..kk * n + j0 + width];
        // Each weight row is a short burst a page or more from the previous one, where hardware
        // prefetchers stop; fetch a few rows ahead explicitly.
        #[cfg(target_arch = "x86_64")]
        if kk + PREFETCH_ROWS < k {
            let ahead = w[(kk + PREFETCH_ROWS) * n + j0..].as_ptr();
            for line in (0..width).step_by(16) {
                // SAFETY: prefetching is a hint; the address lies inside `w`.
                unsafe {
                    core::arch::x86_64::_mm_prefetch(ahead.add(line).cast::<i8>(), core::arch::x86_64::_MM_HINT_T0)
                };
            }
        }
        for i in 0..m {
            let a = x[i * k + kk];
            let row = &mut out[i * width..(i + 1) * width];
            for (y, &wv) in row.iter_mut().zip(wrow) {
                *y = if FMA { a.mul_add(wv, *y) } else { *y + a * wv };
            }
        }
    }
}

/// Weight rows per pass of the register-blocked bodies.
const ROWS_PER_PASS: usize = 4;

/// A register-blocked body for `M` rows, `$lanes` columns per vector: [`ROWS_PER_PASS`] weight
/// rows per pass over the block, and for each chunk of columns the `M` rows' sums held in
/// registers across them. The simple loop ([`body`]) loads and stores every partial sum once
/// per weight row; that traffic, not the weight stream, bounded it (a 10-row text: 8 GB/s of
/// weights against 13 GB/s here, in a microbenchmark on 1024 x 4096 weights). Same operations
/// in the same order as [`body`], so the same results. `$v` is a module with the vector type
/// `V`, `LANES`, and `zero`, `load`/`store` of the first `n` lanes, `fma(a, w, acc)`.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_kernel {
    ($name:ident, $feature:literal, $v:ident) => {
        /// # Safety
        /// The CPU has the features; `p.m == M`; `out` holds `M` rows of the block's width.
        #[target_feature(enable = $feature)]
        unsafe fn $name<const M: usize>(p: &Problem, j0: usize, out: &mut [f32]) {
            use std::arch::x86_64::*;
            let Problem { x, k, w, n, .. } = *p;
            debug_assert_eq!(p.m, M);
            let width = out.len() / M;
            start_rows(p, j0, out);
            let (o, wp) = (out.as_mut_ptr(), w.as_ptr());
            let mut kk = 0;
            while kk < k {
                let rows = ROWS_PER_PASS.min(k - kk);
                for ahead in kk + PREFETCH_ROWS..(kk + PREFETCH_ROWS + rows).min(k) {
                    let at = wp.add(ahead * n + j0);
                    for line in (0..width).step_by(16) {
                        _mm_prefetch::<_MM_HINT_T0>(at.add(line).cast::<i8>());
                    }
                }
                let mut c = 0;
                while c < width {
                    let lanes = (width - c).min($v::LANES);
                    let mut acc = [$v::zero(); M];
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = $v::load(o.add(i * width + c), lanes);
                    }
                    for q in kk..kk + rows {
                        let wv = $v::load(wp.add(q * n + j0 + c), lanes);
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = $v::fma(*x.get_unchecked(i * k + q), wv, *a);
                        }
                    }
                    for (i, a) in acc.iter().enumerate() {
                        $v::store(o.add(i * width + c), *a, lanes);
                    }
                    c += $v::LANES;
                }
                kk += rows;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod v512 {
    use std::arch::x86_64::*;
    pub type V = __m512;
    pub const LANES: usize = 16;
    #[inline(always)]
    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }
    #[inline(always)]
    pub unsafe fn zero() -> V {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    pub unsafe fn load(p: *const f32, n: usize) -> V {
        _mm512_maskz_loadu_ps(mask(n), p)
    }
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V, n: usize) {
        _mm512_mask_storeu_ps(p, mask(n), v)
    }
    #[inline(always)]
    pub unsafe fn fma(a: f32, w: V, acc: V) -> V {
        _mm512_fmadd_ps(_mm512_set1_ps(a), w, acc)
    }
}

#[cfg(target_arch = "x86_64")]
mod v256 {
    use std::arch::x86_64::*;
    pub type V = __m256;
    pub const LANES: usize = 8;
    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }
    #[inline(always)]
    pub unsafe fn zero() -> V {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    pub unsafe fn load(p: *const f32, n: usize) -> V {
        if n >= 8 {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, mask(n))
        }
    }
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: V, n: usize) {
        if n >= 8 {
            _mm256_storeu_ps(p, v)
        } else {
            _mm256_maskstore_ps(p, mask(n), v)
        }
    }
    #[inline(always)]
    pub unsafe fn fma(a: f32, w: V, acc: V) -> V {
        _mm256_fmadd_ps(_mm256_set1_ps(a), w, acc)
    }
}

#[cfg(target_arch = "x86_64")]
rows_kernel!(rows_avx512, "avx512f,fma", v512);
#[cfg(target_arch = "x86_64")]
rows_kernel!(rows_avx2, "avx2,fma", v256);

/// `$rows::<M>` for `p.m` rows, `1..=$max` (as many as the vector registers hold with the
/// weight and the broadcast); [`body`] beyond.
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($rows:ident, $p:expr, $j0:expr, $out:expr, $($m:literal)*) => {
        match $p.m {
            $($m => $rows::<$m>($p, $j0, $out),)*
            _ => body::<true>($p, $j0, $out),
        }
    };
}

/// # Safety
/// The CPU has AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn body_avx512(p: &Problem, j0: usize, out: &mut [f32]) {
    by_rows!(rows_avx512, p, j0, out, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2(p: &Problem, j0: usize, out: &mut [f32]) {
    // 16 ymm registers: up to 14 rows of sums, the weight and the broadcast.
    by_rows!(rows_avx2, p, j0, out, 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
}

/// `x (m, k) @ w (k, n) + bias (n)`, row-major, returned as `(m, n)`.
pub(crate) fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    // The same run-time choice (cached once) as the element-wise kernels.
    matmul_with(super::cpu::simd(), x, m, k, w, n, bias)
}

/// [`matmul`] with the vector unit chosen by the caller (it must be available).
fn matmul_with(
    simd: super::cpu::Simd,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let p = Problem { x, m, k, w, n, bias };
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|blk| {
            let j0 = blk * BLOCK;
            let width = BLOCK.min(n - j0);
            let mut out = vec![0f32; m * width];
            match simd {
                // SAFETY: `simd()` detected the feature at run time.
                #[cfg(target_arch = "x86_64")]
                super::cpu::Simd::Avx512 => unsafe { body_avx512(&p, j0, &mut out) },
                #[cfg(target_arch = "x86_64")]
                super::cpu::Simd::Avx2 => unsafe { body_avx2(&p, j0, &mut out) },
                _ => body::<false>(&p, j0, &mut out),
            }
            (j0, out)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (j0, block) in blocks {
        let width = block.len() / m;
        for i in 0..m {
            y[i * n + j0..i * n + j0 + width].copy_from_slice(&block[i * width..(i + 1) * width]);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_available_vector_unit_matches_a_naive_product() {
        use crate::kernels::cpu::Simd;
        let mut levels = vec![Simd::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::arch::is_x86_feature_detected!("fma");
            if std::arch::is_x86_feature_detected!("avx2") && fma {
                levels.push(Simd::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") && fma {
                levels.push(Simd::Avx512);
            }
        }
        for simd in levels {
            for (m, k, n) in
                [(3, 37, 600), (1, 64, 40), (10, 33, 517), (14, 11, 263), (15, 8, 30), (16, 20, 300), (17, 9, 70)]
            {
                check(simd, m, k, n);
            }
        }
    }

    fn check(simd: crate::kernels::cpu::Simd, m: usize, k: usize, n: usize) {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0).collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 / 100.0).collect();
        let y = super::matmul_with(simd, &x, m, k, &w, n, Some(&b));
        for i in 0..m {
            for j in 0..n {
                let want: f64 = b[j] as f64 + (0..k).map(|kk| x[i * k + kk] as f64 * w[kk * n + j] as f64).sum::<f64>();
                assert!(
                    (y[i * n + j] as f64 - want).abs() < 1e-4,
                    "{simd:?} m={m} ({i},{j}): {} vs {want}",
                    y[i * n + j]
                );
            }
        }
    }
}
