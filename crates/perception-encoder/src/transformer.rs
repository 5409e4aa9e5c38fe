//! The pre-LN residual blocks shared by both towers (`ResidualAttentionBlock` and
//! `Transformer` in the reference's `pe.py`).

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::rope::Rope2d;

/// LayerNorm epsilon used everywhere in PE.
pub(crate) const LN_EPS: f64 = 1e-5;

/// LayerNorm with weight and bias over the last dimension (eps 1e-5).
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, LN_EPS as f32);
        }
        // Other dtypes (f64) have no fused kernel: the formula, step by step.
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + LN_EPS)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

pub(crate) fn ln(width: usize, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm { weight: vb.get(width, "weight")?, bias: vb.get(width, "bias")? })
}

/// `y = x W^T + b` with `W^T` stored contiguous `(in, out)`, prepared once at load: GEMM
/// kernels run at full speed on that layout, while a transposed view halves throughput at
/// small batch sizes.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a PyTorch-layout weight `(out, in)` and optional bias `(out)`.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear { weight_t: weight.t()?.contiguous()?, bias })
    }

    /// Load `{prefix}.weight` `(out, in)` and `{prefix}.bias` `(out)`.
    pub(crate) fn load(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        let b = vb.get(out_dim, "bias")?;
        Self::new(w, Some(b))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let out_dim = self.weight_t.dim(1)?;
        if rows <= crate::kernels::skinny::MAX_ROWS && crate::kernels::enabled_for(x) {
            let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let (w, _) = self.weight_t.storage_and_layout();
            let candle_core::Storage::Cpu(w) = &*w else {
                return Err(candle_core::Error::Msg("weights and input are on different devices".into()));
            };
            let w = w.as_slice::<f32>()?;
            let bias = match &self.bias {
                Some(b) => Some(b.to_vec1::<f32>()?),
                None => None,
            };
            let y = crate::kernels::skinny::matmul(&xs, rows, in_dim, w, out_dim, bias.as_deref());
            let mut out_dims = dims.to_vec();
            *out_dims.last_mut().expect("rank >= 1") = out_dim;
            return Tensor::from_vec(y, out_dims, x.device());
        }
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = self.weight_t.dim(1)?;
        y.reshape(out_dims)
    }
}

/// `c_fc`, exact (erf) GELU, `c_proj`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    pub(crate) fn new(width: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Mlp {
            c_fc: Linear::load(width, hidden, vb.pp("c_fc"))?,
            c_proj: Linear::load(hidden, width, vb.pp("c_proj"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.c_proj.forward(&self.c_fc.forward(x)?.gelu_erf()?)
    }
}

/// Softmax attention over `(batch, heads, seq, head_dim)` tensors with scale `head_dim^-0.5`.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    Ok(probs.matmul(&v.contiguous()?)?)
}

