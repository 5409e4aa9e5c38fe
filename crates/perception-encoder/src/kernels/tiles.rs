//! The tile drivers the packed kernels share (bf16 and int8, AVX-512 and AMX): the parallel
//! walk over (row block, panel) tasks, the register-tile walk within them, the store masks of a
//! panel's valid columns, and the per-row-count instantiation of register-tile kernels.

use rayon::prelude::*;

use super::panels::{Panels, PANEL};

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

/// AVX-512 store masks for the valid columns of a 32-column panel: `(0..16, 16..32)`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn panel_masks(cols: usize) -> (u16, u16) {
    let m = |c: usize| if c >= 16 { 0xffff } else { ((1u32 << c) - 1) as u16 };
    (m(cols.min(16)), m(cols.saturating_sub(16)))
}

/// The order in which [`par_blocks`] hands out its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Consecutive tasks share a block of rows and walk the panels: the weight streams through
    /// once per block of rows, each block of rows stays in cache.
    RowBlocks,
    /// Consecutive tasks share a group of panels and walk the blocks of rows: the weight is
    /// read once, the activations once per group of panels. The AVX2 int8 kernel's choice
    /// (its activations are int16, its weight int8): on a Zen 1 EPYC, L14 batch 1 6.1 -> 5.4 s
    /// an image, S16 +7%.
    Panels,
}

impl Order {
    /// [`Order::Panels`] when the packed weight is at least as large as the A operand (a batch
    /// of few rows: the weight would otherwise come from memory once per block of rows), else
    /// [`Order::RowBlocks`] (many rows through a weight that stays in cache). On a Zen 4 EPYC
    /// (AVX512-VNNI and AVX512-BF16 kernels), `Panels` made L14 batch 1 11-13% faster in int8
    /// and 9-12% in bf16, S16 batch 1 6-14%, B16 0-8%, but T16 at batch 8 (a 0.2 MB weight,
    /// 1.8 MB of activations) 4-9% slower in bf16. The AVX2 bf16 kernel (forced on the same
    /// Zen 4): L14 batch 1 7-10% faster, B16 batch 1 4-6%, S16 batch 1 and B16 text level.
    pub(crate) fn for_operands<A, B: Copy + Default + Send + Sync>(a: &[A], w: &Panels<B>) -> Self {
        if w.bytes() >= std::mem::size_of_val(a) {
            Order::Panels
        } else {
            Order::RowBlocks
        }
    }
}

/// Run `body(state, rows, panel)` over every (block of `mc` rows, panel) of an `m`-row product
/// with `panels` panels, in parallel, in `order`. Tasks take a block of rows and a few panels
/// each (fewer when `m` is small, so that every thread has work); each task creates its own
/// `state` with `start` and hands it to `finish` at the end (AMX loads and releases its tile
/// state there).
pub(crate) fn par_blocks<S>(
    order: Order,
    m: usize,
    mc: usize,
    panels: usize,
    start: impl Fn() -> S + Sync,
    body: impl Fn(&mut S, std::ops::Range<usize>, usize) + Sync,
    finish: impl Fn(S) + Sync,
) {
    let m_blocks = m.div_ceil(mc);
    let threads = rayon::current_num_threads().max(1);
    let mut per = 4.min(panels).max(1);
    while per > 1 && m_blocks * panels.div_ceil(per) < 4 * threads {
        per /= 2;
    }
    let groups = panels.div_ceil(per);
    (0..m_blocks * groups).into_par_iter().for_each(|t| {
        let (mb, g) = match order {
            Order::RowBlocks => (t / groups, t % groups),
            Order::Panels => (t % m_blocks, t / m_blocks),
        };
        let rows = mb * mc..(mb * mc + mc).min(m);
        let mut state = start();
        for p in g * per..((g + 1) * per).min(panels) {
            body(&mut state, rows.clone(), p);
        }
        finish(state);
    });
}

