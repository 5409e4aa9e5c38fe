//! # pe-index
//!
//! Collections for Perception Encoder: an incremental index of a folder's images, searched by
//! text, by image, or by weighted combinations of both (rclip's grammar). The CLI (`pe index`,
//! `pe search`) and the server call this crate; neither re-implements it.
//!
//! An index is a directory (by default `.pe-index/` at the root of what was indexed):
//! - `manifest.json` ([`Manifest`]): the model, its weights' identity, precision and transform;
//!   searching or updating with another model is refused;
//! - `catalog.sqlite` ([`Catalog`]): every file (path, size, time, content hash, error) and one
//!   embedding per distinct content; each batch is one transaction, so a crash loses nothing
//!   already committed;
//! - `vectors.f32` ([`Matrix`]): the embeddings as one memory-mapped matrix in path order,
//!   rebuilt from the catalog when older than it; exact search scores every row;
//! - `ann.bin` ([`Ann`]): for large collections, an HNSW graph (USearch) over the distinct
//!   contents, updated incrementally; its hits are re-scored exactly.

mod ann;
mod catalog;
mod dedupe;
mod error;
mod export;
mod manifest;
mod matrix;
mod model;
pub mod output;
pub mod query;
mod relink;
mod scan;
mod search;
mod update;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use ann::{default_ef, Ann, AnnMode, AnnReport, AnnStorage, ANN_MIN_ROWS, EF_GROWS_FROM, EXPANSION_SEARCH};
pub use catalog::{Catalog, FileRow, VectorRow};
pub use dedupe::Group;
pub use error::{Error, Result};
pub use export::{manifest_of, ImportReport};
pub use manifest::{describe, hash_bytes, hash_file, Manifest, ModelSpec, TransformSpec, FORMAT_VERSION};
pub use matrix::{dot, Hit, Matrix};
pub use model::{BoxError, LazyModel};
pub use scan::{dir_identity, is_video, scan, Found, ScanOptions, Walker, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS};
pub use search::{query_vector, towers_needed};
pub use update::{Progress, UpdateOptions, UpdateReport, MAX_FILE_BYTES, VIDEO_FRAMES};

use perception_encoder::preprocess::ImageTransform;

/// The index directory's default name, at the root of what was indexed.
pub const DEFAULT_DIR: &str = ".pe-index";

/// An open index.
pub struct Index {
    dir: PathBuf,
    manifest: Manifest,
    catalog: Catalog,
    /// The matrix and graph of the last search, reused while the catalog is unchanged.
    loaded: Mutex<Option<Arc<Loaded>>>,
}

/// The searchable state of one catalog generation.
struct Loaded {
    generation: i64,
    /// The files' identities when mapped: a file changed in place (not by our renames) is
    /// mapped again rather than read past its new end.
    files: [Option<FileId>; 2],
    matrix: Matrix,
    /// The approximate index, when there is one built from this generation.
    ann: Option<Ann>,
}

/// A file's identity: device, inode, size and modification time.
type FileId = (u64, u64, u64, i64);

fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000))
}

/// What a search asks for.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// How many files to return at most.
    pub k: usize,
    /// The lowest score returned.
    pub threshold: f32,
    /// Score every file even when an approximate index exists.
    pub exact: bool,
    /// Only files under this folder (absolute), searched exactly.
    pub under: Option<PathBuf>,
    /// Candidates the approximate search keeps and re-scores (HNSW's `ef`; default
    /// [`ann::default_ef`] of the graph's size): higher finds more of the true neighbours, more slowly.
    pub ef: Option<usize>,
}

impl SearchOptions {
    /// The `k` best, with no threshold, by the fastest method available.
    pub fn top(k: usize) -> Self {
        SearchOptions { k, threshold: f32::NEG_INFINITY, exact: false, under: None, ef: None }
    }
}

