//! Float32 linear layers on `gemm`'s micro-kernel, with the weight stored once at load in the
//! micro-kernel's own operand layout.
//!
//! `gemm` packs its operands into that layout on every call. At one image's 197-577 rows the
//! packing of the weight was an eighth of B16's time (every weight element read and written for
//! 2 x 197 flops). Here the weight `(n, k)` is kept as panels of output columns, each panel `k`
//! rows of its width's contiguous values: the micro-kernel's vector side (64 values with
//! AVX-512, 16 with AVX2), which `gemm` reads in place when it is contiguous along those values
//! and the call has at most `8 x 6` rows (its default threshold for packing that operand
//! anyway; the thresholds are process-wide settings of `gemm`, so they are left alone). Each
//! call is one panel and a chunk of at most [`CHUNK_ROWS`] rows (on AVX2, our own register
//! tiles instead of `gemm`'s call, over a group of up to four panels: [`super::dense_avx2`]);
//! the calls are spread over rayon's threads, which also splits one image's rows over both
//! cores without either reading all the weight.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::{assume_init, uninit, SendPtr};

/// Output columns per panel of the weights widened from bf16 or int8 on the portable path:
/// `gemm`'s AVX-512 float32 micro-kernel is 64 values by 6 (4 x 16 lanes).
pub(crate) const PANEL: usize = 64;

/// Output columns per float32 panel in this process ([`choice`]): the side of `gemm`'s
/// micro-kernel, 64 with AVX-512 and 16 with AVX2 (2 x 8 lanes by 6 rows). With 64-column
/// panels on AVX2 each of a call's four 16-column tiles read its weight at a 256-byte stride,
/// every `k` step a new cache line from L2, and B16's products ran at 52-58% of a Zen 3's FMA
/// peak; a 16-column panel is one sequential stream (B16 batch 1 about 15% faster there, on
/// `gemm`), and the AVX2 register tiles ([`super::dense_avx2`]) read it with the activations in
/// place.
pub(crate) fn native_width() -> usize {
    choice().1
}

/// The float32 kernel and panel width of this process: AVX-512 CPUs take `gemm` on 64-column
/// panels, AVX2 CPUs our register tiles on 16-column ones, others `gemm` on 64. The environment
/// variable `PE_DENSE_KERNEL=avx2|gemm16|gemm64` forces one (for comparisons: `gemm64` is what
/// AVX2 CPUs ran before 2026-12-04).
fn choice() -> (Kernel, usize) {
    static CHOICE: std::sync::OnceLock<(Kernel, usize)> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let tiles = ("avx2", (Kernel::Avx2Tiles, super::dense_avx2::WIDTH), super::cpu::avx2());
        #[cfg(not(target_arch = "x86_64"))]
        let tiles = ("avx2", (Kernel::Gemm, PANEL), false);
        let gemm16 = ("gemm16", (Kernel::Gemm, 16), true);
        let gemm64 = ("gemm64", (Kernel::Gemm, PANEL), true);
        match super::cpu::simd() {
            super::cpu::Simd::Avx2 => super::choose("PE_DENSE_KERNEL", &[tiles, gemm16, gemm64]),
            _ => super::choose("PE_DENSE_KERNEL", &[gemm64, tiles, gemm16]),
        }
    })
}

/// Rows per call: `gemm` reads the panel in place up to 8 micro-kernel columns (48 rows), and
/// packs it (the cost this layout removes) above.
const CHUNK_ROWS: usize = 48;

/// A float32 weight `(n, k)` (PyTorch's `(out, in)`) as panels of `width` output columns
/// ([`native_width`]): panel `p` holds, for each input feature `kk`, the values of columns
/// `width p..width (p + 1)` side by side; the last panel is padded with zeros.
#[derive(Debug, Clone)]
pub(crate) struct DensePanels {
    k: usize,
    n: usize,
    width: usize,
    data: Vec<f32>,
}

impl DensePanels {
    /// From a row-major `(n, k)` weight (PyTorch's layout).
    pub(crate) fn from_out_in(w: &[f32], n: usize, k: usize) -> Self {
        Self::from_out_in_width(w, n, k, native_width())
    }

    /// [`Self::from_out_in`] in panels of `width` columns.
    pub(crate) fn from_out_in_width(w: &[f32], n: usize, k: usize, width: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight size");
        Self::build(n, k, width, |p, panel| {
            // A width x k block of `w` transposed into k x width, in 16 x 16 tiles where the CPU has them.
            let cols = width.min(n - p * width);
            super::transpose::transpose_into(&w[p * width * k..(p * width + cols) * k], cols, k, panel, width);
        })
    }

