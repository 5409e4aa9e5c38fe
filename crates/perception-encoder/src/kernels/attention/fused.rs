//! Float32 attention fused per block of queries on AVX-512: for up to [`BLOCK`] queries of one
//! head, the scores against every key, their softmax and the product with v, while the block's
//! scores (keys x queries, at most ~200 KB for 1,025 keys) stay in L2. The whole score matrix
//! of a head (1.3 MB at 577 tokens, 4.2 MB at 1,025) is never written, and nothing is packed
//! per head: each block only transposes its own queries.
//!
//! The scores are kept transposed (`S^T`, one row per key, the block's queries side by side),
//! so that `q k^T` broadcasts k from its rows as they lie in the packed QKV buffer, the softmax
//! runs down the columns with whole vectors of queries (no horizontal reductions), and `P v`
//! broadcasts a key's probabilities for a few queries at a time.

use std::arch::x86_64::*;

use crate::kernels::bf16::avx512::exp16;
use crate::kernels::cpu::{simd, Simd};

/// Queries per block: three vectors of 16.
pub(super) const BLOCK: usize = 48;

/// Widest head this kernel takes (eight vectors of 16 accumulate per output row).
const MAX_HEAD_DIM: usize = 128;

/// Whether the fused kernel runs here for heads of `head_dim`.
pub(super) fn available(head_dim: usize) -> bool {
    simd() == Simd::Avx512 && (1..=MAX_HEAD_DIM).contains(&head_dim)
}

/// One block of queries of one head: `q`, `k`, `v` are the head's first query, key and value
/// (`n` rows of `d`, row stride `rs`); `q` starts at the block's first query, of which there are
/// `rows` (1 to [`BLOCK`]).
#[derive(Clone, Copy)]
pub(super) struct Block<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub rs: usize,
    pub n: usize,
    pub d: usize,
    pub rows: usize,
}

/// A task's reusable buffers: the block's queries transposed and its scores.
#[derive(Default)]
pub(super) struct Scratch {
    qt: Vec<f32>,
    st: Vec<f32>,
}

/// Softmax attention with scale `d^-0.5` for one block: its `rows` output rows of `d` go to
/// `out` with row stride `ldo`.
///
/// # Safety
/// [`available`] holds for `d`; the slices hold what [`Block`] says (`q` from its first to its
/// `rows`-th query, `k` and `v` all `n` keys: the last row of each ends `d` values after
/// `(count - 1) * rs`); `out` is writable for `rows` rows of `d` at stride `ldo` and no other
/// thread writes them.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn block(b: Block, out: *mut f32, ldo: usize, scratch: &mut Scratch) {
    let Block { q, k, v, rs, n, d, rows } = b;
    debug_assert!((1..=BLOCK).contains(&rows) && available(d));
    assert!(q.len() >= (rows - 1) * rs + d && k.len() >= (n - 1) * rs + d && v.len() >= (n - 1) * rs + d);
    let nq = rows.div_ceil(16);
    let ldq = nq * 16;
    // The block's queries transposed, zero beyond `rows`: their scores are computed and never
    // read, and zeros keep them finite.
    scratch.qt.clear();
    scratch.qt.resize(d * ldq, 0.0);
    for i in 0..rows {
        for (c, &x) in q[i * rs..i * rs + d].iter().enumerate() {
            scratch.qt[c * ldq + i] = x;
        }
    }
    scratch.st.resize(n * ldq, 0.0);
    let (qt, st) = (scratch.qt.as_ptr(), scratch.st.as_mut_ptr());
    let scale = 1.0 / (d as f32).sqrt();
    let scores = Scores { k: k.as_ptr(), rs, qt, ldq, st, d, scale };
    match nq {
        1 => scores.all::<1>(n),
        2 => scores.all::<2>(n),
        _ => scores.all::<3>(n),
    }
    let mut inv = [0f32; BLOCK];
    softmax_columns(st, n, ldq, &mut inv[..ldq]);
    let product = Product { v: v.as_ptr(), rs, st, ldq, n, inv: inv.as_ptr(), out, ldo, d };
    // Rows of 24 accumulators: `24 / NV` at a time (a divisor of the block's 48).
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

/// `S^T = scale * k q^T` for one block: `n` rows of `ldq` scores at `st`.
#[derive(Clone, Copy)]
struct Scores {
    k: *const f32,
    rs: usize,
    qt: *const f32,
    ldq: usize,
    st: *mut f32,
    d: usize,
    scale: f32,
}

