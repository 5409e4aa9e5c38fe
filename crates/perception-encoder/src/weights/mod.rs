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

mod key_map;
mod layout;
mod pickle;
mod pt;
mod random;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use memmap2::Mmap;

pub use key_map::CheckpointLayout;
pub use layout::{num_parameters, official_shapes};
pub(crate) use pickle::StorageDType;
pub use random::random_state_dict;

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

/// Where a tensor's bytes are.
#[derive(Debug, Clone)]
pub(crate) enum Blob {
    /// A byte range of the memory-mapped file.
    Mapped { start: usize, len: usize },
    /// Bytes inflated from a compressed zip entry.
    Owned(Arc<Vec<u8>>),
}

impl Blob {
    pub(crate) fn bytes<'a>(&'a self, mmap: &'a [u8]) -> &'a [u8] {
        match self {
            Blob::Mapped { start, len } => &mmap[*start..*start + *len],
            Blob::Owned(v) => v,
        }
    }
    pub(crate) fn len(&self) -> usize {
        match self {
            Blob::Mapped { len, .. } => *len,
            Blob::Owned(v) => v.len(),
        }
    }
}

/// A stored tensor: a strided view into a blob.
#[derive(Debug, Clone)]
pub(crate) struct RawTensor {
    pub dtype: StorageDType,
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
    /// Offset in elements.
    pub offset: usize,
    /// Elements the blob holds from its start (bounds every access).
    pub numel_limit: usize,
    pub blob: Blob,
}

impl RawTensor {
    pub(crate) fn numel(&self) -> usize {
        // Saturating: sizes come from the file and may be absurd in a corrupt one.
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Whether every element lies inside the storage (a truncated file fails here, not later)
    /// and the view has no more elements than its storage: weights are never broadcast views,
    /// and a stride-0 view claiming 2^40 elements must not become a 4 TB allocation. All sums
    /// are checked, so absurd strides are refused rather than wrapped.
    fn in_bounds(&self) -> bool {
        let Some(numel) = self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else { return false };
        if numel == 0 {
            return true;
        }
        let last = self
            .shape
            .iter()
            .zip(&self.stride)
            .try_fold(0usize, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x)));
        numel <= self.numel_limit
            && last.and_then(|l| self.offset.checked_add(l)).is_some_and(|end| end < self.numel_limit)
            && self.numel_limit.checked_mul(self.dtype.size()).is_some_and(|bytes| bytes <= self.blob.len())
    }

    /// The values in place when they are contiguous little-endian float32 at an aligned address
    /// (then no copy is needed to read them).
    fn f32_in_place<'a>(&'a self, mmap: &'a [u8]) -> Option<&'a [f32]> {
        let contiguous = self
            .stride
            .iter()
            .rev()
            .zip(self.shape.iter().rev())
            .try_fold(1usize, |expect, (&s, &d)| (d == 1 || s == expect).then(|| expect * d));
        if self.dtype != StorageDType::F32 || contiguous.is_none() || self.numel() == 0 || cfg!(target_endian = "big") {
            return None;
        }
        let raw = &self.blob.bytes(mmap)[self.offset * 4..(self.offset + self.numel()) * 4];
        // SAFETY: the alignment is checked; any bit pattern is a valid f32.
        let (head, values, _) = unsafe { raw.align_to::<f32>() };
        head.is_empty().then_some(values)
    }

    fn read_f32(&self, mmap: &[u8]) -> Vec<f32> {
        let bytes = self.blob.bytes(mmap);
        let size = self.dtype.size();
        let n = self.numel();
        if n == 0 {
            // An empty view may name any offset; there is nothing to read (found by fuzzing).
            return Vec::new();
        }
        let decode = |i: usize| -> f32 {
            let b = &bytes[i * size..(i + 1) * size];
            match self.dtype {
                StorageDType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                StorageDType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                StorageDType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                StorageDType::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
            }
        };
        let contiguous = {
            let mut expect = 1;
            let mut ok = true;
            for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
                if d != 1 && s != expect {
                    ok = false;
                }
                expect *= d;
            }
            ok
        };
        if contiguous {
            let raw = &bytes[self.offset * size..(self.offset + n) * size];
            match self.dtype {
                StorageDType::F32 if cfg!(target_endian = "little") => {
                    let mut out = crate::kernels::uninit::<f32>(n);
                    // The source may be unaligned (safetensors headers have any length), so
                    // copy bytes.
                    // SAFETY: `out` owns exactly `raw.len()` bytes, all written here, and any
                    // bit pattern is a valid f32.
                    unsafe {
                        std::ptr::copy_nonoverlapping(raw.as_ptr(), out.as_mut_ptr().cast::<u8>(), raw.len());
                        return crate::kernels::assume_init(out);
                    }
                }
                // bf16 is the top half of an f32: a shift, which vectorizes (the per-element
                // decode above does not, and made bf16 files slower to load than f32 ones).
                StorageDType::BF16 => {
                    return raw
                        .chunks_exact(2)
                        .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                        .collect()
                }
                // Converted 8 at a time (F16C where the CPU has it) by `half`; element by
                // element this was the slowest part of loading an f16 file.
                StorageDType::F16 => {
                    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                    let mut out = vec![0f32; n];
                    let mut bits = [0u16; 1024];
                    for (dst, src) in out.chunks_mut(bits.len()).zip(raw.chunks(2 * bits.len())) {
                        let bits = &mut bits[..dst.len()];
                        for (b, s) in bits.iter_mut().zip(src.chunks_exact(2)) {
                            *b = u16::from_le_bytes([s[0], s[1]]);
                        }
                        bits.reinterpret_cast::<half::f16>().convert_to_f32_slice(dst);
                    }
                    return out;
                }
                _ => return (self.offset..self.offset + n).map(decode).collect(),
            }
        }
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let pos = self.offset + idx.iter().zip(&self.stride).map(|(i, s)| i * s).sum::<usize>();
            out.push(decode(pos));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }
}

