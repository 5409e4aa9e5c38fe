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
    /// Weight and bias as float32 vectors for the CPU kernel (empty for other dtypes).
    weight_f32: Vec<f32>,
    bias_f32: Vec<f32>,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dim = x.dims().last().copied().unwrap_or(0);
        if crate::kernels::enabled_for(x) && self.weight_f32.len() == dim && dim > 0 {
            let y = with_f32(x, |xs| {
                crate::kernels::math::layer_norm(xs, dim, &self.weight_f32, &self.bias_f32, LN_EPS as f32)
            })?;
            return Tensor::from_vec(y, x.dims(), x.device());
        }
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
    let (weight, bias) = (vb.get(width, "weight")?, vb.get(width, "bias")?);
    let (weight_f32, bias_f32) = if weight.dtype() == DType::F32 && weight.device().is_cpu() {
        (weight.to_vec1()?, bias.to_vec1()?)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(LayerNorm { weight, bias, weight_f32, bias_f32 })
}

/// How the linear layers keep their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinearWeights {
    /// In the model's dtype (float32 through our kernels, other dtypes through candle).
    Native,
    /// bfloat16, packed for the bf16 kernels; activations stay float32 around them.
    Bf16,
    /// int8 per output channel, activations quantized per row on the fly; float32 around them.
    Int8,
}

/// The modules' float32 view of a bfloat16 `vb` on the CPU (when the kernels are on): the
/// linear layers keep bfloat16 weights and run the bf16 kernels (with AMX, so do the attention
/// products), everything else (LayerNorm, softmax, GELU, residuals, embeddings) computes in
/// float32, as PyTorch's bf16 autocast does.
/// `U8` means int8 linear layers (CPU only), float32 elsewhere. Other dtypes and devices build
/// as asked.
pub(crate) fn plan(vb: VarBuilder) -> Result<(VarBuilder, LinearWeights)> {
    match vb.dtype() {
        DType::U8 if vb.device().is_cpu() => Ok((vb.to_dtype(DType::F32), LinearWeights::Int8)),
        DType::U8 => Err(crate::Error::InvalidConfig("int8 (dtype U8) runs on the CPU only".into())),
        DType::BF16 if vb.device().is_cpu() && crate::kernels::enabled() => {
            Ok((vb.to_dtype(DType::F32), LinearWeights::Bf16))
        }
        _ => Ok((vb, LinearWeights::Native)),
    }
}

#[derive(Debug, Clone)]
enum Weight {
    /// `W^T` contiguous `(in, out)`, prepared once at load: GEMM kernels run at full speed on
    /// that layout, while a transposed view halves throughput at small batch sizes.
    Dense(Tensor),
    /// Packed bfloat16 with the bias folded in.
    Bf16(std::sync::Arc<crate::kernels::bf16::PackedBf16>),
    /// Packed int8 with scales and the bias folded in.
    Int8(std::sync::Arc<crate::kernels::int8::PackedI8>),
}

