//! Embedding outputs, written row by row as they are computed (never held whole in memory):
//! JSON Lines (stdout, or a `.jsonl` file), `.npy` with the names in `<file>.paths.txt`,
//! `.safetensors` (tensor `embeddings`, names in the metadata) and `.parquet` (a key column,
//! optional `width`/`height`, `embedding` as a fixed-size list of float32; model and dtype in
//! the file metadata). The CLI's embed commands and shard runs call this; none formats rows
//! itself.
//!
//! Matrix files are written under a temporary name beside the output and renamed when complete,
//! so an output either exists whole or keeps its previous content. A `.jsonl` file is appended
//! in place, a line per row, so a killed run keeps every row it finished. With `resume`, the
//! rows already in the output are kept and their keys reported by [`Writer::has`], so a caller
//! skips those inputs.

mod names;
mod npy;
mod parquet;
mod safetensors;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use names::{display_name, path_line, unescape_line};
pub use safetensors::TensorsWriter;

use crate::error::{Error, Result};

/// The file formats an output may have, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line (`.jsonl`, `.ndjson`, or stdout).
    JsonLines,
    /// NumPy `.npy` (float32, C order) with `<file>.paths.txt`.
    Npy,
    /// `.safetensors`: tensor `embeddings` (N, D) float32.
    Safetensors,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The extensions accepted, for messages.
    pub const EXTENSIONS: &'static str = ".jsonl, .ndjson, .npy, .safetensors or .parquet";

    /// The format of an output path, from its extension; anything else is an error naming it.
    pub fn of(path: &Path) -> Result<Format> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        Ok(match ext.as_str() {
            "jsonl" | "ndjson" => Format::JsonLines,
            "npy" => Format::Npy,
            "safetensors" => Format::Safetensors,
            "parquet" => Format::Parquet,
            _ => return Err(output_err(path, format!("the output must end in {}", Format::EXTENSIONS))),
        })
    }
}

/// What the rows of an output hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The key column's name: `path` for files, `text` for texts, `key` for shard samples.
    pub key: String,
    /// Whether rows carry the input's pixel size (`width`, `height` in Parquet).
    pub sizes: bool,
    /// The model's name, kept in the metadata of safetensors and Parquet files.
    pub model: String,
    /// The precision's name, likewise.
    pub dtype: String,
    /// The embedding dimension when known before the first row (an empty output then still
    /// has the right shape).
    pub dim: Option<usize>,
    /// A `shard` column holding this name on every row (Parquet parts of a sharded corpus).
    pub shard: Option<String>,
    /// `caption` and `text_embedding` columns (Parquet only; null where a row has none).
    pub captions: bool,
    /// A `caption` column holding the text each row's embedding is of (Parquet only: the
    /// parts of `pe embed-text` over a sharded corpus).
    pub texts: bool,
    /// A `json` column: each sample's metadata (`KEY.json`) as text, null where it has none
    /// (Parquet only).
    pub json: bool,
    /// A `hash` column: BLAKE3 of each input's bytes, hex (Parquet only), which is what an
    /// index keys contents by (`pe index import`).
    pub hashes: bool,
}

/// What a row of a sharded corpus carries beside its embedding.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleExtras<'a> {
    /// BLAKE3 of the input's bytes, hex (the `hash` column).
    pub hash: Option<&'a str>,
    /// The caption and its text embedding (the `caption` and `text_embedding` columns).
    pub caption: Option<(&'a str, &'a [f32])>,
    /// The sample's JSON metadata (the `json` column).
    pub json: Option<&'a str>,
}

/// One row read back from an output.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The key as written (see [`display_name`]).
    pub key: String,
    /// Pixel width and height, where the format keeps them.
    pub size: Option<(i32, i32)>,
    /// The embedding.
    pub embedding: Vec<f32>,
}

pub(crate) fn output_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Output { path: path.to_path_buf(), reason: reason.into() }
}

/// A temporary file beside `path`, removed on drop unless kept.
pub(crate) struct Temp {
    pub path: PathBuf,
    keep: bool,
}

