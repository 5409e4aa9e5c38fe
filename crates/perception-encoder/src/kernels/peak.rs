//! This CPU's peak arithmetic rate on the instructions the kernels use, so that a benchmark can
//! say what share of the chip's limit a model reaches: float32 FMA, bf16 dot products
//! (`vdpbf16ps`) and int8 dot products (`vpdpbusd`), each as many independent accumulator
//! chains as hide the instruction's latency, on every thread at once. AMX tiles are not
//! measured (where a CPU has them, its bf16/int8 limit is higher than reported here).

use std::time::Instant;

/// Multiply-adds per chain per call of a measuring loop.
const ROUNDS: usize = 1 << 16;
/// Independent accumulators: enough to cover a 4-cycle latency on two ports.
const CHAINS: usize = 24;
/// The same for 256-bit registers, of which there are only 16: 24 accumulators spilled to the
/// stack and the loop measured store-to-load forwarding (half the FMA rate on Zen 4).
const CHAINS_256: usize = 12;

/// Operations per second of one instruction family, or `None` where this CPU lacks it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Peak {
    /// Threads measured on together.
    pub threads: usize,
    /// The vector unit the float32 figure was measured on (`avx512`, `avx2`, `baseline`).
    pub simd: &'static str,
    /// Float32 FMA, GFLOP/s (a multiply-add is 2).
    pub f32_gflops: f64,
    /// bf16 dot products into float32 (AVX512-BF16), GFLOP/s.
    pub bf16_gflops: Option<f64>,
    /// int8 dot products into int32 (AVX512-VNNI), GOP/s.
    pub int8_gops: Option<f64>,
    /// int16 multiply-adds into int32 (AVX2 `vpmaddwd` + `vpaddd`), GOP/s: the limit of an
    /// int8 kernel that widens both operands to int16 (this project's AVX2 kernel until
    /// 2026-12-04).
    pub int16_gops: Option<f64>,
    /// int8 products in the AVX2 int8 kernel's step (two `vpmaddubsw` added in int16 by
    /// `vpaddw`, widened by one `vpmaddwd`, `vpaddd`: 64 products on 256 bits), GOP/s: that
    /// kernel's limit, where AVX512-VNNI is absent.
    pub int8_avx2_gops: Option<f64>,
    /// bf16 tile products (AMX-BF16), GFLOP/s.
    pub amx_bf16_gflops: Option<f64>,
    /// int8 tile products (AMX-INT8), GOP/s.
    pub amx_int8_gops: Option<f64>,
}

/// Accumulator tiles the AMX loops update in turn (tiles 0-5; 6 and 7 hold the operands).
const AMX_CHAINS: usize = 6;

/// Operations of one call of `f` on one thread; `f` returns a value to keep it from being
/// optimised away.
fn rate(threads: usize, ops_per_call: f64, f: fn(usize) -> f32) -> f64 {
    let run = |calls: usize| {
        let started = Instant::now();
        // Every thread of the pool exactly once.
        let sink: f32 = rayon::broadcast(|_| (0..calls).map(|_| f(ROUNDS)).sum::<f32>()).iter().sum();
        std::hint::black_box(sink);
        started.elapsed().as_secs_f64()
    };
    run(1);
    // Long enough (~0.1 s) for clocks to settle; the best of three.
    let mut calls = 1;
    while run(calls) < 0.05 && calls < 1 << 20 {
        calls *= 2;
    }
    let best = (0..3).map(|_| run(calls)).fold(f64::INFINITY, f64::min);
    threads as f64 * calls as f64 * ops_per_call / best / 1e9
}

