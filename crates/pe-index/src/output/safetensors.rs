//! `.safetensors` outputs: rows go to a temporary data file as they come; at the end the header
//! (tensor `embeddings`, names as a JSON list in the metadata key `paths`, and the `pe.*` keys)
//! is written, followed by the data.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::{output_err, Row, Temp};
use crate::error::{Error, Result};

pub(super) struct StWriter {
    data: BufWriter<File>,
    data_tmp: Temp,
    names: Vec<String>,
}

impl StWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let (data_tmp, file) = Temp::create(path, "data")?;
        Ok(StWriter { data: BufWriter::new(file), data_tmp, names: Vec::new() })
    }

    pub fn push(&mut self, key: String, embedding: &[f32]) -> Result<()> {
        for v in embedding {
            self.data.write_all(&v.to_le_bytes()).map_err(|e| Error::io(&self.data_tmp.path, e))?;
        }
        self.names.push(key);
        Ok(())
    }

    pub fn finish(self, path: &Path, dim: usize, meta: Vec<(String, String)>) -> Result<()> {
        let io = |e: std::io::Error| Error::io(path, e);
        let mut data = self.data.into_inner().map_err(|e| io(e.into_error()))?;
        let bytes = (self.names.len() * dim * 4) as u64;
        let mut metadata: serde_json::Map<String, serde_json::Value> =
            meta.into_iter().map(|(k, v)| (k, v.into())).collect();
        let names = serde_json::to_string(&self.names).map_err(|e| output_err(path, e.to_string()))?;
        metadata.insert("paths".into(), names.into());
        let header = serde_json::json!({
            "__metadata__": metadata,
            "embeddings": {"dtype": "F32", "shape": [self.names.len(), dim], "data_offsets": [0, bytes]},
        });
        let mut header = serde_json::to_vec(&header).map_err(|e| output_err(path, e.to_string()))?;
        // Data starts 8-aligned, padded with spaces as the format allows.
        header.resize(header.len().div_ceil(8) * 8, b' ');
        let (out_tmp, out) = Temp::create(path, "out")?;
        let mut out = BufWriter::new(out);
        out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(&header).map_err(io)?;
        data.seek(SeekFrom::Start(0)).map_err(io)?;
        std::io::copy(&mut data, &mut out).map_err(io)?;
        let out = out.into_inner().map_err(|e| io(e.into_error()))?;
        out_tmp.commit(&out, path)
    }
}

fn open(path: &Path) -> Result<memmap2::Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read only; a file changed underneath gives wrong rows, never UB in
    // safe code, because the bytes are only copied out.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    output_err(path, format!("not an embeddings .safetensors file: {why}"))
}

/// The metadata keys of a safetensors output other than `paths`.
pub fn metadata(path: &Path) -> Result<Vec<(String, String)>> {
    let map = open(path)?;
    let (_, meta) = ::safetensors::SafeTensors::read_metadata(&map).map_err(|e| bad(path, e))?;
    Ok(meta.metadata().clone().unwrap_or_default().into_iter().filter(|(k, _)| k != "paths").collect())
}

/// The rows of a safetensors output (tensor `embeddings`, names in `paths`).
pub fn read(path: &Path) -> Result<impl Iterator<Item = Result<Row>>> {
    let map = open(path)?;
    let st = ::safetensors::SafeTensors::deserialize(&map).map_err(|e| bad(path, e))?;
    let (_, meta) = ::safetensors::SafeTensors::read_metadata(&map).map_err(|e| bad(path, e))?;
    let t = st.tensor("embeddings").map_err(|e| bad(path, e))?;
    if t.dtype() != ::safetensors::Dtype::F32 || t.shape().len() != 2 {
        return Err(bad(path, "tensor `embeddings` is not a float32 matrix"));
    }
    let (rows, dim) = (t.shape()[0], t.shape()[1]);
    let empty = HashMap::new();
    let names: Vec<String> = match meta.metadata().as_ref().unwrap_or(&empty).get("paths") {
        Some(s) => serde_json::from_str(s).map_err(|e| bad(path, format!("metadata `paths`: {e}")))?,
        None => return Err(bad(path, "no `paths` in the metadata")),
    };
    if names.len() != rows {
        return Err(bad(path, format!("{rows} rows but {} names", names.len())));
    }
    // Rows are copied out of the map one at a time, not read whole.
    let start = t.data().as_ptr() as usize - map.as_ptr() as usize;
    drop(st);
    Ok(names.into_iter().enumerate().map(move |(i, key)| {
        let at = start + i * dim * 4;
        let bytes = &map[at..at + dim * 4];
        let embedding = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok(Row { key, size: None, embedding })
    }))
}