impl Temp {
    /// Create `.<name>.<suffix>.tmp` beside `path`; fails early when the folder is missing or
    /// not writable, before any work is done.
    pub fn create(path: &Path, suffix: &str) -> Result<(Temp, File)> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{suffix}.{}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| Error::io(path, e))?;
        Ok((Temp { path: tmp, keep: false }, file))
    }

    /// Move the finished file into place.
    pub fn commit(mut self, file: &File, to: &Path) -> Result<()> {
        file.sync_all().map_err(|e| Error::io(to, e))?;
        std::fs::rename(&self.path, to).map_err(|e| Error::io(to, e))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

enum Sink {
    Lines(Box<dyn Write>),
    Npy(npy::NpyWriter),
    Safetensors(safetensors::StWriter),
    Parquet(Box<parquet::PqWriter>),
}

/// An output being written.
pub struct Writer {
    path: Option<PathBuf>,
    columns: Columns,
    sink: Sink,
    present: HashSet<String>,
    dim: Option<usize>,
    rows: u64,
    /// A `.jsonl` output being replaced, emptied before its first row.
    truncate: Option<File>,
}

impl Writer {
    /// JSON Lines on stdout.
    pub fn stdout(columns: Columns) -> Writer {
        let out: Box<dyn Write> = Box::new(std::io::BufWriter::new(std::io::stdout()));
        Writer {
            path: None,
            dim: columns.dim,
            columns,
            sink: Sink::Lines(out),
            present: HashSet::new(),
            rows: 0,
            truncate: None,
        }
    }

    /// Start writing `path` (its format from the extension). Checked before any work: the
    /// extension, the folder (a temporary file is created in it), and with `resume` the
    /// existing output (same model, precision and dimension), whose rows are kept.
    pub fn create(path: &Path, columns: Columns, resume: bool) -> Result<Writer> {
        let format = Format::of(path)?;
        if path.is_dir() {
            return Err(output_err(path, "is a directory"));
        }
        let existing = resume && path.exists();
        let mut truncate = None;
        let sink = match format {
            Format::JsonLines => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                // A replaced output is emptied when the first row comes, not before: a run
                // that fails before its first row leaves the old output as it was.
                if !existing {
                    truncate = Some(file.try_clone().map_err(|e| Error::io(path, e))?);
                }
                Sink::Lines(Box::new(std::io::BufWriter::new(file)))
            }
            Format::Npy => Sink::Npy(npy::NpyWriter::create(path)?),
            Format::Safetensors => Sink::Safetensors(safetensors::StWriter::create(path)?),
            Format::Parquet => Sink::Parquet(Box::new(parquet::PqWriter::create(path, &columns)?)),
        };
        let mut w = Writer {
            path: Some(path.to_path_buf()),
            dim: columns.dim,
            columns,
            sink,
            present: HashSet::new(),
            rows: 0,
            truncate,
        };
        if existing {
            match format {
                Format::JsonLines => {
                    w.present = lines_keys(path, &w.columns, &mut w.dim)?;
                    w.rows = w.present.len() as u64;
                }
                Format::Npy => {
                    for row in npy::read_lines(path)? {
                        let (line, embedding) = row?;
                        w.check_dim(embedding.len())?;
                        if let Sink::Npy(n) = &mut w.sink {
                            n.push(&line, &embedding)?;
                        }
                        w.rows += 1;
                        w.present.insert(names::display_bytes(&unescape_line(&line)));
                    }
                }
                Format::Safetensors | Format::Parquet => {
                    check_same(path, &w.columns, &metadata(path)?)?;
                    for row in read(path)? {
                        let row = row?;
                        w.check_dim(row.embedding.len())?;
                        w.write_row(row.key.clone(), row.size, &row.embedding)?;
                        w.rows += 1;
                        w.present.insert(row.key);
                    }
                }
            }
        }
        Ok(w)
    }

    /// Whether the output already holds a row for `key` (from a resumed output).
    pub fn has(&self, key: &OsStr) -> bool {
        !self.present.is_empty() && self.present.contains(&display_name(key))
    }

    /// Rows kept from a resumed output.
    pub fn resumed(&self) -> usize {
        self.present.len()
    }

    /// Append one row.
    pub fn push(&mut self, key: &OsStr, size: Option<(u32, u32)>, embedding: &[f32]) -> Result<()> {
        let size = size.map(|(w, h)| (w.min(i32::MAX as u32) as i32, h.min(i32::MAX as u32) as i32));
        self.check_dim(embedding.len())?;
        match &mut self.sink {
            // The names file of .npy keeps every byte (see `path_line`).
            Sink::Npy(w) => w.push(&path_line(key), embedding)?,
            _ => self.write_row(display_name(key), size, embedding)?,
        }
        self.rows += 1;
        Ok(())
    }

    /// Append one row with its hash, caption and the caption's text embedding (the `hash`
    /// and `captions` columns of a Parquet output; other formats keep the image row only).
    pub fn push_sample(
        &mut self,
        key: &OsStr,
        size: Option<(u32, u32)>,
        embedding: &[f32],
        extras: SampleExtras,
    ) -> Result<()> {
        if let (Sink::Parquet(w), Some((_, text))) = (&self.sink, extras.caption) {
            if w.text_embeddings() && text.len() != embedding.len() {
                return Err(w.err(format!(
                    "a text embedding of {} values beside an image one of {}",
                    text.len(),
                    embedding.len()
                )));
            }
        }
        if let Sink::Parquet(w) = &mut self.sink {
            w.extras(extras);
        }
        self.push(key, size, embedding)
    }

    fn check_dim(&mut self, n: usize) -> Result<()> {
        match self.dim {
            Some(d) if d != n => Err(output_err(
                self.path.as_deref().unwrap_or(Path::new("-")),
                format!("a row of {n} values in an output of {d}-value rows"),
            )),
            _ => {
                self.dim = Some(n);
                Ok(())
            }
        }
    }

    fn write_row(&mut self, key: String, size: Option<(i32, i32)>, embedding: &[f32]) -> Result<()> {
        // The output's name, made only for an error (this runs once a row).
        let path = &self.path;
        let at = |e| Error::io(path.as_deref().unwrap_or(Path::new("-")), e);
        if let Some(f) = self.truncate.take() {
            f.set_len(0).map_err(at)?;
        }
        match &mut self.sink {
            Sink::Lines(out) => {
                let key_name = &self.columns.key;
                let write = |out: &mut Box<dyn Write>| -> std::io::Result<()> {
                    out.write_all(b"{")?;
                    serde_json::to_writer(&mut *out, key_name)?;
                    out.write_all(b":")?;
                    serde_json::to_writer(&mut *out, &key)?;
                    // f32 values print as the shortest text that reads back to the same f32.
                    out.write_all(b",\"embedding\":")?;
                    serde_json::to_writer(&mut *out, embedding)?;
                    out.write_all(b"}\n")
                };
                write(out).map_err(at)?;
            }
            Sink::Npy(w) => w.push(&path_line(OsStr::new(&key)), embedding)?,
            Sink::Safetensors(w) => w.push(key, embedding)?,
            Sink::Parquet(w) => w.push(key, size, embedding)?,
        }
        Ok(())
    }

    /// Push buffered rows on (a pipe reader sees each batch as it is done).
    pub fn flush(&mut self) -> Result<()> {
        if let Sink::Lines(out) = &mut self.sink {
            out.flush().map_err(|e| Error::io(self.path.as_deref().unwrap_or(Path::new("-")), e))?;
        }
        Ok(())
    }

    /// Finish the output (header, footer, rename into place); returns the rows it holds.
    pub fn finish(self) -> Result<u64> {
        self.finish_with(Vec::new())
    }

    /// [`Self::finish`], adding `extra` key-value pairs to the metadata of formats that have
    /// one (counts a run only knows at its end).
    pub fn finish_with(mut self, extra: Vec<(String, String)>) -> Result<u64> {
        if let Some(f) = self.truncate.take() {
            f.set_len(0).map_err(|e| Error::io(self.path.as_deref().unwrap_or(Path::new("-")), e))?;
        }
        self.flush()?;
        let dim = self.dim.unwrap_or(0);
        let (path, mut metadata) = (self.path.clone(), self.metadata());
        metadata.extend(extra.iter().cloned());
        match (self.sink, path) {
            (Sink::Lines(_), _) | (_, None) => {}
            (Sink::Npy(w), Some(p)) => w.finish(&p, dim)?,
            (Sink::Safetensors(w), Some(_)) => w.finish(dim, metadata)?,
            (Sink::Parquet(w), Some(_)) => w.finish(dim, extra)?,
        }
        Ok(self.rows)
    }

    fn metadata(&self) -> Vec<(String, String)> {
        vec![
            ("pe.model".into(), self.columns.model.clone()),
            ("pe.dtype".into(), self.columns.dtype.clone()),
            ("pe.key".into(), self.columns.key.clone()),
        ]
    }
}