/// `y = x W^T + b`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a PyTorch-layout weight `(out, in)` and optional bias `(out)`.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>, kind: LinearWeights) -> Result<Self> {
        if kind == LinearWeights::Native {
            let (n, k) = weight.dims2()?;
            let weight_t = if weight.dtype() == DType::F32 && weight.device().is_cpu() {
                let w = with_f32(&weight, |w| crate::kernels::transpose(w, n, k))?;
                Tensor::from_vec(w, (k, n), weight.device())?
            } else {
                weight.t()?.contiguous()?
            };
            return Ok(Linear { weight: Weight::Dense(weight_t), bias });
        }
        let (n, k) = weight.dims2()?;
        let b: Option<Vec<f32>> = match &bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1()?),
            None => None,
        };
        // Packed straight from the tensor's storage: a copy of every weight matrix first was
        // a quarter of the load time.
        let weight = with_f32(&weight, |w| {
            if kind == LinearWeights::Int8 {
                Weight::Int8(std::sync::Arc::new(crate::kernels::int8::PackedI8::pack(w, n, k, b.as_deref())))
            } else {
                Weight::Bf16(std::sync::Arc::new(crate::kernels::bf16::PackedBf16::pack(w, n, k, b.as_deref())))
            }
        })?;
        Ok(Linear { weight, bias: None })
    }

    /// Load `{prefix}.weight` `(out, in)` and `{prefix}.bias` `(out)`.
    pub(crate) fn load(in_dim: usize, out_dim: usize, vb: VarBuilder, kind: LinearWeights) -> Result<Self> {
        Self::load_named(in_dim, out_dim, &vb, "weight", "bias", kind)
    }

    /// Load the weight `weight` `(out, in)` and the bias `bias` `(out)` of `vb`. Float32
    /// weights come straight in the `(in, out)` layout when the source can read them so.
    pub(crate) fn load_named(
        in_dim: usize,
        out_dim: usize,
        vb: &VarBuilder,
        weight: &str,
        bias: &str,
        kind: LinearWeights,
    ) -> Result<Self> {
        let b = vb.get(out_dim, bias)?;
        let transposed = format!("{weight}{}", crate::weights::TRANSPOSED);
        if kind == LinearWeights::Native && vb.contains_tensor(&transposed) {
            return Ok(Linear { weight: Weight::Dense(vb.get((in_dim, out_dim), &transposed)?), bias: Some(b) });
        }
        Self::new(vb.get((out_dim, in_dim), weight)?, Some(b), kind)
    }

    fn out_dim(&self) -> candle_core::Result<usize> {
        match &self.weight {
            Weight::Dense(w) => w.dim(1),
            Weight::Bf16(p) => Ok(p.out_dim()),
            Weight::Int8(p) => Ok(p.out_dim()),
        }
    }
}

/// `f` over `x`'s float32 values, without a copy when `x` is a contiguous float32 CPU tensor.
fn with_f32<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> candle_core::Result<T> {
    if x.dtype() == DType::F32 && x.device().is_cpu() {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&cpu.as_slice::<f32>()?[start..end]));
        }
    }
    let v: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(f(&v))
}

impl Linear {
    /// The packed kernels' result as a float32 vector, or `None` for dense weights.
    fn forward_packed(&self, x: &Tensor) -> candle_core::Result<Option<Vec<f32>>> {
        let in_dim = x.dims().last().copied().unwrap_or(0);
        let rows = x.elem_count() / in_dim.max(1);
        let expects = match &self.weight {
            Weight::Dense(_) => return Ok(None),
            Weight::Bf16(p) => p.in_dim(),
            Weight::Int8(p) => p.in_dim(),
        };
        if in_dim != expects {
            return Err(candle_core::Error::Msg(format!(
                "linear layer expects {expects} input features, got {in_dim}"
            )));
        }
        with_f32(x, |xs| match &self.weight {
            Weight::Bf16(p) => Some(crate::kernels::bf16::matmul(xs, rows, p)),
            Weight::Int8(p) => Some(crate::kernels::int8::matmul(xs, rows, p)),
            Weight::Dense(_) => None,
        })
    }

    fn out_shape(&self, x: &Tensor) -> candle_core::Result<Vec<usize>> {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().ok_or_else(|| candle_core::Error::Msg("linear layer input has no dimensions".into()))? =
            self.out_dim()?;
        Ok(dims)
    }

