//! Where embeddings go: JSON Lines on stdout, or `--output FILE` in any format of the
//! library's [`pe_index::output`], checked (and, with `--resume`, read back) before any work.

use std::path::PathBuf;

pub use pe_index::output::display_name;
use pe_index::output::{Columns, Writer};

/// `--output` and `--resume`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Write to FILE instead of JSON Lines on stdout: .jsonl/.ndjson (appended a row at a
    /// time), .npy (names in FILE.paths.txt), .safetensors or .parquet; rows are written as
    /// they are computed.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Keep the rows already in --output and skip the inputs they hold (same model and dtype).
    #[arg(long, requires = "output")]
    pub resume: bool,
}

impl OutputArgs {
    /// The writer, created before any model is loaded so a bad name fails at once.
    pub fn writer(&self, columns: Columns) -> anyhow::Result<Writer> {
        match &self.output {
            None => Ok(Writer::stdout(columns)),
            Some(path) => {
                let w = Writer::create(path, columns, self.resume).map_err(|e| anyhow::anyhow!("--output {e}"))?;
                if w.resumed() > 0 {
                    tracing::info!("{}: resuming after {} rows", path.display(), w.resumed());
                }
                Ok(w)
            }
        }
    }
}
