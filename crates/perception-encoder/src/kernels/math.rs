//! Branch-free `exp`, `erf` and GELU on float32 that compilers vectorize over slices (libm's
//! scalar calls do not vectorize and showed up as 15-20% of a bf16 forward pass).

use rayon::prelude::*;

/// `ln 2` split so that `n * LN2_HI` is exact for the `n` of float32's range: `x - n ln 2` in two
/// steps keeps the reduced argument accurate (the vector `exp`s share it).
pub(crate) const LN2_HI: f32 = 0.693_145_75;
/// The rest of `ln 2` after [`LN2_HI`].
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a call.
pub(crate) const ROUND: f32 = 12_582_912.0;
/// The Taylor series of `e^r` to degree 7, highest degree first (Horner's order): truncation
/// below 1e-8 relative on `|r| <= ln2 / 2`.
pub(crate) const EXP_TAYLOR: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];

/// `e^x` within about 2 ulp for `x` in `[-87, 88]` (clamped outside: tiny, or large and finite).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = EXP_TAYLOR[1..].iter().fold(EXP_TAYLOR[0], |p, &c| p * r + c);
    // 2^n built from `shifted`'s low mantissa bits, which hold n: integer ops that vectorize,
    // where `n as i32` (a saturating conversion) is compiled element by element.
    f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23) * p
}

/// `erf(x)` within 1e-6 absolute (tested): the odd rational minimax form on `[-4, 4]` that
/// vector math libraries use for float32 (beyond 4, erf is 1 to float32 precision).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    let p = x * p;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_473_9e-2;
    p / q
}

/// Run `f` compiled for the best available vector unit (`f` must be `#[inline(always)]`).
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn wide<'a, R>(f: impl FnOnce() -> R + 'a) -> R { f() }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn mid<'a, R>(f: impl FnOnce() -> R + 'a) -> R { f() }
            match $crate::kernels::cpu::simd() {
                // SAFETY: the CPU has the features (checked at run time).
                $crate::kernels::cpu::Simd::Avx512 => unsafe { wide(|| $f($($arg),*)) },
                $crate::kernels::cpu::Simd::Avx2 => unsafe { mid(|| $f($($arg),*)) },
                $crate::kernels::cpu::Simd::Baseline => $f($($arg),*),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $crate::kernels::cpu::simd();
            $f($($arg),*)
        }
    }};
}
pub(crate) use dispatch;

/// `0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_chunk(chunk: &mut [f32]) {
    for v in chunk {
        *v = gelu(*v);
    }
}

/// GELU with the exact (erf) form, `0.5 x (1 + erf(x / sqrt 2))`, in place.
pub(crate) fn gelu_in_place(xs: &mut [f32]) {
    xs.par_chunks_mut(16 * 1024).for_each(|chunk| dispatch!(gelu_chunk(chunk)));
}

#[inline(always)]
fn gelu_bias_rows(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v = gelu(*v + b);
        }
    }
}

/// `gelu(x + bias)` (or `gelu(x)`) in place on one slice as wide as `bias`, compiled as the
/// whole-matrix passes are: each element gets the bits those passes give it.
pub(crate) fn gelu_bias_slice(xs: &mut [f32], bias: Option<&[f32]>) {
    match bias {
        _ if xs.is_empty() => {}
        Some(b) => {
            assert_eq!(xs.len(), b.len(), "gelu bias width");
            dispatch!(gelu_bias_rows(xs, b))
        }
        None => dispatch!(gelu_chunk(xs)),
    }
}

/// `gelu(x + bias)` in place, `bias` per column of rows `bias.len()` wide: the products' GELU
/// epilogue over a whole output, which the tests hold it to.
#[cfg(test)]
pub(crate) fn gelu_bias_in_place(xs: &mut [f32], bias: &[f32]) {
    let w = bias.len();
    assert!(w > 0 && xs.len().is_multiple_of(w), "gelu bias shapes");
    xs.par_chunks_mut(w * (16 * 1024 / w).max(1)).for_each(|rows| dispatch!(gelu_bias_rows(rows, bias)));
}

/// Sum of a slice with 16 independent partial sums (vectorizes; a single running sum does not).
#[inline(always)]
pub(crate) fn sum16(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&v| f(v)).sum::<f32>()
}

#[inline(always)]
fn layer_norm_rows(
    out: &mut [std::mem::MaybeUninit<f32>],
    x: &[f32],
    dim: usize,
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) {
    for (o, row) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        layer_norm_row(o, row, weight, bias, eps);
    }
}

