//! `pe classify`: zero-shot classification with prompt ensembling.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use perception_encoder::zero_shot::{imagenet_classes, ZeroShotClassifier, DEFAULT_TEMPLATES, IMAGENET_TEMPLATES};

use crate::args::{ImageArgs, ModelArgs};
use crate::inputs::{embed_images, needs_embedding, read_lines, report_failed, resolve, InputArgs};
use perception_encoder::Towers;

/// Arguments of `pe classify`.
#[derive(Debug, clap::Args)]
pub struct ClassifyCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    image: ImageArgs,
    /// Comma-separated labels, or `imagenet` for the 1000 ImageNet-1k classes.
    #[arg(long, short = 'l', required_unless_present = "labels_file", conflicts_with = "labels_file")]
    labels: Option<String>,
    /// A file with one label per line.
    #[arg(long)]
    labels_file: Option<PathBuf>,
    /// A file of prompt templates, one per line, each with `{}` where the label goes
    /// (default: "a photo of a {}.", or a small ensemble for `--labels imagenet`).
    #[arg(long, short = 't')]
    templates: Option<PathBuf>,
    /// How many labels to print per image.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    top: u64,
    /// Images per forward pass.
    #[arg(long, short = 'b', default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    input: InputArgs,
    /// Image files or directories (searched recursively); `-` reads one image from stdin.
    #[arg(required_unless_present = "files_from")]
    inputs: Vec<PathBuf>,
}

pub fn run(cmd: ClassifyCmd) -> anyhow::Result<ExitCode> {
    let imagenet = cmd.labels.as_deref().is_some_and(|l| l.trim().eq_ignore_ascii_case("imagenet"));
    let labels: Vec<String> = match (&cmd.labels, &cmd.labels_file) {
        _ if imagenet => imagenet_classes().into_iter().map(str::to_string).collect(),
        (Some(l), _) => l.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        (None, Some(f)) => read_lines(f)?.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        (None, None) => unreachable!("clap requires labels"),
    };
    if labels.is_empty() {
        bail!("no labels given");
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = labels.iter().find(|l| !seen.insert(l.as_str())) {
        bail!("label `{dup}` is given twice; labels must be distinct");
    }
    let templates: Vec<String> = match &cmd.templates {
        Some(f) => read_lines(f)?.into_iter().filter(|s| !s.trim().is_empty()).collect(),
        None if imagenet => IMAGENET_TEMPLATES.iter().map(|s| s.to_string()).collect(),
        None => DEFAULT_TEMPLATES.iter().map(|s| s.to_string()).collect(),
    };
    let inputs = resolve(&cmd.input, &cmd.inputs, false)?;
    if inputs.is_empty() {
        bail!("no images found in the given paths (hidden files are skipped unless --include-hidden)");
    }
    let model = cmd.model.load(Towers::Both)?;
    needs_embedding(&model)?;
    let bar = crate::args::progress(labels.len(), "class vectors");
    let classifier = ZeroShotClassifier::new(&model, &labels, &templates, 256)?;
    bar.finish_and_clear();
    let top = usize::try_from(cmd.top).unwrap_or(usize::MAX);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let failed = embed_images(
        &model,
        &inputs,
        &cmd.image,
        (cmd.batch_size, crate::args::progress(inputs.len(), "images")),
        |x| Ok(model.encode_image(x, true)?),
        |rows| {
            for (input, _, row) in rows {
                let x = perception_encoder::candle_core::Tensor::new(
                    row.as_slice(),
                    &perception_encoder::candle_core::Device::Cpu,
                )?
                .unsqueeze(0)?;
                let preds = classifier.classify(&x, top)?.pop().unwrap_or_default();
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({"path": crate::output::display_name(input.name()), "predictions": preds}),
                )?;
                out.write_all(b"\n")?;
            }
            Ok(out.flush()?)
        },
    )?;
    out.flush()?;
    Ok(report_failed(failed, inputs.len(), "images"))
}