    /// `gelu_erf(self.forward(x))`. With the CPU kernels the GELU runs on the fresh output in
    /// place, with a branch-free erf within 4e-7 of the exact one.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.forward_packed(x)? {
            Some(mut y) => {
                crate::kernels::math::gelu_in_place(&mut y);
                Tensor::from_vec(y, self.out_shape(x)?, x.device())
            }
            None => {
                let y = self.forward(x)?;
                if crate::kernels::enabled_for(&y) && y.is_contiguous() {
                    // `y` is this call's own fresh output, so updating it in place is safe.
                    y.inplace_op1(&crate::kernels::math::GeluInPlace)?;
                    Ok(y)
                } else {
                    y.gelu_erf()
                }
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = self.forward_packed(x)? {
            return Tensor::from_vec(y, self.out_shape(x)?, x.device());
        }
        let Weight::Dense(w) = &self.weight else { unreachable!("packed weights are handled above") };
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let out_dim = w.dim(1)?;
        let out_dims = self.out_shape(x)?;
        if crate::kernels::enabled_for(x) && in_dim > 0 {
            let (w, _) = w.storage_and_layout();
            let candle_core::Storage::Cpu(w) = &*w else {
                return Err(candle_core::Error::Msg("weights and input are on different devices".into()));
            };
            let w = w.as_slice::<f32>()?;
            let bias = match &self.bias {
                Some(b) => Some(b.to_vec1::<f32>()?),
                None => None,
            };
            let y = with_f32(x, |xs| {
                if rows <= crate::kernels::skinny::MAX_ROWS {
                    crate::kernels::skinny::matmul(xs, rows, in_dim, w, out_dim, bias.as_deref())
                } else {
                    crate::kernels::dense_matmul(xs, rows, in_dim, w, out_dim, bias.as_deref())
                }
            })?;
            return Tensor::from_vec(y, out_dims, x.device());
        }
        let y = x.reshape((rows, in_dim))?.matmul(w)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
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
    pub(crate) fn new(width: usize, hidden: usize, vb: VarBuilder, kind: LinearWeights) -> Result<Self> {
        Ok(Mlp {
            c_fc: Linear::load(width, hidden, vb.pp("c_fc"), kind)?,
            c_proj: Linear::load(hidden, width, vb.pp("c_proj"), kind)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let (Weight::Bf16(fc), Weight::Bf16(proj)) = (&self.c_fc.weight, &self.c_proj.weight) {
            let in_dim = x.dims().last().copied().unwrap_or(0);
            if in_dim != fc.in_dim() {
                return Err(candle_core::Error::Msg(format!(
                    "MLP expects {} input features, got {in_dim}",
                    fc.in_dim()
                )));
            }
            let rows = x.elem_count() / in_dim.max(1);
            let y = with_f32(x, |xs| crate::kernels::bf16::mlp(xs, rows, fc, proj))?;
            return Tensor::from_vec(y, self.c_proj.out_shape(x)?, x.device());
        }
        self.c_proj.forward(&self.c_fc.forward_gelu(x)?)
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

    /// `rope` rotates q and k with the given `(cos, sin)` tables; `causal` masks later keys.
    pub(crate) fn forward(&self, x: &Tensor, rope: Option<RopeTables>, causal: bool) -> Result<Tensor> {
        let (b, n, w) = x.dims3()?;
        let shape = crate::kernels::attention::Shape { batch: b, seq: n, heads: self.heads, head_dim: w / self.heads };
        // Packed weights hand their product over as a vector: no tensor, no copy out of it.
        let o = match self.in_proj.forward_packed(x)? {
            Some(qkv) => self.attend(qkv, shape, rope, causal, x)?,
            None => {
                let qkv = self.in_proj.forward(x)?;
                if crate::kernels::enabled_for(&qkv) {
                    self.attend(qkv.flatten_all()?.to_vec1()?, shape, rope, causal, x)?
                } else {
                    let qkv = qkv.reshape((b, n, 3, self.heads, shape.head_dim))?.permute((2, 0, 3, 1, 4))?;
                    let (mut q, mut k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
                    if let Some(t) = rope {
                        q = t.rope.apply(&q.contiguous()?, t.cos, t.sin)?;
                        k = t.rope.apply(&k.contiguous()?, t.cos, t.sin)?;
                    }
                    let mask = if causal { Some(causal_mask(n, x)?) } else { None };
                    let o = attention(&q, &k, &v, mask.as_ref())?;
                    o.transpose(1, 2)?.reshape((b, n, w))?
                }
            }
        };
        Ok(self.out_proj.forward(&o)?)
    }

    /// The CPU kernels over the packed `qkv` product: RoPE in place, then attention (bf16 on
    /// AMX for bf16 layers), heads merged into `(batch, seq, width)`.
    fn attend(
        &self,
        mut qkv: Vec<f32>,
        shape: crate::kernels::attention::Shape,
        rope: Option<RopeTables>,
        causal: bool,
        like: &Tensor,
    ) -> Result<Tensor> {
        use crate::kernels::attention;
        if let Some(t) = rope {
            attention::rope_in_place(&mut qkv, shape, t.cos_f32, t.sin_f32, t.rope.rot_dim());
        }
        // Reduced-precision layers (bf16 and int8) take the bf16 attention where AMX runs it:
        // for int8 it replaced a float32 attention that was a fifth of the time.
        let reduced = !matches!(self.in_proj.weight, Weight::Dense(_));
        let out = match reduced.then(|| attention::attention_bf16(&qkv, shape, causal)).flatten() {
            Some(out) => out,
            None => attention::attention(&qkv, shape, causal),
        };
        Ok(Tensor::from_vec(out, (shape.batch, shape.seq, shape.heads * shape.head_dim), like.device())?)
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
    pub(crate) fn new(
        width: usize,
        heads: usize,
        hidden: usize,
        layer_scale: bool,
        vb: VarBuilder,
        kind: LinearWeights,
    ) -> Result<Self> {
        let gamma = |name: &str| -> Result<Option<Tensor>> {
            Ok(if layer_scale { Some(vb.pp(name).get(width, "gamma")?) } else { None })
        };
        Ok(ResidualAttentionBlock {
            ln_1: ln(width, vb.pp("ln_1"))?,
            attn: SelfAttention::new(width, heads, vb.pp("attn"), kind)?,
            ls_1: gamma("ls_1")?,
            ln_2: ln(width, vb.pp("ln_2"))?,
            mlp: Mlp::new(width, hidden, vb.pp("mlp"), kind)?,
            ls_2: gamma("ls_2")?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, rope: Option<RopeTables>, causal: bool) -> Result<Tensor> {
        let h = self.attn.forward(&self.ln_1.forward(x)?, rope, causal)?;
        let x = residual(x, &h, self.ls_1.as_ref())?;
        let h = self.mlp.forward(&self.ln_2.forward(&x)?)?;
        residual(&x, &h, self.ls_2.as_ref())
    }
}

/// `x + h * gamma` (layer scale when present), in one pass on the CPU kernels' path.
fn residual(x: &Tensor, h: &Tensor, gamma: Option<&Tensor>) -> Result<Tensor> {
    let w = x.dims().last().copied().unwrap_or(1).max(1);
    let g: Option<Vec<f32>> = match gamma {
        Some(g) => Some(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
        None => None,
    };
    let fused = crate::kernels::enabled_for(x)
        && crate::kernels::enabled_for(h)
        && x.dims() == h.dims()
        && g.as_ref().is_none_or(|g| g.len() == w);
    if !fused {
        let h = match gamma {
            Some(g) => h.broadcast_mul(g)?,
            None => h.clone(),
        };
        return Ok((x + h)?);
    }
    let y = with_f32(x, |xs| with_f32(h, |hs| crate::kernels::math::add_scaled(xs, hs, g.as_deref())))??;
    Ok(Tensor::from_vec(y, x.dims(), x.device())?)
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
        kind: LinearWeights,
    ) -> Result<Self> {
        use rayon::prelude::*;
        let vb = vb.pp("resblocks");
        // Blocks load in parallel: reading, converting and re-laying out weights is most of the
        // time to a ready model, and each block's tensors are independent.
        let resblocks = (0..layers)
            .into_par_iter()
            .map(|i| ResidualAttentionBlock::new(width, heads, hidden, layer_scale, vb.pp(i), kind))
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
