//! Parquet outputs (arrow-rs): the key column (`path`, `text` or `key`), `width` and `height`
//! when the rows have them, and `embedding` as a fixed-size list of float32; the `pe.*` keys in
//! the file's key-value metadata. Rows are written in row groups of [`GROUP`] as they come.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, FixedSizeListArray, Float32Array, Int32Array, ListArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::{output_err, Columns, Row, SampleExtras, Temp};
use crate::error::{Error, Result};

/// Rows per row group (and per record batch): 4 MiB of 1024-dim float32.
const GROUP: usize = 1024;

pub(super) struct PqWriter {
    path: PathBuf,
    columns: Columns,
    tmp: Temp,
    file: Option<File>,
    writer: Option<ArrowWriter<File>>,
    schema: Option<Arc<Schema>>,
    keys: Vec<String>,
    width: Vec<Option<i32>>,
    height: Vec<Option<i32>>,
    values: Vec<f32>,
    hashes: Vec<Option<String>>,
    jsons: Vec<Option<String>>,
    captions: Vec<Option<String>>,
    /// Text embeddings of the rows with a caption, in order.
    text_values: Vec<f32>,
}

fn schema(columns: &Columns, dim: usize) -> Result<Arc<Schema>> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let d = i32::try_from(dim).map_err(|_| Error::Query("dimension too large".into()))?;
    let mut fields = vec![Field::new(columns.key.as_str(), DataType::Utf8, false)];
    if columns.shard.is_some() {
        fields.push(Field::new("shard", DataType::Utf8, false));
    }
    if columns.hashes {
        fields.push(Field::new("hash", DataType::Utf8, true));
    }
    if columns.json {
        fields.push(Field::new("json", DataType::Utf8, true));
    }
    if columns.sizes {
        fields.push(Field::new("width", DataType::Int32, true));
        fields.push(Field::new("height", DataType::Int32, true));
    }
    fields.push(Field::new("embedding", DataType::FixedSizeList(item.clone(), d), false));
    if columns.captions || columns.texts {
        fields.push(Field::new("caption", DataType::Utf8, true));
    }
    if columns.captions {
        fields.push(Field::new("text_embedding", DataType::FixedSizeList(item, d), true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

impl PqWriter {
    pub fn create(path: &Path, columns: &Columns) -> Result<Self> {
        let (tmp, file) = Temp::create(path, "data")?;
        Ok(PqWriter {
            path: path.to_path_buf(),
            columns: columns.clone(),
            tmp,
            file: Some(file),
            writer: None,
            schema: None,
            keys: Vec::new(),
            width: Vec::new(),
            height: Vec::new(),
            values: Vec::new(),
            hashes: Vec::new(),
            jsons: Vec::new(),
            captions: Vec::new(),
            text_values: Vec::new(),
        })
    }

    /// The hash, caption and caption's text embedding of the row pushed next.
    pub fn extras(&mut self, extras: SampleExtras) {
        if self.columns.hashes {
            self.hashes.push(extras.hash.map(str::to_string));
        }
        if self.columns.json {
            self.jsons.push(extras.json.map(str::to_string));
        }
        if self.columns.captions || self.columns.texts {
            self.captions.push(extras.caption.map(|c| c.0.to_string()));
        }
        if self.columns.captions {
            if let Some((_, v)) = extras.caption {
                self.text_values.extend_from_slice(v);
            }
        }
    }

    /// Whether rows carry a text embedding beside the image one.
    pub fn text_embeddings(&self) -> bool {
        self.columns.captions
    }

    pub(super) fn err(&self, e: impl std::fmt::Display) -> Error {
        output_err(&self.path, e.to_string())
    }

    pub fn push(&mut self, key: String, size: Option<(i32, i32)>, embedding: &[f32]) -> Result<()> {
        // A row pushed without `extras` has none.
        if (self.columns.captions || self.columns.texts) && self.captions.len() == self.keys.len() {
            self.captions.push(None);
        }
        if self.columns.hashes && self.hashes.len() == self.keys.len() {
            self.hashes.push(None);
        }
        if self.columns.json && self.jsons.len() == self.keys.len() {
            self.jsons.push(None);
        }
        self.keys.push(key);
        self.width.push(size.map(|s| s.0));
        self.height.push(size.map(|s| s.1));
        self.values.extend_from_slice(embedding);
        if self.keys.len() >= GROUP {
            self.write(embedding.len())?;
        }
        Ok(())
    }

    fn write(&mut self, dim: usize) -> Result<()> {
        if self.writer.is_none() {
            let meta = std::collections::HashMap::from([
                ("pe.model".to_string(), self.columns.model.clone()),
                ("pe.dtype".to_string(), self.columns.dtype.clone()),
                ("pe.key".to_string(), self.columns.key.clone()),
                ("pe.dim".to_string(), dim.to_string()),
            ]);
            // In the Arrow schema (pyarrow, pandas) and the footer's key-value pairs (Spark).
            let kv = meta.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
            let schema = Arc::new(Arc::unwrap_or_clone(schema(&self.columns, dim)?).with_metadata(meta));
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(GROUP))
                .set_key_value_metadata(Some(kv))
                .build();
            let file = self.file.take().ok_or_else(|| self.err("written after closing"))?;
            self.writer = Some(ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| self.err(e))?);
            self.schema = Some(schema);
        }
        let (Some(writer), Some(schema)) = (self.writer.as_mut(), self.schema.clone()) else { return Ok(()) };
        if self.keys.is_empty() {
            return Ok(());
        }
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Arc::new(Float32Array::from(std::mem::take(&mut self.values)));
        let d = dim as i32;
        let embedding =
            FixedSizeListArray::try_new(item, d, values, None).map_err(|e| output_err(&self.path, e.to_string()))?;
        let n = self.keys.len();
        let mut cols: Vec<Arc<dyn Array>> = vec![Arc::new(StringArray::from(std::mem::take(&mut self.keys)))];
        if let Some(shard) = &self.columns.shard {
            cols.push(Arc::new(StringArray::from(vec![shard.as_str(); n])));
        }
        if self.columns.hashes {
            cols.push(Arc::new(StringArray::from(std::mem::take(&mut self.hashes))));
        }
        if self.columns.json {
            cols.push(Arc::new(StringArray::from(std::mem::take(&mut self.jsons))));
        }
        if self.columns.sizes {
            cols.push(Arc::new(Int32Array::from(std::mem::take(&mut self.width))));
            cols.push(Arc::new(Int32Array::from(std::mem::take(&mut self.height))));
        }
        self.width.clear();
        self.height.clear();
        cols.push(Arc::new(embedding));
        if self.columns.texts && !self.columns.captions {
            cols.push(Arc::new(StringArray::from(std::mem::take(&mut self.captions))));
        }
        if self.columns.captions {
            let captions = std::mem::take(&mut self.captions);
            let present: Vec<bool> = captions.iter().map(Option::is_some).collect();
            // Null rows hold zeros in the child values, as Arrow lays out fixed-size lists.
            let given = std::mem::take(&mut self.text_values);
            let mut given = given.chunks_exact(dim.max(1));
            let mut values = Vec::with_capacity(present.len() * dim);
            for &p in &present {
                match if p { given.next() } else { None } {
                    Some(v) => values.extend_from_slice(v),
                    None => values.resize(values.len() + dim, 0.0),
                }
            }
            let item = Arc::new(Field::new("item", DataType::Float32, false));
            let text = FixedSizeListArray::try_new(
                item,
                d,
                Arc::new(Float32Array::from(values)),
                Some(arrow_buffer::NullBuffer::from(present)),
            )
            .map_err(|e| output_err(&self.path, e.to_string()))?;
            cols.push(Arc::new(StringArray::from(captions)));
            cols.push(Arc::new(text));
        }
        let batch = RecordBatch::try_new(schema, cols).map_err(|e| output_err(&self.path, e.to_string()))?;
        writer.write(&batch).map_err(|e| output_err(&self.path, e.to_string()))
    }

    pub fn finish(mut self, dim: usize, extra: Vec<(String, String)>) -> Result<()> {
        self.write(dim)?;
        let mut writer = self.writer.take().ok_or_else(|| self.err("no writer"))?;
        for (k, v) in extra {
            writer.append_key_value_metadata(KeyValue::new(k, v));
        }
        let file = writer.into_inner().map_err(|e| self.err(e))?;
        let path = self.path.clone();
        self.tmp.commit(&file, &path)
    }
}

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    output_err(path, format!("not an embeddings Parquet file: {why}"))
}

fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(path, e))
}

/// The `pe.*` key-value metadata of a Parquet output.
pub fn metadata(path: &Path) -> Result<Vec<(String, String)>> {
    let b = builder(path)?;
    let kv = b.metadata().file_metadata().key_value_metadata().cloned().unwrap_or_default();
    Ok(kv.into_iter().filter(|k| k.key.starts_with("pe.")).filter_map(|k| Some((k.key, k.value?))).collect())
}

/// The rows of a Parquet output: a key column (`pe.key`, else the first of path, text, key),
/// `embedding` as a fixed-size or plain list of float32, and `width`/`height` when present.
pub fn read(path: &Path) -> Result<impl Iterator<Item = Result<Row>>> {
    let named = metadata(path)?.into_iter().find(|(k, _)| k == "pe.key").map(|(_, v)| v);
    let b = builder(path)?.with_batch_size(GROUP);
    let schema = b.schema().clone();
    let key = named
        .into_iter()
        .chain(["path", "text", "key"].map(String::from))
        .find(|k| schema.field_with_name(k).is_ok())
        .ok_or_else(|| bad(path, "no path, text or key column"))?;
    let reader = b.build().map_err(|e| bad(path, e))?;
    let p = path.to_path_buf();
    Ok(reader.flat_map(move |batch| -> Vec<Result<Row>> {
        match batch.map_err(|e| bad(&p, e)).and_then(|b| rows_of(&p, &b, &key)) {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        }
    }))
}

