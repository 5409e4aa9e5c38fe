//! The library's one error type. Every variant carries the evidence a user needs to fix the
//! problem (the key, the shapes, the known names) so the CLI and server can print it as is.

use std::path::PathBuf;

/// Errors returned by `perception_encoder`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model name that is not one of the presets.
    #[error("unknown model `{name}`; known models: {}", known.join(", "))]
    UnknownModel {
        /// The name that was asked for.
        name: String,
        /// Every preset name.
        known: Vec<String>,
    },

    /// A configuration that cannot describe a PE model (bad JSON, zero sizes, ...).
    #[error("invalid model config: {0}")]
    InvalidConfig(String),

    /// The checkpoint lacks tensors the model needs.
    #[error("checkpoint {path} is missing {} tensor(s) the model needs: {}", keys.len(), list_some(keys))]
    MissingTensors {
        /// The checkpoint file.
        path: PathBuf,
        /// The missing keys, in the official layout.
        keys: Vec<String>,
    },

    /// A checkpoint of another architecture than the config's (another preset's weights).
    #[error(
        "checkpoint {path} {found}, not {expected}: give the matching --model or --config, or these weights' own model"
    )]
    WrongModel {
        /// The checkpoint file.
        path: PathBuf,
        /// The model asked for, with its geometry.
        expected: String,
        /// What the checkpoint looks like ("looks like PE-Core-T16-384 (width 192, ...)").
        found: String,
    },

    /// A tensor whose shape differs from the one the config implies.
    #[error("shape mismatch for `{key}`: the model expects {expected:?}, the checkpoint has {found:?}")]
    ShapeMismatch {
        /// The official key.
        key: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the checkpoint.
        found: Vec<usize>,
    },

    /// A file that is not a checkpoint format we read, or one that is corrupt or truncated.
    #[error("cannot read checkpoint {path}: {reason}")]
    BadCheckpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An input that does not fit the model (wrong rank, too small, token id out of range).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The operation needs a part the model does not have (a text tower, an attention pool).
    #[error("model `{model}` has no {part}")]
    MissingPart {
        /// The model name.
        model: String,
        /// The missing part, e.g. "text tower".
        part: &'static str,
    },

    /// The operation needs a tower the model has but was loaded without
    /// ([`crate::LoadOptions::towers`]).
    #[error("the {0} was not loaded (this model was loaded with the other tower only)")]
    NotLoaded(&'static str),

    /// An image that cannot be decoded (corrupt, truncated, unsupported format).
    #[error("cannot decode image: {0}")]
    ImageDecode(String),

    /// An image above the pixel limit (a decompression-bomb guard).
    #[error("image of {width}x{height} pixels exceeds the limit of {limit} pixels")]
    ImageTooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The configured limit.
        limit: u64,
    },

    /// A hub download that failed, or a file that is not cached while offline.
    #[error("cannot get {file} from hub repository {repo}: {reason}")]
    Hub {
        /// Repository id, e.g. `facebook/PE-Core-B16-224`.
        repo: String,
        /// File name in the repository.
        file: String,
        /// What went wrong.
        reason: String,
    },

    /// The model produced NaN or infinite values (corrupt weights, usually).
    #[error("the {0} tower produced NaN or infinite values; the weights are likely corrupt")]
    NonFinite(&'static str),

    /// A video that cannot be decoded, or a missing `ffmpeg`.
    #[error("video: {0}")]
    Video(String),

    /// A file system error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An error from the tensor library.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn bad_checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadCheckpoint { path: path.into(), reason: reason.into() }
    }
}

/// The first keys of a long list, then how many more: an error line stays readable (a config
/// of 100k layers once produced a 61 MB message).
fn list_some(keys: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut out = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        out.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_key_lists_are_capped() {
        let keys: Vec<String> =
            (0..1_200_000).map(|i| format!("transformer.resblocks.{i}.attn.in_proj_weight")).collect();
        let msg = Error::MissingTensors { path: "x.pt".into(), keys }.to_string();
        assert!(msg.contains("1200000 tensor(s)") && msg.ends_with("and 1199980 more"), "{}", &msg[..200]);
        assert!(msg.len() < 2000, "{} bytes", msg.len());
    }
}
