//! `pe embed-image`, `pe embed-text`, `pe embed-video`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use perception_encoder::candle_core::DType;
use perception_encoder::l2_normalize;
use perception_encoder::tokenizer::ClipTokenizer;
use perception_encoder::video::{load_clip, FrameSampling};

use crate::args::{progress, ImageArgs, ModelArgs};
use crate::inputs::{
    describe, embed_images, needs_embedding, read_texts, report_failed, resolve, skipped, Input, InputArgs,
};
use crate::output::OutputArgs;
use perception_encoder::Towers;

/// Arguments of `pe embed-image`.
#[derive(Debug, clap::Args)]
pub struct ImageCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
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
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    shards: super::shards::ShardArgs,
    /// Image files or directories (searched recursively); `-` reads one image from stdin.
    #[arg(required_unless_present_any = ["files_from", "shard_input"])]
    inputs: Vec<PathBuf>,
}

/// The inputs not yet in a resumed output; an error when there are none at all.
fn pending(all: Vec<Input>, writer: &pe_index::output::Writer, what: &str) -> anyhow::Result<Vec<Input>> {
    if all.is_empty() {
        bail!("no {what} found in the given paths (hidden files are skipped unless --include-hidden)");
    }
    let total = all.len();
    let left: Vec<Input> = all.into_iter().filter(|i| !writer.has(i.name())).collect();
    if left.len() < total {
        tracing::info!("{} of {total} {what} are already in the output", total - left.len());
    }
    Ok(left)
}

pub fn run_image(cmd: ImageCmd) -> anyhow::Result<ExitCode> {
    if cmd.shards.output_dir.is_some() {
        let run = (cmd.layer, !cmd.no_normalize, cmd.batch_size);
        return super::shards::run_image(&cmd.model, &cmd.image, run, &cmd.shards, &cmd.input);
    }
    let last = cmd.layer == -1;
    let dim = if last { Some(cmd.model.config()?.embed_dim()) } else { None };
    let mut writer = cmd.output.writer(cmd.model.columns("path", true, dim)?)?;
    let inputs = pending(resolve(&cmd.input, &cmd.inputs, false)?, &writer, "images")?;
    if inputs.is_empty() {
        writer.finish()?;
        return Ok(ExitCode::SUCCESS);
    }
    let model = cmd.model.load(Towers::Image)?;
    needs_embedding(&model)?;
    let normalize = !cmd.no_normalize;
    let failed = embed_images(
        &model,
        &inputs,
        &cmd.image,
        (cmd.batch_size, crate::args::progress(inputs.len(), "images")),
        |x| Ok(model.encode_image_at(x, cmd.layer, normalize)?),
        |rows| {
            for (input, size, row) in rows {
                writer.push(input.name(), Some(size), &row)?;
            }
            Ok(writer.flush()?)
        },
    )?;
    writer.finish()?;
    Ok(report_failed(failed, inputs.len(), "images"))
}

/// Arguments of `pe embed-text`.
#[derive(Debug, clap::Args)]
pub struct TextCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
    #[command(flatten)]
    model: ModelArgs,
    /// Print raw embeddings instead of L2-normalized ones.
    #[arg(long)]
    no_normalize: bool,
    /// Texts per forward pass.
    #[arg(long, short = 'b', default_value_t = 32)]
    batch_size: usize,
    /// Read texts from a file (`-` for stdin), one a line (UTF-8).
    #[arg(long, short = 'f', conflicts_with = "texts")]
    file: Option<PathBuf>,
    /// Texts in --file end with NUL, not newline (so a text may hold line breaks).
    #[arg(long = "null", short = '0', requires = "file")]
    null: bool,
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    shards: super::shards_text::TextShardArgs,
    /// Texts to embed.
    #[arg(required_unless_present_any = ["file", "input"])]
    texts: Vec<String>,
}

