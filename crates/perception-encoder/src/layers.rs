//! The layers that talk to the CPU kernels: LayerNorm, the linear layer and its three weight
//! kinds, the fused MLP, attention over a packed q/k/v product and the fused residual. The model
//! files (`transformer`, `vision`, `text`) build on these and never name `kernels` themselves;
//! each layer falls back to candle's operations on other dtypes and devices.

use std::sync::Arc;

use candle_core::{DType, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::kernels;
use crate::kernels::dense::Epilogue;
use crate::precision::Precision;
use crate::rope::RopeTables;

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
        if kernels::enabled_for(x) && self.weight_f32.len() == dim && dim > 0 {
            let y =
                with_f32(x, |xs| kernels::math::layer_norm(xs, dim, &self.weight_f32, &self.bias_f32, LN_EPS as f32))?;
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

impl LayerNorm {
    /// The parameters the packed products apply to their operand's rows, when this LayerNorm
    /// runs on the CPU kernels (float32 weights).
    fn kernel_norm(&self) -> Option<kernels::activations::Norm<'_>> {
        (!self.weight_f32.is_empty()).then_some(kernels::activations::Norm {
            weight: &self.weight_f32,
            bias: &self.bias_f32,
            eps: LN_EPS as f32,
        })
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
    /// int8 per output channel, activations quantized per row on the fly, in this scheme;
    /// float32 around them.
    Int8(kernels::int8::Scheme),
}

/// The modules' view of `vb` for `precision`, and how the linear layers keep their weights.
/// On the CPU (with the kernels on) bf16 and int8 keep only the linear layers' weights in
/// reduced precision and run their kernels (with AMX or AVX512-BF16, bf16 attention too); everything
/// else (LayerNorm, softmax, GELU, residuals, embeddings) computes in float32, as PyTorch's bf16
/// autocast does. Elsewhere bf16 means every tensor in bfloat16, and int8 is refused. `F32`
/// builds in `vb`'s own dtype (float32, or the F16/F64 of a `VarBuilder` given to `Clip::new`).
/// `pooled_over_tokens`: the tower's output averages over its tokens (an attention-pooled image
/// embedding), which lets int8 take the faster, narrower scheme where it has one
/// ([`kernels::int8::scheme_for`]).
pub(crate) fn plan(
    vb: VarBuilder,
    precision: Precision,
    pooled_over_tokens: bool,
) -> Result<(VarBuilder, LinearWeights)> {
    let kernels_on = vb.device().is_cpu() && kernels::enabled();
    match precision {
        Precision::Int8 if vb.device().is_cpu() => {
            Ok((vb.to_dtype(DType::F32), LinearWeights::Int8(kernels::int8::scheme_for(pooled_over_tokens))))
        }
        Precision::Int8 => Err(crate::Error::InvalidConfig("int8 runs on the CPU only".into())),
        Precision::Bf16 if kernels_on => Ok((vb.to_dtype(DType::F32), LinearWeights::Bf16)),
        Precision::Bf16 => Ok((vb.to_dtype(DType::BF16), LinearWeights::Native)),
        Precision::F32 => Ok((vb, LinearWeights::Native)),
    }
}

#[derive(Debug, Clone)]
enum Weight {
    /// `W^T` contiguous `(in, out)` for candle's product (other dtypes and devices, or the
    /// kernels off): a transposed view halves its throughput at small batch sizes.
    Dense(Tensor),
    /// float32 on the CPU kernels: panels in the GEMM micro-kernel's operand layout.
    F32(Arc<kernels::dense::DensePanels>),
    /// Packed bfloat16 with the bias folded in.
    Bf16(Arc<kernels::bf16::PackedBf16>),
    /// Packed int8 with scales and the bias folded in.
    Int8(Arc<kernels::int8::PackedI8>),
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
            if on_kernels(&weight) {
                let panels = with_f32(&weight, |w| kernels::dense::DensePanels::from_out_in(w, n, k))?;
                return Ok(Linear { weight: Weight::F32(Arc::new(panels)), bias });
            }
            return Ok(Linear { weight: Weight::Dense(weight.t()?.contiguous()?), bias });
        }
        let (n, k) = weight.dims2()?;
        let b: Option<Vec<f32>> = match &bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1()?),
            None => None,
        };
        // Packed straight from the tensor's storage: a copy of every weight matrix first was
        // a quarter of the load time.
        let weight = with_f32(&weight, |w| {
            if let LinearWeights::Int8(scheme) = kind {
                Weight::Int8(Arc::new(kernels::int8::PackedI8::pack_as(scheme, w, n, k, b.as_deref())))
            } else {
                Weight::Bf16(Arc::new(kernels::bf16::PackedBf16::pack(w, n, k, b.as_deref())))
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
            let wt = vb.get((in_dim, out_dim), &transposed)?;
            let weight = if on_kernels(&wt) {
                let panels = with_f32(&wt, |wt| kernels::dense::DensePanels::from_in_out(wt, in_dim, out_dim))?;
                Weight::F32(Arc::new(panels))
            } else {
                Weight::Dense(wt)
            };
            return Ok(Linear { weight, bias: Some(b) });
        }
        Self::new(vb.get((out_dim, in_dim), weight)?, Some(b), kind)
    }

    fn out_dim(&self) -> candle_core::Result<usize> {
        match &self.weight {
            Weight::Dense(w) => w.dim(1),
            Weight::F32(p) => Ok(p.out_dim()),
            Weight::Bf16(p) => Ok(p.out_dim()),
            Weight::Int8(p) => Ok(p.out_dim()),
        }
    }
}

