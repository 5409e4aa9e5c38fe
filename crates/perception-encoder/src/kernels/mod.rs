//! CPU kernels for the hot paths, used for float32 on the CPU; other devices and dtypes take
//! candle's generic operations. Each kernel has a plain reference (candle's ops) that the
//! parity tests hold it to.

pub(crate) mod activations;
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
pub(crate) mod attention;
pub(crate) mod bf16;
pub(crate) mod cpu;
pub(crate) mod dense;
#[cfg(target_arch = "x86_64")]
pub(crate) mod dense_avx2;
pub(crate) mod int8;
pub(crate) mod math;
pub(crate) mod panels;
pub mod peak;
pub(crate) mod tiles;
mod transpose;

pub(crate) use transpose::transpose;
#[cfg(target_arch = "x86_64")]
pub(crate) use transpose::{transpose_tile16, transpose_tile16_bits, transpose_tile16_part};

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

/// One implementation of a kernel family: its name (as `PE_*_KERNEL` spells it), its tag, and
/// whether this CPU (and OS) can run it.
pub(crate) type Candidate<T> = (&'static str, T, bool);

/// The first available of `candidates` (fastest first; the portable one always is), unless
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

/// Entry points for `benches/kernels.rs`, which times each matmul implementation on PE's
/// shapes; not part of the public API.
#[doc(hidden)]
pub mod bench {
    /// A weight `(n, k)` prepared for one kernel family.
    pub struct Prepared(Inner);

    enum Inner {
        F32(Vec<f32>, super::dense::DensePanels, super::dense::DensePanels),
        Bf16(super::bf16::PackedBf16),
        Int8(super::int8::PackedI8),
    }

    /// The implementations this CPU offers for `dtype` (`f32`, `bf16`, `int8`).
    pub fn implementations(dtype: &str) -> Vec<&'static str> {
        let available = |c: &[(&'static str, bool)]| c.iter().filter(|c| c.1).map(|c| c.0).collect();
        match dtype {
            "bf16" => available(&super::bf16::candidates().map(|(n, _, ok)| (n, ok))),
            "int8" => available(&super::int8::candidates().map(|(n, _, ok)| (n, ok))),
            // The model's panels; `gemm`'s micro-kernel on them and on 64-column panels (the
            // AVX-512 layout, which AVX2 CPUs used before 16-column panels); and `gemm` on the
            // plain `(k, n)` weight (packing it on every call, its own threading).
            _ => vec!["panels", "panels-gemm", "panels64-gemm", "gemm"],
        }
    }

    /// Prepare `w` `(n, k)` as the load path does for `dtype`.
    pub fn prepare(dtype: &str, w: &[f32], n: usize, k: usize, bias: &[f32]) -> Prepared {
        match dtype {
            "bf16" => Prepared(Inner::Bf16(super::bf16::PackedBf16::pack(w, n, k, Some(bias)))),
            "int8" => Prepared(Inner::Int8(super::int8::PackedI8::pack(w, n, k, Some(bias)))),
            _ => Prepared(Inner::F32(
                super::transpose(w, n, k),
                super::dense::DensePanels::from_out_in(w, n, k),
                super::dense::DensePanels::from_out_in_width(w, n, k, super::dense::PANEL),
            )),
        }
    }

    /// `x (m, k) W^T + b` with the named implementation (one of [`implementations`]).
    pub fn matmul(w: &Prepared, which: &str, x: &[f32], m: usize, bias: &[f32]) -> Vec<f32> {
        use super::{bf16, int8};
        match &w.0 {
            Inner::F32(_, p, _) if which == "panels" => super::dense::matmul(x, m, p, Some(bias)),
            Inner::F32(_, p, p64) if which == "panels-gemm" || which == "panels64-gemm" => {
                let p = if which == "panels-gemm" { p } else { p64 };
                super::dense::matmul_on(super::dense::Kernel::Gemm, x, m, p, Some(bias), super::dense::Epilogue::None)
            }
            Inner::F32(wt, _, _) => gemm_plain(x, m, wt, bias),
            Inner::Bf16(p) => {
                let which = bf16::candidates().into_iter().find(|c| c.0 == which).map_or(bf16::Impl::Portable, |c| c.1);
                bf16::matmul_with(which, super::activations::Activations::plain(x), m, p)
            }
            Inner::Int8(p) => {
                let which = int8::candidates().into_iter().find(|c| c.0 == which).map_or(int8::Impl::Portable, |c| c.1);
                int8::matmul_with(which, super::activations::Activations::plain(x), m, p)
            }
        }
    }

    /// `x (m, k) wt (k, n) + bias` by one `gemm` call over rayon's threads.
    fn gemm_plain(x: &[f32], m: usize, wt: &[f32], bias: &[f32]) -> Vec<f32> {
        let (n, k) = (bias.len(), x.len() / m.max(1));
        assert_eq!(wt.len(), k * n, "weight size");
        let mut y: Vec<f32> = bias.iter().copied().cycle().take(m * n).collect();
        // SAFETY: row-major operands of the sizes checked above.
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
                wt.as_ptr(),
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

    /// The attention implementations this CPU offers for heads of 64: float32 `fused`
    /// (AVX-512), `fused-avx2` and `gemm`, and `bf16` (the bf16 path's: AMX, or fused on
    /// AVX512-BF16).
    pub fn attention_implementations() -> Vec<&'static str> {
        let mut all: Vec<&str> = super::attention::candidates(64).iter().filter(|c| c.2).map(|c| c.0).collect();
        if super::attention::attention_bf16(
            &[0.0; 3 * 64],
            super::attention::Shape { batch: 1, seq: 1, heads: 1, head_dim: 64 },
            false,
        )
        .is_some()
        {
            all.push("bf16");
        }
        all
    }

    /// Softmax attention (no mask) over a packed QKV buffer `(batch, seq, 3 * heads * head_dim)`
    /// with the named implementation (one of [`attention_implementations`]).
    pub fn attention(which: &str, qkv: &[f32], batch: usize, seq: usize, heads: usize, head_dim: usize) -> Vec<f32> {
        use super::attention::{attention_with, Impl, Shape};
        let s = Shape { batch, seq, heads, head_dim };
        if which == "bf16" {
            if let Some(out) = super::attention::attention_bf16(qkv, s, false) {
                return out;
            }
        }
        let which =
            super::attention::candidates(head_dim).into_iter().find(|c| c.0 == which).map_or(Impl::Gemm, |c| c.1);
        attention_with(which, qkv, s, false)
    }
}
