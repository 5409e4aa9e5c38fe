//! An index as Parquet and back (`pe index export --parquet FILE`, `pe index import FILE...`):
//! one row per searchable file, with the columns `path`, `hash` (BLAKE3, hex), `size`,
//! `mtime_ns`, `width`, `height` and `embedding` (a fixed-size list of float32), and the
//! manifest in the file's key-value metadata (`pe.manifest`, plus `pe.model`, `pe.dtype` and
//! `pe.dim` for readers that only want those). DuckDB, pandas and Spark read it as is.
//!
//! Import takes these files (or any Parquet with at least `path`, `hash` and `embedding`, as a
//! fixed-size or plain list of float32), and the parts `pe embed-image --output-dir` writes for
//! a sharded corpus (`key`, `hash`, `embedding`, and the shard in the metadata; a sample's path
//! is then `SHARD/KEY`, the shard made absolute from the current directory), into an index: the dimension is checked against the
//! index before any row is read, every row is checked (a 64-digit hash, finite and normalized
//! embedding), and each record batch is one catalog transaction. Rows with their file's size and
//! time are seen as unchanged by the next `pe index`; rows without are hashed again then, and
//! reuse the imported embedding by hash, so nothing is embedded twice.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, FixedSizeListArray, Float32Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::catalog::{Catalog, FileRow, VectorRow};
use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// Rows per record batch written or read.
const BATCH: usize = 4096;

fn pq_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Parquet { path: path.to_path_buf(), reason: e.to_string() }
}

fn schema(manifest: &Manifest) -> Result<Schema> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let dim = i32::try_from(manifest.dim).map_err(|_| Error::Query("dimension too large".into()))?;
    let json = serde_json::to_string(manifest).map_err(|e| Error::Query(e.to_string()))?;
    let meta = HashMap::from([
        ("pe.manifest".to_string(), json),
        ("pe.model".to_string(), manifest.model.name.clone()),
        ("pe.dtype".to_string(), manifest.precision.to_string()),
        ("pe.dim".to_string(), manifest.dim.to_string()),
    ]);
    Ok(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("hash", DataType::Utf8, false),
        Field::new("size", DataType::Int64, false),
        Field::new("mtime_ns", DataType::Int64, false),
        Field::new("width", DataType::Int32, false),
        Field::new("height", DataType::Int32, false),
        Field::new("embedding", DataType::FixedSizeList(item, dim), false),
    ])
    .with_metadata(meta))
}

/// Rows gathered for one record batch.
#[derive(Default)]
struct Rows {
    path: Vec<String>,
    hash: Vec<String>,
    size: Vec<i64>,
    mtime: Vec<i64>,
    width: Vec<i32>,
    height: Vec<i32>,
    values: Vec<f32>,
}

impl Rows {
    fn batch(
        &mut self,
        schema: &Arc<Schema>,
        dim: usize,
    ) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Arc::new(Float32Array::from(std::mem::take(&mut self.values)));
        let embedding = FixedSizeListArray::try_new(item, dim as i32, values, None)?;
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(std::mem::take(&mut self.path))),
                Arc::new(StringArray::from(std::mem::take(&mut self.hash))),
                Arc::new(Int64Array::from(std::mem::take(&mut self.size))),
                Arc::new(Int64Array::from(std::mem::take(&mut self.mtime))),
                Arc::new(Int32Array::from(std::mem::take(&mut self.width))),
                Arc::new(Int32Array::from(std::mem::take(&mut self.height))),
                Arc::new(embedding),
            ],
        )
    }
}

/// Write every searchable file of `catalog` to the Parquet file `out` (through a temporary
/// name, renamed when complete); returns the rows written.
pub fn export(catalog: &Catalog, manifest: &Manifest, out: &Path) -> Result<usize> {
    let schema = Arc::new(schema(manifest)?);
    let tmp = out.with_file_name(format!(
        ".{}.tmp",
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export.parquet".into())
    ));
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    // The metadata also in the footer's key-value pairs, where non-Arrow readers (Spark) look.
    let kv = schema.metadata().iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
    let props =
        WriterProperties::builder().set_compression(Compression::SNAPPY).set_key_value_metadata(Some(kv)).build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| pq_err(out, e))?;
    let dim = manifest.dim;
    let mut rows = Rows::default();
    let mut n = 0;
    let mut lossy = 0;
    let result = catalog.for_each_record(dim, |f, w, h, v| {
        let path = f.path.to_string_lossy();
        if matches!(path, std::borrow::Cow::Owned(_)) {
            lossy += 1;
        }
        rows.path.push(path.into_owned());
        rows.hash.push(f.hash.clone().unwrap_or_default());
        rows.size.push(f.size as i64);
        rows.mtime.push(f.mtime_ns);
        rows.width.push(w as i32);
        rows.height.push(h as i32);
        rows.values.extend_from_slice(v);
        n += 1;
        if rows.path.len() == BATCH {
            writer.write(&rows.batch(&schema, dim).map_err(|e| pq_err(out, e))?).map_err(|e| pq_err(out, e))?;
        }
        Ok(())
    });
    let finish = result.and_then(|()| {
        if !rows.path.is_empty() {
            writer.write(&rows.batch(&schema, dim).map_err(|e| pq_err(out, e))?).map_err(|e| pq_err(out, e))?;
        }
        writer.close().map_err(|e| pq_err(out, e))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    });
    if let Err(e) = finish {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if lossy > 0 {
        tracing::warn!("{lossy} paths are not UTF-8; they were written with U+FFFD in place of the bad bytes");
    }
    Ok(n)
}