/// A tensor in official terms, possibly derived from stored ones (open_clip layout).
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    Raw(RawTensor),
    /// A 2-D tensor stored transposed.
    Transposed(RawTensor),
    /// Same elements, another shape.
    Reshaped(RawTensor, Vec<usize>),
    /// Tensors concatenated along their first dimension.
    RowConcat(Vec<RawTensor>),
}

impl Entry {
    fn shape(&self) -> Vec<usize> {
        match self {
            Entry::Raw(t) => t.shape.clone(),
            Entry::Transposed(t) => t.shape.iter().rev().copied().collect(),
            Entry::Reshaped(_, s) => s.clone(),
            Entry::RowConcat(parts) => {
                let mut s = parts[0].shape.clone();
                if let Some(first) = s.first_mut() {
                    *first = parts.iter().map(|p| p.shape.first().copied().unwrap_or(1)).sum();
                }
                s
            }
        }
    }

    fn parts(&self) -> Vec<&RawTensor> {
        match self {
            Entry::Raw(t) | Entry::Transposed(t) | Entry::Reshaped(t, _) => vec![t],
            Entry::RowConcat(p) => p.iter().collect(),
        }
    }

    /// Why this entry cannot be read, if it cannot.
    fn problem(&self) -> Option<String> {
        for p in self.parts() {
            if !p.in_bounds() {
                return Some("its data lies outside the file (truncated or corrupt checkpoint)".into());
            }
        }
        match self {
            Entry::Transposed(t) if t.shape.len() != 2 => {
                Some(format!("expected a 2-D tensor to transpose, found {:?}", t.shape))
            }
            Entry::Reshaped(t, s) if Some(t.numel()) != s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) => {
                Some(format!("cannot view {:?} as {:?}", t.shape, s))
            }
            Entry::RowConcat(p)
                if p.iter().any(|x| x.shape.len() != p[0].shape.len() || x.shape[1..] != p[0].shape[1..]) =>
            {
                Some("the parts to concatenate differ in shape".into())
            }
            _ => None,
        }
    }

    fn read_f32(&self, mmap: &[u8]) -> Vec<f32> {
        match self {
            Entry::Raw(t) | Entry::Reshaped(t, _) => t.read_f32(mmap),
            Entry::Transposed(t) => {
                let (r, c) = (t.shape[0], t.shape[1]);
                let src = t.read_f32(mmap);
                let mut out = vec![0f32; r * c];
                for i in 0..r {
                    for j in 0..c {
                        out[j * r + i] = src[i * c + j];
                    }
                }
                out
            }
            Entry::RowConcat(parts) => parts.iter().flat_map(|p| p.read_f32(mmap)).collect(),
        }
    }

    /// A 2-D entry's values transposed (`(c, r)` for an `(r, c)` entry), straight from the file
    /// where the stored layout allows it.
    fn read_f32_transposed(&self, mmap: &[u8]) -> Vec<f32> {
        let shape = self.shape();
        let (r, c) = (shape[0], shape[1]);
        match self {
            Entry::Raw(t) => match t.f32_in_place(mmap) {
                Some(values) => crate::kernels::transpose(values, r, c),
                None => crate::kernels::transpose(&t.read_f32(mmap), r, c),
            },
            // Stored transposed already: its own values are the answer.
            Entry::Transposed(t) => t.read_f32(mmap),
            _ => crate::kernels::transpose(&self.read_f32(mmap), r, c),
        }
    }
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
        } else if looks_like_safetensors(&mmap) {
            (CheckpointFormat::Safetensors, read_safetensors(&path, &mmap)?)
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
            return Err(Error::MissingTensors { path: self.path.clone(), keys: missing });
        }
        for (key, shape) in &expected {
            let entry = &self.entries[key];
            if let Some(problem) = entry.problem() {
                return Err(Error::bad_checkpoint(&self.path, format!("tensor `{key}`: {problem}")));
            }
            let found = entry.shape();
            if &found != shape {
                return Err(Error::ShapeMismatch { key: key.clone(), expected: shape.clone(), found });
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
    Ok(n)
}

/// `t` if it has shape `s`, else the loader's shape-mismatch message for `name`.
pub(crate) fn with_shape(t: Tensor, s: &Shape, name: &str) -> candle_core::Result<Tensor> {
    if t.shape() != s {
        return Err(candle_core::Error::Msg(format!(
            "shape mismatch for `{name}`: the model expects {:?}, the weights have {:?}",
            s.dims(),
            t.dims()
        )));
    }
    Ok(t)
}

struct Backend(Checkpoint);

/// A checkpoint [`VarBuilder`] also answers `"{key}@T"`: the 2-D tensor `key` transposed,
/// read that way from the file (other backends do not, and callers fall back to `key`).
pub(crate) const TRANSPOSED: &str = "@T";

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        with_shape(self.get_unchecked(name, dtype, dev)?, &s, name)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = match name.strip_suffix(TRANSPOSED) {
            Some(key) if dtype == DType::F32 && dev.is_cpu() => self.0.tensor_transposed(key),
            Some(key) => self.0.tensor(key, dtype, dev).and_then(|t| Ok(t.t()?.contiguous()?)),
            None => self.0.tensor(name, dtype, dev),
        };
        t.map_err(|e| match e {
            Error::Tensor(t) => t,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match name.strip_suffix(TRANSPOSED) {
            Some(key) => self.0.entries.get(key).is_some_and(|e| e.shape().len() == 2),
            None => self.0.entries.contains_key(name),
        }
    }
}

fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    n >= 2 && n <= (bytes.len() as u64).saturating_sub(8) && bytes[8] == b'{'
}

