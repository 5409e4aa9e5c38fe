//! CPU kernels for the hot paths, used for float32 on the CPU; other devices and dtypes take
//! candle's generic operations. Each kernel has a plain reference (candle's ops) that the
//! parity tests hold it to.

pub(crate) mod attention;
pub(crate) mod bf16;
pub(crate) mod int8;
pub(crate) mod math;
pub(crate) mod panels;
pub(crate) mod skinny;

/// Whether the CPU kernels are in use for `x`: float32 on the CPU, unless `PE_KERNELS=generic`
/// asks for candle's generic operations everywhere (for comparison and debugging).
pub(crate) fn enabled_for(x: &candle_core::Tensor) -> bool {
    enabled() && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// False when `PE_KERNELS=generic` asks for candle's generic operations everywhere.
pub(crate) fn enabled() -> bool {
    static GENERIC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*GENERIC.get_or_init(|| std::env::var("PE_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("generic")))
}

/// `$tile::<R>($t)` with `R = $rows` (1 to 12): the register-tile kernels are compiled once per
/// row count so their accumulators stay in registers.
macro_rules! rows_1_to_12 {
    ($rows:expr, $tile:ident, $t:expr) => {
        match $rows {
            12 => $tile::<12>($t),
            11 => $tile::<11>($t),
            10 => $tile::<10>($t),
            9 => $tile::<9>($t),
            8 => $tile::<8>($t),
            7 => $tile::<7>($t),
            6 => $tile::<6>($t),
            5 => $tile::<5>($t),
            4 => $tile::<4>($t),
            3 => $tile::<3>($t),
            2 => $tile::<2>($t),
            _ => $tile::<1>($t),
        }
    };
}
pub(crate) use rows_1_to_12;

/// The AMX loops' prefetch of their packed B operand (`{b}`, 2 KB per k-step) two steps ahead:
/// 32 `prefetcht0`, one per cache line. Weight panels stream from L2/L3, and a tile load that
/// misses L1 leaves the tile unit idle; prefetched, B16's products ran 7-17% faster.
macro_rules! amx_prefetch_b {
    () => {
        concat!(
            "prefetcht0 [{b} + 4096]\n",
            "prefetcht0 [{b} + 4160]\n",
            "prefetcht0 [{b} + 4224]\n",
            "prefetcht0 [{b} + 4288]\n",
            "prefetcht0 [{b} + 4352]\n",
            "prefetcht0 [{b} + 4416]\n",
            "prefetcht0 [{b} + 4480]\n",
            "prefetcht0 [{b} + 4544]\n",
            "prefetcht0 [{b} + 4608]\n",
            "prefetcht0 [{b} + 4672]\n",
            "prefetcht0 [{b} + 4736]\n",
            "prefetcht0 [{b} + 4800]\n",
            "prefetcht0 [{b} + 4864]\n",
            "prefetcht0 [{b} + 4928]\n",
            "prefetcht0 [{b} + 4992]\n",
            "prefetcht0 [{b} + 5056]\n",
            "prefetcht0 [{b} + 5120]\n",
            "prefetcht0 [{b} + 5184]\n",
            "prefetcht0 [{b} + 5248]\n",
            "prefetcht0 [{b} + 5312]\n",
            "prefetcht0 [{b} + 5376]\n",
            "prefetcht0 [{b} + 5440]\n",
            "prefetcht0 [{b} + 5504]\n",
            "prefetcht0 [{b} + 5568]\n",
            "prefetcht0 [{b} + 5632]\n",
            "prefetcht0 [{b} + 5696]\n",
            "prefetcht0 [{b} + 5760]\n",
            "prefetcht0 [{b} + 5824]\n",
            "prefetcht0 [{b} + 5888]\n",
            "prefetcht0 [{b} + 5952]\n",
            "prefetcht0 [{b} + 6016]\n",
            "prefetcht0 [{b} + 6080]\n",
        )
    };
}
pub(crate) use amx_prefetch_b;

/// One implementation of a kernel family: its name (as `PE_*_KERNEL` spells it), its tag, and
/// whether this CPU (and OS) can run it.
pub(crate) type Candidate<T> = (&'static str, T, bool);

/// The first available of `candidates` (fastest first; the last, portable, always is), unless
/// the environment variable `var` names another available one (an unavailable or unknown name
/// is a warning, and the default stands).
pub(crate) fn choose<T: Copy + std::fmt::Debug>(var: &str, candidates: &[Candidate<T>]) -> T {
    let best = candidates.iter().find(|c| c.2).or(candidates.last()).map(|c| c.1).expect("at least one candidate");
    let Ok(name) = std::env::var(var).map(|v| v.to_ascii_lowercase()) else {
        return best;
    };
    match candidates.iter().find(|c| c.0 == name && c.2) {
        Some(c) => c.1,
        None => {
            let names: Vec<&str> = candidates.iter().filter(|c| c.2).map(|c| c.0).collect();
            tracing::warn!("{var}={name}: not available here ({}); using {best:?}", names.join(", "));
            best
        }
    }
}

/// An output pointer shared by parallel tasks. Every kernel using it gives each task a
/// disjoint set of elements to write (its own rows, columns or heads), so no write aliases.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: see above: tasks never write the same element.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

impl SendPtr {
    // A method, so closures capture the wrapper (which is Sync) rather than its raw field.
    pub(crate) fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// An output buffer the kernel overwrites completely: skipping the zero fill saves a pass over
/// tens of MB per layer.
pub(crate) fn uninit<T>(len: usize) -> Vec<std::mem::MaybeUninit<T>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialization.
    unsafe { v.set_len(len) };
    v
}

/// # Safety
/// Every element of `v` must have been written.
pub(crate) unsafe fn assume_init<T>(v: Vec<std::mem::MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity())
}

/// `x (m, k) * w (k, n) + bias` through the `gemm` crate, the bias written into the output
/// first and accumulated onto: one pass over the output instead of candle's zero fill, product
/// and broadcast add.
pub(crate) fn dense_matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    assert_eq!((x.len(), w.len()), (m * k, k * n), "dense_matmul operand sizes");
    let mut y = uninit::<f32>(m * n);
    match bias {
        Some(b) => {
            for row in y.chunks_exact_mut(n) {
                for (d, &v) in row.iter_mut().zip(b) {
                    d.write(v);
                }
            }
        }
        None => {
            for d in y.iter_mut() {
                d.write(0.0);
            }
        }
    }
    // SAFETY: every element was written above.
    let mut y = unsafe { assume_init(y) };
    // SAFETY: dense row-major matrices with the extents checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
    y
}

/// AVX-512 store masks for the valid columns of a 32-column panel: `(0..16, 16..32)`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn panel_masks(cols: usize) -> (u16, u16) {
    let m = |c: usize| if c >= 16 { 0xffff } else { ((1u32 << c) - 1) as u16 };
    (m(cols.min(16)), m(cols.saturating_sub(16)))
}

/// `src` row-major `(rows, cols)` transposed to `(cols, rows)`, over rayon in bands of 16
/// output rows. With AVX-512 each 16 x 16 tile is transposed in registers (about 3x the scalar
/// loop's bandwidth, which was a third of the time to load a float32 model); elsewhere, and at
/// ragged edges, element by element.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    transpose_with(src, rows, cols, math::simd() == math::Simd::Avx512)
}

