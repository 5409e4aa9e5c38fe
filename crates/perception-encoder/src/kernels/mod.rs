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