/// Multi-head self-attention with a packed `in_proj` (rows q, k, v) and `out_proj`.
#[derive(Debug, Clone)]
pub(crate) struct SelfAttention {
    in_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttention {
    pub(crate) fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get((3 * width, width), "in_proj_weight")?;
        let b = vb.get(3 * width, "in_proj_bias")?;
        Ok(SelfAttention {
            in_proj: Linear::new(w, Some(b))?,
            out_proj: Linear::load(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `rope` rotates q and k with the given `(cos, sin)` tables; `causal` masks later keys.
    pub(crate) fn forward(&self, x: &Tensor, rope: Option<RopeTables>, causal: bool) -> Result<Tensor> {
        let (b, n, w) = x.dims3()?;
        let hd = w / self.heads;
        let qkv = self.in_proj.forward(x)?;
        let o = if crate::kernels::enabled_for(&qkv) {
            let shape = crate::kernels::attention::Shape { batch: b, seq: n, heads: self.heads, head_dim: hd };
            let mut buf: Vec<f32> = qkv.flatten_all()?.to_vec1()?;
            if let Some(t) = rope {
                crate::kernels::attention::rope_in_place(&mut buf, shape, t.cos_f32, t.sin_f32, t.rope.rot_dim());
            }
            let out = crate::kernels::attention::attention(&buf, shape, causal);
            Tensor::from_vec(out, (b, n, w), x.device())?
        } else {
            let qkv = qkv.reshape((b, n, 3, self.heads, hd))?.permute((2, 0, 3, 1, 4))?;
            let (mut q, mut k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            if let Some(t) = rope {
                q = t.rope.apply(&q.contiguous()?, t.cos, t.sin)?;
                k = t.rope.apply(&k.contiguous()?, t.cos, t.sin)?;
            }
            let mask = if causal { Some(causal_mask(n, x)?) } else { None };
            let o = attention(&q, &k, &v, mask.as_ref())?;
            o.transpose(1, 2)?.reshape((b, n, w))?
        };
        Ok(self.out_proj.forward(&o)?)
    }
}

/// Additive causal mask `(n, n)`: -inf above the diagonal.
fn causal_mask(n: usize, like: &Tensor) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..n).flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(mask, (n, n), like.device())?.to_dtype(like.dtype())?)
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

/// `x = x + ls_1(attn(ln_1(x)))`, `x = x + ls_2(mlp(ln_2(x)))`.
#[derive(Debug, Clone)]
pub(crate) struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: SelfAttention,
    ls_1: Option<Tensor>,
    ln_2: LayerNorm,
    mlp: Mlp,
    ls_2: Option<Tensor>,
}

impl ResidualAttentionBlock {
    pub(crate) fn new(width: usize, heads: usize, hidden: usize, layer_scale: bool, vb: VarBuilder) -> Result<Self> {
        let gamma = |name: &str| -> Result<Option<Tensor>> {
            Ok(if layer_scale { Some(vb.pp(name).get(width, "gamma")?) } else { None })
        };
        Ok(ResidualAttentionBlock {
            ln_1: ln(width, vb.pp("ln_1"))?,
            attn: SelfAttention::new(width, heads, vb.pp("attn"))?,
            ls_1: gamma("ls_1")?,
            ln_2: ln(width, vb.pp("ln_2"))?,
            mlp: Mlp::new(width, hidden, vb.pp("mlp"))?,
            ls_2: gamma("ls_2")?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, rope: Option<RopeTables>, causal: bool) -> Result<Tensor> {
        let mut h = self.attn.forward(&self.ln_1.forward(x)?, rope, causal)?;
        if let Some(g) = &self.ls_1 {
            h = h.broadcast_mul(g)?;
        }
        let x = (x + h)?;
        let mut h = self.mlp.forward(&self.ln_2.forward(&x)?)?;
        if let Some(g) = &self.ls_2 {
            h = h.broadcast_mul(g)?;
        }
        Ok((x + h)?)
    }
}

/// A stack of blocks (`transformer.resblocks`).
#[derive(Debug, Clone)]
pub(crate) struct Transformer {
    pub(crate) resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    pub(crate) fn new(
        width: usize,
        layers: usize,
        heads: usize,
        hidden: usize,
        layer_scale: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("resblocks");
        let resblocks = (0..layers)
            .map(|i| ResidualAttentionBlock::new(width, heads, hidden, layer_scale, vb.pp(i)))
            .collect::<Result<_>>()?;
        Ok(Transformer { resblocks })
    }

    /// Run blocks `0..=stop`.
    pub(crate) fn forward(&self, x: &Tensor, stop: usize, rope: Option<RopeTables>, causal: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.resblocks[..=stop] {
            x = block.forward(&x, rope, causal)?;
        }
        Ok(x)
    }
}

/// The reference's block index rule: `stop = (layers + layer_idx) % layers`, so `-1` is the last
/// block and `0` the first. Unlike Python's modulo, indices outside `-layers..layers` are an
/// error rather than wrapping around.
pub(crate) fn stop_index(layers: usize, layer_idx: isize) -> Result<usize> {
    let l = layers as isize;
    if layer_idx < -l || layer_idx >= l {
        return Err(crate::Error::InvalidInput(format!(
            "layer_idx {layer_idx} is out of range for a tower of {layers} layers (use -{layers}..={})",
            layers - 1
        )));
    }
    Ok(((l + layer_idx) % l) as usize)
}

#[cfg(test)]
mod tests {
    use super::stop_index;

    #[test]
    fn layer_idx_rule() {
        assert_eq!(stop_index(3, -1).unwrap(), 2);
        assert_eq!(stop_index(3, 0).unwrap(), 0);
        assert_eq!(stop_index(3, -3).unwrap(), 0);
        assert!(stop_index(3, 3).is_err());
        assert!(stop_index(3, -4).is_err());
    }
}
