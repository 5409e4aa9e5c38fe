//! `y = x W^T + b` with int8 weights and activations (the `--dtype int8` path).
//!
//! Weights are quantized once at load, symmetrically per output channel
//! (`s_j = max|W[j, :]| / 127`); activations dynamically per row (`t_i = max|x[i, :]| / 127`).
//! Products are summed exactly in int32 and scaled back: `y[i, j] = t_i s_j sum_k qx qw + b_j`.
//! That is [`Scheme::Symmetric`]. Where the AVX2 kernel runs, towers that pool over their tokens
//! take [`Scheme::Narrow`] instead (7-bit weights, activations in 0..=127 with a zero point per
//! row), which sums eight byte products per int32 lane with three multiply instructions where
//! the symmetric operands need four (see [`scheme_for`]).
//!
//! The packed layout mirrors the bf16 one with quadruples instead of pairs: columns in panels of
//! 32, and for each group of four input rows the 32 columns' quadruples side by side, which is
//! AMX's `tdpbssd` tile operand, 16 columns at a time AVX512-VNNI's `vpdpbusd` operand and 8
//! columns at a time `vpmaddubsw`'s. Implementations, chosen at run time
//! (`PE_INT8_KERNEL=amx|vnni|avx2|portable` forces one): AMX-INT8 tiles where the CPU has them and Linux grants the tile state; AVX512-VNNI (Ice Lake,
//! Zen 4 and later); AVX2 (symmetric: both operands widened to int16 for `vpmaddwd`; narrow:
//! `vpmaddubsw` pairs summed in int16, then `vpmaddwd`);
//! else a portable path (the integer operands as float32 through the `gemm` crate: exact
//! products, float32 sums) in either scheme. In the symmetric scheme AMX, VNNI and AVX2 give
//! bit-identical results; the narrow one is slightly less precise.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_narrow;
#[cfg(target_arch = "x86_64")]
mod vnni;

use rayon::prelude::*;

use super::activations::Activations;
use super::panels::{per_column, Panels, Widened};

/// `K` is padded to this (one AMX tile row of int8).
const K_ALIGN: usize = 64;

/// How a weight and the activations it meets are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    /// Weights in -127..=127 per output channel, activations in -127..=127 per row: every
    /// implementation.
    Symmetric,
    /// Weights in -63..=63 per output channel, activations in 0..=127 per row with a zero
    /// point (`x = t (q - z)`): AVX2 and portable only. Two `vpmaddubsw` pair sums added in int16
    /// stay below 2^15 (4 x 127 x 63 = 32,004), so one `vpmaddwd` widens eight products, where
    /// 8-bit operands would saturate (ONNX Runtime's AVX2 path lets them). The zero point
    /// spends the activations' 7 bits on the row's actual range (GELU outputs are mostly >= 0).
    Narrow,
}

impl Scheme {
    /// The largest weight magnitude.
    fn weight_max(self) -> f32 {
        match self {
            Scheme::Symmetric => 127.0,
            Scheme::Narrow => 63.0,
        }
    }
}

/// A weight `(n, k)` quantized to int8 per output channel and packed (quadruples of input rows;
/// see [`super::panels`]).
#[derive(Debug, Clone)]
pub(crate) struct PackedI8 {
    w: Panels<i8>,
    /// How `w` was quantized (and how activations must be).
    scheme: Scheme,
    /// Per-column scale, padded to a whole panel.
    scale: Vec<f32>,
    /// Bias, padded to a whole panel.
    bias: Vec<f32>,
    /// `128 * sum_k qW[j, k]` per column, padded to a whole panel: `vpdpbusd` multiplies
    /// unsigned by signed bytes, so activations go in shifted by 128 and this takes it back out.
    shift_comp: Vec<i32>,
    /// `sum_k qW[j, k]` per column, padded to a whole panel: the zero points' correction.
    col_sum: Vec<i32>,
}

impl std::ops::Deref for PackedI8 {
    type Target = Panels<i8>;
    fn deref(&self) -> &Panels<i8> {
        &self.w
    }
}

