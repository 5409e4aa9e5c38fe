//! The packed weight layout of the bf16 and int8 kernels: a weight `(n, k)` (PyTorch's
//! `(out, in)`) as panels of 32 output columns; within a panel, for each group of `G` input
//! rows (2 for bf16, 4 for int8), the 32 columns' `G` values side by side. That is the operand
//! layout of `vdpbf16ps` / `vpdpbusd` (16 columns per vector) and of AMX's `tdpbf16ps` /
//! `tdpbssd` (a 16-group x 16-column tile). `K` is padded with zeros to the kernels' alignment
//! and `N` to whole panels, so no kernel sees a ragged edge there.

use rayon::prelude::*;

/// Columns per panel.
pub(crate) const PANEL: usize = 32;

/// A packed weight; the element type and group size are the kernel family's.
#[derive(Debug, Clone)]
pub(crate) struct Panels<T> {
    /// Input features.
    pub k: usize,
    /// Output features.
    pub n: usize,
    /// `k` rounded up to the kernels' alignment.
    pub k_pad: usize,
    /// Values per group of input rows.
    group: usize,
    /// `panels x k_pad x 32` values.
    data: Vec<T>,
}

impl<T: Copy + Default + Send + Sync> Panels<T> {
    /// Pack `w`, row-major `(n, k)`, in groups of `G` input rows, with `k` padded to a multiple
    /// of `k_align` (itself a multiple of `G`); `value(j, v)` is the packed form of
    /// `w[j, _] = v`. (`G` is a constant so the index arithmetic is shifts, not divisions.)
    pub(crate) fn pack<const G: usize>(
        w: &[f32],
        n: usize,
        k: usize,
        k_align: usize,
        value: impl Fn(usize, f32) -> T + Sync,
    ) -> Self {
        assert_eq!(w.len(), n * k, "weight size");
        let k_pad = k.div_ceil(k_align) * k_align;
        let panel_len = k_pad * PANEL;
        let mut data = vec![T::default(); n.div_ceil(PANEL) * panel_len];
        data.par_chunks_mut(panel_len).enumerate().for_each(|(p, panel)| {
            for c in 0..PANEL.min(n - p * PANEL) {
                let j = p * PANEL + c;
                for (kk, &v) in w[j * k..(j + 1) * k].iter().enumerate() {
                    panel[(kk / G) * G * PANEL + G * c + kk % G] = value(j, v);
                }
            }
        });
        Panels { k, n, k_pad, group: G, data }
    }

    /// Number of panels.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// The packed weight's size in bytes.
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of_val(self.data.as_slice())
    }

    /// Panel `p`: `k_pad / group` groups of `32 x group` values.
    pub(crate) fn panel(&self, p: usize) -> &[T] {
        let len = self.k_pad * PANEL;
        &self.data[p * len..(p + 1) * len]
    }

    /// The weight back as float32 `(k, n)` (`W^T`), each value through `f`.
    #[cfg(test)]
    pub(crate) fn unpack_t(&self, f: impl Fn(T) -> f32) -> Vec<f32> {
        let g = self.group;
        let mut out = vec![0f32; self.k * self.n];
        for p in 0..self.panels() {
            let panel = self.panel(p);
            for kk in 0..self.k {
                for c in 0..PANEL.min(self.n - p * PANEL) {
                    out[kk * self.n + p * PANEL + c] = f(panel[(kk / g) * g * PANEL + g * c + kk % g]);
                }
            }
        }
        out
    }
}

/// A packed weight read as `dense`'s float32 panels, for the portable paths (`gemm`'s float32
/// micro-kernel on any CPU): `dense`'s panel `p` is the packed panels `2p` and `2p + 1` side by
/// side, each value through `f`, made when a task first needs it. The weight in memory stays
/// packed; what is widened is the panel a task works on, in cache.
pub(crate) struct Widened<'a, T, F> {
    /// The packed weight.
    pub(crate) w: &'a Panels<T>,
    /// A packed value as float32.
    pub(crate) f: F,
}

impl<T: Copy + Default + Send + Sync, F: Fn(T) -> f32 + Sync> super::dense::PanelSource for Widened<'_, T, F> {
    fn dims(&self) -> (usize, usize) {
        (self.w.k, self.w.n)
    }

    fn width(&self) -> usize {
        super::dense::PANEL
    }

    fn panel<'s>(&'s self, p: usize, scratch: &'s mut super::dense::Scratch) -> &'s [f32] {
        const WIDTH: usize = super::dense::PANEL;
        if scratch.panel != Some(p) {
            let w = self.w;
            // Every value is written below (widened, or zero past the last panel), so the
            // buffer is not cleared first.
            scratch.data.resize(w.k * WIDTH, 0.0);
            for half in 0..WIDTH / PANEL {
                let q = p * (WIDTH / PANEL) + half;
                let (dst, f) = (&mut scratch.data[..], &self.f);
                if q >= w.panels() {
                    dst.chunks_exact_mut(WIDTH).for_each(|row| row[half * PANEL..][..PANEL].fill(0.0));
                    continue;
                }
                let src = w.panel(q);
                match w.group {
                    2 => super::math::dispatch!(widen_pairs(src, w.k, dst, half, f)),
                    4 => super::math::dispatch!(widen_quads(src, w.k, dst, half, f)),
                    g => unreachable!("group size {g}"),
                }
            }
            scratch.panel = Some(p);
        }
        &scratch.data
    }
}

