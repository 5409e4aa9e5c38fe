//! CPU kernels for the hot paths, used for float32 on the CPU; other devices and dtypes take
//! candle's generic operations. Each kernel has a plain reference (candle's ops) that the
//! parity tests hold it to.

pub(crate) mod attention;