/// `v / scale` rounded to the nearest integer (ties to even, as PyTorch's quantizers do) in
/// -127..=127.
#[inline(always)]
fn quantize(v: f32, inv_scale: f32) -> i8 {
    round_in(v * inv_scale, -127.0, 127.0) as i8
}

/// `x` clamped to `lo..=hi` (within -2^22..2^22; NaN to `lo`) and rounded to the nearest
/// integer, ties to even. Rounding by adding and subtracting 1.5 * 2^23 is exact in that range
/// and vectorizes on every x86-64, where `f32::round` is a library call per element.
#[inline(always)]
fn round_in(x: f32, lo: f32, hi: f32) -> i32 {
    const ROUND: f32 = 12_582_912.0;
    // `max` then `min` rather than `clamp`, which passes NaN through: a NaN or infinite input
    // still gives an integer in range (the kernels' bounds hold; the row's result is garbage).
    // The rounded integer sits in the low mantissa bits of x + ROUND; reading it there keeps
    // the loop vectorized (a float-to-int `as` is a saturating conversion done per element).
    (x.max(lo).min(hi) + ROUND).to_bits().wrapping_sub(ROUND.to_bits()) as i32
}

impl PackedI8 {
    /// Quantize and pack `w`, row-major `(n, k)`, with the optional bias `(n)`, in the
    /// symmetric scheme.
    pub(crate) fn pack(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        Self::pack_as(Scheme::Symmetric, w, n, k, bias)
    }

    /// [`PackedI8::pack`] in the given scheme.
    pub(crate) fn pack_as(scheme: Scheme, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        assert_eq!(w.len(), n * k, "weight size");
        let q = scheme.weight_max();
        let mut scale = per_column(None, n);
        for (j, s) in scale.iter_mut().take(n).enumerate() {
            let max = w[j * k..(j + 1) * k].iter().fold(0f32, |m, v| m.max(v.abs()));
            *s = if max > 0.0 { max / q } else { 1.0 };
        }
        let inv: Vec<f32> = scale.iter().map(|s| 1.0 / s).collect();
        let value = |j: usize, v: f32| round_in(v * inv[j], -q, q) as i8;
        let packed = Panels::pack::<4>(w, n, k, K_ALIGN, value);
        let mut col_sum = vec![0i32; scale.len()];
        for (j, s) in col_sum.iter_mut().take(n).enumerate() {
            *s = w[j * k..(j + 1) * k].iter().map(|&v| value(j, v) as i32).sum::<i32>();
        }
        let shift_comp = col_sum.iter().map(|s| 128 * s).collect();
        PackedI8 { w: packed, scheme, scale, bias: per_column(bias, n), shift_comp, col_sum }
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.k
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.n
    }
}

/// One register tile of the x86 int8 kernels: its operands (activations as the kernel reads
/// them, a panel of int8 quadruples), the weight's per-column data and the tile's row scales.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tile<'a, A> {
    op: super::tiles::TileOperands<A, i8>,
    w: &'a PackedI8,
    row_scale: &'a [f32],
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Impl {
    Amx,
    Vnni,
    Avx2,
    Portable,
}

impl Impl {
    /// Whether this implementation computes in `scheme`.
    fn computes(self, scheme: Scheme) -> bool {
        matches!((self, scheme), (_, Scheme::Symmetric) | (Impl::Avx2 | Impl::Portable, Scheme::Narrow))
    }
}

/// The scheme for a tower's linear layers: narrow where the AVX2 kernel runs and the tower's
/// output averages over its tokens (an attention-pooled image embedding), symmetric elsewhere.
/// The narrow scheme's extra noise (one bit less on each operand) is independent from token to
/// token, so pooling over hundreds of tokens averages it out (random B16, L14: cosine 0.9990 to
/// float32), while a text embedding is one token's features (0.9975-0.9979, below the 0.998
/// the int8 path is held to; symmetric 0.9994).
pub(crate) fn scheme_for(pooled_over_tokens: bool) -> Scheme {
    if pooled_over_tokens && selected() == Impl::Avx2 {
        Scheme::Narrow
    } else {
        Scheme::Symmetric
    }
}

