//! bf16 products on AMX tiles (`tdpbf16ps`): 32 x 32 blocks per panel, the plain product and
//! the MLP's first product with GELU and bf16 rounding in its epilogue.

use std::arch::asm;

use super::{round_rows, PackedBf16};
use crate::kernels::amx::{finish_task, start_task, MB};
use crate::kernels::panels::PANEL;
use crate::kernels::tiles::{panel_masks, par_blocks, Order};
use crate::kernels::SendPtr;

/// Rows per task.
const MC: usize = 128;

/// `C[32 x 32] = A[32 x k_pad] * B` for one panel, into `c` (32 x 32 f32, row stride 128 B).
///
/// # Safety
/// The tile configuration must be loaded on this thread; `a` must hold 32 rows of
/// `k_pad` bf16 with row stride `lda` elements; `b` one packed panel of `k_pad / 2` pairs.
#[inline]
pub(crate) unsafe fn block(a: *const u16, lda: usize, b: *const u16, k_pad: usize, c: *mut f32) {
    block_ldc(a, lda, b, k_pad, c, PANEL)
}

/// [`block`] with the result's row stride `ldc` (in f32) chosen by the caller.
///
/// # Safety
/// As [`block`], with `c` holding 32 rows of stride `ldc` and 32 writable values each.
#[inline]
pub(crate) unsafe fn block_ldc(a: *const u16, lda: usize, b: *const u16, k_pad: usize, c: *mut f32, ldc: usize) {
    let steps = k_pad / 32;
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "2:",
        "tileloadd tmm4, [{a0} + {lda}*1]",
        "tileloadd tmm6, [{b} + {ldb}*1]",
        "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm5, [{a1} + {lda}*1]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
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
        lda = in(reg) lda * 2,
        ldb = in(reg) 128usize,
        c = in(reg) c,
        c2 = in(reg) c.add(16 * ldc),
        ldc = in(reg) ldc * 4,
        options(nostack),
    );
}

pub(super) fn matmul(x: crate::kernels::activations::Activations, m: usize, w: &PackedBf16) -> Vec<f32> {
    // Whole 32-row blocks: the padding rows are zeros and their results are dropped.
    let a = round_rows(x, m, w.k, w.k_pad, m.div_ceil(MB) * MB);
    matmul_rows(&a, m, w)
}

/// Every 32 x 32 block of `a W^T` for rows `0..m` of `a` (bf16, `k_pad` wide, whole
/// 32-row blocks), handed to `store(block, first row, rows, panel)`.
fn for_each_block(a: &[u16], m: usize, w: &PackedBf16, store: impl Fn(&[f32; MB * PANEL], usize, usize, usize) + Sync) {
    let k_pad = w.k_pad;
    assert!(a.len() >= m.div_ceil(MB) * MB * k_pad, "A operand rows");
    let body = |c: &mut [f32; MB * PANEL], rows: std::ops::Range<usize>, p: usize| {
        let panel = w.panel(p);
        let mut r0 = rows.start;
        while r0 < rows.end {
            // SAFETY: the tile configuration is loaded (`start`); `a` has whole 32-row
            // blocks of k_pad from r0 (asserted above); the panel holds k_pad / 2 pairs of
            // 64 bf16; `c` is 32 x 32.
            unsafe { block(a[r0 * k_pad..].as_ptr(), k_pad, panel.as_ptr(), k_pad, c.as_mut_ptr()) };
            store(c, r0, MB.min(rows.end - r0), p);
            r0 += MB;
        }
    };
    par_blocks(Order::RowBlocks, m, MC, w.panels(), start_task, body, finish_task);
}