impl Scores {
    /// Every key, eight at a time, then one at a time.
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn all<const NQ: usize>(self, n: usize) {
        let mut j = 0;
        while j + 8 <= n {
            self.keys::<8, NQ>(j);
            j += 8;
        }
        while j < n {
            self.keys::<1, NQ>(j);
            j += 1;
        }
    }

    /// Keys `j0..j0 + MR` against the block's `NQ` vectors of queries: `MR x NQ` accumulators,
    /// each step over the head's dims loads `NQ` query vectors and broadcasts `MR` key values.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn keys<const MR: usize, const NQ: usize>(self, j0: usize) {
        let mut acc = [[_mm512_setzero_ps(); NQ]; MR];
        let k = self.k.add(j0 * self.rs);
        for c in 0..self.d {
            let mut qv = [_mm512_setzero_ps(); NQ];
            for (t, qv) in qv.iter_mut().enumerate() {
                *qv = _mm512_loadu_ps(self.qt.add(c * self.ldq + 16 * t));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let kv = _mm512_set1_ps(*k.add(r * self.rs + c));
                for (a, &qv) in acc.iter_mut().zip(&qv) {
                    *a = _mm512_fmadd_ps(kv, qv, *a);
                }
            }
        }
        let scale = _mm512_set1_ps(self.scale);
        for (r, acc) in acc.iter().enumerate() {
            let row = self.st.add((j0 + r) * self.ldq);
            for (t, &a) in acc.iter().enumerate() {
                _mm512_storeu_ps(row.add(16 * t), _mm512_mul_ps(a, scale));
            }
        }
    }
}

/// Each column of `st` (`n` rows of `ldq`) replaced by `exp(s - max)` of its column, and
/// `inv[i]` set to one over column `i`'s sum: the normalization is applied to the output rows,
/// `d` values each, instead of to the `n` probabilities.
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_columns(st: *mut f32, n: usize, ldq: usize, inv: &mut [f32]) {
    for t in 0..ldq / 16 {
        let col = st.add(16 * t);
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for j in 0..n {
            max = _mm512_max_ps(max, _mm512_loadu_ps(col.add(j * ldq)));
        }
        let mut sum = _mm512_setzero_ps();
        for j in 0..n {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(col.add(j * ldq)), max));
            _mm512_storeu_ps(col.add(j * ldq), e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_storeu_ps(inv.as_mut_ptr().add(16 * t), _mm512_div_ps(_mm512_set1_ps(1.0), sum));
    }
}

/// `O = P v` for one block, each output row scaled by its `inv`.
#[derive(Clone, Copy)]
struct Product {
    v: *const f32,
    rs: usize,
    st: *const f32,
    ldq: usize,
    n: usize,
    inv: *const f32,
    out: *mut f32,
    ldo: usize,
    d: usize,
}

impl Product {
    /// Every output row: `MR` at a time, the last few of a head's final block one at a time.
    #[target_feature(enable = "avx512f,fma")]
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

    /// Output rows `i0..i0 + MR`, `NV` vectors wide (the last masked to `d`): each key loads
    /// its `NV` vectors of v and broadcasts `MR` probabilities.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn rows<const MR: usize, const NV: usize>(self, i0: usize) {
        let last = mask(self.d - 16 * (NV - 1));
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for j in 0..self.n {
            let vrow = self.v.add(j * self.rs);
            let mut vv = [_mm512_setzero_ps(); NV];
            for (t, vv) in vv.iter_mut().enumerate() {
                let m = if t + 1 == NV { last } else { 0xffff };
                *vv = _mm512_maskz_loadu_ps(m, vrow.add(16 * t));
            }
            let p = self.st.add(j * self.ldq + i0);
            for (r, acc) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(*p.add(r));
                for (a, &vv) in acc.iter_mut().zip(&vv) {
                    *a = _mm512_fmadd_ps(pv, vv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let inv = _mm512_set1_ps(*self.inv.add(i0 + r));
            let row = self.out.add((i0 + r) * self.ldo);
            for (t, &a) in acc.iter().enumerate() {
                let m = if t + 1 == NV { last } else { 0xffff };
                _mm512_mask_storeu_ps(row.add(16 * t), m, _mm512_mul_ps(a, inv));
            }
        }
    }
}

/// The first `count` (1 to 16) lanes.
pub(super) fn mask(count: usize) -> __mmask16 {
    if count >= 16 {
        0xffff
    } else {
        ((1u32 << count) - 1) as __mmask16
    }
}