/// One row of [`layer_norm`]; every caller (the whole-matrix pass and the packed products'
/// operands) runs this same code, so they agree to the bit.
#[inline(always)]
fn layer_norm_row(out: &mut [std::mem::MaybeUninit<f32>], row: &[f32], weight: &[f32], bias: &[f32], eps: f32) {
    let dim = row.len();
    let mean = sum16(row, |v| v) / dim as f32;
    let var = sum16(row, |v| (v - mean) * (v - mean)) / dim as f32;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
        o.write((v - mean) * inv * w + b);
    }
}

/// `row` through the LayerNorm `norm` into `out` (as long as `row`).
pub(crate) fn layer_norm_row_into(row: &[f32], out: &mut [f32], norm: super::activations::Norm) {
    assert!(out.len() == row.len() && norm.weight.len() == row.len() && norm.bias.len() == row.len());
    // SAFETY: viewing initialized floats as possibly-uninitialized ones only ever writes
    // initialized values through the view.
    let out = unsafe { &mut *(out as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) };
    dispatch!(layer_norm_row(out, row, norm.weight, norm.bias, norm.eps))
}

#[inline(always)]
pub(crate) fn max16(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

#[inline(always)]
fn softmax_rows_impl(scores: &mut [f32], n: usize, causal: bool) {
    for (i, row) in scores.chunks_exact_mut(n).enumerate() {
        let live = if causal { i + 1 } else { n };
        let (row, masked) = row.split_at_mut(live);
        let max = max16(row);
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        let inv = 1.0 / sum16(row, |v| v);
        for x in row.iter_mut() {
            *x *= inv;
        }
        masked.fill(0.0);
    }
}

/// Softmax of each row of `scores` (`n` columns); with `causal`, row `i` keeps columns `0..=i`
/// and the rest become 0.
pub(crate) fn softmax_rows(scores: &mut [f32], n: usize, causal: bool) {
    dispatch!(softmax_rows_impl(scores, n, causal))
}

#[inline(always)]
fn add_scaled_rows(out: &mut [std::mem::MaybeUninit<f32>], x: &[f32], h: &[f32], bias: &[f32], gamma: &[f32]) {
    let w = gamma.len();
    for ((o, xr), hr) in out.chunks_exact_mut(w).zip(x.chunks_exact(w)).zip(h.chunks_exact(w)) {
        for ((((o, a), b), c), d) in o.iter_mut().zip(xr).zip(hr).zip(bias).zip(gamma) {
            o.write(a + (b + c) * d);
        }
    }
}

#[inline(always)]
fn add_rows(out: &mut [std::mem::MaybeUninit<f32>], x: &[f32], h: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(x).zip(h) {
        o.write(a + b);
    }
}

/// `x + (h + bias) * gamma` (each per column of rows as wide as whichever is given; a missing
/// one is 0 or 1), or `x + h`, on every thread: the residual, with the layer scale and the
/// bias of the product that made `h` in the same pass.
pub(crate) fn add_scaled(x: &[f32], h: &[f32], bias: Option<&[f32]>, gamma: Option<&[f32]>) -> Vec<f32> {
    assert!(x.len() == h.len(), "residual shapes");
    let mut out = super::uninit::<f32>(x.len());
    let w = gamma.or(bias).map_or(0, <[f32]>::len);
    if w == 0 {
        out.par_chunks_mut(16 * 1024)
            .zip(x.par_chunks(16 * 1024).zip(h.par_chunks(16 * 1024)))
            .for_each(|(o, (x, h))| dispatch!(add_rows(o, x, h)));
    } else {
        let (zeros, ones) = (vec![0f32; w], vec![1f32; w]);
        let (bias, gamma) = (bias.unwrap_or(&zeros), gamma.unwrap_or(&ones));
        assert!(bias.len() == w && gamma.len() == w && x.len().is_multiple_of(w), "residual shapes");
        // Whole rows per task, ~64 KB of output each.
        let chunk = w * (16 * 1024 / w).max(1);
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(h.par_chunks(chunk)))
            .for_each(|(o, (x, h))| dispatch!(add_scaled_rows(o, x, h, bias, gamma)));
    }
    // SAFETY: every chunk holds whole rows (or, without rows, any values), and every value of
    // them was written.
    unsafe { super::assume_init(out) }
}

/// LayerNorm over rows of `dim`: two passes (mean, then the mean of squared deviations), which
/// is also more accurate than `E[x^2] - mean^2`.
pub(crate) fn layer_norm(x: &[f32], dim: usize, weight: &[f32], bias: &[f32], eps: f32) -> Vec<f32> {
    let mut out = super::uninit::<f32>(x.len());
    out.par_chunks_mut(16 * dim)
        .zip(x.par_chunks(16 * dim))
        .for_each(|(out, x)| dispatch!(layer_norm_rows(out, x, dim, weight, bias, eps)));
    // SAFETY: every row was written.
    unsafe { super::assume_init(out) }
}

