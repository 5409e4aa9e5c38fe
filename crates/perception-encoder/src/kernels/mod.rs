//! CPU kernels for the hot paths, used for float32 on the CPU; other devices and dtypes take
//! candle's generic operations. Each kernel has a plain reference (candle's ops) that the
//! parity tests hold it to.

pub(crate) mod activations;
#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
pub(crate) mod attention;
pub(crate) mod bf16;
pub(crate) mod cpu;
pub(crate) mod int8;
pub(crate) mod math;
pub(crate) mod panels;
pub mod peak;
pub(crate) mod skinny;
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
/// first (by the thread that then computes those columns, or rows) and accumulated onto: one
/// pass over the output instead of candle's zero fill, product and broadcast add.
pub(crate) fn dense_matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    dense_matmul_with(x, m, k, w, n, bias, column_slabs(m, n))
}

/// How many column slabs a float32 product is split into (one per thread), or 1 to leave the
/// split to `gemm` (which splits rows): at one image's 197-577 rows, a row split leaves a
/// thread with a partial block of rows while the other idles, and both read every weight.
fn column_slabs(m: usize, n: usize) -> usize {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = *MODE.get_or_init(|| match std::env::var("PE_F32_SPLIT").as_deref() {
        Ok("columns") => Some(true),
        Ok("rows") => Some(false),
        _ => None,
    });
    let threads = rayon::current_num_threads();
    let columns = forced.unwrap_or(m <= COLUMN_SPLIT_MAX_ROWS) && threads > 1 && n >= 64 * threads;
    if columns {
        threads
    } else {
        1
    }
}

/// Up to this many rows, float32 products are split over columns (see [`column_slabs`]).
const COLUMN_SPLIT_MAX_ROWS: usize = 1024;

/// [`dense_matmul`] with the column split given (`slabs` 1: `gemm`'s own threading).
pub(crate) fn dense_matmul_with(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    slabs: usize,
) -> Vec<f32> {
    assert_eq!((x.len(), w.len()), (m * k, k * n), "dense_matmul operand sizes");
    assert!(bias.is_none_or(|b| b.len() >= n), "dense_matmul bias size");
    let mut y = uninit::<f32>(m * n);
    // Slabs of whole 16-column vectors; the last may be narrower.
    let width = n.div_ceil(slabs.max(1)).div_ceil(16) * 16;
    let parallelism =
        if slabs > 1 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(rayon::current_num_threads()) };
    let out = SendPtr(y.as_mut_ptr().cast());
    // Columns j0..j0 + cols of `rows` rows from `r0` set to the bias (the product adds onto it).
    let init = |r0: usize, rows: usize, j0: usize, cols: usize| {
        if let Some(b) = bias {
            for r in r0..r0 + rows {
                // SAFETY: row r < m, columns j0..j0 + cols <= n of the m x n output.
                let row = unsafe { std::slice::from_raw_parts_mut(out.at(r * n + j0), cols) };
                row.copy_from_slice(&b[j0..j0 + cols]);
            }
        }
    };
    let slab = |j0: usize| {
        let cols = width.min(n - j0);
        if slabs > 1 {
            init(0, m, j0, cols);
        }
        // SAFETY: dense row-major matrices with the extents checked above; the slab's columns
        // j0..j0 + cols of y and w lie inside them, and no other slab writes them. Without a
        // bias the product does not read the output (`read_dst` false).
        unsafe {
            gemm::gemm(
                m,
                cols,
                k,
                out.at(j0),
                1,
                n as isize,
                bias.is_some(),
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr().add(j0),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    if slabs > 1 {
        use rayon::prelude::*;
        (0..n.div_ceil(width)).into_par_iter().for_each(|s| slab(s * width));
    } else {
        if bias.is_some() {
            use rayon::prelude::*;
            let per = m.div_ceil(rayon::current_num_threads().max(1)).max(1);
            (0..m.div_ceil(per)).into_par_iter().for_each(|c| init(c * per, per.min(m - c * per), 0, n));
        }
        slab(0);
    }
    // SAFETY: every element was written: the bias first (then the product added onto it), or
    // by the product alone.
    unsafe { assume_init(y) }
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
            // gemm's own threading (rows), one column slab per thread, and the few-rows kernel
            // (the model takes it up to `skinny::MAX_ROWS` rows).
            _ => vec!["gemm", "gemm-cols", "skinny"],
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
            Inner::F32(wt) if which == "skinny" => {
                super::skinny::matmul(x, m, x.len() / m.max(1), wt, bias.len(), Some(bias))
            }
            Inner::F32(wt) => {
                let slabs = if which == "gemm-cols" { rayon::current_num_threads() } else { 1 };
                super::dense_matmul_with(x, m, x.len() / m.max(1), wt, bias.len(), Some(bias), slabs)
            }
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

    /// The attention implementations this CPU offers for heads of 64: float32 `fused` and
    /// `gemm`, and `bf16` (the bf16 path's: AMX, or fused on AVX512-BF16).
    pub fn attention_implementations() -> Vec<&'static str> {
        let mut all = vec!["gemm"];
        if super::attention::fused_available(64) {
            all.insert(0, "fused");
        }
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
        let which = if which == "fused" { Impl::Fused } else { Impl::Gemm };
        attention_with(which, qkv, s, false)
    }
}

#[cfg(test)]
mod tests {
    /// The float32 product with every split (gemm's rows, 2 and 3 column slabs, slabs wider
    /// than the matrix), with and without a bias, against a float64 reference, on sizes that
    /// leave partial vectors.
    #[test]
    fn dense_matmul_splits_agree_with_float64() {
        let (m, k) = (37, 29);
        let mut seed = 7u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for n in [150, 70, 16, 5] {
            let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            for bias in [Some(&b[..]), None] {
                let want: Vec<f64> = (0..m * n)
                    .map(|i| {
                        let (r, c) = (i / n, i % n);
                        let dot = (0..k).map(|j| x[r * k + j] as f64 * w[j * n + c] as f64).sum::<f64>();
                        bias.map_or(0.0, |b| b[c] as f64) + dot
                    })
                    .collect();
                for slabs in [1, 2, 3, 64] {
                    let got = super::dense_matmul_with(&x, m, k, &w, n, bias, slabs);
                    let err = got.iter().zip(&want).fold(0f64, |e, (g, w)| e.max((*g as f64 - w).abs()));
                    assert!(err < 1e-5, "n {n}, {slabs} slabs, bias {}: max error {err}", bias.is_some());
                }
            }
        }
    }
}
