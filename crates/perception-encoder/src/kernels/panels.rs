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

    /// Panel `p`: `k_pad / group` groups of `32 x group` values.
    pub(crate) fn panel(&self, p: usize) -> &[T] {
        let len = self.k_pad * PANEL;
        &self.data[p * len..(p + 1) * len]
    }

    /// The weight back as float32 `(k, n)` (`W^T`), each value through `f`.
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

/// `values` (one per output column, or zeros) padded to whole panels.
pub(crate) fn per_column(values: Option<&[f32]>, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n.div_ceil(PANEL) * PANEL];
    if let Some(v) = values {
        out[..n].copy_from_slice(&v[..n]);
    }
    out
}
