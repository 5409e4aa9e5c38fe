//! `y = x W^T + b` with bfloat16 weights and float32 accumulation (the `--dtype bf16` path).
//!
//! The weight is packed once at load ([`super::panels`]): columns in panels of 32, and within a
//! panel, for each pair of input rows `(k, k+1)`, the 32 columns' pairs side by side, the
//! operand layout of both AVX512-BF16's `vdpbf16ps` and AMX's `tdpbf16ps`.
//!
//! Activations are rounded to bfloat16 (round to nearest even) as they enter the product;
//! products are exact in float32 and summed in float32, as PyTorch's bf16 autocast does. On AMX
//! two more paths keep bf16 operands: the MLP ([`mlp`]: GELU and rounding in the first
//! product's epilogue) and attention (`attention::amx::attention_head`: `q k^T` and `P v`);
//! on AVX512-BF16 without AMX, attention keeps them too (`attention::fused_bf16`).
//!
//! Four implementations, chosen at run time (`PE_BF16_KERNEL=amx|avx512|avx2|portable` forces one):
//! - AMX tiles (Sapphire Rapids and later), when the CPU has AMX-BF16 and Linux grants the
//!   tile state to the process;
//! - AVX512-BF16 `vdpbf16ps` (Zen 4, Cooper Lake, Sapphire Rapids);
//! - AVX2: the bf16 weight widened to float32 in registers as it is read, float32 FMAs;
//! - portable: the weight widened to float32 one panel at a time and multiplied by `gemm`'s
//!   float32 micro-kernel; on CPUs that run 256-bit instructions as two halves (Zen, Zen+) it
//!   comes before the AVX2 kernel, whose widening in registers takes the FMA pipes' slots there
//!   (55 vs 69 GFLOP/s on B16's shapes on a Zen 1 EPYC).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

use super::activations::Activations;
use super::dense::Epilogue;
use super::panels::{per_column, Panels, Widened, PANEL};

/// `K` is padded to this (one AMX tile row of bf16).
const K_ALIGN: usize = 32;

/// A weight `(n, k)` (PyTorch's `(out, in)`) in bfloat16, packed for the kernels (pairs of
/// input rows; see [`super::panels`]).
#[derive(Debug, Clone)]
pub(crate) struct PackedBf16 {
    w: Panels<u16>,
    /// Bias padded to a whole panel (zeros when the layer has none).
    bias: Vec<f32>,
}

impl std::ops::Deref for PackedBf16 {
    type Target = Panels<u16>;
    fn deref(&self) -> &Panels<u16> {
        &self.w
    }
}

/// Round to nearest even, as `vcvtneps2bf16` does (NaN stays NaN).
#[inline]
pub(crate) fn to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[inline]
pub(crate) fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl PackedBf16 {
    /// Pack `w`, row-major `(n, k)`, and the optional bias `(n)`.
    pub(crate) fn pack(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        PackedBf16 { w: Panels::pack::<2>(w, n, k, K_ALIGN, |_, v| to_bf16(v)), bias: per_column(bias, n) }
    }

    /// Input features.
    pub(crate) fn in_dim(&self) -> usize {
        self.k
    }

    /// Output features.
    pub(crate) fn out_dim(&self) -> usize {
        self.n
    }

    /// The weight back as float32 `(k, n)` (`W^T`), bf16-rounded values.
    #[cfg(test)]
    fn unpack_t(&self) -> Vec<f32> {
        self.w.unpack_t(from_bf16)
    }
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Impl {
    Amx,
    Avx512,
    Avx2,
    Portable,
}

/// Every implementation, fastest first, with whether it runs here.
pub(crate) fn candidates() -> [super::Candidate<Impl>; 4] {
    let avx2 = ("avx2", Impl::Avx2, crate::kernels::cpu::avx2());
    let portable = ("portable", Impl::Portable, true);
    // Where 256-bit instructions run as two halves, the AVX2 kernel's widening takes the FMA
    // pipes' slots and `gemm` on widened panels is the faster.
    let (third, fourth) = if crate::kernels::cpu::halves_256() { (portable, avx2) } else { (avx2, portable) };
    [
        ("amx", Impl::Amx, crate::kernels::cpu::amx_bf16()),
        ("avx512", Impl::Avx512, crate::kernels::cpu::avx512bf16()),
        third,
        fourth,
    ]
}

/// The implementation for this process: the fastest the CPU (and OS) offer, unless
/// `PE_BF16_KERNEL` names another available one.
pub(crate) fn selected() -> Impl {
    static SEL: std::sync::OnceLock<Impl> = std::sync::OnceLock::new();
    *SEL.get_or_init(|| {
        let choice = super::choose("PE_BF16_KERNEL", &candidates());
        tracing::debug!("bf16 matmul kernel: {choice:?}");
        choice
    })
}

/// `x` `(m, k)` float32 row-major (each row through its LayerNorm first, when it has one)
/// times the packed weight: `(m, n)` float32.
pub(crate) fn matmul(x: Activations, m: usize, w: &PackedBf16) -> Vec<f32> {
    matmul_with(selected(), x, m, w)
}

pub(crate) fn matmul_with(which: Impl, x: Activations, m: usize, w: &PackedBf16) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "input size");
    match which {
        #[cfg(target_arch = "x86_64")]
        Impl::Amx => amx::matmul(x, m, w),
        #[cfg(target_arch = "x86_64")]
        Impl::Avx512 => avx512::matmul(x, m, w),
        #[cfg(target_arch = "x86_64")]
        Impl::Avx2 => avx2::matmul(x, m, w),
        _ => portable(x, m, w, Epilogue::None),
    }
}