/// [`widen_half`] for groups of 2 (bf16).
#[inline(always)]
fn widen_pairs<T: Copy, F: Fn(T) -> f32>(src: &[T], k: usize, dst: &mut [f32], half: usize, f: &F) {
    widen_half::<2, T, F>(src, k, dst, half, f)
}

/// [`widen_half`] for groups of 4 (int8).
#[inline(always)]
fn widen_quads<T: Copy, F: Fn(T) -> f32>(src: &[T], k: usize, dst: &mut [f32], half: usize, f: &F) {
    widen_half::<4, T, F>(src, k, dst, half, f)
}

/// Packed panel `src` (groups of `G` input rows) into columns `32 half .. 32 half + 32` of the
/// `k` rows of `dst` (rows of `dense`'s panel width), each value through `f`. `G` a constant
/// and the source read in order, so the loop is a vectorized de-interleave: with the group as
/// a run-time value, a division per value made the widening ~10% of a bf16 product at 197 rows.
#[inline(always)]
fn widen_half<const G: usize, T: Copy, F: Fn(T) -> f32>(src: &[T], k: usize, dst: &mut [f32], half: usize, f: &F) {
    const WIDTH: usize = super::dense::PANEL;
    for (group, rows) in src.chunks_exact(G * PANEL).zip(dst.chunks_mut(G * WIDTH)) {
        if rows.len() == G * WIDTH {
            for c in 0..PANEL {
                for m in 0..G {
                    rows[m * WIDTH + half * PANEL + c] = f(group[G * c + m]);
                }
            }
        } else {
            // The last group's rows below k.
            for (m, row) in rows.chunks_exact_mut(WIDTH).enumerate() {
                for (c, v) in row[half * PANEL..][..PANEL].iter_mut().enumerate() {
                    *v = f(group[G * c + m]);
                }
            }
        }
    }
    debug_assert!(dst.len() == k * WIDTH);
}

/// `values` (one per output column, or zeros) padded to whole panels.
pub(crate) fn per_column(values: Option<&[f32]>, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n.div_ceil(PANEL) * PANEL];
    if let Some(v) = values {
        out[..n].copy_from_slice(&v[..n]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dense::{PanelSource, Scratch, PANEL as WIDTH};

    /// Products on widened weights of one shape, one after another, each read their own weight:
    /// the threads' scratch keeps a panel between products but never hands it to the next one.
    #[test]
    fn a_widened_panel_is_not_reused_by_the_next_product() {
        use crate::kernels::dense::{matmul, DensePanels};
        // One panel (every task on every thread wants panel 0 of each product), then five.
        for (m, k, n) in [(97, 70, 60), (97, 70, 300)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 53 % 89) as f32 - 44.0) / 71.0).collect();
            let weights: Vec<Panels<f32>> = (0..3)
                .map(|s| {
                    let w: Vec<f32> = (0..n * k).map(|i| ((i * (37 + 2 * s) % 101) as f32 - 50.0) / 97.0).collect();
                    Panels::pack::<2>(&w, n, k, 32, |_, v| v)
                })
                .collect();
            let want: Vec<Vec<f32>> = weights
                .iter()
                .map(|w| matmul(&x, m, &DensePanels::from_in_out(&w.unpack_t(|v| v), k, n), None))
                .collect();
            assert_ne!(want[0], want[1], "the weights differ");
            for i in [0, 1, 2, 1, 0, 0, 2] {
                let got = matmul(&x, m, &Widened { w: &weights[i], f: |v: f32| v }, None);
                assert_eq!(got, want[i], "n {n}, weight {i}");
            }
        }
    }

    /// Every widened panel holds the weight's columns in order (a pair of packed panels side
    /// by side, zeros past the last column), for both group sizes, ragged `k` and `n`, and
    /// a scratch reused across panels.
    #[test]
    fn widened_panels_are_the_unpacked_weight() {
        for (n, k) in [(40, 5), (64, 33), (100, 70), (129, 8)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 4.0).collect();
            let bf = Panels::pack::<2>(&w, n, k, 32, |_, v| v);
            let i8 = Panels::pack::<4>(&w, n, k, 64, |_, v| v as i8);
            let (want_bf, want_i8) = (bf.unpack_t(|v| v), i8.unpack_t(|q| q as f32));
            let (wbf, wi8) = (Widened { w: &bf, f: |v: f32| v }, Widened { w: &i8, f: |q: i8| q as f32 });
            assert_eq!((wbf.dims(), wbf.width()), ((k, n), WIDTH));
            let mut scratch = Scratch::default();
            for (source, want) in [(&wbf as &dyn PanelSource, &want_bf), (&wi8, &want_i8)] {
                for p in (0..n.div_ceil(WIDTH)).chain([0]) {
                    let panel = source.panel(p, &mut scratch).to_vec();
                    assert_eq!(panel.len(), k * WIDTH, "n {n} k {k} panel {p}");
                    for kk in 0..k {
                        for c in 0..WIDTH {
                            let j = p * WIDTH + c;
                            let expected = if j < n { want[kk * n + j] } else { 0.0 };
                            assert_eq!(panel[kk * WIDTH + c], expected, "n {n} k {k} panel {p} row {kk} column {c}");
                        }
                    }
                }
                scratch.panel = None;
            }
        }
    }
}
