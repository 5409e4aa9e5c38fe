//! # perception-encoder
//!
//! A native Rust implementation of Meta's Perception Encoder (PE): the PE Core CLIP models
//! (T16, S16, B16, L14, G14 image and text towers) and the vision-only PE Spatial and PE Lang
//! towers, numerically equal to the reference implementation
//! ([facebookresearch/perception_models](https://github.com/facebookresearch/perception_models),
//! `core/vision_encoder/pe.py`) in float32.
//!
//! ```no_run
//! use perception_encoder::{Clip, ClipConfig, LoadOptions};
//! use candle_core::{DType, Device, Tensor};
//!
//! let cfg = ClipConfig::preset("PE-Core-B16-224")?;
//! let model = Clip::load(&cfg, "PE-Core-B16-224.pt", &LoadOptions::default())?;
//! let pixels = Tensor::zeros((2, 3, 224, 224), DType::F32, &Device::Cpu)?; // preprocessed images
//! let ids = Tensor::zeros((1, 32), DType::I64, &Device::Cpu)?;             // tokenized text
//! let out = model.forward(Some(&pixels), Some(&ids))?;
//! let logits = (out.image_features.unwrap().matmul(&out.text_features.unwrap().t()?)? * out.logit_scale as f64)?;
//! # Ok::<(), perception_encoder::Error>(())
//! ```
//!
//! Modules: [`config`] (presets and JSON), [`precision`] (f32, bf16, int8), [`weights`]
//! (checkpoint formats and key layouts), [`vision`] and [`text`] (the towers), [`Clip`] (both
//! together), [`tokenizer`], [`preprocess`] and [`video`] (inputs), [`hub`] (the Hugging Face
//! cache), [`zero_shot`], [`mod@bench`] and [`runtime`] (process set-up).
#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod error;
pub mod hub;
pub mod precision;
pub mod preprocess;
pub mod rope;
pub mod runtime;
pub mod text;
pub mod tokenizer;
pub mod video;
pub mod vision;
pub mod weights;
pub mod zero_shot;

mod clip;
mod kernels;
mod layers;
mod source;
#[doc(hidden)]
pub use kernels::bench as kernel_bench;
pub use kernels::peak;
mod transformer;

pub use clip::{Clip, ClipOutput, LoadOptions, Towers};
pub use config::{ClipConfig, PoolType, TextConfig, VisionConfig, PRESET_NAMES};
pub use error::{Error, Result};
pub use precision::Precision;
pub use source::ModelSource;
pub use text::TextTransformer;
pub use vision::{l2_normalize, VisionTransformer};

/// Re-exported so users need not depend on candle's exact version to build inputs.
pub use candle_core;