fn rows_of(path: &Path, batch: &RecordBatch, key: &str) -> Result<Vec<Row>> {
    let keys = batch
        .column_by_name(key)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| bad(path, format!("column {key} is not text")))?;
    let int = |name: &str| batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<Int32Array>().cloned());
    let (width, height) = (int("width"), int("height"));
    let emb = batch.column_by_name("embedding").ok_or_else(|| bad(path, "no embedding column"))?;
    let list: Vec<Option<Arc<dyn Array>>> = if let Some(f) = emb.as_any().downcast_ref::<FixedSizeListArray>() {
        (0..f.len()).map(|i| f.is_valid(i).then(|| f.value(i))).collect()
    } else if let Some(l) = emb.as_any().downcast_ref::<ListArray>() {
        (0..l.len()).map(|i| l.is_valid(i).then(|| l.value(i))).collect()
    } else {
        return Err(bad(path, "embedding is not a list of float32"));
    };
    let mut rows = Vec::with_capacity(batch.num_rows());
    for (i, v) in list.into_iter().enumerate() {
        let v = v.ok_or_else(|| bad(path, format!("row {i}: no embedding")))?;
        let v = v.as_any().downcast_ref::<Float32Array>().ok_or_else(|| bad(path, "embedding is not float32"))?;
        let size = match (&width, &height) {
            (Some(w), Some(h)) if w.is_valid(i) && h.is_valid(i) => Some((w.value(i), h.value(i))),
            _ => None,
        };
        rows.push(Row { key: keys.value(i).to_string(), size, embedding: v.values().to_vec() });
    }
    Ok(rows)
}
