//! `y = x W^T + b` with bfloat16 weights and float32 accumulation (the `--dtype bf16` path).
//!
//! The weight is packed once at load ([`super::panels`]): columns in panels of 32, and within a
//! panel, for each pair of input rows `(k, k+1)`, the 32 columns' pairs side by side, the
//! operand layout of both AVX512-BF16's `vdpbf16ps` and AMX's `tdpbf16ps`.
//!
//! Activations are rounded to bfloat16 (round to nearest even) as they enter the product;
//! products are exact in float32 and summed in float32, as PyTorch's bf16 autocast does. On AMX
//! two more paths keep bf16 operands: the MLP ([`mlp`]: GELU and rounding in the first
//! product's epilogue) and attention ([`amx::attention_head`]: `q k^T` and `P v`).
//!
//! Three implementations, chosen at run time (`PE_BF16_KERNEL=amx|avx512|portable` forces one):
//! - AMX tiles (Sapphire Rapids and later), when the CPU has AMX-BF16 and Linux grants the
//!   tile state to the process;
//! - AVX512-BF16 `vdpbf16ps` (Zen 4, Cooper Lake, Sapphire Rapids);
//! - portable: the rounded operands widened to float32 and multiplied by the `gemm` crate.

use rayon::prelude::*;

use super::SendPtr;

use super::panels::{per_column, Panels, PANEL};

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
    fn unpack_t(&self) -> Vec<f32> {
        self.w.unpack_t(from_bf16)
    }
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Impl {
    Amx,
    Avx512,
    Portable,
}

