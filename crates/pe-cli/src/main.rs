//! `pe`: the Perception Encoder command-line tool. A thin shell over the
//! `perception_encoder` library: it parses arguments, calls the library and formats results.

mod commands;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Models(args) => commands::models::run(args),
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
            eprintln!("pe: {err:#}");
            ExitCode::from(2)
        }
    }
}
