//! bf16 products on AVX512-BF16 (`vdpbf16ps`): register tiles of 12 rows x 32 columns, the
//! rounding of activations, and the softmax that rounds its output for the attention.

use std::arch::x86_64::*;

use super::{round_rows, to_bf16, PackedBf16};
use crate::kernels::math::{EXP_TAYLOR, LN2_HI, LN2_LO, ROUND};
use crate::kernels::panels::PANEL;
use crate::kernels::tiles::{by_register_tiles, into_register_tiles, operand_stride, panel_masks, Order, TileOperands};

/// Rows per register tile: 12 rows x 32 columns = 24 accumulators.
const MR: usize = 12;
/// Rows per task.
const MC: usize = 96;

/// `src` rounded to bf16 into `dst` (`src.len()` values; `dst` need not be initialized).
///
/// # Safety
/// The CPU has AVX512-BF16; `dst` is valid for `src.len()` writes.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub(crate) unsafe fn round_row(src: &[f32], dst: *mut u16) {
    let n = src.len();
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
        _mm256_storeu_si256(dst.add(i).cast(), std::mem::transmute::<__m256bh, __m256i>(v));
        i += 16;
    }
    for (j, &v) in src.iter().enumerate().skip(i) {
        dst.add(j).write(to_bf16(v));
    }
}

/// The mask of the values from `i` in a row of `n` (`i < n`): whole vectors, a masked last one
/// (rows are 197 or 577 long, and a scalar tail of `exp` and rounding cost as much as the
/// vectors before it).
#[inline(always)]
fn tail_mask(n: usize, i: usize) -> __mmask16 {
    if n - i >= 16 {
        0xffff
    } else {
        (1u16 << (n - i)) - 1
    }
}

/// The largest of the `n` values at `p`, in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn row_max(p: *const f32, n: usize) -> __m512 {
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut max = neg_inf;
    for i in (0..n).step_by(16) {
        max = _mm512_max_ps(max, _mm512_mask_loadu_ps(neg_inf, tail_mask(n, i), p.add(i)));
    }
    _mm512_set1_ps(_mm512_reduce_max_ps(max))
}

/// Softmax of `s` (its values are overwritten), rounded to bf16 into `dst`: the final
/// scaling and the rounding in one pass.
///
/// # Safety
/// The CPU has AVX-512F/BF16 (and AVX2/FMA); `dst` is as long as `s`.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn softmax_to_bf16(s: &mut [f32], dst: &mut [u16]) {
    let n = s.len();
    assert_eq!(dst.len(), n, "softmax_to_bf16 lengths");
    let (p, d) = (s.as_mut_ptr(), dst.as_mut_ptr());
    let mask = |i: usize| tail_mask(n, i);
    let max = row_max(p, n);
    let mut sum = _mm512_setzero_ps();
    for i in (0..n).step_by(16) {
        let k = mask(i);
        let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), max));
        _mm512_mask_storeu_ps(p.add(i), k, e);
        sum = _mm512_mask_add_ps(sum, k, sum, e);
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
    for i in (0..n).step_by(16) {
        let k = mask(i);
        let v = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv));
        _mm256_mask_storeu_epi16(d.add(i).cast(), k, std::mem::transmute::<__m256bh, __m256i>(v));
    }
}

