//! The AMX tile state every AMX kernel shares: one tile configuration (eight tiles of 16 rows
//! x 64 bytes: C in 0-3, A in 4-5, B in 6-7, for bf16 and int8 alike), loaded at the start of
//! a task and released at its end, and the prefetch of the packed B operand.

use std::arch::asm;

use super::panels::PANEL;

/// Rows per AMX block (two 16-row tiles).
pub(crate) const MB: usize = 32;

#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Tiles 0-3: C (16 x 16 f32 or i32), 4-5: A (16 rows of 64 bytes), 6-7: B (16 pairs or
/// quadruples x 16 columns). All are 16 rows of 64 bytes.
static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// # Safety
/// AMX must be available and permitted.
pub(crate) unsafe fn load_config() {
    asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
}

/// A task's start: the tile configuration loaded, and a zeroed 32 x 32 result block.
pub(crate) fn start_task<T: Default + Copy>() -> [T; MB * PANEL] {
    // SAFETY: the AMX kernels are only selected when AMX is available and permitted.
    unsafe { load_config() };
    [T::default(); MB * PANEL]
}

/// A task's end: its tile state released.
pub(crate) fn finish_task<T>(_: T) {
    // SAFETY: releases this thread's tile state (loaded by `start_task`).
    unsafe { release() };
}

/// Releases this thread's tile state.
///
/// # Safety
/// AMX must be available and permitted.
#[inline]
pub(crate) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

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