    /// From a row-major `(k, n)` weight (`W^T`, as some checkpoints are read).
    pub(crate) fn from_in_out(wt: &[f32], k: usize, n: usize) -> Self {
        Self::from_in_out_width(wt, k, n, native_width())
    }

    /// [`Self::from_in_out`] in panels of `width` columns.
    fn from_in_out_width(wt: &[f32], k: usize, n: usize, width: usize) -> Self {
        assert_eq!(wt.len(), n * k, "weight size");
        Self::build(n, k, width, |p, panel| {
            let (j0, cols) = (p * width, width.min(n - p * width));
            for (kk, row) in panel.chunks_exact_mut(width).enumerate() {
                row[..cols].copy_from_slice(&wt[kk * n + j0..kk * n + j0 + cols]);
            }
        })
    }

    /// Zero-filled panels, each written by `fill(p, panel)` in parallel.
    fn build(n: usize, k: usize, width: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        let mut data = vec![0f32; n.div_ceil(width) * width * k];
        if k > 0 {
            data.par_chunks_mut(width * k).enumerate().for_each(|(p, panel)| fill(p, panel));
        }
        DensePanels { k, n, width, data }
    }

    /// Input features.
    pub(crate) fn in_dim(&self) -> usize {
        self.k
    }

    /// Output features.
    pub(crate) fn out_dim(&self) -> usize {
        self.n
    }

    /// Panel `p`: `k` rows of `width` values.
    pub(crate) fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.width * self.k..(p + 1) * self.width * self.k]
    }

    /// The weight back as row-major `(k, n)` (`W^T`), for candle's generic product.
    pub(crate) fn unpack_t(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for p in 0..self.n.div_ceil(self.width) {
            let (j0, cols) = (p * self.width, self.width.min(self.n - p * self.width));
            for (kk, row) in self.panel(p).chunks_exact(self.width).enumerate() {
                out[kk * self.n + j0..kk * self.n + j0 + cols].copy_from_slice(&row[..cols]);
            }
        }
        out
    }
}

/// Where a product's weight comes from: panels of [`PanelSource::width`] output columns, each
/// `k` rows of `width` contiguous float32 values (the layout `gemm` reads in place), either
/// borrowed or written into the task's scratch (the bf16 weight, widened as it is used).
pub(crate) trait PanelSource: Sync {
    /// Input and output features `(k, n)`.
    fn dims(&self) -> (usize, usize);
    /// Output columns per panel: a multiple of the widest vector's lanes, so that `gemm` reads
    /// the panel in place.
    fn width(&self) -> usize;
    /// Panel `p`, `k` rows of `width` values (the last panel zero padded).
    fn panel<'s>(&'s self, p: usize, scratch: &'s mut Scratch) -> &'s [f32];
    /// Whether [`PanelSource::panel`] borrows stored panels (true) or makes them in the
    /// scratch, which holds one at a time (then a task keeps to one panel).
    fn borrowed(&self) -> bool {
        false
    }
}

/// A thread's buffer for panels that are made, not borrowed, and which panel it holds.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// The product (a number from [`CALLS`]) whose panel `data` holds.
    call: u64,
    /// The panel `data` holds, if any.
    pub(crate) panel: Option<usize>,
    /// Its values.
    pub(crate) data: Vec<f32>,
}