/// Whether a float32 weight is kept for the CPU kernels (float32 on the CPU, kernels on).
fn on_kernels(w: &Tensor) -> bool {
    w.dtype() == DType::F32 && w.device().is_cpu() && kernels::enabled()
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
    pub(crate) fn forward_packed(&self, x: &Tensor) -> candle_core::Result<Option<Vec<f32>>> {
        self.forward_packed_after(None, x, false)
    }

    /// [`Self::forward_packed`] of `norm(x)`, the LayerNorm applied to each row of `x` as the
    /// kernel takes it (`None` also when `norm` does not run on the kernels: the caller then
    /// applies it first); with `gelu`, the GELU of the result (in the product's epilogue where
    /// the kernel has one).
    fn forward_packed_after(
        &self,
        norm: Option<&LayerNorm>,
        x: &Tensor,
        gelu: bool,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let in_dim = x.dims().last().copied().unwrap_or(0);
        let rows = x.elem_count() / in_dim.max(1);
        let expects = match &self.weight {
            Weight::Dense(_) | Weight::F32(_) => return Ok(None),
            Weight::Bf16(p) => p.in_dim(),
            Weight::Int8(p) => p.in_dim(),
        };
        if in_dim != expects {
            return Err(candle_core::Error::Msg(format!(
                "linear layer expects {expects} input features, got {in_dim}"
            )));
        }
        let norm = match norm.map(|n| n.kernel_norm().filter(|k| k.weight.len() == in_dim)) {
            Some(None) => return Ok(None),
            Some(Some(n)) => Some(n),
            None => None,
        };
        with_f32(x, |xs| {
            let a = match norm {
                Some(n) => kernels::activations::Activations::normed(xs, n),
                None => kernels::activations::Activations::plain(xs),
            };
            match &self.weight {
                Weight::Int8(p) if gelu => Some(kernels::int8::matmul_gelu(a, rows, p)),
                Weight::Bf16(p) if gelu => Some(kernels::bf16::matmul_gelu(a, rows, p)),
                Weight::Bf16(p) => Some(kernels::bf16::matmul(a, rows, p)),
                Weight::Int8(p) => Some(kernels::int8::matmul(a, rows, p)),
                Weight::Dense(_) | Weight::F32(_) => None,
            }
        })
    }

    /// `self.forward(norm.forward(x))`, with the LayerNorm folded into packed products.
    pub(crate) fn forward_after(&self, norm: &LayerNorm, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.forward_packed_after(Some(norm), x, false)? {
            Some(y) => Tensor::from_vec(y, self.out_shape(x)?, x.device()),
            None => self.forward(&norm.forward(x)?),
        }
    }

    /// `x`'s shape with the last dimension replaced by the output features.
    pub(crate) fn out_shape(&self, x: &Tensor) -> candle_core::Result<Vec<usize>> {
        let mut dims = x.dims().to_vec();
        *dims.last_mut().ok_or_else(|| candle_core::Error::Msg("linear layer input has no dimensions".into()))? =
            self.out_dim()?;
        Ok(dims)
    }

    /// `gelu_erf(self.forward(x))`. With the CPU kernels the GELU runs on each block of the
    /// output as the product finishes it (or on the fresh output in place), with a branch-free
    /// erf within 4e-7 of the exact one.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.forward_packed_after(None, x, true)? {
            Some(y) => Tensor::from_vec(y, self.out_shape(x)?, x.device()),
            None => {
                if let Some((y, _)) = self.dense_vec(x, Dense::Gelu)? {
                    return Tensor::from_vec(y, self.out_shape(x)?, x.device());
                }
                let y = self.forward(x)?;
                if kernels::enabled_for(&y) && y.is_contiguous() {
                    // `y` is this call's own fresh output, so updating it in place is safe.
                    y.inplace_op1(&kernels::math::GeluInPlace)?;
                    Ok(y)
                } else {
                    y.gelu_erf()
                }
            }
        }
    }
}

