//! `pe index`: a thin shell over `pe_index` (queries are in `search.rs`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use pe_index::{AnnMode, AnnStorage, Index, LazyModel, Manifest, TransformSpec, UpdateOptions};
use perception_encoder::{ClipConfig, LoadOptions, ModelSource, Precision};

use crate::args::{progress, PrecisionParser};
use crate::output::display_name;

/// The model options of `pe index`: all optional, since an existing index remembers its own.
#[derive(Debug, Clone, clap::Args)]
pub struct IndexModelArgs {
    /// A preset name, e.g. PE-Core-B16-224 (weights from the hub cache unless --weights).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// A model config in the reference's JSON format.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// A checkpoint file.
    #[arg(long, short = 'w')]
    pub weights: Option<PathBuf>,
    /// Precision: f32, bf16 or int8 (default f32 for a new index).
    #[arg(long, value_parser = PrecisionParser)]
    pub dtype: Option<Precision>,
    /// Resize the shorter side and crop the centre instead of squashing.
    #[arg(long)]
    pub center_crop: bool,
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl IndexModelArgs {
    fn given(&self) -> bool {
        self.model.is_some() || self.config.is_some() || self.weights.is_some() || self.dtype.is_some()
    }

    /// The manifest these options describe (hashing the weights, downloading a preset's first).
    fn manifest(&self) -> anyhow::Result<Manifest> {
        let source = ModelSource::from_options(self.model.as_deref(), self.config.as_deref(), self.weights.as_deref())?;
        let cfg = source.config()?;
        let mut transform = perception_encoder::preprocess::ImageTransform::for_config(&cfg.vision);
        if self.center_crop {
            transform.mode = perception_encoder::preprocess::ResizeMode::CenterCrop;
        }
        if let Some(p) = self.max_pixels {
            transform.max_pixels = p;
        }
        manifest_for(&source, self.dtype.unwrap_or_default(), &transform)
    }
}

/// The manifest of the final-layer, normalized embeddings `source` makes at `precision` from
/// images through `transform` (hashing the weights, downloading a preset's first).
pub(crate) fn manifest_for(
    source: &ModelSource,
    precision: Precision,
    transform: &perception_encoder::preprocess::ImageTransform,
) -> anyhow::Result<Manifest> {
    let cfg = source.config()?;
    let (config, weights) = match source {
        ModelSource::Preset { weights: Some(w), .. } => (None, w.clone()),
        ModelSource::Preset { weights: None, .. } => {
            (None, perception_encoder::hub::fetch_checkpoint(&cfg.name, &mut super::download::Reporter::new())?)
        }
        ModelSource::Custom { config, weights } => (Some(std::fs::canonicalize(config)?), weights.clone()),
    };
    Ok(Manifest {
        format_version: pe_index::FORMAT_VERSION,
        model: Manifest::weights_spec(&cfg.name, config, &weights)?,
        precision,
        layer: -1,
        transform: TransformSpec::of(transform),
        dim: embedding_dim(&cfg)?,
    })
}

fn embedding_dim(cfg: &ClipConfig) -> anyhow::Result<usize> {
    match cfg.vision.output_dim {
        Some(d) => Ok(d),
        None => bail!("{} gives token features, not one embedding per image; index with a PE Core model", cfg.name),
    }
}

/// Load the model a manifest names.
///
/// An index made on another machine (imported parts, a copied folder) names weights at a path
/// this machine may not have. For a preset, the hub cache's copy is taken instead when its
/// BLAKE3 is the one recorded, and the index at `dir` is re-pointed to it. Only `towers` are
/// built.
pub(crate) fn load_model(
    m: &Manifest,
    dir: &std::path::Path,
    towers: perception_encoder::Towers,
) -> anyhow::Result<perception_encoder::Clip> {
    let local;
    let m = match m.check_weights() {
        Ok(()) => m,
        Err(e) if m.model.config.is_none() && !m.model.weights.exists() => {
            let cached =
                perception_encoder::hub::fetch_checkpoint(&m.model.name, &mut super::download::Reporter::new())
                    .map_err(|hub| anyhow::anyhow!("{e}; and the hub cache has no copy: {hub}"))?;
            let spec = Manifest::weights_spec(&m.model.name, None, &cached)?;
            if spec.weights_blake3 != m.model.weights_blake3 {
                return Err(anyhow::Error::new(e).context(format!(
                    "{} in the hub cache has other weights than those the index was built with",
                    cached.display()
                )));
            }
            local = Manifest { model: spec, ..m.clone() };
            match local.write(dir) {
                Ok(()) => eprintln!("pe: the index now uses {} (the same weights)", cached.display()),
                Err(w) => tracing::warn!("using {} (the same weights), but cannot record it: {w}", cached.display()),
            }
            &local
        }
        Err(e) => return Err(e.into()),
    };
    let source = match &m.model.config {
        Some(config) => ModelSource::Custom { config: config.clone(), weights: m.model.weights.clone() },
        None => ModelSource::Preset { name: m.model.name.clone(), weights: Some(m.model.weights.clone()) },
    };
    let started = Instant::now();
    let model = source.load(
        &LoadOptions { precision: m.precision, towers, ..LoadOptions::default() },
        &mut super::download::Reporter::new(),
    )?;
    tracing::info!("loaded {} in {:.2}s", m.describe(), started.elapsed().as_secs_f64());
    Ok(model)
}

/// Arguments of `pe index`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct IndexCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
    #[command(subcommand)]
    action: Option<IndexAction>,
    /// Folders (searched recursively) and files to index (a folder named `export` or `import`
    /// is given as `./export`).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The index directory (default: the nearest .pe-index above the first path, else
    /// PATH/.pe-index for a single folder).
    #[arg(long)]
    index: Option<PathBuf>,
    #[command(flatten)]
    model: IndexModelArgs,
    /// Skip files and folders matching this glob (repeatable; `*.tmp`, `raw`, `**/cache/**`).
    #[arg(long)]
    exclude: Vec<String>,
    /// Index hidden files and folders too (names starting with a dot).
    #[arg(long)]
    include_hidden: bool,
    /// Leave videos out (they are indexed when FFmpeg is installed: the mean of 8 frames).
    #[arg(long)]
    no_videos: bool,
    /// Images per forward pass.
    #[arg(long, short = 'b', default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    batch_size: u64,
    /// The approximate (HNSW) index: `auto` from 20,000 distinct images on, `always`, or
    /// `never` (exact search only).
    #[arg(long, value_enum, default_value_t = AnnArg::Auto)]
    ann: AnnArg,
    /// How the approximate index stores vectors: f16 (recall as f32), bf16 (f16's memory, faster
    /// on CPUs with bf16 dot products), or i8 (half of f16's memory, lower recall).
    #[arg(long, value_enum, default_value_t = AnnStorageArg::F16)]
    ann_storage: AnnStorageArg,
}

