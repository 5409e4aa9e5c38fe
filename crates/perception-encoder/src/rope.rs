//! 2D rotary position embedding (`Rope2D` in the reference's `pe.py`).
//!
//! Each head's dimension is split in two halves, x (column) first, then y (row); each half
//! rotates adjacent pairs by `position * f_j` with `f_j = 1 / 10000^(2j / (head_dim / 2))`.
//! With a class token, patch positions count from 1 and the class token gets angle 0.
//! The grid is the actual input grid: no rescaling to the training grid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;

/// `cos` / `sin` of one grid's angle table, `(seq, rot_dim)`, as tensors in the compute dtype
/// and as float32 vectors for the CPU kernels.
#[derive(Debug, Clone)]
pub(crate) struct CosSin {
    pub cos: Tensor,
    pub sin: Tensor,
    pub cos_f32: Arc<Vec<f32>>,
    pub sin_f32: Arc<Vec<f32>>,
}

/// The angle table for a grid and the rotation it implies.
#[derive(Debug)]
pub struct Rope2d {
    head_dim: usize,
    use_cls_token: bool,
    /// Per-axis frequencies, float32 as the reference computes them.
    freqs: Vec<f32>,
    cache: Mutex<HashMap<(usize, usize, DType), CosSin>>,
}

impl Rope2d {
    /// RoPE for heads of `head_dim`, with or without a leading class token.
    pub fn new(head_dim: usize, use_cls_token: bool) -> Self {
        // RotaryEmbedding(dim = head_dim // 2): freqs = 1 / theta^(arange(0, dim, 2)[:dim // 2] / dim)
        let dim = head_dim / 2;
        let freqs = (0..dim / 2)
            .map(|j| {
                let exponent = (2 * j) as f32 / dim as f32;
                1.0f32 / 10000f32.powf(exponent)
            })
            .collect();
        Rope2d { head_dim, use_cls_token, freqs, cache: Mutex::new(HashMap::new()) }
    }

    /// Number of leading head dimensions that rotate (all of them when `head_dim` is a multiple
    /// of 4; the rest pass through unchanged, as in the reference).
    pub fn rot_dim(&self) -> usize {
        4 * self.freqs.len()
    }

    /// The angle table, row-major over `(seq, rot_dim)`; `seq` includes the class token if any.
    pub fn angles(&self, grid_h: usize, grid_w: usize) -> Vec<f32> {
        let rd = self.rot_dim();
        let offset = usize::from(self.use_cls_token);
        let mut out = Vec::with_capacity((grid_h * grid_w + offset) * rd);
        if self.use_cls_token {
            out.extend(std::iter::repeat_n(0f32, rd));
        }
        for r in 0..grid_h {
            for c in 0..grid_w {
                for pos in [(c + offset) as f32, (r + offset) as f32] {
                    for &f in &self.freqs {
                        let a = pos * f;
                        out.push(a);
                        out.push(a);
                    }
                }
            }
        }
        out
    }

    /// The angle table as a float32 tensor of shape `(1, seq, rot_dim)`, the reference's `freq`.
    pub fn angle_table(&self, grid_h: usize, grid_w: usize, device: &Device) -> Result<Tensor> {
        let seq = grid_h * grid_w + usize::from(self.use_cls_token);
        Ok(Tensor::from_vec(self.angles(grid_h, grid_w), (1, seq, self.rot_dim()), device)?)
    }

    /// `cos` and `sin` of the angle table, shape `(seq, rot_dim)`, cached per grid.
    pub(crate) fn cos_sin(&self, grid_h: usize, grid_w: usize, dtype: DType, device: &Device) -> Result<CosSin> {
        let key = (grid_h, grid_w, dtype);
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(hit);
        }
        let angles = self.angles(grid_h, grid_w);
        let seq = grid_h * grid_w + usize::from(self.use_cls_token);
        let rd = self.rot_dim();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let t = CosSin {
            cos: Tensor::from_slice(&cos, (seq, rd), device)?.to_dtype(dtype)?,
            sin: Tensor::from_slice(&sin, (seq, rd), device)?.to_dtype(dtype)?,
            cos_f32: Arc::new(cos),
            sin_f32: Arc::new(sin),
        };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, t.clone());
        }
        Ok(t)
    }

    /// Rotate `t` of shape `(batch, heads, seq, head_dim)`: `t*cos + rotate_half(t)*sin`, where
    /// `rotate_half` maps each adjacent pair `(a, b)` to `(-b, a)`.
    pub(crate) fn apply(&self, t: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let rd = self.rot_dim();
        let (b, h, n, hd) = t.dims4()?;
        let rot = if rd == hd { t.clone() } else { t.narrow(D::Minus1, 0, rd)? };
        let pairs = rot.reshape((b, h, n, rd / 2, 2))?;
        let first = pairs.narrow(D::Minus1, 0, 1)?;
        let second = pairs.narrow(D::Minus1, 1, 1)?;
        let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?.reshape((b, h, n, rd))?;
        let out = (rot.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
        if rd == hd {
            Ok(out)
        } else {
            Ok(Tensor::cat(&[&out, &t.narrow(D::Minus1, rd, hd - rd)?], D::Minus1)?)
        }
    }

    /// The head dimension this RoPE was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

/// RoPE tables for one grid: tensors for the generic path, float32 vectors for the CPU kernel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RopeTables<'a> {
    pub rope: &'a Rope2d,
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub cos_f32: &'a [f32],
    pub sin_f32: &'a [f32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_angles() {
        let r = Rope2d::new(8, true); // 4 dims per axis: 2 frequencies, each repeated for a pair
        assert_eq!(r.rot_dim(), 8);
        let a = r.angles(2, 3);
        assert_eq!(a.len(), 7 * 8);
        assert!(a[..8].iter().all(|&x| x == 0.0));
        // second patch: row 0 col 1 -> x = 2, y = 1 (positions count from 1)
        let p = &a[2 * 8..3 * 8];
        let f1 = 1.0 / 10000f32.powf(0.5);
        assert_eq!(p, &[2.0, 2.0, 2.0 * f1, 2.0 * f1, 1.0, 1.0, f1, f1]);
    }

    #[test]
    fn odd_head_dims_rotate_a_prefix() {
        // head_dim 20 (tiny-nocls): 5 frequencies per axis, all 20 dims rotate.
        assert_eq!(Rope2d::new(20, false).rot_dim(), 20);
        // head_dim 18: dim 9 -> 4 frequencies -> 16 rotated, 2 pass through.
        assert_eq!(Rope2d::new(18, false).rot_dim(), 16);
    }
}
