//! Checkpoints: format and layout detection, validation against a config, and tensor loading.
//!
//! Supported, detected from the file's content (never its name):
//! - PyTorch `.pt` zip archives (`torch.save`), read by a restricted unpickler that accepts only
//!   what a state dict needs; plain, `state_dict`- or `weights`-nested, `module.`-prefixed, and
//!   vision-only (no `visual.` prefix) files;
//! - safetensors with the official key names or the open_clip / timm names.
//!
//! Tensors may be stored as f32, f16, bf16 or f64 and are converted to the compute dtype one at
//! a time. The file is memory-mapped; after a tensor is copied out its pages are released
//! (`MADV_DONTNEED`), so loading never holds the checkpoint and the model in memory at once.

mod backend;
mod key_map;
mod layout;
mod pickle;
mod pt;
mod random;
mod safetensors;
mod storage;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use memmap2::Mmap;

use backend::Backend;
pub(crate) use backend::{TakeTensors, TRANSPOSED};
pub use key_map::CheckpointLayout;
pub use layout::{num_parameters, official_shapes};
pub use random::random_state_dict;
pub(crate) use random::random_tensors;
pub(crate) use storage::{Blob, Entry, RawTensor};

use crate::config::ClipConfig;
use crate::error::{Error, Result};

/// The container format of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A `torch.save` zip archive (`.pt` / `.pth` / `.bin`).
    PyTorch,
    /// A safetensors file.
    Safetensors,
}

