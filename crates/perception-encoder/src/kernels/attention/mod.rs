//! Multi-head self-attention over a packed QKV buffer `(batch, seq, 3 * width)` (rows q, k, v
//! per token, heads contiguous within each), with RoPE applied in place and heads written
//! straight into the merged `(batch, seq, width)` layout.
//!
//! On AVX-512 (without a causal mask) each task is one block of 48 queries of one head, fused
//! (`fused.rs`): scores, softmax and `P v` while the block's scores stay in L2; 1.1-1.3x the
//! two-product form below in `cargo bench --bench kernels -- --attention` (AMD Zen 4). On AVX2
//! alone, the same with blocks of 16 queries (`fused_avx2.rs`).
//!
//! Otherwise work is split over `batch x heads` with rayon; each task runs two single-threaded GEMMs
//! (`S = q k^T * scale`, `O = softmax(S) v`). Splitting each small head matrix across threads,
//! as a generic batched matmul does, leaves the cores mostly idle. When there are fewer heads
//! than a few per thread (T16's 3 heads at batch 1: one thread did two heads, the other one),
//! each head's queries are split into blocks as well, so the threads get equal shares.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod fused;
#[cfg(target_arch = "x86_64")]
mod fused_avx2;
#[cfg(target_arch = "x86_64")]
mod fused_bf16;

use rayon::prelude::*;

use super::SendPtr;

/// Geometry of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl Shape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// RoPE on the q and k parts of `qkv`, in place: for each adjacent pair `(a, b)` of the first
/// `rot_dim` dims of every head, `(a cos - b sin, b cos + a sin)`. `cos` / `sin` are
/// `(seq, rot_dim)` with each angle repeated for its pair, as the reference's table. With
/// `bias` (`3 * width`), the product's bias is added to every row first, in the same pass.
pub(crate) fn rope_in_place(qkv: &mut [f32], s: Shape, cos: &[f32], sin: &[f32], rot_dim: usize, bias: Option<&[f32]>) {
    let w = s.width();
    assert!(bias.is_none_or(|b| b.len() == 3 * w), "qkv bias size");
    qkv.par_chunks_mut(3 * w).enumerate().for_each(|(row, token)| {
        let pos = row % s.seq;
        let (c, sn) = (&cos[pos * rot_dim..(pos + 1) * rot_dim], &sin[pos * rot_dim..(pos + 1) * rot_dim]);
        super::math::dispatch!(rope_token(token, s, w, c, sn, rot_dim, bias));
    });
}

#[inline(always)]
fn rope_token(token: &mut [f32], s: Shape, w: usize, c: &[f32], sn: &[f32], rot_dim: usize, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for (v, &b) in token.iter_mut().zip(b) {
            *v += b;
        }
    }
    for part in 0..2 {
        for h in 0..s.heads {
            let x = &mut token[part * w + h * s.head_dim..part * w + h * s.head_dim + rot_dim];
            // Pairs as 2-element chunks, so the compiler vectorizes them (with a lane swap).
            for ((x, c), sn) in x.chunks_exact_mut(2).zip(c.chunks_exact(2)).zip(sn.chunks_exact(2)) {
                let (a, b) = (x[0], x[1]);
                x[0] = a * c[0] - b * sn[0];
                x[1] = b * c[1] + a * sn[1];
            }
        }
    }
}

/// How the float32 attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Impl {
    /// Blocks of queries fused on AVX-512 (`fused.rs`): scores, softmax and `P v` per block.
    Fused,
    /// The same on AVX2 (`fused_avx2.rs`), where AVX-512 is absent or hidden.
    FusedAvx2,
    /// Two `gemm` products per head (or block of queries) around the softmax: every CPU, and
    /// the causal text tower.
    Gemm,
}