fn transpose_with(src: &[f32], rows: usize, cols: usize, avx512: bool) -> Vec<f32> {
    use rayon::prelude::*;
    const B: usize = 16;
    assert_eq!(src.len(), rows * cols, "transpose: {} values for a {rows} x {cols} matrix", src.len());
    let mut dst = uninit::<f32>(rows * cols);
    dst.par_chunks_mut(B * rows).enumerate().for_each(|(band, out)| {
        let c0 = band * B;
        let width = out.len() / rows.max(1);
        let mut r0 = 0;
        #[cfg(target_arch = "x86_64")]
        if avx512 && width == B {
            while r0 + B <= rows {
                // SAFETY: the CPU has AVX-512F; the tile reads rows r0..r0+16, columns c0..c0+16
                // of `src` and writes columns r0..r0+16 of the band's 16 rows, all in bounds.
                unsafe {
                    transpose_tile16(src.as_ptr().add(r0 * cols + c0), cols, out.as_mut_ptr().add(r0).cast(), rows)
                };
                r0 += B;
            }
        }
        for r in r0..rows {
            let row = &src[r * cols + c0..r * cols + c0 + width];
            for (j, &v) in row.iter().enumerate() {
                out[j * rows + r].write(v);
            }
        }
    });
    // SAFETY: every (column, row) pair was written once above.
    unsafe { assume_init(dst) }
}

