//! bfloat16 attention on AVX512-BF16 (`vdpbf16ps`) for CPUs without AMX (AMD Zen 4, Cooper
//! Lake): the bf16 path's attention (`q * scale`, `k`, the probabilities and `v` rounded to
//! bf16; float32 sums and softmax), fused per block of queries as the float32 kernel
//! (`fused.rs`) is. Unlike the AMX kernel, the probabilities are rounded before the division by
//! their sum, which scales each output row instead: one pass over the scores less (3% faster
//! attention at L14 and G14 on a Zen 4), the same rounding error (a bf16 rounding is relative).
//!
//! `vdpbf16ps` multiplies pairs along the summed dimension, so each head's operands are packed
//! once before its blocks run: `k` as pairs of dims for 16 keys side by side (`kt`), `v` as
//! pairs of keys for 16 dims side by side (`vp`). A block then rounds its queries by rows (the
//! pairs of dims lie side by side already), computes its scores row by row (queries x keys),
//! and its softmax writes the exponentials rounded, whose pairs of keys lie side by side too.

use std::arch::x86_64::*;

use super::fused::{mask, BLOCK};
use crate::kernels::bf16::avx512::{exp_to_bf16, round_row};
use crate::kernels::transpose_tile16_part;

/// Widest head this kernel takes.
const MAX_HEAD_DIM: usize = 128;

/// Whether this kernel runs here for heads of `head_dim`: AVX512-BF16 is the bf16 kernel in
/// use (no AMX), heads have whole pairs of dims, and `PE_ATTENTION_KERNEL=gemm` does not ask
/// for the float32 attention (the bf16 path's attention before this kernel).
pub(super) fn available(head_dim: usize) -> bool {
    use crate::kernels::bf16::{selected, Impl};
    selected() == Impl::Avx512
        && head_dim.is_multiple_of(2)
        && (2..=MAX_HEAD_DIM).contains(&head_dim)
        && super::selected(head_dim) != super::Impl::Gemm
}

/// One head's keys and values packed for the products.
pub(super) struct HeadOperands {
    /// `d / 2` rows of `n_pad` (keys rounded up to 16): pairs of dims, zero beyond `n`.
    kt: Vec<u32>,
    /// `n.div_ceil(2)` rows of `d`: pairs of keys, the missing key of an odd `n` zero.
    vp: Vec<u32>,
}

/// Keys rounded up to whole vectors.
fn keys_padded(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// `k` and `v` of one head (`n` rows of `d` at stride `rs`) packed for [`block`].
///
/// # Safety
/// [`available`] holds for `d`; `k` and `v` hold `n` rows of `d` at stride `rs`.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub(super) unsafe fn pack_head(k: &[f32], v: &[f32], rs: usize, n: usize, d: usize) -> HeadOperands {
    assert!(n > 0 && k.len() >= (n - 1) * rs + d && v.len() >= (n - 1) * rs + d);
    let (dp, n_pad) = (d / 2, keys_padded(n));
    // Every element of `kt` and `vp` is written below, padding included: no zero fill first.
    let mut kt = crate::kernels::uninit::<u32>(dp * n_pad);
    // 16 keys at a time rounded into rows of whole vectors of pairs (zero beyond `dp`, and
    // beyond `n` in the last 16), then transposed in 16 x 16 tiles into `kt`'s rows.
    let dp16 = dp.div_ceil(16) * 16;
    let mut rows = vec![0u32; 16 * dp16];
    for j0 in (0..n_pad).step_by(16) {
        for r in 0..16 {
            let row = &mut rows[r * dp16..(r + 1) * dp16];
            match k.get((j0 + r) * rs..(j0 + r) * rs + d) {
                Some(key) if j0 + r < n => round_row(key, row.as_mut_ptr().cast()),
                _ => row.fill(0),
            }
        }
        for c0 in (0..dp).step_by(16) {
            let dst = kt.as_mut_ptr().cast::<u32>().add(c0 * n_pad + j0);
            transpose_tile16_part(rows.as_ptr().add(c0), dp16, dst, n_pad, (dp - c0).min(16), 16);
        }
    }
    // Lane i of the result takes element i of the first operand and element i of the second:
    // the two keys' values of one dim side by side.
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    let pairs = n.div_ceil(2);
    let mut vp = crate::kernels::uninit::<u32>(pairs * d);
    for p in 0..pairs {
        let (a, b) = (v.as_ptr().add(2 * p * rs), v.as_ptr().add((2 * p + 1) * rs));
        let second = 2 * p + 1 < n;
        for c0 in (0..d).step_by(16) {
            let m = mask(d - c0);
            let lo = _mm512_maskz_loadu_ps(m, a.add(c0));
            let hi = if second { _mm512_maskz_loadu_ps(m, b.add(c0)) } else { _mm512_setzero_ps() };
            // Rounded: `lo` in lanes 0..16, `hi` in 16..32; then each dim's two keys side by side.
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            let paired = _mm512_permutexvar_epi16(interleave, both);
            _mm512_mask_storeu_epi32(vp.as_mut_ptr().add(p * d + c0).cast(), m, paired);
        }
    }
    // SAFETY: the tiles wrote every pair of every key of `kt` (`n_pad` keys, `dp` pairs); the
    // masked stores every dim of every pair of keys of `vp`.
    unsafe { HeadOperands { kt: crate::kernels::assume_init(kt), vp: crate::kernels::assume_init(vp) } }
}

