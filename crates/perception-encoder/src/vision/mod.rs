//! The vision tower (`VisionTransformer` in the reference's `pe.py`).
//!
//! `conv1` patch embedding (no bias), optional class token, absolute position embedding
//! (bilinearly resampled when the grid differs from the trained one), 2D RoPE, `ln_pre`, the
//! residual blocks, `ln_post`, then pooling (`attn_pool` for PE Core) and `proj`.

mod attn_pool;
mod posemb;

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::{PoolType, VisionConfig};
use crate::error::{Error, Result};
use crate::layers::{ln, LayerNorm};
use crate::precision::Precision;
use crate::rope::Rope2d;
use crate::rope::RopeTables;
use crate::transformer::{stop_index, Transformer};
use attn_pool::AttnPool;

/// The PE vision tower.
#[derive(Debug)]
pub struct VisionTransformer {
    cfg: VisionConfig,
    /// `conv1.weight` as a `(3 * patch * patch, width)` matrix: the convolution as a GEMM.
    conv1: Tensor,
    class_embedding: Option<Tensor>,
    positional_embedding: Option<Tensor>,
    posemb_cache: Mutex<HashMap<(usize, usize), Tensor>>,
    ln_pre: Option<LayerNorm>,
    transformer: Transformer,
    ln_post: Option<LayerNorm>,
    attn_pool: Option<AttnPool>,
    proj: Option<Tensor>,
    rope: Option<Rope2d>,
    /// The precision asked for (reported by [`VisionTransformer::precision`]).
    precision: Precision,
    /// The activations' dtype (float32 when bfloat16 runs through the CPU kernels).
    act_dtype: DType,
    device: Device,
}