/// An opened checkpoint: its tensors under official names, read lazily from a memory map.
///
/// ```no_run
/// use perception_encoder::{weights::Checkpoint, ClipConfig};
/// let cfg = ClipConfig::preset("PE-Core-B16-224")?;
/// let ckpt = Checkpoint::open("PE-Core-B16-224.pt")?;
/// let unexpected = ckpt.check(&cfg)?; // missing keys and shape mismatches are errors
/// # Ok::<(), perception_encoder::Error>(())
/// ```
pub struct Checkpoint {
    path: PathBuf,
    format: CheckpointFormat,
    layout: CheckpointLayout,
    mmap: Mmap,
    entries: BTreeMap<String, Entry>,
    unmapped: Vec<String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("layout", &self.layout)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl Checkpoint {
    /// Open a checkpoint, detecting its format and key layout from the content.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; a file truncated underneath us by another process is
        // the one case memory maps cannot guard against, as in every mmap-based loader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let bad = |r: &str| Error::bad_checkpoint(&path, r);
        if mmap.len() < 8 {
            return Err(bad("the file is too short to be a checkpoint"));
        }
        let (format, raw) = if mmap.starts_with(b"PK\x03\x04") || mmap.starts_with(b"PK\x05\x06") {
            (CheckpointFormat::PyTorch, pt::read(&path, &mmap)?)
        } else if safetensors::looks_like_safetensors(&mmap) {
            (CheckpointFormat::Safetensors, safetensors::read(&path, &mmap)?)
        } else if mmap[0] == 0x80 {
            return Err(bad(
                "this is a legacy (pre-1.6) torch.save file, not a zip archive; re-save it with a recent PyTorch or convert it to safetensors",
            ));
        } else {
            return Err(bad("unrecognized format: neither a PyTorch zip archive nor safetensors"));
        };
        let mapped = key_map::to_official(raw);
        if let Some(bias) = &mapped.head_bias {
            if !bias.in_bounds() {
                return Err(bad("head.bias lies outside the file (truncated or corrupt checkpoint)"));
            }
            if bias.read_f32(&mmap).iter().any(|&x| x != 0.0) {
                return Err(bad(
                    "visual.trunk.head.bias is not zero; PE's projection has no bias, so these weights would not give PE's outputs",
                ));
            }
        }
        tracing::debug!(path = %path.display(), ?format, layout = ?mapped.layout, tensors = mapped.entries.len(), "opened checkpoint");
        Ok(Checkpoint { path, format, layout: mapped.layout, mmap, entries: mapped.entries, unmapped: mapped.unmapped })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The container format.
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }
    /// The key layout the file uses.
    pub fn layout(&self) -> CheckpointLayout {
        self.layout
    }
    /// Every tensor, by official key, with its shape in official terms.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.entries.iter().map(|(k, e)| (k.clone(), e.shape())).collect()
    }

    /// Check that the checkpoint holds every tensor `cfg` needs with the right shape.
    ///
    /// Missing tensors are one error listing all of them; the first shape mismatch (in key order)
    /// is an error naming the key and both shapes; an unreadable tensor is a `BadCheckpoint`.
    /// Returns the keys the model does not use (also logged as a warning). For a vision-only
    /// config, the text tower of a CLIP checkpoint is dropped silently, as the reference does.
    pub fn check(&self, cfg: &ClipConfig) -> Result<Vec<String>> {
        let expected = official_shapes(cfg);
        let missing: Vec<String> =
            expected.iter().filter(|(k, _)| !self.entries.contains_key(k)).map(|(k, _)| k.clone()).collect();
        if !missing.is_empty() {
            return Err(self
                .wrong_model(cfg)
                .unwrap_or(Error::MissingTensors { path: self.path.clone(), keys: missing }));
        }
        for (key, shape) in &expected {
            let entry = &self.entries[key];
            if let Some(problem) = entry.problem() {
                return Err(Error::bad_checkpoint(&self.path, format!("tensor `{key}`: {problem}")));
            }
            let found = entry.shape();
            if &found != shape {
                return Err(self.wrong_model(cfg).unwrap_or(Error::ShapeMismatch {
                    key: key.clone(),
                    expected: shape.clone(),
                    found,
                }));
            }
        }
        let wanted: HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
        let mut unexpected: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !wanted.contains(k.as_str()))
            .filter(|k| cfg.text.is_some() || k.starts_with("visual."))
            .cloned()
            .collect();
        unexpected.extend(self.unmapped.iter().cloned());
        if !unexpected.is_empty() {
            tracing::warn!(
                path = %self.path.display(),
                "checkpoint has {} tensor(s) the model does not use: {}",
                unexpected.len(),
                unexpected.join(", ")
            );
        }
        Ok(unexpected)
    }

    /// When this checkpoint's vision tower is another geometry than `cfg`'s, an error saying
    /// which preset it looks like (or its width, depth and patch), instead of a list of keys.
    fn wrong_model(&self, cfg: &ClipConfig) -> Option<Error> {
        let fits = |c: &ClipConfig| {
            official_shapes(c)
                .iter()
                .filter(|(k, _)| k.starts_with("visual."))
                .all(|(k, s)| self.entries.get(k).is_some_and(|e| &e.shape() == s))
        };
        let (width, patch) = match self.entries.get("visual.conv1.weight").map(Entry::shape).as_deref() {
            Some([w, 3, p, _]) => (*w, *p),
            _ => return None,
        };
        let layers = (0..)
            .take_while(|i| self.entries.contains_key(&format!("visual.transformer.resblocks.{i}.ln_1.weight")))
            .count();
        let v = &cfg.vision;
        if (width, patch, layers) == (v.width, v.patch_size, v.layers) {
            return None;
        }
        let geometry = |w: usize, l: usize, p: usize| format!("width {w}, {l} layers, patch {p}");
        let found = match ClipConfig::presets().into_iter().find(|c| c.name != cfg.name && fits(c)) {
            Some(c) => format!("looks like {} ({})", c.name, geometry(width, layers, patch)),
            None => format!("has a vision tower of {}", geometry(width, layers, patch)),
        };
        Some(Error::WrongModel {
            path: self.path.clone(),
            expected: format!("{} ({})", cfg.name, geometry(v.width, v.layers, v.patch_size)),
            found,
        })
    }

    /// The entry of `key`, if it is there and readable.
    fn readable(&self, key: &str) -> Result<&Entry> {
        let entry = self
            .entries
            .get(key)
            .ok_or_else(|| Error::MissingTensors { path: self.path.clone(), keys: vec![key.to_string()] })?;
        match entry.problem() {
            Some(problem) => Err(Error::bad_checkpoint(&self.path, format!("tensor `{key}`: {problem}"))),
            None => Ok(entry),
        }
    }

    /// Load one tensor by official key, converted to `dtype`, and release its pages.
    pub fn tensor(&self, key: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.readable(key)?;
        let data = entry.read_f32(&self.mmap);
        self.release(entry);
        let t = Tensor::from_vec(data, entry.shape(), &Device::Cpu)?;
        let t = if dtype == DType::F32 { t } else { t.to_dtype(dtype)? };
        Ok(t.to_device(device)?)
    }

    /// A 2-D tensor's transpose, as float32 on the CPU: linear layers keep `W^T`, and reading
    /// it transposed from the file saves a copy of every weight matrix at load.
    fn tensor_transposed(&self, key: &str) -> Result<Tensor> {
        let entry = self.readable(key)?;
        let shape = entry.shape();
        if shape.len() != 2 {
            return Err(Error::bad_checkpoint(&self.path, format!("tensor `{key}`: expected 2-D, found {shape:?}")));
        }
        let data = entry.read_f32_transposed(&self.mmap);
        self.release(entry);
        Ok(Tensor::from_vec(data, (shape[1], shape[0]), &Device::Cpu)?)
    }

    fn release(&self, entry: &Entry) {
        for part in entry.parts() {
            if let Blob::Mapped { start, len } = part.blob {
                // SAFETY: the mapping is read-only and file-backed, so dropped pages are simply
                // read again from the file if touched later; no slice into them is alive here.
                let r = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
                if let Err(e) = r {
                    tracing::trace!("madvise(DONTNEED) failed: {e}");
                }
            }
        }
    }

    /// A [`VarBuilder`] over this checkpoint: tensors are read on demand with the given dtype.
    /// Call [`Checkpoint::check`] first for errors that name every problem.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(self)), dtype, device.clone())
    }
}

