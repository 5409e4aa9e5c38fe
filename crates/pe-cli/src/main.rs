//! `pe`: the Perception Encoder command-line tool. A thin shell over the
//! `perception_encoder` library: it parses arguments, calls the library and formats results.

mod args;
mod commands;
mod inputs;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Perception Encoder (PE) image, video and text embeddings, natively in Rust.
#[derive(Debug, Parser)]
#[command(name = "pe", version, about, propagate_version = true)]
struct Cli {
    /// Log level filter (error, warn, info, debug, trace), also read from RUST_LOG.
    #[arg(long, global = true, env = "PE_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the model presets with their sizes.
    Models(commands::models::Args),
    /// Embed images: one JSON line per image ({"path", "embedding"}), in input order.
    EmbedImage(commands::embed::ImageCmd),
    /// Embed texts: one JSON line per text ({"text", "embedding"}).
    EmbedText(commands::embed::TextCmd),
    /// Embed videos (mean of sampled frame embeddings): one JSON line per video.
    EmbedVideo(commands::embed::VideoCmd),
    /// Dense features (PE Spatial): the patch-token grid and class token after a block, to .safetensors.
    Features(commands::features::FeaturesCmd),
    /// Zero-shot classification of images against text labels.
    Classify(commands::classify::ClassifyCmd),
    /// Show the token ids of texts.
    Tokenize(commands::tokenize::TokenizeCmd),
    /// Download presets' official checkpoints into the hub cache (prints each file's path).
    Download(commands::download::DownloadCmd),
    /// Convert a checkpoint to safetensors (official or open_clip layout, f32/f16/bf16).
    Convert(commands::convert::ConvertCmd),
    /// Measure throughput of the image or text tower (random weights unless --weights).
    Bench(commands::bench::BenchCmd),
    /// Index folders of images for search (incremental: only new and changed files are embedded).
    Index(commands::index::IndexCmd),
    /// Search an index by text, image, or weighted combinations ("2:dog" + ./pool.jpg - snow).
    Search(commands::search::SearchCmd),
    /// Images of an index most like an indexed image (its stored embedding; no model loaded).
    Similar(commands::search::SimilarCmd),
    /// Duplicate groups of an index as JSON Lines: exact (same content) and near (cosine >= threshold).
    Dedupe(commands::search::DedupeCmd),
    /// Serve embeddings over HTTP (OpenAI-compatible /v1/embeddings, /embed/text, /embed/image).
    Serve(commands::serve::ServeCmd),
}

impl Command {
    /// `--threads` of the commands that compute.
    fn threads(&self) -> Option<&args::ThreadsArg> {
        Some(match self {
            Command::EmbedImage(c) => &c.threads,
            Command::EmbedText(c) => &c.threads,
            Command::EmbedVideo(c) => &c.threads,
            Command::Classify(c) => &c.threads,
            Command::Features(c) => &c.threads,
            Command::Bench(c) => &c.threads,
            Command::Serve(c) => &c.threads,
            Command::Index(c) => &c.threads,
            Command::Search(c) => &c.threads,
            Command::Similar(c) => &c.threads,
            Command::Dedupe(c) => &c.threads,
            Command::Models(_) | Command::Tokenize(_) | Command::Convert(_) | Command::Download(_) => return None,
        })
    }
}

fn main() -> ExitCode {
    perception_encoder::runtime::keep_freed_memory();
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not for log files and CI logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let asked = cli.command.threads().and_then(|t| t.threads).map(usize::from);
    let threads =
        perception_encoder::runtime::set_threads(asked.unwrap_or_else(perception_encoder::runtime::default_threads));
    let result = match cli.command {
        Command::Models(args) => commands::models::run(args),
        Command::EmbedImage(cmd) => commands::embed::run_image(cmd),
        Command::EmbedText(cmd) => commands::embed::run_text(cmd),
        Command::EmbedVideo(cmd) => commands::embed::run_video(cmd),
        Command::Classify(cmd) => commands::classify::run(cmd),
        Command::Features(cmd) => commands::features::run(cmd),
        Command::Tokenize(cmd) => commands::tokenize::run(cmd),
        Command::Convert(cmd) => commands::convert::run(cmd),
        Command::Download(cmd) => commands::download::run(cmd),
        Command::Bench(cmd) => commands::bench::run(cmd, threads),
        Command::Serve(cmd) => commands::serve::run(cmd),
        Command::Index(cmd) => commands::index::run_index(cmd),
        Command::Search(cmd) => commands::search::run_search(cmd),
        Command::Similar(cmd) => commands::search::run_similar(cmd),
        Command::Dedupe(cmd) => commands::search::run_dedupe(cmd),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // A closed pipe (`pe models | head`) is not an error.
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("pe: {}", said_once(&err));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose text its context
/// already shows ("x.jpg: No such file or directory" over "No such file or directory") is
/// not repeated.
fn said_once(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
