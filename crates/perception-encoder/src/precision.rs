//! The numeric precision a model runs in: the reference's float32, or the CPU's faster
//! bfloat16 and int8 linear layers.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How a model's linear layers compute; everything else (LayerNorm, softmax, GELU, residuals,
/// embeddings) computes in float32 on the CPU whichever is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The reference's numbers (parity within 1e-5).
    #[default]
    F32,
    /// On the CPU, the linear layers keep bfloat16 weights and round their inputs to bfloat16,
    /// accumulating in float32 (AMX or AVX512-BF16 where present); with AMX the attention
    /// products take bfloat16 operands too (as PyTorch's autocast does). Embeddings within
    /// cosine 0.999 of `F32`. On other devices every tensor is bfloat16.
    Bf16,
    /// int8 linear layers (CPU only): weights quantized per output channel at load, inputs per
    /// row on the fly, int32 sums (AMX-INT8 where present); float32 elsewhere. Embeddings within
    /// cosine 0.998 of `F32`. On CPUs with AVX2 but no AVX512-VNNI, attention-pooled image
    /// towers use 7-bit operands (twice the products per multiply instruction; their
    /// per-token features, `forward_features`, are noisier than the pooled embedding).
    Int8,
}

impl Precision {
    /// Every precision, in the order the CLI lists them.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Int8];

    /// The lowercase name used on the command line, in reports and in JSON: `f32`, `bf16`, `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// The dtype the checkpoint's tensors are read in: int8 quantizes float32 weights at load.
    pub fn load_dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Int8 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::InvalidInput(format!("unknown precision `{s}` (use f32, bf16 or int8)")))
    }
}

#[cfg(test)]
mod tests {
    use super::Precision;

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert_eq!(" BF16 ".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("u8".parse::<Precision>().unwrap_err().to_string().contains("f32, bf16 or int8"));
    }
}