/// `pe index export` and `pe index import`.
#[derive(Debug, clap::Subcommand)]
enum IndexAction {
    /// Write the index as Parquet (path, hash, size, mtime_ns, width, height, embedding).
    Export(super::transfer::ExportCmd),
    /// Read Parquet exports (or any Parquet with path, hash and embedding) into an index.
    Import(super::transfer::ImportCmd),
}

/// `--ann`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum AnnArg {
    Auto,
    Always,
    Never,
}

impl AnnArg {
    pub(crate) fn mode(self) -> AnnMode {
        match self {
            AnnArg::Auto => AnnMode::Auto,
            AnnArg::Always => AnnMode::Always,
            AnnArg::Never => AnnMode::Never,
        }
    }
}

/// `--ann-storage`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AnnStorageArg {
    F16,
    I8,
    Bf16,
}

pub(crate) fn videos_available() -> bool {
    let ok = perception_encoder::video::available();
    if !ok {
        tracing::info!("FFmpeg is not installed: videos are left out of the index");
    }
    ok
}

impl IndexCmd {
    fn update_options(&self) -> UpdateOptions {
        UpdateOptions {
            scan: pe_index::ScanOptions {
                exclude: self.exclude.clone(),
                include_hidden: self.include_hidden,
                videos: !self.no_videos && videos_available(),
            },
            batch_size: self.batch_size as usize,
            ann: self.ann.mode(),
            ann_storage: match self.ann_storage {
                AnnStorageArg::F16 => AnnStorage::F16,
                AnnStorageArg::I8 => AnnStorage::I8,
                AnnStorageArg::Bf16 => AnnStorage::Bf16,
            },
        }
    }
}

/// Where the index of `paths` lives when `--index` is not given.
fn default_index_dir(paths: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let first = std::fs::canonicalize(&paths[0]).with_context(|| format!("reading {}", paths[0].display()))?;
    if let Some(found) = Index::find(&first) {
        return Ok(found);
    }
    if paths.len() == 1 && first.is_dir() {
        return Ok(first.join(pe_index::DEFAULT_DIR));
    }
    bail!("give --index DIR: the index of several paths, or of a single file, needs a place to live")
}

