//! The pre-LN residual blocks shared by both towers (`ResidualAttentionBlock` and
//! `Transformer` in the reference's `pe.py`), written over the layers in [`crate::layers`].

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::layers::{self, ln, residual, LayerNorm, Linear, LinearWeights};
use crate::rope::RopeTables;

/// One residual block's hyper-parameters, built by the vision and text configs
/// ([`crate::VisionConfig`]'s and [`crate::TextConfig`]'s `block`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSpec {
    /// Residual stream width.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden size.
    pub hidden: usize,
    /// Whether the block has layer scale (`ls_1`, `ls_2` gammas).
    pub layer_scale: bool,
    /// How the linear layers keep their weights.
    pub weights: LinearWeights,
}

/// `c_fc`, exact (erf) GELU, `c_proj`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    pub(crate) fn new(width: usize, hidden: usize, vb: VarBuilder, kind: LinearWeights) -> Result<Self> {
        Ok(Mlp {
            c_fc: Linear::load(width, hidden, vb.pp("c_fc"), kind)?,
            c_proj: Linear::load(hidden, width, vb.pp("c_proj"), kind)?,
        })
    }
}

impl Mlp {
    /// `mlp(norm(x))`, the LayerNorm folded into the first product where the kernels allow.
    pub(crate) fn forward_after(&self, norm: &LayerNorm, x: &Tensor) -> candle_core::Result<Tensor> {
        layers::mlp(norm, &self.c_fc, &self.c_proj, x)
    }