/// `gelu(x W1^T + b1) W2^T + b2`, an MLP whose hidden activations are rounded to bf16 as the
/// second product takes them. On AMX and AVX512-BF16 the first product's epilogue applies the
/// GELU and writes the bf16 operand of the second directly; the float32 hidden layer (the
/// largest activation of a block) is never stored. Elsewhere: the two products with GELU in
/// place between them. Both give the same numbers.
pub(crate) fn mlp(x: Activations, m: usize, fc: &PackedBf16, proj: &PackedBf16) -> Vec<f32> {
    assert_eq!(fc.n, proj.k, "MLP hidden sizes");
    #[cfg(target_arch = "x86_64")]
    if selected() == Impl::Amx && fc.n.is_multiple_of(PANEL) {
        assert_eq!(x.len(), m * fc.k, "input size");
        let a = round_rows(x, m, fc.k, fc.k_pad, m.div_ceil(super::amx::MB) * super::amx::MB);
        let h = amx::matmul_gelu_rows(&a, m, fc);
        return amx::matmul_rows(&h, m, proj);
    }
    #[cfg(target_arch = "x86_64")]
    if selected() == Impl::Avx512 && fc.n.is_multiple_of(PANEL) {
        assert_eq!(x.len(), m * fc.k, "input size");
        // The hidden rows are as wide as the second product's operand rows.
        assert_eq!(proj.k_pad, fc.n, "MLP hidden padding");
        let h = avx512::matmul_gelu_rows(&avx512::operand(x, m, fc), m, fc);
        return avx512::matmul_rows(&h, m, proj);
    }
    let h = matmul_gelu(x, m, fc);
    matmul(Activations::plain(&h), m, proj)
}

/// `gelu(x W^T + b)`: on the widened panels (the portable path) the GELU runs in the
/// product's epilogue, elsewhere in a pass of its own; the same bits either way.
pub(crate) fn matmul_gelu(x: Activations, m: usize, w: &PackedBf16) -> Vec<f32> {
    if selected() == Impl::Portable {
        assert_eq!(x.len(), m * w.k, "input size");
        return portable(x, m, w, Epilogue::Gelu(None));
    }
    let mut y = matmul(x, m, w);
    super::math::gelu_in_place(&mut y);
    y
}

