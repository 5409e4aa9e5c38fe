//! # pe-shards
//!
//! Corpora the way img2dataset writes them, for `pe` runs on one machine or as one worker of a
//! distributed engine (Spark, Slurm arrays, Kubernetes indexed Jobs):
//! - [`expand`]: shard names from a brace range (`shards/{00000..00099}.tar`), as the
//!   WebDataset tools and clip-retrieval take them;
//! - [`Share`]: which shards one worker takes (`--shard I/N`, `SLURM_ARRAY_TASK_ID`,
//!   `JOB_COMPLETION_INDEX`);
//! - [`Samples`]: the samples of a WebDataset tar shard (`KEY.jpg` + `KEY.json` / `KEY.txt`),
//!   read as a stream, with per-sample problems reported instead of ending the shard.

mod braces;
mod share;
mod webdataset;

pub use braces::{expand, MAX_EXPANSION};
pub use share::Share;
pub use webdataset::{Sample, SampleError, Samples, MAX_MEMBER_BYTES};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A shard pattern that cannot be expanded.
    #[error("shard pattern `{pattern}`: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--shard I/N` (or the engines' variables) that names no share.
    #[error("shard selection: {0}")]
    Share(String),
    /// A shard file that cannot be opened.
    #[error("{path}: {source}")]
    Io {
        /// The shard.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
