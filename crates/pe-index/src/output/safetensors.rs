//! `.safetensors` outputs: rows go to a temporary data file per tensor as they come; at the end
//! the header (the tensors, names as a JSON list in the metadata key `paths`, and the `pe.*`
//! keys) is written, followed by the data.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::{output_err, Row, Temp};
use crate::error::{Error, Result};

/// One tensor being written: its name, the shape of one row, and its rows so far on disk.
struct Part {
    name: String,
    tail: Option<Vec<usize>>,
    data: BufWriter<File>,
    tmp: Temp,
}

/// A `.safetensors` file of several float32 tensors with one row per key (`(N, ...)` each),
/// written row by row; the names go to the metadata key `paths`.
pub struct TensorsWriter {
    path: std::path::PathBuf,
    parts: Vec<Part>,
    names: Vec<String>,
}

impl TensorsWriter {
    /// Start `path` with these tensors: a name and the shape of one row (`None`: one
    /// dimension, from the first row). Fails before any work if the folder is not writable.
    pub fn create(path: &Path, tensors: Vec<(String, Option<Vec<usize>>)>) -> Result<Self> {
        let mut parts = Vec::new();
        for (i, (name, tail)) in tensors.into_iter().enumerate() {
            let (tmp, file) = Temp::create(path, &format!("part{i}"))?;
            parts.push(Part { name, tail, data: BufWriter::new(file), tmp });
        }
        Ok(TensorsWriter { path: path.to_path_buf(), parts, names: Vec::new() })
    }

    /// One row of every tensor, in the order given to [`Self::create`].
    pub fn push(&mut self, key: String, rows: &[&[f32]]) -> Result<()> {
        if rows.len() != self.parts.len() {
            return Err(output_err(&self.path, format!("{} tensors given for {}", rows.len(), self.parts.len())));
        }
        for (part, row) in self.parts.iter_mut().zip(rows) {
            let want: usize = part.tail.get_or_insert_with(|| vec![row.len()]).iter().product();
            if row.len() != want {
                return Err(output_err(
                    &self.path,
                    format!("a row of {} values for `{}`, which takes {want}", row.len(), part.name),
                ));
            }
            for v in *row {
                part.data.write_all(&v.to_le_bytes()).map_err(|e| Error::io(&part.tmp.path, e))?;
            }
        }
        self.names.push(key);
        Ok(())
    }

    /// Write the header (with `meta` and `paths`), then every tensor's rows; rename into place.
    pub fn finish(self, meta: Vec<(String, String)>) -> Result<u64> {
        let path = self.path.clone();
        let io = |e: std::io::Error| Error::io(&path, e);
        let n = self.names.len();
        let mut metadata: serde_json::Map<String, serde_json::Value> =
            meta.into_iter().map(|(k, v)| (k, v.into())).collect();
        let names = serde_json::to_string(&self.names).map_err(|e| output_err(&path, e.to_string()))?;
        metadata.insert("paths".into(), names.into());
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), metadata.into());
        let mut offset = 0u64;
        for part in &self.parts {
            let tail = part.tail.clone().unwrap_or_else(|| vec![0]);
            let bytes = (n * tail.iter().product::<usize>() * 4) as u64;
            let shape: Vec<usize> = std::iter::once(n).chain(tail).collect();
            header.insert(
                part.name.clone(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
        let mut header = serde_json::to_vec(&header).map_err(|e| output_err(&path, e.to_string()))?;
        // Data starts 8-aligned, padded with spaces as the format allows.
        header.resize(header.len().div_ceil(8) * 8, b' ');
        let (out_tmp, out) = Temp::create(&path, "out")?;
        let mut out = BufWriter::new(out);
        out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(&header).map_err(io)?;
        for part in self.parts {
            let mut data = part.data.into_inner().map_err(|e| io(e.into_error()))?;
            data.seek(SeekFrom::Start(0)).map_err(io)?;
            std::io::copy(&mut data, &mut out).map_err(io)?;
        }
        let out = out.into_inner().map_err(|e| io(e.into_error()))?;
        out_tmp.commit(&out, &path)?;
        Ok(n as u64)
    }
}

/// The embeddings output: one tensor `embeddings` (N, D).
pub(super) struct StWriter(TensorsWriter);

impl StWriter {
    pub fn create(path: &Path) -> Result<Self> {
        Ok(StWriter(TensorsWriter::create(path, vec![("embeddings".into(), None)])?))
    }

    pub fn push(&mut self, key: String, embedding: &[f32]) -> Result<()> {
        self.0.push(key, &[embedding])
    }

    pub fn finish(mut self, dim: usize, meta: Vec<(String, String)>) -> Result<()> {
        if let Some(part) = self.0.parts.first_mut() {
            part.tail.get_or_insert_with(|| vec![dim]);
        }
        self.0.finish(meta).map(|_| ())
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