/// A product's output and the bias it left for the caller to add (`None`: in the output).
type Unbiased = (Vec<f32>, Option<Vec<f32>>);

impl Linear {
    /// The product as a float32 vector when the CPU kernels run it (packed weights, or dense
    /// float32 ones with the kernels on), `None` otherwise: the attention takes its `qkv` as a
    /// vector without copying it out of a tensor.
    pub(crate) fn forward_vec(&self, x: &Tensor) -> candle_core::Result<Option<Vec<f32>>> {
        if let Some(y) = self.forward_packed(x)? {
            return Ok(Some(y));
        }
        Ok(self.dense_vec(x, Dense::WithBias)?.map(|(y, _)| y))
    }

    /// The product without its bias, and the bias, where the kernels run it on dense float32
    /// weights: the caller adds the bias in its next pass over the output (the GELU, RoPE, the
    /// residual), not in a pass of its own (writing the bias into a fresh output before the
    /// product was ~5% of T16's time). Elsewhere the bias is in the product, and `None`.
    pub(crate) fn forward_unbiased(&self, x: &Tensor) -> candle_core::Result<(Tensor, Option<Vec<f32>>)> {
        match self.dense_vec(x, Dense::Unbiased)? {
            Some((y, bias)) => Ok((Tensor::from_vec(y, self.out_shape(x)?, x.device())?, bias)),
            None => Ok((self.forward(x)?, None)),
        }
    }