thread_local! {
    /// Each thread's [`Scratch`], kept between rayon's jobs and between products: a buffer per
    /// job (`for_each_init`) was allocated and cleared each time, and a job starting inside a
    /// panel widened it again (together 2% of a B16 bf16 forward on a Zen 1). It holds one
    /// panel, `k x 64` floats: 2.3 MB at most (G14's `c_proj`), a thread's for its life.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Products started so far: tells a thread's scratch which product its panel belongs to.
static CALLS: AtomicU64 = AtomicU64::new(0);

impl PanelSource for DensePanels {
    fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    fn width(&self) -> usize {
        self.width
    }

    fn panel<'s>(&'s self, p: usize, _: &'s mut Scratch) -> &'s [f32] {
        DensePanels::panel(self, p)
    }

    fn borrowed(&self) -> bool {
        true
    }
}

/// What a product does to each block of its output once the block's sums are done, while the
/// block is still in cache.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// Nothing: the sums (and the bias, when given) are the output.
    None,
    /// `gelu(y + bias)` (`gelu(y)` without one), the bits of [`super::math::gelu_bias_in_place`]
    /// (or `gelu_in_place`) over the whole output, without a pass of its own over the hidden
    /// layer (3% of T16's time on a Zen 1, though bound there by the erf's arithmetic more
    /// than by the pass's memory).
    Gelu(Option<&'a [f32]>),
}

/// `x (m, k) W^T + bias`, the bias (when given) written into each call's block of the output
/// first and accumulated onto.
pub(crate) fn matmul(x: &[f32], m: usize, w: &impl PanelSource, bias: Option<&[f32]>) -> Vec<f32> {
    matmul_then(x, m, w, bias, Epilogue::None)
}

/// The most panels a task of the AVX2 tiles takes: 64 columns, the reach of `gemm`'s
/// 64-column micro-panel.
const MAX_GROUP: usize = 4;

/// Panels per task for the AVX2 tiles: up to [`MAX_GROUP`], so that each 6-row tile of the
/// activations is read from L1 by every panel of the group instead of from L2 or beyond once
/// per panel (at B16 batch 8 the activations are 4.8 MB); fewer where the group's panels (`k x 64` bytes each) would fill more than half of a
/// 512 KB L2, or where the product would have under four tasks a thread.
fn panels_per_task(k: usize, panels: usize, chunks: usize) -> usize {
    let mut group = (4096 / k.max(1)).clamp(1, MAX_GROUP);
    while group > 1 && panels.div_ceil(group) * chunks < 4 * rayon::current_num_threads() {
        group /= 2;
    }
    group
}

/// Which micro-kernel a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `gemm`'s, reading the panels in place.
    Gemm,
    /// Ours on AVX2 ([`super::dense_avx2`]), for 16-column panels.
    Avx2Tiles,
}

/// The kernel for panels `width` columns wide: this process's [`choice`] for its own width,
/// else the AVX2 tiles for 16-column panels where the CPU has AVX2, else `gemm`.
fn kernel_for(width: usize) -> Kernel {
    let (kernel, native) = choice();
    if width == native {
        return kernel;
    }
    #[cfg(target_arch = "x86_64")]
    if width == super::dense_avx2::WIDTH && super::cpu::avx2() {
        return Kernel::Avx2Tiles;
    }
    Kernel::Gemm
}

/// [`matmul`] with `epilogue` applied to each task's block of the output.
pub(crate) fn matmul_then(
    x: &[f32],
    m: usize,
    w: &impl PanelSource,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    matmul_on(kernel_for(w.width()), x, m, w, bias, epilogue)
}

