//! Float32 attention fused per block of queries on AVX2 (CPUs without AVX-512, or with it
//! hidden by a hypervisor): the algorithm of `fused.rs` with 8-lane vectors. A block is up to
//! [`BLOCK`] queries of one head; its scores against every key (kept transposed, one row per
//! key: 55 KB at 577 keys, 98 KB at 1,025) stay in L2 through the softmax and `P v`, where the
//! two-product form writes and rereads a head's whole score matrix (1.3 MB at 577 tokens) in
//! five passes. Both products are one register tile of [`GROUP`] broadcast values against up
//! to two vectors of queries: 12 accumulators of AVX2's 16 registers (with three vectors and
//! four keys, all 16 were taken and the compiler spilled: 0.9x the two-product form).
//! 1.06-1.19x the two-product form in `cargo bench --bench kernels -- --attention` on a Zen 1
//! EPYC, B16 to G14.

use std::arch::x86_64::*;

use super::fused::Block;

/// Queries per block: two vectors of 8.
pub(super) const BLOCK: usize = 16;

/// Widest head this kernel takes.
const MAX_HEAD_DIM: usize = 128;

/// Keys per step of `q k^T` and dims per pass of `P v`.
const GROUP: usize = 6;

/// Whether the kernel runs here for heads of `head_dim` (at least one [`GROUP`] of dims: the
/// last pass of `P v` overlaps the one before instead of reading past the head).
pub(super) fn available(head_dim: usize) -> bool {
    crate::kernels::cpu::avx2() && (GROUP..=MAX_HEAD_DIM).contains(&head_dim)
}

/// A task's reusable buffers: the block's queries (scaled, transposed), its scores and its
/// output, both transposed; and the keys and values of the head it last saw, in rows of `d`.
#[derive(Default)]
pub(super) struct Scratch {
    qt: Vec<f32>,
    st: Vec<f32>,
    ot: Vec<f32>,
    kv: Vec<f32>,
    head: Option<usize>,
}

/// Softmax attention with scale `d^-0.5` for one block of at most [`BLOCK`] queries of the
/// head numbered `head` (unique within one attention call): its `rows` output rows of `d` go
/// to `out` with row stride `ldo`.
///
/// The head's keys and values are copied to rows of `d` when a task meets a new head (blocks
/// of one head mostly run in a row on one thread) and read from the copy, in L2: read in place,
/// rows `3 width` apart touch a page per key (577-1,025 of them for each of k and v at L14 and
/// G14), and blocks a third of AVX-512's miss the TLB (0.6-0.8x the two-product form there).
///
/// # Safety
/// [`available`] holds for `d`; the slices hold what [`Block`] says; `out` is writable for
/// `rows` rows of `d` at stride `ldo` and no other thread writes them.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn block(b: Block, head: usize, out: *mut f32, ldo: usize, scratch: &mut Scratch) {
    let (n, d) = (b.n, b.d);
    assert!(b.k.len() >= (n.max(1) - 1) * b.rs + d && b.v.len() >= (n.max(1) - 1) * b.rs + d);
    if scratch.head != Some(head) {
        scratch.kv.resize(2 * n * d, 0.0);
        let (k, v) = scratch.kv.split_at_mut(n * d);
        for (j, (k, v)) in k.chunks_exact_mut(d).zip(v.chunks_exact_mut(d)).enumerate() {
            k.copy_from_slice(&b.k[j * b.rs..j * b.rs + d]);
            v.copy_from_slice(&b.v[j * b.rs..j * b.rs + d]);
        }
        scratch.head = Some(head);
    }
    let kv = std::mem::take(&mut scratch.kv);
    let b = Block { k: &kv[..n * d], v: &kv[n * d..], ..b };
    match b.rows.div_ceil(8) {
        1 => block_with::<1>(b, out, ldo, scratch),
        _ => block_with::<2>(b, out, ldo, scratch),
    }
    scratch.kv = kv;
}