/// Keys of a `.jsonl` output being resumed; a last line cut short by a kill is dropped.
fn lines_keys(path: &Path, columns: &Columns, dim: &mut Option<usize>) -> Result<HashSet<String>> {
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    // Find the end of the last complete line.
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
        file.read_exact(&mut buf[..n]).map_err(|e| Error::io(path, e))?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if end < len {
        tracing::warn!("{}: dropping an incomplete last line ({} bytes)", path.display(), len - end);
        file.set_len(end).map_err(|e| Error::io(path, e))?;
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let mut keys = HashSet::new();
    for (i, line) in BufReader::new(file.take(end)).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let bad = |why: &str| output_err(path, format!("line {}: {why}; not an output of this command", i + 1));
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&line).map_err(|e| bad(&e.to_string()))?;
        let key =
            v.get(&columns.key).and_then(|k| k.as_str()).ok_or_else(|| bad(&format!("no \"{}\"", columns.key)))?;
        let n = v.get("embedding").and_then(|e| e.as_array()).map(Vec::len).ok_or_else(|| bad("no \"embedding\""))?;
        match dim {
            Some(d) if *d != n => return Err(bad(&format!("{n} values where this model gives {d}"))),
            _ => *dim = Some(n),
        }
        keys.insert(key.to_string());
    }
    Ok(keys)
}

