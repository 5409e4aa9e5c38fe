//! `y = x W^T + b` with int8 weights and activations (the `--dtype int8` path).
//!
//! Weights are quantized once at load, symmetrically per output channel
//! (`s_j = max|W[j, :]| / 127`); activations dynamically per row (`t_i = max|x[i, :]| / 127`).
//! Products are summed exactly in int32 and scaled back: `y[i, j] = t_i s_j sum_k qx qw + b_j`.
//!
//! The packed layout mirrors the bf16 one with quadruples instead of pairs: columns in panels of
//! 32, and for each group of four input rows the 32 columns' quadruples side by side, which is
//! AMX's `tdpbssd` tile operand and, 16 columns at a time, AVX512-VNNI's `vpdpbusd` operand.
//! Implementations, chosen at run time (`PE_INT8_KERNEL=amx|vnni|portable` forces one):
//! AMX-INT8 tiles where the CPU has them and Linux grants the tile state; AVX512-VNNI (Ice Lake,
//! Zen 4 and later); else a portable path (the integer operands as float32 through the `gemm`
//! crate: exact products, float32 sums). AMX and VNNI give bit-identical integer sums.

use rayon::prelude::*;

use super::panels::{per_column, Panels, PANEL};

/// `K` is padded to this (one AMX tile row of int8).
const K_ALIGN: usize = 64;

/// A weight `(n, k)` quantized to int8 per output channel and packed (quadruples of input rows;
/// see [`super::panels`]).
#[derive(Debug, Clone)]
pub(crate) struct PackedI8 {
    w: Panels<i8>,
    /// Per-column scale, padded to a whole panel.
    scale: Vec<f32>,
    /// Bias, padded to a whole panel.
    bias: Vec<f32>,
    /// `128 * sum_k qW[j, k]` per column, padded to a whole panel: `vpdpbusd` multiplies
    /// unsigned by signed bytes, so activations go in shifted by 128 and this takes it back out.
    shift_comp: Vec<i32>,
}

impl std::ops::Deref for PackedI8 {
    type Target = Panels<i8>;
    fn deref(&self) -> &Panels<i8> {
        &self.w
    }
}

/// `v / scale` rounded to the nearest integer (ties to even, as PyTorch's quantizers do) in
/// -127..=127. Rounding by adding and subtracting 1.5 * 2^23 is exact in that range and
/// vectorizes on every x86-64, where `f32::round` is a library call per element.
#[inline(always)]
fn quantize(v: f32, inv_scale: f32) -> i8 {
    const ROUND: f32 = 12_582_912.0;
    let x = (v * inv_scale).clamp(-127.0, 127.0);
    // The rounded integer sits in the low mantissa bits of x + ROUND; reading it there keeps
    // the loop vectorized (a float-to-int `as` is a saturating conversion done per element).
    (x + ROUND).to_bits().wrapping_sub(ROUND.to_bits()) as i8
}

impl PackedI8 {
    /// Quantize and pack `w`, row-major `(n, k)`, with the optional bias `(n)`.
    pub(crate) fn pack(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        assert_eq!(w.len(), n * k, "weight size");
        let mut scale = per_column(None, n);
        for (j, s) in scale.iter_mut().take(n).enumerate() {
            let max = w[j * k..(j + 1) * k].iter().fold(0f32, |m, v| m.max(v.abs()));
            *s = if max > 0.0 { max / 127.0 } else { 1.0 };
        }
        let inv: Vec<f32> = scale.iter().map(|s| 1.0 / s).collect();
        let packed = Panels::pack::<4>(w, n, k, K_ALIGN, |j, v| quantize(v, inv[j]));
        let mut shift_comp = vec![0i32; scale.len()];
        for (j, s) in shift_comp.iter_mut().take(n).enumerate() {
            *s = 128 * w[j * k..(j + 1) * k].iter().map(|&v| quantize(v, inv[j]) as i32).sum::<i32>();
        }
        PackedI8 { w: packed, scale, bias: per_column(bias, n), shift_comp }
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.k
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.n
    }

