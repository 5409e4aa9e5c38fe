//! `pe convert`: any supported checkpoint to safetensors, in the official or open_clip layout.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use perception_encoder::candle_core::DType;
use perception_encoder::weights::{convert, Checkpoint, CheckpointLayout};

/// Key layout of the output.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Layout {
    /// The reference's state-dict names.
    Official,
    /// open_clip / timm names (as the hub re-exports use).
    Openclip,
}

/// Storage dtype of the output.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StoreDType {
    F32,
    F16,
    Bf16,
}

/// Arguments of `pe convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertCmd {
    /// Input checkpoint (.pt or .safetensors, any supported layout).
    input: PathBuf,
    /// Output .safetensors file.
    output: PathBuf,
    /// Key layout of the output.
    #[arg(long, value_enum, default_value = "official")]
    layout: Layout,
    /// Storage dtype of the output.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: StoreDType,
}

pub fn run(cmd: ConvertCmd) -> anyhow::Result<ExitCode> {
    if !cmd.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
        anyhow::bail!("the output must be a .safetensors file, got {}", cmd.output.display());
    }
    let ckpt = Checkpoint::open(&cmd.input)?;
    let layout = match cmd.layout {
        Layout::Official => CheckpointLayout::Official,
        Layout::Openclip => CheckpointLayout::OpenClip,
    };
    let dtype = match cmd.dtype {
        StoreDType::F32 => DType::F32,
        StoreDType::F16 => DType::F16,
        StoreDType::Bf16 => DType::BF16,
    };
    let n =
        convert(&ckpt, &cmd.output, layout, dtype).with_context(|| format!("converting {}", cmd.input.display()))?;
    eprintln!("wrote {n} tensors to {}", cmd.output.display());
    Ok(ExitCode::SUCCESS)
}