/// The row stride, in elements of `bytes` bytes, of a register-tile kernel's A operand `k_pad`
/// deep: `k_pad`, plus 64 bytes when a row is a multiple of 1 KB. A tile reads 12 rows side by
/// side; rows 4 KB apart (L14's 4,096-deep `c_proj` in bf16, 2,048 apart at 1,024 deep) all fall
/// in one or two sets of the 8-way L1 and evict each other on every step.
pub(crate) fn operand_stride(k_pad: usize, bytes: usize) -> usize {
    if k_pad > 0 && (k_pad * bytes).is_multiple_of(1024) {
        k_pad + 64 / bytes
    } else {
        k_pad
    }
}

/// Where one register tile of a panel product reads and writes: `rows` rows (from `r0`) of the
/// A operand at `a` (`k` deep, the padded `k`, at row stride `lda` elements), panel `panel` of
/// the packed weight at `b`, its output rows at `c` (stride `ldc` elements of the output's
/// type), of which `cols` columns are valid.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct TileOperands<A, B, C = f32> {
    pub a: *const A,
    pub k: usize,
    pub lda: usize,
    pub b: *const B,
    pub c: *mut C,
    pub ldc: usize,
    pub cols: usize,
    pub r0: usize,
    pub rows: usize,
    pub panel: usize,
}

/// The `(m, n)` float32 output of a register-tile kernel over `a` (`m` rows of `w.k_pad`, at
/// the stride [`operand_stride`] gives) and the packed `w`: every (block of `mc` rows, panel)
/// in parallel ([`par_blocks`]), cut into tiles of at most `mr` rows, each handed to `tile`,
/// which writes its rows of the panel's valid columns.
///
/// # Safety
/// `tile` must write every value of its rows in the panel's valid columns (the result is read
/// as initialized), and only those.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn by_register_tiles<A: Sync, B: Copy + Default + Send + Sync>(
    order: Order,
    a: &[A],
    m: usize,
    w: &Panels<B>,
    mc: usize,
    mr: usize,
    tile: impl Fn(TileOperands<A, B>) + Sync,
) -> Vec<f32> {
    let mut y = super::uninit::<f32>(m * w.n);
    into_register_tiles(order, a, m, w, mc, mr, (y.as_mut_ptr().cast::<f32>(), w.n), tile);
    // SAFETY: the caller's tiles cover every row and column.
    super::assume_init(y)
}

/// [`by_register_tiles`] into `out`: `m` rows of `w.n` values of any type at row stride `ldc`.
///
/// # Safety
/// `out` is valid for `m * ldc` writes (`ldc >= w.n`), and `tile` writes only its rows of the
/// panel's valid columns there.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn into_register_tiles<A: Sync, B: Copy + Default + Send + Sync, C>(
    order: Order,
    a: &[A],
    m: usize,
    w: &Panels<B>,
    mc: usize,
    mr: usize,
    (out, ldc): (*mut C, usize),
    tile: impl Fn(TileOperands<A, B, C>) + Sync,
) {
    /// The output, shared by tasks that each write their own (rows, panel) block.
    struct Out<C>(*mut C);
    // SAFETY: see above: no two tasks write the same element.
    unsafe impl<C> Sync for Out<C> {}
    impl<C> Out<C> {
        fn at(&self, offset: usize) -> *mut C {
            self.0.wrapping_add(offset)
        }
    }
    let (n, k) = (w.n, w.k_pad);
    let lda = operand_stride(k, std::mem::size_of::<A>());
    assert!(a.len() >= m * lda && ldc >= n, "A operand rows, output stride");
    let out = Out(out);
    let body = |_: &mut (), rows: std::ops::Range<usize>, panel: usize| {
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r = mr.min(rows.end - r0);
            tile(TileOperands {
                a: a[r0 * lda..].as_ptr(),
                k,
                lda,
                b: w.panel(panel).as_ptr(),
                c: out.at(r0 * ldc + panel * PANEL),
                ldc,
                cols: PANEL.min(n - panel * PANEL),
                r0,
                rows: r,
                panel,
            });
            r0 += r;
        }
    };
    par_blocks(order, m, mc, w.panels(), || (), body, |_| ());
}