    /// The quantized weight as float32 `(k, n)` integers (`qW^T`).
    fn unpack_t(&self) -> Vec<f32> {
        self.w.unpack_t(|q| q as f32)
    }
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Impl {
    Amx,
    Vnni,
    Portable,
}

/// Every implementation, fastest first, with whether it runs here.
pub(crate) fn candidates() -> [super::Candidate<Impl>; 3] {
    [("amx", Impl::Amx, amx_available()), ("vnni", Impl::Vnni, vnni_available()), ("portable", Impl::Portable, true)]
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

fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `PE_SIMD` below avx512 stands for a CPU without AVX-512, so without VNNI-512.
        super::math::simd() == super::math::Simd::Avx512 && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            if std::arch::x86_64::__cpuid(0).eax < 7 {
                return false;
            }
            let l7 = std::arch::x86_64::__cpuid_count(7, 0);
            // AMX-INT8 (EDX bit 25), AMX-TILE (bit 24), the tile permission from Linux, and
            // AVX-512 for the epilogues (not when `PE_SIMD` stands for an older CPU).
            l7.edx & (1 << 25) != 0
                && l7.edx & (1 << 24) != 0
                && super::bf16::amx_permitted()
                && super::math::simd() == super::math::Simd::Avx512
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows of `x` quantized per row: `(values k_pad wide, rows_pad rows; row scales)`.
fn quantize_rows(x: &[f32], m: usize, k: usize, k_pad: usize, rows_pad: usize) -> (Vec<i8>, Vec<f32>) {
    let mut a = vec![0i8; rows_pad * k_pad];
    let mut scales = vec![0f32; m];
    a.par_chunks_mut(k_pad).zip(scales.par_iter_mut()).enumerate().for_each(|(i, (row, s))| {
        *s = super::math::dispatch!(quantize_row(&x[i * k..(i + 1) * k], row));
    });
    (a, scales)
}

/// One row quantized symmetrically into the front of `out`; returns its scale.
#[inline(always)]
fn quantize_row(src: &[f32], out: &mut [i8]) -> f32 {
    let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    for (d, &v) in out.iter_mut().zip(src) {
        *d = quantize(v, inv);
    }
    scale
}

/// `x` `(m, k)` float32 row-major times the quantized weight: `(m, n)` float32.
pub(crate) fn matmul(x: &[f32], m: usize, w: &PackedI8) -> Vec<f32> {
    matmul_with(selected(), x, m, w)
}

pub(crate) fn matmul_with(which: Impl, x: &[f32], m: usize, w: &PackedI8) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "input size");
    match which {
        #[cfg(target_arch = "x86_64")]
        Impl::Amx => amx::matmul(x, m, w),
        #[cfg(target_arch = "x86_64")]
        Impl::Vnni => vnni::matmul(x, m, w),
        _ => portable(x, m, w),
    }
}