/// Write every tensor of `ckpt` to a safetensors file in `layout`, stored as `dtype`
/// (f32, f16 or bf16). Returns the number of tensors written.
///
/// ```no_run
/// use perception_encoder::weights::{convert, Checkpoint, CheckpointLayout};
/// use perception_encoder::candle_core::DType;
/// let ckpt = Checkpoint::open("PE-Core-B16-224.pt")?;
/// convert(&ckpt, "PE-Core-B16-224.bf16.safetensors", CheckpointLayout::Official, DType::BF16)?;
/// # Ok::<(), perception_encoder::Error>(())
/// ```
pub fn convert(ckpt: &Checkpoint, out: impl AsRef<Path>, layout: CheckpointLayout, dtype: DType) -> Result<usize> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::InvalidInput(format!("cannot store weights as {dtype:?}; use f32, f16 or bf16")));
    }
    let out = out.as_ref();
    let mut tensors = std::collections::HashMap::new();
    for key in ckpt.entries.keys() {
        let t = ckpt.tensor(key, dtype, &Device::Cpu)?;
        match layout {
            CheckpointLayout::Official => {
                tensors.insert(key.clone(), t);
            }
            CheckpointLayout::OpenClip => tensors.extend(key_map::to_openclip(key, t)?),
        }
    }
    if !ckpt.unmapped.is_empty() {
        tracing::warn!("not converted (no official name): {}", ckpt.unmapped.join(", "));
    }
    let n = tensors.len();
    candle_core::safetensors::save(&tensors, out).map_err(|e| match e {
        candle_core::Error::Io(io) => Error::io(out, io),
        other => Error::Tensor(other),
    })?;
    usual_permissions(out)?;
    Ok(n)
}

/// Give `path` the mode a newly created file gets here (0666 less the umask): the safetensors
/// writer goes through a private temporary file, whose 0600 would otherwise stay.
fn usual_permissions(path: &Path) -> Result<()> {
    let probe = path.with_file_name(format!(".{}.mode.tmp", std::process::id()));
    let mode = std::fs::File::create(&probe).and_then(|f| f.metadata()).map(|m| m.permissions());
    let _ = std::fs::remove_file(&probe);
    let mode = mode.map_err(|e| Error::io(&probe, e))?;
    std::fs::set_permissions(path, mode).map_err(|e| Error::io(path, e))
}
