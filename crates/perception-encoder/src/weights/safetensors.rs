//! The safetensors reader: the header parsed by the `safetensors` crate, each float tensor a
//! view into the memory map (non-float tensors are skipped: no PE weight is one).

use std::path::Path;

use memmap2::Mmap;

use super::storage::{Blob, RawTensor, StorageDType};
use crate::error::{Error, Result};

/// Whether `bytes` start like a safetensors file: a header length that fits the file, then `{`.
pub(crate) fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    n >= 2 && n <= (bytes.len() as u64).saturating_sub(8) && bytes[8] == b'{'
}

/// Every float tensor of the file, by its stored name.
pub(crate) fn read(path: &Path, mmap: &Mmap) -> Result<Vec<(String, RawTensor)>> {
    let st = ::safetensors::SafeTensors::deserialize(mmap)
        .map_err(|e| Error::bad_checkpoint(path, format!("invalid safetensors file: {e}")))?;
    let base = mmap.as_ptr() as usize;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            ::safetensors::Dtype::F32 => StorageDType::F32,
            ::safetensors::Dtype::F16 => StorageDType::F16,
            ::safetensors::Dtype::BF16 => StorageDType::BF16,
            ::safetensors::Dtype::F64 => StorageDType::F64,
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