/// [`block`] for `NQ` vectors of queries.
#[target_feature(enable = "avx2,fma")]
unsafe fn block_with<const NQ: usize>(b: Block, out: *mut f32, ldo: usize, scratch: &mut Scratch) {
    let Block { q, k, v, rs, n, d, rows } = b;
    let ldq = NQ * 8;
    assert!(available(d) && (1..=ldq).contains(&rows) && rows + 8 > ldq);
    assert!(q.len() >= (rows - 1) * rs + d && k.len() >= n * d && v.len() >= n * d);
    let Scratch { qt, st, ot, .. } = scratch;
    // The queries times the scale, transposed (`d` rows of `ldq`), zero beyond `rows` (their
    // scores are computed and never read; zeros keep them finite).
    let scale = 1.0 / (d as f32).sqrt();
    qt.clear();
    qt.resize(d * ldq, 0.0);
    transpose(q.as_ptr(), rs, rows, d, scale, qt.as_mut_ptr(), ldq);
    st.resize(n.div_ceil(GROUP) * GROUP * ldq, 0.0);
    let max = scores::<NQ>(k.as_ptr(), d, qt.as_ptr(), ldq, st.as_mut_ptr(), n, d);
    let inv = softmax_columns::<NQ>(st.as_mut_ptr(), n, ldq, max);
    ot.resize(d * ldq, 0.0);
    product::<NQ>(st.as_ptr(), ldq, v.as_ptr(), d, n, d, inv, ot.as_mut_ptr());
    transpose(ot.as_ptr(), ldq, d, rows, 1.0, out, ldo);
}

/// `src` (`rows` x `cols` at row stride `ss`) times `scale`, transposed into `dst` (row stride
/// `ds`): 8 x 8 tiles in registers, element by element at ragged edges. Scalar, a block's two
/// transposes took 5-8% of its time.
///
/// # Safety
/// `src` holds `rows` rows of `cols` at stride `ss`; `dst` `cols` writable rows of `rows` at
/// stride `ds`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose(src: *const f32, ss: usize, rows: usize, cols: usize, scale: f32, dst: *mut f32, ds: usize) {
    let (full_r, full_c) = (rows / 8 * 8, cols / 8 * 8);
    let sv = _mm256_set1_ps(scale);
    for r0 in (0..full_r).step_by(8) {
        for c0 in (0..full_c).step_by(8) {
            let r: [__m256; 8] =
                std::array::from_fn(|i| _mm256_mul_ps(_mm256_loadu_ps(src.add((r0 + i) * ss + c0)), sv));
            // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved (their unpacklo and unpackhi).
            let t: [__m256; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                }
            });
            // u[4h + c]: column c of rows 4h..4h+4 in the low 128 bits, column c + 4 in the high.
            let u: [__m256; 8] = std::array::from_fn(|i| {
                let (h, c) = (i / 4, i % 4);
                let (a, b) = (t[4 * h + c / 2], t[4 * h + c / 2 + 2]);
                if c % 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(a, b)
                } else {
                    _mm256_shuffle_ps::<0xee>(a, b)
                }
            });
            for c in 0..4 {
                _mm256_storeu_ps(dst.add((c0 + c) * ds + r0), _mm256_permute2f128_ps::<0x20>(u[c], u[c + 4]));
                _mm256_storeu_ps(dst.add((c0 + c + 4) * ds + r0), _mm256_permute2f128_ps::<0x31>(u[c], u[c + 4]));
            }
        }
    }
    for r in 0..rows {
        let c_start = if r < full_r { full_c } else { 0 };
        for c in c_start..cols {
            *dst.add(c * ds + r) = *src.add(r * ss + c) * scale;
        }
    }
}