/// Every row of an output file (any of the formats), in order.
pub fn read(path: &Path) -> Result<Box<dyn Iterator<Item = Result<Row>>>> {
    Ok(match Format::of(path)? {
        Format::JsonLines => {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let p = path.to_path_buf();
            Box::new(BufReader::new(file).lines().enumerate().map(move |(i, line)| {
                let line = line.map_err(|e| Error::io(&p, e))?;
                let bad = |why: String| output_err(&p, format!("line {}: {why}", i + 1));
                let v: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
                let key = ["path", "text", "key"].iter().find_map(|k| v.get(*k)?.as_str()).unwrap_or("").to_string();
                let embedding: Vec<f32> = serde_json::from_value(v.get("embedding").cloned().unwrap_or_default())
                    .map_err(|e| bad(format!("embedding: {e}")))?;
                Ok(Row { key, size: None, embedding })
            }))
        }
        Format::Npy => Box::new(npy::read(path)?),
        Format::Safetensors => Box::new(safetensors::read(path)?),
        Format::Parquet => Box::new(parquet::read(path)?),
    })
}

/// The `pe.*` metadata of a safetensors or Parquet output (model, dtype, key column).
pub fn metadata(path: &Path) -> Result<Vec<(String, String)>> {
    match Format::of(path)? {
        Format::Safetensors => safetensors::metadata(path),
        Format::Parquet => parquet::metadata(path),
        _ => Ok(Vec::new()),
    }
}

/// Refuse to resume an output written by another model or precision.
pub(crate) fn check_same(path: &Path, columns: &Columns, found: &[(String, String)]) -> Result<()> {
    for (k, want) in [("pe.model", &columns.model), ("pe.dtype", &columns.dtype)] {
        if let Some((_, v)) = found.iter().find(|(key, _)| key == k) {
            if v != want {
                return Err(output_err(
                    path,
                    format!(
                        "was written with {k} {v}, not {want}: rows of different models or precisions cannot be mixed"
                    ),
                ));
            }
        }
    }
    Ok(())
}