    /// [`Self::forward_after`] with `c_proj`'s bias left to the residual (see
    /// [`Linear::forward_unbiased`]).
    fn forward_unbiased(&self, norm: &LayerNorm, x: &Tensor) -> candle_core::Result<(Tensor, Option<Vec<f32>>)> {
        layers::mlp_unbiased(norm, &self.c_fc, &self.c_proj, x)
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
    pub(crate) fn new(width: usize, heads: usize, vb: VarBuilder, kind: LinearWeights) -> Result<Self> {
        Ok(SelfAttention {
            in_proj: Linear::load_named(width, 3 * width, &vb, "in_proj_weight", "in_proj_bias", kind)?,
            out_proj: Linear::load(width, width, vb.pp("out_proj"), kind)?,
            heads,
        })
    }

    /// Attention over `norm(x)`: `rope` rotates q and k with the given `(cos, sin)` tables;
    /// `causal` masks later keys. `out_proj`'s bias is left to the caller's residual where the
    /// kernels allow ([`Linear::forward_unbiased`]).
    pub(crate) fn forward_after(
        &self,
        norm: &LayerNorm,
        x: &Tensor,
        rope: Option<RopeTables>,
        causal: bool,
    ) -> Result<(Tensor, Option<Vec<f32>>)> {
        let o = match layers::kernel_attention(norm, &self.in_proj, x, self.heads, rope, causal)? {
            Some(o) => o,
            None => {
                let (b, n, w) = x.dims3()?;
                let qkv = self.in_proj.forward_after(norm, x)?;
                let qkv = qkv.reshape((b, n, 3, self.heads, w / self.heads))?.permute((2, 0, 3, 1, 4))?;
                let (mut q, mut k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
                if let Some(t) = rope {
                    q = t.rope.apply(&q.contiguous()?, t.cos, t.sin)?;
                    k = t.rope.apply(&k.contiguous()?, t.cos, t.sin)?;
                }
                let mask = if causal { Some(causal_mask(n, x)?) } else { None };
                let o = attention(&q, &k, &v, mask.as_ref())?;
                o.transpose(1, 2)?.reshape((b, n, w))?
            }
        };
        Ok(self.out_proj.forward_unbiased(&o)?)
    }
}

/// Additive causal mask `(n, n)`: -inf above the diagonal.
fn causal_mask(n: usize, like: &Tensor) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..n).flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(mask, (n, n), like.device())?.to_dtype(like.dtype())?)
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
    pub(crate) fn new(spec: &BlockSpec, vb: VarBuilder) -> Result<Self> {
        let BlockSpec { width, heads, hidden, layer_scale, weights } = *spec;
        let gamma = |name: &str| -> Result<Option<Tensor>> {
            Ok(if layer_scale { Some(vb.pp(name).get(width, "gamma")?) } else { None })
        };
        Ok(ResidualAttentionBlock {
            ln_1: ln(width, vb.pp("ln_1"))?,
            attn: SelfAttention::new(width, heads, vb.pp("attn"), weights)?,
            ls_1: gamma("ls_1")?,
            ln_2: ln(width, vb.pp("ln_2"))?,
            mlp: Mlp::new(width, hidden, vb.pp("mlp"), weights)?,
            ls_2: gamma("ls_2")?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, rope: Option<RopeTables>, causal: bool) -> Result<Tensor> {
        let (h, bias) = self.attn.forward_after(&self.ln_1, x, rope, causal)?;
        let x = residual(x, &h, bias.as_deref(), self.ls_1.as_ref())?;
        let (h, bias) = self.mlp.forward_unbiased(&self.ln_2, &x)?;
        residual(&x, &h, bias.as_deref(), self.ls_2.as_ref())
    }
}

/// A stack of blocks (`transformer.resblocks`).
#[derive(Debug, Clone)]
pub(crate) struct Transformer {
    pub(crate) resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    /// `layers` blocks of `spec` under `vb.resblocks.{i}`.
    pub(crate) fn new(spec: &BlockSpec, layers: usize, vb: VarBuilder) -> Result<Self> {
        use rayon::prelude::*;
        let vb = vb.pp("resblocks");
        // Blocks load in parallel: reading, converting and re-laying out weights is most of the
        // time to a ready model, and each block's tensors are independent.
        let resblocks =
            (0..layers).into_par_iter().map(|i| ResidualAttentionBlock::new(spec, vb.pp(i))).collect::<Result<_>>()?;
        Ok(Transformer { resblocks })
    }

    /// Run blocks `0..=stop` over `x` `(batch, seq, width)`. On the CPU a batch of more than
    /// [`CHUNK_ROWS`] token rows goes through the blocks in even chunks of whole items: every
    /// operation is per item, and the activations of a large batch at once leave the caches.
    ///
    /// On the CPU the blocks run on a thread of rayon's pool: every kernel's parallel loop then
    /// shares its work from there, instead of the caller's thread handing each one over and
    /// sleeping until it ends (the scheduler was 7% of T16's samples at batch 1, 4% after).
    pub(crate) fn forward(&self, x: &Tensor, stop: usize, rope: Option<RopeTables>, causal: bool) -> Result<Tensor> {
        if x.device().is_cpu() {
            return rayon::scope(|_| self.forward_in_chunks(x, stop, rope, causal, CHUNK_ROWS));
        }
        self.forward_in_chunks(x, stop, rope, causal, usize::MAX)
    }

    /// [`Self::forward`] with chunks of at most `rows` token rows (at least one item each).
    fn forward_in_chunks(
        &self,
        x: &Tensor,
        stop: usize,
        rope: Option<RopeTables>,
        causal: bool,
        rows: usize,
    ) -> Result<Tensor> {
        let (batch, seq) = (x.dim(0)?, x.dim(1)?);
        let chunks = (batch * seq).div_ceil(rows.max(1)).clamp(1, batch.max(1));
        if chunks == 1 {
            return self.blocks(x, stop, rope, causal);
        }
        let per = batch.div_ceil(chunks);
        let parts = (0..batch)
            .step_by(per)
            .map(|b0| self.blocks(&x.narrow(0, b0, per.min(batch - b0))?, stop, rope, causal))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn blocks(&self, x: &Tensor, stop: usize, rope: Option<RopeTables>, causal: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.resblocks[..=stop] {
            x = block.forward(&x, rope, causal)?;
        }
        Ok(x)
    }
}

/// Token rows the blocks take at once on the CPU (see [`Transformer::forward`]). Measured on a
/// 2-core Zen 4, images/s at batch 32 over batch 8 of T16-384 (577 tokens): all 18,464 rows at
/// once 0.86-1.04x (bf16, int8), chunks of 6,400 rows no better, chunks of 2,400 (4 images)
/// 0.98-1.15x; B16 (197 tokens) level at batch 32 either way.
const CHUNK_ROWS: usize = 2_400;

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

    /// A batch through the blocks in chunks gives what it gives at once (same kernels per row).
    #[test]
    fn chunks_of_the_batch_give_the_whole_batch_result() {
        use candle_core::{DType, Device, Tensor};
        let cfg = crate::ClipConfig::from_json_str(
            r#"{"vision": {"patch_size": 8, "width": 32, "layers": 2, "heads": 2, "mlp_ratio": 4.0,
                "output_dim": 16, "image_size": 32, "ls_init_value": 0.1}}"#,
        )
        .unwrap();
        let tensors = crate::weights::random_state_dict(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
        let vb = candle_nn::VarBuilder::from_tensors(tensors.into_iter().collect(), DType::F32, &Device::Cpu);
        use crate::kernels::int8::Scheme;
        let int8 = [Scheme::Symmetric, Scheme::Narrow].map(super::LinearWeights::Int8);
        for weights in [super::LinearWeights::Native, super::LinearWeights::Bf16].into_iter().chain(int8) {
            let spec = super::BlockSpec { width: 32, heads: 2, hidden: 128, layer_scale: true, weights };
            let t = super::Transformer::new(&spec, 2, vb.pp("visual.transformer")).unwrap();
            let x = Tensor::randn(0f32, 1.0, (5, 17, 32), &Device::Cpu).unwrap();
            let whole = t.forward_in_chunks(&x, 1, None, false, usize::MAX).unwrap();
            for rows in [17, 40, 60] {
                let chunked = t.forward_in_chunks(&x, 1, None, false, rows).unwrap();
                let diff = (&chunked - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff <= 1e-6, "{weights:?}, chunks of {rows} rows: {diff}");
            }
        }
    }

    #[test]
    fn layer_idx_rule() {
        assert_eq!(stop_index(3, -1).unwrap(), 2);
        assert_eq!(stop_index(3, 0).unwrap(), 0);
        assert_eq!(stop_index(3, -3).unwrap(), 0);
        assert!(stop_index(3, 3).is_err());
        assert!(stop_index(3, -4).is_err());
    }
}
