//! Attention pooling (`AttentionPooling` in the reference): one learned query (`probe`)
//! attends over all tokens, then `y = y + mlp(layernorm(y))`. There is no residual around the
//! attention itself and no RoPE.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::layers::{ln, LayerNorm, Linear, LinearWeights};
use crate::transformer::{attention, Mlp};

#[derive(Debug, Clone)]
pub(crate) struct AttnPool {
    probe: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    out_proj: Linear,
    layernorm: LayerNorm,
    mlp: Mlp,
    heads: usize,
}

impl AttnPool {
    pub(crate) fn new(width: usize, heads: usize, vb: VarBuilder, kind: LinearWeights) -> Result<Self> {
        let probe = vb.get((1, 1, width), "probe")?;
        let attn = vb.pp("attn");
        let w = attn.get((3 * width, width), "in_proj_weight")?;
        let b = attn.get(3 * width, "in_proj_bias")?;
        let part = |i: usize| -> Result<Linear> {
            Linear::new(w.narrow(0, i * width, width)?, Some(b.narrow(0, i * width, width)?.contiguous()?), kind)
        };
        Ok(AttnPool {
            probe,
            q: part(0)?,
            k: part(1)?,
            v: part(2)?,
            out_proj: Linear::load(width, width, attn.pp("out_proj"), kind)?,
            layernorm: ln(width, vb.pp("layernorm"))?,
            mlp: Mlp::new(width, 4 * width, vb.pp("mlp"), kind)?,
            heads,
        })
    }

    /// `(batch, seq, width)` -> `(batch, width)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, w) = x.dims3()?;
        let hd = w / self.heads;
        let probe = self.probe.broadcast_as((b, 1, w))?.contiguous()?;
        let q = self.q.forward(&probe)?.reshape((b, 1, self.heads, hd))?.transpose(1, 2)?;
        let k = self.k.forward(x)?.reshape((b, n, self.heads, hd))?.transpose(1, 2)?;
        let v = self.v.forward(x)?.reshape((b, n, self.heads, hd))?.transpose(1, 2)?;
        let y = attention(&q, &k, &v, None)?.transpose(1, 2)?.reshape((b, 1, w))?;
        let y = self.out_proj.forward(&y)?;
        let y = (&y + self.mlp.forward_after(&self.layernorm, &y)?)?;
        Ok(y.reshape((b, w))?)
    }
}