/// `a W^T + b` for rows `0..m` of the rounded operand `a` (see [`for_each_block`]).
pub(super) fn matmul_rows(a: &[u16], m: usize, w: &PackedBf16) -> Vec<f32> {
    let n = w.n;
    let mut y = crate::kernels::uninit::<f32>(m * n);
    let out = SendPtr(y.as_mut_ptr().cast());
    for_each_block(a, m, w, |c, r0, rows, p| {
        // SAFETY: the stores cover rows r0..r0+rows (< m) and the panel's valid columns,
        // a block no other task writes.
        unsafe {
            store_block(c, rows, PANEL.min(n - p * PANEL), w.bias[p * PANEL..].as_ptr(), out.at(r0 * n + p * PANEL), n)
        };
    });
    // SAFETY: the blocks cover every row and column.
    unsafe { crate::kernels::assume_init(y) }
}

/// `gelu(a W^T + b)` rounded to bf16, laid out as the A operand of the next product: `n`
/// wide (a multiple of 32, checked by the caller), whole 32-row blocks with zero rows
/// after `m`.
pub(super) fn matmul_gelu_rows(a: &[u16], m: usize, w: &PackedBf16) -> Vec<u16> {
    let n = w.n;
    let rows_pad = m.div_ceil(MB) * MB;
    let mut h = crate::kernels::uninit::<u16>(rows_pad * n);
    h[m * n..].fill(std::mem::MaybeUninit::new(0));
    let out = SendPtr(h.as_mut_ptr().cast());
    for_each_block(a, m, w, |c, r0, rows, p| {
        // SAFETY: rows r0..r0+rows (< m), the panel's 32 columns (n is a multiple of 32):
        // a block no other task writes.
        unsafe {
            store_block_gelu(c, rows, w.bias[p * PANEL..].as_ptr(), out.at(0).cast::<u16>().add(r0 * n + p * PANEL), n)
        };
    });
    // SAFETY: the blocks cover every column of rows 0..m; the rest was zeroed above.
    unsafe { crate::kernels::assume_init(h) }
}

/// `out[r, c] = bf16(gelu(block[r, c] + bias[c]))` for `rows` rows and all 32 columns.
///
/// # Safety
/// AVX-512F/BF16/BW/VL; `bias` holds 32 values; `out` has `rows` rows of stride `ldo` with
/// 32 writable values each.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")]
unsafe fn store_block_gelu(c: &[f32; MB * PANEL], rows: usize, bias: *const f32, out: *mut u16, ldo: usize) {
    use std::arch::x86_64::*;
    let bias = std::slice::from_raw_parts(bias, PANEL);
    let mut v = [0f32; PANEL];
    for r in 0..rows {
        for ((d, &s), &b) in v.iter_mut().zip(&c[r * PANEL..(r + 1) * PANEL]).zip(bias) {
            *d = crate::kernels::math::gelu(s + b);
        }
        let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr()));
        let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr().add(16)));
        let dst = out.add(r * ldo);
        _mm256_storeu_si256(dst.cast(), std::mem::transmute::<__m256bh, __m256i>(lo));
        _mm256_storeu_si256(dst.add(16).cast(), std::mem::transmute::<__m256bh, __m256i>(hi));
    }
}

/// `out[r, c] = block[r, c] + bias[c]` for the valid rows and columns of a 32 x 32 block.
///
/// # Safety
/// AVX-512F; `bias` holds 32 values; `out` has `rows` rows of stride `ldo` with `cols`
/// writable columns each.
#[target_feature(enable = "avx512f")]
unsafe fn store_block(c: &[f32; MB * PANEL], rows: usize, cols: usize, bias: *const f32, out: *mut f32, ldo: usize) {
    use std::arch::x86_64::*;
    let (m0, m1) = panel_masks(cols);
    let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
    for r in 0..rows {
        let src = c.as_ptr().add(r * PANEL);
        let dst = out.add(r * ldo);
        _mm512_mask_storeu_ps(dst, m0, _mm512_add_ps(_mm512_loadu_ps(src), b0));
        _mm512_mask_storeu_ps(dst.add(16), m1, _mm512_add_ps(_mm512_loadu_ps(src.add(16)), b1));
    }
}
