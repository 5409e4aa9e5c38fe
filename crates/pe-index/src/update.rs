//! Bringing an index up to date with the files under some roots: files that are gone are
//! dropped, unchanged ones (same size and modification time) are left alone, and the rest are
//! read and hashed. Content seen before (a moved, renamed or copied file) reuses its stored
//! embedding; new content is decoded in parallel on a separate stage while the model embeds the
//! previous batch (a bounded pipeline, two batches ahead). Each batch is committed as one
//! transaction, so a run killed at any point resumes where it stopped.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

use candle_core::{DType, Tensor};
use perception_encoder::preprocess::ImageTransform;
use perception_encoder::video::{self, FrameSampling};
use perception_encoder::Clip;
use rayon::prelude::*;

use crate::ann::{AnnMode, AnnReport, AnnStorage};
use crate::catalog::{Catalog, FileRow, VectorRow};
use crate::error::{Error, Result};
use crate::manifest::hash_file;
use crate::model::LazyModel;
use crate::scan::{is_video, scan, Found, ScanOptions};

/// Image files larger than this are not read (no image format needs it; a stray disk image
/// might). Videos are hashed through a memory map and streamed by FFmpeg, so have no limit.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Frames sampled from a video (the reference's benchmark rule), as `pe embed-video`'s default.
pub const VIDEO_FRAMES: usize = 8;

/// How an update runs.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// What to skip while walking.
    pub scan: ScanOptions,
    /// Images per forward pass.
    pub batch_size: usize,
    /// When to keep an approximate index.
    pub ann: AnnMode,
    /// How the approximate index stores vectors.
    pub ann_storage: AnnStorage,
}

/// The part of [`UpdateOptions`] an index remembers from its last update.
#[derive(serde::Serialize, serde::Deserialize)]
struct Remembered {
    scan: ScanOptions,
    ann: AnnMode,
    ann_storage: AnnStorage,
}

const REMEMBERED_KEY: &str = "update_options";

impl UpdateOptions {
    /// The options of the catalog's last update (what to skip, whether videos were taken, the
    /// approximate index's mode and storage), so that a later update without those flags
    /// (`pe search --update`) walks and stores the same way; `None` before the first update
    /// or for a catalog from before this was kept.
    pub fn remembered(catalog: &Catalog) -> Result<Option<Self>> {
        let Some(json) = catalog.setting(REMEMBERED_KEY)? else { return Ok(None) };
        // An unreadable value (a newer or damaged catalog) is not fatal: defaults apply.
        let Ok(r) = serde_json::from_str::<Remembered>(&json) else {
            tracing::warn!("ignoring the catalog's unreadable update options: {json}");
            return Ok(None);
        };
        Ok(Some(UpdateOptions { scan: r.scan, ann: r.ann, ann_storage: r.ann_storage, ..UpdateOptions::default() }))
    }

    fn remember(&self, catalog: &mut Catalog) -> Result<()> {
        let r = Remembered { scan: self.scan.clone(), ann: self.ann, ann_storage: self.ann_storage };
        let json = serde_json::to_string(&r).map_err(|e| Error::Query(format!("update options: {e}")))?;
        catalog.set_setting(REMEMBERED_KEY, &json)
    }
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions { scan: ScanOptions::default(), batch_size: 32, ann: AnnMode::Auto, ann_storage: AnnStorage::F16 }
    }
}

/// What an update did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Files found under the roots.
    pub found: usize,
    /// Files left alone (same size and time as indexed).
    pub unchanged: usize,
    /// Files whose content was embedded.
    pub embedded: usize,
    /// Files whose content already had an embedding (moved, renamed, copied, or touched).
    pub reused: usize,
    /// Files that could not be read or decoded (kept with their error; retried when changed).
    pub failed: usize,
    /// Files dropped because they are gone.
    pub removed: usize,
    /// The failures of this run: path and reason.
    pub failures: Vec<(PathBuf, String)>,
    /// What happened to the approximate index.
    pub ann: AnnReport,
}

/// Progress of an update, for a bar or log lines.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// The walk is done: this many files need reading.
    Start(usize),
    /// This many more files were handled.
    Advance(usize),
    /// The approximate index holds `done` of `total` new contents.
    Approximate {
        /// Contents added so far.
        done: usize,
        /// Contents to add.
        total: usize,
    },
}