/// Rows of `x` rounded to bf16, `k_pad` wide (zero padded: a row stride of at least `k`),
/// `rows_pad` rows (zero rows after `m`).
pub(crate) fn round_rows(x: Activations, m: usize, k: usize, k_pad: usize, rows_pad: usize) -> Vec<u16> {
    // Written in place without a zero fill first: a pass over megabytes per product saved.
    let mut a = super::uninit::<u16>(rows_pad * k_pad);
    a.par_chunks_mut(k_pad).enumerate().for_each_init(Vec::new, |scratch, (i, row)| {
        let zero = std::mem::MaybeUninit::new(0);
        if i >= m {
            row.fill(zero);
            return;
        }
        row[k..].fill(zero);
        let (src, dst) = (x.row(i, k, scratch), row.as_mut_ptr().cast::<u16>());
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::avx512bf16() {
            // SAFETY: the CPU has AVX512-BF16 (checked above); `dst` has room for k values.
            unsafe { avx512::round_row(src, dst) };
            return;
        }
        for (j, &v) in src.iter().enumerate() {
            // SAFETY: j < k <= the row's length.
            unsafe { dst.add(j).write(to_bf16(v)) };
        }
    });
    // SAFETY: every row was written in full above.
    unsafe { super::assume_init(a) }
}