/// A task's reusable buffers: the block's rounded queries, scores and probabilities.
#[derive(Default)]
pub(super) struct Scratch {
    q: Vec<f32>,
    qb: Vec<u32>,
    s: Vec<f32>,
    p: Vec<u32>,
    inv: Vec<f32>,
}

/// One block of `rows` (1 to [`BLOCK`]) queries of a head: `q` from the block's first query,
/// `n` rows of `d` at stride `rs`; `head` that head's packed keys and values.
pub(super) struct Block<'a> {
    pub q: &'a [f32],
    pub head: &'a HeadOperands,
    pub rs: usize,
    pub n: usize,
    pub d: usize,
    pub rows: usize,
}

/// Softmax attention with scale `d^-0.5` for one block, bf16 operands: its `rows` output rows
/// of `d` go to `out` with row stride `ldo`.
///
/// # Safety
/// [`available`] holds for `d`; `head` was packed for `n` and `d`; `q` holds `rows` rows of `d`
/// at stride `rs`; `out` is writable for `rows` rows of `d` at stride `ldo` and no other thread
/// writes them.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn block(b: Block, out: *mut f32, ldo: usize, scratch: &mut Scratch) {
    let Block { q, head, rs, n, d, rows } = b;
    let (dp, n_pad, pairs) = (d / 2, keys_padded(n), n.div_ceil(2));
    assert!((1..=BLOCK).contains(&rows) && q.len() >= (rows - 1) * rs + d);
    assert!(head.kt.len() == dp * n_pad && head.vp.len() == pairs * d);
    let scale = 1.0 / (d as f32).sqrt();
    let Scratch { q: qs, qb, s, p, inv } = scratch;
    qs.resize(d, 0.0);
    qb.resize(rows * dp, 0);
    for i in 0..rows {
        for (t, &x) in qs.iter_mut().zip(&q[i * rs..i * rs + d]) {
            *t = x * scale;
        }
        round_row(qs, qb.as_mut_ptr().add(i * dp).cast());
    }
    s.resize(rows * n_pad, 0.0);
    let scores = Scores { qb: qb.as_ptr(), dp, kt: head.kt.as_ptr(), n_pad, s: s.as_mut_ptr() };
    scores.all(rows);
    // Unnormalized probabilities as bf16, `2 * pairs` a row (an odd `n` leaves one zero key at
    // the end); each output row is divided by its sum as it is stored.
    p.resize(rows * pairs, 0);
    inv.resize(rows, 0.0);
    for (i, inv) in inv.iter_mut().enumerate() {
        let dst = std::slice::from_raw_parts_mut(p.as_mut_ptr().add(i * pairs).cast::<u16>(), 2 * pairs);
        *inv = exp_to_bf16(&s[i * n_pad..i * n_pad + n], &mut dst[..n]);
        dst[n..].fill(0);
    }
    let product = Product { p: p.as_ptr(), pairs, vp: head.vp.as_ptr(), d, inv: inv.as_ptr(), out, ldo };
    match d.div_ceil(16) {
        1 => product.all::<24, 1>(rows),
        2 => product.all::<12, 2>(rows),
        3 => product.all::<8, 3>(rows),
        4 => product.all::<6, 4>(rows),
        5 => product.all::<4, 5>(rows),
        6 => product.all::<4, 6>(rows),
        7 => product.all::<3, 7>(rows),
        _ => product.all::<3, 8>(rows),
    }
}

