//! `y = x W + b` for few rows of `x` (a short text, a batch of attention-pool queries).
//!
//! A general GEMM packs the whole weight on every call, which dominates when `x` has a handful
//! of rows: the product is then a stream over the weight, bound by memory bandwidth. So the
//! weight `(k, n)` is read once, and in address order: each task takes a contiguous range of
//! its rows (all columns) and adds their share of the product into its own partial sums; the
//! partial sums (a few rows of `n`) are added at the end. Splitting the columns instead reads
//! each weight row in short bursts a page apart, which hardware prefetchers do not follow
//! (measured: 8-10 GB/s against ~29 GB/s for a plain read on a 2-core Zen 4).
//! Variants for AVX-512 and AVX2 (with FMA) are chosen at run time; others use plain code.

use std::ops::Range;

use rayon::prelude::*;

/// Rows up to which the skinny kernel beats the general GEMM on the shapes PE uses.
pub(crate) const MAX_ROWS: usize = 16;

/// Weight rows per pass over the columns: the partial sums are loaded and stored once per pass
/// (B16's text tower at batch 1, 2 threads, Zen 4: 1, 2, 4, 8, 16, 32 rows gave 2.5, 4.4-5.2,
/// 7.9-8.4, 9.7-10.9, 11.3-11.9, 8.2-9.2 texts/s).
const ROWS_PER_PASS: usize = 16;

/// Weight rows a task adds up (a multiple of [`ROWS_PER_PASS`]): 4 tasks for a 1,024-deep
/// product, 16 for 4,096; each task's partial sums are `m x n`, a few percent of the weight's
/// bytes at this size.
const RANGE_ROWS: usize = 256;

/// The operands of one call.
#[derive(Clone, Copy)]
struct Problem<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    w: &'a [f32],
    n: usize,
}

/// Adds `x[:, ks] W[ks, :]` to `out` (`m` rows of `n`), plain code.
#[inline(always)]
fn body<const FMA: bool>(p: &Problem, ks: Range<usize>, out: &mut [f32]) {
    let Problem { x, m, k, w, n } = *p;
    for kk in ks {
        let wrow = &w[kk * n..(kk + 1) * n];
        for i in 0..m {
            let a = x[i * k + kk];
            for (y, &wv) in out[i * n..(i + 1) * n].iter_mut().zip(wrow) {
                *y = if FMA { a.mul_add(wv, *y) } else { *y + a * wv };
            }
        }
    }
}