fn portable(x: &[f32], m: usize, w: &PackedI8) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let (qa, sx) = quantize_rows(x, m, k, k, m);
    let a: Vec<f32> = qa.iter().map(|&v| v as f32).collect();
    let mut y = super::dense_matmul(&a, m, k, &w.unpack_t(), n, None);
    for (i, row) in y.chunks_exact_mut(n).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = *v * sx[i] * w.scale[j] + w.bias[j];
        }
    }
    y
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::*;
    use crate::kernels::bf16::{by_register_tiles, TileOperands};
    use std::arch::x86_64::*;

    /// Rows per register tile: 12 rows x 32 columns = 24 int32 accumulators.
    const MR: usize = 12;
    /// Rows per task.
    const MC: usize = 96;

    /// One register tile: its operands (shifted activations as u8, a panel of quadruples),
    /// the weight's per-column data and the rows' scales.
    #[derive(Clone, Copy)]
    struct Tile<'a> {
        op: TileOperands<u8, i8>,
        w: &'a PackedI8,
        row_scale: &'a [f32],
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn tile<const R: usize>(t: Tile) {
        let Tile { op: TileOperands { a, lda, b, c, ldc, cols, panel, .. }, w, row_scale } = t;
        let groups = lda / 4;
        let mut acc0 = [_mm512_setzero_si512(); R];
        let mut acc1 = [_mm512_setzero_si512(); R];
        for g in 0..groups {
            let b0 = _mm512_loadu_si512(b.add(g * 128).cast());
            let b1 = _mm512_loadu_si512(b.add(g * 128 + 64).cast());
            for r in 0..R {
                let quad = std::ptr::read_unaligned(a.add(r * lda + 4 * g).cast::<i32>());
                let av = _mm512_set1_epi32(quad);
                acc0[r] = _mm512_dpbusd_epi32(acc0[r], av, b0);
                acc1[r] = _mm512_dpbusd_epi32(acc1[r], av, b1);
            }
        }
        let j = panel * PANEL;
        let (s0, s1) = (_mm512_loadu_ps(w.scale.as_ptr().add(j)), _mm512_loadu_ps(w.scale.as_ptr().add(j + 16)));
        let (b0, b1) = (_mm512_loadu_ps(w.bias.as_ptr().add(j)), _mm512_loadu_ps(w.bias.as_ptr().add(j + 16)));
        let comp = w.shift_comp.as_ptr().add(j);
        let (z0, z1) = (_mm512_loadu_si512(comp.cast()), _mm512_loadu_si512(comp.add(16).cast()));
        let (m0, m1) = crate::kernels::panel_masks(cols);
        for r in 0..R {
            let row = c.add(r * ldc);
            let sr = _mm512_set1_ps(row_scale[r]);
            let v0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc0[r], z0));
            let v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc1[r], z1));
            _mm512_mask_storeu_ps(row, m0, _mm512_fmadd_ps(v0, _mm512_mul_ps(sr, s0), b0));
            _mm512_mask_storeu_ps(row.add(16), m1, _mm512_fmadd_ps(v1, _mm512_mul_ps(sr, s1), b1));
        }
    }

    pub(super) fn matmul(x: &[f32], m: usize, w: &PackedI8) -> Vec<f32> {
        let (a, sx) = quantize_rows(x, m, w.k, w.k_pad, m);
        // Shifted to unsigned (a + 128), the operand type `vpdpbusd` takes on its left.
        let a: Vec<u8> = a.into_iter().map(|v| (v as u8) ^ 0x80).collect();
        let tile_at = |op: TileOperands<u8, i8>| {
            let t = Tile { op, w, row_scale: &sx[op.r0..op.r0 + op.rows] };
            // SAFETY: the CPU has AVX512-VNNI (this implementation is only selected then);
            // the operands hold the tile's rows of k_pad bytes and the panel's k_pad/4 groups
            // of 128, the per-column vectors a whole panel; the output block is this task's
            // alone and the stores are masked to the panel's valid columns.
            unsafe { crate::kernels::rows_1_to_12!(op.rows, tile, t) }
        };
        unsafe { by_register_tiles(&a, m, w, MC, MR, tile_at) }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::*;
    use std::arch::asm;

    const MB: usize = 32;
    const MC: usize = 128;

    /// `C[32 x 32] (i32) = A[32 x k_pad] * B` for one panel.
    ///
    /// # Safety
    /// The tile configuration must be loaded on this thread; `a` must hold 32 rows of `k_pad`
    /// int8 with row stride `lda`; `b` one packed panel.
    #[inline]
    unsafe fn block(a: *const i8, lda: usize, b: *const i8, k_pad: usize, c: *mut i32) {
        let steps = k_pad / 64;
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ldb}*1]",
            "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
            "tdpbssd tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tdpbssd tmm1, tmm4, tmm7",
            "tdpbssd tmm2, tmm5, tmm6",
            "tdpbssd tmm3, tmm5, tmm7",
            crate::kernels::amx_prefetch_b!(),
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b}, 2048",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c2} + {ldc}*1 + 64], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.add(16 * lda) => _,
            b = inout(reg) b => _,
            steps = inout(reg) steps => _,
            lda = in(reg) lda,
            ldb = in(reg) 128usize,
            c = in(reg) c,
            c2 = in(reg) c.add(16 * 32),
            ldc = in(reg) 128usize,
            options(nostack),
        );
    }

    pub(super) fn matmul(x: &[f32], m: usize, w: &PackedI8) -> Vec<f32> {
        let (k, n, k_pad) = (w.k, w.n, w.k_pad);
        let (a, sx) = quantize_rows(x, m, k, k_pad, m.div_ceil(MB) * MB);
        let mut y = crate::kernels::uninit::<f32>(m * n);
        let out = super::super::SendPtr(y.as_mut_ptr().cast());
        let body = |c: &mut [i32; MB * PANEL], rows: std::ops::Range<usize>, p: usize| {
            let panel = w.panel(p);
            let cols = PANEL.min(n - p * PANEL);
            let mut r0 = rows.start;
            while r0 < rows.end {
                let rows_here = MB.min(rows.end - r0);
                // SAFETY: the tile configuration is loaded (`start`); whole 32-row blocks of
                // k_pad from r0; a full panel; c is 32 x 32; the stores cover rows r0.. (< m)
                // and this panel's valid columns.
                unsafe {
                    block(a[r0 * k_pad..].as_ptr(), k_pad, panel.as_ptr(), k_pad, c.as_mut_ptr());
                    store_block(
                        c,
                        &sx[r0..r0 + rows_here],
                        cols,
                        w.scale[p * PANEL..].as_ptr(),
                        w.bias[p * PANEL..].as_ptr(),
                        out.at(r0 * n + p * PANEL),
                        n,
                    );
                }
                r0 += MB;
            }
        };
        use super::super::bf16::{amx_finish_task, amx_start_task, par_blocks};
        par_blocks(m, MC, w.panels(), amx_start_task, body, amx_finish_task);
        // SAFETY: the tasks cover every row and column.
        unsafe { crate::kernels::assume_init(y) }
    }

    /// `out[r, c] = block[r, c] * row_scale[r] * scale[c] + bias[c]` for the valid rows and
    /// columns of a 32 x 32 int32 block.
    ///
    /// # Safety
    /// AVX-512F; `scale` and `bias` hold 32 values; `out` has `row_scale.len()` rows of stride
    /// `ldo` with `cols` writable columns each.
    #[target_feature(enable = "avx512f")]
    unsafe fn store_block(
        c: &[i32; MB * PANEL],
        row_scale: &[f32],
        cols: usize,
        scale: *const f32,
        bias: *const f32,
        out: *mut f32,
        ldo: usize,
    ) {
        use std::arch::x86_64::*;
        let (m0, m1) = crate::kernels::panel_masks(cols);
        let (s0, s1) = (_mm512_loadu_ps(scale), _mm512_loadu_ps(scale.add(16)));
        let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
        for (r, &sr) in row_scale.iter().enumerate() {
            let src = c.as_ptr().add(r * PANEL);
            let dst = out.add(r * ldo);
            let sr = _mm512_set1_ps(sr);
            let v0 = _mm512_cvtepi32_ps(_mm512_loadu_si512(src.cast()));
            let v1 = _mm512_cvtepi32_ps(_mm512_loadu_si512(src.add(16).cast()));
            _mm512_mask_storeu_ps(dst, m0, _mm512_fmadd_ps(v0, _mm512_mul_ps(sr, s0), b0));
            _mm512_mask_storeu_ps(dst.add(16), m1, _mm512_fmadd_ps(v1, _mm512_mul_ps(sr, s1), b1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_implementation_matches_the_integer_reference() {
        let mut impls = vec![Impl::Portable];
        if amx_available() {
            impls.push(Impl::Amx);
        }
        if vnni_available() {
            impls.push(Impl::Vnni);
        }
        eprintln!("testing {impls:?}");
        let mut by_impl = std::collections::HashMap::new();
        for which in impls {
            for (m, n, k) in [(1, 32, 64), (5, 40, 70), (33, 64, 130), (200, 96, 768), (13, 1024, 64)] {
                let mut seed = 0x2545_f491u32 ^ (m * 31 + n * 17 + k) as u32;
                let mut rnd = || {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
                };
                let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
                let packed = PackedI8::pack(&w, n, k, Some(&bias));
                let got = matmul_with(which, &x, m, &packed);
                by_impl.insert((which, m, n, k), got.clone());
                // The same quantization, summed exactly in integers.
                let (qa, sx) = quantize_rows(&x, m, k, k, m);
                let mut worst = 0f32;
                let mut exact_err = 0f32;
                for i in 0..m {
                    for j in 0..n {
                        let inv = 1.0 / packed.scale[j];
                        let dot: i64 =
                            (0..k).map(|kk| qa[i * k + kk] as i64 * quantize(w[j * k + kk], inv) as i64).sum();
                        let want = dot as f32 * sx[i] * packed.scale[j] + bias[j];
                        exact_err = exact_err.max((got[i * n + j] - want).abs());
                        let float: f32 = (0..k).map(|kk| x[i * k + kk] * w[j * k + kk]).sum::<f32>() + bias[j];
                        worst = worst.max((got[i * n + j] - float).abs());
                    }
                }
                assert!(exact_err <= 1e-4 * (k as f32).sqrt(), "{which:?} {m}x{n}x{k}: {exact_err}");
                // And int8 stays near the float product (|x|, |w| <= 1).
                assert!(worst <= 0.02 * (k as f32).sqrt(), "{which:?} {m}x{n}x{k}: {worst}");
            }
        }
        // AMX and VNNI sum the same integers exactly and share the epilogue's arithmetic.
        for ((which, m, n, k), got) in &by_impl {
            if *which == Impl::Vnni {
                if let Some(amx) = by_impl.get(&(Impl::Amx, *m, *n, *k)) {
                    assert_eq!(got, amx, "VNNI and AMX differ at {m}x{n}x{k}");
                }
            }
        }
    }
}
