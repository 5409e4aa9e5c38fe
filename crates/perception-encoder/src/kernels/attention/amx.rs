//! One attention head with bfloat16 operands on AMX tiles (the bf16 path's attention, as
//! PyTorch's autocast runs it): `q k^T` and `P v` as AMX block products, the softmax in float32.

use crate::kernels::amx::{load_config, release, MB};
use crate::kernels::bf16::amx::{block, block_ldc};
use crate::kernels::bf16::avx512::{round_row, softmax_to_bf16};
use crate::kernels::panels::PANEL;

/// Whether [`attention_head`] runs here for heads of `head_dim`: the AMX bf16 kernel is the one
/// selected, and the head is whole tiles deep.
pub(crate) fn available(head_dim: usize) -> bool {
    crate::kernels::bf16::selected() == crate::kernels::bf16::Impl::Amx
        && head_dim.is_multiple_of(PANEL)
        && head_dim > 0
}

/// One (image, head) of attention: `q`, `k`, `v` are `n` rows of `d` (a multiple of 32)
/// with row stride `rs`.
pub(crate) struct Head<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub rs: usize,
    pub n: usize,
    pub d: usize,
    pub causal: bool,
}

/// Softmax attention for one head on AMX: `S = bf16(q * scale) bf16(k)^T` and
/// `O = bf16(softmax(S)) bf16(v)`, float32 sums, the softmax in float32. `out` gets `n`
/// rows of `d` with stride `ldo`. `scratch` is reused between calls.
///
/// # Safety
/// AMX and AVX512-BF16 available and permitted; the slices hold what [`Head`] describes;
/// `out` is writable for those rows and columns and no other thread writes them.
pub(crate) unsafe fn attention_head(head: Head, out: *mut f32, ldo: usize, scratch: &mut AttentionScratch) {
    let Head { q, k, v, rs, n, d, causal } = head;
    let np = n.div_ceil(MB) * MB;
    let scale = 1.0 / (d as f32).sqrt();
    scratch.resize(np, d);
    let AttentionScratch { qa, kb, vb, scores, pa, row, qs, c } = scratch;
    // Padding rows and keys are never cleared: results for padding rows are dropped and
    // padding keys' scores are never read. Only v's padding keys meet real (zero)
    // probabilities, so they must be finite: they are zeroed below.
    for r in 0..n {
        for (t, &x) in qs.iter_mut().zip(&q[r * rs..r * rs + d]) {
            *t = x * scale;
        }
        round_row(qs, qa[r * d..(r + 1) * d].as_mut_ptr());
    }
    // k rounded into rows of d / 2 bf16 pairs (as u32), then each 16 keys x 16 pairs block
    // transposed into the packed B layout: panel of 32 keys, for each pair of dims the
    // 32 keys side by side.
    let kr = &mut row[d..];
    for key in 0..n {
        round_row(&k[key * rs..key * rs + d], kr[key * d..].as_mut_ptr().cast());
    }
    let (kr32, kb32) = (kr.as_ptr().cast::<u32>(), kb.as_mut_ptr().cast::<u32>());
    for key0 in (0..np).step_by(16) {
        for kp0 in (0..d / 2).step_by(16) {
            // Source: keys key0.., pairs kp0.. (stride d / 2); destination: panel
            // key0 / 32, rows kp0.. of 32 keys, columns key0 % 32.. .
            crate::kernels::transpose_tile16_bits(
                kr32.add(key0 * d / 2 + kp0),
                d / 2,
                kb32.add((key0 / PANEL) * (d / 2) * PANEL + kp0 * PANEL + key0 % PANEL),
                PANEL,
            );
        }
    }
    // v as the packed B operand of P v: panels of 32 dims, for each pair of keys the 32
    // dims' pairs side by side (one u32 each).
    let vb32 = vb.as_mut_ptr().cast::<u32>();
    let (vr0, vr1) = row.split_at_mut(d);
    for kp in 0..np / 2 {
        let (k0, k1) = (2 * kp, 2 * kp + 1);
        let round_or_zero = |key: usize, dst: &mut [u16]| {
            if key < n {
                round_row(&v[key * rs..key * rs + d], dst[..d].as_mut_ptr());
            } else {
                dst[..d].fill(0);
            }
        };
        round_or_zero(k0, vr0);
        round_or_zero(k1, vr1);
        for j in 0..d {
            *vb32.add((j / PANEL) * (np / 2) * PANEL + kp * PANEL + j % PANEL) = vr0[j] as u32 | (vr1[j] as u32) << 16;
        }
    }
    load_config();
    for rb in 0..np / MB {
        // Causal: key panels wholly after the block's last query are masked anyway.
        let panels = if causal { (rb * MB + MB).min(np) / PANEL } else { np / PANEL };
        for p in 0..panels {
            block_ldc(
                qa[rb * MB * d..].as_ptr(),
                d,
                kb[p * d * PANEL..].as_ptr(),
                d,
                scores[rb * MB * np + p * PANEL..].as_mut_ptr(),
                np,
            );
        }
    }
    for r in 0..n {
        let live = if causal { r + 1 } else { n };
        softmax_to_bf16(&mut scores[r * np..r * np + live], &mut pa[r * np..r * np + live]);
        pa[r * np + live..(r + 1) * np].fill(0);
    }
    for rb in 0..np / MB {
        for p in 0..d / PANEL {
            block(pa[rb * MB * np..].as_ptr(), np, vb[p * np * PANEL..].as_ptr(), np, c.as_mut_ptr());
            for r in 0..MB.min(n.saturating_sub(rb * MB)) {
                let dst = out.add((rb * MB + r) * ldo + p * PANEL);
                std::ptr::copy_nonoverlapping(c[r * PANEL..].as_ptr(), dst, PANEL);
            }
        }
    }
    release();
}

/// Buffers of [`attention_head`], kept per worker thread.
#[derive(Default)]
pub(crate) struct AttentionScratch {
    qa: Vec<u16>,
    kb: Vec<u16>,
    vb: Vec<u16>,
    scores: Vec<f32>,
    pa: Vec<u16>,
    row: Vec<u16>,
    qs: Vec<f32>,
    c: Vec<f32>,
}

impl AttentionScratch {
    /// Sized for `np` (padded) tokens of `d` dims. Contents are left from the last call
    /// (new space is zero): every value read is written first, or finite and multiplied
    /// by zero (see [`attention_head`]).
    fn resize(&mut self, np: usize, d: usize) {
        self.qa.resize(np * d, 0);
        self.kb.resize(np * d, 0);
        self.vb.resize(np * d, 0);
        self.pa.resize(np * np, 0);
        // Two rows of d, then k rounded (np rows of d).
        self.row.resize(2 * d + np * d, 0);
        self.scores.resize(np * np, 0.0);
        self.qs.resize(d, 0.0);
        self.c.resize(MB * PANEL, 0.0);
    }
}
