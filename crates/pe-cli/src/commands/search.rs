//! `pe search`, `pe similar` and `pe dedupe`: queries of an index, a thin shell over `pe_index`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use pe_index::{query, Index, Manifest, SearchOptions};

use super::index::{image_model, load_model, update_with_progress, videos_available};
use crate::output::display_name;

/// Arguments of `pe search`.
#[derive(Debug, clap::Args)]
pub struct SearchCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
    /// The query in rclip's grammar: text, image paths, `WEIGHT:term`, joined by `+` and `-`
    /// (`"2:golden retriever" + ./pool.jpg - snow`).
    query: Vec<String>,
    /// An image to search by (repeatable; added with weight 1).
    #[arg(long)]
    image: Vec<PathBuf>,
    /// The index directory (default: the nearest .pe-index from the current directory up).
    #[arg(long)]
    index: Option<PathBuf>,
    /// How many results.
    #[arg(long, short = 't', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    top: u64,
    /// Only results with at least this cosine.
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,
    /// Score every file, even where an approximate index exists.
    #[arg(long)]
    exact: bool,
    /// Only files under this folder (searched exactly).
    #[arg(long)]
    under: Option<PathBuf>,
    /// Candidates the approximate search keeps and re-scores exactly (HNSW's ef; default 96
    /// up to 250,000 contents, then 16 more each time the collection doubles: 128 at a
    /// million): higher finds more of the true top results, more slowly.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    ef: Option<u64>,
    /// JSON Lines: {"rank", "path", "score"}, best first.
    #[arg(long, conflicts_with = "paths_only")]
    json: bool,
    /// Paths only, one a line (for pipes).
    #[arg(long, short = 'f')]
    paths_only: bool,
    /// Bring the index up to date with its folders first.
    #[arg(long)]
    update: bool,
}

/// The index a search uses: `--index`, or the nearest `.pe-index` from the current directory.
pub(crate) fn search_index_dir(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => Ok(d.clone()),
        None => {
            let cwd = std::env::current_dir()?;
            Index::find(&cwd).with_context(|| {
                format!(
                    "no index in {} or above it: build one with `pe index FOLDER`, or give --index DIR",
                    cwd.display()
                )
            })
        }
    }
}

pub fn run_search(cmd: SearchCmd) -> anyhow::Result<ExitCode> {
    if cmd.threshold.is_some_and(|t| !(-1.0..=1.0).contains(&t)) {
        bail!("--threshold must be a cosine between -1 and 1");
    }
    let terms = query::parse(&cmd.query, &cmd.image)?;
    let dir = search_index_dir(&cmd.index)?;
    let under = match &cmd.under {
        Some(u) => Some(std::fs::canonicalize(u).with_context(|| format!("--under {}", u.display()))?),
        None => None,
    };
    let mut index = Index::open(&dir)?;
    let mut updated = None;
    if cmd.update {
        let roots = index.catalog().roots()?;
        // As the last `pe index` walked and stored (its --exclude, --ann-storage...).
        let mut opts = index.update_options()?;
        opts.scan.videos = opts.scan.videos && videos_available();
        let lazy = image_model(index.manifest(), &dir);
        let report = update_with_progress(&mut index, &lazy, &roots, &opts)?;
        tracing::info!("updated: {} embedded, {} removed", report.embedded, report.removed);
        updated = lazy.into_loaded();
    }
    // Only text, or images the index does not hold, need the model, and only their towers;
    // the update's image tower serves an image query.
    let model = match pe_index::towers_needed(index.catalog(), &terms)? {
        None => None,
        Some(perception_encoder::Towers::Image) if updated.is_some() => updated,
        Some(towers) => Some(load_model(&Manifest::read(&dir)?, &dir, towers)?),
    };
    let q = pe_index::query_vector(model.as_ref(), index.manifest(), index.catalog(), &terms)?;
    let started = Instant::now();
    let opts = SearchOptions {
        k: cmd.top as usize,
        threshold: cmd.threshold.unwrap_or(f32::NEG_INFINITY),
        exact: cmd.exact,
        under,
        ef: cmd.ef.map(|e| e as usize),
    };
    let hits = index.search(&q, &opts)?;
    tracing::info!("searched ({}) in {:.1} ms", index.method()?, started.elapsed().as_secs_f64() * 1e3);
    print_hits(&hits, cmd.json, cmd.paths_only)?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `pe similar`.
#[derive(Debug, clap::Args)]
pub struct SimilarCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
    /// An indexed image; its stored embedding is the query (no model is loaded).
    path: PathBuf,
    /// The index directory (default: the nearest .pe-index from the current directory up).
    #[arg(long)]
    index: Option<PathBuf>,
    /// How many results.
    #[arg(long, short = 't', default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    top: u64,
    /// JSON Lines: {"rank", "path", "score"}, best first.
    #[arg(long, conflicts_with = "paths_only")]
    json: bool,
    /// Paths only, one a line.
    #[arg(long, short = 'f')]
    paths_only: bool,
    /// Score every file, even where an approximate index exists.
    #[arg(long)]
    exact: bool,
}

pub fn run_similar(cmd: SimilarCmd) -> anyhow::Result<ExitCode> {
    let index = Index::open(&search_index_dir(&cmd.index)?)?;
    let opts = SearchOptions { exact: cmd.exact, ..SearchOptions::top(cmd.top as usize) };
    let hits = index.similar(&cmd.path, &opts)?;
    print_hits(&hits, cmd.json, cmd.paths_only)?;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `pe dedupe`.
#[derive(Debug, clap::Args)]
pub struct DedupeCmd {
    #[command(flatten)]
    pub(crate) threads: crate::args::ThreadsArg,
    /// The index directory (default: the nearest .pe-index from the current directory up).
    #[arg(long)]
    index: Option<PathBuf>,
    /// Near duplicates: different files whose embeddings have at least this cosine.
    #[arg(long, default_value_t = 0.95)]
    threshold: f32,
}

pub fn run_dedupe(cmd: DedupeCmd) -> anyhow::Result<ExitCode> {
    if !(-1.0..=1.0).contains(&cmd.threshold) {
        bail!("--threshold must be a cosine between -1 and 1");
    }
    let index = Index::open(&search_index_dir(&cmd.index)?)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for g in index.duplicates(cmd.threshold)? {
        let paths: Vec<String> = g.paths.iter().map(|p| display_name(p.as_os_str())).collect();
        let kind = if g.exact { "exact" } else { "near" };
        serde_json::to_writer(&mut out, &serde_json::json!({"kind": kind, "min_score": g.min_score, "paths": paths}))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// An f32 as JSON by its own shortest decimal (0.8333155), not its f64 widening's.
fn shortest(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn print_hits(hits: &[pe_index::Hit], json: bool, paths_only: bool) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (rank, hit) in hits.iter().enumerate() {
        let path = display_name(hit.path.as_os_str());
        if json {
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({"rank": rank + 1, "path": path, "score": shortest(hit.score)}),
            )?;
            out.write_all(b"\n")?;
        } else if paths_only {
            writeln!(out, "{path}")?;
        } else {
            writeln!(out, "{:.4}\t{path}", hit.score)?;
        }
    }
    Ok(out.flush()?)
}
