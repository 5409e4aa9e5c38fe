//! The pre-LN residual blocks shared by both towers (`ResidualAttentionBlock` and
//! `Transformer` in the reference's `pe.py`).

use candle_core::{Module, Tensor, D};
use candle_nn::{layer_norm, LayerNorm, Linear, VarBuilder};

use crate::error::Result;
use crate::rope::Rope2d;

/// LayerNorm epsilon used everywhere in PE.
pub(crate) const LN_EPS: f64 = 1e-5;

pub(crate) fn ln(width: usize, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(layer_norm(width, LN_EPS, vb)?)
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
            c_fc: candle_nn::linear(width, hidden, vb.pp("c_fc"))?,
            c_proj: candle_nn::linear(hidden, width, vb.pp("c_proj"))?,
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
            in_proj: Linear::new(w, Some(b)),
            out_proj: candle_nn::linear(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `rope` rotates q and k with the given `(cos, sin)` tables; `mask` is added to the scores.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        rope: Option<(&Rope2d, &Tensor, &Tensor)>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, n, w) = x.dims3()?;
        let hd = w / self.heads;
        let qkv = self.in_proj.forward(x)?.reshape((b, n, 3, self.heads, hd))?.permute((2, 0, 3, 1, 4))?;
        let (mut q, mut k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        if let Some((rope, cos, sin)) = rope {
            q = rope.apply(&q.contiguous()?, cos, sin)?;
            k = rope.apply(&k.contiguous()?, cos, sin)?;
        }
        let o = attention(&q, &k, &v, mask)?;
        let o = o.transpose(1, 2)?.reshape((b, n, w))?;
        Ok(self.out_proj.forward(&o)?)
    }
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

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        rope: Option<(&Rope2d, &Tensor, &Tensor)>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut h = self.attn.forward(&self.ln_1.forward(x)?, rope, mask)?;
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
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        stop: usize,
        rope: Option<(&Rope2d, &Tensor, &Tensor)>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.resblocks[..=stop] {
            x = block.forward(&x, rope, mask)?;
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
