//! Float32 attention fused per block of queries on AVX-512: for up to [`BLOCK`] queries of one
//! head, the scores against every key, their softmax and the product with v, while the block's
//! scores (keys x queries, at most ~200 KB for 1,025 keys) stay in L2. The whole score matrix
//! of a head (1.3 MB at 577 tokens, 4.2 MB at 1,025) is never written, and nothing is packed
//! per head: each block only transposes its own queries.
//!
//! The scores are kept transposed (`S^T`, one row per key, the block's queries side by side),
//! so that the softmax runs down the columns with whole vectors of queries (no horizontal
//! reductions), and both products are one register tile: [`GROUP`] values broadcast from the
//! QKV buffer against up to three vectors of the block's queries. `q k^T` broadcasts a group
//! of keys' dims; `P v` runs as `O^T = v^T S^T`, broadcasting a group of one key's dims and
//! streaming the scores row by row (each row of v read a group of dims at a time, instead of
//! whole rows of v for a few queries at a time: 10-15% faster at G14's 96-dim heads).

use std::arch::x86_64::*;

use crate::kernels::bf16::avx512::exp16;
use crate::kernels::cpu::{simd, Simd};
use crate::kernels::{transpose_tile16, transpose_tile16_part};

/// Queries per block: three vectors of 16.
pub(super) const BLOCK: usize = 48;

/// Widest head this kernel takes.
const MAX_HEAD_DIM: usize = 128;

/// Keys per step of `q k^T` and dims per pass of `P v`: with three vectors of queries, 24
/// accumulators.
const GROUP: usize = 8;