impl VisionTransformer {
    /// Build the tower from `vb`, whose prefix is the tower's (`visual` in a CLIP checkpoint),
    /// in `precision` (see [`Precision`]).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder, precision: Precision) -> Result<Self> {
        let (vb, kind) = crate::layers::plan(vb, precision, cfg.pool_type == PoolType::Attn)?;
        let w = cfg.width;
        let p = cfg.patch_size;
        let conv1 = vb.pp("conv1").get((w, 3, p, p), "weight")?.reshape((w, 3 * p * p))?.t()?.contiguous()?;
        let class_embedding = if cfg.use_cls_token { Some(vb.get(w, "class_embedding")?) } else { None };
        let positional_embedding =
            if cfg.use_abs_posemb { Some(vb.get((cfg.num_positions(), w), "positional_embedding")?) } else { None };
        let ln_pre = if cfg.use_ln_pre { Some(ln(w, vb.pp("ln_pre"))?) } else { None };
        let transformer = Transformer::new(&cfg.block(kind), cfg.layers, vb.pp("transformer"))?;
        let ln_post = if cfg.use_ln_post { Some(ln(w, vb.pp("ln_post"))?) } else { None };
        let attn_pool = if cfg.pool_type == PoolType::Attn {
            Some(AttnPool::new(w, cfg.attn_pooler_heads, vb.pp("attn_pool"), kind)?)
        } else {
            None
        };
        let proj = match cfg.output_dim {
            Some(d) => Some(vb.get((w, d), "proj")?),
            None => None,
        };
        let rope = cfg.use_rope2d.then(|| Rope2d::new(cfg.head_dim(), cfg.use_cls_token));
        Ok(VisionTransformer {
            cfg: cfg.clone(),
            conv1,
            class_embedding,
            positional_embedding,
            posemb_cache: Mutex::new(HashMap::new()),
            ln_pre,
            transformer,
            ln_post,
            attn_pool,
            proj,
            rope,
            precision,
            act_dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// The tower's configuration (after any [`VisionTransformer::truncate`]).
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// The precision the model was built for. With bf16 or int8 on the CPU the linear layers
    /// hold reduced-precision weights and the rest computes in float32.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The activations' dtype: float32 on the CPU in every [`Precision`], bfloat16 for bf16 on
    /// other devices, or the dtype of a `VarBuilder` given to [`crate::Clip::new`].
    pub fn dtype(&self) -> DType {
        self.act_dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pooled (and projected) output after block `layer_idx`: the embedding a tower truncated
    /// there would give (`truncate(layer_idx)` then `forward`).
    pub fn forward_at(&self, x: &Tensor, layer_idx: isize) -> Result<Tensor> {
        let feats = self.forward_features(x, layer_idx, true, false)?;
        let pooled = self.pool(&feats)?;
        match &self.proj {
            Some(p) => Ok(pooled.broadcast_matmul(p)?),
            None => Ok(pooled),
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<(usize, usize, usize)> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[0] == 0 {
            return Err(Error::InvalidInput(format!(
                "images must be a non-empty (batch, 3, height, width) tensor, got shape {dims:?}"
            )));
        }
        let (gh, gw) = self.cfg.grid(dims[2], dims[3]);
        if gh == 0 || gw == 0 {
            return Err(Error::InvalidInput(format!(
                "image of {}x{} pixels is smaller than one {}-pixel patch",
                dims[2], dims[3], self.cfg.patch_size
            )));
        }
        Ok((dims[0], gh, gw))
    }

    /// The absolute position embedding added for a `grid_h x grid_w` grid, `(1, seq, width)`:
    /// the stored table at the trained grid, otherwise its bilinear resampling.
    pub fn posemb(&self, grid_h: usize, grid_w: usize) -> Result<Option<Tensor>> {
        let Some(table) = &self.positional_embedding else { return Ok(None) };
        let g = self.cfg.grid_size();
        if grid_h == g && grid_w == g {
            return Ok(Some(table.unsqueeze(0)?));
        }
        if let Some(hit) = self.posemb_cache.lock().ok().and_then(|c| c.get(&(grid_h, grid_w)).cloned()) {
            return Ok(Some(hit));
        }
        let w = self.cfg.width;
        let all: Vec<f32> = table.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let cls = usize::from(self.cfg.use_cls_token);
        let mut out = all[..cls * w].to_vec();
        out.extend(posemb::resample(&all[cls * w..], g, w, grid_h, grid_w));
        let t = Tensor::from_vec(out, (1, cls + grid_h * grid_w, w), &self.device)?.to_dtype(self.act_dtype)?;
        if let Ok(mut c) = self.posemb_cache.lock() {
            c.insert((grid_h, grid_w), t.clone());
        }
        Ok(Some(t))
    }

    /// The RoPE angle table for a grid, `(1, seq, rot_dim)` float32, or `None` without RoPE.
    pub fn rope_angles(&self, grid_h: usize, grid_w: usize) -> Result<Option<Tensor>> {
        match &self.rope {
            Some(r) => Ok(Some(r.angle_table(grid_h, grid_w, &self.device)?)),
            None => Ok(None),
        }
    }

    /// The input of `ln_pre`: patch embeddings in row-major order, the class token prepended,
    /// plus the position embedding. Returns the tokens and the grid.
    pub fn tokens_in(&self, x: &Tensor) -> Result<(Tensor, usize, usize)> {
        let (b, gh, gw) = self.check_input(x)?;
        let p = self.cfg.patch_size;
        let x = x.to_device(&self.device)?.to_dtype(self.act_dtype)?;
        // Strided conv with kernel = stride = patch, as a GEMM over unfolded patches; pixels
        // past the last whole patch are dropped, as the convolution does.
        let x = x.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
        let patches = x
            .reshape((b, 3, gh, p, gw, p))?
            .permute([0, 2, 4, 1, 3, 5])?
            .contiguous()?
            .reshape((b * gh * gw, 3 * p * p))?;
        let mut tokens = patches.matmul(&self.conv1)?.reshape((b, gh * gw, self.cfg.width))?;
        if let Some(cls) = &self.class_embedding {
            let cls = cls.reshape((1, 1, self.cfg.width))?.broadcast_as((b, 1, self.cfg.width))?;
            tokens = Tensor::cat(&[&cls, &tokens], 1)?;
        }
        if let Some(pos) = self.posemb(gh, gw)? {
            tokens = tokens.broadcast_add(&pos)?;
        }
        Ok((tokens, gh, gw))
    }

    /// The output of `ln_pre` (its input when the tower has no `ln_pre`), with the grid.
    pub fn tokens_ln_pre(&self, x: &Tensor) -> Result<(Tensor, usize, usize)> {
        let (tokens, gh, gw) = self.tokens_in(x)?;
        match &self.ln_pre {
            Some(l) => Ok((l.forward(&tokens)?, gh, gw)),
            None => Ok((tokens, gh, gw)),
        }
    }

    /// Token features after block `layer_idx` (negative counts from the end, `-1` = all blocks),
    /// optionally through `ln_post`, optionally without the class token.
    /// Returns `(batch, seq, width)`. Mirrors the reference's `forward_features`.
    pub fn forward_features(&self, x: &Tensor, layer_idx: isize, norm: bool, strip_cls_token: bool) -> Result<Tensor> {
        let stop = stop_index(self.cfg.layers, layer_idx)?;
        let (tokens, gh, gw) = self.tokens_ln_pre(x)?;
        let cs = match &self.rope {
            Some(r) => Some(r.cos_sin(gh, gw, self.act_dtype, &self.device)?),
            None => None,
        };
        let rope = self.rope.as_ref().zip(cs.as_ref()).map(|(rope, t)| RopeTables {
            rope,
            cos: &t.cos,
            sin: &t.sin,
            cos_f32: &t.cos_f32,
            sin_f32: &t.sin_f32,
        });
        let mut x = self.transformer.forward(&tokens, stop, rope, false)?;
        if norm {
            if let Some(l) = &self.ln_post {
                x = l.forward(&x)?;
            }
        }
        if strip_cls_token && self.cfg.use_cls_token {
            let n = x.dim(1)?;
            x = x.narrow(1, 1, n - 1)?;
        }
        Ok(x)
    }

    /// Pool token features as the tower's `pool_type` says (the reference's `_pool`):
    /// attention pool `(batch, width)`, class token, mean, or the tokens unchanged.
    pub fn pool(&self, features: &Tensor) -> Result<Tensor> {
        Ok(match self.cfg.pool_type {
            PoolType::Attn => match &self.attn_pool {
                Some(p) => p.forward(features)?,
                None => return Err(Error::MissingPart { model: "vision tower".into(), part: "attention pool" }),
            },
            PoolType::Tok => features.narrow(1, 0, 1)?.squeeze(1)?,
            PoolType::Avg => features.mean(1)?,
            PoolType::None => features.clone(),
        })
    }

    /// The tower's output: `forward_features(norm=True)`, pooling, then `proj` if present.
    /// For PE Core this is the image embedding `(batch, output_dim)`; for PE Spatial / Lang
    /// the token features `(batch, seq, width)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_at(x, -1)
    }

    /// Keep blocks `0..=layer_idx` only (negative counts from the end), as the reference's
    /// `truncate`; later calls then run the shorter tower.
    pub fn truncate(&mut self, layer_idx: isize) -> Result<()> {
        let stop = stop_index(self.cfg.layers, layer_idx)?;
        self.transformer.resblocks.truncate(stop + 1);
        self.cfg.layers = stop + 1;
        Ok(())
    }
}

/// `x / max(||x||_2, 1e-12)` over the last dimension (`F.normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}
