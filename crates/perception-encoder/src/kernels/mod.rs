//! CPU kernels for the hot paths, used for float32 on the CPU; other devices and dtypes take
//! candle's generic operations. Each kernel has a plain reference (candle's ops) that the
//! parity tests hold it to.

pub(crate) mod attention;
pub(crate) mod bf16;
pub(crate) mod int8;
pub(crate) mod math;
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
pub(crate) fn uninit_f32(len: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: MaybeUninit needs no initialization.
    unsafe { v.set_len(len) };
    v
}

/// # Safety
/// Every element of `v` must have been written.
pub(crate) unsafe fn assume_init(v: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity())
}

/// AVX-512 store masks for the valid columns of a 32-column panel: `(0..16, 16..32)`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn panel_masks(cols: usize) -> (u16, u16) {
    let m = |c: usize| if c >= 16 { 0xffff } else { ((1u32 << c) - 1) as u16 };
    (m(cols.min(16)), m(cols.saturating_sub(16)))
}

/// `src` row-major `(rows, cols)` transposed to `(cols, rows)`: 32 x 32 blocks (both sides stay
/// in cache lines) over rayon. candle's strided copy does this element by element on one thread,
/// which made it most of the time to load a float32 model.
pub(crate) fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const B: usize = 32;
    let mut dst = uninit_f32(rows * cols);
    // Each task owns a band of B output rows (= B source columns).
    dst.par_chunks_mut(B * rows).enumerate().for_each(|(band, out)| {
        let c0 = band * B;
        let width = B.min(cols - c0);
        for r0 in (0..rows).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                let row = &src[r * cols + c0..r * cols + c0 + width];
                for (j, &v) in row.iter().enumerate() {
                    out[j * rows + r].write(v);
                }
            }
        }
    });
    // SAFETY: every (column, row) pair was written once above.
    unsafe { assume_init(dst) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_matches_the_definition() {
        for (rows, cols) in [(1, 1), (3, 70), (64, 32), (100, 33), (768, 2304)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = super::transpose(&src, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], src[r * cols + c]);
                }
            }
        }
    }
}