/// Every float32 implementation for heads of `head_dim`, fastest first, with whether it runs
/// on this CPU.
pub(crate) fn candidates(head_dim: usize) -> [super::Candidate<Impl>; 3] {
    #[cfg(target_arch = "x86_64")]
    let (wide, mid) = (fused::available(head_dim), fused_avx2::available(head_dim));
    #[cfg(not(target_arch = "x86_64"))]
    let (wide, mid) = {
        let _ = head_dim;
        (false, false)
    };
    [("fused", Impl::Fused, wide), ("fused-avx2", Impl::FusedAvx2, mid), ("gemm", Impl::Gemm, true)]
}

/// The float32 attention for heads of `head_dim`: the widest fused kernel that runs, unless
/// `PE_ATTENTION_KERNEL` names another (`gemm`: the portable one).
pub(crate) fn selected(head_dim: usize) -> Impl {
    super::choose("PE_ATTENTION_KERNEL", &candidates(head_dim))
}

/// Whether `which` runs on this CPU for heads of `head_dim`.
pub(crate) fn available(which: Impl, head_dim: usize) -> bool {
    candidates(head_dim).iter().any(|c| c.1 == which && c.2)
}

/// Softmax attention with scale `head_dim^-0.5`; `causal` masks keys after each query.
/// Returns `(batch, seq, width)` with heads merged.
pub(crate) fn attention(qkv: &[f32], s: Shape, causal: bool) -> Vec<f32> {
    attention_with(selected(s.head_dim), qkv, s, causal)
}

/// [`attention`] with the implementation given (the fused one only where it is available; a
/// causal mask always takes the `gemm` one).
pub(crate) fn attention_with(which: Impl, qkv: &[f32], s: Shape, causal: bool) -> Vec<f32> {
    match which {
        Impl::Fused | Impl::FusedAvx2 if !causal && available(which, s.head_dim) => {
            attention_fused(qkv, s, which == Impl::Fused)
        }
        _ => attention_gemm(qkv, s, causal),
    }
}

/// `body(scratch, batch, head, first query, queries)` for every block of `block` queries of
/// every (batch, head), in parallel: the fused kernels' tasks, many for every thread even at
/// batch 1. Each rayon job reuses one `scratch`.
#[cfg(target_arch = "x86_64")]
fn for_each_query_block<S: Default>(
    s: Shape,
    block: usize,
    body: impl Fn(&mut S, usize, usize, usize, usize) + Sync + Send,
) {
    let n = s.seq;
    let blocks = n.div_ceil(block);
    (0..s.batch * s.heads * blocks).into_par_iter().for_each_init(S::default, |scratch, task| {
        let (bh, blk) = (task / blocks, task % blocks);
        let r0 = blk * block;
        body(scratch, bh / s.heads, bh % s.heads, r0, block.min(n - r0));
    });
}

/// [`attention`] through a fused kernel (no causal mask), AVX-512's or else AVX2's: one task
/// per block of queries of one head, so every thread gets many even at batch 1.
#[cfg(target_arch = "x86_64")]
fn attention_fused(qkv: &[f32], s: Shape, avx512: bool) -> Vec<f32> {
    let w = s.width();
    let (n, d) = (s.seq, s.head_dim);
    let (ok, rows_per_block) =
        if avx512 { (fused::available(d), fused::BLOCK) } else { (fused_avx2::available(d), fused_avx2::BLOCK) };
    assert!(ok, "fused attention selected for head dim {d}");
    assert_eq!(qkv.len(), s.batch * n * 3 * w, "packed qkv size");
    let mut out = super::uninit::<f32>(s.batch * n * w);
    let out_ptr = SendPtr(out.as_mut_ptr().cast());
    type Scratches = (fused::Scratch, fused_avx2::Scratch);
    for_each_query_block(s, rows_per_block, |scratch: &mut Scratches, b, h, r0, rows| {
        let base = b * n * 3 * w + h * d;
        let block = fused::Block {
            q: &qkv[base + r0 * 3 * w..],
            k: &qkv[base + w..],
            v: &qkv[base + 2 * w..],
            rs: 3 * w,
            n,
            d,
            rows,
        };
        let o = out_ptr.at((b * n + r0) * w + h * d);
        // SAFETY: the fused kernel is available for d (asserted above); q, k and v hold their
        // rows at stride 3w inside qkv (the last ends at base + (n-1)*3w + 2w + d); this task
        // alone writes columns h*d..(h+1)*d of batch b's rows r0..r0 + rows.
        unsafe {
            if avx512 {
                fused::block(block, o, w, &mut scratch.0)
            } else {
                fused_avx2::block(block, b * s.heads + h, o, w, &mut scratch.1)
            }
        };
    });
    // SAFETY: the blocks cover every row of every head.
    unsafe { super::assume_init(out) }
}