/// Measure on every thread of the current rayon pool at once.
pub fn measure() -> Peak {
    let threads = rayon::current_num_threads();
    let simd = super::cpu::simd();
    let (name, lanes, chains, f32_loop): (&str, f64, usize, fn(usize) -> f32) = match simd {
        #[cfg(target_arch = "x86_64")]
        super::cpu::Simd::Avx512 => ("avx512", 16.0, CHAINS, |n| unsafe { x86::fma512(n) }),
        #[cfg(target_arch = "x86_64")]
        super::cpu::Simd::Avx2 => ("avx2", 8.0, CHAINS_256, |n| unsafe { x86::fma256(n) }),
        _ => ("baseline", 1.0, CHAINS, portable_fma),
    };
    let per_call = |lanes: f64, ops_per_lane: f64| (ROUNDS * CHAINS) as f64 * lanes * ops_per_lane;
    let f32_gflops = rate(threads, (ROUNDS * chains) as f64 * lanes * 2.0, f32_loop);
    #[cfg(target_arch = "x86_64")]
    let (bf16_gflops, int8_gops) = (
        super::cpu::avx512bf16().then(|| rate(threads, per_call(16.0, 4.0), |n| unsafe { x86::dpbf16(n) })),
        super::cpu::avx512vnni().then(|| rate(threads, per_call(16.0, 8.0), |n| unsafe { x86::dpbusd(n) })),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (bf16_gflops, int8_gops) = (None, None);
    // A vpmaddwd + vpaddd pair on 256 bits: 16 multiply-adds.
    #[cfg(target_arch = "x86_64")]
    let int16_gops = super::cpu::avx2()
        .then(|| rate(threads, (ROUNDS * CHAINS_256) as f64 * 16.0 * 2.0, |n| unsafe { x86::madd256(n) }));
    #[cfg(not(target_arch = "x86_64"))]
    let int16_gops = None;
    #[cfg(target_arch = "x86_64")]
    let int8_avx2_gops = super::cpu::avx2()
        .then(|| rate(threads, (ROUNDS * CHAINS_256) as f64 * 64.0 * 2.0, |n| unsafe { x86::maddubs_pairs256(n) }));
    #[cfg(not(target_arch = "x86_64"))]
    let int8_avx2_gops = None;
    // One tile product: 16 x 16 outputs, each a sum of 32 bf16 or 64 int8 products.
    let per_tile_call = |products: f64| (ROUNDS * AMX_CHAINS) as f64 * 256.0 * products * 2.0;
    #[cfg(target_arch = "x86_64")]
    let (amx_bf16_gflops, amx_int8_gops) = (
        super::cpu::amx_bf16().then(|| rate(threads, per_tile_call(32.0), |n| unsafe { x86_amx::amx_bf16(n) })),
        super::cpu::amx_int8().then(|| rate(threads, per_tile_call(64.0), |n| unsafe { x86_amx::amx_int8(n) })),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (amx_bf16_gflops, amx_int8_gops) = (None, None);
    Peak {
        threads,
        simd: name,
        f32_gflops,
        bf16_gflops,
        int8_gops,
        int16_gops,
        int8_avx2_gops,
        amx_bf16_gflops,
        amx_int8_gops,
    }
}

/// Scalar multiply-adds (what a CPU without the vector kernels does).
fn portable_fma(n: usize) -> f32 {
    // Distinct starting values, so the compiler cannot merge the chains.
    let mut acc: [f32; CHAINS] = std::hint::black_box(std::array::from_fn(|i| i as f32));
    let x = std::hint::black_box(0.999_f32);
    for _ in 0..n {
        for a in &mut acc {
            *a = *a * x + 1e-3;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{CHAINS, CHAINS_256};

    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(n: usize) -> f32 {
        let mut acc: [__m512; CHAINS] = std::hint::black_box(std::array::from_fn(|i| _mm512_set1_ps(i as f32)));
        let (x, y) = (_mm512_set1_ps(std::hint::black_box(0.999)), _mm512_set1_ps(1e-3));
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(n: usize) -> f32 {
        let mut acc: [__m256; CHAINS_256] = std::hint::black_box(std::array::from_fn(|i| _mm256_set1_ps(i as f32)));
        let (x, y) = (_mm256_set1_ps(std::hint::black_box(0.999)), _mm256_set1_ps(1e-3));
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let mut out = [0f32; 8];
        acc.iter()
            .map(|&a| {
                _mm256_storeu_ps(out.as_mut_ptr(), a);
                out.iter().sum::<f32>()
            })
            .sum()
    }

    /// Each lane of each chain adds the sum of its own two int16 halves to itself (wrapping):
    /// the multiply reads the accumulator, so it cannot be hoisted out of the loop.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn madd256(n: usize) -> f32 {
        let mut acc: [__m256i; CHAINS_256] =
            std::hint::black_box(std::array::from_fn(|i| _mm256_set1_epi32(i as i32 * 0x1_0001)));
        let ones = _mm256_set1_epi16(std::hint::black_box(1));
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(*a, ones));
            }
        }
        lane_sum(&acc)
    }

    /// Every int32 lane of `acc` as float32, summed register by register.
    #[target_feature(enable = "avx2")]
    unsafe fn lane_sum(acc: &[__m256i]) -> f32 {
        let mut out = [0i32; 8];
        acc.iter()
            .map(|&a| {
                _mm256_storeu_si256(out.as_mut_ptr().cast(), a);
                out.iter().map(|&x| x as f32).sum::<f32>()
            })
            .sum()
    }

    /// Each chain's four bytes per lane times ones, twice (`vpmaddubsw` into pair sums, added by
    /// `vpaddw`), widened (`vpmaddwd`) and added to itself: `a += 2 (b0 + b1 + b2 + b3)`, the
    /// bytes read as unsigned; no pair sum comes near saturation.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn maddubs_pairs256(n: usize) -> f32 {
        let mut acc: [__m256i; CHAINS_256] =
            std::hint::black_box(std::array::from_fn(|i| _mm256_set1_epi32(i as i32 * 0x0101)));
        let (w0, w1) = (_mm256_set1_epi8(std::hint::black_box(1)), _mm256_set1_epi8(std::hint::black_box(1)));
        let ones = _mm256_set1_epi16(std::hint::black_box(1));
        for _ in 0..n {
            for a in &mut acc {
                let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(*a, w0), _mm256_maddubs_epi16(*a, w1));
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, ones));
            }
        }
        lane_sum(&acc)
    }

    /// # Safety
    /// The CPU has AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub(super) unsafe fn dpbf16(n: usize) -> f32 {
        let mut acc: [__m512; CHAINS] = std::hint::black_box(std::array::from_fn(|i| _mm512_set1_ps(i as f32)));
        let v = _mm512_cvtne2ps_pbh(_mm512_set1_ps(std::hint::black_box(1.0)), _mm512_set1_ps(1.0));
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm512_dpbf16_ps(*a, v, v);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    /// # Safety
    /// The CPU has AVX512-VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn dpbusd(n: usize) -> f32 {
        let mut acc: [__m512i; CHAINS] = std::hint::black_box(std::array::from_fn(|i| _mm512_set1_epi32(i as i32)));
        let (u, s) = (_mm512_set1_epi8(std::hint::black_box(1)), _mm512_set1_epi8(1));
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm512_dpbusd_epi32(*a, u, s);
            }
        }
        acc.iter().map(|&a| _mm512_reduce_add_epi32(a) as f32).sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_amx {
    use std::arch::asm;

    /// `n` (at least 1) rounds of a tile product into each of the six accumulator tiles, from
    /// operand tiles of ones; returns the sum of tile 0.
    macro_rules! tile_loop {
        ($name:ident, $insn:literal, $one:expr, $elem:ty, $out:ty) => {
            /// # Safety
            /// The CPU has this AMX instruction set and this process may use the tile state.
            pub(super) unsafe fn $name(n: usize) -> f32 {
                let ones = [$one; 1024 / std::mem::size_of::<$elem>()];
                let mut out = [<$out>::default(); 256];
                crate::kernels::amx::load_config();
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    "tilezero tmm4",
                    "tilezero tmm5",
                    "tileloadd tmm6, [{a} + {stride} * 1]",
                    "tileloadd tmm7, [{a} + {stride} * 1]",
                    "2:",
                    concat!($insn, " tmm0, tmm6, tmm7"),
                    concat!($insn, " tmm1, tmm6, tmm7"),
                    concat!($insn, " tmm2, tmm6, tmm7"),
                    concat!($insn, " tmm3, tmm6, tmm7"),
                    concat!($insn, " tmm4, tmm6, tmm7"),
                    concat!($insn, " tmm5, tmm6, tmm7"),
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{out} + {stride} * 1], tmm0",
                    a = in(reg) ones.as_ptr(),
                    out = in(reg) out.as_mut_ptr(),
                    stride = in(reg) 64usize,
                    n = inout(reg) n.max(1) => _,
                    options(nostack),
                );
                crate::kernels::amx::release();
                out.iter().map(|&x| x as f32).sum()
            }
        };
    }
    // bf16 1.0 is 0x3f80.
    tile_loop!(amx_bf16, "tdpbf16ps", 0x3f80u16, u16, f32);
    tile_loop!(amx_int8, "tdpbssd", 1i8, i8, i32);
}

