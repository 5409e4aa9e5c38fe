//! int8 products on AVX2 alone (CPUs without AVX512-VNNI, or with AVX-512 hidden by a
//! hypervisor): `vpmaddubsw` multiplies unsigned by signed bytes into int16 pair sums, which
//! saturate for `u8 x s8` operands, so the activations go in as their magnitudes and their
//! signs are moved onto the weights (`vpsignb`): every pair sum is then at most
//! `2 x 127 x 127 = 32,258`, exact in int16, and `vpmaddwd` by ones widens each lane's four
//! products to an exact int32. The integer sums are those of VNNI and AMX, and the epilogue is
//! the same float32 arithmetic, so all three give the same bits. Register tiles are 4 rows by
//! 16 columns (8 int32 accumulators; AVX2 has 16 vector registers).

use std::arch::x86_64::*;

use super::{quantize_rows, PackedI8};
use crate::kernels::activations::Activations;
use crate::kernels::panels::PANEL;
use crate::kernels::tiles::{by_register_tiles, TileOperands};

/// Rows per register tile.
const MR: usize = 4;
/// Rows per task.
const MC: usize = 96;

/// One register tile's operands (signed activations, a panel of quadruples), the weight's
/// per-column data and the rows' scales.
#[derive(Clone, Copy)]
struct Tile<'a> {
    op: TileOperands<i8, i8>,
    w: &'a PackedI8,
    row_scale: &'a [f32],
}

/// Columns `half * 16 .. half * 16 + 16` of the tile's panel: sums, scale and bias, and with
/// `GELU` the GELU (scalar, as the separate pass computes it), stored to the valid columns.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn half_tile<const R: usize, const GELU: bool>(t: Tile, half: usize) {
    let Tile { op: TileOperands { a, lda, b, c, ldc, cols, panel, .. }, w, row_scale } = t;
    let groups = t.op.k / 4;
    let ones = _mm256_set1_epi16(1);
    let mut acc0 = [_mm256_setzero_si256(); R];
    let mut acc1 = [_mm256_setzero_si256(); R];
    let b = b.add(half * 64);
    for g in 0..groups {
        let w0 = _mm256_loadu_si256(b.add(g * 128).cast());
        let w1 = _mm256_loadu_si256(b.add(g * 128 + 32).cast());
        for r in 0..R {
            let quad = std::ptr::read_unaligned(a.add(r * lda + 4 * g).cast::<i32>());
            let av = _mm256_set1_epi32(quad);
            let mag = _mm256_abs_epi8(av);
            let p0 = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(w0, av));
            let p1 = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(w1, av));
            acc0[r] = _mm256_add_epi32(acc0[r], _mm256_madd_epi16(p0, ones));
            acc1[r] = _mm256_add_epi32(acc1[r], _mm256_madd_epi16(p1, ones));
        }
    }
    let j = panel * PANEL + half * 16;
    let (s0, s1) = (_mm256_loadu_ps(w.scale.as_ptr().add(j)), _mm256_loadu_ps(w.scale.as_ptr().add(j + 8)));
    let (b0, b1) = (_mm256_loadu_ps(w.bias.as_ptr().add(j)), _mm256_loadu_ps(w.bias.as_ptr().add(j + 8)));
    let valid = cols.saturating_sub(half * 16).min(16);
    let mut v = [0f32; 16];
    for r in 0..R {
        let sr = _mm256_set1_ps(row_scale[r]);
        let y0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc0[r]), _mm256_mul_ps(sr, s0), b0);
        let y1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc1[r]), _mm256_mul_ps(sr, s1), b1);
        let row = c.add(r * ldc + half * 16);
        if !GELU && valid == 16 {
            _mm256_storeu_ps(row, y0);
            _mm256_storeu_ps(row.add(8), y1);
            continue;
        }
        _mm256_storeu_ps(v.as_mut_ptr(), y0);
        _mm256_storeu_ps(v.as_mut_ptr().add(8), y1);
        if GELU {
            for x in v.iter_mut().take(valid) {
                *x = crate::kernels::math::gelu(*x);
            }
        }
        std::ptr::copy_nonoverlapping(v.as_ptr(), row, valid);
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const GELU: bool>(t: Tile) {
    half_tile::<R, GELU>(t, 0);
    if t.op.cols > 16 {
        half_tile::<R, GELU>(t, 1);
    }
}

pub(super) fn matmul(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    product::<false>(x, m, w)
}

/// `gelu(x W^T + b)`: the GELU in the product's epilogue instead of a pass of its own.
pub(super) fn matmul_gelu(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    product::<true>(x, m, w)
}

fn product<const GELU: bool>(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    let lda = crate::kernels::tiles::operand_stride(w.k_pad, 1);
    let (a, sx) = quantize_rows(x, m, w.k, lda, m, false);
    let tile_at = |op: TileOperands<i8, i8>| {
        let t = Tile { op, w, row_scale: &sx[op.r0..op.r0 + op.rows] };
        // SAFETY: the CPU has AVX2 and FMA (this implementation is only selected then); the
        // operands hold the tile's rows of k_pad bytes and the panel's k_pad/4 groups of 128,
        // the per-column vectors a whole panel; the output block is this task's alone and
        // only the panel's valid columns are stored.
        unsafe {
            match op.rows {
                4 => tile::<4, GELU>(t),
                3 => tile::<3, GELU>(t),
                2 => tile::<2, GELU>(t),
                _ => tile::<1, GELU>(t),
            }
        }
    };
    unsafe { by_register_tiles(&a, m, w, MC, MR, tile_at) }
}