/// Any CPU: the activations rounded to bf16 (kept as float32) and `gemm`'s float32 micro-kernel
/// on the weight widened to float32 panels as the tasks come to them ([`Widened`]). The
/// arithmetic is the other kernels' (exact products, float32 sums); the weight in memory stays
/// bf16, and the widened panel a task works on is one of `dense`'s, in cache.
fn portable(x: Activations, m: usize, w: &PackedBf16, epilogue: Epilogue) -> Vec<f32> {
    let k = w.k;
    let mut a = super::uninit::<f32>(m * k);
    a.par_chunks_mut(k.max(1)).enumerate().for_each_init(Vec::new, |scratch, (i, row)| {
        let (src, dst) = (x.row(i, k, scratch), row.as_mut_ptr().cast::<f32>());
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::avx2() {
            // SAFETY: the CPU has AVX2 (checked above); the row has room for k values.
            unsafe { avx2::round_row(src, dst) };
            return;
        }
        for (j, &v) in src.iter().enumerate() {
            // SAFETY: j < k, the row's length.
            unsafe { dst.add(j).write(from_bf16(to_bf16(v))) };
        }
    });
    // SAFETY: every row was written in full above.
    let a = unsafe { super::assume_init(a) };
    super::dense::matmul_then(&a, m, &Widened { w: &w.w, f: from_bf16 }, Some(&w.bias), epilogue)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, bias: &[f32]) -> Vec<f32> {
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|kk| r(x[i * k + kk]) * r(w[j * k + kk])).sum();
                y[i * n + j] = (s + bias[j] as f64) as f32;
            }
        }
        y
    }

    fn check(which: Impl, m: usize, n: usize, k: usize) {
        let mut seed = 0x9e37_79b9u32 ^ (m * 131 + n * 7 + k) as u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let packed = PackedBf16::pack(&w, n, k, Some(&bias));
        let got = matmul_with(which, Activations::plain(&x), m, &packed);
        let want = reference(&x, m, &w, n, k, &bias);
        let err = got.iter().zip(&want).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
        // float32 sums of k exact products: error ~ k * 2^-24 * |terms|.
        assert!(err <= 1e-5 * k as f32, "{which:?} m={m} n={n} k={k}: max error {err}");
    }

    #[test]
    fn every_available_implementation_matches_the_rounded_reference() {
        let mut impls = vec![Impl::Portable];
        if crate::kernels::cpu::avx512bf16() {
            impls.push(Impl::Avx512);
        }
        if crate::kernels::cpu::amx_bf16() {
            impls.push(Impl::Amx);
        }
        if crate::kernels::cpu::avx2() {
            impls.push(Impl::Avx2);
        }
        eprintln!("testing {impls:?}");
        for which in impls {
            for (m, n, k) in
                [(1, 32, 32), (5, 40, 70), (33, 64, 96), (200, 96, 768), (13, 1024, 64), (130, 17, 33), (29, 40, 512)]
            {
                check(which, m, n, k);
            }
        }
    }

    #[test]
    fn the_fused_mlp_equals_the_two_products_with_gelu_between() {
        let mut seed = 0x1234_5678u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        for (m, width, hidden) in [(1, 40, 64), (37, 96, 128), (70, 64, 256), (29, 64, 512)] {
            let x: Vec<f32> = (0..m * width).map(|_| rnd()).collect();
            let w1: Vec<f32> = (0..hidden * width).map(|_| rnd()).collect();
            let b1: Vec<f32> = (0..hidden).map(|_| rnd()).collect();
            let w2: Vec<f32> = (0..width * hidden).map(|_| rnd() * 0.1).collect();
            let b2: Vec<f32> = (0..width).map(|_| rnd()).collect();
            let (fc, proj) =
                (PackedBf16::pack(&w1, hidden, width, Some(&b1)), PackedBf16::pack(&w2, width, hidden, Some(&b2)));
            let mut h = matmul(Activations::plain(&x), m, &fc);
            crate::kernels::math::gelu_in_place(&mut h);
            let want = matmul(Activations::plain(&h), m, &proj);
            assert_eq!(
                mlp(Activations::plain(&x), m, &fc, &proj),
                want,
                "m={m} width={width} hidden={hidden} ({:?})",
                selected()
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn softmax_to_bf16_matches_the_f64_softmax_at_every_length() {
        if !crate::kernels::cpu::avx512bf16() {
            eprintln!("skipped: no AVX512-BF16 here");
            return;
        }
        for n in [1, 5, 16, 17, 31, 197, 257] {
            let s0: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
            let max = s0.iter().cloned().fold(f64::NEG_INFINITY, |m, v| m.max(v as f64));
            let e: Vec<f64> = s0.iter().map(|&v| (v as f64 - max).exp()).collect();
            let total: f64 = e.iter().sum();
            let (mut s, mut got) = (s0.clone(), vec![0u16; n]);
            // SAFETY: the CPU has AVX512-BF16 (checked above); the lengths match.
            unsafe { avx512::softmax_to_bf16(&mut s, &mut got) };
            for (i, (&g, &e)) in got.iter().zip(&e).enumerate() {
                let want = e / total;
                // One bf16 rounding of a value within a few float32 ulp of the true one.
                assert!(
                    (from_bf16(g) as f64 - want).abs() <= want * 2f64.powi(-8) + 1e-30,
                    "n={n} [{i}]: {} vs {want}",
                    from_bf16(g)
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_to_bf16_gives_the_rounded_exponentials_and_their_inverse_sum_at_every_length() {
        if !crate::kernels::cpu::avx512bf16() {
            eprintln!("skipped: no AVX512-BF16 here");
            return;
        }
        for (n, spread) in [1, 5, 16, 17, 31, 197, 257, 577].into_iter().flat_map(|n| [(n, 0.7), (n, 9.0)]) {
            // Large negative scores too: the largest must still give exp(0) = 1. A spread of 9
            // puts some scores ~200 below the largest, where e^x underflows float32.
            let s: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) * spread - 300.0).collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, |m, v| m.max(v as f64));
            let e: Vec<f64> = s.iter().map(|&v| (v as f64 - max).exp()).collect();
            let total: f64 = e.iter().sum();
            let mut got = vec![0u16; n];
            // SAFETY: the CPU has AVX512-BF16 (checked above); the lengths match and n > 0.
            let inv = unsafe { avx512::exp_to_bf16(&s, &mut got) } as f64;
            assert!((inv - 1.0 / total).abs() <= 1e-6 / total, "n={n}: 1/sum {inv} vs {}", 1.0 / total);
            for (i, (&g, &e)) in got.iter().zip(&e).enumerate() {
                assert!(
                    (from_bf16(g) as f64 - e).abs() <= e * 2f64.powi(-8) + 1e-30,
                    "n={n} [{i}]: {} vs {e}",
                    from_bf16(g)
                );
            }
        }
    }

    #[test]
    fn unpacking_gives_the_rounded_weight() {
        let w: Vec<f32> = (0..6 * 5).map(|i| i as f32 * 0.3 - 4.0).collect();
        let p = PackedBf16::pack(&w, 6, 5, None);
        let wt = p.unpack_t();
        for j in 0..6 {
            for kk in 0..5 {
                assert_eq!(wt[kk * 6 + j], from_bf16(to_bf16(w[j * 5 + kk])));
            }
        }
    }
}
