//! PyTorch `.pt` checkpoints: the zip container written by `torch.save` since 1.6.
//!
//! The archive is memory-mapped; tensor storages are stored uncompressed in it, so each tensor
//! is read straight from the mapping (compressed entries are inflated into memory instead).

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use zip::CompressionMethod;

use super::pickle::{unpickle, Value};
use super::{Blob, RawTensor};
use crate::error::{Error, Result};

/// Read every tensor of a `.pt` state dict. Returns `(key, tensor)` pairs with the keys as stored
/// (prefix handling is the caller's), after picking the nested `state_dict` / `weights` dict as
/// the reference's `load_ckpt` does.
pub(crate) fn read(path: &Path, mmap: &Mmap) -> Result<Vec<(String, RawTensor)>> {
    let bad = |r: String| Error::bad_checkpoint(path, r);
    // torch.save archives start at byte 0; the zip crate's offset detection misreads some of
    // them (a root folder name of 21 characters gave "invalid Central Directory header").
    let config = zip::read::Config { archive_offset: zip::read::ArchiveOffset::Known(0) };
    let mut zip = zip::ZipArchive::with_config(config, Cursor::new(&mmap[..]))
        .map_err(|e| bad(format!("not a readable PyTorch zip archive ({e})")))?;

    // Entry name (without the root folder) -> where its bytes are. Compressed entries are only
    // inflated when a tensor uses them, and never past the size the tensor needs.
    let mut entries: HashMap<String, Stored> = HashMap::new();
    let mut pickle: Option<Vec<u8>> = None;
    for i in 0..zip.len() {
        let f = zip.by_index_raw(i).map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        let name = f.name().map_err(|e| bad(format!("zip entry {i}: {e}")))?.into_owned();
        // Every entry sits under one root folder named after the file stem; never hard-code it.
        let rel = name.split_once('/').map(|(_, r)| r.to_string()).unwrap_or(name.clone());
        let stored = if f.compression() == CompressionMethod::Stored {
            let start = f.data_start().ok_or_else(|| bad(format!("zip entry {name} has no data offset")))? as usize;
            let len = f.size() as usize;
            if start.checked_add(len).is_none_or(|end| end > mmap.len()) {
                return Err(bad(format!("zip entry {name} runs past the end of the file (truncated?)")));
            }
            Stored::Ready(Blob::Mapped { start, len })
        } else {
            Stored::Compressed(i)
        };
        drop(f);
        if rel == "data.pkl" {
            pickle = Some(match stored {
                Stored::Ready(blob) => blob.bytes(mmap).to_vec(),
                Stored::Compressed(i) => inflate(&mut zip, i, MAX_PICKLE_BYTES).map_err(bad)?,
            });
        } else if let Some(key) = rel.strip_prefix("data/") {
            entries.insert(key.to_string(), stored);
        }
    }
    let pickle = pickle.ok_or_else(|| bad("the archive has no data.pkl (not a torch.save file?)".into()))?;
    let root = unpickle(&pickle).map_err(|e| bad(format!("data.pkl: {e}")))?;
    let dict = select_state_dict(root).map_err(bad)?;

    let mut out = Vec::new();
    for (k, v) in dict {
        let key = match k {
            Value::Str(s) => s,
            other => return Err(bad(format!("state dict key is not a string: {other:?}"))),
        };
        let t = match v {
            Value::Tensor(t) => t,
            Value::IntegerTensor(kind) => {
                tracing::debug!(key, kind, "ignoring an integer buffer of the state dict (not a weight)");
                continue;
            }
            // Non-tensor entries (e.g. a step counter) are not weights.
            other => {
                tracing::debug!(key, value = ?other, "ignoring a non-tensor entry of the state dict");
                continue;
            }
        };
        let stored = entries.get(&t.storage_key).cloned().ok_or_else(|| {
            bad(format!("tensor `{key}` refers to storage data/{} which the archive lacks", t.storage_key))
        })?;
        let blob = match stored {
            Stored::Ready(blob) => blob,
            Stored::Compressed(i) => {
                let need = t.storage_numel.saturating_mul(t.dtype.size());
                let blob = Blob::Owned(Arc::new(inflate(&mut zip, i, need).map_err(bad)?));
                entries.insert(t.storage_key.clone(), Stored::Ready(blob.clone()));
                blob
            }
        };
        let available = blob.len() / t.dtype.size();
        if available < t.storage_numel {
            return Err(bad(format!(
                "storage data/{} of `{key}` holds {available} elements, the pickle says {} (truncated file?)",
                t.storage_key, t.storage_numel
            )));
        }
        out.push((
            key,
            RawTensor {
                dtype: t.dtype,
                shape: t.shape,
                stride: t.stride,
                offset: t.offset,
                numel_limit: t.storage_numel,
                blob,
            },
        ));
    }
    Ok(out)
}

/// Largest `data.pkl` inflated (a state dict's pickle is tens of KB).
const MAX_PICKLE_BYTES: usize = 256 << 20;

/// A storage entry: readable bytes, or a compressed entry not inflated yet.
#[derive(Debug, Clone)]
enum Stored {
    Ready(Blob),
    Compressed(usize),
}

/// Inflate entry `i`, reading at most `limit` bytes of its output.
fn inflate(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, i: usize, limit: usize) -> Result<Vec<u8>, String> {
    let f = zip.by_index(i).map_err(|e| format!("zip entry {i}: {e}"))?;
    let name = f.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("#{i}"));
    let mut buf = Vec::new();
    f.take(limit as u64).read_to_end(&mut buf).map_err(|e| format!("zip entry {name}: {e}"))?;
    Ok(buf)
}

/// The reference's rule: use `["state_dict"]`, else `["weights"]`, else the dict itself.
fn select_state_dict(root: Value) -> Result<Vec<(Value, Value)>, String> {
    let dict = match root {
        Value::Dict(d) => d,
        other => return Err(format!("the pickled object is not a dict but {}", kind(&other))),
    };
    for wanted in ["state_dict", "weights"] {
        if let Some(pos) = dict.iter().position(|(k, _)| matches!(k, Value::Str(s) if s == wanted)) {
            return match dict.into_iter().nth(pos).map(|(_, v)| v) {
                Some(Value::Dict(d)) => Ok(d),
                Some(other) => Err(format!("`{wanted}` is not a dict but {}", kind(&other))),
                None => unreachable!(),
            };
        }
    }
    Ok(dict)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global(_) => "a class",
        Value::Storage { .. } | Value::IntegerStorage(_) => "a storage",
        Value::Tensor(_) | Value::IntegerTensor(_) => "a tensor",
    }
}
