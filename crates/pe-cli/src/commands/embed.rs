//! `pe embed-image`, `pe embed-text`, `pe embed-video`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use perception_encoder::candle_core::DType;
use perception_encoder::l2_normalize;
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::video::{load_clip, FrameSampling};

use crate::args::{progress, ImageArgs, ModelArgs};
use crate::inputs::{collect_files, collect_images, describe, embed_image_files, needs_embedding, read_lines};
use crate::output::Sink;

/// Arguments of `pe embed-image`.
#[derive(Debug, clap::Args)]
pub struct ImageCmd {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    image: ImageArgs,
    /// Embed from the blocks up to this one (negative counts from the end; -1 = all): the
    /// embedding of the tower truncated there.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    layer: isize,
    /// Print raw embeddings instead of L2-normalized ones.
    #[arg(long)]
    no_normalize: bool,
    /// Images per forward pass.
    #[arg(long, short = 'b', default_value_t = 8)]
    batch_size: usize,
    /// Write a matrix (.npy or .safetensors) plus the list of paths instead of JSON Lines.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Image files or directories (searched recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

fn exit_code(failed: usize) -> ExitCode {
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn run_image(cmd: ImageCmd) -> anyhow::Result<ExitCode> {
    let files = collect_images(&cmd.inputs)?;
    if files.is_empty() {
        bail!("no images found in the given paths");
    }
    let model = cmd.model.load()?;
    needs_embedding(&model)?;
    let mut sink = Sink::new(cmd.output.is_some());
    let normalize = !cmd.no_normalize;
    let failed = embed_image_files(
        &model,
        &files,
        &cmd.image,
        cmd.batch_size,
        |x| Ok(model.encode_image_at(x, cmd.layer, normalize)?),
        |path, row| sink.push("path", path.as_os_str(), row),
    )?;
    sink.finish(cmd.output.as_deref())?;
    if failed > 0 {
        eprintln!("pe: {failed} of {} images could not be read", files.len());
    }
    Ok(exit_code(failed))
}

/// Arguments of `pe embed-text`.
#[derive(Debug, clap::Args)]
pub struct TextCmd {
    #[command(flatten)]
    model: ModelArgs,
    /// Print raw embeddings instead of L2-normalized ones.
    #[arg(long)]
    no_normalize: bool,
    /// Texts per forward pass.
    #[arg(long, short = 'b', default_value_t = 32)]
    batch_size: usize,
    /// Read texts from a file, one per line (UTF-8).
    #[arg(long, short = 'f', conflicts_with = "texts")]
    file: Option<PathBuf>,
    /// Write a matrix (.npy or .safetensors) plus the list of texts instead of JSON Lines.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Texts to embed.
    #[arg(required_unless_present = "file")]
    texts: Vec<String>,
}

pub fn run_text(cmd: TextCmd) -> anyhow::Result<ExitCode> {
    let texts = match &cmd.file {
        Some(f) => read_lines(f)?,
        None => cmd.texts.clone(),
    };
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    let model = cmd.model.load()?;
    let Some(text_tower) = model.text() else {
        bail!("{} has no text tower (it is a vision-only model)", model.config().name);
    };
    let tokenizer = ClipTokenizer::new(text_tower.config().context_length);
    let mut sink = Sink::new(cmd.output.is_some());
    let bar = progress(texts.len(), "texts");
    for chunk in texts.chunks(cmd.batch_size.max(1)) {
        let ids = tokenizer.tokenize_batch(chunk, model.visual().device())?;
        let rows: Vec<Vec<f32>> = model.encode_text(&ids, !cmd.no_normalize)?.to_dtype(DType::F32)?.to_vec2()?;
        for (text, row) in chunk.iter().zip(rows) {
            sink.push("text", std::ffi::OsStr::new(text), row)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    sink.finish(cmd.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// Which frames are sampled.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Sampling {
    /// int(i * (total - 1) / (n - 1)): first and last frame included (the reference benchmarks).
    Benchmark,
    /// int(i * total / n) (the reference demo notebook).
    Demo,
}

/// Arguments of `pe embed-video`.
#[derive(Debug, clap::Args)]
pub struct VideoCmd {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    image: ImageArgs,
    /// Frames sampled per video.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// Frame sampling rule.
    #[arg(long, value_enum, default_value = "benchmark")]
    sampling: Sampling,
    /// Print the raw mean of frame embeddings instead of its L2-normalized form.
    #[arg(long)]
    no_normalize: bool,
    /// Write a matrix (.npy or .safetensors) plus the list of paths instead of JSON Lines.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Video files or directories (searched recursively).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn run_video(cmd: VideoCmd) -> anyhow::Result<ExitCode> {
    let files = collect_files(&cmd.inputs, pe_index::VIDEO_EXTENSIONS)?;
    if files.is_empty() {
        bail!("no videos found in the given paths");
    }
    let model = cmd.model.load()?;
    needs_embedding(&model)?;
    let transform = cmd.image.transform(&model)?;
    let rule = match cmd.sampling {
        Sampling::Benchmark => FrameSampling::Benchmark,
        Sampling::Demo => FrameSampling::Demo,
    };
    let mut sink = Sink::new(cmd.output.is_some());
    let bar = progress(files.len(), "videos");
    let mut failed = 0;
    for path in &files {
        match load_clip(path, cmd.frames, rule, &transform) {
            Ok(clip) => {
                // The zero-shot benchmark's form: the mean of raw frame embeddings, normalized.
                let mean = model.encode_video(&clip.unsqueeze(0)?, false)?;
                let mean = if cmd.no_normalize { mean } else { l2_normalize(&mean)? };
                let row: Vec<f32> = mean.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                sink.push("path", path.as_os_str(), row)?;
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("pe: skipping {}", describe(path, &e)));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    sink.finish(cmd.output.as_deref())?;
    Ok(exit_code(failed))
}