/// A register-blocked [`body`] for `M` rows, `$lanes` columns per vector: [`ROWS_PER_PASS`]
/// weight rows per pass over the columns, and for each vector of columns the `M` rows' sums
/// held in registers across them (loading and storing every partial sum once per weight row,
/// not the weight stream, bounded the simple loop). Same operations in the same order as
/// [`body`], so the same results. `$v` is a module with the vector type `V`, `LANES`, and
/// `load`/`store` of the first `n` lanes, `fma(a, w, acc)`.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_kernel {
    ($name:ident, $feature:literal, $v:ident) => {
        /// # Safety
        /// The CPU has the features; `p.m == M`; `out` holds `M` rows of `p.n`; `ks` lies
        /// within `0..p.k`.
        #[target_feature(enable = $feature)]
        unsafe fn $name<const M: usize>(p: &Problem, ks: Range<usize>, out: &mut [f32]) {
            use std::arch::x86_64::*;
            let Problem { x, k, w, n, .. } = *p;
            debug_assert!(p.m == M && out.len() == M * n && ks.end <= k);
            let (o, wp) = (out.as_mut_ptr(), w.as_ptr());
            let mut kk = ks.start;
            while kk < ks.end {
                let rows = ROWS_PER_PASS.min(ks.end - kk);
                let mut c = 0;
                while c < n {
                    let lanes = (n - c).min($v::LANES);
                    let mut acc = [$v::load(o.add(c), lanes); M];
                    for (i, a) in acc.iter_mut().enumerate().skip(1) {
                        *a = $v::load(o.add(i * n + c), lanes);
                    }
                    // The next pass's rows at these columns, into L2: the loads wait on
                    // memory otherwise (16 streams a page or more apart; +10% at batch 1).
                    for q in kk + rows..(kk + 2 * rows).min(ks.end) {
                        _mm_prefetch::<_MM_HINT_T1>(wp.add(q * n + c).cast::<i8>());
                    }
                    for q in kk..kk + rows {
                        let wv = $v::load(wp.add(q * n + c), lanes);
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = $v::fma(*x.get_unchecked(i * k + q), wv, *a);
                        }
                    }
                    for (i, a) in acc.iter().enumerate() {
                        $v::store(o.add(i * n + c), *a, lanes);
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
    ($rows:ident, $p:expr, $ks:expr, $out:expr, $($m:literal)*) => {
        match $p.m {
            $($m => $rows::<$m>($p, $ks, $out),)*
            _ => body::<true>($p, $ks, $out),
        }
    };
}

/// # Safety
/// The CPU has AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn body_avx512(p: &Problem, ks: Range<usize>, out: &mut [f32]) {
    by_rows!(rows_avx512, p, ks, out, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
}

/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2(p: &Problem, ks: Range<usize>, out: &mut [f32]) {
    // 16 ymm registers: up to 14 rows of sums, the weight and the broadcast.
    by_rows!(rows_avx2, p, ks, out, 1 2 3 4 5 6 7 8 9 10 11 12 13 14)
}

/// `x (m, k) @ w (k, n) + bias (n)`, row-major, returned as `(m, n)`.
pub(crate) fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    matmul_with(super::cpu::simd(), x, m, k, w, n, bias)
}

fn matmul_with(
    simd: super::cpu::Simd,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(x.len() == m * k && w.len() == k * n && bias.is_none_or(|b| b.len() >= n), "skinny product shapes");
    let p = Problem { x, m, k, w, n };
    // Ranges of a fixed number of weight rows, not one per thread: the order of the sums, and
    // so every bit of the result, must not depend on the thread count (a Spark task with one
    // thread gives what a two-thread process gives).
    let per = RANGE_ROWS;
    let ranges = k.div_ceil(per).max(1);
    let partial = |r: usize| {
        let ks = (r * per).min(k)..((r + 1) * per).min(k);
        let mut out = vec![0f32; m * n];
        match simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has the features (`simd` says so); `out` is m x n; ks is in 0..k.
            super::cpu::Simd::Avx512 => unsafe { body_avx512(&p, ks, &mut out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            super::cpu::Simd::Avx2 => unsafe { body_avx2(&p, ks, &mut out) },
            _ => body::<false>(&p, ks, &mut out),
        }
        out
    };
    let parts: Vec<Vec<f32>> = (0..ranges).into_par_iter().map(partial).collect();
    // The partial sums and the bias, in a fixed order (the result does not depend on timing).
    let mut parts = parts.into_iter();
    let mut y = parts.next().unwrap_or_default();
    for part in parts {
        for (a, b) in y.iter_mut().zip(part) {
            *a += b;
        }
    }
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n.max(1)) {
            for (a, b) in row.iter_mut().zip(b) {
                *a += b;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    /// Every vector unit, on row counts with and without a register-blocked kernel, and on
    /// depths split into several ranges of weight rows (200, 65: a last range short or empty).
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
            for (m, k, n) in [
                (3, 37, 600),
                (1, 64, 40),
                (10, 33, 517),
                (14, 11, 263),
                (15, 8, 30),
                (16, 20, 300),
                (17, 9, 70),
                (5, 200, 70),
                (9, 65, 33),
            ] {
                check(simd, m, k, n);
            }
        }
    }

    /// The same bits on any number of threads.
    #[test]
    fn the_result_does_not_depend_on_the_thread_count() {
        let (m, k, n) = (7, 1100, 300);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.3).collect();
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| super::matmul(&x, m, k, &w, n, None))
        };
        let one = on(1);
        for threads in [2, 3, 8] {
            assert!(on(threads) == one, "{threads} threads differ from one");
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