/// One file after the decode stage.
enum Prepared {
    /// Known content: the row to record, with no embedding to compute.
    Known(FileRow),
    /// New content, decoded: the row, the model input and the image's size.
    New(FileRow, Tensor, u32, u32),
    /// A new video: the row, its sampled frames (frames, 3, size, size) and the frame size.
    Video(FileRow, Tensor, u32, u32),
    /// Unreadable: the row carries the error.
    Failed(FileRow),
}

fn file_row(f: &Found, hash: Option<String>, error: Option<String>) -> FileRow {
    FileRow { path: f.path.clone(), size: f.size, mtime_ns: f.mtime_ns, hash, error }
}

/// The outcome of content seen before: the same file only touched keeps its outcome (error or
/// not); content embedded already (a move, rename or copy) reuses its embedding.
fn seen_before(f: &Found, hash: &str, before: Option<&FileRow>, known: &Mutex<HashSet<String>>) -> Option<Prepared> {
    if let Some(b) = before.filter(|b| b.hash.as_deref() == Some(hash)) {
        return Some(Prepared::Known(file_row(f, Some(hash.to_string()), b.error.clone())));
    }
    if known.lock().map(|k| k.contains(hash)).unwrap_or(false) {
        return Some(Prepared::Known(file_row(f, Some(hash.to_string()), None)));
    }
    None
}

fn prepare(f: &Found, before: Option<&FileRow>, known: &Mutex<HashSet<String>>, t: &ImageTransform) -> Prepared {
    let row = |hash: Option<String>, error: Option<String>| file_row(f, hash, error);
    if is_video(&f.path) {
        return prepare_video(f, before, known, t);
    }
    if f.size > MAX_FILE_BYTES {
        return Prepared::Failed(row(None, Some(format!("{} bytes is over the 1 GiB limit of a file", f.size))));
    }
    let bytes = match std::fs::read(&f.path) {
        Ok(b) => b,
        Err(e) => return Prepared::Failed(row(None, Some(e.to_string()))),
    };
    let hash = crate::manifest::hash_bytes(&bytes);
    if let Some(p) = seen_before(f, &hash, before, known) {
        return p;
    }
    let info = match perception_encoder::preprocess::probe(&bytes, t.max_pixels) {
        Ok(i) => i,
        Err(e) => return Prepared::Failed(row(Some(hash), Some(e.to_string()))),
    };
    match t.load_bytes(&bytes) {
        Ok(x) => Prepared::New(row(Some(hash), None), x, info.width, info.height),
        Err(e) => Prepared::Failed(row(Some(hash), Some(e.to_string()))),
    }
}

fn prepare_video(f: &Found, before: Option<&FileRow>, known: &Mutex<HashSet<String>>, t: &ImageTransform) -> Prepared {
    let row = |hash: Option<String>, error: Option<String>| file_row(f, hash, error);
    let hash = match hash_file(&f.path) {
        Ok(h) => h,
        Err(e) => return Prepared::Failed(row(None, Some(e.to_string()))),
    };
    if let Some(p) = seen_before(f, &hash, before, known) {
        return p;
    }
    let clip = video::probe(&f.path).and_then(|info| {
        let clip = video::load_clip_probed(&f.path, &info, VIDEO_FRAMES, FrameSampling::Benchmark, t)?;
        Ok((clip, info.width as u32, info.height as u32))
    });
    match clip {
        Ok((clip, w, h)) => Prepared::Video(row(Some(hash), None), clip, w, h),
        Err(e) => Prepared::Failed(row(Some(hash), Some(e.to_string()))),
    }
}