/// Every implementation, fastest first, with whether it runs here.
pub(crate) fn candidates() -> [super::Candidate<Impl>; 4] {
    [
        ("amx", Impl::Amx, crate::kernels::cpu::amx_int8()),
        ("vnni", Impl::Vnni, crate::kernels::cpu::avx512vnni()),
        ("avx2", Impl::Avx2, crate::kernels::cpu::avx2()),
        ("portable", Impl::Portable, true),
    ]
}

/// The implementation for this process: the fastest the CPU offers, unless `PE_INT8_KERNEL`
/// names another available one.
pub(crate) fn selected() -> Impl {
    static SEL: std::sync::OnceLock<Impl> = std::sync::OnceLock::new();
    *SEL.get_or_init(|| {
        let choice = super::choose("PE_INT8_KERNEL", &candidates());
        tracing::debug!("int8 matmul kernel: {choice:?}");
        choice
    })
}

/// Rows of `x` quantized per row: `(values k_pad wide, rows_pad rows; row scales)`. With
/// `unsigned`, every byte is stored plus 128 (as `u8`): `vpdpbusd`'s left operand.
pub(crate) fn quantize_rows(
    x: Activations,
    m: usize,
    k: usize,
    k_pad: usize,
    rows_pad: usize,
    unsigned: bool,
) -> (Vec<i8>, Vec<f32>) {
    // Each row zeroed as it is written (in cache), not the whole buffer first.
    let mut a = super::uninit::<i8>(rows_pad * k_pad);
    let mut scales = vec![0f32; m];
    let zero = if unsigned { i8::MIN } else { 0 };
    let (rows, pad) = a.split_at_mut(m * k_pad);
    rows.par_chunks_mut(k_pad).zip(scales.par_iter_mut()).enumerate().for_each_init(
        Vec::new,
        |scratch, (i, (row, s))| {
            row.fill(std::mem::MaybeUninit::new(0));
            // SAFETY: every value of the row was just written.
            let row = unsafe { &mut *(row as *mut [std::mem::MaybeUninit<i8>] as *mut [i8]) };
            *s = super::math::dispatch!(quantize_row(x.row(i, k, scratch), row));
            if unsigned {
                super::math::dispatch!(flip_sign_bits(row));
            }
        },
    );
    pad.fill(std::mem::MaybeUninit::new(zero));
    // SAFETY: rows 0..m were written above, the rest just now.
    (unsafe { super::assume_init(a) }, scales)
}

/// Rows of `x` quantized per row as [`quantize_rows`] does, stored widened to int16 (rows of
/// `lda`, zero beyond `k`): the AVX2 kernel's operand written in one pass, with no int8 copy.
#[cfg(target_arch = "x86_64")]
fn quantize_rows_i16(x: Activations, m: usize, k: usize, lda: usize) -> (Vec<i16>, Vec<f32>) {
    let mut a = super::uninit::<i16>(m * lda);
    let mut scales = vec![0f32; m];
    a.par_chunks_mut(lda.max(1)).zip(scales.par_iter_mut()).enumerate().for_each_init(
        Vec::new,
        |scratch, (i, (row, s))| {
            row.fill(std::mem::MaybeUninit::new(0));
            // SAFETY: every value of the row was just written.
            let row = unsafe { &mut *(row as *mut [std::mem::MaybeUninit<i16>] as *mut [i16]) };
            *s = super::math::dispatch!(quantize_row(x.row(i, k, scratch), row));
        },
    );
    // SAFETY: the rows cover the buffer (m * lda values) and each was written above.
    (unsafe { super::assume_init(a) }, scales)
}