/// [`gelu_in_place`] as a candle in-place op on a contiguous float32 CPU tensor.
pub(crate) struct GeluInPlace;

impl candle_core::InplaceOp1 for GeluInPlace {
    fn name(&self) -> &'static str {
        "gelu-erf-in-place"
    }

    fn cpu_fwd(&self, storage: &mut candle_core::CpuStorage, layout: &candle_core::Layout) -> candle_core::Result<()> {
        let (candle_core::CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            return Err(candle_core::Error::Msg("gelu in place needs a contiguous float32 tensor".into()));
        };
        gelu_in_place(&mut data[start..end]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.001_37;
        }
        eprintln!("exp: worst relative error {worst:e}");
        assert!(worst < 3.0 * f32::EPSILON as f64, "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e30) >= 0.0 && exp(-1e30) < 1e-37);
    }

    #[test]
    fn erf_is_within_1e_6_of_the_true_value() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            let reference = erf_reference(x as f64);
            worst = worst.max((erf(x) as f64 - reference).abs());
            x += 0.000_97;
        }
        eprintln!("erf: worst absolute error {worst:e}");
        assert!(worst < 1e-6, "absolute error {worst:e}");
    }

    #[test]
    fn layer_norm_matches_the_f64_formula() {
        for (rows, dim) in [(1, 5), (37, 768), (3, 33)] {
            let x: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 3.0).collect();
            let w: Vec<f32> = (0..dim).map(|i| 1.0 + i as f32 * 0.001).collect();
            let b: Vec<f32> = (0..dim).map(|i| i as f32 * -0.002).collect();
            let y = layer_norm(&x, dim, &w, &b, 1e-5);
            for r in 0..rows {
                let row: Vec<f64> = x[r * dim..(r + 1) * dim].iter().map(|&v| v as f64).collect();
                let mean = row.iter().sum::<f64>() / dim as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
                for j in 0..dim {
                    let want = (row[j] - mean) / (var + 1e-5).sqrt() * w[j] as f64 + b[j] as f64;
                    assert!((y[r * dim + j] as f64 - want).abs() < 1e-5, "row {r} col {j}");
                }
            }
        }
    }

    /// The residual with every combination of a deferred bias and a layer scale, and the GELU
    /// with a deferred bias, against their formulas in float64 (rows of 33 leave partial
    /// vectors; 700 rows span several tasks).
    #[test]
    fn residual_and_gelu_add_a_deferred_bias() {
        let (rows, w) = (700, 33);
        let v = |i: usize, s: usize| ((i * s) % 1000) as f32 * 0.004 - 2.0;
        let x: Vec<f32> = (0..rows * w).map(|i| v(i, 7919)).collect();
        let h: Vec<f32> = (0..rows * w).map(|i| v(i, 104_729)).collect();
        let b: Vec<f32> = (0..w).map(|i| v(i, 31)).collect();
        let g: Vec<f32> = (0..w).map(|i| 0.5 + v(i, 17)).collect();
        for (bias, gamma) in [(None, None), (Some(&b[..]), None), (None, Some(&g[..])), (Some(&b[..]), Some(&g[..]))] {
            let y = add_scaled(&x, &h, bias, gamma);
            for (i, &y) in y.iter().enumerate() {
                let (c, bi, ga) =
                    (i % w, bias.map_or(0.0, |b| b[i % w] as f64), gamma.map_or(1.0, |g| g[i % w] as f64));
                let want = x[i] as f64 + (h[i] as f64 + bi) * ga;
                assert!(
                    (y as f64 - want).abs() < 1e-5,
                    "bias {} gamma {} at {i} (column {c})",
                    bias.is_some(),
                    gamma.is_some()
                );
            }
        }
        let mut y = h.clone();
        gelu_bias_in_place(&mut y, &b);
        for (i, &y) in y.iter().enumerate() {
            let z = h[i] as f64 + b[i % w] as f64;
            let want = 0.5 * z * (1.0 + erf_reference(z / std::f64::consts::SQRT_2));
            assert!((y as f64 - want).abs() < 2e-6, "gelu at {i}: {y} against {want}");
        }
    }

    /// erf in f64 by Simpson's rule on `2/sqrt(pi) e^(-t^2)` (std has no erf).
    fn erf_reference(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }
}
