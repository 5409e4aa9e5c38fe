//! Random weights in the official layout, for benchmarks and full-size tests without a download.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::official_shapes;
use crate::config::ClipConfig;
use crate::error::Result;

/// Every tensor of `cfg` filled from a seeded generator, in the official layout, sorted by key.
///
/// The scales follow the fixtures' scheme (LayerNorm weights `1 + 0.1·N`, linear weights
/// `N / sqrt(fan_in)`, biases `0.05·N`, embeddings `0.5·N`, LayerScale `0.5 + 0.2·N`,
/// `logit_scale = ln(1/0.07)`), so activations stay in a realistic range at any depth. `N` has
/// mean 0 and variance 1 but is uniform, not normal: each value is a hash of (seed, tensor,
/// index), so the tensors are filled on every core and the same on any number of them
/// (a normal generator made `pe bench` spend 7 s on L14's weights before measuring anything).
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
    random_tensors(cfg, seed, dtype, device, |_| true)
}

/// [`random_state_dict`]'s tensors whose keys `keep` accepts, each with the values it has there.
pub(crate) fn random_tensors(
    cfg: &ClipConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (tensor, (key, shape)) in official_shapes(cfg).into_iter().enumerate() {
        if !keep(&key) {
            continue;
        }
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
        let mut data = vec![0f32; n];
        let stream = splitmix64(seed ^ splitmix64(tensor as u64));
        data.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
            for (i, x) in chunk.iter_mut().enumerate() {
                *x = mean + std * unit(splitmix64(stream ^ ((c << 16) + i) as u64));
            }
        });
        let t = Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        out.push((key, t));
    }
    Ok(out)
}

/// SplitMix64's output function: a bijective mix of all 64 bits.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform on `[-sqrt(3), sqrt(3))` (mean 0, variance 1) from the top 24 bits of `h`.
fn unit(h: u64) -> f32 {
    const SQRT3: f32 = 1.732_050_8;
    ((h >> 40) as f32 * (1.0 / (1u64 << 24) as f32) * 2.0 - 1.0) * SQRT3
}

#[cfg(test)]
mod tests {
    /// The generator's values have the moments the scales assume, and each value depends on
    /// its index, not on how the work was split.
    #[test]
    fn unit_values_have_mean_0_and_variance_1() {
        let n = 1_000_000u64;
        let v: Vec<f64> = (0..n).map(|i| super::unit(super::splitmix64(i)) as f64).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.005 && (var - 1.0).abs() < 0.005, "mean {mean} variance {var}");
        assert!(v.iter().all(|x| x.abs() <= 3f64.sqrt()));
    }
}