/// Whether the fused kernel runs here for heads of `head_dim` (at least one [`GROUP`] of dims:
/// the last pass of `P v` overlaps the one before instead of reading past the head).
pub(super) fn available(head_dim: usize) -> bool {
    simd() == Simd::Avx512 && (GROUP..=MAX_HEAD_DIM).contains(&head_dim)
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

/// A task's reusable buffers: the block's queries (scaled and padded, then transposed), its
/// scores and its output transposed.
#[derive(Default)]
pub(super) struct Scratch {
    qpad: Vec<f32>,
    qt: Vec<f32>,
    st: Vec<f32>,
    ot: Vec<f32>,
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
    match b.rows.div_ceil(16) {
        1 => block_with::<1>(b, out, ldo, scratch),
        2 => block_with::<2>(b, out, ldo, scratch),
        _ => block_with::<3>(b, out, ldo, scratch),
    }
}

/// [`block`] for `NQ` vectors of queries.
#[target_feature(enable = "avx512f,fma")]
unsafe fn block_with<const NQ: usize>(b: Block, out: *mut f32, ldo: usize, scratch: &mut Scratch) {
    let Block { q, k, v, rs, n, d, rows } = b;
    let (ldq, d16) = (NQ * 16, d.div_ceil(16) * 16);
    assert!(available(d) && (1..=ldq).contains(&rows) && rows + 16 > ldq);
    assert!(q.len() >= (rows - 1) * rs + d && k.len() >= (n - 1) * rs + d && v.len() >= (n - 1) * rs + d);
    let Scratch { qpad, qt, st, ot } = scratch;
    // The queries times the scale, zero beyond `rows` and `d` (their scores are computed and
    // never read; zeros keep them finite), then transposed in tiles: `d16` rows of `ldq`.
    let scale = 1.0 / (d as f32).sqrt();
    qpad.clear();
    qpad.resize(ldq * d16, 0.0);
    for (i, row) in qpad.chunks_exact_mut(d16).take(rows).enumerate() {
        for (x, &y) in row.iter_mut().zip(&q[i * rs..i * rs + d]) {
            *x = y * scale;
        }
    }
    qt.resize(d16 * ldq, 0.0);
    for it in 0..NQ {
        for c0 in (0..d16).step_by(16) {
            transpose_tile16(qpad.as_ptr().add(16 * it * d16 + c0), d16, qt.as_mut_ptr().add(c0 * ldq + 16 * it), ldq);
        }
    }
    st.resize(n.div_ceil(GROUP) * GROUP * ldq, 0.0);
    let max = scores::<NQ>(k.as_ptr(), rs, qt.as_ptr(), ldq, st.as_mut_ptr(), n, d);
    let inv = softmax_columns::<NQ>(st.as_mut_ptr(), n, ldq, max);
    ot.resize(d16 * ldq, 0.0);
    product::<NQ>(st.as_ptr(), ldq, v.as_ptr(), rs, n, d, inv, ot.as_mut_ptr());
    // `O^T` back to the block's rows of `out`, a tile at a time.
    for it in 0..NQ {
        let (r0, nr) = (16 * it, (rows - 16 * it).min(16));
        for c0 in (0..d).step_by(16) {
            let src = ot.as_ptr().add(c0 * ldq + r0);
            transpose_tile16_part(src, ldq, out.add(r0 * ldo + c0), ldo, nr, (d - c0).min(16));
        }
    }
}

/// `S^T = k (q scale)^T` for the `n` keys in groups of [`GROUP`] (rows of `ldq` at `st`; a last
/// partial group repeats the last key into rows that are never read); returns each column's
/// maximum.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn scores<const NQ: usize>(
    k: *const f32,
    rs: usize,
    qt: *const f32,
    ldq: usize,
    st: *mut f32,
    n: usize,
    d: usize,
) -> [__m512; NQ] {
    let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); NQ];
    for j0 in (0..n).step_by(GROUP) {
        let keys: [*const f32; GROUP] = std::array::from_fn(|r| k.add((j0 + r).min(n - 1) * rs));
        let mut acc = [[_mm512_setzero_ps(); NQ]; GROUP];
        for c in 0..d {
            let qv: [__m512; NQ] = std::array::from_fn(|t| _mm512_loadu_ps(qt.add(c * ldq + 16 * t)));
            for (key, acc) in keys.iter().zip(&mut acc) {
                let kv = _mm512_set1_ps(*key.add(c));
                for (a, &qv) in acc.iter_mut().zip(&qv) {
                    *a = _mm512_fmadd_ps(kv, qv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (t, &a) in acc.iter().enumerate() {
                _mm512_storeu_ps(st.add((j0 + r) * ldq + 16 * t), a);
                max[t] = _mm512_max_ps(max[t], a);
            }
        }
    }
    max
}

/// Each column of `st` (its first `n` rows of `ldq`) replaced by `exp(s - max)`; returns one
/// over each column's sum: the normalization is applied to the output instead of to the `n`
/// probabilities.
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_columns<const NQ: usize>(st: *mut f32, n: usize, ldq: usize, max: [__m512; NQ]) -> [__m512; NQ] {
    let mut sum = [_mm512_setzero_ps(); NQ];
    for j in 0..n {
        for (t, (sum, &max)) in sum.iter_mut().zip(&max).enumerate() {
            let p = st.add(j * ldq + 16 * t);
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), max));
            _mm512_storeu_ps(p, e);
            *sum = _mm512_add_ps(*sum, e);
        }
    }
    sum.map(|s| _mm512_div_ps(_mm512_set1_ps(1.0), s))
}

/// `O^T = v^T P^T`, each column scaled by its `inv`: `d` rows of `ldq` at `ot`, [`GROUP`] dims
/// a pass (the last pass ends at `d`, overlapping the one before when `d` is not a multiple).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,fma")]
unsafe fn product<const NQ: usize>(
    st: *const f32,
    ldq: usize,
    v: *const f32,
    rs: usize,
    n: usize,
    d: usize,
    inv: [__m512; NQ],
    ot: *mut f32,
) {
    for c0 in (0..d).step_by(GROUP).map(|c| c.min(d - GROUP)) {
        let mut acc = [[_mm512_setzero_ps(); NQ]; GROUP];
        for j in 0..n {
            let pv: [__m512; NQ] = std::array::from_fn(|t| _mm512_loadu_ps(st.add(j * ldq + 16 * t)));
            let vrow = v.add(j * rs + c0);
            for (r, acc) in acc.iter_mut().enumerate() {
                let vv = _mm512_set1_ps(*vrow.add(r));
                for (a, &pv) in acc.iter_mut().zip(&pv) {
                    *a = _mm512_fmadd_ps(vv, pv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (t, (&a, &inv)) in acc.iter().zip(&inv).enumerate() {
                _mm512_storeu_ps(ot.add((c0 + r) * ldq + 16 * t), _mm512_mul_ps(a, inv));
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
