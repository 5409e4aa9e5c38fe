//! The index's error type: each variant names what to fix (the index directory, the model it was
//! built with, the query term that could not be read).

use std::path::PathBuf;

/// Errors of `pe_index`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No index at the given place (or none found from the current directory upwards).
    #[error("no index at {0} (build one with `pe index PATH...`)")]
    NoIndex(PathBuf),

    /// An index built by another version of this format.
    #[error("index {path} has format version {found}; this pe reads version {expected} (rebuild it with `pe index`)")]
    Version {
        /// The index directory.
        path: PathBuf,
        /// The version it declares.
        found: u32,
        /// The version this build reads and writes.
        expected: u32,
    },

    /// The model asked for differs from the one the index was built with.
    #[error("index {path} was built with {built}, not {asked}: embeddings of different models cannot be mixed (use the index's model, or another --index)")]
    ModelMismatch {
        /// The index directory.
        path: PathBuf,
        /// The index's model, as the manifest describes it.
        built: String,
        /// The model asked for.
        asked: String,
    },

    /// The index's weights file changed or went away since the index was built.
    #[error("the weights the index was built with ({path}) {problem}; rebuild the index or restore the file")]
    WeightsChanged {
        /// The weights file the manifest names.
        path: PathBuf,
        /// What changed.
        problem: String,
    },

    /// A query that cannot be understood (an empty term, a bad weight).
    #[error("invalid query: {0}")]
    Query(String),

    /// An index with no searchable files.
    #[error("index {0} holds no searchable files yet (run `pe index PATH...` on a folder of images)")]
    Empty(PathBuf),

    /// A catalog that SQLite cannot read or write.
    #[error("index catalog {path}: {source}")]
    Catalog {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },

    /// A stored value that breaks the index's own rules (a vector of the wrong size, a bad manifest).
    #[error("index {path} is damaged: {reason}")]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A bad `--exclude` pattern.
    #[error("invalid exclude pattern `{pattern}`: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why it is invalid.
        reason: String,
    },

    /// A Parquet file that cannot be written or read as an index export.
    #[error("{path}: {reason}")]
    Parquet {
        /// The Parquet file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// An embeddings output that cannot be written, or read back to resume it.
    #[error("{path}: {reason}")]
    Output {
        /// The output file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A file system error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An error from the model library (loading, decoding, embedding).
    #[error(transparent)]
    Model(#[from] perception_encoder::Error),

    /// The caller's model loader failed (see [`LazyModel`](crate::LazyModel)); its own error.
    #[error(transparent)]
    Load(crate::model::BoxError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), reason: reason.into() }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Model(e.into())
    }
}
