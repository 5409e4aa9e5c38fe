//! `pe models`: the presets with parameters, resolution, context length and embedding size.

use std::io::Write;
use std::process::ExitCode;

use perception_encoder::weights::num_parameters;
use perception_encoder::ClipConfig;

/// Arguments of `pe models`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object per model instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if !args.json {
        writeln!(
            out,
            "{:<24} {:<12} {:>8} {:>6} {:>6} {:>7} {:>7} {:>9}",
            "model", "kind", "params", "size", "patch", "width", "context", "embed dim"
        )?;
    }
    for cfg in ClipConfig::presets() {
        let v = &cfg.vision;
        let kind = if cfg.text.is_some() { "CLIP" } else { "vision-only" };
        let params = num_parameters(&cfg);
        let context = cfg.text.as_ref().map(|t| t.context_length);
        if args.json {
            let obj = serde_json::json!({
                "model": cfg.name,
                "kind": kind,
                "parameters": params,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "vision_width": v.width,
                "vision_layers": v.layers,
                "context_length": context,
                "embed_dim": cfg.embed_dim(),
            });
            writeln!(out, "{obj}")?;
        } else {
            writeln!(
                out,
                "{:<24} {:<12} {:>7.0}M {:>6} {:>6} {:>7} {:>7} {:>9}",
                cfg.name,
                kind,
                params as f64 / 1e6,
                v.image_size,
                v.patch_size,
                v.width,
                context.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                cfg.embed_dim()
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
