//! int8 products on AVX2 alone (CPUs without AVX512-VNNI, or with AVX-512 hidden by a
//! hypervisor), in [`Scheme::Narrow`](super::Scheme::Narrow): activations in 0..=127 (the
//! unsigned operand of `vpmaddubsw`), weights in -63..=63. For two groups of four inputs, two
//! `vpmaddubsw` give each column's four pair sums, `vpaddw` adds the two groups' (at most
//! 4 x 127 x 63 = 32,004: no saturation) and one `vpmaddwd` by ones widens them into the
//! column's int32 sum: three multiply instructions per 64 products, where int16 operands
//! (`vpmaddwd` alone) take four and 8-bit ones would saturate. On a Zen 1, whose only vector
//! integer multiplier is one 128-bit pipe, that inner loop runs 1.8x the int16 one's products a
//! second. Each accumulator lane is one column; the epilogue takes out the activations' zero
//! point (`z_i sum_k qW[j, k]`) before the same float32 scaling as the other kernels. Register
//! tiles are 6 rows by 8 columns.

use std::arch::x86_64::*;

use super::avx2::store8;
use super::{quantize_rows_narrow, PackedI8};
use crate::kernels::activations::Activations;
use crate::kernels::panels::PANEL;
use crate::kernels::tiles::{by_register_tiles, operand_stride, Order, TileOperands};

/// Rows per register tile.
const MR: usize = 6;
/// Rows per task.
const MC: usize = 96;

/// One register tile: its operands (activation bytes, a panel of int8 quadruples), the weight's
/// per-column data and the tile's row scales and zero points.
#[derive(Clone, Copy)]
struct Tile<'a> {
    op: TileOperands<u8, i8>,
    w: &'a PackedI8,
    row_scale: &'a [f32],
    row_zero: &'a [i32],
}

/// Columns `8q .. 8q + 8` of the tile's panel: sums, zero point, scale and bias, and with `GELU`
/// the GELU (the same float32 operations as the separate pass, so the same bits), stored to the
/// valid columns.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn eighth<const R: usize, const GELU: bool>(t: Tile, q: usize) {
    let Tile { op: TileOperands { a, k, lda, b, c, ldc, cols, panel, .. }, w, row_scale, row_zero } = t;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); R];
    let b = b.add(q * 32);
    // k is a multiple of 64 (K_ALIGN): the groups of four come in pairs.
    for g in (0..k / 4).step_by(2) {
        let w0 = _mm256_loadu_si256(b.add(g * 128).cast());
        let w1 = _mm256_loadu_si256(b.add(g * 128 + 128).cast());
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = a.add(r * lda + 4 * g);
            let x0 = _mm256_set1_epi32(std::ptr::read_unaligned(x.cast::<i32>()));
            let x1 = _mm256_set1_epi32(std::ptr::read_unaligned(x.add(4).cast::<i32>()));
            let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(x0, w0), _mm256_maddubs_epi16(x1, w1));
            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
        }
    }
    let j = panel * PANEL + q * 8;
    let (s, bias) = (_mm256_loadu_ps(w.scale.as_ptr().add(j)), _mm256_loadu_ps(w.bias.as_ptr().add(j)));
    let col_sum = _mm256_loadu_si256(w.col_sum.as_ptr().add(j).cast());
    let valid = cols.saturating_sub(q * 8).min(8);
    for (r, acc) in acc.iter().enumerate() {
        let sums = _mm256_sub_epi32(*acc, _mm256_mullo_epi32(_mm256_set1_epi32(row_zero[r]), col_sum));
        store8::<GELU>(sums, row_scale[r], s, bias, c.add(r * ldc + q * 8), valid);
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, const GELU: bool>(t: Tile) {
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
    let (a, sx, zx) = quantize_rows_narrow(x, m, w.k, operand_stride(w.k_pad, 1));
    let tile_at = |op: TileOperands<u8, i8>| {
        let rows = op.r0..op.r0 + op.rows;
        let t = Tile { op, w, row_scale: &sx[rows.clone()], row_zero: &zx[rows] };
        // SAFETY: the CPU has AVX2 and FMA (this implementation is only selected then); the
        // operands hold the tile's rows of k_pad bytes and the panel's k_pad/4 groups of
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
