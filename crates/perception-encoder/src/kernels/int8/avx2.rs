//! int8 products on AVX2 alone (CPUs without AVX512-VNNI, or with AVX-512 hidden by a
//! hypervisor). `vpmaddubsw`, the byte product AVX2 has, saturates its int16 pair sums for
//! `u8 x s8` operands and needs a `vpsignb` per product for signed ones, three uops on the two
//! multiply pipes per 32 products. Here both operands are int16 instead: the packed int8
//! weight is sign-extended as it is read (`vpmovsxbw`, 4 columns x 4 inputs a vector, amortized
//! over the tile's rows), the activations are widened once per product, and `vpmaddwd` sums
//! each pair exactly into int32: one multiply uop per 16 products. Each accumulator lane holds
//! half of a column's sum; the epilogue adds the halves (`vphaddd`). The integer sums are those
//! of VNNI and AMX and the epilogue is the same float32 arithmetic, so all three give the same
//! bits. Register tiles are 6 rows by 8 columns (12 accumulators of AVX2's 16 registers).

use std::arch::x86_64::*;

use super::{quantize_rows_i16, PackedI8, Tile};
use crate::kernels::activations::Activations;
use crate::kernels::panels::PANEL;
use crate::kernels::tiles::{by_register_tiles, operand_stride, Order, TileOperands};

/// Rows per register tile.
const MR: usize = 6;
/// Rows per task.
const MC: usize = 96;

/// Columns `8q .. 8q + 8` of the tile's panel: sums, scale and bias, and with `GELU` the GELU
/// (the same float32 operations as the separate pass, so the same bits), stored to the valid columns.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn eighth<const R: usize, const GELU: bool>(t: Tile<i16>, q: usize) {
    let Tile { op: TileOperands { a, lda, b, c, ldc, cols, panel, .. }, w, row_scale } = t;
    let groups = t.op.k / 4;
    // Columns 8q..8q+4 and 8q+4..8q+8: each lane pair is one column's two half sums.
    let mut lo = [_mm256_setzero_si256(); R];
    let mut hi = [_mm256_setzero_si256(); R];
    let b = b.add(q * 32);
    for g in 0..groups {
        let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(g * 128).cast()));
        let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(g * 128 + 16).cast()));
        for r in 0..R {
            let quad = _mm256_set1_epi64x(std::ptr::read_unaligned(a.add(r * lda + 4 * g).cast::<i64>()));
            lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(quad, w0));
            hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(quad, w1));
        }
    }
    let j = panel * PANEL + q * 8;
    let (s, bias) = (_mm256_loadu_ps(w.scale.as_ptr().add(j)), _mm256_loadu_ps(w.bias.as_ptr().add(j)));
    let valid = cols.saturating_sub(q * 8).min(8);
    for r in 0..R {
        // hadd gives columns (0, 1, 4, 5 | 2, 3, 6, 7); the 64-bit permute puts them in order.
        let sums = _mm256_permute4x64_epi64::<0xd8>(_mm256_hadd_epi32(lo[r], hi[r]));
        store8::<GELU>(sums, row_scale[r], s, bias, c.add(r * ldc + q * 8), valid);
    }
}

/// One row's 8 columns from their int32 sums: `sums * (row_scale * s) + bias`, with `GELU` the
/// GELU (the same float32 operations as the separate pass, so the same bits), stored to the
/// `valid` first columns of `row`. Shared by both AVX2 kernels.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn store8<const GELU: bool>(
    sums: __m256i,
    row_scale: f32,
    s: __m256,
    bias: __m256,
    row: *mut f32,
    valid: usize,
) {
    let mut v = [0f32; 8];
    let y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(_mm256_set1_ps(row_scale), s), bias);
    let y = if GELU {
        // All 8 lanes, so that the loop is vectorized (a scalar GELU per value was a fifth
        // of the `c_fc` product's time).
        _mm256_storeu_ps(v.as_mut_ptr(), y);
        for x in v.iter_mut() {
            *x = crate::kernels::math::gelu(*x);
        }
        _mm256_loadu_ps(v.as_ptr())
    } else {
        y
    };
    if valid == 8 {
        _mm256_storeu_ps(row, y);
    } else {
        _mm256_storeu_ps(v.as_mut_ptr(), y);
        std::ptr::copy_nonoverlapping(v.as_ptr(), row, valid);
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const GELU: bool>(t: Tile<i16>) {
    for q in 0..t.op.cols.div_ceil(8) {
        eighth::<R, GELU>(t, q);
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
    // Quantized straight to int16 (`vpmaddwd`'s operand type), at the stride the tiles read.
    let (a, sx) = quantize_rows_i16(x, m, w.k, operand_stride(w.k_pad, 2));
    let tile_at = |op: TileOperands<i16, i8>| {
        let t = Tile { op, w, row_scale: &sx[op.r0..op.r0 + op.rows] };
        // SAFETY: the CPU has AVX2 and FMA (this implementation is only selected then); the
        // operands hold the tile's rows of k_pad values and the panel's k_pad/4 groups of
        // 128 bytes, the per-column vectors a whole panel; the output block is this task's
        // alone and only the panel's valid columns are stored.
        unsafe {
            match op.rows {
                6 => tile::<6, GELU>(t),
                5 => tile::<5, GELU>(t),
                4 => tile::<4, GELU>(t),
                3 => tile::<3, GELU>(t),
                2 => tile::<2, GELU>(t),
                _ => tile::<1, GELU>(t),
            }
        }
    };
    unsafe { by_register_tiles(Order::Panels, &a, m, w, MC, MR, tile_at) }
}
