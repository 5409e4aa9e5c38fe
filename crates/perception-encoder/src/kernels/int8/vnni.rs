//! int8 products on AVX512-VNNI (`vpdpbusd`): register tiles of 12 rows x 32 columns over
//! activations shifted to unsigned, the shift compensated per column.

use std::arch::x86_64::*;

use super::{quantize_rows, PackedI8, Tile};
use crate::kernels::activations::Activations;
use crate::kernels::panels::PANEL;
use crate::kernels::tiles::{by_register_tiles, panel_masks, Order, TileOperands};

/// Rows per register tile: 12 rows x 32 columns = 24 int32 accumulators.
const MR: usize = 12;
/// Rows per task.
const MC: usize = 96;

/// The tile's sums, scaled back to float32 with the bias added; with `GELU`, through the GELU
/// (the same float32 operations as the separate pass, so the same bits).
#[inline]
#[target_feature(enable = "avx512f,avx512vnni,avx2,fma")]
unsafe fn tile_with<const R: usize, const GELU: bool>(t: Tile<u8>) {
    let Tile { op: TileOperands { a, lda, b, c, ldc, cols, panel, .. }, w, row_scale } = t;
    let groups = t.op.k / 4;
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
    let (m0, m1) = panel_masks(cols);
    let mut v = [0f32; PANEL];
    for r in 0..R {
        let row = c.add(r * ldc);
        let sr = _mm512_set1_ps(row_scale[r]);
        let v0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc0[r], z0));
        let v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc1[r], z1));
        let (mut y0, mut y1) =
            (_mm512_fmadd_ps(v0, _mm512_mul_ps(sr, s0), b0), _mm512_fmadd_ps(v1, _mm512_mul_ps(sr, s1), b1));
        if GELU {
            _mm512_storeu_ps(v.as_mut_ptr(), y0);
            _mm512_storeu_ps(v.as_mut_ptr().add(16), y1);
            for x in v.iter_mut() {
                *x = crate::kernels::math::gelu(*x);
            }
            (y0, y1) = (_mm512_loadu_ps(v.as_ptr()), _mm512_loadu_ps(v.as_ptr().add(16)));
        }
        _mm512_mask_storeu_ps(row, m0, y0);
        _mm512_mask_storeu_ps(row.add(16), m1, y1);
    }
}

#[target_feature(enable = "avx512f,avx512vnni,avx2,fma")]
unsafe fn tile<const R: usize>(t: Tile<u8>) {
    tile_with::<R, false>(t)
}

#[target_feature(enable = "avx512f,avx512vnni,avx2,fma")]
unsafe fn tile_gelu<const R: usize>(t: Tile<u8>) {
    tile_with::<R, true>(t)
}

pub(super) fn matmul(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    product::<false>(x, m, w)
}

/// `gelu(x W^T + b)`: the GELU in the product's epilogue instead of a pass of its own.
pub(super) fn matmul_gelu(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    product::<true>(x, m, w)
}

fn product<const GELU: bool>(x: Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    // Shifted to unsigned (a + 128), the operand type `vpdpbusd` takes on its left.
    let lda = crate::kernels::tiles::operand_stride(w.k_pad, 1);
    let (a, sx) = quantize_rows(x, m, w.k, lda, m, true);
    let a: &[u8] = bytemuck_u8(&a);
    let tile_at = |op: TileOperands<u8, i8>| {
        let t = Tile { op, w, row_scale: &sx[op.r0..op.r0 + op.rows] };
        // SAFETY: the CPU has AVX512-VNNI (this implementation is only selected then);
        // the operands hold the tile's rows of k_pad bytes and the panel's k_pad/4 groups
        // of 128, the per-column vectors a whole panel; the output block is this task's
        // alone and the stores are masked to the panel's valid columns.
        unsafe {
            if GELU {
                crate::kernels::tiles::rows_1_to_12!(op.rows, tile_gelu, t)
            } else {
                crate::kernels::tiles::rows_1_to_12!(op.rows, tile, t)
            }
        }
    };
    unsafe { by_register_tiles(Order::for_operands(a, w), a, m, w, MC, MR, tile_at) }
}

/// The same bytes seen as unsigned.
fn bytemuck_u8(a: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size, alignment and no invalid values.
    unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), a.len()) }
}