fn read_safetensors(path: &Path, mmap: &Mmap) -> Result<Vec<(String, RawTensor)>> {
    let st = safetensors::SafeTensors::deserialize(mmap)
        .map_err(|e| Error::bad_checkpoint(path, format!("invalid safetensors file: {e}")))?;
    let base = mmap.as_ptr() as usize;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => StorageDType::F32,
            safetensors::Dtype::F16 => StorageDType::F16,
            safetensors::Dtype::BF16 => StorageDType::BF16,
            safetensors::Dtype::F64 => StorageDType::F64,
            other => {
                tracing::debug!(name, ?other, "skipping a non-float tensor");
                continue;
            }
        };
        let shape = view.shape().to_vec();
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        let data = view.data();
        let numel_limit = data.len() / dtype.size();
        let blob = Blob::Mapped { start: data.as_ptr() as usize - base, len: data.len() };
        out.push((name, RawTensor { dtype, shape, stride, offset: 0, numel_limit, blob }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_reads_equal_the_transpose_of_plain_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let (r, c) = (37, 70);
        let values: Vec<f32> = (0..r * c).map(|i| i as f32 * 0.25 - 100.0).collect();
        let mut tensors = std::collections::HashMap::new();
        tensors.insert("a.weight".to_string(), Tensor::from_vec(values.clone(), (r, c), &Device::Cpu).unwrap());
        tensors.insert(
            "b.weight".to_string(),
            Tensor::from_vec(values.clone(), (r, c), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap(),
        );
        tensors.insert("bias".to_string(), Tensor::from_vec(vec![1f32; 3], 3, &Device::Cpu).unwrap());
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let vb = Checkpoint::open(&path).unwrap().into_var_builder(DType::F32, &Device::Cpu);
        for key in ["a.weight", "b.weight"] {
            let name = format!("{key}{TRANSPOSED}");
            assert!(vb.contains_tensor(&name));
            let got: Vec<Vec<f32>> = vb.get((c, r), &name).unwrap().to_vec2().unwrap();
            let want: Vec<Vec<f32>> = vb.get((r, c), key).unwrap().t().unwrap().to_vec2().unwrap();
            assert_eq!(got, want, "{key}");
        }
        // Only 2-D tensors have a transposed form.
        assert!(!vb.contains_tensor(&format!("bias{TRANSPOSED}")));
    }
}