#[cfg(test)]
mod tests {
    /// The recurrence every float loop runs, summed over its chains, in float64.
    fn recurrence(chains: usize, n: usize) -> f64 {
        (0..chains)
            .map(|i| {
                let mut a = i as f64;
                for _ in 0..n {
                    a = a * 0.999 + 1e-3;
                }
                a
            })
            .sum()
    }

    /// Each loop does the arithmetic it is counted for.
    #[test]
    fn portable_loop_computes_its_recurrence() {
        let (got, want) = (super::portable_fma(100) as f64, recurrence(super::CHAINS, 100));
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_loops_compute_their_recurrences() {
        use crate::kernels::cpu;
        let starts = 16.0 * (0..super::CHAINS).sum::<usize>() as f64;
        if cpu::simd() == cpu::Simd::Avx512 {
            let (got, want) = (unsafe { super::x86::fma512(100) } as f64, 16.0 * recurrence(super::CHAINS, 100));
            assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
        }
        if cpu::simd() != cpu::Simd::Baseline {
            let (got, want) = (unsafe { super::x86::fma256(100) } as f64, 8.0 * recurrence(super::CHAINS_256, 100));
            assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
        }
        if cpu::avx2() {
            // Summed in the loop's own order, so the float32 total is the same.
            let want: f32 = (0..super::CHAINS_256)
                .map(|i| {
                    let mut a = i as i32 * 0x1_0001;
                    for _ in 0..100 {
                        a = a.wrapping_add((a as i16) as i32 + ((a >> 16) as i16) as i32);
                    }
                    (0..8).map(|_| a as f32).sum::<f32>()
                })
                .sum();
            assert_eq!(unsafe { super::x86::madd256(100) }, want);
            let want: f32 = (0..super::CHAINS_256)
                .map(|i| {
                    let mut a = i as i32 * 0x0101;
                    for _ in 0..100 {
                        a = a.wrapping_add(2 * a.to_le_bytes().iter().map(|&b| b as i32).sum::<i32>());
                    }
                    (0..8).map(|_| a as f32).sum::<f32>()
                })
                .sum();
            assert_eq!(unsafe { super::x86::maddubs_pairs256(100) }, want);
        }
        if cpu::avx512vnni() {
            // Each step adds 4 products of 1 x 1 to each of 16 lanes of 24 chains.
            let want = starts + (24 * 16 * 4 * 100) as f64;
            assert_eq!(unsafe { super::x86::dpbusd(100) } as f64, want);
        }
        if cpu::avx512bf16() {
            // Each step adds 2 products of 1 x 1 to each of 16 lanes of 24 chains.
            let want = starts + (24 * 16 * 2 * 100) as f64;
            assert_eq!(unsafe { super::x86::dpbf16(100) } as f64, want);
        }
        // Each round adds 32 (bf16) or 64 (int8) products of 1 x 1 to each of 256 outputs.
        if cpu::amx_bf16() {
            assert_eq!(unsafe { super::x86_amx::amx_bf16(100) }, (256 * 32 * 100) as f32);
        }
        if cpu::amx_int8() {
            assert_eq!(unsafe { super::x86_amx::amx_int8(100) }, (256 * 64 * 100) as f32);
        }
    }
}