/// `S^T = k (q scale)^T` for the `n` keys in groups of [`GROUP`] (rows of `ldq` at `st`; a last
/// partial group repeats the last key into rows that are never read); returns each column's
/// maximum.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scores<const NQ: usize>(
    k: *const f32,
    rs: usize,
    qt: *const f32,
    ldq: usize,
    st: *mut f32,
    n: usize,
    d: usize,
) -> [__m256; NQ] {
    let mut max = [_mm256_set1_ps(f32::NEG_INFINITY); NQ];
    for j0 in (0..n).step_by(GROUP) {
        let keys: [*const f32; GROUP] = std::array::from_fn(|r| k.add((j0 + r).min(n - 1) * rs));
        let mut acc = [[_mm256_setzero_ps(); NQ]; GROUP];
        for c in 0..d {
            let qv: [__m256; NQ] = std::array::from_fn(|t| _mm256_loadu_ps(qt.add(c * ldq + 8 * t)));
            for (key, acc) in keys.iter().zip(&mut acc) {
                let kv = _mm256_broadcast_ss(&*key.add(c));
                for (a, &qv) in acc.iter_mut().zip(&qv) {
                    *a = _mm256_fmadd_ps(kv, qv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (t, &a) in acc.iter().enumerate() {
                _mm256_storeu_ps(st.add((j0 + r) * ldq + 8 * t), a);
                max[t] = _mm256_max_ps(max[t], a);
            }
        }
    }
    max
}

/// Each column of `st` (its first `n` rows of `ldq`) replaced by `exp(s - max)`; returns one
/// over each column's sum: the normalization is applied to the output instead of to the `n`
/// probabilities.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_columns<const NQ: usize>(st: *mut f32, n: usize, ldq: usize, max: [__m256; NQ]) -> [__m256; NQ] {
    let mut sum = [_mm256_setzero_ps(); NQ];
    for j in 0..n {
        for (t, (sum, &max)) in sum.iter_mut().zip(&max).enumerate() {
            let p = st.add(j * ldq + 8 * t);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), max));
            _mm256_storeu_ps(p, e);
            *sum = _mm256_add_ps(*sum, e);
        }
    }
    sum.map(|s| _mm256_div_ps(_mm256_set1_ps(1.0), s))
}

/// `O^T = v^T P^T`, each column scaled by its `inv`: `d` rows of `ldq` at `ot`, [`GROUP`] dims
/// a pass (the last pass ends at `d`, overlapping the one before when `d` is not a multiple).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn product<const NQ: usize>(
    st: *const f32,
    ldq: usize,
    v: *const f32,
    rs: usize,
    n: usize,
    d: usize,
    inv: [__m256; NQ],
    ot: *mut f32,
) {
    for c0 in (0..d).step_by(GROUP).map(|c| c.min(d - GROUP)) {
        let mut acc = [[_mm256_setzero_ps(); NQ]; GROUP];
        for j in 0..n {
            let pv: [__m256; NQ] = std::array::from_fn(|t| _mm256_loadu_ps(st.add(j * ldq + 8 * t)));
            let vrow = v.add(j * rs + c0);
            for (r, acc) in acc.iter_mut().enumerate() {
                let vv = _mm256_broadcast_ss(&*vrow.add(r));
                for (a, &pv) in acc.iter_mut().zip(&pv) {
                    *a = _mm256_fmadd_ps(vv, pv, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (t, (&a, &inv)) in acc.iter().zip(&inv).enumerate() {
                _mm256_storeu_ps(ot.add((c0 + r) * ldq + 8 * t), _mm256_mul_ps(a, inv));
            }
        }
    }
}

/// [`crate::kernels::math::exp`] on 8 lanes with fused multiply-adds (so within a few ulp of
/// it, not bit-identical).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: __m256) -> __m256 {
    use crate::kernels::math::{EXP_TAYLOR, LN2_HI, LN2_LO, ROUND};
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
    let shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(ROUND));
    let n = _mm256_sub_ps(shifted, _mm256_set1_ps(ROUND));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut e = _mm256_set1_ps(EXP_TAYLOR[0]);
    for &c in &EXP_TAYLOR[1..] {
        e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(c));
    }
    let bits = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(ROUND.to_bits() as i32 - 127));
    _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)), e)
}
