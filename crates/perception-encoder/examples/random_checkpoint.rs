//! Write a preset's checkpoint with random weights (plausible magnitudes, fixed seed), for
//! benchmarks of whole jobs (`pe embed-image --model PRESET --weights FILE`) without a download.
//!
//! `cargo run --release -p perception-encoder --example random_checkpoint -- PE-Core-B16-224 out.safetensors`

use std::collections::HashMap;

use perception_encoder::candle_core::{safetensors, DType, Device, Tensor};
use perception_encoder::weights::random_state_dict;
use perception_encoder::ClipConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [preset, out] = args.as_slice() else {
        eprintln!("usage: random_checkpoint PRESET OUT.safetensors");
        std::process::exit(2);
    };
    let cfg = ClipConfig::preset(preset)?;
    let tensors: HashMap<String, Tensor> = random_state_dict(&cfg, 0, DType::F32, &Device::Cpu)?.into_iter().collect();
    safetensors::save(&tensors, out)?;
    eprintln!("wrote {} tensors of {preset} to {out}", tensors.len());
    Ok(())
}