    /// The kernels' product of dense float32 weights (`None` for packed weights, or where the
    /// kernels do not run), as `what` says: with the bias, without it and the bias returned,
    /// or through the GELU (the bias added in the GELU's epilogue).
    fn dense_vec(&self, x: &Tensor, what: Dense) -> candle_core::Result<Option<Unbiased>> {
        let Weight::F32(w) = &self.weight else { return Ok(None) };
        let in_dim = x.dims().last().copied().unwrap_or(0);
        if !kernels::enabled_for(x) || in_dim == 0 {
            return Ok(None);
        }
        if in_dim != w.in_dim() {
            return Err(candle_core::Error::Msg(format!(
                "linear layer expects {} input features, got {in_dim}",
                w.in_dim()
            )));
        }
        let rows = x.elem_count() / in_dim;
        let bias = match &self.bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        let (b, epilogue) = match what {
            Dense::WithBias => (bias.as_deref(), Epilogue::None),
            Dense::Unbiased => (None, Epilogue::None),
            Dense::Gelu => (None, Epilogue::Gelu(bias.as_deref())),
        };
        let y = with_f32(x, |xs| kernels::dense::matmul_then(xs, rows, &**w, b, epilogue))?;
        Ok(Some((y, if what == Dense::Unbiased { bias } else { None })))
    }
}

/// What [`Linear::dense_vec`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dense {
    /// `x W^T + b`.
    WithBias,
    /// `x W^T`, the bias left to the caller's next pass.
    Unbiased,
    /// `gelu(x W^T + b)`.
    Gelu,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = self.forward_vec(x)? {
            return Tensor::from_vec(y, self.out_shape(x)?, x.device());
        }
        let in_dim = x.dims().last().copied().unwrap_or(0);
        let rows = x.elem_count() / in_dim.max(1);
        let y = match &self.weight {
            Weight::Dense(w) => x.reshape((rows, in_dim))?.matmul(w)?,
            // Float32 panels with an input the kernels do not take (another dtype or device).
            Weight::F32(p) => {
                let w = Tensor::from_vec(p.unpack_t(), (p.in_dim(), p.out_dim()), x.device())?.to_dtype(x.dtype())?;
                x.reshape((rows, in_dim))?.matmul(&w)?
            }
            _ => unreachable!("packed weights are handled in forward_vec"),
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape(self.out_shape(x)?)
    }
}

/// `c_proj(gelu_erf(c_fc(norm(x))))`. With packed weights the LayerNorm runs on each row as
/// the first product takes it; with bf16 weights in both layers, the whole MLP is one call to
/// the bf16 kernels. Otherwise the layers one after the other.
pub(crate) fn mlp(norm: &LayerNorm, c_fc: &Linear, c_proj: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    Ok(mlp_with(norm, c_fc, c_proj, x, true)?.0)
}

/// [`mlp`] with `c_proj`'s bias left to the caller ([`Linear::forward_unbiased`]).
pub(crate) fn mlp_unbiased(
    norm: &LayerNorm,
    c_fc: &Linear,
    c_proj: &Linear,
    x: &Tensor,
) -> candle_core::Result<(Tensor, Option<Vec<f32>>)> {
    mlp_with(norm, c_fc, c_proj, x, false)
}

fn mlp_with(
    norm: &LayerNorm,
    c_fc: &Linear,
    c_proj: &Linear,
    x: &Tensor,
    with_bias: bool,
) -> candle_core::Result<(Tensor, Option<Vec<f32>>)> {
    if let (Weight::Bf16(fc), Weight::Bf16(proj), Some(n)) = (&c_fc.weight, &c_proj.weight, norm.kernel_norm()) {
        let in_dim = x.dims().last().copied().unwrap_or(0);
        if in_dim != fc.in_dim() || n.weight.len() != in_dim {
            return Err(candle_core::Error::Msg(format!("MLP expects {} input features, got {in_dim}", fc.in_dim())));
        }
        let rows = x.elem_count() / in_dim.max(1);
        let y = with_f32(x, |xs| kernels::bf16::mlp(kernels::activations::Activations::normed(xs, n), rows, fc, proj))?;
        return Ok((Tensor::from_vec(y, c_proj.out_shape(x)?, x.device())?, None));
    }
    let h = match c_fc.forward_packed_after(Some(norm), x, true)? {
        Some(y) => Tensor::from_vec(y, c_fc.out_shape(x)?, x.device())?,
        None => c_fc.forward_gelu(&norm.forward(x)?)?,
    };
    if with_bias {
        Ok((c_proj.forward(&h)?, None))
    } else {
        c_proj.forward_unbiased(&h)
    }
}