pub fn run_text(cmd: TextCmd) -> anyhow::Result<ExitCode> {
    if cmd.shards.output_dir.is_some() {
        return super::shards_text::run_text(&cmd.model, (!cmd.no_normalize, cmd.batch_size), &cmd.shards);
    }
    let mut writer = cmd.output.writer(cmd.model.columns("text", false, None)?)?;
    let texts = match &cmd.file {
        Some(f) => read_texts(f, cmd.null)?,
        None => cmd.texts.clone(),
    };
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    let texts: Vec<String> = texts.into_iter().filter(|t| !writer.has(std::ffi::OsStr::new(t))).collect();
    let cfg = cmd.model.config()?;
    let Some(text_cfg) = &cfg.text else {
        bail!("{} has no text tower (it is a vision-only model)", cfg.name);
    };
    let tokenizer = ClipTokenizer::new(text_cfg.context_length);
    let model = cmd.model.load(Towers::Text)?;
    let bar = progress(texts.len(), "texts");
    for chunk in texts.chunks(cmd.batch_size.max(1)) {
        let ids = tokenizer.tokenize_batch(chunk, model.device())?;
        let rows: Vec<Vec<f32>> = model.encode_text(&ids, !cmd.no_normalize)?.to_dtype(DType::F32)?.to_vec2()?;
        for (text, row) in chunk.iter().zip(rows) {
            writer.push(std::ffi::OsStr::new(text), None, &row)?;
        }
        writer.flush()?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    writer.finish()?;
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
    pub(crate) threads: crate::args::ThreadsArg,
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
    #[command(flatten)]
    output: OutputArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Video files or directories (searched recursively); `-` reads one video from stdin.
    #[arg(required_unless_present = "files_from")]
    inputs: Vec<PathBuf>,
}

pub fn run_video(cmd: VideoCmd) -> anyhow::Result<ExitCode> {
    if cmd.frames == 0 {
        bail!("--frames must be at least 1");
    }
    if !perception_encoder::video::available() {
        bail!("embedding videos needs FFmpeg's `ffmpeg` and `ffprobe` on the PATH (install FFmpeg)");
    }
    let dim = Some(cmd.model.config()?.embed_dim());
    let mut writer = cmd.output.writer(cmd.model.columns("path", false, dim)?)?;
    let inputs = pending(resolve(&cmd.input, &cmd.inputs, true)?, &writer, "videos")?;
    if inputs.is_empty() {
        writer.finish()?;
        return Ok(ExitCode::SUCCESS);
    }
    // FFmpeg seeks in its input, so a video from stdin is stored in a temporary file first.
    let stdin_file = if inputs.contains(&Input::Stdin) {
        let mut f = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut f, &crate::inputs::read_stdin()?)?;
        Some(f)
    } else {
        None
    };
    let model = cmd.model.load(Towers::Image)?;
    needs_embedding(&model)?;
    let transform = cmd.image.transform(&model)?;
    let rule = match cmd.sampling {
        Sampling::Benchmark => FrameSampling::Benchmark,
        Sampling::Demo => FrameSampling::Demo,
    };
    let bar = progress(inputs.len(), "videos");
    let mut failed = 0;
    for input in &inputs {
        let path = match (input, &stdin_file) {
            (Input::File(p), _) => p.as_path(),
            (Input::Stdin, Some(f)) => f.path(),
            (Input::Stdin, None) | (Input::Memory(..), _) => continue,
        };
        match load_clip(path, cmd.frames, rule, &transform) {
            Ok(clip) => {
                // The zero-shot benchmark's form: the mean of raw frame embeddings, normalized.
                let mean = model.encode_video(&clip.unsqueeze(0)?, false)?;
                let mean = if cmd.no_normalize { mean } else { l2_normalize(&mean)? };
                let row: Vec<f32> = mean.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                writer.push(input.name(), None, &row)?;
                writer.flush()?;
            }
            Err(e) => {
                failed += 1;
                let message = match input {
                    Input::File(p) => describe(p, &e),
                    Input::Stdin | Input::Memory(..) => format!("{}: {e}", input.name().to_string_lossy()),
                };
                bar.suspend(|| skipped(&message));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    writer.finish()?;
    Ok(report_failed(failed, inputs.len(), "videos"))
}
