//! Options shared by the commands: which model, and how images are prepared.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use perception_encoder::preprocess::{Gray16, ImageTransform, ResizeMode, DEFAULT_MAX_PIXELS};
use perception_encoder::{Clip, LoadOptions, ModelSource, Precision, Towers};

/// `--model NAME` (weights from the hub cache), `--model NAME --weights FILE`, or
/// `--config FILE.json --weights FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A preset name, e.g. PE-Core-B16-224 (see `pe models`); weights come from the hub cache
    /// (facebook/<NAME>) unless --weights is given.
    #[arg(long, short = 'm', env = "PE_MODEL")]
    pub model: Option<String>,
    /// A model config in the reference's JSON format (`vision` and `text` objects).
    #[arg(long, conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// A checkpoint: the official .pt, or safetensors in the official or open_clip layout.
    #[arg(long, short = 'w')]
    pub weights: Option<PathBuf>,
    /// Precision: f32 (the reference's numbers), bf16 (bfloat16 matmul operands, float32
    /// accumulation, LayerNorm, softmax and GELU; about half the memory, faster on CPUs with
    /// AMX or AVX512-BF16; embeddings within cosine 0.999 of f32) or int8 (linear layers
    /// quantized; a quarter of the weight memory; see docs/performance.md for its accuracy).
    #[arg(long, default_value = "f32", env = "PE_DTYPE", value_parser = PrecisionParser)]
    pub dtype: Precision,
}

/// Parses `--dtype` into the library's [`Precision`], listing its names in `--help` and in
/// clap's "possible values" error.
#[derive(Debug, Clone, Copy)]
pub struct PrecisionParser;

impl clap::builder::TypedValueParser for PrecisionParser {
    type Value = Precision;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Precision, clap::Error> {
        let names = Precision::ALL.map(Precision::name);
        let name = clap::builder::PossibleValuesParser::new(names).parse_ref(cmd, arg, value)?;
        Ok(Precision::ALL.into_iter().find(|p| p.name() == name).unwrap_or_default())
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(Precision::ALL.into_iter().map(|p| clap::builder::PossibleValue::new(p.name()))))
    }
}

impl ModelArgs {
    pub fn source(&self) -> anyhow::Result<ModelSource> {
        Ok(ModelSource::from_options(self.model.as_deref(), self.config.as_deref(), self.weights.as_deref())?)
    }

    /// The model's configuration, read without loading the weights (for checks made before
    /// any work, such as an output's model).
    pub fn config(&self) -> anyhow::Result<perception_encoder::ClipConfig> {
        Ok(self.source()?.config()?)
    }

    /// An output's columns for this model: key column `key`, optional pixel sizes.
    pub fn columns(&self, key: &str, sizes: bool, dim: Option<usize>) -> anyhow::Result<pe_index::output::Columns> {
        let cfg = self.config()?;
        Ok(pe_index::output::Columns {
            key: key.into(),
            sizes,
            model: cfg.name,
            dtype: self.dtype.name().into(),
            dim,
            shard: None,
            captions: false,
            hashes: false,
            texts: false,
            json: false,
        })
    }

    pub fn options(&self, towers: Towers) -> LoadOptions {
        LoadOptions { precision: self.dtype, towers, ..LoadOptions::default() }
    }

    /// The model with `towers` built (a command that embeds only images or only text reads
    /// and holds only that tower).
    pub fn load(&self, towers: Towers) -> anyhow::Result<Clip> {
        let source = self.source()?;
        let what = match &source {
            ModelSource::Preset { name, .. } => name.clone(),
            ModelSource::Custom { config, .. } => config.display().to_string(),
        };
        let started = std::time::Instant::now();
        let model = source
            .load(&self.options(towers), &mut crate::commands::download::Reporter::new())
            .with_context(|| format!("loading model {what}"))?;
        tracing::info!("loaded {} in {:.2}s", model.config().name, started.elapsed().as_secs_f64());
        Ok(model)
    }
}

/// `--threads`, on the commands that compute (not on tokenize, models or convert).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ThreadsArg {
    /// Worker threads (default: PE_THREADS, RAYON_NUM_THREADS, or all cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

/// How images (and video frames) become model inputs.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageArgs {
    /// Resize the shorter side and crop the centre instead of squashing to a square.
    #[arg(long)]
    pub center_crop: bool,
    /// Input side in pixels (default: the model's image_size).
    #[arg(long)]
    pub size: Option<usize>,
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// 16-bit grayscale images: `pillow` (the reference: 16-bit resize, then values clipped to
    /// 255, so most turn white) or `high-byte` (each sample's high byte: the image as it looks).
    #[arg(long, value_enum, default_value_t = Gray16Arg::Pillow)]
    pub gray16: Gray16Arg,
}

impl ImageArgs {
    /// The transform these options ask for. A `--size` whose patch grid would exceed
    /// [`MAX_INPUT_TOKENS`] is a usage error (attention grows with the square of the tokens).
    pub fn transform(&self, model: &Clip) -> anyhow::Result<ImageTransform> {
        let mode = if self.center_crop { ResizeMode::CenterCrop } else { ResizeMode::Squash };
        let vision = &model.config().vision;
        let size = self.size.unwrap_or(vision.image_size);
        let side = size / vision.patch_size;
        if size < vision.patch_size || side * side > MAX_INPUT_TOKENS {
            anyhow::bail!(
                "--size {size} is outside {}..={} for patch size {} (at most {MAX_INPUT_TOKENS} patch tokens)",
                vision.patch_size,
                (MAX_INPUT_TOKENS as f64).sqrt() as usize * vision.patch_size,
                vision.patch_size
            );
        }
        let gray16 = match self.gray16 {
            Gray16Arg::Pillow => Gray16::Pillow,
            Gray16Arg::HighByte => Gray16::HighByte,
        };
        Ok(ImageTransform { size, mode, max_pixels: self.max_pixels, gray16 })
    }
}

/// `--gray16`: see [`Gray16`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Gray16Arg {
    /// Pillow's conversion, the reference's numbers.
    Pillow,
    /// The high byte of each sample.
    HighByte,
}

/// Most patch tokens an input may have (128 x 128, e.g. 2048 px at patch 16).
pub const MAX_INPUT_TOKENS: usize = 16384;

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} {bar:30} {pos}/{len} [{elapsed_precise}, {per_sec}, ETA {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}
