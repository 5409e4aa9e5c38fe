//! Writing results: JSON Lines on stdout, or a matrix file (`.npy` / `.safetensors`) with the
//! list of inputs.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

/// Collects embedding rows for a matrix file, or streams them as JSON Lines.
pub enum Sink {
    Lines(std::io::BufWriter<std::io::StdoutLock<'static>>),
    Matrix { names: Vec<String>, rows: Vec<Vec<f32>> },
}

impl Sink {
    pub fn new(matrix: bool) -> Self {
        if matrix {
            Sink::Matrix { names: Vec::new(), rows: Vec::new() }
        } else {
            Sink::Lines(std::io::BufWriter::new(std::io::stdout().lock()))
        }
    }

    /// One result: `{key: name, "embedding": row}` as a line, or a matrix row.
    pub fn push(&mut self, key: &str, name: &str, row: Vec<f32>) -> anyhow::Result<()> {
        match self {
            Sink::Lines(out) => {
                let mut obj = serde_json::Map::new();
                obj.insert(key.to_string(), serde_json::Value::String(name.to_string()));
                obj.insert("embedding".into(), serde_json::to_value(row)?);
                serde_json::to_writer(&mut *out, &obj)?;
                out.write_all(b"\n")?;
                Ok(())
            }
            Sink::Matrix { names, rows } => {
                names.push(name.to_string());
                rows.push(row);
                Ok(())
            }
        }
    }

    /// Flush the lines, or write the matrix file.
    pub fn finish(self, output: Option<&Path>) -> anyhow::Result<()> {
        match (self, output) {
            (Sink::Lines(mut out), _) => Ok(out.flush()?),
            (Sink::Matrix { names, rows }, Some(path)) => write_matrix(path, &names, &rows),
            (Sink::Matrix { .. }, None) => unreachable!("a matrix sink always has an output path"),
        }
    }
}

/// Write `rows` as a float32 matrix: `.npy` (names in `<file>.paths.txt` beside it) or
/// `.safetensors` (tensor `embeddings`, names as JSON in the metadata key `paths`).
pub fn write_matrix(path: &Path, names: &[String], rows: &[Vec<f32>]) -> anyhow::Result<()> {
    let dim = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "npy" => {
            let mut bytes = Vec::with_capacity(flat.len() * 4 + 128);
            let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", rows.len(), dim);
            // Pad so that magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
            let pad = (64 - (10 + header.len() + 1) % 64) % 64;
            bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
            bytes.extend_from_slice(&((header.len() + pad + 1) as u16).to_le_bytes());
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend(std::iter::repeat_n(b' ', pad));
            bytes.push(b'\n');
            for v in &flat {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
            let list = path.with_extension("paths.txt");
            std::fs::write(&list, names.join("\n") + "\n").with_context(|| format!("writing {}", list.display()))?;
        }
        "safetensors" => {
            let data: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows.len(), dim], &data)?;
            let metadata = HashMap::from([("paths".to_string(), serde_json::to_string(names)?)]);
            safetensors::serialize_to_file([("embeddings", view)], Some(metadata), path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        _ => bail!("--output must end in .npy or .safetensors, got {}", path.display()),
    }
    Ok(())
}