impl Index {
    /// Open the index at `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let catalog = Catalog::open(dir)?;
        Ok(Index { dir: dir.to_path_buf(), manifest, catalog, loaded: Mutex::new(None) })
    }

    /// Open the index at `dir` for updating with `manifest`'s model, creating it if there is
    /// none; an existing index built otherwise is an error.
    pub fn open_or_create(dir: &Path, manifest: &Manifest) -> Result<Self> {
        match Manifest::read(dir) {
            Ok(existing) => {
                existing.check_same(manifest, dir)?;
                Self::open(dir)
            }
            Err(Error::NoIndex(_)) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                manifest.write(dir)?;
                Self::open(dir)
            }
            Err(e) => Err(e),
        }
    }

    /// The nearest `.pe-index` directory holding a manifest, from `start` upwards.
    pub fn find(start: &Path) -> Option<PathBuf> {
        start.ancestors().map(|d| d.join(DEFAULT_DIR)).find(|d| Manifest::path(d).is_file())
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the index was built with.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Bring the index up to date with the files under `roots` (see [`update::update`]), then
    /// rebuild the vector matrix. `model` must be the manifest's model, with its image tower; it
    /// is loaded only if a file needs embedding.
    pub fn update(
        &mut self,
        model: &LazyModel,
        roots: &[PathBuf],
        opts: &UpdateOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<UpdateReport> {
        let transform: ImageTransform = self.manifest.transform.transform();
        let mut report = update::update(&mut self.catalog, model, &transform, roots, opts, progress)?;
        Matrix::build(&self.dir, &self.catalog, self.manifest.dim)?;
        report.ann = self.refresh_ann(opts.ann, opts.ann_storage, progress)?;
        Ok(report)
    }

    /// The options of this index's last update ([`UpdateOptions::remembered`]); for an index
    /// that has none, the defaults with the approximate index's storage as it is on disk.
    pub fn update_options(&self) -> Result<UpdateOptions> {
        if let Some(o) = UpdateOptions::remembered(&self.catalog)? {
            return Ok(o);
        }
        let mut o = UpdateOptions::default();
        if let Ok(Some(a)) = Ann::open(&self.dir) {
            o.ann_storage = a.storage();
        }
        Ok(o)
    }

    /// Build, update or delete the approximate index as `mode` says (see [`ann::refresh`]).
    pub fn refresh_ann(
        &mut self,
        mode: AnnMode,
        storage: AnnStorage,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<AnnReport> {
        if let Ok(mut l) = self.loaded.lock() {
            *l = None;
        }
        ann::refresh(&self.dir, &self.catalog, self.manifest.dim, mode, storage, &mut |done, total| {
            progress(Progress::Approximate { done, total })
        })
    }

    /// Write every searchable file to the Parquet file `out` (see [`export`]); returns the rows.
    pub fn export_parquet(&self, out: &Path) -> Result<usize> {
        export::export(&self.catalog, &self.manifest, out)
    }

    /// Read exported Parquet files into this index, then rebuild the matrix and bring the
    /// approximate index up to date as `mode` says.
    pub fn import_parquet(
        &mut self,
        files: &[PathBuf],
        mode: AnnMode,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImportReport> {
        for f in files {
            if let Some(m) = export::manifest_of(f)? {
                self.manifest.check_same(&m, &self.dir)?;
            }
        }
        let report = export::import(&mut self.catalog, self.manifest.dim, files)?;
        Matrix::build(&self.dir, &self.catalog, self.manifest.dim)?;
        let storage = self.update_options()?.ann_storage;
        self.refresh_ann(mode, storage, progress)?;
        Ok(report)
    }

    /// The approximate index, if there is one and it is as new as the catalog.
    pub fn ann(&self) -> Result<Option<Ann>> {
        let generation = self.catalog.generation()?;
        Ok(Ann::open(&self.dir)?.filter(|a| a.generation() == generation))
    }

    fn loaded(&self) -> Result<Arc<Loaded>> {
        let generation = self.catalog.generation()?;
        let mut cache = self.loaded.lock().map_err(|_| Error::Query("a previous search failed midway".into()))?;
        let files = [file_id(&Matrix::path(&self.dir)), file_id(&Ann::path(&self.dir))];
        if let Some(l) = cache.as_ref().filter(|l| l.generation == generation && l.files == files) {
            return Ok(l.clone());
        }
        let matrix = self.matrix()?;
        let ann = match Ann::open(&self.dir) {
            Ok(Some(a)) if a.generation() == generation => Some(a),
            Ok(Some(_)) => {
                tracing::warn!(
                    "the approximate index is older than the catalog (run `pe index` to refresh it); searching exactly"
                );
                None
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("{e}; searching exactly");
                None
            }
        };
        let files = [file_id(&Matrix::path(&self.dir)), file_id(&Ann::path(&self.dir))];
        let l = Arc::new(Loaded { generation, files, matrix, ann });
        *cache = Some(l.clone());
        Ok(l)
    }

    /// The vector matrix, rebuilt first when the catalog has changed since it was written
    /// (an update interrupted before its end, say).
    pub fn matrix(&self) -> Result<Matrix> {
        let generation = self.catalog.generation()?;
        match Matrix::open(&self.dir) {
            Ok(m) if m.generation() == generation && m.dim() == self.manifest.dim => return Ok(m),
            Ok(_) | Err(Error::Io { .. }) | Err(Error::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        Matrix::build(&self.dir, &self.catalog, self.manifest.dim)?;
        Matrix::open(&self.dir)
    }

    /// The `k` files most like the indexed file `path` (by its stored embedding), itself left
    /// out, best first.
    pub fn similar(&self, path: &Path, opts: &SearchOptions) -> Result<Vec<Hit>> {
        let abs = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let q = self.catalog.vector_of(&abs)?.ok_or_else(|| {
            Error::Query(format!("{} is not in the index (or could not be read when indexed)", path.display()))
        })?;
        let mut hits = self.search(&q, &SearchOptions { k: opts.k.saturating_add(1), ..opts.clone() })?;
        hits.retain(|h| h.path != abs);
        hits.truncate(opts.k);
        Ok(hits)
    }

    /// Exact duplicates (same content), then near duplicates (cosine at least `threshold`
    /// between different contents, grouped transitively).
    pub fn duplicates(&self, threshold: f32) -> Result<Vec<Group>> {
        let m = self.matrix()?;
        let hashes = self.catalog.searchable_hashes()?;
        if hashes.len() != m.rows() {
            return Err(Error::corrupt(&self.dir, "the vector matrix and the catalog disagree; rerun `pe index`"));
        }
        let mut groups = dedupe::exact_groups(&m, &hashes)?;
        groups.extend(dedupe::near_groups(&m, &hashes, threshold)?);
        Ok(groups)
    }

    /// The files most like the query vector (normalized), best first: exactly (every row of
    /// the matrix, or of the rows under `opts.under`), or through the approximate index when
    /// there is a fresh one and `opts.exact` is off. Scores are exact cosines either way.
    pub fn search(&self, query: &[f32], opts: &SearchOptions) -> Result<Vec<Hit>> {
        let l = self.loaded()?;
        if l.matrix.rows() == 0 {
            return Err(Error::Empty(self.dir.clone()));
        }
        if let Some(under) = &opts.under {
            let rows = l.matrix.rows_under(under)?;
            return l.matrix.exact_in(query, opts.k, opts.threshold, rows);
        }
        match (&l.ann, opts.exact) {
            (Some(ann), false) => search::approximate(ann, &l.matrix, query, opts),
            _ => l.matrix.exact(query, opts.k, opts.threshold),
        }
    }

    /// How searches will run: "exact" or "approximate (N contents)".
    pub fn method(&self) -> Result<String> {
        let l = self.loaded()?;
        Ok(match &l.ann {
            Some(a) => format!("approximate ({} contents)", a.len()),
            None => "exact".to_string(),
        })
    }
}