/// The manifest stored in a Parquet file's metadata (`pe.manifest`), if any.
pub fn manifest_of(file: &Path) -> Result<Option<Manifest>> {
    let f = File::open(file).map_err(|e| Error::io(file, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| pq_err(file, e))?;
    let kv = builder.metadata().file_metadata().key_value_metadata();
    let footer = kv.and_then(|kv| kv.iter().find(|k| k.key == "pe.manifest")).and_then(|k| k.value.clone());
    let Some(json) = footer.or_else(|| builder.schema().metadata().get("pe.manifest").cloned()) else {
        return Ok(None);
    };
    serde_json::from_str(&json).map(Some).map_err(|e| pq_err(file, format!("its pe.manifest is not a manifest: {e}")))
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Rows read.
    pub rows: usize,
    /// Distinct contents among them.
    pub contents: usize,
}

/// The embedding column's rows, as a fixed-size or plain list of float32.
enum Embeddings<'a> {
    Fixed(&'a FixedSizeListArray, &'a Float32Array),
    Plain(&'a ListArray, &'a Float32Array),
}

impl Embeddings<'_> {
    fn row(&self, i: usize) -> &[f32] {
        match self {
            Embeddings::Fixed(l, v) => {
                let n = l.value_length() as usize;
                let at = l.value_offset_at(i);
                &v.values()[at..at + n]
            }
            Embeddings::Plain(l, v) => {
                let o = l.value_offsets();
                &v.values()[o[i] as usize..o[i + 1] as usize]
            }
        }
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, file: &Path) -> Result<Option<&'a T>> {
    match batch.column_by_name(name) {
        None => Ok(None),
        Some(c) => c
            .as_any()
            .downcast_ref::<T>()
            .map(Some)
            .ok_or_else(|| pq_err(file, format!("column `{name}` has type {}", c.data_type()))),
    }
}