#[cfg(not(target_arch = "x86_64"))]
fn attention_fused(qkv: &[f32], s: Shape, _avx512: bool) -> Vec<f32> {
    attention_gemm(qkv, s, false)
}

/// [`attention`] through two `gemm` products per head or block of queries.
fn attention_gemm(qkv: &[f32], s: Shape, causal: bool) -> Vec<f32> {
    let w = s.width();
    let (n, d) = (s.seq, s.head_dim);
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = super::uninit::<f32>(s.batch * n * w);
    let out_ptr = SendPtr(out.as_mut_ptr().cast());
    let blocks = query_blocks(s, causal, rayon::current_num_threads());
    let qb = n.div_ceil(blocks).max(1);
    (0..s.batch * s.heads * blocks).into_par_iter().for_each_init(
        || vec![0f32; qb * n],
        |scores, task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (b, h) = (bh / s.heads, bh % s.heads);
            let r0 = (blk * qb).min(n);
            let rows = qb.min(n - r0);
            if rows == 0 {
                return;
            }
            let scores = &mut scores[..rows * n];
            let base = b * n * 3 * w + h * d;
            let (q, k, v) = (&qkv[base + r0 * 3 * w..], &qkv[base + w..], &qkv[base + 2 * w..]);
            let rs = (3 * w) as isize;
            // SAFETY: strides and extents stay inside `qkv` / `scores` / `out` (the last row
            // of each head ends at `base + (n-1)*3w + 2w + d <= qkv.len()`).
            unsafe {
                gemm::gemm(
                    rows,
                    n,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q.as_ptr(),
                    1,
                    rs,
                    k.as_ptr(),
                    rs,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            super::math::softmax_rows(scores, n, causal);
            let o = out_ptr.at((b * n + r0) * w + h * d);
            // SAFETY: this task alone writes columns h*d..(h+1)*d of batch b's rows r0..r0+rows.
            unsafe {
                gemm::gemm(
                    rows,
                    d,
                    n,
                    o,
                    1,
                    w as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    n as isize,
                    v.as_ptr(),
                    1,
                    rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    // SAFETY: the (batch, head) tasks write every column of every row (the GEMMs do not read
    // their destination: `read_dst` is false).
    unsafe { super::assume_init(out) }
}

/// Query blocks per head: 1 when `batch x heads` already gives every thread a few tasks (or
/// under a causal mask, whose rows are numbered from the block's start), else enough for about
/// four tasks a thread, of at least 32 queries each.
fn query_blocks(s: Shape, causal: bool, threads: usize) -> usize {
    let tasks = s.batch * s.heads;
    if causal || tasks == 0 || tasks >= 4 * threads {
        return 1;
    }
    (4 * threads).div_ceil(tasks).clamp(1, (s.seq / 32).max(1))
}

/// [`attention`] with bfloat16 operands (the `--dtype bf16` path, as PyTorch's autocast runs
/// attention in bf16): on AVX512-BF16 without AMX, fused per block of queries (no causal mask,
/// even head dims); on AMX, as tile products (head dims a multiple of 32). `None` where neither
/// runs, for the caller to take the float32 path.
pub(crate) fn attention_bf16(qkv: &[f32], s: Shape, causal: bool) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        if !causal && fused_bf16::available(s.head_dim) {
            return Some(attention_bf16_fused(qkv, s));
        }
        if !amx::available(s.head_dim) {
            return None;
        }
        let w = s.width();
        let (n, d) = (s.seq, s.head_dim);
        assert_eq!(qkv.len(), s.batch * n * 3 * w, "packed qkv size");
        let mut out = super::uninit::<f32>(s.batch * n * w);
        let out_ptr = SendPtr(out.as_mut_ptr().cast());
        (0..s.batch * s.heads).into_par_iter().for_each_init(amx::AttentionScratch::default, |scratch, task| {
            let (b, h) = (task / s.heads, task % s.heads);
            let base = b * n * 3 * w + h * d;
            let (q, k, v) = (&qkv[base..], &qkv[base + w..], &qkv[base + 2 * w..]);
            // SAFETY: AMX is selected (checked above); q, k, v hold n rows of d at stride 3w
            // (the last ends at base + (n-1)*3w + 2w + d <= qkv.len()); this task alone writes
            // columns h*d..(h+1)*d of batch b's n rows of `out`.
            unsafe {
                let head = amx::Head { q, k, v, rs: 3 * w, n, d, causal };
                amx::attention_head(head, out_ptr.at(b * n * w + h * d), w, scratch)
            };
        });
        // SAFETY: the (batch, head) tasks write every column of every row.
        Some(unsafe { super::assume_init(out) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (qkv, s, causal);
        None
    }
}

/// [`attention_bf16`] on AVX512-BF16 without AMX: each head's keys and values packed once,
/// then one task per block of [`fused::BLOCK`] queries.
#[cfg(target_arch = "x86_64")]
fn attention_bf16_fused(qkv: &[f32], s: Shape) -> Vec<f32> {
    let w = s.width();
    let (n, d) = (s.seq, s.head_dim);
    assert!(fused_bf16::available(d), "bf16 fused attention selected for head dim {d}");
    assert_eq!(qkv.len(), s.batch * n * 3 * w, "packed qkv size");
    if n == 0 {
        return Vec::new();
    }
    let heads: Vec<fused_bf16::HeadOperands> = (0..s.batch * s.heads)
        .into_par_iter()
        .map(|bh| {
            let base = (bh / s.heads) * n * 3 * w + (bh % s.heads) * d;
            // SAFETY: available (asserted above); k and v hold n rows of d at stride 3w.
            unsafe { fused_bf16::pack_head(&qkv[base + w..], &qkv[base + 2 * w..], 3 * w, n, d) }
        })
        .collect();
    let mut out = super::uninit::<f32>(s.batch * n * w);
    let out_ptr = SendPtr(out.as_mut_ptr().cast());
    for_each_query_block(s, fused::BLOCK, |scratch: &mut fused_bf16::Scratch, b, h, r0, rows| {
        let q = &qkv[b * n * 3 * w + h * d + r0 * 3 * w..];
        let block = fused_bf16::Block { q, head: &heads[b * s.heads + h], rs: 3 * w, n, d, rows };
        // SAFETY: available (asserted above); the head was packed for n and d; q holds the
        // block's rows at stride 3w; this task alone writes columns h*d..(h+1)*d of batch b's
        // rows r0..r0 + rows.
        unsafe { fused_bf16::block(block, out_ptr.at((b * n + r0) * w + h * d), w, scratch) };
    });
    // SAFETY: the blocks cover every row of every head.
    unsafe { super::assume_init(out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention with the bf16 path's roundings (q * scale, k, the probabilities, v), in f64:
    /// the probabilities rounded after the softmax's division (AMX), or before it with the
    /// division applied to the output (`divide_after`, the AVX512-BF16 kernel).
    fn rounded_reference(qkv: &[f32], s: Shape, causal: bool, divide_after: bool) -> Vec<f32> {
        let r = |x: f32| crate::kernels::bf16::from_bf16(crate::kernels::bf16::to_bf16(x)) as f64;
        reference_dividing(qkv, s, causal, r, divide_after)
    }

    /// Attention in f64, each operand (q * scale, k, softmax output, v) through `r` first.
    fn reference(qkv: &[f32], s: Shape, causal: bool, r: impl Fn(f32) -> f64) -> Vec<f32> {
        reference_dividing(qkv, s, causal, r, false)
    }

    /// [`reference`], with `divide_after`: `r` takes the exponentials before the division by
    /// their sum, which then divides each output.
    fn reference_dividing(qkv: &[f32], s: Shape, causal: bool, r: impl Fn(f32) -> f64, divide_after: bool) -> Vec<f32> {
        let (n, d, w) = (s.seq, s.head_dim, s.width());
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; s.batch * n * w];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let at = |part: usize, t: usize, j: usize| qkv[b * n * 3 * w + t * 3 * w + part * w + h * d + j];
                for i in 0..n {
                    let live = if causal { i + 1 } else { n };
                    let scores: Vec<f64> =
                        (0..live).map(|t| (0..d).map(|j| r(at(0, i, j) * scale) * r(at(1, t, j))).sum()).collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for j in 0..d {
                        let o: f64 = if divide_after {
                            (0..live).map(|t| r(e[t] as f32) * r(at(2, t, j))).sum::<f64>() / sum
                        } else {
                            (0..live).map(|t| r((e[t] / sum) as f32) * r(at(2, t, j))).sum()
                        };
                        out[b * n * w + i * w + h * d + j] = o as f32;
                    }
                }
            }
        }
        out
    }

    /// A QKV buffer for `s`, uniform in `[-range, range)` (xorshift from `seed`, which advances).
    fn random_qkv(s: Shape, seed: &mut u32, range: f32) -> Vec<f32> {
        (0..s.batch * s.seq * 3 * s.width())
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                (*seed as f32 / u32::MAX as f32) * 2.0 * range - range
            })
            .collect()
    }

    /// Float32 attention against float64, with heads whole and split into query blocks (few
    /// heads at batch 1 on 2 or more threads), causal and not.
    #[test]
    fn float32_attention_matches_float64_with_query_blocks() {
        let (n, d) = (197, 64);
        let plain = |x: f32| x as f64;
        for s in
            [Shape { batch: 1, seq: n, heads: 3, head_dim: d }, Shape { batch: 2, seq: 80, heads: 1, head_dim: 32 }]
        {
            assert!(query_blocks(s, false, 2) > 1, "{s:?} is split");
            assert_eq!(query_blocks(s, true, 2), 1, "causal rows are never split");
            assert_eq!(query_blocks(Shape { heads: 12, ..s }, false, 2), 1, "12 heads are enough");
            let qkv = random_qkv(s, &mut 0x2545_f491, 1.0);
            for causal in [false, true] {
                let want = reference(&qkv, s, causal, plain);
                let got = attention_gemm(&qkv, s, causal);
                let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= 1e-5, "{s:?} causal {causal}: worst {worst}");
            }
        }
    }

    /// The fused kernel against float64 on head dims that fill whole vectors and that leave a
    /// partial one (the tiny fixtures' 16 and 20, PE's 64, G14's 96, the widest 128; 12 and 20
    /// end `P v` with an overlapping group of dims), with key counts that leave partial groups
    /// of keys and blocks of 1 to 48 queries; 4 is below the kernel's narrowest head and takes
    /// the two-product path.
    #[test]
    fn fused_attention_matches_float64() {
        let fused: Vec<Impl> =
            [Impl::Fused, Impl::FusedAvx2].into_iter().filter(|&which| available(which, 64)).collect();
        if fused.is_empty() {
            eprintln!("no fused attention runs on this CPU (no AVX2): nothing to test");
            return;
        }
        for which in fused {
            eprintln!("testing {which:?}");
            fused_matches_float64(which);
        }
    }

    fn fused_matches_float64(which: Impl) {
        let mut seed = 0x9e37_79b9u32;
        for (batch, seq, heads, head_dim) in [
            (1, 197, 3, 64),
            (2, 50, 2, 20),
            (1, 97, 4, 16),
            (1, 49, 2, 96),
            (2, 17, 1, 128),
            (1, 1, 1, 8),
            (1, 30, 2, 12),
            (1, 5, 1, 4),
            // Head dims of every remainder by the fused kernels' passes of 6 and 8 dims.
            (1, 19, 2, 7),
            (1, 23, 2, 9),
            (1, 40, 1, 11),
        ] {
            let s = Shape { batch, seq, heads, head_dim };
            let qkv = random_qkv(s, &mut seed, 1.0);
            let want = reference(&qkv, s, false, |x| x as f64);
            let got = attention_with(which, &qkv, s, false);
            let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-5, "{s:?}: worst {worst}");
            // Large scores (inputs to 8): the softmax subtracts each column's own maximum.
            let qkv = random_qkv(s, &mut seed, 8.0);
            let want = reference(&qkv, s, false, |x| x as f64);
            let got = attention_with(which, &qkv, s, false);
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-5 * scale, "{s:?} with large scores: worst {worst} of {scale}");
        }
        // No tokens: nothing to attend, and no panic on either path.
        let empty = Shape { batch: 1, seq: 0, heads: 2, head_dim: 64 };
        assert!(attention_with(which, &[], empty, false).is_empty());
        assert!(attention_bf16(&[], empty, false).is_none_or(|o| o.is_empty()));
    }

    #[test]
    fn bf16_attention_matches_the_rounded_reference() {
        // AMX runs every shape here, causal or not; AVX512-BF16 without AMX (the fused kernel)
        // every shape without a mask. Odd key counts leave a pair of keys half empty; head dims
        // of 20 and 96 a partial vector.
        let shapes = [
            Shape { batch: 2, seq: 37, heads: 2, head_dim: 64 },
            Shape { batch: 1, seq: 70, heads: 3, head_dim: 32 },
            Shape { batch: 1, seq: 5, heads: 1, head_dim: 96 },
            Shape { batch: 1, seq: 197, heads: 2, head_dim: 20 },
        ];
        #[cfg(target_arch = "x86_64")]
        let expected =
            |s: Shape, causal: bool| amx::available(s.head_dim) || (!causal && fused_bf16::available(s.head_dim));
        #[cfg(not(target_arch = "x86_64"))]
        let expected = |_: Shape, _: bool| false;
        let mut ran = 0;
        let mut seed = 0x51ed_270bu32;
        for s in shapes {
            let qkv = random_qkv(s, &mut seed, 2.0);
            for causal in [false, true] {
                let got = attention_bf16(&qkv, s, causal);
                assert_eq!(got.is_some(), expected(s, causal), "{s:?} causal {causal}: which kernel runs");
                let Some(got) = got else { continue };
                ran += 1;
                #[cfg(target_arch = "x86_64")]
                let fused = !causal && fused_bf16::available(s.head_dim);
                #[cfg(not(target_arch = "x86_64"))]
                let fused = false;
                let want = rounded_reference(&qkv, s, causal, fused);
                let (mut worst, mut total) = (0f32, 0f32);
                for (a, b) in got.iter().zip(&want) {
                    worst = worst.max((a - b).abs());
                    total += (a - b).abs();
                }
                let mean = total / got.len() as f32;
                // The same roundings, so only float32 summation order and the softmax's exp
                // differ (~1e-7 here); a probability rounded the other way would move an
                // output by ~2^-9 |v|, a layout mistake by O(1).
                assert!(worst <= 1e-3 && mean <= 1e-5, "{s:?} causal {causal}: worst {worst}, mean {mean}");
                let f32_path = attention(&qkv, s, causal);
                let drift = got.iter().zip(&f32_path).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(drift <= 5e-2, "{s:?} causal {causal}: {drift} from float32 attention");
            }
        }
        if ran == 0 {
            eprintln!("no AMX or AVX512-BF16 here: no bf16 attention kernel is used, nothing to test");
        }
    }
}