/// Rows of `x` quantized per row for [`Scheme::Narrow`]: values in 0..=127 (rows of `lda`
/// bytes, zero beyond `k`), row scales and row zero points.
pub(crate) fn quantize_rows_narrow(x: Activations, m: usize, k: usize, lda: usize) -> (Vec<u8>, Vec<f32>, Vec<i32>) {
    let mut a = super::uninit::<u8>(m * lda);
    let mut scales = vec![0f32; m];
    let mut zeros = vec![0i32; m];
    let rows = a.par_chunks_mut(lda.max(1)).zip(scales.par_iter_mut().zip(zeros.par_iter_mut()));
    rows.enumerate().for_each_init(Vec::new, |scratch, (i, (row, (s, z)))| {
        row.fill(std::mem::MaybeUninit::new(0));
        // SAFETY: every value of the row was just written.
        let row = unsafe { &mut *(row as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
        (*s, *z) = super::math::dispatch!(quantize_row_narrow(x.row(i, k, scratch), row));
    });
    // SAFETY: the rows cover the buffer (m * lda values) and each was written above.
    (unsafe { super::assume_init(a) }, scales, zeros)
}

/// One row quantized into 0..=127 with a zero point (the range always holds 0, so that zero
/// stays exact, as in PyTorch's dynamic quantization); returns `(scale, zero point)`.
#[inline(always)]
fn quantize_row_narrow(src: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = src.iter().fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    let scale = if hi > lo { (hi - lo) / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    let zero = round_in(-lo * inv, 0.0, 127.0);
    let z = zero as f32;
    for (d, &v) in out.iter_mut().zip(src) {
        *d = round_in(v * inv + z, 0.0, 127.0) as u8;
    }
    (scale, zero)
}

/// `v + 128` as an unsigned byte, stored in the same bits: the sign bit flipped.
#[inline(always)]
fn flip_sign_bits(row: &mut [i8]) {
    for v in row {
        *v ^= i8::MIN;
    }
}

/// One row quantized symmetrically into the front of `out`; returns its scale.
#[inline(always)]
fn quantize_row<T: From<i8>>(src: &[f32], out: &mut [T]) -> f32 {
    let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    for (d, &v) in out.iter_mut().zip(src) {
        *d = T::from(quantize(v, inv));
    }
    scale
}

/// `x` `(m, k)` float32 row-major (each row through its LayerNorm first, when it has one)
/// times the quantized weight: `(m, n)` float32.
pub(crate) fn matmul(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    matmul_with(selected(), x, m, w)
}

/// `gelu(x W^T + b)`, the GELU in the product's epilogue where the kernel has one (VNNI,
/// AVX2), else a pass of its own: the same bits either way.
pub(crate) fn matmul_gelu(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    match selected() {
        Impl::Vnni if w.scheme == Scheme::Symmetric => {
            assert_eq!(x.len(), m * w.k, "input size");
            return vnni::matmul_gelu(x, m, w);
        }
        Impl::Avx2 if w.scheme == Scheme::Narrow => {
            assert_eq!(x.len(), m * w.k, "input size");
            return avx2_narrow::matmul_gelu(x, m, w);
        }
        Impl::Avx2 => {
            assert_eq!(x.len(), m * w.k, "input size");
            return avx2::matmul_gelu(x, m, w);
        }
        _ => {}
    }
    let mut y = matmul(x, m, w);
    super::math::gelu_in_place(&mut y);
    y
}

pub(crate) fn matmul_with(which: Impl, x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "input size");
    if !which.computes(w.scheme) {
        return portable(x, m, w);
    }
    match which {
        #[cfg(target_arch = "x86_64")]
        Impl::Amx => amx::matmul(x, m, w),
        #[cfg(target_arch = "x86_64")]
        Impl::Vnni => vnni::matmul(x, m, w),
        #[cfg(target_arch = "x86_64")]
        Impl::Avx2 if w.scheme == Scheme::Narrow => avx2_narrow::matmul(x, m, w),
        #[cfg(target_arch = "x86_64")]
        Impl::Avx2 => avx2::matmul(x, m, w),
        _ => portable(x, m, w),
    }
}

/// Any CPU, either scheme: the quantized operands as float32 (small integers, exact) through
/// `gemm`'s float32 micro-kernel, the weight widened one panel at a time as the tasks come to it.
fn portable(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let (a, sx) = integer_rows(w.scheme, x, m, k);
    let mut y = super::dense::matmul(&a, m, &Widened { w: &w.w, f: |q: i8| q as f32 }, None);
    for (i, row) in y.chunks_exact_mut(n).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = *v * sx[i] * w.scale[j] + w.bias[j];
        }
    }
    y
}