/// Read `files` into `catalog` (an index of dimension `dim`).
pub fn import(catalog: &mut Catalog, dim: usize, files: &[PathBuf]) -> Result<ImportReport> {
    let mut report = ImportReport::default();
    let mut seen = std::collections::HashSet::new();
    for file in files {
        let f = File::open(file).map_err(|e| Error::io(file, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| pq_err(file, e))?;
        // The geometry first: a file of another dimension is refused before any row is read.
        match builder.schema().field_with_name("embedding").map(|f| f.data_type().clone()) {
            Ok(DataType::FixedSizeList(item, n)) if *item.data_type() == DataType::Float32 => {
                if n as usize != dim {
                    return Err(pq_err(file, format!("its embeddings have {n} dimensions; the index has {dim}")));
                }
            }
            Ok(DataType::List(item)) if *item.data_type() == DataType::Float32 => {}
            Ok(t) => return Err(pq_err(file, format!("column `embedding` is {t}, not a list of float32"))),
            Err(_) => return Err(pq_err(file, "no `embedding` column")),
        }
        let shard = shard_of(&builder, file)?;
        let reader = builder.with_batch_size(BATCH).build().map_err(|e| pq_err(file, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| pq_err(file, e))?;
            let key_column = if shard.is_some() { "key" } else { "path" };
            let paths = column::<StringArray>(&batch, key_column, file)?
                .ok_or_else(|| pq_err(file, format!("no `{key_column}` column")))?;
            let hashes =
                column::<StringArray>(&batch, "hash", file)?.ok_or_else(|| pq_err(file, "no `hash` column"))?;
            let sizes = column::<Int64Array>(&batch, "size", file)?;
            let mtimes = column::<Int64Array>(&batch, "mtime_ns", file)?;
            let widths = column::<Int32Array>(&batch, "width", file)?;
            let heights = column::<Int32Array>(&batch, "height", file)?;
            let emb = match batch.column_by_name("embedding") {
                Some(c) => {
                    match (c.as_any().downcast_ref::<FixedSizeListArray>(), c.as_any().downcast_ref::<ListArray>()) {
                        (Some(l), _) => Embeddings::Fixed(
                            l,
                            l.values().as_any().downcast_ref().ok_or_else(|| pq_err(file, "bad embedding values"))?,
                        ),
                        (_, Some(l)) => Embeddings::Plain(
                            l,
                            l.values().as_any().downcast_ref().ok_or_else(|| pq_err(file, "bad embedding values"))?,
                        ),
                        _ => return Err(pq_err(file, "column `embedding` is not a list")),
                    }
                }
                None => return Err(pq_err(file, "no `embedding` column")),
            };
            let (mut vectors, mut rows) = (Vec::new(), Vec::new());
            for i in 0..batch.num_rows() {
                let at = || format!("row {}", report.rows + i);
                if paths.is_null(i) || hashes.is_null(i) || emb_null(&emb, i) {
                    return Err(pq_err(file, format!("{}: a null path, hash or embedding", at())));
                }
                let hash = hashes.value(i).to_ascii_lowercase();
                let path = match &shard {
                    Some(shard) => {
                        sample_path(shard, paths.value(i)).map_err(|e| pq_err(file, format!("{}: {e}", at())))?
                    }
                    None => PathBuf::from(paths.value(i)),
                };
                if !path.is_absolute() {
                    return Err(pq_err(file, format!("{}: path {} is not absolute", at(), path.display())));
                }
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(pq_err(file, format!("{}: hash {hash:?} is not 64 hex digits (BLAKE3)", at())));
                }
                let v = emb.row(i);
                if v.len() != dim {
                    return Err(pq_err(file, format!("{}: {} dimensions, not {dim}", at(), v.len())));
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if !norm.is_finite() || (norm - 1.0).abs() > 1e-3 {
                    return Err(pq_err(file, format!("{}: the embedding's norm is {norm}, not 1", at())));
                }
                let get = |c: Option<&Int32Array>| c.filter(|c| !c.is_null(i)).map_or(0, |c| c.value(i).max(0) as u32);
                if seen.insert(hash.clone()) {
                    vectors.push(VectorRow {
                        hash: hash.clone(),
                        width: get(widths),
                        height: get(heights),
                        embedding: v.to_vec(),
                    });
                }
                let get64 = |c: Option<&Int64Array>| c.filter(|c| !c.is_null(i)).map_or(0, |c| c.value(i));
                rows.push(FileRow {
                    path,
                    size: get64(sizes).max(0) as u64,
                    mtime_ns: get64(mtimes),
                    hash: Some(hash),
                    error: None,
                });
            }
            report.rows += rows.len();
            catalog.commit(&vectors, &rows)?;
        }
    }
    report.contents = seen.len();
    Ok(report)
}

/// For a shard part (a `key` column and no `path`), its shard (`pe.shard`), made absolute.
fn shard_of(builder: &ParquetRecordBatchReaderBuilder<File>, file: &Path) -> Result<Option<PathBuf>> {
    let fields = builder.schema();
    if fields.field_with_name("path").is_ok() || fields.field_with_name("key").is_err() {
        return Ok(None);
    }
    let kv = builder.metadata().file_metadata().key_value_metadata();
    let shard = kv.and_then(|kv| kv.iter().find(|k| k.key == "pe.shard")).and_then(|k| k.value.clone());
    let shard =
        shard.ok_or_else(|| pq_err(file, "a `key` column but no `path`, and no pe.shard metadata naming the shard"))?;
    std::path::absolute(&shard).map(Some).map_err(|e| pq_err(file, format!("shard {shard}: {e}")))
}

/// `SHARD/KEY`: where a sample of a shard is said to be. A key is a relative name, as
/// WebDataset keys are (no `..`, no root, no empty part), so the path stays inside its shard.
fn sample_path(shard: &Path, key: &str) -> std::result::Result<PathBuf, String> {
    if key.split('/').all(|p| !p.is_empty() && p != "." && p != "..") {
        Ok(shard.join(key))
    } else {
        Err(format!("key {key:?} is not a sample name"))
    }
}

fn emb_null(e: &Embeddings, i: usize) -> bool {
    match e {
        Embeddings::Fixed(l, _) => l.is_null(i),
        Embeddings::Plain(l, _) => l.is_null(i),
    }
}
