//! Writing results: JSON Lines on stdout, or a matrix file (`.npy` / `.safetensors`) with the
//! list of inputs.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};

/// Collects embedding rows for a matrix file, or streams them as JSON Lines.
pub enum Sink {
    Lines(std::io::BufWriter<std::io::StdoutLock<'static>>),
    Matrix { names: Vec<OsString>, rows: Vec<Vec<f32>> },
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
    pub fn push(&mut self, key: &str, name: &OsStr, row: Vec<f32>) -> anyhow::Result<()> {
        match self {
            Sink::Lines(out) => {
                let mut obj = serde_json::Map::new();
                obj.insert(key.to_string(), serde_json::Value::String(display_name(name)));
                obj.insert("embedding".into(), serde_json::to_value(row)?);
                serde_json::to_writer(&mut *out, &obj)?;
                out.write_all(b"\n")?;
                Ok(())
            }
            Sink::Matrix { names, rows } => {
                names.push(name.to_os_string());
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

/// A name as JSON text: UTF-8 names as they are; a name with bytes that are not UTF-8 keeps
/// them as `\xHH` (and its backslashes doubled), so it is not silently altered.
pub fn display_name(name: &OsStr) -> String {
    match name.to_str() {
        Some(s) => s.to_string(),
        None => escape(name.as_encoded_bytes(), false),
    }
}

/// One line of `.paths.txt`: backslash, newline and carriage return escaped (`\\`, `\n`,
/// `\r`) and bytes that are not UTF-8 as `\xHH`, so each line is exactly one name.
pub fn path_line(name: &OsStr) -> String {
    escape(name.as_encoded_bytes(), true)
}

fn escape(bytes: &[u8], line_breaks: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' if line_breaks => out.push_str("\\n"),
                '\r' if line_breaks => out.push_str("\\r"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Write `rows` as a float32 matrix: `.npy` (names in `<file>.paths.txt` beside it, one a line,
/// see [`path_line`]) or `.safetensors` (tensor `embeddings`, names as a JSON list in the
/// metadata key `paths`).
pub fn write_matrix(path: &Path, names: &[OsString], rows: &[Vec<f32>]) -> anyhow::Result<()> {
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
            let lines: String = names.iter().map(|n| path_line(n) + "\n").collect();
            std::fs::write(&list, lines).with_context(|| format!("writing {}", list.display()))?;
        }
        "safetensors" => {
            let data: Vec<u8> = flat.iter().flat_map(|v| v.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows.len(), dim], &data)?;
            let shown: Vec<String> = names.iter().map(|n| display_name(n)).collect();
            let metadata = HashMap::from([("paths".to_string(), serde_json::to_string(&shown)?)]);
            safetensors::serialize_to_file([("embeddings", view)], Some(metadata), path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        _ => bail!("--output must end in .npy or .safetensors, got {}", path.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_newlines_backslashes_and_non_utf8() {
        assert_eq!(path_line(OsStr::new("a\nb\\c\rd.jpg")), "a\\nb\\\\c\\rd.jpg");
        assert_eq!(display_name(OsStr::new("a\nb.jpg")), "a\nb.jpg");
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let raw = OsStr::from_bytes(b"caf\xe9\\x.jpg");
            assert_eq!(display_name(raw), "caf\\xe9\\\\x.jpg");
            assert_eq!(path_line(raw), "caf\\xe9\\\\x.jpg");
        }
    }
}
