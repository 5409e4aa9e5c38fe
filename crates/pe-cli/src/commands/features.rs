//! `pe features`: dense features, the point of PE Spatial. The token features after a block, as
//! the reference's `forward_features` gives them, written as the patch grid `patch_tokens`
//! (N, H/p, W/p, C) plus `cls_token` (N, C) when the model has one, in a .safetensors file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use pe_index::output::{display_name, TensorsWriter};

use crate::args::{ImageArgs, ModelArgs, ThreadsArg};
use crate::inputs::{embed_images, report_failed, resolve, InputArgs};
use perception_encoder::Towers;

/// Arguments of `pe features`.
#[derive(Debug, clap::Args)]
pub struct FeaturesCmd {
    #[command(flatten)]
    pub(crate) threads: ThreadsArg,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    image: ImageArgs,
    /// Features after this block (negative counts from the end; -1 = all blocks).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    layer: isize,
    /// Pass the features through the tower's final LayerNorm (`ln_post`), as `norm=True`.
    #[arg(long)]
    norm: bool,
    /// Images per forward pass.
    #[arg(long, short = 'b', default_value_t = 4)]
    batch_size: usize,
    /// The .safetensors file to write: `patch_tokens` (N, H/p, W/p, C), `cls_token` (N, C)
    /// when the model has a class token, the image paths in the metadata key `paths`.
    #[arg(long, short = 'o', value_name = "FILE.safetensors")]
    output: PathBuf,
    #[command(flatten)]
    input: InputArgs,
    /// Image files or directories (searched recursively); `-` reads one image from stdin.
    #[arg(required_unless_present = "files_from")]
    inputs: Vec<PathBuf>,
}

pub fn run(cmd: FeaturesCmd) -> anyhow::Result<ExitCode> {
    if !cmd.output.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
        bail!("--output must be a .safetensors file (several tensors), got {}", cmd.output.display());
    }
    let cfg = cmd.model.config()?;
    let v = &cfg.vision;
    let layers = v.layers as isize;
    if cmd.layer < -layers || cmd.layer >= layers {
        bail!(
            "--layer {} is out of range for {} ({layers} blocks: use -{layers}..={})",
            cmd.layer,
            cfg.name,
            layers - 1
        );
    }
    let size = cmd.image.size.unwrap_or(v.image_size);
    let grid = size / v.patch_size;
    let cls = v.use_cls_token;
    let mut tensors = vec![("patch_tokens".to_string(), Some(vec![grid, grid, v.width]))];
    if cls {
        tensors.push(("cls_token".to_string(), Some(vec![v.width])));
    }
    let mut writer = TensorsWriter::create(&cmd.output, tensors).map_err(|e| anyhow::anyhow!("--output {e}"))?;
    let inputs = resolve(&cmd.input, &cmd.inputs, false)?;
    if inputs.is_empty() {
        bail!("no images found in the given paths (hidden files are skipped unless --include-hidden)");
    }
    let model = cmd.model.load(Towers::Image)?;
    let failed = embed_images(
        &model,
        &inputs,
        &cmd.image,
        (cmd.batch_size, crate::args::progress(inputs.len(), "images")),
        |x| Ok(model.forward_features(x, cmd.layer, cmd.norm, false)?),
        |rows| {
            for (input, _, row) in rows {
                // Row: tokens x width, the class token first when there is one.
                let (cls_row, patches) = if cls { row.split_at(v.width) } else { (&[][..], &row[..]) };
                let key = display_name(input.name());
                if cls {
                    writer.push(key, &[patches, cls_row])?;
                } else {
                    writer.push(key, &[patches])?;
                }
            }
            Ok(())
        },
    )?;
    let meta = vec![
        ("pe.model".to_string(), cfg.name.clone()),
        ("pe.dtype".to_string(), cmd.model.dtype.name().to_string()),
        ("pe.layer".to_string(), cmd.layer.to_string()),
        ("pe.norm".to_string(), cmd.norm.to_string()),
    ];
    writer.finish(meta)?;
    Ok(report_failed(failed, inputs.len(), "images"))
}