/// Rows of `x` quantized in `scheme`, as the integers `q - z` (float32, exact), and row scales.
fn integer_rows(scheme: Scheme, x: Activations, m: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    match scheme {
        Scheme::Symmetric => {
            let (qa, sx) = quantize_rows(x, m, k, k, m, false);
            (qa.iter().map(|&v| v as f32).collect(), sx)
        }
        Scheme::Narrow => {
            let (qa, sx, zx) = quantize_rows_narrow(x, m, k, k);
            let rows = qa.chunks(k.max(1)).zip(&zx);
            (rows.flat_map(|(row, &z)| row.iter().map(move |&q| (q as i32 - z) as f32)).collect(), sx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gelu_epilogue_equals_the_separate_pass() {
        let mut seed = 0x7f4a_7c15u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        // Partial panels (40, 70 columns) and row tiles (1, 13, 37 rows).
        for (m, n, k) in [(1, 32, 64), (13, 40, 70), (37, 70, 130)] {
            let x: Vec<f32> = (0..m * k).map(|_| 2.0 * rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            for scheme in [Scheme::Symmetric, Scheme::Narrow] {
                let packed = PackedI8::pack_as(scheme, &w, n, k, Some(&b));
                let mut want = matmul(Activations::plain(&x), m, &packed);
                crate::kernels::math::gelu_in_place(&mut want);
                let got = matmul_gelu(Activations::plain(&x), m, &packed);
                assert_eq!(got, want, "{m}x{n}x{k} ({:?}, {scheme:?})", selected());
            }
        }
    }

    /// `x` quantized in `scheme` as exact integers `q - z`, with the row scales; and `W`'s
    /// integers in `packed`'s scheme.
    fn integers(scheme: Scheme, x: &[f32], m: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        integer_rows(scheme, Activations::plain(x), m, k)
    }

    fn weight_integer(packed: &PackedI8, v: f32, j: usize) -> i64 {
        let q = packed.scheme.weight_max();
        round_in(v / packed.scale[j], -q, q) as i64
    }

    #[test]
    fn every_available_implementation_matches_the_integer_reference() {
        let mut impls = vec![];
        for (which, ok) in [
            (Impl::Portable, true),
            (Impl::Amx, crate::kernels::cpu::amx_int8()),
            (Impl::Vnni, crate::kernels::cpu::avx512vnni()),
            (Impl::Avx2, crate::kernels::cpu::avx2()),
        ] {
            for scheme in [Scheme::Symmetric, Scheme::Narrow] {
                if ok && which.computes(scheme) {
                    impls.push((which, scheme));
                }
            }
        }
        eprintln!("testing {impls:?}");
        let mut by_impl = std::collections::HashMap::new();
        for (which, scheme) in impls {
            for (m, n, k) in [(1, 32, 64), (5, 40, 70), (33, 64, 130), (200, 96, 768), (13, 1024, 64), (29, 40, 1024)] {
                let mut seed = 0x2545_f491u32 ^ (m * 31 + n * 17 + k) as u32;
                let mut rnd = || {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
                };
                // Rows shifted off zero, so that the narrow scheme's zero points vary.
                let x: Vec<f32> = (0..m * k).map(|i| rnd() + 0.5 * ((i / k) % 3) as f32 - 0.5).collect();
                let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
                let packed = PackedI8::pack_as(scheme, &w, n, k, Some(&bias));
                let got = matmul_with(which, Activations::plain(&x), m, &packed);
                by_impl.insert((which, scheme, m, n, k), got.clone());
                // The same quantization, summed exactly in integers.
                let (qa, sx) = integers(scheme, &x, m, k);
                let mut worst = 0f32;
                let mut exact_err = 0f32;
                for i in 0..m {
                    for j in 0..n {
                        let dot: i64 =
                            (0..k).map(|kk| qa[i * k + kk] as i64 * weight_integer(&packed, w[j * k + kk], j)).sum();
                        let want = dot as f32 * sx[i] * packed.scale[j] + bias[j];
                        exact_err = exact_err.max((got[i * n + j] - want).abs());
                        let float: f32 = (0..k).map(|kk| x[i * k + kk] * w[j * k + kk]).sum::<f32>() + bias[j];
                        worst = worst.max((got[i * n + j] - float).abs());
                    }
                }
                assert!(exact_err <= 1e-4 * (k as f32).sqrt(), "{which:?} {scheme:?} {m}x{n}x{k}: {exact_err}");
                // And int8 stays near the float product (|x| <= 1.5, |w| <= 1).
                assert!(worst <= 0.04 * (k as f32).sqrt(), "{which:?} {scheme:?} {m}x{n}x{k}: {worst}");
            }
        }
        // In the symmetric scheme AMX, VNNI and AVX2 sum the same integers exactly and share
        // the epilogue's arithmetic.
        for ((which, scheme, m, n, k), got) in &by_impl {
            if matches!(which, Impl::Vnni | Impl::Avx2) && *scheme == Scheme::Symmetric {
                for other in [Impl::Vnni, Impl::Amx] {
                    if let Some(want) = by_impl.get(&(other, Scheme::Symmetric, *m, *n, *k)).filter(|_| other != *which)
                    {
                        assert_eq!(got, want, "{which:?} and {other:?} differ at {m}x{n}x{k}");
                    }
                }
            }
        }
    }

    /// A row holding NaN or an infinity gives garbage in its own outputs, never a panic or an
    /// integer out of the kernels' ranges, and the other rows keep their values.
    #[test]
    fn rows_with_nan_or_infinity_stay_in_range() {
        let (m, n, k) = (4, 40, 130);
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53) % 97) as f32 / 48.0 - 1.0).collect();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut xb = x.clone();
            xb[k + 3] = bad;
            for scheme in [Scheme::Symmetric, Scheme::Narrow] {
                let (qa, _) = integers(scheme, &xb, m, k);
                assert!(qa.iter().all(|q| q.abs() <= 127.0), "{scheme:?}, {bad}");
                let packed = PackedI8::pack_as(scheme, &w, n, k, None);
                for which in [Impl::Portable, selected()] {
                    let clean = matmul_with(which, Activations::plain(&x), m, &packed);
                    let got = matmul_with(which, Activations::plain(&xb), m, &packed);
                    for r in [0, 2, 3] {
                        assert_eq!(got[r * n..(r + 1) * n], clean[r * n..(r + 1) * n], "{which:?} {scheme:?} {bad}");
                    }
                }
            }
        }
    }

    /// The narrow scheme's extremes: every activation at 127 (or at 0 with the zero point at
    /// 127) against weights all at +63 or -63, so that each int16 lane holds +-32,004 before
    /// widening. A saturating sum would come out smaller than `k`.
    #[test]
    fn narrow_sums_at_the_int16_limit_do_not_saturate() {
        let (m, n, k) = (7, 40, 1024);
        let mut impls = vec![Impl::Portable];
        if crate::kernels::cpu::avx2() {
            impls.push(Impl::Avx2);
        }
        for sign in [1f32, -1.0] {
            let x = vec![sign; m * k];
            // Columns alternate all +1 and all -1.
            let w: Vec<f32> = (0..n * k).map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 }).collect();
            let packed = PackedI8::pack_as(Scheme::Narrow, &w, n, k, None);
            for &which in &impls {
                let got = matmul_with(which, Activations::plain(&x), m, &packed);
                for (i, v) in got.iter().enumerate() {
                    let want = sign * if (i % n) % 2 == 0 { k as f32 } else { -(k as f32) };
                    assert!((v - want).abs() <= 1e-3 * k as f32, "{which:?} sign {sign}, value {i}: {v} vs {want}");
                }
            }
        }
    }
}