/// Every implementation, fastest first, with whether it runs here.
pub(crate) fn candidates() -> [super::Candidate<Impl>; 3] {
    [
        ("amx", Impl::Amx, amx_available()),
        ("avx512", Impl::Avx512, avx512bf16_available()),
        ("portable", Impl::Portable, true),
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

/// Linux lets this process use the AMX tile data (asked once).
#[cfg(target_arch = "x86_64")]
pub(super) fn amx_permitted() -> bool {
    amx::permitted()
}

#[cfg(target_arch = "x86_64")]
pub(super) use amx::{finish_task as amx_finish_task, start_task as amx_start_task};

fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn avx512bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `PE_SIMD` below avx512 stands for a CPU without AVX-512, so without its extensions.
        super::math::simd() == super::math::Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` `(m, k)` float32 row-major times the packed weight: `(m, n)` float32.
pub(crate) fn matmul(x: &[f32], m: usize, w: &PackedBf16) -> Vec<f32> {
    matmul_with(selected(), x, m, w)
}

pub(crate) fn matmul_with(which: Impl, x: &[f32], m: usize, w: &PackedBf16) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "input size");
    match which {
        #[cfg(target_arch = "x86_64")]
        Impl::Amx => amx::matmul(x, m, w),
        #[cfg(target_arch = "x86_64")]
        Impl::Avx512 => avx512::matmul(x, m, w),
        _ => portable(x, m, w),
    }
}

/// `gelu(x W1^T + b1) W2^T + b2`, an MLP whose hidden activations are rounded to bf16 as the
/// second product takes them. On AMX the first product's epilogue applies the GELU and writes
/// the bf16 operand of the second directly; the float32 hidden layer (the largest activation
/// of a block) is never stored. Elsewhere: the two products with GELU in place between them.
/// Both give the same numbers.
pub(crate) fn mlp(x: &[f32], m: usize, fc: &PackedBf16, proj: &PackedBf16) -> Vec<f32> {
    assert_eq!(fc.n, proj.k, "MLP hidden sizes");
    #[cfg(target_arch = "x86_64")]
    if selected() == Impl::Amx && fc.n.is_multiple_of(PANEL) {
        assert_eq!(x.len(), m * fc.k, "input size");
        let a = round_rows(x, m, fc.k, fc.k_pad, m.div_ceil(amx::MB) * amx::MB);
        let h = amx::matmul_gelu_rows(&a, m, fc);
        return amx::matmul_rows(&h, m, proj);
    }
    let mut h = matmul(x, m, fc);
    super::math::gelu_in_place(&mut h);
    matmul(&h, m, proj)
}

/// Whether [`attention_head`](amx::attention_head) runs here for heads of `head_dim`: the AMX
/// kernel is the one selected, and the head is whole tiles deep.
pub(crate) fn amx_attention(head_dim: usize) -> bool {
    selected() == Impl::Amx && head_dim.is_multiple_of(PANEL) && head_dim > 0
}

#[cfg(target_arch = "x86_64")]
pub(in crate::kernels) use amx::{attention_head as amx_attention_head, AttentionScratch, Head};

/// Rows of `x` rounded to bf16, `k_pad` wide (zero padded), `rows_pad` rows (zero rows after `m`).
fn round_rows(x: &[f32], m: usize, k: usize, k_pad: usize, rows_pad: usize) -> Vec<u16> {
    // Written in place without a zero fill first: a pass over megabytes per product saved.
    let mut a = super::uninit::<u16>(rows_pad * k_pad);
    a.par_chunks_mut(k_pad).enumerate().for_each(|(i, row)| {
        let zero = std::mem::MaybeUninit::new(0);
        if i >= m {
            row.fill(zero);
            return;
        }
        row[k..].fill(zero);
        let (src, dst) = (&x[i * k..(i + 1) * k], row.as_mut_ptr().cast::<u16>());
        #[cfg(target_arch = "x86_64")]
        if avx512bf16_available() {
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

/// Any CPU: the rounded operands widened to float32, one float32 GEMM.
fn portable(x: &[f32], m: usize, w: &PackedBf16) -> Vec<f32> {
    let xr: Vec<f32> = x.iter().map(|&v| from_bf16(to_bf16(v))).collect();
    super::dense_matmul(&xr, m, w.k, &w.unpack_t(), w.n, Some(&w.bias[..w.n]))
}

/// Run `body(state, rows, panel)` over every (block of `mc` rows, panel) of an `m`-row product
/// with `panels` panels, in parallel. Tasks take a block of rows and a few panels each (fewer
/// when `m` is small, so that every thread has work); each task creates its own `state` with
/// `start` and hands it to `finish` at the end (AMX loads and releases its tile state there).
pub(super) fn par_blocks<S>(
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
        let (mb, g) = (t / groups, t % groups);
        let rows = mb * mc..(mb * mc + mc).min(m);
        let mut state = start();
        for p in g * per..((g + 1) * per).min(panels) {
            body(&mut state, rows.clone(), p);
        }
        finish(state);
    });
}

/// Where one register tile of a panel product reads and writes: `rows` rows (from `r0`) of the
/// A operand at `a` (row stride `lda` elements, the padded `k`), panel `panel` of the packed
/// weight at `b`, its output rows at `c` (stride `ldc`), of which `cols` columns are valid.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct TileOperands<A, B> {
    pub a: *const A,
    pub lda: usize,
    pub b: *const B,
    pub c: *mut f32,
    pub ldc: usize,
    pub cols: usize,
    pub r0: usize,
    pub rows: usize,
    pub panel: usize,
}

/// The `(m, n)` float32 output of a register-tile kernel over `a` (`m` rows of `w.k_pad`) and
/// the packed `w`: every (block of `mc` rows, panel) in parallel ([`par_blocks`]), cut into
/// tiles of at most `mr` rows, each handed to `tile`, which writes its rows of the panel's
/// valid columns.
///
/// # Safety
/// `tile` must write every value of its rows in the panel's valid columns (the result is read
/// as initialized), and only those.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn by_register_tiles<A: Sync, B: Copy + Default + Send + Sync>(
    a: &[A],
    m: usize,
    w: &Panels<B>,
    mc: usize,
    mr: usize,
    tile: impl Fn(TileOperands<A, B>) + Sync,
) -> Vec<f32> {
    let (n, lda) = (w.n, w.k_pad);
    assert!(a.len() >= m * lda, "A operand rows");
    let mut y = super::uninit::<f32>(m * n);
    let out = SendPtr(y.as_mut_ptr().cast());
    let body = |_: &mut (), rows: std::ops::Range<usize>, panel: usize| {
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r = mr.min(rows.end - r0);
            tile(TileOperands {
                a: a[r0 * lda..].as_ptr(),
                lda,
                b: w.panel(panel).as_ptr(),
                c: out.at(r0 * n + panel * PANEL),
                ldc: n,
                cols: PANEL.min(n - panel * PANEL),
                r0,
                rows: r,
                panel,
            });
            r0 += r;
        }
    };
    par_blocks(m, mc, w.panels(), || (), body, |_| ());
    // SAFETY: the caller's tiles cover every row and column.
    super::assume_init(y)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Rows per register tile: 12 rows x 32 columns = 24 accumulators.
    const MR: usize = 12;
    /// Rows per task.
    const MC: usize = 96;

    /// `src` rounded to bf16 into `dst` (`src.len()` values; `dst` need not be initialized).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16; `dst` is valid for `src.len()` writes.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    pub(super) unsafe fn round_row(src: &[f32], dst: *mut u16) {
        let n = src.len();
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_si256(dst.add(i).cast(), std::mem::transmute::<__m256bh, __m256i>(v));
            i += 16;
        }
        for (j, &v) in src.iter().enumerate().skip(i) {
            dst.add(j).write(to_bf16(v));
        }
    }

    /// Softmax of `s` (its values are overwritten), rounded to bf16 into `dst`: the final
    /// scaling and the rounding in one pass.
    ///
    /// # Safety
    /// The CPU has AVX-512F/BF16 (and AVX2/FMA); `dst` is as long as `s`.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")]
    pub(super) unsafe fn softmax_to_bf16(s: &mut [f32], dst: &mut [u16]) {
        // Whole vectors with a masked last one: rows are 197 or 257 long, and a scalar tail of
        // `exp` and bf16 rounding cost as much as the vectors before it.
        let n = s.len();
        assert_eq!(dst.len(), n, "softmax_to_bf16 lengths");
        let (p, d) = (s.as_mut_ptr(), dst.as_mut_ptr());
        let mask = |i: usize| -> __mmask16 {
            if n - i >= 16 {
                0xffff
            } else {
                (1u16 << (n - i)) - 1
            }
        };
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut max = neg_inf;
        for i in (0..n).step_by(16) {
            max = _mm512_max_ps(max, _mm512_mask_loadu_ps(neg_inf, mask(i), p.add(i)));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let mut sum = _mm512_setzero_ps();
        for i in (0..n).step_by(16) {
            let k = mask(i);
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), max));
            _mm512_mask_storeu_ps(p.add(i), k, e);
            sum = _mm512_mask_add_ps(sum, k, sum, e);
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        for i in (0..n).step_by(16) {
            let k = mask(i);
            let v = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv));
            _mm256_mask_storeu_epi16(d.add(i).cast(), k, std::mem::transmute::<__m256bh, __m256i>(v));
        }
    }

    /// [`crate::kernels::math::exp`] on 16 lanes with fused multiply-adds (so within a few
    /// ulp of it, not bit-identical).
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn exp16(x: __m512) -> __m512 {
        const ROUND: f32 = 12_582_912.0;
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
        let shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), _mm512_set1_ps(ROUND));
        let n = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUND));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut e = _mm512_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
        }
        let bits = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(ROUND.to_bits() as i32 - 127));
        _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits)), e)
    }

    /// One register tile: its operands (bf16 rows, a panel of pairs) and the panel's bias.
    #[derive(Clone, Copy)]
    struct Tile {
        op: TileOperands<u16, u16>,
        bias: *const f32,
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const R: usize>(t: Tile) {
        let Tile { op: TileOperands { a, lda, b, c, ldc, cols, .. }, bias } = t;
        let kp = lda / 2;
        let mut acc0 = [_mm512_setzero_ps(); R];
        let mut acc1 = [_mm512_setzero_ps(); R];
        for j in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(j * 64).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(j * 64 + 32).cast()));
            for r in 0..R {
                let pair = std::ptr::read_unaligned(a.add(r * lda + 2 * j).cast::<i32>());
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
                acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
            }
        }
        let (bias0, bias1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
        let (m0, m1) = crate::kernels::panel_masks(cols);
        for r in 0..R {
            let row = c.add(r * ldc);
            _mm512_mask_storeu_ps(row, m0, _mm512_add_ps(acc0[r], bias0));
            _mm512_mask_storeu_ps(row.add(16), m1, _mm512_add_ps(acc1[r], bias1));
        }
    }

    pub(super) fn matmul(x: &[f32], m: usize, w: &PackedBf16) -> Vec<f32> {
        let a = round_rows(x, m, w.k, w.k_pad, m);
        let tile_at = |op: TileOperands<u16, u16>| {
            let t = Tile { op, bias: w.bias[op.panel * PANEL..].as_ptr() };
            // SAFETY: the CPU has AVX512-BF16 (this implementation is only selected then);
            // the operands hold the tile's rows of k_pad and the panel's k_pad/2 pairs of 64,
            // the bias a whole panel; the output block is this task's alone and the stores
            // are masked to the panel's valid columns.
            unsafe { crate::kernels::rows_1_to_12!(op.rows, tile, t) }
        };
        unsafe { super::by_register_tiles(&a, m, w, MC, MR, tile_at) }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::*;
    use std::arch::asm;

    /// Rows per AMX block (two 16-row tiles).
    pub(super) const MB: usize = 32;
    /// Rows per task.
    const MC: usize = 128;

    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Tiles 0-3: C (16 x 16 f32), 4-5: A (16 rows x 32 bf16), 6-7: B (16 pairs x 16 columns).
    /// All are 16 rows of 64 bytes.
    static CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// AMX-BF16 and AMX-TILE in CPUID, and the kernel lets this process use the tile data.
    pub(super) fn available() -> bool {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            let max_leaf = std::arch::x86_64::__cpuid(0).eax;
            if max_leaf < 7 {
                return false;
            }
            let l7 = std::arch::x86_64::__cpuid_count(7, 0);
            let (amx_bf16, amx_tile) = (l7.edx & (1 << 22) != 0, l7.edx & (1 << 24) != 0);
            amx_bf16 && amx_tile && permitted() && super::avx512bf16_available()
        })
    }

    pub(super) fn permitted() -> bool {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(request_permission)
    }

    /// # Safety
    /// AMX must be available and permitted.
    pub(super) unsafe fn load_config() {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
    }

    /// A task's start: the tile configuration loaded, and a zeroed 32 x 32 result block.
    pub(in crate::kernels) fn start_task<T: Default + Copy>() -> [T; MB * PANEL] {
        // SAFETY: the AMX kernels are only selected when AMX is available and permitted.
        unsafe { load_config() };
        [T::default(); MB * PANEL]
    }

    /// A task's end: its tile state released.
    pub(in crate::kernels) fn finish_task<T>(_: T) {
        // SAFETY: releases this thread's tile state (loaded by `start_task`).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    #[cfg(target_os = "linux")]
    fn request_permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes which extended states this
        // process may use; it fails cleanly where AMX is unsupported.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    #[cfg(not(target_os = "linux"))]
    fn request_permission() -> bool {
        false
    }

    /// `C[32 x 32] = A[32 x k_pad] * B` for one panel, into `c` (32 x 32 f32, row stride 128 B).
    ///
    /// # Safety
    /// The tile configuration must be loaded on this thread; `a` must hold 32 rows of
    /// `k_pad` bf16 with row stride `lda` elements; `b` one packed panel of `k_pad / 2` pairs.
    #[inline]
    unsafe fn block(a: *const u16, lda: usize, b: *const u16, k_pad: usize, c: *mut f32) {
        block_ldc(a, lda, b, k_pad, c, PANEL)
    }

    /// [`block`] with the result's row stride `ldc` (in f32) chosen by the caller.
    ///
    /// # Safety
    /// As [`block`], with `c` holding 32 rows of stride `ldc` and 32 writable values each.
    #[inline]
    unsafe fn block_ldc(a: *const u16, lda: usize, b: *const u16, k_pad: usize, c: *mut f32, ldc: usize) {
        let steps = k_pad / 32;
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm6, [{b} + {ldb}*1]",
            "tileloadd tmm7, [{b} + {ldb}*1 + 64]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            crate::kernels::amx_prefetch_b!(),
            "add {a0}, 64",
            "add {a1}, 64",
            "add {b}, 2048",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c2} + {ldc}*1 + 64], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.add(16 * lda) => _,
            b = inout(reg) b => _,
            steps = inout(reg) steps => _,
            lda = in(reg) lda * 2,
            ldb = in(reg) 128usize,
            c = in(reg) c,
            c2 = in(reg) c.add(16 * ldc),
            ldc = in(reg) ldc * 4,
            options(nostack),
        );
    }

    /// One (image, head) of attention: `q`, `k`, `v` are `n` rows of `d` (a multiple of 32)
    /// with row stride `rs`.
    pub(in crate::kernels) struct Head<'a> {
        pub q: &'a [f32],
        pub k: &'a [f32],
        pub v: &'a [f32],
        pub rs: usize,
        pub n: usize,
        pub d: usize,
        pub causal: bool,
    }

    /// Softmax attention for one head on AMX: `S = bf16(q * scale) bf16(k)^T` and
    /// `O = bf16(softmax(S)) bf16(v)`, float32 sums, the softmax in float32. `out` gets `n`
    /// rows of `d` with stride `ldo`. `scratch` is reused between calls.
    ///
    /// # Safety
    /// AMX and AVX512-BF16 available and permitted; the slices hold what [`Head`] describes;
    /// `out` is writable for those rows and columns and no other thread writes them.
    pub(in crate::kernels) unsafe fn attention_head(
        head: Head,
        out: *mut f32,
        ldo: usize,
        scratch: &mut AttentionScratch,
    ) {
        let Head { q, k, v, rs, n, d, causal } = head;
        let np = n.div_ceil(MB) * MB;
        let scale = 1.0 / (d as f32).sqrt();
        scratch.resize(np, d);
        let AttentionScratch { qa, kb, vb, scores, pa, row, qs, c } = scratch;
        // Padding rows and keys are never cleared: results for padding rows are dropped and
        // padding keys' scores are never read. Only v's padding keys meet real (zero)
        // probabilities, so they must be finite: they are zeroed below.
        for r in 0..n {
            for (t, &x) in qs.iter_mut().zip(&q[r * rs..r * rs + d]) {
                *t = x * scale;
            }
            super::avx512::round_row(qs, qa[r * d..(r + 1) * d].as_mut_ptr());
        }
        // k rounded into rows of d / 2 bf16 pairs (as u32), then each 16 keys x 16 pairs block
        // transposed into the packed B layout: panel of 32 keys, for each pair of dims the
        // 32 keys side by side.
        let kr = &mut row[d..];
        for key in 0..n {
            super::avx512::round_row(&k[key * rs..key * rs + d], kr[key * d..].as_mut_ptr().cast());
        }
        let (kr32, kb32) = (kr.as_ptr().cast::<u32>(), kb.as_mut_ptr().cast::<u32>());
        for key0 in (0..np).step_by(16) {
            for kp0 in (0..d / 2).step_by(16) {
                // Source: keys key0.., pairs kp0.. (stride d / 2); destination: panel
                // key0 / 32, rows kp0.. of 32 keys, columns key0 % 32.. .
                crate::kernels::transpose_tile16_bits(
                    kr32.add(key0 * d / 2 + kp0),
                    d / 2,
                    kb32.add((key0 / PANEL) * (d / 2) * PANEL + kp0 * PANEL + key0 % PANEL),
                    PANEL,
                );
            }
        }
        // v as the packed B operand of P v: panels of 32 dims, for each pair of keys the 32
        // dims' pairs side by side (one u32 each).
        let vb32 = vb.as_mut_ptr().cast::<u32>();
        let (vr0, vr1) = row.split_at_mut(d);
        for kp in 0..np / 2 {
            let (k0, k1) = (2 * kp, 2 * kp + 1);
            let round_or_zero = |key: usize, dst: &mut [u16]| {
                if key < n {
                    super::avx512::round_row(&v[key * rs..key * rs + d], dst[..d].as_mut_ptr());
                } else {
                    dst[..d].fill(0);
                }
            };
            round_or_zero(k0, vr0);
            round_or_zero(k1, vr1);
            for j in 0..d {
                *vb32.add((j / PANEL) * (np / 2) * PANEL + kp * PANEL + j % PANEL) =
                    vr0[j] as u32 | (vr1[j] as u32) << 16;
            }
        }
        load_config();
        for rb in 0..np / MB {
            // Causal: key panels wholly after the block's last query are masked anyway.
            let panels = if causal { (rb * MB + MB).min(np) / PANEL } else { np / PANEL };
            for p in 0..panels {
                block_ldc(
                    qa[rb * MB * d..].as_ptr(),
                    d,
                    kb[p * d * PANEL..].as_ptr(),
                    d,
                    scores[rb * MB * np + p * PANEL..].as_mut_ptr(),
                    np,
                );
            }
        }
        for r in 0..n {
            let live = if causal { r + 1 } else { n };
            super::avx512::softmax_to_bf16(&mut scores[r * np..r * np + live], &mut pa[r * np..r * np + live]);
            pa[r * np + live..(r + 1) * np].fill(0);
        }
        for rb in 0..np / MB {
            for p in 0..d / PANEL {
                block(pa[rb * MB * np..].as_ptr(), np, vb[p * np * PANEL..].as_ptr(), np, c.as_mut_ptr());
                for r in 0..MB.min(n.saturating_sub(rb * MB)) {
                    let dst = out.add((rb * MB + r) * ldo + p * PANEL);
                    std::ptr::copy_nonoverlapping(c[r * PANEL..].as_ptr(), dst, PANEL);
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }

    /// Buffers of [`attention_head`], kept per worker thread.
    #[derive(Default)]
    pub(in crate::kernels) struct AttentionScratch {
        qa: Vec<u16>,
        kb: Vec<u16>,
        vb: Vec<u16>,
        scores: Vec<f32>,
        pa: Vec<u16>,
        row: Vec<u16>,
        qs: Vec<f32>,
        c: Vec<f32>,
    }

    impl AttentionScratch {
        /// Sized for `np` (padded) tokens of `d` dims. Contents are left from the last call
        /// (new space is zero): every value read is written first, or finite and multiplied
        /// by zero (see [`attention_head`]).
        fn resize(&mut self, np: usize, d: usize) {
            self.qa.resize(np * d, 0);
            self.kb.resize(np * d, 0);
            self.vb.resize(np * d, 0);
            self.pa.resize(np * np, 0);
            // Two rows of d, then k rounded (np rows of d).
            self.row.resize(2 * d + np * d, 0);
            self.scores.resize(np * np, 0.0);
            self.qs.resize(d, 0.0);
            self.c.resize(MB * PANEL, 0.0);
        }
    }

    pub(super) fn matmul(x: &[f32], m: usize, w: &PackedBf16) -> Vec<f32> {
        // Whole 32-row blocks: the padding rows are zeros and their results are dropped.
        let a = round_rows(x, m, w.k, w.k_pad, m.div_ceil(MB) * MB);
        matmul_rows(&a, m, w)
    }

    /// Every 32 x 32 block of `a W^T` for rows `0..m` of `a` (bf16, `k_pad` wide, whole
    /// 32-row blocks), handed to `store(block, first row, rows, panel)`.
    fn for_each_block(
        a: &[u16],
        m: usize,
        w: &PackedBf16,
        store: impl Fn(&[f32; MB * PANEL], usize, usize, usize) + Sync,
    ) {
        let k_pad = w.k_pad;
        assert!(a.len() >= m.div_ceil(MB) * MB * k_pad, "A operand rows");
        let body = |c: &mut [f32; MB * PANEL], rows: std::ops::Range<usize>, p: usize| {
            let panel = w.panel(p);
            let mut r0 = rows.start;
            while r0 < rows.end {
                // SAFETY: the tile configuration is loaded (`start`); `a` has whole 32-row
                // blocks of k_pad from r0 (asserted above); the panel holds k_pad / 2 pairs of
                // 64 bf16; `c` is 32 x 32.
                unsafe { block(a[r0 * k_pad..].as_ptr(), k_pad, panel.as_ptr(), k_pad, c.as_mut_ptr()) };
                store(c, r0, MB.min(rows.end - r0), p);
                r0 += MB;
            }
        };
        par_blocks(m, MC, w.panels(), start_task, body, finish_task);
    }

    /// `a W^T + b` for rows `0..m` of the rounded operand `a` (see [`for_each_block`]).
    pub(super) fn matmul_rows(a: &[u16], m: usize, w: &PackedBf16) -> Vec<f32> {
        let n = w.n;
        let mut y = crate::kernels::uninit::<f32>(m * n);
        let out = SendPtr(y.as_mut_ptr().cast());
        for_each_block(a, m, w, |c, r0, rows, p| {
            // SAFETY: the stores cover rows r0..r0+rows (< m) and the panel's valid columns,
            // a block no other task writes.
            unsafe {
                store_block(
                    c,
                    rows,
                    PANEL.min(n - p * PANEL),
                    w.bias[p * PANEL..].as_ptr(),
                    out.at(r0 * n + p * PANEL),
                    n,
                )
            };
        });
        // SAFETY: the blocks cover every row and column.
        unsafe { crate::kernels::assume_init(y) }
    }

    /// `gelu(a W^T + b)` rounded to bf16, laid out as the A operand of the next product: `n`
    /// wide (a multiple of 32, checked by the caller), whole 32-row blocks with zero rows
    /// after `m`.
    pub(super) fn matmul_gelu_rows(a: &[u16], m: usize, w: &PackedBf16) -> Vec<u16> {
        let n = w.n;
        let rows_pad = m.div_ceil(MB) * MB;
        let mut h = crate::kernels::uninit::<u16>(rows_pad * n);
        h[m * n..].fill(std::mem::MaybeUninit::new(0));
        let out = SendPtr(h.as_mut_ptr().cast());
        for_each_block(a, m, w, |c, r0, rows, p| {
            // SAFETY: rows r0..r0+rows (< m), the panel's 32 columns (n is a multiple of 32):
            // a block no other task writes.
            unsafe {
                store_block_gelu(
                    c,
                    rows,
                    w.bias[p * PANEL..].as_ptr(),
                    out.at(0).cast::<u16>().add(r0 * n + p * PANEL),
                    n,
                )
            };
        });
        // SAFETY: the blocks cover every column of rows 0..m; the rest was zeroed above.
        unsafe { crate::kernels::assume_init(h) }
    }

    /// `out[r, c] = bf16(gelu(block[r, c] + bias[c]))` for `rows` rows and all 32 columns.
    ///
    /// # Safety
    /// AVX-512F/BF16/BW/VL; `bias` holds 32 values; `out` has `rows` rows of stride `ldo` with
    /// 32 writable values each.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")]
    unsafe fn store_block_gelu(c: &[f32; MB * PANEL], rows: usize, bias: *const f32, out: *mut u16, ldo: usize) {
        use std::arch::x86_64::*;
        let bias = std::slice::from_raw_parts(bias, PANEL);
        let mut v = [0f32; PANEL];
        for r in 0..rows {
            for ((d, &s), &b) in v.iter_mut().zip(&c[r * PANEL..(r + 1) * PANEL]).zip(bias) {
                *d = crate::kernels::math::gelu(s + b);
            }
            let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr()));
            let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(v.as_ptr().add(16)));
            let dst = out.add(r * ldo);
            _mm256_storeu_si256(dst.cast(), std::mem::transmute::<__m256bh, __m256i>(lo));
            _mm256_storeu_si256(dst.add(16).cast(), std::mem::transmute::<__m256bh, __m256i>(hi));
        }
    }

    /// `out[r, c] = block[r, c] + bias[c]` for the valid rows and columns of a 32 x 32 block.
    ///
    /// # Safety
    /// AVX-512F; `bias` holds 32 values; `out` has `rows` rows of stride `ldo` with `cols`
    /// writable columns each.
    #[target_feature(enable = "avx512f")]
    unsafe fn store_block(
        c: &[f32; MB * PANEL],
        rows: usize,
        cols: usize,
        bias: *const f32,
        out: *mut f32,
        ldo: usize,
    ) {
        use std::arch::x86_64::*;
        let (m0, m1) = crate::kernels::panel_masks(cols);
        let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
        for r in 0..rows {
            let src = c.as_ptr().add(r * PANEL);
            let dst = out.add(r * ldo);
            _mm512_mask_storeu_ps(dst, m0, _mm512_add_ps(_mm512_loadu_ps(src), b0));
            _mm512_mask_storeu_ps(dst.add(16), m1, _mm512_add_ps(_mm512_loadu_ps(src.add(16)), b1));
        }
    }
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
        let got = matmul_with(which, &x, m, &packed);
        let want = reference(&x, m, &w, n, k, &bias);
        let err = got.iter().zip(&want).fold(0f32, |e, (a, b)| e.max((a - b).abs()));
        // float32 sums of k exact products: error ~ k * 2^-24 * |terms|.
        assert!(err <= 1e-5 * k as f32, "{which:?} m={m} n={n} k={k}: max error {err}");
    }

    #[test]
    fn every_available_implementation_matches_the_rounded_reference() {
        let mut impls = vec![Impl::Portable];
        if avx512bf16_available() {
            impls.push(Impl::Avx512);
        }
        if amx_available() {
            impls.push(Impl::Amx);
        }
        eprintln!("testing {impls:?}");
        for which in impls {
            for (m, n, k) in [(1, 32, 32), (5, 40, 70), (33, 64, 96), (200, 96, 768), (13, 1024, 64), (130, 17, 33)] {
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
        for (m, width, hidden) in [(1, 40, 64), (37, 96, 128), (70, 64, 256)] {
            let x: Vec<f32> = (0..m * width).map(|_| rnd()).collect();
            let w1: Vec<f32> = (0..hidden * width).map(|_| rnd()).collect();
            let b1: Vec<f32> = (0..hidden).map(|_| rnd()).collect();
            let w2: Vec<f32> = (0..width * hidden).map(|_| rnd() * 0.1).collect();
            let b2: Vec<f32> = (0..width).map(|_| rnd()).collect();
            let (fc, proj) =
                (PackedBf16::pack(&w1, hidden, width, Some(&b1)), PackedBf16::pack(&w2, width, hidden, Some(&b2)));
            let mut h = matmul(&x, m, &fc);
            crate::kernels::math::gelu_in_place(&mut h);
            let want = matmul(&h, m, &proj);
            assert_eq!(mlp(&x, m, &fc, &proj), want, "m={m} width={width} hidden={hidden} ({:?})", selected());
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn softmax_to_bf16_matches_the_f64_softmax_at_every_length() {
        if !avx512bf16_available() {
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