pub fn run_index(cmd: IndexCmd) -> anyhow::Result<ExitCode> {
    match cmd.action {
        Some(IndexAction::Export(c)) => return super::transfer::run_export(c),
        Some(IndexAction::Import(c)) => return super::transfer::run_import(c),
        None => {}
    }
    let dir = match &cmd.index {
        Some(d) => d.clone(),
        None => default_index_dir(&cmd.paths)?,
    };
    let manifest = match Manifest::read(&dir) {
        Ok(m) if !cmd.model.given() => {
            // The index remembers its model; transform options given again must agree with it.
            let mut asked = m.clone();
            asked.transform.center_crop |= cmd.model.center_crop;
            asked.transform.max_pixels = cmd.model.max_pixels.unwrap_or(m.transform.max_pixels);
            m.check_same(&asked, &dir)?;
            m
        }
        Ok(_) => cmd.model.manifest()?,
        Err(pe_index::Error::NoIndex(_)) if cmd.model.given() => cmd.model.manifest()?,
        Err(pe_index::Error::NoIndex(_)) => bail!(
            "no index at {} yet: give the model to build it with (--model NAME, or --config FILE --weights FILE)",
            dir.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let mut index = Index::open_or_create(&dir, &manifest)?;
    let model = image_model(index.manifest(), &dir);
    let opts = cmd.update_options();
    let started = Instant::now();
    let report = update_with_progress(&mut index, &model, &cmd.paths, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    if report.found == 0 {
        eprintln!(
            "pe: no images found under {} (extensions {}; hidden files are skipped unless --include-hidden)",
            cmd.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
            pe_index::IMAGE_EXTENSIONS.join(", ")
        );
    }
    for (path, reason) in &report.failures {
        eprintln!("pe: skipping {}: {reason}", display_name(path.as_os_str()));
    }
    eprintln!(
        "pe: {} files: {} embedded, {} reused, {} unchanged, {} removed, {} unreadable; {:.1}s ({:.1} images/s) -> {}",
        report.found,
        report.embedded,
        report.reused,
        report.unchanged,
        report.removed,
        report.failed,
        secs,
        report.embedded as f64 / secs.max(1e-9),
        dir.display()
    );
    let a = &report.ann;
    if a.size > 0 {
        let how = if a.rebuilt {
            "built"
        } else if a.added + a.removed > 0 {
            "updated"
        } else {
            "up to date"
        };
        eprintln!("pe: approximate index {how}: {} contents (+{} -{})", a.size, a.added, a.removed);
    }
    if a.collisions > 0 {
        tracing::warn!("{} contents share a 64-bit key with another; they are found by --exact only", a.collisions);
    }
    Ok(if report.failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The manifest's model with its image tower, loaded when an update first has a file to embed
/// (a re-run that finds nothing new does not read the weights).
pub(crate) fn image_model<'a>(m: &Manifest, dir: &'a std::path::Path) -> LazyModel<'a> {
    let m = m.clone();
    LazyModel::new(move || load_model(&m, dir, perception_encoder::Towers::Image).map_err(|e| e.into()))
}

pub(crate) fn update_with_progress(
    index: &mut Index,
    model: &LazyModel,
    roots: &[PathBuf],
    opts: &UpdateOptions,
) -> anyhow::Result<pe_index::UpdateReport> {
    let mut view = UpdateProgress::new();
    let report = index.update(model, roots, opts, &mut |p| view.on(p));
    view.finish();
    Ok(report?)
}

/// An update's progress: a bar on a terminal, a log line every 10 s off one.
pub(crate) struct UpdateProgress {
    bar: Option<indicatif::ProgressBar>,
    done: usize,
    total: usize,
    last_log: Instant,
    terminal: bool,
}

impl UpdateProgress {
    pub(crate) fn new() -> Self {
        UpdateProgress {
            bar: None,
            done: 0,
            total: 0,
            last_log: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if !self.terminal && self.last_log.elapsed().as_secs() >= 10 {
            eprintln!("pe: {}", line());
            self.last_log = Instant::now();
        }
    }

    pub(crate) fn on(&mut self, p: pe_index::Progress) {
        match p {
            pe_index::Progress::Start(n) => {
                self.total = n;
                self.bar = Some(progress(n, "images"));
            }
            pe_index::Progress::Advance(n) => {
                self.done += n;
                if let Some(b) = &self.bar {
                    b.inc(n as u64);
                }
                let (done, total) = (self.done, self.total);
                self.log(|| format!("indexed {done}/{total} files"));
            }
            pe_index::Progress::Approximate { done, total } => {
                if self.bar.as_ref().is_none_or(|b| b.length() != Some(total as u64)) {
                    if let Some(b) = self.bar.take() {
                        b.finish_and_clear();
                    }
                    self.bar = Some(progress(total, "vectors"));
                }
                if let Some(b) = &self.bar {
                    b.set_position(done as u64);
                }
                self.log(|| format!("approximate index: {done}/{total} vectors added"));
            }
        }
    }

    pub(crate) fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
