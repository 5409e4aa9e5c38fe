//! int8 products on AMX tiles (`tdpbssd`): 32 x 32 int32 blocks per panel, scaled back to
//! float32 with the bias in the epilogue.

use std::arch::asm;

use super::{quantize_rows, PackedI8};
use crate::kernels::amx::{finish_task, start_task, MB};
use crate::kernels::panels::PANEL;
use crate::kernels::tiles::{panel_masks, par_blocks, Order};
use crate::kernels::SendPtr;

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
        crate::kernels::amx::amx_prefetch_b!(),
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

pub(super) fn matmul(x: crate::kernels::activations::Activations, m: usize, w: &PackedI8) -> Vec<f32> {
    let (k, n, k_pad) = (w.k, w.n, w.k_pad);
    let (a, sx) = quantize_rows(x, m, k, k_pad, m.div_ceil(MB) * MB, false);
    let mut y = crate::kernels::uninit::<f32>(m * n);
    let out = SendPtr(y.as_mut_ptr().cast());
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
    par_blocks(Order::RowBlocks, m, MC, w.panels(), start_task, body, finish_task);
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
    let (m0, m1) = panel_masks(cols);
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