/// The unnormalized softmax of `s` for attention that divides afterwards: `exp(s - max s)`
/// rounded to bf16 into `dst` (the largest is 1), and `1 / sum` of the unrounded exponentials
/// returned for the caller to scale its `P v` rows by. Two passes over `s` instead of
/// [`softmax_to_bf16`]'s three, and no float32 store of the exponentials.
///
/// # Safety
/// The CPU has AVX512-BF16; `dst` is as long as `s`, which is not empty.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,fma")]
pub(crate) unsafe fn exp_to_bf16(s: &[f32], dst: &mut [u16]) -> f32 {
    let n = s.len();
    assert!(n > 0 && dst.len() == n, "exp_to_bf16 lengths");
    let (p, d) = (s.as_ptr(), dst.as_mut_ptr());
    let mask = |i: usize| tail_mask(n, i);
    let max = row_max(p, n);
    let mut sum = _mm512_setzero_ps();
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        let e = exp16_to_round(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
        sum = _mm512_add_ps(sum, e);
        let v = _mm512_cvtneps_pbh(e);
        _mm256_storeu_si256(d.add(i).cast(), std::mem::transmute::<__m256bh, __m256i>(v));
    }
    if whole < n {
        let k = mask(whole);
        let e = _mm512_maskz_mov_ps(k, exp16_to_round(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(whole)), max)));
        sum = _mm512_add_ps(sum, e);
        let v = _mm512_cvtneps_pbh(e);
        _mm256_mask_storeu_epi16(d.add(whole).cast(), k, std::mem::transmute::<__m256bh, __m256i>(v));
    }
    1.0 / _mm512_reduce_add_ps(sum)
}

/// `e^x` on 16 lanes for [`exp_to_bf16`], whose `x = s - max s` are at most 0 and whose
/// results are rounded to bf16 (only their sum stays float32): [`exp16`]'s range reduction,
/// its Taylor series one degree shorter (truncation under 1.3e-7 relative, where bf16 keeps
/// 2^-9), the power of two applied by `vscalefps`, no upper clamp. 12 vector operations
/// against 15; the exponentials were 23% of the bf16 attention at L14 (one 512-bit operation
/// a cycle on Zen 4).
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn exp16_to_round(x: __m512) -> __m512 {
    // Below -87, e^x is under float32's normal range: the clamp keeps n within scalef's reach
    // and a NaN finite (`max` returns its second operand then).
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut e = _mm512_set1_ps(EXP_TAYLOR[1]);
    for &c in &EXP_TAYLOR[2..] {
        e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(e, n)
}

/// [`crate::kernels::math::exp`] on 16 lanes with fused multiply-adds (so within a few
/// ulp of it, not bit-identical).
#[inline]
#[target_feature(enable = "avx512f,fma")]
pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
    let shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), _mm512_set1_ps(ROUND));
    let n = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUND));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut e = _mm512_set1_ps(EXP_TAYLOR[0]);
    for &c in &EXP_TAYLOR[1..] {
        e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
    }
    let bits = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(ROUND.to_bits() as i32 - 127));
    _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits)), e)
}

/// One register tile: its operands (bf16 rows, a panel of pairs) and the panel's bias.
#[derive(Clone, Copy)]
struct Tile<C> {
    op: TileOperands<u16, u16, C>,
    bias: *const f32,
}

/// The tile's `R x 32` sums (columns 0..16 and 16..32), before any bias.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn products<const R: usize, C>(op: &TileOperands<u16, u16, C>) -> ([__m512; R], [__m512; R]) {
    let (a, lda, b) = (op.a, op.lda, op.b);
    let kp = op.k / 2;
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    for j in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(j * 64).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(j * 64 + 32).cast()));
        for r in 0..R {
            let pair = std::ptr::read_unaligned(a.add(r * lda + 2 * j).cast::<i32>());
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
            acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
        }
    }
    (acc0, acc1)
}

/// Sums plus bias, stored as float32 in the panel's valid columns.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const R: usize>(t: Tile<f32>) {
    let (acc0, acc1) = products::<R, f32>(&t.op);
    let TileOperands { c, ldc, cols, .. } = t.op;
    let (bias0, bias1) = (_mm512_loadu_ps(t.bias), _mm512_loadu_ps(t.bias.add(16)));
    let (m0, m1) = panel_masks(cols);
    for r in 0..R {
        let row = c.add(r * ldc);
        _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(acc0[r], bias0));
        _mm512_mask_storeu_ps(row.add(16), m1, _mm512_add_ps(acc1[r], bias1));
    }
}

