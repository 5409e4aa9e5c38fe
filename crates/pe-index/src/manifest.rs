//! The manifest: what made the index's vectors (model, weights, precision, transform) and so
//! what a query must be embedded with. Searching or updating with anything else is refused:
//! embeddings of different geometries must never be mixed.

use std::path::{Path, PathBuf};

use perception_encoder::preprocess::{Gray16, ImageTransform, ResizeMode};
use perception_encoder::{ClipConfig, Precision};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Where the model came from and which weights it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The model's name (the preset's, or the custom config's `name`).
    pub name: String,
    /// The custom JSON config, when the model is not a preset (absolute path).
    pub config: Option<PathBuf>,
    /// The weights file (absolute path; for a preset from the hub, the cached file).
    pub weights: PathBuf,
    /// The weights file's size in bytes.
    pub weights_size: u64,
    /// The weights file's modification time (nanoseconds since the epoch) when hashed.
    pub weights_mtime_ns: i64,
    /// BLAKE3 of the weights file, hex.
    pub weights_blake3: String,
}

/// How files became model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformSpec {
    /// Input side in pixels.
    pub size: usize,
    /// Centre crop (true) or squash (false).
    pub center_crop: bool,
    /// 16-bit grayscale by Pillow's rule (true) or by high byte (false).
    pub gray16_pillow: bool,
    /// Images with more pixels than this are refused.
    pub max_pixels: u64,
}

impl TransformSpec {
    /// The spec of a transform.
    pub fn of(t: &ImageTransform) -> Self {
        TransformSpec {
            size: t.size,
            center_crop: t.mode == ResizeMode::CenterCrop,
            gray16_pillow: t.gray16 == Gray16::Pillow,
            max_pixels: t.max_pixels,
        }
    }

    /// The transform it describes.
    pub fn transform(&self) -> ImageTransform {
        ImageTransform {
            size: self.size,
            mode: if self.center_crop { ResizeMode::CenterCrop } else { ResizeMode::Squash },
            max_pixels: self.max_pixels,
            gray16: if self.gray16_pillow { Gray16::Pillow } else { Gray16::HighByte },
        }
    }
}

/// The index's manifest (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The model.
    pub model: ModelSpec,
    /// The precision the model ran in.
    pub precision: Precision,
    /// The vision tower's block whose pooled output is the embedding (-1: the last).
    pub layer: isize,
    /// How images were prepared.
    pub transform: TransformSpec,
    /// Embedding dimension.
    pub dim: usize,
}

impl Manifest {
    /// `manifest.json` in the index directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("manifest.json")
    }

    /// Read and check the manifest of the index at `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NoIndex(dir.to_path_buf())),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let version: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::corrupt(&path, format!("not JSON: {e}")))?;
        let found = version.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
        if found != u64::from(FORMAT_VERSION) {
            return Err(Error::Version { path: dir.to_path_buf(), found: found as u32, expected: FORMAT_VERSION });
        }
        let m: Manifest = serde_json::from_value(version).map_err(|e| Error::corrupt(&path, e.to_string()))?;
        if m.dim == 0 || m.dim > perception_encoder::config::MAX_WIDTH {
            return Err(Error::corrupt(&path, format!("embedding dimension {} is out of range", m.dim)));
        }
        Ok(m)
    }

    /// Write the manifest atomically (a temporary file renamed over the old one).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join("manifest.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::corrupt(&path, e.to_string()))?;
        std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// The spec of the weights file at `path` (its size, time and hash).
    pub fn weights_spec(name: &str, config: Option<PathBuf>, path: &Path) -> Result<ModelSpec> {
        let path = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        Ok(ModelSpec {
            name: name.to_string(),
            config,
            weights_blake3: hash_file(&path)?,
            weights_size: meta.len(),
            weights_mtime_ns: mtime_ns(&meta),
            weights: path,
        })
    }

    /// A one-line description for messages: `PE-Core-B16-224 (bf16, squash 224)`.
    pub fn describe(&self) -> String {
        describe(&self.model.name, self.precision, &self.transform)
    }

    /// An error unless `other` embeds exactly as this manifest does.
    pub fn check_same(&self, other: &Manifest, dir: &Path) -> Result<()> {
        let same = self.model.name == other.model.name
            && self.model.weights_blake3 == other.model.weights_blake3
            && self.precision == other.precision
            && self.layer == other.layer
            && self.transform == other.transform
            && self.dim == other.dim;
        if same {
            return Ok(());
        }
        let mut built = self.describe();
        let mut asked = other.describe();
        if built == asked {
            // Same name and settings: the weights differ.
            built.push_str(&format!(" weights {}", short(&self.model.weights_blake3)));
            asked.push_str(&format!(" weights {}", short(&other.model.weights_blake3)));
        }
        Err(Error::ModelMismatch { path: dir.to_path_buf(), built, asked })
    }

    /// The configuration of the model, from the preset or the custom config file.
    pub fn config(&self) -> Result<ClipConfig> {
        Ok(match &self.model.config {
            Some(path) => ClipConfig::from_json_file(path)?,
            None => ClipConfig::preset(&self.model.name)?,
        })
    }

    /// An error unless the weights file is still the one the index was built with: the size
    /// and modification time are checked first, the hash only when they changed.
    pub fn check_weights(&self) -> Result<()> {
        let w = &self.model.weights;
        let changed = |problem: String| Error::WeightsChanged { path: w.clone(), problem };
        let meta = std::fs::metadata(w).map_err(|e| changed(format!("cannot be read ({e})")))?;
        if meta.len() != self.model.weights_size {
            return Err(changed(format!("is now {} bytes, not {}", meta.len(), self.model.weights_size)));
        }
        if mtime_ns(&meta) != self.model.weights_mtime_ns && hash_file(w)? != self.model.weights_blake3 {
            return Err(changed("has other contents (its BLAKE3 differs)".into()));
        }
        Ok(())
    }
}

/// `PE-Core-B16-224 (bf16, center-crop 224)`.
pub fn describe(name: &str, precision: Precision, t: &TransformSpec) -> String {
    let mode = if t.center_crop { "center-crop" } else { "squash" };
    format!("{name} ({precision}, {mode} {})", t.size)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// BLAKE3 of `bytes`, hex: the content hash the catalog keys vectors by.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A file's modification time in nanoseconds since the epoch (0 where unknown).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// BLAKE3 of a file, hex; large files are read through a memory map on all cores.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().to_hex().to_string())
}
