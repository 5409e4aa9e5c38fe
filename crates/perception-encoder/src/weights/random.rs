//! Random weights in the official layout, for benchmarks and full-size tests without a download.

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::official_shapes;
use crate::config::ClipConfig;
use crate::error::Result;

/// Every tensor of `cfg` filled from a seeded generator, in the official layout, sorted by key.
///
/// The scales follow the fixtures' scheme (LayerNorm weights `1 + 0.1·N`, linear weights
/// `N / sqrt(fan_in)`, biases `0.05·N`, embeddings `0.5·N`, LayerScale `0.5 + 0.2·N`,
/// `logit_scale = ln(1/0.07)`), so activations stay in a realistic range at any depth.
///
/// ```
/// use perception_encoder::{weights::random_state_dict, ClipConfig};
/// use candle_core::{DType, Device};
/// let cfg = ClipConfig::from_json_str(r#"{"vision": {"patch_size": 8, "width": 32, "layers": 1,
///     "heads": 2, "mlp_ratio": 4.0, "output_dim": 16, "image_size": 32}}"#).unwrap();
/// let tensors = random_state_dict(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
/// assert!(tensors.iter().any(|(k, _)| k == "visual.conv1.weight"));
/// ```
pub fn random_state_dict(cfg: &ClipConfig, seed: u64, dtype: DType, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (key, shape) in official_shapes(cfg) {
        let n: usize = shape.iter().product();
        let leaf = key.rsplit('.').next().unwrap_or(&key);
        let is_ln = key.contains("ln_") || key.contains("layernorm");
        let (mean, std) = if key == "logit_scale" {
            ((1.0f32 / 0.07).ln(), 0.0)
        } else if is_ln && leaf == "weight" {
            (1.0, 0.1)
        } else if leaf == "gamma" {
            (0.5, 0.2)
        } else if key.ends_with("conv1.weight") {
            (0.0, 1.0 / ((shape[1] * shape[2] * shape[3]) as f32).sqrt())
        } else if key.ends_with("visual.proj") || key == "text_projection" {
            (0.0, 1.0 / (shape[0] as f32).sqrt())
        } else if leaf == "probe" {
            (0.0, 1.0)
        } else if key.ends_with("class_embedding")
            || key.ends_with("positional_embedding")
            || key.starts_with("token_embedding")
        {
            (0.0, 0.5)
        } else if shape.len() == 2 {
            (0.0, 1.0 / (shape[1] as f32).sqrt())
        } else {
            (0.0, 0.05)
        };
        let data: Vec<f32> = (0..n).map(|_| mean + std * rng.sample::<f32, _>(StandardNormal)).collect();
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        out.push((key, t));
    }
    Ok(out)
}