/// `bf16(gelu(sums + bias))` into all 32 columns (the next product's operand): the same
/// float32 values and rounding as the separate GELU and rounding passes.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")]
unsafe fn tile_gelu<const R: usize>(t: Tile<u16>) {
    let (acc0, acc1) = products::<R, u16>(&t.op);
    let TileOperands { c, ldc, .. } = t.op;
    let (bias0, bias1) = (_mm512_loadu_ps(t.bias), _mm512_loadu_ps(t.bias.add(16)));
    let mut v = [0f32; PANEL];
    for r in 0..R {
        _mm512_storeu_ps(v.as_mut_ptr(), _mm512_add_ps(acc0[r], bias0));
        _mm512_storeu_ps(v.as_mut_ptr().add(16), _mm512_add_ps(acc1[r], bias1));
        for x in v.iter_mut() {
            *x = crate::kernels::math::gelu(*x);
        }
        let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr()));
        let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr().add(16)));
        let row = c.add(r * ldc);
        _mm256_storeu_si256(row.cast(), std::mem::transmute::<__m256bh, __m256i>(lo));
        _mm256_storeu_si256(row.add(16).cast(), std::mem::transmute::<__m256bh, __m256i>(hi));
    }
}

pub(super) fn matmul(x: crate::kernels::activations::Activations, m: usize, w: &PackedBf16) -> Vec<f32> {
    matmul_rows(&operand(x, m, w), m, w)
}

/// The `m` rows of `x` rounded to bf16 as `w`'s register tiles read them ([`operand_stride`]).
pub(super) fn operand(x: crate::kernels::activations::Activations, m: usize, w: &PackedBf16) -> Vec<u16> {
    round_rows(x, m, w.k, operand_stride(w.k_pad, 2), m)
}

/// `a W^T + b` for the `m` rows of the rounded operand `a` (`w.k_pad` deep, rows
/// [`operand_stride`] apart).
pub(super) fn matmul_rows(a: &[u16], m: usize, w: &PackedBf16) -> Vec<f32> {
    let tile_at = |op: TileOperands<u16, u16>| {
        let t = Tile { op, bias: w.bias[op.panel * PANEL..].as_ptr() };
        // SAFETY: the CPU has AVX512-BF16 (this implementation is only selected then);
        // the operands hold the tile's rows of k_pad and the panel's k_pad/2 pairs of 64,
        // the bias a whole panel; the output block is this task's alone and the stores
        // are masked to the panel's valid columns.
        unsafe { crate::kernels::tiles::rows_1_to_12!(op.rows, tile, t) }
    };
    unsafe { by_register_tiles(Order::for_operands(a, w), a, m, w, MC, MR, tile_at) }
}

/// `gelu(a W^T + b)` rounded to bf16 for the `m` rows of `a`: the A operand of the next
/// product (`w.n` deep, a multiple of 32, checked by the caller; rows [`operand_stride`]
/// apart, the padding zero); the float32 hidden layer is never stored.
pub(super) fn matmul_gelu_rows(a: &[u16], m: usize, w: &PackedBf16) -> Vec<u16> {
    assert!(w.n.is_multiple_of(PANEL), "whole panels");
    let ldh = operand_stride(w.n, 2);
    let mut h = crate::kernels::uninit::<u16>(m * ldh);
    for row in h.chunks_mut(ldh) {
        row[w.n..].fill(std::mem::MaybeUninit::new(0));
    }
    let tile_at = |op: TileOperands<u16, u16, u16>| {
        let t = Tile { op, bias: w.bias[op.panel * PANEL..].as_ptr() };
        // SAFETY: as in `matmul_rows`; every panel is whole (asserted), so the 32-value
        // stores stay in the tile's rows of its panel.
        unsafe { crate::kernels::tiles::rows_1_to_12!(op.rows, tile_gelu, t) }
    };
    // SAFETY: `h` holds m rows of `ldh` >= n; the tiles write only their own rows of their
    // panel, and the padding after n was zeroed above.
    unsafe {
        into_register_tiles(Order::for_operands(a, w), a, m, w, MC, MR, (h.as_mut_ptr().cast::<u16>(), ldh), tile_at);
        // Every (row, panel) block was written.
        crate::kernels::assume_init(h)
    }
}
