//! Multi-head self-attention over a packed QKV buffer `(batch, seq, 3 * width)` (rows q, k, v
//! per token, heads contiguous within each), with RoPE applied in place and heads written
//! straight into the merged `(batch, seq, width)` layout.
//!
//! Work is split over `batch x heads` with rayon; each task runs two single-threaded GEMMs
//! (`S = q k^T * scale`, `O = softmax(S) v`). Splitting each small head matrix across threads,
//! as a generic batched matmul does, leaves the cores mostly idle.

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
/// `(seq, rot_dim)` with each angle repeated for its pair, as the reference's table.
pub(crate) fn rope_in_place(qkv: &mut [f32], s: Shape, cos: &[f32], sin: &[f32], rot_dim: usize) {
    let w = s.width();
    qkv.par_chunks_mut(3 * w).enumerate().for_each(|(row, token)| {
        let pos = row % s.seq;
        let (c, sn) = (&cos[pos * rot_dim..(pos + 1) * rot_dim], &sin[pos * rot_dim..(pos + 1) * rot_dim]);
        for part in 0..2 {
            for h in 0..s.heads {
                let x = &mut token[part * w + h * s.head_dim..part * w + h * s.head_dim + rot_dim];
                for i in (0..rot_dim).step_by(2) {
                    let (a, b) = (x[i], x[i + 1]);
                    x[i] = a * c[i] - b * sn[i];
                    x[i + 1] = b * c[i + 1] + a * sn[i + 1];
                }
            }
        }
    });
}

/// Softmax attention with scale `head_dim^-0.5`; `causal` masks keys after each query.
/// Returns `(batch, seq, width)` with heads merged.
pub(crate) fn attention(qkv: &[f32], s: Shape, causal: bool) -> Vec<f32> {
    let w = s.width();
    let (n, d) = (s.seq, s.head_dim);
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = super::uninit_f32(s.batch * n * w);
    let out_ptr = SendPtr(out.as_mut_ptr().cast());
    (0..s.batch * s.heads).into_par_iter().for_each_init(
        || vec![0f32; n * n],
        |scores, task| {
            let (b, h) = (task / s.heads, task % s.heads);
            let base = b * n * 3 * w + h * d;
            let (q, k, v) = (&qkv[base..], &qkv[base + w..], &qkv[base + 2 * w..]);
            let rs = (3 * w) as isize;
            // SAFETY: strides and extents stay inside `qkv` / `scores` / `out` (the last row
            // of each head ends at `base + (n-1)*3w + 2w + d <= qkv.len()`).
            unsafe {
                gemm::gemm(
                    n,
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
            let o = out_ptr.at(b * n * w + h * d);
            // SAFETY: this task alone writes columns h*d..(h+1)*d of batch b's rows.
            unsafe {
                gemm::gemm(
                    n,
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