/// `S = (q * scale) k^T` for one block: `rows` rows of `n_pad` scores at `s`.
#[derive(Clone, Copy)]
struct Scores {
    qb: *const u32,
    dp: usize,
    kt: *const u32,
    n_pad: usize,
    s: *mut f32,
}

impl Scores {
    /// Every query, eight at a time, against keys 48 at a time, then the last vectors of keys
    /// and the last queries singly.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn all(self, rows: usize) {
        let mut i = 0;
        while i + 8 <= rows {
            self.keys::<8>(i);
            i += 8;
        }
        while i < rows {
            self.keys::<1>(i);
            i += 1;
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn keys<const MR: usize>(self, i0: usize) {
        let mut j = 0;
        while j + 48 <= self.n_pad {
            self.tile::<MR, 3>(i0, j);
            j += 48;
        }
        while j < self.n_pad {
            self.tile::<MR, 1>(i0, j);
            j += 16;
        }
    }

    /// Queries `i0..i0 + MR` against keys `j0..j0 + 16 NK`: each pair of dims loads `NK`
    /// vectors of keys and broadcasts `MR` pairs of query values.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const MR: usize, const NK: usize>(self, i0: usize, j0: usize) {
        let mut acc = [[_mm512_setzero_ps(); NK]; MR];
        for c in 0..self.dp {
            let mut kv = [_mm512_setzero_si512(); NK];
            for (t, kv) in kv.iter_mut().enumerate() {
                *kv = _mm512_loadu_si512(self.kt.add(c * self.n_pad + j0 + 16 * t).cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let qv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*self.qb.add((i0 + r) * self.dp + c) as i32));
                for (a, &kv) in acc.iter_mut().zip(&kv) {
                    *a = _mm512_dpbf16_ps(*a, qv, std::mem::transmute::<__m512i, __m512bh>(kv));
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = self.s.add((i0 + r) * self.n_pad + j0);
            for (t, &a) in acc.iter().enumerate() {
                _mm512_storeu_ps(row.add(16 * t), a);
            }
        }
    }
}

/// `O = P v / sum` for one block from the rounded unnormalized probabilities (`pairs` pairs a
/// row) and each row's `1 / sum` (`inv`).
#[derive(Clone, Copy)]
struct Product {
    p: *const u32,
    pairs: usize,
    vp: *const u32,
    d: usize,
    inv: *const f32,
    out: *mut f32,
    ldo: usize,
}

impl Product {
    /// Every output row, `MR` at a time, then the last few singly.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn all<const MR: usize, const NV: usize>(self, rows: usize) {
        let mut i = 0;
        while i + MR <= rows {
            self.rows::<MR, NV>(i);
            i += MR;
        }
        while i < rows {
            self.rows::<1, NV>(i);
            i += 1;
        }
    }

    /// Output rows `i0..i0 + MR`, `NV` vectors wide (the last masked to `d`): each pair of keys
    /// loads its `NV` vectors of values and broadcasts `MR` pairs of probabilities.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows<const MR: usize, const NV: usize>(self, i0: usize) {
        let last = mask(self.d - 16 * (NV - 1));
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for j in 0..self.pairs {
            let mut vv = [_mm512_setzero_si512(); NV];
            for (t, vv) in vv.iter_mut().enumerate() {
                let m = if t + 1 == NV { last } else { 0xffff };
                *vv = _mm512_maskz_loadu_epi32(m, self.vp.add(j * self.d + 16 * t).cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let pv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*self.p.add((i0 + r) * self.pairs + j) as i32));
                for (a, &vv) in acc.iter_mut().zip(&vv) {
                    *a = _mm512_dpbf16_ps(*a, pv, std::mem::transmute::<__m512i, __m512bh>(vv));
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let row = self.out.add((i0 + r) * self.ldo);
            let inv = _mm512_set1_ps(*self.inv.add(i0 + r));
            for (t, &a) in acc.iter().enumerate() {
                let m = if t + 1 == NV { last } else { 0xffff };
                _mm512_mask_storeu_ps(row.add(16 * t), m, _mm512_mul_ps(a, inv));
            }
        }
    }
}