/// Bring `catalog` up to date with the files under `roots` (see the module docs).
pub fn update(
    catalog: &mut Catalog,
    model: &LazyModel,
    transform: &ImageTransform,
    roots: &[PathBuf],
    opts: &UpdateOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<UpdateReport> {
    let found = scan(roots, &opts.scan)?;
    let scope: Vec<PathBuf> =
        roots.iter().map(|r| std::fs::canonicalize(r).map_err(|e| Error::io(r, e))).collect::<Result<_>>()?;
    catalog.add_roots(&scope)?;
    opts.remember(catalog)?;
    let before = catalog.files_under(&scope)?;
    let present: HashSet<&PathBuf> = found.iter().map(|f| &f.path).collect();
    let gone: Vec<PathBuf> = before.keys().filter(|p| !present.contains(p)).cloned().collect();
    catalog.remove(&gone)?;
    let todo: Vec<&Found> = found
        .iter()
        .filter(|f| before.get(&f.path).is_none_or(|b| b.size != f.size || b.mtime_ns != f.mtime_ns))
        .collect();
    let mut report = UpdateReport {
        found: found.len(),
        unchanged: found.len() - todo.len(),
        removed: gone.len(),
        ..Default::default()
    };
    progress(Progress::Start(todo.len()));
    let known = Mutex::new(catalog.known_hashes()?);
    let batch = opts.batch_size.max(1);
    let (tx, rx) = sync_channel::<Vec<Prepared>>(2);
    std::thread::scope(|s| -> Result<()> {
        let (todo, before, known) = (&todo, &before, &known);
        s.spawn(move || {
            for chunk in todo.chunks(batch) {
                let prepared = chunk.par_iter().map(|f| prepare(f, before.get(&f.path), known, transform)).collect();
                if tx.send(prepared).is_err() {
                    break; // the model stage stopped on an error
                }
            }
        });
        for prepared in rx {
            let n = prepared.len();
            let (vectors, files) = embed_batch(model, prepared, &mut report)?;
            catalog.commit(&vectors, &files)?;
            if let Ok(mut k) = known.lock() {
                k.extend(vectors.into_iter().map(|v| v.hash));
            }
            progress(Progress::Advance(n));
        }
        Ok(())
    })?;
    catalog.collect_garbage()?;
    Ok(report)
}

/// The model, loaded now if this is the first file to embed; one that gives token features
/// (PE Spatial, PE Lang) cannot fill an index.
fn image_model<'m>(model: &'m LazyModel) -> Result<&'m Clip> {
    let m = model.get()?;
    if !m.has_image_embedding() {
        return Err(Error::Query(format!(
            "{} gives token features, not one embedding per image; index with a PE Core model",
            m.config().name
        )));
    }
    Ok(m)
}

/// Embed the new contents of a batch (each distinct content once) and return the rows to record.
fn embed_batch(
    model: &LazyModel,
    batch: Vec<Prepared>,
    report: &mut UpdateReport,
) -> Result<(Vec<VectorRow>, Vec<FileRow>)> {
    let mut files = Vec::with_capacity(batch.len());
    let mut inputs: Vec<Tensor> = Vec::new();
    let mut pending: Vec<(String, u32, u32)> = Vec::new();
    let mut slot: HashMap<String, usize> = HashMap::new();
    let mut videos = Vec::new();
    for p in batch {
        match p {
            Prepared::Known(row) => {
                report.reused += 1;
                files.push(row);
            }
            Prepared::Failed(row) => {
                report.failed += 1;
                report.failures.push((row.path.clone(), row.error.clone().unwrap_or_default()));
                files.push(row);
            }
            Prepared::Video(row, clip, width, height) => {
                let hash = row.hash.clone().unwrap_or_default();
                if slot.contains_key(&hash) {
                    report.reused += 1;
                } else {
                    report.embedded += 1;
                    slot.insert(hash.clone(), usize::MAX);
                    // The zero-shot benchmark's form: the mean of raw frame embeddings, normalized.
                    let mean: Vec<f32> = image_model(model)?
                        .encode_video(&clip.unsqueeze(0)?, false)?
                        .to_dtype(DType::F32)?
                        .flatten_all()?
                        .to_vec1()?;
                    let n = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    let embedding = mean.into_iter().map(|x| x / n).collect();
                    videos.push(VectorRow { hash, width, height, embedding });
                }
                files.push(row);
            }
            Prepared::New(row, x, w, h) => {
                let hash = row.hash.clone().unwrap_or_default();
                if slot.contains_key(&hash) {
                    report.reused += 1;
                } else {
                    report.embedded += 1;
                    slot.insert(hash.clone(), inputs.len());
                    inputs.push(x);
                    pending.push((hash, w, h));
                }
                files.push(row);
            }
        }
    }
    let mut vectors = videos;
    if !inputs.is_empty() {
        let x = Tensor::stack(&inputs, 0)?;
        let rows: Vec<Vec<f32>> = image_model(model)?.encode_image(&x, true)?.to_dtype(DType::F32)?.to_vec2()?;
        for ((hash, width, height), embedding) in pending.into_iter().zip(rows) {
            vectors.push(VectorRow { hash, width, height, embedding });
        }
    }
    Ok((vectors, files))
}