/// [`matmul_then`] on `kernel` (which must be able to read `w`'s panels).
pub(crate) fn matmul_on(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &impl PanelSource,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let ((k, n), width) = (w.dims(), w.width());
    assert_eq!(x.len(), m * k, "dense matmul input size");
    assert!(bias.is_none_or(|b| b.len() >= n), "dense matmul bias size");
    assert!(!matches!(epilogue, Epilogue::Gelu(Some(b)) if b.len() < n), "dense matmul GELU bias size");
    let mut y = uninit::<f32>(m * n);
    if m == 0 || n == 0 {
        // SAFETY: empty.
        return unsafe { assume_init(y) };
    }
    if m == 1 && kernel == Kernel::Gemm {
        // `gemm` takes a single row through its matrix-vector path, which sums in another
        // order: a row's last bits would depend on whether it came alone or in a batch. Two
        // copies of it take the path every other call takes (the weight's reading dominates).
        // The AVX2 tiles sum every row alike, so they take the one row as it is.
        let mut y = matmul_on(kernel, &[x, x].concat(), 2, w, bias, epilogue);
        y.truncate(n);
        return y;
    }
    // Row chunks of equal size (whole micro-kernel columns where possible), at most CHUNK_ROWS;
    // a last chunk of one row (that path again) takes 6 rows of the one before.
    let chunks = m.div_ceil(CHUNK_ROWS);
    let rows = m.div_ceil(chunks).div_ceil(6).saturating_mul(6).min(CHUNK_ROWS);
    let chunks = m.div_ceil(rows);
    let short = chunks > 1 && m - (chunks - 1) * rows == 1;
    let span = |c: usize| match c + 1 == chunks {
        true => {
            let r0 = c * rows - if short { 6 } else { 0 };
            (r0, m - r0)
        }
        false => (c * rows, if short && c + 2 == chunks { rows - 6 } else { rows }),
    };
    let panels = n.div_ceil(width);
    let group = match kernel {
        Kernel::Avx2Tiles if w.borrowed() => panels_per_task(k, panels, chunks),
        _ => 1,
    };
    let out = SendPtr(y.as_mut_ptr().cast());
    // Panel-major order: consecutive tasks share a panel or group of panels (in cache, and
    // made once where it is made) and cover its rows.
    let call = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    let task = |scratch: &mut Scratch, t: usize| {
        if scratch.call != call {
            (scratch.call, scratch.panel) = (call, None);
        }
        let (g, c) = (t / chunks, t % chunks);
        let (p0, p1) = (g * group, (g * group + group).min(panels));
        let (j0, cols) = (p0 * width, (p1 * width).min(n) - p0 * width);
        let (r0, rs) = span(c);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Tiles => {
                use super::dense_avx2::{tiles, Block, MR, WIDTH};
                // The group's biases once a task; each 6-row tile stays in L1 while the group's
                // panels pass over it.
                debug_assert!(p1 - p0 <= MAX_GROUP, "a group's biases fit");
                let mut biases = [[0f32; WIDTH]; MAX_GROUP];
                if let Some(b) = bias {
                    for (p, b16) in (p0..p1).zip(&mut biases) {
                        let (jp, cols) = (p * width, width.min(n - p * width));
                        b16[..cols].copy_from_slice(&b[jp..jp + cols]);
                    }
                }
                for r in (r0..r0 + rs).step_by(MR) {
                    for (p, b16) in (p0..p1).zip(&biases) {
                        let panel = w.panel(p, scratch);
                        debug_assert_eq!(panel.len(), k * width, "panel size");
                        let jp = p * width;
                        let block = Block {
                            a: x.as_ptr().wrapping_add(r * k),
                            lda: k,
                            b: panel.as_ptr(),
                            k,
                            bias: b16,
                            c: out.at(r * n + jp),
                            ldc: n,
                            cols: width.min(n - jp),
                        };
                        // SAFETY: this kernel is chosen only where the CPU has AVX2 and FMA and
                        // for panels of its width; rows r..r + MR (at most r0 + rs <= m) of x
                        // (stride k) and of the output (stride n), the panel's k rows and the
                        // output's columns jp..jp + cols <= n lie inside their buffers, and no
                        // other task writes this block.
                        unsafe { tiles(block, MR.min(r0 + rs - r)) }
                    }
                }
            }
            _ => {
                debug_assert_eq!(p1, p0 + 1, "one panel a task");
                let panel = w.panel(p0, scratch);
                debug_assert_eq!(panel.len(), k * width, "panel size");
                if let Some(b) = bias {
                    for r in r0..r0 + rs {
                        // SAFETY: row r < m, columns j0..j0 + cols <= n of the m x n output; no other
                        // task writes this block.
                        let row = unsafe { std::slice::from_raw_parts_mut(out.at(r * n + j0), cols) };
                        row.copy_from_slice(&b[j0..j0 + cols]);
                    }
                }
                // SAFETY: the block rows r0..r0 + rs, columns j0..j0 + cols of the m x n output (row
                // stride n), the same rows of x (m x k, stride k) and the panel's k rows of `width`
                // values (stride width, `cols` of them used) lie inside their buffers, checked above.
                // Without a bias the output is not read (`read_dst` false).
                unsafe {
                    gemm::gemm(
                        rs,
                        cols,
                        k,
                        out.at(r0 * n + j0),
                        1,
                        n as isize,
                        bias.is_some(),
                        x.as_ptr().add(r0 * k),
                        1,
                        k as isize,
                        panel.as_ptr(),
                        1,
                        width as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        }
        if let Epilogue::Gelu(gelu_bias) = epilogue {
            for r in r0..r0 + rs {
                // SAFETY: as for the bias above: this task's block, written by the product.
                let row = unsafe { std::slice::from_raw_parts_mut(out.at(r * n + j0), cols) };
                super::math::gelu_bias_slice(row, gelu_bias.map(|b| &b[j0..j0 + cols]));
            }
        }
    };
    (0..panels.div_ceil(group) * chunks).into_par_iter().for_each(|t| {
        // A task never re-enters rayon while it holds the scratch; should it ever, it gets a
        // buffer of its own rather than a panic.
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => task(&mut scratch, t),
            Err(_) => task(&mut Scratch::default(), t),
        })
    });
    // SAFETY: the tasks cover every row chunk of every panel: each element was written, by
    // the bias and then the product, or by the product alone.
    unsafe { assume_init(y) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GELU epilogue gives each element the bits of the whole-output GELU passes, with the
    /// bias in the GELU (`gelu(x W^T + b)`) or in the product, on ragged panels, one row, and
    /// (1,000 rows) groups of panels a task.
    #[test]
    fn the_gelu_epilogue_equals_the_separate_pass() {
        let (k, n) = (40, 150);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 97.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 - 75.0) / 31.0).collect();
        for (width, m) in [16, 64].into_iter().flat_map(|width| [1, 2, 7, 97, 1000].map(|m| (width, m))) {
            let panels = DensePanels::from_out_in_width(&w, n, k, width);
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 53 % 89) as f32 - 44.0) / 71.0).collect();
            let mut want = matmul(&x, m, &panels, None);
            crate::kernels::math::gelu_bias_in_place(&mut want, &b);
            assert_eq!(
                matmul_then(&x, m, &panels, None, Epilogue::Gelu(Some(&b))),
                want,
                "{m} rows, bias in the GELU, width {width}"
            );
            let mut want = matmul(&x, m, &panels, Some(&b));
            crate::kernels::math::gelu_in_place(&mut want);
            assert_eq!(
                matmul_then(&x, m, &panels, Some(&b), Epilogue::Gelu(None)),
                want,
                "{m} rows, bias in the product, width {width}"
            );
            assert!(want.iter().any(|&v| v < 0.0) && want.iter().any(|&v| v > 1.0), "the GELU's both sides are tested");
        }
    }

    /// Each row's result is the same to the bit whether it is computed alone or among any
    /// number of rows (an image embedded alone or in a batch), including a last row chunk of
    /// one row (4,081 = 85 x 48 + 1).
    #[test]
    fn rows_do_not_depend_on_their_batch() {
        let (k, n) = (24, 80);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 97.0).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 / 31.0).collect();
        let x: Vec<f32> = (0..4081 * k).map(|i| ((i * 53 % 89) as f32 - 44.0) / 71.0).collect();
        for width in [16, 64] {
            let panels = DensePanels::from_out_in_width(&w, n, k, width);
            let alone: Vec<Vec<f32>> = x.chunks_exact(k).map(|row| matmul(row, 1, &panels, Some(&b))).collect();
            for m in [2, 7, 49, 97, 4081] {
                let y = matmul(&x[..m * k], m, &panels, Some(&b));
                for (r, row) in y.chunks_exact(n).enumerate() {
                    assert_eq!(row, &alone[r][..], "row {r} of {m}, width {width}");
                }
            }
        }
    }

    /// Both packings and the product, with and without a bias, against float64, on sizes that
    /// leave a partial panel, partial row chunks and rows that are no whole micro-kernel, and
    /// (1,000 rows) groups of panels a task with a partial last group.
    #[test]
    fn panels_match_float64() {
        let mut seed = 11u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let shapes =
            [(1, 7, 5), (5, 33, 64), (49, 29, 150), (197, 40, 128), (101, 64, 70), (50, 9, 17), (1000, 40, 130)];
        for (width, (m, k, n)) in [16, 64].into_iter().flat_map(|width| shapes.map(|s| (width, s))) {
            let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let panels = DensePanels::from_out_in_width(&w, n, k, width);
            let wt = super::super::transpose(&w, n, k);
            assert_eq!(panels.unpack_t(), wt, "({n}, {k}) unpacked, width {width}");
            assert_eq!(DensePanels::from_in_out_width(&wt, k, n, width).data, panels.data, "({n}, {k}) from (k, n)");
            for (bias, kernel) in
                [Some(&b[..]), None].into_iter().flat_map(|b| [(b, Kernel::Gemm), (b, kernel_for(width))])
            {
                let got = matmul_on(kernel, &x, m, &panels, bias, Epilogue::None);
                let err = (0..m * n).fold(0f64, |e, i| {
                    let (r, c) = (i / n, i % n);
                    let dot = (0..k).map(|j| x[r * k + j] as f64 * w[c * k + j] as f64).sum::<f64>();
                    e.max((got[i] as f64 - dot - bias.map_or(0.0, |b| b[c] as f64)).abs())
                });
                assert!(
                    err < 1e-5,
                    "m {m}, k {k}, n {n}, width {width}, {kernel:?}, bias {}: max error {err}",
                    bias.is_some()
                );
            }
        }
    }
}
