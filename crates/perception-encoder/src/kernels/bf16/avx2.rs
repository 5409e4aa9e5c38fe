//! bf16 products on AVX2 alone (no `vdpbf16ps`): the packed bf16 weight is widened to float32
//! in registers as it is read (a pair `(k, k+1)` of one column is a 32-bit lane: `k` is the
//! lane shifted left by 16, `k+1` the lane with its low half cleared) and multiplied by
//! activations already rounded to bf16 and stored as float32, with FMAs. The weight stays
//! half the size of float32 in memory; the arithmetic is float32's. Register tiles are 4 rows
//! by 16 columns (8 accumulators, 4 widened weight vectors, 2 broadcasts of 16 registers).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{to_bf16, PackedBf16};
use crate::kernels::activations::Activations;
use crate::kernels::panels::PANEL;
use crate::kernels::tiles::{by_register_tiles, operand_stride, Order, TileOperands};

/// Rows per register tile.
const MR: usize = 4;
/// Rows per task.
const MC: usize = 96;

/// Columns `half * 16 .. half * 16 + 16` of the tile's panel, plus `bias`, stored to the
/// valid columns.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn half_tile<const R: usize>(op: &TileOperands<f32, u16>, bias: *const f32, half: usize) {
    let (a, lda, b) = (op.a, op.lda, op.b.add(half * 32));
    let high = _mm256_set1_epi32(-65536);
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    for j in 0..op.k / 2 {
        let v0 = _mm256_loadu_si256(b.add(j * 64).cast());
        let v1 = _mm256_loadu_si256(b.add(j * 64 + 16).cast());
        let (e0, o0) =
            (_mm256_castsi256_ps(_mm256_slli_epi32::<16>(v0)), _mm256_castsi256_ps(_mm256_and_si256(v0, high)));
        let (e1, o1) =
            (_mm256_castsi256_ps(_mm256_slli_epi32::<16>(v1)), _mm256_castsi256_ps(_mm256_and_si256(v1, high)));
        for r in 0..R {
            let row = a.add(r * lda + 2 * j);
            let (ae, ao) = (_mm256_broadcast_ss(&*row), _mm256_broadcast_ss(&*row.add(1)));
            acc0[r] = _mm256_fmadd_ps(ao, o0, _mm256_fmadd_ps(ae, e0, acc0[r]));
            acc1[r] = _mm256_fmadd_ps(ao, o1, _mm256_fmadd_ps(ae, e1, acc1[r]));
        }
    }
    let bias = bias.add(half * 16);
    let (b0, b1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
    let valid = op.cols.saturating_sub(half * 16).min(16);
    let mut v = [0f32; 16];
    for r in 0..R {
        let (y0, y1) = (_mm256_add_ps(acc0[r], b0), _mm256_add_ps(acc1[r], b1));
        let row = op.c.add(r * op.ldc + half * 16);
        if valid == 16 {
            _mm256_storeu_ps(row, y0);
            _mm256_storeu_ps(row.add(8), y1);
        } else {
            _mm256_storeu_ps(v.as_mut_ptr(), y0);
            _mm256_storeu_ps(v.as_mut_ptr().add(8), y1);
            std::ptr::copy_nonoverlapping(v.as_ptr(), row, valid);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(op: TileOperands<f32, u16>, bias: *const f32) {
    half_tile::<R>(&op, bias, 0);
    if op.cols > 16 {
        half_tile::<R>(&op, bias, 1);
    }
}

/// `src` rounded to bf16 (nearest even, as [`to_bf16`]) and widened back to float32, into `dst`.
///
/// # Safety
/// The CPU has AVX2; `dst` is valid for `src.len()` writes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn round_row(src: &[f32], dst: *mut f32) {
    let n = src.len();
    let (one, bias, high, quiet) =
        (_mm256_set1_epi32(1), _mm256_set1_epi32(0x7fff), _mm256_set1_epi32(-65536), _mm256_set1_epi32(0x0040_0000));
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(src.as_ptr().add(i));
        let bits = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), one);
        let rounded = _mm256_and_si256(_mm256_add_epi32(bits, _mm256_add_epi32(bias, lsb)), high);
        // NaN stays NaN (made quiet, as `half` does), not rounded into infinity.
        let nan = _mm256_and_si256(_mm256_or_si256(bits, quiet), high);
        let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        _mm256_storeu_si256(dst.add(i).cast(), _mm256_blendv_epi8(rounded, nan, is_nan));
        i += 8;
    }
    for (j, &v) in src.iter().enumerate().skip(i) {
        dst.add(j).write(super::from_bf16(to_bf16(v)));
    }
}

/// The `m` rows of `x` rounded to bf16 as float32, `k_pad` deep (zero padded) at the stride
/// the register tiles read.
fn operand(x: Activations, m: usize, w: &PackedBf16) -> Vec<f32> {
    let (k, lda) = (w.k, operand_stride(w.k_pad, 4));
    let mut a = crate::kernels::uninit::<f32>(m * lda);
    a.par_chunks_mut(lda).enumerate().for_each_init(Vec::new, |scratch, (i, row)| {
        row[k..].fill(std::mem::MaybeUninit::new(0.0));
        // SAFETY: this implementation is selected only where the CPU has AVX2; the row has
        // room for k values.
        unsafe { round_row(x.row(i, k, scratch), row.as_mut_ptr().cast()) };
    });
    // SAFETY: every row was written in full above.
    unsafe { crate::kernels::assume_init(a) }
}

pub(super) fn matmul(x: Activations, m: usize, w: &PackedBf16) -> Vec<f32> {
    let a = operand(x, m, w);
    let tile_at = |op: TileOperands<f32, u16>| {
        let bias = w.bias[op.panel * PANEL..].as_ptr();
        // SAFETY: the CPU has AVX2 and FMA (this implementation is only selected then); the
        // operands hold the tile's rows of k_pad and the panel's k_pad/2 pairs of 64, the
        // bias a whole panel; the output block is this task's alone and only the panel's
        // valid columns are stored.
        unsafe {
            match op.rows {
                4 => tile::<4>(op, bias),
                3 => tile::<3>(op, bias),
                2 => tile::<2>(op, bias),
                _ => tile::<1>(op, bias),
            }
        }
    };
    unsafe { by_register_tiles(Order::for_operands(&a, w), &a, m, w, MC, MR, tile_at) }
}