/// [`transpose_tile16`] on 32-bit patterns (pairs of bf16): the shuffles move bits unchanged.
///
/// # Safety
/// AVX-512F; `src` holds 16 rows of 16 values at stride `src_stride`, `dst` 16 writable rows
/// of 16 at stride `dst_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_tile16_bits(src: *const u32, src_stride: usize, dst: *mut u32, dst_stride: usize) {
    transpose_tile16(src.cast(), src_stride, dst.cast(), dst_stride)
}

/// A 16 x 16 float32 tile from `src` (row stride `src_stride`) to `dst` transposed (row stride
/// `dst_stride`): three rounds of unpack/shuffle, the usual in-register transpose.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_tile16(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_ps(src.add(i * src_stride));
    }
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let (lo, hi) = (
        |a, b| _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))),
        |a, b| _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b))),
    );
    for i in 0..4 {
        let a = 4 * i;
        r[a] = lo(t[a], t[a + 2]);
        r[a + 1] = hi(t[a], t[a + 2]);
        r[a + 2] = lo(t[a + 1], t[a + 3]);
        r[a + 3] = hi(t[a + 1], t[a + 3]);
    }
    for i in 0..2 {
        for j in 0..4 {
            let (a, b) = (8 * i + j, 8 * i + j + 4);
            t[a] = _mm512_shuffle_f32x4::<0x88>(r[a], r[b]);
            t[b] = _mm512_shuffle_f32x4::<0xdd>(r[a], r[b]);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[j + 8]);
        r[j + 8] = _mm512_shuffle_f32x4::<0xdd>(t[j], t[j + 8]);
    }
    for (i, v) in r.iter().enumerate() {
        _mm512_storeu_ps(dst.add(i * dst_stride), *v);
    }
}

/// Entry points for `benches/kernels.rs`, which times each matmul implementation on PE's
/// shapes; not part of the public API.
#[doc(hidden)]
pub mod bench {
    /// A weight `(n, k)` prepared for one kernel family.
    pub struct Prepared(Inner);

    enum Inner {
        F32(Vec<f32>),
        Bf16(super::bf16::PackedBf16),
        Int8(super::int8::PackedI8),
    }

    /// The implementations this CPU offers for `dtype` (`f32`, `bf16`, `int8`).
    pub fn implementations(dtype: &str) -> Vec<&'static str> {
        let available = |c: &[(&'static str, bool)]| c.iter().filter(|c| c.1).map(|c| c.0).collect();
        match dtype {
            "bf16" => available(&super::bf16::candidates().map(|(n, _, ok)| (n, ok))),
            "int8" => available(&super::int8::candidates().map(|(n, _, ok)| (n, ok))),
            _ => vec!["gemm"],
        }
    }

    /// Prepare `w` `(n, k)` as the load path does for `dtype`.
    pub fn prepare(dtype: &str, w: &[f32], n: usize, k: usize, bias: &[f32]) -> Prepared {
        match dtype {
            "bf16" => Prepared(Inner::Bf16(super::bf16::PackedBf16::pack(w, n, k, Some(bias)))),
            "int8" => Prepared(Inner::Int8(super::int8::PackedI8::pack(w, n, k, Some(bias)))),
            _ => Prepared(Inner::F32(super::transpose(w, n, k))),
        }
    }

    /// `x (m, k) W^T + b` with the named implementation (one of [`implementations`]).
    pub fn matmul(w: &Prepared, which: &str, x: &[f32], m: usize, bias: &[f32]) -> Vec<f32> {
        use super::{bf16, int8};
        match &w.0 {
            Inner::F32(wt) => super::dense_matmul(x, m, x.len() / m.max(1), wt, bias.len(), Some(bias)),
            Inner::Bf16(p) => {
                let which = bf16::candidates().into_iter().find(|c| c.0 == which).map_or(bf16::Impl::Portable, |c| c.1);
                bf16::matmul_with(which, x, m, p)
            }
            Inner::Int8(p) => {
                let which = int8::candidates().into_iter().find(|c| c.0 == which).map_or(int8::Impl::Portable, |c| c.1);
                int8::matmul_with(which, x, m, p)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_matches_the_definition() {
        for (rows, cols) in [(1, 1), (3, 70), (64, 32), (100, 33), (37, 48), (768, 2304), (1024, 4096)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let simd = cfg!(target_arch = "x86_64") && is_x86_feature_detected!("avx512f");
            for avx512 in [false, simd] {
                let t = super::transpose_with(&src, rows, cols, avx512);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(t[c * rows + r], src[r * cols + c], "{rows} x {cols}, avx512 {avx512}");
                    }
                }
            }
        }
    }
}