/// Self-attention of `norm(x)`, `x` `(batch, seq, width)`, through the CPU kernels: the
/// `in_proj` product (rows q, k, v; the LayerNorm folded into packed products), RoPE in place,
/// softmax attention (bf16 on AMX or AVX512-BF16 for reduced-precision layers), heads merged
/// back into `(batch, seq, width)`. `None` when the kernels do not run for `x`
/// (other dtypes and devices): the caller then computes the reference's formula with candle.
pub(crate) fn kernel_attention(
    norm: &LayerNorm,
    in_proj: &Linear,
    x: &Tensor,
    heads: usize,
    rope: Option<RopeTables>,
    causal: bool,
) -> Result<Option<Tensor>> {
    let (batch, seq, width) = x.dims3()?;
    let shape = kernels::attention::Shape { batch, seq, heads, head_dim: width / heads };
    // Packed weights hand their product over as a vector: no tensor, no copy out of it.
    // Dense weights leave their bias to RoPE's pass over q and k (and v); without RoPE it is
    // written with the product.
    let (mut qkv, bias) = match in_proj.forward_packed_after(Some(norm), x, false)? {
        Some(qkv) => (qkv, None),
        None if kernels::enabled_for(x) => {
            let normed = norm.forward(x)?;
            match in_proj.dense_vec(&normed, if rope.is_none() { Dense::WithBias } else { Dense::Unbiased })? {
                Some(qkv_bias) => qkv_bias,
                None => (in_proj.forward(&normed)?.flatten_all()?.to_vec1()?, None),
            }
        }
        None => return Ok(None),
    };
    if let Some(t) = rope {
        kernels::attention::rope_in_place(&mut qkv, shape, t.cos_f32, t.sin_f32, t.rope.rot_dim(), bias.as_deref());
    }
    // Reduced-precision layers (bf16 and int8) take the bf16 attention where AMX or AVX512-BF16 runs it:
    // for int8 it replaced a float32 attention that was a fifth of the time.
    let reduced = matches!(in_proj.weight, Weight::Bf16(_) | Weight::Int8(_));
    let out = match reduced.then(|| kernels::attention::attention_bf16(&qkv, shape, causal)).flatten() {
        Some(out) => out,
        None => kernels::attention::attention(&qkv, shape, causal),
    };
    Ok(Some(Tensor::from_vec(out, (batch, seq, width), x.device())?))
}

/// `x + (h + bias) * gamma` (layer scale when present; `bias` a product's bias it left to this
/// pass, [`Linear::forward_unbiased`]), in one pass on the CPU kernels' path.
pub(crate) fn residual(x: &Tensor, h: &Tensor, bias: Option<&[f32]>, gamma: Option<&Tensor>) -> Result<Tensor> {
    let w = x.dims().last().copied().unwrap_or(1).max(1);
    let g: Option<Vec<f32>> = match gamma {
        Some(g) => Some(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?),
        None => None,
    };
    let fused = kernels::enabled_for(x)
        && kernels::enabled_for(h)
        && x.dims() == h.dims()
        && g.as_ref().is_none_or(|g| g.len() == w)
        && bias.is_none_or(|b| b.len() == w);
    if !fused {
        let h = match bias {
            Some(b) => h.broadcast_add(&Tensor::from_slice(b, b.len(), h.device())?.to_dtype(h.dtype())?)?,
            None => h.clone(),
        };
        let h = match gamma {
            Some(g) => h.broadcast_mul(g)?,
            None => h,
        };
        return Ok((x + h)?);
    }
    let y = with_f32(x, |xs| with_f32(h, |hs| kernels::math::add_scaled(xs, hs, bias, g.as_deref())))??;
    Ok(Tensor::from_vec(y, x.dims(), x.device())?)
}
